"""EKFAC: eigenvalue-corrected K-FAC (George, Laurent, Bouthillier, Ballas & Vincent 2018, Algorithm 1).

K-FAC's Â ⊗ Ĝ = (Q_A ⊗ Q_G)(Λ_A ⊗ Λ_G)(Q_A ⊗ Q_G)ᵀ keeps the Kronecker eigenbasis but also forces
Kronecker-structured eigenvalues. EKFAC keeps the basis and re-estimates the diagonal in it:

    Â = Q_A Λ_A Q_Aᵀ,  Ĝ = Q_G Λ_G Q_Gᵀ          K-FAC running factors, eigenbases refreshed every T₂ steps
    s = (1/scale) Σ_p (ã²)ᵀ (g̃_p²),  ã = ā Q_A,  g̃_p = g_p Q_G
                                                 this batch's diagonal of the layer's Fisher block in the
                                                 basis Q_A ⊗ Q_G: s_(j,k) = E[((Q_A ⊗ Q_G)ᵀ(ā ⊗ Dg))²_(j,k)]
    ŝ ← ε_k ŝ + (1 − ε_k) s                      every T₁ steps (a running average of the re-estimates)
    V = Q_A [(Q_Aᵀ ∇W̄ Q_G) / (ŝ + λ)] Q_Gᵀ        then KL clip, momentum, weight decay exactly as ``KFAC``

(row-major vec and s = a W as in ``refopt.curvature.kronecker``; squares are elementwise; the probes
g_p are K-FAC's: Monte-Carlo labels by default). ŝ is the Frobenius-closest diagonal to the Fisher
block in that basis, so ‖F − Q diag(s) Qᵀ‖_F ≤ ‖F − Â ⊗ Ĝ‖_F for the batch Fisher F that s estimates.

Convention: ŝ lives in the current eigenbasis, so at every basis refresh it restarts from K-FAC's own
eigenvalues Λ_A ⊗ Λ_G and the running average restarts (ε_k = min(1 − 1/k, ``scale_decay``; default
None = ``decay``), k counting estimates since the refresh, so the first re-estimate replaces the
restart value). Damping is added to ŝ (the paper's ε), the exact-damping analogue of K-FAC's "eigen" scheme. Every other switch
(factor running averages, T₁/T₂, KL clip, momentum, weight decay, label draws, Levenberg–Marquardt,
bad-statistics handling) is ``KFAC``'s.
"""
from __future__ import annotations

from typing import NamedTuple

from ..serialize import register_state  # saved states are rebuilt by name from this registry
from ..curvature import kronecker as K
from .base import check_unit_interval
from .kfac import KFAC, eigh_psd

__all__ = ["EKFAC", "EigenCorrection", "eigenbasis_scaling"]


@register_state
class EigenCorrection(NamedTuple):
    """One layer's eigenbases and the running diagonal ŝ in them."""

    QA: object
    QG: object
    s: object       # (fan_in + 1, fan_out): ŝ, indexed like W̄
    count: int      # estimates of ŝ folded in since the last basis refresh


def eigenbasis_scaling(inputs, probes_l, QA, QG, scale: float):
    """s = (1/scale) Σ_p ((ā Q_A)²)ᵀ (g_p Q_G)²: the batch's Fisher diagonal in the basis Q_A ⊗ Q_G."""
    a2 = (K.augment(inputs) @ QA) ** 2
    s = None
    for g in probes_l:
        term = a2.T @ ((g @ QG) ** 2)
        s = term if s is None else s + term
    return s / scale


class EKFAC(KFAC):
    """Eigenvalue-corrected K-FAC (see module docs)."""

    name = "ekfac"
    _schemes = ("eigen",)
    switches = {"factor_init": K.FACTOR_INITS, "fisher": K.FISHER_ESTIMATES,
                "weight_decay_mode": ("decoupled", "l2")}

    def __init__(self, lr: float = 0.1, damping: float = 1e-3, momentum: float = 0.9, decay: float = 0.95,
                 factor_init: str = "mean", factor_interval: int = 1, inverse_interval: int = 20,
                 scale_decay: float | None = None, kl_clip: float | None = 1e-3, weight_decay: float = 0.0,
                 weight_decay_mode: str = "decoupled", fisher: str = "mc", samples: int = 1, seed: int = 0,
                 adapt_damping: bool = False, damping_interval: int = 5):
        super().__init__(lr=lr, damping=damping, momentum=momentum, decay=decay, factor_init=factor_init,
                         factor_interval=factor_interval, inverse_interval=inverse_interval, inverse="eig",
                         damping_scheme="eigen", kl_clip=kl_clip, weight_decay=weight_decay,
                         weight_decay_mode=weight_decay_mode, fisher=fisher, samples=samples, seed=seed,
                         adapt_damping=adapt_damping, damping_interval=damping_interval)
        self.scale_decay = self.decay if scale_decay is None else check_unit_interval("scale_decay", scale_decay)

    def _update_preconditioner(self, preconditioner, factors, stats, damping, refresh, factors_updated):
        layers = list(preconditioner)
        if refresh:
            layers = []
            for A, G in zip(factors["A"], factors["G"]):
                dA, QA = eigh_psd(A)
                dG, QG = eigh_psd(G)
                layers.append(EigenCorrection(QA, QG, dA[:, None] * dG[None, :], 0))
        if factors_updated:  # this step's statistics were estimated and are finite
            for l, ec in enumerate(layers):
                s_hat = eigenbasis_scaling(stats.inputs[l], [p[l] for p in stats.probes], ec.QA, ec.QG, stats.scale)
                eps = K.factor_weight(ec.count + 1, self.scale_decay, "mean")
                layers[l] = EigenCorrection(ec.QA, ec.QG, eps * ec.s + (1.0 - eps) * s_hat, ec.count + 1)
        return tuple(layers)

    def _precondition(self, grads_bar: list, preconditioner, damping: float) -> list:
        return [ec.QA @ ((ec.QA.T @ V @ ec.QG) / (ec.s + damping)) @ ec.QG.T
                for V, ec in zip(grads_bar, preconditioner)]
