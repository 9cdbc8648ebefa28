"""Shampoo for parameters of any order (Gupta, Koren & Singer 2018, Algorithms 1 and 2).

For a parameter leaf whose gradient G_t is an order-k tensor of shape (n_1, …, n_k), one statistic per
mode, with G_(i) the mode-i unfolding (n_i × Π_{j≠i} n_j):

    H_i ← H_i + G_(i) G_(i)ᵀ                  (statistics="sum", the paper; H_i(0) = initial_accumulator·I)
    H_i ← β₂ H_i + (1 − β₂) G_(i) G_(i)ᵀ       (statistics="ema")
    R_i = (H_i + εI)^p,  p = −1/(2k)           (eps_mode="add"; "floor": Q max(Λ, ε)^p Qᵀ), by eigh
    P(G) = G ×₁ R_1 ×₂ R_2 ⋯ ×_k R_k           (mode-i product: R_i applied to every mode-i fibre)
    θ ← θ − η P(G)

For a matrix this is W ← W − η L^{−1/4} G R^{−1/4} (Algorithm 1 with L = H_1, R = H_2), i.e.
vec(P(G)) = ((L+εI)^{−1/4} ⊗ (R+εI)^{−1/4}) vec(G) with row-major vec; for a vector (k = 1) it is
full-matrix Adagrad with ε inside the root, (Σ g gᵀ + εI)^{−1/2} g. The paper starts from H_i = εI
and takes (H_i)^{−1/(2k)}: with sum statistics that is exactly initial_accumulator=0, eps_mode="add".

Options (defaults: the paper's Shampoo):
* ``statistics`` "sum" | "ema" (with ``beta2``) | "ema_debiased" (the EMA, with roots taken of
  H_i / (1 − β₂ᵗ) at the step t of the recomputation: facebookresearch/distributed_shampoo with
  betas[1] < 1); ``initial_accumulator`` H_i(0) = c·I.
* ``eps_mode`` "add" (ε added before the root, the paper) | "floor" (eigenvalues floored at ε) |
  "relative" (ε·max(λ_max(H_i), 10⁻⁶) added: google-research scalable_shampoo's
  relative_matrix_epsilon=True, whose λ_max comes from a power iteration floored at its
  error_tolerance 10⁻⁶; refopt takes λ_max from the eigendecomposition; a diagonal statistic uses its
  largest entry) | "shift" (facebookresearch/distributed_shampoo's default PerturbationConfig,
  perturb_before_computation=True: QΛQᵀ = eigh(H + εI); when λ_min < ε, Λ ← Λ − λ_min + ε, so the
  smallest eigenvalue is exactly ε and a rounding-negative H never makes the root singular).
* ``exponent`` p overrides −1/(2k) for every statistic (e.g. −1/k = −0.5 for matrices, as some
  implementations do); k is the order after merging.
* ``precondition_interval`` T and ``start_step`` s: statistics are updated every step; roots are
  recomputed at steps t = s, s + T, s + 2T, … (t counts steps from 1; ``refresh`` "from_start") or at
  t = s and at every multiple of T after s (``refresh`` "multiples": distributed_shampoo's
  ``step % precondition_frequency == 0 and step > start or step == start``) and reused, stale, in
  between; before step s the step is the grafting direction (the raw gradient without grafting).
* ``grafting`` "none" (paper) | "sgd" | "adagrad": per leaf, the Shampoo direction is rescaled to the
  norm of the SGD direction G or of the diagonal Adagrad direction G / (√A + graft_eps), A = Σ G⊙G
  (Agarwal et al. 2020 "layer-wise grafting"; Anil et al. 2020).
* ``merge_dims`` m: adjacent modes are merged while their product stays ≤ m (Anil et al. 2020), so
  a (3, 3, 64, 64) kernel with m = 64·9 becomes (9, 4096)… and the exponent uses the merged order.
* ``tensor_view`` "native" (the paper's order-k Shampoo: a conv kernel (O, I, kh, kw) gets four statistics
  and the exponent −1/8) | "matrix" (a leaf of order > 2 is viewed as the matrix (shape[0], ∏ rest), a
  kernel's (O, I·kh·kw), before ``merge_dims`` and ``block_size``, exponent −1/4: what
  facebookresearch/distributed_shampoo's merge_small_dims reaches with target_tensor_dimensionality=2, as it
  merges from the last mode while the product stays under its threshold).
* ``block_size`` b: after merging, every mode longer than b is cut into chunks of ≤ b; each block of
  the resulting grid gets its own statistics and roots (Anil et al. 2020, "blocking").
* ``vector_diagonal``: order-1 leaves (biases) get a full n×n statistic (False, the paper's order-1
  Shampoo) or a diagonal one, H ← H + g⊙g, P(g) = (H + ε)^p ⊙ g (True).
* ``momentum`` μ with ``precondition`` "gradient" (m ← μm + P(G), the usual implementation),
  "momentum" (m ← μm + G and the step is P(m)); statistics come from the raw G; or "blended"
  (pytorch_optimizer's Shampoo): the gradient is first blended with the previous *update*,
  G̃_t = (1 − μ)G_t + μP_{t−1} (P_0 = G_1, so G̃_1 = G_1; an L2 term λθ is added after the blend), and
  G̃ feeds both the statistics and the step, P_t = P(G̃_t), θ ← θ − ηP_t.
  ``nesterov`` (default False): the step is P(G) + μm ("gradient", google-research scalable_shampoo's
  nesterov=True with moving_average_for_momentum=False) or P(G + μm) ("momentum"), with the new m.
* ``filter_beta`` β₁ ∈ [0, 1) (default 0: off, the paper): the gradient is filtered before it is
  preconditioned, G̃ ← β₁G̃ + (1 − β₁)G and P(G̃ / (1 − β₁ᵗ)) (also the graft direction's input), while
  the statistics and the grafting accumulator keep the raw G (facebookresearch/distributed_shampoo's
  betas[0] with use_bias_correction=True, its default 0.9); the momentum μ then acts on P.
* ``weight_decay_mode`` "l2" (λθ added to G before the statistics) | "decoupled" (θ ← θ − ηλθ) |
  "graft" (λθ added to each leaf's direction after grafting, before the momentum; statistics, graft
  accumulator and graft norm keep the raw G: google-research scalable_shampoo's weight_decay with
  decoupled_weight_decay=False).
* ``lr_dtype`` "native" (η as given) | "float32" (η rounded to float32 before it multiplies the step:
  distributed_shampoo keeps lr in a persistent float32 tensor, so lr = 0.01 steps by 0.00999999977…).
* ``factor_dtype`` "native" (H_i and R_i in the gradient's dtype) | "float32" (distributed_shampoo's
  default factor_matrix_dtype = inv_factor_matrix_dtype = float32): G_(i)G_(i)ᵀ is formed in G's dtype
  and added to the float32 H_i with one rounding (H_i ← fl₃₂(H_i + S), or fl₃₂(fl₃₂(β₂H_i) + (1 − β₂)S)),
  the debiasing, H + εI, eigh, the shift and the powers run in float32, R_i is stored in float32, and
  P(G) is computed from fl₃₂(G) in float32 and cast back (also with the identity roots before s).
* ``root`` "eigh" (H = QΛQᵀ, R = QΛ^pQᵀ of the symmetrised H) | "svd" (H = U diag(s) Vᵀ of H as it
  is, R = U diag(s)^p Vᵀ: pytorch_optimizer's compute_power_svd; equal in exact arithmetic for a
  positive definite H). Under "svd" the ε of eps_mode "add" / "floor" acts on s.

``schedule`` (default None: constant; ``optim/schedules.py``) replaces η by η_t, t = the steps taken
(rounded to float32 under ``lr_dtype="float32"``, as Meta's lr tensor holds the scheduled value).

Bad input: a leaf of order 0 or with a zero-length mode raises ValueError in ``init``; a non-finite
gradient (or overflowing statistics) refuses the step.
"""
from __future__ import annotations

import itertools
import math
import struct
from typing import NamedTuple

from .. import tree as T
from ..backend import xp
from ..linalg import sym_matrix_power, symmetrize
from ..serialize import register_state
from .adagrad import accumulate_squares, adagrad_direction
from .base import (MAX_DIMENSION, Optimizer, Switch, as_real, check_int, check_nonnegative, check_positive,
                   check_unit_interval, refuse, show_value, step_info)
from .update_rules import (NON_FINITE_GRADIENT, WEIGHT_DECAY_MODES, bias_correction, decayed_gradient, descent_step,
                           ema, graft, l2_decay, momentum)

__all__ = ["Shampoo", "ShampooState", "merge_dims", "block_slices", "STATISTICS", "EPS_MODES"]

STATISTICS = ("sum", "ema", "ema_debiased")
EPS_MODES = ("add", "floor", "relative", "shift")
RELATIVE_EPS_FLOOR = 1e-6   # λ_max floor of eps_mode="relative" (scalable_shampoo's error_tolerance)


@register_state
class ShampooState(NamedTuple):
    """Shampoo's state: step count, statistics H_i and roots R_i per leaf and block, graft, momentum, filtered G."""

    step: int
    stats: tuple     # per leaf, per block: a tuple of the mode statistics H_i (or one vector H, diagonal leaf)
    roots: tuple     # the same layout: R_i = H_i^p as last recomputed (None before the first recomputation)
    graft: object    # Adagrad grafting accumulator A (tree like params) or None
    momentum: object  # momentum buffer (tree like params) or None
    filtered: object = None  # EMA G̃ of the gradients for ``filter_beta`` > 0 (tree like params), else None


def merge_dims(shape: tuple, limit: int | None) -> tuple:
    """Merge adjacent modes while their product stays ≤ ``limit`` (None: keep the shape)."""
    if limit is None or len(shape) <= 1:
        return tuple(shape)
    out = [shape[0]]
    for n in shape[1:]:
        if out[-1] * n <= limit:
            out[-1] *= n
        else:
            out.append(n)
    return tuple(out)


def block_slices(shape: tuple, block_size: int | None) -> list[tuple]:
    """The grid of blocks (tuples of slices) that cuts every mode into chunks of ≤ ``block_size``."""
    if block_size is None:
        return [tuple(slice(0, n) for n in shape)]
    chunks = [[slice(s, min(s + block_size, n)) for s in range(0, n, block_size)] for n in shape]
    return list(itertools.product(*chunks))


def _mode_statistic(G, i: int):
    """G_(i) G_(i)ᵀ for the mode-i unfolding of G."""
    if G.ndim == 1:
        return xp.outer(G, G)
    if G.ndim == 2:
        return G @ G.T if i == 0 else G.T @ G
    others = [j for j in range(G.ndim) if j != i]
    return xp.tensordot(G, G, axes=(others, others))


def _mode_products(G, roots):
    """G ×₁ R_1 ×₂ R_2 ⋯ ×_k R_k (each R_i symmetric)."""
    if G.ndim == 1:
        return roots[0] @ G
    if G.ndim == 2:
        return roots[0] @ G @ roots[1]
    for i, R in enumerate(roots):
        G = xp.moveaxis(xp.tensordot(R, G, axes=([1], [i])), 0, i)
    return G


class Shampoo(Optimizer):
    """θ ← θ − η G ×₁ H₁^{−1/(2k)} ⋯ ×_k H_k^{−1/(2k)} per leaf (see module docs)."""

    name = "shampoo"
    conventions = (
        Switch("statistics", STATISTICS, "sum", "H_i summed, an EMA with β₂, or the EMA debiased by 1 − β₂ᵗ at each root",
               "Gupta et al. 2018 (sum); facebookresearch/distributed_shampoo betas[1] < 1 (ema_debiased)"),
        Switch("eps_mode", EPS_MODES, "add",
               "(H + εI)^p (the paper's H₀ = εI), Q max(Λ, ε)^p Qᵀ (floored), (H + ε·max(λ_max, 1e-6)·I)^p, or "
               "eigh(H + εI) shifted by ε − λ_min when λ_min < ε",
               "Gupta et al. 2018 (add); google-research scalable_shampoo relative_matrix_epsilon (relative); "
               "facebookresearch/distributed_shampoo PerturbationConfig(perturb_before_computation=True) (shift)"),
        Switch("grafting", ("none", "sgd", "adagrad"), "none",
               "rescale each leaf's direction to the norm of the SGD or the diagonal Adagrad direction",
               "Gupta et al. 2018 (none); Agarwal et al. 2020, Anil et al. 2020 (sgd, adagrad)"),
        Switch("vector_diagonal", (False, True), False,
               "order-1 leaves get a diagonal statistic instead of n×n (= full-matrix Adagrad)",
               "Gupta et al. 2018 (False)"),
        Switch("precondition", ("gradient", "momentum", "blended"), "gradient",
               "momentum accumulates P(G), the step preconditions the momentum P(m), or G is blended with the "
               "previous update, (1 − μ)G + μP_{t−1}, before the statistics and the step",
               "common implementations (gradient); pytorch_optimizer Shampoo, grad.lerp_(momentum_buffer) (blended)"),
        Switch("weight_decay_mode", WEIGHT_DECAY_MODES + ("graft",), "l2",
               "λθ added to G before the statistics, θ ← θ − ηλθ, or λθ added to the grafted direction",
               "Gupta et al. 2018 (l2); google-research scalable_shampoo decoupled_weight_decay=False (graft)"),
        Switch("nesterov", (False, True), False, "step P(G) + μm (or P(G + μm)) with the new m; needs momentum > 0",
               "google-research scalable_shampoo nesterov=True (True)"),
        Switch("root", ("eigh", "svd"), "eigh", "inverse roots from eigh of the symmetrised H, or from the SVD of H",
               "common implementations (eigh); pytorch_optimizer Shampoo, compute_power_svd (svd)"),
        Switch("refresh", ("from_start", "multiples"), "from_start",
               "roots recomputed at s, s + T, s + 2T, …, or at s and at every multiple of T after s",
               "Anil et al. 2020 (from_start); facebookresearch/distributed_shampoo precondition_frequency (multiples)"),
        Switch("lr_dtype", ("native", "float32"), "native", "η as given, or rounded to float32 before the step",
               "facebookresearch/distributed_shampoo's float32 lr tensor (float32)"),
        Switch("factor_dtype", ("native", "float32"), "native",
               "H_i and R_i kept in the gradient's dtype, or stored, rooted and applied in float32",
               "facebookresearch/distributed_shampoo factor_matrix_dtype, inv_factor_matrix_dtype (float32)"),
        Switch("tensor_view", ("native", "matrix"), "native",
               "a leaf of order k > 2 (a conv kernel (O, I, kh, kw)) keeps its k modes, or is viewed as the matrix "
               "(shape[0], ∏ rest), (O, I·kh·kw), before merge_dims and blocking",
               "Gupta et al. 2018 (native, order-k); facebookresearch/distributed_shampoo merge_small_dims with "
               "target_tensor_dimensionality=2, which merges from the last mode (matrix)"),
    )

    gradient_in = ()   # gradients only (optim/gradients.py)

    def __init__(self, lr: float = 0.1, eps: float = 1e-4, statistics: str = "sum", beta2: float = 0.999,
                 initial_accumulator: float = 0.0, eps_mode: str = "add", exponent: float | None = None,
                 precondition_interval: int = 1, start_step: int = 1, grafting: str = "none",
                 graft_eps: float = 1e-10, merge_dims: int | None = None, block_size: int | None = None,
                 vector_diagonal: bool = False, momentum: float = 0.0, precondition: str = "gradient",
                 weight_decay: float = 0.0, weight_decay_mode: str = "l2", nesterov: bool = False,
                 filter_beta: float = 0.0, root: str = "eigh", refresh: str = "from_start",
                 lr_dtype: str = "native", factor_dtype: str = "native", schedule=None,
                 tensor_view: str = "native"):
        self.lr = check_positive("lr", lr)
        self.set_schedule(schedule)
        self.eps = check_positive("eps", eps)
        self.set_switch("statistics", statistics)
        self.beta2 = check_unit_interval("beta2", beta2)
        self.initial_accumulator = check_nonnegative("initial_accumulator", initial_accumulator)
        self.set_switch("eps_mode", eps_mode)
        if exponent is not None and not (as_real(exponent) is not None and -math.inf < as_real(exponent) < 0):
            raise ValueError(f"exponent must be a negative finite number (or None for −1/(2k)), got "
                             f"{show_value(exponent)}")
        self.exponent = None if exponent is None else as_real(exponent)
        self.precondition_interval = check_int("precondition_interval", precondition_interval)
        self.start_step = check_int("start_step", start_step)
        self.set_switch("grafting", grafting)
        self.graft_eps = check_positive("graft_eps", graft_eps)
        self.merge_dims = None if merge_dims is None else check_int("merge_dims", merge_dims, maximum=MAX_DIMENSION)
        self.block_size = None if block_size is None else check_int("block_size", block_size, maximum=MAX_DIMENSION)
        self.set_switch("vector_diagonal", vector_diagonal)
        self.momentum = check_unit_interval("momentum", momentum)
        self.set_switch("precondition", precondition)
        self.weight_decay = check_nonnegative("weight_decay", weight_decay)
        self.set_switch("weight_decay_mode", weight_decay_mode)
        self.set_switch("nesterov", nesterov)
        if self.nesterov and not self.momentum:
            raise ValueError("nesterov=True needs momentum > 0")
        self.filter_beta = check_unit_interval("filter_beta", filter_beta)
        if self.filter_beta and self.momentum and self.precondition == "momentum":
            raise ValueError("filter_beta > 0 preconditions the filtered gradient: it needs precondition='gradient' "
                             "when momentum > 0")
        if self.precondition == "blended" and (self.nesterov or self.filter_beta):
            raise ValueError("precondition='blended' (pytorch_optimizer's momentum) takes neither nesterov nor "
                             "filter_beta")
        self.set_switch("root", root)
        if self.root == "svd" and self.eps_mode in ("relative", "shift"):
            raise ValueError("root='svd' takes eps_mode 'add' or 'floor'")
        self.set_switch("refresh", refresh)
        self.set_switch("lr_dtype", lr_dtype)
        self.set_switch("factor_dtype", factor_dtype)
        self.set_switch("tensor_view", tensor_view)
        # η as it multiplies the step: float32(η) is Meta's lr tensor (the nearest float32, as a Python float)
        try:
            self._eta = self._rounded(self.lr)
        except OverflowError:
            self._eta = math.inf
        if not 0 < self._eta < math.inf:   # float32 overflows past 3.4e38 and underflows to 0 below 1.4e-45
            raise ValueError(f"lr={show_value(lr)} is outside the float32 range (lr_dtype='float32')")

    def _rounded(self, lr: float) -> float:
        """η as it multiplies the step: float32(η) (``lr_dtype="float32"``, as a Python float) or η itself."""
        return struct.unpack("f", struct.pack("f", lr))[0] if self.lr_dtype == "float32" else lr

    def _eta_at(self, step: int) -> float:
        """η_t of the schedule as it multiplies the step (``_eta`` under the constant schedule)."""
        return self._eta if self._schedule is None else self._rounded(self.lr_at(step))

    # --- layout of one leaf -------------------------------------------------------------------
    def _layout(self, shape: tuple):
        """(merged shape, blocks, diagonal?) for a leaf of ``shape``."""
        if len(shape) == 0:
            raise ValueError("Shampoo: a parameter of order 0 (a scalar) has no modes to precondition; "
                             "give it shape (1,)")
        if any(n == 0 for n in shape):
            raise ValueError(f"Shampoo: a parameter of shape {tuple(shape)} has a zero-length mode")
        if len(shape) == 1 and self.vector_diagonal:
            return tuple(shape), [(slice(0, shape[0]),)], True
        view = tuple(shape)
        if self.tensor_view == "matrix" and len(view) > 2:
            view = (view[0], math.prod(view[1:]))
        merged = merge_dims(view, self.merge_dims)
        return merged, block_slices(merged, self.block_size), False

    def _power(self, order: int) -> float:
        return self.exponent if self.exponent is not None else -1.0 / (2 * order)

    def init(self, params) -> ShampooState:
        """H_i = initial_accumulator · I per mode and block, no roots yet, the buffers the switches need; step 0."""
        stats = []
        for leaf in T.leaves(params):
            merged, blocks, diagonal = self._layout(tuple(leaf.shape))
            c, dtype = self.initial_accumulator, self._factor_dtype(leaf.dtype)
            if diagonal:
                stats.append(((xp.full(leaf.shape, c, dtype=dtype),),))
                continue
            per_block = []
            for sl in blocks:
                sizes = [s.stop - s.start for s in sl]
                per_block.append(tuple(xp.asarray(c * xp.eye(n, dtype=leaf.dtype), dtype=dtype) for n in sizes))
            stats.append(tuple(per_block))
        graft_acc = T.zeros_like(params) if self.grafting == "adagrad" else None
        mom = T.zeros_like(params) if self.momentum else None
        filtered = T.zeros_like(params) if self.filter_beta else None
        return ShampooState(0, tuple(stats), tuple(None for _ in stats), graft_acc, mom, filtered)

    # --- one step -----------------------------------------------------------------------------
    def _factor_dtype(self, dtype):
        """The dtype of the statistics and roots: the gradient's, or float32 (``factor_dtype``)."""
        return xp.float32 if self.factor_dtype == "float32" else dtype

    def _accumulate(self, H, S):
        """The new statistic from the old H and this step's S (a fresh array, updated in place for "sum")."""
        if self.factor_dtype == "float32":   # torch's H.mul_(β₂) in float32, then H.add_(S, alpha=1 − β₂) rounded once
            if self.statistics == "sum":
                return (S + H).astype(xp.float32)
            return ((H * xp.float32(self.beta2)) + (1.0 - self.beta2) * S).astype(xp.float32)
        if self.statistics == "sum":   # H + S
            S += H
            return S
        return ema(H, S, self.beta2)   # β₂H + (1 − β₂)S

    def _leaf_statistics(self, G, stats_leaf):
        merged, blocks, diagonal = self._layout(tuple(G.shape))
        if diagonal:
            return ((self._accumulate(stats_leaf[0][0], G * G),),)  # G * G is a fresh array
        Gm = xp.reshape(G, merged)
        out = []
        for sl, Hs in zip(blocks, stats_leaf):
            Gb = Gm[sl] if len(blocks) > 1 else Gm
            out.append(tuple(self._accumulate(H, _mode_statistic(Gb, i)) for i, H in enumerate(Hs)))
        return tuple(out)

    def _root(self, H, p: float):
        """(H + εI)^p, Q max(Λ, ε)^p Qᵀ or (H + ε·max(λ_max, 10⁻⁶)·I)^p by eigh (``eps_mode``), or by the SVD."""
        if self.root == "svd":   # U diag(s)^p Vᵀ of H as it is, not symmetrised (pytorch_optimizer)
            if self.eps_mode == "add":
                H = H + self.eps * xp.eye(H.shape[0], dtype=H.dtype)
            U, sv, Vt = xp.linalg.svd(H, full_matrices=False)
            if self.eps_mode == "floor":
                sv = xp.maximum(sv, self.eps)
            if bool(xp.any(sv <= 0)):
                raise ValueError("Shampoo: a negative power of a singular statistic; use eps > 0")
            return (U * sv ** p) @ Vt
        if self.eps_mode == "shift":   # eigh(H + εI); if λ_min < ε: Λ − λ_min + ε (distributed_shampoo's default)
            lam, Q = xp.linalg.eigh(symmetrize(H) + xp.asarray(self.eps * xp.eye(H.shape[0]), dtype=H.dtype))
            lam_min = lam.min()
            if bool(lam_min < self.eps):
                lam = (lam - lam_min) + xp.asarray(self.eps, dtype=lam.dtype)
            return (Q * lam ** p) @ Q.T
        if self.eps_mode != "relative":
            return sym_matrix_power(H, p, self.eps, self.eps_mode)
        lam, Q = xp.linalg.eigh(symmetrize(H))
        ridge = self.eps * max(float(xp.max(lam)), RELATIVE_EPS_FLOOR)
        lam = xp.maximum(lam + ridge, 0.0)
        return (Q * lam ** p) @ Q.T

    def _leaf_roots(self, shape, stats_leaf, t: int):
        merged, _, diagonal = self._layout(tuple(shape))
        p = self._power(len(merged))
        debias = 1.0 / bias_correction(self.beta2, t) if self.statistics == "ema_debiased" else 1.0
        if diagonal:
            H = stats_leaf[0][0] * debias
            if self.eps_mode == "add":
                lam = H + self.eps
            elif self.eps_mode == "floor":
                lam = xp.maximum(H, self.eps)
            elif self.eps_mode == "shift":   # the diagonal's own eigenvalues, as for a matrix
                lam = H + xp.asarray(self.eps, dtype=H.dtype)
                lam_min = lam.min()
                if bool(lam_min < self.eps):
                    lam = (lam - lam_min) + xp.asarray(self.eps, dtype=H.dtype)
            else:
                lam = H + self.eps * max(float(xp.max(H)), RELATIVE_EPS_FLOOR)
            return ((lam ** p,),)
        if self.factor_dtype == "float32" and debias != 1.0:   # Meta: H / (1 − β₂ᵗ) in float32
            bc = xp.float32(bias_correction(self.beta2, t))
            return tuple(tuple(self._root(H / bc, p) for H in Hs) for Hs in stats_leaf)
        return tuple(tuple(self._root(H * debias if debias != 1.0 else H, p) for H in Hs) for Hs in stats_leaf)

    def _leaf_precondition(self, G, roots_leaf):
        if self.factor_dtype == "float32" and G.dtype != xp.float32:   # P(fl₃₂(G)) in float32, cast back
            return self._leaf_precondition_in(G.astype(xp.float32), roots_leaf).astype(G.dtype)
        return self._leaf_precondition_in(G, roots_leaf)

    def _leaf_precondition_in(self, G, roots_leaf):
        merged, blocks, diagonal = self._layout(tuple(G.shape))
        if diagonal:
            return roots_leaf[0][0] * G
        Gm = xp.reshape(G, merged)
        if len(blocks) == 1:
            return xp.reshape(_mode_products(Gm, roots_leaf[0]), G.shape)
        out = xp.empty_like(Gm)
        for sl, Rs in zip(blocks, roots_leaf):
            out[sl] = _mode_products(Gm[sl], Rs)
        return xp.reshape(out, G.shape)

    def update(self, params, state, oracle, draws=None):
        """One Shampoo step: statistics, roots recomputed on schedule, P(G) with grafting and momentum (module docs).
        Shampoo draws nothing: ``draws`` must be None."""
        self.check_draws(draws)
        blended = self.precondition == "blended" and self.momentum
        if blended:   # G̃ = (1 − μ)G + μP_{t−1} (G̃_1 = G_1), then the L2 term: the order of pytorch_optimizer
            loss, g = decayed_gradient(params, oracle)
            if g is not None:
                g = l2_decay(g if state.step == 0 else ema(state.momentum, g, self.momentum), params,
                             self.weight_decay if self.weight_decay_mode == "l2" else 0.0)
        else:
            loss, g = decayed_gradient(params, oracle, self.weight_decay, self.weight_decay_mode)  # (+ λθ for "l2")
        if g is None:
            return refuse(params, state, loss, NON_FINITE_GRADIENT)
        t = state.step + 1
        treedef = T.flatten(params)[1]
        gs = T.leaves(g)
        stats = tuple(self._leaf_statistics(G, S) for G, S in zip(gs, state.stats))
        # |H_ij| ≤ √(H_ii H_jj) for these PSD sums, so an overflow shows on the diagonal (cheaper to scan)
        if not all(bool(xp.all(xp.isfinite(xp.diagonal(H) if H.ndim == 2 else H))) for s in stats for Hs in s
                   for H in Hs):
            return refuse(params, state, loss, "statistics overflowed: step refused", g)
        active = t >= self.start_step
        if self.refresh == "multiples":   # Meta: step % T == 0 and step > s, or step == s
            refresh = t == self.start_step or (t > self.start_step and t % self.precondition_interval == 0)
        else:
            refresh = active and (t - self.start_step) % self.precondition_interval == 0
        roots = state.roots
        if refresh:
            try:
                roots = tuple(self._leaf_roots(G.shape, S, t) for G, S in zip(gs, stats))
            except ValueError as exc:  # H + εI singular in floating point: ε is below H's rounding
                if "singular" not in str(exc):
                    raise
                return refuse(params, state, loss, "singular preconditioner (ε is lost in the rounding of the "
                              "statistics): step refused", g)
            if not all(bool(xp.all(xp.isfinite(R))) for r in roots for Rs in r for R in Rs):
                return refuse(params, state, loss, "non-finite preconditioner root: step refused", g)

        graft_acc = state.graft
        if graft_acc is not None:
            graft_acc = accumulate_squares(graft_acc, g)   # A ← A + G ⊙ G (from the raw G)
        mom = state.momentum
        if mom is not None and self.precondition == "momentum":
            mom, source = momentum(mom, g, self.momentum, self.nesterov)   # m ← μm + G; precondition m (or G + μm)
            sources = T.leaves(source)
        else:
            sources = gs
        filtered = state.filtered
        if filtered is not None:   # G̃ ← β₁G̃ + (1 − β₁)G; precondition G̃ / (1 − β₁ᵗ) (statistics keep the raw G)
            b1 = self.filter_beta
            filtered = ema(filtered, g, b1)
            sources = [f / bias_correction(b1, t) for f in T.leaves(filtered)]
        graft_leaves = T.leaves(graft_acc) if graft_acc is not None else [None] * len(gs)

        directions = []
        decay = self.weight_decay if self.weight_decay_mode == "graft" else 0.0
        for D, R, A, theta in zip(sources, roots, graft_leaves, T.leaves(params)):
            graft_dir = adagrad_direction(D, A, self.graft_eps) if A is not None else D   # D / (√A + ε), or SGD's D
            if not active:   # (Meta's identity roots in float32 round G without grafting: factor_dtype)
                rounds = self.factor_dtype == "float32" and self.grafting == "none"
                direction = graft_dir.astype(xp.float32).astype(graft_dir.dtype) if rounds else graft_dir
            else:
                P = self._leaf_precondition(D, R)
                direction = graft(P, graft_dir) if self.grafting != "none" else P   # P ‖graft_dir‖ / ‖P‖
            directions.append(direction + decay * theta if decay else direction)   # "graft": + λθ after grafting
        d = T.unflatten(treedef, directions)
        if mom is not None and self.precondition == "gradient":
            mom, d = momentum(mom, d, self.momentum, self.nesterov)   # m ← μm + P(G); step m (or P(G) + μm)
        elif blended:
            mom = d                                                   # P_t, blended into the next gradient
        eta = self._eta_at(state.step)
        new = descent_step(params, d, eta, self.weight_decay, self.weight_decay_mode)   # θ − ηd (− ηλθ)
        info = step_info(loss, g, lr=eta, step_norm=eta * T.norm(d), refreshed=refresh,
                         preconditioned=active)
        return new, ShampooState(t, stats, roots, graft_acc, mom, filtered), info
