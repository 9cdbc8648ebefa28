"""Natural gradient: dense and CG solves against an independently built Fisher, invariance, the KL step."""
import numpy as np
import pytest
from hypothesis import given, strategies as st

from refopt import autodiff as ad
from refopt import tree as T
from refopt.nn import MLP, Gaussian, SoftmaxCrossEntropy
from refopt.optim.natural_gradient import NaturalGradient
from refopt.optim.sgd import SGD
from refopt.oracle import Oracle


def softmax_problem(sizes=(3, 4, 3), batch=5, seed=0, reduction="mean"):
    g = np.random.default_rng(seed)
    model = MLP(list(sizes))
    params = model.init(seed + 1)
    X = g.standard_normal((batch, sizes[0]))
    y = g.integers(0, sizes[-1], batch)
    return model, params, Oracle(model, SoftmaxCrossEntropy(reduction), X, y)


def fisher_from_jacobian(model, loss, params, X):
    """F = scale Σ_i J_iᵀ F_out,i J_i from the dense network Jacobian (reverse mode, row by row)."""
    J = ad.jacobian(lambda p: model.apply(p, X), params)          # (B·C, n), rows in (i, c) order
    B, C = X.shape[0], model.sizes[-1]
    J = J.reshape(B, C, -1)
    Fout = loss.output_fisher(model.apply(params, X))
    return loss.scale(B) * np.einsum("bci,bcd,bdj->ij", J, Fout, J)


@given(seed=st.integers(0, 500), damping=st.sampled_from([1e-3, 1e-1]), reduction=st.sampled_from(["mean", "sum"]),
       batch=st.sampled_from([1, 5]))
def test_dense_step_is_the_damped_fisher_solve(seed, damping, reduction, batch):
    """Also for a batch of one, where F has rank C − 1 and only the damping makes the solve possible."""
    model, params, oracle = softmax_problem(batch=batch, seed=seed, reduction=reduction)
    F = fisher_from_jacobian(model, oracle.loss, params, oracle.X)
    g = T.ravel(oracle.grad(params))
    expected = np.linalg.solve(F + damping * np.eye(len(g)), g)
    opt = NaturalGradient(lr=0.5, damping=damping, solver="dense")
    new, state, info = opt.update(params, opt.init(params), oracle)
    assert np.allclose(T.ravel(T.sub(params, new)), 0.5 * expected, rtol=1e-9, atol=1e-12)
    assert info["natural_norm_sq"] == pytest.approx(g @ expected, rel=1e-9)
    assert state.step == 1 and info["solver"] == "dense"


def empirical_fisher(model, loss, params, X, y):
    """F = scale Σ_i ∇ℓ_i ∇ℓ_iᵀ from the Jacobian of the per-example losses ℓ_i(y_i) (reverse mode)."""
    J = ad.jacobian(lambda p: loss.per_example(model.apply(p, X), y), params)   # (B, n)
    return loss.scale(X.shape[0]) * J.T @ J


def test_empirical_and_one_sample_mc_steps_are_their_dense_solves():
    """fisher="empirical" solves with the data labels' outer products; fisher="mc" with one injected label
    set ŷ solves with the empirical Fisher at ŷ (an MC probe carries 1/√k, here 1)."""
    model, params, oracle = softmax_problem(seed=4)
    lam = 1e-2
    g = T.ravel(oracle.grad(params))
    labels = oracle.loss.sample(oracle.outputs(params), [6, 0], 1)
    for fisher, y, draws in (("empirical", oracle.y, None), ("mc", labels[0], labels)):
        F = empirical_fisher(model, oracle.loss, params, oracle.X, y)
        expected = np.linalg.solve(F + lam * np.eye(len(g)), g)
        opt = NaturalGradient(lr=1.0, damping=lam, fisher=fisher, solver="dense")
        new, _, _ = opt.update(params, opt.init(params), oracle, draws=draws)
        np.testing.assert_allclose(T.ravel(T.sub(params, new)), expected, rtol=1e-9, atol=1e-12)
    assert not np.array_equal(labels[0], oracle.y)   # the two cases really use different labels


def test_cg_agrees_with_the_dense_solve():
    model, params, oracle = softmax_problem(sizes=(4, 5, 3), batch=6, seed=3)
    dense = NaturalGradient(lr=1.0, damping=1e-2, solver="dense")
    cg = NaturalGradient(lr=1.0, damping=1e-2, solver="cg", cg_tol=1e-12, cg_maxiter=500)
    a, _, _ = dense.update(params, dense.init(params), oracle)
    b, _, info = cg.update(params, cg.init(params), oracle)
    assert info["cg_status"] == "converged"
    assert np.allclose(T.ravel(a), T.ravel(b), atol=1e-8)


def _linear_gaussian(X, Y, W, b):
    model = MLP([X.shape[1], Y.shape[1]])
    return model, [{"W": W, "b": b}], Oracle(model, Gaussian(variance=0.5), X, Y)


def test_step_is_invariant_to_an_affine_reparametrisation_of_the_inputs():
    """x' = x M + c with W' = M⁻¹ W, b' = b − c M⁻¹ W gives the same model; the natural-gradient step
    changes the predictions identically. Plain gradient descent does not (the test can fail)."""
    g = np.random.default_rng(5)
    X, Y = g.standard_normal((12, 3)), g.standard_normal((12, 2))
    W, b = g.standard_normal((3, 2)), g.standard_normal(2)
    M = g.standard_normal((3, 3)) + 2 * np.eye(3)
    c = g.standard_normal((1, 3))
    Xp = X @ M + c
    Wp = np.linalg.solve(M, W)
    bp = b - (c @ Wp)[0]
    _, p1, o1 = _linear_gaussian(X, Y, W, b)
    _, p2, o2 = _linear_gaussian(Xp, Y, Wp, bp)
    assert np.allclose(o1.outputs(p1), o2.outputs(p2), atol=1e-12)
    opt = NaturalGradient(lr=0.7, damping=1e-10, solver="dense")
    n1, _, _ = opt.update(p1, opt.init(p1), o1)
    n2, _, _ = opt.update(p2, opt.init(p2), o2)
    assert np.allclose(o1.outputs(n1), o2.outputs(n2), atol=1e-7)
    sgd = SGD(lr=0.7)
    s1, _, _ = sgd.update(p1, sgd.init(p1), o1)
    s2, _, _ = sgd.update(p2, sgd.init(p2), o2)
    assert not np.allclose(o1.outputs(s1), o2.outputs(s2), atol=1e-2)


@pytest.mark.parametrize("solver", ["dense", "cg"])
def test_kl_step_moves_epsilon_in_the_fisher_metric(solver):
    model, params, oracle = softmax_problem(seed=7)
    eps, lam = 2e-3, 1e-3
    opt = NaturalGradient(step_rule="kl", kl_epsilon=eps, damping=lam, solver=solver, cg_tol=1e-12, cg_maxiter=500)
    new, _, info = opt.update(params, opt.init(params), oracle)
    delta = T.ravel(T.sub(new, params))
    F = fisher_from_jacobian(model, oracle.loss, params, oracle.X)
    assert 0.5 * delta @ (F + lam * np.eye(len(delta))) @ delta == pytest.approx(eps, rel=1e-8)
    # Undamped metric: off by ½λ‖δ‖² only.
    assert 0.5 * delta @ F @ delta == pytest.approx(eps - 0.5 * lam * delta @ delta, rel=1e-8)
    assert info["kl_estimate"] == pytest.approx(eps, rel=1e-12)


def test_mc_fisher_seeded_draws_equal_injected_draws():
    model, params, oracle = softmax_problem(seed=8)
    opt = NaturalGradient(fisher="mc", samples=2, seed=3, damping=1e-2)
    state = opt.init(params)
    a, _, _ = opt.update(params, state, oracle)
    labels = oracle.loss.sample(oracle.outputs(params), opt.step_seed(state.step), 2)
    b, _, _ = opt.update(params, state, oracle, draws=labels)
    assert np.array_equal(T.ravel(a), T.ravel(b))
    c, _, _ = NaturalGradient(fisher="empirical", damping=1e-2).update(params, state, oracle)
    assert not np.allclose(T.ravel(a), T.ravel(c))


def test_natural_gradient_descends_quickly():
    model, params, oracle = softmax_problem(sizes=(3, 4, 3), batch=12, seed=9)
    first = oracle.value(params)
    finals = []
    for opt in (NaturalGradient(lr=0.5, damping=1e-2), SGD(lr=0.5)):
        p, state = params, opt.init(params)
        for _ in range(8):
            p, state, info = opt.update(p, state, oracle)
        finals.append(oracle.value(p))
    assert finals[0] < 0.1 * first and finals[0] < 0.2 * finals[1]


def test_zero_gradient_kl_step_is_no_step():
    model = MLP([2, 2])
    params = [{"W": np.zeros((2, 2)), "b": np.zeros(2)}]
    oracle = Oracle(model, Gaussian(), np.ones((3, 2)), np.zeros((3, 2)))
    opt = NaturalGradient(step_rule="kl")
    new, _, info = opt.update(params, opt.init(params), oracle)
    assert np.array_equal(T.ravel(new), T.ravel(params)) and "zero" in info["message"]


def test_non_finite_gradient_refuses_the_step():
    model, params, oracle = softmax_problem(seed=10)
    bad = T.copy(params)
    bad[0]["W"][0, 0] = np.nan
    opt = NaturalGradient()
    state = opt.init(bad)
    new, new_state, info = opt.update(bad, state, oracle)
    assert info["skipped"] and new is bad and new_state is state and "non-finite" in info["message"]


@pytest.mark.parametrize("kwargs", [dict(damping=0.0), dict(damping=-1.0), dict(lr=0.0), dict(kl_epsilon=0.0),
                                    dict(solver="lu"), dict(fisher="exact"), dict(step_rule="armijo"),
                                    dict(samples=0), dict(cg_maxiter=0)])
def test_bad_hyperparameters_raise(kwargs):
    name = next(iter(kwargs))
    with pytest.raises(ValueError, match=name):
        NaturalGradient(**kwargs)
