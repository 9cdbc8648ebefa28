"""Classical unconstrained test problems with analytic gradients, Hessians and Hessian-vector products.

Each factory returns a ``Problem``: the value, gradient, dense Hessian and Hessian-vector product
written out by hand, a standard starting point ``x0`` and the known minimiser ``x_star`` and minimum
``f_star``; ``problem.oracle()`` wraps it as a ``FunctionOracle`` for the optimizers and ``minimize``.
The value is written once, generically over an array module (``value(x, np)``), so tests can
differentiate exactly the same formula with an independent autodiff (HIPS autograd) and compare
with the hand-written derivatives.

+----------------------+-----------+------------------------------+------------------------------+--------+
| problem              | n         | x0                           | x* (f*)                      | source |
+======================+===========+==============================+==============================+========+
| quadratic            | any       | 0                            | A⁻¹b (−½ bᵀA⁻¹b)             | —      |
| rosenbrock (chained) | ≥ 2       | (−1.2, 1, −1.2, 1, …)        | 1 (0)                        | [R60]  |
| extended_rosenbrock  | even      | (−1.2, 1, −1.2, 1, …)        | 1 (0)                        | MGH 21 |
| beale                | 2         | (1, 1)                       | (3, 0.5) (0)                 | MGH 5  |
| powell_singular      | ×4        | (3, −1, 0, 1, …)             | 0 (0), singular Hessian at x*| MGH 13/22 |
| wood                 | 4         | (−3, −1, −3, −1)             | 1 (0)                        | MGH 14 |
| trid                 | any       | 0                            | i(n+1−i) (−n(n+4)(n−1)/6)    | [JY13] |
| dixon_price          | any       | 1                            | 2^{−(2^i−2)/2^i} (0)         | [JY13] |
+----------------------+-----------+------------------------------+------------------------------+--------+
MGH: Moré, Garbow & Hillstrom, "Testing unconstrained optimization software", ACM TOMS 7 (1981).
[R60] Rosenbrock, Computer Journal 3 (1960); the chained n-dimensional form is scipy's ``rosen``.
[JY13] Jamil & Yang, "A literature survey of benchmark functions for global optimisation" (2013).
Indices i in the table are 1-based. The quadratic is f = ½ xᵀAx − bᵀx with A = Q diag(λ) Qᵀ,
λ log-spaced from 1 to ``condition`` and Q a seeded random orthogonal matrix.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from ..backend import as_array, default_dtype, rng, xp
from ..curvature.dense import check_dense_size
from ..linalg import symmetrize
from ..oracle import FunctionOracle

__all__ = ["Problem", "quadratic", "rosenbrock", "extended_rosenbrock", "beale", "powell_singular", "wood",
           "trid", "dixon_price", "PROBLEMS", "FUNCTIONS", "make_problem"]


@dataclass(frozen=True)
class Problem:
    """A test function with its derivatives, start point and known minimum (see the module docs)."""

    name: str
    n: int
    value: Callable[..., Any]          # value(x, np=xp): the formula, over any NumPy-like module
    gradient: Callable[[Any], Any]
    hessian_fn: Callable[[Any], Any]
    hessp: Callable[[Any, Any], Any]
    x0: Any
    x_star: Any
    f_star: float
    notes: str = ""
    params: dict = field(default_factory=dict)

    def f(self, x) -> float:
        """f(x) as a float, from the formula ``value`` on the active backend."""
        return float(self.value(x, xp))

    def grad(self, x):
        """The analytic gradient ∇f(x)."""
        return self.gradient(x)

    def hess(self, x, max_size: Optional[int] = None):
        """The analytic dense Hessian ∇²f(x); ValueError when n exceeds ``max_size``."""
        check_dense_size(self.n, max_size, f"{self.name} dense Hessian", "hvp (Hessian-vector products)")
        return self.hessian_fn(x)

    def hvp(self, x, v):
        """The analytic Hessian-vector product ∇²f(x) v."""
        return self.hessp(x, v)

    def oracle(self) -> FunctionOracle:
        """A fresh ``FunctionOracle`` (with its own counts) using the analytic derivatives."""
        return FunctionOracle(self.f, grad=self.gradient, hess=self.hess, hvp=self.hessp)

    def __repr__(self):
        return f"Problem({self.name!r}, n={self.n})"


def _vec(values):
    return as_array(values)


def _check_n(name, n, minimum=1, multiple=1):
    if not isinstance(n, int) or n < minimum or n % multiple:
        extra = f" and a multiple of {multiple}" if multiple > 1 else ""
        raise ValueError(f"{name}: n must be an integer ≥ {minimum}{extra}, got {n!r}")


def _tridiagonal(diag_and_off):
    """(hessian, hessp) for a tridiagonal Hessian given by ``diag_and_off(x) -> (d, off)``, its diagonal d
    and its off-diagonal off[i] = H[i, i+1] = H[i+1, i]."""

    def hessian(x):
        d, off = diag_and_off(x)
        return xp.diag(d) + xp.diag(off, 1) + xp.diag(off, -1)

    def hessp(x, v):
        d, off = diag_and_off(x)
        out = d * v
        out[:-1] += off * v[1:]
        out[1:] += off * v[:-1]
        return out

    return hessian, hessp


# --- quadratic --------------------------------------------------------------------------------
def quadratic(n: int = 10, condition: float = 100.0, seed: int = 0) -> Problem:
    """f = ½ xᵀAx − bᵀx, A SPD with eigenvalues log-spaced in [1, condition]; x* drawn N(0, I)."""
    _check_n("quadratic", n)
    if not condition >= 1:
        raise ValueError(f"quadratic: condition must be ≥ 1, got {condition!r}")
    g = rng(seed)
    # host draws are float64: cast to the default dtype, or a float32 run would get a float64 problem
    Q, _ = xp.linalg.qr(as_array(g.standard_normal((n, n)), default_dtype()))
    lam = float(condition) ** (xp.arange(n, dtype=Q.dtype) / max(n - 1, 1))
    A = symmetrize((Q * lam) @ Q.T)
    x_star = as_array(g.standard_normal(n), default_dtype())
    b = A @ x_star

    def value(x, np=xp):
        return 0.5 * np.dot(x, np.dot(A, x)) - np.dot(b, x)

    return Problem("quadratic", n, value, lambda x: A @ x - b, lambda x: A.copy(), lambda x, v: A @ v,
                   xp.zeros(n, dtype=A.dtype), x_star, float(-0.5 * (b @ x_star)),
                   notes=f"condition number {condition:g}", params={"A": A, "b": b, "condition": condition})


# --- Rosenbrock -------------------------------------------------------------------------------
def rosenbrock(n: int = 2) -> Problem:
    """Chained Rosenbrock Σ_{i<n} 100 (x_{i+1} − x_i²)² + (1 − x_i)² (n = 2: the classical banana)."""
    _check_n("rosenbrock", n, minimum=2)

    def value(x, np=xp):
        a, b = x[:-1], x[1:]
        return np.sum(100.0 * (b - a * a) ** 2 + (1.0 - a) ** 2)

    def gradient(x):
        a, b = x[:-1], x[1:]
        t = b - a * a
        g = xp.zeros_like(x)
        g[:-1] += -400.0 * a * t - 2.0 * (1.0 - a)
        g[1:] += 200.0 * t
        return g

    def diag_and_off(x):
        a, b = x[:-1], x[1:]
        d = xp.zeros_like(x)
        d[:-1] += 1200.0 * a * a - 400.0 * b + 2.0
        d[1:] += 200.0
        return d, -400.0 * a  # off[i] = H[i, i+1]

    hessian, hessp = _tridiagonal(diag_and_off)

    x0 = xp.ones(n, dtype=as_array(0.0).dtype)
    x0[0::2] = -1.2
    return Problem("rosenbrock", n, value, gradient, hessian, hessp, x0, xp.ones_like(x0), 0.0,
                   notes="for n ≥ 4 there is also a local minimum near (−1, 1, …, 1) (Shang & Qiu 2006)")


def extended_rosenbrock(n: int = 100) -> Problem:
    """Σ_{pairs} 100 (x_{2i} − x_{2i−1}²)² + (1 − x_{2i−1})²: n/2 independent 2-D Rosenbrocks (MGH 21)."""
    _check_n("extended_rosenbrock", n, minimum=2, multiple=2)

    def value(x, np=xp):
        u, w = x[0::2], x[1::2]
        return np.sum(100.0 * (w - u * u) ** 2 + (1.0 - u) ** 2)

    def gradient(x):
        u, w = x[0::2], x[1::2]
        t = w - u * u
        g = xp.empty_like(x)
        g[0::2] = -400.0 * u * t - 2.0 * (1.0 - u)
        g[1::2] = 200.0 * t
        return g

    def blocks(x):
        u, w = x[0::2], x[1::2]
        return 1200.0 * u * u - 400.0 * w + 2.0, -400.0 * u  # H_uu, H_uw (H_ww = 200)

    def hessian(x):
        huu, huw = blocks(x)
        H = xp.zeros((n, n), dtype=x.dtype)
        i = xp.arange(0, n, 2)
        H[i, i] = huu
        H[i + 1, i + 1] = 200.0
        H[i, i + 1] = huw
        H[i + 1, i] = huw
        return H

    def hessp(x, v):
        huu, huw = blocks(x)
        vu, vw = v[0::2], v[1::2]
        out = xp.empty_like(v)
        out[0::2] = huu * vu + huw * vw
        out[1::2] = huw * vu + 200.0 * vw
        return out

    x0 = xp.ones(n, dtype=as_array(0.0).dtype)
    x0[0::2] = -1.2
    return Problem("extended_rosenbrock", n, value, gradient, hessian, hessp, x0, xp.ones_like(x0), 0.0)


# --- Beale ------------------------------------------------------------------------------------
_BEALE_C = (1.5, 2.25, 2.625)


def beale() -> Problem:
    """Σ_{i=1..3} (c_i − x + x yⁱ)², c = (1.5, 2.25, 2.625) (MGH 5)."""

    def value(z, np=xp):
        x, y = z[0], z[1]
        return sum((c - x + x * y ** i) ** 2 for i, c in enumerate(_BEALE_C, start=1))

    def parts(z):
        x, y = float(z[0]), float(z[1])
        yp = (1.0, y, y * y, y * y * y)  # products, not y ** i: a float ** int overflow raises, a product gives inf
        out = []
        for i, c in enumerate(_BEALE_C, start=1):
            t = c - x + x * yp[i]
            dt = (yp[i] - 1.0, i * x * yp[i - 1])                       # ∇t_i
            d2t = ((0.0, i * yp[i - 1]), (i * yp[i - 1], i * (i - 1) * x * yp[i - 2] if i > 1 else 0.0))
            out.append((t, dt, d2t))
        return out

    def gradient(z):
        g = [0.0, 0.0]
        for t, dt, _ in parts(z):
            g[0] += 2.0 * t * dt[0]
            g[1] += 2.0 * t * dt[1]
        return _vec(g)

    def hessian(z):
        H = [[0.0, 0.0], [0.0, 0.0]]
        for t, dt, d2t in parts(z):
            for a in range(2):
                for b in range(2):
                    H[a][b] += 2.0 * (dt[a] * dt[b] + t * d2t[a][b])
        return _vec(H)

    return Problem("beale", 2, value, gradient, hessian, lambda z, v: hessian(z) @ v,
                   _vec([1.0, 1.0]), _vec([3.0, 0.5]), 0.0)


# --- Powell singular --------------------------------------------------------------------------
def powell_singular(n: int = 4) -> Problem:
    """Per block of 4: (x₁ + 10x₂)² + 5(x₃ − x₄)² + (x₂ − 2x₃)⁴ + 10(x₁ − x₄)⁴ (MGH 13; extended: MGH 22).

    The Hessian is singular at x* = 0, so Newton's method converges only linearly there.
    """
    _check_n("powell_singular", n, minimum=4, multiple=4)

    def value(x, np=xp):
        x1, x2, x3, x4 = x[0::4], x[1::4], x[2::4], x[3::4]
        return np.sum((x1 + 10.0 * x2) ** 2 + 5.0 * (x3 - x4) ** 2 + (x2 - 2.0 * x3) ** 4
                      + 10.0 * (x1 - x4) ** 4)

    def terms(x):
        x1, x2, x3, x4 = x[0::4], x[1::4], x[2::4], x[3::4]
        return x1 + 10.0 * x2, x3 - x4, x2 - 2.0 * x3, x1 - x4  # p, q, r, t

    def gradient(x):
        p, q, r, t = terms(x)
        g = xp.empty_like(x)
        g[0::4] = 2.0 * p + 40.0 * t ** 3
        g[1::4] = 20.0 * p + 4.0 * r ** 3
        g[2::4] = 10.0 * q - 8.0 * r ** 3
        g[3::4] = -10.0 * q - 40.0 * t ** 3
        return g

    def block_hessians(x):
        _, _, r, t = terms(x)
        m = r.shape[0]
        Hb = xp.zeros((m, 4, 4), dtype=x.dtype)
        Hb[:, 0, 0] = 2.0 + 120.0 * t * t
        Hb[:, 0, 1] = Hb[:, 1, 0] = 20.0
        Hb[:, 0, 3] = Hb[:, 3, 0] = -120.0 * t * t
        Hb[:, 1, 1] = 200.0 + 12.0 * r * r
        Hb[:, 1, 2] = Hb[:, 2, 1] = -24.0 * r * r
        Hb[:, 2, 2] = 10.0 + 48.0 * r * r
        Hb[:, 2, 3] = Hb[:, 3, 2] = -10.0
        Hb[:, 3, 3] = 10.0 + 120.0 * t * t
        return Hb

    def hessian(x):
        Hb = block_hessians(x)
        H = xp.zeros((n, n), dtype=x.dtype)
        for k in range(n // 4):
            H[4 * k:4 * k + 4, 4 * k:4 * k + 4] = Hb[k]
        return H

    def hessp(x, v):
        return xp.einsum("kij,kj->ki", block_hessians(x), v.reshape(-1, 4)).reshape(-1)

    x0 = xp.tile(_vec([3.0, -1.0, 0.0, 1.0]), n // 4)
    return Problem("powell_singular", n, value, gradient, hessian, hessp, x0, xp.zeros_like(x0), 0.0,
                   notes="singular Hessian at the minimiser")


# --- Wood -------------------------------------------------------------------------------------
def wood() -> Problem:
    """Wood / Colville function (MGH 14): a four-dimensional Rosenbrock pair with a coupling term."""

    def value(x, np=xp):
        x1, x2, x3, x4 = x[0], x[1], x[2], x[3]
        return (100.0 * (x1 * x1 - x2) ** 2 + (x1 - 1.0) ** 2 + (x3 - 1.0) ** 2 + 90.0 * (x3 * x3 - x4) ** 2
                + 10.1 * ((x2 - 1.0) ** 2 + (x4 - 1.0) ** 2) + 19.8 * (x2 - 1.0) * (x4 - 1.0))

    def gradient(x):
        x1, x2, x3, x4 = (float(v) for v in x)
        return _vec([400.0 * x1 * (x1 * x1 - x2) + 2.0 * (x1 - 1.0),
                     -200.0 * (x1 * x1 - x2) + 20.2 * (x2 - 1.0) + 19.8 * (x4 - 1.0),
                     2.0 * (x3 - 1.0) + 360.0 * x3 * (x3 * x3 - x4),
                     -180.0 * (x3 * x3 - x4) + 20.2 * (x4 - 1.0) + 19.8 * (x2 - 1.0)])

    def hessian(x):
        x1, x2, x3, x4 = (float(v) for v in x)
        return _vec([[1200.0 * x1 * x1 - 400.0 * x2 + 2.0, -400.0 * x1, 0.0, 0.0],
                     [-400.0 * x1, 220.2, 0.0, 19.8],
                     [0.0, 0.0, 1080.0 * x3 * x3 - 360.0 * x4 + 2.0, -360.0 * x3],
                     [0.0, 19.8, -360.0 * x3, 200.2]])

    return Problem("wood", 4, value, gradient, hessian, lambda x, v: hessian(x) @ v,
                   _vec([-3.0, -1.0, -3.0, -1.0]), _vec([1.0, 1.0, 1.0, 1.0]), 0.0)


# --- Trid -------------------------------------------------------------------------------------
def trid(n: int = 6) -> Problem:
    """Σ (x_i − 1)² − Σ_{i≥2} x_i x_{i−1}: a convex quadratic with a tridiagonal Hessian."""
    _check_n("trid", n, minimum=2)

    def value(x, np=xp):
        return np.sum((x - 1.0) ** 2) - np.sum(x[1:] * x[:-1])

    def gradient(x):
        g = 2.0 * (x - 1.0)
        g[1:] -= x[:-1]
        g[:-1] -= x[1:]
        return g

    def hessian(x):
        one = xp.ones(n - 1, dtype=x.dtype)
        return 2.0 * xp.eye(n, dtype=x.dtype) - xp.diag(one, 1) - xp.diag(one, -1)

    def hessp(x, v):
        out = 2.0 * v
        out[1:] -= v[:-1]
        out[:-1] -= v[1:]
        return out

    i = as_array(list(range(1, n + 1)))
    return Problem("trid", n, value, gradient, hessian, hessp, xp.zeros(n, dtype=i.dtype), i * (n + 1 - i),
                   -n * (n + 4) * (n - 1) / 6.0)


# --- Dixon-Price ------------------------------------------------------------------------------
def dixon_price(n: int = 10) -> Problem:
    """(x₁ − 1)² + Σ_{i≥2} i (2x_i² − x_{i−1})²; minima at x_i = ±2^{−(2^i−2)/2^i} (signs of i ≥ 2 free)."""
    _check_n("dixon_price", n, minimum=2)

    def weights(x, np=xp):
        return np.arange(2, n + 1, dtype=x.dtype)  # the weights i of the terms i = 2..n

    def value(x, np=xp):
        return (x[0] - 1.0) ** 2 + np.sum(weights(x, np) * (2.0 * x[1:] ** 2 - x[:-1]) ** 2)

    def gradient(x):
        c = weights(x)
        u = 2.0 * x[1:] ** 2 - x[:-1]
        g = xp.zeros_like(x)
        g[0] += 2.0 * (x[0] - 1.0)
        g[1:] += 8.0 * c * u * x[1:]
        g[:-1] += -2.0 * c * u
        return g

    def diag_and_off(x):
        c = weights(x)
        d = xp.zeros_like(x)
        d[0] += 2.0
        d[1:] += 8.0 * c * (6.0 * x[1:] ** 2 - x[:-1])
        d[:-1] += 2.0 * c
        return d, -8.0 * c * x[1:]  # off[i] = H[i, i+1]

    hessian, hessp = _tridiagonal(diag_and_off)

    x_star = as_array([2.0 ** (-(2.0 ** i - 2.0) / 2.0 ** i) for i in range(1, n + 1)])
    return Problem("dixon_price", n, value, gradient, hessian, hessp, xp.ones(n, dtype=x_star.dtype), x_star, 0.0,
                   notes="minimisers are not unique: the signs of x_2..x_n may flip")


PROBLEMS: dict[str, Callable[..., Problem]] = {
    "quadratic": quadratic, "rosenbrock": rosenbrock, "extended_rosenbrock": extended_rosenbrock, "beale": beale,
    "powell_singular": powell_singular, "wood": wood, "trid": trid, "dixon_price": dixon_price,
}


FUNCTIONS = PROBLEMS  # the name ``refopt.problems.registry`` looks up (zero-argument calls give the defaults)


def make_problem(name: str, **kwargs) -> Problem:
    """Build the problem ``name`` (``PROBLEMS`` lists them) with its keyword arguments (n, …)."""
    if name not in PROBLEMS:
        raise ValueError(f"unknown problem {name!r}; choose from {', '.join(sorted(PROBLEMS))}")
    return PROBLEMS[name](**kwargs)
