"""The differentiable primitives and their derivative rules.

Each primitive sits next to its rules, and every rule is written with primitives, so it can itself be
differentiated. Conventions at non-differentiable points (documented in CONTRIBUTING.md):

* ``relu'(0) = 0`` (the subgradient PyTorch and JAX use as well);
* ``maximum(x, y)`` sends the whole cotangent to ``x`` on ties (``x >= y``), none to ``y``;
* ``max_pool2d`` sends a window's whole cotangent to its first maximum in row-major window order (the
  element PyTorch's kernels pick);
* ``abs'(0) = 0`` (``sign(0) = 0``);
* masks, one-hots, comparisons and label indices are piecewise constant: their derivative is zero,
  and so the second derivative of relu is zero everywhere.

Plain rules. Next to the rules written with primitives, the primitives on a network's hot path have a
*plain* vjp rule (``defvjp_plain``, see ``core``): the same formula, operation for operation, on raw
arrays, used when no enclosing trace watches the sweep. They skip the primitives' dispatch, and where
the formula makes a fresh array (tanh's 1 − y², a mask, a softmax) they finish it in place with
``out=`` instead of allocating one temporary per operation. ``affine(a, W, b) = a @ W + b`` is one
node for a dense layer's pre-activation, its bias added in place into the fresh product, and
``softmax_cross_entropy(z, labels, reduction)`` one node for the reduced loss, its rules the chain of the
five nodes' rules it replaces (so its derivatives are theirs to the bit).

Convolutions (PyTorch's layouts: NCHW images, OIHW kernels). ``unfold`` (im2col: an image batch to its
patches, one row per output location) and ``fold`` (col2im, its transpose) are a primitive pair, each the
other's vjp, so they nest as getitem and scatter do; ``conv2d`` is ``affine`` on the unfolded patches,
``avg_pool2d`` / ``max_pool2d`` reduce windows (a reshape when they tile the input, else unfolded), and
``flatten`` is a reshape. Their section below states the patch layout, "same" padding and the pooling rules.
"""
from __future__ import annotations

import math
import numbers
from typing import NamedTuple

from ..backend import xp
from ..serialize import short_repr
from .core import Box, NonDifferentiable, Primitive, defjvp, defvjp, defvjp_plain, getval, set_add

__all__ = [
    "add", "subtract", "multiply", "divide", "negative", "power", "matmul", "affine", "transpose", "reshape",
    "broadcast_to", "sum", "mean", "exp", "log", "tanh", "sigmoid", "relu", "softplus", "sqrt", "sin",
    "cos", "absolute", "maximum", "where", "take_labels", "logsumexp", "log_softmax", "softmax", "dot",
    "greater", "onehot", "stop_gradient", "shape_of", "unbroadcast", "square", "getitem", "scatter",
    "softmax_cross_entropy",
    "ConvGeometry", "conv_geometry", "unfold", "fold", "conv2d", "conv2d_locations", "locations_to_nchw",
    "avg_pool2d", "max_pool2d", "flatten",
    "nhwc_to_nchw", "nchw_to_nhwc", "hwio_to_oihw", "oihw_to_hwio",
    "NUMPY_SUPPORTED",
]


def shape_of(x) -> tuple:
    """The shape of an array, a box, or a Python scalar (``()``)."""
    if isinstance(x, Box):
        return x.shape  # a LazyBox knows its shape before its value
    return getattr(x, "shape", ())


# ---------------------------------------------------------------------------------------------------
# Helpers of the plain rules (raw arrays only).
def _shape(x) -> tuple:
    return getattr(x, "shape", ())


def _fresh(t) -> bool:
    """Whether ``t``, just returned by a ufunc, is an array that may be written (NumPy returns scalars for 0-d)."""
    return getattr(t, "ndim", 0) > 0 and getattr(t.dtype, "kind", "") == "f"


def _fits(x, t) -> bool:
    """Whether x ⊙ t has t's shape and dtype, so it can be written into ``t`` (x broadcasts into t)."""
    xs, ts = getattr(x, "shape", None), t.shape
    if xs is None or getattr(x, "dtype", None) != t.dtype or len(xs) > len(ts):
        return False
    if xs == ts or xs == ts[len(ts) - len(xs):]:
        return True
    for a, b in zip(reversed(xs), reversed(ts)):
        if a != b and a != 1:
            return False
    return True


def _times_fresh(g, t):
    """g * t, written into ``t`` when ``t`` is a fresh array of the result's shape and dtype."""
    if getattr(t, "ndim", 0) and getattr(g, "shape", None) == t.shape and getattr(g, "dtype", None) == t.dtype \
            and t.dtype.kind == "f" or _fresh(t) and _fits(g, t):  # the common case first, then broadcasting g
        return xp.multiply(g, t, out=t)  # g first, as g * t (with two NaNs the first one's payload wins)
    return xp.multiply(*_weak(g, t))


# Array methods are what numpy.sum / numpy.reshape / ... call, without their Python wrappers (same bits);
# the functions remain for Python scalars and lists, which have no methods.
def _plain_sum(x, axis=None, keepdims=False):
    return x.sum(axis=axis, keepdims=keepdims) if hasattr(x, "sum") else xp.sum(x, axis=axis, keepdims=keepdims)


def _reshape(x, shape):
    return x.reshape(shape) if hasattr(x, "reshape") else xp.reshape(x, shape)


def _transpose(x, axes):
    return x.transpose(axes) if hasattr(x, "transpose") else xp.transpose(x, axes)


def _negative(x):
    return -x if hasattr(x, "dtype") else xp.negative(x)


def _arrays(x, y) -> bool:
    """Whether ``x`` and ``y`` are arrays, so that ``x - y`` is ``xp.subtract(*_weak(x, y))`` without the lookups
    (no scalar for ``_weak`` to cast; the operators of NumPy and CuPy arrays are their ufuncs)."""
    return hasattr(x, "ndim") and hasattr(y, "ndim") and not _is_number(x) and not _is_number(y)


def _plain_unbroadcast(g, shape):
    """``unbroadcast`` on raw arrays."""
    gshape = _shape(g)
    if gshape == tuple(shape):
        return g
    axes = _broadcast_axes(gshape, shape)
    if axes:
        g = _plain_sum(g, axis=axes, keepdims=True)
    return _reshape(g, tuple(shape))


def _broadcast_axes(gshape, shape) -> tuple:
    """The axes of ``gshape`` that broadcasting ``shape`` to it created or stretched (``unbroadcast`` sums them)."""
    lead = len(gshape) - len(shape)
    return tuple(range(lead)) + tuple(lead + i for i, d in enumerate(shape) if d == 1 and gshape[lead + i] != 1)


# ---------------------------------------------------------------------------------------------------
# Shape primitives (needed by the rules of the others).
reshape = Primitive("reshape", lambda x, shape: xp.reshape(x, shape))
defvjp(reshape, lambda g, ans, x, shape: reshape(g, shape_of(x)))
defjvp(reshape, lambda t, ans, x, shape: reshape(t, shape))
defvjp_plain(reshape, lambda g, ans, x, shape: _reshape(g, _shape(x)))


def _sum_impl(x, axis=None, keepdims=False):
    return _plain_sum(x, axis=axis, keepdims=keepdims)


sum = Primitive("sum", _sum_impl)  # noqa: A001 - mirrors numpy.sum


def _reduced_axes(shape, axis) -> tuple:
    """``axis`` of a reduction (None, any integer type or a tuple of them) as sorted non-negative axes."""
    nd = len(shape)
    if axis is None:
        return tuple(range(nd))
    axes = (axis,) if isinstance(axis, numbers.Integral) else tuple(axis)
    out = []
    for a in axes:
        if isinstance(a, bool) or not isinstance(a, numbers.Integral):
            raise TypeError(f"axis must be an integer, a tuple of integers or None, got {a!r}")
        if not -nd <= a < nd:
            raise ValueError(f"axis {a} is out of bounds for an array of dimension {nd}")
        out.append(int(a) % nd)
    if len(set(out)) != len(out):
        raise ValueError(f"repeated axis in {axis!r}")
    return tuple(sorted(out))


def _keepdims_shape(xshape, axis):
    axes = _reduced_axes(xshape, axis)
    return tuple(1 if i in axes else d for i, d in enumerate(xshape))


def _sum_vjp(g, ans, x, axis=None, keepdims=False):
    xshape = shape_of(x)
    if not keepdims:
        g = reshape(g, _keepdims_shape(xshape, axis))
    return broadcast_to(g, xshape)


defvjp(sum, _sum_vjp)
defvjp_plain(sum, lambda g, ans, x, axis=None, keepdims=False: xp.broadcast_to(
    g if keepdims else _reshape(g, _keepdims_shape(_shape(x), axis)), _shape(x)))
defjvp(sum, lambda t, ans, x, axis=None, keepdims=False: sum(t, axis=axis, keepdims=keepdims))

broadcast_to = Primitive("broadcast_to", lambda x, shape: xp.broadcast_to(x, shape))


def unbroadcast(g, shape):
    """Sum ``g`` down to ``shape``: the adjoint of NumPy broadcasting."""
    gshape = shape_of(g)
    if gshape == tuple(shape):
        return g
    axes = _broadcast_axes(gshape, shape)
    if axes:
        g = sum(g, axis=axes, keepdims=True)
    return reshape(g, tuple(shape))


defvjp(broadcast_to, lambda g, ans, x, shape: unbroadcast(g, shape_of(x)))
defjvp(broadcast_to, lambda t, ans, x, shape: broadcast_to(t, shape))
defvjp_plain(broadcast_to, lambda g, ans, x, shape: _plain_unbroadcast(g, _shape(x)))


def _transpose_impl(x, axes=None):
    return xp.transpose(x, axes)


transpose = Primitive("transpose", _transpose_impl)


def _inverse_axes(axes, ndim):
    if axes is None:
        return None
    inv = [0] * ndim
    for i, a in enumerate(axes):
        inv[a % ndim] = i
    return tuple(inv)


defvjp(transpose, lambda g, ans, x, axes=None: transpose(g, _inverse_axes(axes, len(shape_of(x)))))
defjvp(transpose, lambda t, ans, x, axes=None: transpose(t, axes))
defvjp_plain(transpose, lambda g, ans, x, axes=None: _transpose(g, _inverse_axes(axes, len(_shape(x)))))

# ---------------------------------------------------------------------------------------------------
# Basic indexing: x[index] with integers, slices, Ellipsis and None (a view, no repeated entries, so its
# adjoint is an assignment into zeros). getitem and scatter are each other's adjoint, which makes them nest.
def _check_index(index):
    parts = index if isinstance(index, tuple) else (index,)
    for p in parts:
        if not (p is None or p is Ellipsis or isinstance(p, (slice, numbers.Integral))):
            raise TypeError(f"traced values support basic indexing only (integers, slices, tuples of them), "
                            f"got an index of type {type(p).__name__}")
        if isinstance(p, slice) and any(isinstance(e, Box) for e in (p.start, p.stop, p.step)):
            raise TypeError("a slice bound cannot be a traced value")
    return index


getitem = Primitive("getitem", lambda x, index: x[index])


def _scatter_impl(g, index, shape):
    out = xp.zeros(shape, dtype=g.dtype if hasattr(g, "dtype") else xp.asarray(g).dtype)
    out[index] = g
    return out


scatter = Primitive("scatter", _scatter_impl)  # zeros of ``shape`` with g at ``index``
defvjp(getitem, lambda g, ans, x, index: scatter(g, index, shape_of(x)))
defjvp(getitem, lambda t, ans, x, index: getitem(t, index))
defvjp(scatter, lambda g, ans, y, index, shape: getitem(g, index))
defjvp(scatter, lambda t, ans, y, index, shape: scatter(t, index, shape))
defvjp_plain(getitem, lambda g, ans, x, index: _scatter_impl(g, index, _shape(x)))
defvjp_plain(scatter, lambda g, ans, y, index, shape: g[index])


# ---------------------------------------------------------------------------------------------------
# Broadcasting arithmetic.
def _weak(x, y):
    """(x, y) with a Python or NumPy scalar operand cast to the other operand's floating dtype.

    A constant must not change the dtype of the array it meets: NumPy < 2 turns a float32 0-d array times
    a Python float into float64 (value-based casting reads an all-scalar operation as float64), and
    NumPy ≥ 2 turns a float32 array times a NumPy float64 scalar into float64. Casting the constant keeps
    float32 computations float32 on both and changes nothing in float64.
    """
    if _is_number(x) and getattr(getattr(y, "dtype", None), "kind", "") == "f":
        return _constant(x, y), y
    if _is_number(y) and getattr(getattr(x, "dtype", None), "kind", "") == "f":
        return x, _constant(y, x)
    return x, y


_CONSTANTS: dict = {}  # (type, value, dtype, array type) -> the 0-d array; only ever an operand, never returned


def _constant(c, like):
    """``xp.asarray(c, dtype=like.dtype)``, kept: the same few constants (1, ½, 1/B) recur on every pass."""
    if not c or c != c:  # ±0 compare (and hash) equal, NaN unequal to itself: not cached
        return xp.asarray(c, dtype=like.dtype)
    key = (type(c), c, like.dtype, type(like))
    arr = _CONSTANTS.get(key)
    if arr is None:
        if len(_CONSTANTS) > 512:  # step sizes and other one-off scalars must not grow it without bound
            _CONSTANTS.clear()
        arr = _CONSTANTS[key] = xp.asarray(c, dtype=like.dtype)
    return arr


_NUMBER_TYPES: dict = {}  # type -> isinstance(·, numbers.Number); the ABC check is slow and per type


def _is_number(x) -> bool:
    t = type(x)
    known = _NUMBER_TYPES.get(t)
    if known is None:
        known = _NUMBER_TYPES[t] = isinstance(x, numbers.Number)
    return known


def _fit(t, ans):
    """A tangent broadcast up to the output's shape (a scalar times a constant array, say)."""
    return t if shape_of(t) == shape_of(ans) else broadcast_to(t, shape_of(ans))


add = Primitive("add", lambda x, y: xp.add(*_weak(x, y)))
set_add(add)
defvjp(add, lambda g, ans, x, y: unbroadcast(g, shape_of(x)), lambda g, ans, x, y: unbroadcast(g, shape_of(y)))
defjvp(add, lambda t, ans, x, y: _fit(t, ans), lambda t, ans, x, y: _fit(t, ans))
defvjp_plain(add, lambda g, ans, x, y: _plain_unbroadcast(g, _shape(x)),
             lambda g, ans, x, y: _plain_unbroadcast(g, _shape(y)))

subtract = Primitive("subtract", lambda x, y: xp.subtract(*_weak(x, y)))
negative = Primitive("negative", lambda x: xp.negative(x))
defvjp(negative, lambda g, ans, x: negative(g))
defjvp(negative, lambda t, ans, x: negative(t))
defvjp(subtract, lambda g, ans, x, y: unbroadcast(g, shape_of(x)),
       lambda g, ans, x, y: unbroadcast(negative(g), shape_of(y)))
defjvp(subtract, lambda t, ans, x, y: _fit(t, ans), lambda t, ans, x, y: _fit(negative(t), ans))
defvjp_plain(negative, lambda g, ans, x: _negative(g))
defvjp_plain(subtract, lambda g, ans, x, y: _plain_unbroadcast(g, _shape(x)),
             lambda g, ans, x, y: _plain_unbroadcast(_negative(g), _shape(y)))

multiply = Primitive("multiply", lambda x, y: xp.multiply(*_weak(x, y)))
defvjp(multiply, lambda g, ans, x, y: unbroadcast(multiply(g, y), shape_of(x)),
       lambda g, ans, x, y: unbroadcast(multiply(g, x), shape_of(y)))
defjvp(multiply, lambda t, ans, x, y: _fit(multiply(t, y), ans), lambda t, ans, x, y: _fit(multiply(x, t), ans))
defvjp_plain(multiply, lambda g, ans, x, y: _plain_unbroadcast(xp.multiply(*_weak(g, y)), _shape(x)),
             lambda g, ans, x, y: _plain_unbroadcast(xp.multiply(*_weak(g, x)), _shape(y)))


divide = Primitive("divide", lambda x, y: xp.divide(*_weak(x, y)))
defvjp(divide, lambda g, ans, x, y: unbroadcast(divide(g, y), shape_of(x)),
       lambda g, ans, x, y: unbroadcast(negative(multiply(g, divide(ans, y))), shape_of(y)))
defjvp(divide, lambda t, ans, x, y: _fit(divide(t, y), ans),
       lambda t, ans, x, y: _fit(negative(multiply(t, divide(ans, y))), ans))


def _divide_vjp_y_plain(g, ans, x, y):
    q = _times_fresh(g, xp.divide(*_weak(ans, y)))
    return _plain_unbroadcast(xp.negative(q, out=q) if _fresh(q) else _negative(q), _shape(y))


def _divide_vjp_x_plain(g, ans, x, y):
    g, y = _weak(g, y)
    return _plain_unbroadcast(g / y if _arrays(g, y) else xp.divide(g, y), _shape(x))


defvjp_plain(divide, _divide_vjp_x_plain, _divide_vjp_y_plain)


def _power_impl(x, c):
    return xp.power(*_weak(x, c))


power = Primitive("power", _power_impl)  # x ** c with a constant exponent c
defvjp(power, lambda g, ans, x, c: multiply(g, multiply(c, power(x, c - 1))))
defjvp(power, lambda t, ans, x, c: multiply(t, multiply(c, power(x, c - 1))))
defvjp_plain(power, lambda g, ans, x, c: xp.multiply(*_weak(g, xp.multiply(*_weak(c, _power_impl(x, c - 1))))))


def square(x):
    """x * x (a composite, so its derivative is the product rule's)."""
    return multiply(x, x)


# ---------------------------------------------------------------------------------------------------
# Matrix product (1-D and 2-D operands, and stacks of matrices with matching batch axes).
def _matmul_shape(a, b):
    sa, sb = tuple(shape_of(a)), tuple(shape_of(b))
    if len(sa) == 1 and len(sb) == 1:
        return ()
    if len(sa) == 1:
        return sb[:-2] + sb[-1:]
    if len(sb) == 1:
        return sa[:-1]
    ba, bb = sa[:-2], sb[:-2]
    n = max(len(ba), len(bb))
    ba, bb = (1,) * (n - len(ba)) + ba, (1,) * (n - len(bb)) + bb
    return tuple(y if x == 1 else x for x, y in zip(ba, bb)) + (sa[-2], sb[-1])


# Its jvp rules never read ans, so forward mode may defer the primal product (see core.Primitive).
matmul = Primitive("matmul", lambda a, b: xp.matmul(a, b), lazy_shape=_matmul_shape)


def _swap(x):
    nd = len(shape_of(x))
    axes = tuple(range(nd - 2)) + (nd - 1, nd - 2)
    return transpose(x, axes)


def _matmul_vjp_a(g, ans, a, b):
    na, nb = len(shape_of(a)), len(shape_of(b))
    if na == 1 and nb == 1:
        return multiply(g, b)
    if na == 1:
        return matmul(b, g)
    if nb == 1:
        return multiply(reshape(g, shape_of(g) + (1,)), b)
    return unbroadcast(matmul(g, _swap(b)), shape_of(a))


def _matmul_vjp_b(g, ans, a, b):
    na, nb = len(shape_of(a)), len(shape_of(b))
    if na == 1 and nb == 1:
        return multiply(g, a)
    if na == 1:
        return multiply(reshape(a, shape_of(a) + (1,)), g)
    if nb == 1:
        return matmul(g, a)
    return unbroadcast(matmul(_swap(a), g), shape_of(b))


defvjp(matmul, _matmul_vjp_a, _matmul_vjp_b)
defjvp(matmul, lambda t, ans, a, b: matmul(t, b), lambda t, ans, a, b: matmul(a, t))


def _swap_plain(x):
    nd = len(_shape(x))
    return _transpose(x, tuple(range(nd - 2)) + (nd - 1, nd - 2))


def _matmul_vjp_a_plain(g, ans, a, b):
    na, nb = len(_shape(a)), len(_shape(b))
    if na == 1 and nb == 1:
        return xp.multiply(*_weak(g, b))
    if na == 1:
        return xp.matmul(b, g)
    if nb == 1:
        return xp.multiply(*_weak(_reshape(g, _shape(g) + (1,)), b))
    return _plain_unbroadcast(xp.matmul(g, _swap_plain(b)), _shape(a))


def _matmul_vjp_b_plain(g, ans, a, b):
    na, nb = len(_shape(a)), len(_shape(b))
    if na == 1 and nb == 1:
        return xp.multiply(*_weak(g, a))
    if na == 1:
        return xp.multiply(*_weak(_reshape(a, _shape(a) + (1,)), g))
    if nb == 1:
        return xp.matmul(g, a)
    return _plain_unbroadcast(xp.matmul(_swap_plain(a), g), _shape(b))


defvjp_plain(matmul, _matmul_vjp_a_plain, _matmul_vjp_b_plain)


# A dense layer's pre-activation a @ W + b as one node: the rules are matmul's and add's, composed (so
# every result is what matmul followed by add gives, bit for bit), with one node to record instead of two.
def _affine_impl(a, W, b):
    s = a @ W  # the arrays' matmul (every caller passes arrays: the layers and conv2d)
    if _fresh(s) and _fits(b, s):
        s += b  # the product is fresh: add the bias in place, no temporary
        return s
    return xp.add(*_weak(s, b))


affine = Primitive("affine", _affine_impl)  # a @ W + b


def _affine_g(g, a, W):
    """The cotangent of the product a @ W (g summed down where the bias broadcast it up)."""
    return unbroadcast(g, _matmul_shape(a, W))


defvjp(affine, lambda g, ans, a, W, b: _matmul_vjp_a(_affine_g(g, a, W), None, a, W),
       lambda g, ans, a, W, b: _matmul_vjp_b(_affine_g(g, a, W), None, a, W),
       lambda g, ans, a, W, b: unbroadcast(g, shape_of(b)))
defjvp(affine, lambda t, ans, a, W, b: _fit(matmul(t, W), ans), lambda t, ans, a, W, b: _fit(matmul(a, t), ans),
       lambda t, ans, a, W, b: _fit(t, ans))


def _affine_vjp_a_plain(g, ans, a, W, b):
    sa, sW = _shape(a), _shape(W)
    if len(sa) == 2 and len(sW) == 2 and _shape(g) == (sa[0], sW[1]):
        return g @ W.T  # a dense layer: the general rule's steps reduce to this one product
    return _matmul_vjp_a_plain(_plain_unbroadcast(g, _matmul_shape(a, W)), None, a, W)


def _affine_vjp_W_plain(g, ans, a, W, b):
    sa, sW = _shape(a), _shape(W)
    if len(sa) == 2 and len(sW) == 2 and _shape(g) == (sa[0], sW[1]):
        return a.T @ g
    return _matmul_vjp_b_plain(_plain_unbroadcast(g, _matmul_shape(a, W)), None, a, W)


def _affine_vjp_b_plain(g, ans, a, W, b):
    sg, sb = _shape(g), _shape(b)
    if len(sg) == 2 and len(sb) == 1 and sb[0] == sg[1]:
        return _plain_sum(g, axis=0)  # what unbroadcast sums, without its keepdims and reshape
    return _plain_unbroadcast(g, sb)


defvjp_plain(affine, _affine_vjp_a_plain, _affine_vjp_W_plain, _affine_vjp_b_plain)


def dot(x, y):
    """<x, y> summed over every axis."""
    return sum(multiply(x, y))


# ---------------------------------------------------------------------------------------------------
# Elementwise functions.
exp = Primitive("exp", lambda x: xp.exp(x))
defvjp(exp, lambda g, ans, x: multiply(g, ans))
defjvp(exp, lambda t, ans, x: multiply(t, ans))
defvjp_plain(exp, lambda g, ans, x: xp.multiply(*_weak(g, ans)))

log = Primitive("log", lambda x: xp.log(x))
defvjp(log, lambda g, ans, x: divide(g, x))
defjvp(log, lambda t, ans, x: divide(t, x))
defvjp_plain(log, lambda g, ans, x: xp.divide(*_weak(g, x)))

tanh = Primitive("tanh", lambda x: xp.tanh(x))
defvjp(tanh, lambda g, ans, x: multiply(g, subtract(1.0, multiply(ans, ans))))
defjvp(tanh, lambda t, ans, x: multiply(t, subtract(1.0, multiply(ans, ans))))


def _tanh_vjp_plain(g, ans, x):
    d = ans * ans if hasattr(ans, "dtype") else xp.multiply(*_weak(ans, ans))
    if _fresh(d):  # g ⊙ (1 − y²) from the forward output y: three passes over one array
        return _times_fresh(g, xp.subtract(_constant(1.0, d), d, out=d))
    return xp.multiply(*_weak(g, xp.subtract(*_weak(1.0, d))))


defvjp_plain(tanh, _tanh_vjp_plain)


def _sigmoid_impl(x):
    # 0.5 (1 + tanh(x/2)) is exact and never overflows, unlike 1 / (1 + exp(-x)).
    half, one = _weak(x, 0.5)[1], _weak(x, 1.0)[1]
    return half * (xp.tanh(half * x) + one)


sigmoid = Primitive("sigmoid", _sigmoid_impl)
defvjp(sigmoid, lambda g, ans, x: multiply(g, multiply(ans, subtract(1.0, ans))))
defjvp(sigmoid, lambda t, ans, x: multiply(t, multiply(ans, subtract(1.0, ans))))


def _sigmoid_vjp_plain(g, ans, x):
    d = xp.subtract(*_weak(1.0, ans))
    return _times_fresh(g, _times_fresh(ans, d))  # g ⊙ (y ⊙ (1 − y)), both products into d


defvjp_plain(sigmoid, _sigmoid_vjp_plain)


def _softplus_impl(x):
    return xp.logaddexp(*_weak(0.0, x))  # log(1 + e^x) without overflow


softplus = Primitive("softplus", _softplus_impl)
defvjp(softplus, lambda g, ans, x: multiply(g, sigmoid(x)))
defjvp(softplus, lambda t, ans, x: multiply(t, sigmoid(x)))
defvjp_plain(softplus, lambda g, ans, x: _times_fresh(g, _sigmoid_impl(x)))

greater = NonDifferentiable("greater", lambda x, y: xp.greater(x, y))
greater_equal = NonDifferentiable("greater_equal", lambda x, y: xp.greater_equal(x, y))
sign = NonDifferentiable("sign", lambda x: xp.sign(x))


def _mask(cond, like):
    return xp.asarray(cond, dtype=getval(like).dtype)


relu = Primitive("relu", lambda x: xp.maximum(*_weak(x, 0.0)))
defvjp(relu, lambda g, ans, x: multiply(g, _mask(greater(x, 0.0), x)))
defjvp(relu, lambda t, ans, x: multiply(t, _mask(greater(x, 0.0), x)))
defvjp_plain(relu, lambda g, ans, x: _times_fresh(g, _mask(xp.greater(x, 0.0), x)))  # the mask is a fresh copy

sqrt = Primitive("sqrt", lambda x: xp.sqrt(x))
defvjp(sqrt, lambda g, ans, x: divide(g, multiply(2.0, ans)))
defjvp(sqrt, lambda t, ans, x: divide(t, multiply(2.0, ans)))
defvjp_plain(sqrt, lambda g, ans, x: xp.divide(*_weak(g, xp.multiply(*_weak(2.0, ans)))))

sin = Primitive("sin", lambda x: xp.sin(x))
cos = Primitive("cos", lambda x: xp.cos(x))
defvjp(sin, lambda g, ans, x: multiply(g, cos(x)))
defjvp(sin, lambda t, ans, x: multiply(t, cos(x)))
defvjp(cos, lambda g, ans, x: negative(multiply(g, sin(x))))
defjvp(cos, lambda t, ans, x: negative(multiply(t, sin(x))))
defvjp_plain(sin, lambda g, ans, x: _times_fresh(g, xp.cos(x)))
defvjp_plain(cos, lambda g, ans, x: xp.negative(_times_fresh(g, xp.sin(x))))

absolute = Primitive("absolute", lambda x: xp.abs(x))
defvjp(absolute, lambda g, ans, x: multiply(g, sign(x)))
defjvp(absolute, lambda t, ans, x: multiply(t, sign(x)))
defvjp_plain(absolute, lambda g, ans, x: _times_fresh(g, xp.sign(x)))

maximum = Primitive("maximum", lambda x, y: xp.maximum(*_weak(x, y)))


defvjp(maximum, lambda g, ans, x, y: unbroadcast(multiply(g, _mask(greater_equal(x, y), ans)), shape_of(x)),
       lambda g, ans, x, y: unbroadcast(multiply(g, _mask(xp.logical_not(greater_equal(x, y)), ans)), shape_of(y)))
defjvp(maximum, lambda t, ans, x, y: multiply(t, _mask(greater_equal(x, y), ans)),
       lambda t, ans, x, y: multiply(t, _mask(xp.logical_not(greater_equal(x, y)), ans)))
defvjp_plain(maximum,
             lambda g, ans, x, y: _plain_unbroadcast(_times_fresh(g, _mask(xp.greater_equal(x, y), ans)), _shape(x)),
             lambda g, ans, x, y: _plain_unbroadcast(
                 _times_fresh(g, _mask(xp.logical_not(xp.greater_equal(x, y)), ans)), _shape(y)))


def _where_impl(cond, x, y):
    return xp.where(cond, x, y)


where = Primitive("where", _where_impl)  # cond is a constant mask
defvjp(where, None, lambda g, ans, c, x, y: unbroadcast(multiply(g, _mask(c, ans)), shape_of(x)),
       lambda g, ans, c, x, y: unbroadcast(multiply(g, _mask(xp.logical_not(getval(c)), ans)), shape_of(y)))
defjvp(where, None, lambda t, ans, c, x, y: _fit(multiply(t, _mask(c, ans)), ans),
       lambda t, ans, c, x, y: _fit(multiply(t, _mask(xp.logical_not(getval(c)), ans)), ans))


# ---------------------------------------------------------------------------------------------------
# Classification helpers.
def _onehot_impl(labels, num_classes, dtype):
    out = xp.zeros((labels.shape[0], num_classes), dtype=dtype)
    out[xp.arange(labels.shape[0]), labels] = 1.0
    return out


onehot = NonDifferentiable("onehot", _onehot_impl)


def _take_labels_impl(x, labels):
    return x[xp.arange(x.shape[0]), labels]


take_labels = Primitive("take_labels", _take_labels_impl)  # x[b, labels[b]] for x of shape (B, C)
defvjp(take_labels, lambda g, ans, x, labels: multiply(
    reshape(g, (shape_of(g)[0], 1)), onehot(labels, shape_of(x)[1], getval(x).dtype)))
defvjp_plain(take_labels, lambda g, ans, x, labels: _times_fresh(
    _reshape(g, (_shape(g)[0], 1)), _onehot_impl(labels, _shape(x)[1], x.dtype)))
defjvp(take_labels, lambda t, ans, x, labels: take_labels(t, labels))


def _logsumexp_impl(x, axis=-1, keepdims=False):
    m = x.max(axis=axis, keepdims=True) if hasattr(x, "max") else xp.max(x, axis=axis, keepdims=True)
    out = xp.log(_plain_sum(xp.exp(x - m), axis=axis, keepdims=True)) + m
    return out if keepdims else out.squeeze(axis=axis)


logsumexp = Primitive("logsumexp", _logsumexp_impl)


def _lse_softmax(ans, x, axis, keepdims):
    lse = ans if keepdims else reshape(ans, _keepdims_shape(shape_of(x), axis))
    return exp(subtract(x, lse))


def _lse_vjp(g, ans, x, axis=-1, keepdims=False):
    if not keepdims:
        g = reshape(g, _keepdims_shape(shape_of(x), axis))
    return multiply(g, _lse_softmax(ans, x, axis, keepdims))


defvjp(logsumexp, _lse_vjp)


def _lse_vjp_plain(g, ans, x, axis=-1, keepdims=False):
    lse = ans
    if not keepdims:
        shape = _keepdims_shape(_shape(x), axis)
        g, lse = _reshape(g, shape), _reshape(ans, shape)
    return _times_fresh(g, xp.exp(x - lse if _arrays(x, lse) else xp.subtract(*_weak(x, lse))))


defvjp_plain(logsumexp, _lse_vjp_plain)
defjvp(logsumexp, lambda t, ans, x, axis=-1, keepdims=False: sum(
    multiply(t, _lse_softmax(ans, x, axis, keepdims)), axis=axis, keepdims=keepdims))


def log_softmax(x, axis=-1):
    """x - logsumexp(x): log-probabilities of a softmax."""
    return subtract(x, logsumexp(x, axis=axis, keepdims=True))


def softmax(x, axis=-1):
    """exp(log_softmax(x)), stable for large logits."""
    return exp(log_softmax(x, axis=axis))


def mean(x, axis=None, keepdims=False):
    """Arithmetic mean over ``axis`` (a composite of sum and divide)."""
    shape = shape_of(x)
    axes = _reduced_axes(shape, axis)
    return divide(sum(x, axis=axis, keepdims=keepdims), float(math.prod(shape[a] for a in axes)))


def _stop_gradient_impl(x):
    return x


stop_gradient = NonDifferentiable("stop_gradient", _stop_gradient_impl)


# ---------------------------------------------------------------------------------------------------
# Softmax cross-entropy as one node: s · Σ_b (logsumexp(z_b) − z_b[labels_b]) with s = 1/B ("mean") or 1
# ("sum"), the loss nn.losses composes from five nodes (logsumexp, take_labels, subtract, sum, divide).
# Its value is that composition's, call for call, and its rules are the five nodes' rules chained in the
# order a sweep of the composition runs them, so every derivative, nested ones included, is the
# composition's to the bit; the derivative is s·g·(softmax(z) − onehot(labels)) and the Hessian
# s·(diag(p_b) − p_b p_bᵀ) per example. Only the plain rule has a shortcut (see there).
_SCE_REDUCTIONS = ("mean", "sum")


def _sce_impl_saving(z, labels, reduction="mean"):
    """(the loss, the per-example logsumexp (B,)): a plain node keeps the latter for its vjp rules."""
    if reduction not in _SCE_REDUCTIONS:
        raise ValueError(f"softmax_cross_entropy: reduction must be one of {_SCE_REDUCTIONS}, got {reduction!r}")
    lse = _logsumexp_impl(z, axis=1)
    total = _sum_impl(xp.subtract(lse, _take_labels_impl(z, labels)))
    return (xp.divide(*_weak(total, float(z.shape[0]))) if reduction == "mean" else total), lse


def _sce_impl(z, labels, reduction="mean"):
    return _sce_impl_saving(z, labels, reduction)[0]


# (z (B, C), integer labels (B,), reduction); a plain node keeps logsumexp(z) for its sweeps (``impl_saving``)
softmax_cross_entropy = Primitive("softmax_cross_entropy", _sce_impl, impl_saving=_sce_impl_saving)


def _sce_chain(rule, s, ans, z, labels, lse):
    """The composition's sweep below its divide node, from the cotangent s of the summed losses: sum's,
    subtract's, then take_labels' before logsumexp's rule (the order ``core.backward`` reaches them), the two
    cotangents of z added in that order. ``rule(prim, i)`` picks the primitive or the plain rule. The rules
    read only the shapes of the nodes they skip: ``ans`` (shape ()) stands in for the sum, ``lse`` (the
    per-example logsumexp, shape (B,)) for the per-example losses."""
    s = rule(sum, 0)(s, ans, lse)
    picked = rule(take_labels, 0)(rule(subtract, 1)(s, lse, lse, lse), lse, z, labels)
    return add(picked, rule(logsumexp, 0)(rule(subtract, 0)(s, lse, lse, lse), lse, z, axis=1))


def _sce_vjp(g, ans, z, labels, reduction="mean", saved=None):
    # saved (the raw forward logsumexp) only on a plain node, where z is raw and logsumexp(z) gives those bits
    s = divide.vjps[0](g, ans, ans, float(shape_of(z)[0])) if reduction == "mean" else g
    return _sce_chain(lambda prim, i: prim.vjps[i], s, ans, z, labels,
                      logsumexp(z, axis=1) if saved is None else saved)


def _sce_vjp_plain(g, ans, z, labels, reduction="mean", saved=None):
    s = _divide_vjp_x_plain(g, ans, ans, float(z.shape[0])) if reduction == "mean" else g
    lse = _logsumexp_impl(z, axis=1) if saved is None else saved  # the forward's: the same bits, not recomputed
    if getattr(s, "dtype", None) == z.dtype and _shape(s) == () and not hasattr(s, "get") and 0.0 < s < math.inf:
        # A positive finite host scalar (an ordinary gradient; CuPy's .get() marks a device value, whose
        # comparison would wait for the device): the composition's onehot·(−s) + s·p is then s·p − s at the
        # labels and −0 + s·p = s·p elsewhere, bit for bit, so it is made in one buffer. With s ≤ 0, ±inf
        # or NaN the onehot's zeros matter (−s·0 = +0 for s < 0, and +0 + −0 = +0; ∞·0 = NaN), and the
        # parts' plain rules run.
        p = xp.exp(z - _reshape(lse, (z.shape[0], 1)))  # softmax(z), as logsumexp's plain rule
        xp.multiply(s, p, out=p)
        p[xp.arange(z.shape[0]), labels] -= s
        return p
    return _sce_chain(lambda prim, i: prim.plain_vjps.get(i) or prim.vjps[i], s, ans, z, labels, lse)


def _sce_jvp(t, ans, z, labels, reduction="mean"):
    # The composition's forward rules: logsumexp's and take_labels', subtract's (added in argument order, as
    # Primitive.__call__ adds them), sum's, divide's; lse (shape (B,)) stands in for the per-example nodes.
    lse = logsumexp(z, axis=1)
    t = add(subtract.jvps[0](logsumexp.jvps[0](t, lse, z, axis=1), lse, lse, lse),
            subtract.jvps[1](take_labels.jvps[0](t, lse, z, labels), lse, lse, lse))
    t = sum.jvps[0](t, ans, lse)
    return divide.jvps[0](t, ans, ans, float(shape_of(z)[0])) if reduction == "mean" else t


defvjp(softmax_cross_entropy, _sce_vjp)
defvjp_plain(softmax_cross_entropy, _sce_vjp_plain)
defjvp(softmax_cross_entropy, _sce_jvp)


# ---------------------------------------------------------------------------------------------------
# Convolution and pooling (PyTorch's layouts: x is NCHW, a kernel OIHW), by unfolding patches (im2col).
#
# ``unfold`` maps x (N, C, H, W) to its patches (N, L, K): L = Ho·Wo output locations in row-major (y, x)
# order, K = C·kh·kw patch entries in (c, i, j) order, the order of an OIHW kernel's rows
# W.reshape(O, K). It is torch.nn.functional.unfold transposed (that one returns (N, K, L)).
# Entry [n, y·Wo + x, (c·kh + i)·kw + j] = x_padded[n, c, y·sh + i·dh, x·sw + j·dw]. ``fold`` is its
# transpose (col2im): it adds every patch entry back onto the input position it was read from, so
# overlapping windows sum. unfold is linear in x (the padding is a constant: zeros, or −inf for max
# pooling), so its jvp is unfold of the tangent and its vjp is fold; fold's are unfold and fold. Both are
# written with each other, so derivatives of any order nest. The only loop is over the kh·kw offsets.
class ConvGeometry(NamedTuple):
    """A convolution's or pooling's spatial geometry, normalised (``conv_geometry``); pairs are (rows, columns)."""

    input: tuple     # (H, W), unpadded
    kernel: tuple    # (kh, kw)
    stride: tuple    # (sh, sw)
    padding: tuple   # (top, bottom, left, right)
    dilation: tuple  # (dh, dw)
    output: tuple    # (Ho, Wo) = (⌊(H + top + bottom − dh(kh − 1) − 1) / sh⌋ + 1, likewise for W)


_show = short_repr  # the one value-display helper (a huge integer by its digits)


def _int_pair(value, name: str, what: str, minimum: int) -> tuple:
    """(a, b) from an integer or a pair of integers, each ≥ ``minimum``; ValueError naming ``name`` otherwise."""
    items = tuple(value) if isinstance(value, (tuple, list)) else (value, value)
    if len(items) != 2 or any(isinstance(v, bool) or not isinstance(v, numbers.Integral) for v in items):
        raise ValueError(f"{what}: {name} must be an integer or a pair of integers, got {_show(value)}")
    if any(v < minimum for v in items):
        raise ValueError(f"{what}: {name} must be ≥ {minimum}, got {_show(value)}")
    return int(items[0]), int(items[1])


def conv_geometry(size, kernel_size, stride=1, padding=0, dilation=1, what: str = "conv2d",
                  pool: bool = False) -> ConvGeometry:
    """The checked geometry of a window of ``kernel_size`` sliding over an input of spatial ``size`` (H, W).

    ``stride``, ``dilation``: integers ≥ 1 or pairs. ``padding``: an integer ≥ 0 or a pair (each side of
    that axis gets it), "valid" (no padding) or "same": the output has the input's size, with the total
    padding d(k − 1) of an axis split as ⌊d(k − 1)/2⌋ before and the rest after (so an even kernel pads one
    more at the bottom and the right, as PyTorch and TensorFlow do); "same" needs stride 1, as in PyTorch.
    ``pool``: the pooling rule of PyTorch, padding at most half the kernel (⌊k/2⌋). ValueError, naming
    ``what`` and the argument, for anything else and for a (dilated) kernel larger than the padded input.
    """
    H, W = _int_pair(size, "the input size", what, 1)
    kernel = _int_pair(kernel_size, "kernel_size", what, 1)
    stride = _int_pair(stride, "stride", what, 1)
    dilation = _int_pair(dilation, "dilation", what, 1)
    if isinstance(padding, str) and pool:
        raise ValueError(f"{what}: padding must be an integer or a pair of integers (no 'same' or 'valid' for a "
                         f"pooling, as in PyTorch), got {_show(padding)}")
    if isinstance(padding, str):
        if padding == "valid":
            pads = (0, 0, 0, 0)
        elif padding == "same":
            if stride != (1, 1):
                raise ValueError(f"{what}: padding='same' needs stride 1 (as in PyTorch), got stride {stride}")
            th, tw = dilation[0] * (kernel[0] - 1), dilation[1] * (kernel[1] - 1)
            pads = (th // 2, th - th // 2, tw // 2, tw - tw // 2)
        else:
            raise ValueError(f"{what}: padding must be an integer, a pair of integers, 'same' or 'valid', got "
                             f"{_show(padding)}")
    else:
        ph, pw = _int_pair(padding, "padding", what, 0)
        if pool and (ph > kernel[0] // 2 or pw > kernel[1] // 2):
            raise ValueError(f"{what}: padding must be at most half the kernel size (as in PyTorch), got padding "
                             f"{(ph, pw)} for kernel_size {kernel}")
        pads = (ph, ph, pw, pw)
    Hp, Wp = H + pads[0] + pads[1], W + pads[2] + pads[3]
    eh, ew = dilation[0] * (kernel[0] - 1) + 1, dilation[1] * (kernel[1] - 1) + 1
    if eh > Hp or ew > Wp:
        raise ValueError(f"{what}: the kernel ({eh}×{ew} with dilation) is larger than the padded input ({Hp}×{Wp}): "
                         "the output would be empty")
    return ConvGeometry((H, W), kernel, stride, pads, dilation,
                        ((Hp - eh) // stride[0] + 1, (Wp - ew) // stride[1] + 1))


def _offsets(geom: ConvGeometry):
    """For each kernel offset (i, j): the slices of the padded input that it reads at every output location."""
    (kh, kw), (sh, sw), (dh, dw), (Ho, Wo) = geom.kernel, geom.stride, geom.dilation, geom.output
    for i in range(kh):
        for j in range(kw):
            yield i, j, slice(i * dh, i * dh + sh * (Ho - 1) + 1, sh), slice(j * dw, j * dw + sw * (Wo - 1) + 1, sw)


def _check_spatial(x, geom: ConvGeometry, what: str) -> None:
    shape = _shape(x)
    if len(shape) != 4 or tuple(shape[2:]) != geom.input:
        raise ValueError(f"{what}: expected an input of shape (N, C, {geom.input[0]}, {geom.input[1]}), got {shape}")


def _unfold_impl(x, geom, pad_value=0.0):
    _check_spatial(x, geom, "unfold")
    N, C = x.shape[:2]
    (kh, kw), (Ho, Wo), (top, bottom, left, right) = geom.kernel, geom.output, geom.padding
    if top or bottom or left or right:
        x = xp.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)), constant_values=pad_value)
    # Each offset's block is copied whole (contiguous writes), then one transposing copy makes the (N, L, K)
    # layout: about 3× faster than writing every offset strided into that layout. The copy is made here, C
    # order, so that the (N·L, K) views of the conv layer's matmul and of K-FAC's factors need no other one.
    cols = xp.empty((N, C, kh, kw, Ho, Wo), dtype=x.dtype)
    for i, j, rows, columns in _offsets(geom):
        cols[:, :, i, j] = x[:, :, rows, columns]
    return xp.ascontiguousarray(cols.transpose(0, 4, 5, 1, 2, 3)).reshape(N, Ho * Wo, C * kh * kw)


def _fold_impl(cols, channels, geom):
    N = _shape(cols)[0]
    (H, W), (kh, kw), (Ho, Wo), (top, bottom, left, right) = geom.input, geom.kernel, geom.output, geom.padding
    if tuple(_shape(cols)) != (N, Ho * Wo, channels * kh * kw):
        raise ValueError(f"fold: expected patches of shape (N, {Ho * Wo}, {channels * kh * kw}), got {_shape(cols)}")
    out = xp.zeros((N, channels, H + top + bottom, W + left + right), dtype=cols.dtype)
    # (N, C, kh, kw, Ho, Wo) in one transposing copy, so that each offset adds a contiguous block
    patches = xp.ascontiguousarray(cols.reshape(N, Ho, Wo, channels, kh, kw).transpose(0, 3, 4, 5, 1, 2))
    for i, j, rows, columns in _offsets(geom):  # offsets in a fixed order: the sums' rounding is fixed too
        out[:, :, rows, columns] += patches[:, :, i, j]
    return out[:, :, top:top + H, left:left + W]


def _unfold_shape(x, geom, pad_value=0.0):
    return (shape_of(x)[0], geom.output[0] * geom.output[1], shape_of(x)[1] * geom.kernel[0] * geom.kernel[1])


def _fold_shape(cols, channels, geom):
    return (shape_of(cols)[0], channels) + tuple(geom.input)


# Neither's jvp reads its output, so forward mode may defer the primal (see core.Primitive).
unfold = Primitive("unfold", _unfold_impl, lazy_shape=_unfold_shape)  # x (N, C, H, W) -> patches (N, L, K)
fold = Primitive("fold", _fold_impl, lazy_shape=_fold_shape)  # patches (N, L, K) -> (N, C, H, W), summed
defvjp(unfold, lambda g, ans, x, geom, pad_value=0.0: fold(g, shape_of(x)[1], geom))
defjvp(unfold, lambda t, ans, x, geom, pad_value=0.0: unfold(t, geom))  # the padding constant has no tangent
defvjp(fold, lambda g, ans, cols, channels, geom: unfold(g, geom))
defjvp(fold, lambda t, ans, cols, channels, geom: fold(t, channels, geom))
# On raw arrays the rules are the other primitive's impl, so the plain rules are that impl, called directly.
defvjp_plain(unfold, lambda g, ans, x, geom, pad_value=0.0: _fold_impl(g, _shape(x)[1], geom))
defvjp_plain(fold, lambda g, ans, cols, channels, geom: _unfold_impl(g, geom))


def _check_floating(what: str, **arrays) -> None:
    """TypeError unless every array is float32 or float64 and all share one dtype (no silent promotion)."""
    dtypes = {name: getattr(getval(a), "dtype", None) for name, a in arrays.items()}
    for name, dt in dtypes.items():
        if getattr(dt, "kind", None) != "f" or getattr(dt, "itemsize", 0) < 4:
            got = dt if dt is not None else type(getval(arrays[name])).__name__
            raise TypeError(f"{what}: {name} must be a float32 or float64 array, got {got}")
    if len(set(dtypes.values())) > 1:
        raise TypeError(f"{what}: expected one dtype, got " + ", ".join(f"{n} {d}" for n, d in dtypes.items()))


def _check_rank4(x, name: str, what: str, layout: str):
    shape = tuple(shape_of(x))
    if len(shape) != 4 or min(shape) < 1:
        raise ValueError(f"{what}: {name} must be a non-empty 4-D array {layout}, got shape {shape}")
    return shape


def conv2d(x, W, b=None, stride=1, padding=0, dilation=1, groups=1):
    """2-D cross-correlation, as torch.nn.functional.conv2d: x (N, C, H, W), kernel W (O, C, kh, kw), bias b (O,).

    out[n, o, y, x] = b[o] + Σ_{c,i,j} W[o, c, i, j] · x_padded[n, c, y·sh + i·dh, x·sw + j·dw], computed as
    one matrix product of the patches: affine(unfold(x) as (N·L, K), W.reshape(O, K)ᵀ, b), shape (N, O, Ho, Wo).
    ``stride``, ``padding``, ``dilation`` as in ``conv_geometry``; ``groups`` must be 1. NHWC inputs and HWIO
    kernels (JAX/flax) convert with ``nhwc_to_nchw`` and ``hwio_to_oihw``.
    """
    if isinstance(groups, bool) or not isinstance(groups, numbers.Integral) or groups != 1:
        raise ValueError(f"conv2d: groups must be 1 (grouped convolutions are not supported), got {_show(groups)}")
    N, C, H, Wd = _check_rank4(x, "x", "conv2d", "(N, C, H, W)")
    O, Ck, kh, kw = _check_rank4(W, "W", "conv2d", "(O, C, kh, kw) (OIHW; hwio_to_oihw converts HWIO)")
    if C != Ck:
        raise ValueError(f"conv2d: x has {C} channels but W of shape {(O, Ck, kh, kw)} expects {Ck}")
    if b is not None and tuple(shape_of(b)) != (O,):
        raise ValueError(f"conv2d: b must have shape ({O},), one bias per output channel, got {tuple(shape_of(b))}")
    _check_floating("conv2d", **({"x": x, "W": W} if b is None else {"x": x, "W": W, "b": b}))
    geom = conv_geometry((H, Wd), (kh, kw), stride, padding, dilation, "conv2d")
    return locations_to_nchw(conv2d_locations(x, W, b, geom)[1], geom)


def conv2d_locations(x, W, b, geom):
    """``conv2d`` at every output location, before the NCHW layout: (patches (N, L, K), s (N, L, O)) with
    s[n, l] = patches[n, l] W.reshape(O, K)ᵀ + b, for x, W, b already checked and ``geom`` their
    ``conv_geometry``. What a network needs that records the patches or perturbs s (``nn.conv.CNN``)."""
    N, O = shape_of(x)[0], shape_of(W)[0]
    patches = unfold(x, geom)
    L, K = shape_of(patches)[1:]
    rows = reshape(patches, (N * L, K))
    kernel = transpose(reshape(W, (O, K)))  # (K, O)
    s = matmul(rows, kernel) if b is None else affine(rows, kernel, b)
    return patches, reshape(s, (N, L, O))


def locations_to_nchw(s, geom):
    """s (N, L, O) at the L = Ho·Wo output locations of ``geom`` (row-major) as images (N, O, Ho, Wo)."""
    N, _, O = shape_of(s)
    return transpose(reshape(s, (N, *geom.output, O)), (0, 3, 1, 2))


def _pool_windows(x, kernel_size, stride, padding, dilation, what, pad_value):
    """(windows, the axes of a window, geometry) of a pooling. Windows that tile the input (stride = kernel,
    no padding, no dilation: the usual 2×2 pooling) are a reshape, (N, C, Ho, kh, Wo, kw) with axes (3, 5),
    the rows and columns a window leaves over cut off first; any other geometry unfolds each channel on
    its own, (N, C, Ho, Wo, kh·kw) with axis 4."""
    N, C, H, W = _check_rank4(x, "x", what, "(N, C, H, W)")
    _check_floating(what, x=x)
    geom = conv_geometry((H, W), kernel_size, kernel_size if stride is None else stride, padding, dilation, what,
                         pool=True)
    (kh, kw), (Ho, Wo) = geom.kernel, geom.output
    if geom.stride == geom.kernel and geom.dilation == (1, 1) and not any(geom.padding):
        if (Ho * kh, Wo * kw) != (H, W):
            x = getitem(x, (slice(None), slice(None), slice(0, Ho * kh), slice(0, Wo * kw)))
        return reshape(x, (N, C, Ho, kh, Wo, kw)), (3, 5), geom
    patches = unfold(reshape(x, (N * C, 1, H, W)), geom, pad_value=pad_value)  # (N·C, L, kh·kw)
    return reshape(patches, (N, C, Ho, Wo, kh * kw)), (4,), geom


def avg_pool2d(x, kernel_size, stride=None, padding=0):
    """Average pooling, as torch.nn.functional.avg_pool2d with its defaults: the mean over each window, the
    zero padding counted (count_include_pad=True), floor of the output size; ``stride`` defaults to the
    kernel size. x (N, C, H, W) -> (N, C, Ho, Wo)."""
    windows, axes, geom = _pool_windows(x, kernel_size, stride, padding, 1, "avg_pool2d", 0.0)
    return divide(sum(windows, axis=axes), float(geom.kernel[0] * geom.kernel[1]))


def max_pool2d(x, kernel_size, stride=None, padding=0, dilation=1):
    """Max pooling, as torch.nn.functional.max_pool2d (padding with −inf, floor of the output size; ``stride``
    defaults to the kernel size). x (N, C, H, W) -> (N, C, Ho, Wo).

    Tie rule: the first maximum of each window in row-major (i, j) window order takes the window's whole
    cotangent (and tangent), as PyTorch's kernels do (they replace the running maximum only on a strictly
    greater value). A window with a NaN returns NaN and routes to its first NaN (PyTorch: its last). The
    choice is a constant mask, so second derivatives through the pooling are zero.
    """
    windows, axes, geom = _pool_windows(x, kernel_size, stride, padding, dilation, "max_pool2d", -math.inf)
    raw, kk = getval(windows), geom.kernel[0] * geom.kernel[1]
    if axes == (3, 5):  # (N, C, Ho, kh, Wo, kw): the window's entries in row-major order, as a copy
        N, C, Ho, kh, Wo, kw = raw.shape
        raw = raw.transpose(0, 1, 2, 4, 3, 5).reshape(N, C, Ho, Wo, kk)
    first = xp.argmax(raw, axis=-1)  # NumPy and CuPy: the first occurrence of the maximum (a NaN counts as one)
    chosen = xp.arange(kk) == first[..., None]
    if axes == (3, 5):
        chosen = chosen.reshape(N, C, Ho, Wo, kh, kw).transpose(0, 1, 2, 4, 3, 5)
    # where, not multiply by the mask: 0 · (−inf) of the padding would be NaN
    return sum(where(chosen, windows, 0.0), axis=axes)


def flatten(x):
    """(N, d₁, d₂, ...) -> (N, d₁·d₂·...) in C order, the order (c, y, x) of torch.nn.Flatten() on NCHW."""
    shape = tuple(shape_of(x))
    if len(shape) < 2:
        raise ValueError(f"flatten: expected an array with a batch axis and at least one more, got shape {shape}")
    return reshape(x, (shape[0], math.prod(shape[1:])))


def nhwc_to_nchw(x):
    """JAX/flax/TensorFlow image batches (N, H, W, C) in PyTorch's and refopt's layout (N, C, H, W)."""
    _check_rank4(x, "x", "nhwc_to_nchw", "(N, H, W, C)")
    return transpose(x, (0, 3, 1, 2))


def nchw_to_nhwc(x):
    """The inverse of ``nhwc_to_nchw``: (N, C, H, W) -> (N, H, W, C)."""
    _check_rank4(x, "x", "nchw_to_nhwc", "(N, C, H, W)")
    return transpose(x, (0, 2, 3, 1))


def hwio_to_oihw(W):
    """A JAX/flax kernel (kh, kw, C, O) in PyTorch's and refopt's layout (O, C, kh, kw). Both libraries compute
    the same cross-correlation (no kernel flip), so only the axes move."""
    _check_rank4(W, "W", "hwio_to_oihw", "(kh, kw, C, O)")
    return transpose(W, (3, 2, 0, 1))


def oihw_to_hwio(W):
    """The inverse of ``hwio_to_oihw``: (O, C, kh, kw) -> (kh, kw, C, O)."""
    _check_rank4(W, "W", "oihw_to_hwio", "(O, C, kh, kw)")
    return transpose(W, (2, 3, 1, 0))


# ---------------------------------------------------------------------------------------------------
# Operators on boxes, so traced code reads like NumPy code.
def _install_operators():
    def rev(f):
        return lambda self, other: f(other, self)

    Box.__add__ = lambda s, o: add(s, o)
    Box.__radd__ = rev(add)
    Box.__sub__ = lambda s, o: subtract(s, o)
    Box.__rsub__ = rev(subtract)
    Box.__mul__ = lambda s, o: multiply(s, o)
    Box.__rmul__ = rev(multiply)
    Box.__truediv__ = lambda s, o: divide(s, o)
    Box.__rtruediv__ = rev(divide)
    Box.__matmul__ = lambda s, o: matmul(s, o)
    Box.__rmatmul__ = rev(matmul)
    Box.__neg__ = lambda s: negative(s)
    Box.__pow__ = lambda s, c: power(s, c)
    Box.__gt__ = lambda s, o: greater(s, o)
    Box.__lt__ = lambda s, o: greater(o, s)
    Box.T = property(lambda s: transpose(s))
    Box.reshape = lambda s, *shape: reshape(s, shape[0] if len(shape) == 1 and isinstance(shape[0], tuple)
                                            else tuple(shape))
    Box.sum = lambda s, axis=None, keepdims=False: sum(s, axis=axis, keepdims=keepdims)
    Box.__getitem__ = lambda s, index: getitem(s, _check_index(index))
    Box.__iter__ = _iterate
    Box.__abs__ = lambda s: absolute(s)
    Box.__array_ufunc__ = _array_ufunc
    Box.__array_function__ = _array_function


def _iterate(box):
    if not box.shape:
        raise TypeError("iteration over a 0-d traced array")
    return (getitem(box, i) for i in range(box.shape[0]))


# ---------------------------------------------------------------------------------------------------
# NumPy's dispatch protocols (NEP 13, NEP 18): np.exp(box), np.sum(box), ndarray @ box call the primitives.
def _np_dot(a, b):
    if len(shape_of(a)) == 0 or len(shape_of(b)) == 0:
        return multiply(a, b)
    if len(shape_of(a)) <= 2 and len(shape_of(b)) <= 2:
        return matmul(a, b)
    raise TypeError("numpy.dot of traced values supports operands of at most 2 dimensions; use matmul")


def _np_power(x, c):
    if isinstance(c, Box):
        raise TypeError("numpy.power of traced values needs a constant exponent")
    return power(x, c)


def _np_reshape(a, shape=None, newshape=None):
    shape = newshape if shape is None else shape
    return reshape(a, (shape,) if isinstance(shape, numbers.Integral) else tuple(shape))


_UFUNCS = {  # NumPy ufunc name -> primitive (ufuncs called plainly: no out=, where=, dtype=, reductions)
    "add": add, "subtract": subtract, "multiply": multiply, "divide": divide, "true_divide": divide,
    "negative": negative, "power": _np_power, "matmul": matmul, "exp": exp, "log": log, "tanh": tanh,
    "sqrt": sqrt, "square": square, "sin": sin, "cos": cos, "absolute": absolute, "maximum": maximum,
    "greater": greater, "less": lambda x, y: greater(y, x), "greater_equal": greater_equal, "sign": sign,
}
_FUNCTIONS = {  # NumPy function name -> (implementation, keyword arguments it accepts)
    "sum": (sum, ("axis", "keepdims")), "mean": (mean, ("axis", "keepdims")), "dot": (_np_dot, ()),
    "matmul": (matmul, ()), "reshape": (_np_reshape, ("newshape", "shape")),
    "transpose": (transpose, ("axes",)), "where": (where, ()), "broadcast_to": (broadcast_to, ("shape",)),
    "square": (square, ()), "sqrt": (sqrt, ()), "exp": (exp, ()), "log": (log, ()), "tanh": (tanh, ()),
    "abs": (absolute, ()), "absolute": (absolute, ()), "maximum": (maximum, ()),
}
from . import numpy_ops as _numpy_ops  # noqa: E402 - max, prod, clip, stack, ...: built on the primitives above
_UFUNCS.update(_numpy_ops.UFUNCS)
_FUNCTIONS.update(_numpy_ops.FUNCTIONS)
NUMPY_SUPPORTED = tuple(sorted(set(_UFUNCS) | set(_FUNCTIONS)))  # what a traced function may call from NumPy


def _unsupported(what: str):
    return TypeError(f"{what} is not supported on values traced by refopt's autodiff; supported NumPy "
                     f"operations: {', '.join(NUMPY_SUPPORTED)} (and the operators + - * / ** @, indexing)")


def _array_ufunc(self, ufunc, method, *inputs, **kwargs):
    prim = _UFUNCS.get(ufunc.__name__)
    if prim is None or method != "__call__" or any(v is not None for v in kwargs.values()):
        name = f"numpy.{ufunc.__name__}" + ("" if method == "__call__" else f".{method}")
        if prim is not None and method == "__call__":
            name += " with " + ", ".join(f"{k}=" for k, v in kwargs.items() if v is not None)
        raise _unsupported(name)
    return prim(*inputs)


def _array_function(self, func, types, args, kwargs):
    entry = _FUNCTIONS.get(func.__name__)
    module = getattr(func, "__module__", None) or "numpy"
    if entry is None or module not in ("numpy", "numpy.core.fromnumeric", "numpy._core.fromnumeric",
                                       "numpy.core.multiarray", "numpy._core.multiarray"):
        raise _unsupported(f"{module}.{func.__name__}")  # e.g. numpy.linalg.norm, numpy.prod
    impl, allowed = entry
    extra = sorted(k for k in kwargs if k not in allowed)
    if extra:
        raise _unsupported(f"numpy.{func.__name__} with " + ", ".join(f"{k}=" for k in extra))
    return impl(*args, **kwargs)


_install_operators()
