"""Test configuration: float64 NumPy backend, and hypothesis profiles sized for 2 CI cores.

dtype and backend: every test starts on NumPy in float64 (the autouse fixture below), because the suite's
tolerances are float64's (closed forms to ~1e-10). ``REFOPT_DTYPE`` and ``REFOPT_BACKEND`` in the caller's
environment are removed here, before refopt is imported, so the suite and the subprocesses it starts are
the same whatever the shell has set; a test that needs them sets them itself. The float32 mode is tested
in every run by ``test_float32.py``, which switches to float32 explicitly and checks each result against
the float64 run (and ``REFOPT_DTYPE=float32`` end to end in a subprocess).

Profiles: "ci" (the default: few examples, no deadline) and "thorough" (select with
``pytest --hypothesis-profile=thorough`` or HYPOTHESIS_PROFILE=thorough).
"""
import os

# The suite must not depend on the caller's environment (see above).
for _name in ("REFOPT_DTYPE", "REFOPT_BACKEND"):
    os.environ.pop(_name, None)

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
