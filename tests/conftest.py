"""Test configuration: float64 NumPy backend, and hypothesis profiles sized for 2 CI cores.

Profiles: "ci" (the default: few examples, no deadline) and "thorough" (select with
``pytest --hypothesis-profile=thorough`` or HYPOTHESIS_PROFILE=thorough).
"""
import os

# One BLAS thread: the tests use small matrices, and multi-threaded OpenBLAS slows down badly when the
# two CI cores are shared.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from hypothesis import HealthCheck, settings

# The shared checks in tests/_helpers.py report their values on failure like asserts in the tests themselves.
pytest.register_assert_rewrite("_helpers")

settings.register_profile("ci", max_examples=15, deadline=None, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("thorough", max_examples=200, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(autouse=True)
def _numpy_float64_backend():
    from refopt import backend
    backend.set_backend("numpy")
    backend.set_default_dtype("float64")
    yield
    backend.set_default_dtype("float64")


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
