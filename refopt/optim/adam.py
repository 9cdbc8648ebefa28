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

``schedule`` (default None: constant; ``optim/schedules.py``) makes α the peak of α_t, t = the steps taken;
AdamW's decay then follows it as L&H's schedule multiplier η_t = α_t/α (λθ ← η_t λθ; the lr-scaled form
α_t λθ), as torch's and optax's do.
"""
from __future__ import annotations

import math
from typing import NamedTuple

from .. import tree as T
from ..backend import xp
from ..serialize import register_state
from .base import Optimizer, Switch, check_nonnegative, check_positive, check_unit_interval, refuse, step_info
from .update_rules import NON_FINITE_GRADIENT, bias_correction, check_nonempty_leaves, chunks, ema_chunk, flat

__all__ = ["Adam", "AdamW", "AdamState", "EPS_MODES", "AMSGRAD_MODES"]

EPS_MODES = ("outside", "inside", "hat")
AMSGRAD_MODES = ("none", "max_v", "max_v_hat")

# The switches Adam and AdamW share.
BIAS_CORRECTION = Switch("bias_correction", (True, False), True, "divide m and v by 1 − βᵗ",
                         "Kingma & Ba Algorithm 1 (True)")
EPS_MODE = Switch("eps_mode", EPS_MODES, "outside",
                  "where ε enters: √v̂ + ε, √(v̂ + ε), or ε not bias-corrected, α√(1−β₂ᵗ)/(1−β₁ᵗ) · m/(√v + ε̂)",
                  "Algorithm 1, PyTorch, optax (outside); TensorFlow 1 / Keras (hat)")
AMSGRAD = Switch("amsgrad", AMSGRAD_MODES, "none",
                 "AMSGrad: divide by √(max v / (1 − β₂ᵗ)) (the raw v's maximum), or by √(max v̂), instead of √v̂",
                 "Reddi et al. 2018; Kingma & Ba (none); torch.optim.Adam(amsgrad=True) (max_v); "
                 "optax.amsgrad (max_v_hat)")


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
    conventions = (BIAS_CORRECTION, EPS_MODE, AMSGRAD)
    _decoupled = False
    gradient_in = ()   # gradients only (optim/gradients.py)

    def __init__(self, lr: float = 1e-3, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8,
                 weight_decay: float = 0.0, bias_correction: bool = True, eps_mode: str = "outside",
                 eps_root: float = 0.0, amsgrad: str = "none", schedule=None):
        self.lr = check_positive("lr", lr)
        self.set_schedule(schedule)
        self.beta1 = check_unit_interval("beta1", beta1)
        self.beta2 = check_unit_interval("beta2", beta2)
        self.eps = check_positive("eps", eps)
        self.weight_decay = check_nonnegative("weight_decay", weight_decay)
        self.set_switch("bias_correction", bias_correction)
        self.set_switch("eps_mode", eps_mode)
        self.eps_root = check_nonnegative("eps_root", eps_root)
        if self.eps_root and self.eps_mode != "outside":
            raise ValueError(f"eps_root > 0 needs eps_mode='outside' (m̂ / (√(v̂ + eps_root) + ε)), got "
                             f"eps_mode={eps_mode!r}")
        self.set_switch("amsgrad", amsgrad)

    def init(self, params) -> AdamState:
        """Zero moments m, v (and v_max for AMSGrad) and step 0; refuses a leaf of size zero."""
        check_nonempty_leaves(params)
        v_max = T.zeros_like(params) if self.amsgrad != "none" else None
        return AdamState(0, T.zeros_like(params), T.zeros_like(params), v_max)

    def _decay(self, lr: float) -> float:
        """The coefficient c of the decoupled decay θ ← θ − cθ at this step's α_t = ``lr`` (0 for Adam)."""
        return 0.0

    def _root_eps(self, c2: float) -> tuple[float, float]:
        """(r, ε̂) such that α_t m / (√(v + r) + ε̂) is the step of ``eps_mode`` (c2 = 1 − β₂ᵗ): the
        denominator multiplied by √c2, i.e. in v's units, so that the bias corrections sit in α_t."""
        if self.eps_mode == "outside":   # √(v/c2 + eps_root) + ε
            return self.eps_root * c2, self.eps * math.sqrt(c2)
        if self.eps_mode == "hat":       # Keras' ε̂ = ε, not bias-corrected
            return 0.0, self.eps
        return self.eps * c2, 0.0        # "inside": √(v/c2 + ε)

    def update(self, params, state, oracle, draws=None):
        """One Adam (or AdamW) step, Algorithm 1's loop body fused per leaf; see the module docs for the switches.

        The fused loop computes, per leaf and chunk by chunk (``update_rules.chunks``: elementwise, so the bits do
        not depend on the chunking; the reported norms are summed chunk by chunk), exactly these lines of
        Algorithm 1 (``tests/test_adam.py`` checks it against a plain transcription for every switch combination):

            m_t = β₁ m_{t−1} + (1 − β₁) g_t
            v_t = β₂ v_{t−1} + (1 − β₂) g_t²            (AMSGrad: u = running max of v_t or of v̂_t; else u = v_t)
            Δ   = α_t m_t / (√(u + r) + ε̂) + cθ         θ_t = θ_{t−1} − Δ

        in Kingma & Ba's cheaper order (end of their §2): α_t = α √(1 − β₂ᵗ)/(1 − β₁ᵗ), and (r, ε̂) put ε and
        eps_root in v's units (``_root_eps``); c is AdamW's decoupled decay (0 for Adam). Adam draws nothing:
        ``draws`` must be None.
        """
        self.check_draws(draws)
        loss, g = oracle.value_and_grad(params)
        t = state.step + 1
        b1, b2 = self.beta1, self.beta2
        c1 = bias_correction(b1, t, self.bias_correction)   # 1 − β₁ᵗ
        c2 = bias_correction(b2, t, self.bias_correction)   # 1 − β₂ᵗ
        lr = self.lr_at(state.step)                           # α_t of the schedule (α when constant)
        alpha_t = lr * math.sqrt(c2) / c1
        r, eps_hat = self._root_eps(c2)
        c = self._decay(lr)
        wd = self.weight_decay if not self._decoupled else 0.0   # Adam's L2 term λθ, added to g_t

        ps, treedef = T.flatten(params)
        amsgrad = self.amsgrad != "none"
        maxes = T.leaves(state.v_max) if amsgrad else [None] * len(ps)
        new_p, new_m, new_v, new_max = [], [], [], []
        raw_sq = sq_g = sq = 0.0
        for x, gi, mi, vi, vmi in zip(ps, T.leaves(g), T.leaves(state.m), T.leaves(state.v), maxes):
            # Fresh C-contiguous outputs, filled chunk by chunk (update_rules.chunks): per chunk the lines of
            # Algorithm 1 run as in-place passes over a scratch d, so nothing but m, v, θ (and AMSGrad's
            # maximum) is allocated and the passes stay in the cache.
            m, v, new = (xp.empty(x.shape, dtype=a.dtype) for a in (mi, gi, x))
            vmax = xp.empty(x.shape, dtype=vmi.dtype) if amsgrad else None
            xf, gf, mf, vf = flat(x), flat(gi), flat(mi), flat(vi)
            M, V, N = flat(m), flat(v), flat(new)
            U, vmf = (flat(vmax), flat(vmi)) if amsgrad else (None, None)
            pieces = chunks(xf.size)
            scratch = xp.empty(pieces[0].stop, dtype=x.dtype)
            spare = xp.empty_like(scratch) if (wd or c) else None
            for sl in pieces:
                k = sl.stop - sl.start
                d, gc, xc, mc, vc = scratch[:k], gf[sl], xf[sl], M[sl], V[sl]
                # the check and the reported norm in one pass: a NaN or Inf anywhere makes the sum non-finite
                # (all_finite then tells an overflow of the squares from a truly non-finite gradient)
                part = float(xp.vdot(gc, gc))
                raw_sq += part
                if not math.isfinite(part) and not bool(xp.all(xp.isfinite(gc))):
                    return refuse(params, state, loss, NON_FINITE_GRADIENT)
                if wd:                                           # g_t + λθ_{t−1}, rounded as l2_decay's λ·θ + g
                    gc = xp.multiply(xc, wd, out=spare[:k])
                    gc += gf[sl]
                    sq_g += float(xp.vdot(gc, gc))
                ema_chunk(mf[sl], gc, b1, mc, d)                 # m_t = β₁ m_{t−1} + (1 − β₁) g_t
                xp.multiply(gc, gc, out=vc)
                ema_chunk(vf[sl], vc, b2, vc, d)                 # v_t = β₂ v_{t−1} + (1 − β₂) g_t²
                u = vc
                if self.amsgrad == "max_v":                      # u = max(v_max, v_t), kept
                    u = xp.maximum(vmf[sl], vc, out=U[sl])
                elif self.amsgrad == "max_v_hat":                # max of v̂ = v/c2, kept in v̂'s units
                    u_hat = xp.divide(vc, c2, out=U[sl])
                    xp.maximum(vmf[sl], u_hat, out=u_hat)
                    u = xp.multiply(u_hat, c2, out=d)
                if r:                                            # d = √(u + r) + ε̂
                    xp.add(u, r, out=d)
                    xp.sqrt(d, out=d)
                else:
                    xp.sqrt(u, out=d)
                if eps_hat:
                    d += eps_hat
                xp.divide(mc, d, out=d)                          # Δ = α_t · (m_t / d)
                d *= alpha_t
                if c:
                    d += xp.multiply(xc, c, out=spare[:k])       # + cθ_{t−1} (AdamW)
                sq += float(xp.vdot(d, d))
                xp.subtract(xc, d, out=N[sl])                    # θ_t = θ_{t−1} − Δ
            new_p.append(new)
            new_m.append(m)
            new_v.append(v)
            if amsgrad:
                new_max.append(vmax)
        grad_norm = math.sqrt(sq_g if wd else raw_sq)
        info = step_info(loss, (), lr=lr, step_norm=math.sqrt(sq), grad_norm=grad_norm)  # norm known
        v_max = T.unflatten(treedef, new_max) if amsgrad else None
        return (T.unflatten(treedef, new_p),
                AdamState(t, T.unflatten(treedef, new_m), T.unflatten(treedef, new_v), v_max), info)


class AdamW(Adam):
    """Adam with decoupled weight decay θ ← θ − λθ (or − αλθ with ``lr_scaled_decay``); see module docs."""

    name = "adamw"
    conventions = (BIAS_CORRECTION, EPS_MODE,
                   Switch("lr_scaled_decay", (False, True), False,
                          "decay θ by αλθ instead of λθ (L&H's η_t λθ with schedule multiplier η_t = 1)",
                          "Loshchilov & Hutter Algorithm 2 (False); PyTorch, optax, Keras (True)"),
                   AMSGRAD)
    _decoupled = True

    def __init__(self, lr: float = 1e-3, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8,
                 weight_decay: float = 1e-4, bias_correction: bool = True, eps_mode: str = "outside",
                 lr_scaled_decay: bool = False, eps_root: float = 0.0, amsgrad: str = "none", schedule=None):
        super().__init__(lr, beta1, beta2, eps, weight_decay, bias_correction, eps_mode, eps_root, amsgrad, schedule)
        self.set_switch("lr_scaled_decay", lr_scaled_decay)

    def _decay(self, lr: float) -> float:
        # λ·α_t (lr-scaled) or λ·η_t with L&H's multiplier η_t = α_t/α (exactly 1 under the constant schedule)
        return self.weight_decay * (lr if self.lr_scaled_decay else lr / self.lr)
