"""EKFAC's curvature block: K-FAC's eigenbasis with the diagonal re-estimated in it (George et al. 2018, Alg. 1).

With Q_A, Q_G the eigenbases of the (undamped) factors, the batch's Fisher diagonal in Q_A ⊗ Q_G is
s = (1/scale) Σ_p ((ā Q_A)²)ᵀ (g_p Q_G)² (``eigenbasis_scaling``; squares elementwise, g_p K-FAC's probes),
kept as a running average ŝ ← ε_k ŝ + (1 − ε_k) s that restarts from d_A d_Gᵀ at each basis refresh; then
C = Q diag(ŝ) Qᵀ, damped exactly: ŝ + λ. A conv layer's s is the batch Fisher diagonal in the basis from the
per-example gradients, s = (1/scale) Σ_p Σ_n (Σ_l ã_{n,l} g̃_{p,n,l}ᵀ)² (the locations summed before squaring,
so ŝ keeps EKFAC's Frobenius property for the true block); only the basis depends on ``kfac_approx``. With
L = 1 it is the dense formula. ``optim/ekfac.py`` is the optimizer; conventions as in ``blocks``.
"""
from __future__ import annotations

from typing import NamedTuple

from ..backend import xp
from ..serialize import register_state
from . import kronecker as K
from .blocks import KroneckerBlocks, _eigen_power, eigh_psd

__all__ = ["EigenbasisBlocks", "EigenCorrection", "eigenbasis_scaling"]


@register_state
class EigenCorrection(NamedTuple):
    """One layer's eigenbases and the running diagonal ŝ in them."""

    QA: object
    QG: object
    s: object       # (fan_in + 1, fan_out): ŝ, indexed like W̄
    count: int      # estimates of ŝ folded in since the last basis refresh


def eigenbasis_scaling(inputs, probes_l, QA, QG, scale: float, bias_block: str = "joint"):
    """s = (1/scale) Σ_p ((ā Q_A)²)ᵀ (g_p Q_G)²: the batch's Fisher diagonal in the basis Q_A ⊗ Q_G.

    "separate": Q_A is the weights' basis and the bias row is the bias block's diagonal in Q_G, i.e.
    ā Q_A is replaced by [a Q_A, 1].
    """
    if inputs.ndim == 3:   # a conv layer: per-example gradients Σ_l ã_l g̃_lᵀ in the basis, squared
        N, L, _ = inputs.shape
        rows = inputs.reshape(N * L, -1)
        rotated = (K.augment(rows) @ QA if bias_block == "joint" else K.augment(rows @ QA)).reshape(N, L, -1)
        s = None
        for g in probes_l:
            per = xp.matmul(xp.swapaxes(rotated, 1, 2), (g.reshape(N * L, -1) @ QG).reshape(N, L, -1))
            term = xp.sum(per ** 2, axis=0)
            s = term if s is None else s + term
        return s / scale
    rotated = K.augment(inputs) @ QA if bias_block == "joint" else K.augment(inputs @ QA)
    a2 = rotated ** 2
    s = None
    for g in probes_l:
        term = a2.T @ ((g @ QG) ** 2)
        s = term if s is None else s + term
    return s / scale


class EigenbasisBlocks(KroneckerBlocks):
    """EKFAC: K-FAC's eigenbasis, ŝ re-estimated in it, exact damping ŝ + λ (module docs).

    At each refresh ŝ restarts from K-FAC's eigenvalues d_A d_Gᵀ (count 0) and the running average
    restarts: ε_k = min(1 − 1/k, ``scale_decay``), k counting estimates since the refresh.
    """

    def __init__(self, scale_decay: float, bias_block: str = "joint", kfac_approx: str = "expand"):
        super().__init__("eigen", "eig", bias_block, kfac_approx=kfac_approx)
        self.scale_decay = scale_decay

    def refresh(self, factors: dict, damping: float) -> tuple:
        """Eigenbases of the undamped factors, ŝ = d_A d_Gᵀ (the bias row d_G for "separate")."""
        out = []
        for A, G in zip(factors["A"], factors["G"]):
            dA, QA = eigh_psd(A)
            dG, QG = eigh_psd(G)
            if self.bias_block == "separate":
                dA = xp.concatenate([dA, xp.ones(1, dtype=dA.dtype)])
            out.append(EigenCorrection(QA, QG, dA[:, None] * dG[None, :], 0))
        return tuple(out)

    def update_estimate(self, preconditioner: tuple, stats: K.KFACStatistics) -> tuple:
        """ŝ ← ε_k ŝ + (1 − ε_k) s with this batch's ``eigenbasis_scaling`` in the current bases."""
        layers = list(preconditioner)
        for l, ec in enumerate(layers):
            s_hat = eigenbasis_scaling(stats.inputs[l], [p[l] for p in stats.probes], ec.QA, ec.QG, stats.scale,
                                       self.bias_block)
            eps = K.factor_weight(ec.count + 1, self.scale_decay, "mean")
            layers[l] = EigenCorrection(ec.QA, ec.QG, eps * ec.s + (1.0 - eps) * s_hat, ec.count + 1)
        return tuple(layers)

    def _rotate(self, V: list, preconditioner: tuple, f) -> list:
        """Q f(Qᵀ V, ŝ) per layer, Q = Q_A ⊗ Q_G ("separate": the bias row in Q_G alone)."""
        out = []
        for v, ec in zip(V, preconditioner):
            if self.bias_block == "joint":
                out.append(ec.QA @ f(ec.QA.T @ v @ ec.QG, ec.s) @ ec.QG.T)
            else:
                w = ec.QA @ f(ec.QA.T @ v[:-1] @ ec.QG, ec.s[:-1]) @ ec.QG.T
                out.append(xp.concatenate([w, f(v[-1:] @ ec.QG, ec.s[-1:]) @ ec.QG.T], axis=0))
        return out

    def power(self, V: list, preconditioner: tuple, damping: float, power: float) -> list:
        """Q_A [(Q_Aᵀ V Q_G) ⊙ (ŝ + λ)^power] Q_Gᵀ per layer (``precondition`` is power −1, a division)."""
        return self._rotate(V, preconditioner, lambda x, s: _eigen_power(x, s + damping, power))

    def matvec(self, V: list, factors: dict, preconditioner: tuple, damping: float) -> list:
        """Q_A [(Q_Aᵀ V Q_G) ⊙ (ŝ + λ)] Q_Gᵀ per layer."""
        return self._rotate(V, preconditioner, lambda x, s: x * (s + damping))
