"""Adagrad (diagonal and full-matrix) against closed forms, dense roots and each other."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from refopt.nn import MLP, SoftmaxCrossEntropy
from refopt.optim import optimizer_class
from refopt.optim.adagrad import Adagrad, FullMatrixAdagrad
from refopt.oracle import FunctionOracle, Oracle

from _helpers import (ScriptedOracle, assert_descends, assert_refused, assert_switches_declared_with_defaults,
                      quadratic, run)


# --- construction --------------------------------------------------------------------------------
@pytest.mark.parametrize("cls", [Adagrad, FullMatrixAdagrad])
@pytest.mark.parametrize("kw", [dict(lr=0.0), dict(lr=-1.0), dict(eps=0.0), dict(eps=-1e-8),
                                dict(initial_accumulator=-0.1), dict(eps_mode="under"), dict(weight_decay=-1.0),
                                dict(weight_decay_mode="adamw"), dict(lr=float("nan"))])
def test_bad_hyperparameters_raise(cls, kw):
    with pytest.raises(ValueError, match=list(kw)[0]):
        cls(**kw)


@pytest.mark.parametrize("bad", [-0.1, float("inf"), "0.1"])
def test_bad_lr_decay_raises(bad):
    with pytest.raises(ValueError, match="lr_decay"):
        Adagrad(lr_decay=bad)


def test_full_matrix_bad_blocks_and_size_guard():
    with pytest.raises(ValueError, match="blocks"):
        FullMatrixAdagrad(blocks="layer")
    with pytest.raises(ValueError, match="max_size"):
        FullMatrixAdagrad(max_size=5).init(np.zeros(6))
    FullMatrixAdagrad(max_size=5, blocks="leaf").init([np.zeros(5), np.zeros(3)])  # each block fits


@pytest.mark.parametrize("cls", [Adagrad, FullMatrixAdagrad])
def test_zero_length_leaf_raises_at_init(cls):
    with pytest.raises(ValueError, match="zero-length"):
        cls().init([np.zeros((3, 0)), np.zeros(2)])


def test_scalar_leaf_is_a_coordinate():
    x, _, _ = run(Adagrad(lr=0.5), np.array(2.0), FunctionOracle(lambda x: 0.5 * float(x * x), grad=lambda x: x), 1)
    assert np.isclose(x, 1.5)


# --- closed forms ----------------------------------------------------------------------------------
def test_diagonal_two_steps_by_hand():
    # f = ½‖x‖², x0 = (1, −2), η = 0.5: g1 = x0, G1 = (1, 4), x1 = x0 − η·sign(x0) = (0.5, −1.5);
    # g2 = x1, G2 = (1.25, 6.25), x2 = x1 − η·(0.5/√1.25, −1.5/2.5) = (0.5 − 0.25/√1.25, −1.2).
    opt = Adagrad(lr=0.5, eps=1e-12)
    orc = quadratic([1.0, 1.0], [0.0, 0.0])
    x1, s1, _ = run(opt, np.array([1.0, -2.0]), orc, 1)
    np.testing.assert_allclose(x1, [0.5, -1.5], rtol=1e-11)
    x2, s2, _ = opt.update(x1, s1, orc)
    np.testing.assert_allclose(x2, [0.5 - 0.25 / np.sqrt(1.25), -1.2], rtol=1e-11)
    np.testing.assert_allclose(s2.accumulator, [1.25, 6.25], rtol=1e-11)
    assert s2.step == 2


def adagrad_reference(x0, grad, steps, lr, eps, G0=0.0, inside=False, wd=0.0, decoupled=False, lr_decay=0.0):
    x, G = np.array(x0, float), np.full(len(x0), G0)
    for t in range(1, steps + 1):
        clr = lr / (1 + (t - 1) * lr_decay)                     # torch's clr
        g = grad(x) + (0.0 if decoupled else wd * x)
        G = G + g * g
        d = g / np.sqrt(G + eps) if inside else g / (np.sqrt(G) + eps)
        x = x - clr * d - (clr * wd * x if decoupled else 0.0)
    return x


@pytest.mark.parametrize("kw", [dict(), dict(eps_mode="inside"), dict(initial_accumulator=0.1),
                                dict(weight_decay=0.3), dict(weight_decay=0.3, weight_decay_mode="decoupled"),
                                dict(lr_decay=0.5),
                                dict(lr_decay=2.0, weight_decay=0.3, weight_decay_mode="decoupled")])
def test_diagonal_two_steps_every_switch(kw):
    a, c, x0 = np.array([2.0, 0.5, 1.0]), np.array([0.3, -1.0, 0.0]), np.array([1.0, -2.0, 0.5])
    opt = Adagrad(lr=0.3, eps=0.05, **kw)
    x, _, _ = run(opt, x0, quadratic(a, c), 2)
    ref = adagrad_reference(x0, lambda x: a * x + c, 2, 0.3, 0.05, kw.get("initial_accumulator", 0.0),
                            kw.get("eps_mode") == "inside", kw.get("weight_decay", 0.0),
                            kw.get("weight_decay_mode") == "decoupled", kw.get("lr_decay", 0.0))
    np.testing.assert_allclose(x, ref, rtol=1e-13)
    # and the switch matters: the default gives something else
    if kw:
        x_default, _, _ = run(Adagrad(lr=0.3, eps=0.05), x0, quadratic(a, c), 2)
        assert np.max(np.abs(x_default - x)) > 1e-4


def psd_sqrt(S):
    """S^{1/2} of a symmetric PSD matrix by the SVD (independent of the optimizer's eigh)."""
    U, sig, _ = np.linalg.svd(S)
    return (U * np.sqrt(sig)) @ U.T


def full_reference(x0, grad, steps, lr, eps, S0=0.0, inside=False, wd=0.0, decoupled=False):
    """Duchi et al.'s full-matrix step, the root by the SVD, the inverse by a solve."""
    x = np.array(x0, float)
    S = S0 * np.eye(len(x))
    for _ in range(steps):
        g = grad(x) + (0.0 if decoupled else wd * x)
        S = S + np.outer(g, g)
        if inside:
            M = psd_sqrt(S + eps * np.eye(len(x)))
        else:
            M = psd_sqrt(S) + eps * np.eye(len(x))
        x = x - lr * np.linalg.solve(M, g) - (lr * wd * x if decoupled else 0.0)
    return x


@pytest.mark.parametrize("kw", [dict(), dict(eps_mode="inside"), dict(initial_accumulator=0.2),
                                dict(weight_decay=0.3), dict(weight_decay=0.3, weight_decay_mode="decoupled")])
def test_full_matrix_two_steps_every_switch(kw):
    A = np.array([[2.0, 0.5, 0.0], [0.5, 1.0, 0.3], [0.0, 0.3, 1.5]])
    c, x0 = np.array([0.3, -1.0, 0.2]), np.array([1.0, -2.0, 0.5])
    orc = FunctionOracle(lambda x: 0.5 * float(x @ A @ x) + float(c @ x), grad=lambda x: A @ x + c)
    # a large δ keeps sqrtm of the rank-deficient S well conditioned for the comparison
    x, s, _ = run(FullMatrixAdagrad(lr=0.3, eps=0.1, **kw), x0, orc, 2)
    ref = full_reference(x0, lambda x: A @ x + c, 2, 0.3, 0.1, kw.get("initial_accumulator", 0.0),
                         kw.get("eps_mode") == "inside", kw.get("weight_decay", 0.0),
                         kw.get("weight_decay_mode") == "decoupled")
    np.testing.assert_allclose(x, ref, rtol=1e-9, atol=1e-12)


def test_full_matrix_leaf_blocks_are_independent_runs():
    grads = [[np.array([1.0, -2.0]), np.array([[0.5, 1.0], [2.0, -1.0]])],
             [np.array([0.3, 0.4]), np.array([[1.0, 0.0], [-1.0, 3.0]])]]
    p0 = [np.zeros(2), np.zeros((2, 2))]
    x, _, _ = run(FullMatrixAdagrad(lr=0.1, eps=0.01, blocks="leaf"), p0, ScriptedOracle(grads), 2)
    for i in range(2):
        xi, _, _ = run(FullMatrixAdagrad(lr=0.1, eps=0.01), p0[i], ScriptedOracle([g[i] for g in grads]), 2)
        np.testing.assert_allclose(x[i], xi, rtol=1e-12)
    # the global block couples the leaves, so it differs
    xg, _, _ = run(FullMatrixAdagrad(lr=0.1, eps=0.01), p0, ScriptedOracle(grads), 2)
    assert np.max(np.abs(xg[1] - x[1])) > 1e-3


@given(st.lists(st.tuples(st.integers(0, 3), st.floats(-3, 3).filter(lambda v: abs(v) > 1e-3)),
                min_size=1, max_size=6),
       st.sampled_from(["outside", "inside"]))
def test_full_matrix_on_one_hot_gradients_equals_diagonal(seq, eps_mode):
    grads = []
    for i, v in seq:
        g = np.zeros(4)
        g[i] = v
        grads.append(g)
    x0 = np.array([0.5, -1.0, 2.0, 0.0])
    xf, _, _ = run(FullMatrixAdagrad(lr=0.2, eps=1e-3, eps_mode=eps_mode), x0, ScriptedOracle(grads), len(grads))
    xd, _, _ = run(Adagrad(lr=0.2, eps=1e-3, eps_mode=eps_mode), x0, ScriptedOracle(grads), len(grads))
    np.testing.assert_allclose(xf, xd, rtol=1e-12, atol=1e-14)


# --- bad input -----------------------------------------------------------------------------------
@pytest.mark.parametrize("cls", [Adagrad, FullMatrixAdagrad])
def test_zero_gradient_keeps_everything_finite(cls):
    x, s, info = run(cls(), np.array([1.0, 2.0]), ScriptedOracle([np.zeros(2)] * 3), 3)
    np.testing.assert_array_equal(x, [1.0, 2.0])
    assert np.all(np.isfinite(s[1] if cls is Adagrad else s.S[0])) and not info["skipped"]


@pytest.mark.parametrize("cls", [Adagrad, FullMatrixAdagrad])
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_gradient_is_refused(cls, bad):
    opt = cls()
    x1, s1, _ = run(opt, np.array([1.0, 2.0]), ScriptedOracle([np.array([0.5, 1.0])]), 1)
    assert_refused(opt, x1, s1, ScriptedOracle([np.array([bad, 1.0])]), "non-finite gradient")


@pytest.mark.parametrize("cls", [Adagrad, FullMatrixAdagrad])
def test_overflowing_accumulator_is_refused(cls):
    # a finite gradient whose square overflows: G (or S) would hold inf
    opt = cls()
    x1, s1, _ = run(opt, np.array([1.0, 2.0]), ScriptedOracle([np.array([0.5, 1.0])]), 1)
    with np.errstate(over="ignore"):
        assert_refused(opt, x1, s1, ScriptedOracle([np.array([1e200, 1.0])]), "accumulator overflowed")


def test_registry_and_mlp_descent():
    assert optimizer_class("adagrad") is Adagrad and optimizer_class("adagrad_full") is FullMatrixAdagrad
    rng = np.random.default_rng(0)
    model = MLP([3, 4, 2])
    orc = Oracle(model, SoftmaxCrossEntropy(), rng.standard_normal((16, 3)), rng.integers(0, 2, 16))
    for opt in (Adagrad(lr=0.1), FullMatrixAdagrad(lr=0.1, blocks="leaf")):
        assert_descends(opt, orc, model.init(0))


def test_switches_are_declared_with_the_defaults():
    assert_switches_declared_with_defaults(Adagrad, FullMatrixAdagrad)


# --- learning-rate schedule -------------------------------------------------------------------------------
def test_lr_decay_applies_to_the_scheduled_lr():
    """torch: clr = lr_t / (1 + (t − 1)κ) with lr_t the scheduler's; with G = t·1 for unit gradients the step
    is −clr·1/(√t + δ), written out."""
    opt = Adagrad(lr=0.1, lr_decay=0.5, schedule={"name": "step", "step_size": 1, "gamma": 0.5})
    oracle = ScriptedOracle([np.ones(2)] * 3)
    theta, state = np.zeros(2), opt.init(np.zeros(2))
    for t in range(3):
        new, state, info = opt.update(theta, state, oracle)
        clr = 0.1 * 0.5 ** t / (1 + t * 0.5)
        assert info["lr"] == pytest.approx(clr, rel=1e-15)
        np.testing.assert_allclose(new, theta - clr / (np.sqrt(t + 1.0) + 1e-10), rtol=1e-15)
        theta = new
