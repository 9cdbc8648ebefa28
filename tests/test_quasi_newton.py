"""Quasi-Newton rules and optimizers: secant equations, symmetry, definiteness, dualities, quadratic termination."""
import copy
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from refopt import tree as T
from refopt.nn import MLP, SoftmaxCrossEntropy
from refopt.optim import optimizer_class
from refopt.optim.quasi_newton import (BFGS, DFP, SR1, ShermanMorrison, bfgs_inverse_update, bfgs_update,
                                       dfp_inverse_update, dfp_update, powell_damping, sr1_inverse_update, sr1_update)
from refopt.oracle import FunctionOracle, Oracle
from refopt.problems.datasets import synthetic_classification
from refopt.problems.functions import beale, dixon_price, quadratic, rosenbrock, wood

RULES = {("bfgs", "direct"): bfgs_update, ("bfgs", "inverse"): bfgs_inverse_update,
         ("dfp", "direct"): dfp_update, ("dfp", "inverse"): dfp_inverse_update,
         ("sr1", "direct"): lambda M, s, y: sr1_update(M, s, y)[0],
         ("sr1", "inverse"): lambda M, s, y: sr1_inverse_update(M, s, y)[0]}


def spd(rng, n, cond=10.0):
    Q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    M = (Q * np.geomspace(1.0, cond, n)) @ Q.T
    return 0.5 * (M + M.T)                      # exactly symmetric


def rel(a, b):
    return np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300)


def run(opt, problem, steps):
    """Iterates and states of ``opt`` on ``problem`` for ``steps`` updates."""
    o = problem.oracle()
    x, state = problem.x0, opt.init(problem.x0)
    xs, states = [x], [state]
    for _ in range(steps):
        x, state, info = opt.update(x, state, o)
        assert not info["skipped"]
        xs.append(x)
        states.append(state)
    return xs, states


# --- the update rules --------------------------------------------------------------------------
@pytest.mark.parametrize("rule,form", sorted(RULES))
@given(n=st.integers(2, 8), seed=st.integers(0, 10 ** 6), steps=st.integers(1, 6))
def test_secant_equation_and_exact_symmetry_after_every_update(rule, form, n, seed, steps):
    rng = np.random.default_rng(seed)
    M = spd(rng, n)
    for _ in range(steps):
        s = rng.standard_normal(n)
        y = spd(rng, n, 100.0) @ s              # sᵀy > 0, as after a Wolfe line search
        M = RULES[rule, form](M, s, y)
        lhs, rhs = (M @ s, y) if form == "direct" else (M @ y, s)
        assert rel(lhs, rhs) < 1e-8
        np.testing.assert_array_equal(M, M.T)   # written as sums of outer products: exactly symmetric


@pytest.mark.parametrize("rule,form", [("bfgs", "direct"), ("bfgs", "inverse"), ("dfp", "direct"), ("dfp", "inverse")])
@given(n=st.integers(2, 8), seed=st.integers(0, 10 ** 6), steps=st.integers(1, 8))
def test_positive_definiteness_is_inherited_when_sy_positive(rule, form, n, seed, steps):
    rng = np.random.default_rng(seed)
    M = spd(rng, n)
    for _ in range(steps):
        s, y = rng.standard_normal(n), rng.standard_normal(n)   # any pair ...
        if s @ y < 0:
            y = -y                                             # ... with sᵀy > 0
        M = RULES[rule, form](M, s, y)
        assert np.linalg.eigvalsh(M).min() > 0
    # and the hypothesis matters: a pair with sᵀy < 0 makes B indefinite
    s = rng.standard_normal(n)
    assert np.linalg.eigvalsh(bfgs_update(np.eye(n), s, -s)).min() < 0


@given(n=st.integers(2, 7), seed=st.integers(0, 10 ** 6), steps=st.integers(1, 10))
def test_direct_and_inverse_bfgs_stay_inverses_along_a_run_of_pairs(n, seed, steps):
    rng = np.random.default_rng(seed)
    H = spd(rng, n)
    B = np.linalg.inv(H)
    for _ in range(steps):
        s = rng.standard_normal(n)
        y = spd(rng, n, 30.0) @ s
        B, H = bfgs_update(B, s, y), bfgs_inverse_update(H, s, y)
        assert rel(np.linalg.inv(B), H) < 1e-8
        D, Hd = dfp_update(np.linalg.inv(H), s, y), dfp_inverse_update(H, s, y)   # and DFP's two forms
        assert rel(np.linalg.inv(D), Hd) < 1e-8


@given(n=st.integers(2, 7), seed=st.integers(0, 10 ** 6))
def test_sherman_morrison_is_the_inverse_of_sr1(n, seed):
    rng = np.random.default_rng(seed)
    B = spd(rng, n)
    s, y = rng.standard_normal(n), rng.standard_normal(n)     # SR1 needs no curvature condition
    B1, skipped_b = sr1_update(B, s, y)
    H1, skipped_h = sr1_inverse_update(np.linalg.inv(B), s, y)
    assert not skipped_b and not skipped_h
    assert rel(np.linalg.inv(B1), H1) < 1e-7


@given(n=st.integers(2, 7), seed=st.integers(0, 10 ** 6))
def test_dfp_is_bfgs_with_s_and_y_exchanged(n, seed):
    rng = np.random.default_rng(seed)
    M = spd(rng, n)
    s = rng.standard_normal(n)
    y = spd(rng, n) @ s
    # the dual pairs: DFP on H is the BFGS rule for B with (s, y) → (y, s), and vice versa
    assert rel(dfp_inverse_update(M, s, y), bfgs_update(M, y, s)) < 1e-12
    assert rel(dfp_update(M, s, y), bfgs_inverse_update(M, y, s)) < 1e-12
    assert rel(dfp_update(M, s, y), bfgs_update(M, s, y)) > 1e-6        # and they are different rules


def test_skip_rules_leave_the_matrix_bit_identical():
    rng = np.random.default_rng(0)
    B = spd(rng, 4)
    s = rng.standard_normal(4)
    u = rng.standard_normal(4)
    u -= (u @ s) / (s @ s) * s                   # (y − Bs) ⟂ s: the SR1 denominator vanishes
    B1, skipped = sr1_update(B, s, B @ s + u)
    assert skipped and B1 is B
    H = np.linalg.inv(B)
    y = rng.standard_normal(4)
    v = rng.standard_normal(4)
    v -= (v @ y) / (y @ y) * y                   # (s − Hy) ⟂ y
    H1, skipped = sr1_inverse_update(H, H @ y + v, y)
    assert skipped and H1 is H
    # just above the threshold r‖s‖‖u‖ the update happens
    B2, skipped = sr1_update(B, s, B @ s + u + 1e-6 * s / np.linalg.norm(s), r=1e-8)
    assert not skipped and not np.array_equal(B2, B)


def cosine_oracle():
    """f = Σ cos x: from x = 0.1 a unit step along −g lands where sᵀy < 0 (negative curvature)."""
    return FunctionOracle(lambda x: float(np.sum(np.cos(x))), grad=lambda x: -np.sin(x))


@pytest.mark.parametrize("cls,form", [(BFGS, "inverse"), (BFGS, "direct"), (DFP, "inverse")])
def test_optimizer_skips_negative_curvature_pairs_bit_identically(cls, form):
    opt = cls(form=form, line_search="none")
    x = np.array([0.1, 0.2])
    state = opt.init(x)
    x1, state1, info = opt.update(x, state, cosine_oracle())
    assert info["accepted"] and info["pair_skipped"] and info["sy"] < 0
    assert state1.matrix is state.matrix and state1.updates == 0
    assert not np.array_equal(x1, x)


@given(n=st.integers(2, 6), log_cond=st.floats(0.5, 3), seed=st.integers(0, 1000),
       rule=st.sampled_from(["bfgs", "dfp"]), form=st.sampled_from(["direct", "inverse"]))
def test_quadratic_termination_with_exact_line_search(n, log_cond, seed, rule, form):
    """N&W Theorem 6.? (quadratic termination): n exact-line-search steps reach x* with H_n = A⁻¹."""
    p = quadratic(n, 10.0 ** log_cond, seed)
    A = p.params["A"]
    x = np.asarray(p.x0)
    M = np.eye(n)
    for _ in range(n):
        g = p.grad(x)
        d = -(M @ g) if form == "inverse" else -np.linalg.solve(M, g)
        alpha = -(g @ d) / (d @ A @ d)              # the exact minimiser along d
        x_new = x + alpha * d
        M = RULES[rule, form](M, x_new - x, p.grad(x_new) - g)
        x = x_new
    scale = np.linalg.norm(p.x_star) + 1
    assert np.linalg.norm(x - p.x_star) / scale < 1e-7
    target = A if form == "direct" else np.linalg.inv(A)
    assert rel(M, target) < 1e-6


@given(n=st.integers(2, 7), seed=st.integers(0, 10 ** 6), form=st.sampled_from(["direct", "inverse"]))
def test_sr1_recovers_the_hessian_from_n_independent_steps(n, seed, form):
    """N&W Theorem 6.1: for y = A s with n linearly independent steps, SR1 gives B_n = A (A may be indefinite)."""
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((n, n))
    A = A + A.T + n * np.diag(rng.choice([-1.0, 1.0], n))
    M = np.eye(n)
    for _ in range(n):
        s = rng.standard_normal(n)
        M, skipped = (sr1_update if form == "direct" else sr1_inverse_update)(M, s, A @ s)
        assert not skipped
    assert rel(M, A if form == "direct" else np.linalg.inv(A)) < 1e-6


@given(n=st.integers(2, 6), seed=st.integers(0, 10 ** 6))
def test_powell_damping(n, seed):
    rng = np.random.default_rng(seed)
    B = spd(rng, n)
    s = rng.standard_normal(n)
    y = -0.3 * (B @ s) + 0.1 * rng.standard_normal(n)      # poor curvature: sᵀy < 0.2 sᵀBs
    r, theta = powell_damping(s, y, B @ s)
    sBs = s @ B @ s
    assert 0 <= theta < 1 and s @ r == pytest.approx(0.2 * sBs, rel=1e-10)   # N&W (18.16)
    B1 = bfgs_update(B, s, r)
    assert rel(B1 @ s, r) < 1e-10 and np.linalg.eigvalsh(B1).min() > 0
    y_good = B @ s                                         # sᵀy = sᵀBs ≥ 0.2 sᵀBs: y is kept as it is
    r_good, theta_good = powell_damping(s, y_good, B @ s)
    assert r_good is y_good and theta_good == 1.0


# --- the optimizers ------------------------------------------------------------------------------
# (not extended Rosenbrock from its x0: its identical blocks make a symmetric run that rounding destabilises)
@pytest.mark.parametrize("make", [rosenbrock, wood, lambda: dixon_price(6)])
@given(scaling=st.sampled_from(["none", "once", "every"]), damping=st.sampled_from([None, "powell"]),
       rule=st.sampled_from([BFGS, DFP]))
def test_direct_and_inverse_forms_give_the_same_run(make, scaling, damping, rule):
    if rule is DFP and damping:
        return
    p = make()
    steps = 12
    xs_d, st_d = run(rule(form="direct", initial_scaling=scaling, damping=damping), p, steps)
    xs_i, st_i = run(rule(form="inverse", initial_scaling=scaling, damping=damping), p, steps)
    for k in range(steps + 1):
        assert rel(xs_d[k], xs_i[k]) < 1e-7
        assert rel(np.linalg.inv(st_d[k].matrix), st_i[k].matrix) < 1e-6


def test_sr1_and_sherman_morrison_give_the_same_run():
    p = beale()
    xs_d, st_d = run(SR1(), p, 10)
    xs_i, st_i = run(ShermanMorrison(), p, 10)
    assert st_i[-1].updates >= 8
    for k in range(11):
        assert rel(xs_d[k], xs_i[k]) < 1e-7
        assert rel(np.linalg.inv(st_d[k].matrix), st_i[k].matrix) < 1e-6


def test_scaling_once_is_nocedal_wright_6_20():
    p = rosenbrock()
    o = p.oracle()
    opt = BFGS(initial_scaling="once")
    x0 = p.x0
    x1, state, info = opt.update(x0, opt.init(x0), o)
    s, y = x1 - x0, p.grad(x1) - p.grad(x0)
    gamma = (s @ y) / (y @ y)
    np.testing.assert_allclose(state.matrix, bfgs_inverse_update(gamma * np.eye(2), s, y), rtol=1e-12)
    assert info["scale"] == pytest.approx(gamma, rel=1e-14) and state.scaled


@pytest.mark.parametrize("scaling", ["once", "every"])
def test_scaling_every_rescales_before_each_update(scaling):
    """"every": H_k ← γ_k H_k, γ_k = sᵀy / yᵀH_k y, before every update (Oren & Luenberger); "once" only
    before the first (N&W 6.20)."""
    p = rosenbrock()
    xs, states = run(BFGS(initial_scaling=scaling), p, 3)
    H = np.eye(2)
    for k in range(3):
        s, y = xs[k + 1] - xs[k], p.grad(xs[k + 1]) - p.grad(xs[k])
        if k == 0 or scaling == "every":
            H = (s @ y) / (y @ H @ y) * H
        H = bfgs_inverse_update(H, s, y)
        np.testing.assert_allclose(states[k + 1].matrix, H, rtol=1e-10)
    assert states[3].updates == 3


def test_sr1_reset_to_steepest_descent_is_reported():
    p = beale()
    o = p.oracle()
    opt = SR1()
    x, state = p.x0, opt.init(p.x0)
    resets = []
    for _ in range(15):
        g = p.grad(x)
        x_new, state_new, info = opt.update(x, state, o)
        if info["reset"]:
            assert "steepest descent" in info["message"]
            # the step taken is along −g
            np.testing.assert_allclose((x_new - x) / info["alpha"], -g, rtol=1e-12)
            d = -np.linalg.solve(state.matrix, g)
            assert g @ d >= 0                      # the SR1 direction really did not descend
            resets.append(info)
        x, state = x_new, state_new
    assert resets


def test_non_finite_trial_points_are_backtracked_and_never_stored():
    def f(x):
        return math.nan if x[0] > 0.5 else float((x[0] - 2.0) ** 2 + x[1] ** 2)

    def grad(x):
        return np.array([math.nan if x[0] > 0.5 else 2 * (x[0] - 2.0), 2 * x[1]])

    for cls in (BFGS, SR1, DFP):
        opt = cls()
        o = FunctionOracle(f, grad=grad)
        x, state = np.array([0.0, 1.0]), opt.init(np.array([0.0, 1.0]))
        for _ in range(4):
            x, state, info = opt.update(x, state, o)
            assert np.all(np.isfinite(x)) and np.all(np.isfinite(state.matrix)) and math.isfinite(state.point.loss)
        assert x[0] <= 0.5 and f(x) < f(np.array([0.0, 1.0]))


def assert_same(a, b):
    """Equal states, field by field (arrays bit for bit, NaN equal to NaN)."""
    if isinstance(a, tuple):
        assert type(a) is type(b) and len(a) == len(b)
        for u, v in zip(a, b):
            assert_same(u, v)
    elif isinstance(a, np.ndarray):
        np.testing.assert_array_equal(a, b)
    elif isinstance(a, float) and math.isnan(a):
        assert isinstance(b, float) and math.isnan(b)
    else:
        assert a == b


def run_a_while(name):
    """(optimizer, params, state) after three steps on Rosenbrock: a state with history in it."""
    opt = optimizer_class(name)()
    p = rosenbrock()
    x, state = p.x0, opt.init(p.x0)
    for _ in range(3):
        x, state, _ = opt.update(x, state, p.oracle())
    return opt, x, state


@pytest.mark.parametrize("name", ["bfgs", "dfp", "sr1", "sherman_morrison", "lbfgs", "newton", "newton_cg",
                                  "trust_ncg"])
def test_a_refused_step_leaves_params_and_state_unchanged(name):
    opt, x, state = run_a_while(name)
    before = copy.deepcopy(state)
    bad = np.array([np.nan, 1.0])
    x1, state1, info = opt.update(bad, state, rosenbrock().oracle())
    assert info["skipped"] and "non-finite" in info["message"]
    assert x1 is bad
    assert_same(state1, before)
    assert_same(state, before)                   # nor was the incoming state modified in place


@pytest.mark.parametrize("name", ["bfgs", "dfp", "sr1", "sherman_morrison", "lbfgs"])
def test_a_failed_line_search_takes_no_step_and_changes_only_the_step_count(name):
    """A lying gradient (−∇f of f = ½‖x‖²) makes every direction truly uphill: the search fails."""
    opt, x, state = run_a_while(name)
    before = copy.deepcopy(state)
    liar = FunctionOracle(lambda z: float(0.5 * z @ z), grad=lambda z: -z)
    x1, state1, info = opt.update(x, state, liar)
    assert not info["accepted"] and info["line_search"] != "converged" and "line search failed" in info["message"]
    np.testing.assert_array_equal(x1, x)
    assert state1.step == before.step + 1
    assert_same(state1._replace(step=before.step), before)
    assert_same(state, before)


def test_invalid_hyperparameters_raise_at_construction():
    with pytest.raises(ValueError, match="c1 < c2"):
        BFGS(c1=0.9, c2=0.1)
    with pytest.raises(ValueError, match="c1 < c2"):
        DFP(c1=0.5, c2=0.5)
    with pytest.raises(ValueError, match="positive definite"):
        BFGS(initial_matrix=np.diag([1.0, -1.0]))
    with pytest.raises(ValueError, match="positive definite"):
        SR1(initial_matrix=np.zeros((2, 2)))
    with pytest.raises(ValueError, match="symmetric"):
        BFGS(initial_matrix=np.array([[2.0, 1.0], [0.0, 2.0]]))
    with pytest.raises(ValueError, match="square"):
        BFGS(initial_matrix=np.ones(3))
    with pytest.raises(ValueError, match="initial_scaling"):
        SR1(initial_scaling="once")
    with pytest.raises(ValueError, match="initial_scaling"):
        BFGS(initial_scaling="sometimes")
    with pytest.raises(ValueError, match="form"):
        BFGS(form="compact")
    with pytest.raises(ValueError, match="curvature_skip"):
        BFGS(curvature_skip=-1.0)
    with pytest.raises(ValueError, match="damping"):
        DFP(damping="powell")
    with pytest.raises(ValueError, match="line_search"):
        BFGS(line_search="exact")
    with pytest.raises(ValueError, match="max_evals"):
        BFGS(max_evals=0)
    with pytest.raises(ValueError, match="initial_matrix has shape"):
        BFGS(initial_matrix=np.eye(3)).init(np.zeros(2))


@pytest.mark.parametrize("name", ["bfgs", "dfp", "sr1", "sherman_morrison"])
def test_dense_methods_refuse_large_models_naming_the_alternative(name):
    opt = optimizer_class(name)(max_size=10)
    with pytest.raises(ValueError, match="lbfgs"):
        opt.init(np.zeros(11))
    opt.init(np.zeros(10))


def test_network_minibatch_pairs_come_from_one_batch():
    """oBFGS: y = ∇L_B(θ⁺) − ∇L_B(θ) on the batch of the step; the next batch is evaluated afresh."""
    data = synthetic_classification(n=40, d=3, classes=3, seed=1)
    model = MLP([3, 4, 3])
    params = model.init(0)
    full = Oracle(model, SoftmaxCrossEntropy(), data.X, data.y)
    b1, b2 = full.with_batch(data.X[:20], data.y[:20]), full.with_batch(data.X[20:], data.y[20:])
    opt = BFGS()
    state = opt.init(params)
    p1, state1, info1 = opt.update(params, state, b1)
    s = T.ravel(p1) - T.ravel(params)
    y = T.ravel(b1.grad(p1)) - T.ravel(b1.grad(params))
    np.testing.assert_allclose(state1.matrix, bfgs_inverse_update(np.eye(T.size(params)), s, y), rtol=1e-10, atol=1e-12)
    assert isinstance(p1, list) and set(p1[0]) == {"W", "b"}
    before = full.counts.nfev
    p2, state2, info2 = opt.update(p1, state1, b2)        # a new batch: one fresh evaluation + the search
    assert full.counts.nfev - before == 1 + info2["nfev"]
    assert info2["loss"] == pytest.approx(b2.value(p1), rel=1e-12)
    # The cached point (state2.point, on b2) is reused on any oracle with b2's batch token, the digest of b2's
    # data: a new oracle on a copy of the same data reuses it, one on other data evaluates afresh.
    before = full.counts.nfev
    _, _, info3 = opt.update(p2, state2, full.with_batch(data.X[20:].copy(), data.y[20:].copy()))
    assert full.counts.nfev - before == info3["nfev"]
    before = full.counts.nfev
    _, _, info3 = opt.update(p2, state2, full.with_batch(data.X[19:39], data.y[19:39]))
    assert full.counts.nfev - before == 1 + info3["nfev"]
    before = full.counts.nfev
    p3, state3, info3 = opt.update(p2, state2, b2)
    assert full.counts.nfev - before == info3["nfev"]     # the accepted trial's value and gradient are reused
    assert state2.point.batch == b2.batch_token != b1.batch_token
    # Oracles their maker names alike share the cached point, whatever objects they are.
    named = [Oracle(model, SoftmaxCrossEntropy(), data.X[20:], data.y[20:], counts=full.counts,
                    batch_token="second half") for _ in range(2)]
    _, state4, _ = opt.update(p3, state3, named[0])
    before = full.counts.nfev
    _, _, info5 = opt.update(state4.point.params, state4, named[1])
    assert full.counts.nfev - before == info5["nfev"]


@pytest.mark.parametrize("name, problem, batch_size", [
    ("lbfgs", "rosenbrock", None), ("bfgs", "rosenbrock", None), ("sr1", "beale", None), ("newton", "rosenbrock", None),
    ("newton_cg", "rosenbrock", None), ("trust_ncg", "rosenbrock", None), ("lbfgs", "logistic", None),
    ("gauss_newton", "logistic", None), ("lbfgs", "synthetic_mlp", 32)])
def test_resumed_run_counts_the_same_evaluations_as_an_uninterrupted_one(tmp_path, name, problem, batch_size):
    """The cached point lives in the state and the problem's oracles share a batch token, so the first update
    after a resume reuses the checkpoint's point as the uninterrupted run reused it in memory (with the cache
    keyed by oracle object, a resumed run counted one more evaluation; mini-batches are evaluated afresh in both)."""
    from refopt.runner import RunConfig, run
    cfg = RunConfig(name, {}, problem, steps=8, batch_size=batch_size, seed=2)
    straight = run(cfg)
    ckpt = str(tmp_path / "c.npz")
    run(RunConfig(name, {}, problem, steps=4, batch_size=batch_size, seed=2), checkpoint_path=ckpt, checkpoint_every=4)
    resumed = run(cfg, resume=ckpt)
    assert len(straight.history) == len(resumed.history) == 8
    assert all(bool(np.array_equal(a, b)) for a, b in zip(T.leaves(straight.params), T.leaves(resumed.params)))
    for a, b in zip(straight.history, resumed.history):
        assert (a["nfev"], a["ngev"]) == (b["nfev"], b["ngev"]), a["step"]
    if batch_size is None:
        assert straight.state.point is not None and straight.state.point.batch == resumed.state.point.batch
