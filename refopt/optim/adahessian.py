"""AdaHessian (Yao, Gholami, Shen, Mustafa, Keutzer & Mahoney 2021, AAAI; arXiv 2006.00719, Algorithm 1).

Each step t = 1, 2, … at θ_t, with g_t = ∇L(θ_t) and k_p Rademacher probes z_j:

    D_t   = (1/k_p) Σ_j z_j ⊙ (H z_j)                       Hutchinson diagonal, H = ∇²L(θ_t)
    D_t^s = spatial average of D_t over blocks of b entries  (their Eq. 10; b = 1: no averaging)
    m_t   = β₁ m_{t−1} + (1 − β₁) g_t
    v_t   = β₂ v_{t−1} + (1 − β₂) D_t^s ⊙ D_t^s             (Hessian "second moment", their Eq. 11)
    θ_{t+1} = θ_t − η (m_t / (1 − β₁ᵗ)) / ((v_t / (1 − β₂ᵗ))^{k/2} + ε)

k is the Hessian power (1 in the paper; 0 gives momentum SGD with step η/(1+ε)).

Spatial averaging (``spatial_block`` b, ``spatial_axis`` a): for every leaf of order ≥ 2, consecutive
runs of b entries along axis a are replaced by their mean (a last, shorter run is averaged over its
own length); b = −1 averages the whole axis. For a dense weight W of shape (fan_in, fan_out), axis 0
averages over the inputs that feed one output unit: PyTorch's ``dim=1`` of ``nn.Linear.weight``,
which is what the official code does for matrices by default (b = −1). Leaves of order ≤ 1 (biases)
are never averaged.

Convolution kernels (``kernel_average``; the paper's §3.3 "spatial averaging" for convolutions): a 4-D leaf
(O, I, kh, kw) (PyTorch's OIHW, refopt's conv layout) has D averaged over its kh × kw spatial entries, one
value per (o, i) pair broadcast back, instead of the rule above ("spatial", default); "none" treats it as
any other leaf. The official code (amirgholami/adahessian, image_classification/optim_adahessian.py and
instruction/adahessian.py) does ``torch.mean(hv.abs(), dim=[2, 3], keepdim=True)`` for every 4-D parameter:
the mean over dims 2 and 3 (kh, kw), of the absolute values, taken BEFORE averaging (its hv is Hz, and
|Hz| = |z ⊙ Hz| for Rademacher z); that is ``kernel_average="spatial"`` with ``absolute=True``.

Switches (the paper's Algorithm 1 first):
* ``spatial_block`` 1 (Eq. 10 with b = 1, the layer-wise setting for dense layers) | b | −1 (official
  code's matrix default, with ``spatial_axis=0``); ``spatial_axis`` 0.
* ``absolute``: False (Eq. 10 averages D as it is) | True (the official code averages |z ⊙ Hz|;
  identical when b = 1, since only D² enters).
* ``bias_correction``: True (Algorithm 1) | False.
* ``eps_mode``: "outside" ((v̂)^{k/2} + ε: Algorithm 1 and the official code) | "inside" ((v̂ + ε)^{k/2}).
* ``probe_distribution``: "rademacher" (the paper) | "gaussian"; ``probes`` k_p per step (1).
* ``weight_decay_mode``: "decoupled" (θ ← θ − ηλθ, the official code; the paper's Algorithm 1 has no
  decay) | "l2" (½λ‖θ‖² added to the loss: g ← g + λθ and D ← D + λ).

Randomness: the probes of the step that starts at ``state.step = s`` are
``draw_probes(params, numpy.random.default_rng([seed, s]), probes, probe_distribution)`` (refopt's
``curvature.draw_probes`` layout: for each probe, for each leaf in tree order, one array of the leaf's
shape), drawn through the oracle's ``draw_probes``, or a list of probe trees passed as
``update(..., draws=[z_1, …])``. ``info["draws"]`` reports the probes used, in that same form, so a run
can be replayed on its own draws. A refused step keeps the state, so a retry sees the same draws.

Gradient-in steps (``optim/gradients.py``): ``apply_gradients(grads, state, params,
hessian_diagonal=D)`` takes D_t as given (before the absolute value, spatial averaging and L2 term) and
draws no probes (``info["draws"]`` None); every step needs one.

``schedule`` (default None: constant; ``optim/schedules.py``) replaces η by η_t, t = the steps taken.

Cost: the loss, the gradient and the products come from one recording of the gradient
(``Oracle.value_and_hvp_operator``), then one reverse sweep per probe: about 3 gradients per step; the
moments and the step run chunk by chunk (``update_rules.chunks``), each leaf read and written once.
"""
from __future__ import annotations

import math
from typing import NamedTuple

from .. import tree as T
from ..backend import rng, xp
from ..curvature import PROBE_DISTRIBUTIONS
from ..serialize import register_state
from .base import (MAX_AXIS, MAX_DIMENSION, MAX_DRAWS, MAX_SEED, Optimizer, Switch, check_int, check_nonnegative,
                   check_positive, check_unit_interval, refuse, show_value, step_info)
from .gradients import given_estimate
from .update_rules import NON_FINITE_GRADIENT, bias_correction, check_nonempty_leaves, chunks, ema_chunk, flat, l2_decay

__all__ = ["AdaHessian", "AdaHessianState", "step_generator", "hutchinson_estimate", "check_probes", "oracle_probes",
           "spatial_average", "kernel_average", "PROBE_DISTRIBUTION"]

# Shared with Sophia-H.
PROBE_DISTRIBUTION = Switch("probe_distribution", PROBE_DISTRIBUTIONS, "rademacher",
                            "Hutchinson probes z with entries ±1, or standard normal",
                            "Hutchinson 1990, Yao et al. 2021, Liu et al. 2023 (rademacher)")


def _check_spatial_block(name: str, value) -> int:
    """−1 (a whole axis) or a block length 1 … MAX_DIMENSION."""
    try:
        block = check_int(name, value, minimum=-1, maximum=MAX_DIMENSION)
    except ValueError:
        block = 0
    if block == 0:
        raise ValueError(f"{name} must be an integer in [1, 2³¹ − 1], or −1 for a whole axis, got {show_value(value)}")
    return block


def step_generator(seed: int, step: int):
    """The host Generator of the draws of the step that starts at ``state.step = step``."""
    return rng([int(seed), int(step)])


def oracle_probes(oracle, params, generator, k: int, distribution: str) -> list:
    """k probes from ``generator``, through the oracle's ``draw_probes`` (capability "probes"; the one
    place where draws are made, so an oracle subclass can change or record them)."""
    return oracle.draw_probes(params, generator, k, distribution)


def check_probes(probes, params) -> list:
    """Validate injected probes: a non-empty list of trees shaped like ``params``."""
    if not isinstance(probes, (list, tuple)) or len(probes) == 0:
        raise ValueError("draws: expected a non-empty list of probe trees shaped like the parameters")
    for z in probes:
        if not T.same_structure(z, params):
            raise ValueError("draws: every probe must be a tree with the parameters' structure and shapes")
    return list(probes)


def hutchinson_estimate(hv, probes):
    """(1/k) Σ_j z_j ⊙ (H z_j) from a Hessian-vector product ``hv``."""
    total = None
    for z in probes:
        d = T.tree_map2(lambda a, b: a * b, z, hv(z))
        total = d if total is None else T.add(total, d)
    return T.scale(1.0 / len(probes), total) if len(probes) > 1 else total


def spatial_average(D, block: int, axis: int):
    """Replace consecutive runs of ``block`` entries along ``axis`` by their mean (see module docs)."""
    if D.ndim < 2 or block == 1:
        return D
    X = xp.moveaxis(D, axis, -1)
    n = X.shape[-1]
    if block == -1 or block >= n:
        out = xp.broadcast_to(xp.mean(X, axis=-1, keepdims=True), X.shape)
    else:
        full = (n // block) * block
        head = xp.reshape(X[..., :full], X.shape[:-1] + (n // block, block))
        head = xp.broadcast_to(xp.mean(head, axis=-1, keepdims=True), head.shape)
        parts = [xp.reshape(head, X.shape[:-1] + (full,))]
        if full < n:
            tail = X[..., full:]
            parts.append(xp.broadcast_to(xp.mean(tail, axis=-1, keepdims=True), tail.shape))
        out = xp.concatenate(parts, axis=-1) if len(parts) > 1 else parts[0]
    return xp.ascontiguousarray(xp.moveaxis(out, -1, axis))


def kernel_average(D):
    """A 4-D kernel's D (O, I, kh, kw) replaced by its mean over the kernel's spatial axes (kh, kw), broadcast
    back to the kernel's shape (module docs); other leaves unchanged."""
    if D.ndim != 4:
        return D
    return xp.ascontiguousarray(xp.broadcast_to(xp.mean(D, axis=(2, 3), keepdims=True), D.shape))


@register_state
class AdaHessianState(NamedTuple):
    """AdaHessian's state: the step count, the moments m and v, and the probes' base seed."""

    step: int
    m: object  # first moment of the gradient, a tree like params
    v: object  # moving average of D^s ⊙ D^s, a tree like params
    seed: int  # base seed of the probes (see module docs)


class AdaHessian(Optimizer):
    """θ ← θ − η m̂ / (v̂^{k/2} + ε) with v from Hutchinson diagonals (see module docs)."""

    name = "adahessian"
    conventions = (
        Switch("spatial_block", (1, -1), 1, "average D over runs of b entries along spatial_axis (−1: the whole axis)",
               "Yao et al. 2021 Eq. 10 with b = 1 (1); the official code's matrix default (−1)",
               check=_check_spatial_block),
        Switch("absolute", (False, True), False, "average |z ⊙ Hz| instead of z ⊙ Hz (identical for b = 1)",
               "Yao et al. 2021 Eq. 10 (False); the official code (True)"),
        Switch("kernel_average", ("spatial", "none"), "spatial",
               "4-D conv kernels (O, I, kh, kw): D averaged over each kernel's kh × kw entries (after |·| when "
               "absolute), or averaged as other leaves (spatial_block along spatial_axis)",
               "Yao et al. 2021 §3.3; the official code's torch.mean(hv.abs(), dim=[2, 3]) (spatial)"),
        Switch("bias_correction", (True, False), True, "divide m and v by 1 − βᵗ", "Yao et al. 2021 Algorithm 1 (True)"),
        Switch("eps_mode", ("outside", "inside"), "outside", "(v̂)^{k/2} + ε, or (v̂ + ε)^{k/2}",
               "Algorithm 1 and the official code (outside)"),
        PROBE_DISTRIBUTION,
        Switch("weight_decay_mode", ("decoupled", "l2"), "decoupled",
               "θ ← θ − ηλθ, or ½λ‖θ‖² in the loss (g + λθ and D + λ)", "the official code (decoupled)"),
    )
    requires = frozenset({"value", "gradient", "hvp", "probes"})
    draws = "probes"
    gradient_in = ("hessian_diagonal",)   # D_t, every step (optim/gradients.py)

    def __init__(self, lr: float = 0.15, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-4,
                 hessian_power: float = 1.0, spatial_block: int = 1, spatial_axis: int = 0,
                 absolute: bool = False, bias_correction: bool = True, eps_mode: str = "outside",
                 probe_distribution: str = "rademacher", probes: int = 1, weight_decay: float = 0.0,
                 weight_decay_mode: str = "decoupled", seed: int = 0, schedule=None,
                 kernel_average: str = "spatial"):
        self.lr = check_positive("lr", lr)
        self.set_schedule(schedule)
        self.beta1 = check_unit_interval("beta1", beta1)
        self.beta2 = check_unit_interval("beta2", beta2)
        self.eps = check_positive("eps", eps)
        self.hessian_power = check_nonnegative("hessian_power", hessian_power)
        self.set_switch("spatial_block", spatial_block)
        self.spatial_axis = check_int("spatial_axis", spatial_axis, minimum=0, maximum=MAX_AXIS)
        self.set_switch("absolute", absolute)
        self.set_switch("kernel_average", kernel_average)
        self.set_switch("bias_correction", bias_correction)
        self.set_switch("eps_mode", eps_mode)
        self.set_switch("probe_distribution", probe_distribution)
        self.probes = check_int("probes", probes, maximum=MAX_DRAWS)
        self.weight_decay = check_nonnegative("weight_decay", weight_decay)
        self.set_switch("weight_decay_mode", weight_decay_mode)
        self.seed = check_int("seed", seed, minimum=0, maximum=MAX_SEED)

    def init(self, params) -> AdaHessianState:
        """Zero moments m, v, step 0 and the probe seed; refuses empty leaves and a missing ``spatial_axis``."""
        check_nonempty_leaves(params)
        for leaf in T.leaves(params):
            if leaf.ndim >= 2 and self.spatial_block != 1 and self.spatial_axis >= leaf.ndim and not (
                    leaf.ndim == 4 and self.kernel_average == "spatial"):
                raise ValueError(f"spatial_axis={self.spatial_axis} does not exist for a leaf of shape "
                                 f"{tuple(leaf.shape)}")
        return AdaHessianState(0, T.zeros_like(params), T.zeros_like(params), self.seed)

    def _average(self, d):
        """D^s of one leaf: a conv kernel's kernel average ("spatial"), else ``spatial_average``."""
        if d.ndim == 4 and self.kernel_average == "spatial":
            return kernel_average(d)
        return spatial_average(d, self.spatial_block, self.spatial_axis)

    def estimates_needed(self, state) -> tuple:
        """Every step uses D_t: ("hessian_diagonal",)."""
        return ("hessian_diagonal",)

    def update(self, params, state, oracle, draws=None):
        """One AdaHessian step: Hutchinson diagonal from drawn (or injected) probes, spatial average, moments, step;
        ``draws``: the probes (reported as ``info["draws"]``)."""
        self.check_draws(draws)
        D = given_estimate(oracle, "hessian_diagonal", params)   # a gradient-in step's D_t (module docs), else None
        if D is not None:
            probes = None
            loss, g = oracle.value_and_grad(params)
        else:
            if draws is None:
                probes = oracle_probes(oracle, params, step_generator(state.seed, state.step), self.probes,
                                       self.probe_distribution)
            else:
                probes = check_probes(draws, params)
            loss, g, hv = oracle.value_and_hvp_operator(params)   # loss, gradient and products from one recording
        grad_norm = T.norm(g)   # the reported norm, and the check: a NaN or Inf anywhere makes it non-finite
        if not math.isfinite(grad_norm) and not T.all_finite(g):
            return refuse(params, state, loss, NON_FINITE_GRADIENT)
        if D is None:
            D = hutchinson_estimate(hv, probes)                            # D_t = (1/k_p) Σ z ⊙ Hz
        if not T.all_finite(D):
            return refuse(params, state, loss, "non-finite Hessian-diagonal estimate: step refused", g)
        if self.absolute:
            D = T.tree_map(xp.abs, D)
        D = T.tree_map(self._average, D)   # D_t^s
        lam = self.weight_decay
        if lam and self.weight_decay_mode == "l2":   # ½λ‖θ‖² in the loss: its gradient λθ, its Hessian diagonal λ
            g = l2_decay(g, params, lam)
            D = T.tree_map(lambda d: d + lam, D)
            grad_norm = T.norm(g)
        t = state.step + 1
        b1, b2, k = self.beta1, self.beta2, self.hessian_power
        c1 = bias_correction(b1, t, self.bias_correction)                   # 1 − β₁ᵗ
        c2 = bias_correction(b2, t, self.bias_correction)                   # 1 − β₂ᵗ
        lr = self.lr_at(state.step)
        decay = lam if self.weight_decay_mode == "decoupled" else 0.0
        ps, treedef = T.flatten(params)
        new_p, new_m, new_v = [], [], []
        sq = 0.0
        for x, gi, Di, mi, vi in zip(ps, T.leaves(g), T.leaves(D), T.leaves(state.m), T.leaves(state.v)):
            # Per chunk (update_rules.chunks), in the rounding order of the lines they always were:
            #   m_t = β₁m + (1 − β₁)g,  v_t = β₂v + ((1 − β₂)·D)·D  (the golden traces fix that order),
            #   d = (m/c1) / ((v/c2)^{k/2} + ε)  (or / (v/c2 + ε)^{k/2}),  θ − η(d + λθ)  (descent_step)
            m, v, new = (xp.empty(x.shape, dtype=a.dtype) for a in (mi, vi, x))
            xf, gf, Df, mf, vf, M, V, N = (flat(a) for a in (x, gi, Di, mi, vi, m, v, new))
            pieces = chunks(xf.size)
            scratch = xp.empty(pieces[0].stop, dtype=x.dtype)
            for sl in pieces:
                d, Mc, Vc, Dc = scratch[:sl.stop - sl.start], M[sl], V[sl], Df[sl]
                ema_chunk(mf[sl], gf[sl], b1, Mc, d)
                xp.multiply(vf[sl], b2, out=Vc)
                xp.multiply(Dc, 1.0 - b2, out=d)
                d *= Dc
                Vc += d
                if self.eps_mode == "outside":   # the power as an operator: NumPy's ** takes √ for k/2 = ½
                    xp.divide(Mc / c1, (Vc / c2) ** (k / 2) + self.eps, out=d)
                else:
                    xp.divide(Mc / c1, (Vc / c2 + self.eps) ** (k / 2), out=d)
                sq += float(xp.vdot(d, d))
                if decay:
                    d += decay * xf[sl]                                     # d + λθ (decoupled)
                d *= -lr
                xp.add(d, xf[sl], out=N[sl])                                # (−η)·(d + λθ) + θ
            new_p.append(new)
            new_m.append(m)
            new_v.append(v)
        new, m, v = (T.unflatten(treedef, leaves) for leaves in (new_p, new_m, new_v))
        info = step_info(loss, (), lr=lr, step_norm=lr * math.sqrt(sq), draws=probes, grad_norm=grad_norm)
        return new, AdaHessianState(t, m, v, state.seed), info
