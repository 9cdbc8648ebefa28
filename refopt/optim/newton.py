"""Newton's method and Gauss-Newton / Levenberg–Marquardt on dense curvature matrices.

    (M + λI) p = −g,   θ⁺ = θ + α p,      M = ∇²L (Newton)  or  M = G = Jᵀ H_ℓ J (Gauss-Newton)

solved by Cholesky. Sources: Nocedal & Wright, *Numerical Optimization* (2nd ed.) — Newton step eq. 3.30,
line-search Newton with Hessian modification Algorithm 3.2, Cholesky with added multiple of the identity
Algorithm 3.3, eigenvalue modification §3.4 (eqs. 3.41–3.42), Gauss-Newton §10.3, Levenberg–Marquardt
§10.3; Levenberg (1944), Marquardt (1963); the ratio rule for λ as Moré (1978) and Martens (2010, §4.1)
use it. The source article's §1 (SEED.md) gives the Newton step and G = Jᵀ H_ℓ J.

Switches (defaults are the literature's usual choice):

``modification`` — what to do when M + λI is indefinite or singular:
  "levenberg_marquardt" (default): raise λ until Cholesky succeeds (N&W Alg. 3.3: λ ← max(2λ, β),
      β = 10⁻³·max|diag M|), then adapt λ between steps by the ratio ρ = (L(θ) − L(θ + αp)) / (−q(αp))
      of actual to predicted reduction, q(p) = gᵀp + ½ pᵀMp the *undamped* model:
      ρ < ¼ → λ ← λ·``damping_increase`` (3/2), ρ > ¾ → λ ← λ·``damping_decrease`` (2/3), λ below
      ``min_damping`` becomes 0 (pure Newton near the solution). With ``line_search="none"`` a trial with
      ρ ≤ ``eta`` (0) is rejected and retried with a larger λ, the k-th consecutive rejection multiplying λ
      by ``damping_increase``·2^{k−1} (Nielsen 1999), at most ``max_trials`` times per update.
  "eigenvalue": M = QΛQᵀ, Λ → max(Λ, δ) (N&W eq. 3.42, the Frobenius-nearest PD matrix),
      δ = ``eigenvalue_floor``·max|Λ|;  "eigenvalue_abs": Λ → max(|Λ|, δ) (Greenstadt 1967; "saddle-free").
  "error": raise ``NotPositiveDefiniteError`` (a ValueError) naming the alternatives.

``line_search`` — "none" (unit step; backtracking only on non-finite values), "armijo" (N&W Alg. 3.1,
  c₁ = 10⁻⁴, ρ = ½) or "strong_wolfe" (N&W Algs. 3.5/3.6). Default: "none" for "levenberg_marquardt" and
  "error" (the damping or nothing globalises), "armijo" for the eigenvalue modifications (N&W Alg. 3.2).

``damping`` — the initial (or, outside Levenberg–Marquardt, fixed) λ ≥ 0. Default 0.

Gauss-Newton uses the network oracle's dense GGN (for the losses of ``refopt.nn``, which are negative
log-likelihoods convex in the output, G is positive semi-definite); with the default modification it is
the Levenberg–Marquardt method. For a Gaussian loss on a linear model, one undamped step solves the
least-squares problem exactly.

This module also holds ``DescentMethod``, the skeleton every method of this family (Newton, Newton-CG,
the quasi-Newton methods, L-BFGS) shares: evaluate the loss and gradient at θ — reusing the value and
gradient of the previous update's accepted trial point when the batch is the same, so a full-batch run
pays for each point once — compute a direction, search along it, report. A direction that is not a
descent direction (gᵀp ≥ 0 or not finite) is replaced by −g and ``info["reset"]`` says so. Trial points
with a non-finite loss or gradient are backtracked from; nothing non-finite enters the state.
Dense methods refuse models with more than ``max_size`` parameters (default 8192) with a ValueError
naming the matrix-free alternatives ('newton_cg', 'lbfgs').
"""
from __future__ import annotations

import hashlib
import itertools
import math
import weakref
from typing import Any, Callable, NamedTuple, Optional

from ..serialize import register_state  # saved states are rebuilt by name from this registry
from .. import tree as T
from ..backend import to_host, xp
from ..curvature.dense import check_dense_size
from ..linalg import cholesky, symmetrize
from ..linesearch import (LINE_SEARCHES, LineSearchResult, armijo, fixed_step, minfunc_wolfe, precision_status,
                          rounding_error, strong_wolfe)
from .base import (Optimizer, check_bool, check_choice, check_int, check_nonnegative, check_positive, refuse,
                   step_info)
from .base import MAX_DENSE_SIZE, MAX_ITERATIONS  # upper bounds of integer hyperparameters

__all__ = ["Newton", "GaussNewton", "NewtonState", "NotPositiveDefiniteError", "DescentMethod", "Evaluation",
           "SearchOutcome", "batch_key", "search_along", "MODIFICATIONS", "initial_step", "INITIAL_STEPS",
           "FIRST_STEPS"]

MODIFICATIONS = ("levenberg_marquardt", "eigenvalue", "eigenvalue_abs", "error")
# The largest Levenberg–Marquardt damping: raising λ stops here instead of overflowing to inf (which
# left inf, then NaN, in the state after a few rejected steps, e.g. Gauss-Newton on a softmax MLP whose
# loss is at the rounding floor). At λ = 1e300 the step is −g/λ, i.e. no step at all.
MAX_DAMPING = 1e300
_DENSE_ALTERNATIVE = "the matrix-free 'newton_cg' (Hessian-free, products only) or 'lbfgs'"


class NotPositiveDefiniteError(ValueError):
    """M + λI is not positive definite and the method was told not to modify it."""


# --- the shared skeleton ----------------------------------------------------------------------
@register_state
class Evaluation(NamedTuple):
    """The loss and gradient at ``params`` on the batch with fingerprint ``batch``."""

    params: Any
    loss: float
    grad: Any
    batch: str


_serials = itertools.count()
_keys: "weakref.WeakKeyDictionary[Any, str]" = weakref.WeakKeyDictionary()


def batch_key(oracle) -> str:
    """A fingerprint of what the oracle evaluates: for a network ``Oracle`` a hash of its batch (X, y)
    (two oracles on the same data share it); for any other oracle a serial number of the object."""
    try:
        return _keys[oracle]
    except (KeyError, TypeError):
        pass
    if hasattr(oracle, "X") and hasattr(oracle, "y"):
        h = hashlib.blake2b(digest_size=16)
        for a in (oracle.X, oracle.y):
            host = to_host(a)
            h.update(str((host.shape, host.dtype.str)).encode())
            h.update(host.tobytes())
        key = "batch:" + h.hexdigest()
    else:
        key = f"oracle:{next(_serials)}"
    try:
        _keys[oracle] = key
    except TypeError:  # not weak-referenceable: fingerprint again next time
        pass
    return key


def _same_params(a, b) -> bool:
    if a is b:
        return True
    la, lb = T.leaves(a), T.leaves(b)
    return len(la) == len(lb) and all(x.shape == y.shape and bool(xp.array_equal(x, y)) for x, y in zip(la, lb))


def check_damping(damping) -> float:
    """The initial Levenberg–Marquardt λ: a number in [0, MAX_DAMPING], else a ValueError naming ``damping``."""
    lam = check_nonnegative("damping", damping)
    if lam > MAX_DAMPING:
        raise ValueError(f"damping must be at most MAX_DAMPING = {MAX_DAMPING:g}, got {lam:g}")
    return lam


class SearchOutcome(NamedTuple):
    """What a search along p from θ found; ``point`` is the accepted trial (None when α = 0)."""

    alpha: float
    point: Optional[Evaluation]
    result: LineSearchResult


def search_along(oracle, params, x, loss, g, p, method: str, alpha0: float = 1.0, c1: float = 1e-4,
                 c2: float = 0.9, max_evals: int = 30, key: Optional[str] = None,
                 approximate: bool = True) -> SearchOutcome:
    """Search φ(α) = L(θ + α p) (flat vectors x, g, p; ``params`` gives the tree shape) with ``method``.

    Each trial evaluates the loss and the gradient on ``oracle`` (the gradient at the accepted point is
    needed anyway: for the next step and for quasi-Newton pairs on the same batch). The error of the loss
    is taken as ε_k = ``linesearch.rounding_error(loss, eps)``, eps the unit roundoff of the parameters'
    dtype: ``strong_wolfe`` applies the approximate Wolfe conditions within it, and a failure of any
    search among values within it (minFunc's search included) has status "precision".
    """
    trials: dict = {}
    values: list = []

    def phi(alpha):
        trial = T.unravel(x + alpha * p, params)
        f, gt = oracle.value_and_grad(trial)
        gflat = T.ravel(gt)
        d = float(xp.vdot(gflat, p))
        if not (math.isfinite(f) and math.isfinite(d) and T.all_finite(gt)):
            f, d = math.inf, math.nan
        trials[alpha] = (trial, f, gt)
        values.append(f if math.isfinite(f) else math.nan)
        return f, d

    dphi0 = float(xp.vdot(g, p))
    eps_k = rounding_error(float(loss), float(xp.finfo(x.dtype).eps))
    if method == "strong_wolfe":
        res = strong_wolfe(phi, loss, dphi0, alpha0=alpha0, c1=c1, c2=c2, max_evals=max_evals,
                           approximate=approximate, epsilon_k=eps_k)
    elif method == "minfunc":
        res = minfunc_wolfe(phi, loss, dphi0, alpha0=alpha0, c1=c1, c2=c2, max_evals=max_evals,
                            direction_scale=float(xp.max(xp.abs(p))))
        res = precision_status(res, float(loss), values, eps_k)   # torch's points, refopt's classification
    elif method == "armijo":
        res = armijo(phi, loss, dphi0, alpha0=alpha0, c1=c1, max_evals=max_evals, epsilon_k=eps_k)
    else:
        res = fixed_step(phi, loss, dphi0, alpha0=alpha0, max_evals=max_evals)
    if res.alpha > 0:
        trial, f, gt = trials[res.alpha]
        return SearchOutcome(res.alpha, Evaluation(trial, f, gt, key or batch_key(oracle)), res)
    return SearchOutcome(0.0, None, res)


class DescentMethod(Optimizer):
    """Base of the Newton / quasi-Newton family: ``update`` = ``evaluate`` + ``step`` (see module docs).

    Subclasses implement ``step(params, state, oracle, loss, grad)`` for a point whose loss and
    gradient are known and finite; their state has a field ``point`` (an ``Evaluation`` or None).
    ``minimize`` calls ``evaluate`` and ``step`` separately so it can stop before stepping.
    """

    dense: bool = False
    max_size: Optional[int] = None
    first_step: str = "unit_length"   # α₀ of the first step (see ``initial_step``); the secant methods set it
    lr: float = 1.0                   # multiplies every α₀ (L-BFGS's ``lr``)
    descent_check: str = "reset"      # "reset": a non-descent direction becomes −g; "none": L-BFGS may keep it
    line_searches: tuple = LINE_SEARCHES  # the ``line_search`` choices (L-BFGS adds "minfunc")

    def set_line_search(self, line_search: str, c1: float, c2: float, max_evals: int,
                        approximate_wolfe: bool = True) -> None:
        """Validate and store the line-search hyperparameters: ``line_search``, 0 < c1 < c2 < 1, ``max_evals``,
        ``approximate_wolfe`` (``strong_wolfe``'s Hager–Zhang acceptance at the rounding level of f)."""
        self.line_search = check_choice("line_search", line_search, self.line_searches)
        self.approximate_wolfe = check_bool("approximate_wolfe", approximate_wolfe)
        self.c1 = check_positive("c1", c1)
        self.c2 = check_positive("c2", c2)
        if not self.c1 < self.c2 < 1:
            raise ValueError(f"need 0 < c1 < c2 < 1, got c1={c1!r}, c2={c2!r}")
        self.max_evals = check_int("max_evals", max_evals, maximum=MAX_ITERATIONS)

    def set_damping_factors(self, damping_increase: float, damping_decrease: float) -> None:
        """Validate and store the Levenberg–Marquardt factors, damping_decrease < 1 < damping_increase."""
        self.damping_increase = check_positive("damping_increase", damping_increase)
        self.damping_decrease = check_positive("damping_decrease", damping_decrease)
        if not self.damping_decrease < 1 < self.damping_increase:
            raise ValueError("need damping_decrease < 1 < damping_increase, got "
                             f"{damping_decrease!r} and {damping_increase!r}")

    def ratio_damping(self, lam: float, rho: float) -> float:
        """λ after a step with reduction ratio ρ (Moré 1978; Martens 2010, §4.1): ρ < ¼ → max(λ·increase,
        ``min_damping``), at most MAX_DAMPING (so λ never overflows to inf in the state), ρ > ¾ →
        λ·decrease, else λ. Needs ``set_damping_factors`` and ``min_damping``."""
        if rho < 0.25:
            return min(max(lam * self.damping_increase, self.min_damping), MAX_DAMPING)
        if rho > 0.75:
            return lam * self.damping_decrease
        return lam

    def check_size(self, params) -> None:
        """For a dense method, ValueError when the model has more than ``max_size`` parameters."""
        if self.dense:
            check_dense_size(T.size(params), self.max_size, f"{type(self).__name__}: the dense n×n matrix",
                             _DENSE_ALTERNATIVE)

    def evaluate(self, params, state, oracle):
        """(loss, gradient) at ``params``: the cached accepted trial point if it is this point on this
        batch, otherwise one ``value_and_grad`` call."""
        point = getattr(state, "point", None)
        if point is not None and point.batch == batch_key(oracle) and _same_params(point.params, params):
            return point.loss, point.grad
        return oracle.value_and_grad(params)

    def update(self, params, state, oracle):
        """``evaluate`` then ``step``; refuses a non-finite loss or gradient and takes no step at a zero gradient."""
        loss, g = self.evaluate(params, state, oracle)
        if not (math.isfinite(loss) and T.all_finite(g)):
            return refuse(params, state, loss, "non-finite loss or gradient at the current point: step refused", g)
        if T.norm(g) == 0.0:
            info = step_info(loss, g, step_norm=0.0, alpha=0.0, nfev=0, new_loss=loss, reset=False, accepted=True)
            info["message"] = "zero gradient: a stationary point, no step taken"
            return params, state, info
        return self.step(params, state, oracle, loss, g)

    def step(self, params, state, oracle, loss, g):
        """The method's step from a point with known, finite loss and gradient g: (params, state, info)."""
        raise NotImplementedError

    @staticmethod
    def descent_or_reset(g, p):
        """(p, reset): p itself when gᵀp < 0 and finite, else the steepest-descent direction −g."""
        d = float(xp.vdot(g, p))
        if math.isfinite(d) and d < 0 and bool(xp.all(xp.isfinite(p))):
            return p, False
        return -g, True

    def secant_step(self, params, state, oracle, loss, g, direction: Callable, first: bool, absorb: Callable):
        """The step the line-search secant methods (dense quasi-Newton, L-BFGS) share.

        p = ``direction(g)`` on the flat gradient (−g where it does not descend) is searched with
        ``self.line_search`` from α₀ = ``self.lr · initial_step(self.initial_step, …)`` (``first``: no pair
        yet; for a ``first_step`` other than "unit_length", the libraries' rule: the run's first step). A
        failed search takes no step and changes only the state's step count. Otherwise
        ``absorb(state, loss, point, s, y, Bs)`` returns the new state and the method's info entries, with
        s = αp, y = ∇L_B(θ⁺) − ∇L_B(θ) from the accepted trial ``point`` on the same batch, and Bs = −αg
        (exact for the B = H⁻¹ that gave p = −Hg; None after a reset to −g).
        """
        key = batch_key(oracle)
        x, gf = T.ravel(params), T.ravel(g)
        if self.descent_check == "none":
            p, reset = direction(gf), False
        else:
            p, reset = self.descent_or_reset(gf, direction(gf))
        if self.first_step != "unit_length":
            first = state.step == 0
        alpha0 = self.lr * initial_step(self.initial_step, gf, p, loss, state.prev_loss, first, self.first_step)
        out = search_along(oracle, params, x, loss, gf, p, self.line_search, alpha0, self.c1, self.c2,
                           self.max_evals, key, self.approximate_wolfe)
        if out.point is None:
            info = step_info(loss, g, step_norm=0.0, alpha=0.0, nfev=out.result.nfev, new_loss=loss, reset=reset,
                             accepted=False, line_search=out.result.status, pair_skipped=True)
            info["message"] = failed_search_message(reset, out.result.status)
            return params, state._replace(step=state.step + 1), info
        s = out.alpha * p
        y = T.ravel(out.point.grad) - gf
        new_state, extra = absorb(state, loss, out.point, s, y, None if reset else -out.alpha * gf)
        info = step_info(loss, g, step_norm=out.alpha * float(xp.linalg.norm(p)), alpha=out.alpha,
                         nfev=out.result.nfev, new_loss=out.point.loss, reset=reset, accepted=True,
                         line_search=out.result.status, approximate=out.result.approximate, **extra)
        info["message"] = RESET_MESSAGE if reset else ""
        return out.point.params, new_state, info


RESET_MESSAGE = "not a descent direction: reset to steepest descent"


def failed_search_message(reset: bool, status: str) -> str:
    """info["message"] of a step whose line search found no acceptable point."""
    if status == "precision":
        why = "line search failed (precision): no decrease is measurable at the rounding level of f; no step"
    else:
        why = f"line search failed ({status}): no step"
    return (RESET_MESSAGE + "; " if reset else "") + why


INITIAL_STEPS = ("interpolate", "unit")
FIRST_STEPS = ("unit_length", "gradient_l1", "interpolate")


def initial_step(rule: str, g, p, loss: float, prev_loss: float, first: bool,
                 first_rule: str = "unit_length") -> float:
    """The first trial step α₀ of a line search along p.

    The first step of a run (``first``: no curvature information yet) follows ``first_rule``:
    "unit_length" α₀ = min(1, 1/‖p‖₂), a step of length at most 1 (L-BFGS-B); "gradient_l1"
    α₀ = min(1, 1/‖g‖₁) (torch.optim.LBFGS); "interpolate" N&W eq. 3.60 below with the previous value
    taken as L_{k−1} = L_k + ‖g‖₂/2, i.e. α₀ = min(1, 1.01·‖g‖₂/(−gᵀp)) = min(1, 1.01/‖g‖₂) for p = −g
    (scipy's _minimize_bfgs: old_old_fval = f + ‖g‖/2).
    After that, "unit" gives α₀ = 1 and "interpolate" gives N&W eq. 3.60 with their safeguard,
    α₀ = min(1, 1.01 · 2 (L_k − L_{k−1}) / φ'(0)) (as scipy's BFGS does), falling back to 1.
    """
    if first:
        if first_rule == "gradient_l1":
            return min(1.0, 1.0 / float(xp.sum(xp.abs(g))))
        if first_rule == "interpolate":
            rule, prev_loss = "interpolate", loss + 0.5 * float(xp.linalg.norm(g))
        else:
            return min(1.0, 1.0 / float(xp.linalg.norm(p)))
    if rule == "interpolate" and math.isfinite(prev_loss):
        a = 1.01 * 2.0 * (loss - prev_loss) / float(xp.vdot(g, p))
        if math.isfinite(a) and a > 0:
            return min(1.0, a)
    return 1.0


# --- Newton and Gauss-Newton -----------------------------------------------------------------
@register_state
class NewtonState(NamedTuple):
    """Newton's state: the step count, the damping λ and the cached accepted trial point."""

    step: int
    damping: float            # λ, adapted in Levenberg–Marquardt mode
    point: Optional[Evaluation]  # loss and gradient at the current params (accepted trial), if known


def _cholesky(M):
    # None when M is not positive definite, on NumPy and CuPy alike (CuPy does not raise; see linalg.cholesky).
    return cholesky(M)


def _cho_solve(L, b):
    return xp.linalg.solve(L.T, xp.linalg.solve(L, b))


class Newton(DescentMethod):
    """Newton's method, (∇²L + λI) p = −g by Cholesky (see the module docs for the switches)."""

    name = "newton"
    switches = {"modification": MODIFICATIONS, "line_search": (None,) + LINE_SEARCHES}  # None: by modification
    dense = True
    curvature = "hessian"

    def __init__(self, damping: float = 0.0, modification: str = "levenberg_marquardt",
                 line_search: Optional[str] = None, c1: float = 1e-4, c2: float = 0.9, max_evals: int = 30,
                 damping_increase: float = 1.5, damping_decrease: float = 2.0 / 3.0, min_damping: float = 1e-8,
                 eta: float = 0.0, max_trials: int = 20, eigenvalue_floor: float = 1e-8,
                 max_size: Optional[int] = None, approximate_wolfe: bool = True):
        self.damping = check_damping(damping)
        self.modification = check_choice("modification", modification, MODIFICATIONS)
        if line_search is None:
            line_search = "armijo" if modification.startswith("eigenvalue") else "none"
        self.set_line_search(line_search, c1, c2, max_evals, approximate_wolfe)
        self.set_damping_factors(damping_increase, damping_decrease)
        self.min_damping = check_positive("min_damping", min_damping)
        self.eta = check_nonnegative("eta", eta)
        if self.eta >= 0.25:
            raise ValueError(f"eta must lie in [0, 1/4), got {eta!r}")
        self.max_trials = check_int("max_trials", max_trials, maximum=MAX_ITERATIONS)
        self.eigenvalue_floor = check_positive("eigenvalue_floor", eigenvalue_floor)
        self.max_size = None if max_size is None else check_int("max_size", max_size, maximum=MAX_DENSE_SIZE)

    def init(self, params) -> NewtonState:
        """Step 0, λ = ``damping``, no cached point; refuses a model too large for a dense matrix."""
        self.check_size(params)
        return NewtonState(0, self.damping, None)

    # the curvature matrix ------------------------------------------------------------------
    def curvature_matrix(self, oracle, params):
        """The dense n×n ∇²L at ``params`` (row-major ``tree.ravel`` order)."""
        return oracle.dense_hessian(params, max_size=self.max_size)

    # directions -----------------------------------------------------------------------------
    def _lm_factor(self, M, lam):
        """Cholesky of M + λI, raising λ as N&W Algorithm 3.3 does until it exists: (L, λ)."""
        n = M.shape[0]
        eye = xp.eye(n, dtype=M.dtype)
        L = _cholesky(M + lam * eye) if lam else _cholesky(M)
        if L is not None:
            return L, lam
        diag = xp.diagonal(M)
        beta = max(1e-3 * float(xp.max(xp.abs(diag))), self.min_damping)
        lam = min(max(2.0 * lam, beta, -float(xp.min(diag)) + beta), MAX_DAMPING)
        for _ in range(200):
            L = _cholesky(M + lam * eye)
            if L is not None or lam >= MAX_DAMPING:
                return L, lam
            lam = min(2.0 * lam, MAX_DAMPING)
        return None, lam

    def _eigen_direction(self, M, g, lam):
        evals, Q = xp.linalg.eigh(symmetrize(M))
        scale = float(xp.max(xp.abs(evals))) if evals.size else 0.0
        delta = self.eigenvalue_floor * scale if scale > 0 else self.eigenvalue_floor
        lam_mod = xp.abs(evals) if self.modification == "eigenvalue_abs" else evals
        lam_mod = xp.maximum(lam_mod, delta) + lam
        return -(Q @ ((Q.T @ g) / lam_mod))

    def _lm_update(self, lam, rho):
        """``ratio_damping``, except that a decrease below ``min_damping`` gives 0 (pure Newton)."""
        new = self.ratio_damping(lam, rho)
        return 0.0 if rho > 0.75 and new < self.min_damping else new

    # the step --------------------------------------------------------------------------------
    def step(self, params, state, oracle, loss, g):
        """One Newton step: dense curvature matrix, its modification, a line search or Levenberg–Marquardt trials."""
        self.check_size(params)
        key = batch_key(oracle)
        x, gf = T.ravel(params), T.ravel(g)
        M = self.curvature_matrix(oracle, params)
        if not bool(xp.all(xp.isfinite(M))):
            return refuse(params, state, loss, f"non-finite {self.curvature} matrix: step refused", g)
        lam = state.damping
        extra = {"nhev": 1}

        if self.modification in ("eigenvalue", "eigenvalue_abs"):
            p = self._eigen_direction(M, gf, lam)
            return self._search_and_finish(params, state, oracle, loss, g, x, gf, p, M, lam, key, extra)

        if self.modification == "error":
            L = _cholesky(M + lam * xp.eye(M.shape[0], dtype=M.dtype))
            if L is None:
                raise NotPositiveDefiniteError(
                    f"{type(self).__name__}: the {self.curvature} matrix + {lam:g}·I is not positive definite "
                    "(modification='error'); use modification='levenberg_marquardt' or 'eigenvalue', or a "
                    "larger damping")
            p = _cho_solve(L, -gf)
            return self._search_and_finish(params, state, oracle, loss, g, x, gf, p, M, lam, key, extra)

        # Levenberg–Marquardt
        if self.line_search != "none":
            L, lam = self._lm_factor(M, lam)
            if L is None:
                return refuse(params, state, loss, "could not make M + λI positive definite: step refused", g)
            p = _cho_solve(L, -gf)
            return self._search_and_finish(params, state, oracle, loss, g, x, gf, p, M, lam, key, extra,
                                           adapt=True)

        boost, rho, nfev = self.damping_increase, -math.inf, 0
        for trial in range(1, self.max_trials + 1):
            L, lam = self._lm_factor(M, lam)
            if L is None:
                break
            p = _cho_solve(L, -gf)
            pred = -(float(xp.vdot(gf, p)) + 0.5 * float(xp.vdot(p, M @ p)))
            new_params = T.unravel(x + p, params)
            f_new, g_new = oracle.value_and_grad(new_params)
            nfev += 1
            finite = math.isfinite(f_new) and T.all_finite(g_new)
            rho = (loss - f_new) / pred if finite and pred > 0 else -math.inf
            if finite and rho > self.eta:
                new_state = NewtonState(state.step + 1, self._lm_update(lam, rho),
                                        Evaluation(new_params, f_new, g_new, key))
                return new_params, new_state, step_info(
                    loss, g, step_norm=float(xp.linalg.norm(p)), alpha=1.0, damping=lam, rho=rho, trials=trial,
                    nfev=nfev, new_loss=f_new, reset=False, accepted=True, **extra)
            if lam >= MAX_DAMPING:  # every further trial would repeat this one
                break
            lam = min(max(lam * boost, self.min_damping), MAX_DAMPING)
            boost *= 2.0
        info = step_info(loss, g, step_norm=0.0, alpha=0.0, damping=lam, rho=rho, trials=self.max_trials, nfev=nfev,
                         new_loss=loss, reset=False, accepted=False, **extra)
        info["message"] = f"no acceptable step in {self.max_trials} trials (last ρ = {rho:.3g}); damping raised"
        return params, NewtonState(state.step + 1, lam, state.point), info

    def _search_and_finish(self, params, state, oracle, loss, g, x, gf, p, M, lam, key, extra, adapt=False):
        p, reset = self.descent_or_reset(gf, p)
        out = search_along(oracle, params, x, loss, gf, p, self.line_search, 1.0, self.c1, self.c2,
                           self.max_evals, key, self.approximate_wolfe)
        new_lam = lam
        if adapt:
            s = out.alpha * p
            pred = -(float(xp.vdot(gf, s)) + 0.5 * float(xp.vdot(s, M @ s)))
            rho = (loss - out.point.loss) / pred if out.point is not None and pred > 0 else -math.inf
            new_lam = self._lm_update(lam, rho)
            extra = dict(extra, rho=rho)
        if out.point is None:
            info = step_info(loss, g, step_norm=0.0, alpha=0.0, damping=lam, nfev=out.result.nfev, new_loss=loss,
                             reset=reset, accepted=False, line_search=out.result.status, **extra)
            info["message"] = failed_search_message(reset, out.result.status)
            return params, NewtonState(state.step + 1, new_lam, state.point), info
        info = step_info(loss, g, step_norm=out.alpha * float(xp.linalg.norm(p)), alpha=out.alpha, damping=lam,
                         nfev=out.result.nfev, new_loss=out.point.loss, reset=reset, accepted=True,
                         line_search=out.result.status, approximate=out.result.approximate, **extra)
        info["message"] = RESET_MESSAGE if reset else ""
        return out.point.params, NewtonState(state.step + 1, new_lam, out.point), info


class GaussNewton(Newton):
    """Gauss-Newton / Levenberg–Marquardt: (G + λI) p = −g with G = Jᵀ H_ℓ J (see the module docs)."""

    name = "gauss_newton"
    needs_network = True  # per-layer statistics, output-space curvature or sampled labels
    curvature = "GGN"

    def curvature_matrix(self, oracle, params):
        """The dense n×n GGN G = Jᵀ H_ℓ J at ``params``; ValueError for an oracle that has none."""
        if not hasattr(oracle, "dense_ggn"):
            raise ValueError("GaussNewton needs a network Oracle (model + likelihood loss) to form the Gauss-Newton "
                             f"matrix; {type(oracle).__name__} has none. For a plain function use 'newton'.")
        return oracle.dense_ggn(params, max_size=self.max_size)
