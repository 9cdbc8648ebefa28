"""Conjugate gradient, symmetric matrix powers and damped solves against dense linear algebra."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from refopt import tree as T
from refopt.linalg import cg, damped_solve, shifted_symmetric, sym_matrix_power, symmetrize

seeds = st.integers(0, 2 ** 31)


def spd(n, gen, cond=10.0):
    Q, _ = np.linalg.qr(gen.standard_normal((n, n)))
    lam = np.geomspace(1.0, cond, n)
    return (Q * lam) @ Q.T, Q, lam


@given(n=st.integers(1, 12), seed=seeds, damping=st.sampled_from([0.0, 0.1, 2.0]))
def test_cg_solves_spd_systems(n, seed, damping):
    gen = np.random.default_rng(seed)
    A, _, _ = spd(n, gen)
    b = gen.standard_normal(n)
    res = cg(lambda v: A @ v, b, damping=damping, tol=1e-12)
    assert res.status == "converged" and res.iterations <= n + 1
    np.testing.assert_allclose(res.x, np.linalg.solve(A + damping * np.eye(n), b), rtol=1e-8, atol=1e-10)
    assert res.residual_norm <= 1e-12 * np.linalg.norm(b) * 1.0001


def test_cg_on_trees_and_with_a_warm_start():
    gen = np.random.default_rng(0)
    A, _, _ = spd(5, gen)
    like = [{"W": np.zeros((2, 2)), "b": np.zeros(1)}]
    b = T.unravel(gen.standard_normal(5), like)

    def mv(v):
        return T.unravel(A @ T.ravel(v), like)

    res = cg(mv, b, tol=1e-12)
    assert T.same_structure(res.x, like)
    np.testing.assert_allclose(T.ravel(res.x), np.linalg.solve(A, T.ravel(b)), rtol=1e-9)
    warm = cg(mv, b, x0=res.x, tol=1e-8)
    assert warm.status == "converged" and warm.iterations == 0


def test_cg_reports_negative_curvature_and_iteration_limits():
    A = np.diag([1.0, -1.0, 2.0])
    b = np.array([0.0, 1.0, 0.0])
    res = cg(lambda v: A @ v, b)
    assert res.status == "negative_curvature" and res.iterations == 0
    np.testing.assert_array_equal(res.x, np.zeros(3))
    # damping can make it positive definite
    assert cg(lambda v: A @ v, b, damping=1.5).status == "converged"
    gen = np.random.default_rng(1)
    A, _, _ = spd(8, gen, cond=1e4)
    res = cg(lambda v: A @ v, gen.standard_normal(8), maxiter=2)
    assert res.status == "max_iterations" and res.iterations == 2
    res = cg(lambda v: A @ v, np.ones(8), atol=1e30)
    assert res.status == "converged" and res.iterations == 0
    with pytest.raises(ValueError, match="damping"):
        cg(lambda v: v, np.ones(2), damping=-1.0)


@pytest.mark.parametrize("p", [-1.0, -0.5, -0.25, 0.5, 1.0 / 3.0])
@pytest.mark.parametrize("eps_mode", ["add", "floor"])
def test_sym_matrix_power_closed_forms(p, eps_mode):
    gen = np.random.default_rng(2)
    Q, _ = np.linalg.qr(gen.standard_normal((4, 4)))
    lam = np.array([1e-6, 0.1, 1.0, 5.0])
    A = (Q * lam) @ Q.T
    eps = 1e-2
    mod = lam + eps if eps_mode == "add" else np.maximum(lam, eps)
    np.testing.assert_allclose(sym_matrix_power(A, p, eps, eps_mode), (Q * mod ** p) @ Q.T, rtol=1e-8, atol=1e-10)
    # the two modes really differ (on the eigenvalue below eps) and agree with a dense check
    other = "floor" if eps_mode == "add" else "add"
    assert not np.allclose(sym_matrix_power(A, p, eps, eps_mode), sym_matrix_power(A, p, eps, other))
    if p == -1.0:
        np.testing.assert_allclose(sym_matrix_power(A, -1.0, eps, "add"), np.linalg.inv(A + eps * np.eye(4)),
                                   rtol=1e-8)


def test_sym_matrix_power_symmetrises_and_checks_its_input():
    B = np.array([[2.0, 1.0], [0.0, 2.0]])  # not symmetric: its symmetric part is used
    np.testing.assert_allclose(sym_matrix_power(B, 1.0), symmetrize(B), rtol=1e-12)
    root = sym_matrix_power(np.diag([4.0, 9.0]), 0.5)
    np.testing.assert_allclose(root, np.diag([2.0, 3.0]), rtol=1e-12)
    with pytest.raises(ValueError, match="eps > 0"):
        sym_matrix_power(np.diag([1.0, 0.0]), -0.5)
    with pytest.raises(ValueError, match="eps_mode"):
        sym_matrix_power(np.eye(2), 0.5, eps_mode="clip")
    with pytest.raises(ValueError, match="A: expected a square matrix"):
        sym_matrix_power(np.ones((2, 3)), 0.5)
    with pytest.raises(ValueError, match="eps"):
        sym_matrix_power(np.eye(2), 0.5, eps=-1.0)


def test_damped_solve():
    gen = np.random.default_rng(3)
    A, _, _ = spd(4, gen)
    b = gen.standard_normal(4)
    np.testing.assert_allclose(damped_solve(A, b, 0.5), np.linalg.solve(A + 0.5 * np.eye(4), b), rtol=1e-10)
    B = gen.standard_normal((4, 2))
    np.testing.assert_allclose(damped_solve(A, B), np.linalg.solve(A, B), rtol=1e-10)
    with pytest.raises(ValueError, match="not positive definite"):
        damped_solve(np.diag([1.0, -1.0]), np.ones(2))
    with pytest.raises(ValueError, match="damping"):
        damped_solve(A, b, -1.0)
    with pytest.raises(ValueError, match="b: expected 4 rows"):
        damped_solve(A, np.ones(3))
    with pytest.raises(ValueError, match="A: expected a square"):
        damped_solve(np.ones((2, 3)), np.ones(2))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_symmetrize_and_shifted_symmetric_round_as_the_formulas(dtype):
    """½(A + Aᵀ) and ½(A + Aᵀ) + sI in fresh arrays equal the textbook expressions bit for bit, and A is kept."""
    A = np.random.default_rng(3).standard_normal((5, 5)).astype(dtype)
    before = A.copy()
    S = symmetrize(A)
    assert np.array_equal(S, 0.5 * (A + A.T)) and S.dtype == dtype and np.array_equal(S, S.T)
    D = shifted_symmetric(A, 0.3)
    assert np.array_equal(D, 0.5 * (A + A.T) + 0.3 * np.eye(5, dtype=dtype)) and D.dtype == dtype
    assert np.array_equal(A, before) and D is not S
