"""Adagrad, diagonal and full-matrix (Duchi, Hazan & Singer 2011, JMLR 12, "Adaptive subgradient methods").

Diagonal (``Adagrad``), per coordinate, with g_t = ∇L(θ_t) (+ λθ_t for L2 weight decay):

    G_t = G_{t−1} + g_t ⊙ g_t                      G_0 = initial_accumulator · 1
    θ_{t+1} = θ_t − η g_t / (δ + √G_t)             (eps_mode="outside", the paper's H_t = δI + diag(G_t)^{1/2})
    θ_{t+1} = θ_t − η g_t / √(G_t + δ)             (eps_mode="inside")

Full matrix (``FullMatrixAdagrad``), on the flattened parameter vector (or one block per leaf):

    S_t = S_{t−1} + g_t g_tᵀ                        S_0 = initial_accumulator · I
    θ_{t+1} = θ_t − η (δI + S_t^{1/2})⁻¹ g_t        (eps_mode="outside", the paper's H_t = δI + G_t^{1/2})
    θ_{t+1} = θ_t − η (S_t + δI)^{−1/2} g_t         (eps_mode="inside"; = Shampoo of order 1)

The root is taken by the eigendecomposition S = QΛQᵀ every step (O(n³): guarded by ``max_size``).
S has rank ≤ t, and eigh returns its zero eigenvalues as roundoff of size ~1e-16‖S‖; "outside"
divides by √λ + δ, so δ must dominate √(1e-16‖S‖): the full-matrix default is δ = 1e-6 (the diagonal
one, 1e-10, is PyTorch's), else roundoff directions are amplified by up to 1/δ.

Switches (paper's choice first):
* ``eps_mode``: "outside" (δ added to the root: Duchi et al., PyTorch) or "inside" (δ added under the
  root: optax's scale_by_rss, Keras; the form that makes full-matrix Adagrad equal Shampoo on a vector).
* ``initial_accumulator``: G_0 (0 in the paper and PyTorch; optax, TensorFlow/Keras use 0.1).
* ``weight_decay_mode``: "l2" (λθ added to the gradient before it is accumulated: PyTorch) or
  "decoupled" (θ ← θ − ηλθ after the step, outside the preconditioner).
* ``lr_decay`` κ ≥ 0 (diagonal only; default 0, the paper's constant η): step t uses
  η_t = η / (1 + (t − 1) κ), torch.optim.Adagrad(lr_decay=κ) (also in the decoupled decay's ηλθ).
* ``blocks`` (full matrix only): "global" (one n×n matrix over all parameters: the paper) or
  "leaf" (one matrix per parameter leaf: block-diagonal, what a network usually needs).

``schedule`` (default None: constant; ``optim/schedules.py``) replaces η by η_t, t = the steps taken
(with ``lr_decay``, η_t / (1 + (t − 1)κ), as torch applies lr_decay to a scheduled lr).
"""
from __future__ import annotations

from typing import NamedTuple

from .. import tree as T
from ..autodiff.api import DENSE_MAX_SIZE
from ..backend import xp
from ..linalg import symmetrize
from ..serialize import register_state
from .base import MAX_DENSE_SIZE, Optimizer, Switch, check_int, check_nonnegative, check_positive, refuse, step_info
from .update_rules import NON_FINITE_GRADIENT, WEIGHT_DECAY_MODES, check_nonempty_leaves, decayed_gradient, descent_step

__all__ = ["Adagrad", "AdagradState", "FullMatrixAdagrad", "FullMatrixAdagradState", "accumulate_squares",
           "adagrad_direction"]

EPS_MODES = ("outside", "inside")

# The switches both forms share.
EPS_MODE = Switch("eps_mode", EPS_MODES, "outside", "δ outside the root, g / (δ + √G), or inside, g / √(G + δ)",
                  "Duchi et al. 2011, PyTorch (outside); optax, Keras 3 (inside)")
INITIAL_ACCUMULATOR = Switch("initial_accumulator", (0.0, 0.1), 0.0, "G₀ = this · 1 (a number ≥ 0)",
                             "Duchi et al. 2011, PyTorch (0); TensorFlow, optax, Keras (0.1)", check=check_nonnegative)
WEIGHT_DECAY_MODE = Switch("weight_decay_mode", WEIGHT_DECAY_MODES, "l2",
                           "λθ added to the gradient, or decoupled θ ← θ − ηλθ", "PyTorch (l2)")


def accumulate_squares(G, g):
    """G + g ⊙ g, leafwise: the diagonal accumulator G_t = G_{t−1} + g_t ⊙ g_t (also Shampoo's graft)."""
    return T.tree_map2(lambda a, b: a + b * b, G, g)


def adagrad_direction(g, G, eps: float, eps_mode: str = "outside"):
    """g / (√G + δ) ("outside", the paper's H_t = δI + diag(G_t)^{1/2}) or g / √(G + δ) ("inside"), leafwise."""
    if eps_mode == "outside":
        return T.tree_map2(lambda gi, Gi: gi / (xp.sqrt(Gi) + eps), g, G)
    return T.tree_map2(lambda gi, Gi: gi / xp.sqrt(Gi + eps), g, G)


@register_state
class AdagradState(NamedTuple):
    """Diagonal Adagrad's state: the step count and the accumulator G_t."""

    step: int
    accumulator: object  # G_t = G_0 + Σ g ⊙ g, a tree like params


class Adagrad(Optimizer):
    """Diagonal Adagrad: θ ← θ − η g / (δ + √G) (see module docs)."""

    name = "adagrad"
    conventions = (EPS_MODE, INITIAL_ACCUMULATOR, WEIGHT_DECAY_MODE)
    gradient_in = ()   # gradients only (optim/gradients.py)

    def __init__(self, lr: float = 0.01, eps: float = 1e-10, initial_accumulator: float = 0.0,
                 eps_mode: str = "outside", weight_decay: float = 0.0, weight_decay_mode: str = "l2",
                 lr_decay: float = 0.0, schedule=None):
        self.lr = check_positive("lr", lr)
        self.set_schedule(schedule)
        self.lr_decay = check_nonnegative("lr_decay", lr_decay)
        self.eps = check_positive("eps", eps)
        self.set_switch("initial_accumulator", initial_accumulator)
        self.set_switch("eps_mode", eps_mode)
        self.weight_decay = check_nonnegative("weight_decay", weight_decay)
        self.set_switch("weight_decay_mode", weight_decay_mode)

    def init(self, params) -> AdagradState:
        """G_0 = initial_accumulator · 1 and step 0; refuses a leaf of size zero."""
        check_nonempty_leaves(params)
        return AdagradState(0, T.tree_map(lambda x: xp.full_like(x, self.initial_accumulator), params))

    def update(self, params, state, oracle, draws=None):
        """One diagonal Adagrad step, G ← G + g ⊙ g and θ ← θ − η_t g / (δ + √G) by default; see the module docs.
        Adagrad draws nothing: ``draws`` must be None."""
        self.check_draws(draws)
        loss, g = decayed_gradient(params, oracle, self.weight_decay, self.weight_decay_mode)  # (+ λθ for "l2")
        if g is None:
            return refuse(params, state, loss, NON_FINITE_GRADIENT)
        G = accumulate_squares(state.accumulator, g)                    # G_t = G_{t−1} + g ⊙ g
        if not T.all_finite(G):
            return refuse(params, state, loss, "accumulator overflowed: step refused", g)
        d = adagrad_direction(g, G, self.eps, self.eps_mode)           # g / (δ + √G_t)
        lr = self.lr_at(state.step)                                     # the schedule's η_t (η when constant)
        lr = lr / (1.0 + state.step * self.lr_decay) if self.lr_decay else lr   # torch's lr_decay, t = step + 1
        new = descent_step(params, d, lr, self.weight_decay, self.weight_decay_mode)   # θ − η_t d (− η_tλθ)
        return new, AdagradState(state.step + 1, G), step_info(loss, g, lr=lr, step_norm=lr * T.norm(d))


@register_state
class FullMatrixAdagradState(NamedTuple):
    """Full-matrix Adagrad's state: the step count and the accumulated S_t of each block."""

    step: int
    S: tuple  # S_t = S_0 + Σ g gᵀ, one (n_b, n_b) matrix per block


class FullMatrixAdagrad(Optimizer):
    """Full-matrix Adagrad: θ ← θ − η (δI + S^{1/2})⁻¹ g (see module docs)."""

    name = "adagrad_full"
    conventions = (EPS_MODE, INITIAL_ACCUMULATOR, WEIGHT_DECAY_MODE,
                   Switch("blocks", ("global", "leaf"), "global", "one matrix for all parameters, or one per leaf",
                          "Duchi et al. 2011 (global)"))
    gradient_in = ()   # gradients only (optim/gradients.py)

    def __init__(self, lr: float = 0.01, eps: float = 1e-6, initial_accumulator: float = 0.0,
                 eps_mode: str = "outside", blocks: str = "global", weight_decay: float = 0.0,
                 weight_decay_mode: str = "l2", max_size: int = DENSE_MAX_SIZE, schedule=None):
        self.lr = check_positive("lr", lr)
        self.set_schedule(schedule)
        self.eps = check_positive("eps", eps)
        self.set_switch("initial_accumulator", initial_accumulator)
        self.set_switch("eps_mode", eps_mode)
        self.set_switch("blocks", blocks)
        self.weight_decay = check_nonnegative("weight_decay", weight_decay)
        self.set_switch("weight_decay_mode", weight_decay_mode)
        self.max_size = check_int("max_size", max_size, maximum=MAX_DENSE_SIZE)

    def _vectors(self, tree) -> list:
        """The blocks of a tree as flat vectors (row-major, tree order)."""
        if self.blocks == "global":
            return [T.ravel(tree)]
        return [xp.reshape(leaf, (-1,)) for leaf in T.leaves(tree)]

    def _from_vectors(self, vectors, like):
        if self.blocks == "global":
            return T.unravel(vectors[0], like)
        leaves, treedef = T.flatten(like)
        return T.unflatten(treedef, [xp.reshape(v, leaf.shape) for v, leaf in zip(vectors, leaves)])

    def init(self, params) -> FullMatrixAdagradState:
        """S_0 = initial_accumulator · I per block and step 0; refuses empty leaves and blocks over ``max_size``."""
        check_nonempty_leaves(params)
        S = []
        for v in self._vectors(params):
            if v.size > self.max_size:
                raise ValueError(f"FullMatrixAdagrad: a block of n={v.size} parameters needs an n×n matrix; "
                                 f"this exceeds max_size={self.max_size} (use blocks='leaf', Shampoo or Adagrad)")
            S.append(self.initial_accumulator * xp.eye(v.size, dtype=v.dtype))
        return FullMatrixAdagradState(0, tuple(S))

    def _precondition(self, S, g):
        """(δI + S^{1/2})⁻¹ g ("outside") or (S + δI)^{−1/2} g ("inside") by S = QΛQᵀ."""
        lam, Q = xp.linalg.eigh(symmetrize(S))
        lam = xp.maximum(lam, 0.0)  # S is PSD; roundoff may push its smallest eigenvalues below zero
        scale = 1.0 / (xp.sqrt(lam) + self.eps) if self.eps_mode == "outside" else (lam + self.eps) ** -0.5
        return Q @ (scale * (Q.T @ g))

    def update(self, params, state, oracle, draws=None):
        """One step S ← S + g gᵀ per block, θ ← θ − η (δI + S^{1/2})⁻¹ g by default (eigh); see the module docs.
        Adagrad draws nothing: ``draws`` must be None."""
        self.check_draws(draws)
        loss, g = decayed_gradient(params, oracle, self.weight_decay, self.weight_decay_mode)  # (+ λθ for "l2")
        if g is None:
            return refuse(params, state, loss, NON_FINITE_GRADIENT)
        gs = self._vectors(g)
        S = tuple(Sb + xp.outer(gb, gb) for Sb, gb in zip(state.S, gs))
        if not all(bool(xp.all(xp.isfinite(Sb))) for Sb in S):
            return refuse(params, state, loss, "accumulator overflowed: step refused", g)
        d = self._from_vectors([self._precondition(Sb, gb) for Sb, gb in zip(S, gs)], params)
        lr = self.lr_at(state.step)
        new = descent_step(params, d, lr, self.weight_decay, self.weight_decay_mode)
        return new, FullMatrixAdagradState(state.step + 1, S), step_info(loss, g, lr=lr, step_norm=lr * T.norm(d))
