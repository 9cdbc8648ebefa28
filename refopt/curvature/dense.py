"""Dense curvature matrices of small models, assembled column by column from the matrix-free products.

They exist to test the products and to serve the dense methods (Newton, exact natural gradient) on
small networks. Every builder refuses more than ``max_size`` parameters with a ValueError that names
the matrix-free alternative.
"""
from __future__ import annotations

from .. import tree as T
from ..autodiff.api import check_dense_size  # the one size check, shared with ad.hessian
from ..backend import xp

__all__ = ["dense_from_product", "check_dense_size"]


def dense_from_product(product, like, max_size=None, what="dense matrix", alternative="the matrix-free product"):
    """The n×n matrix M with M e_i = product(e_i), e_i unit trees shaped like ``like``."""
    n = T.size(like)
    check_dense_size(n, max_size, what, alternative)
    dtype = T.leaves(like)[0].dtype
    cols = []
    for i in range(n):
        e = xp.zeros(n, dtype=dtype)
        e[i] = 1.0
        cols.append(T.ravel(product(T.unravel(e, like))))
    return xp.stack(cols, axis=1)
