"""L-BFGS: the two-loop recursion is the BFGS matrix, enough memory reproduces dense BFGS, pairs and skips."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from refopt import tree as T
from refopt.nn import MLP, Gaussian
from refopt.optim.lbfgs import LBFGS, two_loop
from refopt.optim.quasi_newton import BFGS, bfgs_inverse_update
from refopt.oracle import FunctionOracle, Oracle
from refopt.problems.datasets import synthetic_regression
from refopt.problems.functions import beale, dixon_price, rosenbrock, wood


def dense_bfgs(H0, pairs):
    H = H0
    for s, y in pairs:
        H = bfgs_inverse_update(H, s, y)
    return H


def rel(a, b):
    return np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300)


@given(n=st.integers(1, 8), m=st.integers(0, 6), seed=st.integers(0, 10 ** 6), log_gamma=st.floats(-2, 2),
       diagonal=st.booleans())
def test_two_loop_is_the_bfgs_matrix_times_the_vector(n, m, seed, log_gamma, diagonal):
    rng = np.random.default_rng(seed)
    pairs = []
    for _ in range(m):
        s = rng.standard_normal(n)
        A = rng.standard_normal((n, n))
        pairs.append((s, (A @ A.T + np.eye(n)) @ s))
    D = rng.uniform(0.5, 2.0, n) if diagonal else None
    gamma = 10.0 ** log_gamma
    g = rng.standard_normal(n)
    S, Y = tuple(p[0] for p in pairs), tuple(p[1] for p in pairs)
    R = tuple(1.0 / (s @ y) for s, y in pairs)
    H0 = gamma * (np.diag(D) if diagonal else np.eye(n))
    assert rel(two_loop(g, S, Y, R, gamma, D), dense_bfgs(H0, pairs) @ g) < 1e-9


@pytest.mark.parametrize("make", [rosenbrock, wood, lambda: dixon_price(5)])
@pytest.mark.parametrize("scaling", ["none", "once"])
@pytest.mark.parametrize("diagonal", [False, True])
@pytest.mark.parametrize("initial_step", ["unit", "interpolate"])
def test_enough_memory_reproduces_dense_bfgs(make, scaling, diagonal, initial_step):
    p = make()
    D = np.linspace(0.5, 1.5, p.n) if diagonal else None
    lb = LBFGS(memory=50, initial_scaling=scaling, initial_matrix=D, initial_step=initial_step)
    bf = BFGS(initial_scaling=scaling, initial_matrix=None if D is None else np.diag(D), initial_step=initial_step)
    o1, o2 = p.oracle(), p.oracle()
    x1 = x2 = p.x0
    s1, s2 = lb.init(x1), bf.init(x2)
    for k in range(14):
        x1, s1, i1 = lb.update(x1, s1, o1)
        x2, s2, i2 = bf.update(x2, s2, o2)
        assert rel(x1, x2) < 1e-8, k
        assert i1["nfev"] == i2["nfev"]
    v = np.random.default_rng(0).standard_normal(p.n)
    assert rel(lb.inverse_hessian_product(s1, v), s2.matrix @ v) < 1e-7
    assert (o1.counts.nfev, o1.counts.ngev) == (o2.counts.nfev, o2.counts.ngev)


@given(memory=st.integers(1, 4), steps=st.integers(1, 9))
def test_limited_memory_keeps_the_newest_pairs_with_scaling_every_step(memory, steps):
    """H_k = BFGS of γ_k I with the last m pairs, γ_k = sᵀy / yᵀy of the newest (N&W Alg. 7.4, eq. 7.20)."""
    p = dixon_price(6)
    opt = LBFGS(memory=memory)
    o = p.oracle()
    x, state = p.x0, opt.init(p.x0)
    pairs = []
    for _ in range(steps):
        x_new, state, info = opt.update(x, state, o)
        assert not info["pair_skipped"]
        pairs.append((x_new - x, p.grad(x_new) - p.grad(x)))
        x = x_new
    kept = pairs[-memory:]
    assert len(state.s) == len(kept)
    for (s, y), s_k, y_k in zip(kept, state.s, state.y):
        assert rel(s_k, s) < 1e-10 and rel(y_k, y) < 1e-8
    s, y = pairs[-1]
    H = dense_bfgs((s @ y) / (y @ y) * np.eye(p.n), kept)
    v = p.grad(x)
    assert rel(opt.inverse_hessian_product(state, v), H @ v) < 1e-8


def test_curvature_skip_leaves_the_history_bit_identical():
    o = FunctionOracle(lambda x: float(np.sum(np.cos(x))), grad=lambda x: -np.sin(x))
    opt = LBFGS(line_search="none")
    x = np.array([0.1, 0.2])
    state = opt.init(x)
    x1, state1, info = opt.update(x, state, o)        # a unit-length step into negative curvature: sᵀy < 0
    assert info["pair_skipped"] and info["sy"] < 0 and info["accepted"]
    assert state1.s == () and state1.y == () and state1.rho == ()
    # with a stored pair, a skip keeps the very same tuples
    p = rosenbrock()
    o2 = p.oracle()
    opt2 = LBFGS(curvature_skip=1e300)                 # skip everything after seeding the history
    seeded = LBFGS().update(p.x0, LBFGS().init(p.x0), o2)[1]
    x2, state2, info2 = opt2.update(seeded.point.params, seeded, o2)
    assert info2["pair_skipped"] and state2.s is seeded.s and state2.y is seeded.y and state2.rho is seeded.rho


def test_powell_damping_keeps_pairs_with_poor_curvature():
    o = FunctionOracle(lambda x: float(np.sum(np.cos(x))), grad=lambda x: -np.sin(x))
    opt = LBFGS(line_search="none", damping="powell")
    x = np.array([0.1, 0.2])
    x1, state, info = opt.update(x, opt.init(x), o)
    s, y_raw = x1 - x, -np.sin(x1) + np.sin(x)
    Bs = -info["alpha"] * (-np.sin(x))            # B s = −α g for p = −H g, H = I
    assert not info["pair_skipped"] and 0 <= info["theta"] < 1
    assert state.s[0] @ state.y[0] == pytest.approx(0.2 * (s @ Bs), rel=1e-10)
    assert s @ y_raw < 0


def test_full_batch_evaluates_each_point_once():
    p = beale()
    o = p.oracle()
    opt = LBFGS()
    x, state = p.x0, opt.init(p.x0)
    searched = 0
    for _ in range(10):
        x, state, info = opt.update(x, state, o)
        searched += info["nfev"]
    assert o.counts.nfev == searched + 1 == o.counts.ngev


def test_network_minibatch_pairs_use_one_batch():
    data = synthetic_regression(n=30, d=3, outputs=2, seed=2)
    model = MLP([3, 5, 2])
    params = model.init(1)
    full = Oracle(model, Gaussian(), data.X, data.y)
    batches = [full.with_batch(data.X[i:i + 10], data.y[i:i + 10]) for i in (0, 10, 20)]
    opt = LBFGS(memory=3)
    state = opt.init(params)
    for b in batches * 2:
        new, state, info = opt.update(params, state, b)
        assert info["accepted"] and not info["skipped"]
        y = T.ravel(b.grad(new)) - T.ravel(b.grad(params))
        if not info["pair_skipped"]:
            np.testing.assert_allclose(state.y[-1], y, rtol=1e-9, atol=1e-12)
            np.testing.assert_allclose(state.s[-1], T.ravel(new) - T.ravel(params), rtol=1e-12)
        params = new
    assert len(state.s) == 3
    assert full.value(params) < full.value(model.init(1))


def test_invalid_hyperparameters_raise_at_construction():
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="memory"):
            LBFGS(memory=bad)
    with pytest.raises(ValueError, match="c1 < c2"):
        LBFGS(c1=0.9, c2=0.5)
    with pytest.raises(ValueError, match="initial_matrix"):
        LBFGS(initial_matrix=-1.0)
    with pytest.raises(ValueError, match="initial_matrix"):
        LBFGS(initial_matrix=np.array([1.0, 0.0]))
    with pytest.raises(ValueError, match="initial_matrix"):
        LBFGS(initial_matrix=np.eye(2))
    with pytest.raises(ValueError, match="initial_scaling"):
        LBFGS(initial_scaling="twice")
    with pytest.raises(ValueError, match="curvature_skip"):
        LBFGS(curvature_skip=-1e-3)
    with pytest.raises(ValueError, match="initial_step"):
        LBFGS(initial_step="big")
    for bad in (0.0, -0.5, float("nan"), True):
        with pytest.raises(ValueError, match="lr"):
            LBFGS(lr=bad)
    with pytest.raises(ValueError, match="first_step"):
        LBFGS(first_step="l1")
    with pytest.raises(ValueError, match="curvature_skip_rule"):
        LBFGS(curvature_skip_rule="sometimes")
    with pytest.raises(ValueError, match="descent_check"):
        LBFGS(descent_check=None)
    assert LBFGS(line_search="minfunc").line_search == "minfunc"      # torch's search: L-BFGS only
    with pytest.raises(ValueError, match="line_search"):
        BFGS(line_search="minfunc")
    with pytest.raises(ValueError, match="initial_matrix has shape"):
        LBFGS(initial_matrix=np.ones(3)).init(np.zeros(2))


# --- the library conventions: first step, lr, skip rules, descent check (closed forms of two steps) -----------
def quadratic(A, b):
    return FunctionOracle(lambda x: float(0.5 * x @ A @ x - b @ x), grad=lambda x: A @ x - b)


def test_switches_are_declared_with_the_defaults():
    from _helpers import assert_switches_declared_with_defaults  # noqa: PLC0415
    assert_switches_declared_with_defaults(LBFGS)


@pytest.mark.parametrize("first_step", ["unit_length", "gradient_l1", "interpolate"])
@pytest.mark.parametrize("lr", [1.0, 0.3])
def test_first_step_and_lr_two_steps_in_closed_form(first_step, lr):
    """x₁ = x₀ − η α₀ g₀ with α₀ = min(1, 1/‖g₀‖₂), min(1, 1/‖g₀‖₁) or min(1, 1.01/‖g₀‖₂); then
    x₂ = x₁ − η H₁ g₁, H₁ the BFGS update of (sᵀy/yᵀy) I with the pair (s, y = A s)."""
    rng = np.random.default_rng(4)
    M = rng.standard_normal((4, 4))
    A, b, x0 = M @ M.T + np.eye(4), rng.standard_normal(4), rng.standard_normal(4)
    g0 = A @ x0 - b
    assert np.abs(g0).sum() > 1.01 * np.linalg.norm(g0) > 1.01   # the three rules give three different α₀
    opt = LBFGS(line_search="none", first_step=first_step, lr=lr)
    o = quadratic(A, b)
    x1, state, info = opt.update(x0, opt.init(x0), o)
    alpha0 = {"unit_length": 1 / np.linalg.norm(g0), "gradient_l1": 1 / np.abs(g0).sum(),
              "interpolate": 1.01 / np.linalg.norm(g0)}[first_step]
    np.testing.assert_allclose(x1, x0 - lr * alpha0 * g0, rtol=1e-14, atol=1e-15)
    s, g1 = x1 - x0, A @ x1 - b
    y = g1 - g0
    H1 = dense_bfgs((s @ y) / (y @ y) * np.eye(4), [(s, y)])
    x2, _, info = opt.update(x1, state, o)
    np.testing.assert_allclose(x2, x1 - lr * H1 @ g1, rtol=1e-12, atol=1e-14)
    assert info["alpha"] == lr


def test_bfgs_first_step_interpolate_is_scipys_first_trial():
    """Dense BFGS from H₀ = I: α₀ = min(1, 1.01/‖g₀‖) (scipy: old_old_fval = f + ‖g‖/2), then N&W 3.60."""
    rng = np.random.default_rng(5)
    M = rng.standard_normal((3, 3))
    A, b, x0 = M @ M.T + np.eye(3), rng.standard_normal(3), 2 * rng.standard_normal(3)
    f = lambda x: float(0.5 * x @ A @ x - b @ x)  # noqa: E731
    g0 = A @ x0 - b
    assert np.linalg.norm(g0) > 1.01
    opt = BFGS(line_search="none", first_step="interpolate")
    o = quadratic(A, b)
    x1, state, _ = opt.update(x0, opt.init(x0), o)
    np.testing.assert_allclose(x1, x0 - 1.01 / np.linalg.norm(g0) * g0, rtol=1e-14)
    s, g1 = x1 - x0, A @ x1 - b
    p1 = -bfgs_inverse_update(np.eye(3), s, g1 - g0) @ g1
    alpha1 = min(1.0, 1.01 * 2 * (f(x1) - f(x0)) / (g1 @ p1))
    x2, _, info = opt.update(x1, state, o)
    assert info["alpha"] == pytest.approx(alpha1, rel=1e-12)
    np.testing.assert_allclose(x2, x1 + alpha1 * p1, rtol=1e-12)
    with pytest.raises(ValueError, match="first_step"):
        BFGS(first_step="scipy")


def test_absolute_skip_rule_against_the_relative_one():
    """After one step s, y = A s: with ε = 2 sᵀy the absolute rule (sᵀy ≤ ε) skips the pair while the
    relative one (sᵀy ≤ ε yᵀy, here yᵀy < ½) keeps it; the skipped run's second step is −η g₁ (γ = 1)."""
    A, b, x0 = np.diag([0.1, 0.2, 0.3]), np.zeros(3), np.array([1.0, -2.0, 0.5])
    o = quadratic(A, b)
    g0 = A @ x0
    s = -min(1.0, 1.0 / np.abs(g0).sum()) * g0
    y = A @ s
    eps = 2 * (s @ y)
    assert y @ y < 0.5
    runs = {}
    for rule in ("absolute", "relative"):
        opt = LBFGS(line_search="none", first_step="gradient_l1", curvature_skip=eps, curvature_skip_rule=rule)
        x1, state, info = opt.update(x0, opt.init(x0), o)
        np.testing.assert_allclose(x1, x0 + s, rtol=1e-14)
        assert info["pair_skipped"] == (rule == "absolute") and len(state.s) == (rule == "relative")
        runs[rule] = opt.update(x1, state, o)[0]
    x1, g1 = x0 + s, A @ (x0 + s)
    np.testing.assert_allclose(runs["absolute"], x1 - g1, rtol=1e-14)
    H1 = dense_bfgs((s @ y) / (y @ y) * np.eye(3), [(s, y)])
    np.testing.assert_allclose(runs["relative"], x1 - H1 @ g1, rtol=1e-12)


@pytest.mark.parametrize("descent_check", ["reset", "none"])
def test_never_skip_keeps_a_negative_curvature_pair(descent_check):
    """f = −½‖x‖²: s = −α g₀, y = −s, sᵀy < 0. 'never' stores it (ρ = 1/sᵀy, γ = sᵀy/yᵀy = −1); the
    direction −H₁g₁ then ascends: 'reset' replaces it by −g₁, 'none' takes it (optax)."""
    o = FunctionOracle(lambda x: float(-0.5 * x @ x), grad=lambda x: -x)
    x0 = np.array([0.3, -0.4])
    opt = LBFGS(line_search="none", curvature_skip_rule="never", descent_check=descent_check)
    x1, state, info = opt.update(x0, opt.init(x0), o)
    s, y = x1 - x0, -(x1 - x0)
    np.testing.assert_allclose(x1, 2 * x0, rtol=1e-14)            # α₀ = min(1, 1/‖g₀‖) = 1
    assert not info["pair_skipped"] and state.rho[0] == pytest.approx(1 / (s @ y), rel=1e-14)
    assert state.gamma == pytest.approx(-1.0, rel=1e-14)
    g1 = -x1
    p = -dense_bfgs(-np.eye(2), [(s, y)]) @ g1
    assert g1 @ p > 0
    x2, _, info = opt.update(x1, state, o)
    np.testing.assert_allclose(x2, x1 + (-g1 if descent_check == "reset" else p), rtol=1e-12)
    assert info["reset"] == (descent_check == "reset")
    skipped = LBFGS(line_search="none", curvature_skip=0.0).update(x0, opt.init(x0), o)[1]
    assert skipped.s == ()                                  # the default rule skips it


def test_a_search_at_the_rounding_floor_is_reported_as_precision():
    """f's whole available decrease is below one ulp (a fixed ±ulp pattern, exact gradient): the default
    search steps by the approximate Wolfe conditions; without them, or with torch's search, the step
    reports "precision", takes no step and leaves the pairs as they were."""
    from _helpers import rounding_floor_oracle  # noqa: PLC0415
    from refopt.linesearch import rounding_error  # noqa: PLC0415
    oracle, x0 = rounding_floor_oracle()
    f0 = oracle.value(x0)
    opt = LBFGS()
    x1, s1, info = opt.update(x0, opt.init(x0), oracle)
    assert info["accepted"] and info["line_search"] == "converged" and len(s1.s) == 1
    assert oracle.value(x1) <= f0 + rounding_error(f0) and np.abs(x1).max() < np.abs(x0).max()
    for kwargs in ({"approximate_wolfe": False}, {"line_search": "minfunc"}):
        opt = LBFGS(**kwargs)
        state = opt.init(x0)
        x, s, info = opt.update(x0, state, oracle)
        assert info["line_search"] == "precision" and "rounding level" in info["message"], kwargs
        assert not info["accepted"] and np.array_equal(x, x0) and s.s == () and s.step == 1
    with pytest.raises(ValueError, match="approximate_wolfe"):
        LBFGS(approximate_wolfe="no")
