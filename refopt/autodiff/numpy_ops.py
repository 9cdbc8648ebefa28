"""NumPy operations for plain Python functions, built on the primitives: ``amax`` / ``amin``, ``prod``,
``minimum``, ``clip``, ``concatenate`` / ``stack``, ``logaddexp``, and the array methods of boxes
(``x.copy()``, ``x.dot(y)``, ``x.astype(dtype)``, ``x.ravel()``, ``x.flatten()``, ``x.transpose()``,
``x.mean()``, ``x.max()``, ``x.min()``, ``x.prod()``, ``x.clip()``) and the comparisons ``<=`` / ``>=``.

``primitives.py`` adds the functions to its NumPy dispatch tables, so ``np.max(x)``, ``np.prod(x)``,
``np.clip(x, 0, 1)``, ``np.stack([x[0], x[1]])``, ``np.concatenate([a, x])``, ``np.minimum``,
``np.logaddexp`` on traced values call them. Every rule is written with primitives, so derivatives nest.

Conventions:

* ``amax`` / ``amin`` (``np.max``, ``np.amax``, ``np.min``, ``np.amin``) send the whole cotangent (and
  tangent) of each reduced slice to its *first* extreme entry in row-major order of the reduced axes:
  ``maximum``'s tie rule (the first argument) carried over to a reduction, as ``max_pool2d``'s. HIPS
  autograd and JAX split a tie equally instead. A NaN counts as the extreme (NumPy's ``argmax``): the slice
  returns NaN and routes to its first NaN. The value is NumPy's own (signed zeros included); the choice is a
  constant mask, so second derivatives are zero.
* ``minimum(x, y)`` sends the cotangent to ``x`` on ties (``x <= y``), as ``maximum`` does on ``x >= y``.
* ``clip(x, lo, hi) = minimum(maximum(x, lo), hi)``, NumPy's definition (``hi`` where ``lo > hi``): its
  derivative in ``x`` is 1 on ``lo <= x <= hi``, the bounds included (the two tie rules), 0 outside.
  autograd's ``clip`` has 0 at the bounds.
* ``prod``: ∂/∂x_i ∏_j x_j = ∏_{j≠i} x_j, computed as ``ans / x_i`` where no factor of the slice is zero
  (the identity holds near such a point, so it nests), else as the product of the slice with x_i replaced
  by 1 (K² work for a slice of K factors, K³ for its derivative): exact with zeros, where ans / x would
  be NaN.
* ``concatenate`` is one variadic primitive: the vjp of piece i is its slice of the cotangent (``getitem``),
  the jvp its tangent placed into zeros of the output's shape (``scatter``), so forward mode costs one
  output-sized array per traced piece. ``stack`` concatenates the pieces with a new axis.
* ``logaddexp(x, y) = log(e^x + e^y)`` (NumPy's ufunc, no overflow); derivatives e^{x−ans}, e^{y−ans}.
* ``x.copy()`` is the box itself (boxes are immutable); ``x.astype(dtype)`` is the box for its own dtype
  and a TypeError for any other (a cast to an integer or boolean type loses the derivative, one to another
  floating type mixes dtypes, which refopt keeps apart: convert the input before differentiating).
"""
from __future__ import annotations

import builtins
import math
import numbers

from ..backend import xp
from .core import Box, Primitive, defjvp, defjvp_variadic, defvjp, defvjp_variadic, getval
from .primitives import (_fit, _mask, _np_dot, _reduced_axes, _weak, broadcast_to, divide, exp, getitem, greater_equal,
                         maximum, mean, multiply, reshape, scatter, shape_of, subtract, sum, transpose, unbroadcast,
                         where)

__all__ = ["amax", "amin", "prod", "minimum", "clip", "concatenate", "stack", "logaddexp", "UFUNCS", "FUNCTIONS"]


# ---------------------------------------------------------------------------------------------------
# Reductions over any axes, as a reduction over the last axis of a transposed, reshaped view.
def _reduce(last_axis_op, x, axis, keepdims):
    """``last_axis_op`` (a reduction over the last axis) applied over ``axis`` of ``x``, NumPy's shapes."""
    shape = tuple(shape_of(x))
    axes = _reduced_axes(shape, axis)
    kept = tuple(i for i in range(len(shape)) if i not in axes)
    perm = kept + axes
    y = x if perm == tuple(range(len(shape))) else transpose(x, perm)
    lead = tuple(shape[i] for i in kept)
    if len(axes) != 1:
        y = reshape(y, lead + (math.prod(shape[a] for a in axes),))
    out = last_axis_op(y)
    return reshape(out, tuple(1 if i in axes else d for i, d in enumerate(shape))) if keepdims else out


def _first_extreme(raw, kind):
    """The constant mask of each last-axis slice's first maximum (or minimum); a NaN counts as one."""
    if raw.shape[-1] == 0:
        raise ValueError(f"zero-size array to reduction operation {'maximum' if kind == 'max' else 'minimum'} "
                         "which has no identity")
    first = xp.argmax(raw, axis=-1) if kind == "max" else xp.argmin(raw, axis=-1)  # the first occurrence
    return xp.arange(raw.shape[-1]) == first[..., None]


def _extreme_impl(x, kind):
    _first_extreme(x, kind)  # the same refusal of an empty slice as the rules
    return xp.max(x, axis=-1) if kind == "max" else xp.min(x, axis=-1)  # NumPy's value, NaN and −0.0 included


_extreme_last = Primitive("extreme_last", _extreme_impl)  # max or min over the last axis


def _extreme_vjp(g, ans, x, kind):
    shape = tuple(shape_of(x))
    # where, not a product with the mask: 0 · inf would be NaN
    return where(_first_extreme(getval(x), kind), broadcast_to(reshape(g, shape[:-1] + (1,)), shape), 0.0)


defvjp(_extreme_last, _extreme_vjp)
defjvp(_extreme_last, lambda t, ans, x, kind: sum(where(_first_extreme(getval(x), kind), t, 0.0), axis=-1))


def amax(x, axis=None, keepdims=False):
    """The maximum over ``axis``, as ``numpy.max``; the first maximum of a slice takes its derivative."""
    return _reduce(lambda y: _extreme_last(y, "max"), x, axis, keepdims)


def amin(x, axis=None, keepdims=False):
    """The minimum over ``axis``, as ``numpy.min``; the first minimum of a slice takes its derivative."""
    return _reduce(lambda y: _extreme_last(y, "min"), x, axis, keepdims)


def _prod_last_impl(x):
    return xp.prod(x, axis=-1)


_prod_last = Primitive("prod_last", _prod_last_impl)  # ∏ over the last axis


def _others(ans, x):
    """∏_{j≠i} x_j over the last axis, for every i (module docs: ans / x_i, or the K² product with zeros)."""
    raw, shape = getval(x), tuple(shape_of(x))
    if bool(xp.all(raw != 0)):
        return divide(reshape(ans, shape[:-1] + (1,)), x)
    K = shape[-1]
    rows = broadcast_to(reshape(x, shape[:-1] + (1, K)), shape[:-1] + (K, K))  # row i: the slice ...
    return _prod_last(where(xp.eye(K, dtype=bool), 1.0, rows))                 # ... with x_i replaced by 1


defvjp(_prod_last, lambda g, ans, x: multiply(reshape(g, shape_of(g) + (1,)), _others(ans, x)))
defjvp(_prod_last, lambda t, ans, x: sum(multiply(t, _others(ans, x)), axis=-1))


def prod(x, axis=None, keepdims=False):
    """The product over ``axis``, as ``numpy.prod`` (1 for an empty slice)."""
    return _reduce(_prod_last, x, axis, keepdims)


# ---------------------------------------------------------------------------------------------------
# Elementwise: minimum, clip, logaddexp.
minimum = Primitive("minimum", lambda x, y: xp.minimum(*_weak(x, y)))
defvjp(minimum, lambda g, ans, x, y: unbroadcast(multiply(g, _mask(greater_equal(y, x), ans)), shape_of(x)),
       lambda g, ans, x, y: unbroadcast(multiply(g, _mask(xp.logical_not(greater_equal(y, x)), ans)), shape_of(y)))
defjvp(minimum, lambda t, ans, x, y: _fit(multiply(t, _mask(greater_equal(y, x), ans)), ans),
       lambda t, ans, x, y: _fit(multiply(t, _mask(xp.logical_not(greater_equal(y, x)), ans)), ans))


def clip(x, a_min=None, a_max=None):
    """``minimum(maximum(x, a_min), a_max)``, as ``numpy.clip``; a bound of None is no bound."""
    if a_min is not None:
        x = maximum(x, a_min)
    if a_max is not None:
        x = minimum(x, a_max)
    return x


def _np_clip(a, a_min=None, a_max=None, **bounds):
    """``numpy.clip``'s signature: bounds positional, as a_min / a_max, or (NumPy ≥ 2.1) as min / max."""
    return clip(a, bounds.get("min", a_min), bounds.get("max", a_max))


logaddexp = Primitive("logaddexp", lambda x, y: xp.logaddexp(*_weak(x, y)))
defvjp(logaddexp, lambda g, ans, x, y: unbroadcast(multiply(g, exp(subtract(x, ans))), shape_of(x)),
       lambda g, ans, x, y: unbroadcast(multiply(g, exp(subtract(y, ans))), shape_of(y)))
defjvp(logaddexp, lambda t, ans, x, y: _fit(multiply(t, exp(subtract(x, ans))), ans),
       lambda t, ans, x, y: _fit(multiply(t, exp(subtract(y, ans))), ans))


# ---------------------------------------------------------------------------------------------------
# Joining: concatenate (one variadic primitive) and stack.
_concatenate = Primitive("concatenate", lambda *arrays, axis=0: xp.concatenate(arrays, axis=axis))


def _piece(argnum, args, axis):
    """The index of piece ``argnum`` in the output: a slice along ``axis`` (non-negative)."""
    start = builtins.sum(shape_of(a)[axis] for a in args[:argnum])
    return (slice(None),) * axis + (slice(start, start + shape_of(args[argnum])[axis]),)


defvjp_variadic(_concatenate, lambda i, g, ans, *args, axis=0: getitem(g, _piece(i, args, axis)))
defjvp_variadic(_concatenate, lambda i, t, ans, *args, axis=0: scatter(t, _piece(i, args, axis), shape_of(ans)))


def _pieces(arrays, what):
    if isinstance(arrays, Box) or hasattr(arrays, "shape") or not hasattr(arrays, "__iter__"):
        raise TypeError(f"{what} takes a sequence of arrays (a list or tuple), got {type(arrays).__name__}")
    arrays = list(arrays)
    if not arrays:
        raise ValueError(f"{what}: need at least one array")
    return arrays


def _normal_axis(axis, nd, what):
    if isinstance(axis, bool) or not isinstance(axis, numbers.Integral):
        raise TypeError(f"{what}: axis must be an integer, got {axis!r}")
    if not -nd <= axis < nd:
        raise ValueError(f"{what}: axis {axis} is out of bounds for an array of dimension {nd}")
    return int(axis) % nd


def concatenate(arrays, axis=0):
    """``numpy.concatenate`` of arrays and traced values (``axis=None`` joins them flattened)."""
    arrays = _pieces(arrays, "concatenate")
    if axis is None:
        arrays, axis = [reshape(a, (math.prod(shape_of(a)),)) for a in arrays], 0
    nd = len(shape_of(arrays[0]))
    if nd == 0 or any(len(shape_of(a)) != nd for a in arrays):
        raise ValueError("concatenate: the arrays must have the same number of dimensions, at least 1, got "
                         f"shapes {[tuple(shape_of(a)) for a in arrays]}")
    return _concatenate(*arrays, axis=_normal_axis(axis, nd, "concatenate"))


def stack(arrays, axis=0):
    """``numpy.stack``: arrays and traced values of one shape joined along a new axis."""
    arrays = _pieces(arrays, "stack")
    shapes = {tuple(shape_of(a)) for a in arrays}
    if len(shapes) != 1:
        raise ValueError(f"stack: all input arrays must have the same shape, got {sorted(shapes)}")
    shape = shapes.pop()
    axis = _normal_axis(axis, len(shape) + 1, "stack")
    return _concatenate(*[reshape(a, shape[:axis] + (1,) + shape[axis:]) for a in arrays], axis=axis)


# ---------------------------------------------------------------------------------------------------
# The NumPy dispatch entries (merged into primitives' tables) and the array methods of boxes.
UFUNCS = {"minimum": minimum, "logaddexp": logaddexp, "less_equal": lambda x, y: greater_equal(y, x)}
FUNCTIONS = {  # NumPy function name -> (implementation, keyword arguments it accepts)
    "max": (amax, ("axis", "keepdims")), "amax": (amax, ("axis", "keepdims")),
    "min": (amin, ("axis", "keepdims")), "amin": (amin, ("axis", "keepdims")),
    "prod": (prod, ("axis", "keepdims")), "clip": (_np_clip, ("a_min", "a_max", "min", "max")),
    "stack": (stack, ("axis",)), "concatenate": (concatenate, ("axis",)),
}


def _astype(box, dtype, copy=True):
    target, own = xp.dtype(dtype), getattr(getval(box), "dtype", None)
    if target == own:
        return box
    why = ("the derivative would be lost" if target.kind != "f" else
           "refopt keeps one floating dtype per computation; convert the input before differentiating")
    raise TypeError(f"astype({target}) of a traced {own} value is not supported: {why}")


def _transpose_method(box, *axes):
    if len(axes) == 1 and (axes[0] is None or isinstance(axes[0], (tuple, list))):
        axes = axes[0]
    return transpose(box, tuple(axes) if axes else None)


def _flat(box):
    return reshape(box, (math.prod(box.shape),))  # the shape, not .size: a LazyBox knows it without its value


def _install_methods():
    Box.copy = lambda s: s
    Box.astype = _astype
    Box.dot = lambda s, other: _np_dot(s, other)
    Box.ravel = _flat
    Box.flatten = _flat
    Box.transpose = _transpose_method
    Box.mean = lambda s, axis=None, keepdims=False: mean(s, axis=axis, keepdims=keepdims)
    Box.max = lambda s, axis=None, keepdims=False: amax(s, axis=axis, keepdims=keepdims)
    Box.min = lambda s, axis=None, keepdims=False: amin(s, axis=axis, keepdims=keepdims)
    Box.prod = lambda s, axis=None, keepdims=False: prod(s, axis=axis, keepdims=keepdims)
    Box.clip = lambda s, a_min=None, a_max=None: clip(s, a_min, a_max)
    Box.__ge__ = lambda s, o: greater_equal(s, o)
    Box.__le__ = lambda s, o: greater_equal(o, s)


_install_methods()
