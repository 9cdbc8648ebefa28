"""Random diagonal estimators, each reproducible from a seed or injected draws.

* Hutchinson (1990): diag(H) = E_z[z ⊙ (H z)] for probes with E[z zᵀ] = I. Rademacher probes
  (±1, the default) or Gaussian. With k probes the estimate is (1/k) Σ_j z_j ⊙ (H z_j).
* Gauss-Newton-Bartlett (Sophia, Liu et al. 2023, Algorithm 2): draw ŷ_i ∼ p(·|x_i) and let ĝ be the
  gradient of the reduced loss at those labels. Since E[r̂] = 0 under the model, E[ĝ ĝᵀ] =
  scale² Σ_i J_iᵀ E[r̂ r̂ᵀ] J_i = scale · GGN, so ĥ = ĝ ⊙ ĝ / scale estimates diag(GGN) without bias:
  ĥ = B · ĝ ⊙ ĝ for mean reduction (Sophia's formula), B·C · ĝ ⊙ ĝ for mean_all, ĝ ⊙ ĝ for sum.

Probe layout (for injecting draws): a probe is a tree shaped like the parameters. Drawn from a seed,
the k probes come from one host Generator: for j = 1..k, for each parameter leaf in tree order, one
array of that leaf's shape (row-major).
"""
from __future__ import annotations

from .. import autodiff as ad
from .. import tree as T
from ..backend import normal, rademacher, rng
from .products import network_vjp, sampled_output_grads

__all__ = ["draw_probes", "hutchinson_diagonal", "gnb_diagonal", "gnb_from_pullback", "PROBE_DISTRIBUTIONS"]

PROBE_DISTRIBUTIONS = ("rademacher", "gaussian")


def draw_probes(like, seed, k=1, distribution="rademacher"):
    """k probe trees shaped like ``like``, drawn on the host from ``seed`` (see module docs)."""
    if distribution not in PROBE_DISTRIBUTIONS:
        raise ValueError(f"distribution must be one of {PROBE_DISTRIBUTIONS}, got {distribution!r}")
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    gen = rng(seed)
    draw = rademacher if distribution == "rademacher" else normal
    leaves, treedef = T.flatten(like)
    return [T.unflatten(treedef, [draw(gen, l.shape, l.dtype) for l in leaves]) for _ in range(k)]


def hutchinson_diagonal(f, x, probes):
    """(1/k) Σ_j z_j ⊙ (∇²f(x) z_j) for the given probe trees; the gradient is recorded once."""
    if len(probes) < 1:
        raise ValueError("probes: expected at least one probe tree")
    _, hv = ad.hvp_operator(f, x)
    total = None
    for z in probes:
        d = T.tree_map2(lambda a, b: a * b, z, hv(z))
        total = d if total is None else T.add(total, d)
    return T.scale(1.0 / len(probes), total)


def gnb_diagonal(model, loss, params, X, labels):
    """Gauss-Newton-Bartlett estimate ĝ ⊙ ĝ / scale from one set of sampled ``labels``.

    With several label sets (a leading axis of length k), the k estimates are averaged. One forward
    pass is recorded for all of them: ĝ_j = Jᵀ (scale · r̂_j), one pullback per label set.
    """
    z, pullback = network_vjp(model, params, X)
    return gnb_from_pullback(loss, z, pullback, labels)


def gnb_from_pullback(loss, z, pullback, labels):
    """``gnb_diagonal`` from a recorded forward pass: its outputs z and pullback u ↦ Jᵀu (``network_vjp``), so
    that a caller who records one pass for something else (the gradient, the draw of ``labels`` from z)
    needs no second one."""
    scale = loss.scale(*ad.shape_of(z))
    total = None
    for r in sampled_output_grads(loss, z, labels):
        g = pullback(scale * r)
        h = T.tree_map(lambda a: a * a / scale, g)
        total = h if total is None else T.add(total, h)
    return T.scale(1.0 / len(labels), total)
