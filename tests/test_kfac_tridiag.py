"""Block-tridiagonal K-FAC against a dense construction of its Gaussian graphical model."""
import numpy as np
import pytest
from hypothesis import given, strategies as st

from refopt import tree as T
from refopt.curvature import kronecker as K
from refopt.curvature.tridiagonal import generalized_eigh, tridiagonal_blocks, tridiagonal_precondition
from refopt.optim.kfac import KFAC
from refopt.optim.kfac_tridiag import KFACTridiag

from _helpers import mlp_problem


def problem(sizes=(3, 4, 3, 2), batch=5, seed=0, X=None):
    _, params, oracle = mlp_problem(sizes, batch, seed, X=X)
    return params, oracle


def damped(a, g, damping, scheme):
    """(A + πγI, G + γ/π I), γ = √λ, π = sqrt((tr A/dim A) / (tr G/dim G)) ("pi"; "tikhonov": π = 1), M&G §6.3."""
    ta, tg = np.trace(a) / len(a), np.trace(g) / len(g)
    pi = np.sqrt(ta / tg) if scheme == "pi" and ta > 0 and tg > 0 else 1.0   # a zero-trace factor: π = 1
    gamma = np.sqrt(damping)
    return a + pi * gamma * np.eye(len(a)), g + gamma / pi * np.eye(len(g))


def all_factors(oracle, params):
    stats = K.kfac_statistics(oracle, params, "true")
    n = len(params)
    pr = stats.probes
    A = [K.input_factor(a) for a in stats.inputs]
    G = [K.grad_factor([p[l] for p in pr], stats.scale) for l in range(n)]
    Ax = [K.cross_input_factor(stats.inputs[l], stats.inputs[l + 1]) for l in range(n - 1)]
    Gx = [K.cross_grad_factor([p[l] for p in pr], [p[l + 1] for p in pr], stats.scale) for l in range(n - 1)]
    return A, G, Ax, Gx, stats


def dense_model(A, G, Ax, Gx, damping, scheme="pi"):
    """F̃'s damped diagonal blocks, its cross blocks, and the dense ΞᵀΛΞ built from them directly."""
    L = len(A)
    Fd = []
    for a, g in zip(A, G):
        Fd.append(np.kron(*damped(a, g, damping, scheme)))
    Fx = [np.kron(Ax[l], Gx[l]) for l in range(L - 1)]
    off = np.concatenate([[0], np.cumsum([f.shape[0] for f in Fd])])
    Xi, Lam = np.eye(off[-1]), np.zeros((off[-1], off[-1]))
    for l in range(L):
        sl = slice(off[l], off[l + 1])
        if l < L - 1:
            Psi = Fx[l] @ np.linalg.inv(Fd[l + 1])
            Xi[sl, off[l + 1]:off[l + 2]] = -Psi
            Sigma = Fd[l] - Psi @ Fx[l].T
        else:
            Sigma = Fd[l]
        Lam[sl, sl] = np.linalg.inv(Sigma)
    return Fd, Fx, off, Xi.T @ Lam @ Xi


def flat(mats):
    return np.concatenate([m.ravel() for m in mats])


@given(sizes=st.lists(st.integers(1, 4), min_size=2, max_size=4), batch=st.integers(1, 5),
       scheme=st.sampled_from(["pi", "tikhonov"]), damping=st.sampled_from([1e-3, 0.1]), seed=st.integers(0, 1000))
def test_matches_the_dense_construction_and_the_band_of_the_kronecker_fisher(sizes, batch, scheme, damping, seed):
    params, oracle = problem(sizes, batch, seed)
    A, G, Ax, Gx, stats = all_factors(oracle, params)
    Fd, Fx, off, Finv = dense_model(A, G, Ax, Gx, damping, scheme)
    V = [K.layer_matrix(g) for g in stats.grad]
    x = tridiagonal_precondition(V, tridiagonal_blocks(A, G, Ax, Gx, damping, scheme))
    expected = Finv @ flat(V)
    assert np.allclose(flat(x), expected, rtol=1e-9, atol=1e-9 * np.abs(expected).max())
    # The Gaussian graphical model reproduces F̃ on the tridiagonal band.
    Fhat = np.linalg.inv(Finv)
    for l in range(len(A)):
        tol = 1e-11 * np.abs(Fd[l]).max()
        assert np.allclose(Fhat[off[l]:off[l + 1], off[l]:off[l + 1]], Fd[l], rtol=1e-9, atol=tol)
        if l < len(A) - 1:
            assert np.allclose(Fhat[off[l]:off[l + 1], off[l + 1]:off[l + 2]], Fx[l], rtol=1e-9, atol=tol)


def test_zero_cross_factors_reduce_to_block_diagonal_kfac():
    params, oracle = problem(seed=2)
    lam = 0.05
    tri = KFACTridiag(lr=1.0, momentum=0.0, decay=0.0, kl_clip=None, inverse_interval=1, fisher="true", damping=lam)
    state = tri.init(params)
    A, G, Ax, Gx, stats = all_factors(oracle, params)
    V = [K.layer_matrix(g) for g in stats.grad]
    x = tridiagonal_precondition(V, tridiagonal_blocks(A, G, [0 * a for a in Ax], [0 * g for g in Gx], lam))
    kfac = KFAC(lr=1.0, momentum=0.0, decay=0.0, kl_clip=None, inverse_interval=1, fisher="true", damping=lam)
    new = kfac.update(params, kfac.init(params), oracle)[0]
    assert np.allclose(flat(x), T.ravel(T.sub(params, new)), rtol=1e-9, atol=1e-13)
    # ... and with the real cross factors the step differs.
    new_tri = tri.update(params, state, oracle)[0]
    assert not np.allclose(T.ravel(new_tri), T.ravel(new), atol=1e-6)


def test_two_layers_single_example_inverts_the_fisher_with_damped_diagonal_blocks():
    """L = 2: the band is the whole matrix, and with B = 1 every Kronecker block is exact, so F̂⁻¹ is the
    inverse of the true Fisher whose diagonal blocks carry the factored damping."""
    params, oracle = problem((3, 4, 2), batch=1, seed=3)
    lam = 1e-2
    opt = KFACTridiag(lr=1.0, momentum=0.0, decay=0.0, kl_clip=None, inverse_interval=1, fisher="true", damping=lam)
    new, state, info = opt.update(params, opt.init(params), oracle)
    F = oracle.dense_fisher(params, "true")
    A, G, _, _, stats = all_factors(oracle, params)
    off = np.concatenate([[0], np.cumsum([T.size(p) for p in params])])
    for l in range(2):
        sl = slice(off[l], off[l + 1])
        F[sl, sl] = np.kron(*damped(A[l], G[l], lam, "pi"))
    expected = np.linalg.solve(F, T.ravel(stats.grad))
    assert np.allclose(T.ravel(T.sub(params, new)), expected, rtol=1e-9, atol=1e-12 * np.abs(expected).max())


def test_generalized_eigh(rng):
    a, c = rng.standard_normal((6, 4)), rng.standard_normal((3, 4))
    A, C = a.T @ a + np.eye(4), c.T @ c
    s, Kmat = generalized_eigh(C, A)
    assert np.allclose(Kmat.T @ A @ Kmat, np.eye(4), atol=1e-12)
    assert np.allclose(Kmat.T @ C @ Kmat, np.diag(s), atol=1e-12)


def test_conditional_covariances_stay_positive_definite_with_zero_inputs_and_one_example():
    params, oracle = problem((3, 3, 2), batch=1, seed=4, X=np.zeros((1, 3)))
    A, G, Ax, Gx, _ = all_factors(oracle, params)
    for b in tridiagonal_blocks(A, G, Ax, Gx, 1e-4):
        assert np.all(b.denom > 0)
    opt = KFACTridiag(fisher="true")
    new, _, info = opt.update(params, opt.init(params), oracle)
    assert not info["skipped"] and T.all_finite(new)
    assert np.array_equal(new[0]["W"], params[0]["W"])


def test_training_runs_with_the_default_switches():
    params, oracle = problem((4, 6, 5, 3), batch=16, seed=5)
    opt = KFACTridiag(lr=0.3, damping=1e-2, kl_clip=1e-2)
    state = opt.init(params)
    first = oracle.value(params)
    for _ in range(20):
        params, state, info = opt.update(params, state, oracle)
    assert oracle.value(params) < 0.5 * first
    assert set(state.factors) == {"A", "G", "A_cross", "G_cross"}


@pytest.mark.parametrize("kwargs", [dict(damping=0.0), dict(decay=1.0), dict(decay=-0.2),
                                    dict(damping_scheme="eigen"), dict(lr=-1.0)])
def test_bad_hyperparameters_raise(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        KFACTridiag(**kwargs)
