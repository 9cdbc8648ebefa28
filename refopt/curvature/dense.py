"""Dense curvature matrices of small models, assembled column by column from the matrix-free products.

They exist to test the products and to serve the dense methods (Newton, exact natural gradient) on
small networks. Every builder refuses more than ``max_size`` parameters with a ValueError that names
the matrix-free alternative.
"""
from __future__ import annotations

from .. import tree as T
from ..autodiff.api import DENSE_MAX_SIZE
from ..backend import xp

__all__ = ["dense_from_product", "check_dense_size"]


def check_dense_size(n: int, max_size: int | None, what: str, alternative: str) -> None:
    """ValueError naming ``alternative`` when a dense n×n ``what`` exceeds ``max_size`` (None: DENSE_MAX_SIZE)."""
    limit = DENSE_MAX_SIZE if max_size is None else max_size
    if n > limit:
        gib = n * n * 8 / 2 ** 30
        raise ValueError(f"{what}: the model has n={n} parameters; a dense n×n matrix ({gib:.1f} GiB in "
                         f"float64) exceeds max_size={limit}. Use {alternative} instead.")


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
