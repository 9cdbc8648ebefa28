"""Line searches: the conditions hold at every returned step, failures are statuses, counts are exact."""
import math
import re

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from refopt.linesearch import (armijo, cubic_minimizer, fixed_step, quadratic_minimizer, rounding_error,
                              strong_wolfe)
from refopt.problems.functions import beale, extended_rosenbrock, powell_singular, rosenbrock, wood


class Counted:
    """φ with a call counter and a log of what it returned."""

    def __init__(self, phi):
        self.phi, self.calls, self.log = phi, 0, {}

    def __call__(self, a):
        self.calls += 1
        out = self.phi(a)
        self.log[a] = out
        return out


# --- Moré & Thuente (1994), §5: the standard hard one-dimensional test functions ------------------
def mt1(a, b=2.0):
    return -a / (a * a + b), (a * a - b) / (a * a + b) ** 2


def mt2(a, b=0.004):
    return (a + b) ** 5 - 2 * (a + b) ** 4, 5 * (a + b) ** 4 - 8 * (a + b) ** 3


def mt3(a, b=0.01, l=39):
    if a <= 1 - b:
        f0, d0 = 1 - a, -1.0
    elif a >= 1 + b:
        f0, d0 = a - 1, 1.0
    else:
        f0, d0 = (a - 1) ** 2 / (2 * b) + b / 2, (a - 1) / b
    return (f0 + 2 * (1 - b) / (l * math.pi) * math.sin(l * math.pi * a / 2),
            d0 + (1 - b) * math.cos(l * math.pi * a / 2))


def yanai(b1, b2):
    def gamma(b):
        return math.sqrt(1 + b * b) - b

    def phi(a):
        u, w = math.sqrt((1 - a) ** 2 + b2 ** 2), math.sqrt(a * a + b1 * b1)
        return gamma(b1) * u + gamma(b2) * w, -gamma(b1) * (1 - a) / u + gamma(b2) * a / w
    return phi


MT_CASES = [(mt1, 1e-3, 0.1), (mt2, 1e-3, 0.1), (mt3, 1e-3, 0.1), (yanai(1e-3, 1e-3), 1e-4, 1e-3),
            (yanai(1e-2, 1e-3), 1e-4, 1e-3), (yanai(1e-3, 1e-2), 1e-4, 1e-3)]


def assert_strong_wolfe(res, phi0, dphi0, c1, c2):
    assert res.phi <= phi0 + c1 * res.alpha * dphi0
    assert abs(res.dphi) <= c2 * abs(dphi0)


@pytest.mark.parametrize("case", range(len(MT_CASES)))
@pytest.mark.parametrize("alpha0", [1e-3, 1e-1, 10.0, 1e3])
def test_strong_wolfe_on_more_thuente_functions(case, alpha0):
    fn, c1, c2 = MT_CASES[case]
    phi = Counted(fn)
    phi0, dphi0 = fn(0.0)
    res = strong_wolfe(phi, phi0, dphi0, alpha0=alpha0, c1=c1, c2=c2, max_evals=30)
    assert res.nfev == phi.calls <= 30
    assert res.phi <= phi0                                   # never worse than the start
    if res.status == "converged":
        assert_strong_wolfe(res, phi0, dphi0, c1, c2)
        assert phi.log[res.alpha] == (res.phi, res.dphi)     # the reported values are the callback's
    else:
        # mt2 asks |α − α*| ≲ 3e-9 where φ is flat to rounding: failure is allowed, as a status
        assert case == 1 and res.status in ("interval_collapsed", "max_evaluations")


@pytest.mark.parametrize("make", [rosenbrock, beale, wood, powell_singular, lambda: extended_rosenbrock(6)])
@given(seed=st.integers(0, 10 ** 6), c2=st.sampled_from([0.1, 0.5, 0.9]), log_a0=st.floats(-3, 2),
       direction=st.sampled_from(["gradient", "random", "newton"]))
def test_strong_wolfe_holds_along_problem_directions(make, seed, c2, log_a0, direction):
    p = make()
    rng = np.random.default_rng(seed)
    x = np.asarray(p.x0) + rng.standard_normal(p.n)
    g = p.grad(x)
    d = {"gradient": -g, "random": rng.standard_normal(p.n)}.get(direction)
    if direction == "newton":
        d = np.linalg.solve(p.hess(x) + (abs(np.linalg.eigvalsh(p.hess(x)).min()) + 1) * np.eye(p.n), -g)
    if g @ d > 0:
        d = -d

    def phi(a):
        return p.f(x + a * d), float(p.grad(x + a * d) @ d)

    counted = Counted(phi)
    c1 = 1e-4
    res = strong_wolfe(counted, p.f(x), float(g @ d), alpha0=10.0 ** log_a0, c1=c1, c2=c2)
    assert res.nfev == counted.calls
    assert res.status == "converged"
    assert_strong_wolfe(res, p.f(x), float(g @ d), c1, c2)


@given(seed=st.integers(0, 10 ** 6), lie=st.sampled_from(["negated", "scaled", "random", "zero"]),
       search=st.sampled_from(["wolfe", "armijo", "dcsrch", "scipy"]))
def test_a_wrong_gradient_never_returns_a_higher_value(seed, lie, search):
    """The derivative the search is told is wrong; the returned φ is still ≤ φ(0)."""
    p = rosenbrock()
    rng = np.random.default_rng(seed)
    x = rng.uniform(-2, 2, 2)
    d = rng.standard_normal(2)

    def wrong(a):
        true = float(p.grad(x + a * d) @ d)
        return {"negated": -true, "scaled": 1e3 * true, "random": rng.standard_normal(), "zero": 0.0}[lie]

    def phi(a):
        return p.f(x + a * d), wrong(a)

    phi0, dphi0 = p.f(x), -abs(wrong(0.0)) - 1.0   # claims descent whatever the truth
    if search == "wolfe":
        res = strong_wolfe(phi, phi0, dphi0, max_evals=20)
    elif search in ("dcsrch", "scipy"):
        from refopt.linesearch import dcsrch, scipy_wolfe
        res = (dcsrch if search == "dcsrch" else scipy_wolfe)(phi, phi0, dphi0, max_evals=20)
    else:
        res = armijo(phi, phi0, dphi0, max_evals=20)
    # the documented bound: never above φ(0) + ε_k, and above φ(0) only by an approximate-Wolfe acceptance
    assert res.phi <= phi0 + rounding_error(phi0)
    assert res.phi <= phi0 or (res.approximate and res.status == "converged")
    assert p.f(x + res.alpha * d) == res.phi
    assert res.nfev <= 20


def test_non_finite_trial_values_backtrack():
    def phi(a):   # a quadratic with minimum at 0.2 that overflows beyond 0.3
        return (math.nan, math.nan) if a > 0.3 else ((a - 0.2) ** 2, 2 * (a - 0.2))
    phi0, dphi0 = phi(0.0)
    res = strong_wolfe(phi, phi0, dphi0, alpha0=1.0)
    assert res.status == "converged" and res.alpha <= 0.3
    assert_strong_wolfe(res, phi0, dphi0, 1e-4, 0.9)
    res = armijo(phi, phi0, dphi0, alpha0=1.0)
    assert res.status == "converged" and res.alpha <= 0.3 and res.phi <= phi0 + 1e-4 * res.alpha * dphi0
    assert math.isfinite(res.phi)
    from refopt.linesearch import minfunc_wolfe  # noqa: PLC0415
    res = minfunc_wolfe(phi, phi0, dphi0, alpha0=1.0)     # torch's search would extrapolate into the NaNs
    assert res.status == "converged" and res.alpha <= 0.3
    assert_strong_wolfe(res, phi0, dphi0, 1e-4, 0.9)
    inf_derivative = lambda a: (a * a - a, math.inf if a > 0.3 else 2 * a - 1)  # noqa: E731
    res = fixed_step(inf_derivative, 0.0, -1.0, alpha0=1.0)
    assert res.alpha == 0.25 and res.nfev == 3      # 1 → 0.5 → 0.25, backtracking only on non-finite values


def test_armijo_is_nocedal_wright_algorithm_3_1():
    """Plain backtracking: the first α₀ρᵏ with sufficient decrease, exactly."""
    phi = Counted(lambda a: ((a - 0.01) ** 2, None))
    res = armijo(phi, 1e-4, -0.02, alpha0=1.0, rho=0.5, c1=1e-4)
    k = next(k for k in range(60) if (0.5 ** k - 0.01) ** 2 <= 1e-4 - 1e-4 * 0.5 ** k * 0.02)
    assert res.alpha == 0.5 ** k and res.nfev == k + 1 == phi.calls and res.status == "converged"
    res_q = armijo(phi, 1e-4, -0.02, alpha0=1.0, interpolation="quadratic")
    assert res_q.status == "converged" and res_q.nfev < res.nfev    # interpolation needs fewer trials here


def test_interpolation_formulas_are_exact():
    # a quadratic: its minimiser from value, slope at 0 and a value elsewhere
    q = lambda a: 3 * (a - 0.7) ** 2 + 1  # noqa: E731
    assert quadratic_minimizer(0.0, q(0), -4.2, 2.0, q(2.0)) == pytest.approx(0.7, rel=1e-14)
    # a cubic with c'(a) = 3(a − 2)(a − 5): local maximum at 2, local minimum at 5; two (value, slope)
    # pairs determine it, so eq. 3.59 recovers the minimiser from any two points
    c = lambda a: a ** 3 - 10.5 * a ** 2 + 30 * a  # noqa: E731
    dc = lambda a: 3 * a ** 2 - 21 * a + 30  # noqa: E731
    for lo, hi in [(0.0, 3.0), (6.0, 1.0), (4.5, 8.0)]:
        assert cubic_minimizer(lo, c(lo), dc(lo), hi, c(hi), dc(hi)) == pytest.approx(5.0, rel=1e-12)
    assert math.isnan(cubic_minimizer(1.0, 0.0, 1.0, 1.0, 0.0, 1.0))


def test_not_a_descent_direction_is_a_status_not_an_error():
    phi = Counted(lambda a: (a, 1.0))
    for search in (strong_wolfe, armijo):
        res = search(phi, 0.0, 1.0)
        assert res.status == "not_descent" and res.alpha == 0.0 and res.nfev == 0 and not res.success
    assert phi.calls == 0
    res = strong_wolfe(phi, 0.0, math.nan)
    assert res.status == "not_descent"


def test_budget_and_hopeless_problems_end_in_a_status():
    increasing = Counted(lambda a: (a, 1.0))          # claims φ'(0) < 0, but φ only increases
    res = strong_wolfe(increasing, 0.0, -1.0, max_evals=7)
    assert res.alpha == 0.0 and res.phi == 0.0 and res.nfev == 7 == increasing.calls
    assert res.status in ("max_evaluations", "interval_collapsed")
    res = armijo(lambda a: (a, None), 0.0, -1.0, max_evals=5)
    assert res.status == "max_evaluations" and res.alpha == 0.0 and res.nfev == 5
    res = armijo(lambda a: (a, None), 0.0, -1.0, max_evals=100, min_step=1e-3)
    assert res.status == "step_too_small" and res.alpha == 0.0
    unbounded = lambda a: (-a, -1.0)  # noqa: E731
    res = strong_wolfe(unbounded, 0.0, -1.0, alpha_max=100.0)
    assert res.status == "max_step" and res.alpha == 100.0 and res.phi == -100.0


def test_invalid_arguments_raise():
    phi = lambda a: (a * a - a, 2 * a - 1)  # noqa: E731
    with pytest.raises(ValueError, match="c1 < c2"):
        strong_wolfe(phi, 0.0, -1.0, c1=0.9, c2=0.5)
    with pytest.raises(ValueError, match="c1 < c2"):
        strong_wolfe(phi, 0.0, -1.0, c1=0.5, c2=0.5)
    with pytest.raises(ValueError, match="alpha0"):
        strong_wolfe(phi, 0.0, -1.0, alpha0=0.0)
    with pytest.raises(ValueError, match="max_evals"):
        armijo(phi, 0.0, -1.0, max_evals=0)
    with pytest.raises(ValueError, match="rho"):
        armijo(phi, 0.0, -1.0, rho=1.0)
    with pytest.raises(ValueError, match="interpolation"):
        armijo(phi, 0.0, -1.0, interpolation="cubic")
    with pytest.raises(ValueError, match="phi0"):
        armijo(phi, math.nan, -1.0)


# --- minFunc's search (torch.optim.LBFGS(line_search_fn="strong_wolfe")) -----------------------------
def quad_phi(a, b):
    """φ(α) = ½ a α² + b α (b < 0): minimiser α* = −b/a, where φ' = 0."""
    return Counted(lambda t: (0.5 * a * t * t + b * t, a * t + b))


def test_minfunc_wolfe_closed_forms_on_a_quadratic():
    from refopt.linesearch import minfunc_wolfe
    a, b = 2.0, -3.0                                         # α* = 1.5, φ'(0) = −3
    # a first trial inside the strong Wolfe set is taken as it is, one evaluation
    phi = quad_phi(a, b)
    res = minfunc_wolfe(phi, 0.0, b, alpha0=1.4)
    assert (res.alpha, res.nfev, res.status) == (1.4, 1, "converged")
    # too long (no sufficient decrease at 4): the cubic through (0, 4) of quadratic data is the quadratic,
    # so the zoom's first trial is α* exactly
    phi = quad_phi(a, b)
    res = minfunc_wolfe(phi, 0.0, b, alpha0=4.0)
    assert res.alpha == pytest.approx(1.5, rel=1e-14) and res.nfev == 2 and res.status == "converged"
    # too short (c₂ = 0.1): extrapolation to the cubic's minimiser, here α* ≤ 10·α₀
    phi = quad_phi(a, b)
    res = minfunc_wolfe(phi, 0.0, b, alpha0=0.2, c2=0.1)
    assert res.alpha == pytest.approx(1.5, rel=1e-14) and res.nfev == 2
    # much too short: the extrapolation is clipped at 10·α₀
    phi = quad_phi(a, b)
    res = minfunc_wolfe(phi, 0.0, b, alpha0=0.01, c2=0.1)
    assert list(phi.log)[:2] == [0.01, pytest.approx(0.1, rel=1e-15)]
    # a budget of one evaluation (torch's max_iter=1 default): the first trial if it lowers φ, else 0
    res = minfunc_wolfe(quad_phi(a, b), 0.0, b, alpha0=0.01, max_evals=1)
    assert (res.alpha, res.nfev) == (0.01, 1)
    res = minfunc_wolfe(quad_phi(a, b), 0.0, b, alpha0=10.0, max_evals=1)
    assert (res.alpha, res.nfev) == (0.0, 1)
    with pytest.raises(ValueError, match="c1"):
        minfunc_wolfe(quad_phi(a, b), 0.0, b, c1=0.9, c2=0.1)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("t0", [1e-3, 0.05, 1.0, 30.0])
@pytest.mark.parametrize("max_evals", [1, 3, 25])
def test_minfunc_wolfe_picks_torchs_points(seed, t0, max_evals):
    """The same step and evaluation count as torch.optim.lbfgs._strong_wolfe (skipped without torch) on a
    nonconvex quartic along −g, from short, unit and long first trials, with small and large budgets."""
    torch = pytest.importorskip("torch")
    from torch.optim.lbfgs import _strong_wolfe  # noqa: PLC0415
    from refopt.linesearch import minfunc_wolfe  # noqa: PLC0415
    g = np.random.default_rng(seed)
    n = 6
    M = g.standard_normal((n, n))
    A = M @ M.T - 1.5 * np.eye(n)                             # indefinite: the quartic term bounds it
    c = g.standard_normal(n)
    f = lambda x: float(0.5 * x @ A @ x - c @ x + 0.25 * np.sum(x ** 4))  # noqa: E731
    grad = lambda x: A @ x - c + x ** 3  # noqa: E731
    x0 = g.standard_normal(n)
    d = -grad(x0)

    def obj(x, t, dd):
        xn = (x + t * dd).numpy()
        return f(xn), torch.tensor(grad(xn), dtype=torch.float64)

    _, _, t_torch, evals = _strong_wolfe(obj, torch.tensor(x0, dtype=torch.float64), t0,
                                         torch.tensor(d, dtype=torch.float64), f(x0),
                                         torch.tensor(grad(x0), dtype=torch.float64), float(grad(x0) @ d),
                                         max_ls=max_evals - 1)
    res = minfunc_wolfe(lambda t: (f(x0 + t * d), float(grad(x0 + t * d) @ d)), f(x0), float(grad(x0) @ d),
                        alpha0=t0, max_evals=max_evals, direction_scale=float(np.abs(d).max()))
    assert res.alpha == pytest.approx(float(t_torch), rel=1e-12, abs=1e-300) and res.nfev == evals


# --- at the rounding floor: approximate Wolfe (Hager & Zhang 2005, §4) and "precision" ---------------
from refopt.linesearch import at_rounding_level, minfunc_wolfe, precision_status  # noqa: E402

from _helpers import F_FLOOR, ULP_FLOOR, noisy_phi  # noqa: E402

B_FLOOR = -4.4e-13     # φ'(0) of the noisy functions: the measured one of the issue's quadratic(8, 1e3) case


@pytest.mark.parametrize("alpha0", [1.0, 0.3, 1e-3, 10.0])
@pytest.mark.parametrize("alpha_star", [0.1, 0.25, 0.4])   # decrease ½|b|α* ≤ 1.55 ulp
def test_approximate_wolfe_accepts_a_step_whose_decrease_is_below_rounding(alpha0, alpha_star):
    """Every value is ≥ φ(0) + ulp (a fixed ±ulp pattern on an exact quadratic whose whole decrease is
    1.5 ulp), so N&W's search cannot succeed; the slopes are exact, and the approximate conditions accept
    a step in α ∈ [0.1, 1.9998]·α*, the set where (2c₁ − 1)φ'(0) ≥ φ'(α) ≥ c₂φ'(0) for φ' = b(1 − α/α*)."""
    phi = Counted(noisy_phi(B_FLOOR, alpha_star))
    c1, c2 = 1e-4, 0.9
    res = strong_wolfe(phi, F_FLOOR, B_FLOOR, alpha0=alpha0, c1=c1, c2=c2)
    assert res.status == "converged" and res.approximate and res.nfev == phi.calls <= 30
    assert c2 * B_FLOOR <= res.dphi <= (2 * c1 - 1) * B_FLOOR
    assert 0.1 * alpha_star <= res.alpha <= 1.9998 * alpha_star * (1 + 1e-12)
    assert phi.log[res.alpha] == (res.phi, res.dphi)
    # the documented bound: above φ(0) here (all values are), but by no more than ε_k
    assert F_FLOOR < res.phi <= F_FLOOR + rounding_error(F_FLOOR)
    # without the approximate conditions it is N&W's search: it fails, and says why
    old = strong_wolfe(noisy_phi(B_FLOOR, alpha_star), F_FLOOR, B_FLOOR, alpha0=alpha0, c1=c1, c2=c2,
                       approximate=False)
    assert (old.status, old.alpha, old.phi) == ("precision", 0.0, F_FLOOR) and not old.success
    assert "rounding level" in old.message


def test_no_progress_at_rounding_level_is_the_precision_status():
    """Flat noisy values and slopes with no approximate Wolfe point (φ' = b, then −2b past α = 0.4):
    the bracket collapses on the kink, and the search says "precision", staying at α = 0."""
    for alpha0 in (1.0, 0.01, 5.0):
        phi = Counted(noisy_phi(B_FLOOR, 0.4, shape="kink"))
        res = strong_wolfe(phi, F_FLOOR, B_FLOOR, alpha0=alpha0)
        assert (res.status, res.alpha, res.phi, res.approximate) == ("precision", 0.0, F_FLOOR, False)
        assert res.nfev == phi.calls <= 30
        assert all(abs(f - F_FLOOR) <= 8 * ULP_FLOOR for f, _ in phi.log.values())   # all at rounding level
    # Armijo reads values only: on the noisy quadratic it backtracks to the end, then says "precision"
    for kwargs in ({}, {"max_evals": 100}):
        res = armijo(noisy_phi(B_FLOOR, 0.4), F_FLOOR, B_FLOOR, **kwargs)
        assert (res.status, res.alpha, res.phi) == ("precision", 0.0, F_FLOOR)
    # a failure among measurable values keeps its own status (φ = α rises by 2⁻⁴ ≫ ε_k at the last trial)
    res = armijo(lambda a: (a, None), 0.0, -1.0, max_evals=5)
    assert res.status == "max_evaluations"


def test_precision_classification_rules():
    eps_k = rounding_error(F_FLOOR)
    fail = strong_wolfe(noisy_phi(B_FLOOR, 0.4, "kink"), F_FLOOR, B_FLOOR, approximate=False, epsilon_k=0.0)
    assert fail.status == "interval_collapsed"           # ε_k = 0: nothing is "within rounding"
    near = [F_FLOOR + 3 * ULP_FLOOR, F_FLOOR + ULP_FLOOR]
    assert at_rounding_level(F_FLOOR, near, eps_k)
    assert not at_rounding_level(F_FLOOR, near + [math.nan], eps_k)              # ended on a non-finite value
    assert not at_rounding_level(F_FLOOR, [F_FLOOR - 2 * eps_k] + near, eps_k)  # a measurable decrease was seen
    assert not at_rounding_level(F_FLOOR, near + [F_FLOOR + 2 * eps_k], eps_k)  # ended measurably higher
    assert not at_rounding_level(F_FLOOR, [], eps_k)
    assert precision_status(fail, F_FLOOR, near, eps_k).status == "precision"
    ok = strong_wolfe(lambda a: (a * a - a, 2 * a - 1), 0.0, -1.0)
    assert precision_status(ok, 0.0, [0.0], eps_k) is ok                       # a success is never relabelled
    with pytest.raises(ValueError, match="epsilon_k"):
        strong_wolfe(lambda a: (a * a - a, 2 * a - 1), 0.0, -1.0, epsilon_k=-1.0)
    with pytest.raises(ValueError, match="^approximate must be True or False"):
        strong_wolfe(lambda a: (a * a - a, 2 * a - 1), 0.0, -1.0, approximate="yes")


def test_approximate_wolfe_leaves_resolvable_searches_alone():
    """Where the values resolve the decrease, the trials and the step are N&W's, bit for bit."""
    for fn, c1, c2 in MT_CASES:
        phi0, dphi0 = fn(0.0)
        for alpha0 in (1e-3, 1e-1, 10.0, 1e3):
            a, b = Counted(fn), Counted(fn)
            new = strong_wolfe(a, phi0, dphi0, alpha0=alpha0, c1=c1, c2=c2)
            old = strong_wolfe(b, phi0, dphi0, alpha0=alpha0, c1=c1, c2=c2, approximate=False)
            assert list(a.log) == list(b.log) and new.alpha == old.alpha and not new.approximate


def test_minfunc_wolfe_is_unchanged_and_its_rounding_failures_classify_as_precision():
    phi = Counted(noisy_phi(B_FLOOR, 0.4))
    res = minfunc_wolfe(phi, F_FLOOR, B_FLOOR)            # torch's search: no approximate conditions
    assert res.status in ("interval_collapsed", "max_evaluations") and res.alpha == 0.0
    values = [f for f, _ in phi.log.values()]
    assert precision_status(res, F_FLOOR, values, rounding_error(F_FLOOR)).status == "precision"


@pytest.mark.parametrize("alpha0", [1.0, 2.0, 10.0])
@pytest.mark.parametrize("a1, a2", [(0.5, 0.6), (0.7, 0.8), (0.3, 0.35), (0.8, 0.85)])
def test_zoom_at_rounding_level_keeps_the_end_the_slope_points_at(a1, a2, alpha0):
    """Flat noisy values (all within rounding of φ(0)); φ' = φ'(0) before a1 (too steep for the approximate
    conditions), 0 on [a1, a2] (approximate Wolfe points), steeply positive after. A zoom trial left of a1
    must replace the bracket's lower end (H&Z's update U3), one right of a2 the upper end (U2): only the
    slopes can steer the zoom to the plateau. Replacing either end regardless ends at α = 0, "precision"."""
    import struct  # noqa: PLC0415
    from _helpers import ulp_noise  # noqa: PLC0415

    def phi(t):
        d = B_FLOOR if t < a1 else (0.0 if t <= a2 else -20 * B_FLOOR)
        return F_FLOOR + ulp_noise(struct.pack("<d", t)) * ULP_FLOOR, d
    res = strong_wolfe(Counted(phi), F_FLOOR, B_FLOOR, alpha0=alpha0)
    assert res.status == "converged" and res.approximate and a1 <= res.alpha <= a2 and res.dphi == 0.0


# --- argument checks: every argument of every search, wrong types and ranges (review of issue 9) ----------
from refopt.linesearch import MAX_EVALS  # noqa: E402

_NOT_NUMBERS = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf, "True": True, "np.bool_": np.bool_(True),
                "a string": "0.5", "10**400": 10 ** 400, "-10**400": -10 ** 400, "None": None, "a list": [0.5],
                "complex": 1 + 2j, "an array": np.array([0.5, 0.5])}
_UNIT = {"0": 0.0, "1": 1.0, "-0.1": -0.1, "2": 2}          # c1, c2, rho live in (0, 1)
_SEARCH_ARGS = {   # search → {argument: extra invalid values beyond _NOT_NUMBERS}
    "armijo": {"alpha0": {"0": 0, "-1": -1.0}, "max_evals": {}, "phi0": {}, "dphi0": {}, "c1": _UNIT,
               "rho": _UNIT, "min_step": {"-1": -1.0}, "epsilon_k": {"-1": -1.0}, "interpolation": {}},
    "strong_wolfe": {"alpha0": {"0": 0, "-1": -1.0}, "max_evals": {}, "phi0": {}, "dphi0": {}, "c1": _UNIT,
                     "c2": dict(_UNIT, **{"c2 = c1": 1e-4}), "alpha_max": {"below alpha0": 0.5, "-1": -1.0},
                     "approximate": {}, "epsilon_k": {"-1": -1.0}},
    "fixed_step": {"alpha0": {"0": 0, "-1": -1.0}, "max_evals": {}, "phi0": {}, "dphi0": {}, "rho": _UNIT},
    "minfunc_wolfe": {"alpha0": {"0": 0, "-1": -1.0}, "max_evals": {}, "phi0": {}, "dphi0": {}, "c1": _UNIT,
                      "c2": dict(_UNIT, **{"c2 = c1": 1e-4}), "tolerance_change": {"-1": -1.0},
                      "direction_scale": {"-1": -1.0}},
}
_SPECIAL = {   # arguments that are not real numbers, or numbers of another kind
    "max_evals": {"0": 0, "-1": -1, "over MAX_EVALS": MAX_EVALS + 1, "2.5": 2.5, "3.0": 3.0, "np.float64": np.float64(3),
                  "True": True, "a string": "3", "10**400": 10 ** 400, "None": None, "nan": math.nan},
    "interpolation": {"cubic": "cubic", "1": 1, "None": None, "a list": ["none"], "an array": np.array(["none"]),
                      "upper case": "NONE"},
    "approximate": {"a string": "yes", "1": 1, "0": 0, "None": None, "a list": [True]},
    # φ'(0) = NaN or ±inf is a documented status ("not_descent"), not an error; non-numbers are errors
    "dphi0": {k: v for k, v in _NOT_NUMBERS.items() if k not in ("nan", "inf", "-inf")},
}


def _search(name):
    from refopt import linesearch  # noqa: PLC0415
    return getattr(linesearch, name)


@pytest.mark.parametrize("search", sorted(_SEARCH_ARGS))
def test_every_bad_search_argument_is_refused_by_name(search):
    """Each argument of each search given NaN, ±inf, a bool, a string, 10**400, None, a list, a complex
    number, an array and out-of-range values: a ValueError naming it (10**400 used to raise OverflowError
    from math.isfinite; True passed as 1; 'none' strings compared to arrays raised without a name)."""
    fn = _search(search)
    phi = lambda a: (a * a - a, 2 * a - 1)  # noqa: E731
    assert fn(phi, 0.0, -1.0).status == "converged"          # the base call is valid
    problems = []
    for arg, extra in _SEARCH_ARGS[search].items():
        bad = _SPECIAL[arg] if arg in _SPECIAL else dict(_NOT_NUMBERS, **extra)
        if arg == "epsilon_k" or (arg == "dphi0" and search == "fixed_step"):
            bad = {k: v for k, v in bad.items() if k != "None"}      # documented: the default ε_k; no slope
        for label, value in bad.items():
            kwargs = {"phi0": 0.0, "dphi0": -1.0, arg: value}
            if arg == "alpha_max":
                kwargs["alpha0"] = 1.0
            try:
                fn(phi, **kwargs)
            except ValueError as exc:
                if re.search(rf"(?<![A-Za-z_]){arg}(?![A-Za-z_0-9])", str(exc)) is None:
                    problems.append(f"{arg}={label}: ValueError without the name: {exc}")
            except Exception as exc:  # noqa: BLE001 - what is being tested for
                problems.append(f"{arg}={label}: {type(exc).__name__}: {exc}"[:200])
            else:
                problems.append(f"{arg}={label}: accepted")
    assert not problems, "\n".join(problems)


def test_numpy_scalars_and_device_scalars_are_accepted():
    phi = lambda a: (a * a - a, 2 * a - 1)  # noqa: E731
    res = strong_wolfe(phi, np.float32(0.0), np.array(-1.0), alpha0=np.float64(1.0), c1=np.float32(1e-4),
                       c2=np.float64(0.9), max_evals=np.int64(30), approximate=np.bool_(True), epsilon_k=np.float64(0))
    assert res.status == "converged"
    assert armijo(phi, 0.0, -1.0, max_evals=MAX_EVALS, rho=np.float32(0.5)).status == "converged"
    assert strong_wolfe(phi, 0.0, math.nan).status == "not_descent"      # a NaN slope is a status


# --- branches of the rounding regime (review of issue 9) -------------------------------------------------
def test_approximate_wolfe_is_off_when_c1_is_at_least_one_half():
    """H&Z need δ = c₁ < ½: with c₁ = 0.6 the 'upper bound' (2c₁ − 1)φ'(0) = 0.2 φ'(0) is negative and the
    set excludes the minimiser; such a search is N&W's (same trials, same result, never ``approximate``)."""
    for c1 in (0.5, 0.6):
        a, b = Counted(noisy_phi(B_FLOOR, 0.4)), Counted(noisy_phi(B_FLOOR, 0.4))
        res = strong_wolfe(a, F_FLOOR, B_FLOOR, c1=c1, c2=0.9)
        old = strong_wolfe(b, F_FLOOR, B_FLOOR, c1=c1, c2=0.9, approximate=False)
        assert not res.approximate and res == old and list(a.log) == list(b.log)
        assert (res.status, res.alpha) == ("precision", 0.0)
    # below ½ the same function is solved by the approximate conditions (the case above can fail)
    res = strong_wolfe(noisy_phi(B_FLOOR, 0.4), F_FLOOR, B_FLOOR, c1=0.4, c2=0.9)
    assert res.status == "converged" and res.approximate


def test_a_strong_wolfe_point_in_the_rounding_regime_of_the_zoom_is_not_approximate():
    """φ(1) = φ(0) + ulp with a steep positive slope starts a zoom at rounding level; its first trial has
    φ = φ(0) − ulp (sufficient decrease, below φ(lo)) and φ' = ½ φ'(0): a strong Wolfe point, accepted as
    one (``approximate`` False: φ(α) ≤ φ(0) is guaranteed), not as an approximate Wolfe point."""
    def phi(t):
        return (F_FLOOR + ULP_FLOOR, -20 * B_FLOOR) if t >= 0.95 else (F_FLOOR - ULP_FLOOR, 0.5 * B_FLOOR)
    counted = Counted(phi)
    res = strong_wolfe(counted, F_FLOOR, B_FLOOR)
    assert (res.status, res.approximate, res.nfev) == ("converged", False, 2)
    assert 0.1 <= res.alpha <= 0.9 and res.phi == F_FLOOR - ULP_FLOOR < F_FLOOR
    assert abs(res.dphi) <= 0.9 * abs(B_FLOOR) and res.phi <= F_FLOOR + 1e-4 * res.alpha * B_FLOOR


def test_alpha_max_without_sufficient_decrease_returns_through_the_fallback():
    """At rounding level a steep slope makes the bracketing extrapolate whatever the values say; when it
    reaches ``alpha_max`` without sufficient decrease the search must not return that step: it keeps it
    only if φ < φ(0) (the fallback's best point) and otherwise stays at α = 0, status "precision"."""
    # every value above φ(0) by ulps, φ' = φ'(0) (too steep for the approximate conditions): 0.5 → 1 = α_max
    phi = Counted(lambda t: (F_FLOOR + 3 * ULP_FLOOR, B_FLOOR))
    res = strong_wolfe(phi, F_FLOOR, B_FLOOR, alpha0=0.5, alpha_max=1.0)
    assert list(phi.log) == [0.5, 1.0]
    assert (res.status, res.alpha, res.phi, res.nfev, res.approximate) == ("precision", 0.0, F_FLOOR, 2, False)
    # a decrease, but less than sufficient (c₁ = 0.4, φ = −0.1 α), all within ε_k = 1: the step is kept
    res = strong_wolfe(lambda t: (-0.1 * t, -1.0), 0.0, -1.0, alpha0=1.0, alpha_max=1.0, c1=0.4, epsilon_k=1.0)
    assert (res.status, res.alpha, res.phi) == ("precision", 1.0, -0.1)
    # measurable values (ε_k = 0): the same φ brackets and zooms instead of reaching α_max
    res = strong_wolfe(lambda t: (-0.1 * t, -1.0), 0.0, -1.0, alpha0=1.0, alpha_max=1.0, c1=0.4, epsilon_k=0.0)
    assert res.alpha < 1.0


# --- MINPACK-2's dcsrch and scipy's wolfe1 → wolfe2, against scipy itself ----------------------------------
def _scipy_dcsrch_trials(fn, alpha0, c1, c2, xtol, stpmin, stpmax, maxiter=100):
    """The trial steps scipy's DCSRCH evaluates on φ = fn (and its task)."""
    from scipy.optimize._dcsrch import DCSRCH
    trials = []

    def phi(a):
        trials.append(a)
        return fn(a)[0]
    stp, _, _, task = DCSRCH(phi, lambda a: fn(a)[1], c1, c2, xtol, stpmin, stpmax)(
        alpha0, phi0=fn(0.0)[0], derphi0=fn(0.0)[1], maxiter=maxiter)
    return trials, stp, task


def _quartic(a):
    return (a - 3) ** 4 - 5 * a, 4 * (a - 3) ** 3 - 5


_ROSEN = rosenbrock()
_ROSEN_G = _ROSEN.grad(np.asarray(_ROSEN.x0, dtype=float))


def _rosenbrock_line(a):   # Rosenbrock from (−1.2, 1) along −g (‖g‖ ≈ 232): the unit step fails by far
    x = np.asarray(_ROSEN.x0, dtype=float) - a * _ROSEN_G
    return _ROSEN.f(x), float(_ROSEN.grad(x) @ -_ROSEN_G)


DCSRCH_FUNCTIONS = [fn for fn, _, _ in MT_CASES] + [_quartic, _rosenbrock_line]
DCSRCH_SETTINGS = [(1e-3, 0.1, 0.1, 0.0, 1e10), (1e-3, 0.9, 0.1, 0.0, 1e10),    # L-BFGS-B's tolerances
                   (1e-4, 0.9, 1e-14, 1e-100, 1e100), (1e-3, 0.1, 1e-14, 1e-100, 1e100)]  # scipy BFGS's


@pytest.mark.parametrize("case", range(len(DCSRCH_FUNCTIONS)))
@pytest.mark.parametrize("alpha0", [1e-3, 1e-1, 1.0, 10.0, 1e3])
def test_dcsrch_evaluates_scipys_trial_points(case, alpha0):
    """Every trial step of refopt's dcsrch is scipy's DCSRCH's, bit for bit, with the same outcome."""
    pytest.importorskip("scipy")
    from refopt.linesearch import dcsrch
    fn = DCSRCH_FUNCTIONS[case]
    for c1, c2, xtol, stpmin, stpmax in DCSRCH_SETTINGS:
        theirs, stp, task = _scipy_dcsrch_trials(fn, alpha0, c1, c2, xtol, stpmin, stpmax)
        phi = Counted(fn)
        trials = []
        res = dcsrch(lambda a: (trials.append(a), phi(a))[1], *fn(0.0), alpha0=alpha0, c1=c1, c2=c2, xtol=xtol,
                     stpmin=stpmin, stpmax=stpmax, max_evals=99)
        assert trials == theirs
        assert res.nfev == phi.calls == len(trials)
        assert (res.status == "converged") == (task[:4] == b"CONV")
        if res.status == "converged":
            assert res.alpha == stp
            assert_strong_wolfe(res, *fn(0.0), c1, c2)


def test_dcsrch_comparison_can_fail():
    """Where the first trial fails, another search (refopt's N&W zoom) tries other points than scipy's
    DCSRCH: the trial-by-trial comparison above would see a different rule."""
    pytest.importorskip("scipy")
    theirs, _, _ = _scipy_dcsrch_trials(_rosenbrock_line, 1.0, 1e-4, 0.9, 1e-14, 1e-100, 1e100)
    ours = []
    strong_wolfe(lambda a: (ours.append(a), _rosenbrock_line(a))[1], *_rosenbrock_line(0.0), alpha0=1.0)
    assert len(theirs) > 2 and ours[0] == theirs[0] and ours[1:] != theirs[1:]


def _lying(a):      # the slope always says "descending": dcsrch ends on a warning, scipy falls back to wolfe2
    return (a - 0.5) ** 2 - 0.25, -1.0


def _stairs(a):     # values rounded to 1e-3, slopes of the smooth function: wolfe1 fails, wolfe2 converges
    return math.floor(1e3 * (a - 1.0) ** 2) / 1e3, 2.0 * (a - 1.0)


def _lying_near(a):  # a wrong slope near the minimiser: wolfe1 fails, wolfe2 returns its tenth doubling
    return (a - 1) ** 2, 2 * (a - 1) if abs(a - 1) > 0.2 else -0.5


def _kink(a):
    return abs(a - 1) - 0.5 * a, (1.0 if a > 1 else -1.0) - 0.5


WOLFE12_FUNCTIONS = DCSRCH_FUNCTIONS + [_lying, _stairs, _lying_near, _kink]


@pytest.mark.parametrize("case", range(len(WOLFE12_FUNCTIONS)))
@pytest.mark.parametrize("alpha0", [1e-3, 1.0, 1e3])
def test_scipy_wolfe_evaluates_scipys_trial_points(case, alpha0):
    """scipy_wolfe tries scipy's line_search_wolfe1 points, then (where dcsrch fails) its wolfe2 points."""
    sl = pytest.importorskip("scipy.optimize._linesearch")
    from refopt.linesearch import scipy_wolfe
    fn = WOLFE12_FUNCTIONS[case]
    phi0, dphi0 = fn(0.0)
    for c1, c2 in ((1e-4, 0.9), (1e-4, 0.1), (0.3, 0.4)):
        theirs = []

        def f(x):
            theirs.append(float(x[0]))
            return fn(float(x[0]))[0]
        # old_fval/old_old_fval chosen so that scipy's α₁ = min(1, 1.01·2(φ0 − φ_old)/φ'(0)) is alpha0
        old = phi0 - alpha0 * dphi0 / 2.02 if alpha0 < 1 else None
        import warnings
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ret = sl.line_search_wolfe1(f, lambda x: np.array([fn(float(x[0]))[1]]), np.zeros(1), np.ones(1),
                                        np.array([dphi0]), phi0, old, c1=c1, c2=c2, amin=1e-100, amax=1e100)
            if ret[0] is None:
                ret = sl.line_search_wolfe2(f, lambda x: np.array([fn(float(x[0]))[1]]), np.zeros(1), np.ones(1),
                                            np.array([dphi0]), phi0, old, c1=c1, c2=c2, amax=1e100)
        a0 = min(1.0, 1.01 * 2 * (phi0 - old) / dphi0) if old is not None else 1.0
        ours = []
        res = scipy_wolfe(lambda a: (ours.append(a), fn(a))[1], phi0, dphi0, alpha0=a0, c1=c1, c2=c2)
        assert ours == theirs
        # scipy's step, except that refopt never returns a higher value (scipy's untested tenth doubling may be)
        assert res.alpha == (ret[0] if ret[0] is not None and fn(ret[0])[0] < phi0 else 0.0)


def test_dcsrch_statuses_and_non_finite_values():
    """A non-finite trial is backed off from (MINPACK would turn NaN), statuses are refopt's, and failures
    return a decrease or α = 0."""
    from refopt.linesearch import dcsrch
    res = dcsrch(lambda a: (math.inf, math.nan) if a > 2 else _quartic(a), *_quartic(0.0), alpha0=100.0)
    assert res.status == "converged" and res.alpha <= 2
    res = dcsrch(lambda a: (-a, -1.0), 0.0, -1.0, alpha0=1.0, stpmax=10.0)          # unbounded below
    assert res.status == "max_step" and res.alpha == 10.0
    res = dcsrch(lambda a: (1.0 + a, 1.0), 1.0, -1.0, alpha0=1.0, max_evals=5)      # a lying derivative
    assert res.status != "converged" and res.alpha == 0.0 and res.nfev <= 5
    assert dcsrch(lambda a: _quartic(a), 0.0, 1.0).status == "not_descent"
    with pytest.raises(ValueError, match="xtol"):
        dcsrch(_quartic, *_quartic(0.0), xtol=-1.0)
    with pytest.raises(ValueError, match="stpmin"):
        dcsrch(_quartic, *_quartic(0.0), alpha0=1.0, stpmin=2.0)


# --- optax's zoom line search (optax_zoom) ------------------------------------------------------------
from refopt.linesearch import _optax_cubicmin, _optax_quadmin, optax_zoom  # noqa: E402


def _recording(f, df):
    """φ and the list of its trial points."""
    trials = []

    def phi(a):
        trials.append(a)
        return f(a), df(a)
    return phi, trials


def test_optax_zoom_interpolants_closed_form():
    """_cubicmin: x³ − 3x through (0, 0; slope −3), (2, 2), (0.5, −1.375) has its minimiser at 1; with c = a
    (the zoom's first trial) it is 0/0 = NaN. _quadmin: 5(x − 0.3)² from 0 and 1 gives 0.3; a line gives ±inf."""
    assert _optax_cubicmin(0.0, 0.0, -3.0, 2.0, 2.0, 0.5, -1.375) == pytest.approx(1.0, rel=1e-15)
    assert math.isnan(_optax_cubicmin(0.0, 1.0, -1.0, 1.0, 0.5, 0.0, 1.0))
    assert _optax_quadmin(0.0, 0.45, -3.0, 1.0, 2.45) == pytest.approx(0.3, rel=1e-15)
    assert math.isinf(_optax_quadmin(0.0, 1.0, -1.0, 2.0, -1.0))


def test_optax_zoom_safeguards_pick_bisection():
    """φ = 50(α − 0.05)²: the unit step fails; the bracket's cubic is degenerate or NaN (c = a on the first
    zoom trial; a quadratic's three points give A = 0), and the quadratic's minimiser 0.05 lies within 10 % of
    the end of [0, 1] and of [0, 0.5]: bisection, 0.5 then 0.25; the next trial lies inside [0, 0.25]."""
    phi, trials = _recording(lambda a: 50 * (a - 0.05) ** 2, lambda a: 100 * (a - 0.05))
    res = optax_zoom(phi, 50 * 0.05 ** 2, -5.0)
    assert trials[:3] == [1.0, 0.5, 0.25] and 0.025 < trials[3] < 0.225
    assert res.status == "converged" and res.nfev == len(trials)


def test_optax_zoom_doubles_then_zooms():
    """φ = (α − 10)², c₂ = 0.1: doubling 1, 2, 4, 8 (|φ'| > 2), 16 rises above φ(8): the quadratic through
    (8, 4; −4) and (16, 36) gives the minimiser 10."""
    phi, trials = _recording(lambda a: (a - 10) ** 2, lambda a: 2 * (a - 10))
    res = optax_zoom(phi, 100.0, -20.0, c2=0.1)
    assert trials[:5] == [1.0, 2.0, 4.0, 8.0, 16.0] and trials[5] == pytest.approx(10.0, rel=1e-15)
    assert res.status == "converged" and res.nfev == 6


def test_optax_zoom_failures_as_optax():
    """Out of evaluations with no sufficient-decrease point: optax's unsafe step (its last trial, above φ(0));
    with a non-finite last trial: α = 0. With a safe point: the safe point."""
    f, df = (lambda a: 50 * (a - 0.01) ** 2), (lambda a: 100 * (a - 0.01))
    res = optax_zoom(*_recording(f, df)[:1], f(0.0), df(0.0), max_evals=1)
    assert res.alpha == 1.0 and res.phi > f(0.0) and res.status == "max_evaluations"
    res = optax_zoom(lambda a: (math.inf, math.nan), 1.0, -1.0, max_evals=1)
    assert res.alpha == 0.0 and res.phi == 1.0 and res.status == "max_evaluations"
    res = optax_zoom(lambda a: ((a - 50) ** 2, 2 * (a - 50)), 2500.0, -100.0, max_evals=3)
    assert (res.alpha, res.status) == (4.0, "max_evaluations")   # 1, 2, 4 all decrease: the latest kept


def test_optax_zoom_approximate_decrease_and_not_descent():
    """Where φ rose by less than approx_dec_rtol·|φ(0)| and the slope meets H&Z's bounds the step is accepted
    (``approximate``); without approx_dec_rtol it is not. φ'(0) ≥ 0: nothing evaluated."""
    def phi(a):
        return 1e8 + 1.0, -0.5
    res = optax_zoom(phi, 1e8, -1.0)
    assert res.success and res.approximate and res.alpha == 1.0
    assert not optax_zoom(phi, 1e8, -1.0, approx_dec_rtol=None, max_evals=3).approximate
    assert optax_zoom(phi, 1e8, 0.0).status == "not_descent"


def _beyond(limit, f):
    return lambda a: f(a) if a < limit else math.nan


_OPTAX_1D = {   # φ and φ' in Python floats; φ'(0) < 0 for all (optax would search uphill, optax_zoom refuses)
    "overshoot": (lambda a: 100 * (a - 0.01) ** 2 + a ** 4, lambda a: 200 * (a - 0.01) + 4 * a ** 3),
    "extrapolate": (lambda a: (a - 50.0) ** 2, lambda a: 2 * (a - 50.0)),
    "more_thuente_2": (lambda a: (a + 0.004) ** 5 - 2 * (a + 0.004) ** 4,
                       lambda a: 5 * (a + 0.004) ** 4 - 8 * (a + 0.004) ** 3),
    "rosenbrock_line": (lambda a: 100 * ((-1.2 + 2 * a) ** 2 - (1 + 1.5 * a)) ** 2 + (2.2 - 2 * a) ** 2,
                        lambda a: 200 * ((-1.2 + 2 * a) ** 2 - (1 + 1.5 * a)) * (4 * (-1.2 + 2 * a) - 1.5)
                        - 4 * (2.2 - 2 * a)),
    "domain": (_beyond(0.6, lambda a: 2 * (a - 0.5) ** 2 - 0.1 * math.log(0.6 - a)),
               _beyond(0.6, lambda a: 4 * (a - 0.5) + 0.1 / (0.6 - a))),
    "wiggle": (lambda a: -math.sin(13 * a) + 0.1 * (a - 2) ** 2, lambda a: -13 * math.cos(13 * a) + 0.2 * (a - 2))}


def _as_jax_function(jax, f, df):
    """f with derivative df (Python floats) as a JAX function through pure_callback: JAX computes nothing."""
    scalar = jax.ShapeDtypeStruct((), jax.numpy.float64)

    @jax.custom_jvp
    def F(x):
        return jax.pure_callback(lambda v: np.float64(f(float(v))), scalar, x)

    @F.defjvp
    def _jvp(primals, tangents):
        d = jax.pure_callback(lambda v: np.float64(df(float(v))), scalar, primals[0])
        return F(primals[0]), d * tangents[0]
    return F


@pytest.mark.parametrize("max_steps", [20, 3])
def test_optax_zoom_picks_optax_trial_points(max_steps):
    """The trial points of optax.scale_by_zoom_linesearch (optax.lbfgs's settings, jax_enable_x64) on 1-D
    functions whose unit step fails (zoom with the cubic, doubling, a non-finite region, running out of
    steps), recorded inside its compiled search, and optax_zoom's: bit for bit, and the same final step.
    φ reaches optax through pure_callback so both searches see the same values."""
    jax = pytest.importorskip("jax")
    optax = pytest.importorskip("optax")
    jax.config.update("jax_enable_x64", True)
    jnp = jax.numpy
    for name, (f, df) in _OPTAX_1D.items():
        F = _as_jax_function(jax, f, df)
        theirs = []

        def value_fn(x, F=F, theirs=theirs):
            jax.debug.callback(lambda v: theirs.append(float(v)), x, ordered=True)
            return F(x)
        search = optax.scale_by_zoom_linesearch(max_linesearch_steps=max_steps, initial_guess_strategy="one")
        x0 = jnp.asarray(0.0)
        v0, g0 = jax.value_and_grad(F)(x0)
        _, state = search.update(jnp.asarray(1.0), search.init(x0), x0, value=v0, grad=g0, value_fn=value_fn)
        jax.effects_barrier()
        ours = []

        def phi(a, f=f, df=df, ours=ours):
            ours.append(a)
            return f(a), df(a)
        res = optax_zoom(phi, f(0.0), df(0.0), max_evals=max_steps)
        assert len(theirs) > 1 or name == "wiggle", name
        assert ours == theirs, name
        assert res.alpha == float(state.learning_rate), name
