"""Limited-memory BFGS by the two-loop recursion.

    p = −H_k g,   H_k = BFGS updates (N&W 6.17) of H_k⁰ with the last m pairs (s_i, y_i),
    H_k⁰ = γ_k D,  γ_k = s_{k−1}ᵀ y_{k−1} / y_{k−1}ᵀ D y_{k−1}                       (N&W eq. 7.20)

computed without forming H (Nocedal & Wright, *Numerical Optimization*, 2nd ed., Algorithm 7.4, the
two-loop recursion; Algorithm 7.5 is the method; Nocedal 1980, Liu & Nocedal 1989). Cost O(mn) per step.

Switches (defaults first):

* ``memory`` m ≥ 1: pairs kept (default 10, as L-BFGS-B and scipy).
* ``initial_scaling``: "every" (N&W 7.20, γ_k from the newest pair at every step), "once" (γ from the
  first accepted pair, then frozen: this is dense BFGS with ``initial_scaling="once"``), "none" (γ = 1).
* ``initial_matrix``: D, a positive scalar or a positive vector (a diagonal H⁰); default 1.
* ``curvature_skip`` ε and ``curvature_skip_rule``: "relative" (default) skips a pair with sᵀy ≤ ε yᵀy
  (L-BFGS-B's rule, ε = 2.2·10⁻¹⁶), "absolute" one with sᵀy ≤ ε (torch.optim.LBFGS: ε = 10⁻¹⁰), "never"
  stores every pair with a finite sᵀy, with ρ = 1/sᵀy (0 when sᵀy = 0) and γ from it (optax's
  scale_by_lbfgs, which never skips; γ = 1 when y = 0). A skipped pair leaves the history exactly as it
  was. With "never" H may be indefinite (see ``descent_check``).
* ``descent_check``: "reset" (default) replaces a direction with gᵀp ≥ 0 by −g (``info["reset"]``);
  "none" keeps it (optax's scale_by_lbfgs, which checks nothing): with ``line_search="none"`` the step
  is taken uphill, a line search reports "not_descent" and no step is taken.
* ``damping``: None or "powell": Powell's damped y (N&W 18.14–18.15) using Bs = −α g, exact for the
  matrix that produced p = −Hg (on a step reset to −g, Bs is unknown and the skip rule applies instead).
* ``line_search``: "strong_wolfe" (default, c₁ = 10⁻⁴, c₂ = 0.9; N&W Algorithms 3.5-3.6), "armijo",
  "none", or "minfunc" (``linesearch.minfunc_wolfe``: minFunc's strong-Wolfe search as
  torch.optim.LBFGS(line_search_fn="strong_wolfe") runs it, max_evals = torch's max_ls + 1), or "minpack"
  (``linesearch.dcsrch``: MINPACK-2's search as L-BFGS-B calls it, xtol = 0.1, stpmax = 1e10), or "optax_zoom"
  (``linesearch.optax_zoom``: optax's zoom line search, its steps measured along u = α₀p as optax's update,
  approx_dec_rtol = 1e-6 with ``approximate_wolfe``, None without; optax.lbfgs uses max_evals = 20); the first step
  starts at α₀ from ``first_step``, later ones at ``initial_step``: "unit" (default, α₀ = 1: N&W §7.2 and
  L-BFGS-B) or "interpolate" (N&W eq. 3.60, as dense BFGS's default).
* ``approximate_wolfe`` (default True): ``strong_wolfe`` accepts by Hager & Zhang's approximate Wolfe
  conditions where f's values are within rounding (``linesearch`` docs); a search that can make no
  progress at that level reports ``info["line_search"] == "precision"`` and takes no step.
* ``first_step``: "unit_length" (default: α₀ = min(1, 1/‖p‖₂), a step of length at most 1, used while
  no pair has been stored), "gradient_l1" (α₀ = min(1, 1/‖g₀‖₁) on the run's first step only:
  torch.optim.LBFGS), "interpolate" (scipy's first BFGS trial min(1, 1.01‖g₀‖/(−g₀ᵀp))) or
  "inverse_norm" (α₀ = 1/‖p‖₂ uncapped on the run's first step: L-BFGS-B).
* ``lr`` η > 0 (default 1): multiplies every α₀ — with ``line_search="none"`` the step is η·α₀ p, as
  torch.optim.LBFGS(lr=η); with a search, η is its first trial (torch's strong-Wolfe start).
  ``schedule`` (default None: constant; ``optim/schedules.py``) replaces η by η_t, t = the steps taken
  (a step with η_t = 0 is no step: the search needs α₀ > 0).

One ``update`` is one L-BFGS iteration. torch.optim.LBFGS runs up to ``max_iter`` (default 20)
iterations per ``step()`` call (with state, including the iteration count, kept across calls), so its
parameters after j calls are refopt's after j·max_iter updates, as long as none of torch's early exits
(tolerance_grad, tolerance_change, max_eval) fires.

With ``memory`` ≥ the number of steps, ``initial_scaling="once"`` or "none" and the same D, the iterates
are those of dense ``BFGS`` (tested). Mini-batches: as in ``quasi_newton``, each pair is formed on one
batch from the line search's accepted trial point (oLBFGS, Schraudolph, Yu & Günter 2007).
"""
from __future__ import annotations

import math
import numbers
from typing import NamedTuple, Optional

from .. import tree as T
from ..backend import xp
from ..linesearch import LINE_SEARCHES
from ..serialize import register_state
from .base import MAX_MEMORY, Switch, check_int, check_nonnegative, check_positive, check_real_array
from .descent import Evaluation, SecantMethod
from .quasi_newton import FIRST_STEP, INITIAL_SCALINGS, powell_damping

__all__ = ["LBFGS", "LBFGSState", "two_loop", "CURVATURE_SKIP_RULES"]

CURVATURE_SKIP_RULES = ("relative", "absolute", "never")


@register_state
class LBFGSState(NamedTuple):
    """L-BFGS's state: the step count, the last m pairs (s_i, y_i, ρ_i), γ, the previous loss and the cached point."""

    step: int
    s: tuple          # the last m steps s_i = θ_{i+1} − θ_i (flat vectors), oldest first
    y: tuple          # the matching gradient differences y_i
    rho: tuple        # ρ_i = 1 / (y_iᵀ s_i)
    gamma: float      # the scale γ of H⁰ = γ D (NaN until a pair has set it, for "once"/"every")
    prev_loss: float  # L at the previous iterate (for the interpolated initial step), NaN at first
    point: Optional[Evaluation]


def two_loop(g, s, y, rho, gamma: float = 1.0, D=None):
    """H g by N&W Algorithm 7.4, H the BFGS matrix of the pairs (oldest first) from H⁰ = γ D."""
    q = g
    a = [0.0] * len(s)
    for i in range(len(s) - 1, -1, -1):
        a[i] = rho[i] * float(xp.vdot(s[i], q))
        q = q - a[i] * y[i]
    r = gamma * (q if D is None else D * q)
    for i in range(len(s)):
        b = rho[i] * float(xp.vdot(y[i], r))
        r = r + (a[i] - b) * s[i]
    return r


class LBFGS(SecantMethod):
    """L-BFGS with a line search (see the module docs)."""

    name = "lbfgs"
    conventions = (
        Switch("initial_scaling", INITIAL_SCALINGS, "every",
               "H⁰ = γD with γ from the newest pair (every), the first pair (once), or γ = 1 (none)",
               "N&W eq. 7.20, L-BFGS-B, torch, optax (every)"),
        Switch("initial_step", ("unit", "interpolate"), "unit", "α₀ after the first step: 1, or N&W eq. 3.60",
               "N&W §7.2, L-BFGS-B (unit)"),
        FIRST_STEP,
        Switch("curvature_skip_rule", CURVATURE_SKIP_RULES, "relative",
               "skip a pair when sᵀy ≤ ε yᵀy (relative), sᵀy ≤ ε (absolute), or never",
               "L-BFGS-B (relative); torch.optim.LBFGS (absolute, ε = 1e-10); optax scale_by_lbfgs (never)"),
        Switch("descent_check", ("reset", "none"), "reset", "replace a non-descent direction by −g, or keep it",
               "N&W (reset); optax scale_by_lbfgs (none)"),
        Switch("damping", (None, "powell"), None,
               "Powell's damped y (N&W 18.14–18.15) with Bs = −αg, or the plain pair (skip rule only)",
               "L-BFGS-B, torch.optim.LBFGS, optax (None); N&W Procedure 18.2 (powell)"),
        Switch("line_search", LINE_SEARCHES + ("minfunc", "minpack", "optax_zoom"), "strong_wolfe",
               "globalisation: strong Wolfe (N&W Alg. 3.5-3.6), Armijo, the bare step lr·α₀p, minFunc's search, "
               "MINPACK-2 dcsrch, or optax's zoom",
               "N&W (strong_wolfe); optax without linesearch (none); torch line_search_fn='strong_wolfe' "
               "(minfunc); L-BFGS-B (minpack); optax.lbfgs (optax_zoom)"),
    )

    def __init__(self, memory: int = 10, initial_scaling: str = "every", initial_matrix=None,
                 curvature_skip: float = 2.2e-16, damping: Optional[str] = None, line_search: str = "strong_wolfe",
                 c1: float = 1e-4, c2: float = 0.9, max_evals: int = 30, initial_step: str = "unit",
                 lr: float = 1.0, first_step: str = "unit_length", curvature_skip_rule: str = "relative",
                 descent_check: str = "reset", approximate_wolfe: bool = True, schedule=None):
        self.memory = check_int("memory", memory, maximum=MAX_MEMORY)
        self.set_switch("initial_scaling", initial_scaling)
        if initial_matrix is not None:
            if isinstance(initial_matrix, numbers.Number) or isinstance(initial_matrix, bool):
                initial_matrix = check_positive("initial_matrix", initial_matrix)
            else:
                initial_matrix = check_real_array("initial_matrix", initial_matrix)
                if initial_matrix.ndim != 1 or not bool(xp.all(xp.isfinite(initial_matrix))) or \
                        not bool(xp.all(initial_matrix > 0)):
                    raise ValueError("initial_matrix must be a positive scalar or a vector of positive numbers "
                                     "(a diagonal H⁰); a full matrix is not positive-definite-diagonal")
        self.initial_matrix = initial_matrix
        self.curvature_skip = check_nonnegative("curvature_skip", curvature_skip)
        self.set_switch("damping", damping)
        self.set_line_search(line_search, c1, c2, max_evals, approximate_wolfe)
        self.set_switch("initial_step", initial_step)
        self.lr = check_positive("lr", lr)
        self.set_schedule(schedule)
        self.set_switch("first_step", first_step)
        self.set_switch("curvature_skip_rule", curvature_skip_rule)
        self.set_switch("descent_check", descent_check)

    def init(self, params) -> LBFGSState:
        """No pairs, γ and previous loss NaN, step 0; checks a vector ``initial_matrix`` against n."""
        D = self.initial_matrix
        if D is not None and not isinstance(D, float) and D.shape != (T.size(params),):
            raise ValueError(f"initial_matrix has shape {tuple(D.shape)}, the parameters have n={T.size(params)}")
        return LBFGSState(0, (), (), (), math.nan, math.nan, None)

    def _gamma(self, state) -> float:
        return 1.0 if self.initial_scaling == "none" or not math.isfinite(state.gamma) else state.gamma

    def inverse_hessian_product(self, state: LBFGSState, v):
        """H_k v for a flat vector v, with the state's pairs and initial matrix."""
        return two_loop(v, state.s, state.y, state.rho, self._gamma(state), self.initial_matrix)

    def direction(self, state: LBFGSState, g):
        """p = −H_k g by the two-loop recursion."""
        return -self.inverse_hessian_product(state, g)

    def first(self, state: LBFGSState) -> bool:
        """No pair stored yet."""
        return not state.s

    def absorb(self, state: LBFGSState, loss, s, y, Bs):
        """The state after the accepted step s (see ``descent.SecantMethod``), and the pair's details."""
        theta = 1.0
        if self.damping == "powell" and Bs is not None:
            # Bs for the B = H⁻¹ that produced p = −Hg; scaled consistently with H⁰ = γD.
            y, theta = powell_damping(s, y, Bs)
        sy, yy = float(xp.vdot(s, y)), float(xp.vdot(y, y))
        threshold = {"relative": self.curvature_skip * yy, "absolute": self.curvature_skip, "never": -math.inf}
        skipped = not (sy > threshold[self.curvature_skip_rule] and math.isfinite(sy) and math.isfinite(yy))
        if skipped:
            S, Y, R, gamma = state.s, state.y, state.rho, state.gamma
        else:
            keep = self.memory - 1
            S = (state.s[-keep:] if keep else ()) + (s,)
            Y = (state.y[-keep:] if keep else ()) + (y,)
            R = (state.rho[-keep:] if keep else ()) + (1.0 / sy if sy != 0 else 0.0,)
            gamma = state.gamma
            if self.initial_scaling == "every" or (self.initial_scaling == "once" and not math.isfinite(gamma)):
                D = self.initial_matrix
                yDy = float(xp.vdot(y, y if D is None else D * y))
                gamma = sy / yDy if yDy > 0 else math.nan   # NaN: γ = 1 (only reachable with "never")
        new_state = state._replace(step=state.step + 1, s=S, y=Y, rho=R, gamma=gamma, prev_loss=loss)
        return new_state, dict(pair_skipped=skipped, sy=sy, theta=theta, memory_used=len(S))
