"""Every primitive's first and second derivatives, in every mode, against finite differences.

For each primitive (and each broadcasting pattern it supports) and random inputs drawn by hypothesis:

* forward mode: J v from ``jvp`` equals the central difference (f(x + h v) − f(x − h v)) / 2h;
* reverse mode: Jᵀ u from ``vjp`` satisfies ⟨u, J v⟩ = ⟨Jᵀ u, v⟩ and equals the central-difference
  gradient of ⟨u, f(x)⟩;
* second order, s(x) = ⟨u, f(x)⟩: forward-over-reverse (``hvp``), reverse-over-reverse
  (``hvp_operator``), reverse-over-forward (grad of ⟨u, J w⟩) and forward-over-forward (w₂ᵀ ∇²s w)
  all agree with central differences of the exact gradient.

The conventions at kinks (relu'(0) = 0, maximum's ties go to the first argument, |·|'(0) = 0) are
checked at the kinks themselves, where finite differences do not apply.
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from refopt import autodiff as ad
from refopt import tree as T

H = 1e-5          # central-difference step: truncation error ~ H² f''' ≈ 1e-10
RTOL = 1e-6       # a wrong rule is off by O(1); FD noise is ~1e-9 at these scales


def _close(a, b, what):
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    assert a.shape == b.shape, f"{what}: shapes {a.shape} vs {b.shape}"
    err = float(np.max(np.abs(a - b))) if a.size else 0.0
    scale = 1.0 + float(np.max(np.abs(b))) if b.size else 1.0
    assert err <= RTOL * scale, f"{what}: max error {err:.3e} (scale {scale:.3e})"


def _like(tree, gen):
    """A random tree of the same shapes."""
    return T.tree_map(lambda a: gen.standard_normal(np.shape(a)), tree)


def _shift(x, h, v):
    return T.tree_map2(lambda a, b: a + h * b, x, v)


def _fd(fn, x, v):
    return (np.asarray(fn(_shift(x, H, v))) - np.asarray(fn(_shift(x, -H, v)))) / (2 * H)


def _fd_grad(s, x):
    """Central-difference gradient of a scalar function of a tree, as a flat vector."""
    flat = T.ravel(x)
    out = np.zeros_like(flat)
    for i in range(flat.size):
        e = np.zeros_like(flat)
        e[i] = 1.0
        out[i] = float(_fd(s, x, T.unravel(e, x)))
    return out


def check_all_modes(fn, x, seed):
    """Run every first- and second-order check on ``fn`` (a function of the tree ``x``)."""
    gen = np.random.default_rng(seed)
    y = fn(x)
    v, w, w2 = _like(x, gen), _like(x, gen), _like(x, gen)
    u = gen.standard_normal(np.shape(y))

    value, Jv = ad.jvp(fn, x, v)
    _close(value, y, "jvp value")
    _close(Jv, _fd(fn, x, v), "jvp vs finite differences")

    value, back = ad.vjp(fn, x)
    _close(value, y, "vjp value")
    JTu = back(u)
    assert T.same_structure(JTu, x)
    assert abs(float(np.sum(u * Jv)) - float(T.vdot(JTu, v))) <= RTOL * (1 + abs(float(np.sum(u * Jv))))

    def s(z):
        return ad.sum(ad.multiply(fn(z), u))

    _close(T.ravel(JTu), _fd_grad(s, x), "vjp vs finite-difference gradient")

    fd_hv = (T.ravel(ad.grad(s)(_shift(x, H, w))) - T.ravel(ad.grad(s)(_shift(x, -H, w)))) / (2 * H)
    _close(T.ravel(ad.hvp(s, x, w)), fd_hv, "forward-over-reverse hvp")
    _close(T.ravel(ad.hvp_operator(s, x)[1](w)), fd_hv, "reverse-over-reverse hvp")
    rev_fwd = ad.grad(lambda z: ad.sum(ad.multiply(ad.jvp(fn, z, w)[1], u)))(x)
    _close(T.ravel(rev_fwd), fd_hv, "reverse-over-forward hvp")
    fwd_fwd = ad.jvp(lambda z: ad.sum(ad.multiply(ad.jvp(fn, z, w)[1], u)), x, w2)[1]
    _close(fwd_fwd, np.dot(T.ravel(w2), fd_hv), "forward-over-forward w2ᵀ H w")


# ---------------------------------------------------------------------------------------------------
# The cases: (name, function of a tuple of arrays, input shapes, input domain).
# Domains keep finite differences valid: "pos" = [0.5, 2], "away" = |x| in [0.3, 2] (off the kinks).

def _gen_inputs(shapes, domain, gen):
    out = []
    for shp in shapes:
        if domain == "pos":
            a = gen.uniform(0.5, 2.0, size=shp)
        elif domain == "away":
            a = gen.uniform(0.3, 2.0, size=shp) * gen.choice([-1.0, 1.0], size=shp)
        else:
            a = gen.standard_normal(shp)
        out.append(np.asarray(a, dtype=np.float64))
    return tuple(out)


BROADCAST_PAIRS = [((3, 4), (3, 4)), ((3, 4), (4,)), ((3, 4), (1, 4)), ((3, 1), (1, 4)), ((3, 4), ()),
                   ((), (2, 3)), ((2, 1, 3), (4, 1))]

UNARY = {
    "negative": (ad.negative, "any"), "exp": (ad.exp, "any"), "log": (ad.log, "pos"), "tanh": (ad.tanh, "any"),
    "sigmoid": (ad.sigmoid, "any"), "relu": (ad.relu, "away"), "softplus": (ad.softplus, "any"),
    "sqrt": (ad.sqrt, "pos"), "sin": (ad.sin, "any"), "cos": (ad.cos, "any"), "absolute": (ad.absolute, "away"),
    "square": (ad.square, "any"), "power_3": (lambda x: ad.power(x, 3), "any"),
    "power_frac": (lambda x: ad.power(x, -1.5), "pos"), "operator_pow": (lambda x: x ** 2.0, "any"),
    "mean_all": (ad.mean, "any"), "sum_all": (ad.sum, "any"),
    "log_softmax": (ad.log_softmax, "any"), "softmax": (ad.softmax, "any"),
    "logsumexp": (lambda x: ad.logsumexp(x, axis=-1), "any"),
}

BINARY = {
    "add": (ad.add, "any"), "subtract": (ad.subtract, "any"), "multiply": (ad.multiply, "any"),
    "divide": (ad.divide, "away"), "maximum": (ad.maximum, "any"), "dot": (ad.dot, "any"),
}


@pytest.mark.parametrize("name", sorted(UNARY))
@settings(max_examples=6)
@given(shape=st.sampled_from([(3,), (2, 3), (2, 1, 4)]), seed=st.integers(0, 2 ** 31))
def test_unary(name, shape, seed):
    fn, domain = UNARY[name]
    (x,) = _gen_inputs([shape], domain, np.random.default_rng(seed))
    check_all_modes(fn, x, seed)


@pytest.mark.parametrize("name", sorted(BINARY))
@settings(max_examples=6)
@given(shapes=st.sampled_from(BROADCAST_PAIRS), seed=st.integers(0, 2 ** 31))
def test_binary_broadcasting(name, shapes, seed):
    fn, domain = BINARY[name]
    gen = np.random.default_rng(seed)
    xy = _gen_inputs(shapes, domain, gen)
    if name == "maximum":  # x on the integers, y on the half-integers: never within 0.3 of a tie
        x, y = xy
        xy = (np.round(2 * x) + gen.uniform(-0.1, 0.1, x.shape),
              np.round(2 * y) + 0.5 + gen.uniform(-0.1, 0.1, y.shape))
    check_all_modes(lambda p: fn(p[0], p[1]), xy, seed)


@pytest.mark.parametrize("shapes", [((2, 3), (3, 4)), ((3,), (3, 4)), ((2, 3), (3,)), ((3,), (3,)),
                                    ((2, 2, 3), (2, 3, 4)), ((1, 2, 3), (3, 3, 2)), ((2, 3), (4, 3, 2))])
@settings(max_examples=4)
@given(seed=st.integers(0, 2 ** 31))
def test_matmul_shapes(shapes, seed):
    xy = _gen_inputs(shapes, "any", np.random.default_rng(seed))
    check_all_modes(lambda p: ad.matmul(p[0], p[1]), xy, seed)
    check_all_modes(lambda p: p[0] @ p[1], xy, seed)  # the operator goes through the same primitive


STRUCTURAL = {
    "transpose_2d": ((3, 4), lambda x: ad.transpose(x)),
    "transpose_axes": ((2, 3, 4), lambda x: ad.transpose(x, (2, 0, 1))),
    "transpose_neg_axes": ((2, 3, 4), lambda x: ad.transpose(x, (-1, 0, 1))),
    "box_T": ((3, 4), lambda x: x.T),
    "reshape": ((2, 6), lambda x: ad.reshape(x, (3, 4))),
    "reshape_method": ((2, 6), lambda x: x.reshape(4, 3)),
    "broadcast_to_lead": ((3,), lambda x: ad.broadcast_to(x, (2, 3))),
    "broadcast_to_inner": ((2, 1), lambda x: ad.broadcast_to(x, (2, 3))),
    "sum_axis0": ((3, 4), lambda x: ad.sum(x, axis=0)),
    "sum_axis_neg_keep": ((3, 4), lambda x: ad.sum(x, axis=-1, keepdims=True)),
    "sum_axes_tuple": ((2, 3, 4), lambda x: ad.sum(x, axis=(0, 2))),
    "sum_all_keepdims": ((2, 3), lambda x: ad.sum(x, keepdims=True)),
    "mean_axis1": ((3, 4), lambda x: ad.mean(x, axis=1)),
    "mean_axes_keep": ((2, 3, 4), lambda x: ad.mean(x, axis=(1, 2), keepdims=True)),
    "logsumexp_axis0": ((3, 4), lambda x: ad.logsumexp(x, axis=0)),
    "logsumexp_keep": ((3, 4), lambda x: ad.logsumexp(x, axis=1, keepdims=True)),
    "log_softmax_axis0": ((3, 4), lambda x: ad.log_softmax(x, axis=0)),
    "take_labels": ((4, 3), lambda x: ad.take_labels(x, np.array([2, 0, 1, 2]))),
    "softmax_cross_entropy_mean": ((4, 3), lambda x: ad.softmax_cross_entropy(x, np.array([2, 0, 1, 2]))),
    "softmax_cross_entropy_sum": ((4, 3), lambda x: ad.softmax_cross_entropy(x, np.array([1, 1, 0, 2]), "sum")),
    "where": ((3, 4), lambda x: ad.where(np.arange(12).reshape(3, 4) % 3 == 0, ad.exp(x), ad.sin(x))),
    "where_broadcast": ((4,), lambda x: ad.where(np.array([[True], [False]]), x, ad.multiply(x, x))),
    "scalar_constants": ((3,), lambda x: 2.0 - 1.5 / (1.0 + x * x) + 3.0 * x),
    "sum_method": ((3, 4), lambda x: x.sum(axis=1)),
    "composite_mlp_layer": ((2, 3), lambda x: ad.tanh(x @ np.ones((3, 2)) * 0.3 + 0.1)),
}


@pytest.mark.parametrize("name", sorted(STRUCTURAL))
@settings(max_examples=4)
@given(seed=st.integers(0, 2 ** 31))
def test_structural_and_composite(name, seed):
    shape, fn = STRUCTURAL[name]
    (x,) = _gen_inputs([shape], "any", np.random.default_rng(seed))
    check_all_modes(fn, x, seed)


def test_where_gradient_routes_to_the_chosen_branch():
    cond = np.array([True, False, True])
    x, y = np.array([1.0, 2.0, 3.0]), np.array([4.0, 5.0, 6.0])
    gx, gy = ad.grad(lambda p: ad.sum(ad.where(cond, p[0], p[1])))((x, y))
    np.testing.assert_array_equal(gx, [1.0, 0.0, 1.0])
    np.testing.assert_array_equal(gy, [0.0, 1.0, 0.0])


# ---------------------------------------------------------------------------------------------------
# Kinks: the documented conventions, in reverse and forward mode, and their (zero) second derivatives.

def test_relu_derivative_at_zero_is_zero():
    x = np.array([-1.0, 0.0, 2.0])
    np.testing.assert_array_equal(ad.grad(lambda z: ad.sum(ad.relu(z)))(x), [0.0, 0.0, 1.0])
    np.testing.assert_array_equal(ad.jvp(ad.relu, x, np.ones(3))[1], [0.0, 0.0, 1.0])
    np.testing.assert_array_equal(ad.hvp(lambda z: ad.sum(ad.relu(z)), x, np.ones(3)), np.zeros(3))
    # relu(x)² has second derivative 2·1[x > 0]: the mask is piecewise constant.
    np.testing.assert_array_equal(ad.hvp(lambda z: ad.sum(ad.square(ad.relu(z))), x, np.ones(3)), [0, 0, 2.0])


def test_maximum_ties_go_to_the_first_argument():
    x, y = np.array([1.0, 2.0, 3.0]), np.array([1.0, 5.0, 0.0])
    gx, gy = ad.grad(lambda p: ad.sum(ad.maximum(p[0], p[1])))((x, y))
    np.testing.assert_array_equal(gx, [1.0, 0.0, 1.0])
    np.testing.assert_array_equal(gy, [0.0, 1.0, 0.0])
    _, t = ad.jvp(lambda p: ad.maximum(p[0], p[1]), (x, y), (np.full(3, 10.0), np.full(3, 100.0)))
    np.testing.assert_array_equal(t, [10.0, 100.0, 10.0])
    # Broadcast against a scalar: the scalar collects the cotangent of every entry it wins (ties excluded).
    g0 = ad.grad(lambda p: ad.sum(ad.maximum(p[0], p[1])))((np.array([-1.0, 0.0, 1.0]), np.array(0.0)))
    np.testing.assert_array_equal(g0[0], [0.0, 1.0, 1.0])
    assert float(g0[1]) == 1.0


def test_absolute_derivative_at_zero_is_zero():
    x = np.array([-2.0, 0.0, 3.0])
    np.testing.assert_array_equal(ad.grad(lambda z: ad.sum(ad.absolute(z)))(x), [-1.0, 0.0, 1.0])
    np.testing.assert_array_equal(ad.jvp(ad.absolute, x, np.ones(3))[1], [-1.0, 0.0, 1.0])
    np.testing.assert_array_equal(ad.hvp(lambda z: ad.sum(ad.absolute(z)), x, np.ones(3)), np.zeros(3))


def test_non_differentiable_helpers_have_zero_derivative():
    x = np.array([0.5, -0.5])
    # greater / onehot / stop_gradient outputs are constants for every trace: d(sg(x)·x)/dx = sg(x).
    g = ad.grad(lambda z: ad.sum(ad.multiply(ad.stop_gradient(z), z)))(x)
    np.testing.assert_array_equal(g, x)
    np.testing.assert_array_equal(ad.jvp(lambda z: ad.multiply(ad.stop_gradient(z), z), x, np.ones(2))[1], x)
    np.testing.assert_array_equal(ad.hvp(lambda z: ad.sum(ad.multiply(ad.stop_gradient(z), z)), x, np.ones(2)),
                                  [0.0, 0.0])
    mask = ad.greater(ad.tanh(x), 0.0)
    assert mask.dtype == bool and not isinstance(mask, ad.Box)
    oh = ad.onehot(np.array([1, 0]), 3, np.float64)
    np.testing.assert_array_equal(oh, [[0, 1, 0], [1, 0, 0]])


def test_sigmoid_and_softplus_are_stable_at_extremes():
    x = np.array([-800.0, -30.0, 0.0, 30.0, 800.0])
    s = ad.sigmoid(x)
    assert np.all(np.isfinite(s)) and s[0] == 0.0 and s[-1] == 1.0 and s[2] == 0.5
    sp = ad.softplus(x)
    assert np.all(np.isfinite(sp)) and sp[-1] == 800.0
    g = ad.grad(lambda z: ad.sum(ad.softplus(z)))(x)
    np.testing.assert_allclose(g, s)
    lse = ad.logsumexp(np.array([[1000.0, 1000.0]]), axis=1)
    np.testing.assert_allclose(lse, [1000.0 + np.log(2.0)])


def test_primitive_without_a_rule_says_so():
    prim = ad.Primitive("only_forward", lambda x: 2 * x)
    with pytest.raises(NotImplementedError, match="vjp rule"):
        ad.grad(lambda z: ad.sum(prim(z)))(np.ones(2))
    with pytest.raises(NotImplementedError, match="jvp rule"):
        ad.jvp(prim, np.ones(2), np.ones(2))


def test_branching_on_a_traced_value_is_an_error():
    with pytest.raises(TypeError, match="getval"):
        ad.grad(lambda z: ad.sum(z) if ad.sum(z) else ad.sum(z))(np.ones(2))


# ---------------------------------------------------------------------------------------------------
# Indexing (the getitem / scatter pair) and NumPy's dispatch protocols on boxes.
def _rosenbrock(x):
    return (1 - x[0]) ** 2 + 100 * (x[1] - x[0] ** 2) ** 2


def _rosenbrock_grad(x):
    return np.array([-2 * (1 - x[0]) - 400 * x[0] * (x[1] - x[0] ** 2), 200 * (x[1] - x[0] ** 2)])


def _rosenbrock_hess(x):
    return np.array([[2 - 400 * (x[1] - 3 * x[0] ** 2), -400 * x[0]], [-400 * x[0], 200.0]])


def test_getitem_gradient_and_hessian_of_rosenbrock_written_with_x0():
    x = np.array([-1.2, 1.0])
    _close(ad.grad(_rosenbrock)(x), _rosenbrock_grad(x), "grad through x[0], x[1]")
    _close(ad.hessian(_rosenbrock, x), _rosenbrock_hess(x), "reverse-over-reverse through getitem")
    for v in np.eye(2):   # forward-over-reverse: getitem's vjp (scatter) is itself differentiated
        _close(ad.hvp(_rosenbrock, x, v), _rosenbrock_hess(x) @ v, "hvp through getitem")


@pytest.mark.parametrize("index", [1, -1, (0, 2), slice(1, None), (slice(None), 1), (slice(None, None, 2), 0),
                                   (Ellipsis, slice(1, 3)), (0, None)])
def test_getitem_rules_against_finite_differences(index):
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal((3, 4)), rng.standard_normal((3, 4))
    u = rng.standard_normal(np.shape(x[index]))
    f = lambda z: z[index] * z[index]   # noqa: E731 - nonlinear, so the second-order rules are exercised
    fd = (f(x + H * w) - f(x - H * w)) / (2 * H)
    _close(ad.jvp(f, x, w)[1], fd, f"jvp of x[{index!r}]")
    _, back = ad.vjp(f, x)
    _close(np.sum(back(u) * w), np.sum(u * fd), f"vjp of x[{index!r}] (adjoint identity)")
    s = lambda z: ad.sum(ad.multiply(u, f(z)))   # noqa: E731
    exact = np.zeros_like(x)
    np.add.at(exact, index, 2 * u * w[index])    # ∇²s w, by hand: s = Σ u z[i]², ∇²s = diag(2u) on the slice
    _close(ad.hvp(s, x, w), exact, f"hvp through x[{index!r}]")


def test_getitem_refuses_advanced_indices_and_iterates():
    x = np.arange(3.0)
    with pytest.raises(TypeError, match="basic indexing"):
        ad.grad(lambda z: ad.sum(z[np.array([0, 0])]))(x)
    g = ad.grad(lambda z: sum(zi * zi for zi in z))(x)           # iterating over a box yields its entries
    _close(g, 2 * x, "grad of sum over iteration")


def _numpy_function(x):
    A = np.arange(6.0).reshape(2, 3) / 10
    return (np.sum(np.exp(x)) + np.sum(np.tanh(A @ x)) + np.dot(x, x) + np.mean(np.square(x))
            + np.sum(np.sqrt(np.abs(x) + 1.0)) + np.sum(np.maximum(x, 0.5)) + np.log(np.sum(x * x) + 1.0)
            + np.sum(np.sin(x) * np.cos(x)) + np.sum(np.reshape(x, (3, 1)) @ np.ones((1, 2))) + x.sum()
            + np.sum(np.where(x > 0, x, 2 * x)) + np.sum(np.transpose(np.dot(A, np.reshape(x, (3, 1))))))


def test_numpy_dispatch_against_autograd():
    autograd = pytest.importorskip("autograd")
    anp = pytest.importorskip("autograd.numpy")
    A = np.arange(6.0).reshape(2, 3) / 10

    def reference(x):
        return (anp.sum(anp.exp(x)) + anp.sum(anp.tanh(A @ x)) + anp.dot(x, x) + anp.mean(anp.square(x))
                + anp.sum(anp.sqrt(anp.abs(x) + 1.0)) + anp.sum(anp.maximum(x, 0.5)) + anp.log(anp.sum(x * x) + 1.0)
                + anp.sum(anp.sin(x) * anp.cos(x)) + anp.sum(anp.reshape(x, (3, 1)) @ anp.ones((1, 2))) + x.sum()
                + anp.sum(anp.where(x > 0, x, 2 * x)) + anp.sum(anp.transpose(anp.dot(A, anp.reshape(x, (3, 1))))))

    x, v = np.array([0.3, -0.7, 1.1]), np.array([1.0, -2.0, 0.5])
    assert float(_numpy_function(x)) == pytest.approx(float(reference(x)), rel=1e-14)
    _close(ad.grad(_numpy_function)(x), autograd.grad(reference)(x), "grad of a NumPy-written function")
    _close(ad.hvp(_numpy_function, x, v), autograd.hessian(reference)(x) @ v, "hvp of a NumPy-written function")


def test_numpy_dispatch_ndarray_on_the_left():
    x, A = np.array([0.5, -1.0]), np.array([[1.0, 2.0], [3.0, 4.0]])
    f = lambda z: np.sum(A @ z) + np.sum(np.ones(2) * z) + np.sum(np.ones(2) - z) + np.sum(np.ones(2) / (z + 3))  # noqa
    _close(ad.grad(f)(x), A.sum(axis=0) + 1 - 1 - 1 / (x + 3) ** 2, "ndarray (op) box")


@pytest.mark.parametrize("call, name", [(lambda z: np.linalg.norm(z), "numpy.linalg.norm"),
                                        (lambda z: np.cumprod(z), "numpy.cumprod"),
                                        (lambda z: np.add.reduce(z), "numpy.add.reduce"),
                                        (lambda z: np.sum(z, dtype=np.float32), "numpy.sum with dtype="),
                                        (lambda z: np.arctan(z), "numpy.arctan")])
def test_unsupported_numpy_function_names_itself_and_the_supported_ones(call, name):
    with pytest.raises(TypeError) as err:
        ad.grad(lambda z: call(z))(np.array([1.0, 2.0]))
    msg = str(err.value)
    assert name in msg and "supported NumPy operations" in msg and "sum" in msg and "tanh" in msg


def test_an_object_array_output_is_refused_not_differentiated_as_zero():
    with pytest.raises(TypeError, match="object array"):
        ad.jvp(lambda z: np.array([z[0] * z[1], z[1]]), np.ones(2), np.ones(2))
    with pytest.raises(TypeError, match="object array"):
        ad.vjp(lambda z: np.array([z[0] * z[1], z[1]]), np.ones(2))


# ---------------------------------------------------------------------------------------------------
# affine(a, W, b) = a @ W + b: every mode, and the same bits as matmul followed by add.
AFFINE_SHAPES = [((4, 3), (3, 5), (5,)), ((3,), (3, 2), (2,)), ((2, 3), (3, 4), (1, 4)), ((3,), (3, 4), (2, 4)),
                 ((2, 2, 3), (2, 3, 4), (4,)), ((2, 3), (3, 2), ())]


@pytest.mark.parametrize("shapes", AFFINE_SHAPES)
@settings(max_examples=4)
@given(seed=st.integers(0, 2 ** 31))
def test_affine_in_every_mode(shapes, seed):
    abc = _gen_inputs(shapes, "any", np.random.default_rng(seed))
    check_all_modes(lambda p: ad.affine(p[0], p[1], p[2]), abc, seed)


@pytest.mark.parametrize("shapes", AFFINE_SHAPES)
def test_affine_is_matmul_then_add_bit_for_bit(shapes):
    gen = np.random.default_rng(7)
    a, W, b = _gen_inputs(shapes, "any", gen)
    kept = [x.copy() for x in (a, W, b)]
    s = ad.affine(a, W, b)
    assert s.tobytes() == (np.matmul(a, W) + b).tobytes() and s.shape == np.broadcast_shapes((a @ W).shape, b.shape)
    for x, k in zip((a, W, b), kept):  # the bias is added in place into the fresh product, not into an input
        assert x.tobytes() == k.tobytes()
    u = gen.standard_normal(s.shape)
    fused = ad.vjp(lambda p: ad.affine(*p), (a, W, b))[1](u)
    apart = ad.vjp(lambda p: ad.add(ad.matmul(p[0], p[1]), p[2]), (a, W, b))[1](u)
    for x, y in zip(fused, apart):
        assert x.dtype == y.dtype and x.shape == y.shape and x.tobytes() == y.tobytes()


# ---------------------------------------------------------------------------------------------------
# Plain rules: the rules a sweep uses on raw arrays (core.defvjp_plain) return exactly what the primitive
# rules return on the same raw arrays (values to the bit, dtype, shape, strides, type), and leave the
# cotangent, the output and the arguments untouched, also where they compute in place.
def _g_with_specials(shape, dtype, gen):
    """A random cotangent with −0.0, ±inf and NaN in it where there is room: in-place and out-of-place
    arithmetic must agree on signs and special values too."""
    g = gen.standard_normal(shape).astype(dtype)
    flat = g.reshape(-1)
    for i, v in enumerate([-0.0, np.inf, np.nan, -np.inf][:max(flat.size - 2, 0)]):
        flat[(3 * i + 1) % flat.size] = v
    return g


def _at_kinks(x):
    """x with exact zeros at a few entries (relu', |·|' and maximum's ties are taken there)."""
    x = x.copy()
    x.reshape(-1)[::3] = 0.0
    return x


def _plain_cases():
    gen = np.random.default_rng(0)
    r = lambda *shape: gen.standard_normal(shape)  # noqa: E731
    pos = lambda *shape: gen.uniform(0.5, 2.0, shape)  # noqa: E731
    cases = [
        ("reshape", ad.reshape, (r(2, 6), (3, 4)), {}),
        ("sum_all", ad.sum, (r(3, 4),), {}),
        ("sum_axis0", ad.sum, (r(3, 4),), {"axis": 0}),
        ("sum_keep", ad.sum, (r(2, 3, 4),), {"axis": (0, 2), "keepdims": True}),
        ("sum_1d", ad.sum, (r(5),), {}),
        ("broadcast_lead", ad.broadcast_to, (r(3), (2, 3)), {}),
        ("broadcast_inner", ad.broadcast_to, (r(2, 1), (2, 3)), {}),
        ("transpose", ad.transpose, (r(2, 3, 4),), {"axes": (2, 0, 1)}),
        ("transpose_T", ad.transpose, (r(3, 4),), {}),
        ("getitem", ad.getitem, (r(3, 4), (slice(1, None), 0)), {}),
        ("scatter", ad.scatter, (r(3), (slice(None), 1), (3, 4)), {}),
        ("negative", ad.negative, (r(3, 4),), {}),
        ("exp", ad.exp, (r(3, 4),), {}),
        ("log", ad.log, (pos(3, 4),), {}),
        ("tanh", ad.tanh, (r(3, 4),), {}),
        ("tanh_large", ad.tanh, (r(64, 96),), {}),
        ("tanh_0d", ad.tanh, (np.array(0.3),), {}),
        ("sigmoid", ad.sigmoid, (r(3, 4),), {}),
        ("relu", ad.relu, (_at_kinks(r(3, 4)),), {}),
        ("softplus", ad.softplus, (r(3, 4),), {}),
        ("sqrt", ad.sqrt, (pos(3, 4),), {}),
        ("sin", ad.sin, (r(3, 4),), {}),
        ("cos", ad.cos, (r(3, 4),), {}),
        ("absolute", ad.absolute, (_at_kinks(r(3, 4)),), {}),
        ("power_3", ad.power, (r(3, 4), 3), {}),
        ("power_frac", ad.power, (pos(3, 4), -1.5), {}),
        ("take_labels", ad.take_labels, (r(4, 3), np.array([2, 0, 1, 2])), {}),
        ("logsumexp", ad.logsumexp, (r(4, 3),), {"axis": 1}),
        ("logsumexp_axis0_keep", ad.logsumexp, (r(4, 3),), {"axis": 0, "keepdims": True}),
        ("maximum_ties", ad.maximum, (_at_kinks(r(3, 4)), np.zeros((3, 4))), {}),
        ("affine_layer", ad.affine, (r(32, 10), r(10, 16), r(16)), {}),
        ("affine_large", ad.affine, (r(64, 96), r(96, 80), r(80)), {}),  # BLAS-sized products
        ("affine_vector", ad.affine, (r(3), r(3, 2), r(2)), {}),
        ("affine_bias_up", ad.affine, (r(3), r(3, 4), r(2, 4)), {}),
        ("affine_batched", ad.affine, (r(2, 2, 3), r(2, 3, 4), r(4)), {}),
        ("affine_scalar_bias", ad.affine, (r(2, 3), r(3, 2), 0.5), {}),
        ("divide_by_python_float", ad.divide, (r(3, 4), 32.0), {}),
        ("divide_0d_by_float", ad.divide, (np.array(3.0), 32.0), {}),
        ("multiply_python_float", ad.multiply, (2.5, r(3, 4)), {}),
        ("softmax_cross_entropy_mean", ad.softmax_cross_entropy, (r(5, 3), np.array([2, 0, 1, 2, 0])), {}),
        ("softmax_cross_entropy_sum", ad.softmax_cross_entropy, (r(5, 3), np.array([2, 0, 1, 2, 0])),
         {"reduction": "sum"}),
        ("softmax_cross_entropy_underflow", ad.softmax_cross_entropy,  # softmax entries of exactly 0
         (300.0 * r(4, 3), np.array([0, 1, 2, 1])), {}),
        ("softmax_cross_entropy_one_class", ad.softmax_cross_entropy, (r(3, 1), np.zeros(3, dtype=int)), {}),
        ("unfold_same", ad.unfold, (r(2, 3, 5, 6), ad.conv_geometry((5, 6), 3, 1, "same")), {}),
        ("unfold_strided_dilated", ad.unfold,
         (r(2, 2, 7, 6), ad.conv_geometry((7, 6), (3, 2), (2, 1), (1, 0), (1, 2))), {}),
        ("unfold_max_pool_padding", ad.unfold, (r(4, 1, 5, 5), ad.conv_geometry((5, 5), 3, 2, 1, pool=True)),
         {"pad_value": -np.inf}),
        ("fold_same", ad.fold, (r(2, 30, 27), 3, ad.conv_geometry((5, 6), 3, 1, "same")), {}),
        ("fold_strided_dilated", ad.fold, (r(2, 16, 12), 2, ad.conv_geometry((7, 6), (3, 2), (2, 1), (1, 0), (1, 2))),
         {}),
    ]
    for xs, ys in BROADCAST_PAIRS:
        for name, prim in [("add", ad.add), ("subtract", ad.subtract), ("multiply", ad.multiply),
                           ("divide", ad.divide), ("maximum", ad.maximum)]:
            cases.append((f"{name}_{xs}_{ys}", prim, (r(*xs), pos(*ys) if name == "divide" else r(*ys)), {}))
    for sa, sb in [((2, 3), (3, 4)), ((3,), (3, 4)), ((2, 3), (3,)), ((3,), (3,)), ((2, 2, 3), (2, 3, 4)),
                   ((2, 3), (4, 3, 2))]:
        cases.append((f"matmul_{sa}_{sb}", ad.matmul, (r(*sa), r(*sb)), {}))
    return cases


PLAIN_CASES = _plain_cases()


def _same(a, b, what):
    assert type(a) is type(b), f"{what}: {type(a).__name__} vs {type(b).__name__}"
    a, b = np.asarray(a), np.asarray(b)
    assert (a.dtype, a.shape, a.strides) == (b.dtype, b.shape, b.strides), \
        f"{what}: {(a.dtype, a.shape, a.strides)} vs {(b.dtype, b.shape, b.strides)}"
    assert a.tobytes() == b.tobytes(), f"{what}: the values differ in their bits"


def test_every_plain_rule_has_a_case():
    with_plain = {p.name for p in vars(ad.primitives).values() if isinstance(p, ad.Primitive) and p.plain_vjps}
    assert with_plain == {prim.name for _, prim, _, _ in PLAIN_CASES}


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("case", PLAIN_CASES, ids=[c[0] for c in PLAIN_CASES])
def test_plain_rules_return_the_primitive_rules_bits(case, dtype):
    name, prim, args, kwargs = case
    args = tuple(a.astype(dtype) if isinstance(a, np.ndarray) and a.dtype.kind == "f" else a for a in args)
    ans = prim.impl(*args, **kwargs)
    g = _g_with_specials(np.shape(ans), dtype, np.random.default_rng(5))
    kept = [np.copy(v) for v in (g, ans) + args if isinstance(v, np.ndarray)]
    argnums = [i for i in prim.plain_vjps if isinstance(args[i], np.ndarray)]
    assert argnums, name
    with np.errstate(all="ignore"):  # inf − inf and 0 · inf in the cotangent are wanted here
        for i in argnums:
            _same(prim.plain_vjps[i](g, ans, *args, **kwargs), prim.vjps[i](g, ans, *args, **kwargs),
                  f"{name}, argument {i}")
    for v, k in zip([v for v in (g, ans) + args if isinstance(v, np.ndarray)], kept):
        assert v.tobytes() == k.tobytes(), f"{name}: a plain rule wrote into its inputs"


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_softmax_cross_entropy_plain_rule_at_every_kind_of_cotangent(dtype, reduction):
    """The plain rule's one-buffer shortcut is taken only for a positive finite host scalar; at ±0, negative,
    ±inf, NaN, subnormal cotangents, a 0-d array, a NumPy scalar or a Python float (another dtype in float32),
    and logits whose softmax underflows to 0 or is NaN, it returns the primitive rule's bits: type, dtype,
    shape and strides, and the values with every NaN counted as one (NumPy 1.23 gives the primitive rule
    itself NaNs of either sign from one call to the next, where a NaN cotangent meets the −NaN of its
    negation)."""
    def one_nan(x):
        return np.where(np.isnan(x), np.array(np.nan, dtype=x.dtype), x)
    gen = np.random.default_rng(8)
    z = (gen.standard_normal((6, 4)) * [[1.0], [400.0], [1.0], [400.0], [1.0], [1.0]]).astype(dtype)
    labels = np.array([3, 0, 1, 2, 0, 3])
    z_inf = z.copy()
    z_inf[2, 1] = np.inf  # logsumexp = inf, softmax NaN in that row
    with np.errstate(all="ignore"):
        for zz in (z, z_inf):
            ans = ad.softmax_cross_entropy.impl(zz, labels, reduction)
            for v in (1.0, 0.25, 3e-320, -1.0, 0.0, -0.0, np.inf, -np.inf, np.nan):
                for g in (np.asarray(v, dtype=dtype), dtype(v), v):
                    plain = ad.softmax_cross_entropy.plain_vjps[0](g, ans, zz, labels, reduction)
                    rule = ad.softmax_cross_entropy.vjps[0](g, ans, zz, labels, reduction)
                    assert (type(plain), plain.strides) == (type(rule), rule.strides), f"g={g!r}"
                    _same(one_nan(plain), one_nan(rule), f"g={g!r}")


def test_a_plain_rule_needs_a_primitive_rule():
    prim = ad.Primitive("no_rule_yet", lambda x: 2 * x)
    with pytest.raises(ValueError, match="no_rule_yet.*argument 0"):
        ad.core.defvjp_plain(prim, lambda g, ans, x: 2 * g)


def test_scalar_constants_keep_their_sign_and_the_arrays_dtype():
    """Python constants are cast to the array's dtype (and the casts reused): +0.0 and −0.0 compare equal
    but must stay apart (−0 + −0 = −0, −0 + 0 = +0), and a float32 computation stays float32."""
    x = np.array([-0.0, 1.0])
    for _ in range(2):  # the second round reads the kept casts
        assert np.signbit(ad.add(x, -0.0)[0]) and not np.signbit(ad.add(x, 0.0)[0])
        assert np.signbit(ad.add(-0.0, x)[0]) and not np.signbit(ad.add(0.0, x)[0])
        assert np.isnan(ad.multiply(x, float("nan"))).all()
        x32 = x.astype(np.float32)
        assert ad.multiply(x32, 0.1).dtype == np.float32 and ad.multiply(x32, 0.1)[1] == np.float32(0.1)
        assert ad.multiply(x, 0.1)[1] == 0.1
