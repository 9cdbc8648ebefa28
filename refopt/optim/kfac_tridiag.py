"""Block-tridiagonal K-FAC (Martens & Grosse 2015, section 4.3 and Appendix B).

Let D_l = ā_{l-1} ⊗ Dg_l be one example's gradient for layer l (row-major, s = a W, W̄ = [W; b]; see
``refopt.curvature.kronecker``). K-FAC's Kronecker approximation of EVERY block of the Fisher is

    F̃_{l,m} = A_{l,m} ⊗ G_{l,m},   A_{l,m} = E[ā_{l-1} ā_{m-1}ᵀ],   G_{l,m} = (B·scale) E[Dg_l Dg_mᵀ]

(A_l = A_{l,l}, G_l = G_{l,l}; the cross factors A_{l,l+1}, G_{l,l+1} are estimated from the same
inputs and probes and averaged with the same weights). Instead of dropping the off-diagonal blocks, the
inverse is approximated as block-tridiagonal: F̂ is the covariance of the Gaussian graphical model in
which each D_l depends only on D_{l+1} (a chain), fitted to F̃ on the tridiagonal band:

    D_L ∼ N(0, Σ_L),  D_l | D_{l+1} ∼ N(Ψ_l D_{l+1}, Σ_{l|l+1})
    Ψ_l        = F̃_{l,l+1} F̃_{l+1,l+1}⁻¹ = Ψ^A_l ⊗ Ψ^G_l,  Ψ^A_l = A_{l,l+1} A_{l+1}⁻¹,  Ψ^G_l = G_{l,l+1} G_{l+1}⁻¹
    Σ_{l|l+1}  = F̃_{l,l} − Ψ_l F̃_{l+1,l+1} Ψ_lᵀ = A_l ⊗ G_l − (Ψ^A_l A_{l+1} Ψ^Aᵀ_l) ⊗ (Ψ^G_l G_{l+1} Ψ^Gᵀ_l),
    Σ_L        = A_L ⊗ G_L
    F̂⁻¹        = Ξᵀ Λ Ξ,  Λ = blockdiag(Σ_{1|2}⁻¹, …, Σ_{L-1|L}⁻¹, Σ_L⁻¹),  Ξ = I with −Ψ_l in block (l, l+1)

F̂ agrees with F̃ on the diagonal and first off-diagonal blocks and F̂⁻¹ is block-tridiagonal. Σ_{l|l+1}
is a difference of two Kronecker products, inverted exactly (Appendix B): with K₁ᵀ A K₁ = I,
K₁ᵀ C K₁ = diag(s₁) (generalised eigenproblem of C = Ψ^A A_{l+1} Ψ^Aᵀ against A) and likewise K₂, s₂ for
the G side, (A ⊗ G − C ⊗ D)⁻¹ vec(U) = vec(K₁ [(K₁ᵀ U K₂) / (1 − s₁ s₂ᵀ)] K₂ᵀ). The product
F̂⁻¹ vec(∇W̄) is then three sweeps over the layers:

    U_l = V_l − Ψ^A_l V_{l+1} Ψ^Gᵀ_l   (U_L = V_L)            u = Ξ v
    W_l = Σ_{l|l+1}⁻¹ U_l                                      w = Λ u
    X_1 = W_1,  X_{l+1} = W_{l+1} − Ψ^Aᵀ_l W_l Ψ^G_l           x = Ξᵀ w

Damping (section 6.3 of the paper): the factored Tikhonov damping is applied to the diagonal factors
only, A_l + π_l γ I and G_l + (γ/π_l) I (``damping_scheme="pi"``, default; "tikhonov" uses π = 1), before
Ψ and Σ are formed; the cross factors are not damped. The damped joint factor matrices stay positive
definite, so 0 ≤ s₁, s₂ < 1 and every Σ_{l|l+1} is positive definite. The whole preconditioner is
recomputed at each refresh (every T₂ steps) with the λ of that moment. Everything else (running
averages, T₁, KL clip, momentum, weight decay, label draws, bad statistics) is ``KFAC``'s. The
maths above is ``refopt.curvature.tridiagonal`` (``TridiagonalBlocks``, ``tridiagonal_blocks`` for Ψ and Σ⁻¹,
``tridiagonal_precondition`` for the three sweeps); this file is the optimizer over it.
"""
from __future__ import annotations

from ..curvature.tridiagonal import TridiagonalBlocks
from .base import Switch
from .kfac import ADAPT_DAMPING, FACTOR_INIT, FISHER, KFAC, WEIGHT_DECAY_MODE

__all__ = ["KFACTridiag"]


class KFACTridiag(KFAC):
    """Block-tridiagonal K-FAC: ``KFAC``'s step over ``curvature.tridiagonal.TridiagonalBlocks`` (module docs)."""

    name = "kfac_tridiag"
    conventions = (  # inverse is fixed to "eig"
        Switch("damping_scheme", ("pi", "tikhonov"), "pi", "λ split between the factors by π, or √λ on each",
               "Martens & Grosse 2015 §6.3 (pi, before Ψ and Σ are formed)"),
        FACTOR_INIT, FISHER, WEIGHT_DECAY_MODE, ADAPT_DAMPING,
    )
    requires = KFAC.requires | {"dense_layer_statistics"}   # with the default arguments (__init__ below)

    def __init__(self, lr: float = 0.1, damping: float = 1e-3, momentum: float = 0.9, decay: float = 0.95,
                 factor_init: str = "mean", factor_interval: int = 1, inverse_interval: int = 20,
                 damping_scheme: str = "pi", kl_clip: float | None = 1e-3, weight_decay: float = 0.0,
                 weight_decay_mode: str = "decoupled", fisher: str = "mc", samples: int = 1, seed: int = 0,
                 adapt_damping: bool = False, damping_interval: int = 5, schedule=None):
        super().__init__(lr=lr, damping=damping, momentum=momentum, decay=decay, factor_init=factor_init,
                         factor_interval=factor_interval, inverse_interval=inverse_interval, inverse="eig",
                         damping_scheme=damping_scheme, kl_clip=kl_clip, weight_decay=weight_decay,
                         weight_decay_mode=weight_decay_mode, fisher=fisher, samples=samples, seed=seed,
                         adapt_damping=adapt_damping, damping_interval=damping_interval, schedule=schedule)
        self._blocks = TridiagonalBlocks(self.damping_scheme)
        # the cross-layer factors A_{l,l+1} = (1/B) Σ ā_l ā_{l+1}ᵀ pair one input row per example of two
        # neighbouring layers; a conv layer's L locations have no such pairing, so CNNs are refused
        self.requires = self.requires | {"dense_layer_statistics"}
