"""K-BFGS: double damping, the BFGS inverse update and its secant condition, positive definiteness,
L-BFGS with enough memory = BFGS, and the optimizer's first step in closed form."""
import math
import pickle

import numpy as np
import pytest
from hypothesis import given, strategies as st

from refopt import tree as T
from refopt.curvature import kronecker as K
from refopt.curvature.secant import bfgs_factor_update, double_damping, lbfgs_apply
from refopt.optim.kbfgs import KBFGS

from _helpers import mlp_problem


def problem(sizes=(4, 5, 3), batch=8, seed=0, X=None):
    _, params, oracle = mlp_problem(sizes, batch, seed, X=X)
    return params, oracle


def random_pd(g, n):
    a = g.standard_normal((n, n))
    return a @ a.T + 0.1 * np.eye(n)


@given(seed=st.integers(0, 10_000), n=st.integers(1, 6), mu2=st.sampled_from([0.05, 0.5, 0.9]))
def test_double_damping_guarantees_positive_curvature(seed, n, mu2):
    g = np.random.default_rng(seed)
    H, s, y = random_pd(g, n), g.standard_normal(n), g.standard_normal(n)  # sᵀy of either sign
    mu1 = 0.2
    s_t, y_t, th1, th2 = double_damping(s, y, H @ y, mu1, mu2)
    yHy = y @ H @ y
    assert s_t @ y >= mu1 * yHy - 1e-12 * abs(yHy)
    if th1 < 1:
        assert s_t @ y == pytest.approx(mu1 * yHy, rel=1e-9)
    else:
        assert np.array_equal(s_t, s)
    assert s_t @ y_t >= mu2 * (s_t @ s_t) * (1 - 1e-9)
    if th2 < 1:
        assert s_t @ y_t == pytest.approx(mu2 * (s_t @ s_t), rel=1e-9)
    H_new = bfgs_factor_update(H, s_t, y_t)
    assert np.allclose(H_new @ y_t, s_t, rtol=1e-7, atol=1e-9 * np.abs(s_t).max())   # secant condition
    assert np.linalg.eigvalsh(H_new).min() > 0


def test_bfgs_inverse_update_is_the_inverse_of_the_direct_update(rng):
    B = random_pd(rng, 4)
    s = rng.standard_normal(4)
    y = B @ s + 0.1 * rng.standard_normal(4)
    assert s @ y > 0
    B_new = B - np.outer(B @ s, B @ s) / (s @ B @ s) + np.outer(y, y) / (y @ s)   # Nocedal & Wright (6.19)
    assert np.allclose(bfgs_factor_update(np.linalg.inv(B), s, y), np.linalg.inv(B_new), atol=1e-10)
    H = np.linalg.inv(B)
    assert bfgs_factor_update(H, s, -y) is H    # sᵀy ≤ 0: no update


def test_lbfgs_two_loop_equals_dense_bfgs_with_enough_memory(rng):
    n, m = 5, 4
    S = rng.standard_normal((m, n))
    Y = S @ random_pd(rng, n)
    H = np.eye(n)
    for s, y in zip(S, Y):
        H = bfgs_factor_update(H, s, y)
    V = rng.standard_normal((3, n))
    assert np.allclose(lbfgs_apply(V, S, Y), V @ H, atol=1e-10)
    assert np.allclose(lbfgs_apply(V[0], S, Y), H @ V[0], atol=1e-10)


def test_first_step_in_closed_form():
    """Step 0: Â = this batch's A, H_a = (Â + √λI)⁻¹, H_g = I, M = (1 − ρ)∇L."""
    params, oracle = problem(seed=1)
    lam, rho, lr = 0.3, 0.9, 0.5
    opt = KBFGS(lr=lr, damping=lam, momentum=rho)
    new, state, info = opt.update(params, opt.init(params), oracle)
    stats = K.kfac_statistics(oracle, params, None)
    for l, (p, a, g) in enumerate(zip(params, stats.inputs, stats.grad)):
        A = K.input_factor(a)
        P = np.linalg.solve(A + math.sqrt(lam) * np.eye(len(A)), K.layer_matrix(g))
        assert np.allclose(K.layer_matrix(new[l]), K.layer_matrix(p) - lr * (1 - rho) * P, atol=1e-13)
        assert np.allclose(state.A[l], A, atol=1e-14)


@pytest.mark.parametrize("variant", ["bfgs", "lbfgs"])
def test_factors_stay_positive_definite_and_satisfy_their_secant_conditions(variant):
    params, oracle = problem(seed=2)
    opt = KBFGS(lr=0.5, damping=0.3, variant=variant, memory=50)
    state = opt.init(params)
    damped = 0
    for t in range(12):
        old_params, old = params, state
        params, state, info = opt.update(params, state, oracle)
        damped += info["damped_pairs"]
    # Re-derive the last step's pairs independently and check the secant conditions.
    before = K.kfac_statistics(oracle, old_params, None)
    after = K.kfac_statistics(oracle, params, None)
    gamma = math.sqrt(opt.damping)
    for l in range(len(params)):
        s = np.mean(K.augment(after.inputs[l]), 0) @ K.layer_matrix(params[l]) \
            - np.mean(K.augment(before.inputs[l]), 0) @ K.layer_matrix(old_params[l])
        y = after.output_grads[l].sum(0) - before.output_grads[l].sum(0)
        s = 0.9 * old.secant_s[l] + 0.1 * s
        y = 0.9 * old.secant_y[l] + 0.1 * y
        assert np.allclose(state.secant_s[l], s, atol=1e-14) and np.allclose(state.secant_y[l], y, atol=1e-14)
        if variant == "bfgs":
            s_t, y_t, _, _ = double_damping(s, y, old.H_g[l] @ y, 0.2, gamma)
            assert np.allclose(state.H_g[l] @ y_t, s_t, rtol=1e-8, atol=1e-12)
            assert np.linalg.eigvalsh(state.H_g[l]).min() > 0
        else:
            S, Y = state.memory[l]
            assert np.all(np.sum(S * Y, axis=1) > 0)
            Hg = lbfgs_apply(np.eye(S.shape[1]), S, Y)
            assert np.allclose(Hg @ Y[-1], S[-1], rtol=1e-8, atol=1e-12)
            assert np.linalg.eigvalsh(0.5 * (Hg + Hg.T)).min() > 0
        abar = np.mean(K.augment(before.inputs[l]), 0)
        s_a = old.H_a[l] @ abar
        y_a = (state.A[l] + gamma * np.eye(len(abar))) @ s_a
        assert np.allclose(state.H_a[l] @ y_a, s_a, rtol=1e-8, atol=1e-12)      # Hessian-action secant
        assert np.linalg.eigvalsh(state.H_a[l]).min() > 0
    assert damped > 0   # the run met pairs that needed damping


def test_lbfgs_variant_with_enough_memory_equals_bfgs_and_memory_is_bounded():
    params, oracle = problem(seed=3)
    runs = {}
    for variant, memory in (("bfgs", 100), ("lbfgs", 100), ("lbfgs_short", 2)):
        opt = KBFGS(variant=variant.split("_")[0], memory=memory)
        p, s = params, opt.init(params)
        for _ in range(8):
            p, s, _ = opt.update(p, s, oracle)
        runs[variant] = (p, s)
    assert np.allclose(T.ravel(runs["bfgs"][0]), T.ravel(runs["lbfgs"][0]), rtol=1e-9, atol=1e-12)
    assert all(S.shape[0] <= 2 for S, _ in runs["lbfgs_short"][1].memory)
    assert not np.allclose(T.ravel(runs["bfgs"][0]), T.ravel(runs["lbfgs_short"][0]), atol=1e-8)


def test_periodic_exact_inverse_of_A():
    params, oracle = problem(seed=4)
    opt = KBFGS(inverse_interval=3)
    state = opt.init(params)
    for _ in range(4):     # the 4th step (t = 3) re-inverts before its direction
        params, state, _ = opt.update(params, state, oracle)
    # After t = 3 H_a took one Hessian-action update on top of the exact inverse; that update keeps
    # (Â + √λI)⁻¹ fixed (its secant pair is already satisfied), so H_a is still the exact inverse.
    for A, H in zip(state.A, state.H_a):
        assert np.allclose(H, np.linalg.inv(A + math.sqrt(opt.damping) * np.eye(len(A))), atol=1e-10)


def test_batch_of_one_and_zero_inputs():
    for X in (np.random.default_rng(5).standard_normal((1, 4)), np.zeros((3, 4))):
        params, oracle = problem(seed=5, X=X)
        opt = KBFGS()
        state = opt.init(params)
        for _ in range(3):
            params, state, info = opt.update(params, state, oracle)
            assert not info["skipped"] and T.all_finite(params)
        assert all(np.linalg.eigvalsh(H).min() > 0 for H in state.H_g + state.H_a)


@pytest.mark.parametrize("mode", ["l2", "decoupled"])
def test_weight_decay_modes_in_the_first_step(mode):
    """"l2" (default, the authors' code): ω θ joins the gradient before momentum and preconditioning;
    "decoupled": θ ← θ − η P − η ω θ with P from the plain gradient."""
    params, oracle = problem(seed=8)
    lam, rho, lr, wd = 0.3, 0.9, 0.5, 0.2
    opt = KBFGS(lr=lr, damping=lam, momentum=rho, weight_decay=wd, weight_decay_mode=mode)
    new = opt.update(params, opt.init(params), oracle)[0]
    stats = K.kfac_statistics(oracle, params, None)
    for l, (p, a, g) in enumerate(zip(params, stats.inputs, stats.grad)):
        A = K.input_factor(a)
        Wbar, grad = K.layer_matrix(p), K.layer_matrix(g)
        if mode == "l2":
            grad = grad + wd * Wbar
        P = np.linalg.solve(A + math.sqrt(lam) * np.eye(len(A)), grad)
        expected = Wbar - lr * (1 - rho) * P - (lr * wd * Wbar if mode == "decoupled" else 0)
        np.testing.assert_allclose(K.layer_matrix(new[l]), expected, rtol=1e-12, atol=1e-13)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_non_finite_gradient_refuses_the_step():
    params, oracle = problem(seed=6)
    opt = KBFGS()
    state = opt.init(params)
    for _ in range(2):    # mid-run: A, H_a, H_g, secant pairs and momentum all set
        params, state, _ = opt.update(params, state, oracle)
    params = T.copy(params)
    params[0]["W"][0, 0] = np.nan
    before = pickle.dumps((params, state))
    new, new_state, info = opt.update(params, state, oracle)
    assert info["skipped"] and new is params and new_state is state and "non-finite" in info["message"]
    assert pickle.dumps((new, new_state)) == before


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_non_finite_second_pass_skips_the_curvature_updates():
    """A step so long that the loss at θ⁺ overflows: the step is taken (the gradient at θ was finite), A and
    the momentum are updated, but H_g and the secant pairs keep their values, and info says so. (H_a is
    the exact inverse after step 0, which its Hessian-action update would keep anyway.)"""
    _, params, oracle = mlp_problem((4, 5, 3), 8, 0, loss="gaussian")
    opt = KBFGS(lr=1e200)
    state = opt.init(params)
    new, new_state, info = opt.update(params, state, oracle)
    assert not info["skipped"] and "non-finite second pass" in info["message"]
    assert not np.isfinite(oracle.value(new))
    assert pickle.dumps((new_state.H_g, new_state.secant_s, new_state.secant_y)) == \
        pickle.dumps((state.H_g, state.secant_s, state.secant_y))
    assert new_state.step == 1 and new_state.factor_updates == 1


def test_kbfgs_trains():
    params, oracle = problem((4, 8, 3), batch=32, seed=7)
    opt = KBFGS(lr=1.0, damping=0.1, momentum=0.5, secant_decay=0.0)   # full batch: β = 0, as the authors
    state = opt.init(params)
    first = oracle.value(params)
    for _ in range(40):
        params, state, _ = opt.update(params, state, oracle)
    assert oracle.value(params) < 0.45 * first


@pytest.mark.parametrize("kwargs", [dict(damping=0.0), dict(damping=-0.3), dict(decay=1.0), dict(decay=-0.1),
                                    dict(momentum=1.0), dict(variant="kbfgs_l"), dict(memory=0),
                                    dict(secant_decay=1.0), dict(powell=1.5), dict(inverse_interval=0),
                                    dict(lr=0.0), dict(weight_decay_mode="adamw")])
def test_bad_hyperparameters_raise(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        KBFGS(**kwargs)
