"""A test-only stand-in for CuPy: NumPy arithmetic behind CuPy's host–device boundary.

No GPU has ever run refopt. This module lets the suite run refopt on an array module that refuses what
CuPy refuses, so a host–device leak fails on every machine instead of on the first GPU. Select it with
``refopt.backend._use_array_module(fake_cupy, "cupy")``; ``backend_name()`` then says "cupy" and
``backend.to_host`` copies with ``.get()``.

What it imitates (checked against CuPy's ``cupy/_core/core.pyx``, ``_routines_indexing.pyx`` and
``cupy/linalg`` sources and docs, v13–v14):

* **No implicit conversion to NumPy.** ``np.asarray(x)``, ``np.array(x)`` and ``x.__array__()`` raise
  ``TypeError: Implicit conversion to a NumPy array is not allowed. Please use `.get()` to construct a
  NumPy array explicitly.`` ``x.get()`` (and ``asnumpy``) copy to the host.
* **No host arrays in device operations.** A ``numpy.ndarray`` (of any shape, 0-d included) as an
  operand of an operator, a ufunc or any module function raises ``TypeError: Unsupported type <class
  'numpy.ndarray'>``, whichever side it is on (``np.add(host, dev)`` reaches ``__array_ufunc__``, as in
  CuPy). Python scalars and NumPy scalars (``np.float64(1.0)``) are accepted. Lists are refused as
  ufunc operands. Only the creation functions (``asarray``, ``array``, ``ascontiguousarray``) take host
  data (a host-to-device copy, counted), and so does ``x[:] = host`` with the same shape and dtype.
* **Results stay on the device.** Reductions and integer indexing return 0-d device arrays, not
  NumPy scalars (``xp.sum(x)``, ``x[0]``). ``float(x)``, ``int(x)``, ``bool(x)``, ``x.item()``,
  ``x.tolist()`` and ``format(x, spec)`` are allowed, as in CuPy, where each one synchronises with
  the device; they are counted in ``counts["sync"]``. There is no ``__index__`` (CuPy has none).
* **Only functions CuPy has.** The module and ``linalg`` expose a whitelist; anything else raises
  ``AttributeError``. There is no ``random`` (CuPy's generators differ from NumPy's; refopt draws on
  the host) and no ``errstate``/``seterr`` (CuPy's live in cupyx). ``linalg`` has ``norm``, ``solve``,
  ``cholesky``, ``qr``, ``svd``, ``eigh``, ``eigvalsh``, ``inv``, ``pinv``, ``lstsq``, ``det``,
  ``slogdet``, ``matrix_power``, ``matrix_rank``, ``tensorsolve``, ``tensorinv``; not ``eig`` /
  ``eigvals`` (CuPy 14 added them, CuPy 13 lacks them) nor ``multi_dot``, ``cond``, ``LinAlgError``.
* **cuSOLVER does not raise.** With CuPy's default ``linalg`` configuration ("ignore") a failed
  factorisation returns unspecified values: ``cholesky`` of a matrix that is not positive definite
  returns the lower triangle of a partial factorisation, finite, with the failing pivot (≤ 0) on the
  diagonal (LAPACK's potrf convention), not a ``LinAlgError`` and not NaNs; ``solve``, ``inv``,
  ``eigh``, ``eigvalsh`` of singular or non-finite input return NaNs.
* **Binary operators dispatch as CuPy's** (``_should_use_rop``): with a device array or a scalar they
  compute; they defer (``NotImplemented``) to an operand whose ``__array_ufunc__`` is None (or, lacking
  one, whose ``__array_priority__`` is higher); with any other operand they call the NumPy ufunc, so
  ``device * box`` reaches this array's ``__array_ufunc__`` (which declines a type it does not know)
  and then the other operand's (refopt's tracer boxes implement it), and ``device * host`` is refused.

What it does not imitate: asynchronous execution and streams, memory pools, device placement,
integer-index wrap-around and duplicate-index scatter order, CuPy's own kernels' rounding (the
arithmetic is NumPy's, so results equal the NumPy backend's bit for bit where the same NumPy call is
made), Python-scalar type promotion of older CuPy (promotion here is NumPy's), CuPy's acceptance of
host index arrays for advanced-index assignment values (refused here: stricter), functions that CuPy
has but this whitelist omits (add them when refopt needs one, after checking CuPy's docs).
"""
from __future__ import annotations

import numpy as _np

__all__ = ["ndarray", "counts", "reset_counts", "linalg"]

IMPLICIT = ("Implicit conversion to a NumPy array is not allowed. Please use `.get()` to construct a NumPy "
            "array explicitly.")

counts = {"sync": 0, "to_host": 0, "to_device": 0}


def reset_counts() -> None:
    for k in counts:
        counts[k] = 0


_SCALARS = (bool, int, float, complex, _np.generic)


def _unsupported(x):
    return TypeError(f"Unsupported type {type(x)}")


def _operand(x):
    """A raw NumPy value for a device operand or scalar; TypeError for host arrays and other types."""
    if isinstance(x, ndarray):
        return x._a
    if isinstance(x, _SCALARS):
        return x
    raise _unsupported(x)


def _deep(x):
    """Unwrap device arrays inside arguments (lists, tuples, dicts); refuse host arrays anywhere."""
    if isinstance(x, ndarray):
        return x._a
    if isinstance(x, _np.ndarray):
        raise _unsupported(x)
    if isinstance(x, (list, tuple)):
        return type(x)(_deep(v) for v in x) if type(x) in (list, tuple) else type(x)(*(_deep(v) for v in x))
    if isinstance(x, dict):
        return {k: _deep(v) for k, v in x.items()}
    return x


def _host_ok(x):
    """Unwrap device arrays, keep host data (creation functions copy it to the device)."""
    if isinstance(x, ndarray):
        return x._a
    if isinstance(x, _np.ndarray):
        counts["to_device"] += 1
        return x
    if type(x) in (list, tuple):
        return type(x)(_host_ok(v) for v in x)
    return x


def _wrap(r):
    if isinstance(r, _np.ndarray):
        return ndarray(r)
    if isinstance(r, _np.generic):
        return ndarray(_np.asarray(r))
    if type(r) in (list, tuple):
        return type(r)(_wrap(v) for v in r)
    if isinstance(r, tuple):  # NumPy's named results (EighResult, QRResult, ...): a plain tuple, as CuPy
        return tuple(_wrap(v) for v in r)
    return r


class ndarray:
    """A device array: a NumPy array behind CuPy's rules (see the module docstring)."""

    __slots__ = ("_a",)
    __array_priority__ = 100
    __hash__ = None

    def __init__(self, a):
        if not isinstance(a, _np.ndarray):
            raise TypeError("fake_cupy.ndarray wraps a numpy.ndarray; use asarray to make one")
        self._a = a

    # --- host/device boundary ---------------------------------------------------------------------
    def __array__(self, dtype=None, copy=None):
        raise TypeError(IMPLICIT)

    def get(self, stream=None, order="C", out=None):
        counts["to_host"] += 1
        return _np.array(self._a, order=order)

    def set(self, arr):
        if not isinstance(arr, _np.ndarray) or arr.shape != self._a.shape or arr.dtype != self._a.dtype:
            raise ValueError("set: a numpy.ndarray of the same shape and dtype is required")
        counts["to_device"] += 1
        self._a[...] = arr

    def _sync(self):
        counts["sync"] += 1
        return self._a

    def __float__(self):
        return float(self._sync())

    def __int__(self):
        return int(self._sync())

    def __complex__(self):
        return complex(self._sync())

    def __bool__(self):
        return bool(self._sync())

    def item(self):
        if self._a.size != 1:
            raise ValueError("can only convert an array of size 1 to a Python scalar")
        return self._sync().item()

    def tolist(self):
        return self._sync().tolist()

    def __format__(self, spec):
        return format(self._sync(), spec)

    def __repr__(self):
        return "fake_cupy." + repr(self._a)

    def __str__(self):
        return str(self._a)

    # --- attributes -------------------------------------------------------------------------------
    shape = property(lambda self: self._a.shape)
    ndim = property(lambda self: self._a.ndim)
    size = property(lambda self: self._a.size)
    dtype = property(lambda self: self._a.dtype)
    itemsize = property(lambda self: self._a.itemsize)
    nbytes = property(lambda self: self._a.nbytes)
    strides = property(lambda self: self._a.strides)
    T = property(lambda self: ndarray(self._a.T))
    real = property(lambda self: ndarray(self._a.real))
    imag = property(lambda self: ndarray(self._a.imag))
    base = property(lambda self: None)
    flags = property(lambda self: self._a.flags)

    def __len__(self):
        return len(self._a)

    def __iter__(self):
        if self._a.ndim == 0:
            raise TypeError("iteration over a 0-d array")
        return (self[i] for i in range(self._a.shape[0]))

    def __copy__(self):
        return ndarray(self._a.copy())

    def __deepcopy__(self, memo):
        return ndarray(self._a.copy())

    def __reduce__(self):
        return (_rebuild, (self.get(),))

    # --- indexing ---------------------------------------------------------------------------------
    @staticmethod
    def _key(key):
        # CuPy converts host index arrays and lists to device arrays (a copy), then indexes on the device.
        if isinstance(key, tuple):
            return tuple(k._a if isinstance(k, ndarray) else k for k in key)
        return key._a if isinstance(key, ndarray) else key

    def __getitem__(self, key):
        return _wrap(self._a[self._key(key)])

    def __setitem__(self, key, value):
        if isinstance(value, _np.ndarray):
            # CuPy copies host data only for ``x[:] = host`` of the same shape and dtype.
            whole = isinstance(key, slice) and key == slice(None)
            if not (whole and value.shape == self._a.shape and value.dtype == self._a.dtype):
                raise _unsupported(value)
            counts["to_device"] += 1
        elif not isinstance(value, (ndarray,) + _SCALARS):
            raise _unsupported(value)
        self._a[self._key(key)] = value._a if isinstance(value, ndarray) else value

    # --- the NumPy protocols: dispatch to this module, refuse host operands ------------------------
    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        # CuPy looks the ufunc's name up among its own functions (matmul is a NumPy ufunc, a CuPy function).
        if method != "__call__" or ufunc.__name__ not in _FUNCS:
            return NotImplemented
        for x in inputs + tuple(kwargs.get("out", ())):
            if not isinstance(x, (ndarray, _np.ndarray) + _SCALARS):
                return NotImplemented
        if "out" in kwargs:
            out = kwargs["out"]
            kwargs["out"] = out[0] if isinstance(out, tuple) and len(out) == 1 else out
        return _FUNCS[ufunc.__name__](*inputs, **kwargs)

    def __array_function__(self, func, types, args, kwargs):
        mod = func.__module__ or ""
        table = _LINALG_FUNCS if mod.endswith("linalg") else _FUNCS if mod == "numpy" else {}
        f = table.get(func.__name__)
        if f is None:
            return NotImplemented
        return f(*args, **kwargs)


def _rebuild(host):
    return ndarray(_np.array(host))


# --- operators --------------------------------------------------------------------------------------
def _binary(op, reflected=False):
    # CuPy's operators (cupy/_core/core.pyx): another device array or a scalar is computed directly;
    # otherwise _should_use_rop reads the other operand's __array_ufunc__: None defers (NotImplemented),
    # anything else goes through the NumPy ufunc, so NumPy's dispatch asks this array's __array_ufunc__
    # (which refuses host arrays and returns NotImplemented for unknown types) and then the other's.
    # Without __array_ufunc__, CuPy compares __array_priority__.
    def method(self, other):
        if not isinstance(other, (ndarray,) + _SCALARS):
            try:
                other_ufunc = other.__array_ufunc__
            except AttributeError:
                if getattr(other, "__array_priority__", 0) > ndarray.__array_priority__:
                    return NotImplemented
            else:
                if other_ufunc is None:
                    return NotImplemented
                return op(other, self) if reflected else op(self, other)
        b = _operand(other)
        return _wrap(op(b, self._a) if reflected else op(self._a, b))
    return method


def _inplace(ufunc):
    def method(self, other):
        ufunc(self._a, _operand(other), out=self._a)
        return self
    return method


_OPS = {"add": _np.add, "sub": _np.subtract, "mul": _np.multiply, "truediv": _np.true_divide,
        "floordiv": _np.floor_divide, "mod": _np.remainder, "pow": _np.power, "matmul": _np.matmul,
        "and": _np.bitwise_and, "or": _np.bitwise_or, "xor": _np.bitwise_xor}
for _name, _f in _OPS.items():
    setattr(ndarray, f"__{_name}__", _binary(_f))
    setattr(ndarray, f"__r{_name}__", _binary(_f, reflected=True))
    if _name != "matmul":
        setattr(ndarray, f"__i{_name}__", _inplace(_f))
for _name, _f in {"lt": _np.less, "le": _np.less_equal, "gt": _np.greater, "ge": _np.greater_equal,
                  "eq": _np.equal, "ne": _np.not_equal}.items():
    setattr(ndarray, f"__{_name}__", _binary(_f))
ndarray.__neg__ = lambda self: ndarray(-self._a)
ndarray.__pos__ = lambda self: ndarray(+self._a)
ndarray.__abs__ = lambda self: ndarray(abs(self._a))
ndarray.__invert__ = lambda self: ndarray(~self._a)


def _method(name):
    def method(self, *args, **kwargs):
        return _wrap(getattr(self._a, name)(*_deep(args), **_deep(kwargs)))
    method.__name__ = name
    return method


for _name in ("reshape", "ravel", "flatten", "transpose", "swapaxes", "squeeze", "astype", "copy", "fill",
              "sum", "mean", "max", "min", "prod", "cumsum", "cumprod", "any", "all", "argmax", "argmin",
              "clip", "conj", "conjugate", "diagonal", "trace", "round", "std", "var", "nonzero",
              "repeat", "take", "sort", "argsort", "view"):
    setattr(ndarray, _name, _method(_name))


def _dot_method(self, b, out=None):
    if not isinstance(b, ndarray):  # CuPy's ndarray.dot is typed: a cupy.ndarray only
        raise _unsupported(b)
    return _FUNCS["dot"](self, b, out=out)


ndarray.dot = _dot_method


# --- the module's functions ---------------------------------------------------------------------------
def _ufunc(name):
    np_f = getattr(_np, name)

    def f(*args, out=None, **kwargs):
        raw = [_operand(a) for a in args]
        if out is not None:
            if not isinstance(out, ndarray):
                raise _unsupported(out)
            np_f(*raw, out=out._a, **_deep(kwargs))
            return out
        return _wrap(np_f(*raw, **_deep(kwargs)))
    f.__name__ = name
    return f


def _function(name, source=_np, host_ok=False):
    np_f = getattr(source, name)

    def f(*args, **kwargs):
        unwrap = _host_ok if host_ok else _deep
        return _wrap(np_f(*unwrap(args), **unwrap(kwargs)))
    f.__name__ = name
    return f


# Ufuncs CuPy has (cupy/_math, _logic, _binary, ...).
_UFUNCS = set("""
add subtract multiply divide true_divide floor_divide negative positive power float_power remainder mod
fmod absolute abs fabs sign reciprocal sqrt cbrt square exp exp2 expm1 log log2 log10 log1p logaddexp
logaddexp2 sin cos tan arcsin arccos arctan arctan2 hypot sinh cosh tanh arcsinh arccosh arctanh
deg2rad rad2deg degrees radians maximum minimum fmax fmin isfinite isinf isnan signbit copysign
nextafter ldexp frexp modf floor ceil trunc rint greater greater_equal less less_equal equal not_equal
logical_and logical_or logical_xor logical_not bitwise_and bitwise_or bitwise_xor invert left_shift
right_shift conjugate conj clip
""".split())

# Other functions CuPy has; each was checked to exist at top level in CuPy 13 and 14.
_PLAIN = """
zeros ones empty full eye identity arange linspace logspace zeros_like ones_like empty_like full_like
diag diagflat tri tril triu meshgrid
reshape ravel transpose swapaxes moveaxis rollaxis squeeze expand_dims broadcast_to broadcast_arrays
atleast_1d atleast_2d atleast_3d concatenate stack hstack vstack dstack column_stack split array_split
tile repeat flip fliplr flipud roll rot90 pad
sum prod mean std var max min amax amin argmax argmin nanmax nanmin nansum nanmean cumsum cumprod
all any count_nonzero nonzero where argwhere sort argsort unique take take_along_axis put_along_axis
dot vdot inner outer matmul tensordot einsum kron trace diagonal cross
isclose allclose array_equal array_equiv
round around fix nan_to_num real imag angle
median percentile quantile average histogram bincount searchsorted interp
triu_indices tril_indices diag_indices unravel_index ravel_multi_index indices ix_
copy copyto shape size ndim result_type can_cast isscalar
""".split()
_HOST_OK = ("asarray", "array", "ascontiguousarray", "asanyarray", "asfortranarray")
# Attributes that are not functions of arrays (types, constants, dtype utilities): NumPy's own in CuPy.
_VALUES = """
float64 float32 float16 int64 int32 int16 int8 uint8 uint32 uint64 bool_ intp complex64 complex128
inf nan pi e newaxis dtype finfo iinfo promote_types issubdtype floating integer number
""".split()

_FUNCS = {n: _ufunc(n) for n in _UFUNCS if hasattr(_np, n)}
_FUNCS.update({n: _function(n) for n in _PLAIN})
_FUNCS.update({n: _function(n, host_ok=True) for n in _HOST_OK})


def asnumpy(a, stream=None, order="C", out=None):
    """CuPy's ``asnumpy``: a host copy of a device array (host input is returned as a NumPy array)."""
    return a.get(order=order) if isinstance(a, ndarray) else _np.asarray(a, order=order)


def get_array_module(*args):
    import sys
    return sys.modules[__name__] if any(isinstance(a, ndarray) for a in args) else _np


def _cholesky(a):
    a = _operand(a)
    if not isinstance(a, _np.ndarray) or a.ndim != 2:
        raise TypeError("fake cholesky: a 2-d device array is required")
    try:
        return ndarray(_np.linalg.cholesky(a))
    except _np.linalg.LinAlgError:
        pass
    # cuSOLVER's potrf stops at the first non-positive pivot and reports it only in devInfo, which
    # CuPy ignores by default: the caller receives the lower triangle of a partial factorisation.
    L = _np.tril(a).astype(_np.result_type(a.dtype, _np.float32), copy=True)
    n = L.shape[0]
    for j in range(n):
        d = L[j, j] - L[j, :j] @ L[j, :j]
        if not d > 0:
            L[j, j] = d if _np.isfinite(d) else 0.0
            break
        L[j, j] = _np.sqrt(d)
        L[j + 1:, j] = (L[j + 1:, j] - L[j + 1:, :j] @ L[j, :j]) / L[j, j]
    return ndarray(L)


def _nan_on_failure(name, result_shapes):
    """A linalg function that returns NaNs where NumPy raises LinAlgError (cuSOLVER reports failures only
    in devInfo, which CuPy's default configuration ignores)."""
    np_f = getattr(_np.linalg, name)

    def f(*args, **kwargs):
        raw = [_operand(a) for a in args]
        try:
            return _wrap(np_f(*raw, **_deep(kwargs)))
        except _np.linalg.LinAlgError:
            dtype = _np.result_type(*[r.dtype for r in raw], _np.float32)
            shapes = result_shapes(*raw)
            out = tuple(ndarray(_np.full(s, _np.nan, dtype=dtype)) for s in shapes)
            return out if len(out) > 1 else out[0]
    f.__name__ = name
    return f


_LINALG_FUNCS = {n: _function(n, source=_np.linalg) for n in
                 ("norm", "qr", "svd", "pinv", "lstsq", "det", "slogdet", "matrix_power", "matrix_rank",
                  "tensorsolve", "tensorinv")}
_LINALG_FUNCS.update(solve=_nan_on_failure("solve", lambda a, b: [b.shape]),
                     inv=_nan_on_failure("inv", lambda a: [a.shape]),
                     eigh=_nan_on_failure("eigh", lambda a: [a.shape[:-1], a.shape]),
                     eigvalsh=_nan_on_failure("eigvalsh", lambda a: [a.shape[:-1]]))
_LINALG_FUNCS["cholesky"] = _cholesky


class _Namespace:
    """A module-like object exposing only a whitelist; other names raise AttributeError like CuPy's."""

    def __init__(self, name, table, values=()):
        self.__name__ = name
        self._table = dict(table)
        self._table.update(values)

    def __getattr__(self, item):
        table = self.__dict__.get("_table", {})
        if item in table:
            return table[item]
        raise AttributeError(f"module {self.__name__!r} has no attribute {item!r} (tests/fake_cupy.py offers "
                             f"only what CuPy has)")

    def __dir__(self):
        return sorted(self._table)


linalg = _Namespace("cupy.linalg", _LINALG_FUNCS)


def __getattr__(name):
    if name in _FUNCS:
        return _FUNCS[name]
    if name in _VALUES:
        return getattr(_np, name)
    raise AttributeError(f"module 'cupy' has no attribute {name!r} (tests/fake_cupy.py offers only what CuPy "
                         f"has)")
