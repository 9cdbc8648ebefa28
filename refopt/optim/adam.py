"""Adam (Kingma & Ba 2014, Algorithm 1) and AdamW (Loshchilov & Hutter 2019, Algorithm 2).

With g_t = ∇L(θ_t) (+ λθ_t for Adam's L2 weight decay), t = 1, 2, …:

    m_t = β₁ m_{t−1} + (1 − β₁) g_t                  m_0 = 0
    v_t = β₂ v_{t−1} + (1 − β₂) g_t ⊙ g_t            v_0 = 0
    m̂_t = m_t / (1 − β₁ᵗ),  v̂_t = v_t / (1 − β₂ᵗ)     (bias correction)
    θ_{t+1} = θ_t − α m̂_t / (√v̂_t + ε)               (eps_mode="outside", Algorithm 1)

AdamW decouples the decay from the adaptive step (L&H Algorithm 2, line 12, schedule multiplier η_t = 1):

    θ_{t+1} = θ_t − (α m̂_t / (√v̂_t + ε) + λ θ_t)      (lr_scaled_decay=False, the paper)
    θ_{t+1} = θ_t − α (m̂_t / (√v̂_t + ε) + λ θ_t)      (lr_scaled_decay=True: PyTorch, optax, Keras)

so its decay does not depend on the gradient's scale, while Adam's L2 term λθ passes through the
normalisation by √v̂ (a large gradient drowns it).

Switches (paper's choice first):
* ``bias_correction``: True (Algorithm 1) or False (m and v used as they are).
* ``eps_mode``: "outside" (√v̂ + ε: Algorithm 1, PyTorch, optax), "inside" (√(v̂ + ε)), or "hat" (the
  "ε̂" form at the end of Kingma & Ba §2 used by TensorFlow 1 / Keras: α_t = α√(1−β₂ᵗ)/(1−β₁ᵗ) and
  θ ← θ − α_t m_t / (√v_t + ε), i.e. ε is not bias-corrected).
* ``eps_root`` ≥ 0 (default 0, the paper): a second ε under the root with ``eps_mode="outside"``,
  m̂ / (√(v̂ + eps_root) + ε) (optax's scale_by_adam(eps_root=…)); needs eps_mode="outside".
* ``amsgrad`` (Reddi, Kale & Kumar 2018, Algorithm 2; default "none"): the denominator uses the running
  maximum of the second moment: "max_v" keeps v_max = max(v_max, v_t) and divides by √(v_max/(1 − β₂ᵗ))
  + ε (torch.optim.Adam(amsgrad=True)); "max_v_hat" keeps v̂_max = max(v̂_max, v̂_t) of the bias-corrected
  v̂ and divides by √(v̂_max + eps_root) + ε (optax.amsgrad). Without bias correction both are Reddi et
  al.'s max(v̂_{t−1}, v_t). The state's ``v`` stays the plain EMA; the maximum is ``v_max``.
* Adam's ``weight_decay`` is L2 (added to g_t, PyTorch's Adam); AdamW's is decoupled, see above.
"""
from __future__ import annotations

import math
from typing import NamedTuple

from ..serialize import register_state  # saved states are rebuilt by name from this registry
from .. import tree as T
from ..backend import xp
from .adagrad import check_nonempty_leaves
from .base import (Optimizer, check_bool, check_choice, check_nonnegative, check_positive, check_unit_interval, refuse,
                   step_info)

__all__ = ["Adam", "AdamW", "AdamState", "EPS_MODES", "AMSGRAD_MODES"]

EPS_MODES = ("outside", "inside", "hat")
AMSGRAD_MODES = ("none", "max_v", "max_v_hat")


@register_state
class AdamState(NamedTuple):
    """Adam's state: the step count, the moments m and v, and AMSGrad's running maximum (None without)."""

    step: int
    m: object  # first moment m_t, a tree like params
    v: object  # second moment v_t (of the raw gradient), a tree like params
    v_max: object = None  # AMSGrad's running maximum (of v for "max_v", of v̂ for "max_v_hat"), else None


class Adam(Optimizer):
    """θ ← θ − α m̂ / (√v̂ + ε) (see module docs)."""

    name = "adam"
    # searched by refopt.verify
    switches = {"bias_correction": (True, False), "eps_mode": EPS_MODES, "amsgrad": AMSGRAD_MODES}
    _decoupled = False

    def __init__(self, lr: float = 1e-3, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8,
                 weight_decay: float = 0.0, bias_correction: bool = True, eps_mode: str = "outside",
                 eps_root: float = 0.0, amsgrad: str = "none"):
        self.lr = check_positive("lr", lr)
        self.beta1 = check_unit_interval("beta1", beta1)
        self.beta2 = check_unit_interval("beta2", beta2)
        self.eps = check_positive("eps", eps)
        self.weight_decay = check_nonnegative("weight_decay", weight_decay)
        self.bias_correction = check_bool("bias_correction", bias_correction)
        self.eps_mode = check_choice("eps_mode", eps_mode, EPS_MODES)
        self.eps_root = check_nonnegative("eps_root", eps_root)
        if self.eps_root and self.eps_mode != "outside":
            raise ValueError(f"eps_root > 0 needs eps_mode='outside' (m̂ / (√(v̂ + eps_root) + ε)), got "
                             f"eps_mode={eps_mode!r}")
        self.amsgrad = check_choice("amsgrad", amsgrad, AMSGRAD_MODES)

    def init(self, params) -> AdamState:
        """Zero moments m, v (and v_max for AMSGrad) and step 0; refuses a leaf of size zero."""
        check_nonempty_leaves(params)
        v_max = T.zeros_like(params) if self.amsgrad != "none" else None
        return AdamState(0, T.zeros_like(params), T.zeros_like(params), v_max)

    def _decay(self) -> float:
        """The coefficient c of the decoupled decay θ ← θ − cθ (0 for Adam)."""
        return 0.0

    def update(self, params, state, oracle):
        """One Adam (or AdamW) step; see the module docs for the equations and switches."""
        loss, g = oracle.value_and_grad(params)
        # One pass gives both the reported norm and the check: a NaN or Inf anywhere makes it non-finite
        # (all_finite then tells an overflow of the squares from a truly non-finite gradient).
        grad_norm = T.norm(g)
        if not math.isfinite(grad_norm) and not T.all_finite(g):
            return refuse(params, state, loss, "non-finite gradient: step refused", g)
        if self.weight_decay and not self._decoupled:
            g = T.axpy(self.weight_decay, params, g)
            grad_norm = T.norm(g)
        t = state.step + 1
        b1, b2, eps = self.beta1, self.beta2, self.eps
        c1 = 1.0 - b1 ** t if self.bias_correction else 1.0
        c2 = 1.0 - b2 ** t if self.bias_correction else 1.0
        # m̂/(√v̂ + ε) = (√c2/c1) · m/(√v + ε√c2): the constants are folded into one scalar and ε so that
        # the step costs as few passes over the parameters as possible (the ratio to SGD is a target).
        step_scale = self.lr * math.sqrt(c2) / c1
        if self.eps_mode == "outside":   # √(v̂ + r) + ε = (√(v + r c2) + ε√c2)/√c2
            denom_eps, inside = eps * math.sqrt(c2), self.eps_root * c2
        elif self.eps_mode == "hat":
            denom_eps, inside = eps, 0.0
        else:  # √(v/c2 + ε) = √(v + ε c2)/√c2
            denom_eps, inside = 0.0, eps * c2
        decay = self._decay()

        ps, treedef = T.flatten(params)
        new_p, new_m, new_v, new_max = [], [], [], []
        sq = 0.0
        amsgrad = self.amsgrad != "none"
        maxes = T.leaves(state.v_max) if amsgrad else [None] * len(ps)
        for x, gi, mi, vi, vmi in zip(ps, T.leaves(g), T.leaves(state.m), T.leaves(state.v), maxes):
            # Three fresh arrays per leaf (m, v and the new θ, which doubles as the scratch for the step d)
            # and no temporaries: the step is memory-bound, so every array and every pass counts.
            m = xp.multiply(mi, b1, out=xp.empty_like(mi))
            d = xp.multiply(gi, 1.0 - b1, out=xp.empty_like(x))
            m += d
            v = xp.multiply(gi, gi, out=xp.empty_like(gi))
            v *= 1.0 - b2
            xp.multiply(vi, b2, out=d)
            v += d
            u = v                        # what the denominator is taken of (v, or AMSGrad's maximum)
            if amsgrad:
                if self.amsgrad == "max_v":
                    u = xp.maximum(vmi, v)
                    new_max.append(u)
                else:                    # max of v̂ = v/c2, kept in v̂ units; denominator in v units
                    u_hat = xp.maximum(vmi, v / c2)
                    new_max.append(u_hat)
                    u = u_hat * c2
            if inside:
                xp.add(u, inside, out=d)
                xp.sqrt(d, out=d)
            else:
                xp.sqrt(u, out=d)
            if denom_eps:
                d += denom_eps
            xp.divide(m, d, out=d)
            d *= step_scale
            if decay:
                d += decay * x
            sq += float(xp.vdot(d.ravel(), d.ravel()))
            new_p.append(xp.subtract(x, d, out=d))  # θ − d, written over d
            new_m.append(m)
            new_v.append(v)
        info = step_info(loss, (), lr=self.lr, step_norm=math.sqrt(sq), grad_norm=grad_norm)  # norm known
        v_max = T.unflatten(treedef, new_max) if amsgrad else None
        return (T.unflatten(treedef, new_p),
                AdamState(t, T.unflatten(treedef, new_m), T.unflatten(treedef, new_v), v_max), info)


class AdamW(Adam):
    """Adam with decoupled weight decay θ ← θ − λθ (or − αλθ with ``lr_scaled_decay``); see module docs."""

    name = "adamw"
    switches = {"bias_correction": (True, False), "eps_mode": EPS_MODES, "lr_scaled_decay": (False, True),
                "amsgrad": AMSGRAD_MODES}
    _decoupled = True

    def __init__(self, lr: float = 1e-3, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8,
                 weight_decay: float = 1e-4, bias_correction: bool = True, eps_mode: str = "outside",
                 lr_scaled_decay: bool = False, eps_root: float = 0.0, amsgrad: str = "none"):
        super().__init__(lr, beta1, beta2, eps, weight_decay, bias_correction, eps_mode, eps_root, amsgrad)
        self.lr_scaled_decay = check_bool("lr_scaled_decay", lr_scaled_decay)

    def _decay(self) -> float:
        return self.weight_decay * (self.lr if self.lr_scaled_decay else 1.0)
