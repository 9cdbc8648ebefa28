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


# ---------------------------------------------------------------------------------------------------
# Plain Python functions: converting a traced value to a number is refused (the derivative would be
# lost); the array methods of boxes; the NumPy functions of autodiff/numpy_ops.py (max, min, prod, minimum,
# clip, stack, concatenate, logaddexp) against HIPS autograd, central differences and hand-derived ties.
import math  # noqa: E402
import operator  # noqa: E402

from refopt.autodiff.core import TracedConversionError, UnsupportedAttribute  # noqa: E402

CONVERSIONS = {
    "float": lambda z: float(z[0]), "int": lambda z: int(z[0]), "complex": lambda z: complex(z[0]),
    "operator.index": lambda z: operator.index(z[0]), "math.exp": lambda z: math.exp(z[0]),
    "math.floor": lambda z: math.floor(z[0]), "np.float64": lambda z: np.float64(z[0]),
    "np.float32": lambda z: np.float32(z[0]), "np.asarray": lambda z: np.asarray(z),
    "np.array": lambda z: np.array(z), "np.asarray(dtype=float)": lambda z: np.asarray(z, dtype=float),
    "np.array of entries": lambda z: np.array([z[0], z[1]]),
}


@pytest.mark.parametrize("mode", ["grad", "jvp", "hvp"])
@pytest.mark.parametrize("name", sorted(CONVERSIONS))
def test_a_traced_value_never_becomes_a_number(name, mode):
    """Each of these returned the bare value before, so minimize saw a zero derivative and 'converged'."""
    convert, x = CONVERSIONS[name], np.array([0.5, 2.0])
    f = lambda z: z[1] * convert(z)  # noqa: E731
    with pytest.raises(TypeError, match="the derivative would be lost") as err:
        {"grad": lambda: ad.grad(f)(x), "jvp": lambda: ad.jvp(f, x, x),
         "hvp": lambda: ad.hvp(f, x, x)}[mode]()
    assert isinstance(err.value, TracedConversionError) and "np.exp" in str(err.value)
    if name != "operator.index":
        convert(x)   # the same conversion of a plain array is NumPy's business, untouched


def test_getval_reads_a_constant_on_purpose():
    x = np.array([0.5, 2.0])
    np.testing.assert_array_equal(ad.grad(lambda z: z[0] * float(ad.getval(z[1])))(x), [2.0, 0.0])


def test_box_methods_against_autograd(autograd):
    ag, anp = autograd
    g = np.random.default_rng(3)
    x, A = g.standard_normal(4), g.standard_normal((4, 4))

    def ours(z):
        M = z.reshape(2, 2)
        return (z.copy().sum() + z.dot(A @ z) + z.astype(z.dtype).mean() + z.ravel() @ z.flatten()
                + M.T[0, 1] + M.transpose()[1, 0] * M.transpose((1, 0))[0, 1] + M.transpose(1, 0).sum(axis=0)[1]
                + z.max() * z.min() + M.max(axis=0).sum() + (z * z).prod() + z.clip(-0.4, 0.6).sum()
                + M.mean(axis=1, keepdims=True)[1, 0] + M.min(axis=1).prod())

    def reference(z):
        M = anp.reshape(z, (2, 2))
        return (anp.sum(z) + anp.dot(z, anp.dot(A, z)) + anp.mean(z) + anp.dot(anp.ravel(z), anp.ravel(z))
                + M.T[0, 1] + M.T[1, 0] * M.T[0, 1] + anp.sum(M.T, axis=0)[1]
                + anp.max(z) * anp.min(z) + anp.sum(anp.max(M, axis=0)) + anp.prod(z * z)
                + anp.sum(anp.clip(z, -0.4, 0.6)) + anp.mean(M, axis=1, keepdims=True)[1, 0]
                + anp.prod(anp.min(M, axis=1)))

    assert ours(x) == pytest.approx(float(reference(x)), rel=1e-14)
    np.testing.assert_allclose(ad.grad(ours)(x), ag.grad(reference)(x), **TOL)
    np.testing.assert_allclose(ad.hessian(ours, x), ag.hessian(reference)(x), **TOL)


def test_astype_copy_and_item_assignment():
    x = np.array([0.5, 2.0])
    np.testing.assert_array_equal(ad.grad(lambda z: ad.sum(z.astype(np.float64) ** 2))(x), 2 * x)
    with pytest.raises(TypeError, match="one floating dtype per computation"):
        ad.grad(lambda z: ad.sum(z.astype(np.float32)))(x)
    with pytest.raises(TypeError, match="astype\\(int64\\).*the derivative would be lost"):
        ad.grad(lambda z: ad.sum(z.astype(np.int64)))(x)
    with pytest.raises(TypeError, match="item assignment into a traced value"):
        ad.grad(lambda z: z.copy().__setitem__(0, 1.0))(x)


@pytest.mark.parametrize("name", ["tolist", "argsort", "cumsum", "nonzero", "item"])
def test_an_unsupported_method_names_itself_and_the_supported_ones(name):
    seen = {}

    def f(z):
        seen["hasattr"], seen["getattr"] = hasattr(z, name), getattr(z, name, "default")
        getattr(z, name)()

    with pytest.raises(TypeError) as err:
        ad.grad(f)(np.array([1.0, 2.0]))
    msg = str(err.value)
    assert isinstance(err.value, UnsupportedAttribute) and isinstance(err.value, AttributeError)
    assert f"{name!r} is not supported" in msg and "supported are" in msg
    assert all(m in msg for m in ("copy", "dot", "astype", "ravel", "flatten", "max", "prod", "reshape", "T"))
    assert seen == {"hasattr": False, "getattr": "default"}   # probing still answers


def _s(m, out, u):
    """A nonlinear scalar of an output (so second derivatives of the operation itself are exercised)."""
    return m.sum(u * out * out) + m.sum(m.sin(out))


NUMPY_CASES = {   # name -> (input shape, f(module, z)); random normal inputs: no ties, no zeros, no bounds hit
    "max": ((3, 4), lambda m, z: m.max(z)),
    "max axis=1": ((3, 4), lambda m, z: m.max(z, axis=1)),
    "amax axis=-2 keepdims": ((3, 4), lambda m, z: m.amax(z, axis=-2, keepdims=True)),
    "max axis=(0, 2)": ((2, 3, 4), lambda m, z: m.max(z, axis=(0, 2))),
    "min": ((3, 4), lambda m, z: m.min(z)),
    "amin axis=(1, 2) keepdims": ((2, 3, 4), lambda m, z: m.amin(z, axis=(2, 1), keepdims=True)),
    "prod": ((5,), lambda m, z: m.prod(z)),
    "prod axis=0": ((3, 4), lambda m, z: m.prod(z, axis=0)),
    "prod axis=(0, 2) keepdims": ((2, 3, 2), lambda m, z: m.prod(z, axis=(0, 2), keepdims=True)),
    "minimum with a constant": ((3, 4), lambda m, z: m.minimum(z, 0.2)),
    "minimum of two traced": ((3, 4), lambda m, z: m.minimum(z, m.sin(z[::-1]))),
    "clip": ((3, 4), lambda m, z: m.clip(z, -0.5, 0.7)),
    "clip traced bound": ((3, 4), lambda m, z: m.clip(z, 0.3 * z[0] - 1.0, 0.9) if m is np     # autograd's clip
                          else m.minimum(m.maximum(z, 0.3 * z[0] - 1.0), 0.9)),                  # has none: NumPy's
                                                                                                 # definition
    "logaddexp": ((3, 4), lambda m, z: m.logaddexp(z, 0.3 * z[::-1] + 1.0)),
    "logaddexp with a constant": ((3,), lambda m, z: m.logaddexp(0.0, z)),
    "stack": ((3, 4), lambda m, z: m.stack([z, 2.0 * z, np.ones((3, 4))], axis=1)),
    "stack of entries": ((3,), lambda m, z: m.stack([z[0] * z[1], z[2], z[0]])),
    "concatenate": ((3, 4), lambda m, z: m.concatenate([z, z[:, :2] ** 2, np.ones((3, 1))], axis=-1)),
    "concatenate axis=0": ((3, 4), lambda m, z: m.concatenate([z[1:], z], axis=0)),
}


@pytest.mark.parametrize("case", sorted(NUMPY_CASES))
def test_numpy_functions_against_autograd_and_finite_differences(case, autograd):
    ag, anp = autograd
    shape, op = NUMPY_CASES[case]
    g = np.random.default_rng(sorted(NUMPY_CASES).index(case))
    x, v, w = (g.standard_normal(shape) for _ in range(3))
    u = g.standard_normal(np.shape(op(np, x)))
    ours, ref = (lambda z: _s(np, op(np, z), u)), (lambda z: _s(anp, op(anp, z), u))
    assert ours(x) == pytest.approx(float(ref(x)), rel=1e-13)
    np.testing.assert_allclose(ad.grad(ours)(x), ag.grad(ref)(x), **TOL)
    hv = ag.hessian_vector_product(ref)(x, v)
    np.testing.assert_allclose(ad.hvp(ours, x, v), hv, **TOL)                 # forward-over-reverse
    np.testing.assert_allclose(ad.hvp_operator(ours, x)[1](v), hv, **TOL)     # reverse-over-reverse
    # forward mode of the operation itself against central differences (step 1e-6: error ~1e-12 f''')
    h = 1e-6
    fd = (op(np, x + h * w) - op(np, x - h * w)) / (2 * h)
    np.testing.assert_allclose(ad.jvp(lambda z: op(np, z), x, w)[1], fd, rtol=1e-7, atol=1e-8)
    # third order: ∇⟨∇²s v, w⟩ through three nested traces, against autograd's
    third = ad.grad(lambda z: ad.dot(ad.hvp(ours, z, v), w))(x)
    np.testing.assert_allclose(third, ag.grad(lambda z: anp.sum(ag.hessian_vector_product(ref)(z, v) * w))(x),
                               **TOL)


def test_max_and_min_send_a_tie_to_the_first_extreme_entry():
    """maximum's tie rule (the first argument) carried over: the first extreme in row-major order of the
    reduced axes takes the whole derivative; HIPS autograd would split it."""
    x = np.array([1.0, 3.0, 3.0, 2.0])
    np.testing.assert_array_equal(ad.grad(lambda z: np.max(z))(x), [0, 1, 0, 0])
    np.testing.assert_array_equal(ad.grad(lambda z: np.min(z))(np.array([2.0, 1.0, 5.0, 1.0])), [0, 1, 0, 0])
    np.testing.assert_array_equal(ad.jvp(lambda z: np.max(z), x, np.array([10.0, 20.0, 30.0, 40.0]))[1], 20.0)
    X = np.zeros((2, 3, 4))
    X[0, 1, 3] = X[1, 1, 0] = 5.0             # a tie in slice j = 1 over the axes (0, 2): (0, 3) precedes (1, 0)
    expected = np.zeros_like(X)
    expected[0, 1, 3] = 1.0
    expected[0, 0, 0] = expected[0, 2, 0] = 1.0   # all-zero slices: their first entry
    np.testing.assert_array_equal(ad.grad(lambda z: np.sum(np.max(z, axis=(0, 2))))(X), expected)
    nan = np.array([1.0, np.nan, 3.0, np.nan])   # NaN counts as the extreme (NumPy's argmax): value and route
    assert np.isnan(np.max(nan)) and np.isnan(ad.value_and_grad(lambda z: np.max(z))(nan)[0])
    np.testing.assert_array_equal(ad.grad(lambda z: np.max(z))(nan), [0, 1, 0, 0])
    for v in (0.0, -0.0, np.inf, -np.inf):      # the value is the entry itself, signed zeros and infinities too
        out = ad.value_and_grad(lambda z: np.max(z))(np.array([-np.inf, v]))[0]
        assert out == v and math.copysign(1.0, out) == math.copysign(1.0, v)
    with pytest.raises(ValueError, match="zero-size array"):
        ad.grad(lambda z: np.max(z))(np.zeros(0))


def test_minimum_and_clip_send_ties_to_x():
    np.testing.assert_array_equal(ad.grad(lambda z: np.sum(np.minimum(z, np.array([1.0, 0.0]))))(np.ones(2)), [1, 0])
    y = np.array([0.5, 1.0])
    np.testing.assert_array_equal(ad.grad(lambda w: np.sum(np.minimum(np.ones(2), w)))(y), [1, 0])
    x = np.array([-2.0, -1.0, 0.0, 1.0, 2.0])
    for clipped in (lambda z: np.clip(z, -1.0, 1.0), lambda z: np.clip(z, a_min=-1.0, a_max=1.0),
                    lambda z: z.clip(-1.0, 1.0), lambda z: np.clip(z, None, 1.0) + np.clip(z, -1.0, None) - z):
        np.testing.assert_array_equal(ad.grad(lambda z: np.sum(clipped(z)))(x), [0, 1, 1, 1, 0])
    # lo > hi: NumPy's clip is hi everywhere, constant in x
    np.testing.assert_array_equal(ad.grad(lambda z: np.sum(np.clip(z, 1.0, -1.0)))(x), np.zeros(5))
    np.testing.assert_array_equal(np.clip(x, 1.0, -1.0), ad.value_and_grad(lambda z: np.clip(z, 1.0, -1.0)[0])(x)[0]
                                  * np.ones(5))


def _prod_derivatives(x):
    """∂_i ∏x = ∏_{j≠i} x_j and ∂_i∂_j ∏x = ∏_{k∉{i,j}} x_k (i ≠ j; 0 on the diagonal), by explicit loops."""
    n = len(x)
    grad = np.array([np.prod([x[j] for j in range(n) if j != i]) for i in range(n)])
    hess = np.array([[0.0 if i == j else np.prod([x[k] for k in range(n) if k not in (i, j)]) for j in range(n)]
                     for i in range(n)])
    return grad, hess


@pytest.mark.parametrize("x", [[2.0, -3.0, 0.5, 1.5], [2.0, 0.0, 0.5, 1.5], [0.0, -3.0, 0.0, 1.5],
                               [0.0, 0.0, 0.0, 1.5]])
def test_prod_is_exact_at_zero_factors(x):
    """ans / x_i is NaN at a zero factor; the product of the others is what the derivative is."""
    x = np.array(x)
    grad, hess = _prod_derivatives(x)
    v = np.array([1.0, -2.0, 0.5, 3.0])
    np.testing.assert_allclose(ad.grad(lambda z: np.prod(z))(x), grad, rtol=1e-14, atol=0)
    np.testing.assert_allclose(ad.hessian(lambda z: np.prod(z), x), hess, rtol=1e-14, atol=1e-15)
    np.testing.assert_allclose(ad.hvp(lambda z: np.prod(z), x, v), hess @ v, rtol=1e-14, atol=1e-15)
    np.testing.assert_allclose(ad.jvp(lambda z: np.prod(z), x, v)[1], grad @ v, rtol=1e-14, atol=1e-15)
    # along an axis: each row of a matrix, with the zeros in the first row only
    X = np.stack([x, x[::-1] + 1.0])
    G = np.stack([_prod_derivatives(r)[0] for r in X])
    np.testing.assert_allclose(ad.grad(lambda Z: np.sum(np.prod(Z, axis=1) * np.array([1.0, 2.0])))(X),
                               G * np.array([[1.0], [2.0]]), rtol=1e-14, atol=1e-15)


def test_new_numpy_functions_keep_float32():
    x = np.array([0.5, -1.5, 2.0], dtype=np.float32)
    for f in (lambda z: np.max(z), lambda z: np.prod(z), lambda z: np.sum(np.clip(z, -1, 1)),
              lambda z: np.sum(np.stack([z, z])), lambda z: np.sum(np.concatenate([z, z])),
              lambda z: np.sum(np.logaddexp(z, 0.5)), lambda z: np.sum(np.minimum(z, 0.5))):
        value, grad = ad.value_and_grad(f)(x)
        assert np.asarray(value).dtype == np.float32 and grad.dtype == np.float32


def test_stack_and_concatenate_refuse_what_numpy_refuses():
    x = np.ones(3)
    with pytest.raises(ValueError, match="same shape"):
        ad.grad(lambda z: np.sum(np.stack([z, z[:2]])))(x)
    with pytest.raises(TypeError, match="sequence of arrays"):
        ad.grad(lambda z: np.sum(np.stack(z)))(x)
    with pytest.raises(ValueError, match="same number of dimensions, at least 1"):
        ad.grad(lambda z: np.sum(np.concatenate([z[0], z[1]])))(x)
    with pytest.raises(ValueError, match="out of bounds"):
        ad.grad(lambda z: np.sum(np.stack([z, z], axis=2)))(x)
    np.testing.assert_array_equal(ad.grad(lambda z: np.sum(np.concatenate([z.reshape(3, 1), z.reshape(3, 1)],
                                                                           axis=None) ** 2))(x), 4 * x)


@pytest.mark.parametrize("call, name", [(lambda z: np.cumsum(z), "numpy.cumsum"),
                                        (lambda z: np.max(z, initial=0.0), "numpy.max with initial="),
                                        (lambda z: np.concatenate([z, z], dtype=np.float32),
                                         "numpy.concatenate with dtype="),
                                        (lambda z: np.maximum.reduce(z), "numpy.maximum.reduce")])
def test_the_rest_of_numpy_still_names_itself(call, name):
    with pytest.raises(TypeError) as err:
        ad.grad(lambda z: call(z))(np.array([1.0, 2.0]))
    msg = str(err.value)
    # NumPy < 1.25 names np.max "amax" (np.max is an alias of it there)
    assert (name in msg or name.replace("numpy.max", "numpy.amax") in msg) \
        and all(f in msg for f in ("max", "prod", "clip", "stack", "concatenate", "logaddexp"))
    assert {"max", "amax", "min", "amin", "prod", "clip", "stack", "concatenate", "minimum", "logaddexp",
            "less_equal"} <= set(ad.NUMPY_SUPPORTED)


def test_comparisons_le_and_ge_are_masks():
    x = np.array([-1.0, 0.0, 2.0])
    np.testing.assert_array_equal(ad.grad(lambda z: np.sum(np.where(z >= 0, z ** 2, -z)))(x), [-1, 0, 4])
    np.testing.assert_array_equal(ad.grad(lambda z: np.sum(np.where(z <= 0, z ** 2, -z)))(x), [-2, 0, -1])
    np.testing.assert_array_equal(ad.grad(lambda z: np.sum(np.where(np.ones(3) <= z, z, 0.0)))(x), [0, 0, 1])


@pytest.mark.parametrize("axis", [np.int64(0), np.int32(-1), (np.int64(1), 0), np.intp(1)])
def test_a_numpy_integer_axis_is_an_axis(axis):
    """NumPy integers (a shape entry, an argmax) are axes: sum, mean and logsumexp's rules read them as the
    Python int, through the plain sweep (grad) and the primitive rules (hvp) alike."""
    X = np.arange(6.0).reshape(2, 3) / 7
    V = np.linspace(-1.0, 1.0, 6).reshape(2, 3)
    as_int = tuple(int(a) for a in axis) if isinstance(axis, tuple) else int(axis)
    for f in (lambda z, a: np.sum(np.sum(z * z * z, axis=a) ** 2),
              lambda z, a: np.sum(np.mean(z * z * z, axis=a) ** 2),
              lambda z, a: np.sum(ad.logsumexp(z * z, axis=a) ** 2),
              lambda z, a: np.sum(np.sum(z * z * z, axis=a, keepdims=True) ** 2)):
        np.testing.assert_array_equal(ad.grad(lambda z: f(z, axis))(X), ad.grad(lambda z: f(z, as_int))(X))
        np.testing.assert_array_equal(ad.hvp(lambda z: f(z, axis), X, V), ad.hvp(lambda z: f(z, as_int), X, V))
    reduced = np.prod([X.shape[a] for a in np.atleast_1d(as_int)])
    np.testing.assert_array_equal(ad.grad(lambda z: np.sum(np.mean(z, axis=axis)))(X), np.full(X.shape, 1 / reduced))
    with pytest.raises(ValueError, match="out of bounds"):
        ad.grad(lambda z: np.sum(np.mean(z, axis=np.int64(2))))(X)
