"""`refopt analyze` and `refopt train --analyze-every` against dense spectra built independently in this file.

Ground truth: the Hessian and GGN of the MLP 4-3-3 (tanh, softmax cross-entropy) on the repository's
examples/blobs.csv (80 training rows after the default 0.2 held-out split), from HIPS autograd on a forward
pass written here (flattening [vec(W₁), b₁, vec(W₂), b₂], row-major; GGN = (1/B) Σ J_iᵀ (diag p_i − p_i p_iᵀ)
J_i); Rosenbrock's Hessian in closed form; spectra from numpy.linalg.eigvalsh. The data and initial
parameters are inputs taken from refopt's problem (not what is tested); a checkpoint's parameters are read
from the file with the raw ``serialize.read_npz``, not the loader under test.

Printed eigenvalues: each comes as "v ± b" with b the Ritz (or power-iteration) residual bound and as many
digits as b supports (the last digit's unit u is ≥ b and u/10 < b); so |v − λ| ≤ b + u/2 for the eigenvalue λ
of the same rank. Condition numbers agree with the dense κ to 1.5 units of their last digit when converged
(the first-order bound and the rounding), and are ≤ κ (Ritz values interlace) when printed as "≥".
hessian_max uses Lanczos with 30 ≥ n = 27 steps, which gives the whole spectrum: it agrees with eigvalsh to
rounding, 1e-12·‖H‖₂ (n·eps for these O(1) matrices, with margin). The CuPy stand-in (tests/fake_cupy.py)
must give NumPy's numbers to 1e-10 relative, as in test_fake_cupy.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import autograd
import autograd.numpy as anp
import numpy as np
import pytest

from _helpers import one_error_line
from refopt.cli import main

ROOT = Path(__file__).resolve().parent.parent
BLOBS = str(ROOT / "examples" / "blobs.csv")
SIZES = (4, 3, 3)
N = (4 + 1) * 3 + (3 + 1) * 3      # 27 parameters
NET = ["--data", BLOBS, "--sizes", "4,3,3"]
POWER_CONVERGED = ["--method", "power", "--tol", "1e-13", "--iterations", "3000"]


# --- independent dense matrices ------------------------------------------------------------------------------
def _problem():
    from refopt.problems.user_data import data_problem
    return data_problem(BLOBS, sizes=list(SIZES))


def _flat(params) -> np.ndarray:
    """[vec(W₁), b₁, vec(W₂), b₂] by hand (row-major), not through refopt.tree."""
    return np.concatenate([np.ravel(np.asarray(layer[k])) for layer in params for k in ("W", "b")])


def _logits(theta, X):
    a, i = X, 0
    for l, (fi, fo) in enumerate(zip(SIZES[:-1], SIZES[1:])):
        W = anp.reshape(theta[i:i + fi * fo], (fi, fo))
        i += fi * fo
        a = anp.dot(a, W) + theta[i:i + fo]
        i += fo
        if l < len(SIZES) - 2:
            a = anp.tanh(a)
    return a


def _dense(theta, X, y):
    """(H, GGN) of the mean softmax cross-entropy at theta on (X, y)."""
    def loss(th):
        z = _logits(th, X)
        zmax = anp.max(z, axis=1, keepdims=True)
        return anp.mean(anp.log(anp.sum(anp.exp(z - zmax), axis=1)) + zmax[:, 0] - z[np.arange(len(y)), y])
    H = autograd.hessian(loss)(theta)
    J = autograd.jacobian(lambda th: _logits(th, X))(theta)          # (B, C, n)
    z = _logits(theta, X)
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    G = sum(J[i].T @ (np.diag(p[i]) - np.outer(p[i], p[i])) @ J[i] for i in range(len(y))) / len(y)
    return H, G


def _top_by_magnitude(M, k):
    ev = np.linalg.eigvalsh(M)
    return ev[np.argsort(-np.abs(ev), kind="stable")][:k]


def _top_algebraic(M, k):
    return np.linalg.eigvalsh(M)[::-1][:k]


def _unit(text: str) -> float:
    """One unit of the last printed digit of a decimal such as '1.0597107', '909.3' or '2.7e-05'."""
    mantissa, _, exponent = text.lower().partition("e")
    decimals = len(mantissa.split(".")[1]) if "." in mantissa else 0
    return 10.0 ** (int(exponent or 0) - decimals)


def _significant(text: str) -> int:
    return len(text.lower().partition("e")[0].replace("-", "").replace(".", "").lstrip("0"))


def _printed(out: str, label: str):
    """(line, values, bounds, units) of the printed 'top k eigenvalues of the <label> (...)' line."""
    line = next(l for l in out.splitlines() if l.startswith("top ") and f"of the {label} (" in l)
    items = [item.split(" ± ") for item in line.split("): ", 1)[1].split("  [")[0].split(", ")]
    values = np.array([float(v) for v, _ in items])
    bounds = np.array([float(b) for _, b in items])
    units = np.array([_unit(v) for v, _ in items])
    for (v, _), b, u in zip(items, bounds, units):  # as many digits as the bound supports, no more
        assert u >= b and (u / 10 < b or _significant(v) == 15), (v, b)
    return line, values, bounds, units


def _assert_printed(out: str, label: str, exact):
    """The printed top eigenvalues are the dense ones (same order) within bound + half a unit of their last digit."""
    line, values, bounds, units = _printed(out, label)
    assert values.shape == exact.shape, (line, exact)
    assert np.all(np.abs(values - exact) <= bounds + units / 2 + 1e-15 * np.abs(exact)), (line, exact)
    return line


def _condition(out: str, label: str):
    """(the printed value text, the whole line) of 'condition number of the <label> ...'."""
    line = next(l for l in out.splitlines() if l.startswith(f"condition number of the {label}"))
    return line.split(": ", 1)[1].split("  (")[0], line


def _preconditioned_dense(oracle, params, damping):
    """The K-FAC-preconditioned damped GGN as a dense matrix (the operator is checked against a dense Kronecker
    construction in test_analysis.py; here Lanczos and the printing are under test)."""
    from refopt.analysis import kfac_preconditioned_ggn_operator
    M = kfac_preconditioned_ggn_operator(oracle, params, damping).to_dense()
    return (M + M.T) / 2


# --- refopt analyze --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("batch", [None, 20])
def test_analyze_prints_the_dense_top_eigenvalues_of_h_and_the_ggn(batch, capsys):
    """At the defaults (Lanczos): the k largest algebraic eigenvalues, descending, with their residual bounds and
    the digits those support; power iteration (--method power) gives the k of largest magnitude, sorted so."""
    extra = ["--batch-size", str(batch)] if batch else []
    common = ["analyze", *NET, "-k", "3", "--analyses", "hessian_top,ggn_top", "--no-progress", "--seed", "2", *extra]
    assert main(common) == 0
    out = capsys.readouterr().out
    problem = _problem()
    X, y = np.asarray(problem.X), np.asarray(problem.y)
    if batch:  # the first mini-batch of `refopt train --batch-size 20 --seed 2`: rng([2, 0]).permutation(80)
        idx = np.random.default_rng([2, 0]).permutation(len(y))[:batch]
        X, y = X[idx], y[idx]
        assert f"a batch of {batch} of the 80 training examples" in out
    else:
        assert "all 80 training examples" in out
    H, G = _dense(_flat(problem.init_params(2)), X, y)
    assert not np.allclose(H, G)  # the MLP's H and GGN differ, so the two lines test different products
    line = _assert_printed(out, "Hessian", _top_algebraic(H, 3))
    assert "(largest algebraic, descending; Lanczos, " in line and "not all converged" not in line
    _assert_printed(out, "GGN", _top_algebraic(G, 3))
    assert f"parameters n = {N} (float64)" in out
    assert re.search(r"oracle requests: .*nhvp \d+, nggnvp \d+", out), out
    assert main([*common, *POWER_CONVERGED]) == 0
    out = capsys.readouterr().out
    line = _assert_printed(out, "Hessian", _top_by_magnitude(H, 3))
    assert "(largest magnitude, descending; power iteration" in line
    _assert_printed(out, "GGN", _top_by_magnitude(G, 3))


def test_the_top_eigenvalues_are_the_largest_algebraic_not_the_largest_magnitude(capsys):
    """At Rosenbrock's (0, 1) the Hessian is diag(−398, 200): the top one is 200, the largest magnitude −398."""
    argv = ["analyze", "--problem", "rosenbrock", "--analyses", "hessian_top", "-k", "1", "--no-progress"]
    rc = main(argv)   # the start point (−1.2, 1): both eigenvalues positive, the two orders agree
    assert rc == 0
    x, y = -1.2, 1.0
    H = np.array([[1200 * x ** 2 - 400 * y + 2, -400 * x], [-400 * x, 200.0]])
    _assert_printed(capsys.readouterr().out, "Hessian", _top_algebraic(H, 1))
    from refopt.analysis import analyze
    from refopt.backend import as_array
    from refopt.problems.registry import make_problem
    oracle = make_problem("rosenbrock").oracle()
    lanczos = analyze(oracle, as_array([0.0, 1.0]), k=1, analyses=["hessian_top"])["hessian_top"]
    power = analyze(oracle, as_array([0.0, 1.0]), k=1, method="power", tol=1e-14, max_iter=3000,
                    analyses=["hessian_top"])["hessian_top"]
    assert abs(lanczos["values"][0] - 200.0) <= 1e-12 * 398 and abs(power["values"][0] + 398.0) <= 1e-9 * 398


def test_the_condition_numbers_printed_are_the_dense_ones_or_marked_lower_bounds(capsys):
    """Converged (the default: here n = 27 steps at most) the printed κ of G + λI and of the K-FAC-preconditioned
    GGN equal the dense ones to their last digit; stopped early (--max-steps 6) each is printed as "≥ value",
    a lower bound of the dense κ, with the residuals that say why."""
    problem = _problem()
    params = problem.init_params(0)
    H, G = _dense(_flat(params), np.asarray(problem.X), np.asarray(problem.y))
    lam = 1e-2
    wg = np.linalg.eigvalsh(G + lam * np.eye(N))
    wp = np.linalg.eigvalsh(_preconditioned_dense(problem.oracle(), params, lam))
    dense = {"damped GGN": wg[-1] / wg[0], "K-FAC-preconditioned": wp[-1] / wp[0]}
    assert abs(dense["damped GGN"] / dense["K-FAC-preconditioned"] - 1) > 0.05   # two different numbers
    common = ["analyze", *NET, "--analyses", "kfac_condition", "--damping", str(lam), "--no-progress"]
    assert main(common) == 0
    out = capsys.readouterr().out
    for label, kappa in dense.items():
        text, line = _condition(out, label)
        assert not text.startswith("≥") and "a lower bound" not in line, line
        assert abs(float(text) - kappa) <= 1.5 * _unit(text), (line, kappa)
        assert _significant(text) >= 4, line
    assert main(common + ["--max-steps", "6"]) == 0
    out = capsys.readouterr().out
    for label, kappa in dense.items():
        text, line = _condition(out, label)
        assert text.startswith("≥ ") and "a lower bound: not converged to tol 0.0001 in 6 Lanczos steps" in line, line
        assert float(text[2:]) <= kappa * (1 + 1e-12), (line, kappa)      # θ_max/θ_min ≤ λ_max/λ_min
        assert float(text[2:]) < 0.99 * kappa                              # and here clearly below it


def test_analyze_at_a_checkpoint_uses_its_params_and_writes_the_json_report(tmp_path, capsys):
    from refopt.serialize import read_npz

    ck, js = str(tmp_path / "ck.npz"), str(tmp_path / "report.json")
    assert main(["train", "sgd", "lr=0.5", *NET, "--steps", "3", "--checkpoint", ck, "--checkpoint-every", "3",
                 "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["analyze", *NET, "--checkpoint", ck, "-k", "2", "--probes", "7", "--json", js, "--plot", "",
                 "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert f"at the parameters of {ck} (step 3 of sgd)" in out
    _, objs = read_npz(ck)                                           # the raw file, not the checked loader
    theta = _flat(objs["params"])
    problem = _problem()
    assert not np.allclose(theta, _flat(problem.init_params(0)))     # training moved them
    H, G = _dense(theta, np.asarray(problem.X), np.asarray(problem.y))
    _assert_printed(out, "Hessian", _top_algebraic(H, 2))
    _assert_printed(out, "GGN", _top_algebraic(G, 2))

    report = json.loads(Path(js).read_text())
    assert report["problem"] == "data:blobs.csv" and report["n"] == N
    assert report["params"] == {"checkpoint": ck, "step": 3, "optimizer": "sgd"}
    top = report["hessian_top"]
    assert top["method"] == "lanczos" and all(top["converged"]) and top["steps"] <= N
    # each value within its residual of the eigenvalue (Ritz residuals bound the distance), and converged
    assert np.all(np.abs(np.array(top["values"]) - _top_algebraic(H, 2)) <= np.array(top["residuals"]) + 1e-13)
    np.testing.assert_allclose(top["values"], _top_algebraic(H, 2), rtol=1e-8)
    assert report["hessian_trace"]["probes"] == 7 and report["ggn_trace"]["probes"] == 7
    # the trace within 5 standard errors of tr H (a fixed seed: this is one deterministic draw)
    assert abs(report["hessian_trace"]["estimate"] - np.trace(H)) <= 5 * report["hessian_trace"]["stderr"]
    kc = report["kfac_condition"]
    ev = np.linalg.eigvalsh(G) + kc["damping"]
    g = kc["damped_ggn"]
    np.testing.assert_allclose([g["lambda_max"], g["lambda_min"]], [ev[-1], ev[0]], rtol=1e-8)
    assert g["converged"] and not g["lower_bound"] and g["steps"] <= N and kc["tol"] == 1e-4
    assert abs(sum(map(sum, report["density"]["weights"])) - 1) < 1e-12
    assert set(report["counts"]) >= {"nhvp", "nggnvp"}
    assert "report written to" in out


def test_analyze_a_checkpoint_of_a_built_in_problem_needs_no_problem_option(tmp_path, capsys):
    """The checkpoint names its problem; without --problem/--data analyze uses it (not the default digits_mlp).
    A checkpoint of the user's own data needs --data (the file is not in the checkpoint): one line says so."""
    ck = str(tmp_path / "ck.npz")
    assert main(["train", "sgd", "--problem", "logistic", "--steps", "2", "--checkpoint", ck,
                 "--checkpoint-every", "2", "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["analyze", "--checkpoint", ck, "--analyses", "hessian_top", "-k", "1", "--no-progress"]) == 0
    assert f"logistic at the parameters of {ck} (step 2 of sgd)" in capsys.readouterr().out
    assert main(["analyze", "--checkpoint", ck, "--problem", "synthetic_mlp", "--no-progress"]) == 2
    assert "checkpoint was written for another problem" in one_error_line(capsys)   # an explicit one is checked
    data_ck = str(tmp_path / "data.npz")
    assert main(["train", "sgd", *NET, "--steps", "1", "--checkpoint", data_ck, "--checkpoint-every", "1",
                 "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["analyze", "--checkpoint", data_ck, "--no-progress"]) == 2
    line = one_error_line(capsys)
    assert f"--checkpoint {data_ck} was written for your own data ('data:blobs.csv'): give --data" in line


def test_analyze_refuses_a_checkpoint_of_other_data_or_network(tmp_path, capsys):
    data = tmp_path / "blobs.csv"
    data.write_text(Path(BLOBS).read_text())
    ck = str(tmp_path / "ck.npz")
    net = ["--data", str(data), "--sizes", "4,3,3"]
    assert main(["train", "adam", *net, "--steps", "2", "--checkpoint", ck, "--checkpoint-every", "2",
                 "--no-progress"]) == 0
    capsys.readouterr()
    common = ["analyze", "--checkpoint", ck, "--analyses", "hessian_top", "--no-progress"]
    for extra, needle in [(["--data", str(data), "--sizes", "4,5,3"], "its sizes differ"),
                          (["--data", str(data), "--sizes", "4,3,3", "--split-seed", "1"], "its data"),
                          (["--problem", "synthetic_mlp"], "checkpoint was written for another problem")]:
        assert main(common + extra) == 2
        line = one_error_line(capsys)
        assert needle in line and ck in line, line
    lines = data.read_text().splitlines()
    lines[1] = "9.5" + lines[1][lines[1].index(","):]                 # one value of one example changed
    data.write_text("\n".join(lines) + "\n")
    assert main(common + net) == 2
    assert "its data (training or held-out arrays) differ" in one_error_line(capsys)


def test_analyze_refuses_files_that_are_not_checkpoints(tmp_path, capsys):
    bogus = tmp_path / "bogus.npz"
    np.savez(bogus, x=np.zeros(3))
    for path, needle in [(str(bogus), "not a refopt file"), (str(tmp_path / "none.npz"), "No such file"),
                         (str(tmp_path), "is a directory")]:
        assert main(["analyze", *NET, "--checkpoint", path, "--no-progress"]) == 2
        assert needle in one_error_line(capsys)
    from refopt.serialize import write_npz_atomic
    other = str(tmp_path / "other.npz")  # refopt's container, but not a checkpoint (or of an older format)
    for meta, needle in [({"format": "something"}, "not a refopt checkpoint (format 'something')"),
                         ({"format": "refopt-checkpoint/1"}, "checkpoint format 'refopt-checkpoint/1'"),
                         ({"format": "refopt-checkpoint/2", "version": "0.0"}, "written by refopt '0.0'")]:
        write_npz_atomic(other, meta, params=[np.zeros(2)])
        assert main(["analyze", *NET, "--checkpoint", other, "--no-progress"]) == 2
        assert needle in one_error_line(capsys)


def test_analyze_refuses_a_hostile_or_inconsistent_checkpoint_and_runs_nothing(tmp_path, monkeypatch, capsys):
    """The optimizer the meta names is only looked up in refopt's table and state classes only in its registry:
    a file naming anything else is refused in one line before any of it is built."""
    import os
    monkeypatch.chdir(tmp_path)
    assert main(["train", "sgd", "lr=0.5", *NET, "--steps", "2", "--checkpoint", "ck.npz", "--checkpoint-every", "2",
                 "--no-progress"]) == 0
    capsys.readouterr()
    with np.load("ck.npz") as data:
        files = dict(data)
    meta, skeleton = json.loads(str(files["meta"])), json.loads(str(files["skeleton"]))

    def variant(meta_change=None, skeleton_change=None):
        changed = dict(files)
        changed["meta"] = np.array(json.dumps({**meta, **(meta_change or {})}))
        changed["skeleton"] = np.array(json.dumps({**skeleton, **(skeleton_change or {})}))
        np.savez("bad.npz", **changed)
        assert main(["analyze", *NET, "--checkpoint", "bad.npz", "--no-progress"]) == 2
        return one_error_line(capsys)

    touch = {"namedtuple": "refopt.serialize:os.system", "fields": {"command": "touch marker"}}
    assert "unknown state class" in variant(skeleton_change={"state": touch})
    assert "checkpoint meta: optimizer must be one of refopt's" in variant({"optimizer": "os.system"})
    assert "optimizer must be one of refopt's (`refopt list`), got None" in variant({"optimizer": None})
    assert "checkpoint meta: hyperparameters must be an object" in variant({"hyperparameters": [1]})
    # (analyze reads the params alone: no optimizer is built from the file's hyperparameters, so their values
    # and the seed are not checked here; `train --resume` checks them against its own run)
    assert "checkpoint is 'float32', this run's dtype is float64" in variant({"dtype": "float32"})
    assert not os.path.exists("marker")


@pytest.mark.parametrize("extra,needle", [
    (["-k", "0"], "-k/--top must be a positive integer, got 0"),
    (["--top", str(N + 1)], f"-k/--top must be at most n = {N} (the number of parameters), got {N + 1}"),
    (["--probes", "0"], "--probes must be an integer in [1,"),
    (["--density-probes", "0"], "--density-probes must be an integer in [1,"),
    (["--lanczos-steps", "0"], "--lanczos-steps must be an integer in [1,"),
    (["--method", "power", "--iterations", "0"], "--iterations must be an integer in [1,"),
    (["--iterations", "50"], "--iterations is power iteration's (--method power); Lanczos stops on --tol"),
    (["--max-steps", "0"], "--max-steps must be an integer in [1,"),
    (["--max-steps", str(N + 1)], f"--max-steps must be at most n = {N} (the number of parameters), got {N + 1}"),
    (["-k", "5", "--max-steps", "4"], "-k/--top (5) must be at most --max-steps (4)"),
    (["-k", "101"], "-k/--top must be at most 100, got 101"),
    (["--condition-tol=-1"], "--condition-tol must be a non-negative finite number"),
    (["--damping", "-1"], "--damping must be a positive finite number, got -1.0"),
    (["--damping", "0"], "--damping must be a positive finite number"),
    (["--damping", "nan"], "--damping must be a positive finite number"),
    (["--tol=-1e-3"], "--tol must be a non-negative finite number"),
    (["--seed", "-1"], "--seed must be an integer in [0,"),
    (["--batch-size", "0"], "--batch-size must be an integer in [1, 80]"),
    (["--batch-size", "81"], "--batch-size must be an integer in [1, 80]"),
    (["--analyses", "hessian_top,eigen"], "--analyses: expected names from hessian_top, ggn_top"),
    (["--analyses", "hessian_top", "--plot", "d.png"], "--plot draws the eigenvalue density"),
    (["--json", "/nonexistent-dir/r.json"], "--json /nonexistent-dir/r.json: /nonexistent-dir is not an existing"),
    (["--plot", "/"], "--plot /: is a directory"),
])
def test_bad_analyze_options_exit_2_with_one_line(extra, needle, capsys):
    assert main(["analyze", *NET, "--no-progress", *extra]) == 2
    line = one_error_line(capsys)
    assert needle in line, line


@pytest.mark.parametrize("argv,needle", [
    (["--problem", "no_such_problem"], "unknown problem 'no_such_problem'"),
    (["--problem", "rosenbrock", "--batch-size", "2"], "--batch-size: problem 'rosenbrock' is a function"),
    (["--problem", "rosenbrock", "-k", "3"], "-k/--top must be at most n = 2"),
    (["--sizes", "4,3,3"], "--sizes needs --data"),
])
def test_bad_problems_exit_2_with_one_line(argv, needle, capsys):
    assert main(["analyze", "--no-progress", *argv]) == 2
    assert needle in one_error_line(capsys)


def test_analyze_a_function_problem_reports_the_hessian_and_skips_the_ggn(capsys):
    assert main(["analyze", "--problem", "rosenbrock", "--plot", "", "--no-progress"]) == 0
    out = capsys.readouterr().out
    x, y = -1.2, 1.0                                                  # Rosenbrock's standard start
    H = np.array([[1200 * x ** 2 - 400 * y + 2, -400 * x], [-400 * x, 200.0]])
    _assert_printed(out, "Hessian", _top_algebraic(H, 2))            # k defaults to min(3, n) = 2
    assert "rosenbrock at the start point" in out
    for name in ("ggn_top", "ggn_trace", "kfac_condition"):
        assert f"{name}: skipped" in out
    assert "of the GGN" not in out


def test_analyze_writes_the_density_plot_by_default(tmp_path, monkeypatch, capsys):
    pytest.importorskip("matplotlib")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.chdir(tmp_path)
    common = ["analyze", *NET, "--analyses", "density", "--lanczos-steps", "10", "--no-progress"]
    assert main(common) == 0
    assert (tmp_path / "refopt-density.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "density plot written to refopt-density.png" in capsys.readouterr().out
    assert main(common + ["--plot", "mine.png"]) == 0
    assert (tmp_path / "mine.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    capsys.readouterr()
    (tmp_path / "refopt-density.png").unlink()
    assert main(common + ["--plot", ""]) == 0
    assert not (tmp_path / "refopt-density.png").exists() and "plot written" not in capsys.readouterr().out
    assert main(["analyze", *NET, "--analyses", "hessian_top", "--no-progress"]) == 0   # no density, no plot
    assert not (tmp_path / "refopt-density.png").exists()


def test_analyze_shows_progress_on_stderr_unless_told_not_to(monkeypatch, capsys):
    import sys
    monkeypatch.setitem(sys.modules, "tqdm", None)                   # the line fallback (tqdm is optional)
    common = ["analyze", *NET, "--analyses", "hessian_top,hessian_trace", "--probes", "20", "-k", "2"]
    assert main(common) == 0
    err = capsys.readouterr().err.splitlines()
    # Lanczos counts its steps against its cap, n = 27 here, and may stop before it
    assert err[0] == "analyze: hessian_top 0/1" and "analyze: hessian_top 2/27" in err
    assert "analyze: hessian_trace 0/1" in err and "analyze: hessian_trace 20/20" in err
    assert "analyze: hessian_trace 2/20" in err and "analyze: hessian_trace 3/20" not in err   # every tenth
    assert main(common + ["--method", "power"]) == 0                 # power iteration: one unit per eigenpair
    assert "analyze: hessian_top 2/2" in capsys.readouterr().err.splitlines()
    assert main(common + ["--no-progress"]) == 0
    assert capsys.readouterr().err == ""


def test_analyze_progress_bars_with_tqdm_on_a_terminal(monkeypatch):
    pytest.importorskip("tqdm")
    import io
    import sys

    class Terminal(io.StringIO):
        def isatty(self):
            return True
    err = Terminal()
    monkeypatch.setattr(sys, "stderr", err)
    monkeypatch.setattr(sys, "stdout", io.StringIO())
    assert main(["analyze", *NET, "--analyses", "hessian_top,hessian_trace", "--probes", "20", "-k", "2"]) == 0
    text = err.getvalue()
    assert "hessian_top: " in text and "hessian_trace: " in text and "/20 " in text   # one bar per stage
    assert "analyze: hessian_top" not in text                                          # not the line fallback


def test_the_json_report_is_strict_json(tmp_path, capsys):
    js = tmp_path / "r.json"
    assert main(["analyze", *NET, "--analyses", "hessian_trace", "--probes", "1", "--json", str(js),
                 "--no-progress"]) == 0
    def refuse(name):
        raise AssertionError(f"{name} in the JSON report")
    report = json.loads(js.read_text(), parse_constant=refuse)
    assert report["hessian_trace"]["probes"] == 1 and report["hessian_trace"]["stderr"] is None  # NaN for 1 probe
    assert report["params"] == {"init_seed": 0} and report["batch_size"] is None


# --- refopt train --analyze-every ---------------------------------------------------------------------------------
def _records(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def _params_after(steps, hyperparameters):
    """The parameters after ``steps`` steps of sgd (the run without --analyze-every: the trajectory)."""
    from refopt.runner import RunConfig, run
    problem = _problem()
    return run(RunConfig("sgd", hyperparameters, problem.name, steps=steps), problem=problem).params


def test_train_analyze_every_records_the_dense_lambda_max_and_the_stability_threshold(tmp_path, capsys):
    """Plain gradient descent (momentum 0, no weight decay): the threshold is 2/η_t at each recorded step."""
    log = str(tmp_path / "run.jsonl")
    schedule = '{"name": "step", "step_size": 2, "gamma": 0.5}'     # lr 0.5, 0.5, 0.25, 0.25, 0.125
    assert main(["train", "sgd", "lr=0.5", "momentum=0.0", f"schedule={schedule}", *NET, "--steps", "5",
                 "--analyze-every", "2", "--log", log, "--no-progress"]) == 0
    out = capsys.readouterr().out
    records = _records(log)
    assert [r["step"] for r in records if r["hessian_max"] is not None] == [2, 4]   # every 2nd step
    problem = _problem()
    X, y = np.asarray(problem.X), np.asarray(problem.y)
    hyper = {"lr": 0.5, "momentum": 0.0, "schedule": json.loads(schedule)}
    for rec in records:
        if rec["hessian_max"] is None:
            assert rec["hessian_max_residual"] is None and rec["stability_threshold"] is None
            continue
        H, _ = _dense(_flat(_params_after(rec["step"], hyper)), X, y)
        ev = np.linalg.eigvalsh(H)
        assert abs(rec["hessian_max"] - ev[-1]) <= 1e-12 * np.abs(ev).max(), (rec["step"], rec["hessian_max"], ev)
        assert rec["hessian_max_residual"] <= 1e-10
        assert rec["stability_threshold"] == 2 / (0.5 * 0.5 ** ((rec["step"] - 1) // 2))
    last = records[-1]
    assert last["step"] == 5 and last["hessian_max"] is None
    assert (f"Hessian λ_max at step 4: {records[3]['hessian_max']:.6g} (gradient descent's stability threshold "
            "at this lr: 8)") in out


def test_analyze_every_finds_the_algebraic_top_not_the_largest_magnitude(capsys):
    """At Rosenbrock's start both eigenvalues are positive; at (0, 1) its Hessian [[−398, 0], [0, 200]] has the
    largest magnitude negative: hessian_max must be 200 there. The threshold given is recorded as it is."""
    from refopt.runner import _sharpness
    from refopt.problems.registry import make_problem
    from refopt.backend import as_array
    oracle = make_problem("rosenbrock").oracle()
    rec = _sharpness(oracle, as_array([0.0, 1.0]), None)
    assert abs(rec["hessian_max"] - 200.0) <= 1e-12 * 398 and rec["stability_threshold"] is None
    assert _sharpness(oracle, as_array([0.0, 1.0]), 4.0)["stability_threshold"] == 4.0
    assert np.isnan(_sharpness(oracle, as_array([np.nan, 1.0]), None)["hessian_max"])


@pytest.mark.parametrize("optimizer,hyperparameters,batch_size", [
    ("sgd", {"lr": 0.5, "momentum": 0.9}, None),
    ("adahessian", {"lr": 0.05}, 16),      # random probes every step
    ("kfac", {"lr": 0.2, "damping": 1e-2}, 32),
])
def test_analyze_every_leaves_the_trajectory_bit_for_bit_unchanged(optimizer, hyperparameters, batch_size):
    from refopt import tree as T
    from refopt.runner import RunConfig, run
    problem = _problem()
    runs = [run(RunConfig(optimizer, hyperparameters, problem.name, steps=4, batch_size=batch_size,
                          analyze_every=every), problem=problem) for every in (None, 1)]
    plain, analyzed = runs
    leaves = [T.leaves(r.params) + T.leaves(r.state) for r in runs]
    assert len(leaves[0]) == len(leaves[1]) > 0
    for a, b in zip(*leaves):
        assert np.array_equal(np.asarray(a), np.asarray(b))
    for r0, r1 in zip(plain.history, analyzed.history):   # the optimizer's counts too: its requests are its own
        assert {k: v for k, v in r0.items() if k != "elapsed"} == \
            {k: v for k, v in r1.items()
             if k not in ("elapsed", "hessian_max", "hessian_max_residual", "stability_threshold")}
        assert r1["hessian_max"] is not None and "hessian_max" not in r0


def test_a_resumed_run_keeps_recording_where_an_uninterrupted_one_does(tmp_path, capsys):
    ck, log_a, log_b = (str(tmp_path / name) for name in ("ck.npz", "a.jsonl", "b.jsonl"))
    common = ["train", "sgd", "lr=0.5", *NET, "--analyze-every", "2", "--no-progress"]
    assert main(common + ["--steps", "6", "--log", log_a]) == 0
    assert main(common + ["--steps", "3", "--checkpoint", ck, "--checkpoint-every", "3"]) == 0
    assert main(common + ["--steps", "6", "--resume", ck, "--log", log_b]) == 0
    capsys.readouterr()
    a, b = _records(log_a), _records(log_b)
    assert [r["step"] for r in b if r["hessian_max"] is not None] == [2, 4, 6]
    for ra, rb in zip(a, b):
        assert {k: v for k, v in ra.items() if k != "elapsed"} == {k: v for k, v in rb.items() if k != "elapsed"}


def test_analyze_every_is_validated(capsys):
    from refopt.runner import RunConfig
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="analyze_every must be an integer"):
            RunConfig("sgd", analyze_every=bad)
    assert main(["train", "sgd", "--problem", "synthetic_mlp", "--analyze-every", "0", "--no-progress"]) == 2
    assert "analyze_every must be an integer in [1," in capsys.readouterr().err
    assert "analyze_every" not in RunConfig("sgd", analyze_every=3).identity()


def test_analyze_every_and_analyze_run_on_the_cupy_stand_in_with_numpys_numbers(tmp_path, capsys):
    """The stand-in refuses implicit host/device conversions (tests/fake_cupy.py); its numbers are NumPy's
    to rounding (reductions may add in another order): 1e-10 relative."""
    from _helpers import on_both
    from refopt.runner import RunConfig, run

    def both():
        problem = _problem()
        result = run(RunConfig("sgd", {"lr": 0.5}, problem.name, steps=4, batch_size=16, analyze_every=2),
                     problem=problem)
        assert main(["analyze", *NET, "--batch-size", "16", "-k", "2", "--probes", "5", "--no-progress",
                     "--plot", "", "--json", str(tmp_path / "r.json")]) == 0
        capsys.readouterr()
        report = json.loads((tmp_path / "r.json").read_text())
        return [r["hessian_max"] for r in result.history if r["hessian_max"] is not None], \
            report["hessian_top"]["values"] + report["ggn_top"]["values"] + [report["hessian_trace"]["estimate"]]
    ref, got = on_both(both)
    for a, b in zip(ref, got):
        assert len(a) == len(b) > 0
        np.testing.assert_allclose(b, a, rtol=1e-10)
