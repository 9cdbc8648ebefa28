"""Curvature-vector products of a network loss L(θ) = scale · Σ_i ℓ_i(f(x_i; θ), y_i).

J is the Jacobian of the stacked outputs z = f(X; θ) (batch × C) with respect to θ; H_i is the loss's
output Hessian for example i (see ``refopt.nn.losses``). With ``scale`` = 1/B (mean), 1/(B·C) (mean_all, one
entry per output) or 1 (sum), ``loss.scale(B, C)``:

* Hessian:            H v  = ∇_θ ⟨∇_θ L, v⟩                     (forward-over-reverse autodiff)
* Gauss-Newton (GGN): G v  = Jᵀ (scale · H_ℓ (J v))             (jvp, output Hessian, vjp)
* true Fisher:        F v  = Jᵀ (scale · E_y[r rᵀ] (J v))       (exact expectation over labels)
* Monte-Carlo Fisher: F̂ v = Jᵀ (scale · (1/k) Σ_j r̂_j r̂_jᵀ (J v)), r̂_j = ∂ℓ/∂z at labels ŷ_j ∼ p(·|z)
* empirical Fisher:   F_e v = Jᵀ (scale · r rᵀ (J v)),          r at the data labels

where r = ∂ℓ_i/∂z_i. For the three likelihoods refopt ships, E_y[r rᵀ] = H_ℓ, so F = G; the
empirical Fisher is a different matrix in general. Every random product takes a ``seed`` or the
labels themselves (``labels``, shape (k, …)), so another implementation can be checked on the same draws.
"""
from __future__ import annotations

from .. import autodiff as ad
from ..backend import xp

__all__ = ["network_jvp", "network_vjp", "linearize", "hvp", "ggn_vp", "fisher_vp", "output_space_product",
           "output_space_operator", "sampled_output_grads", "FISHER_KINDS"]

FISHER_KINDS = ("true", "mc", "empirical")


def network_jvp(model, params, X, v):
    """(z, J v): outputs and their directional derivative along the parameter tangent ``v``."""
    return ad.jvp(lambda p: model.apply(p, X), params, v)


def network_vjp(model, params, X):
    """(z, u ↦ Jᵀ u): outputs and the pullback of an output cotangent (recorded once, reusable)."""
    return ad.vjp(lambda p: model.apply(p, X), params)


def linearize(model, params, X, v):
    """(z, J v, u ↦ Jᵀ u) from one forward pass that carries the tangent and records the graph.

    Cheaper than ``network_jvp`` followed by ``network_vjp``, which would run the forward pass twice.
    """
    z, pullback, Jv = ad.vjp(lambda p: ad.jvp(lambda q: model.apply(q, X), p, v), params, has_aux=True)
    return z, Jv, pullback


def hvp(model, loss, params, X, y, v):
    """Hessian-vector product of the reduced loss."""
    return ad.hvp(lambda p: loss(model.apply(p, X), y), params, v)


def output_space_operator(loss, z, y, kind="ggn", labels=None):
    """u ↦ M_i u_i per example for the output-space matrix of ``kind`` (unscaled) at outputs ``z``.

    ``kind``: "ggn" (H_i), "true" (E_y[r rᵀ] from the predictive distribution), "mc" (mean of r̂ r̂ᵀ
    over the k sampled ``labels``), "empirical" (r rᵀ at the data labels ``y``). What does not depend
    on u (E_y[r rᵀ], r, the k r̂) is computed here once, so repeated products (CG) only apply it.
    """
    if kind == "ggn":
        return lambda u: loss.output_hessian_vp(z, y, u)
    if kind == "true":
        fisher = loss.output_fisher(z)

        def true_product(u):
            loss._check_direction(z, u)
            return xp.einsum("bij,bj->bi", fisher, u)
        return true_product
    if kind == "empirical":
        r = loss.output_grad(z, y)[None]  # one label set: the data's
    elif kind == "mc":
        if labels is None:
            raise ValueError("the Monte-Carlo Fisher needs sampled labels (or a seed to draw them)")
        r = sampled_output_grads(loss, z, labels)  # (k, B, C)
    else:
        raise ValueError(f"kind must be 'ggn' or one of {FISHER_KINDS}, got {kind!r}")

    def outer_product(u):  # (1/k) Σ_j r̂_j (r̂_jᵀ u) per example
        loss._check_direction(z, u)
        return xp.mean(r * xp.sum(r * u[None], axis=2, keepdims=True), axis=0)
    return outer_product


def output_space_product(loss, z, y, u, kind="ggn", labels=None):
    """M_i u_i per example for the output-space matrix of ``kind`` (``output_space_operator`` applied once)."""
    return output_space_operator(loss, z, y, kind, labels)(u)


def sampled_output_grads(loss, z, labels):
    """r̂_j = ∂ℓ/∂z at each of the k label sets ``labels`` (shape (k, B, …)), as a (k, B, C) array.

    All k sets in one pass: the batch repeated k times. Shared by the Monte-Carlo Fisher and the
    Gauss-Newton-Bartlett estimator.
    """
    labels = xp.asarray(labels)
    B, C = ad.shape_of(z)
    if labels.ndim < 1 or labels.shape[1:2] != (B,):
        raise ValueError(f"labels: expected k label sets for a batch of {B} (shape (k, {B}, ...)), "
                         f"got shape {tuple(labels.shape)}")
    k = labels.shape[0]
    if k < 1:
        raise ValueError("labels: expected at least one label set (k ≥ 1), got k = 0")
    zk = xp.reshape(xp.broadcast_to(ad.getval(z), (k, B, C)), (k * B, C))
    return xp.reshape(loss.output_grad(zk, xp.reshape(labels, (k * B,) + labels.shape[2:])), (k, B, C))


def ggn_vp(model, loss, params, X, y, v):
    """Gauss-Newton-vector product Jᵀ (scale · H_ℓ (J v))."""
    z, Jv, pullback = linearize(model, params, X, v)
    return pullback(loss.scale(*z.shape) * loss.output_hessian_vp(z, y, Jv))


def fisher_vp(model, loss, params, X, y, v, kind="true", samples=1, seed=None, labels=None):
    """Fisher-vector product of the given ``kind`` (see module docs); "mc" uses ``labels`` if given,
    else ``samples`` draws from ``seed``."""
    if kind not in FISHER_KINDS:
        raise ValueError(f"kind must be one of {FISHER_KINDS}, got {kind!r}")
    z, Jv, pullback = linearize(model, params, X, v)
    if kind == "mc" and labels is None:
        if seed is None:
            raise ValueError("the Monte-Carlo Fisher needs seed= or labels=")
        labels = loss.sample(z, seed, samples)
    return pullback(loss.scale(*z.shape) * output_space_product(loss, z, y, Jv, kind, labels))
