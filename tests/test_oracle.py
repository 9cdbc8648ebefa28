"""Oracles: what they compute, what they count, how they treat trial points and bad input."""
from __future__ import annotations

import numpy as np
import pytest

from refopt import autodiff as ad
from refopt import tree as T
from refopt.nn import MLP, Bernoulli, Gaussian, SoftmaxCrossEntropy
from refopt.oracle import Counts, FunctionOracle, Oracle

TOL = dict(rtol=1e-10, atol=1e-12)


def make(loss=None, B=5, dtype=np.float64, sizes=(3, 4, 2)):
    gen = np.random.default_rng(0)
    model = MLP(list(sizes))
    loss = loss or SoftmaxCrossEntropy()
    X = gen.standard_normal((B, sizes[0])).astype(dtype)
    if isinstance(loss, SoftmaxCrossEntropy):
        y = gen.integers(0, sizes[-1], B)
    elif isinstance(loss, Gaussian):
        y = gen.standard_normal((B, sizes[-1])).astype(dtype)
    else:
        y = gen.integers(0, 2, (B, sizes[-1])).astype(dtype)
    return Oracle(model, loss, X, y), model.init(1, dtype=dtype), gen


def test_values_gradients_and_products_agree_with_the_autodiff():
    oracle, params, gen = make()
    v = T.tree_map(lambda a: gen.standard_normal(a.shape), params)

    def f(p):
        return oracle.loss(oracle.model.apply(p, oracle.X), oracle.y)

    value, g = ad.value_and_grad(f)(params)
    assert oracle.value(params) == pytest.approx(float(value), rel=1e-14)
    val2, g2 = oracle.value_and_grad(params)
    assert val2 == pytest.approx(float(value), rel=1e-14)
    np.testing.assert_allclose(T.ravel(g2), T.ravel(g), **TOL)
    np.testing.assert_allclose(T.ravel(oracle.grad(params)), T.ravel(g), **TOL)
    Hv = T.ravel(ad.hvp(f, params, v))
    np.testing.assert_allclose(T.ravel(oracle.hvp(params, v)), Hv, **TOL)
    g3, prod = oracle.hvp_operator(params)
    np.testing.assert_allclose(T.ravel(g3), T.ravel(g), **TOL)
    np.testing.assert_allclose(T.ravel(prod(v)), Hv, **TOL)
    np.testing.assert_allclose(oracle.dense_hessian(params) @ T.ravel(v), Hv, **TOL)
    stats = oracle.layer_stats(params)
    np.testing.assert_allclose(T.ravel(stats.grad), T.ravel(g), **TOL)
    labels = np.zeros(oracle.batch_size, dtype=int)
    np.testing.assert_allclose(T.ravel(oracle.grad_at_labels(params, labels)),
                               T.ravel(ad.grad(lambda p: oracle.loss(oracle.model.apply(p, oracle.X), labels))(params)),
                               **TOL)
    np.testing.assert_allclose(T.ravel(oracle.layer_stats(params, targets=labels).grad),
                               T.ravel(oracle.grad_at_labels(params, labels)), **TOL)


def test_every_request_is_counted_and_batches_share_the_counts():
    oracle, params, gen = make()
    v = T.tree_map(np.ones_like, params)
    oracle.value(params)
    oracle.value_and_grad(params)
    oracle.grad(params)
    oracle.hvp(params, v)
    _, prod = oracle.hvp_operator(params)
    prod(v)
    prod(v)
    oracle.ggn_vp(params, v)
    oracle.fisher_vp(params, v)
    op = oracle.curvature_operator(params, "ggn")
    op(v)
    oracle.curvature_operator(params, "empirical")(v)
    oracle.jvp(params, v)
    oracle.vjp(params, np.ones((oracle.batch_size, 2)))
    oracle.layer_stats(params)
    oracle.grad_at_labels(params, oracle.y)
    oracle.hutchinson_diag(params, seed=0, k=3)
    oracle.gnb_diag(params, seed=0, k=2)
    expected = dict(nfev=3, ngev=2 + 1 + 1 + 1 + 2, nhvp=1 + 2 + 3, nggnvp=2, nfvp=2, njvp=1, nvjp=1, nstats=1)
    assert oracle.counts.as_dict() == expected
    other = oracle.with_batch(oracle.X[:2], oracle.y[:2])
    other.value(params)
    assert other.counts is oracle.counts and oracle.counts.nfev == 4
    assert other.batch_size == 2
    assert Counts().as_dict() == dict.fromkeys(expected, 0)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # overflow at the trial point is the point
def test_trial_points_return_non_finite_values_instead_of_raising():
    oracle, params, _ = make(Gaussian())
    huge = T.tree_map(lambda a: np.full_like(a, 1e200), params)
    assert not np.isfinite(oracle.value(huge))
    value, g = oracle.value_and_grad(huge)
    assert not np.isfinite(value)
    nan = T.tree_map(lambda a: np.full_like(a, np.nan), params)
    assert np.isnan(oracle.value(nan))
    assert not T.all_finite(oracle.grad(nan))


@pytest.mark.parametrize("loss", [SoftmaxCrossEntropy(), Gaussian(variance=0.5), Bernoulli("sum")],
                         ids=["softmax", "gaussian", "bernoulli"])
def test_float32_end_to_end(loss):
    oracle, params, gen = make(loss, dtype=np.float32)
    v = T.tree_map(lambda a: gen.standard_normal(a.shape).astype(np.float32), params)
    results = [oracle.grad(params), oracle.hvp(params, v), oracle.hvp_operator(params)[1](v), oracle.ggn_vp(params, v),
               oracle.fisher_vp(params, v, "true"), oracle.fisher_vp(params, v, "mc", seed=0, samples=2),
               oracle.fisher_vp(params, v, "empirical"), oracle.curvature_operator(params)(v),
               oracle.layer_stats(params).grad, oracle.hutchinson_diag(params, seed=0), oracle.gnb_diag(params, seed=0)]
    for r in results:
        assert all(leaf.dtype == np.float32 for leaf in T.leaves(r)), r
    stats = oracle.layer_stats(params)
    assert all(a.dtype == np.float32 for a in stats.inputs + stats.output_grads)
    assert oracle.dense_ggn(params).dtype == np.float32
    assert oracle.jvp(params, v).dtype == np.float32
    # and the float32 numbers are the float64 ones, rounded
    o64 = Oracle(oracle.model, loss, oracle.X.astype(np.float64),
                 oracle.y if oracle.y.dtype.kind in "iu" else oracle.y.astype(np.float64))
    p64 = T.tree_map(lambda a: a.astype(np.float64), params)
    v64 = T.tree_map(lambda a: a.astype(np.float64), v)
    np.testing.assert_allclose(T.ravel(oracle.ggn_vp(params, v)), T.ravel(o64.ggn_vp(p64, v64)), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(T.ravel(oracle.hvp(params, v)), T.ravel(o64.hvp(p64, v64)), rtol=1e-4, atol=1e-5)


def test_bad_batches_name_the_argument():
    model, loss = MLP([3, 2]), SoftmaxCrossEntropy()
    y = np.zeros(4, dtype=int)
    with pytest.raises(ValueError, match=r"X: expected shape \(batch, 3\)"):
        Oracle(model, loss, np.zeros((4, 2)), y)
    with pytest.raises(ValueError, match="X: the batch is empty"):
        Oracle(model, loss, np.zeros((0, 3)), np.zeros(0, dtype=int))
    with pytest.raises(ValueError, match="X: inputs contain NaN"):
        Oracle(model, loss, np.full((4, 3), np.nan), y)
    with pytest.raises(TypeError, match="X: expected a float32 or float64"):
        Oracle(model, loss, np.zeros((4, 3), dtype=np.int64), y)
    with pytest.raises(TypeError, match="X: expected a float32 or float64"):
        Oracle(model, loss, np.zeros((4, 3), dtype=np.float16), y)
    with pytest.raises(ValueError, match=r"y: labels must lie in \[0, 1\]"):
        Oracle(model, loss, np.zeros((4, 3)), np.array([0, 1, 2, 0]))
    with pytest.raises(TypeError, match="y: expected integer"):
        Oracle(model, loss, np.zeros((4, 3)), np.zeros(4))
    with pytest.raises(ValueError, match=r"y: expected shape \(4,\)"):
        Oracle(model, loss, np.zeros((4, 3)), np.zeros(3, dtype=int))
    with pytest.raises(ValueError, match=r"y: expected shape \(4, 2\)"):
        Oracle(model, Gaussian(), np.zeros((4, 3)), np.zeros((1, 2)))
    ok = Oracle(model, loss, [[0.0, 1.0, 2.0]] * 4, y)  # nested lists are converted
    assert ok.X.dtype == np.float64
    with pytest.raises(ValueError, match="y: labels must lie"):
        ok.grad_at_labels(model.init(0), np.array([0, 5, 0, 0]))
    with pytest.raises(TypeError, match="X: dtype float64 differs"):
        ok.value(model.init(0, dtype=np.float32))
    with pytest.raises(ValueError, match="v: tangent"):
        ok.hvp(model.init(0), [{"W": np.ones((3, 1)), "b": np.ones(2)}])
    with pytest.raises(ValueError, match="cotangent"):
        ok.hvp_operator(model.init(0))[1]([{"W": np.ones(2), "b": np.ones(2)}])


def test_function_oracle_uses_analytic_derivatives_or_the_autodiff():
    A = np.array([[3.0, 1.0], [1.0, 2.0]])
    b = np.array([1.0, -1.0])

    def f(x):
        return 0.5 * ad.dot(x, A @ x) - ad.dot(b, x) + ad.sum(ad.exp(x)) * 0.0

    calls = {"grad": 0, "hess": 0}

    def grad(x):
        calls["grad"] += 1
        return A @ x - b

    def hess(x):
        calls["hess"] += 1
        return A

    x, v = np.array([0.5, -0.2]), np.array([1.0, 2.0])
    auto, exact = FunctionOracle(f), FunctionOracle(f, grad=grad, hess=hess)
    for o in (auto, exact):
        value, g = o.value_and_grad(x)
        assert value == pytest.approx(0.5 * x @ A @ x - b @ x)
        np.testing.assert_allclose(g, A @ x - b, **TOL)
        np.testing.assert_allclose(o.grad(x), A @ x - b, **TOL)
        np.testing.assert_allclose(o.hvp(x, v), A @ v, **TOL)
        np.testing.assert_allclose(o.hvp_operator(x)[1](v), A @ v, **TOL)
        np.testing.assert_allclose(o.dense_hessian(x), A, **TOL)
        assert o.counts.nfev == 1 and o.counts.ngev == 3 and o.counts.nhvp == 2
    assert calls == {"grad": 3, "hess": 3}
    assert FunctionOracle(f, hvp=lambda x, v: A @ v).hvp(x, v).tolist() == (A @ v).tolist()
    with pytest.raises(ValueError, match="hvp"):
        exact.dense_hessian(x, max_size=1)
    with pytest.raises(ValueError, match="hvp"):
        auto.dense_hessian(x, max_size=1)
    with np.errstate(invalid="ignore"):
        assert not np.isfinite(FunctionOracle(lambda z: ad.log(ad.sum(z))).value(np.array([-1.0, 0.0])))


# --- batch tokens: what the Newton family's cached point is keyed by (refopt/oracle.py, optim/descent.py) ----
def _lbfgs_steps(oracles, params, steps=5):
    from refopt.optim.lbfgs import LBFGS
    opt = LBFGS()
    state = opt.init(params)
    for k in range(steps):
        params, state, _ = opt.update(params, state, oracles(k))
    return params, state


def test_identical_runs_end_in_equal_states_and_counts():
    """The token is a digest of the data (or the problem's name), not a random number: two identical runs
    end in equal states, cached point and its token included, with equal counts."""
    from _helpers import assert_same_values
    from refopt.runner import RunConfig, run
    for problem in ("logistic", "rosenbrock"):
        a, b = (run(RunConfig("lbfgs", {}, problem, steps=5, seed=3)) for _ in range(2))
        assert a.state.point is not None
        assert_same_values(a.state, b.state)
        assert [(h["nfev"], h["ngev"]) for h in a.history] == [(h["nfev"], h["ngev"]) for h in b.history]
    oracle, params, _ = make()
    twin = Oracle(oracle.model, oracle.loss, oracle.X.copy(), oracle.y.copy())
    assert oracle.batch_token == twin.batch_token and oracle.batch_token.startswith("batch:")


def test_a_fresh_oracle_on_equal_data_reuses_the_point():
    """A user who builds a new Oracle for the same data every step pays one evaluation per point, as before
    the redesign (5 L-BFGS steps on ``logistic``: nfev 6, not 10)."""
    from refopt.problems.registry import make_problem
    problem = make_problem("logistic")
    counts = Counts()
    new = lambda k: Oracle(problem.model, problem.loss, problem.X.copy(), problem.y.copy(), counts=counts)
    _lbfgs_steps(new, problem.init_params(0))
    one = problem.oracle()
    _lbfgs_steps(lambda k: one, problem.init_params(0))
    assert counts.nfev == one.counts.nfev == 6


def test_different_data_under_the_same_name_do_not_share_a_cached_gradient():
    """Two NetworkProblems of one name on different data: the second evaluates the point afresh and its
    step uses its own gradient (the registry's tokens used to come from the name)."""
    from refopt.optim.lbfgs import LBFGS
    from refopt.problems.registry import NetworkProblem
    base, _, gen = make(loss=Bernoulli(), B=8, sizes=(3, 1))
    a = NetworkProblem("same", base.model, base.loss, base.X, base.y)
    b = NetworkProblem("same", base.model, base.loss, base.X + 0.5, 1.0 - base.y)
    assert a.oracle().batch_token != b.oracle().batch_token
    assert a.oracle().batch_token == a.oracle().batch_token
    opt = LBFGS()
    params, state, _ = opt.update(base.model.init(0), opt.init(base.model.init(0)), a.oracle())
    ob = b.oracle()
    _, _, info = opt.update(params, state, ob)
    assert ob.counts.nfev == 1 + info["nfev"]
    assert info["loss"] == ob.value(params) != state.point.loss
    # the loss and the model are part of what is evaluated, too
    other_loss = Oracle(base.model, Bernoulli("sum"), base.X, base.y)
    assert other_loss.batch_token != a.oracle().batch_token
    # an explicit token still overrides the digest
    assert Oracle(base.model, base.loss, base.X, base.y, batch_token="mine").batch_token == "mine"


def test_function_oracle_tokens_name_the_function_objects():
    """Without data to hash, a FunctionOracle's token names its function objects (within this process): the
    same objects share it, different functions never do, not even one built where a freed one lived."""
    import gc

    def make_quadratic(a):
        return lambda x: a * (x @ x)
    f = make_quadratic(1.0)
    assert FunctionOracle(f).batch_token == FunctionOracle(f).batch_token
    tokens = set()
    for a in range(20):   # each function freed before the next is built (ids are reused, serials are not)
        tokens.add(FunctionOracle(make_quadratic(float(a))).batch_token)
        gc.collect()
    assert len(tokens) == 20
    g = make_quadratic(2.0)
    assert FunctionOracle(f).batch_token != FunctionOracle(g).batch_token
    assert FunctionOracle(f).batch_token != FunctionOracle(f, grad=lambda x: 2 * x).batch_token
    assert FunctionOracle(f, batch_token="quad").batch_token == "quad"
    from refopt.problems.registry import make_problem
    problem = make_problem("rosenbrock")
    assert problem.oracle().batch_token == make_problem("rosenbrock").oracle().batch_token == "rosenbrock"


# --- the Gauss-Newton-Bartlett estimate from one forward pass ---------------------------------------------------
@pytest.mark.parametrize("loss", [SoftmaxCrossEntropy(), Gaussian(), Bernoulli()], ids=["softmax", "gaussian", "bernoulli"])
def test_gnb_estimate_is_the_gradient_and_the_estimate_of_one_pass(loss):
    """gnb_estimate(gradient=True): the loss and gradient are value_and_grad's, the labels sample_labels' draw of
    the same seed, ĥ the estimate ĝ⊙ĝ/scale written out from ĝ = ∇ of the reduced loss at those labels
    (grad_at_labels); one forward pass of the network for all of it, and the counts of the separate requests."""
    oracle, params, _ = make(loss, B=6)
    calls = [0]
    apply = oracle.model.apply

    def counted(*args, **kwargs):
        calls[0] += 1
        return apply(*args, **kwargs)
    oracle.model.apply = counted
    est = oracle.gnb_estimate(params, seed=7, k=2, gradient=True)
    assert calls[0] == 1 and oracle.counts.nfev == 1 and oracle.counts.ngev == 1 + 2
    del oracle.model.apply
    value, g = oracle.value_and_grad(params)
    assert est.loss == pytest.approx(value, rel=1e-15)
    np.testing.assert_allclose(T.ravel(est.grad), T.ravel(g), rtol=1e-14, atol=1e-16)
    labels = oracle.sample_labels(params, 7, 2)
    np.testing.assert_array_equal(est.labels, labels)
    scale = loss.scale(6, 2)
    expected = sum(T.ravel(oracle.grad_at_labels(params, y)) ** 2 for y in labels) / (2 * scale)
    np.testing.assert_allclose(T.ravel(est.hhat), expected, rtol=1e-12, atol=1e-15)
    np.testing.assert_array_equal(T.ravel(oracle.gnb_diag(params, seed=7, k=2)), T.ravel(est.hhat))
    injected = oracle.gnb_estimate(params, labels=labels)
    assert injected.loss is None and injected.grad is None
    np.testing.assert_array_equal(T.ravel(injected.hhat), T.ravel(est.hhat))


def test_gnb_estimate_draws_nothing_at_a_non_finite_gradient():
    oracle, params, _ = make(Gaussian())
    nan = T.tree_map(lambda a: np.full_like(a, np.nan), params)
    est = oracle.gnb_estimate(nan, seed=0, gradient=True)
    assert est.hhat is None and est.labels is None and not T.all_finite(est.grad)
    with pytest.raises(ValueError, match="seed= or labels="):
        oracle.gnb_estimate(params)


def test_function_oracle_records_its_autodiff_gradient_once_for_products():
    """Without analytic derivatives, hvp_operator records ∇f once (one ngev, one evaluation of f) and each product
    sweeps it: f(x) = Σ x⁴/4 + Σ x_i x_{i+1}, H = diag(3x²) + the off-diagonal ones."""
    calls = [0]

    def f(x):
        calls[0] += 1
        return np.sum(x ** 4) / 4.0 + np.sum(x[:-1] * x[1:])
    x = np.array([0.5, -1.0, 2.0])
    H = np.diag(3 * x ** 2) + np.diag([1.0, 1.0], 1) + np.diag([1.0, 1.0], -1)
    o = FunctionOracle(f)
    g, hv = o.hvp_operator(x)
    np.testing.assert_allclose(g, x ** 3 + np.array([x[1], x[0] + x[2], x[1]]), rtol=1e-14)
    for v in np.eye(3):
        np.testing.assert_allclose(hv(v), H @ v, rtol=1e-14, atol=1e-15)
    assert calls[0] == 1 and o.counts.ngev == 1 and o.counts.nhvp == 3
    # a given gradient (here half the true one, so the two cannot be confused) is the one returned, by
    # hvp_operator and value_and_hvp_operator alike; the products still sweep the recording of f's gradient
    half = lambda p: 0.5 * (p ** 3 + np.concatenate([p[1:2], p[:-2] + p[2:], p[-2:-1]]))  # noqa: E731
    o = FunctionOracle(f, grad=half)
    for g, hv in [o.hvp_operator(x), o.value_and_hvp_operator(x)[1:]]:
        np.testing.assert_array_equal(g, half(x))
        for v in np.eye(3):
            np.testing.assert_allclose(hv(v), H @ v, rtol=1e-14, atol=1e-15)
    assert (o.counts.nfev, o.counts.ngev, o.counts.nhvp) == (1, 4, 6)  # each: the given grad and the recording
    assert o.value_and_hvp_operator(x)[0] == f(x)


def test_function_oracle_value_and_hvp_operator_records_the_gradient_once():
    """Without analytic derivatives the products are reverse sweeps of one recorded gradient: one nfev and
    one ngev however many products, each product the Hessian's (Rosenbrock's, written out here)."""
    f = lambda x: (1 - x[0]) ** 2 + 100 * (x[1] - x[0] ** 2) ** 2  # noqa: E731
    x = np.array([-1.2, 1.0])
    H = np.array([[2 - 400 * (x[1] - 3 * x[0] ** 2), -400 * x[0]], [-400 * x[0], 200.0]])
    o = FunctionOracle(f)
    value, g, hv = o.value_and_hvp_operator(x)
    assert value == f(x)
    np.testing.assert_allclose(g, [-2 * (1 - x[0]) - 400 * x[0] * (x[1] - x[0] ** 2), 200 * (x[1] - x[0] ** 2)],
                                rtol=1e-14)
    for v in np.eye(2):
        np.testing.assert_allclose(hv(v), H @ v, rtol=1e-14)
    assert (o.counts.nfev, o.counts.ngev, o.counts.nhvp) == (1, 1, 2)
