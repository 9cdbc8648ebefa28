"""Helpers shared by several test files: scripted and tiny oracles, a run loop, and the checks that every
optimizer's tests make the same way. ``conftest.py`` registers this module for pytest's assertion rewriting,
so a failing check reports its values like an ``assert`` written in the test itself."""
import copy
import inspect
import itertools

import numpy as np

import fake_cupy
from refopt import backend as B
from refopt import tree as T
from refopt.nn import MLP, Gaussian, SoftmaxCrossEntropy
from refopt.oracle import FunctionOracle, Oracle


def one_error_line(capsys, output: bool = False) -> str:
    """The one line ``refopt: error: ...`` that a refused ``refopt`` command wrote to stderr (checked here),
    for the test's own checks of its text; stdout must be empty (refused before any work or output) unless
    ``output`` (a command refused after it printed, as a full disk at its last write)."""
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("refopt: error: "), captured.err
    assert output or captured.out == "", captured.out
    return lines[0]


class ScriptedOracle:
    """Returns the given gradients one after another (the loss is 0), whatever the params."""

    def __init__(self, grads):
        self.grads = list(grads)
        self.calls = 0

    def value_and_grad(self, params):
        g = self.grads[self.calls]
        self.calls += 1
        return 0.0, g


def quadratic(a, c, scale=1.0):
    """f(x) = scale · (½ Σ a_i x_i² + c·x), gradient scale · (a⊙x + c)."""
    a, c = np.asarray(a, float), np.asarray(c, float)
    return FunctionOracle(lambda x: scale * (0.5 * float(np.sum(a * x * x)) + float(c @ x)),
                          grad=lambda x: scale * (a * x + c))


def mlp_problem(sizes, batch, seed, loss="softmax", X=None):
    """(model, params, oracle): ``MLP(sizes)`` initialised with seed + 1, on a seeded batch of standard-normal
    inputs (or ``X``) with random class labels (loss "softmax") or standard-normal targets ("gaussian")."""
    g = np.random.default_rng(seed)
    model = MLP(list(sizes))
    params = model.init(seed + 1)
    X = g.standard_normal((batch, sizes[0])) if X is None else X
    if loss == "softmax":
        return model, params, Oracle(model, SoftmaxCrossEntropy(), X, g.integers(0, sizes[-1], X.shape[0]))
    return model, params, Oracle(model, Gaussian(), X, g.standard_normal((X.shape[0], sizes[-1])))


def all_rademacher(like) -> list:
    """All 2ⁿ Rademacher probe trees shaped like ``like`` (n = its size): averaging z ⊙ Hz over them gives
    diag(H) exactly."""
    n = T.size(like)
    return [T.unravel(np.array(s, dtype=float), like) for s in itertools.product([-1.0, 1.0], repeat=n)]


def run(opt, x0, oracle, steps):
    """``steps`` updates from ``opt.init(x0)``: the last (params, state, info)."""
    x, s, info = x0, opt.init(x0), None
    for _ in range(steps):
        x, s, info = opt.update(x, s, oracle)
    return x, s, info


def assert_same_values(a, b):
    """Two nested params/states (NamedTuples, lists, tuples, dicts of arrays and numbers) are equal entry by
    entry (NaNs in the same places count as equal)."""
    assert type(a) is type(b)
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            assert_same_values(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_same_values(x, y)
    elif isinstance(a, np.ndarray):
        np.testing.assert_array_equal(a, b)
    else:
        assert a == b


def assert_refused(opt, params, state, oracle, fragment, **kwargs):
    """One update from (params, state) is refused: info says so, its message contains ``fragment``, the
    very same params and state objects come back, and their values equal a copy taken before the update
    (nothing was modified in place)."""
    params_before, state_before = copy.deepcopy(params), copy.deepcopy(state)
    new, new_state, info = opt.update(params, state, oracle, **kwargs)
    assert info["skipped"] and fragment in info["message"]
    assert new is params and new_state is state
    assert_same_values(params, params_before)
    assert_same_values(state, state_before)


def assert_descends(opt, oracle, params, steps=5):
    """``steps`` updates from ``params`` lower the oracle's loss."""
    state = opt.init(params)
    first = oracle.value(params)
    for _ in range(steps):
        params, state, _ = opt.update(params, state, oracle)
    assert oracle.value(params) < first


def assert_switches_declared_with_defaults(*classes):
    """Each class's declared switches (``conventions``) name constructor arguments whose defaults are the
    declared ones (``tests/test_declarations.py`` checks this and more for every registered optimizer)."""
    for cls in classes:
        sig = inspect.signature(cls.__init__).parameters
        assert cls.conventions and all(sig[sw.name].default == sw.default for sw in cls.conventions)


# --- functions at the rounding floor (line searches, minimize, the runner's "precision" stop) ---------
F_FLOOR = -326.0                      # f's minimum value; one ulp of it is 2⁻⁴⁴ ≈ 5.7e-14
ULP_FLOOR = 2.0 ** -44                # math.ulp(-326.0), spelled out (math.ulp needs Python ≥ 3.9)


def ulp_noise(key: bytes, low: int = 3, high: int = 5) -> int:
    """A fixed integer in [low, high] from a hash of ``key``: noise that is the same on every machine."""
    import hashlib  # noqa: PLC0415
    return low + int.from_bytes(hashlib.blake2b(key, digest_size=4).digest(), "little") % (high - low + 1)


def noisy_phi(b: float = -4.4e-13, alpha_star: float = 0.4, shape: str = "quadratic"):
    """φ(α) = fl(F + q(α)) + k(α)·ulp(F) with k(α) ∈ {3, 4, 5} a hash of α (φ(0) = F, no noise), F = −326,
    and φ' exact: "quadratic" q = ½ a α² + b α with minimiser α* (a = −b/α*), so the whole decrease
    −½ b α* ≈ 1.5 ulp is below rounding; "kink" φ' = b before α*, −2b after (no approximate Wolfe point).
    Every trial value is ≥ F + ulp > φ(0): no search that reads values can see a decrease."""
    import struct  # noqa: PLC0415
    a = -b / alpha_star

    def phi(t):
        noise = ulp_noise(struct.pack("<d", t)) * ULP_FLOOR
        if shape == "quadratic":
            return (F_FLOOR + (0.5 * a * t * t + b * t)) + noise, a * t + b
        return F_FLOOR + noise, (b if t < alpha_star else -2.0 * b)
    return phi


def rounding_floor_oracle(lam=(1.0, 3.0, 10.0, 30.0), grad_noise: float = 0.0):
    """(FunctionOracle, x0) for f(x) = fl(F + ½ Σ λ_i x_i²) + k(x)·ulp(F), k(x) ∈ {3, 4, 5} a hash of x's
    bytes (0 at x0), F = −326; the gradient is exact (λ ⊙ x), plus ``grad_noise`` · (±1 by a hash of x)
    per coordinate when given (a gradient at its own noise floor). x0 is so close to the minimiser 0 that
    the whole available decrease, ½ Σ λ x0² = ½ ulp(F), is below rounding: every value other than f(x0)
    is above f(x0)."""
    lam = np.asarray(lam, float)
    x0 = np.sqrt(0.5 * ULP_FLOOR / (0.5 * lam.sum())) * np.resize([1.0, -1.0], lam.size)
    key0 = x0.tobytes()

    def f(x):
        x = np.asarray(x, float)
        base = F_FLOOR + 0.5 * float(np.sum(lam * x * x))
        return base if x.tobytes() == key0 else base + ulp_noise(x.tobytes()) * ULP_FLOOR

    def grad(x):
        x = np.asarray(x, float)
        g = lam * x
        if grad_noise:
            signs = np.array([1.0 if ulp_noise(x.tobytes() + bytes([i]), 0, 1) else -1.0 for i in range(x.size)])
            g = g + grad_noise * signs
        return g
    return FunctionOracle(f, grad=grad), x0


# --- one computation on NumPy and on the CuPy stand-in (tests/fake_cupy.py) -----------------------------------


def host(obj):
    """A host (NumPy) copy of a nested result, made while its backend is active."""
    if isinstance(obj, dict):
        return {k: host(v) for k, v in obj.items()}
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):
        return type(obj)(*(host(v) for v in obj))
    if isinstance(obj, (list, tuple)):
        return type(obj)(host(v) for v in obj)
    if isinstance(obj, (fake_cupy.ndarray, np.ndarray, np.generic)):
        return B.to_host(obj)
    return obj


def host_arrays_in(obj, path="result"):
    """Paths of NumPy arrays inside a result made on the device (state or params left on the host: a leak)."""
    if isinstance(obj, dict):
        return [p for k, v in obj.items() for p in host_arrays_in(v, f"{path}[{k!r}]")]
    if isinstance(obj, (list, tuple)):
        return [p for i, v in enumerate(obj) for p in host_arrays_in(v, f"{path}[{i}]")]
    return [path] if isinstance(obj, np.ndarray) else []


def on_both(fn, host_ok=False):
    """(NumPy result, fake-CuPy result) of ``fn()``, each copied to the host; the device run must leave no
    NumPy array in its result (``host_ok``: the result holds host arrays by nature, e.g. read back from files
    or small summaries such as eigenvalues)."""
    B.set_backend("numpy")
    ref = host(fn())
    B._use_array_module(fake_cupy, "cupy")
    try:
        out = fn()
        assert host_ok or not host_arrays_in(out), host_arrays_in(out)
        dev = host(out)
    finally:
        B.set_backend("numpy")
    return ref, dev
