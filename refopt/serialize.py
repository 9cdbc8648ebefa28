"""Saving nested optimizer states and parameters to ``.npz``, exactly and atomically.

``encode(obj)`` turns a nest of NamedTuples, dicts, lists, tuples, arrays and Python scalars into a
JSON skeleton plus a list of arrays; ``decode`` inverts it. Floats go through ``repr`` in JSON and arrays
through NumPy's binary format, so a round trip is bit-exact. NamedTuple classes are recorded by module
and name and re-imported on load (only from the ``refopt`` package: a file cannot name other code).

``write_npz_atomic`` (and ``atomic_path`` for any other file) writes to a temporary file in the target
folder and renames it into place, so an interrupted write never leaves a half-written file under the
final name.
"""
from __future__ import annotations

import contextlib
import importlib
import json
import os
import tempfile

import numpy as np

from .backend import as_array, to_host

__all__ = ["encode", "decode", "atomic_path", "savez_atomic", "write_npz_atomic", "load_npz", "read_npz"]


def encode(obj, arrays: list):
    """JSON-able skeleton of ``obj``; array leaves are appended to ``arrays`` and referenced by index."""
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, (int, np.integer)) and not isinstance(obj, bool):
        return {"int": int(obj)}
    if isinstance(obj, (float, np.floating)):
        return {"float": repr(float(obj))}
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):
        cls = type(obj)
        return {"namedtuple": f"{cls.__module__}:{cls.__qualname__}",
                "fields": {f: encode(getattr(obj, f), arrays) for f in obj._fields}}
    if isinstance(obj, dict):
        if not all(isinstance(k, str) for k in obj):
            raise TypeError("only dicts with string keys can be saved")
        return {"dict": {k: encode(v, arrays) for k, v in obj.items()}}
    if isinstance(obj, (list, tuple)):
        return {"list" if isinstance(obj, list) else "tuple": [encode(v, arrays) for v in obj]}
    if hasattr(obj, "shape") and hasattr(obj, "dtype"):
        arrays.append(to_host(obj))
        return {"array": len(arrays) - 1}
    raise TypeError(f"cannot save an object of type {type(obj).__name__}")


def _import_namedtuple(path: str):
    module, _, name = path.partition(":")
    if not (module == "refopt" or module.startswith("refopt.")):
        raise ValueError(f"refusing to import {module!r}: saved states may only name refopt classes")
    obj = importlib.import_module(module)
    for part in name.split("."):
        obj = getattr(obj, part)
    return obj


def decode(skel, arrays, device: bool = True):
    """Inverse of ``encode``; arrays are moved to the active backend when ``device``."""
    if skel is None or isinstance(skel, (bool, str)):
        return skel
    if "int" in skel:
        return int(skel["int"])
    if "float" in skel:
        return float(skel["float"])
    if "namedtuple" in skel:
        cls = _import_namedtuple(skel["namedtuple"])
        return cls(**{f: decode(v, arrays, device) for f, v in skel["fields"].items()})
    if "dict" in skel:
        return {k: decode(v, arrays, device) for k, v in skel["dict"].items()}
    if "list" in skel:
        return [decode(v, arrays, device) for v in skel["list"]]
    if "tuple" in skel:
        return tuple(decode(v, arrays, device) for v in skel["tuple"])
    if "array" in skel:
        a = arrays[skel["array"]]
        if not device:
            return a
        return as_array(a, a.dtype)
    raise ValueError(f"unreadable entry in a saved file: {skel!r}")


@contextlib.contextmanager
def atomic_path(path: str):
    """Yield a temporary path in ``path``'s folder; on success it is renamed to ``path``, on failure removed."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    suffix = os.path.splitext(path)[1]
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=suffix, dir=folder)
    os.close(fd)
    try:
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the permissions open() would
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def savez_atomic(path: str, **arrays) -> None:
    """``numpy.savez`` to a temporary file in the target folder, renamed into place when complete."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **arrays)


def write_npz_atomic(path: str, meta: dict, **named) -> None:
    """Write ``meta`` (as JSON) and named objects (encoded) to ``path`` atomically."""
    arrays: list = []
    skeleton = {name: encode(obj, arrays) for name, obj in named.items()}
    payload = {f"a{i}": a for i, a in enumerate(arrays)}
    payload["meta"] = np.array(json.dumps(meta))
    payload["skeleton"] = np.array(json.dumps(skeleton))
    savez_atomic(path, **payload)


def load_npz(path: str) -> dict:
    """All arrays of an ``.npz`` file (no pickles); ValueError if it cannot be read as one."""
    try:
        with np.load(path, allow_pickle=False) as data:
            return dict(data)
    except FileNotFoundError:
        raise
    except Exception as exc:
        raise ValueError(f"{path}: not a readable .npz file ({exc})") from exc


def read_npz(path: str, device: bool = True) -> tuple[dict, dict]:
    """(meta, objects) from a file written by ``write_npz_atomic``; ValueError if it is not one."""
    files = load_npz(path)
    if "meta" not in files or "skeleton" not in files:
        raise ValueError(f"{path}: not a refopt file (no 'meta'/'skeleton' entries)")
    meta = json.loads(str(files["meta"]))
    skeleton = json.loads(str(files["skeleton"]))
    arrays = [files[f"a{i}"] for i in range(sum(1 for k in files if k.startswith("a") and k[1:].isdigit()))]
    return meta, {k: decode(v, arrays, device) for k, v in skeleton.items()}
