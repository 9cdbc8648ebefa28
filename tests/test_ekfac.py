"""EKFAC: the re-estimated diagonal is the Fisher's diagonal in the Kronecker eigenbasis."""
import pickle

import numpy as np
import pytest
from hypothesis import given, strategies as st

from refopt import tree as T
from refopt.curvature import kronecker as K
from refopt.curvature.eigenbasis import eigenbasis_scaling
from refopt.optim.ekfac import EKFAC
from refopt.optim.kfac import KFAC

from _helpers import mlp_problem


def problem(sizes=(3, 4, 3), batch=5, seed=0, loss="softmax"):
    _, params, oracle = mlp_problem(sizes, batch, seed, loss)
    return params, oracle


def offsets(params):
    return np.concatenate([[0], np.cumsum([T.size(p) for p in params])])


def plain(**kw):
    base = dict(lr=1.0, momentum=0.0, decay=0.0, kl_clip=None, inverse_interval=1, fisher="true")
    base.update(kw)
    return EKFAC(**base)


@given(sizes=st.lists(st.integers(1, 4), min_size=2, max_size=3), batch=st.integers(1, 5),
       loss=st.sampled_from(["softmax", "gaussian"]), seed=st.integers(0, 1000))
def test_scaling_is_the_fisher_diagonal_in_the_eigenbasis_and_the_step_its_dense_solve(sizes, batch, loss, seed):
    params, oracle = problem(sizes, batch, seed, loss)
    damping = 1e-2
    opt = plain(damping=damping)
    new, state, _ = opt.update(params, opt.init(params), oracle)
    F = oracle.dense_fisher(params, "true")
    off = offsets(params)
    g = T.ravel(oracle.grad(params))
    expected = []
    for l, ec in enumerate(state.preconditioner):
        Fl = F[off[l]:off[l + 1], off[l]:off[l + 1]]
        Q = np.kron(ec.QA, ec.QG)
        assert np.allclose(ec.s.ravel(), np.diag(Q.T @ Fl @ Q), atol=1e-12, rtol=1e-9)
        M = Q @ np.diag(ec.s.ravel() + damping) @ Q.T
        expected.append(np.linalg.solve(M, g[off[l]:off[l + 1]]))
    assert np.allclose(T.ravel(T.sub(params, new)), np.concatenate(expected), rtol=1e-8, atol=1e-12)


def test_eigenvalue_correction_is_closer_to_the_fisher_than_kfac():
    params, oracle = problem((3, 5, 3), batch=8, seed=3)
    opt = plain()
    _, state, _ = opt.update(params, opt.init(params), oracle)
    F = oracle.dense_fisher(params, "true")
    off = offsets(params)
    for l, (ec, A, G) in enumerate(zip(state.preconditioner, *(state.factors[k] for k in ("A", "G")))):
        Fl = F[off[l]:off[l + 1], off[l]:off[l + 1]]
        Q = np.kron(ec.QA, ec.QG)
        ekfac_err = np.linalg.norm(Fl - Q @ np.diag(ec.s.ravel()) @ Q.T)
        kfac_err = np.linalg.norm(Fl - np.kron(A, G))
        assert ekfac_err < kfac_err


def test_single_example_ekfac_equals_kfac_with_eigen_damping():
    """B = 1: F_ll = A ⊗ G exactly, so its diagonal in the Kronecker eigenbasis is Λ_A ⊗ Λ_G."""
    params, oracle = problem((3, 4, 2), batch=1, seed=4)
    a = plain(damping=1e-3).update(params, plain().init(params), oracle)[0]
    kfac = KFAC(lr=1.0, momentum=0.0, decay=0.0, kl_clip=None, inverse_interval=1, fisher="true",
                damping_scheme="eigen", inverse="eig", damping=1e-3)
    b = kfac.update(params, kfac.init(params), oracle)[0]
    assert np.allclose(T.ravel(a), T.ravel(b), rtol=1e-8, atol=1e-12)


def test_scaling_running_average_restarts_at_each_basis_refresh():
    params, oracle = problem(seed=5)
    opt = EKFAC(inverse_interval=3, decay=0.5, scale_decay=0.6, seed=2)
    state = opt.init(params)
    counts = []
    for t in range(7):
        old = state
        params, state, info = opt.update(params, state, oracle)
        counts.append(state.preconditioner[0].count)
        if t % 3:
            assert np.array_equal(state.preconditioner[0].QA, old.preconditioner[0].QA)
    assert counts == [1, 2, 3, 1, 2, 3, 1]
    # Running average with ε_k = min(1 − 1/k, 0.6) in the fixed basis between refreshes.
    opt = EKFAC(inverse_interval=100, scale_decay=0.6, fisher="true")
    state = opt.init(params)
    params, state, _ = opt.update(params, state, oracle)
    s1 = state.preconditioner[0].s
    stats = K.kfac_statistics(oracle, params, "true")
    ec = state.preconditioner[0]
    s_hat = eigenbasis_scaling(stats.inputs[0], [p[0] for p in stats.probes], ec.QA, ec.QG, stats.scale)
    _, state, _ = opt.update(params, state, oracle)
    assert np.allclose(state.preconditioner[0].s, 0.5 * s1 + 0.5 * s_hat, atol=1e-14)


def test_non_finite_statistics_keep_the_old_scaling():
    params, oracle = problem(seed=6, loss="gaussian")
    opt = EKFAC()
    state = opt.init(params)
    params, state, _ = opt.update(params, state, oracle)
    nan_labels = np.full((1,) + oracle.y.shape, np.nan)
    kept = pickle.dumps((state.factors, state.factor_updates, state.preconditioner))
    new, new_state, info = opt.update(params, state, oracle, draws=nan_labels)
    assert "old factors kept" in info["message"] and not info["skipped"] and T.all_finite(new)
    # Neither the factors nor ŝ (nor its count) take the non-finite estimate.
    assert pickle.dumps((new_state.factors, new_state.factor_updates, new_state.preconditioner)) == kept
    assert not np.allclose(T.ravel(new), T.ravel(params))


@pytest.mark.parametrize("kwargs", [dict(damping=0.0), dict(damping=-1e-3), dict(decay=1.0), dict(decay=-0.1),
                                    dict(scale_decay=1.0), dict(scale_decay=-0.5),
                                    dict(inverse_interval=0)])
def test_bad_hyperparameters_raise(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        EKFAC(**kwargs)
