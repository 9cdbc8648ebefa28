"""Helpers shared by several test files: scripted and tiny oracles, a run loop, and the checks that every
optimizer's tests make the same way. ``conftest.py`` registers this module for pytest's assertion rewriting,
so a failing check reports its values like an ``assert`` written in the test itself."""
import copy
import inspect
import itertools

import numpy as np

from refopt import tree as T
from refopt.nn import MLP, Gaussian, SoftmaxCrossEntropy
from refopt.oracle import FunctionOracle, Oracle


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
    """Each class's ``switches`` names constructor arguments, and each argument's default is one of its
    listed choices."""
    for cls in classes:
        sig = inspect.signature(cls.__init__).parameters
        assert all(sig[k].default in v for k, v in cls.switches.items())
