"""Built-in data sets and their held-out splits: sizes, disjointness, standardisation by training statistics."""
import numpy as np
import pytest

from refopt.problems.datasets import DIGITS_HELD_OUT, synthetic_classification
from refopt.problems.registry import PROBLEMS, make_problem


def test_synthetic_training_set_does_not_depend_on_held_out_count():
    a = synthetic_classification(n=64, d=5, classes=3, seed=4)
    b = synthetic_classification(n=64, d=5, classes=3, seed=4, n_val=40)
    np.testing.assert_array_equal(a.X, b.X)
    np.testing.assert_array_equal(a.y, b.y)
    assert a.X_val is None and b.X_val.shape == (40, 5) and b.y_val.shape == (40,)
    # held-out inputs are scaled by the training moments, not their own: their mean is not exactly zero
    assert np.abs(b.X.mean(axis=0)).max() < 1e-12
    assert np.abs(b.X_val.mean(axis=0)).max() > 1e-3


def test_digits_split_is_fixed_disjoint_and_standardised_on_training_rows():
    sklearn = pytest.importorskip("sklearn.datasets")
    raw = sklearn.load_digits()
    from refopt.problems.datasets import digits
    d = digits()
    assert d.X.shape == (1797 - DIGITS_HELD_OUT, 64) and d.X_val.shape == (DIGITS_HELD_OUT, 64)
    # recover the rows independently: undo the standardisation with moments computed here from the training rows
    order = np.random.default_rng(0).permutation(1797)
    train, val = order[:-DIGITS_HELD_OUT], order[-DIGITS_HELD_OUT:]
    assert not set(train) & set(val)
    mu, sd = raw.data[train].mean(0), raw.data[train].std(0)
    sd[sd == 0] = 1
    np.testing.assert_allclose(d.X, (raw.data[train] - mu) / sd, rtol=0, atol=1e-12)
    np.testing.assert_allclose(d.X_val, (raw.data[val] - mu) / sd, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(d.y_val, raw.target[val])
    again = digits()
    np.testing.assert_array_equal(again.X_val, d.X_val)
    full = digits(held_out=False)
    assert full.X.shape == (1797, 64) and full.X_val is None


@pytest.mark.parametrize("name", sorted(PROBLEMS))
def test_every_network_problem_holds_out_examples(name):
    if name.startswith("digits"):
        pytest.importorskip("sklearn")
    p = make_problem(name)
    assert p.has_validation
    assert p.X_val.shape[1:] == p.X.shape[1:] and p.y_val.shape[1:] == p.y.shape[1:]
    params = p.init_params(0)
    val = p.validation_oracle().value(params)
    assert np.isfinite(val) and val != p.oracle().value(params)


def test_validation_needs_both_halves():
    from refopt.nn import MLP, SoftmaxCrossEntropy
    from refopt.problems.registry import NetworkProblem
    X = np.zeros((4, 2))
    y = np.zeros(4, dtype=np.int64)
    with pytest.raises(ValueError, match="give both"):
        NetworkProblem("p", MLP([2, 2]), SoftmaxCrossEntropy(), X, y, X_val=X)
    with pytest.raises(ValueError, match="no held-out"):
        NetworkProblem("p", MLP([2, 2]), SoftmaxCrossEntropy(), X, y).validation_oracle()


@pytest.mark.parametrize("name", sorted(PROBLEMS))
def test_every_network_problem_has_an_identity_of_its_network_and_data(name):
    """What a checkpoint records of the problem: equal for two builds, and the digest changes with one value of
    the held-out inputs (not only the training ones)."""
    if name.startswith("digits"):
        pytest.importorskip("sklearn")
    p = make_problem(name)
    ident = p.identity()
    assert ident == make_problem(name).identity()
    assert ident["sizes"] == p.model.sizes and ident["activations"] == p.model.activations
    assert ident["loss"] == repr(p.loss) and ident["data"].startswith("batch:")
    p.X_val = p.X_val.copy()
    p.X_val[0, 0] += 1.0
    assert p.identity()["data"] != ident["data"]


def test_function_problems_are_identified_by_name():
    assert make_problem("rosenbrock").identity() == {"kind": "function", "name": "rosenbrock"}


def test_standardisation_is_the_plain_formula_for_ordinary_features_bit_for_bit():
    """Dividing by a power of two is exact, so the overflow-safe moments give (X − mean) / std exactly."""
    from refopt.problems.datasets import standardisation
    g = np.random.default_rng(5)
    for X in (g.standard_normal((300, 7)) * 3 + 1, g.integers(0, 17, (50, 4)).astype(float),
              g.standard_normal((20, 3)) * 1e-6):
        np.testing.assert_array_equal(standardisation(X).apply(X), (X - X.mean(axis=0)) / X.std(axis=0))


def test_standardisation_of_a_constant_and_of_huge_features():
    from refopt.problems.datasets import standardisation
    X = np.array([[0.1, 1e308], [0.1, -1e308], [0.1, 1.5e308]])
    with np.errstate(over="raise", invalid="raise"):
        st = standardisation(X)
        Z = st.apply(X)
    assert np.all(Z[:, 0] == 0)  # constant: max = min, although its computed deviation is 1.4e-17, not 0
    small = X[:, 1] / 1e300
    np.testing.assert_allclose(Z[:, 1], (small - small.mean()) / small.std(), rtol=0, atol=1e-14)
    assert st.apply(np.array([[0.3, 0.0]]))[0, 0] == 0.3 - 0.1  # held out: the difference from the constant
