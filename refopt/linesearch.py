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
even with a wrong derivative.

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
from typing import Callable, NamedTuple, Optional

__all__ = ["LineSearchResult", "armijo", "strong_wolfe", "fixed_step", "minfunc_wolfe", "cubic_minimizer",
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
