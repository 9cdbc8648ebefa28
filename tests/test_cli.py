"""The refopt command end to end: train, compare, verify, list; errors exit 2 with one line."""
import json

import numpy as np
import pytest

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
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("refopt: error:") and "hyperparameters" in err[0]


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
    (["compare", "--optimizers", "sgd", "--hp-json", "{not json"], "Expecting property name"),
    (["train", "sgd", "--problem", "synthetic_mlp", "--eval-every", "0"], "eval_every must be"),
    (["train", "sgd", "--problem", "synthetic_mlp", "--steps", "0"], "steps must be"),
    (["train", "sgd", "--problem", "synthetic_mlp", "--checkpoint-every", "5"], "needs a checkpoint path"),
])
def test_bad_input_exits_2_with_one_line(argv, needle, capsys):
    assert main(argv + (["--no-progress"] if argv[0] == "train" else [])) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0], err


def test_compare_two_optimizers_writes_plot(tmp_path, capsys):
    plot = tmp_path / "cmp.png"
    rc = main(["compare", "--optimizers", "sgd,adam", "--problem", "synthetic_mlp", "--steps", "10",
               "--max-seconds", "5", "--target-loss", "1.0", "--plot", str(plot), "--quiet"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "sgd" in out and "adam" in out and "final loss" in out
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
    assert "meta has no 'problem'" in capsys.readouterr().err


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
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "scikit-learn" in err[0]


@pytest.mark.parametrize("script,hidden", [("verify_with_torch.py", ["torch"]),
                                           ("verify_with_optax.py", ["jax", "jax.numpy", "optax"])])
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
