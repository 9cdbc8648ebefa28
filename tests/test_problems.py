"""Test problems: hand-written derivatives against HIPS autograd of the same formula, known minima and values."""
import autograd
import autograd.numpy as anp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from refopt.oracle import FunctionOracle
from refopt.problems.functions import (PROBLEMS, beale, dixon_price, extended_rosenbrock, make_problem, powell_singular,
                                       quadratic, rosenbrock, trid, wood)

SIZED = {"quadratic": 2, "rosenbrock": 2, "extended_rosenbrock": 2, "powell_singular": 4, "trid": 2, "dixon_price": 2}


def build(name, k=1):
    """The problem ``name`` at its k-th admissible size."""
    if name in SIZED:
        step = 4 if name == "powell_singular" else 2
        return make_problem(name, n=SIZED[name] + step * k)
    return make_problem(name)


def _autograd(problem, x):
    f = lambda z: problem.value(z, anp)  # noqa: E731
    return autograd.grad(f)(x), autograd.hessian(f)(x)


@pytest.mark.parametrize("name", sorted(PROBLEMS))
@given(k=st.integers(0, 3), seed=st.integers(0, 2 ** 16), spread=st.sampled_from([0.1, 1.0]))
def test_derivatives_match_autograd(name, k, seed, spread):
    p = build(name, k)
    rng = np.random.default_rng(seed)
    x = np.asarray(p.x0) + spread * rng.standard_normal(p.n)
    v = rng.standard_normal(p.n)
    g_ref, H_ref = _autograd(p, x)
    scale_g = max(1.0, np.abs(g_ref).max())
    scale_H = max(1.0, np.abs(H_ref).max())
    np.testing.assert_allclose(p.grad(x), g_ref, rtol=0, atol=1e-12 * scale_g)
    np.testing.assert_allclose(p.hess(x), H_ref, rtol=0, atol=1e-12 * scale_H)
    np.testing.assert_allclose(p.hvp(x, v), H_ref @ v, rtol=0, atol=1e-11 * scale_H * np.abs(v).sum())
    assert p.f(x) == pytest.approx(float(p.value(x, anp)), rel=1e-15)


@pytest.mark.parametrize("name", sorted(PROBLEMS))
@pytest.mark.parametrize("k", [0, 2])
def test_known_minimum(name, k):
    p = build(name, k)
    x = np.asarray(p.x_star)
    assert p.f(x) == pytest.approx(p.f_star, abs=1e-12 * max(1.0, abs(p.f_star)))
    np.testing.assert_allclose(p.grad(x), 0.0, atol=1e-10 * max(1.0, abs(p.f_star)))
    lam = np.linalg.eigvalsh(p.hess(x))
    assert lam.min() >= -1e-10 * max(1.0, lam.max())        # a minimum: positive semi-definite Hessian
    assert p.f(p.x0) > p.f_star                              # the start is not the answer


def test_classical_values():
    """Values from Moré, Garbow & Hillstrom (1981) and the defining formulas."""
    assert rosenbrock().f(np.array([-1.2, 1.0])) == pytest.approx(24.2, rel=1e-14)
    assert extended_rosenbrock(10).f(extended_rosenbrock(10).x0) == pytest.approx(5 * 24.2, rel=1e-14)
    assert powell_singular().f(powell_singular().x0) == pytest.approx(215.0, rel=1e-14)
    assert powell_singular(12).f(powell_singular(12).x0) == pytest.approx(3 * 215.0, rel=1e-14)
    assert wood().f(wood().x0) == pytest.approx(19192.0, rel=1e-14)
    assert beale().f(beale().x0) == pytest.approx(14.203125, rel=1e-14)
    assert dixon_price(3).f(np.array([1.0, 1.0, 1.0])) == pytest.approx(0 + 2 * 1 + 3 * 1, rel=1e-14)
    # Trid: x*_i = i(n + 1 − i), f* = −n(n + 4)(n − 1)/6 (Jamil & Yang 2013); check against a solve.
    for n in (2, 6, 10):
        p = trid(n)
        x = np.linalg.solve(p.hess(p.x0), -p.grad(np.zeros(n)))
        np.testing.assert_allclose(x, p.x_star, rtol=1e-12)
        assert p.f(x) == pytest.approx(-n * (n + 4) * (n - 1) / 6, rel=1e-12)
    # Rosenbrock's Hessian at the minimum (classical): [[802, −400], [−400, 200]].
    np.testing.assert_allclose(rosenbrock().hess(np.ones(2)), [[802.0, -400.0], [-400.0, 200.0]])
    # Powell's singular function has a singular Hessian at x* = 0.
    assert np.linalg.matrix_rank(powell_singular().hess(np.zeros(4))) == 2


@given(n=st.integers(2, 12), log_cond=st.floats(0.0, 6.0), seed=st.integers(0, 100))
def test_quadratic_condition_number_and_minimum(n, log_cond, seed):
    p = quadratic(n, 10.0 ** log_cond, seed)
    A, b = p.params["A"], p.params["b"]
    lam = np.linalg.eigvalsh(A)
    assert lam.max() / lam.min() == pytest.approx(10.0 ** log_cond, rel=1e-6)
    np.testing.assert_allclose(A @ p.x_star, b, rtol=1e-10, atol=1e-10 * np.abs(b).max())
    assert p.f_star == pytest.approx(-0.5 * b @ np.linalg.solve(A, b), rel=1e-8)
    assert quadratic(n, 10.0 ** log_cond, seed).f(p.x_star) == p.f(p.x_star)  # seeded: reproducible


def test_oracle_uses_analytic_derivatives_and_counts():
    p = wood()
    o = p.oracle()
    assert isinstance(o, FunctionOracle)
    f, g = o.value_and_grad(p.x0)
    assert f == p.f(p.x0)
    np.testing.assert_array_equal(g, p.grad(p.x0))
    np.testing.assert_array_equal(o.hvp(p.x0, np.ones(4)), p.hess(p.x0) @ np.ones(4))
    np.testing.assert_array_equal(o.dense_hessian(p.x0), p.hess(p.x0))
    assert (o.counts.nfev, o.counts.ngev, o.counts.nhvp) == (1, 1, 1)


def test_bad_sizes_and_names():
    with pytest.raises(ValueError, match="multiple of 4"):
        powell_singular(6)
    with pytest.raises(ValueError, match="multiple of 2"):
        extended_rosenbrock(5)
    with pytest.raises(ValueError, match="n must be"):
        rosenbrock(1)
    with pytest.raises(ValueError, match="condition"):
        quadratic(3, 0.5)
    with pytest.raises(ValueError, match="unknown problem"):
        make_problem("himmelblau")
    p = extended_rosenbrock(20)
    with pytest.raises(ValueError, match="hvp"):
        p.hess(p.x0, max_size=10)
