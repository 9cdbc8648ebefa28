"""Curvature blocks: the Kronecker-factored curvature of an MLP behind one interface (the K-FAC family),
and the block-diagonal Kronecker block with its damping rules.

A block object holds the statistics of a network's layers and answers (kfac-jax's ``curvature_blocks``
shape; curvlinops' ``KFACLinearOperator`` is the same idea as a linear operator):

    init(params)                           identity statistics, the running averages' start
    estimate(stats)                        this batch's statistics: dict name -> list over layers
    refresh(factors, damping)              what preconditioning needs: damped inverses or eigenpairs
    update_estimate(precond, stats)        statistics that live in the refreshed basis (EKFAC's ŝ)
    multiply(V, factors, precond, λ, p)    (damped C)^p V for p = −1 (``precondition``), 1 (``matvec``)
                                           or ±½ (``power``, blocks with eigenpairs)
    to_dense(factors, precond, λ, p)       the dense (damped C)^p, indexed like the flattened params

with V a list over layers of (fan_in + 1, fan_out) matrices V_l = W̄_l (``kronecker.layer_matrix``;
row-major vec, s = a W, (A ⊗ G) vec(V) = vec(A V G)).

``KroneckerBlocks`` (Martens & Grosse 2015, §2-3): C = blockdiag_l(A_l ⊗ G_l). Damping rules, λ =
``damping``, γ = √λ: "pi" (factored Tikhonov, §6.3) (A + πγI) ⊗ (G + γ/π I), π = sqrt((tr A/dim A) /
(tr G/dim G)); "tikhonov" the same with π = 1; "eigen" (exact, their App. B / George et al. 2018)
A ⊗ G + λI through the eigenbases. ``inverse`` "inverse" forms the damped inverses at each refresh
(λ of that moment), "eig" eigendecomposes the undamped factors and damps when multiplying (needed by
"eigen"). ``bias_block`` "joint" (one block for W̄ = [W; b], ā = [a, 1]) or "separate" (curvlinops: A ⊗ G
for W with A = (1/B) Σ a aᵀ, and G alone for b, damped (G + γI) for "tikhonov", G + λI for "eigen").

Convolution layers (KFC, ``kfac_approx`` "expand" | "reduce", ``kronecker`` module docs): the patches and the
spatial output gradients become rows (``kronecker.conv_input_rows`` / ``conv_grad_rows``) and every rule
above applies to those rows unchanged; V_l is the conv layer's W̄_l = [W.reshape(O, K)ᵀ; b] (K + 1, O).

The other blocks subclass it: ``tridiagonal.TridiagonalBlocks`` (M&G §4.3, the chain coupling of
neighbouring layers) and ``eigenbasis.EigenbasisBlocks`` (EKFAC, George et al. 2018). K-BFGS's factor
updates are in ``secant``, the one-batch matrices for verifiers in ``kfac_matrices``.
"""
from __future__ import annotations

import math
from typing import NamedTuple

from .. import tree as T
from ..backend import xp
from ..linalg import shifted_symmetric, symmetrize
from ..serialize import register_state
from . import kronecker as K
from .dense import dense_from_product

__all__ = [
    "DAMPING_SCHEMES", "INVERSE_METHODS", "BIAS_BLOCKS", "CurvatureBlocks", "KroneckerBlocks", "KroneckerInverse",
    "require_choice", "require_dense", "eigh_psd", "damped_factors", "damped_eigenvalues", "kronecker_inverse",
    "kronecker_precondition", "bias_precondition", "factor_estimates", "POWERS",
]

DAMPING_SCHEMES = ("pi", "tikhonov", "eigen")
INVERSE_METHODS = ("eig", "inverse")
BIAS_BLOCKS = ("joint", "separate")
POWERS = (1, -1, 0.5, -0.5)   # the powers of ``multiply``: ±½ only for blocks with eigenpairs (``power``)


def require_dense(params, who: str, why: str) -> None:
    """ValueError when a layer of ``params`` is a convolution (a 4-D kernel): ``who`` supports dense layers only,
    for the reason ``why``. Raised at ``init``, before any statistics pass, so the refusal names the layer."""
    for l, p in enumerate(params):
        if len(getattr(p["W"], "shape", ())) != 2:
            raise ValueError(f"{who} supports dense layers only: layer {l} is a convolution (W of shape "
                             f"{tuple(p['W'].shape)}); {why}")


def require_choice(name: str, value, choices) -> None:
    """ValueError naming ``name`` unless ``value`` is one of ``choices`` (the blocks' own arguments)."""
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
    A_inv = xp.linalg.inv(shifted_symmetric(A, gA))   # (½(A + Aᵀ) + γ_A I)⁻¹
    G_inv = xp.linalg.inv(shifted_symmetric(G, gG))
    return KroneckerInverse(None, None, None, None, A_inv, G_inv, pi)


def damped_eigenvalues(inv: KroneckerInverse, damping: float, scheme: str):
    """(D, d): the damped eigenvalues of one layer's weight block, D_ij = d_A,i d_G,j + λ ("eigen") or
    (d_A,i + πγ)(d_G,j + γ/π), and of a separate bias block, d = d_G + λ ("eigen") or d_G + γ (γ = √λ),
    from the undamped factors' eigenpairs (``kronecker_inverse`` with method "eig")."""
    if scheme == "eigen":
        return inv.dA[:, None] * inv.dG[None, :] + damping, inv.dG + damping
    gamma = math.sqrt(damping)
    return (inv.dA + inv.pi * gamma)[:, None] * (inv.dG + gamma / inv.pi)[None, :], inv.dG + gamma


def _eigen_power(X, D, power):
    # power −1 divides: the optimizers' step keeps the rounding of X / D
    return X / D if power == -1 else X * D ** power


def kronecker_precondition(V, inv: KroneckerInverse, damping: float, scheme: str, power=-1):
    """(damped A ⊗ G)^power vec(V) for one layer: A⁻¹ V G⁻¹ (power −1), or Q_A [(Q_Aᵀ V Q_G) ⊙ D^power] Q_Gᵀ
    from the eigenpairs (``damped_eigenvalues``; any power)."""
    if inv.A_inv is not None:
        if power != -1:
            raise ValueError(f"power {power} needs the eigenpairs (inverse='eig'); the damped inverses give −1 only")
        return inv.A_inv @ V @ inv.G_inv
    Vt = inv.QA.T @ V @ inv.QG
    return inv.QA @ _eigen_power(Vt, damped_eigenvalues(inv, damping, scheme)[0], power) @ inv.QG.T


def bias_precondition(Vb, inv: KroneckerInverse, damping: float, scheme: str, power=-1):
    """The separate bias block's (damped G)^power applied to the bias rows Vb (1, fan_out), from the weight
    block's refreshed G: G + γI ("tikhonov", γ = √λ) or G + λI ("eigen")."""
    if inv.G_inv is not None:          # "tikhonov" with method "inverse": G_inv = (G + γI)⁻¹ (π = 1)
        if power != -1:
            raise ValueError(f"power {power} needs the eigenpairs (inverse='eig'); the damped inverses give −1 only")
        return Vb @ inv.G_inv
    d = damped_eigenvalues(inv, damping, scheme)[1]
    return _eigen_power(Vb @ inv.QG, d, power) @ inv.QG.T


def factor_estimates(stats: K.KFACStatistics, bias_block: str = "joint",
                     output_grad_scale: str = "per_example", kfac_approx: str = "expand",
                     conv_row_scale: str = "none") -> dict:
    """This batch's {"A": [A_l], "G": [G_l]} from one statistics pass (``kronecker.kfac_statistics``).

    A_l = (1/B) Σ ā āᵀ ("joint") or (1/B) Σ a aᵀ ("separate"); G_l = ``kronecker.grad_factor`` of the probes;
    a conv layer's statistics first become rows by ``kfac_approx`` (B = N·L for "expand", N for "reduce"),
    and its A_l and G_l are divided by L² under ``conv_row_scale="inverse_locations"`` (kfac-pytorch's rows ÷ L,
    ``kronecker.scale_conv_factors``).
    """
    require_choice("bias_block", bias_block, BIAS_BLOCKS)
    K.require_approx(kfac_approx)
    inputs = [K.conv_input_rows(a, kfac_approx) for a in stats.inputs]
    if bias_block == "separate":
        A = [a.T @ a for a in inputs]
        for A_l, a in zip(A, inputs):
            A_l /= a.shape[0]   # in place on the fresh product: the rounding of aᵀa / B
    else:
        A = [K.input_factor(a) for a in inputs]
    estimate = {"A": A, "G": [K.grad_factor([K.conv_grad_rows(p[l], kfac_approx) for p in stats.probes], stats.scale,
                                            output_grad_scale) for l in range(len(inputs))]}
    return K.scale_conv_factors(estimate, stats.inputs, conv_row_scale)


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
        dims = [K.layer_dims(p["W"]) for p in params]
        return {"A": tuple(xp.eye(fan_in + extra, dtype=dtype) for fan_in, _ in dims),
                "G": tuple(xp.eye(fan_out, dtype=dtype) for _, fan_out in dims)}

    def estimate(self, stats: K.KFACStatistics) -> dict:
        """This batch's statistics, the same names as ``init``."""
        raise NotImplementedError

    def refresh(self, factors: dict, damping: float) -> tuple:
        """The preconditioner of the current factors (inverses or eigendecompositions)."""
        raise NotImplementedError

    def update_estimate(self, preconditioner: tuple, stats: K.KFACStatistics) -> tuple:
        """Fold this batch into statistics kept in the refreshed basis; none here (EKFAC has ŝ)."""
        return preconditioner

    def all_finite(self, estimate: dict) -> bool:
        """Whether this batch's statistics are finite: every entry of every factor here (a block whose factors
        are Gram matrices checks less: ``KroneckerBlocks``)."""
        return T.all_finite(estimate)

    def precondition(self, V: list, preconditioner: tuple, damping: float) -> list:
        """(damped C)⁻¹ V."""
        raise NotImplementedError

    def matvec(self, V: list, factors: dict, preconditioner: tuple, damping: float) -> list:
        """(damped C) V."""
        raise NotImplementedError

    def power(self, V: list, preconditioner: tuple, damping: float, power: float) -> list:
        """(damped C)^power V for power ±½ from eigenpairs; a block without them (this base) refuses."""
        raise ValueError(f"{type(self).__name__}: power must be -1 or 1, got {power!r}")

    def multiply(self, V: list, factors: dict, preconditioner: tuple, damping: float, power=-1) -> list:
        """(damped C)^power V for power −1 (preconditioning), 1 (the matrix itself) or ±½ (``power``)."""
        if power == -1:
            return self.precondition(V, preconditioner, damping)
        if power == 1:
            return self.matvec(V, factors, preconditioner, damping)
        if power in POWERS:
            return self.power(V, preconditioner, damping, power)
        raise ValueError(f"power must be one of {POWERS}, got {power!r}")

    def shapes(self, factors: dict) -> list:
        """The W̄_l shapes (fan_in + 1, fan_out) of the layers the factors describe."""
        extra = 1 if self.bias_block == "separate" else 0
        return [(A.shape[0] + extra, G.shape[0]) for A, G in zip(factors["A"], factors["G"])]

    def to_dense(self, factors: dict, preconditioner: tuple, damping: float, power: int = 1,
                 max_size: int | None = None):
        """The dense (damped C)^power over the flattened params [vec(W̄_1), vec(W̄_2), ...], column by column."""
        zero = xp.zeros((), dtype=factors["G"][0].dtype)   # broadcast views: the layer shapes, nothing allocated
        like = [xp.broadcast_to(zero, shape) for shape in self.shapes(factors)]
        return dense_from_product(lambda V: self.multiply(V, factors, preconditioner, damping, power), like,
                                  max_size, "to_dense", "multiply")


class KroneckerBlocks(CurvatureBlocks):
    """Block-diagonal A_l ⊗ G_l with the damping rules "pi" | "tikhonov" | "eigen" (module docs)."""

    def __init__(self, damping_scheme: str = "pi", inverse: str = "inverse", bias_block: str = "joint",
                 output_grad_scale: str = "per_example", kfac_approx: str = "expand", conv_row_scale: str = "none"):
        require_choice("damping_scheme", damping_scheme, DAMPING_SCHEMES)
        require_choice("inverse", inverse, INVERSE_METHODS)
        require_choice("bias_block", bias_block, BIAS_BLOCKS)
        require_choice("output_grad_scale", output_grad_scale, K.OUTPUT_GRAD_SCALES)
        if damping_scheme == "eigen" and inverse != "eig":
            raise ValueError("damping_scheme='eigen' needs inverse='eig' (the eigenbases give (A⊗G + λI)⁻¹)")
        if bias_block == "separate" and damping_scheme == "pi":
            raise ValueError("bias_block='separate' needs damping_scheme='tikhonov' or 'eigen': the π of 'pi' "
                             "balances two factors and the bias block has one")
        self.damping_scheme, self.inverse = damping_scheme, inverse
        self.bias_block, self.output_grad_scale = bias_block, output_grad_scale
        K.require_approx(kfac_approx)
        require_choice("conv_row_scale", conv_row_scale, K.CONV_ROW_SCALES)
        self.kfac_approx, self.conv_row_scale = kfac_approx, conv_row_scale

    def estimate(self, stats: K.KFACStatistics) -> dict:
        """{"A", "G"} of this batch (``factor_estimates``)."""
        return factor_estimates(stats, self.bias_block, self.output_grad_scale, self.kfac_approx, self.conv_row_scale)

    def all_finite(self, estimate: dict) -> bool:
        """A and G are Gram matrices XᵀX / c, so a NaN or Inf in X, or an overflow of the sums, shows on the
        diagonal (|X_iᵀX_j| ≤ max(‖X_i‖², ‖X_j‖²) by Cauchy–Schwarz, partial sums included): their diagonals
        are checked, any other statistic (a subclass's cross factors) entry by entry."""
        for name, factors in estimate.items():
            if name in ("A", "G"):
                if not all(bool(xp.all(xp.isfinite(xp.diagonal(F)))) for F in factors):
                    return False
            elif not T.all_finite(factors):
                return False
        return True

    def refresh(self, factors: dict, damping: float) -> tuple:
        """``kronecker_inverse`` of every layer's factors."""
        return tuple(kronecker_inverse(A, G, damping, self.damping_scheme, self.inverse)
                     for A, G in zip(factors["A"], factors["G"]))

    def precondition(self, V: list, preconditioner: tuple, damping: float) -> list:
        """Each layer's (damped A ⊗ G)⁻¹ V_l; "separate": the weight rows and the bias row apart."""
        return self.power(V, preconditioner, damping, -1)

    def power(self, V: list, preconditioner: tuple, damping: float, power: float) -> list:
        """Each layer's (damped A ⊗ G)^power V_l (``kronecker_precondition``; ±½ need inverse "eig")."""
        s = self.damping_scheme
        if self.bias_block == "separate":
            return [xp.concatenate([kronecker_precondition(v[:-1], inv, damping, s, power),
                                    bias_precondition(v[-1:], inv, damping, s, power)], axis=0)
                    for v, inv in zip(V, preconditioner)]
        return [kronecker_precondition(v, inv, damping, s, power) for v, inv in zip(V, preconditioner)]

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
