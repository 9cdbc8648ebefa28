"""Globalisation of the Newton family: how far to go along a direction, or whether to take a trial step.

A direction p (Newton, Gauss-Newton, quasi-Newton, L-BFGS, truncated CG) says where to go from θ; the
globalisation says how far, so that the method converges from far away too (Nocedal & Wright,
*Numerical Optimization*, 2nd ed., Ch. 3 and 4). Two families, as in scipy.optimize:

Line search (N&W Ch. 3): θ⁺ = θ + α p with α from a search on φ(α) = L(θ + α p) — ``search_along``
dispatches to ``refopt.linesearch`` ("strong_wolfe" N&W Algs. 3.5/3.6, "armijo" Alg. 3.1, "minfunc"
torch's strong Wolfe, "minpack" MINPACK-2's dcsrch as L-BFGS-B calls it, "scipy" scipy BFGS's dcsrch
→ zoom fallback, "optax_zoom" optax's zoom along its update u = α₀ p, "none" a unit step backtracking only on
non-finite values) and keeps the trial
points it evaluated, so the accepted one's loss and gradient need not be computed again. The first trial
α₀ comes from ``initial_step`` (N&W eq. 3.60 or a unit step; the first step of a run by a library's rule).

Ratio tests (N&W Ch. 4; Moré 1978): a trial step s is judged by

    ρ = (L(θ) − L(θ + s)) / (m(0) − m(s)),      m(s) = gᵀs + ½ sᵀMs   (``reduction_ratio``)

and either the trust-region radius adapts (N&W Algorithm 4.1, ``trust_radius``: ρ < ¼ → Δ ← ¼Δ; ρ > ¾
with ‖s‖ = Δ → Δ ← min(2Δ, Δmax)) or the Levenberg–Marquardt damping λ of (M + λI) p = −g does, the
damping being a trust region in disguise (Moré 1978; Martens 2010, §4.1; ``ratio_damping``: ρ < ¼ →
λ ← max(λ·increase, λ_min), ρ > ¾ → λ ← λ·decrease). λ never exceeds ``MAX_DAMPING``.

Nothing here knows about optimizer states: the functions take flat vectors and numbers and return
``Outcome``s (the step α, the accepted trial point, the evaluations used, the search's result).
"""
from __future__ import annotations

import math
from typing import Any, NamedTuple, Optional

from .. import tree as T
from ..backend import xp
from ..linesearch import (LineSearchResult, armijo, dcsrch, fixed_step, minfunc_wolfe, optax_zoom,
                          precision_status, rounding_error, scipy_wolfe, strong_wolfe)
from .base import check_nonnegative

__all__ = ["Trial", "Outcome", "search_along", "evaluate_trial", "initial_step", "INITIAL_STEPS", "FIRST_STEPS",
           "reduction_ratio", "trust_radius", "ratio_damping", "check_damping", "MAX_DAMPING"]

# The largest Levenberg–Marquardt damping: raising λ stops here instead of overflowing to inf (which
# left inf, then NaN, in the state after a few rejected steps, e.g. Gauss-Newton on a softmax MLP whose
# loss is at the rounding floor). At λ = 1e300 the step is −g/λ, i.e. no step at all.
MAX_DAMPING = 1e300

INITIAL_STEPS = ("interpolate", "unit")
FIRST_STEPS = ("unit_length", "gradient_l1", "interpolate", "inverse_norm")


class Trial(NamedTuple):
    """A point the globalisation evaluated: its params (a tree), loss and gradient (finite)."""

    params: Any
    loss: float
    grad: Any


class Outcome(NamedTuple):
    """How a step ended: the step α along p (0.0 when none was taken), the accepted ``point`` (None when
    none), the loss-and-gradient evaluations used, and the line search's result (None without one)."""

    alpha: float
    point: Optional[Trial]
    nfev: int
    search: Optional[LineSearchResult] = None


def check_damping(damping) -> float:
    """The initial Levenberg–Marquardt λ: a number in [0, MAX_DAMPING], else a ValueError naming ``damping``."""
    lam = check_nonnegative("damping", damping)
    if lam > MAX_DAMPING:
        raise ValueError(f"damping must be at most MAX_DAMPING = {MAX_DAMPING:g}, got {lam:g}")
    return lam


# --- line search -----------------------------------------------------------------------------------
def search_along(oracle, params, x, loss, g, p, method: str, alpha0: float = 1.0, c1: float = 1e-4,
                 c2: float = 0.9, max_evals: int = 30, approximate: bool = True) -> Outcome:
    """Search φ(α) = L(θ + α p) (flat vectors x, g, p; ``params`` gives the tree shape) with ``method``.

    Each trial evaluates the loss and the gradient on ``oracle`` (the gradient at the accepted point is
    needed anyway: for the next step and for quasi-Newton pairs on the same batch). The error of the loss
    is taken as ε_k = ``linesearch.rounding_error(loss, eps)``, eps the unit roundoff of the parameters'
    dtype: ``strong_wolfe`` applies the approximate Wolfe conditions within it, and a failure of any
    search among values within it (minFunc's search included) has status "precision".
    """
    trials: dict = {}
    values: list = []
    step_scale = 1.0   # α = step_scale · the search's step (optax measures steps along u = α₀ p)

    def phi(alpha, u=p):
        trial = T.unravel(x + alpha * u, params)
        f, gt = oracle.value_and_grad(trial)
        gflat = T.ravel(gt)
        d = float(xp.vdot(gflat, u))
        if not (math.isfinite(f) and math.isfinite(d) and T.all_finite(gt)):
            f, d = math.inf, math.nan
        trials[alpha] = Trial(trial, f, gt)
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
    elif method == "minpack":   # MINPACK-2 dcsrch as L-BFGS-B's lnsrlb calls it (its xtol, stpmin, stpmax)
        res = dcsrch(phi, loss, dphi0, alpha0=alpha0, c1=c1, c2=c2, xtol=0.1, stpmin=0.0,
                     stpmax=max(1e10, alpha0), max_evals=max_evals, epsilon_k=eps_k)
    elif method == "scipy":     # scipy's _line_search_wolfe12: dcsrch, then scipy's zoom where it fails
        res = scipy_wolfe(phi, loss, dphi0, alpha0=alpha0, c1=c1, c2=c2, max_evals=max_evals, epsilon_k=eps_k)
    elif method == "optax_zoom":   # optax.lbfgs: updates u = α₀ p, its zoom's first trial 1 along u
        u, step_scale = alpha0 * p, alpha0
        res = optax_zoom(lambda eta: phi(eta, u), loss, float(xp.vdot(g, u)), alpha0=1.0, c1=c1, c2=c2,
                         max_evals=max_evals, approx_dec_rtol=1e-6 if approximate else None, epsilon_k=eps_k)
    elif method == "armijo":
        res = armijo(phi, loss, dphi0, alpha0=alpha0, c1=c1, max_evals=max_evals, epsilon_k=eps_k)
    else:
        res = fixed_step(phi, loss, dphi0, alpha0=alpha0, max_evals=max_evals)
    if res.alpha > 0:
        point = trials[res.alpha]
        if step_scale != 1.0:
            res = res._replace(alpha=step_scale * res.alpha)
        return Outcome(res.alpha, point, res.nfev, res)
    return Outcome(0.0, None, res.nfev, res)


def initial_step(rule: str, g, p, loss: float, prev_loss: float, first: bool,
                 first_rule: str = "unit_length") -> float:
    """The first trial step α₀ of a line search along p.

    The first step of a run (``first``: no curvature information yet) follows ``first_rule``:
    "unit_length" α₀ = min(1, 1/‖p‖₂), a step of length at most 1 (L-BFGS-B); "gradient_l1"
    α₀ = min(1, 1/‖g‖₁) (torch.optim.LBFGS); "interpolate" N&W eq. 3.60 below with the previous value
    taken as L_{k−1} = L_k + ‖g‖₂/2, i.e. α₀ = min(1, 1.01·‖g‖₂/(−gᵀp)) = min(1, 1.01/‖g‖₂) for p = −g
    (scipy's _minimize_bfgs: old_old_fval = f + ‖g‖/2); "inverse_norm" α₀ = 1/‖p‖₂, uncapped (L-BFGS-B's
    lnsrlb: stp = 1/‖d‖ on iteration 0, however small ‖d‖ is).
    After that, "unit" gives α₀ = 1 and "interpolate" gives N&W eq. 3.60 with their safeguard,
    α₀ = min(1, 1.01 · 2 (L_k − L_{k−1}) / φ'(0)) (as scipy's BFGS does), falling back to 1.
    """
    if first:
        if first_rule == "inverse_norm":
            return 1.0 / float(xp.linalg.norm(p))
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


# --- ratio tests: trust region and Levenberg–Marquardt --------------------------------------------
def evaluate_trial(oracle, params, x, s) -> Optional[Trial]:
    """The loss and gradient at θ + s (flat x, s; ``params`` gives the tree shape); None when either is not
    finite (a trial that can never be accepted)."""
    trial = T.unravel(x + s, params)
    f, gt = oracle.value_and_grad(trial)
    return Trial(trial, f, gt) if math.isfinite(f) and T.all_finite(gt) else None


def reduction_ratio(loss: float, trial: Optional[Trial], predicted: float) -> float:
    """ρ = (L(θ) − L(θ + s)) / predicted, predicted = m(0) − m(s); −inf when there is no finite trial or the
    model predicts no decrease (such a step is always rejected and shrinks the region)."""
    return (loss - trial.loss) / predicted if trial is not None and predicted > 0 else -math.inf


def trust_radius(radius: float, rho: float, on_boundary: bool, max_radius: float) -> float:
    """Δ after a trial with ratio ρ (N&W Algorithm 4.1): ¼Δ when ρ < ¼, min(2Δ, Δmax) when ρ > ¾ and the
    step reached the boundary, else Δ."""
    if rho < 0.25:
        return 0.25 * radius
    if rho > 0.75 and on_boundary:
        return min(2.0 * radius, max_radius)
    return radius


def ratio_damping(lam: float, rho: float, increase: float, decrease: float, min_damping: float) -> float:
    """λ after a step with reduction ratio ρ (Moré 1978; Martens 2010, §4.1): ρ < ¼ → max(λ·increase,
    ``min_damping``), at most MAX_DAMPING (so λ never overflows to inf in the state), ρ > ¾ → λ·decrease,
    else λ."""
    if rho < 0.25:
        return min(max(lam * increase, min_damping), MAX_DAMPING)
    if rho > 0.75:
        return lam * decrease
    return lam
