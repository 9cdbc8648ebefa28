"""``minimize``: run one of refopt's optimizers (the Newton family first) on a function of a vector.

    result = minimize(fun, x0, method="bfgs", jac=grad, hess=hess, gtol=1e-5)

The same optimizer classes that train networks do the work (``refopt.optim``: newton, newton_cg, trust_ncg,
sr1, sherman_morrison, bfgs, dfp, lbfgs); the driver wraps ``fun`` in a ``FunctionOracle`` and loops

    loss, g = opt.evaluate(x, state, oracle)      # the state's cached point (the line search's last
                                                  # evaluation, on this oracle): no extra cost
    stop?  (‖g‖ ≤ gtol, budgets)                   # checked *before* stepping
    x, state, info = opt.step(x, state, oracle, loss, g)
    stop?  (‖Δx‖ ≤ xtol · max(1, ‖x‖), a failed step)

Every other optimizer that runs on a function oracle (``function_methods()``: sgd, adam, adamw, adagrad,
shampoo, adahessian, sophia_h, ...) runs the plain loop ``evaluate; stop?; x, state, info = opt.update(x,
state, oracle)``, its update reusing the loop's evaluation of the same x (one nfev and ngev per step); it
has no "precision" stop. ``fun`` may use indexing and NumPy's functions (docs/core.md, "Plain Python and
NumPy functions"); without ``jac``/``hessp`` the autodiff differentiates it, and ``float(x[0])``,
``math.exp(x[0])`` or ``np.float64(x[0])`` inside ``fun`` raise a TypeError (the derivative would be lost).
The result answers to scipy's names too: ``fun`` (= ``f``), ``jac`` (= ``grad``), ``njev`` (= ``ngev``) and
``hess_inv`` (H ≈ ∇²f⁻¹ of a quasi-Newton method in form "inverse", as scipy's BFGS; None otherwise).

scipy's spelling works too: ``minimize(fun, x0, args=(a, b), method="BFGS", jac=True, tol=1e-8)``.

* ``method``: scipy's names, case-insensitive, map to refopt's: "BFGS" → bfgs, "Newton-CG" → newton_cg,
  "trust-ncg" → trust_ncg, "L-BFGS-B" → lbfgs (without ``bounds``: refopt has no bound constraints, so
  ``bounds`` and ``constraints`` are refused). scipy's methods without a counterpart ("CG", nonlinear
  conjugate gradient; "Nelder-Mead", "Powell", "TNC", ...) are refused by name. refopt's names are read
  case-insensitively as well; ``method=None`` is bfgs, as in scipy.
* ``args``: extra arguments, passed as scipy passes them: ``fun(x, *args)``, ``jac(x, *args)``,
  ``hess(x, *args)``, ``hessp(x, p, *args)`` (a non-tuple is one argument). Note that refopt's third
  positional parameter is ``method``, scipy's is ``args``: a tuple there is refused.
* ``jac=True``: ``fun`` returns ``(f, g)``; it is called once per point (the last point's pair is kept), and
  again for each autodiff Hessian-vector product of its value (Newton-CG without ``hessp``).
  ``jac=False`` or None: refopt's autodiff; scipy's finite-difference strings ("2-point", ...) are refused.
* ``tol``: what scipy's ``minimize`` sets from it (``options.setdefault``, scipy/optimize/_minimize.py),
  unless ``gtol`` / ``xtol`` are given. BFGS, L-BFGS-B and trust-ncg: ``gtol = tol`` (scipy's L-BFGS-B
  also sets its ``ftol``, a relative-decrease test refopt does not have, so refopt's run goes on to gtol).
  Newton-CG: scipy's stops on its step alone (mean |Δx_i| ≤ tol), so ``xtol = tol`` (refopt's rule below,
  ‖Δx‖∞ ≤ xtol · max(1, ‖x‖∞)) and ``gtol = 0``. Every other refopt method: ``gtol = tol``.

Stopping rules and statuses (``result.status``; ``result.success`` is True for the first three):

    "zero_gradient"       g(x0) = 0: x0 is returned at once, no step is taken
    "gtol"                ‖g‖ ≤ gtol (norm ``gnorm``: ∞ by default, as scipy's BFGS and L-BFGS-B)
    "xtol"                the last step was shorter than xtol · max(1, ‖x‖_∞) (∞-norm)
    "max_iterations"      ``maxiter`` steps taken (default 200·n)
    "max_evaluations"     ``max_nfev`` function evaluations used (checked between iterations)
    "step_failed"         the optimizer could not take a step (line search failure, rejected
                          trust-region trials that shrank the radius to rounding level, ...)
    "precision"           no measurable progress (scipy's status 2, "precision loss"; success False):
                          the line search says "precision" (no decrease measurable at the rounding
                          level of f), or it failed and f decreased by no more than ε_k =
                          100 ε max(|f|, 1) (``linesearch.rounding_error``), or for ``PRECISION_PATIENCE``
                          (10) iterates every line search worked at that level, f did not fall by more
                          than the noise it showed in this run and ‖g‖ did not halve (``StallMonitor``)
    "nonfinite"           f or g is not finite (at x0, or at an accepted point)
    "callback"            ``callback(x, info)`` returned True

A direction that is not a descent direction is reset to steepest descent by the optimizer; the result
counts those resets (``result.resets``) and its message says so. Counts are the oracle's: ``nfev``
(function values), ``ngev`` (gradients), ``nhvp`` (Hessian-vector products), plus ``nhev`` (dense Hessians
built by ``newton``). Trust-region trials that are rejected count as iterations (as in scipy).
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Union

from . import tree as T
from .autodiff import Box
from .backend import as_array, xp
from .linesearch import rounding_error
from .oracle import FunctionOracle
from .optim import OPTIMIZERS, Optimizer, make_optimizer, optimizer_class
from .optim.descent import DescentMethod

__all__ = ["minimize", "MinimizeResult", "FUNCTION_METHODS", "function_methods", "StallMonitor", "PRECISION_PATIENCE",
           "at_rounding_level", "dtype_eps", "SCIPY_METHODS", "method_name"]

_EPS = 2.220446049250313e-16
PRECISION_PATIENCE = 10   # iterations without measurable progress before a "precision" stop

FUNCTION_METHODS = ("newton", "newton_cg", "trust_ncg", "sr1", "sherman_morrison", "bfgs", "dfp", "lbfgs")
# The Newton family above runs the loop below with its line searches and trust regions; every other
# optimizer whose ``requires`` a FunctionOracle provides (sgd, adam, adagrad, shampoo, adahessian, ...) runs
# a plain loop of ``update`` steps (``function_methods()`` lists them all).

SCIPY_METHODS = {"bfgs": "bfgs", "newton-cg": "newton_cg", "trust-ncg": "trust_ncg", "l-bfgs-b": "lbfgs"}
# scipy.optimize.minimize's other methods (lower case), which refopt does not have
_SCIPY_ONLY = {"cg": "nonlinear conjugate gradient (Polak-Ribière)", "nelder-mead": "the Nelder-Mead simplex",
               "powell": "Powell's conjugate directions", "tnc": "truncated Newton with bounds",
               "cobyla": "COBYLA (constraints)", "cobyqa": "COBYQA (constraints)", "slsqp": "SLSQP (constraints)",
               "trust-constr": "trust-constr (constraints)", "dogleg": "the dogleg trust region",
               "trust-exact": "the exact trust-region subproblem", "trust-krylov": "the Krylov trust-region subproblem"}


@dataclass
class MinimizeResult:
    """What ``minimize`` returns: the final x, f and gradient, the counts, the status (module docs) and f's history."""

    x: Any
    f: float
    grad: Any
    grad_norm: float
    nit: int
    nfev: int
    ngev: int
    nhvp: int
    status: str
    success: bool
    message: str
    nhev: int = 0
    resets: int = 0
    history: list = field(default_factory=list)   # f at every iterate, x0 first
    hess_inv: Any = None   # H ≈ ∇²f⁻¹ (n×n over tree.ravel order) for quasi-Newton methods in form "inverse"

    @property
    def fun(self) -> float:
        """scipy's name for ``f``."""
        return self.f

    @property
    def jac(self):
        """scipy's name for ``grad`` (the gradient at ``x``)."""
        return self.grad

    @property
    def njev(self) -> int:
        """scipy's name for ``ngev`` (gradient evaluations)."""
        return self.ngev

    def __repr__(self):
        return (f"MinimizeResult(status={self.status!r}, success={self.success}, f={self.f:.10g}, "
                f"grad_norm={self.grad_norm:.3g}, nit={self.nit}, nfev={self.nfev}, ngev={self.ngev}, "
                f"nhvp={self.nhvp}, message={self.message!r})")


def dtype_eps(params) -> float:
    """The unit roundoff of the (first leaf of the) parameters' floating dtype."""
    leaves = T.leaves(params)
    return float(xp.finfo(leaves[0].dtype).eps) if leaves else _EPS


class StallMonitor:
    """Detects a run that no longer makes measurable progress (the "precision" stop of ``minimize`` and
    ``runner.run``).

    ``observe(f, ‖g‖, rounding)`` is called at every iterate; ``rounding`` says whether the line search of
    the step taken there worked at the rounding level of f (``at_rounding_level``: "precision", accepted by
    the approximate Wolfe conditions, or a change of f within ``linesearch.rounding_error``). It returns
    True once, for ``patience`` iterates in a row, all three held:

    * the step was decided at the rounding level (``rounding``): a method whose steps do not come from f
      values (SGD, a fixed step) is never stopped here, however flat f is;
    * f did not fall below f_ref − ν, where ν = max(ν_obs, 4 ε |f_ref|) is the noise of f *as observed in
      this run*: ν_obs is the largest increase of f from one iterate to the next (every accepted step
      descends in exact arithmetic, so an increase is rounding; approximate Wolfe accepts such steps);
    * ‖g‖ stayed above ½ g_ref,

    where (f_ref, g_ref) are f and ‖g‖ at the last iterate that made progress. Estimating ν from the run,
    not from a fixed multiple of ε max(|f|, 1), matters: a network loss near 1e-16 is computed from O(1)
    terms and jumps by ±5e-17 (ν_obs ≈ 1e-16, the run stops), while an ill-conditioned quadratic near its
    zero minimum is computed to relative ε and keeps decreasing by per cents (ν ≈ 4ε|f|, it runs on to gtol).
    """

    def __init__(self, eps: float = _EPS, patience: int = PRECISION_PATIENCE):
        self.eps, self.patience = eps, patience
        self.f_ref = self.g_ref = self.f_prev = math.nan
        self.noise = 0.0    # ν_obs: the largest increase of f between consecutive iterates seen so far
        self.since = 0

    def observe(self, f: float, gnorm: float, rounding: bool = True) -> bool:
        """Record the iterate (f, ‖g‖); True when the run has stalled (see the class docs)."""
        f, gnorm = float(f), float(gnorm)
        if math.isfinite(f) and math.isfinite(self.f_prev) and f > self.f_prev:
            self.noise = max(self.noise, f - self.f_prev)
        self.f_prev = f
        if not (rounding and math.isfinite(f) and math.isfinite(gnorm) and math.isfinite(self.f_ref)) \
                or f < self.f_ref - self.resolution or gnorm <= 0.5 * self.g_ref:
            self.f_ref, self.g_ref, self.since = f, gnorm, 0
            return False
        self.since += 1
        return self.since >= self.patience

    @property
    def resolution(self) -> float:
        """ν: the smallest decrease of f from f_ref that counts as progress."""
        return max(self.noise, 4.0 * self.eps * abs(self.f_ref))

    @property
    def message(self) -> str:
        """Why the run stopped, for the result's message."""
        return (f"no measurable progress in {self.since} iterations: every line search worked at the rounding "
                f"level of f, f did not fall below {self.f_ref:.10g} by more than its observed noise "
                f"{self.resolution:.2g}, and the gradient norm did not halve (from {self.g_ref:.3g}); converged "
                "as far as this precision resolves")


def at_rounding_level(info: dict, eps: float = _EPS) -> bool:
    """Whether a step's line search worked at the rounding level of f (the ``rounding`` of ``StallMonitor``):
    it reported "precision", accepted its step by the approximate Wolfe conditions, or accepted a step whose
    change of f is within f's rounding error. A step without a line search (no ``line_search`` entry) is not."""
    search = info.get("line_search")
    if search is None:
        return False
    if search == "precision" or info.get("approximate"):
        return True
    loss, new = info.get("loss"), info.get("new_loss")
    return (isinstance(loss, (int, float)) and isinstance(new, (int, float))
            and abs(new - loss) <= rounding_error(loss, eps))


def _stop_before_step(loss, g, gn, nit, maxiter, gtol, max_nfev, nfev):
    """(status, message) of the stopping rules checked before a step (module docs), or None to step on."""
    if not (math.isfinite(loss) and T.all_finite(g)):
        return "nonfinite", ("f or its gradient is not finite at x0" if nit == 0 else
                             "f or its gradient became non-finite")
    if gn == 0.0 and nit == 0:
        return "zero_gradient", "the gradient is zero at x0"
    if gn <= gtol:
        return "gtol", f"gradient norm {gn:.3g} ≤ gtol={gtol:g}"
    if nit >= maxiter:
        return "max_iterations", f"reached maxiter={maxiter}"
    if max_nfev is not None and nfev >= max_nfev:
        return "max_evaluations", f"used {nfev} ≥ max_nfev={max_nfev} evaluations"
    return None


def _norm(v, kind) -> float:
    flat = T.ravel(v)
    if flat.size == 0:
        return 0.0
    return float(xp.max(xp.abs(flat))) if kind == "inf" else float(xp.linalg.norm(flat))


def function_methods() -> tuple:
    """Every optimizer name ``minimize`` accepts: those whose ``requires`` a ``FunctionOracle`` provides."""
    return tuple(name for name in OPTIMIZERS if not optimizer_class(name).needs_network)


class _SharedEvaluation:
    """The oracle, except that ``value_and_grad`` at the very x object it last answered for is answered
    again without a new request: the plain loop evaluates x for its stopping tests and the optimizer's
    ``update`` then evaluates the same x, which must not count twice."""

    def __init__(self, oracle):
        self._oracle, self._last = oracle, None

    def __getattr__(self, name):
        return getattr(self._oracle, name)

    def value_and_grad(self, x):
        """(f(x), ∇f(x)), from the last request when x is the object it was made for."""
        if self._last is None or self._last[0] is not x:
            self._last = (x, *self._oracle.value_and_grad(x))
        return self._last[1], self._last[2]


def method_name(method, bounds=None) -> str:
    """refopt's name for ``method``: scipy's spelling or refopt's, case-insensitive (module docs); None is bfgs."""
    if bounds is not None:
        raise ValueError("bounds: refopt has no bound constraints (its methods are unconstrained; method "
                         "'L-BFGS-B' runs as refopt's unconstrained lbfgs): pass bounds=None")
    if method is None:
        return "bfgs"
    if isinstance(method, (tuple, list)):
        raise TypeError("method must be a method name or an optimizer, got a "
                        f"{type(method).__name__}: refopt's third positional parameter is method (scipy's is args); "
                        "pass extra arguments as args=(...)")
    if not isinstance(method, str):
        raise TypeError(f"method must be a method name or an optimizer, got {type(method).__name__}")
    key = method.lower()
    if key in _SCIPY_ONLY:
        closest = " (the closest is 'L-BFGS-B', gradients only and little memory)" if key == "cg" else ""
        raise ValueError(f"method {method!r}: refopt has no counterpart of this scipy method, {_SCIPY_ONLY[key]}"
                         f"{closest}; the scipy names it maps are 'BFGS', 'Newton-CG', 'trust-ncg', 'L-BFGS-B', and "
                         f"its own methods are {', '.join(function_methods())}")
    return SCIPY_METHODS.get(key, key)


class _ValueAndGradient:
    """``fun(x) -> (f, g)`` (scipy's ``jac=True``) as a value and a gradient function, calling ``fun`` once per
    untraced point: the last point (a copy) and its pair are kept. A traced point is never kept (it is no
    point): each traced evaluation (the autodiff's Hessian-vector products of the value) calls ``fun`` again."""

    def __init__(self, fun):
        self.fun, self._x, self._pair = fun, None, None

    def _at(self, x):
        traced = any(isinstance(leaf, Box) for leaf in T.leaves(x))
        if traced or self._x is None or not _same_point(self._x, x):
            pair = self.fun(x)
            if not (isinstance(pair, (tuple, list)) and len(pair) == 2):
                raise TypeError(f"jac=True: fun must return the pair (f, gradient), got {type(pair).__name__}")
            if traced:
                return pair
            self._x, self._pair = T.copy(x), pair
        return self._pair

    def value(self, x):
        """f(x), from the last call at x."""
        return self._at(x)[0]

    def gradient(self, x):
        """∇f(x), from the last call at x."""
        return self._at(x)[1]


def _same_point(a, b) -> bool:
    la, lb = T.leaves(a), T.leaves(b)
    return T.same_structure(a, b) and all(xp.array_equal(u, v) for u, v in zip(la, lb))


def _oracle(fun, jac, hess, hessp, args) -> FunctionOracle:
    if isinstance(fun, FunctionOracle) or (hasattr(fun, "oracle") and callable(fun.oracle)):
        if args:
            raise ValueError("args= applies to a callable fun, not to a Problem or a FunctionOracle")
        return fun if isinstance(fun, FunctionOracle) else fun.oracle()   # a refopt.problems Problem
    if not callable(fun):
        raise TypeError(f"fun must be callable, a Problem or a FunctionOracle, got {type(fun).__name__}")
    if isinstance(jac, str):
        raise ValueError(f"jac={jac!r}: refopt takes no finite differences; leave jac=None for exact derivatives "
                         "from its autodiff, or pass a callable (or jac=True when fun returns (f, g))")
    if jac is False:
        jac = None
    if jac is not None and jac is not True and not callable(jac):
        raise TypeError("jac must be a callable returning the gradient, True (fun returns (f, g)) or None "
                        "(refopt's autodiff)")
    for name, given in (("hess", hess), ("hessp", hessp)):
        if given is not None and not callable(given):
            raise TypeError(f"{name} must be a callable (refopt takes no finite-difference or quasi-Newton "
                            f"strategies here), got {type(given).__name__}")
    if args:
        f0, jac0, hess0, hessp0 = fun, jac, hess, hessp
        fun = lambda x: f0(x, *args)  # noqa: E731
        jac = jac if jac is None or jac is True else (lambda x: jac0(x, *args))
        hess = None if hess is None else (lambda x: hess0(x, *args))
        hessp = None if hessp is None else (lambda x, p: hessp0(x, p, *args))
    if jac is True:
        pair = _ValueAndGradient(fun)
        fun, jac = pair.value, pair.gradient
    return FunctionOracle(fun, grad=jac, hess=hess, hvp=hessp)


def _tolerances(tol, gtol, xtol, name):
    """(gtol, xtol) from the explicit ones, else from scipy's ``tol`` for the method (module docs)."""
    if tol is not None and (isinstance(tol, bool) or not isinstance(tol, numbers.Real) or not tol >= 0):
        raise ValueError(f"tol must be a non-negative number, got {tol!r}")
    if tol is not None and name == "newton_cg":
        return (0.0 if gtol is None else gtol), (float(tol) if xtol is None else xtol)
    if tol is not None and gtol is None:
        gtol = float(tol)
    return (1e-5 if gtol is None else gtol), (0.0 if xtol is None else xtol)


def minimize(fun: Union[Callable, Any], x0=None, method: Union[str, Optimizer, None] = "bfgs", jac=None,
             hess: Optional[Callable] = None, hessp: Optional[Callable] = None, gtol: Optional[float] = None,
             xtol: Optional[float] = None, maxiter: Optional[int] = None, max_nfev: Optional[int] = None,
             gnorm: str = "inf", options: Optional[dict] = None, callback: Optional[Callable] = None, *,
             args=(), tol: Optional[float] = None, bounds=None, constraints=None) -> MinimizeResult:
    """Minimise ``fun`` from ``x0`` with ``method`` (a name from ``function_methods()``, scipy's spelling of
    one, or an optimizer).

    ``fun`` is f(x) -> float (with ``jac``/``hess``/``hessp`` for analytic derivatives, else refopt's
    autodiff traces it: indexing, operators, refopt's primitives and the NumPy functions it has; float(),
    math.* and np.float64() of a traced value are refused), a ``Problem`` from ``refopt.problems.functions``
    (then ``x0`` defaults to its start), or a ``FunctionOracle``. ``options`` are the optimizer's
    hyperparameters. ``callback(x, info)`` is called after every step; returning True stops the run.
    ``gtol`` defaults to 1e-5 and ``xtol`` to 0 (off); ``args``, ``tol``, ``jac=True``, ``bounds`` and
    ``constraints`` are scipy's (module docs).
    """
    if constraints is not None and not (isinstance(constraints, (tuple, list)) and len(constraints) == 0):
        raise ValueError("constraints: refopt has no constrained methods (its methods are unconstrained): "
                         "pass constraints=None")
    name = None if isinstance(method, Optimizer) else method_name(method, bounds)
    if isinstance(method, Optimizer) and bounds is not None:
        method_name(None, bounds)   # the same refusal
    if not isinstance(args, tuple):
        args = (args,)   # as scipy
    gtol, xtol = _tolerances(tol, gtol, xtol, name if name is not None else getattr(method, "name", None))
    if not (isinstance(gtol, (int, float)) and gtol >= 0):
        raise ValueError(f"gtol must be a non-negative number, got {gtol!r}")
    if not (isinstance(xtol, (int, float)) and xtol >= 0):
        raise ValueError(f"xtol must be a non-negative number, got {xtol!r}")
    if gnorm not in ("inf", "2"):
        raise ValueError(f"gnorm must be 'inf' or '2', got {gnorm!r}")
    if x0 is None:
        if not hasattr(fun, "x0"):
            raise ValueError("x0 is required unless fun is a Problem with a start point")
        x0 = fun.x0
    if isinstance(method, Optimizer):
        opt = method
        if options:
            raise ValueError("options= applies to a method name; configure the optimizer instance instead")
    else:
        known = function_methods()
        if name not in known:
            extra = " (it needs a network oracle)" if name in OPTIMIZERS else ""
            raise ValueError(f"method {method!r} is not available for functions of a vector{extra}; "
                             f"choose from {', '.join(known)} (or scipy's 'BFGS', 'Newton-CG', 'trust-ncg', "
                             "'L-BFGS-B')")
        opt = make_optimizer(name, **(options or {}))

    oracle = _oracle(fun, jac, hess, hessp, args)
    opt.check_oracle(oracle)   # e.g. NewtonCG(curvature="ggn") needs the GGN, which a function does not have
    start = oracle.counts.as_dict()
    is_tree = isinstance(x0, dict) or (isinstance(x0, (list, tuple)) and any(hasattr(v, "shape") for v in x0))
    x = T.copy(x0) if is_tree else as_array(x0).copy()
    n = T.size(x)
    maxiter = 200 * n if maxiter is None else maxiter
    if not isinstance(opt, DescentMethod):
        return _minimize_by_updates(opt, oracle, x, maxiter, max_nfev, gtol, xtol, gnorm, callback, start)
    state = opt.init(x)
    nit, nhev, resets, history = 0, 0, 0, []
    status, message = "max_iterations", f"reached maxiter={maxiter}"

    def counts():
        now = oracle.counts.as_dict()
        return {k: now[k] - start[k] for k in now}

    monitor = StallMonitor(dtype_eps(x))
    rounding = False   # whether the last step's line search worked at the rounding level of f
    loss, g = opt.evaluate(x, state, oracle)
    while True:
        history.append(float(loss))
        gn = _norm(g, gnorm) if T.all_finite(g) else math.nan
        stop = _stop_before_step(loss, g, gn, nit, maxiter, gtol, max_nfev, counts()["nfev"])
        if stop:
            status, message = stop
            break
        if monitor.observe(loss, gn, rounding):
            status, message = "precision", monitor.message
            break
        x_new, state, info = opt.step(x, state, oracle, loss, g)
        rounding = at_rounding_level(info, monitor.eps)
        nit += 1
        nhev += int(info.get("nhev", 0))
        resets += bool(info.get("reset", False))
        stop = callback(x_new, info) if callback is not None else False
        if info.get("skipped"):
            status, message = "step_failed", info.get("message", "step refused")
            break
        if not info.get("accepted", True) and info.get("line_search") == "precision":
            status, message = "precision", info.get("message", "no decrease is measurable at the rounding level")
            break
        if not info.get("accepted", True):
            radius = info.get("radius")
            if radius is None or not radius > max(xtol, 1e-15 * max(1.0, _norm(x, "inf"))):
                status, message = "step_failed", info.get("message", "no step")
                break
            if stop:
                history.append(float(loss))
                status, message = "callback", "stopped by the callback"
                break
            loss, g = opt.evaluate(x, state, oracle)
            continue
        step = _norm(T.sub(x_new, x), "inf")
        x, previous = x_new, loss
        loss, g = opt.evaluate(x, state, oracle)
        search = info.get("line_search", "converged")
        if search == "precision" or (search != "converged"
                                     and previous - loss <= rounding_error(previous, monitor.eps)):
            history.append(float(loss))
            status = "precision"
            message = (f"the line search failed ({search}) and f changed only at rounding level: no further "
                       "progress is possible at this precision")
            break
        if xtol and step <= xtol * max(1.0, _norm(x, "inf")):
            history.append(float(loss))
            status, message = "xtol", f"step {step:.3g} ≤ xtol·max(1, ‖x‖∞)"
            break
        if stop:
            history.append(float(loss))
            status, message = "callback", "stopped by the callback"
            break
    c = counts()
    if resets:
        message += f"; {resets} non-descent direction(s) reset to steepest descent"
    gn = _norm(g, gnorm) if T.all_finite(g) else math.nan
    hess_inv = None
    if getattr(opt, "form", None) == "inverse" and getattr(state, "matrix", None) is not None:
        hess_inv = state.matrix   # the quasi-Newton inverse form keeps H ≈ ∇²f⁻¹ itself (scipy's hess_inv)
    return MinimizeResult(x, float(loss), g, gn, nit, c["nfev"], c["ngev"], c["nhvp"] + c["nggnvp"], status,
                          status in ("zero_gradient", "gtol", "xtol"), message, nhev, resets, history, hess_inv)


def _minimize_by_updates(opt, oracle, x, maxiter, max_nfev, gtol, xtol, gnorm, callback, start) -> MinimizeResult:
    """The plain loop for optimizers outside the Newton family: evaluate x, test the stops (gtol, maxiter,
    max_nfev, nonfinite; xtol after a step), take one ``update``. No "precision" stop: these steps do not
    come from f values (see ``StallMonitor``)."""
    shared = _SharedEvaluation(oracle)
    state = opt.init(x)
    nit, history = 0, []

    def used(name):
        return oracle.counts.as_dict()[name] - start[name]

    while True:
        loss, g = shared.value_and_grad(x)
        loss = float(loss)
        history.append(loss)
        gn = _norm(g, gnorm) if T.all_finite(g) else math.nan
        stop = _stop_before_step(loss, g, gn, nit, maxiter, gtol, max_nfev, used("nfev"))
        if stop:
            status, message = stop
            break
        x_new, state, info = opt.update(x, state, shared)
        nit += 1
        if info.get("skipped"):
            status, message = "step_failed", info.get("message", "step refused")
            break
        step = _norm(T.sub(x_new, x), "inf")
        x = x_new
        stop = callback(x, info) if callback is not None else False
        if xtol and step <= xtol * max(1.0, _norm(x, "inf")):
            loss, g = shared.value_and_grad(x)
            history.append(float(loss))
            status, message = "xtol", f"step {step:.3g} ≤ xtol·max(1, ‖x‖∞)"
            break
        if stop:
            loss, g = shared.value_and_grad(x)
            history.append(float(loss))
            status, message = "callback", "stopped by the callback"
            break
    c = {k: used(k) for k in ("nfev", "ngev", "nhvp", "nggnvp")}
    gn = _norm(g, gnorm) if T.all_finite(g) else math.nan
    return MinimizeResult(x, float(loss), g, gn, nit, c["nfev"], c["ngev"], c["nhvp"] + c["nggnvp"], status,
                          status in ("zero_gradient", "gtol", "xtol"), message, history=history)
