"""AdaHessian: exact diagonal from all Rademacher probes, Algorithm 1 transcribed, spatial averaging, draws."""
import autograd
import autograd.numpy as anp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from refopt import autodiff as ad
from refopt import tree as T
from refopt.curvature import draw_probes
from refopt.nn import MLP, Gaussian
from refopt.optim import optimizer_class
from refopt.optim.adahessian import AdaHessian, spatial_average
from refopt.oracle import FunctionOracle, Oracle

from _helpers import all_rademacher, assert_refused, assert_switches_declared_with_defaults


def quadratic_oracle(A, b, shape):
    """f(W) = ½ vec(W)ᵀ A vec(W) + bᵀ vec(W) for W of ``shape`` (analytic gradient and Hv)."""
    return FunctionOracle(lambda W: 0.5 * float(W.ravel() @ A @ W.ravel()) + float(b @ W.ravel()),
                          grad=lambda W: (A @ W.ravel() + b).reshape(shape),
                          hvp=lambda W, V: (A @ V.ravel()).reshape(shape))


def reference_spatial_average(D, block, axis):
    if D.ndim < 2 or block == 1:
        return D
    X = np.moveaxis(D, axis, -1).copy()
    n = X.shape[-1]
    b = n if block == -1 else block
    for start in range(0, n, b):
        X[..., start:start + b] = X[..., start:start + b].mean(axis=-1, keepdims=True)
    return np.moveaxis(X, -1, axis)


def adahessian_reference(x0, A, b, probes, lr, b1, b2, eps, k=1.0, block=1, axis=0, absolute=False,
                         bias_correction=True, eps_mode="outside", wd=0.0, wd_mode="decoupled"):
    """Yao et al. Algorithm 1 transcribed, with the switches; ``probes[t]`` are the step-t probes."""
    x = np.array(x0, float)
    m, v = np.zeros_like(x), np.zeros_like(x)
    for t, zs in enumerate(probes, start=1):
        g = (A @ x.ravel() + b).reshape(x.shape)
        D = np.mean([z * (A @ z.ravel()).reshape(x.shape) for z in zs], axis=0)
        if absolute:
            D = np.abs(D)
        D = reference_spatial_average(D, block, axis)
        if wd_mode == "l2":
            g, D = g + wd * x, D + wd
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * D * D
        c1, c2 = (1 - b1 ** t, 1 - b2 ** t) if bias_correction else (1.0, 1.0)
        denom = np.sqrt(v / c2) ** k + eps if eps_mode == "outside" else (v / c2 + eps) ** (k / 2)
        x = x - lr * (m / c1) / denom - (lr * wd * x if wd_mode == "decoupled" else 0.0)
    return x


# --- construction and bad input --------------------------------------------------------------------
@pytest.mark.parametrize("kw", [dict(lr=0.0), dict(beta1=1.0), dict(beta2=-0.1), dict(eps=0.0), dict(hessian_power=-1.0),
                                dict(spatial_block=0), dict(spatial_block=-2), dict(spatial_axis=-1),
                                dict(eps_mode="sqrt"), dict(probe_distribution="uniform"), dict(probes=0),
                                dict(weight_decay=-0.1), dict(weight_decay_mode="adamw"), dict(seed=-1)])
def test_bad_hyperparameters_raise(kw):
    with pytest.raises(ValueError, match=list(kw)[0]):
        AdaHessian(**kw)


def test_bad_params_and_draws():
    with pytest.raises(ValueError, match="zero-length"):
        AdaHessian().init([np.zeros((2, 0))])
    with pytest.raises(ValueError, match="spatial_axis"):
        AdaHessian(spatial_block=2, spatial_axis=2).init([np.zeros((2, 2))])
    orc = quadratic_oracle(np.eye(2), np.zeros(2), (2,))
    opt = AdaHessian()
    x0 = np.ones(2)
    with pytest.raises(ValueError, match="draws"):
        opt.update(x0, opt.init(x0), orc, draws=[np.ones(3)])
    with pytest.raises(ValueError, match="draws"):
        opt.update(x0, opt.init(x0), orc, draws=[])


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_gradient_is_refused(bad):
    f = FunctionOracle(lambda x: float(np.sum(x)), grad=lambda x: np.array([1.0, bad]), hvp=lambda x, v: v)
    opt = AdaHessian()
    x0 = np.ones(2)
    assert_refused(opt, x0, opt.init(x0), f, "non-finite gradient")


def test_non_finite_hessian_estimate_is_refused():
    f = FunctionOracle(lambda x: 0.0, grad=lambda x: x, hvp=lambda x, v: v * np.nan)
    opt = AdaHessian()
    x0 = np.ones(2)
    assert_refused(opt, x0, opt.init(x0), f, "Hessian")


def test_zero_gradient_and_zero_hessian_stay_finite():
    f = FunctionOracle(lambda x: 0.0, grad=lambda x: np.zeros_like(x), hvp=lambda x, v: np.zeros_like(v))
    opt = AdaHessian()
    x, s = np.ones(3), opt.init(np.ones(3))
    for _ in range(2):
        x, s, info = opt.update(x, s, f)
    np.testing.assert_array_equal(x, np.ones(3))
    assert not info["skipped"]


# --- exactness with all 2ⁿ probes ---------------------------------------------------------------------
def test_all_rademacher_probes_give_the_exact_diagonal_on_a_function():
    A = np.array([[0.5, -0.3, 0.2, 0.0], [0.1, 0.4, -0.2, 0.3], [-0.2, 0.1, 0.3, 0.5]])
    f = FunctionOracle(lambda x: ad.sum(ad.exp(ad.matmul(A, x))) + 0.25 * ad.sum(x * x) ** 2)
    x0 = np.array([0.3, -0.5, 1.0, 0.2])
    H = autograd.hessian(lambda x: anp.sum(anp.exp(A @ x)) + 0.25 * anp.sum(x * x) ** 2)(x0)
    assert np.max(np.abs(H - np.diag(np.diag(H)))) > 0.1  # far from diagonal
    g = autograd.grad(lambda x: anp.sum(anp.exp(A @ x)) + 0.25 * anp.sum(x * x) ** 2)(x0)
    opt = AdaHessian(lr=0.1, beta1=0.0, beta2=0.0, eps=1e-3)
    x1, s1, info = opt.update(x0, opt.init(x0), f, draws=all_rademacher(x0))
    np.testing.assert_allclose(s1.v, np.diag(H) ** 2, rtol=1e-12)
    np.testing.assert_allclose(x1, x0 - 0.1 * g / (np.abs(np.diag(H)) + 1e-3), rtol=1e-12)
    assert len(info["draws"]) == 16


def test_all_rademacher_probes_give_the_exact_diagonal_on_an_mlp():
    rng = np.random.default_rng(5)
    model = MLP([1, 2, 1])
    orc = Oracle(model, Gaussian(), rng.standard_normal((6, 1)), rng.standard_normal((6, 1)))
    p = model.init(1)
    Hdiag = T.unravel(np.diag(orc.dense_hessian(p)), p)
    opt = AdaHessian(beta2=0.0)
    _, s1, _ = opt.update(p, opt.init(p), orc, draws=all_rademacher(p))
    for v, h in zip(T.leaves(s1.v), T.leaves(Hdiag)):
        np.testing.assert_allclose(v, h ** 2, rtol=1e-10, atol=1e-14)


# --- Algorithm 1 and every switch, two steps ------------------------------------------------------------
RNG = np.random.default_rng(11)
_M = RNG.standard_normal((8, 8))
A8 = _M @ _M.T / 8 + 0.2 * np.eye(8) - 0.6 * np.diag(RNG.random(8))  # symmetric, mildly indefinite diagonal
B8 = RNG.standard_normal(8)
W0 = RNG.standard_normal((2, 4))


def probe_sequence(k, distribution="rademacher", seed=0):
    return [draw_probes(W0, np.random.default_rng([seed, t]), k, distribution) for t in range(2)]


CASES = [dict(), dict(hessian_power=0.5), dict(bias_correction=False), dict(eps_mode="inside"),
         dict(spatial_block=2), dict(spatial_block=-1, spatial_axis=0), dict(spatial_block=3, spatial_axis=1),
         dict(spatial_block=2, absolute=True), dict(weight_decay=0.1), dict(weight_decay=0.1, weight_decay_mode="l2"),
         dict(probes=3, probe_distribution="gaussian")]


@pytest.mark.parametrize("kw", CASES)
def test_two_steps_every_switch(kw):
    orc = quadratic_oracle(A8, B8, W0.shape)
    opt = AdaHessian(lr=0.2, beta1=0.8, beta2=0.7, eps=0.05, **kw)
    probes = probe_sequence(opt.probes, opt.probe_distribution)
    x, s = W0, opt.init(W0)
    for zs in probes:
        x, s, _ = opt.update(x, s, orc, draws=zs)
    ref = adahessian_reference(W0, A8, B8, probes, 0.2, 0.8, 0.7, 0.05, k=opt.hessian_power,
                               block=opt.spatial_block, axis=opt.spatial_axis, absolute=opt.absolute,
                               bias_correction=opt.bias_correction, eps_mode=opt.eps_mode, wd=opt.weight_decay,
                               wd_mode=opt.weight_decay_mode)
    np.testing.assert_allclose(x, ref, rtol=1e-12)
    if kw:  # the switch matters
        x_default, s = W0, AdaHessian(lr=0.2, beta1=0.8, beta2=0.7, eps=0.05).init(W0)
        for zs in probe_sequence(1):
            x_default, s, _ = AdaHessian(lr=0.2, beta1=0.8, beta2=0.7, eps=0.05).update(x_default, s, orc, draws=zs)
        assert np.max(np.abs(x_default - x)) > 1e-4


def _network_problem():
    rng = np.random.default_rng(0)
    model = MLP([3, 4, 2])
    return Oracle(model, Gaussian(), rng.standard_normal((16, 3)), rng.standard_normal((16, 2))), model.init(0)


@pytest.mark.parametrize("problem", ["function", "network"])
def test_seeded_draws_equal_injected_draws(problem):
    """The probes of the step from state.step = t are draw_probes(params, default_rng([seed, t]), …), whether
    the oracle (FunctionOracle or network Oracle) draws them or they are injected."""
    orc, p0 = (quadratic_oracle(A8, B8, W0.shape), W0) if problem == "function" else _network_problem()
    opt = AdaHessian(lr=0.2, seed=7, probes=2)
    x, s = p0, opt.init(p0)
    y, r = p0, opt.init(p0)
    for t in range(3):
        x, s, _ = opt.update(x, s, orc)
        y, r, _ = opt.update(y, r, orc, draws=draw_probes(p0, np.random.default_rng([7, t]), 2, "rademacher"))
        for a, b in zip(T.leaves(x), T.leaves(y)):
            np.testing.assert_array_equal(a, b)
    assert s.seed == 7 and s.step == 3


@given(st.integers(1, 3), st.integers(1, 7), st.integers(-1, 8).filter(lambda b: b != 0), st.integers(0, 1))
def test_spatial_average_matches_a_loop(rows, cols, block, axis):
    D = np.arange(rows * cols, dtype=float).reshape(rows, cols) ** 1.5
    np.testing.assert_allclose(spatial_average(D, block, axis), reference_spatial_average(D, block, axis), rtol=1e-14)


def test_spatial_average_leaves_vectors_alone_and_preserves_block_means():
    v = np.array([1.0, 5.0, 2.0])
    np.testing.assert_array_equal(spatial_average(v, 2, 0), v)
    D = np.array([[1.0, 2.0, 3.0, 6.0], [0.0, 0.0, 4.0, 4.0]])
    np.testing.assert_array_equal(spatial_average(D, 2, 1), [[1.5, 1.5, 4.5, 4.5], [0.0, 0.0, 4.0, 4.0]])
    np.testing.assert_array_equal(spatial_average(D, -1, 0), [[0.5, 1.0, 3.5, 5.0]] * 2)


def test_mlp_descent_and_registry():
    assert optimizer_class("adahessian") is AdaHessian
    orc, p = _network_problem()
    opt = AdaHessian(lr=0.1)
    s = opt.init(p)
    first = orc.value(p)
    for _ in range(5):
        p, s, info = opt.update(p, s, orc)
    assert orc.value(p) < first and orc.counts.nhvp == 5


def test_value_and_hvp_operator_is_value_grad_and_hvp_from_one_recording():
    rng = np.random.default_rng(1)
    model = MLP([3, 4, 2])
    orc = Oracle(model, Gaussian(), rng.standard_normal((10, 3)), rng.standard_normal((10, 2)))
    p = model.init(2)
    v = T.tree_map(lambda a: rng.standard_normal(a.shape), p)
    loss, g, hv = orc.value_and_hvp_operator(p)
    assert loss == orc.value(p)
    for a, b in zip(T.leaves(g), T.leaves(orc.grad(p))):
        np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-15)
    for a, b in zip(T.leaves(hv(v)), T.leaves(orc.hvp(p, v))):
        np.testing.assert_allclose(a, b, rtol=1e-11, atol=1e-13)


def test_reported_draws_replay_the_run():
    orc = quadratic_oracle(A8, B8, W0.shape)
    opt = AdaHessian(lr=0.2, seed=5, probes=2, probe_distribution="gaussian")
    x, s = W0, opt.init(W0)
    y, r = W0, opt.init(W0)
    for _ in range(3):
        x, s, info = opt.update(x, s, orc)
        assert len(info["draws"]) == 2 and T.same_structure(info["draws"][0], W0)
        y, r, _ = opt.update(y, r, orc, draws=info["draws"])
        np.testing.assert_array_equal(x, y)


def test_switches_are_declared_with_the_defaults():
    assert_switches_declared_with_defaults(AdaHessian)


# --- gradient-in steps: D_t injected (optim/gradients.py) ------------------------------------------------
def _network():
    rng = np.random.default_rng(4)
    model = MLP([3, 4, 2])
    return model.init(1), Oracle(model, Gaussian(), rng.standard_normal((7, 3)), rng.standard_normal((7, 2)))


@pytest.mark.parametrize("kw", [dict(), dict(probes=2, spatial_block=-1, weight_decay=0.1, weight_decay_mode="l2")])
def test_injected_estimates_built_from_the_oracle_runs_draws_reproduce_it(kw):
    """The oracle run reports its probes (info["draws"]); D_t = (1/k) Σ z ⊙ Hz from those probes and the same
    recorded products, injected with the gradient, gives the same params and states bit for bit, with no
    draws of its own and the seed untouched."""
    from refopt.optim.adahessian import hutchinson_estimate
    params, orc = _network()
    opt = AdaHessian(lr=0.1, **kw)
    p, s = params, opt.init(params)
    q, r = params, opt.init(params)
    for _ in range(5):
        p, s, info = opt.update(p, s, orc)
        loss, g, hv = orc.value_and_hvp_operator(q)
        D = hutchinson_estimate(hv, info["draws"])
        assert opt.estimates_needed(r) == ("hessian_diagonal",)
        q, r, info_in = opt.apply_gradients(g, r, q, loss=loss, hessian_diagonal=D)
        for a, b in zip(T.leaves((p, s.m, s.v)), T.leaves((q, r.m, r.v))):
            np.testing.assert_array_equal(a, b)
        assert r.step == s.step and r.seed == s.seed == opt.seed and info_in["draws"] is None
        assert info_in["loss"] == info["loss"]


def test_a_user_loop_with_autograd_estimates_matches_the_oracle_run():
    """D_t from HIPS autograd's Hessian-vector products (an independent autodiff) at the oracle run's probes:
    the gradient and D differ from refopt's by rounding (≈ 1e-16 relative); over 5 steps of the update
    m̂/(√v̂ + ε), which divides by small |D| entries, the params agree to 1e-13 of their largest entry
    (measured 6e-15)."""
    params, orc = _network()
    X, Y = orc.X, orc.y

    def f(p):
        a = anp.tanh(anp.dot(X, p[0]["W"]) + p[0]["b"])
        return 0.5 * anp.mean(anp.sum((anp.dot(a, p[1]["W"]) + p[1]["b"] - Y) ** 2, axis=1))
    assert np.isclose(f(params), orc.value(params), rtol=1e-15)
    grad = autograd.grad(f)
    hvp = autograd.grad(lambda p, v: sum(anp.sum(grad(p)[l][k] * v[l][k]) for l in range(2) for k in ("W", "b")))
    opt = AdaHessian(lr=0.1)
    p, s = params, opt.init(params)
    q, r = params, opt.init(params)
    for _ in range(5):
        p, s, info = opt.update(p, s, orc)
        z = info["draws"][0]
        D = T.tree_map2(lambda zi, hz: zi * hz, z, hvp(q, z))
        q, r, _ = opt.apply_gradients(grad(q), r, q, hessian_diagonal=D)
    for a, b in zip(T.leaves(p), T.leaves(q)):
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-13 * np.abs(a).max())
    assert not np.allclose(T.leaves(p)[0], T.leaves(params)[0])


def test_a_non_finite_injected_estimate_is_refused():
    params, orc = _network()
    opt = AdaHessian()
    state = opt.init(params)
    D = T.tree_map(lambda a: np.full_like(a, np.inf), params)
    new, new_state, info = opt.apply_gradients(orc.grad(params), state, params, hessian_diagonal=D)
    assert info["skipped"] and "non-finite Hessian-diagonal estimate" in info["message"]
    assert new is params and new_state is state


# --- the fused step in chunks ---------------------------------------------------------------------------------
@pytest.mark.parametrize("kw", [{}, dict(weight_decay=0.1), dict(eps_mode="inside", hessian_power=0.7, probes=2),
                                dict(weight_decay=0.05, weight_decay_mode="l2", spatial_block=-1, absolute=True,
                                     bias_correction=False)])
def test_chunks_change_no_bit(kw, monkeypatch):
    """The moments and the step are elementwise, so the chunking changes nothing: on a 5-9-3 MLP (leaves of 45, 9,
    27, 3 entries) chunks of 7 give the bits of one chunk per leaf over four steps; the step norms, summed chunk
    by chunk, agree to rounding."""
    from _helpers import mlp_problem  # noqa: PLC0415
    from _kfac_helpers import run_chunked  # noqa: PLC0415
    _, params, orc = mlp_problem([5, 9, 3], 16, seed=5)
    (x1, s1, n1), (x2, s2, n2) = run_chunked(monkeypatch, lambda: AdaHessian(lr=0.05, seed=2, **kw), params, orc, 4,
                                             lambda info: (info["grad_norm"], info["step_norm"]))
    for a, b in zip(T.leaves((x1, s1.m, s1.v)), T.leaves((x2, s2.m, s2.v))):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(n1, n2, rtol=1e-15)


# --- convolution kernels: the paper's spatial averaging over (kh, kw) (Yao et al. 2021 §3.3) ---------------
def _by_hand_kernel_mean(D):
    """Each (o, i) kernel's kh × kw entries replaced by their mean, by loops."""
    out = np.empty_like(D)
    O, I, kh, kw = D.shape
    for o in range(O):
        for i in range(I):
            out[o, i] = sum(D[o, i, a, b] for a in range(kh) for b in range(kw)) / (kh * kw)
    return out


@pytest.mark.parametrize("absolute", [False, True])
def test_a_4d_kernel_is_averaged_over_its_spatial_dims_by_hand(absolute):
    g = np.random.default_rng(5)
    params = [{"W": g.standard_normal((2, 3, 2, 3)), "b": g.standard_normal(2)}]
    grads = [{"W": g.standard_normal((2, 3, 2, 3)), "b": g.standard_normal(2)}]
    D = [{"W": g.standard_normal((2, 3, 2, 3)), "b": g.standard_normal(2)}]
    lr, eps = 0.1, 1e-4
    opt = AdaHessian(lr=lr, eps=eps, absolute=absolute)
    new, _, _ = opt.apply_gradients(grads, opt.init(params), params, hessian_diagonal=D)
    DW = np.abs(D[0]["W"]) if absolute else D[0]["W"]
    Ds = _by_hand_kernel_mean(DW)
    # first step with bias correction: m̂ = g, v̂ = (D^s)², so θ₁ = θ₀ − η g / (|D^s| + ε)
    np.testing.assert_allclose(new[0]["W"], params[0]["W"] - lr * grads[0]["W"] / (np.abs(Ds) + eps), rtol=1e-13)
    Db = np.abs(D[0]["b"])   # biases are never averaged; |·| is the same as squaring enters
    np.testing.assert_allclose(new[0]["b"], params[0]["b"] - lr * grads[0]["b"] / (Db + eps), rtol=1e-13)
    # averaging first and |·| afterwards (absolute=False) is not the official |·| first, in general
    assert not np.allclose(np.abs(_by_hand_kernel_mean(D[0]["W"])), _by_hand_kernel_mean(np.abs(D[0]["W"])))
    # kernel_average="none": the kernel is an ordinary leaf (spatial_block 1: no averaging)
    opt = AdaHessian(lr=lr, eps=eps, absolute=absolute, kernel_average="none")
    new, _, _ = opt.apply_gradients(grads, opt.init(params), params, hessian_diagonal=D)
    np.testing.assert_allclose(new[0]["W"], params[0]["W"] - lr * grads[0]["W"] / (np.abs(DW) + eps), rtol=1e-13)


def test_kernel_average_on_a_cnn_uses_the_probes_hutchinson_diagonal():
    from refopt.nn import CNN, Conv2d, Flatten, Dense, SoftmaxCrossEntropy
    from refopt.problems.registry import network_oracle
    model = CNN((1, 4, 4), [Conv2d(1, 2, 3), "tanh", Flatten(), Dense(8, 3)])
    g = np.random.default_rng(2)
    X, y = g.standard_normal((5, 16)), g.integers(0, 3, 5)
    oracle = network_oracle(model, SoftmaxCrossEntropy(), X, y)
    params = model.init(0)
    z = [[{"W": g.choice([-1.0, 1.0], size=p["W"].shape), "b": g.choice([-1.0, 1.0], size=p["b"].shape)}
          for p in params]]
    opt = AdaHessian(lr=0.1, absolute=True)
    new, _, info = opt.update(params, opt.init(params), oracle, draws=z)
    hz = oracle.hvp(params, z[0])
    Ds = _by_hand_kernel_mean(np.abs(z[0][0]["W"] * hz[0]["W"]))   # official: mean over dims [2, 3] of |z ⊙ Hz|
    gW = oracle.grad(params)[0]["W"]
    np.testing.assert_allclose(new[0]["W"], params[0]["W"] - 0.1 * gW / (Ds + 1e-4), rtol=1e-10)
    # the dense layer (2-D) is not kernel-averaged
    D1 = np.abs(z[0][1]["W"] * hz[1]["W"])
    np.testing.assert_allclose(new[1]["W"], params[1]["W"] - 0.1 * oracle.grad(params)[1]["W"] / (D1 + 1e-4),
                               rtol=1e-10)


def test_bad_kernel_average_is_refused_naming_it():
    for bad in ("mean", True, None, 2):
        with pytest.raises(ValueError, match="kernel_average"):
            AdaHessian(kernel_average=bad)
