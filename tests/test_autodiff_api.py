"""The transformations (grad, vjp, jvp, hvp, hvp_operator, jacobian, hessian) against closed forms,
against each other, and against HIPS autograd on random MLPs."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from refopt import autodiff as ad
from refopt import tree as T
from refopt.autodiff import primitives as P
from refopt.nn import MLP, Bernoulli, Gaussian, SoftmaxCrossEntropy

TOL = dict(rtol=1e-9, atol=1e-11)

seeds = st.integers(0, 2 ** 31)


def _softplus(x):
    return np.logaddexp(0.0, x)


def _sigmoid(x):
    return 0.5 * (np.tanh(0.5 * x) + 1.0)


# ---------------------------------------------------------------------------------------------------
# Closed forms.

@given(n=st.integers(1, 6), seed=seeds)
def test_quadratic_gradient_and_hessian(n, seed):
    """f = ½ xᵀAx + bᵀx (A not symmetric): ∇f = ½(A + Aᵀ)x + b, ∇²f = ½(A + Aᵀ)."""
    g = np.random.default_rng(seed)
    A, b, x, v = g.standard_normal((n, n)), g.standard_normal(n), g.standard_normal(n), g.standard_normal(n)

    def f(z):
        return 0.5 * ad.dot(z, A @ z) + ad.dot(b, z)

    S = 0.5 * (A + A.T)
    value, grad = ad.value_and_grad(f)(x)
    np.testing.assert_allclose(value, 0.5 * x @ A @ x + b @ x, **TOL)
    np.testing.assert_allclose(grad, S @ x + b, **TOL)
    np.testing.assert_allclose(ad.hessian(f, x), S, **TOL)
    np.testing.assert_allclose(ad.hvp(f, x, v), S @ v, **TOL)
    np.testing.assert_allclose(ad.hvp_operator(f, x)[1](v), S @ v, **TOL)


@given(n=st.integers(2, 8), d=st.integers(1, 4), seed=seeds)
def test_linear_least_squares(n, d, seed):
    """L = ‖Xw − y‖² / (2n): ∇L = Xᵀ(Xw − y)/n, ∇²L = XᵀX/n."""
    g = np.random.default_rng(seed)
    X, y, w = g.standard_normal((n, d)), g.standard_normal(n), g.standard_normal(d)

    def f(z):
        r = ad.subtract(ad.matmul(X, z), y)
        return ad.divide(ad.dot(r, r), 2.0 * n)

    np.testing.assert_allclose(ad.grad(f)(w), X.T @ (X @ w - y) / n, **TOL)
    np.testing.assert_allclose(ad.hessian(f, w), X.T @ X / n, **TOL)


@given(n=st.integers(2, 8), d=st.integers(1, 4), seed=seeds)
def test_logistic_regression(n, d, seed):
    """L = mean(softplus(Xw) − y Xw): ∇L = Xᵀ(p − y)/n, ∇²L = Xᵀ diag(p(1 − p)) X / n."""
    g = np.random.default_rng(seed)
    X, w = g.standard_normal((n, d)), g.standard_normal(d)
    y = g.integers(0, 2, n).astype(float)

    def f(z):
        s = ad.matmul(X, z)
        return ad.mean(ad.subtract(ad.softplus(s), ad.multiply(y, s)))

    p = _sigmoid(X @ w)
    np.testing.assert_allclose(ad.grad(f)(w), X.T @ (p - y) / n, **TOL)
    np.testing.assert_allclose(ad.hessian(f, w), X.T @ np.diag(p * (1 - p)) @ X / n, **TOL)


@given(n=st.integers(1, 6), d=st.integers(1, 3), c=st.integers(2, 4), seed=seeds)
def test_softmax_regression(n, d, c, seed):
    """L = mean(logsumexp(x W) − (x W)[y]) for W (d, C), flattened row-major:
    ∇L = Xᵀ(P − Y)/n and ∇²L = (1/n) Σ_i (x_i x_iᵀ) ⊗ (diag(p_i) − p_i p_iᵀ)."""
    g = np.random.default_rng(seed)
    X, W = g.standard_normal((n, d)), g.standard_normal((d, c))
    y = g.integers(0, c, n)

    def f(V):
        Z = ad.matmul(X, V)
        return ad.mean(ad.subtract(ad.logsumexp(Z, axis=1), ad.take_labels(Z, y)))

    Z = X @ W
    Pm = np.exp(Z - Z.max(1, keepdims=True))
    Pm /= Pm.sum(1, keepdims=True)
    Y = np.eye(c)[y]
    np.testing.assert_allclose(ad.grad(f)(W), X.T @ (Pm - Y) / n, **TOL)
    H = sum(np.kron(np.outer(X[i], X[i]), np.diag(Pm[i]) - np.outer(Pm[i], Pm[i])) for i in range(n)) / n
    np.testing.assert_allclose(ad.hessian(f, W), H, **TOL)


def test_jacobian_closed_form_and_modes_agree():
    """f(x) = A tanh(x): J = A diag(1 − tanh²); rows are vjps of unit vectors, columns jvps."""
    g = np.random.default_rng(0)
    A, x = g.standard_normal((3, 4)), g.standard_normal(4)

    def f(z):
        return A @ ad.tanh(z)

    J = A * (1 - np.tanh(x) ** 2)
    np.testing.assert_allclose(ad.jacobian(f, x), J, **TOL)
    cols = np.stack([ad.jvp(f, x, e)[1] for e in np.eye(4)], axis=1)
    np.testing.assert_allclose(cols, J, **TOL)


@given(seed=seeds)
def test_hvp_is_dense_hessian_times_v_and_hessian_is_symmetric(seed):
    g = np.random.default_rng(seed)
    x = {"a": g.standard_normal((2, 3)), "b": [g.standard_normal(3), g.standard_normal(())]}
    v = T.tree_map(lambda a: g.standard_normal(np.shape(a)), x)

    def f(p):
        s = ad.tanh(ad.matmul(p["a"], ad.sin(p["b"][0])))
        return ad.sum(ad.multiply(s, s)) * ad.exp(p["b"][1]) + ad.sum(ad.softplus(p["a"]))

    Hm = ad.hessian(f, x)
    np.testing.assert_allclose(Hm, Hm.T, rtol=0, atol=1e-12)
    np.testing.assert_allclose(T.ravel(ad.hvp(f, x, v)), Hm @ T.ravel(v), **TOL)
    g0, hv = ad.hvp_operator(f, x)
    np.testing.assert_allclose(T.ravel(hv(v)), Hm @ T.ravel(v), **TOL)
    np.testing.assert_allclose(T.ravel(g0), T.ravel(ad.grad(f)(x)), **TOL)
    # The recorded operator is reusable: a second product on the same graph is still exact.
    np.testing.assert_allclose(T.ravel(hv(T.scale(2.0, v))), 2 * Hm @ T.ravel(v), **TOL)


def test_third_order_nesting_against_finite_differences():
    """∇_x ⟨∇²f(x) v, v⟩ (three nested traces) against central differences of the exact hvp."""
    g = np.random.default_rng(1)
    A = g.standard_normal((3, 3))
    x, v = g.standard_normal(3), g.standard_normal(3)

    def f(z):
        return ad.sum(ad.tanh(A @ z)) + ad.sum(ad.exp(z) * ad.sin(z))

    def q(z):
        return ad.dot(ad.hvp(f, z, v), v)

    third = ad.grad(q)(x)
    h = 1e-5
    fd = np.array([(q(x + h * e) - q(x - h * e)) / (2 * h) for e in np.eye(3)])
    np.testing.assert_allclose(third, fd, rtol=1e-6, atol=1e-8)
    # forward-over-forward-over-reverse gives the same directional third derivative
    along = ad.jvp(q, x, v)[1]
    np.testing.assert_allclose(along, third @ v, rtol=1e-9, atol=1e-10)


def test_trees_keep_their_structure():
    x = {"w": np.ones((2, 2)), "rest": (np.zeros(3), [np.full(1, 2.0)])}

    def f(p):
        return ad.sum(p["w"]) + ad.sum(ad.exp(p["rest"][0])) + ad.sum(ad.square(p["rest"][1][0]))

    g = ad.grad(f)(x)
    assert set(g) == {"w", "rest"} and isinstance(g["rest"], tuple) and isinstance(g["rest"][1], list)
    np.testing.assert_array_equal(g["w"], np.ones((2, 2)))
    np.testing.assert_array_equal(g["rest"][1][0], [4.0])


def test_inputs_that_do_not_reach_the_output_get_zero_gradients():
    g = ad.grad(lambda p: ad.sum(p[0]))((np.ones(2), np.ones(3)))
    np.testing.assert_array_equal(g[1], np.zeros(3))
    np.testing.assert_array_equal(ad.grad(lambda z: 3.0)(np.ones(2)), np.zeros(2))
    _, t = ad.jvp(lambda z: (ad.sum(z), np.ones(2)), np.ones(2), np.ones(2))
    np.testing.assert_array_equal(t[1], np.zeros(2))


def test_vjp_with_aux_strips_only_its_own_trace():
    x, v = np.array([0.3, -0.2]), np.array([1.0, 2.0])
    z, pullback, Jv = ad.vjp(lambda p: ad.jvp(ad.tanh, p, v), x, has_aux=True)
    np.testing.assert_allclose(z, np.tanh(x), **TOL)
    np.testing.assert_allclose(Jv, (1 - np.tanh(x) ** 2) * v, **TOL)
    np.testing.assert_allclose(pullback(np.ones(2)), 1 - np.tanh(x) ** 2, **TOL)


def test_forward_mode_defers_unread_matmul_primals(monkeypatch):
    """In forward-over-reverse, each weight's gradient primal (one matmul) is never read, never computed."""
    calls = []
    impl = P.matmul.impl
    monkeypatch.setattr(P.matmul, "impl", lambda a, b: calls.append(1) or impl(a, b))
    g = np.random.default_rng(0)
    X, W, V = g.standard_normal((4, 3)), g.standard_normal((3, 2)), g.standard_normal((3, 2))

    def f(w):
        return ad.sum(ad.tanh(X @ w))

    hv = ad.hvp(f, W, V)
    # X@W (read by tanh), X@V (tangent), Xᵀ(tangent of g): three; the primal Xᵀg is skipped.
    assert len(calls) == 3
    t = 1 - np.tanh(X @ W) ** 2
    expected = X.T @ (-2 * np.tanh(X @ W) * t * (X @ V))
    np.testing.assert_allclose(hv, expected, **TOL)
    calls.clear()
    value, tangent = ad.jvp(ad.grad(f), W, V)  # a jvp returns the value too: it is computed on demand
    assert len(calls) == 4
    np.testing.assert_allclose(value, X.T @ t, **TOL)
    np.testing.assert_allclose(tangent, expected, **TOL)


def test_lazy_box_shapes_are_known_without_the_value():
    g = np.random.default_rng(0)
    for sa, sb in [((2, 3), (3, 4)), ((3,), (3, 4)), ((2, 3), (3,)), ((3,), (3,)), ((5, 2, 3), (1, 3, 4)),
                   ((2, 3), (6, 3, 1)), ((0, 2, 3), (1, 3, 2))]:
        a, b = g.standard_normal(sa), g.standard_normal(sb)
        assert P._matmul_shape(a, b) == np.matmul(a, b).shape


# ---------------------------------------------------------------------------------------------------
# The plain sweep (raw-array rules, buffers written in place) against the primitive rules, and aliasing.

def _disable_plain_rules(monkeypatch):
    """Every primitive's plain rules switched off: the sweep then runs the rules written with primitives."""
    for prim in vars(P).values():
        if isinstance(prim, ad.Primitive) and prim.plain_vjps:
            monkeypatch.setattr(prim, "plain_vjps", {})


@pytest.mark.parametrize("act", ["tanh", "relu", "sigmoid", "softplus", "identity"])
@pytest.mark.parametrize("kind", ["softmax", "gaussian", "bernoulli"])
def test_the_plain_sweep_gives_the_primitive_rules_bits(act, kind, monkeypatch):
    g = np.random.default_rng(3)
    model = MLP([6, 40, 24, 5], activation=act)
    params = T.tree_map(lambda a: a + 0.1 * g.standard_normal(a.shape), model.init(2))
    X = g.standard_normal((33, 6))
    loss, y = {"softmax": (SoftmaxCrossEntropy(), g.integers(0, 5, 33)),
               "gaussian": (Gaussian(variance=0.7), g.standard_normal((33, 5))),
               "bernoulli": (Bernoulli(), g.integers(0, 2, (33, 5)).astype(float))}[kind]

    def f(p):
        return loss(model.apply(p, X), y)

    value, grad = ad.value_and_grad(f)(params)
    _disable_plain_rules(monkeypatch)
    value_ref, grad_ref = ad.value_and_grad(f)(params)
    assert np.asarray(value).tobytes() == np.asarray(value_ref).tobytes()
    for a, b in zip(T.leaves(grad), T.leaves(grad_ref)):
        assert a.dtype == b.dtype and a.tobytes() == b.tobytes()


def _mlp_problem(seed=0, B=9):
    g = np.random.default_rng(seed)
    model = MLP([4, 7, 6, 3], activation="tanh")
    params = T.tree_map(lambda a: a + 0.2 * g.standard_normal(a.shape), model.init(seed))
    X, y = g.standard_normal((B, 4)), g.integers(0, 3, B)
    loss = SoftmaxCrossEntropy()
    return model, loss, params, X, y, g


def _handwritten_grad(params, X, y):
    """∇ of mean softmax cross-entropy of a tanh MLP by a backprop written out in NumPy (not refopt's)."""
    acts, a = [X], X
    for l, p in enumerate(params):
        a = a @ p["W"] + p["b"]
        a = np.tanh(a) if l < len(params) - 1 else a
        acts.append(a)
    e = np.exp(acts[-1] - acts[-1].max(axis=1, keepdims=True))
    delta = e / e.sum(axis=1, keepdims=True)
    delta[np.arange(len(y)), y] -= 1.0
    delta /= len(y)
    grads = [None] * len(params)
    for l in range(len(params) - 1, -1, -1):
        grads[l] = {"W": acts[l].T @ delta, "b": delta.sum(axis=0)}
        delta = (delta @ params[l]["W"].T) * (1.0 - acts[l] ** 2)
    return grads


@pytest.mark.parametrize("B", [1, 9])  # a batch of one: a bias gradient is a sum over one row, still a fresh array
def test_gradients_are_fresh_arrays_and_inputs_are_never_written(B):
    """In-place work may only touch buffers the sweep made: returned gradients never share memory with
    each other or with an input, later calls leave earlier results alone, and no input is modified."""
    model, loss, params, X, y, g = _mlp_problem(B=B)
    v = T.tree_map(lambda a: g.standard_normal(a.shape), params)
    u = g.standard_normal((X.shape[0], 3))
    kept = [a.copy() for a in T.leaves((params, X, y, v, u))]

    def f(p):
        return loss(model.apply(p, X), y)

    g1 = ad.grad(f)(params)
    g1_kept = [a.copy() for a in T.leaves(g1)]
    g2 = ad.grad(f)(params)
    _, hv = ad.hvp_operator(f, params)
    h1, h2 = hv(v), hv(v)
    h_fwd = ad.hvp(f, params, v)
    z, back = ad.vjp(lambda p: model.apply(p, X), params)
    z_kept = z.copy()
    b1, b2 = back(u), back(u)
    assert z.tobytes() == z_kept.tobytes(), "a sweep wrote into a recorded value returned to the caller"
    fresh = [g1, g2, h1, h2, h_fwd, b1, b2]
    held = T.leaves((params, X, v, u, z))
    for i, tree in enumerate(fresh):
        for a in T.leaves(tree):
            assert not any(np.shares_memory(a, x) for x in held), "a result aliases an input"
            for other in fresh[i + 1:]:
                assert not any(np.shares_memory(a, o) for o in T.leaves(other)), "two results share memory"
    for a, k in zip(T.leaves(g1), g1_kept):
        assert a.tobytes() == k.tobytes(), "a later call wrote into an earlier gradient"
    for a, k in zip(T.leaves((params, X, y, v, u)), kept):
        assert a.tobytes() == k.tobytes(), "an input was modified"
    for a, b in zip(T.leaves(g1) + T.leaves(h1) + T.leaves(b1), T.leaves(g2) + T.leaves(h2) + T.leaves(b2)):
        assert a.tobytes() == b.tobytes()  # the same computation twice: the same bits
    T.leaves(g1)[0][...] = 0.0  # the caller owns what it got back
    np.testing.assert_array_equal(T.leaves(ad.grad(f)(params))[0], T.leaves(g2)[0])


def test_gradient_then_hessian_products_at_the_same_point():
    """A gradient (the plain sweep) then HVPs at the same point, against a backprop written out in NumPy
    and central differences of it: H v = (∇f(θ + hv) − ∇f(θ − hv)) / 2h + O(h²) (h = 1e-5: ~1e-10 off)."""
    model, loss, params, X, y, g = _mlp_problem(seed=4)
    v = T.tree_map(lambda a: g.standard_normal(a.shape), params)

    def f(p):
        return loss(model.apply(p, X), y)

    grad = ad.grad(f)(params)
    np.testing.assert_allclose(T.ravel(grad), T.ravel(_handwritten_grad(params, X, y)), rtol=1e-12, atol=1e-14)
    h = 1e-5
    fd = (T.ravel(_handwritten_grad(T.axpy(h, v, params), X, y))
          - T.ravel(_handwritten_grad(T.axpy(-h, v, params), X, y))) / (2 * h)
    for product in (ad.hvp(f, params, v), ad.hvp_operator(f, params)[1](v)):
        np.testing.assert_allclose(T.ravel(product), fd, rtol=1e-6, atol=1e-8)
    # the gradient taken first is unchanged by the products that followed
    np.testing.assert_array_equal(T.ravel(grad), T.ravel(ad.grad(f)(params)))


def test_a_traced_cotangent_through_plain_nodes():
    """u ↦ Jᵀu is linear, so ∇_u ⟨Jᵀu, w⟩ = J w: the sweep of a plain recording run with a cotangent boxed
    by an enclosing trace (the primitive rules, not the plain ones) against forward mode."""
    model, _, params, X, _, g = _mlp_problem(seed=5)
    w = T.tree_map(lambda a: g.standard_normal(a.shape), params)
    u = g.standard_normal((X.shape[0], 3))
    _, back = ad.vjp(lambda p: model.apply(p, X), params)
    Jw = ad.jvp(lambda p: model.apply(p, X), params, w)[1]
    np.testing.assert_allclose(ad.grad(lambda c: T.vdot(back(c), w))(u), Jw, **TOL)


# ---------------------------------------------------------------------------------------------------
# Errors.

def test_grad_of_a_non_scalar_function_is_an_error():
    with pytest.raises(ValueError, match="scalar"):
        ad.grad(lambda z: z * 2.0)(np.ones(3))


def test_dense_matrices_refuse_large_inputs_and_name_the_alternative():
    with pytest.raises(ValueError, match="hvp"):
        ad.hessian(lambda z: ad.sum(z), np.ones(20), max_size=10)
    with pytest.raises(ValueError, match=r"jacobian \(input\).*max_size"):
        ad.jacobian(lambda z: z, np.ones(20), max_size=10)
    with pytest.raises(ValueError, match=r"jacobian \(output\).*max_size"):  # few inputs, many outputs
        ad.jacobian(lambda z: ad.multiply(ad.sum(z), np.ones(20)), np.ones(2), max_size=10)
    with pytest.raises(ValueError, match="max_size"):
        ad.hessian(lambda z: ad.sum(z), np.ones(ad.DENSE_MAX_SIZE + 1))
    assert ad.hessian(lambda z: ad.sum(ad.square(z)), np.ones(20), max_size=20).shape == (20, 20)


def test_tangent_and_cotangent_shapes_must_match():
    with pytest.raises(ValueError, match="tangent"):
        ad.jvp(ad.tanh, np.ones(3), np.ones(1))  # would broadcast silently
    with pytest.raises(ValueError, match="tangent"):
        ad.jvp(ad.tanh, (np.ones(3), np.ones(2)), (np.ones(3),))
    _, back = ad.vjp(ad.tanh, np.ones((2, 3)))
    with pytest.raises(ValueError, match="cotangent"):
        back(np.ones(3))  # would broadcast silently
    with pytest.raises(ValueError, match="cotangent"):
        back([np.ones((2, 3)), np.ones(1)])
    with pytest.raises(ValueError, match="v: tangent"):
        ad.hvp(lambda z: ad.sum(ad.tanh(z)), np.ones(3), np.ones(1))


# ---------------------------------------------------------------------------------------------------
# Against HIPS autograd, an independent autodiff, on random MLPs.

# autograd is a test-only dependency: only the tests that use it skip without it (the fixture below),
# not the whole file.

@pytest.fixture(scope="module")  # module scope: hypothesis refuses function-scoped fixtures in @given tests
def autograd():
    """(autograd, autograd.numpy), or a skip when HIPS autograd is not installed."""
    return pytest.importorskip("autograd"), pytest.importorskip("autograd.numpy")


def _ag_lse(anp, a, axis):
    """logsumexp in autograd.numpy (autograd.scipy would need SciPy, which the test extras do not install)."""
    m = anp.max(a, axis=axis, keepdims=True)
    return anp.log(anp.sum(anp.exp(a - m), axis=axis)) + anp.squeeze(m, axis=axis)


def _ag_activations(anp):
    return {"tanh": anp.tanh, "relu": lambda s: anp.maximum(s, 0.0), "identity": lambda s: s,
            "sigmoid": lambda s: 0.5 * (anp.tanh(0.5 * s) + 1.0), "softplus": lambda s: anp.logaddexp(0.0, s)}


def _ag_objective(anp, model, loss, X, y, like):
    """The same loss written in autograd.numpy, as a function of the flat (row-major) parameter vector."""
    shapes = [(l["W"].shape, l["b"].shape) for l in like]
    activations = _ag_activations(anp)

    def f(theta):
        a, start = X, 0
        for (sw, sb), act in zip(shapes, model.activations):
            nw, nb = sw[0] * sw[1], sb[0]
            W = anp.reshape(theta[start:start + nw], sw)  # dict keys sort as "W" < "b"
            b = theta[start + nw:start + nw + nb]
            start += nw + nb
            a = activations[act](anp.dot(a, W) + b)
        if isinstance(loss, SoftmaxCrossEntropy):
            per = _ag_lse(anp, a, axis=1) - a[np.arange(X.shape[0]), y]
        elif isinstance(loss, Gaussian):
            per = anp.sum((a - y) ** 2, axis=1) / (2 * loss.variance)
        else:
            per = anp.sum(anp.logaddexp(0.0, a) - y * a, axis=1)
        return anp.mean(per) if loss.reduction == "mean" else anp.sum(per)

    return f


@st.composite
def mlp_problems(draw):
    depth = draw(st.integers(1, 3))
    widths = [draw(st.integers(1, 4)) for _ in range(depth + 1)]
    act = draw(st.sampled_from(["tanh", "relu", "sigmoid", "softplus", "identity"]))
    kind = draw(st.sampled_from(["softmax", "gaussian", "bernoulli"]))
    reduction = draw(st.sampled_from(["mean", "sum"]))
    batch = draw(st.integers(1, 5))
    seed = draw(seeds)
    if kind == "softmax":
        widths[-1] = max(widths[-1], 2)
    g = np.random.default_rng(seed)
    model = MLP(widths, activation=act, init="normal", init_scale=0.8)
    params = model.init(seed)
    params = T.tree_map(lambda a: a + 0.3 * g.standard_normal(a.shape), params)  # non-zero biases too
    X = g.standard_normal((batch, widths[0]))
    C = widths[-1]
    if kind == "softmax":
        loss, y = SoftmaxCrossEntropy(reduction), g.integers(0, C, batch)
    elif kind == "gaussian":
        loss, y = Gaussian(reduction, variance=float(g.uniform(0.5, 2.0))), g.standard_normal((batch, C))
    else:
        loss, y = Bernoulli(reduction), g.integers(0, 2, (batch, C)).astype(float)
    return model, loss, params, X, y, g


@settings(max_examples=12)
@given(problem=mlp_problems())
def test_against_autograd_on_random_mlps(problem, autograd):
    ag, anp = autograd
    model, loss, params, X, y, g = problem
    f_ag = _ag_objective(anp, model, loss, X, y, params)
    theta = T.ravel(params)
    v = g.standard_normal(theta.size)

    def f(p):
        return loss(model.apply(p, X), y)

    value, grad = ad.value_and_grad(f)(params)
    np.testing.assert_allclose(value, f_ag(theta), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(T.ravel(grad), ag.grad(f_ag)(theta), **TOL)
    hv_ag = ag.hessian_vector_product(f_ag)(theta, v)
    np.testing.assert_allclose(T.ravel(ad.hvp(f, params, T.unravel(v, params))), hv_ag, **TOL)
    np.testing.assert_allclose(T.ravel(ad.hvp_operator(f, params)[1](T.unravel(v, params))), hv_ag, **TOL)
    np.testing.assert_allclose(ad.hessian(f, params), ag.hessian(f_ag)(theta), **TOL)
