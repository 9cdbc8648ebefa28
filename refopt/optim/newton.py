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

Cost: a step forms the dense n×n matrix (n Hessian- or GGN-vector products, O(n²) memory) and factors it
(O(n³)); above ``SLOW_DENSE_SIZE`` = 1000 parameters ``init`` warns once (``warnings.warn``) and the first
step's ``info["message"]`` says so. Every step's ``info["nhev"]`` is 1, the dense matrices formed (the run
summary of ``refopt train`` adds them up).

The skeleton (evaluate, direction, globalise, report) is ``descent.DescentMethod``; the line search and
the ratio rules for λ are in ``globalisation``. This module holds the directions: the dense curvature
matrix, its modification, and the solve.
"""
from __future__ import annotations

import math
import warnings
from typing import NamedTuple, Optional

from .. import tree as T
from ..backend import xp
from ..linalg import cholesky, symmetrize
from ..linesearch import LINE_SEARCHES
from ..serialize import register_state
from .base import MAX_DENSE_SIZE, MAX_ITERATIONS, Switch, check_int, check_nonnegative, check_positive, refuse
from .descent import DescentMethod, Evaluation
from .globalisation import MAX_DAMPING, Outcome, check_damping, evaluate_trial, ratio_damping, reduction_ratio

__all__ = ["Newton", "GaussNewton", "NewtonState", "NotPositiveDefiniteError", "MODIFICATIONS", "MAX_DAMPING",
           "SLOW_DENSE_SIZE"]

MODIFICATIONS = ("levenberg_marquardt", "eigenvalue", "eigenvalue_abs", "error")
# Above this many parameters a dense step takes seconds (digits_mlp, 2,410 parameters: 5–15 s a step on a CPU).
SLOW_DENSE_SIZE = 1000


class NotPositiveDefiniteError(ValueError):
    """M + λI is not positive definite and the method was told not to modify it."""


# --- Newton and Gauss-Newton -----------------------------------------------------------------
@register_state
class NewtonState(NamedTuple):
    """Newton's state: the step count, the damping λ and the cached accepted trial point."""

    step: int
    damping: float            # λ, adapted in Levenberg–Marquardt mode
    point: Optional[Evaluation]  # loss and gradient at the current params (accepted trial), if known


def _cho_solve(L, b):
    return xp.linalg.solve(L.T, xp.linalg.solve(L, b))


def _predicted_decrease(g, s, M) -> float:
    """m(0) − m(s) = −(gᵀs + ½ sᵀMs), the decrease the undamped quadratic model predicts."""
    return -(float(xp.vdot(g, s)) + 0.5 * float(xp.vdot(s, M @ s)))


class Newton(DescentMethod):
    """Newton's method, (∇²L + λI) p = −g by Cholesky (see the module docs for the switches)."""

    name = "newton"
    conventions = (
        Switch("modification", MODIFICATIONS, "levenberg_marquardt",
               "what makes M + λI positive definite: raising λ, flooring the eigenvalues (|Λ| for _abs), or an error",
               "N&W Alg. 3.3 (λ raised), eq. 3.42 (eigenvalue); Greenstadt 1967 / saddle-free (eigenvalue_abs)"),
        Switch("line_search", (None,) + LINE_SEARCHES, None,
               "globalisation; None: derived from modification (none for levenberg_marquardt and error, armijo "
               "for the eigenvalue modifications)", "N&W Alg. 3.2 (armijo); Moré 1978 (the damping alone)"),
    )
    requires = frozenset({"value", "gradient", "dense_hessian"})
    dense = True
    curvature = "hessian"

    def __init__(self, damping: float = 0.0, modification: str = "levenberg_marquardt",
                 line_search: Optional[str] = None, c1: float = 1e-4, c2: float = 0.9, max_evals: int = 30,
                 damping_increase: float = 1.5, damping_decrease: float = 2.0 / 3.0, min_damping: float = 1e-8,
                 eta: float = 0.0, max_trials: int = 20, eigenvalue_floor: float = 1e-8,
                 max_size: Optional[int] = None, approximate_wolfe: bool = True):
        self.damping = check_damping(damping)
        self.set_switch("modification", modification)
        self.set_switch("line_search", line_search)
        if self.line_search is None:   # derived from the modification (see the Switch)
            self.line_search = "armijo" if self.modification.startswith("eigenvalue") else "none"
        self.set_line_search(self.line_search, c1, c2, max_evals, approximate_wolfe)
        self.set_damping_factors(damping_increase, damping_decrease)
        self.min_damping = check_positive("min_damping", min_damping)
        self.eta = check_nonnegative("eta", eta)
        if self.eta >= 0.25:
            raise ValueError(f"eta must lie in [0, 1/4), got {eta!r}")
        self.max_trials = check_int("max_trials", max_trials, maximum=MAX_ITERATIONS)
        self.eigenvalue_floor = check_positive("eigenvalue_floor", eigenvalue_floor)
        self.max_size = None if max_size is None else check_int("max_size", max_size, maximum=MAX_DENSE_SIZE)

    def init(self, params) -> NewtonState:
        """Step 0, λ = ``damping``, no cached point; refuses a model too large for a dense matrix and warns
        (once, here) when it is above ``SLOW_DENSE_SIZE``."""
        self.check_size(params)
        slow = self.slow_message(params)
        if slow:
            warnings.warn(slow, stacklevel=2)
        return NewtonState(0, self.damping, None)

    def slow_message(self, params) -> str:
        """The warning for a model above ``SLOW_DENSE_SIZE`` parameters, or "" for a smaller one."""
        n = T.size(params)
        if n <= SLOW_DENSE_SIZE:
            return ""
        return (f"{type(self).__name__}: {n} parameters > {SLOW_DENSE_SIZE}: each step forms a dense {n}×{n} "
                f"{self.curvature} matrix ({n} products) and factors it (O(n³)), so steps will be slow; "
                "newton_cg or trust_ncg use matrix-vector products only")

    # the curvature matrix ------------------------------------------------------------------
    def curvature_matrix(self, oracle, params):
        """The dense n×n ∇²L at ``params`` (row-major ``tree.ravel`` order)."""
        return oracle.dense_hessian(params, max_size=self.max_size)

    # directions -----------------------------------------------------------------------------
    def _lm_factor(self, M, lam):
        """Cholesky of M + λI, raising λ as N&W Algorithm 3.3 does until it exists: (L, λ)."""
        n = M.shape[0]
        eye = xp.eye(n, dtype=M.dtype)
        L = cholesky(M + lam * eye) if lam else cholesky(M)   # None when not positive definite (NumPy and CuPy)
        if L is not None:
            return L, lam
        diag = xp.diagonal(M)
        beta = max(1e-3 * float(xp.max(xp.abs(diag))), self.min_damping)
        lam = min(max(2.0 * lam, beta, -float(xp.min(diag)) + beta), MAX_DAMPING)
        for _ in range(200):
            L = cholesky(M + lam * eye)
            if L is not None or lam >= MAX_DAMPING:
                return L, lam
            lam = min(2.0 * lam, MAX_DAMPING)
        return None, lam

    def _eigen_direction(self, M, g, lam):
        """N&W eq. 3.42: p = −Q (max(Λ, δ) + λ)⁻¹ Qᵀ g, |Λ| for "eigenvalue_abs", δ = floor · max|Λ|."""
        evals, Q = xp.linalg.eigh(symmetrize(M))
        scale = float(xp.max(xp.abs(evals))) if evals.size else 0.0
        delta = self.eigenvalue_floor * scale if scale > 0 else self.eigenvalue_floor
        lam_mod = xp.abs(evals) if self.modification == "eigenvalue_abs" else evals
        lam_mod = xp.maximum(lam_mod, delta) + lam
        return -(Q @ ((Q.T @ g) / lam_mod))

    def direction(self, M, g, lam):
        """(p, λ) from (M + λI) p = −g as the modification says; p is None when λ could not make M + λI
        positive definite (Levenberg–Marquardt raises λ until Cholesky succeeds)."""
        if self.modification in ("eigenvalue", "eigenvalue_abs"):
            return self._eigen_direction(M, g, lam), lam
        if self.modification == "error":
            L = cholesky(M + lam * xp.eye(M.shape[0], dtype=M.dtype))
            if L is None:
                raise NotPositiveDefiniteError(
                    f"{type(self).__name__}: the {self.curvature} matrix + {lam:g}·I is not positive definite "
                    "(modification='error'); use modification='levenberg_marquardt' or 'eigenvalue', or a "
                    "larger damping")
            return _cho_solve(L, -g), lam
        L, lam = self._lm_factor(M, lam)
        return (None if L is None else _cho_solve(L, -g)), lam

    def _lm_update(self, lam, rho):
        """``ratio_damping``, except that a decrease below ``min_damping`` gives 0 (pure Newton)."""
        new = ratio_damping(lam, rho, self.damping_increase, self.damping_decrease, self.min_damping)
        return 0.0 if rho > 0.75 and new < self.min_damping else new

    # the step --------------------------------------------------------------------------------
    def step(self, params, state, oracle, loss, g):
        """One Newton step: dense curvature matrix, its modification, a line search or Levenberg–Marquardt trials;
        the first step of a model above ``SLOW_DENSE_SIZE`` says in its message that steps will be slow."""
        out = self._step(params, state, oracle, loss, g)
        slow = self.slow_message(params) if state.step == 0 else ""
        if slow:
            info = out[2]
            info["message"] = f"{info['message']}; {slow}" if info.get("message") else slow
        return out

    def _step(self, params, state, oracle, loss, g):
        self.check_size(params)
        x, gf = T.ravel(params), T.ravel(g)
        M = self.curvature_matrix(oracle, params)
        if not bool(xp.all(xp.isfinite(M))):
            return refuse(params, state, loss, f"non-finite {self.curvature} matrix: step refused", g)
        lam = state.damping
        if self.modification == "levenberg_marquardt" and self.line_search == "none":
            return self._damping_trials(params, state, oracle, loss, g, x, gf, M, lam)
        p, lam = self.direction(M, gf, lam)
        if p is None:
            return refuse(params, state, loss, "could not make M + λI positive definite: step refused", g)
        p, reset = self.descent_or_reset(gf, p)
        out = self.search(oracle, params, x, loss, gf, p)
        details = {"damping": lam, "nhev": 1}
        new_lam = lam
        if self.modification == "levenberg_marquardt":   # λ adapts by the ratio of the step taken
            details["rho"] = reduction_ratio(loss, out.point, _predicted_decrease(gf, out.alpha * p, M))
            new_lam = self._lm_update(lam, details["rho"])
        return self.finish(oracle, params, NewtonState(state.step + 1, new_lam, state.point), loss, g, p, out,
                           reset, **details)

    def _damping_trials(self, params, state, oracle, loss, g, x, gf, M, lam):
        """Levenberg–Marquardt without a line search: unit steps with λ raised after each rejected trial
        (ρ ≤ η), the k-th consecutive rejection multiplying λ by ``damping_increase``·2^{k−1} (Nielsen 1999)."""
        boost, rho, nfev = self.damping_increase, -math.inf, 0
        for trial in range(1, self.max_trials + 1):
            L, lam = self._lm_factor(M, lam)
            if L is None:
                break
            p = _cho_solve(L, -gf)
            pred = _predicted_decrease(gf, p, M)
            point = evaluate_trial(oracle, params, x, p)
            nfev += 1
            rho = reduction_ratio(loss, point, pred)
            if point is not None and rho > self.eta:
                return self.finish(oracle, params, NewtonState(state.step + 1, self._lm_update(lam, rho), None),
                                   loss, g, p, Outcome(1.0, point, nfev), damping=lam, rho=rho, trials=trial,
                                   nhev=1)
            if lam >= MAX_DAMPING:  # every further trial would repeat this one
                break
            lam = min(max(lam * boost, self.min_damping), MAX_DAMPING)
            boost *= 2.0
        return self.finish(oracle, params, NewtonState(state.step + 1, lam, state.point), loss, g, None,
                           Outcome(0.0, None, nfev), damping=lam, rho=rho, trials=self.max_trials, nhev=1,
                           message=f"no acceptable step in {self.max_trials} trials (last ρ = {rho:.3g}); "
                                   "damping raised")


class GaussNewton(Newton):
    """Gauss-Newton / Levenberg–Marquardt: (G + λI) p = −g with G = Jᵀ H_ℓ J (see the module docs)."""

    name = "gauss_newton"
    requires = frozenset({"value", "gradient", "dense_curvature"})
    curvature = "GGN"

    def curvature_matrix(self, oracle, params):
        """The dense n×n GGN G = Jᵀ H_ℓ J at ``params``; ValueError for an oracle that has none."""
        if "dense_curvature" not in oracle.provides:
            raise ValueError("GaussNewton needs a network Oracle (model + likelihood loss) to form the Gauss-Newton "
                             f"matrix; {type(oracle).__name__} has none. For a plain function use 'newton'.")
        return oracle.dense_ggn(params, max_size=self.max_size)
