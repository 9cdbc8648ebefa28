"""Curvature matrices as linear operators on flat parameter vectors, built from an oracle's products.

Every operator is a ``CurvatureOperator``: an n×n matrix M known only through ``matvec(v) = M v``, with
``shape`` (n, n), ``dtype`` (the parameters' float dtype), ``matmat`` (columns one product each),
``op @ v``, ``to_dense`` (small n) and ``to_scipy()`` (a ``scipy.sparse.linalg.LinearOperator``; SciPy is
optional). It also has ``rmatvec`` = ``matvec`` when symmetric, so ``scipy.sparse.linalg.eigsh(op, k)``
takes it directly on the NumPy backend (``aslinearoperator`` reads ``shape``, ``matvec``, ``dtype``).

Vectors are flat backend arrays of length n = ``tree.size(params)`` in ``tree.ravel`` order
([vec(W_1), b_1, vec(W_2), b_2, ...], row-major), shape (n,) (or (n, 1), which comes back as (n, 1)),
dtype exactly the operator's: another dtype, another length, a non-array or a non-finite vector is a
ValueError naming the operator. A product that is not finite (NaN or Inf: parameters or data where the
curvature overflows) is a ValueError too, so no spectral estimate is ever built on one.

The matrices (at fixed ``params`` and the oracle's batch; ``make_operator(kind, ...)`` chooses by name):

* "hessian"  ∇²L, one ``nhvp`` per product (the network oracle counts one ``ngev`` when the operator is
  made: its gradient is recorded once; a ``FunctionOracle`` works too);
* "ggn"      Jᵀ (scale · H_ℓ) J, one ``nggnvp`` per product;
* "true" | "mc" | "empirical"  the Fisher kinds (``curvature.products``), one ``nfvp`` per product; "mc"
  samples its k = ``samples`` label sets once, from ``seed`` or injected as ``labels`` (k, ...), when the
  operator is made, so every product uses the same matrix;
* "kfac"     blockdiag_l(damped A_l ⊗ G_l) from one statistics pass (``oracle.kfac_statistics``: one nstats,
  nfev, ngev, plus one nvjp per extra sweep), raised to ``power`` 1, −1, ½ or −½, applied per layer as
  Kronecker products (nothing n×n is formed; the products count nothing at the oracle, since they do not
  touch the batch). Damping as K-FAC's ``damping_scheme``: "pi" / "tikhonov" (A + πγI) ⊗ (G + γ/π I),
  γ = √λ, or "eigen" A ⊗ G + λI (``curvature.blocks``);
* "ekfac"    blockdiag_l(Q_l diag(s_l + λ) Q_lᵀ), Q_l = Q_A ⊗ Q_G, s_l this batch's diagonal in that
  basis (George et al. 2018), to the same powers;
* "kfac_preconditioned_ggn"  P^{-1/2} (G + μI) P^{-1/2} with P the damped K-FAC (or EKFAC) matrix and μ
  (``ggn_damping``, default λ) the GGN's damping. It is similar to P⁻¹(G + μI), the matrix whose
  conditioning K-FAC-preconditioned CG or a K-FAC step sees, and has the same eigenvalues; this form is
  chosen because it is symmetric (positive definite for μ > 0), so Lanczos, power iteration and ``eigsh``
  apply to it and its condition number is λ_max/λ_min. One GGN product and two Kronecker sweeps each.

Negative powers of the Kronecker operators need ``damping`` > 0 (the undamped factors are singular
whenever the batch is smaller than a layer).
"""
from __future__ import annotations

from .. import tree as T
from ..backend import default_dtype, is_floating, to_device, to_host, xp
from ..curvature import blocks as B
from ..curvature import kronecker as K
from ..curvature.dense import check_dense_size
from ..curvature.eigenbasis import EigenbasisBlocks
from ..curvature.products import FISHER_KINDS
from ..optim.base import MAX_DRAWS, as_real, check_choice, check_int, check_nonnegative, show_value

__all__ = ["CurvatureOperator", "as_operator", "hessian_operator", "ggn_operator", "fisher_operator",
           "kfac_operator", "ekfac_operator", "kfac_preconditioned_ggn_operator", "make_operator",
           "OPERATOR_KINDS", "KFAC_POWERS"]

OPERATOR_KINDS = ("hessian", "ggn", "true", "mc", "empirical", "kfac", "ekfac", "kfac_preconditioned_ggn")
KFAC_POWERS = B.POWERS


class CurvatureOperator:
    """A symmetric (unless stated) n×n matrix given by its products; see the module docs.

    ``product`` maps a flat (n,) array of ``dtype`` to one; ``nmatvec`` counts the products made through
    this operator (a ``matmat`` of k columns counts k).
    """

    def __init__(self, product, n: int, dtype, name: str = "operator", symmetric: bool = True):
        self._product = product
        self.n = check_int("n", n, 1, 2 ** 62)
        if dtype is None or not is_floating(dtype):
            raise ValueError(f"dtype must be float32 or float64, got {show_value(dtype)}")
        self.dtype = xp.dtype(dtype)
        self.name = str(name)
        self.symmetric = bool(symmetric)
        self.nmatvec = 0

    @property
    def shape(self) -> tuple:
        """(n, n)."""
        return (self.n, self.n)

    def __repr__(self):
        return f"<CurvatureOperator {self.name}: {self.n}x{self.n} {self.dtype.name}>"

    def _check_vector(self, v, what: str = "v"):
        shape, dtype = getattr(v, "shape", None), getattr(v, "dtype", None)
        if shape is None or dtype is None:
            raise ValueError(f"{self.name}: {what} must be an array of shape ({self.n},), got {show_value(v)}")
        if tuple(shape) not in ((self.n,), (self.n, 1)):
            raise ValueError(f"{self.name}: {what} must have shape ({self.n},), got {tuple(shape)}")
        if dtype != self.dtype:
            raise ValueError(f"{self.name}: {what} must have dtype {self.dtype.name} (the operator's), got {dtype}")
        if not bool(xp.all(xp.isfinite(v))):
            raise ValueError(f"{self.name}: {what} contains NaN or Inf")

    def matvec(self, v):
        """M v for v of shape (n,) (or (n, 1), returned as (n, 1)) and the operator's dtype."""
        self._check_vector(v)
        flat = xp.reshape(v, (self.n,))
        out = self._product(flat)
        self.nmatvec += 1
        if tuple(out.shape) != (self.n,):
            raise ValueError(f"{self.name}: the product has shape {tuple(out.shape)}, expected ({self.n},)")
        if not bool(xp.all(xp.isfinite(out))):
            raise ValueError(f"{self.name}: the product is not finite (NaN or Inf): the curvature overflows at "
                             "these parameters and data")
        out = out.astype(self.dtype, copy=False)
        return xp.reshape(out, tuple(v.shape))

    def rmatvec(self, v):
        """Mᵀ v = M v (symmetric operators only; ValueError otherwise)."""
        if not self.symmetric:
            raise ValueError(f"{self.name}: rmatvec needs a symmetric operator")
        return self.matvec(v)

    def matmat(self, V):
        """M V for V of shape (n, k): one product per column."""
        shape = tuple(getattr(V, "shape", ()))
        if len(shape) != 2 or shape[0] != self.n:
            raise ValueError(f"{self.name}: V must have shape ({self.n}, k), got {shape or show_value(V)}")
        if shape[1] == 0:
            return xp.zeros((self.n, 0), dtype=self.dtype)
        return xp.stack([self.matvec(V[:, j]) for j in range(shape[1])], axis=1)

    def rmatmat(self, V):
        """Mᵀ V = M V (symmetric operators only)."""
        if not self.symmetric:
            raise ValueError(f"{self.name}: rmatmat needs a symmetric operator")
        return self.matmat(V)

    def __matmul__(self, other):
        return self.matvec(other) if getattr(other, "ndim", None) == 1 else self.matmat(other)

    def __call__(self, v):
        return self.matvec(v)

    def to_dense(self, max_size: int | None = None):
        """The dense n×n matrix, from n products (``check_dense_size``: ValueError beyond ``max_size``)."""
        check_dense_size(self.n, max_size, f"dense {self.name}", "its matvec")
        return self.matmat(xp.eye(self.n, dtype=self.dtype))

    def to_scipy(self):
        """A ``scipy.sparse.linalg.LinearOperator`` on host (NumPy) vectors: on the CuPy backend each
        product moves the vector to the device and back. ImportError with the extra to install without SciPy."""
        try:
            from scipy.sparse.linalg import LinearOperator  # noqa: PLC0415 (optional, from the test extra)
        except ImportError:
            raise ImportError("to_scipy needs SciPy: pip install scipy (or 'refopt[test]')") from None

        def host_product(x):
            return to_host(self.matvec(to_device(x).astype(self.dtype, copy=False)))

        def host_matmat(X):
            return to_host(self.matmat(to_device(X).astype(self.dtype, copy=False)))
        rm = host_product if self.symmetric else None
        rmm = host_matmat if self.symmetric else None
        return LinearOperator(self.shape, matvec=host_product, rmatvec=rm, matmat=host_matmat, rmatmat=rmm,
                              dtype=self.dtype)


def as_operator(A, name: str | None = None) -> CurvatureOperator:
    """``A`` as a ``CurvatureOperator``: itself, a square float array (its matrix products), or any object with
    ``shape`` (n, n) and ``matvec`` (a SciPy LinearOperator, on the NumPy backend; ``dtype`` read if present,
    else the backend's default). The wrapper is declared symmetric; the spectral tools that need symmetry
    check it (``check_symmetric``)."""
    if isinstance(A, CurvatureOperator):
        return A
    shape = tuple(getattr(A, "shape", ()))
    if len(shape) != 2 or shape[0] != shape[1] or shape[0] < 1:
        raise ValueError(f"the operator must be square with shape (n, n), n ≥ 1, got {shape or show_value(A)}")
    if hasattr(A, "matvec"):
        dtype = getattr(A, "dtype", None)
        dtype = dtype if dtype is not None and is_floating(dtype) else default_dtype()
        return CurvatureOperator(lambda v: A.matvec(v), shape[0], dtype, name or type(A).__name__, symmetric=True)
    if not is_floating(getattr(A, "dtype", "object")):
        raise ValueError(f"a matrix operator must be a float32 or float64 array, got {show_value(A)}")
    M = to_device(A)
    return CurvatureOperator(lambda v: M @ v, shape[0], M.dtype, name or "matrix", symmetric=True)


# --- the oracle's products -------------------------------------------------------------------------------
def _params_dtype(params):
    """The one float dtype of the leaves of ``params`` (ValueError for none, mixed or non-float leaves)."""
    dtypes = {getattr(x, "dtype", None) for x in T.leaves(params)}
    if len(dtypes) != 1 or None in dtypes or not is_floating(next(iter(dtypes))):
        raise ValueError(f"params must have array leaves of one float dtype, got {sorted(map(str, dtypes))}")
    return next(iter(dtypes))


def _flat(oracle_product, params, name: str) -> CurvatureOperator:
    """A CurvatureOperator for a product of params-shaped trees at ``params``."""
    dtype = _params_dtype(params)
    return CurvatureOperator(lambda v: T.ravel(oracle_product(T.unravel(v, params))), T.size(params), dtype, name)


def _require(oracle, capability: str, what: str) -> None:
    if capability not in getattr(oracle, "provides", ()):
        raise ValueError(f"the {what} operator needs an oracle that provides {capability!r}; "
                         f"{type(oracle).__name__} does not")


def hessian_operator(oracle, params) -> CurvatureOperator:
    """∇²L(θ) at ``params`` (``oracle.hessian_operator``; one nhvp per product)."""
    _require(oracle, "hvp", "Hessian")
    return _flat(oracle.hessian_operator(params), params, "hessian")


def ggn_operator(oracle, params) -> CurvatureOperator:
    """The GGN Jᵀ (scale · H_ℓ) J at ``params`` (``oracle.curvature_operator``; one nggnvp per product)."""
    _require(oracle, "ggn", "GGN")
    return _flat(oracle.curvature_operator(params, "ggn"), params, "ggn")


def fisher_operator(oracle, params, kind: str = "true", samples: int = 1, seed=None, labels=None) -> CurvatureOperator:
    """The Fisher ``kind`` "true" | "mc" | "empirical" (one nfvp per product); "mc" draws its ``samples``
    label sets once from ``seed`` (or takes ``labels``), so every product uses the same matrix."""
    kind = check_choice("kind", kind, FISHER_KINDS)
    samples = check_int("samples", samples, 1, MAX_DRAWS)
    _require(oracle, "fisher", f"{kind} Fisher")
    if kind == "mc" and seed is None and labels is None:
        raise ValueError("the Monte-Carlo Fisher needs seed= or labels=")
    return _flat(oracle.curvature_operator(params, kind, samples=samples, seed=seed, labels=labels), params,
                 f"{kind} fisher")


# --- the Kronecker-factored matrices -----------------------------------------------------------------------
def _check_power(power, damping: float) -> float:
    x = as_real(power)
    if x not in KFAC_POWERS:
        raise ValueError(f"power must be one of {KFAC_POWERS}, got {show_value(power)}")
    if x < 0 and not damping > 0:
        raise ValueError(f"power={power} needs damping > 0 (the undamped Kronecker factors can be singular)")
    return x


def _layer_matrices(v, params) -> list:
    return [K.layer_matrix(layer) for layer in T.unravel(v, params)]


def _flat_layers(V, params) -> object:
    """The per-layer matrices W̄_l = [W_l; b_l] (K-FAC's layout) as one flat vector in the parameters' order:
    each folded back to its layer's {"W", "b"} (a conv kernel to OIHW) and raveled as ``tree.ravel`` does.
    For a dense layer this is W̄_l's rows in order; for a conv layer W̄_l[:-1] is the kernel's transpose."""
    return T.ravel([K.layer_tree(Vl, p["W"].shape) for Vl, p in zip(V, params)])


def _check_network(oracle, params, what: str):
    _require(oracle, "layer_statistics", what)
    if not isinstance(params, (list, tuple)) or not all(isinstance(p, dict) and set(p) == {"W", "b"}
                                                        for p in params):
        raise ValueError(f"the {what} operator needs network params, a list of {{'W', 'b'}} layer dicts "
                         "(dense or convolution layers)")


def _statistics(oracle, params, fisher: str, samples: int, seed, labels):
    fisher = check_choice("fisher", fisher, K.FISHER_ESTIMATES)
    samples = check_int("samples", samples, 1, MAX_DRAWS)
    if fisher in ("mc", "curvature_prop") and seed is None and labels is None:
        raise ValueError(f"fisher={fisher!r} needs seed= or labels=")
    return oracle.kfac_statistics(params, fisher, samples, seed, labels, gradient=False)


def _kronecker_apply(oracle, params, curvature: str, fisher: str, damping: float, damping_scheme: str,
                     bias_block: str, samples: int, seed, labels, output_grad_scale: str = "per_example",
                     kfac_approx: str = "expand", conv_row_scale: str = "none"):
    """V ↦ (damped C)^p V over layer matrices, for C the one-batch K-FAC or EKFAC matrix."""
    damping = check_nonnegative("damping", damping)
    if curvature == "ekfac":
        blocks = EigenbasisBlocks(0.0, bias_block, kfac_approx)
    else:
        blocks = B.KroneckerBlocks(damping_scheme, "eig", bias_block, output_grad_scale, kfac_approx, conv_row_scale)
    stats = _statistics(oracle, params, fisher, samples, seed, labels)
    factors = blocks.estimate(stats)
    pre = blocks.update_estimate(blocks.refresh(factors, damping), stats)   # EKFAC's ŝ from this batch

    def apply(V, p):
        return blocks.multiply(V, factors, pre, damping, p)    # ±1: the optimizers' own products
    return apply


def kfac_operator(oracle, params, damping: float = 0.0, damping_scheme: str = "eigen", power=1,
                  fisher: str = "true", samples: int = 1, seed=None, labels=None, bias_block: str = "joint",
                  output_grad_scale: str = "per_example", kfac_approx: str = "expand",
                  conv_row_scale: str = "none") -> CurvatureOperator:
    """(damped K-FAC matrix)^power of this batch (module docs); ``fisher``, ``kfac_approx`` (a conv layer's
    "expand" | "reduce") and ``conv_row_scale`` as ``curvature.kfac_matrices``."""
    _check_network(oracle, params, "K-FAC")
    damping = check_nonnegative("damping", damping)
    power = _check_power(power, damping)
    apply = _kronecker_apply(oracle, params, "kfac", fisher, damping, damping_scheme, bias_block, samples, seed,
                             labels, output_grad_scale, kfac_approx, conv_row_scale)
    return CurvatureOperator(lambda v: _flat_layers(apply(_layer_matrices(v, params), power), params), T.size(params),
                             _params_dtype(params), f"kfac^{power:g}")


def ekfac_operator(oracle, params, damping: float = 0.0, power=1, fisher: str = "true", samples: int = 1,
                   seed=None, labels=None, bias_block: str = "joint", kfac_approx: str = "expand") -> CurvatureOperator:
    """(EKFAC matrix + λI)^power of this batch: Q diag(s + λ)^power Qᵀ per layer (module docs; ``kfac_approx``
    a conv layer's basis, as EKFAC's switch)."""
    _check_network(oracle, params, "EKFAC")
    damping = check_nonnegative("damping", damping)
    power = _check_power(power, damping)
    apply = _kronecker_apply(oracle, params, "ekfac", fisher, damping, "eigen", bias_block, samples, seed, labels,
                             kfac_approx=kfac_approx)
    return CurvatureOperator(lambda v: _flat_layers(apply(_layer_matrices(v, params), power), params), T.size(params),
                             _params_dtype(params), f"ekfac^{power:g}")


def kfac_preconditioned_ggn_operator(oracle, params, damping: float = 1e-3, damping_scheme: str = "pi",
                                     curvature: str = "kfac", fisher: str = "true", ggn_damping=None,
                                     samples: int = 1, seed=None, labels=None, bias_block: str = "joint",
                                     output_grad_scale: str = "per_example", kfac_approx: str = "expand",
                                     conv_row_scale: str = "none", ggn=None) -> CurvatureOperator:
    """P^{-1/2} (G + μI) P^{-1/2}: the GGN damped by μ = ``ggn_damping`` (default ``damping``) preconditioned
    by the damped K-FAC (``curvature="ekfac"``: EKFAC) matrix P of this batch. Symmetric, with the
    eigenvalues of P⁻¹(G + μI) (module docs). Defaults: K-FAC's (damping 1e-3, "pi"); the P options as
    ``kfac_operator`` (``ekfac_operator`` for "ekfac", which has no ``output_grad_scale`` or
    ``conv_row_scale``); ``ggn``: the GGN operator at these params and batch if already made (else one is)."""
    curvature = check_choice("curvature", curvature, ("kfac", "ekfac"))
    _check_network(oracle, params, "K-FAC-preconditioned GGN")
    damping = check_nonnegative("damping", damping)
    if not damping > 0:
        raise ValueError("damping must be positive: P^{-1/2} of the undamped factors can be singular")
    mu = damping if ggn_damping is None else check_nonnegative("ggn_damping", ggn_damping)
    G = ggn_operator(oracle, params) if ggn is None else ggn
    if not isinstance(G, CurvatureOperator) or G.n != T.size(params) or G.dtype != _params_dtype(params):
        raise ValueError(f"ggn must be the GGN operator of these params ({T.size(params)} "
                         f"{_params_dtype(params)} entries), got {show_value(G)}")
    scheme = "eigen" if curvature == "ekfac" else damping_scheme
    apply = _kronecker_apply(oracle, params, curvature, fisher, damping, scheme, bias_block, samples, seed, labels,
                             output_grad_scale, kfac_approx, conv_row_scale)

    def half(v):
        return _flat_layers(apply(_layer_matrices(v, params), -0.5), params)

    def product(v):
        x = half(v)
        return half(G.matvec(x) + mu * x)
    return CurvatureOperator(product, G.n, G.dtype, f"{curvature}-preconditioned ggn")


def make_operator(kind: str, oracle, params, **options) -> CurvatureOperator:
    """The operator of ``kind`` (``OPERATOR_KINDS``; the Fisher kinds by their names) with its ``options``."""
    kind = check_choice("kind", kind, OPERATOR_KINDS)
    if kind == "hessian":
        return hessian_operator(oracle, params, **options)
    if kind == "ggn":
        return ggn_operator(oracle, params, **options)
    if kind in FISHER_KINDS:
        return fisher_operator(oracle, params, kind, **options)
    if kind == "kfac":
        return kfac_operator(oracle, params, **options)
    if kind == "ekfac":
        return ekfac_operator(oracle, params, **options)
    return kfac_preconditioned_ggn_operator(oracle, params, **options)
