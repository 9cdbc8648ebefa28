"""Gradient descent, with optional heavy-ball or Nesterov momentum and weight decay.

    g_t = ∇L(θ_t) + λ θ_t                      (L2 weight decay, if weight_decay > 0)
    v_t = μ v_{t−1} + (1 − δ) g_t               (momentum buffer; v_1 = g_1, undamped, as torch starts it)
    d_t = g_t + μ v_t  (nesterov)   or   v_t    (heavy ball)   or   g_t   (μ = 0)
    θ_{t+1} = θ_t − η_t d_t                     (η_t = lr under the default constant schedule)

Conventions: the buffer accumulates the raw gradient (dampening δ = 0, torch.optim.SGD's default; δ = μ
gives the EMA form (1 − μ)g after the first step); ``dampening`` δ is torch's: from step 2 on the gradient
enters the buffer scaled by 1 − δ, while the first step sets v_1 = g_1 undamped (torch creates the buffer
as a copy of the gradient), so with δ = 0 this is v_0 = 0. ``nesterov`` uses torch's formulation
(look-ahead on the gradient, not on θ) and, as in torch, needs δ = 0.
``schedule`` (default None: constant) gives η_t, t = the steps taken (``optim/schedules.py``).
Source: Polyak 1964 (heavy ball), Nesterov 1983, Sutskever et al. 2013.
"""
from __future__ import annotations

from typing import NamedTuple

from .. import tree as T
from ..serialize import register_state
from .base import (Optimizer, Switch, check_nonnegative, check_positive, check_unit_interval, refuse, show_value,
                   step_info)
from .update_rules import NON_FINITE_GRADIENT, decayed_gradient, descent_step, momentum

__all__ = ["SGD", "SGDState"]


@register_state
class SGDState(NamedTuple):
    """SGD's state: the step count and the momentum buffer v."""

    step: int
    velocity: object  # v_t, a tree like params (zeros when momentum is 0)


class SGD(Optimizer):
    """θ ← θ − η d (see module docs)."""

    name = "sgd"
    conventions = (
        Switch("nesterov", (False, True), False, "the look-ahead d_t = g_t + μ v_t instead of the heavy ball v_t",
               "Polyak 1964 (False); torch.optim.SGD(nesterov=True), Sutskever et al. 2013 (True)"),
    )

    gradient_in = ()   # gradients only (optim/gradients.py)

    def __init__(self, lr: float = 0.1, momentum: float = 0.0, nesterov: bool = False, weight_decay: float = 0.0,
                 dampening: float = 0.0, schedule=None):
        self.lr = check_positive("lr", lr)
        self.set_schedule(schedule)
        self.momentum = check_unit_interval("momentum", momentum)
        self.set_switch("nesterov", nesterov)
        self.weight_decay = check_nonnegative("weight_decay", weight_decay)
        self.dampening = check_nonnegative("dampening", dampening)
        if self.dampening > 1:
            raise ValueError(f"dampening must lie in [0, 1], got {show_value(dampening)}")
        if self.nesterov and self.momentum == 0:
            raise ValueError("nesterov=True needs momentum > 0")
        if self.nesterov and self.dampening:
            raise ValueError("nesterov=True needs dampening=0 (as torch.optim.SGD)")

    def init(self, params) -> SGDState:
        """Zero velocity and step 0."""
        return SGDState(0, T.zeros_like(params))

    def update(self, params, state, oracle, draws=None):
        """One SGD step with optional weight decay and heavy-ball or Nesterov momentum; see the module docs.
        SGD draws nothing: ``draws`` must be None."""
        self.check_draws(draws)
        loss, g = decayed_gradient(params, oracle, self.weight_decay)   # g_t = ∇L(θ_t) + λθ_t
        if g is None:
            return refuse(params, state, loss, NON_FINITE_GRADIENT)
        v, d = state.velocity, g
        if self.momentum and self.dampening:
            # torch: the buffer starts as a copy of g_1; later buf·μ + (1 − δ)·g_t, in that rounding order
            v = g if state.step == 0 else T.tree_map2(lambda vi, gi: vi * self.momentum + (1.0 - self.dampening) * gi,
                                                      v, g)
            d = v
        elif self.momentum:
            v, d = momentum(v, g, self.momentum, self.nesterov)           # v_t = μv_{t−1} + g_t; d_t
        lr = self.lr_at(state.step)                                        # η_t (the schedule's)
        new = descent_step(params, d, lr)                                  # θ_t − η_t d_t
        return new, SGDState(state.step + 1, v), step_info(loss, g, lr=lr, step_norm=lr * T.norm(d))
