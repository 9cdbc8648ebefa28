"""Newton, Gauss-Newton / Levenberg–Marquardt, Newton-CG (Hessian-free) and trust-region Newton-CG."""
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from refopt import tree as T
from refopt.nn import MLP, Gaussian, SoftmaxCrossEntropy
from refopt.optim.newton import GaussNewton, Newton, NotPositiveDefiniteError
from refopt.optim.newton_cg import NewtonCG, TrustRegionNewtonCG, steihaug_cg, truncated_cg
from refopt.oracle import FunctionOracle, Oracle
from refopt.problems.datasets import synthetic_classification, synthetic_regression
from refopt.problems.functions import beale, dixon_price, quadratic, rosenbrock, wood


def rel(a, b):
    return np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300)


def one_step(opt, x, oracle):
    return opt.update(x, opt.init(x), oracle)


def small_network(kind="regression", seed=0):
    if kind == "regression":
        data = synthetic_regression(n=24, d=3, outputs=2, seed=seed)
        model, loss = MLP([3, 3, 2]), Gaussian()
    else:
        data = synthetic_classification(n=24, d=3, classes=3, seed=seed)
        model, loss = MLP([3, 3, 3]), SoftmaxCrossEntropy()
    return model, Oracle(model, loss, data.X, data.y), model.init(seed)


# --- Newton ------------------------------------------------------------------------------------
@given(n=st.integers(1, 8), log_cond=st.floats(0, 6), seed=st.integers(0, 1000),
       modification=st.sampled_from(["levenberg_marquardt", "eigenvalue", "eigenvalue_abs", "error"]),
       line_search=st.sampled_from(["none", "armijo", "strong_wolfe"]))
def test_newton_solves_a_quadratic_in_one_step(n, log_cond, seed, modification, line_search):
    p = quadratic(n, 10.0 ** log_cond, seed)
    x1, state, info = one_step(Newton(modification=modification, line_search=line_search), p.x0, p.oracle())
    assert rel(x1, p.x_star) < 1e-9 * 10.0 ** log_cond
    assert info["alpha"] == 1.0 and info["accepted"]


@pytest.mark.parametrize("make,start", [(rosenbrock, [0.9, 0.8]), (beale, [2.8, 0.45]), (wood, [1.1, 1.2, 0.9, 0.8]),
                                        (lambda: dixon_price(4), None)])
def test_newton_converges_quadratically(make, start):
    """e_{k+1} ≤ C e_k²: the ratios e_{k+1}/e_k² stay bounded while e_{k+1}/e_k → 0."""
    p = make()
    x = np.asarray(p.x_star) + 0.05 if start is None else np.array(start)
    opt, o = Newton(), p.oracle()
    state = opt.init(x)
    errors = [np.linalg.norm(x - p.x_star)]
    while errors[-1] > 1e-9 and len(errors) < 12:
        x, state, info = opt.update(x, state, o)
        errors.append(np.linalg.norm(x - p.x_star))
    assert errors[-1] <= 1e-9 and len(errors) <= 9
    pairs = np.array([(a, b) for a, b in zip(errors, errors[1:]) if b > 1e-11])   # above rounding level
    quad = pairs[:, 1] / pairs[:, 0] ** 2
    lin = pairs[:, 1] / pairs[:, 0]
    assert quad.max() < 100 * max(quad.min(), 1.0)   # bounded quadratic-rate constant
    assert lin[-1] < 0.1 * lin[0] and lin[-1] < 1e-2   # superlinear: the linear rate vanishes
    assert state.damping == 0.0                        # Levenberg–Marquardt damping has died out


def test_gauss_newton_solves_linear_least_squares_in_one_step():
    data = synthetic_regression(n=30, d=4, outputs=2, seed=3)
    model = MLP([4, 2])                          # a linear model: z = X W + b
    oracle = Oracle(model, Gaussian(), data.X, data.y)
    params = model.init(0)
    A = np.hstack([data.X, np.ones((30, 1))])
    W_ls = np.linalg.lstsq(A, data.y, rcond=None)[0]
    for opt in (GaussNewton(), GaussNewton(modification="error"), Newton(modification="error")):
        new, state, info = one_step(opt, params, oracle)
        np.testing.assert_allclose(new[0]["W"], W_ls[:4], rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(new[0]["b"], W_ls[4], rtol=1e-9, atol=1e-12)
        assert info["nhev"] == 1


def test_gauss_newton_on_a_likelihood_uses_the_ggn():
    model, oracle, params = small_network("classification")
    lam = 0.3
    G = oracle.dense_ggn(params)
    g = T.ravel(oracle.grad(params))
    new, _, info = one_step(GaussNewton(damping=lam, modification="error"), params, oracle)
    expected = T.ravel(params) - np.linalg.solve(G + lam * np.eye(len(g)), g)
    assert rel(T.ravel(new), expected) < 1e-10


def indefinite_point():
    p = rosenbrock()
    x = np.array([0.0, 1.0])                    # ∇²f = diag(−398, 200)
    assert np.linalg.eigvalsh(p.hess(x)).min() < 0
    return p, x


def test_modification_error_raises_a_clear_error():
    p, x = indefinite_point()
    with pytest.raises(NotPositiveDefiniteError, match="levenberg_marquardt"):
        one_step(Newton(modification="error"), x, p.oracle())
    assert issubclass(NotPositiveDefiniteError, ValueError)


@pytest.mark.parametrize("rule", ["eigenvalue", "eigenvalue_abs"])
def test_eigenvalue_modification(rule):
    p, x = indefinite_point()
    H, g = p.hess(x), p.grad(x)
    lam, Q = np.linalg.eigh(H)
    delta = 1e-8 * np.abs(lam).max()
    fixed = np.maximum(np.abs(lam) if rule == "eigenvalue_abs" else lam, delta)
    expected = -(Q @ ((Q.T @ g) / fixed))
    x1, _, info = one_step(Newton(modification=rule, line_search="none"), x, p.oracle())
    assert rel(x1 - x, expected) < 1e-12
    x1, _, info = one_step(Newton(modification=rule), x, p.oracle())      # default: Armijo (N&W Alg. 3.2)
    assert p.f(x1) < p.f(x) and info["line_search"] == "converged"


def test_levenberg_marquardt_on_an_indefinite_hessian():
    p, x = indefinite_point()
    x1, state, info = one_step(Newton(), x, p.oracle())
    H = p.hess(x)
    assert info["damping"] > 398 and np.linalg.eigvalsh(H + info["damping"] * np.eye(2)).min() > 0
    assert p.f(x1) < p.f(x) and info["accepted"]
    assert rel(x1 - x, -np.linalg.solve(H + info["damping"] * np.eye(2), p.grad(x))) < 1e-12


def test_levenberg_marquardt_ratio_rule():
    # an exact quadratic model: ρ = 1 > 3/4, so λ ← (2/3) λ
    p = quadratic(3, 10.0, 0)
    _, state, info = one_step(Newton(damping=1.0), p.x0, p.oracle())
    assert info["rho"] == pytest.approx(1.0, rel=1e-12) and state.damping == pytest.approx(2.0 / 3.0)
    # f = sqrt(1 + x²) from x = 2: the Newton step overshoots to f(−8) > f(2) and is rejected, then
    # retried with a larger λ (×1.5, ×3, ...) until f decreases
    o = sqrt_oracle()
    x1, state, info = one_step(Newton(), np.array([2.0]), o)
    assert info["trials"] > 1 and info["accepted"] and abs(x1[0]) < 2.0
    assert info["damping"] > 0 and 0 < info["rho"]
    # a model that overestimates the decrease (0 < ρ < 1/4) raises λ for the next step
    x1, state, info = one_step(Newton(), np.array([0.9]), o)
    assert 0 < info["rho"] < 0.25 and info["trials"] == 1 and state.damping == 1e-8


def test_newton_backtracks_from_non_finite_trial_points():
    def f(x):
        return math.inf if x[0] < -0.5 else float((x[0] + 1.0) ** 2)

    o = FunctionOracle(f, grad=lambda x: 2 * (x + 1.0), hess=lambda x: 2 * np.eye(1))
    x1, state, info = one_step(Newton(modification="error"), np.array([1.0]), o)
    assert x1[0] == pytest.approx(1.0 - 2.0 * 0.5) and math.isfinite(state.point.loss)  # α: 1 → 0.5
    x1, state, info = one_step(Newton(), np.array([1.0]), o)      # Levenberg–Marquardt rejects, raises λ
    assert np.isfinite(x1).all() and f(x1) < f(np.array([1.0])) and info["trials"] > 1


def test_refused_steps_leave_everything_unchanged():
    model, oracle, params = small_network()
    bad = T.tree_map(lambda a: a * np.nan, params)
    for opt in (Newton(), GaussNewton(), NewtonCG(), TrustRegionNewtonCG()):
        state = opt.init(params)
        out, state1, info = opt.update(bad, state, oracle)
        assert out is bad and state1 is state and info["skipped"] and "non-finite" in info["message"]


def test_dense_newton_refuses_large_models_naming_the_matrix_free_alternative():
    model, oracle, params = small_network()
    for cls in (Newton, GaussNewton):
        with pytest.raises(ValueError, match="newton_cg"):
            cls(max_size=5).init(params)
    with pytest.raises(ValueError, match="network Oracle"):
        one_step(GaussNewton(), np.zeros(2), rosenbrock().oracle())
    with pytest.raises(ValueError, match="network Oracle"):
        one_step(NewtonCG(curvature="ggn"), np.zeros(2), rosenbrock().oracle())


def test_invalid_hyperparameters_raise_at_construction():
    cases = [(Newton, dict(damping=-1.0), "damping"), (Newton, dict(modification="cholesky"), "modification"),
             (Newton, dict(line_search="exact"), "line_search"), (Newton, dict(c1=0.5, c2=0.1), "c1 < c2"),
             (Newton, dict(eta=0.3), "eta"), (Newton, dict(damping_decrease=1.5), "damping_decrease"),
             (Newton, dict(max_trials=0), "max_trials"), (GaussNewton, dict(damping=-0.1), "damping"),
             (NewtonCG, dict(damping=-1.0), "damping"), (NewtonCG, dict(curvature="fisher"), "curvature"),
             (NewtonCG, dict(forcing=1.5), "forcing"), (NewtonCG, dict(forcing="cubic"), "forcing"),
             (NewtonCG, dict(warm_start=1.0), "warm_start"), (NewtonCG, dict(cg_maxiter=0), "cg_maxiter"),
             (NewtonCG, dict(c1=0.9, c2=0.9), "c1 < c2"), (NewtonCG, dict(progress_tol=0.0), "progress_tol"),
             (TrustRegionNewtonCG, dict(initial_radius=0.0), "initial_radius"),
             (TrustRegionNewtonCG, dict(initial_radius=10.0, max_radius=1.0), "max_radius"),
             (TrustRegionNewtonCG, dict(eta=0.25), "eta")]
    for cls, kwargs, match in cases:
        with pytest.raises(ValueError, match=match):
            cls(**kwargs)


# --- Newton-CG ----------------------------------------------------------------------------------
@pytest.mark.parametrize("make,start", [(wood, [1.2, 1.1, 0.8, 0.7]), (lambda: dixon_price(6), None),
                                        (lambda: quadratic(12, 1e4, 3), None)])
def test_newton_cg_equals_dense_newton_when_cg_converges(make, start):
    p = make()
    x = np.asarray(p.x0 if start is None else start, dtype=float)
    assert np.linalg.eigvalsh(p.hess(x)).min() > 0
    cg = NewtonCG(forcing=1e-13, cg_maxiter=20 * p.n, line_search="none")
    x_cg, state, info = one_step(cg, x, p.oracle())
    x_nt, _, _ = one_step(Newton(modification="error", line_search="none"), x, p.oracle())
    assert info["cg_status"] == "converged"
    assert rel(x_cg - x, x_nt - x) < 1e-8


@pytest.mark.parametrize("curvature", ["ggn", "hessian"])
def test_newton_cg_on_a_network_equals_the_dense_solve(curvature):
    model, oracle, params = small_network("classification")
    M = oracle.dense_ggn(params) if curvature == "ggn" else oracle.dense_hessian(params)
    lam = 0.1 + max(0.0, -np.linalg.eigvalsh(M).min())
    cg = NewtonCG(curvature=curvature, damping=lam, forcing=1e-12, cg_maxiter=200, line_search="none")
    new_cg, _, info = one_step(cg, params, oracle)
    dense = (GaussNewton if curvature == "ggn" else Newton)(damping=lam, modification="error", line_search="none")
    new_dense, _, _ = one_step(dense, params, oracle)
    assert info["cg_status"] == "converged"
    assert rel(T.ravel(new_cg) - T.ravel(params), T.ravel(new_dense) - T.ravel(params)) < 1e-8


# --- one recorded gradient per outer iteration, however many CG products ----------------------------------
def _counted(fn, calls):
    def wrapped(*args, **kwargs):
        calls[0] += 1
        return fn(*args, **kwargs)
    return wrapped


def _deltas(oracle, opt, params, state):
    """(counts after − counts before, as a dict; new params; new state; info) of one ``opt.update``."""
    before = oracle.counts.as_dict()
    params, state, info = opt.update(params, state, oracle)
    return {k: v - before[k] for k, v in oracle.counts.as_dict().items()}, params, state, info


@pytest.mark.parametrize("cls", [NewtonCG, TrustRegionNewtonCG])
def test_hessian_products_sweep_one_recorded_gradient_per_iteration(cls):
    """Every forward pass of a step is a value (nfev) or the one recording of ∇L that all its CG products sweep:
    forward passes = nfev + 1, whatever the number of products (a one-shot product per CG iteration would add
    one forward pass each)."""
    model, oracle, params = small_network("regression", seed=1)
    calls = [0]
    oracle._objective = _counted(oracle._objective, calls)
    # damping keeps CG's matrix positive definite, so every step runs the full 12 products
    opt = cls(cg_maxiter=12, forcing=0.0, initial_radius=100.0) if cls is TrustRegionNewtonCG else \
        cls(cg_maxiter=12, forcing=0.0, damping=1.0)
    state = opt.init(params)
    for _ in range(3):
        start = calls[0]
        d, params, state, info = _deltas(oracle, opt, params, state)
        assert d["nhvp"] == info["cg_iterations"] >= 2, info["cg_status"]   # several products at one point ...
        assert calls[0] - start == d["nfev"] + 1                  # ... and one recording for all of them
        assert d["ngev"] >= 1 + 1                                 # the recording counts as a gradient


def test_hessian_free_products_reuse_one_recorded_pullback_per_iteration(monkeypatch):
    """Hessian-free (GGN): the network's pullback is recorded once per outer iteration and each CG product
    costs one jvp and one sweep of it (``Oracle.curvature_operator``)."""
    import refopt.curvature as C  # noqa: PLC0415
    calls = [0]
    monkeypatch.setattr(C, "network_vjp", _counted(C.network_vjp, calls))
    model, oracle, params = small_network("classification", seed=3)
    hf = NewtonCG.hessian_free(cg_maxiter=15)
    state = hf.init(params)
    for _ in range(3):
        start = calls[0]
        d, params, state, info = _deltas(oracle, hf, params, state)
        assert d["nggnvp"] >= 2 and d["nhvp"] == 0
        assert calls[0] - start == 1


def test_function_oracle_by_autodiff_records_its_gradient_once_for_cg():
    """A FunctionOracle without analytic derivatives: the CG products of a Newton-CG step sweep one recorded
    gradient (one ngev and one evaluation of f for the recording), and agree with the analytic Hessian."""
    p = rosenbrock(6)
    calls = [0]
    f = _counted(p.value, calls)   # the formula itself (p.f returns a float, which autodiff cannot see through)
    auto = FunctionOracle(f)
    H = FunctionOracle(p.f, grad=p.grad, hess=p.hess).hessian_operator(np.asarray(p.x0, float))
    product = auto.hessian_operator(np.asarray(p.x0, float))
    assert calls[0] == 1 and auto.counts.ngev == 1
    v = np.linspace(-1.0, 1.0, 6)
    for _ in range(3):
        np.testing.assert_allclose(product(v), H(v), rtol=1e-12, atol=1e-12)  # O(1e3) entries: rounding only
    assert calls[0] == 1 and auto.counts.nhvp == 3
    opt = NewtonCG(cg_maxiter=20, forcing=0.0)
    x = np.asarray(p.x0, float)
    state = opt.init(x)
    before = calls[0]
    nfev0 = auto.counts.nfev
    x, state, info = opt.update(x, state, auto)
    assert info["cg_iterations"] >= 2 and calls[0] - before == auto.counts.nfev - nfev0 + 1


def spd_operator(rng, n, negative=0):
    Q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    lam = np.geomspace(1.0, 100.0, n)
    lam[:negative] *= -1
    A = (Q * lam) @ Q.T
    return A, (lambda v: A @ v)


def test_truncated_cg_exits():
    rng = np.random.default_rng(0)
    n = 8
    A, op = spd_operator(rng, n)
    g = rng.standard_normal(n)
    res = truncated_cg(op, g, tol=1e-12, maxiter=50)
    assert res.status == "converged" and rel(res.p, -np.linalg.solve(A, g)) < 1e-10
    assert res.pAp == pytest.approx(res.p @ A @ res.p, rel=1e-10)
    # warm start at the solution: no iteration
    warm = truncated_cg(op, g, tol=1e-8, maxiter=50, x0=res.p)
    assert warm.iterations == 0 and warm.status == "converged"
    # negative curvature along the very first direction −g: steepest descent (N&W Alg. 7.1)
    B = -np.eye(n)
    res = truncated_cg(lambda v: B @ v, g, tol=1e-12, maxiter=50)
    assert res.status == "negative_curvature" and np.array_equal(res.p, -g)
    # negative curvature at the second direction: the first iterate −(gᵀg / gᵀAg) g, a descent direction
    A2, g2 = np.diag([1.0, -1.0]), np.array([1.0, 0.1])
    res = truncated_cg(lambda v: A2 @ v, g2, tol=1e-12, maxiter=50)
    assert res.status == "negative_curvature" and res.iterations == 1
    np.testing.assert_allclose(res.p, -(g2 @ g2) / (g2 @ A2 @ g2) * g2, rtol=1e-14)
    assert g2 @ res.p < 0 and res.pAp == pytest.approx(res.p @ A2 @ res.p, rel=1e-14)
    # Martens' relative-progress stop: on an ill-conditioned system, long before convergence
    Q, _ = np.linalg.qr(rng.standard_normal((60, 60)))
    A3 = (Q * np.geomspace(1e-4, 1.0, 60)) @ Q.T
    g3 = rng.standard_normal(60)
    res = truncated_cg(lambda v: A3 @ v, g3, tol=0.0, maxiter=500, progress_tol=5e-3)
    assert res.status == "progress" and res.iterations < 60
    assert g3 @ res.p + 0.5 * res.p @ A3 @ res.p < 0


def test_steihaug_cg():
    rng = np.random.default_rng(1)
    n = 6
    A, op = spd_operator(rng, n)
    g = rng.standard_normal(n)
    newton = -np.linalg.solve(A, g)

    def model(p):
        return -(g @ p + 0.5 * p @ A @ p)

    big = steihaug_cg(op, g, radius=10 * np.linalg.norm(newton), tol=1e-12, maxiter=50)
    assert big.status == "converged" and rel(big.p, newton) < 1e-9 and not big.on_boundary
    assert big.model_decrease == pytest.approx(model(big.p), rel=1e-9)
    r = 0.1 * np.linalg.norm(newton)
    small = steihaug_cg(op, g, radius=r, tol=1e-12, maxiter=50)
    assert small.on_boundary and np.linalg.norm(small.p) == pytest.approx(r, rel=1e-12)
    assert small.model_decrease == pytest.approx(model(small.p), rel=1e-9) and small.model_decrease > 0
    assert small.model_decrease >= model(-r * g / np.linalg.norm(g)) * (1 - 1e-12)   # ≥ the Cauchy-like step along −g
    A2, op2 = spd_operator(rng, n, negative=2)
    neg = steihaug_cg(op2, g, radius=1.0, tol=1e-12, maxiter=50)
    assert neg.on_boundary and np.linalg.norm(neg.p) == pytest.approx(1.0, rel=1e-12)
    assert neg.model_decrease == pytest.approx(-(g @ neg.p + 0.5 * neg.p @ A2 @ neg.p), rel=1e-9)


def sqrt_oracle():
    """f = sqrt(1 + x²): convex, but from x = 2 the Newton step lands at −8 where f is larger."""
    return FunctionOracle(lambda x: float(np.sqrt(1 + x[0] ** 2)), grad=lambda x: x / np.sqrt(1 + x ** 2),
                          hess=lambda x: np.array([[(1 + x[0] ** 2) ** -1.5]]),
                          hvp=lambda x, v: v * (1 + x[0] ** 2) ** -1.5)


def test_trust_region_rejection_keeps_the_point_and_shrinks_the_radius():
    opt = TrustRegionNewtonCG(initial_radius=100.0, max_radius=1000.0)
    x = np.array([2.0])
    o = sqrt_oracle()
    x1, state, info = opt.update(x, opt.init(x), o)
    assert not info["accepted"] and x1 is x and state.radius == 25.0 and "rejected" in info["message"]
    assert info["cg_status"] == "converged" and info["rho"] < 0
    while not info["accepted"]:                          # the radius shrinks until the step is acceptable
        x1, state, info = opt.update(x, state, o)
    assert abs(x1[0]) < 2.0 and np.linalg.norm(x1 - x) <= info["radius"] * (1 + 1e-12)


def test_hessian_free_preset_and_minibatches():
    hf = NewtonCG.hessian_free()
    assert (hf.curvature, hf.adapt_damping, hf.warm_start, hf.progress_tol, hf.cg_maxiter, hf.c1) == \
        ("ggn", True, 0.95, 5e-4, 250, 1e-2)
    model, full, params = small_network("classification", seed=2)
    X, y = full.X, full.y
    state = hf.init(params)
    start = full.value(params)
    for epoch in range(3):
        for i in (0, 12):
            params, state, info = hf.update(params, state, full.with_batch(X[i:i + 12], y[i:i + 12]))
            assert not info["skipped"]
    assert state.previous is not None and state.damping != 1.0
    assert full.value(params) < start


# --- the convention switches of Newton-CG and the trust region, in closed form ---------------------------
def test_switches_are_declared_with_the_defaults():
    from _helpers import assert_switches_declared_with_defaults  # noqa: PLC0415
    assert_switches_declared_with_defaults(Newton, GaussNewton, NewtonCG, TrustRegionNewtonCG)


def quadratic_oracle(A, b):
    return FunctionOracle(lambda x: float(0.5 * x @ A @ x - b @ x), grad=lambda x: A @ x - b,
                          hvp=lambda x, v: A @ v)


@pytest.mark.parametrize("forcing", ["sqrt", "linear", 0.3])
def test_newton_cg_forcing_term_is_the_cg_tolerance(forcing):
    """CG stops at ‖r‖ ≤ η‖g‖, η = min(½, √‖g‖), min(½, ‖g‖) or the constant (N&W eq. 7.3)."""
    p = quadratic(30, 1e4, 2)
    A = p.params["A"]
    x = np.asarray(p.x_star) + 1e-6 * np.random.default_rng(0).standard_normal(30)
    g = p.grad(x)
    gn = np.linalg.norm(g)                                  # ≈ 0.012: the three rules give different η
    etas = {"sqrt": min(0.5, np.sqrt(gn)), "linear": min(0.5, gn), 0.3: 0.3}
    counts = {f: truncated_cg(lambda v: A @ v, g, e * gn, 30).iterations for f, e in etas.items()}
    assert len(set(counts.values())) == 3                   # so the iteration count identifies the rule
    _, _, info = one_step(NewtonCG(forcing=forcing, line_search="none"), x, p.oracle())
    assert info["cg_iterations"] == counts[forcing]


def test_newton_cg_adapted_damping_follows_the_ratio_rule():
    # an exact quadratic model: ρ = 1 > 3/4, so λ ← (2/3) λ
    p = quadratic(4, 10.0, 1)
    opt = NewtonCG(damping=1.0, adapt_damping=True, forcing=1e-13, line_search="none")
    _, state, info = one_step(opt, p.x0, p.oracle())
    assert info["rho"] == pytest.approx(1.0, rel=1e-10) and state.damping == pytest.approx(2.0 / 3.0, rel=1e-15)
    # f = √(1 + x²) from 0.9: the model overestimates the decrease (0 < ρ < ¼), λ = 0 is raised to min_damping
    _, state, info = one_step(NewtonCG(adapt_damping=True, line_search="none"), np.array([0.9]), sqrt_oracle())
    assert 0 < info["rho"] < 0.25 and state.damping == 1e-8
    # without adapt_damping λ stays
    _, state, _ = one_step(NewtonCG(damping=1.0, forcing=1e-13, line_search="none"), p.x0, p.oracle())
    assert state.damping == 1.0


def test_newton_cg_warm_start_begins_cg_at_zeta_times_the_last_solution():
    """With one CG iteration the step is closed-form: z = z₀ + α d, z₀ = ζ p_{k−1}, r₀ = A z₀ + g,
    d = −r₀, α = r₀ᵀr₀ / dᵀAd; ζ = 0 starts from 0 (the first step: −(gᵀg / gᵀAg) g)."""
    rng = np.random.default_rng(3)
    M = rng.standard_normal((5, 5))
    A, b, x0 = M @ M.T + np.eye(5), rng.standard_normal(5), rng.standard_normal(5)
    o = quadratic_oracle(A, b)

    def cg_one(g, z0):
        r = A @ z0 + g
        return z0 - (r @ r) / (r @ A @ r) * r

    for zeta in (0.5, 0.0):
        opt = NewtonCG(warm_start=zeta, cg_maxiter=1, forcing=0.0, line_search="none")
        x1, state, _ = one_step(opt, x0, o)
        p1 = cg_one(A @ x0 - b, np.zeros(5))
        np.testing.assert_allclose(x1, x0 + p1, rtol=1e-12)
        np.testing.assert_allclose(state.previous, p1, rtol=1e-14)
        x2, _, info = opt.update(x1, state, o)
        g1 = A @ x1 - b
        p2 = cg_one(g1, zeta * p1)
        assert g1 @ p2 < 0 and not info["reset"]
        np.testing.assert_allclose(x2, x1 + p2, rtol=1e-12)


def test_trust_region_on_the_gauss_newton_matrix():
    """curvature="ggn": with a radius beyond the GGN step, CG–Steihaug returns p = −G⁻¹g and ρ is the
    actual over the GGN model's predicted decrease (here the Hessian is indefinite, so "hessian" differs)."""
    model, oracle, params = small_network("regression")
    G, g = oracle.dense_ggn(params), T.ravel(oracle.grad(params))
    assert np.linalg.eigvalsh(oracle.dense_hessian(params)).min() < 0
    p = -np.linalg.solve(G, g)
    loss = oracle.value(params)
    rho = (loss - oracle.value(T.unravel(T.ravel(params) + p, params))) / -(g @ p + 0.5 * p @ G @ p)
    results = {}
    for curvature in ("ggn", "hessian"):
        opt = TrustRegionNewtonCG(curvature=curvature, initial_radius=2 * np.linalg.norm(p), forcing=1e-13,
                                  cg_maxiter=500)
        _, _, results[curvature] = one_step(opt, params, oracle)
    assert results["ggn"]["cg_status"] == "converged" and results["ggn"]["rho"] == pytest.approx(rho, rel=1e-8)
    assert results["hessian"]["rho"] != pytest.approx(rho, rel=1e-3)


# --- issue 12: the dense methods say when a step will be slow, and count their dense matrices -----------------
def _bowl(n):
    return FunctionOracle(lambda x: float(0.5 * x @ x), grad=lambda x: x, hess=lambda x: np.eye(x.size))


def test_dense_methods_warn_once_above_the_slow_size_and_say_so_in_the_first_message():
    from refopt.optim.newton import SLOW_DENSE_SIZE
    import warnings
    n = SLOW_DENSE_SIZE + 1
    opt, x, o = Newton(damping=1.0), np.ones(n), _bowl(n)   # damped: not at the minimum after one step
    with pytest.warns(UserWarning, match=f"{n} parameters > {SLOW_DENSE_SIZE}.*newton_cg"):
        state = opt.init(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")   # the steps themselves do not warn again
        x1, state, info = opt.update(x, state, o)
        assert "steps will be slow" in info["message"] and info["nhev"] == 1
        _, _, info = opt.update(x1, state, o)
        assert "slow" not in (info["message"] or "") and info["nhev"] == 1


def test_dense_methods_are_silent_at_the_slow_size():
    from refopt.optim.newton import SLOW_DENSE_SIZE
    import warnings
    n = SLOW_DENSE_SIZE
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        opt = Newton()
        _, _, info = opt.update(np.ones(n), opt.init(np.ones(n)), _bowl(n))
    assert "slow" not in (info["message"] or "")


def test_gauss_newton_names_its_matrix_in_the_warning():
    model = MLP([40, 24, 3])   # 1059 parameters
    with pytest.warns(UserWarning, match="GaussNewton: 1059 parameters.*GGN"):
        GaussNewton().init(model.init(0))
