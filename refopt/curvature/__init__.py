"""Curvature: Hessian, Gauss-Newton and Fisher products, dense matrices, diagonal estimators, Kronecker
factors (``kronecker``), the K-FAC family's curvature blocks (``blocks``: the interface and the Kronecker
block; ``tridiagonal``; ``eigenbasis``), K-BFGS's secant updates (``secant``) and the one-batch K-FAC
matrices for verifiers (``kfac_matrices``)."""
from .blocks import CurvatureBlocks, KroneckerBlocks
from .dense import check_dense_size, dense_from_product
from .eigenbasis import EigenbasisBlocks
from .estimators import PROBE_DISTRIBUTIONS, draw_probes, gnb_diagonal, gnb_from_pullback, hutchinson_diagonal
from .kfac_matrices import ekfac_inverse_vp, ekfac_matrix, kfac_inverse_vp, kfac_matrix, layer_factors
from .products import (FISHER_KINDS, fisher_vp, ggn_vp, hvp, linearize, network_jvp, network_vjp,
                       output_space_operator, output_space_product, sampled_output_grads)
from .tridiagonal import TridiagonalBlocks

__all__ = ["hvp", "ggn_vp", "fisher_vp", "network_jvp", "network_vjp", "linearize", "output_space_product",
           "output_space_operator", "sampled_output_grads",
           "FISHER_KINDS", "draw_probes", "hutchinson_diagonal", "gnb_diagonal", "gnb_from_pullback",
           "PROBE_DISTRIBUTIONS",
           "dense_from_product", "check_dense_size",
           "CurvatureBlocks", "KroneckerBlocks", "TridiagonalBlocks", "EigenbasisBlocks",
           "layer_factors", "kfac_matrix", "ekfac_matrix", "kfac_inverse_vp", "ekfac_inverse_vp"]
