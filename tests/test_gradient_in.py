"""Gradient-in steps (refopt/optim/gradients.py): ``opt.apply_gradients`` and the optax-shaped adapter.

Ground truth: the oracle-driven ``update`` on the same problem. With gradients from HIPS autograd (an
independent autodiff) fed to both (a FunctionOracle whose grad is autograd's), the two runs are bit for bit
the same; against refopt's own network Oracle they differ only by the two autodiffs' rounding. Every
registered optimizer either takes gradient-in steps or refuses with its reason; every bad input is a
one-line ValueError. (The injected curvature estimates of AdaHessian and Sophia are tested in
test_adahessian.py and test_sophia.py, against the oracle runs whose draws they reuse.)
"""
import math
import re
from pathlib import Path

import autograd
import autograd.numpy as anp
import numpy as np
import pytest

from _helpers import assert_same_values, mlp_problem
from refopt import tree as T
from refopt.optim import OPTIMIZERS, make_optimizer, optimizer_class
from refopt.optim.gradients import (GradientOracle, apply_updates, as_gradient_transformation, gradient_in_methods)
from refopt.oracle import FunctionOracle

ROOT = Path(__file__).resolve().parent.parent
GRADIENT_ONLY = {"sgd": {"lr": 0.3, "momentum": 0.9}, "adam": {"lr": 0.05}, "adamw": {"lr": 0.05, "weight_decay": 0.1},
                 "adagrad": {"lr": 0.1}, "adagrad_full": {"lr": 0.05}, "shampoo": {"lr": 0.1, "momentum": 0.5}}
STEPS = 10


def test_the_list_of_gradient_in_methods_is_explicit():
    assert gradient_in_methods() == {
        "adagrad": (), "adagrad_full": (), "adam": (), "adamw": (), "shampoo": (), "sgd": (),
        "adahessian": ("hessian_diagonal",), "sophia_g": ("hessian_diagonal",), "sophia_h": ("hessian_diagonal",)}


def _autograd_mlp(X, y):
    """The softmax cross-entropy of refopt's MLP([3, 4, 2]) (tanh, then identity) in autograd.numpy."""
    def f(params):
        a = X
        for l, layer in enumerate(params):
            s = anp.dot(a, layer["W"]) + layer["b"]
            a = anp.tanh(s) if l < len(params) - 1 else s
        z = a - anp.max(a, axis=1, keepdims=True)
        return anp.mean(anp.log(anp.sum(anp.exp(z), axis=1)) - z[anp.arange(len(y)), y])
    return f


def _problem(seed=0):
    model, params, oracle = mlp_problem([3, 4, 2], 8, seed)
    return params, oracle, _autograd_mlp(oracle.X, oracle.y)


@pytest.mark.parametrize("name", sorted(GRADIENT_ONLY))
def test_autograd_gradients_in_a_user_loop_equal_the_oracle_run_bit_for_bit(name):
    """The oracle run asks a FunctionOracle whose gradient is autograd's; the user loop computes the same
    autograd gradient and passes it in: same params, states and infos at every step."""
    params, _, f = _problem()
    grad = autograd.grad(f)
    oracle = FunctionOracle(f, grad=grad)
    opt = make_optimizer(name, **GRADIENT_ONLY[name])
    p, s = params, opt.init(params)
    q, r = params, opt.init(params)
    for _ in range(STEPS):
        p, s, info = opt.update(p, s, oracle)
        q, r, info_in = opt.apply_gradients(grad(q), r, q, loss=f(q))
        assert_same_values(p, q)
        assert_same_values(s, r)
        assert info_in == info


@pytest.mark.parametrize("name", sorted(GRADIENT_ONLY))
def test_autograd_gradients_match_the_network_oracle_run(name):
    """Against refopt's own autodiff (network Oracle): the gradients differ by rounding only (the batch mean
    of B = 8 per-example terms: within B·eps of the gradient's largest entry; measured 1.1 eps). Over 10
    steps the parameters stay within 1e-14 relative to their largest entry for SGD, Adam(W) and Adagrad
    (measured ≤ 6e-16), 1e-13 for Shampoo (its inverse fourth roots of H + εI amplify the difference;
    measured 1e-14), and 1e-6 for full-matrix Adagrad, whose (δI + S^{1/2})⁻¹ with S of rank ≤ t and
    δ = 1e-6 amplifies roundoff in S's null directions by up to 1/δ (measured 8e-9; tests/test_golden.py
    gives its trace 1e-5 for the same reason)."""
    params, oracle, f = _problem(1)
    grad = autograd.grad(f)
    ours = T.leaves(oracle.grad(params))
    scale = max(np.abs(b).max() for b in ours)
    for a, b in zip(T.leaves(grad(params)), ours):
        np.testing.assert_allclose(a, b, rtol=0, atol=8 * np.finfo(float).eps * scale)
    opt = make_optimizer(name, **GRADIENT_ONLY[name])
    p, s = params, opt.init(params)
    q, r = params, opt.init(params)
    for _ in range(STEPS):
        p, s, _ = opt.update(p, s, oracle)
        q, r, _ = opt.apply_gradients(grad(q), r, q)
    tol = {"shampoo": 1e-13, "adagrad_full": 1e-6}.get(name, 1e-14)
    for a, b in zip(T.leaves(p), T.leaves(q)):
        np.testing.assert_allclose(b, a, rtol=0, atol=tol * np.abs(a).max())
    assert not np.allclose(T.leaves(p)[0], T.leaves(params)[0])   # the run moved


def _readme_block() -> str:
    """The Python block of the README's "Your own training loop" section."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Your own training loop (gradients from any framework)", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_readme_optax_style_loop_runs_and_reaches_the_least_squares_solution():
    namespace = {}
    exec(compile(_readme_block(), "README.md", "exec"), namespace)
    X, y, params = namespace["X"], namespace["y"], namespace["params"]
    A = np.hstack([X, np.ones((len(y), 1))])
    coef = np.linalg.lstsq(A, y, rcond=None)[0]   # the closed-form minimiser
    np.testing.assert_allclose(np.append(params["w"], params["b"]), coef, atol=1e-6)


def test_an_optax_style_loop_equals_apply_gradients_to_an_ulp():
    """updates = θ_{t+1} − θ_t, so θ_t + updates rounds once: the adapter's loop stays within a few ulps of θ
    of the apply_gradients loop (both under a cosine schedule)."""
    params, _, f = _problem(2)
    grad = autograd.grad(f)
    spec = {"name": "cosine", "decay_steps": 8, "warmup_steps": 2}
    tx = as_gradient_transformation(make_optimizer("adam", lr=0.05, schedule=spec))
    opt = make_optimizer("adam", lr=0.05, schedule=spec)
    p, s = params, tx.init(params)
    q, r = params, opt.init(params)
    for _ in range(STEPS):
        updates, s = tx.update(grad(p), s, p)
        p = apply_updates(p, updates)
        q, r, _ = opt.apply_gradients(grad(q), r, q)
    for a, b in zip(T.leaves(p), T.leaves(q)):
        np.testing.assert_allclose(a, b, rtol=0, atol=STEPS * 4 * np.finfo(float).eps * np.abs(b).max())
    assert s.step == r.step == STEPS


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_every_optimizer_takes_gradient_in_steps_or_refuses_with_its_reason(name):
    cls = optimizer_class(name)
    opt = cls()
    params, oracle, _ = _problem()
    loss, g = oracle.value_and_grad(params)
    if cls.gradient_in is None:
        for attempt in (lambda: opt.apply_gradients(g, opt.init(params), params),
                        lambda: as_gradient_transformation(opt)):
            with pytest.raises(ValueError, match=f"^{name} takes no gradient-in steps: it (needs|evaluates)"):
                attempt()
        return
    estimates = {}
    if opt.gradient_in_refusal() is None and "hessian_diagonal" in opt.estimates_needed(opt.init(params)):
        estimates["hessian_diagonal"] = oracle.hutchinson_diag(params, seed=0)
    new, state, info = opt.apply_gradients(g, opt.init(params), params, loss=loss, **estimates)
    assert not info["skipped"] and info["loss"] == loss and state.step == 1
    assert all(np.all(np.isfinite(a)) for a in T.leaves(new))


def test_the_loss_is_optional_and_reported_as_nan():
    params, oracle, _ = _problem()
    _, _, info = make_optimizer("adam").apply_gradients(oracle.grad(params), make_optimizer("adam").init(params), params)
    assert math.isnan(info["loss"])


# --- bad inputs -----------------------------------------------------------------------------------------
def _bad(fragment, call):
    with pytest.raises(ValueError) as info:
        call()
    text = str(info.value)
    assert fragment in text and "\n" not in text, text


def test_gradients_must_match_the_params():
    params, oracle, _ = _problem()
    g = oracle.grad(params)
    opt = make_optimizer("adam")
    state = opt.init(params)
    step = lambda grads, **kw: opt.apply_gradients(grads, state, params, **kw)   # noqa: E731
    _bad("grads must have the structure of params, [{W, b}, {W, b}]; got ({W, b}, {W, b})", lambda: step(tuple(g)))
    _bad("grads must have the structure of params", lambda: step(g[:1]))
    _bad("grads must have the structure of params", lambda: step([{"W": g[0]["W"]}, g[1]]))
    _bad("grads must have the structure of params", lambda: step([g[0], {**g[1], "c": g[1]["b"]}]))
    _bad("grads[0]['W'] has shape (4, 3), params[0]['W'] has (3, 4)", lambda: step([{**g[0], "W": g[0]["W"].T}, g[1]]))
    _bad("grads[1]['b'] has dtype float32, params[1]['b'] has float64",
         lambda: step([g[0], {**g[1], "b": g[1]["b"].astype(np.float32)}]))
    _bad("got [{W, b: [·, ·, ·, ·]}, {W, b}]", lambda: step([{**g[0], "b": list(g[0]["b"])}, g[1]]))  # a list: a subtree
    _bad("grads[0]['b'] must be an array of shape (4,), got 'x'", lambda: step([{**g[0], "b": "x"}, g[1]]))
    for loss in ("0.5", True, [0.5], np.array([0.5, 1.0])):
        _bad("loss must be a real number (or None)", lambda: step(g, loss=loss))
    _bad("adam takes gradients only (no estimates); got hessian_diagonal", lambda: step(g, hessian_diagonal=g))
    sgd = make_optimizer("sgd")   # a bare array is a tree of one leaf
    _bad("grads has shape (2,), params has (3,)", lambda: sgd.apply_gradients(np.ones(2), sgd.init(np.ones(3)),
                                                                              np.ones(3)))
    assert step(g, loss=np.float32(0.5))[2]["loss"] == 0.5      # NumPy scalars and 0-d arrays are numbers
    assert step(g, loss=np.array(0.25))[2]["loss"] == 0.25


def test_arrays_of_another_framework_are_read_through_numpy():
    class Foreign:   # the array protocol of JAX arrays and CPU tensors, nothing else
        def __init__(self, a):
            self._a, self.shape, self.dtype = a, a.shape, a.dtype

        def __array__(self, dtype=None, copy=None):
            return self._a
    params, oracle, _ = _problem()
    g = oracle.grad(params)
    opt = make_optimizer("sgd")
    ours = opt.apply_gradients(g, opt.init(params), params)
    theirs = opt.apply_gradients(T.tree_map(Foreign, g), opt.init(params), params)
    assert_same_values(ours[0], theirs[0])


def test_curvature_methods_name_the_estimate_they_need():
    params, oracle, _ = _problem()
    g = oracle.grad(params)
    opt = make_optimizer("adahessian")
    _bad("adahessian needs hessian_diagonal at this step: it would compute it from Hessian-vector products and "
         "Hutchinson probes", lambda: opt.apply_gradients(g, opt.init(params), params))
    _bad("pass hessian_diagonal=... (an estimate of diag ∇²L", lambda: opt.apply_gradients(g, opt.init(params), params))
    _bad("adahessian accepts hessian_diagonal; got hutchinson",
         lambda: opt.apply_gradients(g, opt.init(params), params, hutchinson=g))
    _bad("hessian_diagonal must have the structure of params",
         lambda: opt.apply_gradients(g, opt.init(params), params, hessian_diagonal=g[0]))
    sophia = make_optimizer("sophia_g")
    _bad("sophia_g needs hessian_diagonal at this step: it would compute it from the Gauss-Newton-Bartlett",
         lambda: sophia.apply_gradients(g, sophia.init(params), params))
    for bad, why in [(make_optimizer("sophia_h", refresh="after"), "refresh='after'"),
                     (make_optimizer("sophia_h", parametrization="official"), "refresh='after'"),
                     (make_optimizer("sophia_g", parametrization="official", refresh="before"), "give bs="),
                     (make_optimizer("lbfgs"), "trial points"), (make_optimizer("kfac"), "per-layer statistics")]:
        _bad(f"{type(bad).name} takes no gradient-in steps", lambda: bad.apply_gradients(g, bad.init(params), params))
        _bad(why, lambda: as_gradient_transformation(bad))
    official = make_optimizer("sophia_g", parametrization="official", refresh="before", bs=8)
    assert official.gradient_in_refusal() is None


def test_the_adapter_needs_params():
    params, oracle, _ = _problem()
    tx = as_gradient_transformation(make_optimizer("sgd"))
    _bad("params: refopt's sgd needs the current params", lambda: tx.update(oracle.grad(params), tx.init(params)))


@pytest.mark.parametrize("name", ["sgd", "adam", "adagrad", "shampoo"])
def test_a_non_finite_gradient_is_refused_as_the_optimizer_refuses_it(name):
    params, oracle, _ = _problem()
    g = oracle.grad(params)
    g[1]["b"] = g[1]["b"].copy()
    g[1]["b"][0] = np.nan
    opt = make_optimizer(name)
    state = opt.init(params)
    new, new_state, info = opt.apply_gradients(g, state, params)
    assert info["skipped"] and "non-finite gradient" in info["message"]
    assert new is params and new_state is state
    tx = as_gradient_transformation(opt)
    updates, after = tx.update(g, state, params)
    assert after is state and all(not np.any(u) for u in T.leaves(updates))


def test_the_oracle_refuses_other_points_and_other_requests():
    params, oracle, _ = _problem()
    g = oracle.grad(params)
    given = GradientOracle("lbfgs", params, g, 0.5)
    assert given.value_and_grad(params) == (0.5, g) and given.counts.ngev == 1
    _bad("lbfgs asks for the gradient at other parameters than the given ones",
         lambda: given.value_and_grad(T.copy(params)))
    _bad("lbfgs needs Hessian-vector products (hvp), which given gradients do not provide; use an oracle",
         lambda: given.hvp(params, g))
    _bad("lbfgs needs per-layer statistics of the network (layer_stats)", lambda: given.layer_stats)
    _bad("lbfgs needs the batch size (batch_size)", lambda: given.batch_size)
    with pytest.raises(AttributeError):   # Python's protocols are not requests
        given.__deepcopy__


def test_host_gradients_are_moved_to_the_device_on_the_cupy_stand_in():
    """On the CuPy stand-in (tests/fake_cupy.py: host arrays in device operations are refused), NumPy gradients
    from the user's framework are moved to the device; the steps equal the NumPy backend's."""
    import fake_cupy
    from refopt import backend as B
    params, oracle, f = _problem()
    grads = [autograd.grad(f)(params)]
    opt = make_optimizer("adam", lr=0.05, schedule={"name": "step", "step_size": 1, "gamma": 0.5})
    p, s = params, opt.init(params)
    for _ in range(2):
        p, s, _ = opt.apply_gradients(grads[0], s, p)
    B._use_array_module(fake_cupy, "cupy")
    try:
        q = T.tree_map(B.to_device, params)
        r = opt.init(q)
        for _ in range(2):
            q, r, info = opt.apply_gradients(grads[0], r, q, loss=B.to_device(np.array(0.5)))
        assert isinstance(T.leaves(q)[0], fake_cupy.ndarray) and info["loss"] == 0.5
        q = T.tree_map(B.to_host, q)
    finally:
        B.set_backend("numpy")
    for a, b in zip(T.leaves(p), T.leaves(q)):
        np.testing.assert_allclose(b, a, rtol=1e-15, atol=1e-17)


@pytest.mark.parametrize("name,hp", [("sgd", {"lr": 0.3, "momentum": 0.9, "dampening": 0.5}), *sorted(GRADIENT_ONLY.items())])
def test_the_callers_gradient_buffers_may_be_overwritten_after_each_step(name, hp):
    """A torch-style loop reuses its gradient buffers (grad.zero_()): nothing refopt returns or keeps may alias
    them. The run whose buffers are zeroed after each step equals the run on fresh buffers."""
    params0, oracle, f = _problem(1)
    grad = autograd.grad(f)
    opt = make_optimizer(name, **hp)
    runs = []
    for reuse in (False, True):
        params, state = params0, opt.init(params0)
        for _ in range(4):
            g = grad(params)
            params, state, _ = opt.apply_gradients(g, state, params)
            if reuse:
                for leaf in T.flatten(g)[0]:
                    leaf[...] = 0.0  # the caller's in-place reset of its buffers
        runs.append((params, state))
    assert_same_values(runs[0][0], runs[1][0])
    assert_same_values(runs[0][1], runs[1][1])
