"""Small linear-algebra kernels shared by the optimizers.

* ``cg``: conjugate gradient on a symmetric operator given as a product, over trees or vectors, with
  Tikhonov damping (M + λI) and a report of negative curvature (Nocedal & Wright, Algorithm 5.2).
* ``sym_matrix_power``: A^p for symmetric positive semi-definite A by eigendecomposition, with ε
  either added to A before the root (``eps_mode="add"``: (A + εI)^p) or used as a floor on the
  eigenvalues (``eps_mode="floor"``: Q max(Λ, ε)^p Qᵀ).
* ``symmetrize`` and ``shifted_symmetric``: ½(A + Aᵀ) and ½(A + Aᵀ) + sI, each one fresh array.
* ``damped_solve``: (A + λI)⁻¹ b by Cholesky, raising a clear error when A + λI is not positive definite.
* ``cholesky``: the Cholesky factor, or None when the matrix is not (numerically) positive definite, on
  NumPy (which raises) and CuPy alike (cuSOLVER reports failure only in a status CuPy ignores by default,
  and returns a finite partial factor with a non-positive pivot).
"""
from __future__ import annotations

from typing import Callable, NamedTuple

from . import tree as T
from .backend import xp

__all__ = ["CGResult", "cg", "sym_matrix_power", "damped_solve", "symmetrize", "shifted_symmetric", "cholesky"]


class CGResult(NamedTuple):
    """What ``cg`` returns: the approximate solution, iterations, final residual norm and stopping status."""

    x: object               # the approximate solution (tree or array, like b)
    iterations: int
    residual_norm: float
    status: str             # "converged", "max_iterations", "negative_curvature"


def cg(matvec: Callable, b, x0=None, damping: float = 0.0, tol: float = 1e-10, atol: float = 0.0,
       maxiter: int | None = None) -> CGResult:
    """Solve (M + λI) x = b for symmetric M given as ``matvec``; stops when ‖r‖ ≤ max(tol‖b‖, atol).

    On a direction p with pᵀ(M + λI)p ≤ 0 it stops and returns the current iterate with status
    "negative_curvature" (the caller decides what that means; for a positive definite M it does not
    happen).
    """
    if damping < 0:
        raise ValueError(f"damping must be non-negative, got {damping}")

    def A(v):
        Mv = matvec(v)
        return T.axpy(damping, v, Mv) if damping else Mv

    x = T.zeros_like(b) if x0 is None else x0
    r = T.sub(b, A(x)) if x0 is not None else b
    p = r
    rr = float(T.vdot(r, r))
    bnorm = float(T.vdot(b, b)) ** 0.5
    threshold = max(tol * bnorm, atol)
    n = T.size(b)
    maxiter = n if maxiter is None else maxiter
    it = 0
    status = "max_iterations"
    while it < maxiter:
        if rr ** 0.5 <= threshold:
            status = "converged"
            break
        Ap = A(p)
        pAp = float(T.vdot(p, Ap))
        if pAp <= 0:
            status = "negative_curvature"
            break
        alpha = rr / pAp
        x = T.axpy(alpha, p, x)
        r = T.axpy(-alpha, Ap, r)
        rr_new = float(T.vdot(r, r))
        p = T.axpy(rr_new / rr, p, r)
        rr = rr_new
        it += 1
    else:
        if rr ** 0.5 <= threshold:
            status = "converged"
    return CGResult(x, it, rr ** 0.5, status)


def _check_square(A) -> None:
    if getattr(A, "ndim", 0) != 2 or A.shape[0] != A.shape[1]:
        raise ValueError(f"A: expected a square matrix, got shape {tuple(getattr(A, 'shape', ()))}")


def symmetrize(A):
    """½(A + Aᵀ), the symmetric part of a square matrix A (a fresh array; the ½ applied in place)."""
    S = A + A.T
    S *= 0.5
    return S


def shifted_symmetric(A, shift: float):
    """½(A + Aᵀ) + shift·I as one fresh array: the shift added to the diagonal in place, which rounds as the
    sum with shift·I does (off the diagonal that sum adds 0)."""
    S = symmetrize(A)
    xp.reshape(S, (-1,))[::S.shape[0] + 1] += shift
    return S


def sym_matrix_power(A, p: float, eps: float = 0.0, eps_mode: str = "add"):
    """A^p for symmetric PSD ``A`` via A = QΛQᵀ; see the module docs for ``eps_mode``."""
    if eps_mode not in ("add", "floor"):
        raise ValueError(f"eps_mode must be 'add' or 'floor', got {eps_mode!r}")
    _check_square(A)
    if not eps >= 0:
        raise ValueError(f"eps must be non-negative, got {eps}")
    lam, Q = xp.linalg.eigh(symmetrize(A))
    if eps_mode == "add":
        lam = lam + eps
    else:
        lam = xp.maximum(lam, eps)
    lam = xp.maximum(lam, 0.0)  # roundoff can make a PSD matrix's smallest eigenvalue slightly negative
    if p < 0 and bool(xp.any(lam <= 0)):
        raise ValueError("sym_matrix_power: a negative power of a singular matrix; use eps > 0")
    return (Q * lam ** p) @ Q.T


def cholesky(M):
    """Lower-triangular L with L Lᵀ = M, or None when M is not numerically positive definite.

    NumPy raises LinAlgError; CuPy (cuSOLVER potrf, default "ignore" error mode) returns the lower
    triangle of a partial factorisation instead, finite and with the failing pivot (≤ 0, or NaN) on the
    diagonal. A factor is accepted only if it is finite with a positive diagonal, which catches both."""
    try:
        L = xp.linalg.cholesky(M)
    except Exception:  # numpy.linalg.LinAlgError
        return None
    ok = xp.all(xp.isfinite(L)) & xp.all(xp.diagonal(L) > 0)
    return L if bool(ok) else None  # one synchronisation on a GPU


def damped_solve(A, b, damping: float = 0.0):
    """(A + λI)⁻¹ b by Cholesky; ValueError if A + λI is not positive definite."""
    if damping < 0:
        raise ValueError(f"damping must be non-negative, got {damping}")
    _check_square(A)
    if b.shape[:1] != A.shape[:1]:
        raise ValueError(f"b: expected {A.shape[0]} rows to match A of shape {tuple(A.shape)}, got shape "
                         f"{tuple(b.shape)}")
    M = A + damping * xp.eye(A.shape[0], dtype=A.dtype) if damping else A
    L = cholesky(M)
    if L is None:
        raise ValueError(f"damped_solve: A + {damping}·I is not positive definite (Cholesky failed)")
    z = xp.linalg.solve(L, b)
    return xp.linalg.solve(L.T, z)
