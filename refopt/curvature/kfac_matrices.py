"""The K-FAC and EKFAC matrices of one batch at given parameters, for verifiers.

For every Fisher type ("true", "mc" with injected ``labels`` or a seed, "empirical") and bias layout, from
one statistics pass of the batch (no running averages): ``layer_factors`` (each layer's A and G),
``kfac_matrix`` (dense blockdiag_l(damped A_l ⊗ G_l)) and ``ekfac_matrix`` (dense blockdiag_l(Q_l diag(s_l + λ)
Q_lᵀ)), ``kfac_inverse_vp`` and ``ekfac_inverse_vp`` (the damped inverse applied to a params tree). Each is
the block object of ``blocks`` / ``eigenbasis`` applied once, so the optimizers' first step can be checked
against them; dense matrices are indexed like the flattened params (vec(W̄) per layer, row-major), except a
conv layer's, which are indexed by vec(W̄) with W̄ = [W.reshape(O, K)ᵀ; b] (the OIHW leaf flattens as vec(W̄[:-1]ᵀ)).
``kfac_approx`` ("expand" | "reduce") chooses the conv layers' factors, ``conv_row_scale`` ("none" |
"inverse_locations", kfac-pytorch's) their scaling (``kronecker`` module docs); K-FAC's switches of those names.
"""
from __future__ import annotations

from typing import Sequence

from . import kronecker as K
from .blocks import CurvatureBlocks, KroneckerBlocks, require_choice, factor_estimates
from .eigenbasis import EigenbasisBlocks

__all__ = ["layer_factors", "kfac_matrix", "ekfac_matrix", "kfac_inverse_vp", "ekfac_inverse_vp"]


def _statistics(oracle, params, fisher: str, samples: int, seed, labels) -> K.KFACStatistics:
    require_choice("fisher", fisher, K.FISHER_ESTIMATES)
    return K.kfac_statistics(oracle, params, fisher, samples, seed=seed, labels=labels, gradient=False)


def layer_factors(oracle, params, fisher: str = "true", samples: int = 1, seed=None, labels=None,
                  bias_block: str = "joint", output_grad_scale: str = "per_example",
                  kfac_approx: str = "expand", conv_row_scale: str = "none") -> tuple:
    """(A, G): lists over layers of this batch's K-FAC factors at ``params`` (``factor_estimates``).

    ``fisher`` "true" | "mc" (``labels`` (k, ...) injected, or ``samples`` sets drawn with ``seed``) |
    "empirical" | "curvature_prop" (Rademacher signs (k, B, C) as ``labels``, or drawn with ``seed``).
    A ⊗ G approximates the layer's Fisher block of the reduced loss, indexed by vec(W̄)
    ("joint") or by vec(W) with the bias block G apart ("separate").
    """
    est = factor_estimates(_statistics(oracle, params, fisher, samples, seed, labels), bias_block,
                           output_grad_scale, kfac_approx, conv_row_scale)
    return est["A"], est["G"]


def _one_batch(blocks: CurvatureBlocks, oracle, params, damping, fisher, samples, seed, labels):
    """(factors, preconditioner) of one fresh estimate (no running average), EKFAC's ŝ folded in."""
    stats = _statistics(oracle, params, fisher, samples, seed, labels)
    factors = blocks.estimate(stats)
    return factors, blocks.update_estimate(blocks.refresh(factors, damping), stats)


def kfac_matrix(oracle, params, damping: float = 0.0, damping_scheme: str = "eigen", fisher: str = "true",
                samples: int = 1, seed=None, labels=None, bias_block: str = "joint",
                output_grad_scale: str = "per_example", kfac_approx: str = "expand", conv_row_scale: str = "none"):
    """The dense K-FAC matrix blockdiag_l(damped A_l ⊗ G_l) over the flattened params (damping 0: A ⊗ G).

    "separate" orders each layer's block as [vec(W), b], like the flattened params; its bias block is G.
    """
    blocks = KroneckerBlocks(damping_scheme, "eig", bias_block, output_grad_scale, kfac_approx, conv_row_scale)
    factors, pre = _one_batch(blocks, oracle, params, damping, fisher, samples, seed, labels)
    return blocks.to_dense(factors, pre, damping, power=1)


def ekfac_matrix(oracle, params, damping: float = 0.0, fisher: str = "true", samples: int = 1, seed=None,
                 labels=None, bias_block: str = "joint", kfac_approx: str = "expand"):
    """The dense EKFAC matrix blockdiag_l(Q_l diag(s_l + λ) Q_lᵀ), Q_l = Q_A ⊗ Q_G of this batch's factors
    and s_l this batch's ``eigenbasis_scaling`` (the diagonal of the Fisher block in that basis)."""
    blocks = EigenbasisBlocks(0.0, bias_block, kfac_approx)
    factors, pre = _one_batch(blocks, oracle, params, damping, fisher, samples, seed, labels)
    return blocks.to_dense(factors, pre, damping, power=1)


def _apply_inverse(blocks, vector, oracle, params, damping, fisher, samples, seed, labels) -> list:
    factors, pre = _one_batch(blocks, oracle, params, damping, fisher, samples, seed, labels)
    V = blocks.precondition([K.layer_matrix(v) for v in vector], pre, damping)
    return [K.layer_tree(v, p["W"].shape) for v, p in zip(V, params)]


def kfac_inverse_vp(oracle, params, vector: Sequence, damping: float, damping_scheme: str = "pi",
                    inverse: str = "inverse", fisher: str = "true", samples: int = 1, seed=None, labels=None,
                    bias_block: str = "joint", output_grad_scale: str = "per_example",
                    kfac_approx: str = "expand", conv_row_scale: str = "none") -> list:
    """(damped K-FAC matrix)⁻¹ v for ``vector`` a params-shaped tree (K-FAC's step before clip and momentum)."""
    blocks = KroneckerBlocks(damping_scheme, inverse, bias_block, output_grad_scale, kfac_approx, conv_row_scale)
    return _apply_inverse(blocks, vector, oracle, params, damping, fisher, samples, seed, labels)


def ekfac_inverse_vp(oracle, params, vector: Sequence, damping: float, fisher: str = "true", samples: int = 1,
                     seed=None, labels=None, bias_block: str = "joint", kfac_approx: str = "expand") -> list:
    """(EKFAC matrix + λI)⁻¹ v for ``vector`` a params-shaped tree (``ekfac_matrix``'s inverse)."""
    return _apply_inverse(EigenbasisBlocks(0.0, bias_block, kfac_approx), vector, oracle, params, damping, fisher, samples,
                          seed, labels)
