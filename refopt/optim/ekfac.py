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
bad-statistics handling, ``kfac_approx`` for conv layers' basis) is ``KFAC``'s; a conv layer's s is its
per-example gradients' diagonal in the basis (``curvature.eigenbasis``). The maths above is ``refopt.curvature.eigenbasis``
(``EigenbasisBlocks``: refresh, ``eigenbasis_scaling``, the ŝ average and Q [(Qᵀ V) / (ŝ + λ)]); this
file is the optimizer over it.
"""
from __future__ import annotations

from ..curvature.eigenbasis import EigenbasisBlocks
from .base import check_unit_interval
from .kfac import ADAPT_DAMPING, FACTOR_INIT, FISHER, KFAC, KFAC_APPROX, WEIGHT_DECAY_MODE

__all__ = ["EKFAC"]


class EKFAC(KFAC):
    """Eigenvalue-corrected K-FAC: ``KFAC``'s step over ``curvature.eigenbasis.EigenbasisBlocks`` (module docs)."""

    name = "ekfac"
    conventions = (FACTOR_INIT, FISHER, WEIGHT_DECAY_MODE, ADAPT_DAMPING, KFAC_APPROX)   # damping_scheme, inverse fixed (eigen, eig)

    def __init__(self, lr: float = 0.1, damping: float = 1e-3, momentum: float = 0.9, decay: float = 0.95,
                 factor_init: str = "mean", factor_interval: int = 1, inverse_interval: int = 20,
                 scale_decay: float | None = None, kl_clip: float | None = 1e-3, weight_decay: float = 0.0,
                 weight_decay_mode: str = "decoupled", fisher: str = "mc", samples: int = 1, seed: int = 0,
                 adapt_damping: bool = False, damping_interval: int = 5, schedule=None, kfac_approx: str = "expand"):
        super().__init__(lr=lr, damping=damping, momentum=momentum, decay=decay, factor_init=factor_init,
                         factor_interval=factor_interval, inverse_interval=inverse_interval, inverse="eig",
                         damping_scheme="eigen", kl_clip=kl_clip, weight_decay=weight_decay,
                         weight_decay_mode=weight_decay_mode, fisher=fisher, samples=samples, seed=seed,
                         adapt_damping=adapt_damping, damping_interval=damping_interval, schedule=schedule,
                         kfac_approx=kfac_approx)
        self.scale_decay = self.decay if scale_decay is None else check_unit_interval("scale_decay", scale_decay)
        self._blocks = EigenbasisBlocks(self.scale_decay, kfac_approx=self.kfac_approx)
