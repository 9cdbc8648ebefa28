"""Curvature blocks: the Kronecker-factored curvature of an MLP, behind one interface (the K-FAC family).

A block object holds the statistics of a network's layers and answers (kfac-jax's ``curvature_blocks``
shape; curvlinops' ``KFACLinearOperator`` is the same idea as a linear operator):

    init(params)                           identity statistics, the running averages' start
    estimate(stats)                        this batch's statistics: dict name -> list over layers
    refresh(factors, damping)              what preconditioning needs: damped inverses or eigenpairs
    update_estimate(precond, stats)        statistics that live in the refreshed basis (EKFAC's ŝ)
    multiply(V, factors, precond, λ, p)    (damped C)^p V for p = −1 (``precondition``) or 1 (``matvec``)
    to_dense(factors, precond, λ, p)       the dense (damped C)^p, indexed like the flattened params

with V a list over layers of (fan_in + 1, fan_out) matrices V_l = W̄_l (``kronecker.layer_matrix``;
row-major vec, s = a W, (A ⊗ G) vec(V) = vec(A V G)). Three blocks:

* ``KroneckerBlocks`` (Martens & Grosse 2015, §2-3): C = blockdiag_l(A_l ⊗ G_l). Damping rules, λ =
  ``damping``, γ = √λ: "pi" (factored Tikhonov, §6.3) (A + πγI) ⊗ (G + γ/π I), π = sqrt((tr A/dim A) /
  (tr G/dim G)); "tikhonov" the same with π = 1; "eigen" (exact, their App. B / George et al. 2018)
  A ⊗ G + λI through the eigenbases. ``inverse`` "inverse" forms the damped inverses at each refresh
  (λ of that moment), "eig" eigendecomposes the undamped factors and damps when multiplying (needed by
  "eigen"). ``bias_block`` "joint" (one block for W̄ = [W; b], ā = [a, 1]) or "separate" (curvlinops: A ⊗ G
  for W with A = (1/B) Σ a aᵀ, and G alone for b, damped (G + γI) for "tikhonov", G + λI for "eigen").
* ``TridiagonalBlocks`` (M&G §4.3, App. B): the chain coupling of neighbouring layers, F̂⁻¹ = Ξᵀ Λ Ξ
  with Ψ_l = Ψ^A_l ⊗ Ψ^G_l and Σ_{l|l+1} = A_l ⊗ G_l − (Ψ^A A_{l+1} Ψ^Aᵀ) ⊗ (Ψ^G G_{l+1} Ψ^Gᵀ) on the
  damped diagonal factors (``optim/kfac_tridiag.py`` derives it).
* ``EigenbasisBlocks`` (George et al. 2018, Alg. 1): K-FAC's eigenbasis Q_A ⊗ Q_G with the diagonal ŝ
  re-estimated in it, s = (1/scale) Σ_p ((ā Q_A)²)ᵀ (g_p Q_G)² (``eigenbasis_scaling``), C = Q diag(ŝ) Qᵀ,
  damped exactly: ŝ + λ.

The K-BFGS factor updates (Goldfarb, Ren & Bahamou 2020) are functions here too: double damping, the BFGS
inverse update, the L-BFGS two-loop product, the pre-activation secant pair and the Hessian-action update.

For a verifier, at given parameters, for every Fisher type ("true", "mc" with injected ``labels`` or a
seed, "empirical") and bias layout: ``layer_factors`` (each layer's A and G), ``kfac_matrix`` and
``ekfac_matrix`` (dense), ``kfac_inverse_vp`` and ``ekfac_inverse_vp`` (the damped inverse applied to a
params tree), all from one statistics pass of the batch (no running averages).
"""
from __future__ import annotations

import math
from typing import NamedTuple, Sequence

from ..serialize import register_state  # preconditioners live in optimizer states, rebuilt by name
from ..backend import xp
from ..linalg import symmetrize
from . import kronecker as K
from .dense import check_dense_size

__all__ = [
    "DAMPING_SCHEMES", "INVERSE_METHODS", "BIAS_BLOCKS", "CurvatureBlocks", "KroneckerBlocks", "TridiagonalBlocks",
    "EigenbasisBlocks", "KroneckerInverse", "TridiagonalBlock", "EigenCorrection", "eigh_psd", "damped_factors",
    "kronecker_inverse", "kronecker_precondition", "bias_precondition", "generalized_eigh", "tridiagonal_blocks",
    "tridiagonal_precondition", "eigenbasis_scaling", "factor_estimates", "double_damping", "bfgs_inverse_update",
    "lbfgs_apply", "secant_pair", "hessian_action_update", "layer_factors", "kfac_matrix", "ekfac_matrix",
    "kfac_inverse_vp", "ekfac_inverse_vp",
]

DAMPING_SCHEMES = ("pi", "tikhonov", "eigen")
INVERSE_METHODS = ("eig", "inverse")
BIAS_BLOCKS = ("joint", "separate")


def _check(name: str, value, choices) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


# --- one Kronecker factor pair: damping and inverses -----------------------------------------------
@register_state
class KroneckerInverse(NamedTuple):
    """One layer's refreshed preconditioner: eigenpairs of the undamped factors, or damped inverses."""

    QA: object
    dA: object
    QG: object
    dG: object
    A_inv: object
    G_inv: object
    pi: float


def eigh_psd(M):
    """(eigenvalues clipped at 0, eigenvectors) of a symmetric positive semi-definite matrix."""
    lam, Q = xp.linalg.eigh(symmetrize(M))
    return xp.maximum(lam, 0.0), Q


def damped_factors(A, G, damping: float, scheme: str):
    """(γ_A, γ_G, π) = (πγ, γ/π, π), γ = √λ: the additive damping of each factor ("pi"; "tikhonov": π = 1)."""
    gamma = math.sqrt(damping)
    pi = K.pi_correction(A, G) if scheme == "pi" else 1.0
    return pi * gamma, gamma / pi, pi


def kronecker_inverse(A, G, damping: float, scheme: str = "pi", method: str = "inverse") -> KroneckerInverse:
    """One layer's preconditioner: eigenpairs of the undamped A, G ("eig") or damped inverses ("inverse")."""
    if method == "eig":
        dA, QA = eigh_psd(A)
        dG, QG = eigh_psd(G)
        pi = K.pi_correction(A, G) if scheme == "pi" else 1.0
        return KroneckerInverse(QA, dA, QG, dG, None, None, pi)
    if scheme == "eigen":
        raise ValueError("the 'eigen' damping needs method='eig'")
    gA, gG, pi = damped_factors(A, G, damping, scheme)
    A_inv = xp.linalg.inv(symmetrize(A) + gA * xp.eye(A.shape[0], dtype=A.dtype))
    G_inv = xp.linalg.inv(symmetrize(G) + gG * xp.eye(G.shape[0], dtype=G.dtype))
    return KroneckerInverse(None, None, None, None, A_inv, G_inv, pi)


def kronecker_precondition(V, inv: KroneckerInverse, damping: float, scheme: str):
    """(damped A ⊗ G)⁻¹ vec(V) for one layer: A⁻¹ V G⁻¹, or Q_A [(Q_Aᵀ V Q_G) / D] Q_Gᵀ from the eigenpairs."""
    if inv.A_inv is not None:
        return inv.A_inv @ V @ inv.G_inv
    Vt = inv.QA.T @ V @ inv.QG
    if scheme == "eigen":
        D = inv.dA[:, None] * inv.dG[None, :] + damping
    else:
        gamma = math.sqrt(damping)
        D = (inv.dA + inv.pi * gamma)[:, None] * (inv.dG + gamma / inv.pi)[None, :]
    return inv.QA @ (Vt / D) @ inv.QG.T


def bias_precondition(Vb, inv: KroneckerInverse, damping: float, scheme: str):
    """The separate bias block's (damped G)⁻¹ applied to the bias rows Vb (1, fan_out), from the weight
    block's refreshed G: (G + γI)⁻¹ ("tikhonov", γ = √λ) or (G + λI)⁻¹ ("eigen")."""
    if inv.G_inv is not None:          # "tikhonov" with method "inverse": G_inv = (G + γI)⁻¹ (π = 1)
        return Vb @ inv.G_inv
    d = inv.dG + (damping if scheme == "eigen" else math.sqrt(damping))
    return ((Vb @ inv.QG) / d) @ inv.QG.T


def factor_estimates(stats: K.KFACStatistics, bias_block: str = "joint",
                     output_grad_scale: str = "per_example") -> dict:
    """This batch's {"A": [A_l], "G": [G_l]} from one statistics pass (``kronecker.kfac_statistics``).

    A_l = (1/B) Σ ā āᵀ ("joint") or (1/B) Σ a aᵀ ("separate"); G_l = ``kronecker.grad_factor`` of the probes.
    """
    _check("bias_block", bias_block, BIAS_BLOCKS)
    if bias_block == "separate":
        A = [a.T @ a / a.shape[0] for a in stats.inputs]
    else:
        A = [K.input_factor(a) for a in stats.inputs]
    return {"A": A, "G": [K.grad_factor([p[l] for p in stats.probes], stats.scale, output_grad_scale)
                          for l in range(len(stats.inputs))]}


# --- the interface ------------------------------------------------------------------------------------
class CurvatureBlocks:
    """The block interface (module docs). Factors are dicts name -> sequence over layers; V is a list over
    layers of W̄-shaped matrices; a preconditioner is a tuple of registered NamedTuples."""

    names: tuple = ("A", "G")
    bias_block = "joint"

    def init(self, params) -> dict:
        """Identity factors A_l, G_l (used as such only by factor_init="identity"; otherwise overwritten)."""
        dtype = params[0]["W"].dtype
        extra = 0 if self.bias_block == "separate" else 1
        return {"A": tuple(xp.eye(p["W"].shape[0] + extra, dtype=dtype) for p in params),
                "G": tuple(xp.eye(p["W"].shape[1], dtype=dtype) for p in params)}

    def estimate(self, stats: K.KFACStatistics) -> dict:
        """This batch's statistics, the same names as ``init``."""
        raise NotImplementedError

    def refresh(self, factors: dict, damping: float) -> tuple:
        """The preconditioner of the current factors (inverses or eigendecompositions)."""
        raise NotImplementedError

    def update_estimate(self, preconditioner: tuple, stats: K.KFACStatistics) -> tuple:
        """Fold this batch into statistics kept in the refreshed basis; none here (EKFAC has ŝ)."""
        return preconditioner

    def precondition(self, V: list, preconditioner: tuple, damping: float) -> list:
        """(damped C)⁻¹ V."""
        raise NotImplementedError

    def matvec(self, V: list, factors: dict, preconditioner: tuple, damping: float) -> list:
        """(damped C) V."""
        raise NotImplementedError

    def multiply(self, V: list, factors: dict, preconditioner: tuple, damping: float, power: int = -1) -> list:
        """(damped C)^power V for power −1 (preconditioning) or 1 (the matrix itself)."""
        if power == -1:
            return self.precondition(V, preconditioner, damping)
        if power == 1:
            return self.matvec(V, factors, preconditioner, damping)
        raise ValueError(f"power must be -1 or 1, got {power!r}")

    def shapes(self, factors: dict) -> list:
        """The W̄_l shapes (fan_in + 1, fan_out) of the layers the factors describe."""
        extra = 1 if self.bias_block == "separate" else 0
        return [(A.shape[0] + extra, G.shape[0]) for A, G in zip(factors["A"], factors["G"])]

    def to_dense(self, factors: dict, preconditioner: tuple, damping: float, power: int = 1,
                 max_size: int | None = None):
        """The dense (damped C)^power over the flattened params [vec(W̄_1), vec(W̄_2), ...], column by column."""
        shapes = self.shapes(factors)
        sizes = [r * c for r, c in shapes]
        n = sum(sizes)
        check_dense_size(n, max_size, "to_dense", "multiply")
        dtype = factors["G"][0].dtype
        cols = []
        for j in range(n):
            e = xp.zeros(n, dtype=dtype)
            e[j] = 1.0
            V, i = [], 0
            for (r, c), k in zip(shapes, sizes):
                V.append(e[i:i + k].reshape(r, c))
                i += k
            cols.append(xp.concatenate([v.ravel() for v in self.multiply(V, factors, preconditioner, damping, power)]))
        return xp.stack(cols, axis=1)


class KroneckerBlocks(CurvatureBlocks):
    """Block-diagonal A_l ⊗ G_l with the damping rules "pi" | "tikhonov" | "eigen" (module docs)."""

    def __init__(self, damping_scheme: str = "pi", inverse: str = "inverse", bias_block: str = "joint",
                 output_grad_scale: str = "per_example"):
        _check("damping_scheme", damping_scheme, DAMPING_SCHEMES)
        _check("inverse", inverse, INVERSE_METHODS)
        _check("bias_block", bias_block, BIAS_BLOCKS)
        _check("output_grad_scale", output_grad_scale, K.OUTPUT_GRAD_SCALES)
        if damping_scheme == "eigen" and inverse != "eig":
            raise ValueError("damping_scheme='eigen' needs inverse='eig' (the eigenbases give (A⊗G + λI)⁻¹)")
        if bias_block == "separate" and damping_scheme == "pi":
            raise ValueError("bias_block='separate' needs damping_scheme='tikhonov' or 'eigen': the π of 'pi' "
                             "balances two factors and the bias block has one")
        self.damping_scheme, self.inverse = damping_scheme, inverse
        self.bias_block, self.output_grad_scale = bias_block, output_grad_scale

    def estimate(self, stats: K.KFACStatistics) -> dict:
        """{"A", "G"} of this batch (``factor_estimates``)."""
        return factor_estimates(stats, self.bias_block, self.output_grad_scale)

    def refresh(self, factors: dict, damping: float) -> tuple:
        """``kronecker_inverse`` of every layer's factors."""
        return tuple(kronecker_inverse(A, G, damping, self.damping_scheme, self.inverse)
                     for A, G in zip(factors["A"], factors["G"]))

    def precondition(self, V: list, preconditioner: tuple, damping: float) -> list:
        """Each layer's (damped A ⊗ G)⁻¹ V_l; "separate": the weight rows and the bias row apart."""
        s = self.damping_scheme
        if self.bias_block == "separate":
            return [xp.concatenate([kronecker_precondition(v[:-1], inv, damping, s),
                                    bias_precondition(v[-1:], inv, damping, s)], axis=0)
                    for v, inv in zip(V, preconditioner)]
        return [kronecker_precondition(v, inv, damping, s) for v, inv in zip(V, preconditioner)]

    def matvec(self, V: list, factors: dict, preconditioner: tuple, damping: float) -> list:
        """Each layer's (damped A ⊗ G) V_l from the factors: (A + γ_A I) V (G + γ_G I), or A V G + λV."""
        out = []
        for v, A, G in zip(V, factors["A"], factors["G"]):
            w = v[:-1] if self.bias_block == "separate" else v
            if self.damping_scheme == "eigen":
                x, gG = A @ w @ G + damping * w, damping
            else:
                gA, gG, _ = damped_factors(A, G, damping, self.damping_scheme)
                Aw = A @ w + gA * w
                x = Aw @ G + gG * Aw
            if self.bias_block == "separate":
                x = xp.concatenate([x, v[-1:] @ G + gG * v[-1:]], axis=0)
            out.append(x)
        return out


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
        Ad.append(symmetrize(a) + gA * xp.eye(a.shape[0], dtype=a.dtype))
        Gd.append(symmetrize(g) + gG * xp.eye(g.shape[0], dtype=g.dtype))
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
        _check("damping_scheme", damping_scheme, ("pi", "tikhonov"))
        super().__init__(damping_scheme, "eig")

    def init(self, params) -> dict:
        """Identity A_l, G_l and zero cross factors A_{l,l+1}, G_{l,l+1}."""
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

    def __init__(self, scale_decay: float, bias_block: str = "joint"):
        super().__init__("eigen", "eig", bias_block)
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

    def precondition(self, V: list, preconditioner: tuple, damping: float) -> list:
        """Q_A [(Q_Aᵀ V Q_G) / (ŝ + λ)] Q_Gᵀ per layer."""
        return self._rotate(V, preconditioner, lambda x, s: x / (s + damping))

    def matvec(self, V: list, factors: dict, preconditioner: tuple, damping: float) -> list:
        """Q_A [(Q_Aᵀ V Q_G) ⊙ (ŝ + λ)] Q_Gᵀ per layer."""
        return self._rotate(V, preconditioner, lambda x, s: x * (s + damping))


# --- K-BFGS factor updates (Goldfarb, Ren & Bahamou 2020; optim/kbfgs.py derives them) ------------------
def double_damping(s, y, Hy, mu1: float, mu2: float):
    """(s̃, ỹ, θ₁, θ₂): Powell damping on H then Levenberg–Marquardt damping on H⁻¹ (``optim/kbfgs.py``)."""
    sy, yHy = float(xp.dot(s, y)), float(xp.dot(y, Hy))
    theta1 = (1.0 - mu1) * yHy / (yHy - sy) if sy < mu1 * yHy else 1.0
    s_t = theta1 * s + (1.0 - theta1) * Hy
    ss, sy_t = float(xp.dot(s_t, s_t)), float(xp.dot(s_t, y))
    theta2 = (1.0 - mu2) * ss / (ss - sy_t) if sy_t < mu2 * ss else 1.0
    return s_t, theta2 * y + (1.0 - theta2) * s_t, theta1, theta2


def bfgs_inverse_update(H, s, y):
    """H⁺ = (I − ρ s yᵀ) H (I − ρ y sᵀ) + ρ s sᵀ (ρ = 1/sᵀy); H unchanged unless sᵀy > 0 and finite."""
    sy = float(xp.dot(s, y))
    if not (sy > 0 and math.isfinite(sy)):
        return H
    rho = 1.0 / sy
    Hy = H @ y
    H_new = H - rho * (xp.outer(s, Hy) + xp.outer(Hy, s)) + (rho * rho * float(xp.dot(y, Hy)) + rho) * xp.outer(s, s)
    return symmetrize(H_new)


def lbfgs_apply(V, S, Y, gamma0: float = 1.0):
    """V H for the L-BFGS inverse H of the pairs (rows of S, Y, oldest first) from H₀ = γ₀ I.

    ``V`` is a vector or a matrix whose rows are each multiplied (H is symmetric): the two-loop
    recursion (Nocedal & Wright, Algorithm 7.4) run on all rows at once.
    """
    q = V[None, :] if V.ndim == 1 else V
    m = S.shape[0]
    rho = [1.0 / float(xp.dot(S[j], Y[j])) for j in range(m)]
    alpha = [None] * m
    for j in reversed(range(m)):
        alpha[j] = rho[j] * (q @ S[j])
        q = q - alpha[j][:, None] * Y[j][None, :]
    r = gamma0 * q
    for j in range(m):
        beta = rho[j] * (r @ Y[j])
        r = r + (alpha[j] - beta)[:, None] * S[j][None, :]
    return r[0] if V.ndim == 1 else r


def secant_pair(inputs_old, inputs_new, layer_old: dict, layer_new: dict, g_old, g_new):
    """(s_g, y_g, mean ā at θ): s_g = mean_i s_i(θ⁺) − mean_i s_i(θ) (mean s = mean(ā) W̄), y_g = Σ_i Δg_i."""
    abar_old = xp.mean(K.augment(inputs_old), axis=0)
    abar_new = xp.mean(K.augment(inputs_new), axis=0)
    s = abar_new @ K.layer_matrix(layer_new) - abar_old @ K.layer_matrix(layer_old)
    y = xp.sum(g_new, axis=0) - xp.sum(g_old, axis=0)
    return s, y, abar_old


def hessian_action_update(H_a, A_damped, abar):
    """H_a's BFGS update with the Hessian-action pair s_a = H_a ā̄, y_a = (Â + √λ I) s_a."""
    s_a = H_a @ abar
    return bfgs_inverse_update(H_a, s_a, A_damped @ s_a)


# --- for a verifier: one batch, given parameters ----------------------------------------------------------
def _statistics(oracle, params, fisher: str, samples: int, seed, labels) -> K.KFACStatistics:
    _check("fisher", fisher, K.FISHER_ESTIMATES)
    return K.kfac_statistics(oracle, params, fisher, samples, seed=seed, labels=labels, gradient=False)


def layer_factors(oracle, params, fisher: str = "true", samples: int = 1, seed=None, labels=None,
                  bias_block: str = "joint", output_grad_scale: str = "per_example") -> tuple:
    """(A, G): lists over layers of this batch's K-FAC factors at ``params`` (``factor_estimates``).

    ``fisher`` "true" | "mc" (``labels`` (k, ...) injected, or ``samples`` sets drawn with ``seed``) |
    "empirical". A ⊗ G approximates the layer's Fisher block of the reduced loss, indexed by vec(W̄)
    ("joint") or by vec(W) with the bias block G apart ("separate").
    """
    est = factor_estimates(_statistics(oracle, params, fisher, samples, seed, labels), bias_block,
                           output_grad_scale)
    return est["A"], est["G"]


def _one_batch(blocks: CurvatureBlocks, oracle, params, damping, fisher, samples, seed, labels):
    """(factors, preconditioner) of one fresh estimate (no running average), EKFAC's ŝ folded in."""
    stats = _statistics(oracle, params, fisher, samples, seed, labels)
    factors = blocks.estimate(stats)
    return factors, blocks.update_estimate(blocks.refresh(factors, damping), stats)


def kfac_matrix(oracle, params, damping: float = 0.0, damping_scheme: str = "eigen", fisher: str = "true",
                samples: int = 1, seed=None, labels=None, bias_block: str = "joint",
                output_grad_scale: str = "per_example"):
    """The dense K-FAC matrix blockdiag_l(damped A_l ⊗ G_l) over the flattened params (damping 0: A ⊗ G).

    "separate" orders each layer's block as [vec(W), b], like the flattened params; its bias block is G.
    """
    blocks = KroneckerBlocks(damping_scheme, "eig", bias_block, output_grad_scale)
    factors, pre = _one_batch(blocks, oracle, params, damping, fisher, samples, seed, labels)
    return blocks.to_dense(factors, pre, damping, power=1)


def ekfac_matrix(oracle, params, damping: float = 0.0, fisher: str = "true", samples: int = 1, seed=None,
                 labels=None, bias_block: str = "joint"):
    """The dense EKFAC matrix blockdiag_l(Q_l diag(s_l + λ) Q_lᵀ), Q_l = Q_A ⊗ Q_G of this batch's factors
    and s_l this batch's ``eigenbasis_scaling`` (the diagonal of the Fisher block in that basis)."""
    blocks = EigenbasisBlocks(0.0, bias_block)
    factors, pre = _one_batch(blocks, oracle, params, damping, fisher, samples, seed, labels)
    return blocks.to_dense(factors, pre, damping, power=1)


def _apply_inverse(blocks, vector, oracle, params, damping, fisher, samples, seed, labels) -> list:
    factors, pre = _one_batch(blocks, oracle, params, damping, fisher, samples, seed, labels)
    V = blocks.precondition([K.layer_matrix(v) for v in vector], pre, damping)
    return [K.layer_tree(v) for v in V]


def kfac_inverse_vp(oracle, params, vector: Sequence, damping: float, damping_scheme: str = "pi",
                    inverse: str = "inverse", fisher: str = "true", samples: int = 1, seed=None, labels=None,
                    bias_block: str = "joint", output_grad_scale: str = "per_example") -> list:
    """(damped K-FAC matrix)⁻¹ v for ``vector`` a params-shaped tree (K-FAC's step before clip and momentum)."""
    blocks = KroneckerBlocks(damping_scheme, inverse, bias_block, output_grad_scale)
    return _apply_inverse(blocks, vector, oracle, params, damping, fisher, samples, seed, labels)


def ekfac_inverse_vp(oracle, params, vector: Sequence, damping: float, fisher: str = "true", samples: int = 1,
                     seed=None, labels=None, bias_block: str = "joint") -> list:
    """(EKFAC matrix + λI)⁻¹ v for ``vector`` a params-shaped tree (``ekfac_matrix``'s inverse)."""
    return _apply_inverse(EigenbasisBlocks(0.0, bias_block), vector, oracle, params, damping, fisher, samples,
                          seed, labels)
