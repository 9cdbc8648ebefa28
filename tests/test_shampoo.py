"""Shampoo against dense Kronecker products, full-matrix Adagrad, and transcriptions of each switch."""
from functools import reduce

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from refopt import tree as T
from refopt.nn import MLP, SoftmaxCrossEntropy
from refopt.optim import optimizer_class
from refopt.optim.adagrad import Adagrad, FullMatrixAdagrad
from refopt.optim.shampoo import Shampoo, block_slices, merge_dims
from refopt.oracle import FunctionOracle, Oracle

from _helpers import ScriptedOracle, assert_refused, assert_switches_declared_with_defaults
from _helpers import run as run_oracle


def run(opt, x0, grads):
    """One update per gradient in ``grads``: the last (params, state, info)."""
    return run_oracle(opt, x0, ScriptedOracle(grads), len(grads))


def psd_power(M, p, eps=0.0, mode="add"):
    """M^p for symmetric PSD M by the SVD (independent of the optimizer's eigh)."""
    U, sig, _ = np.linalg.svd(M)
    lam = sig + eps if mode == "add" else np.maximum(sig, eps)
    return (U * lam ** p) @ U.T


def unfold(G, i):
    return np.moveaxis(G, i, 0).reshape(G.shape[i], -1)


def dense_direction(grads, eps, p=None, mode="add", beta2=None, c0=0.0, debias=False):
    """vec(P(G_last)) = (R_1 ⊗ … ⊗ R_k) vec(G_last), R_i = (H_i + εI)^p from the unfoldings, densely
    (mode "relative": H_i + ε·max(λ_max, 1e-6)·I; ``debias``: H_i / (1 − β₂ᵗ))."""
    G = grads[-1]
    k = G.ndim
    p = -1.0 / (2 * k) if p is None else p
    roots = []
    for i in range(k):
        H = c0 * np.eye(G.shape[i])
        for Gt in grads:
            S = unfold(Gt, i) @ unfold(Gt, i).T
            H = H + S if beta2 is None else beta2 * H + (1 - beta2) * S
        if debias:
            H = H / (1 - beta2 ** len(grads))
        if mode == "relative":
            roots.append(psd_power(H, p, eps * max(np.linalg.svd(H, compute_uv=False).max(), 1e-6)))
        else:
            roots.append(psd_power(H, p, eps, mode))
    return (reduce(np.kron, roots) @ G.ravel()).reshape(G.shape)


# --- construction and bad input --------------------------------------------------------------------
@pytest.mark.parametrize("kw", [dict(lr=0.0), dict(eps=0.0), dict(eps=-1.0), dict(beta2=1.0), dict(beta2=-0.5),
                                dict(statistics="max"), dict(eps_mode="clip"), dict(exponent=0.25),
                                dict(exponent=0.0), dict(precondition_interval=0), dict(start_step=0),
                                dict(grafting="adam"), dict(graft_eps=0.0), dict(merge_dims=0),
                                dict(block_size=0), dict(momentum=1.0), dict(precondition="both"),
                                dict(initial_accumulator=-1.0), dict(weight_decay=-1.0),
                                dict(weight_decay_mode="adamw"), dict(nesterov=1), dict(nesterov=True),
                                dict(statistics="debiased"), dict(filter_beta=1.0), dict(filter_beta=-0.1),
                                dict(filter_beta=0.9, momentum=0.5, precondition="momentum"), dict(root="qr"),
                                dict(root="svd", eps_mode="relative"),
                                dict(precondition="blended", momentum=0.5, nesterov=True),
                                dict(precondition="blended", filter_beta=0.5)])
def test_bad_hyperparameters_raise(kw):
    with pytest.raises(ValueError, match=list(kw)[0]):
        Shampoo(**kw)


def test_order_zero_and_zero_length_leaves_raise_at_init():
    with pytest.raises(ValueError, match="order 0"):
        Shampoo().init([np.zeros((2, 2)), np.array(1.0)])
    with pytest.raises(ValueError, match="zero-length"):
        Shampoo().init([np.zeros((2, 0, 3))])
    with pytest.raises(ValueError, match="zero-length"):
        Shampoo(vector_diagonal=True).init(np.zeros(0))


@pytest.mark.parametrize("kw", [dict(), dict(eps_mode="floor"), dict(vector_diagonal=True), dict(block_size=2)])
def test_zero_gradients_keep_roots_finite(kw):
    p0 = [np.ones((3, 2)), np.ones(3)]
    x, s, info = run(Shampoo(**kw), p0, [[np.zeros((3, 2)), np.zeros(3)]] * 2)
    assert not info["skipped"]
    for leaf in s.roots:
        for Rs in leaf:
            for R in Rs:
                assert np.all(np.isfinite(R))
    np.testing.assert_array_equal(x[0], p0[0])


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_gradient_is_refused(bad):
    opt = Shampoo()
    x1, s1, _ = run(opt, [np.ones((2, 2))], [[np.eye(2)]])
    G = np.eye(2)
    G[0, 1] = bad
    assert_refused(opt, x1, s1, ScriptedOracle([[G]]), "non-finite gradient")


@pytest.mark.parametrize("kw", [dict(), dict(vector_diagonal=True), dict(block_size=1)])
def test_overflowing_statistics_are_refused(kw):
    opt = Shampoo(momentum=0.5, grafting="adagrad", **kw)
    p = [np.ones((2, 2)), np.ones(2)]
    x1, s1, _ = run(opt, p, [[np.eye(2), np.ones(2)]])
    with np.errstate(over="ignore", invalid="ignore"):
        assert_refused(opt, x1, s1, ScriptedOracle([[np.eye(2), np.array([1e200, 1.0])]]), "statistics overflowed")


def test_non_finite_root_is_refused():
    # (H + εI)^p with ε = 1e-4 and an exponent override p = −100 on a zero statistic is 10⁴⁰⁰ = inf
    opt = Shampoo(exponent=-100.0)
    p = [np.ones((2, 2))]
    with np.errstate(over="ignore", invalid="ignore"):
        assert_refused(opt, p, opt.init(p), ScriptedOracle([[np.zeros((2, 2))]]), "non-finite preconditioner root")


# --- identities of the theory ----------------------------------------------------------------------
@given(st.integers(1, 5), st.integers(1, 4), st.data())
def test_vector_shampoo_equals_full_matrix_adagrad(n, steps, data):
    grads = [data.draw(hnp.arrays(np.float64, n, elements=st.floats(-3, 3))) for _ in range(steps)]
    x0 = np.linspace(-1, 1, n)
    xs, _, _ = run(Shampoo(lr=0.3, eps=1e-3, initial_accumulator=0.5), x0, grads)
    xa, _, _ = run(FullMatrixAdagrad(lr=0.3, eps=1e-3, initial_accumulator=0.5, eps_mode="inside"), x0, grads)
    np.testing.assert_allclose(xs, xa, rtol=1e-10, atol=1e-12)


@given(st.integers(1, 4), st.integers(1, 4), st.data())
def test_matrix_shampoo_equals_dense_kronecker_formula(m, n, data):
    G1 = data.draw(hnp.arrays(np.float64, (m, n), elements=st.floats(-2, 2)))
    G2 = data.draw(hnp.arrays(np.float64, (m, n), elements=st.floats(-2, 2)))
    eps, lr = 0.01, 0.5
    x0 = np.zeros((m, n))
    x1, s1, _ = run(Shampoo(lr=lr, eps=eps), x0, [G1])
    x2, _, _ = Shampoo(lr=lr, eps=eps).update(x1, s1, ScriptedOracle([G2]))
    # (L^{1/4} ⊗ R^{1/4})⁻¹ vec(G), built densely and inverted
    L = G1 @ G1.T + G2 @ G2.T + eps * np.eye(m)
    R = G1.T @ G1 + G2.T @ G2 + eps * np.eye(n)
    K = np.kron(psd_power(L, 0.25), psd_power(R, 0.25))
    expected = np.linalg.solve(K, G2.ravel()).reshape(m, n)
    np.testing.assert_allclose((x1 - x2) / lr, expected, rtol=1e-8, atol=1e-10)


@given(st.tuples(st.integers(1, 3), st.integers(1, 3), st.integers(1, 3)), st.data())
def test_order3_mode_products_equal_dense_kronecker(shape, data):
    grads = [data.draw(hnp.arrays(np.float64, shape, elements=st.floats(-2, 2))) for _ in range(2)]
    x, _, _ = run(Shampoo(lr=1.0, eps=0.05), np.zeros(shape), grads)
    x1, _, _ = run(Shampoo(lr=1.0, eps=0.05), np.zeros(shape), grads[:1])
    np.testing.assert_allclose(x1 - x, dense_direction(grads, 0.05), rtol=1e-9, atol=1e-11)


def test_first_step_of_a_rank_one_matrix_gradient_by_hand():
    # G = u vᵀ with ‖u‖ = ‖v‖ = 1, σ = 2: L = 4uuᵀ, R = 4vvᵀ; with ε → 0 in the range,
    # L^{-1/4} G R^{-1/4} = 4^{-1/4} u · 2 · 4^{-1/4} vᵀ = u vᵀ (the step normalises the singular value).
    u, v = np.array([0.6, 0.8]), np.array([1.0, 0.0, 0.0])
    G = 2.0 * np.outer(u, v)
    x, _, _ = run(Shampoo(lr=1.0, eps=1e-12), np.zeros((2, 3)), [G])
    np.testing.assert_allclose(-x, np.outer(u, v), rtol=1e-12, atol=1e-12)


# --- every switch against a transcription -----------------------------------------------------------
SHAPE = (3, 2)
GRADS = [np.array([[1.0, -0.5], [0.3, 2.0], [-1.0, 0.2]]), np.array([[0.2, 1.0], [-0.7, 0.4], [1.5, -0.3]]),
         np.array([[-0.4, 0.1], [0.9, -1.2], [0.6, 0.8]])]
X0 = np.array([[0.5, -1.0], [1.0, 0.25], [-0.5, 2.0]])


def two_steps(**kw):
    opt = Shampoo(lr=0.5, eps=0.1, **kw)
    x, s, _ = run(opt, X0.copy(), GRADS[:2])
    return x


def test_two_steps_default():
    d1 = dense_direction(GRADS[:1], 0.1)
    d2 = dense_direction(GRADS[:2], 0.1)
    np.testing.assert_allclose(two_steps(), X0 - 0.5 * d1 - 0.5 * d2, rtol=1e-12)


@pytest.mark.parametrize("kw,ref", [
    (dict(statistics="ema", beta2=0.7), dict(beta2=0.7)),
    (dict(eps_mode="floor"), dict(mode="floor")),
    (dict(exponent=-0.5), dict(p=-0.5)),
    (dict(initial_accumulator=0.3), dict(c0=0.3)),
    (dict(eps_mode="relative"), dict(mode="relative")),
    (dict(statistics="ema_debiased", beta2=0.7), dict(beta2=0.7, debias=True)),
])
def test_two_steps_statistics_and_root_switches(kw, ref):
    d1 = dense_direction(GRADS[:1], 0.1, **ref)
    d2 = dense_direction(GRADS[:2], 0.1, **ref)
    x = two_steps(**kw)
    np.testing.assert_allclose(x, X0 - 0.5 * d1 - 0.5 * d2, rtol=1e-12)
    assert np.max(np.abs(x - two_steps())) > 1e-3  # the switch matters


def test_relative_eps_floors_lambda_max_and_debiasing_undoes_the_ema_start():
    """eps_mode="relative" on a tiny statistic uses ε·10⁻⁶ (λ_max floored); on a vector leaf with
    vector_diagonal it is ε·max(H). With ema_debiased the first roots are those of G Gᵀ itself."""
    G = 1e-5 * GRADS[0]
    x = run(Shampoo(lr=1.0, eps=0.1, eps_mode="relative"), np.zeros(SHAPE), [G])[0]
    np.testing.assert_allclose(-x, dense_direction([G], 0.1 * 1e-6), rtol=1e-10)
    g = np.array([1.0, -2.0, 0.5])
    x = run(Shampoo(lr=1.0, eps=0.1, eps_mode="relative", vector_diagonal=True), np.zeros(3), [g])[0]
    np.testing.assert_allclose(-x, g / np.sqrt(g * g + 0.1 * 4.0), rtol=1e-14)
    x = run(Shampoo(lr=1.0, eps=0.1, statistics="ema_debiased", beta2=0.9), np.zeros(SHAPE), GRADS[:1])[0]
    np.testing.assert_allclose(-x, dense_direction(GRADS[:1], 0.1), rtol=1e-12)


@pytest.mark.parametrize("precondition", ["gradient", "momentum"])
def test_nesterov_two_steps(precondition):
    """'gradient': m ← μm + P(G), step P(G) + μm; 'momentum': m ← μm + G, step P(G + μm)."""
    mu, lr = 0.5, 0.5
    x = run(Shampoo(lr=lr, eps=0.1, momentum=mu, nesterov=True, precondition=precondition), X0.copy(),
            GRADS[:2])[0]
    if precondition == "gradient":
        p1, p2 = dense_direction(GRADS[:1], 0.1), dense_direction(GRADS[:2], 0.1)
        m1 = p1
        m2 = mu * m1 + p2
        expected = X0 - lr * (p1 + mu * m1) - lr * (p2 + mu * m2)
    else:
        m1 = GRADS[0]
        m2 = mu * m1 + GRADS[1]
        # P with the statistics of the raw gradients applied to G + μm
        d1 = _apply_roots(GRADS[:1], GRADS[0] + mu * m1)
        d2 = _apply_roots(GRADS[:2], GRADS[1] + mu * m2)
        expected = X0 - lr * d1 - lr * d2
    np.testing.assert_allclose(x, expected, rtol=1e-12)
    plain = run(Shampoo(lr=lr, eps=0.1, momentum=mu, precondition=precondition), X0.copy(), GRADS[:2])[0]
    assert np.max(np.abs(plain - x)) > 1e-3


def test_filter_beta_two_steps():
    """filter_beta β: step 1 preconditions G₁ ((1 − β)G₁ / (1 − β)), step 2 the bias-corrected EMA
    (β(1 − β)G₁ + (1 − β)G₂) / (1 − β²) with the statistics of the raw G₁, G₂."""
    b = 0.6
    x, s, _ = run(Shampoo(lr=0.5, eps=0.1, filter_beta=b), X0.copy(), GRADS[:2])
    g2 = (b * (1 - b) * GRADS[0] + (1 - b) * GRADS[1]) / (1 - b ** 2)
    expected = X0 - 0.5 * dense_direction(GRADS[:1], 0.1) - 0.5 * _apply_roots(GRADS[:2], g2)
    np.testing.assert_allclose(x, expected, rtol=1e-12)
    np.testing.assert_allclose(s.filtered, b * (1 - b) * GRADS[0] + (1 - b) * GRADS[1], rtol=1e-14)
    assert np.max(np.abs(x - two_steps())) > 1e-3


def _apply_roots(grads, D, eps=0.1):
    """(R_1 ⊗ R_2) vec(D) with the roots of the statistics of ``grads`` (sum, ε added)."""
    roots = [psd_power(sum(unfold(G, i) @ unfold(G, i).T for G in grads), -0.25, eps) for i in range(2)]
    return roots[0] @ D @ roots[1]


def test_stale_roots_between_recomputations():
    # T = 2: roots at t = 1 and 3; step 2 applies the step-1 roots to G2
    x = run(Shampoo(lr=0.5, eps=0.1, precondition_interval=2), X0.copy(), GRADS)[0]
    H = [unfold(GRADS[0], i) @ unfold(GRADS[0], i).T for i in range(2)]
    stale = psd_power(H[0], -0.25, 0.1) @ GRADS[1] @ psd_power(H[1], -0.25, 0.1)
    expected = X0 - 0.5 * (dense_direction(GRADS[:1], 0.1) + stale + dense_direction(GRADS, 0.1))
    np.testing.assert_allclose(x, expected, rtol=1e-12)


def test_start_step_uses_the_graft_direction_before():
    x, s, info = run(Shampoo(lr=0.5, eps=0.1, start_step=2), X0.copy(), GRADS[:1])
    np.testing.assert_allclose(x, X0 - 0.5 * GRADS[0], rtol=1e-14)
    assert not info["preconditioned"] and s.roots[0] is None
    x2, _, info2 = Shampoo(lr=0.5, eps=0.1, start_step=2).update(x, s, ScriptedOracle(GRADS[1:2]))
    np.testing.assert_allclose(x2, x - 0.5 * dense_direction(GRADS[:2], 0.1), rtol=1e-12)
    assert info2["preconditioned"] and info2["refreshed"]
    # with Adagrad grafting the early steps are Adagrad steps
    xa, _, _ = run(Shampoo(lr=0.5, eps=0.1, start_step=3, grafting="adagrad", graft_eps=1e-3), X0.copy(), GRADS[:2])
    xd, _, _ = run(Adagrad(lr=0.5, eps=1e-3), X0.copy(), GRADS[:2])
    np.testing.assert_allclose(xa, xd, rtol=1e-13)


@pytest.mark.parametrize("grafting", ["sgd", "adagrad"])
def test_grafting_takes_the_norm_of_the_graft(grafting):
    opt = Shampoo(lr=1.0, eps=0.1, grafting=grafting, graft_eps=1e-3)
    x1, s1, _ = run(opt, np.zeros(SHAPE), GRADS[:1])
    x2, _, _ = opt.update(x1, s1, ScriptedOracle(GRADS[1:2]))
    d2 = x1 - x2
    P = dense_direction(GRADS[:2], 0.1)
    A = GRADS[0] ** 2 + GRADS[1] ** 2
    graft = GRADS[1] if grafting == "sgd" else GRADS[1] / (np.sqrt(A) + 1e-3)
    np.testing.assert_allclose(d2, P * np.linalg.norm(graft) / np.linalg.norm(P), rtol=1e-12)


def test_merge_dims_reshapes_before_preconditioning():
    rng = np.random.default_rng(3)
    grads = [rng.standard_normal((2, 3, 4)) for _ in range(2)]
    assert merge_dims((2, 3, 4), 6) == (6, 4) and merge_dims((2, 3, 4), 5) == (2, 3, 4)
    x, _, _ = run(Shampoo(lr=0.5, eps=0.1, merge_dims=6), np.zeros((2, 3, 4)), grads)
    xm, _, _ = run(Shampoo(lr=0.5, eps=0.1), np.zeros((6, 4)), [g.reshape(6, 4) for g in grads])
    np.testing.assert_allclose(x.reshape(6, 4), xm, rtol=1e-12)  # exponent −1/4 of the merged order 2


def test_blocks_are_preconditioned_independently():
    rng = np.random.default_rng(4)
    grads = [rng.standard_normal((4, 5)) for _ in range(2)]
    assert len(block_slices((4, 5), 3)) == 4
    x, _, _ = run(Shampoo(lr=0.5, eps=0.1, block_size=3), np.zeros((4, 5)), grads)
    for rows in (slice(0, 3), slice(3, 4)):
        for cols in (slice(0, 3), slice(3, 5)):
            xb, _, _ = run(Shampoo(lr=0.5, eps=0.1), np.zeros((4, 5))[rows, cols], [g[rows, cols] for g in grads])
            np.testing.assert_allclose(x[rows, cols], xb, rtol=1e-12)


def test_vector_diagonal_is_adagrad_with_eps_inside():
    grads = [np.array([1.0, -2.0, 0.5]), np.array([0.3, 0.3, -1.0])]
    x, _, _ = run(Shampoo(lr=0.5, eps=0.01, vector_diagonal=True), np.zeros(3), grads)
    xa, _, _ = run(Adagrad(lr=0.5, eps=0.01, eps_mode="inside"), np.zeros(3), grads)
    np.testing.assert_allclose(x, xa, rtol=1e-13)
    xf, _, _ = run(Shampoo(lr=0.5, eps=0.01), np.zeros(3), grads)
    assert np.max(np.abs(xf - x)) > 1e-3


@pytest.mark.parametrize("kw", [dict(eps_mode="floor"), dict(eps_mode="relative"),
                                dict(statistics="ema_debiased", beta2=0.6), dict(exponent=-0.25)])
def test_vector_diagonal_root_switches_two_steps(kw):
    """A diagonal statistic H (vector_diagonal) takes the same switches elementwise: H + ε, max(H, ε),
    H + ε·max(max H, 1e-6), H / (1 − β₂ᵗ), and the exponent override."""
    grads = [np.array([1.0, -0.02, 0.5]), np.array([0.3, 0.01, -1.0])]
    eps, lr = 0.01, 0.5
    x, H = np.zeros(3), np.zeros(3)
    for t, g in enumerate(grads, start=1):
        if "beta2" in kw:
            H = kw["beta2"] * H + (1 - kw["beta2"]) * g * g
            lam = H / (1 - kw["beta2"] ** t) + eps
        else:
            H = H + g * g
            lam = {"floor": np.maximum(H, eps), "relative": H + eps * max(H.max(), 1e-6)}.get(kw.get("eps_mode"),
                                                                                                H + eps)
        x = x - lr * lam ** kw.get("exponent", -0.5) * g
    ours = run(Shampoo(lr=lr, eps=eps, vector_diagonal=True, **kw), np.zeros(3), grads)[0]
    np.testing.assert_allclose(ours, x, rtol=1e-14)
    assert np.max(np.abs(ours - run(Shampoo(lr=lr, eps=eps, vector_diagonal=True), np.zeros(3), grads)[0])) > 1e-4


@pytest.mark.parametrize("precondition", ["gradient", "momentum"])
def test_momentum_two_steps(precondition):
    mu = 0.5
    x = run(Shampoo(lr=0.5, eps=0.1, momentum=mu, precondition=precondition), X0.copy(), GRADS[:2])[0]
    d1 = dense_direction(GRADS[:1], 0.1)
    if precondition == "gradient":  # m1 = P1(G1), m2 = μ m1 + P2(G2)
        step2 = mu * d1 + dense_direction(GRADS[:2], 0.1)
    else:  # m2 = μ G1 + G2, preconditioned with the step-2 statistics (of the raw gradients)
        H = [sum(unfold(G, i) @ unfold(G, i).T for G in GRADS[:2]) for i in range(2)]
        step2 = psd_power(H[0], -0.25, 0.1) @ (mu * GRADS[0] + GRADS[1]) @ psd_power(H[1], -0.25, 0.1)
    np.testing.assert_allclose(x, X0 - 0.5 * d1 - 0.5 * step2, rtol=1e-12)


@pytest.mark.parametrize("lam", [0.0, 0.2])
def test_blended_momentum_three_steps(lam):
    """pytorch_optimizer's momentum: G̃_1 = G_1, G̃_t = (1 − μ)G_t + μP_{t−1} (+ λθ_t after the blend) feeds the
    statistics and the step P_t = P(G̃_t) computed densely from the G̃'s."""
    mu, lr = 0.6, 0.5
    x = run(Shampoo(lr=lr, eps=0.1, momentum=mu, precondition="blended", weight_decay=lam), X0.copy(), GRADS[:3])[0]
    xs, blended, P = [X0], [], None
    for G in GRADS[:3]:
        Gt = (G if P is None else (1 - mu) * G + mu * P) + lam * xs[-1]
        blended.append(Gt)
        P = dense_direction(blended, 0.1)
        xs.append(xs[-1] - lr * P)
    np.testing.assert_allclose(x, xs[-1], rtol=1e-12)
    plain = run(Shampoo(lr=lr, eps=0.1, momentum=mu, weight_decay=lam), X0.copy(), GRADS[:3])[0]
    assert np.max(np.abs(plain - x)) > 1e-3   # not the usual m ← μm + P(G)


def test_blended_without_momentum_is_plain_shampoo():
    a = run(Shampoo(lr=0.5, eps=0.1, precondition="blended"), X0.copy(), GRADS[:3])[0]
    b = run(Shampoo(lr=0.5, eps=0.1), X0.copy(), GRADS[:3])[0]
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("eps_mode", ["add", "floor"])
def test_svd_roots_equal_eigh_roots(eps_mode):
    """root="svd" is U diag(s)^p Vᵀ (pytorch_optimizer's compute_power_svd): for the PSD statistics the same
    matrix as eigh's up to rounding, and the transcription (psd_power, by the SVD) to 1e-12."""
    a = run(Shampoo(lr=0.5, eps=0.1, eps_mode=eps_mode, root="svd"), X0.copy(), GRADS[:2])[0]
    b = run(Shampoo(lr=0.5, eps=0.1, eps_mode=eps_mode), X0.copy(), GRADS[:2])[0]
    np.testing.assert_allclose(a, b, rtol=1e-12)
    expected = X0 - 0.5 * dense_direction(GRADS[:1], 0.1, mode=eps_mode) - 0.5 * dense_direction(GRADS[:2], 0.1,
                                                                                                 mode=eps_mode)
    np.testing.assert_allclose(a, expected, rtol=1e-12)


def test_svd_root_of_a_zero_statistic_stays_finite():
    """A zero gradient makes every singular value 0; the positive floor (or the added ε) keeps the root finite."""
    for eps_mode in ("floor", "add"):
        x, _, info = run(Shampoo(eps=1e-3, eps_mode=eps_mode, root="svd"), X0.copy(), [np.zeros_like(X0)])
        assert not info["skipped"] and np.array_equal(x, X0)


@pytest.mark.parametrize("mode", ["l2", "decoupled"])
def test_weight_decay_two_steps(mode):
    lam, lr = 0.2, 0.5
    x = run(Shampoo(lr=lr, eps=0.1, weight_decay=lam, weight_decay_mode=mode), X0.copy(), GRADS[:2])[0]
    if mode == "l2":
        g1 = GRADS[0] + lam * X0
        x1 = X0 - lr * dense_direction([g1], 0.1)
        g2 = GRADS[1] + lam * x1
        expected = x1 - lr * dense_direction([g1, g2], 0.1)
    else:
        x1 = X0 - lr * (dense_direction(GRADS[:1], 0.1) + lam * X0)
        expected = x1 - lr * (dense_direction(GRADS[:2], 0.1) + lam * x1)
    np.testing.assert_allclose(x, expected, rtol=1e-12)


# --- networks and vectors ------------------------------------------------------------------------
def test_mlp_biases_full_matrix_and_descent():
    assert optimizer_class("shampoo") is Shampoo
    rng = np.random.default_rng(0)
    model = MLP([3, 4, 2])
    orc = Oracle(model, SoftmaxCrossEntropy(), rng.standard_normal((16, 3)), rng.integers(0, 2, 16))
    opt = Shampoo(lr=0.1, precondition_interval=2, grafting="adagrad")
    p = model.init(0)
    s = opt.init(p)
    assert [R.shape for R in s.stats[1][0]] == [(4, 4)]          # bias b_1: one 4×4 statistic
    assert [R.shape for R in s.stats[0][0]] == [(3, 3), (4, 4)]  # W_1 (3, 4): L and R
    first = orc.value(p)
    for _ in range(4):
        p, s, info = opt.update(p, s, orc)
    assert orc.value(p) < first


def test_function_oracle_vector():
    # g = x0, H = g gᵀ: (H + εI)^{−1/2} g = g / √(‖g‖² + ε) (g is an eigenvector, eigenvalue ‖g‖² = 5)
    f = FunctionOracle(lambda x: 0.5 * float(x @ x), grad=lambda x: x)
    x0 = np.array([1.0, -2.0])
    x, s, info = Shampoo(lr=0.5).update(x0, Shampoo(lr=0.5).init(x0), f)
    assert info["loss"] == 2.5
    np.testing.assert_allclose(x, x0 - 0.5 * x0 / np.sqrt(5.0 + 1e-4), rtol=1e-12)


def test_state_survives_a_checkpoint_round_trip():
    from refopt.serialize import decode, encode
    opt = Shampoo(start_step=2, grafting="adagrad", momentum=0.5, block_size=2)
    p0 = [np.ones((3, 2)), np.ones(3)]
    _, s, _ = run(opt, p0, [[np.eye(3, 2), np.arange(3.0)]])  # roots still None (start_step=2)
    arrays = []
    back = decode(encode(s, arrays), arrays)
    assert type(back) is type(s) and back.roots == (None, None) and back.step == 1
    for a, b in zip(T.leaves(back.stats), T.leaves(s.stats)):
        np.testing.assert_array_equal(a, b)


# --- distributed_shampoo's conventions (eps_mode="shift", refresh, lr_dtype, factor_dtype) ----------------
def meta_root(H, p, eps, dtype=np.float64):
    """Meta's root in ``dtype``: L, Q = eigh(H + εI); if λ_min < ε, L ← L − λ_min + ε; Q L^p Qᵀ."""
    H = H.astype(dtype)
    lam, Q = np.linalg.eigh(H + dtype(eps) * np.eye(len(H), dtype=dtype))
    if lam.min() < eps:
        lam = lam - lam.min() + dtype(eps)
    return (Q * lam ** p) @ Q.T


def test_shift_eps_mode_two_steps_rank_deficient():
    # rank-one statistics: eigh(H + εI) has λ_min ≈ ε ± rounding, shifted so that λ_min = ε exactly
    x = run(Shampoo(lr=0.5, eps=1e-3, eps_mode="shift"), X0.copy(), GRADS[:2])[0]
    expected = X0.copy()
    for t in (1, 2):
        H = [sum(unfold(G, i) @ unfold(G, i).T for G in GRADS[:t]) for i in range(2)]
        expected -= 0.5 * meta_root(H[0], -0.25, 1e-3) @ GRADS[t - 1] @ meta_root(H[1], -0.25, 1e-3)
    np.testing.assert_allclose(x, expected, rtol=1e-12)


def test_shift_eps_mode_rescues_a_rounding_negative_statistic():
    # H with λ_min = −1e-9 < −ε: "add" refuses (singular), "shift" moves λ_min to ε, as Meta does
    H = np.diag([1.0, -1e-9])
    lam = np.array([1.0, -1e-9]) + 1e-12
    lam = lam - lam.min() + 1e-12
    opt = Shampoo(eps=1e-12, eps_mode="shift")
    np.testing.assert_allclose(opt._root(H, -0.5), np.diag(lam ** -0.5), rtol=1e-12)
    with pytest.raises(ValueError, match="singular"):
        Shampoo(eps=1e-12)._root(H, -0.5)
    # no shift when λ_min ≥ ε: the root of H + εI
    H = np.diag([2.0, 0.5])
    np.testing.assert_allclose(opt._root(H, -0.5), np.diag((np.diag(H) + 1e-12) ** -0.5), rtol=1e-15)


@pytest.mark.parametrize("refresh,expected", [("from_start", [2, 5]), ("multiples", [2, 3, 6])])
def test_refresh_schedules(refresh, expected):
    opt = Shampoo(precondition_interval=3, start_step=2, refresh=refresh)
    params, state = [np.ones((3, 2))], None
    state = opt.init(params)
    refreshed = []
    for t in range(1, 7):
        params, state, info = opt.update(params, state, ScriptedOracle([[GRADS[t % 3]]]))
        if info["refreshed"]:
            refreshed.append(t)
    assert refreshed == expected


def test_lr_dtype_float32_rounds_the_step_size():
    lr = 0.01
    lr32 = float(np.float32(lr))
    assert lr32 != lr
    x = run(Shampoo(lr=lr, eps=0.1, lr_dtype="float32", weight_decay=0.3, weight_decay_mode="decoupled"),
            X0.copy(), GRADS[:1])[0]
    expected = X0 - lr32 * (dense_direction(GRADS[:1], 0.1) + 0.3 * X0)   # Meta: θ − η₃₂(P + λθ)
    np.testing.assert_allclose(x, expected, rtol=1e-15)
    with pytest.raises(ValueError, match="float32"):
        Shampoo(lr=1e300, lr_dtype="float32")


@pytest.mark.parametrize("statistics", ["sum", "ema_debiased"])
def test_factor_dtype_float32_transcription(statistics):
    # H in float32 (one rounding per accumulation), the roots in float32, P from float32(G), cast back
    b2 = 0.9
    opt = Shampoo(lr=0.5, eps=1e-3, eps_mode="shift", factor_dtype="float32", statistics=statistics, beta2=b2)
    x, state, _ = run(opt, X0.copy(), GRADS)
    assert all(H.dtype == np.float32 for H in T.leaves(state.stats)) and x.dtype == np.float64
    H = [np.zeros((3, 3), np.float32), np.zeros((2, 2), np.float32)]
    expected = X0.copy()
    for t, G in enumerate(GRADS, 1):
        for i in range(2):
            S = unfold(G, i) @ unfold(G, i).T
            H[i] = (S + H[i]).astype(np.float32) if statistics == "sum" else \
                ((H[i] * np.float32(b2)) + (1 - b2) * S).astype(np.float32)
        bc = np.float32(1 - b2 ** t) if statistics == "ema_debiased" else None
        R = [meta_root(Hi / bc if bc is not None else Hi, np.float32(-0.25), 1e-3, np.float32) for Hi in H]
        assert all(Ri.dtype == np.float32 for Ri in R)
        expected -= 0.5 * (R[0] @ G.astype(np.float32) @ R[1]).astype(np.float64)
    np.testing.assert_array_equal(x, expected)
    native = run(Shampoo(lr=0.5, eps=1e-3, eps_mode="shift", statistics=statistics, beta2=b2), X0.copy(), GRADS)[0]
    assert 1e-9 < np.max(np.abs(x - native)) < 1e-4   # float32 rounding, visible and small


def test_switches_are_declared_with_the_defaults():
    assert_switches_declared_with_defaults(Shampoo)


@pytest.mark.parametrize("kw", [dict(), dict(statistics="ema"), dict(vector_diagonal=True, momentum=0.5),
                                dict(block_size=2, grafting="adagrad", precondition="momentum", momentum=0.3)])
def test_update_does_not_modify_params_or_state(kw):
    import copy
    opt = Shampoo(**kw)
    p0 = [np.ones((3, 2)), np.arange(3.0)]
    _, s1, _ = run(opt, p0, [[np.eye(3, 2), np.ones(3)]])
    p_before, s_before = copy.deepcopy(p0), copy.deepcopy(s1)
    opt.update(p0, s1, ScriptedOracle([[np.full((3, 2), 0.5), np.array([1.0, -1.0, 2.0])]]))
    for a, b in zip(T.leaves(p0), T.leaves(p_before)):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(T.leaves([x for x in s1 if x is not None]), T.leaves([x for x in s_before if x is not None])):
        np.testing.assert_array_equal(a, b)


def test_graft_weight_decay_is_added_after_grafting_before_the_momentum():
    """weight_decay_mode="graft" (google-research scalable_shampoo, decoupled_weight_decay=False), transcribed:
    u = P(G)·‖G‖/‖P(G)‖ + λθ, m ← μm + u, θ ← θ − η(u + μm) (Nesterov); statistics from the raw G."""
    mu, lr, lam, eps = 0.5, 0.5, 0.3, 0.1
    opt = Shampoo(lr=lr, eps=eps, momentum=mu, nesterov=True, grafting="sgd", weight_decay=lam,
                  weight_decay_mode="graft")
    x = run(opt, X0.copy(), GRADS[:2])[0]
    theta, m = X0.copy(), np.zeros_like(X0)
    for t in (1, 2):
        G = GRADS[t - 1]
        P = dense_direction(GRADS[:t], eps)
        u = P * np.linalg.norm(G) / np.linalg.norm(P) + lam * theta
        m = mu * m + u
        theta = theta - lr * (u + mu * m)
    np.testing.assert_allclose(x, theta, rtol=1e-12)
    l2 = run(Shampoo(lr=lr, eps=eps, momentum=mu, nesterov=True, grafting="sgd", weight_decay=lam),
             X0.copy(), GRADS[:2])[0]
    assert np.max(np.abs(l2 - x)) > 1e-3   # "l2" (λθ before the statistics and the graft) is another step


# --- learning-rate schedule -------------------------------------------------------------------------------
def test_the_scheduled_lr_is_rounded_to_float32_under_lr_dtype():
    """Meta's float32 lr tensor holds the scheduled value: η_t = fl₃₂(η·γ^t), reported and applied."""
    import struct
    from refopt.optim.schedules import StepDecay
    rng = np.random.default_rng(3)
    model = MLP([3, 2])
    oracle = Oracle(model, SoftmaxCrossEntropy(), rng.standard_normal((4, 3)), rng.integers(0, 2, 4))
    params = model.init(0)
    opt = Shampoo(lr=0.1, lr_dtype="float32", schedule=StepDecay(step_size=1, gamma=0.3))
    native = Shampoo(lr=0.1, schedule=StepDecay(step_size=1, gamma=0.3))
    state, n_state = opt.init(params), native.init(params)
    for t in range(3):
        eta = struct.unpack("f", struct.pack("f", 0.1 * 0.3 ** t))[0]
        new, state, info = opt.update(params, state, oracle)
        n_new, n_state, n_info = native.update(params, n_state, oracle)
        assert info["lr"] == eta != n_info["lr"] == 0.1 * 0.3 ** t
        for a, b, p in zip(T.leaves(new), T.leaves(n_new), T.leaves(params)):   # the same direction, scaled
            np.testing.assert_allclose((a - p) * n_info["lr"], (b - p) * eta, rtol=1e-12, atol=1e-17)
        params = new
        n_state = state   # both continue from the same state


# --- 4-D conv kernels: order-4 statistics, or the (O, I·kh·kw) matrix view ------------------------------------
def test_order4_kernel_step_is_the_dense_kronecker_product_of_its_four_roots():
    g = np.random.default_rng(11)
    shape = (2, 3, 2, 2)                    # OIHW
    grads = [g.standard_normal(shape) for _ in range(2)]
    x, state, _ = run(Shampoo(lr=1.0, eps=0.05), np.zeros(shape), grads)
    x1, _, _ = run(Shampoo(lr=1.0, eps=0.05), np.zeros(shape), grads[:1])
    # the second step by hand: R_i = (Σ_t G_t,(i) G_t,(i)ᵀ + εI)^(−1/8), step (R_1 ⊗ R_2 ⊗ R_3 ⊗ R_4) vec(G_2)
    roots = [psd_power(sum(unfold(G, i) @ unfold(G, i).T for G in grads), -1.0 / 8, 0.05) for i in range(4)]
    K = reduce(np.kron, roots)
    assert K.shape == (24, 24)
    np.testing.assert_allclose(x1 - x, (K @ grads[1].ravel()).reshape(shape), rtol=1e-10, atol=1e-12)
    assert [h.shape for h in state.stats[0][0]] == [(2, 2), (3, 3), (2, 2), (2, 2)]


def test_matrix_view_of_a_kernel_is_matrix_shampoo_on_o_by_i_kh_kw():
    g = np.random.default_rng(12)
    shape = (3, 2, 3, 3)
    grads = [g.standard_normal(shape) for _ in range(2)]
    x, state, _ = run(Shampoo(lr=1.0, eps=0.05, tensor_view="matrix"), np.zeros(shape), grads)
    x1, _, _ = run(Shampoo(lr=1.0, eps=0.05, tensor_view="matrix"), np.zeros(shape), grads[:1])
    M = [G.reshape(3, 18) for G in grads]
    L = psd_power(sum(G @ G.T for G in M), -0.25, 0.05)
    R = psd_power(sum(G.T @ G for G in M), -0.25, 0.05)
    np.testing.assert_allclose(x1 - x, (L @ M[1] @ R).reshape(shape), rtol=1e-10, atol=1e-12)
    assert [h.shape for h in state.stats[0][0]] == [(3, 3), (18, 18)]
    # matrices and vectors are unaffected by the view
    G2 = [g.standard_normal((3, 4)) for _ in range(2)]
    a, _, _ = run(Shampoo(lr=1.0, tensor_view="matrix"), np.zeros((3, 4)), G2)
    b, _, _ = run(Shampoo(lr=1.0), np.zeros((3, 4)), G2)
    np.testing.assert_array_equal(a, b)


def test_bad_tensor_view_is_refused_naming_it():
    for bad in ("flat", True, None):
        with pytest.raises(ValueError, match="tensor_view"):
            Shampoo(tensor_view=bad)
