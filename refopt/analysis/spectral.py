"""Spectral estimates of a symmetric matrix known only by its products: top eigenpairs, extreme eigenvalues,
the trace and the eigenvalue density.

Each tool takes any operator with ``matvec`` and ``shape`` (a ``CurvatureOperator``, a SciPy
LinearOperator, a square array: ``operators.as_operator``), works on flat backend vectors in the
operator's dtype, and is reproducible: random vectors are drawn on the host from ``seed`` (an int or a
NumPy Generator) in a stated order, or injected. Results carry ``nmatvec``, the products they used.

* ``check_symmetric(A)``: draws u, v ~ N(0, I) and compares ⟨u, Av⟩ with ⟨Au, v⟩ (two products). It
  raises a ValueError when |⟨u, Av⟩ − ⟨Au, v⟩| > tol · max(‖u‖‖Av‖, ‖Au‖‖v‖), tol = √eps of the dtype by
  default (1.5e-8 in float64, 3.5e-4 in float32): rounding in a symmetric product and in the dot products
  is of order √n·eps relative, far below, while a non-symmetric part N = (A − Aᵀ)/2 gives a relative gap
  of about 2‖N‖_F/(√n ‖A‖_F), so it is caught when ‖N‖_F/‖A‖_F ≳ √n·tol/2. Every tool below that
  assumes symmetry (all but the trace) runs it first (``check_symmetry=True``; its two products count).

* ``top_eigenpairs(A, k)``, power iteration with deflation (PyHessian's ``hessian.eigenvalues``, Yao et
  al. 2020): for i = 1..k, from v₀ (a Gaussian draw, made when pair i starts, or the i-th column of ``v0``)
  projected off the eigenvectors already found and normalised, iterate w = A v_t, λ_t = v_tᵀ w (the Rayleigh
  quotient), v_{t+1} = P w / ‖P w‖ (P projects off the earlier eigenvectors, Gram–Schmidt twice), and stop
  when |λ_t − λ_{t−1}| ≤ tol·|λ_t| or after ``max_iter`` products. It finds the eigenvalues of largest
  **magnitude** (returned with their signs), in the order found; eigenvalues ±λ of equal magnitude make it
  oscillate. Defaults tol = 1e-3, max_iter = 100 are PyHessian's (there: |Δλ| / (|λ_{t−1}| + 1e-6) < tol,
  Gaussian start). Returned: λ_t, v_t and the exact residual ‖A v_t − λ_t v_t‖ of the last iterate, which
  bounds the distance to the nearest eigenvalue (and its square over the gap bounds the Rayleigh
  quotient's error). When P w = 0 (A v lies in the span of the earlier vectors, so λ_t = 0) there is nothing
  to iterate on: the pair stops there, converged only if its residual ‖A v‖ ≤ tol·max(|λ| found so far).

* ``lanczos(A, m)``, m steps with full reorthogonalisation: q₁ = v/‖v‖, and for j = 1..m
  w = A q_j − α_j q_j − β_{j−1} q_{j−1} with α_j = q_jᵀ A q_j, then w ← w − Q_j Q_jᵀ w twice (classical
  Gram–Schmidt against every q so far), β_j = ‖w‖, q_{j+1} = w / β_j; so Q_mᵀ A Q_m = T_m, the tridiagonal
  with diagonal α and off-diagonal β, to rounding. When β_j ≤ n·eps·‖T‖ (an invariant subspace: the
  Krylov space is exhausted) β_j is set to 0 and q_{j+1} is the unit vector e_i least represented in Q_j
  (the smallest row norm), orthogonalised: deterministic, and it leaves T block-diagonal, so the first
  block, which is all quadrature sees, is exact. A small β above that threshold (rounding-split repeated
  eigenvalues give ~1e-13) is kept: w/β, reorthogonalised, is still orthonormal to Q, so QᵀAQ = T holds.
  The basis is n × m floats; runs are built one step at a time, so an adaptive run holds only its steps.

* ``lanczos_eigenpairs(A, k)``: the k largest (descending) and k smallest (ascending) Ritz pairs
  (θ_i, Q_m s_i) of T_m = S Θ Sᵀ, **algebraic**, with residuals r_i = |β_m s_{m,i}| = ‖A y_i − θ_i y_i‖, each
  of which bounds the distance from θ_i to an eigenvalue. A pair has converged when
  r_i ≤ max(tol·|θ_i|, n·eps·‖T‖) (tol = √eps by default; the second term is the rounding floor). With
  ``steps`` it runs exactly that many; by default it runs until the k pairs at the ``which`` end(s)
  ("largest", "smallest" or "both", the default) have converged, checking after max(2k + 1, 20) steps and
  then after every quarter more, or ``max_steps`` (default min(n, 3000)). Ritz values interlace:
  θ_max ≤ λ_max and θ_min ≥ λ_min always, and they are all the eigenvalues when m = n (``complete``). A converged extreme Ritz value is an eigenvalue to within r_i; that it is the extreme
  one is what a random start gives (an eigenvector nearly orthogonal to the start is found late), not a
  certificate. The smallest end of a curvature matrix converges slowly (it sits at the edge of a cluster of
  small eigenvalues).

* ``hutchinson_trace(A, probes)``: tr A ≈ (1/N) Σ_j z_jᵀ A z_j over N probes with E[z zᵀ] = I
  (Rademacher ±1, the default, or Gaussian), drawn in order, one (n,) vector each, when it is used (only
  one is held), or injected as the columns of ``vectors``; the standard error is the sample standard
  deviation (ddof 1) over √N (NaN for N = 1). For symmetric A, Var(zᵀAz) = 2(‖A‖_F² − Σ_i A_ii²) for
  Rademacher probes (exact for a diagonal A) and 2‖A‖_F² for Gaussian ones (Hutchinson 1990; Avron & Toledo
  2011). The number of probes is fixed (PyHessian instead stops when the running mean changes by less than a
  relative 1e-3).

* ``slq(A, m, probes)``, stochastic Lanczos quadrature (Ghorbani, Krishnan & Xiao 2019; Yao et al. 2020):
  for each probe v (drawn as for the trace, or injected), m Lanczos steps from v/‖v‖; the nodes are the
  Ritz values θ_i and the weights w_i = (e₁ᵀ s_i)², the squared first components of T_m's eigenvectors,
  which sum to 1. Gauss quadrature gives Σ_i w_i θ_i^p = vᵀ A^p v / ‖v‖² exactly for p ≤ 2m − 1 (and for
  every p when m = n), whose mean over probes estimates tr(A^p)/n (both probe kinds: v/‖v‖ has E[u uᵀ] =
  I/n). The density averages the probes' measures Σ_i w_i δ(x − θ_i) broadened by a Gaussian of standard
  deviation σ (default 1% of the nodes' range), so it integrates to 1. PyHessian's ``density_generate``
  uses the variance 1e-5·max(1, range) instead and renormalises on its grid.
"""
from __future__ import annotations

import math
import numbers
from typing import NamedTuple

from ..backend import normal, rademacher, rng, to_device, to_host, xp
from ..curvature.estimators import PROBE_DISTRIBUTIONS
from ..optim.base import MAX_ITERATIONS, check_choice, check_int, check_nonnegative, check_positive, show_value
from .operators import CurvatureOperator, as_operator

__all__ = ["Eigenpairs", "LanczosResult", "LanczosEigenpairs", "TraceEstimate", "SLQResult", "check_symmetric",
           "top_eigenpairs", "lanczos", "lanczos_eigenpairs", "hutchinson_trace", "slq", "gaussian_density",
           "MAX_PROBES", "MAX_LANCZOS_STEPS", "LANCZOS_ENDS", "machine_epsilon"]

MAX_PROBES = 10_000     # probes of Hutchinson and SLQ (each is one or m more products)
MAX_LANCZOS_STEPS = 3000   # lanczos_eigenpairs' default cap on adaptive steps: the basis is n × m floats
LANCZOS_ENDS = ("largest", "smallest", "both")


class Eigenpairs(NamedTuple):
    """Eigenvalue estimates (host array), their unit eigenvectors (columns of an (n, k) backend array), the
    residuals ‖A y − λ y‖ (host array), iterations (products per pair; for Lanczos the run's steps), whether
    each met its stopping rule (power iteration's, or Lanczos' residual test: module docs) and the products
    used in all."""

    values: object
    vectors: object
    residuals: object
    iterations: tuple
    converged: tuple
    nmatvec: int


class LanczosResult(NamedTuple):
    """m Lanczos steps: α (m,), β (m − 1,) (host arrays), the basis Q (n, m), β_m = ‖remainder‖ after the
    last step, the number of restarts after an invariant subspace, and the products used."""

    alpha: object
    beta: object
    basis: object
    beta_last: float
    restarts: int
    nmatvec: int

    def tridiagonal(self):
        """T_m as a dense (m, m) backend array."""
        a = to_device(self.alpha)
        T = xp.diag(a)
        if len(self.beta):
            b = to_device(self.beta)
            T = T + xp.diag(b, 1) + xp.diag(b, -1)
        return T


class LanczosEigenpairs(NamedTuple):
    """The k largest Ritz pairs (descending) and the k smallest (ascending) of one Lanczos run, its steps m,
    whether m = n (then the Ritz values are the eigenvalues, to rounding) and the tolerance of ``converged``."""

    largest: Eigenpairs
    smallest: Eigenpairs
    steps: int
    complete: bool
    tol: float


class TraceEstimate(NamedTuple):
    """Hutchinson's estimate of tr A, its standard error, the samples z_jᵀ A z_j (host array), the probe
    count and distribution, and the products used."""

    estimate: float
    stderr: float
    samples: object
    probes: int
    distribution: str
    nmatvec: int


def gaussian_density(nodes, weights, grid, sigma: float):
    """(1/N) Σ_j Σ_i w_ji N(x; θ_ji, σ²) at each x of ``grid`` (host array) for nodes and weights (N, m)."""
    sigma = check_positive("sigma", sigma)
    x = to_device(grid)[:, None]
    total = None
    for theta, w in zip(to_device(nodes), to_device(weights)):     # one probe at a time: (grid, m) in memory
        phi = xp.exp(-0.5 * ((x - theta[None, :]) / sigma) ** 2) @ w
        total = phi if total is None else total + phi
    return to_host(total / (sigma * math.sqrt(2.0 * math.pi) * nodes.shape[0]))


class SLQResult(NamedTuple):
    """Stochastic Lanczos quadrature: nodes θ and weights w (host arrays (probes, m); each row's weights
    sum to 1), the steps m, the probe count and distribution, and the products used."""

    nodes: object
    weights: object
    steps: int
    probes: int
    distribution: str
    nmatvec: int

    def moment(self, p: int) -> float:
        """(1/N) Σ_j Σ_i w_ji θ_ji^p, the estimate of tr(A^p)/n (exact per probe for p ≤ 2m − 1, module docs)."""
        p = check_int("p", p, 0, 10 ** 6)
        return float((self.weights * self.nodes ** p).sum(axis=1).mean())

    def default_sigma(self) -> float:
        """σ = 1% of the nodes' range (1% of max(|θ|, 1) when every node is equal)."""
        lo, hi = float(self.nodes.min()), float(self.nodes.max())
        return 0.01 * (hi - lo) if hi > lo else 0.01 * max(abs(hi), 1.0)

    def density(self, grid=None, sigma=None, num: int = 1000):
        """(grid, φ(grid)): the Gaussian-broadened density, σ = ``sigma`` or ``default_sigma()``; the
        default grid has ``num`` points from θ_min − 5σ to θ_max + 5σ."""
        sigma = self.default_sigma() if sigma is None else check_positive("sigma", sigma)
        if grid is None:
            num = check_int("num", num, 2, 10 ** 7)
            lo, hi = float(self.nodes.min()) - 5 * sigma, float(self.nodes.max()) + 5 * sigma
            grid = to_host(xp.linspace(lo, hi, num))
        return grid, gaussian_density(self.nodes, self.weights, grid, sigma)


# --- helpers -----------------------------------------------------------------------------------------------
def machine_epsilon(dtype) -> float:
    """The machine epsilon of a float dtype (or its name); ``minimize.dtype_eps`` takes params instead."""
    return float(xp.finfo(dtype).eps)


def _eps(op: CurvatureOperator) -> float:
    return machine_epsilon(op.dtype)


def _norm(v) -> float:
    return float(xp.sqrt(xp.vdot(v, v)))


def _dot(u, v) -> float:
    return float(xp.vdot(u, v))


def _check_at_most(name: str, value, n: int, what: str) -> int:
    """``value`` as an int in [1, n]; the ValueError names ``what`` n is."""
    if not isinstance(value, numbers.Integral) or isinstance(value, bool):
        raise ValueError(f"{name} must be an integer in [1, {n}], got {show_value(value)}")
    value = int(value)
    if value < 1:
        raise ValueError(f"{name} must be at least 1, got {value}")
    if value > n:
        raise ValueError(f"{name} = {value} is larger than {what} ({n})")
    return value


def _columns(op: CurvatureOperator, X, name: str, count=None):
    """(k, columns): the injected vectors ``X`` ((n,) or (n, k) with k = ``count`` when given), checked whole,
    and an iterator over its columns as contiguous (n,) arrays, each copied only when it is reached."""
    shape = tuple(getattr(X, "shape", ()))
    if getattr(X, "dtype", None) != op.dtype:
        raise ValueError(f"{name} must be an array of dtype {op.dtype.name} (the operator's), got "
                         f"{getattr(X, 'dtype', None) or show_value(X)}")
    if shape == (op.n,):
        X = X[:, None]
    elif len(shape) != 2 or shape[0] != op.n:
        raise ValueError(f"{name} must have shape ({op.n},) or ({op.n}, k), got {shape}")
    if count is not None and X.shape[1] != count:
        raise ValueError(f"{name} must have {count} column(s), got {X.shape[1]}")
    if X.shape[1] < 1:
        raise ValueError(f"{name} must have at least one column")
    X = to_device(X)
    if not bool(xp.all(xp.isfinite(X))):
        raise ValueError(f"{name} contains NaN or Inf")
    # contiguous vectors: the same rounding as freshly drawn ones
    return X.shape[1], (xp.ascontiguousarray(X[:, j]) for j in range(X.shape[1]))


def _draw(op: CurvatureOperator, gen, distribution: str):
    draw = rademacher if distribution == "rademacher" else normal
    return draw(gen, (op.n,), op.dtype)


def _probes(op: CurvatureOperator, probes, seed, distribution: str, vectors):
    """(N, distribution, probes): the probes as an iterator, drawn one at a time in order from ``rng(seed)``
    (or the columns of ``vectors``), so only the current one is in memory."""
    distribution = check_choice("distribution", distribution, PROBE_DISTRIBUTIONS)
    if vectors is not None:
        count, columns = _columns(op, vectors, "vectors")
        return count, distribution, columns
    probes = check_int("probes", probes, 1, MAX_PROBES)
    gen = rng(seed)
    return probes, distribution, (_draw(op, gen, distribution) for _ in range(probes))


def _project(w, basis, times: int = 2):
    """w with its components along the orthonormal vectors ``basis`` (a list) removed, Gram–Schmidt ``times``."""
    for _ in range(times):
        for q in basis:
            w = w - _dot(q, w) * q
    return w


def check_symmetric(A, seed=0, tol=None) -> float:
    """The relative asymmetry |⟨u, Av⟩ − ⟨Au, v⟩| / max(‖u‖‖Av‖, ‖Au‖‖v‖) for u, v ~ N(0, I) drawn from ``seed``
    (two products); ValueError above ``tol`` (default √eps of the dtype; module docs)."""
    op = as_operator(A)
    tol = math.sqrt(_eps(op)) if tol is None else check_nonnegative("tol", tol)
    if not op.symmetric:
        raise ValueError(f"{op.name} is declared non-symmetric; this tool assumes a symmetric operator")
    gen = rng(seed)
    u, v = normal(gen, (op.n,), op.dtype), normal(gen, (op.n,), op.dtype)
    Au, Av = op.matvec(u), op.matvec(v)
    scale = max(_norm(u) * _norm(Av), _norm(Au) * _norm(v))
    gap = abs(_dot(u, Av) - _dot(Au, v)) / scale if scale > 0 else 0.0
    if not gap <= tol:
        raise ValueError(f"{op.name} is not symmetric: |<u, Av> - <Au, v>| is {gap:.3g} of |u||Av| (tolerance "
                         f"{tol:.2g}); eigenvalue tools need a symmetric operator (for a preconditioned matrix use "
                         "the symmetric P^(-1/2) M P^(-1/2))")
    return gap


# --- power iteration ------------------------------------------------------------------------------------------
def top_eigenpairs(A, k: int = 1, max_iter: int = 100, tol: float = 1e-3, seed=0, v0=None,
                   check_symmetry: bool = True, callback=None) -> Eigenpairs:
    """The k eigenpairs of largest magnitude by power iteration with deflation (module docs). ``v0``: start
    vectors as the columns of an (n, k) array (or (n,) for k = 1), else Gaussian draws from ``seed``, one
    per pair in order. ``callback(i, k)`` after each pair."""
    op = as_operator(A)
    k = _check_at_most("k", k, op.n, "the dimension n")
    max_iter = check_int("max_iter", max_iter, 1, MAX_ITERATIONS)
    tol = check_nonnegative("tol", tol)
    start = op.nmatvec
    if v0 is not None:
        starts = _columns(op, v0, "v0", k)[1]
    else:  # drawn one at a time, as each pair starts: the same draws as drawing them all first
        gen = rng(seed)
        starts = (normal(gen, (op.n,), op.dtype) for _ in range(k))
    if check_symmetry:
        check_symmetric(op)
    basis, values, residuals, iterations, converged = [], [], [], [], []
    scale = 0.0   # the largest |λ| found so far: the scale of A for the residual test when P w = 0
    for i, v in enumerate(starts):
        v = _project(v, basis)
        nv = _norm(v)
        if not nv > 0:
            raise ValueError(f"v0 column {i} lies in the span of the eigenvectors found before it")
        v = v / nv
        previous, done = None, False
        for t in range(1, max_iter + 1):
            w = op.matvec(v)
            lam = _dot(v, w)
            r = _norm(w - lam * v)
            done = r == 0.0 or (previous is not None and abs(lam - previous) <= tol * abs(lam))
            if done or t == max_iter:
                break
            w = _project(w, basis)
            nw = _norm(w)
            if not nw > 0:      # A v lies in the span of the earlier vectors: λ_t = 0, and nothing to iterate on;
                done = r <= tol * scale    # converged only if the true residual ‖A v − λ v‖ = ‖A v‖ says so
                break
            v, previous = w / nw, lam
        basis.append(v)
        values.append(lam)
        scale = max(scale, abs(lam))
        residuals.append(r)
        iterations.append(t)
        converged.append(bool(done))
        if callback is not None:
            callback(i + 1, k)
    return Eigenpairs(to_host(xp.asarray(values)), xp.stack(basis, axis=1), to_host(xp.asarray(residuals)),
                      tuple(iterations), tuple(converged), op.nmatvec - start)


# --- Lanczos ------------------------------------------------------------------------------------------------
class _Krylov:
    """Lanczos with full reorthogonalisation from the unit vector ``q``, one step at a time (module docs).

    The basis is kept as rows (each q_j contiguous) in a buffer that doubles up to ``capacity`` rows, so an
    adaptive run holds only the steps it takes. After each step the remainder w (A q_j minus its components
    along Q_j) and β = ‖w‖ are kept, and the next q is made from them only when another step is asked for:
    a run stopped after m steps has β_m = ‖remainder‖, as ``LanczosResult.beta_last`` says."""

    def __init__(self, op: CurvatureOperator, q, capacity: int, start: int):
        self.op, self.capacity = op, capacity
        self.rows = xp.zeros((min(capacity, 64), op.n), dtype=op.dtype)
        self.q, self.alpha, self.beta = q, [], []
        self.anorm, self.breakdown, self.restarts = 0.0, op.n * _eps(op), 0
        self.w, self.b, self.m, self.start = None, 0.0, 0, start   # start: op.nmatvec before the symmetry check

    def step(self) -> None:
        """One more step: q_{m+1} from the last remainder (or a restart), A q_{m+1}, α, the reorthogonalised
        remainder and its norm β."""
        j = self.m
        if j > 0:
            self.q = self._next()
        if j == self.rows.shape[0]:
            grown = xp.zeros((min(self.capacity, 2 * j), self.op.n), dtype=self.op.dtype)
            grown[:j] = self.rows
            self.rows = grown
        q = self.q
        self.rows[j] = q
        w = self.op.matvec(q)
        a = _dot(q, w)
        w = w - a * q - (self.beta[-1] * self.rows[j - 1] if j > 0 else 0.0)
        for _ in range(2):   # full reorthogonalisation, Gram–Schmidt twice
            basis = self.rows[:j + 1]
            w = w - basis.T @ (basis @ w)
        self.alpha.append(a)
        self.b = _norm(w)
        self.anorm = max(self.anorm, abs(a) + (self.beta[-1] if self.beta else 0.0) + self.b)
        self.w, self.m = w, j + 1

    def _next(self):
        """q_{m+1} from the last remainder, or, after an invariant subspace, the least represented unit vector."""
        if self.b <= self.breakdown * self.anorm:
            self.restarts += 1
            basis = self.rows[:self.m]
            i = int(xp.argmin(xp.sum(basis * basis, axis=0)))
            e = xp.zeros(self.op.n, dtype=self.op.dtype)
            e[i] = 1.0
            for _ in range(2):
                e = e - basis.T @ (basis @ e)
            self.beta.append(0.0)
            return e / _norm(e)
        self.beta.append(self.b)
        return self.w / self.b

    def result(self) -> LanczosResult:
        """The steps taken so far as a ``LanczosResult`` (the basis a view of the buffer)."""
        dtype = self.op.dtype
        return LanczosResult(to_host(xp.asarray(self.alpha, dtype=dtype)), to_host(xp.asarray(self.beta, dtype=dtype)),
                             self.rows[:self.m].T, float(self.b), self.restarts, self.op.nmatvec - self.start)


def _start(op: CurvatureOperator, seed, v0):
    q = next(_columns(op, v0, "v0", 1)[1]) if v0 is not None else normal(rng(seed), (op.n,), op.dtype)
    nq = _norm(q)
    if not nq > 0:
        raise ValueError("v0 must not be the zero vector")
    return q / nq


def lanczos(A, steps: int, seed=0, v0=None, check_symmetry: bool = True, callback=None) -> LanczosResult:
    """``steps`` Lanczos steps with full reorthogonalisation from ``v0`` ((n,)), or a Gaussian draw from
    ``seed`` (module docs). ``callback(j, steps)`` after each step."""
    op = as_operator(A)
    m = _check_at_most("steps", steps, op.n, "the dimension n")
    start = op.nmatvec
    q = _start(op, seed, v0)
    if check_symmetry:
        check_symmetric(op)
    krylov = _Krylov(op, q, m, start)
    for j in range(m):
        krylov.step()
        if callback is not None:
            callback(j + 1, m)
    return krylov.result()


def _ritz_pairs(krylov: _Krylov, tol: float):
    """θ (host, ascending), S, the residuals |β_m s_{m,i}| (host) and whether each is at most
    max(tol·|θ_i|, n·eps·‖T‖) (the rounding floor)."""
    result = krylov.result()
    theta, S = xp.linalg.eigh(result.tridiagonal())   # the Ritz pairs
    theta_h = to_host(theta)
    res = to_host(xp.abs(result.beta_last * S[krylov.m - 1, :]))
    floor = krylov.breakdown * max(krylov.anorm, float(abs(theta_h).max()))
    converged = [bool(r <= max(tol * abs(t), floor)) for r, t in zip(res, theta_h)]
    return result, theta_h, S, res, converged


def lanczos_eigenpairs(A, k: int = 1, steps=None, seed=0, v0=None, check_symmetry: bool = True, callback=None,
                       tol=None, max_steps=None, which: str = "both") -> LanczosEigenpairs:
    """The k largest (descending) and k smallest (ascending) Ritz pairs, algebraic, of one Lanczos run, with
    residuals |β_m s_{m,i}| (module docs). ``steps``: exactly that many steps; None (the default): steps until
    the k pairs at the ``which`` end(s) ("largest", "smallest", "both") have residuals ≤ ``tol``·|θ_i|
    (default √eps), checked after max(2k + 1, 20) steps and then every quarter more, or ``max_steps`` (default
    min(n, 3000)). ``callback(j, total)`` after each step, total = ``steps`` or ``max_steps``."""
    op = as_operator(A)
    k = _check_at_most("k", k, op.n, "the dimension n")
    tol = math.sqrt(_eps(op)) if tol is None else check_nonnegative("tol", tol)
    which = check_choice("which", which, LANCZOS_ENDS)
    if steps is not None:
        cap = _check_at_most("steps", steps, op.n, "the dimension n")
    elif max_steps is not None:
        cap = _check_at_most("max_steps", max_steps, op.n, "the dimension n")
    else:
        cap = min(op.n, MAX_LANCZOS_STEPS)
    if k > cap:
        what = "steps" if steps is not None else "max_steps"
        raise ValueError(f"k = {k} is larger than {what} ({cap}): m Lanczos steps give m Ritz values")
    start = op.nmatvec
    q = _start(op, seed, v0)
    if check_symmetry:
        check_symmetric(op)
    krylov = _Krylov(op, q, cap, start)
    check_at = cap if steps is not None else min(cap, max(2 * k + 1, 20))
    while True:
        while krylov.m < check_at:
            krylov.step()
            if callback is not None:
                callback(krylov.m, cap)
        result, theta, S, res, converged = _ritz_pairs(krylov, tol)
        m = krylov.m
        top, bottom = list(range(m - 1, m - 1 - k, -1)), list(range(k))
        wanted = {"largest": top, "smallest": bottom, "both": top + bottom}[which]
        if m == cap or all(converged[i] for i in wanted):
            break
        check_at = min(cap, max(m + 10, math.ceil(1.25 * m)))

    def pick(idx):
        return Eigenpairs(theta[idx], result.basis @ S[:, idx], res[idx], (m,) * len(idx),
                          tuple(converged[i] for i in idx), result.nmatvec)
    return LanczosEigenpairs(pick(top), pick(bottom), m, m == op.n, tol)


# --- the trace ----------------------------------------------------------------------------------------------
def hutchinson_trace(A, probes: int = 100, seed=0, distribution: str = "rademacher", vectors=None,
                     callback=None) -> TraceEstimate:
    """Hutchinson's tr A ≈ (1/N) Σ_j z_jᵀ A z_j with its standard error (module docs); ``vectors`` (n, N) injects
    the probes. ``callback(j, N)`` after each probe. Symmetry is not needed."""
    op = as_operator(A)
    start = op.nmatvec
    count, distribution, Z = _probes(op, probes, seed, distribution, vectors)
    samples = []
    for j, z in enumerate(Z):
        samples.append(_dot(z, op.matvec(z)))
        if callback is not None:
            callback(j + 1, count)
    s = xp.asarray(samples, dtype=xp.float64)
    N = len(samples)
    mean = float(xp.mean(s))
    stderr = float(xp.std(s, ddof=1)) / math.sqrt(N) if N > 1 else float("nan")
    return TraceEstimate(mean, stderr, to_host(s), N, distribution, op.nmatvec - start)


# --- stochastic Lanczos quadrature ------------------------------------------------------------------------
def slq(A, steps: int, probes: int = 1, seed=0, distribution: str = "rademacher", vectors=None,
        check_symmetry: bool = True, callback=None) -> SLQResult:
    """Stochastic Lanczos quadrature with ``steps`` Lanczos steps per probe (module docs); probes drawn from
    ``seed`` in order, or the columns of ``vectors`` (n, N). ``callback(j, N)`` after each probe."""
    op = as_operator(A)
    m = _check_at_most("steps", steps, op.n, "the dimension n")
    start = op.nmatvec
    count, distribution, Z = _probes(op, probes, seed, distribution, vectors)
    if check_symmetry:
        check_symmetric(op)
    nodes, weights = [], []
    for j, z in enumerate(Z):
        result = lanczos(op, m, v0=z, check_symmetry=False)
        theta, S = xp.linalg.eigh(result.tridiagonal())   # the Ritz pairs
        nodes.append(theta)
        weights.append(S[0, :] ** 2)
        if callback is not None:
            callback(j + 1, count)
    return SLQResult(to_host(xp.stack(nodes)), to_host(xp.stack(weights)), m, count, distribution,
                     op.nmatvec - start)
