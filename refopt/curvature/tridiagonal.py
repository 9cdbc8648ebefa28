"""Block-tridiagonal K-FAC's curvature block (Martens & Grosse 2015, §4.3 and Appendix B).

The chain coupling of neighbouring layers: F̂⁻¹ = Ξᵀ Λ Ξ with Ψ_l = Ψ^A_l ⊗ Ψ^G_l, Ψ^A_l = A_{l,l+1} A_{l+1}⁻¹,
Ψ^G_l = G_{l,l+1} G_{l+1}⁻¹, and Σ_{l|l+1} = A_l ⊗ G_l − (Ψ^A A_{l+1} Ψ^Aᵀ) ⊗ (Ψ^G G_{l+1} Ψ^Gᵀ), inverted
exactly through two generalised eigenproblems: (A ⊗ G − C ⊗ D)⁻¹ vec(U) = vec(K₁ [(K₁ᵀ U K₂) / (1 − s₁ s₂ᵀ)] K₂ᵀ).
The damping ("pi" | "tikhonov", ``blocks.damped_factors``) goes on the diagonal factors only, before Ψ and
Σ are formed; the cross factors stay undamped. ``optim/kfac_tridiag.py`` derives all of it; conventions
(W̄ = [W; b], row-major vec) as in ``blocks``.
"""
from __future__ import annotations

from typing import NamedTuple

from ..backend import xp
from ..linalg import shifted_symmetric, symmetrize
from ..serialize import register_state
from . import kronecker as K
from .blocks import CurvatureBlocks, KroneckerBlocks, damped_factors, require_choice, require_dense

__all__ = ["TridiagonalBlocks", "TridiagonalBlock", "generalized_eigh", "tridiagonal_blocks",
           "tridiagonal_precondition"]


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


def _damped_diagonal(A, G, damping: float, scheme: str) -> tuple:
    """The damped diagonal factors A_l + π_l γ I, G_l + (γ/π_l) I of the chain (cross factors stay undamped)."""
    Ad, Gd = [], []
    for a, g in zip(A, G):
        gA, gG, _ = damped_factors(a, g, damping, scheme)
        Ad.append(shifted_symmetric(a, gA))
        Gd.append(shifted_symmetric(g, gG))
    return Ad, Gd


def tridiagonal_blocks(A, G, A_cross, G_cross, damping: float, scheme: str = "pi") -> tuple:
    """Ψ's and the Σ⁻¹ factors from the factors A_l, G_l and cross factors A_{l,l+1}, G_{l,l+1}."""
    Ad, Gd = _damped_diagonal(A, G, damping, scheme)
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
    """F̂⁻¹ vec(∇W̄) by the three sweeps u = Ξv, w = Λu, x = Ξᵀw (``optim/kfac_tridiag.py``)."""
    L = len(V)
    U = [V[l] - blocks[l].psi_A @ V[l + 1] @ blocks[l].psi_G.T if l < L - 1 else V[l] for l in range(L)]
    W = [b.K1 @ ((b.K1.T @ u @ b.K2) / b.denom) @ b.K2.T for u, b in zip(U, blocks)]
    X = [W[0]]
    for l in range(L - 1):
        X.append(W[l + 1] - blocks[l].psi_A.T @ W[l] @ blocks[l].psi_G)
    return X


class TridiagonalBlocks(KroneckerBlocks):
    """Block-tridiagonal K-FAC's chain of layers (module docs), damping "pi" | "tikhonov", joint bias."""

    names = ("A", "G", "A_cross", "G_cross")

    def __init__(self, damping_scheme: str = "pi"):
        require_choice("damping_scheme", damping_scheme, ("pi", "tikhonov"))
        super().__init__(damping_scheme, "eig")

    def init(self, params) -> dict:
        """Identity A_l, G_l and zero cross factors A_{l,l+1}, G_{l,l+1}."""
        require_dense(params, "the block-tridiagonal K-FAC", "its cross-layer factors A_{l,l+1} pair one input row "
                      "per example of two neighbouring layers, and a conv layer's L locations have no such pairing")
        factors = super().init(params)
        dtype = params[0]["W"].dtype
        factors["A_cross"] = tuple(xp.zeros((p["W"].shape[0] + 1, q["W"].shape[0] + 1), dtype=dtype)
                                   for p, q in zip(params[:-1], params[1:]))
        factors["G_cross"] = tuple(xp.zeros((p["W"].shape[1], q["W"].shape[1]), dtype=dtype)
                                   for p, q in zip(params[:-1], params[1:]))
        return factors

    def estimate(self, stats: K.KFACStatistics) -> dict:
        """A_l, G_l and the cross factors from the same inputs and probes."""
        est = super().estimate(stats)
        a, n = stats.inputs, len(stats.inputs)
        est["A_cross"] = [K.cross_input_factor(a[l], a[l + 1]) for l in range(n - 1)]
        est["G_cross"] = [K.cross_grad_factor([p[l] for p in stats.probes], [p[l + 1] for p in stats.probes],
                                              stats.scale) for l in range(n - 1)]
        return est

    def refresh(self, factors: dict, damping: float) -> tuple:
        """``tridiagonal_blocks`` of the current factors."""
        return tridiagonal_blocks(factors["A"], factors["G"], factors["A_cross"], factors["G_cross"], damping,
                                  self.damping_scheme)

    def precondition(self, V: list, preconditioner: tuple, damping: float) -> list:
        """F̂⁻¹ V (``tridiagonal_precondition``)."""
        return tridiagonal_precondition(V, preconditioner)

    power = CurvatureBlocks.power   # no eigenpairs of F̂: powers −1 and 1 only

    def matvec(self, V: list, factors: dict, preconditioner: tuple, damping: float) -> list:
        """F̂ V = Ξ⁻¹ Λ⁻¹ Ξ⁻ᵀ V: y = Ξ⁻ᵀv (y_{l+1} = v_{l+1} + Ψ_lᵀ y_l), w_l = Σ_{l|l+1} y_l, x = Ξ⁻¹w."""
        Ad, Gd = _damped_diagonal(factors["A"], factors["G"], damping, self.damping_scheme)
        b, L = preconditioner, len(V)
        Y = [V[0]]
        for l in range(L - 1):
            Y.append(V[l + 1] + b[l].psi_A.T @ Y[l] @ b[l].psi_G)
        W = []
        for l in range(L):
            w = Ad[l] @ Y[l] @ Gd[l]
            if l < L - 1:   # − (Ψ^A A_{l+1} Ψ^Aᵀ) Y (Ψ^G G_{l+1} Ψ^Gᵀ), both from the cross factors
                w = w - (b[l].psi_A @ factors["A_cross"][l].T) @ Y[l] @ (b[l].psi_G @ factors["G_cross"][l].T)
            W.append(w)
        X = [None] * L
        X[L - 1] = W[L - 1]
        for l in reversed(range(L - 1)):
            X[l] = W[l] + b[l].psi_A @ X[l + 1] @ b[l].psi_G.T
        return X
