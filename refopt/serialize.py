"""Saving nested optimizer states and parameters to ``.npz``, exactly and atomically; reading them back
without trusting the file.

``encode(obj)`` turns a nest of NamedTuples, dicts, lists, tuples, arrays and Python scalars into a
JSON skeleton plus a list of arrays; ``decode`` inverts it. Floats go through ``repr`` in JSON and arrays
through NumPy's binary format, so a round trip is bit-exact.

**Loading never runs code.** A NamedTuple is saved by its class name only (``{"namedtuple": "AdamState",
"fields": {...}}``) and rebuilt from an explicit registry of refopt's state classes, filled by the
``@register_state`` decorator on each class: the file chooses a key of that registry, never a module, an
attribute or a callable. Its fields must be exactly the class's fields. (Files written before the
registry named ``"refopt.optim.adam:AdamState"``; only the final name is used, looked up the same way.)
The registry holds the classes of the modules imported so far: import the optimizer first
(``runner.load_checkpoint`` does).

**Loading checks before it builds.** ``load_npz`` reads every member's header first and refuses pickled
objects, members that are not arrays and more than ``MAX_NPZ_BYTES`` of array data in all, before it
reads any data. ``read_npz`` then requires exactly the entries ``meta``, ``skeleton``, ``a0`` … ``a{n-1}``,
parses the two JSON strings (a nesting too deep for the parser is refused, not a RecursionError),
validates the whole skeleton (known node kinds only, nesting ≤ ``MAX_DEPTH``, integers within
±``MAX_INT``, array indices in range, registered classes with their exact fields, arrays of bool,
integer or float32/float64 dtype) and only then builds the objects. Every refusal is one ValueError line
that names the file and where in it the problem lies.

``write_npz_atomic`` (and ``atomic_path`` for any other file) writes to a temporary file in the target
folder and renames it into place, so an interrupted write never leaves a half-written file under the
final name.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import re
import tempfile

import numpy as np

from .backend import as_array, to_host

__all__ = ["encode", "decode", "register_state", "state_class", "state_classes", "atomic_path", "savez_atomic",
           "write_npz_atomic", "load_npz", "read_npz", "MAX_NPZ_BYTES", "MAX_DEPTH", "MAX_INT", "MAX_SEED",
           "json_entry", "short_repr", "shorten"]

MAX_NPZ_BYTES = 2 ** 31     # array data a loader reads from one file (2 GiB), checked from the headers
MAX_DEPTH = 64              # nesting of a skeleton (refopt's states nest about 6 deep)
MAX_INT = 2 ** 63 - 1       # |int| saved or loaded: step counters and seeds fit in int64
# Every seed refopt takes (optimizers, runs, data splits, traces) is an integer in [0, MAX_SEED], so that it fits
# the int64 of every file refopt writes; defined here, the lowest unit that needs it (optim.base re-exports it).
MAX_SEED = MAX_INT
SHORT = 80                  # characters of a value an error message shows at most (CONTRIBUTING.md, "Bad input")

_STATES: dict[str, type] = {}
_ARRAY_KINDS = "biuf"       # bool, signed and unsigned integers, floats (float32/float64 only)
_OLD_NAME = re.compile(r"refopt(\.[A-Za-z_]\w*)*:([A-Za-z_]\w*\.)*([A-Za-z_]\w*)")


def register_state(cls):
    """Class decorator: allow the NamedTuple ``cls`` to be saved and rebuilt by ``decode`` (by its name)."""
    if not (isinstance(cls, type) and issubclass(cls, tuple) and hasattr(cls, "_fields")):
        raise TypeError(f"register_state: expected a NamedTuple class, got {cls!r}")
    old = _STATES.get(cls.__name__)
    if old is not None and (old.__module__, old.__qualname__) != (cls.__module__, cls.__qualname__):
        raise ValueError(f"register_state: the name {cls.__name__!r} is taken by {old.__module__}.{old.__qualname__}")
    _STATES[cls.__name__] = cls
    return cls


def state_classes() -> dict:
    """{name: class} of the registered state classes (those of the modules imported so far)."""
    return dict(_STATES)


def state_class(name) -> type:
    """The registered state class saved as ``name`` (a plain class name, or the old "refopt.module:Name")."""
    if not isinstance(name, str):
        raise ValueError(f"a state class is named by a string, got {short_repr(name)}")
    key = name
    if not name.isidentifier():
        m = _OLD_NAME.fullmatch(name)
        if m is None:
            raise ValueError(f"unknown state class {short_repr(name)}: states are named by a registered class name")
        key = m.group(3)
    if key.startswith("_") or key not in _STATES:
        raise ValueError(f"unknown state class {short_repr(name)}; registered: {', '.join(sorted(_STATES)) or 'none'}")
    return _STATES[key]


def shorten(text: str, limit: int = SHORT) -> str:
    """``text`` cut to ``limit`` characters ("..." ending the cut), for error messages."""
    return text if len(text) <= limit else text[:limit - 3] + "..."


def short_repr(obj, limit: int = SHORT) -> str:
    """The repr of ``obj`` for an error message, cut to ``limit`` characters; refopt's one value-display helper.
    An integer of more than 256 bits (78 digits) is shown by its number of digits, estimated from
    ``bit_length`` (repr() of one over 4300 digits is itself an error); a broken ``__repr__`` as ``<TypeName>``."""
    if isinstance(obj, int) and not isinstance(obj, bool):
        bits = abs(obj).bit_length()
        if bits > 256:   # log10(2) digits per bit
            return f"{'a negative' if obj < 0 else 'an'} integer of about {int(bits * 0.30103) + 1} digits"
    try:
        text = repr(obj)
    except Exception:  # noqa: BLE001 - a broken __repr__ must not hide the message it is part of
        text = f"<{type(obj).__name__}>"
    return shorten(text, limit)


def encode(obj, arrays: list):
    """JSON-able skeleton of ``obj``; array leaves are appended to ``arrays`` and referenced by index."""
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, (int, np.integer)) and not isinstance(obj, (bool, np.bool_)):
        if abs(int(obj)) > MAX_INT:
            raise ValueError(f"cannot save the integer {short_repr(int(obj))}: beyond ±(2⁶³ − 1)")
        return {"int": int(obj)}
    if isinstance(obj, (float, np.floating)):
        return {"float": repr(float(obj))}
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):
        cls = type(obj)
        if _STATES.get(cls.__name__) is not cls:
            raise TypeError(f"cannot save a {cls.__module__}.{cls.__qualname__}: not a registered state class "
                            "(decorate it with refopt.serialize.register_state)")
        return {"namedtuple": cls.__name__, "fields": {f: encode(getattr(obj, f), arrays) for f in obj._fields}}
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


def _check_int(value, where: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{where}: expected an integer, got {short_repr(value)}")
    if abs(value) > MAX_INT:
        raise ValueError(f"{where}: integer beyond ±(2⁶³ − 1)")


def _validate(skel, n_arrays: int, where: str, depth: int = 0) -> None:
    """Raise ValueError (naming ``where``) unless ``skel`` is a well-formed skeleton; builds nothing."""
    if depth > MAX_DEPTH:
        raise ValueError(f"{where}: nested deeper than {MAX_DEPTH} levels")
    if skel is None or isinstance(skel, (bool, str)):
        return
    if not isinstance(skel, dict) or len(skel) not in (1, 2):
        raise ValueError(f"{where}: unreadable entry {short_repr(skel)}")
    keys = set(skel)
    if keys == {"namedtuple", "fields"}:
        cls = state_class(skel["namedtuple"])
        fields = skel["fields"]
        if not isinstance(fields, dict):
            raise ValueError(f"{where}: the fields of {cls.__name__} must be an object, got {short_repr(fields)}")
        missing, unknown = set(cls._fields) - set(fields), set(fields) - set(cls._fields)
        if missing or unknown:
            raise ValueError(f"{where}: {cls.__name__} has fields {list(cls._fields)}; missing {sorted(missing)}, "
                             f"unknown {sorted(map(str, unknown))}")
        for f, v in fields.items():
            _validate(v, n_arrays, f"{where}.{f}", depth + 1)
        return
    if len(keys) != 1:
        raise ValueError(f"{where}: unreadable entry {short_repr(skel)}")
    (kind, value), = skel.items()
    if kind == "int":
        _check_int(value, where)
    elif kind == "float":
        if not isinstance(value, str):
            raise ValueError(f"{where}: a float is saved as its repr string, got {short_repr(value)}")
        try:
            float(value)
        except ValueError:
            raise ValueError(f"{where}: not a float: {short_repr(value)}") from None
    elif kind == "array":
        _check_int(value, where)
        if not 0 <= value < n_arrays:
            raise ValueError(f"{where}: array index {value} out of range (the file has {n_arrays} arrays)")
    elif kind == "dict":
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise ValueError(f"{where}: a dict must be an object with string keys, got {short_repr(value)}")
        for k, v in value.items():
            _validate(v, n_arrays, f"{where}[{k!r}]", depth + 1)
    elif kind in ("list", "tuple"):
        if not isinstance(value, list):
            raise ValueError(f"{where}: a {kind} must be a JSON array, got {short_repr(value)}")
        for i, v in enumerate(value):
            _validate(v, n_arrays, f"{where}[{i}]", depth + 1)
    else:
        raise ValueError(f"{where}: unreadable entry {short_repr(skel)}")


def _build(skel, arrays, device: bool):
    if skel is None or isinstance(skel, (bool, str)):
        return skel
    if "namedtuple" in skel:
        cls = state_class(skel["namedtuple"])
        return cls(**{f: _build(v, arrays, device) for f, v in skel["fields"].items()})
    (kind, value), = skel.items()
    if kind == "int":
        return int(value)
    if kind == "float":
        return float(value)
    if kind == "dict":
        return {k: _build(v, arrays, device) for k, v in value.items()}
    if kind == "list":
        return [_build(v, arrays, device) for v in value]
    if kind == "tuple":
        return tuple(_build(v, arrays, device) for v in value)
    a = arrays[value]
    return as_array(a, a.dtype) if device else a


def decode(skel, arrays, device: bool = True, where: str = "skeleton"):
    """Inverse of ``encode``: validates all of ``skel`` first (ValueError naming ``where``), then builds it;
    arrays are moved to the active backend when ``device``."""
    _validate(skel, len(arrays), where)
    return _build(skel, arrays, device)


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


def _member_header(zf, member: str):
    """(shape, dtype) from the .npy header of ``member``, reading nothing else."""
    with zf.open(member) as fh:
        version = np.lib.format.read_magic(fh)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(fh)
        elif version == (2, 0):
            shape, _, dtype = np.lib.format.read_array_header_2_0(fh)
        else:
            raise ValueError(f"unsupported .npy format version {version}")
    return shape, dtype


_ZIP_MAGIC = b"PK\x03\x04"   # an .npz is a zip archive of .npy members (an empty archive starts PK\x05\x06)


def load_npz(path: str, max_bytes: int = MAX_NPZ_BYTES, keys=None) -> dict:
    """The arrays of an ``.npz`` file (only those named in ``keys``, when given; every header is checked in
    any case); ValueError if it cannot be read as one (a file that is not a zip archive is refused before
    NumPy sees it), holds Python objects (pickles), or its headers declare more than ``max_bytes`` of array
    data (checked before reading)."""
    try:
        with open(path, "rb") as fh:
            magic = fh.read(4)
    except FileNotFoundError:
        raise
    except OSError as exc:  # a folder, no permission: the file cannot be read at all
        raise ValueError(f"{path}: cannot be read ({exc.strerror or type(exc).__name__})") from None
    if magic not in (_ZIP_MAGIC, b"PK\x05\x06"):
        raise ValueError(f"{path}: not an .npz archive (a zip of .npy arrays); the file starts with {magic!r}")
    try:
        data = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise
    except OSError as exc:  # a folder, no permission: the file cannot be read at all
        raise ValueError(f"{path}: cannot be read ({exc.strerror or type(exc).__name__})") from None
    except Exception as exc:
        raise ValueError(f"{path}: not a readable .npz file ({_one_line(exc)})") from None
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise ValueError(f"{path}: not an .npz archive (a single .npy array)")
    with data:
        try:
            total = 0
            for member in data.zip.namelist():
                name = member[:-4] if member.endswith(".npy") else member
                try:
                    shape, dtype = _member_header(data.zip, member)
                except ValueError as exc:
                    raise ValueError(f"entry {name!r} is not an array ({_one_line(exc)})") from None
                if dtype.hasobject:
                    raise ValueError(f"entry {name!r} holds Python objects (pickles are refused)")
                total += math.prod(shape) * dtype.itemsize
                if total > max_bytes:
                    raise ValueError(f"its arrays exceed {max_bytes} bytes (entry {name!r} has shape {shape})")
        except ValueError as exc:
            raise ValueError(f"{path}: {_one_line(exc)}") from None
        except Exception as exc:  # a corrupt archive: zipfile and zlib errors
            raise ValueError(f"{path}: not a readable .npz file ({type(exc).__name__}: {_one_line(exc)})") from None
        try:
            return {name: data[name] for name in data.files if keys is None or name in keys}
        except Exception as exc:  # data shorter than its header says, corrupt compression
            raise ValueError(f"{path}: not a readable .npz file ({_one_line(exc)})") from None


def _one_line(exc) -> str:
    return " ".join(str(exc).split())


def json_entry(files: dict, key: str, path: str):
    """Parse the 0-d string array ``files[key]`` as JSON; ValueError (one line) if it is not one."""
    a = files.get(key)
    if a is None:
        raise ValueError(f"{path}: missing entry {key!r}")
    if a.ndim != 0 or a.dtype.kind != "U":
        raise ValueError(f"{path}: entry {key!r} must be a JSON string (0-d str array), got {a.dtype} of shape {a.shape}")
    try:
        return json.loads(str(a))
    except RecursionError:
        raise ValueError(f"{path}: entry {key!r} is nested too deeply to read") from None
    except ValueError as exc:  # JSONDecodeError, and integers beyond Python's digit limit
        raise ValueError(f"{path}: entry {key!r} is not valid JSON ({_one_line(exc)})") from None


def read_npz(path: str, device: bool = True, check_meta=None, max_bytes: int = MAX_NPZ_BYTES) -> tuple[dict, dict]:
    """(meta, objects) from a file written by ``write_npz_atomic``; ValueError if it is not one.

    ``check_meta(meta)`` (optional) may refuse the file by raising ValueError before anything is decoded.
    """
    files = load_npz(path, max_bytes)
    if "meta" not in files or "skeleton" not in files:
        raise ValueError(f"{path}: not a refopt file (no 'meta'/'skeleton' entries)")
    n = len(files) - 2
    unexpected = sorted(set(files) - {"meta", "skeleton"} - {f"a{i}" for i in range(n)})
    if unexpected:
        raise ValueError(f"{path}: unexpected entries {unexpected[:5]} (expected meta, skeleton, a0 … a{n - 1})")
    meta = json_entry(files, "meta", path)
    if not isinstance(meta, dict):
        raise ValueError(f"{path}: meta must be a JSON object, got {type(meta).__name__}")
    skeleton = json_entry(files, "skeleton", path)
    if not isinstance(skeleton, dict):
        raise ValueError(f"{path}: skeleton must be a JSON object of named entries, got {type(skeleton).__name__}")
    if check_meta is not None:
        check_meta(meta)
    arrays = [files[f"a{i}"] for i in range(n)]
    for i, a in enumerate(arrays):
        if a.dtype.kind not in _ARRAY_KINDS or (a.dtype.kind == "f" and a.dtype.name not in ("float32", "float64")):
            raise ValueError(f"{path}: array a{i} has dtype {a.dtype} (expected bool, integer, float32 or float64)")
    try:
        for k, v in skeleton.items():
            _validate(v, n, k)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
    return meta, {k: _build(v, arrays, device) for k, v in skeleton.items()}
