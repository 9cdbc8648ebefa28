"""Dense quasi-Newton methods: SR1, Sherman–Morrison (SR1 on the inverse), BFGS, DFP.

With s = θ⁺ − θ and y = ∇L(θ⁺) − ∇L(θ), every rule makes the new matrix satisfy the secant equation
B⁺s = y (direct form, B ≈ ∇²L) or H⁺y = s (inverse form, H ≈ (∇²L)⁻¹). Equation numbers are those of
Nocedal & Wright, *Numerical Optimization*, 2nd ed. (2006):

    BFGS, inverse (6.17):   H⁺ = (I − ρ s yᵀ) H (I − ρ y sᵀ) + ρ s sᵀ,            ρ = 1/(yᵀs)
    BFGS, direct  (6.19):   B⁺ = B − B s sᵀ B / (sᵀBs) + y yᵀ / (yᵀs)
    DFP,  direct  (6.13):   B⁺ = (I − γ y sᵀ) B (I − γ s yᵀ) + γ y yᵀ,              γ = 1/(yᵀs)
    DFP,  inverse (6.15):   H⁺ = H − H y yᵀ H / (yᵀHy) + s sᵀ / (yᵀs)
    SR1,  direct  (6.24):   B⁺ = B + (y − Bs)(y − Bs)ᵀ / ((y − Bs)ᵀs)
    SR1,  inverse (6.25):   H⁺ = H + (s − Hy)(s − Hy)ᵀ / ((s − Hy)ᵀy)     ("Sherman–Morrison")

DFP is BFGS with the roles of s and y (and of B and H) exchanged; the two SR1 forms are inverses of each
other by the Sherman–Morrison formula. The rank-two rules are coded in expanded form (sums of outer
products), which keeps an exactly symmetric matrix exactly symmetric.

Safeguards and switches (defaults first):

* SR1 skip rule (6.26): the update is skipped when |sᵀ(y − Bs)| < r ‖s‖ ‖y − Bs‖ (inverse form:
  |yᵀ(s − Hy)| < r ‖y‖ ‖s − Hy‖), ``sr1_skip`` r = 10⁻⁸.
* BFGS / DFP curvature skip: the pair is skipped when sᵀy ≤ ε yᵀy, ``curvature_skip`` ε = 2.2·10⁻¹⁶
  (the rule of L-BFGS-B, Byrd et al. 1995), so the matrix stays positive definite.
* ``damping``: None (default) or "powell": Powell's damped BFGS (N&W Procedure 18.2, eqs. 18.14–18.16):
  y is replaced by r = θ y + (1 − θ) Bs with θ = 1 if sᵀy ≥ 0.2 sᵀBs, else 0.8 sᵀBs / (sᵀBs − sᵀy),
  which keeps sᵀr ≥ 0.2 sᵀBs > 0 (no skipping needed). The inverse form gets Bs = −α g for free when the
  step was p = −Hg, and solves H z = s otherwise.
* ``initial_matrix``: H₀, the initial *inverse* Hessian approximation (the direct forms start from
  B₀ = H₀⁻¹); default I. Must be symmetric positive definite.
* ``initial_scaling``: "none" (default: H₀ as given, scipy's choice), "once" (N&W eq. 6.20: before the
  first update H₀ ← γ H₀ with γ = sᵀy / yᵀH₀y, i.e. sᵀy / yᵀy for H₀ = I) or "every" (the same factor
  applied to the current matrix before every update: the self-scaling variable metric of Oren &
  Luenberger 1974). The direct forms divide B by the same γ (computing yᵀB⁻¹y by a solve), so direct and
  inverse runs stay inverses of each other. SR1 allows only "none": after H ← γH the SR1 denominator
  yᵀ(s − γHy) is exactly zero, so the inverse update would always be skipped and the direct one would
  make B singular. (Measured: "once" costs 3–4× the evaluations on ill-conditioned quadratics and saves
  half on Wood; see docs/newton_quasi_newton.md.)
* ``form``: "inverse" (BFGS, DFP default; N&W Algorithm 6.1 keeps H) or "direct" (SR1 default; solves
  B p = −g). ``ShermanMorrison`` is SR1 with ``form="inverse"``.
* ``line_search``: "strong_wolfe" (default, c₁ = 10⁻⁴, c₂ = 0.9), "armijo", "none", "minpack" (MINPACK-2's
  dcsrch, ``linesearch.dcsrch``) or "scipy" (scipy BFGS's dcsrch → zoom, ``linesearch.scipy_wolfe``). The first step,
  before any update, starts at α₀ = min(1, 1/‖p‖) (a unit-length step, as scipy's BFGS and L-BFGS-B do);
  later steps at ``initial_step``: "interpolate" (default, N&W eq. 3.60 with α₀ ← min(1, 1.01 α₀), as
  scipy's BFGS) or "unit" (α₀ = 1). An SR1 matrix may be indefinite, so its direction may not descend:
  it is then replaced by −g and ``info["reset"]`` says so.
* ``first_step``: α₀ of the run's first step: "unit_length" (default, min(1, 1/‖p‖), also used while no
  pair has been accepted), "interpolate" (scipy's _minimize_bfgs: eq. 3.60 with L₋₁ = L₀ + ‖g₀‖/2, i.e.
  min(1, 1.01‖g₀‖/(−g₀ᵀp)) = min(1, 1.01/‖g₀‖) from H₀ = I) or "gradient_l1" (min(1, 1/‖g₀‖₁),
  torch.optim.LBFGS's rule) or "inverse_norm" (1/‖p‖, uncapped: L-BFGS-B); the last three apply to the
  first step only, as in those libraries.

Mini-batches: the pair is formed on one batch (oBFGS, Schraudolph, Yu & Günter 2007): y = ∇L_B(θ⁺) −
∇L_B(θ), where ∇L_B(θ⁺) is the gradient the line search evaluated at the accepted trial point on the
same batch B — no extra evaluation. The next update evaluates its own batch afresh (on the same oracle, a
full batch, that evaluation is reused, so each point costs one evaluation: the rule is in ``descent``).
The step itself (direction, α₀, search, pair) is ``descent.SecantMethod.step``; this module gives the
direction and the update of the matrix.
"""
from __future__ import annotations

import math
from typing import Any, NamedTuple, Optional

from .. import tree as T
from ..backend import xp
from ..curvature.secant import bfgs_inverse_update
from ..linalg import cholesky, symmetrize
from ..serialize import register_state
from .base import MAX_DENSE_SIZE, Switch, check_choice, check_int, check_nonnegative, check_real_array
from .descent import LINE_SEARCH, Evaluation, SecantMethod
from .globalisation import FIRST_STEPS, INITIAL_STEPS

__all__ = ["bfgs_update", "bfgs_inverse_update", "dfp_update", "dfp_inverse_update", "sr1_update",
           "sr1_inverse_update", "powell_damping", "scaling_factor", "QuasiNewtonState", "SR1", "ShermanMorrison",
           "BFGS", "DFP", "INITIAL_SCALINGS", "check_initial_matrix"]

INITIAL_SCALINGS = ("once", "every", "none")   # the values of ``initial_scaling`` (L-BFGS's order)

# The switches of the dense methods, declared once; each class lists the ones that apply to it.
INITIAL_SCALING = Switch("initial_scaling", ("none", "once", "every"), "none",
                         "H₀ ← γH₀ before the first update (once), before every update (every), or never",
                         "scipy BFGS (none); N&W eq. 6.20 (once); Oren & Luenberger 1974 (every)")
DAMPING = Switch("damping", (None, "powell"), None, "Powell's damped y for BFGS (N&W Procedure 18.2)",
                 "scipy (None); N&W §18.3 (powell)")
INITIAL_STEP = Switch("initial_step", INITIAL_STEPS, "interpolate",
                      "α₀ after the first step: N&W eq. 3.60 interpolation, or 1",
                      "scipy BFGS (interpolate); N&W §7.2 (unit)")
FIRST_STEP = Switch("first_step", FIRST_STEPS, "unit_length",
                    "α₀ of the run's first step: min(1, 1/‖p‖₂), min(1, 1/‖g₀‖₁), eq. 3.60 from L₋₁ = L₀ + ‖g₀‖/2 "
                    "(min(1, 1.01‖g₀‖/(−g₀ᵀp))), or 1/‖p‖₂ uncapped",
                    "optax lbfgs (unit_length); torch.optim.LBFGS (gradient_l1); scipy BFGS (interpolate); "
                    "scipy L-BFGS-B (inverse_norm)")


def _form_switch(forms: tuple) -> Switch:
    """The ``form`` switch, ``forms[0]`` being the method's own (what None means)."""
    return Switch("form", forms, None, f"keep H ≈ (∇²L)⁻¹ (inverse) or B ≈ ∇²L and solve (direct); None: "
                  f"{forms[0]}", "N&W Alg. 6.1 and scipy (inverse H)",
                  check=lambda name, value: None if value is None else check_choice(name, value, forms))


# --- the update rules (pure functions on dense matrices) --------------------------------------------
# BFGS on the inverse, N&W (6.17), is ``curvature.secant.bfgs_inverse_update`` (imported above and exported
# here): H − ρ(s(Hy)ᵀ + (Hy)sᵀ) + (ρ² yᵀHy + ρ) s sᵀ, the same lines K-BFGS's factor updates use.
def bfgs_update(B, s, y):
    """BFGS on the Hessian approximation, N&W (6.19)."""
    Bs = B @ s
    return B - xp.outer(Bs, Bs) / float(xp.vdot(s, Bs)) + xp.outer(y, y) / float(xp.vdot(y, s))


def dfp_update(B, s, y):
    """DFP on the Hessian approximation, N&W (6.13), expanded like (6.17) with s ↔ y."""
    gamma = 1.0 / float(xp.vdot(y, s))
    Bs = B @ s
    sBs = float(xp.vdot(s, Bs))
    return B - gamma * (xp.outer(y, Bs) + xp.outer(Bs, y)) + (gamma * gamma * sBs + gamma) * xp.outer(y, y)


def dfp_inverse_update(H, s, y):
    """DFP on the inverse, N&W (6.15)."""
    Hy = H @ y
    return H - xp.outer(Hy, Hy) / float(xp.vdot(y, Hy)) + xp.outer(s, s) / float(xp.vdot(s, y))


def sr1_update(B, s, y, r: float = 1e-8):
    """SR1, N&W (6.24), with the skip rule (6.26). Returns (B⁺, skipped); a skip returns B itself."""
    u = y - B @ s
    denom = float(xp.vdot(u, s))
    if not abs(denom) >= r * float(xp.linalg.norm(s)) * float(xp.linalg.norm(u)) or denom == 0:
        return B, True
    return B + xp.outer(u, u) / denom, False


def sr1_inverse_update(H, s, y, r: float = 1e-8):
    """SR1 on the inverse (Sherman–Morrison), N&W (6.25); skip when |yᵀ(s − Hy)| < r‖y‖‖s − Hy‖."""
    v = s - H @ y
    denom = float(xp.vdot(v, y))
    if not abs(denom) >= r * float(xp.linalg.norm(y)) * float(xp.linalg.norm(v)) or denom == 0:
        return H, True
    return H + xp.outer(v, v) / denom, False


def powell_damping(s, y, Bs, threshold: float = 0.2):
    """Powell's damped y (N&W 18.14–18.15): returns (r, θ) with r = θ y + (1 − θ) Bs."""
    sy, sBs = float(xp.vdot(s, y)), float(xp.vdot(s, Bs))
    if sy >= threshold * sBs:
        return y, 1.0
    theta = (1.0 - threshold) * sBs / (sBs - sy)
    return theta * y + (1.0 - theta) * Bs, theta


def scaling_factor(s, y, Hy) -> float:
    """γ = sᵀy / yᵀHy: N&W (6.20) for H = I, Oren & Luenberger's self-scaling factor in general;
    NaN when it is not a positive finite number (then no scaling is done)."""
    sy, yHy = float(xp.vdot(s, y)), float(xp.vdot(y, Hy))
    gamma = sy / yHy if yHy != 0 else math.nan
    return gamma if math.isfinite(gamma) and gamma > 0 and sy > 0 else math.nan


_RULES = {("bfgs", "inverse"): bfgs_inverse_update, ("bfgs", "direct"): bfgs_update,
          ("dfp", "inverse"): dfp_inverse_update, ("dfp", "direct"): dfp_update,
          ("sr1", "inverse"): sr1_inverse_update, ("sr1", "direct"): sr1_update}


def check_initial_matrix(H0, name: str = "initial_matrix"):
    """H₀ as an array, or ValueError unless it is a finite symmetric positive-definite square matrix."""
    if H0 is None:
        return None
    H0 = check_real_array(name, H0)
    if H0.ndim != 2 or H0.shape[0] != H0.shape[1] or H0.shape[0] == 0:
        raise ValueError(f"{name} must be a square n×n matrix, got shape {tuple(H0.shape)}")
    if not bool(xp.all(xp.isfinite(H0))):
        raise ValueError(f"{name} contains NaN or Inf")
    if not bool(xp.allclose(H0, H0.T, rtol=1e-12, atol=1e-14 * float(xp.max(xp.abs(H0))))):
        raise ValueError(f"{name} must be symmetric")
    if cholesky(H0) is None:  # NumPy raises, CuPy returns a partial factor: linalg.cholesky checks both
        raise ValueError(f"{name} must be positive definite (Cholesky failed)")
    return H0


# --- the optimizers -----------------------------------------------------------------------------
@register_state
class QuasiNewtonState(NamedTuple):
    """Dense quasi-Newton state: step count, B or H, the "once" flag, accepted pairs, previous loss, cached point."""

    step: int
    matrix: Any               # B (form "direct") or H (form "inverse"), n×n over tree.ravel order
    scaled: bool              # whether the "once" scaling has been applied
    updates: int              # pairs accepted so far
    prev_loss: float          # L at the previous iterate (for the interpolated initial step), NaN at first
    point: Optional[Evaluation]


class _QuasiNewton(SecantMethod):
    """Line-search quasi-Newton method on a dense matrix (see the module docs)."""

    rule = "bfgs"
    forms = ("inverse", "direct")
    dense = True

    def __init__(self, form: Optional[str] = None, initial_matrix=None, initial_scaling: str = "none",
                 line_search: str = "strong_wolfe", c1: float = 1e-4, c2: float = 0.9, max_evals: int = 30,
                 curvature_skip: float = 2.2e-16, damping: Optional[str] = None, sr1_skip: float = 1e-8,
                 initial_step: str = "interpolate", max_size: Optional[int] = None, first_step: str = "unit_length",
                 approximate_wolfe: bool = True):
        self.set_switch("form", form)
        if self.form is None:   # the method's own form (see the Switch)
            self.form = self.forms[0]
        self.initial_matrix = check_initial_matrix(initial_matrix)
        # initial_scaling and damping are switches of BFGS (DFP: initial_scaling); the others must leave them off
        self.initial_scaling = INITIAL_SCALING.validate(initial_scaling)
        if self.rule == "sr1" and self.initial_scaling != "none":
            raise ValueError("initial_scaling must be 'none' for SR1: with H ← (sᵀy / yᵀHy) H the SR1 denominator "
                             "yᵀ(s − Hy) is exactly 0, so every update would be skipped (B would be singular)")
        self.set_line_search(line_search, c1, c2, max_evals, approximate_wolfe)
        self.curvature_skip = check_nonnegative("curvature_skip", curvature_skip)
        self.damping = DAMPING.validate(damping)
        if self.damping and self.rule != "bfgs":
            raise ValueError("damping='powell' is defined for BFGS only")
        self.sr1_skip = check_nonnegative("sr1_skip", sr1_skip)
        self.set_switch("initial_step", initial_step)
        self.set_switch("first_step", first_step)
        self.max_size = None if max_size is None else check_int("max_size", max_size, maximum=MAX_DENSE_SIZE)

    def init(self, params) -> QuasiNewtonState:
        """M = H₀ (inverse form) or H₀⁻¹ (direct form), I by default, and step 0; refuses n over ``max_size``."""
        self.check_size(params)
        n = T.size(params)
        dtype = T.leaves(params)[0].dtype
        if self.initial_matrix is None:
            M = xp.eye(n, dtype=dtype)
        else:
            if self.initial_matrix.shape != (n, n):
                raise ValueError(f"initial_matrix has shape {tuple(self.initial_matrix.shape)}, but the parameters "
                                 f"have n={n} entries")
            M = self.initial_matrix.astype(dtype)
            if self.form == "direct":
                M = symmetrize(xp.linalg.inv(M))
        return QuasiNewtonState(0, M, False, 0, math.nan, None)

    def direction(self, state: QuasiNewtonState, g):
        """p = −H g (inverse form) or the solution of B p = −g (direct form; NaNs when the solve fails)."""
        M = state.matrix
        if self.form == "inverse":
            return -(M @ g)
        try:
            return xp.linalg.solve(M, -g)
        except Exception:  # a singular SR1 matrix: the caller resets to steepest descent
            return xp.full_like(g, math.nan)

    def first(self, state: QuasiNewtonState) -> bool:
        """No pair accepted yet."""
        return state.updates == 0

    def update_matrix(self, state: QuasiNewtonState, s, y, Bs_from_step):
        """(M⁺, scaled, details) from the pair (s, y); M⁺ is M itself when the pair is skipped.

        ``Bs_from_step`` is −α g when the step was p = −Hg (then Bs = −αg exactly), else None.
        """
        M, scaled = state.matrix, state.scaled
        sy = float(xp.vdot(s, y))
        details = {"sy": sy, "pair_skipped": False, "scale": 1.0, "theta": 1.0}
        if self.rule != "sr1" and self.damping is None and not sy > self.curvature_skip * float(xp.vdot(y, y)):
            details["pair_skipped"] = True
            return M, scaled, details
        # initial scaling (N&W 6.20 / Oren–Luenberger)
        gamma = math.nan
        if self.initial_scaling == "every" or (self.initial_scaling == "once" and not scaled):
            Hy = M @ y if self.form == "inverse" else xp.linalg.solve(M, y)
            gamma = scaling_factor(s, y, Hy)
        Ms = M
        if math.isfinite(gamma):
            Ms = gamma * M if self.form == "inverse" else M / gamma
            details["scale"] = gamma
        y_used = y
        if self.damping == "powell":
            if self.form == "direct":
                Bs = Ms @ s
            elif Bs_from_step is not None:
                Bs = Bs_from_step / gamma if math.isfinite(gamma) else Bs_from_step
            else:
                Bs = xp.linalg.solve(Ms, s)
            y_used, details["theta"] = powell_damping(s, y, Bs)
        rule = _RULES[(self.rule, self.form)]
        if self.rule == "sr1":
            M_new, skipped = rule(Ms, s, y_used, self.sr1_skip)
            if skipped:
                details["pair_skipped"] = True
                return M, scaled, details
        else:
            M_new = rule(Ms, s, y_used)
        if not bool(xp.all(xp.isfinite(M_new))):
            details["pair_skipped"] = True
            return M, scaled, details
        return M_new, scaled or math.isfinite(gamma), details

    def absorb(self, state: QuasiNewtonState, loss, s, y, Bs):
        """The state after the accepted step s (see ``descent.SecantMethod``), and the pair's details."""
        M, scaled, details = self.update_matrix(state, s, y, Bs if self.form == "inverse" else None)
        new_state = state._replace(step=state.step + 1, matrix=M, scaled=scaled,
                                   updates=state.updates + (not details["pair_skipped"]), prev_loss=loss)
        return new_state, details


class BFGS(_QuasiNewton):
    """BFGS (N&W Algorithm 6.1), inverse form by default; ``form="direct"`` keeps B and solves."""

    name = "bfgs"
    rule = "bfgs"
    conventions = (_form_switch(("inverse", "direct")), INITIAL_SCALING, DAMPING, INITIAL_STEP, FIRST_STEP, LINE_SEARCH)


class DFP(_QuasiNewton):
    """Davidon–Fletcher–Powell, inverse form (6.15) by default; ``form="direct"`` uses (6.13)."""

    name = "dfp"
    rule = "dfp"
    conventions = (_form_switch(("inverse", "direct")), INITIAL_SCALING, INITIAL_STEP, FIRST_STEP, LINE_SEARCH)


class SR1(_QuasiNewton):
    """Symmetric rank-one on B (6.24) with the skip rule (6.26), line search along −B⁻¹g."""

    name = "sr1"
    rule = "sr1"
    forms = ("direct", "inverse")
    conventions = (_form_switch(forms), INITIAL_STEP, FIRST_STEP, LINE_SEARCH)


class ShermanMorrison(_QuasiNewton):
    """SR1 applied to the inverse, H⁺ = H + (s − Hy)(s − Hy)ᵀ / ((s − Hy)ᵀy) (6.25): no solve needed."""

    name = "sherman_morrison"
    rule = "sr1"
    forms = ("inverse", "direct")
    conventions = (_form_switch(forms), INITIAL_STEP, FIRST_STEP, LINE_SEARCH)
