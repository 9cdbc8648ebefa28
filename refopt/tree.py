"""Parameter trees: nested lists, tuples and dicts whose leaves are arrays.

Order and flattening convention (relied on by every dense matrix in refopt): leaves are visited
depth-first, lists and tuples in order, dicts in *sorted key* order; each leaf is flattened row-major
(C order). So an MLP's parameters ``[{"W": W1, "b": b1}, {"W": W2, "b": b2}]`` flatten to
``[vec(W1), b1, vec(W2), b2]`` with vec row-major.

Layer: tree sits just above backend and below autodiff, whose transformations flatten their arguments
with it. Its arithmetic still works on traced trees: it is written with operators and methods
(``+``, ``*``, ``.sum()``, ``.shape``), which on autodiff's boxes are autodiff's primitives.
"""
from __future__ import annotations

from typing import Any, Callable

from .backend import as_array, is_floating, xp

__all__ = ["flatten", "unflatten", "leaves", "tree_map", "tree_map2", "vdot", "add", "sub", "scale", "axpy",
           "zeros_like", "ravel", "unravel", "size", "norm", "all_finite", "same_structure", "copy"]


def flatten(tree) -> tuple[list, Any]:
    """(leaves, treedef); ``unflatten(treedef, leaves)`` rebuilds the tree."""
    out: list = []
    return out, _visit(tree, out)


_CONTAINERS = (dict, list, tuple)


def _visit(t, out):
    # flatten and unflatten run on every gradient: module-level recursion (no closure per call), and
    # leaves handled in the parent's loop (no call per leaf).
    if isinstance(t, dict):
        keys = sorted(t)
        children = [t[k] for k in keys]
        kind = "dict"
    elif isinstance(t, (list, tuple)):
        children, keys, kind = t, None, type(t)
    else:
        out.append(t)
        return None
    defs = []
    for c in children:
        if isinstance(c, _CONTAINERS):
            defs.append(_visit(c, out))
        else:
            out.append(c)
            defs.append(None)
    return (kind, keys, defs)


def unflatten(treedef, leaf_list):
    """The tree described by ``treedef`` (from ``flatten``) with ``leaf_list`` as its leaves, in order."""
    return _build(treedef, iter(leaf_list))


def _build(d, it):
    if d is None:
        return next(it)
    kind, keys, children = d
    built = [next(it) if c is None else _build(c, it) for c in children]
    return dict(zip(keys, built)) if kind == "dict" else kind(built)


def leaves(tree) -> list:
    """The leaves of ``tree`` in flattening order (see the module docs)."""
    return flatten(tree)[0]


def tree_map(f: Callable, tree):
    """Apply ``f`` to every leaf."""
    ls, d = flatten(tree)
    return unflatten(d, [f(x) for x in ls])


def tree_map2(f: Callable, a, b):
    """Apply ``f`` leafwise to two trees of the same structure."""
    la, da = flatten(a)
    lb, db = flatten(b)
    if da != db:
        raise ValueError("the two trees have different structures")
    return unflatten(da, [f(x, y) for x, y in zip(la, lb)])


def same_structure(a, b) -> bool:
    """Whether ``a`` and ``b`` have the same structure and the same leaf shapes."""
    la, da = flatten(a)
    lb, db = flatten(b)
    return da == db and all(_shape(x) == _shape(y) for x, y in zip(la, lb))


def _shape(x) -> tuple:
    """The shape of an array, a box (a lazy box knows it before its value) or a Python scalar (``()``)."""
    return getattr(x, "shape", ())


def _same_shapes(la, lb, what):
    """Leafwise arithmetic between trees never broadcasts: that would silently change the math."""
    if len(la) != len(lb):
        raise ValueError(f"{what}: the trees have {len(la)} and {len(lb)} leaves")
    for i, (x, y) in enumerate(zip(la, lb)):
        if _shape(x) != _shape(y):
            raise ValueError(f"{what}: leaf {i} has shapes {_shape(x)} and {_shape(y)}")


def vdot(a, b):
    """Sum over leaves of <a_i, b_i> (differentiable: works on traced trees).

    The sum starts from a zero of the leaves' dtype, not from the Python 0.0: NumPy 1's value-based
    casting would turn a float32 sum that starts from 0.0 into float64.
    """
    la, lb = leaves(a), leaves(b)
    _same_shapes(la, lb, "vdot")
    total = 0.0
    for i, (x, y) in enumerate(zip(la, lb)):
        term = x * y
        term = term.sum() if hasattr(term, "sum") else term  # Python scalar leaves have no .sum()
        if i == 0 and hasattr(term, "dtype") and is_floating(term.dtype):
            total = xp.zeros((), dtype=term.dtype)
        total = total + term
    return total


def _leafwise(f, a, b, what):
    la, da = flatten(a)
    lb, db = flatten(b)
    if da != db:
        raise ValueError(f"{what}: the two trees have different structures")
    _same_shapes(la, lb, what)
    return unflatten(da, [f(x, y) for x, y in zip(la, lb)])


def add(a, b):
    """a + b, leafwise (same structure and shapes)."""
    return _leafwise(lambda x, y: x + y, a, b, "add")


def sub(a, b):
    """a − b, leafwise (same structure and shapes)."""
    return _leafwise(lambda x, y: x - y, a, b, "sub")


def scale(c, a):
    """c · a for a scalar c."""
    return tree_map(lambda x: c * x, a)


def axpy(alpha, x, y):
    """alpha * x + y, leafwise (same structure and shapes; alpha a scalar)."""
    return _leafwise(lambda u, v: alpha * u + v, x, y, "axpy")


def zeros_like(tree):
    """A tree of zeros shaped like ``tree``."""
    return tree_map(lambda x: xp.zeros_like(x), tree)


def copy(tree):
    """A copy of ``tree`` with every leaf copied."""
    return tree_map(lambda x: x.copy(), tree)


def size(tree) -> int:
    """The total number of entries over all leaves."""
    n = 0
    for x in leaves(tree):
        n += int(x.size)
    return n


def ravel(tree):
    """All leaves concatenated into one flat vector (row-major within each leaf)."""
    ls = leaves(tree)
    if not ls:
        return as_array([])
    return xp.concatenate([xp.reshape(x, (-1,)) for x in ls])


def unravel(vector, like):
    """The inverse of ``ravel``: cut a flat vector into a tree shaped like ``like``."""
    ls, d = flatten(like)
    total = sum(int(x.size) for x in ls)
    if vector.shape != (total,):
        raise ValueError(f"vector has shape {tuple(vector.shape)}, expected ({total},) to match the tree")
    out, start = [], 0
    for x in ls:
        out.append(xp.reshape(vector[start:start + x.size], x.shape))
        start += x.size
    return unflatten(d, out)


def norm(tree) -> float:
    """The Euclidean norm over all leaves, ‖ravel(tree)‖₂, as a float."""
    return float(xp.sqrt(sum(float(xp.vdot(x.ravel(), x.ravel())) for x in leaves(tree))))


def all_finite(tree) -> bool:
    """Whether every entry of every leaf is finite."""
    return all(bool(xp.all(xp.isfinite(x))) for x in leaves(tree))
