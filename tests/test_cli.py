"""The refopt command end to end: train, compare, verify, list; errors exit 2 with one line."""
import json

import numpy as np
import pytest

from _helpers import one_error_line
from refopt.cli import main, parse_value


def test_parse_value():
    assert parse_value("0.1") == 0.1 and parse_value("3") == 3 and parse_value("true") is True
    assert parse_value("none") is None and parse_value("[1, 2]") == [1, 2] and parse_value("add") == "add"


def test_train_writes_log_and_summary(tmp_path, capsys):
    log = tmp_path / "run.jsonl"
    rc = main(["train", "sgd", "lr=0.5", "momentum=0.9", "--problem", "synthetic_mlp", "--steps", "5",
               "--log", str(log), "--no-progress"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "sgd on synthetic_mlp: completed after 5 steps" in out
    assert len(log.read_text().splitlines()) == 5


def test_train_checkpoint_and_resume(tmp_path, capsys):
    ck = tmp_path / "ck.npz"
    common = ["train", "sgd", "lr=0.5", "--problem", "synthetic_mlp", "--no-progress"]
    assert main(common + ["--steps", "3", "--checkpoint", str(ck), "--checkpoint-every", "3"]) == 0
    assert main(common + ["--steps", "6", "--resume", str(ck)]) == 0
    assert "after 6 steps" in capsys.readouterr().out
    rc = main(["train", "sgd", "lr=0.4", "--problem", "synthetic_mlp", "--no-progress", "--resume", str(ck)])
    assert rc == 2
    # refused by run, after the hyperparameters line
    assert "hyperparameters differ: checkpoint has lr=0.5, this run has lr=0.4" in one_error_line(capsys, output=True)


@pytest.mark.parametrize("argv,needle", [
    (["train", "no_such_optimizer"], "unknown optimizer"),
    (["train", "sgd", "--problem", "nowhere"], "unknown problem"),
    (["train", "sgd", "lr=-1", "--problem", "synthetic_mlp"], "lr must be"),
    (["train", "sgd", "lr=abc", "--problem", "synthetic_mlp"], "lr must be"),
    (["train", "sgd", "momentum=1.5", "--problem", "synthetic_mlp"], "momentum"),
    (["train", "sgd", "lr"], "NAME=VALUE"),
    (["train", "sgd", "learning_rate=0.1", "--problem", "synthetic_mlp"], "unknown hyperparameter(s) learning_rate"),
    (["train", "sgd", "--problem", "synthetic_mlp", "--resume", "/nonexistent/ck.npz"], "No such file"),
    (["compare", "--optimizers", "sgd,bogus", "--problem", "synthetic_mlp"], "unknown optimizer"),
    (["compare", "--optimizers", "sgd", "--hp-json", "[1]"], "--hp-json must map"),
    (["compare", "--optimizers", "sgd", "--hp-json", "{not json"], "--hp-json is not JSON (Expecting property name"),
    (["compare", "--optimizers", "sgd", "--problem", "rosenbrock", "--plot", "", "--hp-json", '{"sgd": {"lr": "x"}}'],
     "lr must be"),
    (["train", "sgd", "--problem", "synthetic_mlp", "--eval-every", "0"], "eval_every must be"),
    (["train", "sgd", "--problem", "synthetic_mlp", "--steps", "0"], "steps must be"),
    (["train", "sgd", "--problem", "synthetic_mlp", "--checkpoint-every", "5"], "needs a checkpoint path"),
    (["train", "sgd", "--problem", "synthetic_mlp", "--divergence-factor", "1"],
     "--divergence-factor must be a finite number > 1 or none, got '1'"),
    (["compare", "--optimizers", "sgd", "--divergence-factor", "x"], "--divergence-factor must be a finite number"),
    (["compare", "--optimizers", "sgd", "--hp-json", '{"nope": {"lr": 1}}'], "--hp-json: unknown optimizer(s) 'nope'"),
    (["compare", "--optimizers", "sgd", "--hp-json", '{"adam": {"lr": 1}}'],
     "--hp-json: settings for adam, which is not among the optimizers compared (sgd)"),
    (["compare", "--optimizers", "sgd", "--show-hyperparameters", "--hp-json", '{"adam": {}}'], "--hp-json: settings"),
    (["train", "sgd", "schedule={name: cosine}", "--problem", "synthetic_mlp"],
     "hyperparameter schedule: '{name: cosine}' is not JSON (Expecting property name"),
    (["train", "sgd", "--problem", "synthetic_mlp", "--plot", "run.txt"], "--plot run.txt: format 'txt' is not one"),
    (["compare", "--optimizers", "sgd", "--plot", "cmp.xyz"], "--plot cmp.xyz: format 'xyz' is not one refopt writes"),
])
def test_bad_input_exits_2_with_one_line(argv, needle, capsys):
    assert main(argv + (["--no-progress"] if argv[0] == "train" else [])) == 2
    assert needle in one_error_line(capsys, output="--checkpoint-every" in argv)  # refused by run, after the
    # hyperparameters line


def test_compare_two_optimizers_writes_plot(tmp_path, capsys):
    plot = tmp_path / "cmp.png"
    rc = main(["compare", "--optimizers", "sgd,adam", "--problem", "synthetic_mlp", "--steps", "10",
               "--max-seconds", "5", "--target-loss", "1.0", "--plot", str(plot), "--quiet"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "sgd" in out and "adam" in out and "train loss" in out
    try:
        import matplotlib  # noqa: F401  (a 'scripts' extra: without it compare says so and writes no plot)
    except ImportError:
        assert not plot.exists()
    else:
        assert plot.exists() and plot.stat().st_size > 1000


def test_verify_export_check_round_trip(tmp_path, capsys):
    path = tmp_path / "sgd.npz"
    assert main(["verify", "export", "--optimizer", "sgd", "lr=0.1", "momentum=0.9", "--steps", "3",
                 "--out", str(path)]) == 0
    assert main(["verify", "check", str(path)]) == 0
    assert "all 3 steps match" in capsys.readouterr().out


def test_verify_check_reports_and_searches(tmp_path, capsys):
    from refopt.verify import export_trace, make_trace
    trace = make_trace("sgd", {"lr": 0.1, "momentum": 0.9, "nesterov": True}, steps=3)
    trace.meta["hyperparameters"]["nesterov"] = False
    path = tmp_path / "planted.npz"
    export_trace(trace, str(path))
    assert main(["verify", "check", str(path), "--search"]) == 1
    out = capsys.readouterr().out
    assert "diverges at step 1" in out and "matches refopt with nesterov=True" in out


def test_verify_check_bad_file(tmp_path, capsys):
    bad = tmp_path / "bad.npz"
    np.savez(bad, meta=np.array(json.dumps({"optimizer": "sgd"})))
    assert main(["verify", "check", str(bad)]) == 2
    assert "meta has no 'problem'" in one_error_line(capsys)


def test_list(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "kfac" in out and "digits_mlp" in out


def test_missing_optional_package_is_one_line(monkeypatch, capsys):
    """The digits need scikit-learn (a 'scripts' extra): without it, one line and exit 2."""
    import sys
    monkeypatch.setitem(sys.modules, "sklearn", None)
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    assert main(["train", "sgd", "--problem", "digits_mlp", "--no-progress"]) == 2
    assert "scikit-learn" in one_error_line(capsys)


@pytest.mark.parametrize("script,hidden", [("verify_with_torch.py", ["torch"]),
                                           ("verify_with_optax.py", ["jax", "jax.numpy", "optax"]),
                                           ("verify_with_optax_sophia.py", ["jax", "jax.numpy", "optax"]),
                                           ("verify_with_kfac_jax.py", ["jax", "jax.numpy", "kfac_jax"]),
                                           ("verify_with_sophia.py", ["torch"]),
                                           ("verify_with_adahessian.py", ["torch"]),
                                           ("verify_with_kfac_pytorch.py", ["torch", "kfac"]),
                                           ("verify_with_curvlinops.py", ["torch", "curvlinops"]),
                                           ("verify_with_meta_shampoo.py", ["torch"]),
                                           ("verify_with_scalable_shampoo.py", ["jax", "jax.numpy", "optax", "chex"]),
                                           ("verify_with_tf_kfac.py", ["tensorflow", "kfac"])])
def test_verify_scripts_skip_cleanly_without_their_library(script, hidden):
    """The example scripts exit 0 with a message when the library they check is not installed."""
    import pathlib
    import subprocess
    import sys
    path = pathlib.Path(__file__).resolve().parent.parent / "scripts" / script
    block = "; ".join(f"sys.modules[{m!r}] = None" for m in hidden)
    code = f"import runpy, sys; {block}; sys.argv = [{str(path)!r}]; runpy.run_path({str(path)!r}, run_name='__main__')"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "skip" in (proc.stdout + proc.stderr).lower()


# --- issue 9: file-system errors, non-finite stopping rules, environment errors ---------------------
def _paths(tmp_path):
    """A directory, a plain file, and a path under that file (whose parent is not a directory)."""
    d = tmp_path / "adir"
    d.mkdir()
    f = tmp_path / "afile"
    f.write_text("x")
    return str(d), str(f), str(f / "child")


TRAIN = ["train", "sgd", "--problem", "synthetic_mlp", "--steps", "2", "--no-progress"]


@pytest.mark.parametrize("argv,needle", [
    (TRAIN + ["--log", "{dir}"], "--log {dir}: is a directory"),
    (TRAIN + ["--log", "{under}"], "--log {under}: {file} is not an existing directory"),
    (TRAIN + ["--checkpoint", "{dir}"], "--checkpoint {dir}: is a directory"),
    (TRAIN + ["--checkpoint", "{under}"], "--checkpoint {under}: {file} is not an existing directory"),
    (TRAIN + ["--resume", "{dir}"], "--resume {dir}: is a directory"),
    (["verify", "export", "--optimizer", "sgd", "--out", "{dir}"], "--out {dir}: is a directory"),
    (["verify", "export", "--all", "--out", "{file}"], "--out {file}: exists and is not a directory"),
    (["verify", "export", "--all", "--out", "{under}"], "{file} is not an existing directory"),
    (["compare", "--optimizers", "sgd", "--problem", "rosenbrock", "--plot", "", "--csv", "{under}"],
     "--csv {under}: {file} is not an existing directory"),
    (["compare", "--optimizers", "sgd", "--problem", "rosenbrock", "--plot", "{dir}"], "--plot {dir}: is a directory"),
])
def test_unwritable_paths_are_refused_before_any_step(argv, needle, tmp_path, capsys):
    d, f, under = _paths(tmp_path)
    fill = {"dir": d, "file": f, "under": under}
    log = tmp_path / "witness.jsonl"  # a run that started would write its first log record here
    argv = [a.format(**fill) for a in argv] + (["--log", str(log)] if argv[0] == "train" and "--log" not in argv
                                                 else [])
    assert main(argv) == 2
    assert needle.format(**fill) in one_error_line(capsys)
    assert not log.exists()


def test_os_errors_of_a_running_command_are_one_line(tmp_path, capsys, monkeypatch):
    """An OSError the up-front checks cannot foresee (here: the disk refuses the write) is one line, exit 2."""
    import refopt.compare as C

    def full_disk(entries, path):
        raise OSError(28, "No space left on device", path)
    monkeypatch.setattr(C, "write_csv", full_disk)
    csv_path = str(tmp_path / "out.csv")
    assert main(["compare", "--optimizers", "sgd", "--problem", "rosenbrock", "--steps", "2", "--plot", "",
                 "--csv", csv_path, "--quiet"]) == 2
    assert one_error_line(capsys, output=True) == f"refopt: error: {csv_path}: No space left on device"


@pytest.mark.parametrize("option,value,needle", [
    ("--target-loss", "nan", "target_loss must be a finite number"),
    ("--target-loss", "inf", "target_loss must be a finite number"),
    ("--max-seconds", "nan", "max_seconds must be a positive finite number"),
    ("--max-seconds", "inf", "max_seconds must be a positive finite number"),
    ("--gtol", "nan", "gtol must be a non-negative finite number"),
    ("--gtol", "-1", "gtol must be a non-negative finite number"),
    ("--seed", "-1", "seed must be an integer in [0, 9223372036854775807]"),
    ("--batch-size", "0", "batch_size must be an integer in [1, "),
])
def test_non_finite_stopping_rules_are_refused(option, value, needle, capsys):
    assert main(TRAIN + [option, value]) == 2
    assert needle in one_error_line(capsys)


@pytest.mark.parametrize("option,value", [("--target-loss", "nan"), ("--max-seconds", "inf")])
def test_compare_refuses_non_finite_budgets(option, value, capsys):
    assert main(["compare", "--optimizers", "sgd", "--problem", "rosenbrock", "--plot", "", option, value]) == 2
    assert option[2:].replace("-", "_") in one_error_line(capsys)


def test_verify_check_refuses_nan_tolerances(tmp_path, capsys):
    assert main(["verify", "check", str(tmp_path / "t.npz"), "--rtol", "nan"]) == 2
    assert "--rtol must be a non-negative finite number" in one_error_line(capsys)


def test_huge_integer_hyperparameter_is_one_line(capsys):
    assert main(TRAIN[:2] + [f"lr={10 ** 400}"] + TRAIN[2:]) == 2
    assert one_error_line(capsys) == ("refopt: error: lr must be a positive finite number, got an integer of about "
                                      "401 digits")


@pytest.mark.parametrize("env,needle", [
    ({"REFOPT_BACKEND": "cupy"}, "REFOPT_BACKEND='cupy': backend 'cupy' requested but"),
    ({"REFOPT_BACKEND": "tpu"}, "REFOPT_BACKEND='tpu': backend must be 'numpy' or 'cupy'"),
    ({"REFOPT_DTYPE": "float16"}, "REFOPT_DTYPE='float16': dtype must be one of"),
])
def test_environment_errors_are_one_line_from_the_command(env, needle):
    """The variables are read when the backend is imported (so in a fresh process): the command prints one
    line and exits 2, instead of the import's 25-line traceback."""
    import os
    import subprocess
    import sys
    if env.get("REFOPT_BACKEND") == "cupy":  # with CuPy (and a GPU) installed this would be a real run
        try:
            import cupy  # noqa: F401
            pytest.skip("CuPy is installed")
        except ImportError:
            pass
    full = {k: v for k, v in os.environ.items() if not k.startswith("REFOPT_")} | env
    proc = subprocess.run([sys.executable, "-m", "refopt", "list"], capture_output=True, text=True, env=full,
                          timeout=120)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("refopt: error: ") \
        and needle in lines[0], proc.stderr


def test_environment_errors_still_fail_the_library_import():
    """Outside the command a bad REFOPT_DTYPE is not silently ignored: importing the backend raises, with
    the variable named (documented in backend._from_environment)."""
    import os
    import subprocess
    import sys
    full = {k: v for k, v in os.environ.items() if not k.startswith("REFOPT_")} | {"REFOPT_DTYPE": "float16"}
    proc = subprocess.run([sys.executable, "-c", "import refopt.backend"], capture_output=True, text=True,
                          env=full, timeout=120)
    assert proc.returncode != 0 and "ValueError: REFOPT_DTYPE='float16'" in proc.stderr


# --- review of issue 9: the seed's range, special files, --hp-json and --optimizers ------------------------
@pytest.mark.parametrize("argv", [
    ["verify", "export", "--optimizer", "sgd", "--out", "{out}"],
    ["verify", "export", "--all", "--out", "{dir}"],
    TRAIN,
    ["compare", "--optimizers", "sgd", "--problem", "rosenbrock", "--plot", "", "--quiet"],
])
@pytest.mark.parametrize("seed", ["-1", str(10 ** 23), str(2 ** 63)])
def test_seed_is_bounded_and_named_by_every_command(argv, seed, tmp_path, capsys):
    """verify export --seed 10**23 wrote a trace that load_trace refuses; --seed -1 did not name --seed."""
    out, d = tmp_path / "t.npz", tmp_path / "traces"
    assert main([a.format(out=out, dir=d) for a in argv] + ["--seed", seed]) == 2
    assert "--seed must be an integer in [0, 9223372036854775807]" in one_error_line(capsys)
    assert not out.exists() and not d.exists()


def test_largest_seed_exports_a_trace_that_checks(tmp_path, capsys):
    out = tmp_path / "t.npz"
    seed = str(2 ** 63 - 1)
    assert main(["verify", "export", "--optimizer", "sgd", "--steps", "1", "--seed", seed, "--out", str(out)]) == 0
    assert main(["verify", "check", str(out)]) == 0


def test_resume_from_a_device_or_pipe_says_it_is_not_a_regular_file(tmp_path, capsys):
    import os
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)  # opening it for reading would block: it must be refused before it is opened
    for path in ("/dev/zero", str(fifo)):
        assert main(TRAIN + ["--resume", path]) == 2
        assert one_error_line(capsys) == f"refopt: error: --resume {path}: is not a regular file"


@pytest.mark.parametrize("value,needle", [
    ("", "--hp-json is not JSON"),
    ("{'sgd': {}}", "--hp-json is not JSON"),
    ('{"sgd": {"lr": 1' + "0" * 5000 + "}}", "--hp-json is not JSON"),
    ("[" * 100000 + "]" * 100000, "--hp-json"),
])
def test_invalid_hp_json_names_the_option(value, needle, capsys):
    assert main(["compare", "--optimizers", "sgd", "--problem", "rosenbrock", "--plot", "", "--hp-json", value]) == 2
    assert needle in one_error_line(capsys)


@pytest.mark.parametrize("value", ["", ",", "sgd,", " , adam", "sgd,,adam"])
def test_empty_optimizer_list_is_refused(value, capsys):
    """--optimizers '' silently ran the whole default set."""
    assert main(["compare", "--optimizers", value, "--problem", "rosenbrock", "--plot", "", "--steps", "1"]) == 2
    # no table either (stdout empty): nothing ran
    assert "--optimizers: expected a comma-separated list of optimizer names" in one_error_line(capsys)


# --- issue 12: export --all lists what it wrote; train reports the dense matrices -------------------------------
def test_export_all_prints_one_line_per_file_written(tmp_path, capsys):
    out = tmp_path / "traces"
    assert main(["verify", "export", "--all", "--out", str(out), "--steps", "1"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    wrote = sorted(line.split()[1] for line in lines if line.startswith("wrote "))
    assert wrote == sorted(str(p) for p in out.iterdir()) and len(wrote) > 20
    assert all(line.startswith(("wrote ", "skipped ")) for line in lines)


def test_train_summary_reports_the_dense_matrix_count(capsys):
    assert main(["train", "newton", "--problem", "rosenbrock", "--steps", "3", "--no-progress"]) == 0
    assert "nhev 3 (dense matrices)" in capsys.readouterr().out
    assert main(TRAIN) == 0
    assert "nhev" not in capsys.readouterr().out


# --- issue 12, Deliver 3: train and compare share the tuned settings; --show-hyperparameters; train --plot ---------
def _capture_runs(monkeypatch):
    """Record the (config, result) of every run that train and compare start."""
    import refopt.compare
    import refopt.runner
    seen, real = [], refopt.runner.run

    def spy(config, *args, **kwargs):
        result = real(config, *args, **kwargs)
        seen.append((config, result))
        return result
    monkeypatch.setattr(refopt.runner, "run", spy)
    monkeypatch.setattr(refopt.compare, "run", spy)
    return seen


def test_train_runs_with_the_hyperparameters_compare_uses(monkeypatch, capsys):
    from refopt.problems.tuned import TUNED
    seen = _capture_runs(monkeypatch)
    tuned = TUNED["synthetic_mlp"]["sgd"]
    assert main(["train", "sgd", "--problem", "synthetic_mlp", "--steps", "3", "--no-progress"]) == 0
    assert main(["compare", "--optimizers", "sgd", "--problem", "synthetic_mlp", "--steps", "3", "--plot", "",
                 "--quiet"]) == 0
    (train_config, train_result), (compare_config, compare_result) = seen
    assert train_config.hyperparameters == compare_config.hyperparameters == tuned != {}
    assert train_result.final_loss == compare_result.final_loss  # the same run
    out = capsys.readouterr().out
    assert "hyperparameters: tuned for synthetic_mlp: " + ", ".join(f"{k}={v!r}" for k, v in tuned.items()) in out
    assert main(["train", "sgd", "lr=0.05", "--problem", "synthetic_mlp", "--steps", "1", "--no-progress"]) == 0
    assert seen[-1][0].hyperparameters == {**tuned, "lr": 0.05}
    assert "hyperparameters: given: lr=0.05 | tuned for synthetic_mlp: " in capsys.readouterr().out


def test_show_hyperparameters_lists_them_and_runs_nothing(monkeypatch, capsys):
    import inspect

    import refopt.compare
    from refopt.optim import optimizer_class
    from refopt.problems.tuned import TUNED

    def no_run(*args, **kwargs):
        raise AssertionError("--show-hyperparameters must not run anything")
    monkeypatch.setattr(refopt.compare, "run", no_run)
    assert main(["compare", "--show-hyperparameters", "--optimizers", "sgd,kfac", "--problem", "synthetic_mlp",
                 "--hp-json", '{"kfac": {"damping": 0.01}}']) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("hyperparameters on synthetic_mlp: tuned for synthetic_mlp (refopt/problems/tuned.py)")
    assert len(lines) == 3 and lines[1].split()[0] == "sgd" and lines[2].split()[0] == "kfac"
    for line, name in zip(lines[1:], ("sgd", "kfac")):
        listed = [item.split("=")[0] for group in line.split(None, 1)[1].split(" | ")
                  for item in group.split(": ", 1)[1].split(", ")]
        sig = [p for p in inspect.signature(optimizer_class(name).__init__).parameters if p != "self"]
        assert sorted(listed) == sorted(sig)  # every hyperparameter, once
    tuned_lr = TUNED["synthetic_mlp"]["kfac"]["lr"]
    assert f"given: damping=0.01 | tuned for synthetic_mlp: lr={tuned_lr!r} | defaults: " in lines[2]


def test_compare_budget_is_steps_unless_max_seconds_is_given(capsys):
    from refopt.cli import build_parser
    assert build_parser().parse_args(["compare"]).max_seconds is None
    assert main(["compare", "--optimizers", "sgd", "--problem", "synthetic_mlp", "--steps", "30", "--plot", "",
                 "--quiet", "--max-seconds", "1e-9"]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("sgd "))
    assert row.split()[4] == "1"  # steps: the cap stopped it after the first


def test_train_plot_writes_a_png(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    path = tmp_path / "run.png"
    assert main(TRAIN + ["--plot", str(path)]) == 0
    assert f"plot written to {path}" in capsys.readouterr().out
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    log = tmp_path / "witness.jsonl"
    assert main(TRAIN + ["--plot", str(tmp_path), "--log", str(log)]) == 2  # a directory: refused before step 1
    assert f"--plot {tmp_path}: is a directory" in one_error_line(capsys) and not log.exists()


# --- issue 12, Deliver 1 and 2: --data, --sizes, --activation, --loss, the split; the validation summary ----------
def _blobs_csv(tmp_path, n=90, name="blobs.csv", header=True):
    """Three well separated Gaussian blobs in 4 dimensions, the class label last."""
    g = np.random.default_rng(7)
    y = g.integers(0, 3, n)
    centres = np.array([[3.0, 0, 0, 0], [0, 3, 0, 0], [0, 0, 3, 0]])
    X = centres[y] + 0.4 * g.standard_normal((n, 4))
    path = tmp_path / name
    rows = "".join(",".join(f"{v:.6f}" for v in x) + f",{c}\n" for x, c in zip(X, y))
    path.write_text(("a,b,c,d,label\n" if header else "") + rows)
    return str(path)


def _summary_number(out, phrase):
    import re
    match = re.search(phrase + r" ([0-9.e+-]+)", out)
    assert match, out
    return float(match.group(1))


def test_train_on_a_csv_prints_a_high_validation_accuracy(tmp_path, capsys):
    path = _blobs_csv(tmp_path)
    rc = main(["train", "adam", "lr=0.05", "--data", path, "--sizes", "4,16,3", "--activation", "tanh",
               "--steps", "60", "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 0 and "adam on data:blobs.csv: completed after 60 steps" in out
    assert _summary_number(out, "validation accuracy") >= 0.95 and "(18 held out)" in out  # ⌊0.2·90 + ½⌋ = 18
    assert _summary_number(out, "training accuracy") >= 0.95
    assert np.isfinite(_summary_number(out, "validation loss"))


def test_train_on_a_built_in_problem_prints_its_validation_metrics(capsys):
    assert main(["train", "sgd", "--problem", "synthetic_mlp", "--steps", "3", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "validation loss " in out and "validation accuracy " in out and "(128 held out)" in out
    assert main(["train", "lbfgs", "--problem", "rosenbrock", "--steps", "2", "--no-progress"]) == 0
    assert "validation" not in capsys.readouterr().out  # a test function holds out nothing


def test_data_options_reach_the_problem(tmp_path, monkeypatch, capsys):
    """--sizes, --activation, --loss, --val-fraction, --no-standardize and --split-seed set the problem run."""
    import refopt.runner
    seen, real = [], refopt.runner.run

    def spy(config, problem=None, **kwargs):
        seen.append(problem)
        return real(config, problem=problem, **kwargs)
    monkeypatch.setattr(refopt.runner, "run", spy)
    path = tmp_path / "bin.csv"
    path.write_text("".join(f"{i},{i % 4},{i % 2}\n" for i in range(20)))
    assert main(["train", "sgd", "--data", str(path), "--sizes", "2,5,4,1", "--activation", "relu,sigmoid",
                 "--loss", "bernoulli", "--val-fraction", "0.25", "--no-standardize", "--split-seed", "4",
                 "--steps", "2", "--no-progress"]) == 0
    p = seen[-1]
    assert p.model.sizes == [2, 5, 4, 1] and p.model.activations == ["relu", "sigmoid", "identity"]
    assert type(p.loss).__name__ == "Bernoulli" and p.X_val.shape == (5, 2)
    order = np.random.default_rng(4).permutation(20)
    np.testing.assert_array_equal(p.X, [[i, i % 4] for i in order[:15]])  # raw: not standardised
    assert "validation accuracy" in capsys.readouterr().out


def test_compare_on_a_csv(tmp_path, capsys):
    path = _blobs_csv(tmp_path)
    assert main(["compare", "--optimizers", "sgd,adam", "--data", path, "--steps", "5", "--plot", "", "--quiet"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    rows = [line for line in lines if line.split()[:1] in (["sgd"], ["adam"])]
    assert len(rows) == 2
    for row in rows:  # both ran their 5 steps: no failure text after the seconds, no stop
        cells = row.split()
        assert len(cells) == 14 and cells[4] == "5" and cells[5] == "-" and float(cells[1]) > 0, row
    assert "hyperparameters: the generic setting for problems without a tuned one (GENERIC in " \
           "refopt/problems/tuned.py); --show-hyperparameters lists them." in lines


@pytest.mark.parametrize("extra,needle", [
    (["--problem", "synthetic_mlp"], "--data and --problem: give one of them"),
    (["--sizes", "4,x,3"], "--sizes: expected at least two positive integers separated by commas, e.g. 5,16,3, got '4,x,3'"),
    (["--sizes", "4"], "--sizes: expected at least two positive integers"),
    (["--sizes", "4,0,3"], "--sizes: expected at least two positive integers"),
    (["--sizes", "5,16,3"], "--sizes: the first size must be the number of features, 4 in blobs.csv, got 5"),
    (["--sizes", "4,16,2"], "--sizes: the last size 2 is too small for softmax on blobs.csv"),
    (["--activation", "tanh,relu"], "--activation: expected 1 names (one per hidden layer), got 2"),
    (["--activation", "swish"], "unknown activation 'swish'"),
    (["--loss", "mse"], "--loss must be one of softmax, gaussian, bernoulli, got 'mse'"),
    (["--loss", "bernoulli"], "Bernoulli targets must be 0 or 1"),
    (["--val-fraction", "1"], "--val-fraction must be a number in [0, 1), got 1.0"),
    (["--val-fraction", "nan"], "--val-fraction must be a number in [0, 1)"),
    (["--val-fraction", "abc"], "--val-fraction must be a number in [0, 1)"),
    (["--split-seed", "-1"], "--split-seed must be"),
    (["--split-seed", "x"], "--split-seed must be an integer in [0, 2⁶³ − 1], got 'x'"),
    (["--split-seed", str(2 ** 63)], "--split-seed must be an integer in [0, 2⁶³ − 1], got 9223372036854775808"),
])
@pytest.mark.parametrize("command", ["train", "compare"])
def test_bad_data_options_exit_2_with_one_line(tmp_path, capsys, extra, needle, command):
    head = ["train", "sgd", "--no-progress"] if command == "train" else ["compare", "--optimizers", "sgd", "--plot", ""]
    assert main(head + ["--data", _blobs_csv(tmp_path), "--steps", "1"] + extra) == 2
    assert needle in one_error_line(capsys)


@pytest.mark.parametrize("extra,needle", [
    (["--sizes", "4,3"], "--sizes needs --data"),
    (["--loss", "gaussian"], "--loss needs --data"),
    (["--no-standardize"], "--standardize/--no-standardize needs --data"),
    (["--split-seed", "3"], "--split-seed needs --data"),
    (["--val-fraction", "0.1"], "--val-fraction needs --data"),
    (["--activation", "relu"], "--activation needs --data"),
])
@pytest.mark.parametrize("command", ["train", "compare"])
def test_data_options_without_data_exit_2(capsys, extra, needle, command):
    head = ["train", "sgd", "--no-progress"] if command == "train" else ["compare", "--optimizers", "sgd", "--plot", ""]
    assert main(head + ["--problem", "synthetic_mlp", "--steps", "1"] + extra) == 2
    assert needle in one_error_line(capsys)


@pytest.mark.parametrize("text,needle", [
    ("a,b,label\n1,2,0\n3,x,1\n", "refopt: error: bad.csv: row 3, column 2: 'x' is not a number"),
    ("1,2,0\n3,4\n", "refopt: error: bad.csv: row 2 has 2 columns, row 1 has 3"),
    ("1,2,0\n3,nan,1\n", "refopt: error: bad.csv: row 2, column 2: 'nan' is not finite"),
    ("1,2,0\n3,4,0.5\n", "labels must be integers"),
    ("", "refopt: error: bad.csv: the file is empty"),
])
def test_bad_data_files_exit_2_with_one_line(tmp_path, capsys, text, needle):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    assert main(["train", "sgd", "--data", str(path), "--steps", "1", "--no-progress"]) == 2
    assert needle in one_error_line(capsys)
    assert main(["train", "sgd", "--data", str(tmp_path / "none.csv"), "--steps", "1", "--no-progress"]) == 2
    line = one_error_line(capsys)
    assert line.startswith("refopt: error: --data ") and "none.csv: No such file" in line, line


def test_resume_refuses_a_checkpoint_of_other_data_or_sizes(tmp_path, capsys):
    path = _blobs_csv(tmp_path)
    ck = str(tmp_path / "ck.npz")
    common = ["train", "adam", "--data", path, "--no-progress"]
    assert main(common + ["--steps", "2", "--checkpoint", ck, "--checkpoint-every", "2"]) == 0
    assert main(common + ["--steps", "4", "--resume", ck]) == 0
    assert "completed after 4 steps" in capsys.readouterr().out
    for extra, needle in [(["--sizes", "4,8,3"], "its sizes differ"), (["--split-seed", "1"], "its data"),
                          (["--no-standardize"], "its data"), (["--activation", "relu"], "its activations differ")]:
        assert main(common + ["--steps", "4", "--resume", ck] + extra) == 2
        line = one_error_line(capsys, output=True)  # refused by run, after the hyperparameters line
        assert "checkpoint was written for another problem" in line and needle in line, line
    with open(path) as fh:
        text = fh.read().splitlines()
    text[1] = text[1].replace(text[1].split(",")[0], "9.5", 1)  # one value of one example changed
    with open(path, "w") as fh:
        fh.write("\n".join(text) + "\n")
    assert main(common + ["--steps", "4", "--resume", ck]) == 2
    # refused by run, after the hyperparameters line
    assert "its data (training or held-out arrays) differ" in one_error_line(capsys, output=True)


def test_analyze_reads_the_data_options_as_train_does(tmp_path, capsys):
    path = _blobs_csv(tmp_path)   # 90 rows: 72 trained on with the default held-out fraction 0.2, 90 with 0
    common = ["analyze", "--data", path, "--sizes", "4,5,3", "--analyses", "hessian_top", "-k", "1", "--no-progress"]
    assert main(common) == 0
    out = capsys.readouterr().out
    assert "data:blobs.csv at the initial parameters (seed 0), on all 72 training examples" in out
    assert f"parameters n = {(4 + 1) * 5 + (5 + 1) * 3} (float64)" in out and "oracle requests: " in out
    assert main(common + ["--val-fraction", "0"]) == 0
    assert "on all 90 training examples" in capsys.readouterr().out
    assert main(common + ["--activation", "bogus"]) == 2
    assert one_error_line(capsys).startswith("refopt: error: unknown activation 'bogus'")


def test_train_analyze_every_prints_the_last_lambda_max(capsys):
    argv = ["train", "sgd", "lr=0.1", "--problem", "logistic", "--steps", "3", "--no-progress"]
    assert main(argv + ["--analyze-every", "2"]) == 0
    out = capsys.readouterr().out
    # sgd with logistic's tuned momentum 0.9 at the given lr 0.1: 2(1 + 0.9)/0.1
    assert "Hessian λ_max at step 2: " in out and "(gradient descent's stability threshold at this lr: 38)" in out
    assert main(argv) == 0
    assert "λ_max" not in capsys.readouterr().out
    assert main(["train", "newton", "--problem", "rosenbrock", "--steps", "2", "--analyze-every", "1",
                 "--no-progress"]) == 0
    line = next(l for l in capsys.readouterr().out.splitlines() if "λ_max" in l)
    assert line.startswith("Hessian λ_max at step 2: ") and "threshold" not in line   # none for Newton


# --- review of issue 12: the command's messages, options and defaults -------------------------------------------

def test_parse_value_reads_json_or_says_it_is_not():
    assert parse_value('"cosine"') == "cosine" and parse_value('{"name": "step", "gamma": 0.5}') == {
        "name": "step", "gamma": 0.5}
    for text in ("{name: cosine}", "[1, 2", '"open'):
        with pytest.raises(ValueError, match="is not JSON"):
            parse_value(text)
    assert parse_value("cosine") == "cosine"  # a bare word is still a name


def test_train_stops_a_diverging_run_by_default_as_compare_does(capsys):
    """sgd lr=1000 used to 'complete' with a loss of 260; the default factor 10 stops it as diverged, and
    --divergence-factor none runs it out (only a non-finite loss stops it then)."""
    argv = ["train", "sgd", "lr=1000", "--problem", "synthetic_mlp", "--steps", "20", "--no-progress"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "sgd on synthetic_mlp: diverged after 1 step;" in out and "exceeds" in out
    assert main(argv + ["--divergence-factor", "none"]) == 0
    assert "diverged after 1 step" not in capsys.readouterr().out


def test_a_checkpoint_is_written_at_the_end_without_checkpoint_every(tmp_path, capsys):
    ck = tmp_path / "ck.npz"
    common = ["train", "sgd", "lr=0.5", "--problem", "synthetic_mlp", "--no-progress"]
    assert main(common + ["--steps", "2", "--checkpoint", str(ck)]) == 0
    assert f"checkpoint of step 2 written to {ck}" in capsys.readouterr().out
    assert main(common + ["--steps", "4", "--resume", str(ck)]) == 0
    assert "completed after 4 steps" in capsys.readouterr().out


def test_the_plot_format_is_checked_before_any_run(tmp_path, monkeypatch, capsys):
    import refopt.runner
    monkeypatch.setattr(refopt.runner, "run", lambda *a, **k: pytest.fail("a run started"))
    for argv in (["compare", "--optimizers", "sgd", "--problem", "synthetic_mlp", "--plot", str(tmp_path / "c.txt")],
                 ["train", "sgd", "--problem", "synthetic_mlp", "--no-progress", "--plot", str(tmp_path / "t.doc")]):
        assert main(argv) == 2
        assert "is not one refopt writes; use one of png, pdf, svg" in one_error_line(capsys)


def test_python_warnings_print_as_one_line(capsys):
    """Newton's dense-Hessian warning on the 2410-parameter digits MLP used to print its source line too."""
    import warnings
    from refopt.cli import _show_warning
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = _show_warning
        warnings.warn("a dense step\n  of 2410 parameters", UserWarning)
    assert capsys.readouterr().err == "refopt: warning: a dense step of 2410 parameters\n"


def test_main_shows_a_warning_as_one_line_and_restores_the_display(monkeypatch, capsys):
    import warnings
    import refopt.cli as cli

    def warn(args):
        warnings.warn("dense Newton: 2410 parameters, a slow step", UserWarning)
        return 0
    monkeypatch.setattr(cli, "cmd_list", warn)
    before = warnings.showwarning
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        assert main(["list"]) == 0
    assert capsys.readouterr().err == "refopt: warning: dense Newton: 2410 parameters, a slow step\n"
    assert warnings.showwarning is before


def test_out_of_memory_is_one_line(monkeypatch, capsys):
    import refopt.cli as cli

    def huge(args):
        raise MemoryError("Unable to allocate 7.45 GiB")
    monkeypatch.setattr(cli, "cmd_list", huge)
    assert main(["list"]) == 2
    assert one_error_line(capsys) == ("refopt: error: out of memory (Unable to allocate 7.45 GiB): a smaller network, "
                                      "batch or data set needs less")


def test_progress_bars_only_on_a_terminal(monkeypatch, capsys):
    """Redirected stderr (not a TTY) gets the plain progress lines, never tqdm's redraws."""
    pytest.importorskip("tqdm")
    import refopt.cli as cli
    assert cli._tqdm() is None  # pytest captures stderr: not a terminal
    monkeypatch.setattr(cli.sys.stderr, "isatty", lambda: True, raising=False)
    assert cli._tqdm() is not None
    monkeypatch.setattr(cli.sys.stderr, "isatty", lambda: False, raising=False)
    report, close = cli._progress(10, True)
    for step in range(1, 11):
        report({"step": step, "loss": 1.0 / step})
    close()
    assert capsys.readouterr().err.splitlines() == ["step     1  loss 1", "step     2  loss 0.5", "step     3  loss 0.333333",
                                                    "step     4  loss 0.25", "step     5  loss 0.2", "step     6  loss 0.166667",
                                                    "step     7  loss 0.142857", "step     8  loss 0.125",
                                                    "step     9  loss 0.111111", "step    10  loss 0.1"]


def test_help_states_the_defaults_and_where_hyperparameters_come_from(capsys):
    import re
    for command, needles in (("train", ["refopt/problems/tuned.py", "default 100", "default 10, as compare"]),
                             ("compare", ["default 200", "default 1e-3", "default refopt-compare.png",
                                          "standard set of 15", "one row per step"])):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        for needle in needles:
            assert needle in text, (command, needle)
    assert not re.search(r"--(quiet|csv)\s*$", text, re.M)


def test_train_does_not_import_compare():
    """train's settings come from refopt.problems.tuned and its description from the runner (the comparison's
    module is only for --plot)."""
    import subprocess
    import sys
    code = ("import sys; from refopt.cli import main; "
            "rc = main(['train', 'sgd', '--problem', 'logistic', '--steps', '1', '--no-progress']); "
            "print(rc, 'refopt.compare' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "0 False", out


def test_problem_from_args_passes_only_the_data_options_given(tmp_path, monkeypatch):
    """data_problem's defaults are stated once, in its signature: the command passes what was typed, read."""
    import argparse
    import refopt.problems.user_data as U
    from refopt.cli_args import add_data_arguments, problem_from_args
    seen = []
    monkeypatch.setattr(U, "data_problem", lambda path, **kw: seen.append(kw))
    parser = argparse.ArgumentParser()
    add_data_arguments(parser)
    data = _blobs_csv(tmp_path)
    problem_from_args(parser.parse_args(["--data", data]))
    problem_from_args(parser.parse_args(["--data", data, "--loss", "gaussian", "--activation", "relu,tanh",
                                         "--val-fraction", "0.25", "--no-standardize", "--split-seed", "4"]))
    assert seen == [{}, {"loss": "gaussian", "activation": ["relu", "tanh"], "val_fraction": 0.25,
                         "standardize": False, "split_seed": 4}]


def test_the_data_options_help_states_data_problems_defaults():
    import argparse
    import inspect
    from refopt.cli_args import DEFAULT_VAL_FRACTION, add_data_arguments
    from refopt.problems.user_data import data_problem
    defaults = {k: p.default for k, p in inspect.signature(data_problem).parameters.items()}
    parser = argparse.ArgumentParser()
    add_data_arguments(parser)
    helps = {a.dest: a.help for a in parser._actions}
    assert DEFAULT_VAL_FRACTION == defaults["val_fraction"]
    assert f"default {DEFAULT_VAL_FRACTION}" in helps["val_fraction"]
    assert f"(default {defaults['activation']})" in helps["activation"]
    assert f"(default {defaults['split_seed']})" in helps["split_seed"]
    assert defaults["standardize"] is True and "(default: on)" in helps["standardize"]
    assert defaults["loss"] == "softmax" and "softmax cross-entropy (integer labels; the default)" in helps["loss"]
    assert defaults["sizes"] is None and "(default: features,32,classes or targets)" in helps["sizes"]


def test_verify_export_help_lists_the_trace_problems_from_their_table(monkeypatch, capsys):
    """The names come from TRACE_PROBLEMS when the parser is built: a problem added there is named at once."""
    from refopt.verify import trace
    monkeypatch.setitem(trace.TRACE_PROBLEMS, "tiny_added", {})
    with pytest.raises(SystemExit):
        main(["verify", "export", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "a trace problem: tiny_mlp (default), tiny_regression, tiny_logistic, tiny_cnn, tiny_added" in text, text
