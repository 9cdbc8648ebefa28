"""The ``minimize`` driver: every method reaches known minima; stopping rules, statuses, counts, bad input."""
import math

import numpy as np
import pytest

from refopt import autodiff as ad
from refopt.minimize import FUNCTION_METHODS, minimize
from refopt.optim import optimizer_class
from refopt.optim.lbfgs import LBFGS
from refopt.oracle import FunctionOracle
from refopt.problems.functions import beale, dixon_price, powell_singular, quadratic, rosenbrock, trid, wood

FAST = {"newton", "newton_cg", "trust_ncg", "bfgs", "lbfgs"}


@pytest.mark.parametrize("method", FUNCTION_METHODS)
@pytest.mark.parametrize("make", [rosenbrock, beale, lambda: trid(6), lambda: dixon_price(5),
                                  lambda: quadratic(8, 1e3)])
def test_every_method_reaches_the_known_minimum(method, make):
    p = make()
    r = minimize(p, method=method, gtol=1e-6, maxiter=3000)
    assert r.success and r.status == "gtol", r
    assert r.f - p.f_star <= 1e-9 * max(1.0, abs(p.f_star))
    if p.name != "dixon_price":                      # its minimisers differ only in signs
        assert np.linalg.norm(r.x - p.x_star) <= 1e-4 * max(1.0, np.linalg.norm(p.x_star))
    assert r.grad_norm <= 1e-6 and r.grad_norm == np.abs(p.grad(r.x)).max()
    assert r.history[0] == p.f(p.x0) and r.history[-1] == r.f and len(r.history) == r.nit + 1


@pytest.mark.parametrize("method", sorted(FAST))
def test_counts_are_the_function_calls(method):
    calls = {"f": 0, "g": 0, "hvp": 0}
    p = wood()

    def f(x):
        calls["f"] += 1
        return p.f(x)

    def g(x):
        calls["g"] += 1
        return p.grad(x)

    def hessp(x, v):
        calls["hvp"] += 1
        return p.hvp(x, v)

    r = minimize(f, p.x0, method=method, jac=g, hess=p.hess, hessp=hessp)
    assert r.success
    assert (r.nfev, r.ngev, r.nhvp) == (calls["f"], calls["g"], calls["hvp"])
    if method in ("bfgs", "lbfgs"):
        assert r.nfev == r.ngev and r.nhvp == 0   # one evaluation per point: the accepted trial is reused
    if method == "newton":
        assert r.nhev == r.nit


def test_zero_gradient_at_x0_returns_at_once():
    p = rosenbrock()
    for method in FUNCTION_METHODS:
        r = minimize(p, np.ones(2), method=method)
        assert r.status == "zero_gradient" and r.success and r.nit == 0 and (r.nfev, r.ngev) == (1, 1)
        np.testing.assert_array_equal(r.x, np.ones(2))
    opt = LBFGS()                                          # the optimizer interface: no step, says why
    x, state, info = opt.update(np.ones(2), opt.init(np.ones(2)), p.oracle())
    assert info["message"].startswith("zero gradient") and info["step_norm"] == 0.0 and not info["skipped"]


def test_stopping_rules():
    p = rosenbrock()
    r = minimize(p, method="bfgs", maxiter=5)
    assert r.status == "max_iterations" and r.nit == 5 and not r.success
    r = minimize(p, method="bfgs", max_nfev=10)
    assert r.status == "max_evaluations" and r.nfev >= 10 and not r.success
    assert r.nfev < 10 + 30                                # overrun by at most one line search
    r = minimize(p, method="bfgs", xtol=1e-3)
    assert r.status == "xtol" and r.success
    r2 = minimize(p, method="bfgs", gtol=1e-4, gnorm="2")
    assert r2.status == "gtol" and np.linalg.norm(p.grad(r2.x)) <= 1e-4 and r2.grad_norm == np.linalg.norm(r2.grad)
    stops = []
    r = minimize(p, method="lbfgs", callback=lambda x, info: stops.append(info["loss"]) or len(stops) == 3)
    assert r.status == "callback" and r.nit == 3
    # also on a rejected trust-region trial (f = √(1 + x²) from x = 2 with Δ₀ = 100: the first trial overshoots)
    sqrt = FunctionOracle(lambda x: float(np.sqrt(1 + x[0] ** 2)), grad=lambda x: x / np.sqrt(1 + x ** 2),
                          hvp=lambda x, v: v * (1 + x[0] ** 2) ** -1.5)
    infos = []
    r = minimize(sqrt, np.array([2.0]), method="trust_ncg", options={"initial_radius": 100.0},
                 callback=lambda x, info: infos.append(info) or True)
    assert not infos[0]["accepted"] and r.status == "callback" and r.nit == 1 and len(r.history) == 2
    np.testing.assert_array_equal(r.x, [2.0])


def test_a_non_descent_direction_is_reset_and_reported():
    r = minimize(beale(), method="sr1")
    assert r.resets > 0 and "steepest descent" in r.message and r.success


def test_a_wrong_gradient_never_increases_f():
    for name, wrong in [("negated", lambda x: -rosenbrock().grad(x)),
                        ("garbage", lambda x: np.array([1.0, -1.0]) * (1 + x @ x))]:
        p = rosenbrock()
        for method in ("bfgs", "lbfgs", "sr1", "dfp"):
            r = minimize(p.f, p.x0, method=method, jac=wrong, maxiter=50)
            assert r.f <= p.f(p.x0), (name, method)
            assert r.status in ("step_failed", "max_iterations", "precision", "gtol"), r


def test_non_finite_start_and_non_finite_regions():
    r = minimize(lambda x: float("nan"), np.zeros(2), jac=lambda x: np.zeros(2))
    assert r.status == "nonfinite" and not r.success and r.nit == 0
    # f is +inf left of 0.5 (a barrier): the methods backtrack and never accept it
    f = lambda x: math.inf if x[0] < 0.5 else float((x[0] - 0.7) ** 2 + (x[1] + 1) ** 2)  # noqa: E731
    g = lambda x: np.array([2 * (x[0] - 0.7), 2 * (x[1] + 1)])  # noqa: E731
    for method in ("bfgs", "lbfgs", "newton", "newton_cg"):
        r = minimize(f, np.array([3.0, 2.0]), method=method, jac=g, hess=lambda x: 2 * np.eye(2))
        assert r.success and abs(r.x[0] - 0.7) < 1e-6 and all(math.isfinite(v) for v in r.history)


def test_autodiff_when_no_derivatives_are_given():
    def f(x):                                     # written with refopt's primitives
        return ad.sum(ad.square(x - 3.0)) + ad.sum(ad.exp(0.1 * x))
    r = minimize(f, np.zeros(3), method="newton_cg")
    expected = minimize(f, np.zeros(3), method="bfgs", gtol=1e-9).x
    assert r.success and np.allclose(r.x, expected, atol=1e-5)


def test_powell_singular_where_newton_is_only_linear():
    r = minimize(powell_singular(), method="newton", gtol=1e-9)
    assert r.success and r.f < 1e-12


def test_bad_arguments():
    p = rosenbrock()
    with pytest.raises(ValueError, match="not available for functions"):
        minimize(p, method="gauss_newton")
    with pytest.raises(ValueError, match="needs a network oracle"):
        minimize(p, method="kfac")
    with pytest.raises(ValueError, match="gtol"):
        minimize(p, gtol=-1.0)
    with pytest.raises(ValueError, match="x0"):
        minimize(lambda x: 0.0)
    with pytest.raises(ValueError, match="memory"):
        minimize(p, method="lbfgs", options={"memory": 0})
    with pytest.raises(TypeError):
        minimize(3.0, np.zeros(2))
    r = minimize(p, method=optimizer_class("lbfgs")(memory=3))     # an optimizer instance works too
    assert r.success
    oracle = FunctionOracle(p.f, grad=p.grad)
    oracle.value_and_grad(p.x0)                                    # counts from before the run are excluded
    r = minimize(oracle, p.x0, method="bfgs")
    assert r.nfev == oracle.counts.nfev - 1


def test_rounding_floor_converges_by_slopes_and_a_genuine_precision_stop_stops():
    """Values are a fixed ±ulp pattern above f(x0) (the available decrease is below rounding), the
    gradient is exact: minimize reaches gtol by the approximate Wolfe conditions; without them the first
    search can make no progress and the run stops at once with status "precision" (success False, as
    scipy's status 2)."""
    from _helpers import rounding_floor_oracle  # noqa: PLC0415
    oracle, x0 = rounding_floor_oracle()
    gtol = 1e-6 * np.abs(oracle.grad(x0)).max()          # six orders below the start: only slopes can get there
    for method in ("lbfgs", "bfgs"):
        r = minimize(rounding_floor_oracle()[0], x0, method=method, gtol=gtol)
        assert r.status == "gtol" and r.success, (method, r)
        r = minimize(rounding_floor_oracle()[0], x0, method=method, gtol=gtol, options={"approximate_wolfe": False})
        assert r.status == "precision" and not r.success and r.nit == 1, (method, r)
        assert "rounding level" in r.message
        np.testing.assert_array_equal(r.x, x0)


def test_stall_monitor():
    """The "precision" stop of runs whose values and gradients are both at their noise floor."""
    from refopt.minimize import PRECISION_PATIENCE, StallMonitor  # noqa: PLC0415
    f, ulp = -326.0, 2.0 ** -44
    m = StallMonitor()                       # f jitters by ulps, ‖g‖ by 40 %: noise, stop after the patience
    flags = [m.observe(f + (k % 3) * ulp, 1e-13 * (1 + 0.4 * (k % 2))) for k in range(PRECISION_PATIENCE + 1)]
    assert flags == [False] * PRECISION_PATIENCE + [True] and "no measurable progress" in m.message
    m = StallMonitor()                       # the same, but steps not decided at the rounding level (SGD)
    assert not any(m.observe(f + (k % 3) * ulp, 1e-13, rounding=False) for k in range(100))
    m = StallMonitor()                       # f flat to rounding, but the gradient halves every 3rd iterate
    assert not any(m.observe(f, 1e-6 * 0.5 ** (k // 3)) for k in range(100))
    m = StallMonitor()                       # f falls by 8 ulps an iterate, far below 100 ε max(|f|, 1): progress
    assert not any(m.observe(f - 8 * k * ulp, 1e-13) for k in range(100))
    m = StallMonitor()                       # a zero-minimum f computed to relative ε, falling 5 % an iterate
    assert not any(m.observe(1e-14 * 0.95 ** k, 1e-7) for k in range(300))
    m = StallMonitor()                       # once f has jumped up by 1e-12, falls of 5e-14 an iterate are noise
    m.observe(1e-16, 1e-8)
    m.observe(1e-12 + 1e-16, 1e-8)
    flags = [m.observe(1e-12 - k * 5e-14, 1e-8) for k in range(1, PRECISION_PATIENCE + 1)]
    assert flags[-1] and m.resolution == pytest.approx(1e-12)
    m = StallMonitor(eps=2.0 ** -23)         # float32: f alternating by 1e-6 around 1 is noise (ν = 1e-6)
    assert [m.observe(1.0 + 1e-6 * (k % 2), 1.0) for k in range(PRECISION_PATIENCE + 2)][-1]


def test_precision_stop_does_not_cut_a_slow_but_genuine_run():
    """L-BFGS on ½ Σ λ_i x_i², λ = logspace(0, 4, 50): ‖g‖ oscillates while f falls tenfold every ~40
    iterations down to 1e-25, far below 100 ε; the run must reach gtol, not stop for precision (the rule
    that counted every change of f below 100 ε max(|f|, 1) as noise stopped it at iteration ~800)."""
    lam = np.logspace(0, 4, 50)
    res = minimize(lambda x: 0.5 * float(np.sum(lam * x * x)), np.ones(50), "lbfgs", jac=lambda x: lam * x,
                   gtol=1e-12)
    assert res.status == "gtol" and res.f < 1e-24

def test_at_rounding_level_reads_the_step_info():
    """Which steps count for the stall rule: only line-search steps that worked at f's rounding level."""
    from refopt.minimize import at_rounding_level  # noqa: PLC0415
    assert not at_rounding_level({"loss": 1.0, "new_loss": 1.0})              # no line search (SGD, Adam, ...)
    assert at_rounding_level({"line_search": "precision"})
    assert at_rounding_level({"line_search": "converged", "approximate": True, "loss": 1.0, "new_loss": 0.5})
    assert at_rounding_level({"line_search": "converged", "loss": 1.0, "new_loss": 1.0 - 1e-15})
    assert not at_rounding_level({"line_search": "converged", "loss": 1.0, "new_loss": 1.0 - 1e-12})


# ---------------------------------------------------------------------------------------------------
# Plain Python functions: indexing and NumPy calls traced by the autodiff; every function-oracle method.
def _rosen(x):
    return (1 - x[0]) ** 2 + 100 * (x[1] - x[0] ** 2) ** 2


def _rosen_jac(x):
    return np.array([-2 * (1 - x[0]) - 400 * x[0] * (x[1] - x[0] ** 2), 200 * (x[1] - x[0] ** 2)])


@pytest.mark.parametrize("method", ["bfgs", "lbfgs", "newton", "newton_cg", "trust_ncg"])
def test_rosenbrock_written_with_indexing(method):
    r = minimize(_rosen, np.array([-1.2, 1.0]), method=method, gtol=1e-8)
    assert r.success and np.allclose(r.x, [1.0, 1.0], atol=1e-6)
    assert r.fun == r.f and r.jac is r.grad


@pytest.mark.parametrize("method", ["newton_cg", "trust_ncg"])
def test_newton_cg_with_only_jac_takes_hessian_products_from_the_autodiff(method):
    r = minimize(_rosen, np.array([-1.2, 1.0]), method=method, jac=_rosen_jac, gtol=1e-8)
    assert r.success and r.nhvp > 0 and np.allclose(r.x, [1.0, 1.0], atol=1e-6)


def test_function_written_with_numpy_sum():
    c = np.array([1.0, -2.0, 3.0])
    r = minimize(lambda x: np.sum((x - c) ** 2) + np.sum(np.exp(-x)), np.zeros(3), method="bfgs", gtol=1e-10)
    assert r.success and np.allclose(2 * (r.x - c) - np.exp(-r.x), 0.0, atol=1e-9)


def test_every_function_oracle_method_is_accepted():
    from refopt.minimize import function_methods
    from refopt.optim import OPTIMIZERS, optimizer_class
    names = function_methods()
    assert set(FUNCTION_METHODS) <= set(names) and {"adam", "sgd", "adagrad", "shampoo"} <= set(names)
    assert set(names) == {n for n in OPTIMIZERS if not optimizer_class(n).needs_network}
    for name in names:
        r = minimize(lambda x: np.sum(np.square(x - 1.0)), np.zeros(3), method=name, maxiter=5)
        assert r.nit >= 1 and np.isfinite(r.fun), name


def test_adam_converges_and_counts_one_evaluation_per_step():
    r = minimize(lambda x: np.sum((x - 3.0) ** 2), np.zeros(3), method="adam", options={"lr": 0.1},
                 maxiter=3000, gtol=1e-6)
    assert r.success and r.status == "gtol" and np.allclose(r.x, 3.0, atol=1e-6)
    assert r.nfev == r.nit + 1 and r.ngev == r.nit + 1    # the loop's evaluation is the update's


def test_hess_inv_is_the_bfgs_inverse_matrix():
    A = np.array([[3.0, 1.0], [1.0, 2.0]])
    r = minimize(lambda x: 0.5 * x @ A @ x, np.array([1.0, -1.0]), method="bfgs", gtol=1e-10)
    assert r.success and np.allclose(r.hess_inv, np.linalg.inv(A), atol=1e-6)
    assert minimize(lambda x: 0.5 * x @ A @ x, np.array([1.0, -1.0]), method="lbfgs").hess_inv is None


# ---------------------------------------------------------------------------------------------------
# float(), math.* and NumPy scalars of a traced x are refused (they dropped the derivative: success with a
# wrong answer); scipy's spelling: method names, args=, tol=, jac=True, bounds / constraints refused.
def _scipy():
    return pytest.importorskip("scipy.optimize")


@pytest.mark.parametrize("f", [lambda x: math.exp(x[0]) + x[0] ** 2,              # math calls __float__
                               lambda x: np.float64(x[0]) ** 2 + x[1] ** 2,         # NumPy reads __array__
                               lambda x: float(x[0]) ** 2 + x[1] ** 2,
                               lambda x: np.sum(np.asarray(x) ** 2)])
def test_python_and_numpy_scalars_of_x_are_refused_not_minimised_wrongly(f):
    with pytest.raises(TypeError, match="the derivative would be lost"):
        minimize(f, np.array([1.3, 0.7]))


def test_the_traced_spelling_reaches_scipys_minimiser():
    """exp(x) + x² written with np.exp: the minimiser (e^x + 2x = 0, x ≈ −0.3517) agrees with scipy's BFGS
    on the same function given its hand-written derivative."""
    r = minimize(lambda x: np.exp(x[0]) + x[0] ** 2, np.ones(1), gtol=1e-12)
    s = _scipy().minimize(lambda x: math.exp(x[0]) + x[0] ** 2, np.ones(1), method="BFGS",
                          jac=lambda x: np.array([math.exp(x[0]) + 2 * x[0]]), options={"gtol": 1e-12})
    assert r.success and s.success
    assert abs(r.x[0] - s.x[0]) <= 1e-10 and abs(r.x[0] + 0.35173371124919584) <= 1e-10


SCIPY_NAMES = [("BFGS", "bfgs"), ("bfgs", "bfgs"), ("Newton-CG", "newton_cg"), ("NEWTON-CG", "newton_cg"),
               ("L-BFGS-B", "lbfgs"), ("l-bfgs-b", "lbfgs"), ("trust-ncg", "trust_ncg"), ("Trust-NCG", "trust_ncg"),
               ("LBFGS", "lbfgs"), (None, "bfgs")]


@pytest.mark.parametrize("scipy_name, refopt_name", SCIPY_NAMES)
def test_scipy_method_names_run_refopts_method(scipy_name, refopt_name):
    from refopt.minimize import method_name  # noqa: PLC0415
    assert method_name(scipy_name) == refopt_name
    x0 = np.array([-1.2, 1.0])
    a = minimize(_rosen, x0, method=scipy_name, gtol=1e-9)
    b = minimize(_rosen, x0, method=refopt_name, gtol=1e-9)
    assert a.success and a.nit == b.nit and a.nfev == b.nfev and np.array_equal(a.x, b.x)


def test_scipy_methods_refopt_lacks_and_bounds_are_refused_by_name():
    p = rosenbrock()
    for name in ("CG", "cg", "Nelder-Mead", "Powell", "TNC", "SLSQP", "trust-exact"):
        with pytest.raises(ValueError, match=f"method {name!r}: refopt has no counterpart"):
            minimize(p, method=name)
    with pytest.raises(ValueError, match="closest is 'L-BFGS-B'"):
        minimize(p, method="CG")
    for method in ("L-BFGS-B", "bfgs", optimizer_class("lbfgs")()):
        with pytest.raises(ValueError, match="bounds: refopt has no bound constraints"):
            minimize(_rosen, p.x0, method=method, bounds=[(0.0, 2.0), (0.0, 2.0)])
    with pytest.raises(ValueError, match="constraints: refopt has no constrained methods"):
        minimize(_rosen, p.x0, constraints=[{"type": "eq", "fun": lambda x: x[0]}])
    assert minimize(_rosen, p.x0, constraints=()).success            # scipy's default: nothing to refuse
    with pytest.raises(TypeError, match="third positional parameter is method"):
        minimize(lambda x, a: np.sum((x - a) ** 2), np.zeros(2), (1.0,))
    with pytest.raises(TypeError, match="method must be"):
        minimize(_rosen, p.x0, method=3)


def _quartic(x, a, b):
    return np.sum((x - a) ** 4) + b * np.sum(x ** 2)


def _quartic_grad(x, a, b):
    return 4 * (x - a) ** 3 + 2 * b * x


def _quartic_hess(x, a, b):
    return np.diag(12 * (x - a) ** 2 + 2 * b)


@pytest.mark.parametrize("method", ["BFGS", "Newton-CG", "trust-ncg"])
def test_args_reach_fun_jac_hess_and_hessp_as_in_scipy(method):
    a, b, x0 = np.array([1.0, -2.0, 0.5]), 0.3, np.zeros(3)
    seen = set()

    def fun(x, *args):
        seen.add(("fun", len(args)))
        return _quartic(x, *args)

    def jac(x, *args):
        seen.add(("jac", len(args)))
        return _quartic_grad(x, *args)

    def hessp(x, p, *args):
        seen.add(("hessp", len(args)))
        return _quartic_hess(x, *args) @ p

    kw = {"hessp": hessp} if method != "BFGS" else {}
    r = minimize(fun, x0, method=method, jac=jac, args=(a, b), gtol=1e-10, **kw)
    s = _scipy().minimize(lambda x: _quartic(x, a, b), x0, method=method, jac=lambda x: _quartic_grad(x, a, b),
                          hessp=(lambda x, p: _quartic_hess(x, a, b) @ p) if kw else None,
                          options={"gtol": 1e-10} if method != "Newton-CG" else {"xtol": 1e-12})
    assert r.success and seen == {("fun", 2), ("jac", 2)} | ({("hessp", 2)} if kw else set())
    # the minimiser solves 4 (x − a)³ + 2 b x = 0; both runs are well inside scipy's accuracy of it
    assert np.abs(_quartic_grad(r.x, a, b)).max() <= 1e-10 and np.allclose(r.x, s.x, atol=1e-6)
    r2 = minimize(_quartic, x0, method=method, args=(a, b), gtol=1e-10)      # autodiff of fun(x, *args)
    assert r2.success and np.allclose(r2.x, r.x, atol=1e-8)


def test_args_hess_and_a_single_non_tuple_argument():
    a = np.array([1.0, -2.0, 0.5])
    calls = []
    r = minimize(lambda x, c: np.sum((x - c) ** 2), np.zeros(3), method="newton", args=a,   # scipy: (a,)
                 hess=lambda x, c: calls.append(c) or 2 * np.eye(3))
    assert r.success and np.allclose(r.x, a) and all(c is a for c in calls) and calls
    with pytest.raises(ValueError, match="args= applies to a callable fun"):
        minimize(rosenbrock(), args=(1.0,))


@pytest.mark.parametrize("method, refopt", [("BFGS", "bfgs"), ("L-BFGS-B", "lbfgs"), ("trust-ncg", "trust_ncg"),
                                            ("sr1", "sr1")])
def test_tol_is_gtol_for_the_gradient_methods(method, refopt):
    """scipy's minimize turns tol into gtol for BFGS, L-BFGS-B and trust-ncg; refopt's other methods too."""
    x0 = np.array([-1.2, 1.0])
    for tol in (1e-3, 1e-9):
        r = minimize(_rosen, x0, method=method, tol=tol)
        same = minimize(_rosen, x0, method=refopt, gtol=tol)
        assert r.status == "gtol" and r.grad_norm <= tol and r.nit == same.nit and np.array_equal(r.x, same.x)
    assert minimize(_rosen, x0, method=method, tol=1e-3).nit < minimize(_rosen, x0, method=method, tol=1e-9).nit
    explicit = minimize(_rosen, x0, method=method, tol=1e-3, gtol=1e-9)         # an explicit gtol wins
    assert explicit.grad_norm <= 1e-9
    if method != "sr1":
        s = _scipy().minimize(_rosen, x0, method=method, jac=_rosen_jac, tol=1e-9,
                              hessp=(lambda x, p: rosenbrock().hvp(x, p)) if method == "trust-ncg" else None)
        assert s.success and np.allclose(minimize(_rosen, x0, method=method, tol=1e-9).x, s.x, atol=1e-6)


def test_tol_is_the_step_tolerance_for_newton_cg_as_in_scipy():
    """scipy's Newton-CG reads tol as its step tolerance and has no gradient test: refopt's newton_cg with tol
    runs with xtol = tol and gtol = 0 (unless given)."""
    x0 = np.array([-1.2, 1.0])
    r = minimize(_rosen, x0, method="Newton-CG", tol=1e-4)
    same = minimize(_rosen, x0, method="newton_cg", xtol=1e-4, gtol=0.0)
    assert r.status == "xtol" and r.nit == same.nit and np.array_equal(r.x, same.x)
    assert minimize(_rosen, x0, method="Newton-CG", tol=1e-4, gtol=1e-2).status == "gtol"
    s = _scipy().minimize(_rosen, x0, method="Newton-CG", jac=_rosen_jac, hessp=lambda x, p: rosenbrock().hvp(x, p),
                          tol=1e-10)
    assert s.success and np.allclose(minimize(_rosen, x0, method="Newton-CG", tol=1e-10).x, s.x, atol=1e-8)


@pytest.mark.parametrize("tol", [-1.0, "1e-5", True, float("nan")])
def test_bad_tol_is_refused(tol):
    with pytest.raises(ValueError, match="tol must be a non-negative number"):
        minimize(_rosen, np.zeros(2), tol=tol)


def test_jac_true_calls_fun_once_per_point():
    calls = []

    def fun(x):
        calls.append(x.copy())
        return _rosen(x), _rosen_jac(x)

    r = minimize(fun, np.array([-1.2, 1.0]), jac=True, method="BFGS", gtol=1e-8)
    apart = minimize(_rosen, np.array([-1.2, 1.0]), jac=_rosen_jac, method="bfgs", gtol=1e-8)
    assert r.success and r.nit == apart.nit and np.array_equal(r.x, apart.x)
    assert len(calls) == r.nfev   # BFGS asks value and gradient together: one call each, no repeats
    assert len({c.tobytes() for c in calls}) == len(calls)
    # Newton-CG's Hessian-vector products come from the autodiff of the value that fun returns
    def traced(x):
        return np.sum((x - 1.0) ** 4) + np.sum(x ** 2), 4 * (x - 1.0) ** 3 + 2 * x
    r = minimize(traced, np.zeros(3), method="Newton-CG", jac=True, gtol=1e-10)
    assert r.success and r.nhvp > 0 and np.abs(4 * (r.x - 1) ** 3 + 2 * r.x).max() <= 1e-10
    with pytest.raises(TypeError, match=r"jac=True: fun must return the pair \(f, gradient\)"):
        minimize(_rosen, np.zeros(2), jac=True)


def test_jac_strings_and_flags():
    with pytest.raises(ValueError, match="refopt takes no finite differences"):
        minimize(_rosen, np.zeros(2), jac="2-point")
    with pytest.raises(TypeError, match="hess must be a callable"):
        minimize(_rosen, np.zeros(2), method="newton", hess="3-point")
    a = minimize(_rosen, np.array([-1.2, 1.0]), jac=False)              # scipy's False: not given
    b = minimize(_rosen, np.array([-1.2, 1.0]))
    assert a.success and np.array_equal(a.x, b.x) and a.njev == a.ngev
