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
averages, T₁, KL clip, momentum, weight decay, label draws, bad statistics) is ``KFAC``'s.
"""
from __future__ import annotations

from typing import NamedTuple

from ..serialize import register_state  # saved states are rebuilt by name from this registry
from ..backend import xp
from ..curvature import kronecker as K
from ..linalg import symmetrize
from .kfac import KFAC, damped_factors

__all__ = ["KFACTridiag", "TridiagonalBlock", "tridiagonal_blocks", "tridiagonal_precondition",
           "generalized_eigh"]


@register_state
class TridiagonalBlock(NamedTuple):
    """Layer l's share of F̂⁻¹: Ψ^A_l, Ψ^G_l (None for the last layer) and Σ_{l|l+1}⁻¹ as (K₁, K₂, 1 − s₁s₂ᵀ)."""

    psi_A: object
    psi_G: object
    K1: object
    K2: object
    denom: object


def generalized_eigh(C, A):
    """(s, K) with Kᵀ A K = I and Kᵀ C K = diag(s), for A positive definite and C symmetric (or None = 0).

    With A = L Lᵀ (Cholesky): eigenpairs (s, E) of L⁻¹ C L⁻ᵀ and K = L⁻ᵀ E.
    """
    L_inv = xp.linalg.inv(xp.linalg.cholesky(symmetrize(A)))
    if C is None:
        return xp.zeros(A.shape[0], dtype=A.dtype), L_inv.T
    s, E = xp.linalg.eigh(symmetrize(L_inv @ C @ L_inv.T))
    return s, L_inv.T @ E


def tridiagonal_blocks(A, G, A_cross, G_cross, damping: float, scheme: str = "pi") -> tuple:
    """Ψ's and the Σ⁻¹ factors from the factors A_l, G_l and cross factors A_{l,l+1}, G_{l,l+1}."""
    Ad, Gd = [], []
    for a, g in zip(A, G):
        gA, gG, _ = damped_factors(a, g, damping, scheme)
        Ad.append(symmetrize(a) + gA * xp.eye(a.shape[0], dtype=a.dtype))
        Gd.append(symmetrize(g) + gG * xp.eye(g.shape[0], dtype=g.dtype))
    blocks = []
    L = len(Ad)
    for l in range(L):
        if l < L - 1:
            # Ψ = X Y⁻¹ = (Y⁻¹ Xᵀ)ᵀ for symmetric Y.
            psi_A = xp.linalg.solve(Ad[l + 1], A_cross[l].T).T
            psi_G = xp.linalg.solve(Gd[l + 1], G_cross[l].T).T
            C = psi_A @ A_cross[l].T          # Ψ^A A_{l+1} Ψ^Aᵀ = A_{l,l+1} A_{l+1}⁻¹ A_{l,l+1}ᵀ
            D = psi_G @ G_cross[l].T
        else:
            psi_A = psi_G = C = D = None     # Σ_L = A_L ⊗ G_L: no second Kronecker term
        s1, K1 = generalized_eigh(C, Ad[l])
        s2, K2 = generalized_eigh(D, Gd[l])
        blocks.append(TridiagonalBlock(psi_A, psi_G, K1, K2, 1.0 - s1[:, None] * s2[None, :]))
    return tuple(blocks)


def tridiagonal_precondition(V: list, blocks) -> list:
    """F̂⁻¹ vec(∇W̄) by the three sweeps u = Ξv, w = Λu, x = Ξᵀw (module docs)."""
    L = len(V)
    U = [V[l] - blocks[l].psi_A @ V[l + 1] @ blocks[l].psi_G.T if l < L - 1 else V[l] for l in range(L)]
    W = [b.K1 @ ((b.K1.T @ u @ b.K2) / b.denom) @ b.K2.T for u, b in zip(U, blocks)]
    X = [W[0]]
    for l in range(L - 1):
        X.append(W[l + 1] - blocks[l].psi_A.T @ W[l] @ blocks[l].psi_G)
    return X


class KFACTridiag(KFAC):
    """Block-tridiagonal K-FAC (see module docs)."""

    name = "kfac_tridiag"
    _schemes = ("pi", "tikhonov")
    switches = {"damping_scheme": ("pi", "tikhonov"), "factor_init": K.FACTOR_INITS, "fisher": K.FISHER_ESTIMATES,
                "weight_decay_mode": ("decoupled", "l2")}

    def __init__(self, lr: float = 0.1, damping: float = 1e-3, momentum: float = 0.9, decay: float = 0.95,
                 factor_init: str = "mean", factor_interval: int = 1, inverse_interval: int = 20,
                 damping_scheme: str = "pi", kl_clip: float | None = 1e-3, weight_decay: float = 0.0,
                 weight_decay_mode: str = "decoupled", fisher: str = "mc", samples: int = 1, seed: int = 0,
                 adapt_damping: bool = False, damping_interval: int = 5):
        super().__init__(lr=lr, damping=damping, momentum=momentum, decay=decay, factor_init=factor_init,
                         factor_interval=factor_interval, inverse_interval=inverse_interval, inverse="eig",
                         damping_scheme=damping_scheme, kl_clip=kl_clip, weight_decay=weight_decay,
                         weight_decay_mode=weight_decay_mode, fisher=fisher, samples=samples, seed=seed,
                         adapt_damping=adapt_damping, damping_interval=damping_interval)

    def _initial_factors(self, params) -> dict:
        factors = super()._initial_factors(params)
        dtype = params[0]["W"].dtype
        factors["A_cross"] = tuple(xp.zeros((p["W"].shape[0] + 1, q["W"].shape[0] + 1), dtype=dtype)
                                   for p, q in zip(params[:-1], params[1:]))
        factors["G_cross"] = tuple(xp.zeros((p["W"].shape[1], q["W"].shape[1]), dtype=dtype)
                                   for p, q in zip(params[:-1], params[1:]))
        return factors

    def _estimate_factors(self, stats: K.KFACStatistics) -> dict:
        est = super()._estimate_factors(stats)
        a, n = stats.inputs, len(stats.inputs)
        est["A_cross"] = [K.cross_input_factor(a[l], a[l + 1]) for l in range(n - 1)]
        est["G_cross"] = [K.cross_grad_factor([p[l] for p in stats.probes], [p[l + 1] for p in stats.probes],
                                              stats.scale) for l in range(n - 1)]
        return est

    def _refresh(self, factors: dict, damping: float) -> tuple:
        return tridiagonal_blocks(factors["A"], factors["G"], factors["A_cross"], factors["G_cross"], damping,
                                  self.damping_scheme)

    def _precondition(self, grads_bar: list, preconditioner, damping: float) -> list:
        return tridiagonal_precondition(grads_bar, preconditioner)
