"""The array backend: NumPy (CPU) or CuPy (GPU), the default dtype, and host-side seeded randomness.

This is the only module of refopt that imports an array library for array math. Every other module
reaches the active array module through ``xp`` (a thin proxy that forwards to NumPy or CuPy), so the
same code runs on either.

Choosing the backend
--------------------
* ``set_backend("numpy" | "cupy")`` at run time, or the environment variable ``REFOPT_BACKEND``
  (read once, at import). Asking for CuPy when it is not installed, or when no GPU is visible, raises
  a ``RuntimeError`` that says which of the two is missing.
* ``set_default_dtype("float64" | "float32")`` or ``REFOPT_DTYPE``; float64 is the default because
  refopt is a reference and its tests compare against closed forms to ~1e-10.
* ``_use_array_module(module, "cupy")`` (private, for tests) installs a CuPy stand-in: the suite runs
  refopt on ``tests/fake_cupy.py``, which refuses implicit device-to-host conversion and host operands
  as CuPy does, so host–device leaks fail without a GPU.

Host and device
---------------
Arrays are reached only through ``xp``, ``as_array`` / ``to_device`` (host → device) and ``to_host``
(device → host). CuPy refuses ``numpy.asarray`` of a device array and NumPy arrays as operands of device
operations; ``float(x)`` / ``bool(x)`` of a size-1 device array are allowed but synchronise.

Randomness
----------
Random numbers are always drawn on the host with NumPy's ``Generator`` (PCG64) from an explicit seed
and then moved to the device with ``asarray``. A CPU run and a GPU run with the same seed therefore
see bit-identical draws, and a verifier can reproduce them with plain NumPy.
"""
from __future__ import annotations

import functools
import os
from typing import Any

import numpy as _np

__all__ = [
    "xp", "set_backend", "backend_name", "set_default_dtype", "default_dtype", "as_array",
    "to_host", "to_device", "rng", "normal", "uniform", "rademacher", "is_floating", "SUPPORTED_DTYPES",
]

SUPPORTED_DTYPES = ("float64", "float32")

_state: dict[str, Any] = {"module": _np, "name": "numpy", "dtype": _np.float64}


def _load_cupy():
    try:
        import cupy  # noqa: PLC0415  (optional dependency, imported on demand)
    except ImportError as exc:  # pragma: no cover - depends on the machine
        raise RuntimeError(
            "backend 'cupy' requested but CuPy is not installed; install the extra: "
            "pip install 'refopt[cuda]' (or set REFOPT_BACKEND=numpy)") from exc
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # pragma: no cover - depends on the machine
        raise RuntimeError(f"backend 'cupy' requested but no CUDA device is usable: {exc}") from exc
    if count < 1:  # pragma: no cover
        raise RuntimeError("backend 'cupy' requested but no GPU is present")
    return cupy


def set_backend(name: str) -> None:
    """Select the array library: ``"numpy"`` (CPU) or ``"cupy"`` (GPU)."""
    if name == "numpy":
        _set_module(_np, "numpy")
    elif name == "cupy":
        _set_module(_load_cupy(), "cupy")
    else:
        raise ValueError(f"backend must be 'numpy' or 'cupy', got {name!r}")


def _use_array_module(module, name: str = "cupy") -> None:
    """Use ``module`` as the array library under ``name`` (for tests: a CuPy stand-in without a GPU).

    ``backend_name()`` then returns ``name`` and, for "cupy", ``to_host`` copies with ``.get()``.
    ``set_backend("numpy")`` goes back."""
    if name not in ("numpy", "cupy"):
        raise ValueError(f"name must be 'numpy' or 'cupy', got {name!r}")
    _set_module(module, name)


def backend_name() -> str:
    """The active backend's name."""
    return _state["name"]


def set_default_dtype(dtype: str | Any) -> None:
    """Set the floating dtype used for parameters and random draws (float64 or float32)."""
    try:
        name = _np.dtype(dtype).name
    except TypeError as exc:
        raise TypeError(f"dtype must be one of {SUPPORTED_DTYPES}, got {dtype!r}") from exc
    if name not in SUPPORTED_DTYPES:
        raise TypeError(f"dtype must be one of {SUPPORTED_DTYPES}, got {name!r}")
    _state["dtype"] = _np.dtype(name).type


def default_dtype():
    """The default floating dtype (a NumPy scalar type; CuPy accepts the same)."""
    return _state["dtype"]


class _ArrayModule:
    """Forwards attribute access to the active array module (``xp.exp`` is NumPy's or CuPy's).

    What it forwarded is kept in the proxy's own ``__dict__``, so the next ``xp.exp`` is a plain attribute
    read instead of a ``__getattr__`` call (a gradient of a small network reads a dozen); ``_set_module``
    empties it whenever the module changes.
    """

    def __getattr__(self, item):
        value = getattr(_state["module"], item)
        self.__dict__[item] = value
        return value

    def __repr__(self):
        return f"<refopt array module: {_state['name']}>"


xp = _ArrayModule()


def _set_module(module, name: str) -> None:
    """Make ``module`` the active array library under ``name``, dropping what ``xp`` kept of the last one."""
    _state.update(module=module, name=name)
    xp.__dict__.clear()


def is_floating(dtype) -> bool:
    """True for the dtypes refopt computes in (float32, float64)."""
    try:
        return _floating_dtype(dtype)
    except TypeError:  # unhashable (a list of fields) or not a dtype at all: uncached, NumPy's own error
        return _np.dtype(dtype).name in SUPPORTED_DTYPES


@functools.lru_cache(maxsize=256)
def _floating_dtype(dtype) -> bool:
    # Cached: asked on every forward pass, and np.dtype(...).name builds a string each time.
    return _np.dtype(dtype).name in SUPPORTED_DTYPES


def as_array(x, dtype=None):
    """Move ``x`` to the active backend as an array of ``dtype`` (default: keep float, else default)."""
    mod = _state["module"]
    if dtype is None and not (hasattr(x, "dtype") and is_floating(x.dtype)):
        dtype = _state["dtype"]
    return mod.asarray(x, dtype=dtype)


def to_host(x):
    """A NumPy copy of a backend array (identity on the NumPy backend). On CuPy, device arrays are copied
    with ``.get()`` (CuPy refuses ``numpy.asarray``); host values pass through ``numpy.asarray``."""
    if _state["name"] == "cupy" and hasattr(x, "get"):
        return x.get()
    return _np.asarray(x)


def to_device(x):
    """A backend array from a host (NumPy) array."""
    return _state["module"].asarray(x)


def rng(seed) -> _np.random.Generator:
    """A host-side NumPy Generator; ``seed`` is an int, a SeedSequence or an existing Generator."""
    if isinstance(seed, _np.random.Generator):
        return seed
    if seed is None:
        raise ValueError("seed must be given explicitly (an int or a numpy Generator); refopt has no "
                         "hidden global random state")
    return _np.random.default_rng(seed)


def normal(seed, shape, dtype=None):
    """Standard normal draws made on the host from ``seed`` and moved to the device."""
    host = rng(seed).standard_normal(shape)
    return as_array(host, dtype or _state["dtype"])


def uniform(seed, shape, low=0.0, high=1.0, dtype=None):
    """Uniform draws on [low, high) made on the host and moved to the device."""
    host = rng(seed).uniform(low, high, size=shape)
    return as_array(host, dtype or _state["dtype"])


def rademacher(seed, shape, dtype=None):
    """Rademacher (±1 with probability ½ each) draws made on the host and moved to the device."""
    host = rng(seed).integers(0, 2, size=shape) * 2 - 1
    return as_array(host, dtype or _state["dtype"])


def _from_environment() -> None:
    """Apply REFOPT_BACKEND and REFOPT_DTYPE (read once, at import).

    A bad value fails the import loudly (no silent fallback to NumPy or float64: a run that asked for the
    GPU or float32 must not quietly compute something else), with one line that names the variable:
    RuntimeError when CuPy or the GPU is missing, ValueError for an unknown backend or dtype. The
    ``refopt`` command reports it as ``refopt: error: ...`` and exits with status 2.
    """
    name = os.environ.get("REFOPT_BACKEND")
    if name:
        try:
            set_backend(name)
        except (RuntimeError, ValueError) as exc:
            raise type(exc)(f"REFOPT_BACKEND={name!r}: {exc}") from None
    dtype = os.environ.get("REFOPT_DTYPE")
    if dtype:
        try:
            set_default_dtype(dtype)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"REFOPT_DTYPE={dtype!r}: {exc}") from None


_from_environment()
