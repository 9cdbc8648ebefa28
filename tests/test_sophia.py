"""Sophia-G and Sophia-H: Algorithm 3 and the official code transcribed, clipping bound, Newton limit, draws."""
import autograd
import autograd.numpy as anp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from refopt import tree as T
from refopt.curvature import draw_probes
from refopt.nn import MLP, SoftmaxCrossEntropy
from refopt.optim import optimizer_class
from refopt.optim.sophia import SophiaG, SophiaH
from refopt.oracle import FunctionOracle, Oracle

from _helpers import all_rademacher, assert_descends, assert_refused, assert_switches_declared_with_defaults


def quadratic_oracle(A, b):
    return FunctionOracle(lambda x: 0.5 * float(x @ A @ x) + float(b @ x), grad=lambda x: A @ x + b,
                          hvp=lambda x, v: A @ v)


# --- a tiny classifier, and its loss in HIPS autograd (independent of refopt's autodiff) ---------------------
RNG = np.random.default_rng(2)
MODEL = MLP([3, 4, 3])
X = RNG.standard_normal((8, 3))
Y = RNG.integers(0, 3, 8)


def np_loss(params, labels):
    a = X
    for i, p in enumerate(params):
        s = anp.dot(a, p["W"]) + p["b"]
        a = anp.tanh(s) if i < len(params) - 1 else s
    lse = anp.log(anp.sum(anp.exp(a - anp.max(a, axis=1, keepdims=True)), axis=1)) + anp.max(a, axis=1)
    return anp.mean(lse - a[np.arange(len(labels)), labels])


np_grad = autograd.grad(np_loss)


def oracle():
    return Oracle(MODEL, SoftmaxCrossEntropy(), X, Y)


LABELS = [RNG.integers(0, 3, (1, 8)) for _ in range(8)]  # injected "sampled" labels, one set per step


# --- construction and bad input --------------------------------------------------------------------
@pytest.mark.parametrize("cls", [SophiaG, SophiaH])
@pytest.mark.parametrize("kw", [dict(lr=0.0), dict(beta1=1.0), dict(beta2=1.0), dict(beta2=-0.1), dict(gamma=0.0),
                                dict(gamma=-1.0), dict(eps=0.0), dict(weight_decay=-1.0), dict(k=0),
                                dict(parametrization="optax"), dict(refresh="during"), dict(seed=-3)])
def test_bad_hyperparameters_raise(cls, kw):
    with pytest.raises(ValueError, match=list(kw)[0]):
        cls(**kw)


def test_more_bad_hyperparameters_and_params():
    with pytest.raises(ValueError, match="bias_correction"):
        SophiaG(parametrization="official", bias_correction=True)
    with pytest.raises(ValueError, match="samples"):
        SophiaG(samples=0)
    with pytest.raises(ValueError, match="probes"):
        SophiaH(probes=0)
    with pytest.raises(ValueError, match="probe_distribution"):
        SophiaH(probe_distribution="sphere")
    with pytest.raises(ValueError, match="zero-length"):
        SophiaH().init([np.zeros(0)])


def test_sophia_g_needs_a_network_oracle():
    opt = SophiaG()
    x = np.ones(2)
    with pytest.raises(TypeError, match="SophiaH"):
        opt.update(x, opt.init(x), quadratic_oracle(np.eye(2), np.zeros(2)))


@pytest.mark.parametrize("cls", [SophiaG, SophiaH])
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_gradient_is_refused(cls, bad):
    f = FunctionOracle(lambda x: 0.0, grad=lambda x: np.array([1.0, bad]), hvp=lambda x, v: v)
    opt = cls(k=1)
    p = np.ones(2)
    assert_refused(opt, p, opt.init(p), f, "non-finite gradient")


@pytest.mark.parametrize("refresh", ["before", "after", "lagged"])
def test_non_finite_curvature_estimate_is_refused(refresh):
    # "after" and "lagged" estimate once the step is computed: the refusal must still discard that step
    f = FunctionOracle(lambda x: 0.0, grad=lambda x: x, hvp=lambda x, v: v * np.inf)
    opt = SophiaH(k=1, refresh=refresh, weight_decay=0.1)
    x0 = np.ones(2)
    assert_refused(opt, x0, opt.init(x0), f, "curvature")


def test_zero_gradient_and_weight_decay_alone():
    f = FunctionOracle(lambda x: 0.0, grad=lambda x: np.zeros_like(x), hvp=lambda x, v: np.zeros_like(v))
    x0 = np.array([1.0, -3.0])
    for wd, expected in ((0.0, x0), (0.5, x0 * (1 - 0.1 * 0.5))):
        opt = SophiaH(lr=0.1, k=1, weight_decay=wd)
        x1, s1, info = opt.update(x0, opt.init(x0), f)
        np.testing.assert_allclose(x1, expected, rtol=1e-15)
        assert not info["skipped"] and np.all(np.isfinite(s1.h))


# --- the clip and the Newton limit -------------------------------------------------------------------
@given(hnp.arrays(np.float64, (3, 3), elements=st.floats(-3, 3)), hnp.arrays(np.float64, 3, elements=st.floats(-5, 5)),
       st.floats(1e-3, 1.0), st.sampled_from(["paper", "official"]), st.floats(0.0, 0.99))
def test_no_coordinate_moves_more_than_lr(M, x0, gamma, parametrization, b1):
    A = M + M.T  # symmetric, possibly indefinite: Hutchinson estimates may be negative
    orc = quadratic_oracle(A, np.array([1.0, -2.0, 0.5]))
    lr = 0.05
    opt = SophiaH(lr=lr, gamma=gamma, k=1, beta1=b1, parametrization=parametrization, seed=3)
    x, s = x0, opt.init(x0)
    for t in range(1, 5):
        x_new, s, info = opt.update(x, s, orc)
        bound = lr if parametrization == "paper" else lr / (1 - b1 ** t)  # official Sophia-H: bias-corrected η
        assert np.max(np.abs(x_new - x)) <= bound * (1 + 1e-12)
        x = x_new


def test_sophia_g_moves_each_coordinate_at_most_lr_on_a_network():
    orc = oracle()
    p = MODEL.init(0)
    for param in ("paper", "official"):
        opt = SophiaG(lr=0.01, k=2, parametrization=param)
        q, s = p, opt.init(p)
        for t in range(4):
            q_new, s, info = opt.update(q, s, orc)
            assert max(np.max(np.abs(a - b)) for a, b in zip(T.leaves(q_new), T.leaves(q))) <= 0.01 * (1 + 1e-12)
            q = q_new
        assert 0.0 <= info["clipped_fraction"] <= 1.0


def test_exact_diagonal_without_clipping_is_a_diagonal_newton_step():
    # separable: every Rademacher probe gives the exact diagonal, and one step of size 1 solves it
    a, c = np.array([2.0, 0.5, 4.0]), np.array([0.3, -0.2, 0.1])
    orc = quadratic_oracle(np.diag(a), -a * c)  # f = ½ Σ a_i (x_i − c_i)² + const
    opt = SophiaH(lr=1.0, beta1=0.0, beta2=0.0, gamma=1.0, k=1)
    x0 = np.array([0.0, 0.5, -0.4])
    x1, _, info = opt.update(x0, opt.init(x0), orc)
    np.testing.assert_allclose(x1, c, rtol=1e-14)
    assert info["clipped_fraction"] == 0.0
    # coupled: all 2ⁿ probes give diag(A) exactly; the step is −η g / (γ diag A)
    A = np.array([[2.0, 0.7, -0.3], [0.7, 1.5, 0.2], [-0.3, 0.2, 3.0]])
    b = np.array([0.1, -0.2, 0.3])
    opt = SophiaH(lr=0.5, beta1=0.0, beta2=0.0, gamma=2.0, k=1)
    x1, _, _ = opt.update(x0, opt.init(x0), quadratic_oracle(A, b), draws=all_rademacher(x0))
    np.testing.assert_allclose(x1, x0 - 0.5 * (A @ x0 + b) / (2.0 * np.diag(A)), rtol=1e-14)


# --- Algorithm 3 transcribed, every switch, on a quadratic with Hutchinson -----------------------------------
A3 = np.array([[1.5, 0.4, -0.2], [0.4, 0.3, 0.5], [-0.2, 0.5, -0.4]])  # indefinite: some ĥ < 0
B3 = np.array([0.2, -0.6, 0.4])
X3 = np.array([0.5, -0.2, 0.1])


def paper_reference(probes, steps, lr, b1, b2, gamma, eps, wd, k, refresh="before", bias_correction=False):
    x, m, h = X3.copy(), np.zeros(3), np.zeros(3)
    for t in range(1, steps + 1):
        g = A3 @ x + B3
        m = b1 * m + (1 - b1) * g
        if refresh == "before" and t % k == 1 % k:
            h = b2 * h + (1 - b2) * np.mean([z * (A3 @ z) for z in probes[t - 1]], axis=0)
        x = x - lr * wd * x
        mm = m / (1 - b1 ** t) if bias_correction else m
        x = x - lr * np.clip(mm / np.maximum(gamma * h, eps), -1, 1)
        if refresh == "after" and t % k == 0 or refresh == "lagged" and t % k == 1 % k:
            h = b2 * h + (1 - b2) * np.mean([z * (A3 @ z) for z in probes[t - 1]], axis=0)
    return x


def official_h_reference(probes, steps, lr, b1, b2, rho, wd, k):
    """The SophiaH class of Liuhong99/Sophia (commit 01af183) with the README's loop."""
    x, m, h = X3.copy(), np.zeros(3), np.zeros(3)
    for it in range(steps):
        g = A3 @ x + B3
        x = x * (1 - lr * wd)
        m = b1 * m + (1 - b1) * g
        ratio = np.minimum(np.abs(m) / (rho * np.maximum(h, 0) + 1e-12), 1)
        x = x + (-lr / (1 - b1 ** (it + 1))) * np.sign(m) * ratio
        if it % k == k - 1:
            h = b2 * h + (1 - b2) * np.mean([z * (A3 @ z) for z in probes[it]], axis=0)
    return x


H_CASES = [dict(), dict(k=2), dict(refresh="after", k=2), dict(refresh="lagged", k=2), dict(refresh="lagged"),
           dict(bias_correction=True), dict(weight_decay=0.3),
           dict(probes=2, probe_distribution="gaussian"), dict(eps=0.5)]


@pytest.mark.parametrize("kw", H_CASES)
def test_sophia_h_paper_steps_every_switch(kw):
    base = dict(lr=0.1, beta1=0.6, beta2=0.5, gamma=0.8, k=1)
    opt = SophiaH(**{**base, **kw})
    probes = [draw_probes(X3, np.random.default_rng([0, t]), opt.probes, opt.probe_distribution) for t in range(4)]
    x, s = X3, opt.init(X3)
    for zs in probes:
        x, s, _ = opt.update(x, s, quadratic_oracle(A3, B3), draws=zs)
    ref = paper_reference(probes, 4, 0.1, 0.6, 0.5, 0.8, opt.eps or 1e-12, opt.weight_decay, opt.k,
                          opt._refresh_mode(), opt.bias_correction)
    np.testing.assert_allclose(x, ref, rtol=1e-13)
    if kw:  # the switch matters
        x_default, s = X3, SophiaH(**base).init(X3)
        for t in range(4):
            zs = draw_probes(X3, np.random.default_rng([0, t]), 1, "rademacher")
            x_default, s, _ = SophiaH(**base).update(x_default, s, quadratic_oracle(A3, B3), draws=zs)
        assert np.max(np.abs(x_default - x)) > 1e-4


@pytest.mark.parametrize("k,wd", [(1, 0.0), (2, 0.2), (3, 0.0)])
def test_sophia_h_official_matches_the_official_code(k, wd):
    opt = SophiaH(lr=0.1, beta1=0.6, beta2=0.5, gamma=0.8, k=k, weight_decay=wd, parametrization="official")
    probes = [draw_probes(X3, np.random.default_rng([0, t]), 1, "rademacher") for t in range(6)]
    x, s = X3, opt.init(X3)
    for zs in probes:
        x, s, _ = opt.update(x, s, quadratic_oracle(A3, B3), draws=zs)
    np.testing.assert_allclose(x, official_h_reference(probes, 6, 0.1, 0.6, 0.5, 0.8, wd, k), rtol=1e-13)


# --- Sophia-G: the official code, GNB scaling, paper ↔ official --------------------------------------------
def official_g_reference(p0, steps, lr, b1, b2, rho, wd, k, bs):
    """sophia.py of Liuhong99/Sophia (commit 195a786) driven by its README's loop, with HIPS autograd."""
    x = [dict(layer) for layer in p0]
    m = [{key: np.zeros_like(v) for key, v in layer.items()} for layer in p0]
    h = [{key: np.zeros_like(v) for key, v in layer.items()} for layer in p0]
    for it in range(steps):
        g = np_grad(x, Y)
        for xl, ml, hl, gl in zip(x, m, h, g):
            for key in xl:
                xl[key] = xl[key] * (1 - lr * wd)
                ml[key] = b1 * ml[key] + (1 - b1) * gl[key]
                ratio = np.minimum(np.abs(ml[key]) / (rho * bs * hl[key] + 1e-15), 1)
                xl[key] = xl[key] + (-lr) * np.sign(ml[key]) * ratio
        if it % k == k - 1:
            gs = np_grad(x, LABELS[it][0])  # gradient of the mean loss at the sampled labels, at the new θ
            for hl, gl in zip(h, gs):
                for key in hl:
                    hl[key] = b2 * hl[key] + (1 - b2) * gl[key] * gl[key]
    return x


def paper_g_reference(p0, steps, lr, b1, b2, gamma, eps, wd, k):
    """Algorithm 3 with the GNB estimator (ĥ = B·ĝ⊙ĝ at θ_t on t mod k = 1), with HIPS autograd."""
    x = [dict(layer) for layer in p0]
    m = [{key: np.zeros_like(v) for key, v in layer.items()} for layer in p0]
    h = [{key: np.zeros_like(v) for key, v in layer.items()} for layer in p0]
    for t in range(1, steps + 1):
        g = np_grad(x, Y)
        if t % k == 1 % k:
            gs = np_grad(x, LABELS[t - 1][0])
            for hl, gl in zip(h, gs):
                for key in hl:
                    hl[key] = b2 * hl[key] + (1 - b2) * 8 * gl[key] * gl[key]
        for xl, ml, hl, gl in zip(x, m, h, g):
            for key in xl:
                ml[key] = b1 * ml[key] + (1 - b1) * gl[key]
                xl[key] = xl[key] - lr * wd * xl[key]
                xl[key] = xl[key] - lr * np.clip(ml[key] / np.maximum(gamma * hl[key], eps), -1, 1)
    return x


@pytest.mark.parametrize("k,wd", [(1, 0.0), (2, 0.3)])
def test_sophia_g_paper_matches_algorithm_3(k, wd):
    opt = SophiaG(lr=0.02, beta1=0.9, beta2=0.8, gamma=2.0, k=k, weight_decay=wd)
    p, _ = run_g(opt, 4)
    ref = paper_g_reference(MODEL.init(0), 4, 0.02, 0.9, 0.8, 2.0, 1e-12, wd, k)
    for a, b in zip(T.leaves(p), T.leaves(ref)):
        np.testing.assert_allclose(a, b, rtol=1e-11, atol=1e-14)


def run_g(opt, steps):
    orc, p = oracle(), MODEL.init(0)
    s = opt.init(p)
    for t in range(steps):
        p, s, info = opt.update(p, s, orc, draws=LABELS[t])
    return p, s


@pytest.mark.parametrize("k,wd,bs", [(1, 0.0, None), (2, 0.1, None), (3, 0.0, 20)])
def test_sophia_g_official_matches_the_official_code(k, wd, bs):
    # γ = 2 keeps about half of the coordinates out of the clip, so the denominator is exercised
    opt = SophiaG(lr=0.02, beta1=0.9, beta2=0.8, gamma=2.0, k=k, weight_decay=wd, parametrization="official", bs=bs)
    p, _ = run_g(opt, 6)
    ref = official_g_reference(MODEL.init(0), 6, 0.02, 0.9, 0.8, 2.0, wd, k, 8 if bs is None else bs)
    for a, b in zip(T.leaves(p), T.leaves(ref)):
        np.testing.assert_allclose(a, b, rtol=1e-11, atol=1e-14)


def test_sophia_g_paper_h_is_batch_size_times_squared_sampled_gradient():
    p0 = MODEL.init(0)
    _, s = run_g(SophiaG(beta2=0.0, k=1), 1)  # refreshed before the step, at θ_1 = p0
    ghat = np_grad(p0, LABELS[0][0])
    for h, gl in zip(T.leaves(s.h), T.leaves(ghat)):
        np.testing.assert_allclose(h, 8 * gl * gl, rtol=1e-10, atol=1e-16)
    p1, s = run_g(SophiaG(beta2=0.0, k=1, parametrization="official"), 1)  # after the step, at θ_2, no factor B
    ghat = np_grad(p1, LABELS[0][0])
    for h, gl in zip(T.leaves(s.h), T.leaves(ghat)):
        np.testing.assert_allclose(h, gl * gl, rtol=1e-10, atol=1e-16)


def test_sophia_g_samples_average_the_gnb_estimates():
    """samples=2: ĥ is the mean of B·ĝ_j⊙ĝ_j over the two label sets (seeded draws have shape (2, B))."""
    p0 = MODEL.init(0)
    labels = np.concatenate([LABELS[0], LABELS[1]])
    opt = SophiaG(beta2=0.0, k=1, samples=2)
    _, s, _ = opt.update(p0, opt.init(p0), oracle(), draws=labels)
    g1, g2 = np_grad(p0, LABELS[0][0]), np_grad(p0, LABELS[1][0])
    for h, a, b in zip(T.leaves(s.h), T.leaves(g1), T.leaves(g2)):
        np.testing.assert_allclose(h, 8 * (a * a + b * b) / 2, rtol=1e-10, atol=1e-16)
    _, _, info = opt.update(p0, opt.init(p0), oracle())
    assert info["draws"].shape == (2, 8)


def test_paper_and_official_sophia_g_differ_only_in_eps_and_phase():
    paper, _ = run_g(SophiaG(lr=0.02, gamma=2.0, k=2, refresh="after", eps=1e-300), 6)
    official, _ = run_g(SophiaG(lr=0.02, gamma=2.0, k=2, parametrization="official", eps=1e-300), 6)
    before, _ = run_g(SophiaG(lr=0.02, gamma=2.0, k=2, eps=1e-300), 6)
    for a, b, c in zip(T.leaves(paper), T.leaves(official), T.leaves(before)):
        np.testing.assert_allclose(a, b, rtol=1e-11, atol=1e-14)
    assert max(np.max(np.abs(a - c)) for a, c in zip(T.leaves(paper), T.leaves(before))) > 1e-4


def test_lagged_refresh_estimates_at_the_incoming_point_two_steps():
    """refresh='lagged' (optax): step 1 uses h = 0 (a sign step) and then estimates ĥ = z ⊙ ∇²f(θ₁) z at the
    incoming θ₁; step 2 uses it. On f = ½xᵀAx + bᵀx + ¼Σx⁴ (∇²f = A + 3 diag(x²)) in closed form."""
    hess = lambda x: A3 + 3 * np.diag(x ** 2)  # noqa: E731
    orc = FunctionOracle(lambda x: 0.5 * float(x @ A3 @ x) + float(B3 @ x) + 0.25 * float(np.sum(x ** 4)),
                         grad=lambda x: A3 @ x + B3 + x ** 3, hvp=lambda x, v: hess(x) @ v)
    lr, b1, b2, gamma, eps = 0.1, 0.6, 0.5, 4.0, 1e-12
    z1, z2 = np.array([1.0, -1.0, 1.0]), np.array([-1.0, -1.0, 1.0])
    opt = SophiaH(lr=lr, beta1=b1, beta2=b2, gamma=gamma, eps=eps, k=1, refresh="lagged", bias_correction=True)
    x1, s, info = opt.update(X3, opt.init(X3), orc, draws=[z1])
    g1 = A3 @ X3 + B3 + X3 ** 3
    m1 = (1 - b1) * g1
    np.testing.assert_allclose(x1, X3 - lr * np.sign(m1), rtol=1e-15)
    h1 = (1 - b2) * z1 * (hess(X3) @ z1)                     # at θ₁ = X3, not at x1
    np.testing.assert_allclose(s.h, h1, rtol=1e-15)
    x2, s, _ = opt.update(x1, s, orc, draws=[z2])
    m2 = b1 * m1 + (1 - b1) * (A3 @ x1 + B3 + x1 ** 3)
    expected = x1 - lr * np.clip(m2 / (1 - b1 ** 2) / np.maximum(gamma * h1, eps), -1, 1)
    np.testing.assert_allclose(x2, expected, rtol=1e-14)
    np.testing.assert_allclose(s.h, b2 * h1 + (1 - b2) * z2 * (hess(x1) @ z2), rtol=1e-14)
    assert np.any(np.abs(np.clip(m2 / (1 - b1 ** 2) / np.maximum(gamma * h1, eps), -1, 1)) < 1)  # h is used


# --- refresh schedule and randomness ------------------------------------------------------------------
@pytest.mark.parametrize("refresh,expected", [("before", [1, 4, 7]), ("after", [3, 6]), ("lagged", [1, 4, 7])])
def test_refresh_steps(refresh, expected):
    opt = SophiaH(k=3, refresh=refresh)
    orc = quadratic_oracle(A3, B3)
    x, s = X3, opt.init(X3)
    refreshed = []
    for t in range(1, 8):
        h_before = s.h
        x, s, info = opt.update(x, s, orc)
        assert info["refreshed"] == (not np.array_equal(h_before, s.h))
        if info["refreshed"]:
            refreshed.append(t)
    assert refreshed == expected
    assert orc.counts.nhvp == len(expected)


def test_seeded_draws_equal_injected_draws():
    orc, p0 = oracle(), MODEL.init(0)
    opt = SophiaG(lr=0.01, k=2, seed=5, parametrization="official")
    p, s = p0, opt.init(p0)
    q, r = p0, opt.init(p0)
    for t in range(4):
        p_new, s, info = opt.update(p, s, orc)
        if info["refreshed"]:  # official: labels sampled at the updated parameters
            labels = orc.sample_labels(p_new, np.random.default_rng([5, t]), 1)
        else:
            labels = None
        q, r, _ = opt.update(q, r, orc, draws=labels)
        p = p_new
        for a, b in zip(T.leaves(p), T.leaves(q)):
            np.testing.assert_array_equal(a, b)
    opt = SophiaH(k=1, seed=9, probes=2)
    x, s = X3, opt.init(X3)
    y, r = X3, opt.init(X3)
    for t in range(3):
        x, s, _ = opt.update(x, s, quadratic_oracle(A3, B3))
        y, r, _ = opt.update(y, r, quadratic_oracle(A3, B3),
                             draws=draw_probes(X3, np.random.default_rng([9, t]), 2, "rademacher"))
        np.testing.assert_array_equal(x, y)


def test_registry_and_mlp_descent():
    assert optimizer_class("sophia_g") is SophiaG and optimizer_class("sophia_h") is SophiaH
    for opt in (SophiaG(lr=0.05, k=2), SophiaH(lr=0.05, k=2)):
        assert_descends(opt, oracle(), MODEL.init(0))


def test_sophia_h_seeded_draws_on_a_network_go_through_hutchinson_diag():
    orc, p0 = oracle(), MODEL.init(0)
    opt = SophiaH(lr=0.01, k=1, seed=4, probes=2)
    p, s = p0, opt.init(p0)
    q, r = p0, opt.init(p0)
    for t in range(2):
        probes = draw_probes(p, np.random.default_rng([4, t]), 2, "rademacher")
        p, s, _ = opt.update(p, s, orc)
        q, r, _ = opt.update(q, r, orc, draws=probes)
        for a, b in zip(T.leaves(p), T.leaves(q)):
            np.testing.assert_array_equal(a, b)
    assert orc.counts.nhvp == 8  # 2 probes × 2 refreshes × 2 runs


@pytest.mark.parametrize("cls,kw", [(SophiaG, {}), (SophiaG, {"parametrization": "official"}), (SophiaH, {}),
                                    (SophiaH, {"refresh": "after", "probes": 2})])
def test_reported_draws_replay_the_run(cls, kw):
    orc, p0 = oracle(), MODEL.init(0)
    opt = cls(lr=0.01, k=2, seed=6, **kw)
    p, s = p0, opt.init(p0)
    q, r = p0, opt.init(p0)
    for t in range(4):
        p, s, info = opt.update(p, s, orc)
        assert (info["draws"] is not None) == info["refreshed"]
        if cls is SophiaG and info["draws"] is not None:
            assert info["draws"].shape == (1, 8)
        q, r, _ = opt.update(q, r, orc, draws=info["draws"])
        for a, b in zip(T.leaves(p), T.leaves(q)):
            np.testing.assert_array_equal(a, b)


def test_a_trace_of_sophia_replays_on_its_draws():
    from refopt.verify.trace import check_trace, make_trace
    for name in ("sophia_g", "sophia_h"):
        divergence, _ = check_trace(make_trace(name, {"k": 2}, steps=3))
        assert divergence is None


def test_switches_are_declared_with_the_defaults():
    assert_switches_declared_with_defaults(SophiaG, SophiaH)


# --- gradient-in steps: ĥ injected on the refresh steps (optim/gradients.py) -----------------------------
def _estimate_from_draws(opt, orc, params, draws):
    """ĥ at ``params`` from the draws an oracle run reported, by the oracle's own estimator."""
    if isinstance(opt, SophiaG):
        hhat = orc.gnb_diag(params, labels=draws)
        if opt.parametrization == "official":   # the official h holds ĝ⊙ĝ of the mean loss
            hhat = T.scale(orc.loss.scale(orc.batch_size, MODEL.sizes[-1]), hhat)
        return hhat
    return orc.hutchinson_diag(params, probes=draws)


@pytest.mark.parametrize("cls,kw", [(SophiaG, dict(refresh="before")), (SophiaG, dict(refresh="lagged")),
                                    (SophiaH, dict(refresh="before", probes=2)), (SophiaH, dict(refresh="lagged")),
                                    (SophiaG, dict(parametrization="official", refresh="before", bs=8)),
                                    (SophiaH, dict(parametrization="official", refresh="lagged", weight_decay=0.1))])
def test_injected_estimates_built_from_the_oracle_runs_draws_reproduce_it(cls, kw):
    """ĥ from the draws the oracle run reported (info["draws"]) at θ_t, injected on the refresh steps with the
    gradient: the same params and states bit for bit, no draws of its own, the seed untouched."""
    orc, p0 = oracle(), MODEL.init(0)
    opt = cls(lr=0.02, gamma=2.0, k=2, **kw)
    p, s = p0, opt.init(p0)
    q, r = p0, opt.init(p0)
    for t in range(1, 7):
        assert opt.estimates_needed(r) == (("hessian_diagonal",) if t % 2 == 1 else ())
        at = q
        p, s, info = opt.update(p, s, orc)
        loss, g = orc.value_and_grad(q)
        est = {"hessian_diagonal": _estimate_from_draws(opt, orc, at, info["draws"])} if info["refreshed"] else {}
        q, r, info_in = opt.apply_gradients(g, r, q, loss=loss, **est)
        for a, b in zip(T.leaves((p, s.m, s.h)), T.leaves((q, r.m, r.h))):
            np.testing.assert_array_equal(a, b)
        assert info_in["refreshed"] == info["refreshed"] and info_in["draws"] is None and r.seed == s.seed


def test_an_estimate_on_a_step_that_does_not_refresh_is_ignored():
    orc, p0 = oracle(), MODEL.init(0)
    opt = SophiaH(k=3)
    hhat = orc.hutchinson_diag(p0, seed=1)
    q, r = p0, opt.init(p0)
    p, s = p0, opt.init(p0)
    for _ in range(3):
        g = orc.grad(q)
        q, r, _ = opt.apply_gradients(g, r, q, hessian_diagonal=hhat)                     # every step
        p, s, _ = opt.apply_gradients(g, s, p, **({"hessian_diagonal": hhat} if s.step == 0 else {}))
        for a, b in zip(T.leaves((p, s.h)), T.leaves((q, r.h))):
            np.testing.assert_array_equal(a, b)


def test_an_autograd_user_loop_matches_algorithm_3():
    """Sophia-G's whole step from HIPS autograd (independent of refopt's autodiff): g = ∇L at the data labels,
    ĥ = B·ĝ⊙ĝ at the sampled labels of LABELS, against the Algorithm 3 transcription above."""
    p0 = MODEL.init(0)
    opt = SophiaG(lr=0.02, beta1=0.9, beta2=0.8, gamma=2.0, k=2, weight_decay=0.3)
    q, r = p0, opt.init(p0)
    for t in range(4):
        est = {}
        if opt.estimates_needed(r):
            gs = np_grad(q, LABELS[t][0])
            est["hessian_diagonal"] = T.tree_map(lambda a: 8 * a * a, gs)
        q, r, _ = opt.apply_gradients(np_grad(q, Y), r, q, **est)
    ref = paper_g_reference(p0, 4, 0.02, 0.9, 0.8, 2.0, 1e-12, 0.3, 2)
    for a, b in zip(T.leaves(q), T.leaves(ref)):
        np.testing.assert_allclose(a, b, rtol=1e-11, atol=1e-14)


# --- the fused step: chunks, and Sophia-G's refresh from one forward pass ---------------------------------------
@pytest.mark.parametrize("cls,kw", [(SophiaG, {}), (SophiaG, dict(parametrization="official", weight_decay=0.1)),
                                    (SophiaG, dict(bias_correction=True, refresh="lagged")),
                                    (SophiaH, dict(parametrization="official", weight_decay=0.2))])
def test_chunks_change_no_bit(cls, kw, monkeypatch):
    """The step is elementwise, so its chunking changes nothing: on a 5-9-3 MLP (leaves of 45, 9, 27, 3 entries)
    chunks of 7 give the bits of one chunk per leaf over five steps (two refreshes), clipped counts included;
    the reported norms, summed chunk by chunk, agree to rounding."""
    from _helpers import mlp_problem  # noqa: PLC0415
    from _kfac_helpers import run_chunked  # noqa: PLC0415
    _, params, orc = mlp_problem([5, 9, 3], 16, seed=4)
    # ρ large enough that the clip acts on some entries only
    (x1, s1, i1), (x2, s2, i2) = run_chunked(monkeypatch, lambda: cls(lr=0.05, k=3, gamma=5.0, **kw), params, orc, 5,
                                             lambda info: info)
    for a, b in zip(T.leaves((x1, s1.m, s1.h)), T.leaves((x2, s2.m, s2.h))):
        np.testing.assert_array_equal(a, b)
    assert [i["clipped_fraction"] for i in i1] == [i["clipped_fraction"] for i in i2]
    assert any(0 < i["clipped_fraction"] < 1 for i in i1)    # a step where the clip acts on some entries only
    np.testing.assert_allclose([(i["grad_norm"], i["step_norm"]) for i in i1],
                               [(i["grad_norm"], i["step_norm"]) for i in i2], rtol=1e-15)


def test_a_non_finite_gradient_in_a_later_chunk_is_refused(monkeypatch):
    from _helpers import ScriptedOracle, mlp_problem  # noqa: PLC0415
    from refopt.optim import update_rules  # noqa: PLC0415
    monkeypatch.setattr(update_rules, "CHUNK", 7)
    _, params, orc = mlp_problem([5, 9, 3], 16, seed=4)
    opt = SophiaG(k=5)
    x1, s1, _ = opt.update(params, opt.init(params), orc)      # step 1 refreshes; step 2 does not
    g = [{k: np.ones_like(v) for k, v in layer.items()} for layer in params]
    g[0]["W"].reshape(-1)[20] = np.inf
    assert_refused(opt, x1, s1, ScriptedOracle([g]), "non-finite gradient")


class SeparatePasses(Oracle):
    """An Oracle without the one-pass refresh: the gradient and the GNB estimate asked for apart."""

    def gnb_estimate(self, params, seed=None, labels=None, k=1, gradient=False):
        if not gradient:
            return super().gnb_estimate(params, seed, labels, k)
        loss, g = self.value_and_grad(params)
        est = super().gnb_estimate(params, seed, labels, k)
        return est._replace(loss=loss, grad=g)


@pytest.mark.parametrize("kw", [{}, dict(refresh="lagged", samples=2), dict(parametrization="official", refresh="before")])
def test_sophia_g_refreshes_from_the_gradients_forward_pass(kw, monkeypatch):
    """At a refresh at θ_t the gradient, the label draw and ĥ come from one forward pass of the network (three
    before: the gradient's, the draw's and the estimate's), and the run is the same as with the three apart."""
    runs = []
    for make in (Oracle, SeparatePasses):
        orc, p0 = make(MODEL, SoftmaxCrossEntropy(), X, Y), MODEL.init(0)
        opt = SophiaG(lr=0.02, k=2, seed=3, **kw)
        calls = [0]
        apply = MODEL.apply

        def counted(*args, **kwargs):
            calls[0] += 1
            return apply(*args, **kwargs)
        monkeypatch.setattr(MODEL, "apply", counted)
        p, s, passes = p0, opt.init(p0), []
        for _ in range(4):
            before = calls[0]
            p, s, info = opt.update(p, s, orc)
            passes.append((info["refreshed"], calls[0] - before))
        monkeypatch.undo()
        runs.append((p, s, passes, orc.counts.as_dict()))
    (p1, s1, passes1, c1), (p2, s2, passes2, c2) = runs
    for a, b in zip(T.leaves((p1, s1.m, s1.h)), T.leaves((p2, s2.m, s2.h))):
        np.testing.assert_array_equal(a, b)
    assert passes1 == [(True, 1), (False, 1), (True, 1), (False, 1)]
    assert passes2 == [(True, 2), (False, 1), (True, 2), (False, 1)]
    assert c1 == c2                                            # the same requests counted either way
