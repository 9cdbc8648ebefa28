"""Gradient descent, with optional heavy-ball or Nesterov momentum and weight decay.

    g_t = ∇L(θ_t) + λ θ_t                      (L2 weight decay, if weight_decay > 0)
    v_t = μ v_{t−1} + g_t                       (momentum buffer; v_0 = 0, so v_1 = g_1)
    d_t = g_t + μ v_t  (nesterov)   or   v_t    (heavy ball)   or   g_t   (μ = 0)
    θ_{t+1} = θ_t − η d_t

Conventions: the buffer accumulates the raw gradient with no (1 − μ) damping, as torch.optim.SGD does
with dampening=0; ``nesterov`` uses torch's formulation (look-ahead on the gradient, not on θ).
Source: Polyak 1964 (heavy ball), Nesterov 1983, Sutskever et al. 2013.
"""
from __future__ import annotations

from typing import NamedTuple

from .. import tree as T
from ..serialize import register_state
from .base import Optimizer, Switch, check_nonnegative, check_positive, check_unit_interval, refuse, step_info
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

    def __init__(self, lr: float = 0.1, momentum: float = 0.0, nesterov: bool = False, weight_decay: float = 0.0):
        self.lr = check_positive("lr", lr)
        self.momentum = check_unit_interval("momentum", momentum)
        self.set_switch("nesterov", nesterov)
        self.weight_decay = check_nonnegative("weight_decay", weight_decay)
        if self.nesterov and self.momentum == 0:
            raise ValueError("nesterov=True needs momentum > 0")

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
        if self.momentum:
            v, d = momentum(v, g, self.momentum, self.nesterov)           # v_t = μv_{t−1} + g_t; d_t
        new = descent_step(params, d, self.lr)                             # θ_t − η d_t
        return new, SGDState(state.step + 1, v), step_info(loss, g, lr=self.lr, step_norm=self.lr * T.norm(d))
