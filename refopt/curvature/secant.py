"""Secant updates of inverse curvature factors: BFGS, L-BFGS and K-BFGS's pairs (Goldfarb, Ren & Bahamou 2020).

    BFGS inverse update   H⁺ = (I − ρ s yᵀ) H (I − ρ y sᵀ) + ρ s sᵀ,  ρ = 1/sᵀy     (N&W eq. 6.17; H⁺y = s)
    double damping        Powell on H (μ₁), then Levenberg–Marquardt on H⁻¹ (μ₂):  s̃ᵀỹ ≥ μ₂ s̃ᵀs̃ > 0
    L-BFGS product        V H by the two-loop recursion from H₀ = γ₀ I                (N&W Alg. 7.4)
    pre-activation pair   s_g = mean_i s_i(θ⁺) − mean_i s_i(θ),  y_g = Σ_i Δg_i        (K-BFGS's H_g)
    Hessian-action pair   s_a = H_a ā̄,  y_a = (Â + √λ I) s_a                            (K-BFGS's H_a)

The BFGS inverse update is the one the dense quasi-Newton methods use too (``optim/quasi_newton.py``
imports it); ``bfgs_factor_update`` is K-BFGS's guarded, symmetrized form. ``optim/kbfgs.py`` derives the
rest; layers as in ``kronecker`` (W̄ = [W; b], ā = [a, 1]).
"""
from __future__ import annotations

import math

from ..backend import xp
from ..linalg import symmetrize
from . import kronecker as K

__all__ = ["bfgs_inverse_update", "bfgs_factor_update", "double_damping", "lbfgs_apply", "secant_pair",
           "hessian_action_update"]


def double_damping(s, y, Hy, mu1: float, mu2: float):
    """(s̃, ỹ, θ₁, θ₂): Powell damping on H then Levenberg–Marquardt damping on H⁻¹ (``optim/kbfgs.py``)."""
    sy, yHy = float(xp.dot(s, y)), float(xp.dot(y, Hy))
    theta1 = (1.0 - mu1) * yHy / (yHy - sy) if sy < mu1 * yHy else 1.0
    s_t = theta1 * s + (1.0 - theta1) * Hy
    ss, sy_t = float(xp.dot(s_t, s_t)), float(xp.dot(s_t, y))
    theta2 = (1.0 - mu2) * ss / (ss - sy_t) if sy_t < mu2 * ss else 1.0
    return s_t, theta2 * y + (1.0 - theta2) * s_t, theta1, theta2


def bfgs_inverse_update(H, s, y):
    """BFGS on the inverse, N&W (6.17), expanded: H − ρ(s(Hy)ᵀ + (Hy)sᵀ) + (ρ² yᵀHy + ρ) s sᵀ, ρ = 1/yᵀs.

    No check of the curvature condition: the dense quasi-Newton methods (``optim/quasi_newton.py``) ensure
    sᵀy > 0 themselves, K-BFGS goes through ``bfgs_factor_update``."""
    rho = 1.0 / float(xp.vdot(y, s))
    Hy = H @ y
    yHy = float(xp.vdot(y, Hy))
    return H - rho * (xp.outer(s, Hy) + xp.outer(Hy, s)) + (rho * rho * yHy + rho) * xp.outer(s, s)


def bfgs_factor_update(H, s, y):
    """K-BFGS's update of an inverse factor: H unchanged unless sᵀy > 0 and finite, else the symmetrized
    ``bfgs_inverse_update`` (the factor is updated every step, so roundoff asymmetry would accumulate)."""
    sy = float(xp.dot(s, y))
    if not (sy > 0 and math.isfinite(sy)):
        return H
    return symmetrize(bfgs_inverse_update(H, s, y))


def lbfgs_apply(V, S, Y, gamma0: float = 1.0):
    """V H for the L-BFGS inverse H of the pairs (rows of S, Y, oldest first) from H₀ = γ₀ I.

    ``V`` is a vector or a matrix whose rows are each multiplied (H is symmetric): the two-loop
    recursion (Nocedal & Wright, Algorithm 7.4) run on all rows at once.
    """
    q = V[None, :] if V.ndim == 1 else V
    m = S.shape[0]
    rho = [1.0 / float(xp.dot(S[j], Y[j])) for j in range(m)]
    alpha = [None] * m
    for j in reversed(range(m)):
        alpha[j] = rho[j] * (q @ S[j])
        q = q - alpha[j][:, None] * Y[j][None, :]
    r = gamma0 * q
    for j in range(m):
        beta = rho[j] * (r @ Y[j])
        r = r + (alpha[j] - beta)[:, None] * S[j][None, :]
    return r[0] if V.ndim == 1 else r


def secant_pair(inputs_old, inputs_new, layer_old: dict, layer_new: dict, g_old, g_new):
    """(s_g, y_g, mean ā at θ): s_g = mean_i s_i(θ⁺) − mean_i s_i(θ) (mean s = mean(ā) W̄), y_g = Σ_i Δg_i."""
    abar_old = xp.mean(K.augment(inputs_old), axis=0)
    abar_new = xp.mean(K.augment(inputs_new), axis=0)
    s = abar_new @ K.layer_matrix(layer_new) - abar_old @ K.layer_matrix(layer_old)
    y = xp.sum(g_new, axis=0) - xp.sum(g_old, axis=0)
    return s, y, abar_old


def hessian_action_update(H_a, A_damped, abar):
    """H_a's BFGS update with the Hessian-action pair s_a = H_a ā̄, y_a = (Â + √λ I) s_a."""
    s_a = H_a @ abar
    return bfgs_factor_update(H_a, s_a, A_damped @ s_a)
