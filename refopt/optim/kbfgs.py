"""K-BFGS and K-BFGS(L): Kronecker-factored BFGS for MLPs (Goldfarb, Ren & Bahamou 2020, Algorithms 1-4).

The Hessian block of layer l is approximated by Â_l ⊗ G_l (s = a W, W̄ = [W; b], row-major vec; see
``refopt.curvature.kronecker``), and the layer's step is

    P_l = H_a,l  M̄_l  H_g,l,        θ ← θ − η P − (decoupled weight decay, if chosen)

with M̄_l the (momentum-averaged) gradient of W̄_l and two inverse approximations:

* H_a ≈ (Â + √λ I)⁻¹, Â a running average of (1/B) Σ ā āᵀ. After each step H_a takes one BFGS update
  with the "Hessian-action" pair s_a = H_a ā̄, y_a = (Â + √λ I) s_a (ā̄ the batch mean of ā), which
  tracks the changing Â at O(d²) instead of a fresh O(d³) inverse. H_a is the exact inverse at step 0
  and, if ``inverse_interval`` is set, every that many steps.
* H_g ≈ G⁻¹ for the pre-activation curvature, by BFGS (K-BFGS, ``variant="bfgs"``) or L-BFGS with
  ``memory`` pairs and H₀ = I (K-BFGS(L), ``variant="lbfgs"``) on secant pairs from a second forward and
  backward pass at the new point θ⁺ on the same batch (data labels: a Hessian, not a Fisher, estimate):

      s_g = mean_i s_l,i(θ⁺) − mean_i s_l,i(θ)       (pre-activation means; mean s = mean(ā) W̄)
      y_g = Σ_i (g_l,i(θ⁺) − g_l,i(θ))               (g = ∂L/∂s_l of the reduced loss: the mean per-example
                                                      gradient change for reduction="mean", as in the paper,
                                                      and B times it for "sum", matching G's scaling)
      (s̄, ȳ) ← β (s̄, ȳ) + (1 − β)(s_g, y_g)        running averages of the pair (``secant_decay`` β)

  and double damping (DD) before the update, which makes s̃ᵀỹ ≥ μ₂ s̃ᵀs̃ > 0 so H_g stays positive
  definite:
      Powell on H:   θ₁ = (1 − μ₁) yᵀHy / (yᵀHy − sᵀy) if sᵀy < μ₁ yᵀHy else 1;   s̃ = θ₁ s + (1 − θ₁) H y
      LM on H⁻¹:     θ₂ = (1 − μ₂) s̃ᵀs̃ / (s̃ᵀs̃ − s̃ᵀy) if s̃ᵀy < μ₂ s̃ᵀs̃ else 1;  ỹ = θ₂ y + (1 − θ₂) s̃
  with μ₁ = ``powell`` (0.2) and μ₂ = √λ. The BFGS inverse update is
  H⁺ = (I − ρ s̃ỹᵀ) H (I − ρ ỹs̃ᵀ) + ρ s̃s̃ᵀ, ρ = 1/(s̃ᵀỹ), so H⁺ ỹ = s̃ (the secant condition).

Gradient momentum (the paper's): M ← ρ M + (1 − ρ) ∇L, from M = 0 with no bias correction (as the
authors' code). Defaults follow the authors' code: lr 0.3, λ 0.3, ρ = 0.9, A decay 0.9, β = 0.9 (they
use β = 0 for full-batch training), memory 100, H₀ = I. Order within a step: A is updated before
the direction (as the first step needs it); H_g and H_a are updated after the step, so step t's
direction uses curvature from the pairs of steps < t. The authors initialise A with a pass over the
training set; here the first batch's estimate initialises it (``factor_init="mean"``).
Switches (defaults first): ``variant`` "bfgs" | "lbfgs"; ``factor_init`` "mean" | "debiased" | "identity"
(A's running average, ``kronecker.factor_weight``); ``weight_decay_mode`` "l2" (ω θ added to the
gradient before the momentum) | "decoupled" (θ ← θ − η P − η ω θ); ``inverse_interval`` None.
Bad statistics: a non-finite loss or gradient refuses the step; a non-finite A estimate keeps the old
A; a non-finite second pass skips the H_g and H_a updates; info says which. ``schedule`` (default None:
constant; ``optim/schedules.py``) replaces η by η_t, t = the steps taken; at η_t = 0 (θ⁺ = θ) the second
pass and the H_g, H_a updates are skipped.
The factor updates (``double_damping``, ``bfgs_factor_update``, ``lbfgs_apply``, ``secant_pair``,
``hessian_action_update``) are in ``refopt.curvature.secant``; this file is the step and its order.
"""
from __future__ import annotations

import math
from typing import NamedTuple

from .. import tree as T
from ..backend import xp
from ..curvature import kronecker as K
from ..curvature.blocks import require_dense
from ..curvature.secant import bfgs_factor_update, double_damping, hessian_action_update, lbfgs_apply, secant_pair
from ..linalg import symmetrize
from ..serialize import register_state
from .base import (MAX_MEMORY, Optimizer, Switch, check_int, check_nonnegative, check_positive, check_unit_interval,
                   refuse, step_info)
from .kfac import FACTOR_INIT, WEIGHT_DECAY_CHOICES, _check_params, oracle_needs
from .update_rules import decoupled_decay, ema, ema_into, l2_decay

__all__ = ["KBFGS", "KBFGSState", "VARIANTS"]

VARIANTS = ("bfgs", "lbfgs")


@register_state
class KBFGSState(NamedTuple):
    """K-BFGS's state: counts, Â_l, the inverses H_a and H_g (or L-BFGS pairs), averaged secant pairs, momentum M."""

    step: int
    factor_updates: int   # estimates folded into Â
    A: tuple              # Â_l
    H_a: tuple            # ≈ (Â_l + √λ I)⁻¹
    H_g: tuple            # ≈ G_l⁻¹ (dense, variant "bfgs"); () for "lbfgs"
    memory: tuple         # variant "lbfgs": per layer (S, Y), damped pairs as rows, oldest first; () for "bfgs"
    secant_s: tuple       # s̄_l, running average of the pre-activation secant step
    secant_y: tuple       # ȳ_l
    grad_momentum: object  # M, a tree like params


class KBFGS(Optimizer):
    """K-BFGS / K-BFGS(L) (see module docs)."""

    name = "kbfgs"
    conventions = (
        Switch("variant", VARIANTS, "bfgs", "H_g by dense BFGS, or by L-BFGS with memory pairs",
               "Goldfarb, Ren & Bahamou 2020: K-BFGS (bfgs) and K-BFGS(L) (lbfgs)"),
        FACTOR_INIT,
        Switch("weight_decay_mode", WEIGHT_DECAY_CHOICES, "l2",
               "weight decay as an L2 term before preconditioning, or in parameter space after it",
               "Goldfarb, Ren & Bahamou 2020 (l2; unlike K-FAC's decoupled default)"),
    )
    # layer statistics at the data labels only (no Fisher probes), of dense layers: the secant pairs s, y
    # of a layer's factors are formed from its inputs a and g (B, fan), which a conv layer does not have
    requires = oracle_needs(None) | {"dense_layer_statistics"}
    gradient_in_reason = ("it needs the network's per-layer statistics at θ and a second pass at θ⁺ for its "
                          "secant pairs: use a network Oracle")

    def __init__(self, lr: float = 0.3, damping: float = 0.3, momentum: float = 0.9, decay: float = 0.9,
                 factor_init: str = "mean", variant: str = "bfgs", memory: int = 100, secant_decay: float = 0.9,
                 powell: float = 0.2, inverse_interval: int | None = None, weight_decay: float = 0.0,
                 weight_decay_mode: str = "l2", schedule=None):
        self.lr = check_positive("lr", lr)
        self.set_schedule(schedule)
        self.damping = check_positive("damping", damping)
        self.momentum = check_unit_interval("momentum", momentum)
        self.decay = check_unit_interval("decay", decay)
        self.set_switch("factor_init", factor_init)
        self.set_switch("variant", variant)
        self.memory = check_int("memory", memory, maximum=MAX_MEMORY)
        self.secant_decay = check_unit_interval("secant_decay", secant_decay)
        self.powell = check_unit_interval("powell", powell)
        self.inverse_interval = None if inverse_interval is None else check_int("inverse_interval", inverse_interval)
        self.weight_decay = check_nonnegative("weight_decay", weight_decay)
        self.set_switch("weight_decay_mode", weight_decay_mode)

    def init(self, params) -> KBFGSState:
        """Identity Â, H_a, H_g (or empty L-BFGS memories), zero secant pairs and momentum, step 0; needs MLP params."""
        _check_params(params)
        require_dense(params, "K-BFGS", "its secant pairs for H_g come from each example's pre-activations at θ and "
                      "θ⁺, defined by Goldfarb et al. 2020 for dense layers (their extension to convolutions, Ren, "
                      "Bahamou & Goldfarb 2021, is not implemented)")
        dtype = params[0]["W"].dtype
        ins = [p["W"].shape[0] + 1 for p in params]
        outs = [p["W"].shape[1] for p in params]
        eye = lambda n: xp.eye(n, dtype=dtype)  # noqa: E731
        H_g = tuple(eye(n) for n in outs) if self.variant == "bfgs" else ()
        memory = tuple((xp.zeros((0, n), dtype=dtype), xp.zeros((0, n), dtype=dtype)) for n in outs) \
            if self.variant == "lbfgs" else ()
        zeros = tuple(xp.zeros(n, dtype=dtype) for n in outs)
        return KBFGSState(0, 0, tuple(eye(n) for n in ins), tuple(eye(n) for n in ins), H_g, memory, zeros, zeros,
                          T.zeros_like(params))

    # --- H_g as an operator -----------------------------------------------------------------------
    def _apply_Hg(self, state: KBFGSState, l: int, V):
        if self.variant == "bfgs":
            return V @ state.H_g[l]
        S, Y = state.memory[l]
        return lbfgs_apply(V, S, Y) if S.shape[0] else V

    def update(self, params, state: KBFGSState, oracle, draws=None):
        """One K-BFGS step: Â update, P_l = H_a M̄_l H_g, then a second pass at θ⁺ to update H_g and H_a.
        K-BFGS draws nothing: ``draws`` must be None."""
        self.check_draws(draws)
        t = state.step
        stats = K.kfac_statistics(oracle, params, None)
        loss, grad = stats.loss, stats.grad
        if not (math.isfinite(loss) and T.all_finite(grad)):
            return refuse(params, state, loss, "non-finite loss or gradient: step refused", grad)
        messages = []
        g = l2_decay(grad, params, self.weight_decay) if self.weight_decay_mode == "l2" else grad
        M = ema(state.grad_momentum, g, self.momentum) if self.momentum else g    # M ← ρM + (1 − ρ)g

        # Â before the direction; H_a exactly inverted at step 0 (and every inverse_interval steps).
        A, k = state.A, state.factor_updates
        estimate = [K.input_factor(a) for a in stats.inputs]
        if T.all_finite(estimate):
            eps = K.factor_weight(k + 1, self.decay, self.factor_init)
            A = ema_into(A, tuple(estimate), eps)   # the fresh estimate's buffers reused
            k += 1
        else:
            messages.append("non-finite A statistics: A update skipped, old A kept")
        gamma = math.sqrt(self.damping)
        A_lm = [a + gamma * xp.eye(a.shape[0], dtype=a.dtype) for a in A]
        H_a = state.H_a
        if t == 0 or (self.inverse_interval is not None and t % self.inverse_interval == 0):
            H_a = tuple(xp.linalg.inv(symmetrize(a)) for a in A_lm)

        P = [self._apply_Hg(state, l, H_a[l] @ K.layer_matrix(m)) for l, m in enumerate(M)]
        lr = self.lr_at(t)   # η_t of the schedule
        delta = T.scale(-lr, [K.layer_tree(p) for p in P])
        if self.weight_decay_mode == "decoupled":
            delta = decoupled_decay(delta, params, -lr * self.weight_decay)
        new = T.add(params, delta)

        # Second pass at θ⁺ on the same batch: secant pairs for H_g, then the Hessian-action update of H_a.
        new_state = state._replace(step=t + 1, factor_updates=k, A=A, H_a=H_a, grad_momentum=M)
        damped = 0
        if lr == 0:   # a schedule's η_t = 0: θ⁺ = θ, no secant pair to measure
            messages.append("learning rate 0 at this step (schedule): H_g and H_a updates skipped")
        else:
            stats_new = K.kfac_statistics(oracle, new, None, gradient=False)   # only a and g at θ⁺ are needed
            if math.isfinite(stats_new.loss) and T.all_finite(stats_new.output_grads):
                new_state, damped = self._curvature_updates(new_state, params, new, stats, stats_new, A_lm)
            else:
                messages.append("non-finite second pass: H_g and H_a updates skipped")
        info = step_info(loss, grad, lr=lr, step_norm=T.norm(delta), damped_pairs=damped)
        info["message"] = "; ".join(messages)
        return new, new_state, info

    def _curvature_updates(self, state: KBFGSState, params, new, stats, stats_new, A_lm):
        beta = self.secant_decay
        mu2 = math.sqrt(self.damping)
        H_g, memory, s_bar, y_bar, H_a = list(state.H_g), list(state.memory), [], [], []
        damped = 0
        for l in range(len(params)):
            s, y, abar_old = secant_pair(stats.inputs[l], stats_new.inputs[l], params[l], new[l],
                                         stats.output_grads[l], stats_new.output_grads[l])
            s = beta * state.secant_s[l] + (1.0 - beta) * s
            y = beta * state.secant_y[l] + (1.0 - beta) * y
            s_bar.append(s)
            y_bar.append(y)
            s_t, y_t, th1, th2 = double_damping(s, y, self._apply_Hg(state, l, y), self.powell, mu2)
            damped += int(th1 < 1.0 or th2 < 1.0)
            if self.variant == "bfgs":
                H_g[l] = bfgs_factor_update(H_g[l], s_t, y_t)
            elif float(xp.dot(s_t, y_t)) > 0:
                S, Y = memory[l]
                memory[l] = (xp.concatenate([S, s_t[None]])[-self.memory:],
                             xp.concatenate([Y, y_t[None]])[-self.memory:])
            H_a.append(hessian_action_update(state.H_a[l], A_lm[l], abar_old))
        return state._replace(H_a=tuple(H_a), H_g=tuple(H_g), memory=tuple(memory), secant_s=tuple(s_bar),
                              secant_y=tuple(y_bar)), damped
