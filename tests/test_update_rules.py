"""The shared update rules of refopt.optim.update_rules: each against its equation, the rounding each docstring
promises (the golden traces depend on it), purity, and the weight-decay forms other families use."""
import numpy as np
import pytest

from refopt import tree as T
from refopt.optim import update_rules
from refopt.optim.update_rules import (WEIGHT_DECAY_MODES, bias_correction,
                                       check_nonempty_leaves, chunks, decayed_gradient, decoupled_decay, descent_step,
                                       ema, ema_into, flat, graft, l2_decay, momentum)

from _helpers import ScriptedOracle


def tree(seed, scale=1.0):
    g = np.random.default_rng(seed)
    return [{"W": scale * g.standard_normal((3, 2)), "b": scale * g.standard_normal(2)}, g.standard_normal(4)]


def bits(a, b):
    """Equal to the last bit, leaf by leaf (the same structure)."""
    la, da = T.flatten(a)
    lb, db = T.flatten(b)
    return da == db and all(x.tobytes() == y.tobytes() for x, y in zip(la, lb))


# --- weight decay -----------------------------------------------------------------------------------
def test_l2_decay_is_the_gradient_of_the_penalty():
    theta, g = tree(0), tree(1)
    out = l2_decay(g, theta, 0.3)
    assert bits(out, T.tree_map2(lambda gi, x: gi + 0.3 * x, g, theta))
    assert l2_decay(g, theta, 0.0) is g


@pytest.mark.parametrize("mode", WEIGHT_DECAY_MODES)
def test_decayed_gradient_adds_l2_only_in_l2_mode(mode):
    theta, g = tree(0), tree(1)
    loss, out = decayed_gradient(theta, ScriptedOracle([g]), 0.5, mode)
    expected = T.axpy(0.5, theta, g) if mode == "l2" else g
    assert loss == 0.0 and bits(out, expected)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_decayed_gradient_signals_a_non_finite_gradient(bad):
    theta, g = tree(0), tree(1)
    g[1][2] = bad
    loss, out = decayed_gradient(theta, ScriptedOracle([g]), 0.5)
    assert out is None and loss == 0.0


def test_decoupled_decay_adds_c_theta_to_the_step():
    theta, step = tree(0), tree(1)
    assert bits(decoupled_decay(step, theta, 0.2), T.tree_map2(lambda d, x: d + 0.2 * x, step, theta))
    assert decoupled_decay(step, theta, 0.0) is step


def test_decoupled_decay_of_a_signed_update_is_the_k_fac_form_bit_for_bit():
    """K-FAC and K-BFGS write θ ← θ + Δ with Δ = (−ηλ)θ + (−η v): passing Δ = −ηv and −ηλ gives those bits,
    and so does the descent-sign form θ − (ηv + ηλθ) that Adam uses."""
    theta, v = tree(0), tree(1, scale=3.0)
    lr, lam = 0.37, 0.013
    kfac = T.add(theta, T.axpy(-lr * lam, theta, T.scale(-lr, v)))
    signed = T.add(theta, decoupled_decay(T.scale(-lr, v), theta, -lr * lam))
    descent = T.sub(theta, decoupled_decay(T.scale(lr, v), theta, lr * lam))
    assert bits(signed, kfac) and bits(descent, kfac)


@pytest.mark.parametrize("mode", WEIGHT_DECAY_MODES)
def test_descent_step(mode):
    theta, d = tree(0), tree(1)
    lr, lam = 0.3, 0.1
    out = descent_step(theta, d, lr, lam, mode)
    if mode == "decoupled":   # θ − η(d + λθ), exactly this rounding
        assert bits(out, T.tree_map2(lambda x, di: x - lr * (di + lam * x), theta, d))
    else:                     # the decay, if any, is already in d
        assert bits(out, T.tree_map2(lambda x, di: x - lr * di, theta, d))
    assert bits(descent_step(theta, d, lr), T.axpy(-lr, d, theta))


def test_decoupled_decay_alone_shrinks_theta():
    theta = tree(0)
    zero = T.zeros_like(theta)
    for out, factor in ((descent_step(theta, zero, 0.1, 0.5, "decoupled"), 0.95),
                        (T.sub(theta, decoupled_decay(zero, theta, 0.05)), 0.95)):
        for a, b in zip(T.leaves(out), T.leaves(theta)):
            np.testing.assert_allclose(a, factor * b, rtol=1e-15)


# --- moments ------------------------------------------------------------------------------------------
def test_ema_and_bias_correction_recover_a_constant():
    """The EMA of a constant x from m_0 = 0 is (1 − βᵗ) x, which the bias correction undoes."""
    x = tree(2)
    m = T.zeros_like(x)
    for t in range(1, 6):
        m = ema(m, x, 0.7)
        c = bias_correction(0.7, t)
        assert c == pytest.approx(1 - 0.7 ** t, rel=1e-15)
        for a, b in zip(T.leaves(m), T.leaves(x)):
            np.testing.assert_allclose(a / c, b, rtol=1e-14)
    assert bias_correction(0.7, 3, on=False) == 1.0


def test_ema_rounding_is_beta_m_plus_one_minus_beta_x():
    m, x = tree(0), tree(1)
    assert bits(ema(m, x, 0.9), T.tree_map2(lambda a, b: 0.9 * a + (1.0 - 0.9) * b, m, x))


# --- momentum ----------------------------------------------------------------------------------------
def test_heavy_ball_and_nesterov_in_closed_form():
    """d = 1, 2, 3 with μ = ½: v = 1, 2.5, 4.25; Nesterov's step is d + μv = 1.5, 3.25, 5.125."""
    v = np.zeros(1)
    for d, v_expected, nesterov_step in ((1.0, 1.0, 1.5), (2.0, 2.5, 3.25), (3.0, 4.25, 5.125)):
        v_hb, step_hb = momentum(v, np.array([d]), 0.5)
        v_n, step_n = momentum(v, np.array([d]), 0.5, nesterov=True)
        assert v_hb[0] == v_expected and step_hb is v_hb
        assert v_n[0] == v_expected and step_n[0] == nesterov_step
        v = v_hb


def test_momentum_on_trees_matches_axpy():
    v, d = tree(0), tree(1)
    new_v, step = momentum(v, d, 0.9, nesterov=True)
    assert bits(new_v, T.axpy(0.9, v, d)) and bits(step, T.axpy(0.9, new_v, d))


def test_the_k_fac_family_forms_bit_for_bit():
    """K-FAC and K-BFGS call these rules where they had written the arithmetic out; each old form, kept here,
    gives the same bits: L2 decay on the layer matrices W̄ = [W; b], K-BFGS's gradient momentum
    (1 − ρ)g + ρM, and the running factors ε·old + (1 − ε)·new (a tuple over layers, the estimate a list)."""
    from refopt.curvature.kronecker import layer_matrix
    g = np.random.default_rng(2)
    layers = lambda scale: [{"W": scale * g.standard_normal((3, 2)), "b": scale * g.standard_normal(2)}
                            for _ in range(2)]
    theta, grad, M = layers(1.0), layers(1e-3), layers(7.0)
    lam, rho, eps = 0.013, 0.9, 0.95
    old_l2 = [layer_matrix(gl) + lam * layer_matrix(p) for gl, p in zip(grad, theta)]
    new_l2 = [layer_matrix(gl) for gl in l2_decay(grad, theta, lam)]
    assert all(a.tobytes() == b.tobytes() for a, b in zip(old_l2, new_l2))
    assert bits(ema(M, grad, rho), T.axpy(1.0 - rho, grad, T.scale(rho, M)))
    old, new = tuple(layer_matrix(p) for p in theta), [layer_matrix(p) for p in M]
    assert bits(ema(old, tuple(new), eps), tuple(eps * o + (1.0 - eps) * n for o, n in zip(old, new)))


# --- grafting -------------------------------------------------------------------------------------------
def test_graft_takes_the_norm_of_the_other_direction():
    P, D = np.array([3.0, 4.0]), np.array([0.0, 10.0])
    np.testing.assert_allclose(graft(P, D), [6.0, 8.0], rtol=1e-15)
    zero = np.zeros(2)
    assert graft(zero, D) is zero


# --- purity and input checks ---------------------------------------------------------------------------
def test_rules_do_not_modify_their_inputs():
    a, b = tree(0), tree(1)
    a0, b0 = T.copy(a), T.copy(b)
    l2_decay(a, b, 0.1), decoupled_decay(a, b, 0.1), descent_step(a, b, 0.1, 0.2, "decoupled")
    ema(a, b, 0.9), momentum(a, b, 0.9, nesterov=True), graft(a[1], b[1])
    assert bits(a, a0) and bits(b, b0)


def test_check_nonempty_leaves():
    check_nonempty_leaves(tree(0))
    with pytest.raises(ValueError, match="zero-length"):
        check_nonempty_leaves({"a": np.zeros(2), "b": np.zeros((3, 0))})


# --- the fused updates' helpers ---------------------------------------------------------------------------
def test_ema_into_is_ema_bit_for_bit_and_spends_only_x():
    m, x = tree(0), tree(1)
    m_before, x_copy = T.copy(m), T.copy(x)
    out = ema_into(m, x, 0.95)
    assert bits(out, ema(m_before, x_copy, 0.95))
    assert bits(m, m_before)                                     # the running average is not touched
    assert not any(o is a for o, a in zip(T.leaves(out), T.leaves(m)))


@pytest.mark.parametrize("n,size,expected", [(0, 4, [(0, 0)]), (3, 4, [(0, 3)]), (8, 4, [(0, 4), (4, 8)]),
                                             (10, 4, [(0, 4), (4, 8), (8, 10)])])
def test_chunks_cut_a_range_into_runs(n, size, expected, monkeypatch):
    monkeypatch.setattr(update_rules, "CHUNK", size)
    assert [(sl.start, sl.stop) for sl in chunks(n)] == expected


def test_flat_views_a_contiguous_array_and_copies_any_other():
    a = np.arange(6.0).reshape(2, 3)
    flat(a)[4] = -1.0
    assert a[1, 1] == -1.0                                       # a view: a fused update writes through it
    f = np.asfortranarray(a)
    assert np.array_equal(flat(f), a.reshape(-1))               # row-major order, whatever the layout


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_ema_chunk_is_ema_bit_for_bit_in_each_buffer_arrangement(dtype):
    """The fused updates' chunk form of the moving average: into a fresh out with a scratch, into out with x's
    own buffer as the scratch (ema_into), and in place over x (Adam's v over g ⊙ g), each ``ema``'s bits."""
    from refopt.optim.update_rules import ema_chunk  # noqa: PLC0415
    g = np.random.default_rng(4)
    m, x = (g.standard_normal(257).astype(dtype) for _ in range(2))
    want = ema(m, x, 0.9)
    out, tmp = np.empty_like(m), np.empty_like(m)
    np.testing.assert_array_equal(ema_chunk(m, x, 0.9, out, tmp), want)
    xs = x.copy()
    np.testing.assert_array_equal(ema_chunk(m, xs, 0.9, out, xs), want)
    xs = x.copy()
    np.testing.assert_array_equal(ema_chunk(m, xs, 0.9, xs, tmp), want)
    assert want.dtype == dtype
