"""Line searches on a one-dimensional function φ(α) = f(x + α p).

Every search takes a callback ``phi(alpha) -> (φ(α), φ'(α))`` (φ' may be ``None`` where the search
does not need it), the values φ(0) and φ'(0) < 0 at the start, and returns a ``LineSearchResult``
with the accepted step, φ and φ' there, the number of callback evaluations and a status. A search
never raises on a well-posed problem, however hard: failure is a status, and the step it returns is
then the best point found with φ(α) < φ(0), or α = 0 (stay put) when there is none. A non-finite
φ or φ' at a trial point means "too far": the search backtracks. Invalid *arguments* (c1 ≥ c2, a
non-positive step, NaN, ±inf, a bool, a string or an integer beyond the float range where a number is
expected, ``max_evals`` outside [1, ``MAX_EVALS``]) are programming errors and raise a ``ValueError`` that
names the argument.

Conditions (Nocedal & Wright, *Numerical Optimization*, 2nd ed., 2006, §3.1; Hager & Zhang, "A new
conjugate gradient method with guaranteed descent and an efficient line search", SIAM J. Optim. 16, 2005,
§4, and CG_DESCENT, ACM TOMS 32, 2006):

    sufficient decrease (Armijo, N&W 3.4):  φ(α) ≤ φ(0) + c₁ α φ'(0)
    strong Wolfe curvature (N&W 3.7b):      |φ'(α)| ≤ c₂ |φ'(0)|,        0 < c₁ < c₂ < 1
    approximate Wolfe (H&Z 4.1):            (2c₁ − 1) φ'(0) ≥ φ'(α) ≥ c₂ φ'(0),  used where |φ(α) − φ(0)| ≤ ε_k

Why the approximate conditions: near a minimiser the decrease a step can make, about ½ α |φ'(0)|, falls to
the rounding error of f, and the values can no longer tell a good step from a bad one, while the slopes
still can (on a quadratic the approximate Wolfe upper bound *is* sufficient decrease, written with
slopes: φ(α) − φ(0) = ½ α (φ'(0) + φ'(α))). ε_k is H&Z's "estimate of the error in f": by default
ε_k = ``ROUNDING_FACTOR`` · eps · max(|φ(0)|, 1) = 100 · eps · max(|φ(0)|, 1), eps the unit roundoff
(2⁻⁵² for float64; the Newton family passes its parameters' dtype's). H&Z take ε_k = 10⁻⁶ |f|, far above
rounding; here the switch only decides where the values are within rounding, so a search whose values
resolve the progress takes exactly the steps N&W's algorithms take. The factor 100 covers the error of a
sum of many terms (tens of units of roundoff of the terms; e.g. four units of f ≈ −326 in a dot product);
the floor max(·, 1) is L-BFGS-B's (its factr test) and ``minimize``'s: a loss near 0 is computed from
terms of order 1 (a cross-entropy of 10⁻¹⁶ is logsumexp(z) − z_y, rounded at eps·|z|), so its error is
not eps·|f|. Narrower than H&Z, who use the approximate conditions wherever φ(α) ≤ φ(0) + ε_k; as in
their update rules, in that regime the slope alone decides which end of a bracket a trial replaces.

Guarantee: every returned step has φ(α) ≤ φ(0) + ε_k, and φ(α) ≤ φ(0) unless it was accepted by the
approximate conditions (``result.approximate``); so a search never returns a measurably higher value,
even with a wrong derivative. The one exception is ``optax_zoom``, which keeps optax's outcomes (its
approximate decrease allows φ(0) + 1e-6·|φ(0)|, and a failed search may return its last trial).

* ``armijo``: backtracking, N&W Algorithm 3.1: α ← ρ α until sufficient decrease. Switch
  ``interpolation``: "none" (the algorithm as printed, the default) or "quadratic" (the minimiser of
  the quadratic through φ(0), φ'(0), φ(α), N&W eq. 3.58, safeguarded to [0.1 α, 0.5 α]). No approximate
  conditions (it reads values only), but its failures at rounding level are "precision".
* ``strong_wolfe``: bracketing (N&W Algorithm 3.5) then ``zoom`` (Algorithm 3.6). Trial steps inside
  a bracket come from the cubic interpolating φ and φ' at both ends (N&W eq. 3.59), falling back to the
  quadratic through φ(lo), φ'(lo), φ(hi) and then to bisection when the interpolant has no finite
  minimiser (e.g. φ(hi) is not finite), and clipped to the middle 80 % of the bracket so that the
  bracket shrinks by at least 10 % per trial. While bracketing, the next trial is the
  cubic's extrapolation clipped to [α + 1.1(α − α_prev), α + 4(α − α_prev)] (the extrapolation
  safeguards of Moré & Thuente 1994), never beyond ``alpha_max``. Switch ``approximate`` (default True;
  scipy's and torch's searches have none): at a trial with |φ(α) − φ(0)| ≤ ``epsilon_k`` (None: the
  default above) a step satisfying the approximate Wolfe conditions is accepted, and otherwise φ'(α)
  decides (bracketing: φ' ≥ 0 brackets, φ' < 0 extrapolates; zoom: the trial replaces the end its slope
  points away from). With ``approximate=False`` it is N&W's search, failures at rounding level aside.
  The approximate conditions need H&Z's δ = c₁ < ½ (the upper bound (2c₁ − 1)φ'(0) is then positive and
  the set contains the minimiser); with c₁ ≥ ½ they are off, whatever ``approximate`` says.
* ``fixed_step``: a unit (or given) step, backtracking only on non-finite values: what "no line
  search" means for Newton-type methods.
* ``minfunc_wolfe``: the strong-Wolfe search of Mark Schmidt's minFunc as Torch7's lswolfe.lua and
  torch.optim.LBFGS (``_strong_wolfe``) have it, transcribed so that it picks the same trial points:
  bracketing extrapolates by the cubic of the last two points clipped to [α + 0.01(α − α_prev), 10α];
  the zoom takes the bracket's cubic minimiser (the midpoint when it has none), moved to 10 % of the
  bracket from its nearer end when it falls that close twice in a row or outside; it stops when the
  bracket is shorter than ``tolerance_change`` / max|p| (``direction_scale`` = max|p|) and returns the
  bracket's lower point, which then need not satisfy the conditions (status "interval_collapsed").
  Quirks kept: a rise f(α) ≥ f(α_prev) ends the bracketing only from its third trial on. One change:
  a non-finite φ or φ' is taken as φ = +∞ (torch's search would extrapolate into the non-finite region).
  No approximate conditions and no "precision" status (it must pick torch's points and report torch's
  outcome); drivers classify its failures with ``precision_status`` (``optim.globalisation.search_along`` does).

* ``dcsrch``: MINPACK-2's dcsrch and dcstep (Moré & Thuente, "Line search algorithms with guaranteed
  sufficient decrease", ACM TOMS 20(3), 1994), written here from the algorithm so that it evaluates the
  trial points scipy's ``DCSRCH`` (and L-BFGS-B's lnsrlb) evaluate, bit for bit; defaults L-BFGS-B's
  (c₁ = 1e-3, c₂ = 0.9, xtol = 0.1, stpmin = 0, stpmax = 1e10, 20 evaluations). MINPACK's warnings are
  statuses; a non-finite trial lowers stpmax to halfway back to the best step (MINPACK would compute NaN).
* ``scipy_wolfe``: scipy BFGS's search (``_line_search_wolfe12``): ``dcsrch`` as ``line_search_wolfe1``
  calls it (c₁ = 1e-4, xtol = 1e-14, stpmin = 1e-100, stpmax = 1e100, ≤ 99 evaluations) and, where it
  fails, ``line_search_wolfe2`` (scipy's step doubling and ``_zoom`` with its cubic / quadratic / bisection
  checks) from the same α₀. Neither has approximate conditions; their failures at rounding level are
  "precision".
* ``optax_zoom``: optax's zoom line search (``zoom_linesearch`` / ``scale_by_zoom_linesearch``) with its
  defaults as optax.lbfgs sets them (20 evaluations, first trial 1, doubling, cubic / quadratic / bisection
  zoom, Hager-Zhang approximate decrease within approx_dec_rtol = 1e-6 · |φ(0)|), picking optax's trial points
  to a few units of roundoff; on failure it returns what optax returns, its "unsafe" last trial included.

Statuses: "converged" (the strong Wolfe conditions hold at the returned step, or the approximate ones
with φ(α) within ε_k of φ(0): ``result.approximate``; Armijo: sufficient decrease); "not_descent" (φ'(0)
≥ 0 or not finite: nothing is evaluated, α = 0); "precision" (the search failed and no decrease is
measurable at the rounding level of f: its last trial value is within ε_k of φ(0) and none lies below
φ(0) − ε_k; the step returned is the best one with φ(α) < φ(0), a decrease within rounding, or α = 0;
scipy's "precision loss"); "max_evaluations"; "step_too_small" (α fell below ``min_step``);
"interval_collapsed" (the bracket shrank to rounding level of α); "max_step" (``strong_wolfe`` reached
``alpha_max`` with φ still decreasing; that step satisfies sufficient decrease). Only "converged" means
the conditions hold at the returned step.
"""
from __future__ import annotations

import math
import numbers
from fractions import Fraction
from typing import Callable, NamedTuple, Optional

__all__ = ["LineSearchResult", "armijo", "strong_wolfe", "fixed_step", "minfunc_wolfe", "dcsrch", "scipy_wolfe",
           "optax_zoom", "cubic_minimizer",
           "quadratic_minimizer", "LINE_SEARCHES", "rounding_error", "at_rounding_level", "precision_status",
           "ROUNDING_FACTOR", "FLOAT64_EPS", "MAX_EVALS"]

Phi = Callable[[float], tuple]

FLOAT64_EPS = 2.220446049250313e-16   # unit roundoff 2⁻⁵² of float64, the default dtype's
ROUNDING_FACTOR = 100                 # ε_k = 100 · eps · max(|φ(0)|, 1) (module docs: why)


class LineSearchResult(NamedTuple):
    """What a line search returns: the step α, φ(α) and φ'(α), callback evaluations, status and message."""

    alpha: float            # the accepted step (0.0 when the search found nothing acceptable)
    phi: float              # φ(alpha)
    dphi: Optional[float]   # φ'(alpha), None when it was not evaluated
    nfev: int               # calls of the callback
    status: str             # see the module docs
    message: str = ""
    approximate: bool = False  # accepted by the approximate Wolfe conditions (φ(α) may exceed φ(0) by ≤ ε_k)

    @property
    def success(self) -> bool:
        """Whether the search converged: the conditions hold at ``alpha``."""
        return self.status == "converged"


def _finite(*values) -> bool:
    return all(v is not None and math.isfinite(v) for v in values)


MAX_EVALS = 10_000   # the largest ``max_evals`` (optim.base's MAX_ITERATIONS; a larger one means unbounded work)


def _as_float(value) -> Optional[float]:
    """``value`` as a Python float (possibly ±inf or NaN) if it is one real number: a Python or NumPy scalar or
    a 0-d array (a loss on the device); None for a bool, a string, bytes, a complex number, an array with
    axes, None, anything without ``__float__``, and an integer beyond the float range (10**400; where
    ``math.isfinite`` would raise OverflowError)."""
    if value is None or isinstance(value, (bool, str, bytes, complex)) or type(value).__name__ in ("bool_", "bool") \
            or getattr(value, "ndim", 0) != 0 or getattr(value, "dtype", None) is not None and value.dtype.kind in "bc":
        return None
    try:
        return float(value)
    except (TypeError, ValueError, OverflowError):
        return None


def _real_arg(name: str, value, low: float = 0.0, high: float = math.inf, low_open: bool = True,
              high_open: bool = True) -> float:
    """A finite real argument in the interval (low, high) (ends closed where ``*_open`` is False), as a float;
    ValueError naming ``name`` otherwise (NaN, ±inf, bools, strings, huge integers included)."""
    x = _as_float(value)
    ok = x is not None and math.isfinite(x) and (x > low if low_open else x >= low) \
        and (x < high if high_open else x <= high)
    if not ok:
        lo, hi = ("(" if low_open else "[") + f"{low:g}", f"{high:g}" + (")" if high_open else "]")
        raise ValueError(f"{name} must be a finite real number in {lo}, {hi}, got {_show(value)}")
    return x


def _show(value) -> str:
    """A short repr for messages (a huge integer by its size: str() of one over 4300 digits raises)."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > 10 ** 18:
        return f"an integer of {value.bit_length()} bits"
    try:
        text = repr(value)
    except Exception:  # noqa: BLE001 - a broken __repr__ must not hide the argument's name
        text = f"<{type(value).__name__}>"
    return text if len(text) <= 80 else text[:77] + "..."


def _check_common(phi0, dphi0, alpha0, max_evals, dphi0_optional: bool = False) -> None:
    """Check the arguments every search takes (ValueError naming the bad one). φ(0) and φ'(0) are only
    checked, not converted (a float32 loss stays one in the result); a non-finite φ'(0) is allowed (the
    search returns "not_descent"), a non-number (a string, a bool, 10**400) is not."""
    _real_arg("alpha0", alpha0)
    if isinstance(max_evals, bool) or not isinstance(max_evals, numbers.Integral) \
            or not 1 <= int(max_evals) <= MAX_EVALS:
        raise ValueError(f"max_evals must be an integer in [1, {MAX_EVALS}], got {_show(max_evals)}")
    f0 = _as_float(phi0)
    if f0 is None or not math.isfinite(f0):
        raise ValueError(f"phi0 must be a finite real number (the search starts from a valid point), "
                         f"got {_show(phi0)}")
    if dphi0 is None and dphi0_optional:
        return
    if _as_float(dphi0) is None:
        raise ValueError(f"dphi0 must be a real number, got {_show(dphi0)}")


def _check_bool(name: str, value) -> bool:
    if isinstance(value, bool) or type(value).__name__ in ("bool_", "bool") and type(value).__module__ == "numpy":
        return bool(value)
    raise ValueError(f"{name} must be True or False, got {_show(value)}")


def _not_descent(phi0, dphi0) -> LineSearchResult:
    return LineSearchResult(0.0, phi0, dphi0, 0, "not_descent",
                            f"φ'(0) = {dphi0!r} is not negative: p is not a descent direction")


def quadratic_minimizer(a: float, fa: float, da: float, b: float, fb: float) -> float:
    """Minimiser of the quadratic with value fa and slope da at a and value fb at b (N&W eq. 3.58)."""
    d = b - a
    denom = 2.0 * (fb - fa - da * d)
    if denom <= 0 or not math.isfinite(denom):
        return math.nan
    return a - da * d * d / denom


def cubic_minimizer(a: float, fa: float, da: float, b: float, fb: float, db: float) -> float:
    """Minimiser of the cubic matching value and slope at a and b (N&W eq. 3.59); NaN if none."""
    if a == b:
        return math.nan
    d1 = da + db - 3.0 * (fa - fb) / (a - b)
    disc = d1 * d1 - da * db
    if not math.isfinite(disc) or disc < 0:
        return math.nan
    d2 = math.copysign(math.sqrt(disc), b - a)
    denom = db - da + 2.0 * d2
    if denom == 0 or not math.isfinite(denom):
        return math.nan
    return b - (b - a) * (db + d2 - d1) / denom


def armijo(phi: Phi, phi0: float, dphi0: float, alpha0: float = 1.0, c1: float = 1e-4, rho: float = 0.5,
           interpolation: str = "none", max_evals: int = 30, min_step: float = 1e-20,
           epsilon_k: Optional[float] = None) -> LineSearchResult:
    """Backtracking until φ(α) ≤ φ(0) + c₁ α φ'(0) (N&W Algorithm 3.1); a failure among values within
    ``epsilon_k`` of φ(0) is reported as "precision" (see the module docs)."""
    _check_common(phi0, dphi0, alpha0, max_evals)
    eps_k = _check_epsilon_k(epsilon_k, phi0)
    c1 = _real_arg("c1", c1, 0.0, 1.0)
    rho = _real_arg("rho", rho, 0.0, 1.0)
    min_step = _real_arg("min_step", min_step, low_open=False)
    if not (isinstance(interpolation, str) and interpolation in ("none", "quadratic")):
        raise ValueError(f"interpolation must be 'none' or 'quadratic', got {_show(interpolation)}")
    if not (_finite(dphi0) and dphi0 < 0):
        return _not_descent(phi0, dphi0)
    alpha, nfev, values = float(alpha0), 0, []
    while nfev < max_evals:
        if alpha < min_step:
            return precision_status(LineSearchResult(0.0, phi0, dphi0, nfev, "step_too_small",
                                                     f"no sufficient decrease for steps down to {min_step:g}"),
                                    phi0, values, eps_k)
        f, d = phi(alpha)
        nfev += 1
        usable = _finite(f) and (d is None or _finite(d))
        values.append(f if usable else math.nan)
        if usable and f <= phi0 + c1 * alpha * dphi0:
            return LineSearchResult(alpha, f, d, nfev, "converged")
        new = math.nan
        if usable and interpolation == "quadratic":
            new = quadratic_minimizer(0.0, phi0, dphi0, alpha, f)
            if _finite(new):
                new = min(max(new, 0.1 * alpha), 0.5 * alpha)  # safeguard: shrink by 2 to 10
        alpha = new if _finite(new) else rho * alpha
    return precision_status(LineSearchResult(0.0, phi0, dphi0, nfev, "max_evaluations",
                                             f"no sufficient decrease within {max_evals} evaluations"),
                            phi0, values, eps_k)


def fixed_step(phi: Phi, phi0: float, dphi0: Optional[float] = None, alpha0: float = 1.0, rho: float = 0.5,
               max_evals: int = 30) -> LineSearchResult:
    """Take α = alpha0 whatever φ(α) is, backtracking by ``rho`` only while φ or φ' is not finite."""
    _check_common(phi0, dphi0, alpha0, max_evals, dphi0_optional=True)
    rho = _real_arg("rho", rho, 0.0, 1.0)
    alpha = float(alpha0)
    for nfev in range(1, max_evals + 1):
        f, d = phi(alpha)
        if _finite(f) and (d is None or _finite(d)):
            return LineSearchResult(alpha, f, d, nfev, "converged")
        alpha *= rho
    return LineSearchResult(0.0, phi0, dphi0, max_evals, "max_evaluations",
                            f"no finite value within {max_evals} backtracking steps")


def strong_wolfe(phi: Phi, phi0: float, dphi0: float, alpha0: float = 1.0, c1: float = 1e-4, c2: float = 0.9,
                 alpha_max: float = 1e10, max_evals: int = 30, approximate: bool = True,
                 epsilon_k: Optional[float] = None) -> LineSearchResult:
    """A step satisfying the strong Wolfe conditions (N&W Algorithms 3.5 and 3.6) or, where φ(α) is within
    ``epsilon_k`` of φ(0), Hager & Zhang's approximate Wolfe conditions (``approximate``, used only when
    c1 < ½); see the module docs."""
    _check_common(phi0, dphi0, alpha0, max_evals)
    c1, c2 = _check_c1_c2(c1, c2)
    alpha_max = _real_arg("alpha_max", alpha_max)
    if not alpha_max >= alpha0:
        raise ValueError(f"alpha_max ({alpha_max!r}) must be at least alpha0 ({alpha0!r})")
    # H&Z's δ = c₁ must be < ½ (their upper bound (2δ − 1)φ'(0) is then positive): otherwise the approximate
    # conditions are off and the search is N&W's (the optimizers accept any 0 < c₁ < c₂ < 1)
    approximate = _check_bool("approximate", approximate) and c1 < 0.5
    eps_k = _check_epsilon_k(epsilon_k, phi0)
    if not (_finite(dphi0) and dphi0 < 0):
        return _not_descent(phi0, dphi0)

    nfev = 0
    values: list = []       # φ at every trial, in order (for the "precision" classification)

    def evaluate(a):
        nonlocal nfev
        f, d = phi(a)
        nfev += 1
        values.append(f if _finite(f, d) else math.nan)
        return f, d

    def armijo_ok(a, f):
        return f <= phi0 + c1 * a * dphi0

    def curvature_ok(d):
        return abs(d) <= -c2 * dphi0

    def rounding_regime(f, d):
        # φ(α) − φ(0) is within the error of f: values cannot order the trials, slopes decide (H&Z §4)
        return approximate and _finite(f, d) and abs(f - phi0) <= eps_k

    def approximate_ok(d):
        # H&Z (2005) eq. 4.1 (δ = c₁, σ = c₂): (2δ − 1) φ'(0) ≥ φ'(α) ≥ σ φ'(0)
        return c2 * dphi0 <= d <= (2.0 * c1 - 1.0) * dphi0

    def accept_approximate(a, f, d):
        return LineSearchResult(a, f, d, nfev, "converged", "approximate Wolfe conditions (Hager & Zhang 2005): "
                                f"φ(α) − φ(0) = {f - phi0:.3g} is within ε_k = {eps_k:.3g}", True)

    def finish(result):
        return precision_status(_fallback(result, phi0, dphi0), phi0, values, eps_k)

    def zoom(lo, f_lo, d_lo, hi, f_hi, d_hi):
        """N&W Algorithm 3.6. Invariants: (hi − lo) φ'(lo) < 0, so a Wolfe point lies between them; lo
        satisfies sufficient decrease with the lowest φ seen, or (rounding regime) φ(lo) is within ε_k of φ(0)."""
        while nfev < max_evals:
            left, right = min(lo, hi), max(lo, hi)
            width = right - left
            if width <= 1e-14 * max(1.0, right):
                return finish(LineSearchResult(lo, f_lo, d_lo, nfev, "interval_collapsed",
                                               f"the bracket shrank to [{left:.17g}, {right:.17g}]"))
            a = math.nan
            if _finite(f_hi, d_hi):
                a = cubic_minimizer(lo, f_lo, d_lo, hi, f_hi, d_hi)
            if not _finite(a) and _finite(f_hi):
                a = quadratic_minimizer(lo, f_lo, d_lo, hi, f_hi)
            if not _finite(a):
                a = 0.5 * (lo + hi)
            # safeguard: at least 10 % of the bracket away from either end, so it shrinks every time
            a = min(max(a, left + 0.1 * width), right - 0.1 * width)
            f, d = evaluate(a)
            if rounding_regime(f, d):
                if armijo_ok(a, f) and f < f_lo and curvature_ok(d):
                    return LineSearchResult(a, f, d, nfev, "converged")
                if approximate_ok(d):
                    return accept_approximate(a, f, d)
                # H&Z's update (U2–U3 with ε_k): keep the end whose slope points at a
                if d * (hi - lo) >= 0:
                    hi, f_hi, d_hi = a, f, d
                else:
                    lo, f_lo, d_lo = a, f, d
            elif not _finite(f, d) or not armijo_ok(a, f) or f >= f_lo:
                hi, f_hi, d_hi = a, f, d
            else:
                if curvature_ok(d):
                    return LineSearchResult(a, f, d, nfev, "converged")
                if d * (hi - lo) >= 0:
                    hi, f_hi, d_hi = lo, f_lo, d_lo
                lo, f_lo, d_lo = a, f, d
        return finish(LineSearchResult(lo, f_lo, d_lo, nfev, "max_evaluations",
                                       f"zoom found no strong Wolfe point within {max_evals} evaluations"))

    a_prev, f_prev, d_prev = 0.0, phi0, dphi0
    a = float(alpha0)
    first = True
    while nfev < max_evals:
        f, d = evaluate(a)
        rising = not _finite(f, d) or not armijo_ok(a, f) or (not first and f >= f_prev)
        if not rising and curvature_ok(d):
            return LineSearchResult(a, f, d, nfev, "converged")
        if rounding_regime(f, d):
            if approximate_ok(d):
                return accept_approximate(a, f, d)
            if d >= 0:
                return zoom(a_prev, f_prev, d_prev, a, f, d)
            # still descending steeply by the slope, whatever the values say: extrapolate
        elif rising:
            return zoom(a_prev, f_prev, d_prev, a, f, d)
        elif d >= 0:
            return zoom(a, f, d, a_prev, f_prev, d_prev)
        if a >= alpha_max:
            if not armijo_ok(a, f):
                return finish(LineSearchResult(a, f, d, nfev, "max_step", f"reached alpha_max={alpha_max:g}"))
            return LineSearchResult(a, f, d, nfev, "max_step", f"reached alpha_max={alpha_max:g} still descending")
        # φ still decreases steeply at a: extrapolate (cubic, clipped as in Moré & Thuente 1994).
        lo_bound, hi_bound = a + 1.1 * (a - a_prev), a + 4.0 * (a - a_prev)
        guess = cubic_minimizer(a_prev, f_prev, d_prev, a, f, d)
        nxt = min(max(guess, lo_bound), hi_bound) if _finite(guess) and guess > a else hi_bound
        a_prev, f_prev, d_prev = a, f, d
        a = min(nxt, alpha_max)
        first = False
    return finish(LineSearchResult(a_prev, f_prev, d_prev, nfev, "max_evaluations",
                                   f"bracketing found no strong Wolfe point within {max_evals} evaluations"))


def _fallback(result: LineSearchResult, phi0: float, dphi0: float) -> LineSearchResult:
    """A failed search keeps its best sufficient-decrease point, or stays at α = 0."""
    if result.status == "converged":
        return result
    if result.alpha > 0 and _finite(result.phi) and result.phi < phi0:
        return result
    return LineSearchResult(0.0, phi0, dphi0, result.nfev, result.status, result.message)


def rounding_error(phi0: float, eps: float = FLOAT64_EPS) -> float:
    """The default ε_k: ``ROUNDING_FACTOR`` · eps · max(|φ(0)|, 1), an estimate of the error of f's values
    (``eps`` the unit roundoff of the dtype f is computed in; see the module docs)."""
    return ROUNDING_FACTOR * eps * max(abs(phi0), 1.0)


def _check_epsilon_k(epsilon_k, phi0: float) -> float:
    if epsilon_k is None:
        return rounding_error(phi0)
    x = _as_float(epsilon_k)
    if x is None or not math.isfinite(x) or x < 0:
        raise ValueError(f"epsilon_k must be a non-negative finite number or None, got {_show(epsilon_k)}")
    return x


def _check_c1_c2(c1, c2) -> tuple:
    c1, c2 = _real_arg("c1", c1, 0.0, 1.0), _real_arg("c2", c2, 0.0, 1.0)
    if not c1 < c2:
        raise ValueError(f"need 0 < c1 < c2 < 1, got c1={c1!r}, c2={c2!r}")
    return c1, c2


def at_rounding_level(phi0: float, values, epsilon_k: float) -> bool:
    """Whether trial values ``values`` (in the order evaluated; non-finite ones as NaN) show no decrease
    measurable at the rounding level of f: the last is finite and within ``epsilon_k`` of φ(0), and none
    lies below φ(0) − ``epsilon_k``."""
    values = [float(v) for v in values]
    if not values or not _finite(values[-1]) or abs(values[-1] - phi0) > epsilon_k:
        return False
    return all(not v < phi0 - epsilon_k for v in values if _finite(v))


def precision_status(result: LineSearchResult, phi0: float, values, epsilon_k: float) -> LineSearchResult:
    """``result`` with status "precision" when it is a failure (not "converged" or "not_descent") whose
    trial values ``values`` are at rounding level (``at_rounding_level``); else ``result`` itself."""
    if result.status in ("converged", "not_descent", "precision"):
        return result
    if not at_rounding_level(phi0, values, epsilon_k):
        return result
    return result._replace(status="precision",
                           message=f"no decrease is measurable at the rounding level of f (ε_k = {epsilon_k:.3g}; "
                                   f"the search ended with {result.status}: {result.message})")


def _minfunc_cubic(x1: float, f1: float, g1: float, x2: float, f2: float, g2: float, bounds=None) -> float:
    """minFunc's polyinterp for two points with values and slopes, clipped to ``bounds`` (default the
    interval); the interval's midpoint when the cubic has no real minimiser."""
    lo, hi = bounds if bounds is not None else ((x1, x2) if x1 <= x2 else (x2, x1))
    d1 = g1 + g2 - 3.0 * (f1 - f2) / (x1 - x2)
    disc = d1 * d1 - g1 * g2
    if disc >= 0:
        d2 = math.sqrt(disc)
        if x1 <= x2:
            m = x2 - (x2 - x1) * ((g2 + d2 - d1) / (g2 - g1 + 2.0 * d2))
        else:
            m = x1 - (x1 - x2) * ((g1 + d2 - d1) / (g1 - g2 + 2.0 * d2))
        return min(max(m, lo), hi)
    return (lo + hi) / 2.0


def minfunc_wolfe(phi: Phi, phi0: float, dphi0: float, alpha0: float = 1.0, c1: float = 1e-4, c2: float = 0.9,
                  max_evals: int = 26, tolerance_change: float = 1e-9, direction_scale: float = 1.0
                  ) -> LineSearchResult:
    """minFunc's strong-Wolfe search as torch.optim.LBFGS runs it (see the module docs); ``max_evals`` is
    torch's max_ls + 1 (the first trial is not counted by torch's max_ls = 25)."""
    _check_common(phi0, dphi0, alpha0, max_evals)
    c1, c2 = _check_c1_c2(c1, c2)
    tolerance_change = _real_arg("tolerance_change", tolerance_change, low_open=False)
    if not (_finite(dphi0) and dphi0 < 0):
        return _not_descent(phi0, dphi0)
    # max|p| from the caller: checked after the descent test (a p with NaN entries is "not_descent")
    direction_scale = _real_arg("direction_scale", direction_scale, low_open=False)
    max_ls = max_evals - 1

    def evaluate(t):
        # torch's search has no notion of a non-finite trial; refopt's contract: it is "too far" (φ = +∞)
        f, d = phi(t)
        return (f, d) if _finite(f, d) else (math.inf, math.nan)

    t = float(alpha0)
    f_new, d_new = evaluate(t)
    nfev = 1
    t_prev, f_prev, d_prev = 0.0, phi0, dphi0
    done, ls_iter = False, 0
    bracket = bracket_f = bracket_d = None
    while ls_iter < max_ls:
        if f_new > phi0 + c1 * t * dphi0 or (ls_iter > 1 and f_new >= f_prev):
            bracket, bracket_f, bracket_d = [t_prev, t], [f_prev, f_new], [d_prev, d_new]
            break
        if abs(d_new) <= -c2 * dphi0:
            bracket, bracket_f, bracket_d, done = [t], [f_new], [d_new], True
            break
        if d_new >= 0:
            bracket, bracket_f, bracket_d = [t_prev, t], [f_prev, f_new], [d_prev, d_new]
            break
        tmp = t
        t = _minfunc_cubic(t_prev, f_prev, d_prev, t, f_new, d_new, bounds=(t + 0.01 * (t - t_prev), t * 10))
        t_prev, f_prev, d_prev = tmp, f_new, d_new
        f_new, d_new = evaluate(t)
        nfev += 1
        ls_iter += 1
    if ls_iter == max_ls:
        bracket, bracket_f, bracket_d = [0.0, t], [phi0, f_new], [dphi0, d_new]
    low, high = (0, 1) if bracket_f[0] <= bracket_f[-1] else (1, 0)
    insufficient = False
    status = "converged" if done else "max_evaluations"
    while not done and ls_iter < max_ls:
        if abs(bracket[1] - bracket[0]) * direction_scale < tolerance_change:
            status = "interval_collapsed"
            break
        t = _minfunc_cubic(bracket[0], bracket_f[0], bracket_d[0], bracket[1], bracket_f[1], bracket_d[1])
        eps = 0.1 * (max(bracket) - min(bracket))
        if min(max(bracket) - t, t - min(bracket)) < eps:
            if insufficient or t >= max(bracket) or t <= min(bracket):
                t = max(bracket) - eps if abs(t - max(bracket)) < abs(t - min(bracket)) else min(bracket) + eps
                insufficient = False
            else:
                insufficient = True
        else:
            insufficient = False
        f_new, d_new = evaluate(t)
        nfev += 1
        ls_iter += 1
        if f_new > phi0 + c1 * t * dphi0 or f_new >= bracket_f[low]:
            bracket[high], bracket_f[high], bracket_d[high] = t, f_new, d_new
            low, high = (0, 1) if bracket_f[0] <= bracket_f[1] else (1, 0)
        else:
            if abs(d_new) <= -c2 * dphi0:
                done, status = True, "converged"
            elif d_new * (bracket[high] - bracket[low]) >= 0:
                bracket[high], bracket_f[high], bracket_d[high] = bracket[low], bracket_f[low], bracket_d[low]
            bracket[low], bracket_f[low], bracket_d[low] = t, f_new, d_new
    return LineSearchResult(bracket[low], bracket_f[low], bracket_d[low], nfev, status)


LINE_SEARCHES = ("strong_wolfe", "armijo", "none")


# --- MINPACK-2's dcsrch (Moré & Thuente 1994) and scipy's line_search_wolfe1 → wolfe2 -----------------
def _sign(v: float) -> float:
    return 1.0 if v > 0 else -1.0 if v < 0 else 0.0 if v == 0 else math.nan


def _sqrt(v: float) -> float:
    # NaN for a negative or NaN argument (Fortran's / NumPy's sqrt), where math.sqrt raises
    return math.sqrt(v) if v >= 0 else math.nan


def _dcstep_gamma(theta: float, da: float, db: float, negate: bool, clip: bool = False) -> float:
    """dcstep's γ = ±s·√((θ/s)² − (da/s)(db/s)), s = max(|θ|, |da|, |db|) (the radicand clipped at 0 with
    ``clip``, MINPACK's case 3), in MINPACK's order of operations."""
    s = max(abs(theta), abs(da), abs(db))
    disc = (theta / s) ** 2 - (da / s) * (db / s)
    gamma = s * _sqrt(max(0.0, disc) if clip else disc)
    return -gamma if negate else gamma


def _dcstep_cubic(a: float, da: float, b: float, db: float, theta: float) -> float:
    """dcstep's cubic step from a toward b (slopes da, db; θ as the caller forms it, MINPACK's addition
    order differing between cases): a + (p/q)(b − a), p = (γ − da) + θ, q = ((γ − da) + γ) + db."""
    gamma = _dcstep_gamma(theta, da, db, a > b)
    p = (gamma - da) + theta
    q = ((gamma - da) + gamma) + db
    return a + (p / q) * (b - a)


def _dcstep(stx, fx, dx, sty, fy, dy, stp, fp, dp, brackt, stpmin, stpmax) -> tuple:
    """MINPACK-2 dcstep (Moré & Thuente 1994, §4): the safeguarded trial step and the updated interval.

    (stx, fx, dx) is the best step so far, (sty, fy, dy) the interval's other end, (stp, fp, dp) the
    trial. Four cases: (1) fp > fx: a minimiser is bracketed; the cubic step if it is closer to stx than
    the quadratic (values at both ends, slope at stx), else their mean. (2) The slopes have opposite
    signs: bracketed; the cubic or the secant step, whichever is farther from stp. (3) |dp| < |dx|, same
    sign: the cubic step if it lies beyond stp (else stpmin / stpmax), or the secant step, whichever is
    nearer (bracketed: clipped to 66 % of the way to sty) or farther (not bracketed: clipped to
    [stpmin, stpmax]). (4) |dp| ≥ |dx|: the cubic through stp and sty if bracketed, else stpmin / stpmax.
    Returns (stx, fx, dx, sty, fy, dy, new stp, brackt); arithmetic in MINPACK's order (rounding included)."""
    sgnd = _sign(dp) * _sign(dx)
    if fp > fx:                                                         # case 1
        stpc = _dcstep_cubic(stx, dx, stp, dp, 3.0 * (fx - fp) / (stp - stx) + dx + dp)
        stpq = stx + ((dx / ((fx - fp) / (stp - stx) + dx)) / 2.0) * (stp - stx)
        stpf = stpc if abs(stpc - stx) <= abs(stpq - stx) else stpc + (stpq - stpc) / 2.0
        brackt = True
    elif sgnd < 0.0:                                                    # case 2
        stpc = _dcstep_cubic(stp, dp, stx, dx, 3.0 * (fx - fp) / (stp - stx) + dx + dp)
        stpq = stp + (dp / (dp - dx)) * (stx - stp)
        stpf = stpc if abs(stpc - stp) > abs(stpq - stp) else stpq
        brackt = True
    elif abs(dp) < abs(dx):                                             # case 3
        theta = 3.0 * (fx - fp) / (stp - stx) + dx + dp
        # the cubic may have no real minimiser here: γ = 0 then (MINPACK's max(0, ·))
        gamma = _dcstep_gamma(theta, dx, dp, stp > stx, clip=True)
        p = (gamma - dp) + theta
        q = (gamma + (dx - dp)) + gamma
        r = p / q
        if r < 0 and gamma != 0:
            stpc = stp + r * (stx - stp)
        elif stp > stx:
            stpc = stpmax
        else:
            stpc = stpmin
        stpq = stp + (dp / (dp - dx)) * (stx - stp)
        if brackt:
            stpf = stpc if abs(stpc - stp) < abs(stpq - stp) else stpq
            if stp > stx:
                stpf = min(stp + 0.66 * (sty - stp), stpf)
            else:
                stpf = max(stp + 0.66 * (sty - stp), stpf)
        else:
            stpf = stpc if abs(stpc - stp) > abs(stpq - stp) else stpq
            stpf = min(max(stpf, stpmin), stpmax)
    elif brackt:                                                        # case 4
        stpf = _dcstep_cubic(stp, dp, sty, dy, 3.0 * (fp - fy) / (sty - stp) + dy + dp)
    else:
        stpf = stpmax if stp > stx else stpmin
    # the interval update: a higher value becomes the far end; otherwise stp is the new best point
    if fp > fx:
        sty, fy, dy = stp, fp, dp
    else:
        if sgnd < 0:
            sty, fy, dy = stx, fx, dx
        stx, fx, dx = stp, fp, dp
    return stx, fx, dx, sty, fy, dy, stpf, brackt


def dcsrch(phi: Phi, phi0: float, dphi0: float, alpha0: float = 1.0, c1: float = 1e-3, c2: float = 0.9,
           xtol: float = 0.1, stpmin: float = 0.0, stpmax: float = 1e10, max_evals: int = 20,
           epsilon_k: Optional[float] = None) -> LineSearchResult:
    """MINPACK-2's dcsrch (Moré & Thuente 1994): a step with φ(α) ≤ φ(0) + c₁αφ'(0) and |φ'(α)| ≤ c₂|φ'(0)|.

    The defaults are L-BFGS-B's (lnsrlb: ftol = 1e-3, gtol = 0.9, xtol = 0.1, stpmin = 0, stpmax = 1e10,
    at most 20 evaluations); scipy's ``line_search_wolfe1`` calls it with c₁ = 1e-4, xtol = 1e-14,
    stpmin = 1e-100, stpmax = 1e100 and 99 evaluations (``scipy_wolfe``). Each trial is one evaluation.

    Moré & Thuente's algorithm: an interval [stx, sty] holding a step that satisfies both conditions is
    kept; while no trial has both ψ(α) = φ(α) − φ(0) − c₁αφ'(0) ≤ 0 and φ'(α) ≥ 0 (stage 1), dcstep works
    on the modified ψ, afterwards on φ. Before bracketing, trials extrapolate within
    [α + 1.1(α − stx), α + 4(α − stx)]; once bracketed, a trial that does not shrink the interval by a
    third (its width vs 0.66 of the width two trials ago) is replaced by bisection. Ends with
    "converged"; "interval_collapsed" (MINPACK's "rounding errors prevent progress" or "xtol test
    satisfied": the interval is within xtol·stmax); "max_step" / "step_too_small" (the step reached stpmax
    still descending, or stpmin without decrease); "max_evaluations". A failed search returns the trial
    MINPACK ends on (on a warning; for the rounding and xtol warnings that is the best step stx) or, out of
    evaluations, stx — when φ is below φ(0) there, else α = 0 (as the module's other searches; L-BFGS-B
    takes the last trial); failures among values within ``epsilon_k`` are "precision". A non-finite φ or φ' (where
    MINPACK's arithmetic gives NaN) lowers stpmax to the midpoint between stx and that trial, and the
    search goes on from there.
    """
    _check_common(phi0, dphi0, alpha0, max_evals)
    c1, c2 = _check_c1_c2(c1, c2)
    xtol = _real_arg("xtol", xtol, low_open=False)
    stpmin = _real_arg("stpmin", stpmin, low_open=False)
    stpmax = _real_arg("stpmax", stpmax)
    if not stpmin <= alpha0 <= stpmax:
        raise ValueError(f"need stpmin <= alpha0 <= stpmax, got {stpmin!r}, {alpha0!r}, {stpmax!r}")
    eps_k = _check_epsilon_k(epsilon_k, phi0)
    if not (_finite(dphi0) and dphi0 < 0):
        return _not_descent(phi0, dphi0)
    finit, ginit = float(phi0), float(dphi0)
    gtest = c1 * ginit
    width = stpmax - stpmin
    width1 = width / 0.5
    brackt, stage = False, 1
    stx, fx, gx = 0.0, finit, ginit
    sty, fy, gy = 0.0, finit, ginit
    stp = float(alpha0)
    stmin, stmax = 0.0, stp + 4.0 * stp
    values: list = []
    seen: dict = {}         # (φ, φ') at every finite trial, as the callback returned them

    def failed(status, message, at):
        f, g = seen.get(at, (math.inf, math.nan))
        return precision_status(_fallback(LineSearchResult(at, f, g, len(values), status, message), phi0, dphi0),
                                phi0, values, eps_k)

    while len(values) < max_evals:
        f, g = phi(stp)
        if not _finite(f, g):
            # too far: MINPACK has no notion of it (its arithmetic turns NaN); cap the step and back off
            values.append(math.nan)
            stpmax = stx + 0.5 * (stp - stx)
            if not stpmax > stx or stpmax < stpmin:
                return failed("step_too_small", "non-finite values down to the best step", stx)
            stp = stpmax
            stmax = min(stmax, stpmax)
            continue
        values.append(f)
        seen[stp] = (f, g)
        ftest = finit + stp * gtest
        if stage == 1 and f <= ftest and g >= 0:
            stage = 2
        warning = None
        if brackt and (stp <= stmin or stp >= stmax):
            warning = ("interval_collapsed", "rounding errors prevent progress")
        if brackt and stmax - stmin <= xtol * stmax:
            warning = ("interval_collapsed", "xtol test satisfied")
        if stp == stpmax and f <= ftest and g <= gtest:
            warning = ("max_step", f"the step reached stpmax={stpmax:g} still descending")
        if stp == stpmin and (f > ftest or g >= gtest):
            warning = ("step_too_small", f"the step reached stpmin={stpmin:g} without decrease")
        if f <= ftest and abs(g) <= c2 * -ginit:
            return LineSearchResult(stp, f, g, len(values), "converged")
        if warning is not None:
            return failed(*warning, stp)
        if stage == 1 and f <= fx and f > ftest:
            # stage 1 with a lower value that is not yet sufficient decrease: step on ψ, not φ
            fm, fxm, fym = f - stp * gtest, fx - stx * gtest, fy - sty * gtest
            gm, gxm, gym = g - gtest, gx - gtest, gy - gtest
            stx, fxm, gxm, sty, fym, gym, stp, brackt = _dcstep(stx, fxm, gxm, sty, fym, gym, stp, fm, gm,
                                                                 brackt, stmin, stmax)
            fx, fy = fxm + stx * gtest, fym + sty * gtest
            gx, gy = gxm + gtest, gym + gtest
        else:
            stx, fx, gx, sty, fy, gy, stp, brackt = _dcstep(stx, fx, gx, sty, fy, gy, stp, f, g,
                                                            brackt, stmin, stmax)
        if brackt:
            if abs(sty - stx) >= 0.66 * width1:      # too little shrinkage in two trials: bisect
                stp = stx + 0.5 * (sty - stx)
            width1, width = width, abs(sty - stx)
            stmin, stmax = min(stx, sty), max(stx, sty)
        else:
            stmin, stmax = stp + 1.1 * (stp - stx), stp + 4.0 * (stp - stx)
        stp = min(max(stp, stpmin), stpmax)
        if brackt and (stp <= stmin or stp >= stmax) or brackt and stmax - stmin <= xtol * stmax:
            stp = stx                                 # no progress possible: the next trial is the best point
        if not math.isfinite(stp):
            return failed("interval_collapsed", "the next trial step is not finite: kept the best one", stx)
    return failed("max_evaluations", f"dcsrch found no point within {max_evals} evaluations: kept the best one", stx)


def _fma(x: float, y: float, z: float) -> float:
    """x·y + z rounded once (math.fma from Python 3.13; before, exactly through fractions)."""
    if hasattr(math, "fma"):
        return math.fma(x, y, z)
    if not _finite(x, y, z):
        return x * y + z
    product = Fraction(x) * Fraction(y) + Fraction(z)
    try:
        return float(product)
    except OverflowError:
        return math.copysign(math.inf, product)


def _scipy_cubicmin(a, fa, fpa, b, fb, c, fc) -> Optional[float]:
    """scipy's _cubicmin: the minimiser of the cubic through (a, fa) with slope fpa, (b, fb), (c, fc);
    None where scipy's floating-point errors (overflow, division by zero, invalid) would give none."""
    C, db, dc = fpa, b - a, c - a
    denom = (db * dc) ** 2 * (db - dc)
    u, v = fb - fa - C * db, fc - fa - C * dc
    if not _finite(denom, u, v) or denom == 0:
        return None
    # scipy forms [A, B] with np.dot of a 2×2 matrix, which OpenBLAS computes as fma(m₀₀, u, m₀₁ v)
    A = _fma(dc ** 2, u, (-db ** 2) * v)
    B = _fma(-dc ** 3, u, db ** 3 * v)
    if not _finite(A, B):
        return None
    A, B = A / denom, B / denom
    radical = B * B - 3 * A * C
    if not _finite(A, B, radical) or radical < 0 or A == 0:
        return None
    xmin = a + (-B + math.sqrt(radical)) / (3 * A)
    return xmin if math.isfinite(xmin) else None


def _scipy_quadmin(a, fa, fpa, b, fb) -> Optional[float]:
    """scipy's _quadmin: the minimiser of the quadratic through (a, fa) with slope fpa and (b, fb); None
    where scipy's floating-point errors would give none."""
    db = b - a * 1.0
    num, dd = fb - fa - fpa * db, db * db
    if not _finite(num, dd) or dd == 0:
        return None
    B = num / dd
    if not math.isfinite(B) or B == 0:
        return None
    xmin = a - fpa / (2.0 * B)
    return xmin if math.isfinite(xmin) else None


def _scipy_wolfe2(phi, phi0, dphi0, alpha0, c1, c2, amax, max_evals, values) -> LineSearchResult:
    """scipy's scalar_search_wolfe2 (maxiter 10: step doubling) and _zoom (at most 11 trials): N&W
    Algorithms 3.5/3.6 with scipy's interpolation (cubic through lo, hi and the previous hi, checked to
    lie 20 % inside the bracket; else the quadratic, 10 %; else bisection)."""
    used = len(values)

    def evaluate(a):
        f, d = phi(a)
        if not _finite(f, d):
            f, d = math.inf, math.nan
        values.append(f if math.isfinite(f) else math.nan)
        return f, d

    def out(a, f, d, status, message=""):
        return LineSearchResult(a, f, d, len(values) - used, status, message)

    def budget():
        return len(values) - used < max_evals

    def zoom(a_lo, a_hi, phi_lo, phi_hi, derphi_lo):
        phi_rec, a_rec, cchk = phi0, 0.0, 0.0
        for i in range(11):
            if not budget():
                break
            dalpha = a_hi - a_lo
            a, b = (a_hi, a_lo) if dalpha < 0 else (a_lo, a_hi)
            a_j = None
            if i > 0:
                cchk = 0.2 * dalpha
                a_j = _scipy_cubicmin(a_lo, phi_lo, derphi_lo, a_hi, phi_hi, a_rec, phi_rec)
            if i == 0 or a_j is None or a_j > b - cchk or a_j < a + cchk:
                qchk = 0.1 * dalpha
                a_j = _scipy_quadmin(a_lo, phi_lo, derphi_lo, a_hi, phi_hi)
                if a_j is None or a_j > b - qchk or a_j < a + qchk:
                    a_j = a_lo + 0.5 * dalpha
            phi_aj, derphi_aj = evaluate(a_j)
            if phi_aj > phi0 + c1 * a_j * dphi0 or phi_aj >= phi_lo:
                phi_rec, a_rec, a_hi, phi_hi = phi_hi, a_hi, a_j, phi_aj
            else:
                if abs(derphi_aj) <= -c2 * dphi0:
                    return out(a_j, phi_aj, derphi_aj, "converged")
                if derphi_aj * (a_hi - a_lo) >= 0:
                    phi_rec, a_rec, a_hi, phi_hi = phi_hi, a_hi, a_lo, phi_lo
                else:
                    phi_rec, a_rec = phi_lo, a_lo
                a_lo, phi_lo, derphi_lo = a_j, phi_aj, derphi_aj
        return out(0.0, phi0, dphi0, "max_evaluations", "scipy's zoom found no strong Wolfe point")

    a0, a1 = 0.0, min(alpha0, amax)
    phi_a1, derphi_a1 = evaluate(a1)
    phi_a0, derphi_a0 = phi0, dphi0
    for i in range(10):
        if a1 == 0 or a0 > amax:
            return out(0.0, phi0, dphi0, "step_too_small" if a1 == 0 else "max_step",
                       "scipy's wolfe2: the step is 0 (rounding)" if a1 == 0 else f"no step below amax={amax:g}")
        if phi_a1 > phi0 + c1 * a1 * dphi0 or (phi_a1 >= phi_a0 and i > 0):
            return zoom(a0, a1, phi_a0, phi_a1, derphi_a0)
        if abs(derphi_a1) <= -c2 * dphi0:
            return out(a1, phi_a1, derphi_a1, "converged")
        if derphi_a1 >= 0:
            return zoom(a1, a0, phi_a1, phi_a0, derphi_a1)
        if not budget():
            break
        a2 = min(2 * a1, amax)
        a0, a1, phi_a0, derphi_a0 = a1, a2, phi_a1, derphi_a1
        phi_a1, derphi_a1 = evaluate(a1)
    else:
        # scipy returns the tenth doubling untested; refopt keeps it only where φ decreased (``_fallback``)
        return out(a1, phi_a1, derphi_a1, "max_evaluations", "scipy's wolfe2: ten doublings without a bracket")
    return out(a0, phi_a0, derphi_a0, "max_evaluations", f"no strong Wolfe point within {max_evals} evaluations")


def scipy_wolfe(phi: Phi, phi0: float, dphi0: float, alpha0: float = 1.0, c1: float = 1e-4, c2: float = 0.9,
                max_evals: int = 130, epsilon_k: Optional[float] = None) -> LineSearchResult:
    """scipy.optimize's BFGS line search (``_line_search_wolfe12``): ``line_search_wolfe1`` — ``dcsrch``
    with xtol = 1e-14, stpmin = 1e-100, stpmax = 1e100, at most 99 evaluations — and, when it does not
    converge, ``line_search_wolfe2`` (scipy's own bracketing and zoom, amax = 1e100) from the same α₀.
    ``max_evals`` caps both together. Statuses as ``dcsrch``'s (the second search's, where it ran)."""
    _check_common(phi0, dphi0, alpha0, max_evals)
    c1, c2 = _check_c1_c2(c1, c2)
    eps_k = _check_epsilon_k(epsilon_k, phi0)
    if not (_finite(dphi0) and dphi0 < 0):
        return _not_descent(phi0, dphi0)
    alpha0 = min(float(alpha0), 1e100)
    first = dcsrch(phi, phi0, dphi0, alpha0, c1, c2, xtol=1e-14, stpmin=min(1e-100, alpha0), stpmax=1e100,
                   max_evals=min(99, max_evals), epsilon_k=eps_k)
    if first.status == "converged" or first.nfev >= max_evals:
        return first._replace(message=first.message or "line_search_wolfe1 (dcsrch)")
    values: list = []
    second = _scipy_wolfe2(phi, phi0, dphi0, alpha0, c1, c2, 1e100, max_evals - first.nfev, values)
    second = second._replace(nfev=first.nfev + second.nfev,
                             message=f"line_search_wolfe1 failed ({first.status}); line_search_wolfe2: "
                                     + (second.message or "converged"))
    return precision_status(_fallback(second, phi0, dphi0), phi0, values, eps_k)


# --- optax's zoom line search ------------------------------------------------------------------------
def _nanmax(a: float, b: float) -> float:
    """max propagating NaN (jnp.maximum; Python's max keeps its first argument against a NaN)."""
    return math.nan if math.isnan(a) or math.isnan(b) else max(a, b)


def _div(x: float, y: float) -> float:
    """x / y in IEEE arithmetic (±inf or NaN for y = 0, as jnp's division; Python's raises)."""
    if y != 0:
        return x / y
    return math.nan if x == 0 or math.isnan(x) else math.copysign(math.inf, x) * math.copysign(1.0, y)


def _optax_cubicmin(a, fa, fpa, b, fb, c, fc) -> float:
    """optax's _cubicmin: the critical point a + (−B + √(B² − 3AC)) / 3A of the cubic
    A(x−a)³ + B(x−a)² + C(x−a) + fa through (b, fb) and (c, fc) with slope C = fpa at a; NaN where it has none
    (c = a, as on the zoom's first trial, gives 0/0). Rounded as XLA compiles it on the CPU (found trial by
    trial): fused multiply-adds for the residuals, the 2×2 product and B² − 3AC, and ÷ denom as × (1/denom)."""
    C, db, dc = fpa, b - a, c - a
    t = db * dc
    denom = t * t * (db - dc)
    u, v = _fma(-C, db, fb - fa), _fma(-C, dc, fc - fa)
    inv = _div(1.0, denom)
    A = _fma(-(db * db), v, dc * dc * u) * inv
    B = _fma(db * (db * db), v, -(dc * (dc * dc)) * u) * inv
    radical = _fma(B, B, -(3.0 * A * C))
    if not radical >= 0:
        return math.nan
    return a + _div(-B + math.sqrt(radical), 3.0 * A)


def _optax_quadmin(a, fa, fpa, b, fb) -> float:
    """optax's _quadmin: a − fpa / 2B, B = (fb − fa − fpa (b − a)) / (b − a)² (its numerator one fused
    multiply-add, as XLA compiles it); ±inf or NaN where B = 0."""
    db = b - a
    return a - _div(fpa, 2.0 * _div(_fma(-fpa, db, fb - fa), db * db))


def optax_zoom(phi: Phi, phi0: float, dphi0: float, alpha0: float = 1.0, c1: float = 1e-4, c2: float = 0.9,
               max_evals: int = 20, increase_factor: float = 2.0, approx_dec_rtol: Optional[float] = 1e-6,
               interval_threshold: float = 1e-5, max_step: Optional[float] = None,
               epsilon_k: Optional[float] = None) -> LineSearchResult:
    """optax's ``zoom_linesearch`` (``scale_by_zoom_linesearch``; N&W Algorithms 3.5/3.6 with Hager & Zhang's
    approximate decrease), written here so that it picks optax's trial points; defaults optax's
    (max_linesearch_steps = 20 evaluations as optax.lbfgs sets it, slope_rtol c₁ = 1e-4, curv_rtol c₂ = 0.9,
    increase_factor 2, approx_dec_rtol 1e-6, stepsize_precision 1e-5, no max_learning_rate, tol 0).

    Errors at a trial α (0 = satisfied): decrease e_d = max(0, min(φ(α) − φ(0) − c₁αφ'(0), max(φ'(α) −
    (2c₁ − 1)φ'(0), φ(α) − φ(0) − r|φ(0)|))) (r = approx_dec_rtol; the min drops with r = None), curvature
    e_c = max(0, |φ'(α)| − c₂|φ'(0)|); NaN counts as +∞. Converged where both are 0.

    Interval search: α = α₀, then α ← increase_factor·α; the trial is "high" when e_d > 0 or (after the first)
    φ(α) ≥ φ(previous), else "low" when φ'(α) ≥ 0 (the bracket is then [α, previous]); otherwise it goes on.
    Zoom on (low, high) (φ(low) ≤ φ(high), either order): the cubic through low (value and slope), high and
    a reference point (the previous high, or low), used where it lies inside the bracket by 20 % of its
    length; else the quadratic through low (value, slope) and high, inside by 10 %; else the midpoint. The
    trial replaces high when e_d > 0 or φ(α) ≥ φ(low); else it becomes low (the old low becoming high when
    φ'(α)(high − low) ≥ 0).

    Failure, as optax: after ``max_evals`` trials, or a zoom on a bracket shorter than ``interval_threshold``
    once a sufficient-decrease ("safe") point exists, the search returns the safe point with the lowest value
    (the interval search's latest one), or α = 0 when the last trial's e_d is infinite, or else — optax's
    "unsafe step" — the last trial itself, whatever its value (the one exception to the module's guarantee,
    with the approximate decrease that may exceed φ(0) by r|φ(0)|). Statuses: "converged", "max_step" (the
    cap ``max_step`` reached while φ still decreases), "interval_collapsed", "max_evaluations", "precision"
    (``precision_status``), "not_descent" (φ'(0) ≥ 0: nothing evaluated; optax would search uphill).
    ``approximate`` says the accepted point met the approximate decrease and not Armijo's. Rounded as XLA
    compiles optax's search on the CPU (fused multiply-adds, found by comparing trial points), so that the
    decisions at rounding level are optax's too.
    """
    _check_common(phi0, dphi0, alpha0, max_evals)
    c1, c2 = _check_c1_c2(c1, c2)
    eps_k = _check_epsilon_k(epsilon_k, phi0)
    increase_factor = _real_arg("increase_factor", increase_factor, 1.0)
    interval_threshold = _real_arg("interval_threshold", interval_threshold, 0.0, low_open=False)
    if approx_dec_rtol is not None:
        approx_dec_rtol = _real_arg("approx_dec_rtol", approx_dec_rtol, 0.0, low_open=False)
    if max_step is not None:
        max_step = _real_arg("max_step", max_step)
    if not (_finite(dphi0) and dphi0 < 0):
        return _not_descent(phi0, dphi0)
    phi0, dphi0 = float(phi0), float(dphi0)
    values: list = []

    def evaluate(a):
        f, d = phi(a)
        f, d = float(f), (math.nan if d is None else float(d))
        values.append(f if math.isfinite(f) else math.nan)
        # each a − b·c as one fused multiply-add, as XLA compiles optax's search
        armijo_error = _fma(-(c1 * a), dphi0, f - phi0)
        dec = armijo_error
        if approx_dec_rtol is not None:
            approx = _nanmax(_fma(-(2 * c1 - 1.0), dphi0, d), _fma(-approx_dec_rtol, abs(phi0), f - phi0))
            dec = math.nan if math.isnan(approx) or math.isnan(dec) else min(approx, dec)
        dec = math.inf if math.isnan(dec) else max(dec, 0.0)
        curv = _fma(-c2, abs(dphi0), abs(d))
        curv = math.inf if math.isnan(curv) else max(curv, 0.0)
        return (a, f, d), dec, curv, dec <= 0 and not armijo_error <= 0

    def result(point, status, approximate=False, message=""):
        return LineSearchResult(point[0], point[1], point[2], len(values), status, message, approximate)

    def give_up(safe, last, dec, status, message):
        # optax's _try_safe_step: the safe point, α = 0 when the last trial left the domain, else the last trial
        point = safe if safe[0] > 0 or math.isinf(dec) else last
        if point[0] == 0:
            point = (0.0, phi0, dphi0)
        return precision_status(result(point, status, message=message), phi0, values, eps_k)

    k = 0
    prev = safe = (0.0, phi0, dphi0)
    while True:   # interval search (N&W Algorithm 3.5)
        a = alpha0 if k == 0 else increase_factor * prev[0]
        at_max = max_step is not None and a >= max_step
        if at_max:
            a = max_step
        point, dec, curv, approx = evaluate(a)
        if dec <= 0:
            safe = point
        to_high = dec > 0 or (point[1] >= prev[1] and k > 0)
        to_low = point[2] >= 0 and not to_high
        low, high = (point, prev) if to_low else (prev, point)
        found = to_high or to_low or max(dec, curv) <= 0
        k += 1
        if max(dec, curv) <= 0:
            return result(point, "converged", approx)
        if at_max and not found:
            return result(point, "max_step", approx, f"φ still decreases at max_step={max_step:g}")
        if k >= max_evals:
            return give_up(safe, point, dec, "max_evaluations", f"no bracket within {max_evals} evaluations")
        if found:
            break
        prev = point
    ref = low
    while True:   # zoom (N&W Algorithm 3.6) with optax's interpolation checks
        (lo, flo, dlo), (hi, fhi, _) = low, high
        delta = abs(hi - lo)
        left, right = min(hi, lo), max(hi, lo)
        too_small = delta <= interval_threshold
        a = _optax_cubicmin(lo, flo, dlo, hi, fhi, ref[0], ref[1])
        if not (a > _fma(0.2, delta, left) and a < _fma(-0.2, delta, right)):
            a = _optax_quadmin(lo, flo, dlo, hi, fhi)
            if not (a > _fma(0.1, delta, left) and a < _fma(-0.1, delta, right)):
                a = (lo + hi) / 2.0
        point, dec, curv, approx = evaluate(a)
        if dec <= 0 and point[1] < safe[1]:
            safe = point
        k += 1
        if max(dec, curv) <= 0:
            return result(point, "converged", approx)
        to_high = dec > 0 or point[1] >= flo
        old_high_to_low = not to_high and point[2] * (hi - lo) >= 0
        ref = high if to_high or old_high_to_low else low
        high = point if to_high else low if old_high_to_low else high
        low = low if to_high else point
        if k >= max_evals:
            return give_up(safe, point, dec, "max_evaluations", f"no strong Wolfe point within {max_evals} evaluations")
        if too_small and safe[0] > 0:
            return give_up(safe, point, dec, "interval_collapsed",
                           f"the bracket is shorter than interval_threshold={interval_threshold:g}")
