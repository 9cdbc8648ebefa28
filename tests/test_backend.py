"""The backend: choosing NumPy/CuPy, the default dtype, host-side seeded draws."""
from __future__ import annotations

import importlib.util
import os
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest

from refopt import backend as B

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_xp_forwards_to_numpy_by_default():
    assert B.backend_name() == "numpy"
    assert B.xp.exp is np.exp and "numpy" in repr(B.xp)


def test_what_xp_kept_follows_a_change_of_module():
    """xp keeps what it forwarded, and drops it when the module changes: after NumPy's exp and errstate were
    read, the CuPy stand-in's exp is returned and its missing errstate is an AttributeError, then NumPy's again."""
    import fake_cupy
    assert B.xp.exp is np.exp and B.xp.errstate is np.errstate  # read, so kept
    try:
        B._use_array_module(fake_cupy, "cupy")
        assert B.xp.exp is fake_cupy.exp and B.xp.exp is not np.exp
        with pytest.raises(AttributeError):
            B.xp.errstate  # noqa: B018 - CuPy has none; a kept NumPy errstate would hide that
        assert not hasattr(B.xp, "errstate")
    finally:
        B.set_backend("numpy")
    assert B.xp.exp is np.exp and B.xp.errstate is np.errstate


def test_unknown_backend_is_a_value_error():
    with pytest.raises(ValueError, match="backend"):
        B.set_backend("torch")
    assert B.backend_name() == "numpy"


@pytest.mark.skipif(importlib.util.find_spec("cupy") is not None, reason="CuPy is installed here")
def test_cupy_without_cupy_is_a_clear_runtime_error():
    with pytest.raises(RuntimeError, match="CuPy is not installed"):
        B.set_backend("cupy")
    assert B.backend_name() == "numpy"  # the failed switch leaves the backend alone


def test_default_dtype_float64_and_float32():
    assert B.default_dtype() is np.float64
    assert B.as_array([1, 2]).dtype == np.float64
    B.set_default_dtype("float32")
    assert B.as_array([1, 2]).dtype == np.float32
    assert B.normal(0, (3,)).dtype == np.float32
    assert B.as_array(np.ones(2, dtype=np.float64)).dtype == np.float64  # float input keeps its dtype
    B.set_default_dtype(np.float64)
    assert B.default_dtype() is np.float64


def test_is_floating_is_cached_and_takes_any_dtype_description():
    """Asked on every forward pass: answered from a cache after the first time; unhashable descriptions (a
    list of fields) and non-dtypes still get NumPy's answer and error, uncached."""
    d = np.dtype("float32")
    B.is_floating(d)
    hits = B._floating_dtype.cache_info().hits
    assert B.is_floating(d) and B._floating_dtype.cache_info().hits == hits + 1
    assert [B.is_floating(t) for t in (np.float64, "float64", "f4", np.int64, "float16", [("a", "f8")])] == \
        [True, True, True, False, False, False]
    with pytest.raises(TypeError, match="data type"):
        B.is_floating(object())


@pytest.mark.parametrize("bad", ["float16", "int32", np.int64, "complex128", "no-such-type"])
def test_unsupported_default_dtypes_are_type_errors(bad):
    with pytest.raises(TypeError, match="dtype"):
        B.set_default_dtype(bad)
    assert B.default_dtype() is np.float64


def test_seeded_draws_are_reproducible_and_follow_the_documented_scheme():
    shape = (3, 4)
    np.testing.assert_array_equal(B.normal(7, shape), B.normal(7, shape))
    assert not np.array_equal(B.normal(7, shape), B.normal(8, shape))
    # The scheme: numpy's default_rng(seed) (PCG64) on the host, then moved to the device.
    np.testing.assert_array_equal(B.normal(7, shape), np.random.default_rng(7).standard_normal(shape))
    np.testing.assert_array_equal(B.uniform(7, shape, -1.0, 2.0), np.random.default_rng(7).uniform(-1, 2, shape))
    r = B.rademacher(7, shape)
    np.testing.assert_array_equal(r, np.random.default_rng(7).integers(0, 2, shape) * 2 - 1)
    assert set(np.unique(r)) <= {-1.0, 1.0} and r.dtype == np.float64
    # A Generator passed in is used (and advanced), not re-seeded.
    g = np.random.default_rng(3)
    assert B.rng(g) is g
    a, b = B.normal(g, 2), B.normal(g, 2)
    np.testing.assert_array_equal(np.concatenate([a, b]), np.random.default_rng(3).standard_normal(4))


def test_a_seed_is_required():
    with pytest.raises(ValueError, match="seed"):
        B.rng(None)
    with pytest.raises(ValueError, match="seed"):
        B.normal(None, 3)


def test_host_device_transfers_round_trip():
    x = np.arange(6.0).reshape(2, 3)
    np.testing.assert_array_equal(B.to_host(B.to_device(x)), x)
    assert B.is_floating(np.float32) and B.is_floating("float64") and not B.is_floating(np.int64)
    assert not B.is_floating(np.float16)


def _run(code, **env):
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **env}, timeout=60)


def test_environment_variables_choose_backend_and_dtype():
    ok = _run("from refopt import backend as B; print(B.backend_name(), B.default_dtype().__name__)",
              REFOPT_BACKEND="numpy", REFOPT_DTYPE="float32")
    assert ok.returncode == 0 and ok.stdout.split() == ["numpy", "float32"], ok.stderr
    bad = _run("import refopt.backend", REFOPT_BACKEND="tensorflow")
    assert bad.returncode != 0 and "backend must be" in bad.stderr


CORE = ["refopt/tree.py", "refopt/oracle.py", "refopt/linalg.py", "refopt/autodiff", "refopt/nn",
        "refopt/curvature"]


def test_core_modules_take_the_array_module_from_the_backend():
    """No core module imports NumPy or CuPy itself (the backend is the one place that does)."""
    pattern = re.compile(r"^\s*(import|from)\s+(numpy|cupy)\b|__import__\(\s*['\"](numpy|cupy)", re.M)
    files = []
    for entry in CORE:
        path = ROOT / entry
        files += sorted(path.rglob("*.py")) if path.is_dir() else [path]
    offenders = [str(f.relative_to(ROOT)) for f in files if pattern.search(f.read_text())]
    assert files and not offenders
