"""Parameter trees: flattening order, ravel/unravel, leafwise arithmetic and its shape checks."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from refopt import autodiff as ad
from refopt import tree as T
from refopt.autodiff import primitives as P
from refopt.nn import MLP

shapes = st.lists(st.lists(st.integers(1, 3), min_size=0, max_size=3).map(tuple), min_size=1, max_size=4)


def _tree_from(shapes_, gen):
    """A nested tree (dict of list and tuple) with leaves of the given shapes."""
    ls = [gen.standard_normal(s) for s in shapes_]
    half = len(ls) // 2
    return {"z": list(ls[:half]), "a": tuple(ls[half:]), "m": {"only": np.arange(2.0)}}


@given(shapes_=shapes, seed=st.integers(0, 2 ** 31))
def test_ravel_unravel_round_trip(shapes_, seed):
    gen = np.random.default_rng(seed)
    tree = _tree_from(shapes_, gen)
    flat = T.ravel(tree)
    assert flat.shape == (T.size(tree),)
    back = T.unravel(flat, tree)
    assert T.same_structure(back, tree)
    for x, y in zip(T.leaves(back), T.leaves(tree)):
        np.testing.assert_array_equal(x, y)
    np.testing.assert_array_equal(T.ravel(T.unravel(flat * 2, tree)), flat * 2)
    # flatten/unflatten rebuilds the containers exactly (list stays list, tuple stays tuple)
    ls, d = T.flatten(tree)
    rebuilt = T.unflatten(d, ls)
    assert isinstance(rebuilt["z"], list) and isinstance(rebuilt["a"], tuple)


def test_order_is_sorted_dict_keys_then_row_major():
    tree = {"b": np.array([[1.0, 2.0], [3.0, 4.0]]), "a": [np.array([5.0]), (np.array([6.0, 7.0]),)]}
    np.testing.assert_array_equal(T.ravel(tree), [5, 6, 7, 1, 2, 3, 4])


def test_mlp_parameters_flatten_as_documented():
    """[vec(W1), b1, vec(W2), b2] with vec row-major: W1[i, j] sits at i * fan_out + j."""
    params = MLP([3, 2, 1]).init(0)
    flat = T.ravel(params)
    W1, b1, W2, b2 = params[0]["W"], params[0]["b"], params[1]["W"], params[1]["b"]
    np.testing.assert_array_equal(flat, np.concatenate([W1.ravel(order="C"), b1, W2.ravel(), b2]))
    assert flat[1 * 2 + 1] == W1[1, 1]


def test_unravel_refuses_the_wrong_length():
    with pytest.raises(ValueError, match="vector"):
        T.unravel(np.zeros(5), [np.zeros((2, 2))])
    with pytest.raises(ValueError, match="vector"):
        T.unravel(np.zeros((2, 2)), [np.zeros((2, 2))])


def test_leafwise_arithmetic():
    gen = np.random.default_rng(0)
    a = [{"W": gen.standard_normal((2, 3)), "b": gen.standard_normal(3)}]
    b = T.tree_map(lambda x: gen.standard_normal(x.shape), a)
    fa, fb = T.ravel(a), T.ravel(b)
    np.testing.assert_allclose(T.ravel(T.add(a, b)), fa + fb)
    np.testing.assert_allclose(T.ravel(T.sub(a, b)), fa - fb)
    np.testing.assert_allclose(T.ravel(T.scale(-2.5, a)), -2.5 * fa)
    np.testing.assert_allclose(T.ravel(T.axpy(0.5, a, b)), 0.5 * fa + fb)
    np.testing.assert_allclose(float(T.vdot(a, b)), fa @ fb)
    np.testing.assert_allclose(T.norm(a), np.linalg.norm(fa))
    np.testing.assert_array_equal(T.ravel(T.zeros_like(a)), np.zeros(9))
    np.testing.assert_array_equal(T.ravel(T.tree_map2(np.maximum, a, b)), np.maximum(fa, fb))
    assert T.size(a) == 9 and T.all_finite(a)
    c = T.copy(a)
    c[0]["W"][0, 0] = np.nan
    assert T.all_finite(a) and not T.all_finite(c)  # copy is deep at the leaves
    assert T.same_structure(a, b) and not T.same_structure(a, [{"W": np.zeros((3, 2)), "b": np.zeros(3)}])


def test_vdot_is_differentiable():
    x = (np.array([1.0, 2.0]), np.array([[3.0]]))
    g = ad.grad(lambda p: T.vdot(p, p))(x)
    np.testing.assert_array_equal(T.ravel(g), [2.0, 4.0, 6.0])


def _primitive_vdot(a, b):
    """vdot as it was written before tree moved below autodiff: a sum of autodiff's add and dot."""
    total = 0.0
    for x, y in zip(T.leaves(a), T.leaves(b)):
        total = P.add(total, P.dot(x, y))
    return total


def _same_bits(u, v):
    u, v = ad.getval(u), ad.getval(v)
    assert type(u) is type(v) and np.asarray(u).dtype == np.asarray(v).dtype
    assert np.asarray(u).tobytes() == np.asarray(v).tobytes()  # also tells +0.0 from −0.0


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_vdot_is_the_primitive_sum_bit_for_bit(dtype):
    """tree.vdot uses the boxes' operators instead of importing autodiff: the same value, type, dtype and
    sign of zero as autodiff's add(…, dot(x, y)), and the same gradient and tangent when traced."""
    gen = np.random.default_rng(3)
    a = [{"W": gen.standard_normal((3, 4)), "b": gen.standard_normal(4)}, (gen.standard_normal(()),)]
    a = T.tree_map(lambda x: x.astype(dtype), a)
    b = T.tree_map(lambda x: gen.standard_normal(x.shape).astype(dtype), a)
    _same_bits(T.vdot(a, b), _primitive_vdot(a, b))
    zero, minus = [np.zeros(2, dtype)], [-np.ones(2, dtype)]  # products −0.0: the sum is +0.0, as before
    _same_bits(T.vdot(zero, minus), _primitive_vdot(zero, minus))
    assert T.vdot([], []) == 0.0 == _primitive_vdot([], [])
    for f in (T.vdot, _primitive_vdot):
        assert T.ravel(ad.grad(lambda p: f(p, b))(a)).dtype == dtype
    for g_new, g_old in zip(T.leaves(ad.grad(lambda p: T.vdot(p, T.scale(dtype(2), p)))(a)),
                            T.leaves(ad.grad(lambda p: _primitive_vdot(p, T.scale(dtype(2), p)))(a))):
        _same_bits(g_new, g_old)
    for new, old in zip(ad.jvp(lambda p: T.vdot(p, p), a, b), ad.jvp(lambda p: _primitive_vdot(p, p), a, b)):
        _same_bits(new, old)
    hv_new = ad.hvp(lambda p: T.vdot(p, T.tree_map(lambda x: x * x, p)), a, b)
    hv_old = ad.hvp(lambda p: _primitive_vdot(p, T.tree_map(lambda x: x * x, p)), a, b)
    for new, old in zip(T.leaves(hv_new), T.leaves(hv_old)):
        _same_bits(new, old)


def test_mismatched_trees_never_broadcast():
    a = [np.ones((2, 3))]
    for bad in ([np.ones(3)], [np.ones((1, 3))], [np.ones((2, 3)), np.ones(1)]):
        with pytest.raises(ValueError):
            T.add(a, bad)
        with pytest.raises(ValueError):
            T.sub(a, bad)
        with pytest.raises(ValueError):
            T.axpy(1.0, a, bad)
        with pytest.raises(ValueError, match="vdot"):
            T.vdot(a, bad)
    with pytest.raises(ValueError, match="structures"):
        T.tree_map2(lambda x, y: x, {"a": 1.0}, {"b": 1.0})


def test_empty_tree_ravels_to_an_empty_vector():
    assert T.ravel([]).shape == (0,)
    assert T.size([]) == 0
