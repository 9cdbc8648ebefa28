"""refopt on a CuPy stand-in (tests/fake_cupy.py): every optimizer, the curvature products, the runner and the
trace export run without a host–device leak and give the NumPy backend's numbers.

The stand-in computes with NumPy, so the same refopt code makes the same NumPy calls on the same operands
on both backends: here the results are bit-identical. The tolerance below only allows for a BLAS that picks
kernels by memory alignment (MKL without its CNR mode), whose rounding differences, over a few steps of
these tiny well-conditioned problems, stay orders of magnitude below it; a leak, a lost value or a branch
taken differently changes results at O(1).
"""
from __future__ import annotations

import numpy as np
import pytest

import fake_cupy
from refopt import backend as B
from refopt import tree as T
from refopt.nn import MLP, SoftmaxCrossEntropy
from refopt.optim import OPTIMIZERS, make_optimizer, optimizer_class
from refopt.oracle import FunctionOracle, Oracle
from _helpers import host, host_arrays_in, on_both

RTOL = 1e-10  # relative; see the module docstring
ATOL = 1e-12  # for entries that are 0 on one backend


@pytest.fixture
def fake():
    B._use_array_module(fake_cupy, "cupy")
    fake_cupy.reset_counts()
    yield fake_cupy
    B.set_backend("numpy")


def assert_close(a, b, path="result"):
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            assert_close(a[k], b[k], f"{path}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_close(x, y, f"{path}[{i}]")
    elif isinstance(a, np.ndarray):
        assert isinstance(b, np.ndarray) and a.dtype == b.dtype and a.shape == b.shape, path
        np.testing.assert_allclose(b, a, rtol=RTOL, atol=ATOL, err_msg=path)
    elif isinstance(a, float):
        assert isinstance(b, (float, int)), (path, type(b))
        np.testing.assert_allclose(b, a, rtol=RTOL, atol=ATOL, err_msg=path)
    elif isinstance(a, str) and a.startswith(("oracle:", "function:")):
        assert b.split(":")[0] == a.split(":")[0], path  # a function oracle's token names its function objects
    else:
        assert a == b, path


# --- the stand-in itself behaves like CuPy where CuPy differs from NumPy ------------------------------------
def test_stand_in_refuses_implicit_conversion_and_host_operands(fake):
    x = fake.asarray(np.arange(6.0).reshape(2, 3))
    for convert in (np.asarray, np.array, lambda v: v.__array__()):
        with pytest.raises(TypeError, match="Implicit conversion to a NumPy array is not allowed"):
            convert(x)
    h = np.ones(3)
    for mix in (lambda: x + h, lambda: h + x, lambda: np.add(h, x), lambda: fake.maximum(x, h),
                lambda: x * np.array(2.0), lambda: fake.concatenate([x[0], h]), lambda: x.dot(h)):
        with pytest.raises(TypeError, match="Unsupported type"):
            mix()
    # Python and NumPy scalars are fine; reductions and integer indexing stay on the device.
    y = x * 2 + np.float64(1.0) - 3
    assert isinstance(y, fake.ndarray) and isinstance(fake.sum(x), fake.ndarray) and x[0, 1].shape == ()
    np.testing.assert_array_equal(y.get(), np.arange(6.0).reshape(2, 3) * 2 - 2)
    before = fake.counts["sync"]
    assert float(fake.sum(x)) == 15.0 and bool(x[0, 1] > 0) and int(x[1, 2]) == 5
    assert fake.counts["sync"] == before + 3
    np.testing.assert_array_equal(np.exp(x).get(), np.exp(np.arange(6.0).reshape(2, 3)))  # dispatched


def test_device_array_on_the_left_of_a_traced_value_dispatches_to_the_box(fake):
    # CuPy's _should_use_rop sees the Box's (non-None) __array_ufunc__ and calls the NumPy ufunc; CuPy's own
    # __array_ufunc__ declines the Box, so NumPy hands the operation to the Box's.
    import refopt.autodiff as ad
    c, x = B.as_array(np.array([1.0, 2.0, 3.0])), B.as_array(np.array([0.5, -1.0, 2.0]))
    cases = {"c * z": (lambda z: ad.sum(c * z), [1.0, 2.0, 3.0]), "c + z": (lambda z: ad.sum(c + z), [1.0] * 3),
             "c - z": (lambda z: ad.sum(c - z), [-1.0] * 3), "c / z": (lambda z: ad.sum(c / z), [-4.0, -2.0, -0.75]),
             "c @ z": (lambda z: c @ z, [1.0, 2.0, 3.0]), "z * c": (lambda z: ad.sum(z * c), [1.0, 2.0, 3.0])}
    for name, (f, expected) in cases.items():
        g = ad.grad(f)(x)
        assert isinstance(g, fake.ndarray), name
        np.testing.assert_array_equal(B.to_host(g), expected, err_msg=name)
    with pytest.raises(TypeError, match="Unsupported type"):  # a host array still refused on the left side too
        x @ np.ones(3)


def test_stand_in_offers_only_what_cupy_has(fake):
    for name in ("random", "errstate", "seterr", "frompyfunc", "asfarray"):
        with pytest.raises(AttributeError):
            getattr(fake, name)
    with pytest.raises(AttributeError):
        fake.linalg.eig
    assert callable(fake.linalg.eigh) and callable(fake.vdot)


def test_stand_in_linalg_fails_silently_like_cusolver(fake):
    # Not positive definite: a finite partial factor with a non-positive pivot, no exception, no NaN.
    L = fake.linalg.cholesky(fake.asarray(np.array([[1.0, 2.0], [2.0, 1.0]])))
    np.testing.assert_array_equal(L.get(), [[1.0, 0.0], [2.0, -3.0]])
    assert np.isnan(fake.linalg.solve(fake.zeros((2, 2)), fake.ones(2)).get()).all()


def test_backend_hook_names_cupy_and_moves_with_get(fake):
    assert B.backend_name() == "cupy"
    d = B.to_device(np.arange(3.0))
    assert isinstance(d, fake.ndarray) and isinstance(B.as_array([1, 2]), fake.ndarray)
    np.testing.assert_array_equal(B.to_host(d), np.arange(3.0))
    assert fake.counts["to_host"] == 1
    assert isinstance(B.normal(0, (2,)), fake.ndarray)


# --- every optimizer ------------------------------------------------------------------------------------------
def _network_problem():
    g = np.random.default_rng(5)
    X, y = g.standard_normal((6, 3)), g.integers(0, 2, 6)   # host data, as a user passes it
    model = MLP([3, 4, 2])
    return model, model.init(6), Oracle(model, SoftmaxCrossEntropy(), X, y)


def _quadratic():
    a, c = np.array([1.0, 2.0, 4.0, 8.0]), np.array([1.0, -1.0, 0.5, 2.0])

    def f(x):
        A, C = B.as_array(a), B.as_array(c)
        return 0.5 * B.xp.sum(A * x * x) + B.xp.vdot(C, x)

    def grad(x):
        return B.as_array(a) * x + B.as_array(c)

    def hvp(x, v):
        return B.as_array(a) * v

    def hess(x):
        return B.xp.diag(B.as_array(a))

    return B.as_array(np.zeros(4)), FunctionOracle(f, grad=grad, hess=hess, hvp=hvp)


def _run_steps(name, problem, steps=3):
    """A function running ``steps`` updates of optimizer ``name`` on ``problem()`` = (params, oracle)."""
    def run():
        params, oracle = problem()
        opt = make_optimizer(name)
        state = opt.init(params)
        infos = []
        for _ in range(steps):
            params, state, info = opt.update(params, state, oracle)
            infos.append({k: v for k, v in info.items() if k in ("loss", "skipped", "grad_norm", "message")})
        return params, state, infos, oracle.counts.as_dict()
    return run


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_every_optimizer_runs_on_the_stand_in_and_matches_numpy(name):
    ref, dev = on_both(_run_steps(name, lambda: _network_problem()[1:]))
    assert_close(ref, dev)
    assert not any(info["skipped"] for info in dev[2] if "skipped" in info)
    if not optimizer_class(name).needs_network:
        ref, dev = on_both(_run_steps(name, _quadratic))
        assert_close(ref, dev)


# --- curvature products ---------------------------------------------------------------------------------------
# Host-side targets for a batch of n examples with C outputs, per loss.
TARGETS = {"softmax_cross_entropy": lambda g, n, C: g.integers(0, C, n),
           "gaussian": lambda g, n, C: g.standard_normal((n, C)),
           "bernoulli": lambda g, n, C: (g.random((n, C)) < 0.5).astype(float)}


def _curvature(loss_name):
    from refopt.curvature import kronecker as K
    from refopt.curvature import estimators as E
    from refopt.nn import LOSSES as NN_LOSSES

    def run():
        g = np.random.default_rng(11)
        model, loss = MLP([3, 4, 2]), NN_LOSSES[loss_name]()
        X, y = g.standard_normal((5, 3)), TARGETS[loss_name](g, 5, 2)
        oracle = Oracle(model, loss, X, y)
        params = model.init(3)
        v = T.unravel(B.as_array(g.standard_normal(T.size(params))), params)
        out = {"hvp": oracle.hvp(params, v), "ggn": oracle.ggn_vp(params, v)}
        for kind in ("true", "mc", "empirical"):
            out[f"fisher_{kind}"] = oracle.fisher_vp(params, v, kind=kind, samples=2, seed=4)
        grad0, product = oracle.hvp_operator(params)
        out["hvp_operator"] = (grad0, product(v), product(v))
        out["curvature_operator_mc"] = oracle.curvature_operator(params, kind="mc", samples=2, seed=4)(v)
        out["jvp"], out["vjp"] = oracle.jvp(params, v), oracle.vjp(params, B.as_array(g.standard_normal((5, 2))))
        out["hutchinson"] = oracle.hutchinson_diag(params, seed=5, k=3)
        out["hutchinson_direct"] = E.hutchinson_diagonal(lambda p: oracle._objective(p), params,
                                                         E.draw_probes(params, 5, k=2, distribution="gaussian"))
        out["gnb"] = oracle.gnb_diag(params, seed=6, k=2)
        out["dense_hessian"] = oracle.dense_hessian(params)
        out["dense_ggn"] = oracle.dense_ggn(params)
        for kind in ("true", "empirical"):
            out[f"dense_fisher_{kind}"] = oracle.dense_fisher(params, kind=kind)
        out["dense_fisher_mc"] = oracle.dense_fisher(params, kind="mc", samples=2, seed=4)
        for fisher in ("mc", "empirical", "true"):
            st = K.kfac_statistics(oracle, params, fisher=fisher, samples=2, seed=7)
            A = [K.input_factor(a) for a in st.inputs]
            G = [K.grad_factor([p[l] for p in st.probes], st.scale) for l in range(len(st.inputs))]
            out[f"kfac_{fisher}"] = (st.loss, st.grad, A, G, [K.pi_correction(a, gg) for a, gg in zip(A, G)],
                                     [K.kron_matvec(a, gg, K.layer_matrix(p)) for a, gg, p in zip(A, G, st.grad)],
                                     K.dense_kron(A[0], G[0]))
        out["layer_stats"] = oracle.layer_stats(params)
        out["output_fisher_factor"] = K.output_fisher_factor(loss, model.apply(params, oracle.X))
        return out
    return run


@pytest.mark.parametrize("loss_name", sorted(TARGETS))
def test_curvature_products_run_on_the_stand_in_and_match_numpy(loss_name):
    ref, dev = on_both(_curvature(loss_name))
    assert_close(ref, dev)


# --- the runner: full batch, mini-batches, checkpoint save and resume --------------------------------------------
def _runner(tmp_path, optimizer, problem, batch_size=None, steps=4):
    from refopt.runner import RunConfig, run

    def go():
        tag = B.backend_name()
        cfg = RunConfig(optimizer=optimizer, problem=problem, steps=steps, batch_size=batch_size, seed=1)
        straight = run(cfg)
        ckpt = str(tmp_path / f"{optimizer}-{tag}.ckpt.npz")
        first = run(RunConfig(optimizer=optimizer, problem=problem, steps=steps // 2, batch_size=batch_size, seed=1),
                    checkpoint_path=ckpt, checkpoint_every=steps // 2)
        resumed = run(cfg, resume=ckpt, log_path=str(tmp_path / f"{optimizer}-{tag}.jsonl"))
        # Counts are left out of the resume comparison (not a device question; test_quasi_newton.py checks
        # that a resumed Newton-family run counts the evaluations a straight one does).
        keep = ("step", "loss", "train_loss", "grad_norm", "skipped")
        hist = [[{k: r[k] for k in keep if k in r} for r in res.history] for res in (straight, resumed)]
        return (straight.params, straight.state, straight.status, resumed.params, resumed.state, hist[0], hist[1],
                first.params)
    return go


@pytest.mark.parametrize("optimizer, problem, batch_size", [
    ("kfac", "synthetic_mlp", 64), ("sophia_h", "synthetic_mlp", 64), ("lbfgs", "logistic", None),
    ("newton_cg", "rosenbrock", None)])
def test_runner_with_minibatches_and_resume_on_the_stand_in_matches_numpy(tmp_path, optimizer, problem, batch_size):
    ref, dev = on_both(_runner(tmp_path, optimizer, problem, batch_size))
    assert_close(ref, dev)
    # Resuming from the step-2 checkpoint reproduces the straight run bit for bit on the device too.
    assert_close(dev[0], dev[3])
    assert_close(dev[5], dev[6])  # the logged losses too


# --- golden traces: record, export, load, check ----------------------------------------------------------------
@pytest.mark.parametrize("optimizer", ["adam", "kfac", "lbfgs", "sophia_h"])
def test_trace_export_and_check_on_the_stand_in_match_numpy(tmp_path, optimizer):
    from refopt.verify import check_trace, export_trace, load_trace, make_trace

    def go():
        path = str(tmp_path / f"{optimizer}-{B.backend_name()}.npz")
        trace = make_trace(optimizer, steps=3)
        export_trace(trace, path)
        loaded = load_trace(path)
        divergence, replay = check_trace(loaded)
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files if k != "meta"}
        return arrays, divergence, replay.params, replay.loss
    ref, dev = on_both(go, host_ok=True)
    assert ref[1] is None and dev[1] is None, dev[1]  # each backend's trace checks against a replay on the same backend
    assert_close(ref[0], dev[0])


# --- leaks found by the stand-in, each pinned by a test -----------------------------------------------------------
NOT_PD = np.array([[1.0, 2.0], [2.0, 1.0]])  # eigenvalues 3 and −1


def test_a_failed_cholesky_is_detected_although_cupy_does_not_raise(fake):
    from refopt import linalg as L
    from refopt.optim.quasi_newton import BFGS
    assert L.cholesky(B.as_array(NOT_PD)) is None          # a finite partial factor is not accepted
    np.testing.assert_allclose(B.to_host(L.cholesky(B.as_array(np.diag([4.0, 9.0])))), np.diag([2.0, 3.0]))
    with pytest.raises(ValueError, match="not positive definite"):
        L.damped_solve(B.as_array(NOT_PD), B.as_array(np.ones(2)))
    with pytest.raises(ValueError, match="positive definite"):
        BFGS(initial_matrix=B.as_array(NOT_PD)).init(B.as_array(np.zeros(2)))


def test_an_oracle_moves_host_data_to_the_device(fake):
    model, params, oracle = _network_problem()
    assert isinstance(oracle.X, fake.ndarray) and isinstance(oracle.y, fake.ndarray)
    assert isinstance(oracle.grad(params)[0]["W"], fake.ndarray)
