"""The float32 pass: every optimizer, every curvature product and the autodiff API run in float32, keep
float32 in params, state and results, and agree with the float64 run to a float32-scaled tolerance.

The rest of the suite runs in float64 (conftest.py's autouse fixture; its tolerances are float64's). Each
test here builds the same problem twice, in float32 and in float64 from the same host draws, so the
float64 run is the reference for the float32 one. ``REFOPT_DTYPE=float32`` itself is checked end to end
through the command line in a subprocess.
"""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from refopt import autodiff as ad
from refopt import backend as B
from refopt import tree as T
from refopt import curvature as C
from refopt.autodiff import primitives as P
from refopt.curvature import kronecker as K
from refopt.minimize import FUNCTION_METHODS, minimize
from refopt.nn import MLP, Gaussian, SoftmaxCrossEntropy
from refopt.optim import OPTIMIZERS, make_optimizer, optimizer_class
from refopt.oracle import Oracle
from refopt.problems.functions import quadratic, rosenbrock

ROOT = Path(__file__).resolve().parents[1]
EPS32 = float(np.finfo(np.float32).eps)  # 1.19e-7

# Tolerances, relative to the largest entry of the float64 result.
# A product (one pass of sums of ≤ 30 terms, tanh, softmax) loses ~30 ulps of float32 at worst: 100·eps32.
PRODUCT_RTOL = 100 * EPS32
# An optimizer step adds a solve or a normalisation. The problems below keep every solved matrix's condition
# number κ ≤ ~100 (damping or ε where the default would be singular; Rosenbrock's Hessian at its start has
# κ ≈ 64), so three steps lose at most about 3 · κ · 30 · eps32 ≈ 1e-3 relative. Observed: products within
# 2 eps32, steps within 1e-5 (the dense quasi-Newton methods and Shampoo on Rosenbrock). A dtype bug (a
# float64 leak, ε rounded away, a state reset) shows as an error of order 1.
STEP_RTOL = 1e-3

# Hyperparameters that keep each solve well conditioned (see STEP_RTOL); the rest run with their defaults.
# adagrad_full's δ = 1e-6 under a rank-one g gᵀ makes G^{-1/2} condition ~1e6: float32 and float64 then
# disagree at O(1) by conditioning alone. Gauss-Newton's undamped GGN is rank-deficient on this batch.
WELL_POSED = {"adagrad_full": {"eps": 1e-1}, "gauss_newton": {"damping": 1.0}}


def _float_leaves(obj, path="state"):
    """(path, leaf) for every floating array or NumPy floating scalar in a nested state/info/params."""
    if isinstance(obj, dict):
        for k in sorted(obj, key=str):
            yield from _float_leaves(obj[k], f"{path}[{k!r}]")
    elif isinstance(obj, tuple) and hasattr(obj, "_fields"):  # a NamedTuple state
        for k in obj._fields:
            yield from _float_leaves(getattr(obj, k), f"{path}.{k}")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _float_leaves(v, f"{path}[{i}]")
    elif isinstance(obj, (np.ndarray, np.generic)) and np.dtype(obj.dtype).kind == "f":
        yield path, obj


def assert_float32(obj, path="result"):
    """Every floating array (and NumPy floating scalar) inside ``obj`` is float32; the offenders are named."""
    leaks = [(p, str(leaf.dtype)) for p, leaf in _float_leaves(obj, path) if leaf.dtype != np.float32]
    assert not leaks, leaks


def assert_close(x32, x64, rtol):
    """float32 result = float64 result within rtol · max|x64| (entrywise, over the flattened tree)."""
    a = np.concatenate([np.ravel(np.asarray(leaf, np.float64)) for leaf in T.leaves(x32)])
    b = np.concatenate([np.ravel(np.asarray(leaf, np.float64)) for leaf in T.leaves(x64)])
    assert a.shape == b.shape
    np.testing.assert_allclose(a, b, rtol=0, atol=rtol * max(float(np.max(np.abs(b))), 1e-30))


def mlp_problem(dtype, loss="softmax", sizes=(3, 4, 2), batch=6, seed=0):
    """(oracle, params) of a tiny tanh MLP; data drawn once on the host in float64, then cast to ``dtype``."""
    B.set_default_dtype(dtype)
    g = np.random.default_rng(seed)
    model = MLP(list(sizes))
    params = model.init(seed + 1, dtype=dtype)
    X = g.standard_normal((batch, sizes[0])).astype(dtype)
    if loss == "softmax":
        return Oracle(model, SoftmaxCrossEntropy(), X, g.integers(0, sizes[-1], batch)), params
    return Oracle(model, Gaussian(), X, g.standard_normal((batch, sizes[-1])).astype(dtype)), params


def _three_steps(opt, params, oracle):
    state, infos = opt.init(params), []
    for _ in range(3):
        params, state, info = opt.update(params, state, oracle)
        infos.append(info)
    return params, state, infos


def _check_run(run32, run64):
    (p32, s32, i32), (p64, _, _) = run32, run64
    assert_float32(p32, "params")
    assert_float32(s32, "state")
    assert_float32(i32, "info")
    assert not any(info.get("skipped") for info in i32), [info.get("message") for info in i32]
    assert_close(p32, p64, STEP_RTOL)


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_every_optimizer_keeps_float32_on_a_network(name):
    runs = []
    for dtype in ("float32", "float64"):
        oracle, params = mlp_problem(dtype)
        runs.append(_three_steps(make_optimizer(name, **WELL_POSED.get(name, {})), params, oracle))
    _check_run(*runs)


FUNCTION_OPTIMIZERS = sorted(n for n in OPTIMIZERS if not getattr(optimizer_class(n), "needs_network", False))


@pytest.mark.parametrize("name", FUNCTION_OPTIMIZERS)
def test_every_function_optimizer_keeps_float32_on_a_test_function(name):
    runs = []
    for dtype in ("float32", "float64"):
        B.set_default_dtype(dtype)
        # Rosenbrock from its start (-1.2, 1): not solved in three steps by any method, so every run does three
        # real steps (on a quadratic, Newton lands on x* and then only raises its damping on rounding noise)
        problem = rosenbrock(2)
        assert problem.x0.dtype == np.dtype(dtype)
        runs.append(_three_steps(make_optimizer(name, **WELL_POSED.get(name, {})), problem.x0, problem.oracle()))
    _check_run(*runs)


@pytest.mark.parametrize("method", FUNCTION_METHODS)
def test_minimize_keeps_float32(method):
    results = []
    for dtype in ("float32", "float64"):
        B.set_default_dtype(dtype)
        problem = quadratic(4, 10.0)  # κ = 10: float32 rounding of A moves x* by ~10 eps32
        assert problem.params["A"].dtype == np.dtype(dtype) and problem.x0.dtype == np.dtype(dtype)
        results.append(minimize(problem, method=method, maxiter=3))
    assert_float32(results[0].x, "x")
    assert_close(results[0].x, results[1].x, STEP_RTOL)


# ---------------------------------------------------------------------------------------------------
# Curvature products and the autodiff API.

def _products(oracle, params, dtype):
    """Every curvature product of the package on one problem, as a dict of results."""
    g = np.random.default_rng(7)
    v = T.tree_map(lambda a: g.standard_normal(a.shape).astype(dtype), params)
    model, loss, X, y = oracle.model, oracle.loss, oracle.X, oracle.y
    labels = loss.sample(model.apply(params, X), 3, 2)  # one label draw, shared by both dtypes' MC products
    probes = C.draw_probes(params, 5, k=2)
    stats = K.kfac_statistics(oracle, params, fisher="mc", labels=labels)
    true_stats = K.kfac_statistics(oracle, params, fisher="true")
    f = lambda p: oracle._objective(p)  # noqa: E731
    out = {
        "hvp": C.hvp(model, loss, params, X, y, v),
        "ggn_vp": C.ggn_vp(model, loss, params, X, y, v),
        "fisher_true": C.fisher_vp(model, loss, params, X, y, v, kind="true"),
        "fisher_mc": C.fisher_vp(model, loss, params, X, y, v, kind="mc", labels=labels),
        "fisher_empirical": C.fisher_vp(model, loss, params, X, y, v, kind="empirical"),
        "network_jvp": C.network_jvp(model, params, X, v),
        "curvature_operator": oracle.curvature_operator(params, kind="ggn")(v),
        "hutchinson": C.hutchinson_diagonal(f, params, probes),
        "gnb": C.gnb_diagonal(model, loss, params, X, labels),
        "dense_hessian": oracle.dense_hessian(params),
        "dense_ggn": oracle.dense_ggn(params),
        "dense_fisher_true": oracle.dense_fisher(params, "true"),
        "dense_fisher_empirical": oracle.dense_fisher(params, "empirical"),
        "kfac_grad": stats.grad,
        "kfac_A": [K.input_factor(a) for a in stats.inputs],
        "kfac_G_mc": [K.grad_factor([p[l] for p in stats.probes], stats.scale) for l in range(len(stats.inputs))],
        "kfac_G_true": [K.grad_factor([p[l] for p in true_stats.probes], true_stats.scale)
                        for l in range(len(stats.inputs))],
        # the autodiff API on the same objective
        "grad": ad.grad(f)(params),
        "value_and_grad": ad.value_and_grad(f)(params),
        "vjp": ad.vjp(lambda p: model.apply(p, X), params)[1](model.apply(params, X)),
        "jvp": ad.jvp(lambda p: model.apply(p, X), params, v),
        "ad_hvp": ad.hvp(f, params, v),
        "hvp_operator": ad.hvp_operator(f, params)[1](v),
        "hessian": ad.hessian(f, params),
        "jacobian": ad.jacobian(lambda p: model.apply(p, X), params),
    }
    return out


@pytest.mark.parametrize("loss", ["softmax", "gaussian"])
def test_every_curvature_product_keeps_float32(loss):
    r32 = _products(*mlp_problem("float32", loss), np.float32)
    r64 = _products(*mlp_problem("float64", loss), np.float64)
    for key in r32:
        assert_float32(r32[key], key)
        assert_close(r32[key], r64[key], PRODUCT_RTOL)


def test_constants_do_not_promote_float32():
    """A Python or NumPy float64 constant meeting a float32 operand keeps float32 (the primitives cast it).

    Without the cast, NumPy < 2 promotes a float32 0-d array times a Python float to float64 (the mean of a
    loss, say), and NumPy ≥ 2 promotes a float32 array times np.float64 to float64."""
    x0 = np.asarray(np.float32(3.0))
    x1 = np.ones(3, np.float32)
    for op in (P.add, P.subtract, P.multiply, P.divide, P.maximum, P.power):
        for c in (0.5, 2, np.float64(0.5)):
            assert op(x0, c).dtype == np.float32 and op(x1, c).dtype == np.float32, (op, c)
            if op is not P.power:
                assert op(c, x0).dtype == np.float32 and op(c, x1).dtype == np.float32, (op, c)
    for fn in (P.sigmoid, P.softplus, P.relu, P.tanh):
        assert fn(x0).dtype == np.float32, fn
    # and the derivatives that pass constants to the primitives: d/dx mean(x² / 2 + 1)
    g = ad.grad(lambda x: P.mean(P.add(P.divide(P.power(x, 2), 2.0), 1.0)))(x1)
    assert g.dtype == np.float32
    np.testing.assert_array_equal(g, x1 / 3)


def test_refopt_dtype_float32_through_the_command_line(tmp_path):
    """REFOPT_DTYPE=float32 makes `refopt train` run in float32: every floating array of its checkpoint
    (parameters and optimizer state) is float32."""
    ck = tmp_path / "ck.npz"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "REFOPT_DTYPE": "float32", "REFOPT_BACKEND": "numpy"}
    proc = subprocess.run([sys.executable, "-m", "refopt", "train", "kfac", "--problem", "synthetic_mlp",
                           "--steps", "3", "--no-progress", "--checkpoint", str(ck), "--checkpoint-every", "3"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    with np.load(ck, allow_pickle=False) as files:
        floating = {k: files[k].dtype for k in files.files if files[k].dtype.kind == "f"}
    assert floating and set(floating.values()) == {np.dtype(np.float32)}, floating
