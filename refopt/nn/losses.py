"""Losses as negative log-likelihoods of the network output z (one row per example).

Every loss is ℓ_i = −log p(y_i | z_i) (up to an additive constant), reduced over the batch by
``reduction``: L = scale · Σ_i ℓ_i with

* "mean"     (the default): scale = 1/B, the per-example mean;
* "mean_all": scale = 1/(B·E), the mean over every loss entry, E entries per example (``entries(C)``:
  E = C for the Gaussian and the Bernoulli, whose ℓ_i sums one term per output; E = 1 for softmax
  cross-entropy, whose entries are the examples, so there "mean_all" is "mean"). This is torch's
  ``reduction="mean"`` of ``MSELoss`` and ``BCEWithLogitsLoss`` and curvlinops' normalisation by the
  B·C loss terms;
* "sum": scale = 1.

``scale(B, C)`` is that factor; curvature matrices of L carry it too (GGN = scale · Σ_i J_iᵀ H_i J_i, the
empirical Fisher scale · Σ_i J_iᵀ r_i r_iᵀ J_i, K-FAC's G = scale · Σ_i Dg_i Dg_iᵀ), while H_i, the output
Fisher and the label sampling belong to ℓ_i, that is to the likelihood, and do not depend on the reduction.
So torch's ``MSELoss(reduction="mean")`` = (1/(B·C)) Σ (z − y)² is ``Gaussian(variance=0.5,
reduction="mean_all")``, whose ``sample`` draws N(z, ½ I) as curvlinops does; the per-example mapping
``Gaussian(variance=C/2, reduction="mean")`` has the same value and gradient but another likelihood
(same GGN and true Fisher, but samples N(z, C/2 · I) and an empirical Fisher and EF K-FAC G
C× smaller). docs/core.md tabulates the torch and optax losses.

Each loss knows, per example and in output space:
* ``output_hessian_vp(z, y, u)``: H_i u_i with H_i = ∂²ℓ_i/∂z_i² (for the GGN); ``output_hessian`` dense;
* ``output_fisher(z)``: E_{y∼p(·|z_i)}[r rᵀ] with r = ∂ℓ_i/∂z_i, computed from the predictive
  distribution itself (enumerating classes, or the Gaussian's moments), independently of the Hessian.
  For these three likelihoods (natural parameters) it equals H_i: the true Fisher is the GGN;
* ``sample(z, seed, k)``: k label draws from the predictive distribution, on the host, by a documented
  scheme so another implementation can reproduce them (see each class).
* ``accuracy(z, y)`` (classification losses, ``has_accuracy``): the fraction of correct predictions from the
  raw outputs, no autodiff: softmax cross-entropy counts argmax_c z_ic = y_i (ties go to the lowest class,
  NumPy's argmax), the Bernoulli counts 1[z_ic > 0] = y_ic over all B·C entries (z = 0, p = ½, predicts 0);
  a non-finite output is a wrong prediction (a diverged run scores 0, not its label frequencies); the
  Gaussian has none.

+---------------------------+-------------------------------------+----------------------------------+
| loss                      | ℓ_i                                 | H_i                              |
+===========================+=====================================+==================================+
| SoftmaxCrossEntropy       | logsumexp(z_i) − z_i[y_i]           | diag(p_i) − p_i p_iᵀ, p=softmax  |
| Gaussian(variance σ²)     | ‖z_i − y_i‖² / (2σ²)                | I / σ²                           |
| Bernoulli (sigmoid CE)    | Σ_c softplus(z_ic) − y_ic z_ic      | diag(p_i (1 − p_i)), p=sigmoid   |
+---------------------------+-------------------------------------+----------------------------------+
The Gaussian omits the constant (C/2) log(2πσ²), which no derivative sees.

The reduced softmax cross-entropy is one node of the autodiff (``autodiff.softmax_cross_entropy``) instead of
the five of sum(``per_example``) / B (logsumexp, label pick, subtract, sum, divide), with that composition's
value and derivatives of every order to the bit; ``per_example`` stays the composition.
"""
from __future__ import annotations

from .. import autodiff as ad
from ..autodiff.core import getval
from ..backend import as_array, rng, xp

__all__ = ["Loss", "SoftmaxCrossEntropy", "Gaussian", "Bernoulli", "LOSSES", "REDUCTIONS", "make_loss"]

REDUCTIONS = ("mean", "mean_all", "sum")


class Loss:
    """Base class: a reduced negative log-likelihood of network outputs z of shape (batch, C)."""

    name = "loss"
    entry_per_output = True  # ℓ_i sums one term per output (Gaussian, Bernoulli); False: one per example
    has_accuracy = False  # True: ``accuracy`` counts correct predictions (classification losses)

    def __init__(self, reduction: str = "mean"):
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
        self.reduction = reduction

    def __repr__(self):
        return f"{type(self).__name__}(reduction={self.reduction!r})"

    def entries(self, outputs: int) -> int:
        """E, the loss entries per example that "mean_all" averages over: C, or 1 for one per example."""
        return outputs if self.entry_per_output else 1

    def scale(self, batch_size: int, outputs: int | None = None) -> float:
        """The reduction's factor: 1/B for "mean", 1/(B·E) for "mean_all" (E = ``entries(outputs)``), 1 for "sum".

        ``outputs`` (C) is needed only by "mean_all" of a loss with one entry per output.
        """
        if self.reduction == "mean_all":
            if outputs is None and self.entry_per_output:
                raise ValueError(f"{type(self).__name__}(reduction='mean_all').scale needs outputs=C")
            return 1.0 / (batch_size * self.entries(outputs))
        return 1.0 / batch_size if self.reduction == "mean" else 1.0

    # --- to implement -------------------------------------------------------------------------
    def per_example(self, z, y):
        """ℓ_i for every example, shape (batch,): differentiable in z."""
        raise NotImplementedError

    def check_targets(self, z, y):
        """Raise ValueError/TypeError when the targets do not fit the outputs."""
        raise NotImplementedError

    def output_hessian_vp(self, z, y, u):
        """H_i u_i for every example (unreduced), shape (batch, C)."""
        raise NotImplementedError

    def output_fisher(self, z):
        """E_{y∼p(·|z_i)}[r_i r_iᵀ], shape (batch, C, C), from the predictive distribution."""
        raise NotImplementedError

    def sample(self, z, seed, k: int = 1):
        """k label draws per example from p(·|z), stacked on a leading axis of length k."""
        raise NotImplementedError

    def accuracy(self, z, y) -> float:
        """The fraction of correct predictions of outputs z for targets y (module docs); ValueError for a loss
        without one (``has_accuracy`` False)."""
        raise ValueError(f"{type(self).__name__} has no accuracy (not a classification loss)")

    # --- shared ------------------------------------------------------------------------------
    def check_outputs(self, z):
        """Raise ValueError unless z is a finite array of shape (batch, C)."""
        zv = getval(z)
        if getattr(zv, "ndim", 0) != 2:
            raise ValueError(f"z: expected network outputs of shape (batch, C), got {ad.shape_of(z)}")
        if not bool(xp.all(xp.isfinite(zv))):
            raise ValueError("z: the network outputs given to the loss contain NaN or Inf")

    def __call__(self, z, y, check: bool = True):
        """The reduced loss L (a scalar, differentiable in z).

        ``check=False`` skips the input checks: the oracle validates targets once, and lets
        non-finite outputs at trial points through as a non-finite loss for line searches to handle.
        """
        if check:
            self.check_outputs(z)
            self.check_targets(z, y)
        total = ad.sum(self.per_example(z, y))
        B, C = ad.shape_of(z)
        if self.reduction == "mean":
            return ad.divide(total, float(B))
        return ad.divide(total, float(B * self.entries(C))) if self.reduction == "mean_all" else total

    @staticmethod
    def _check_direction(z, u):
        """An output-space direction must have z's shape: broadcasting one would change the product."""
        if ad.shape_of(u) != ad.shape_of(z):
            raise ValueError(f"u: expected shape {ad.shape_of(z)} (same as z), got {ad.shape_of(u)}")

    def output_grad(self, z, y):
        """r_i = ∂ℓ_i/∂z_i per example (unreduced), shape (batch, C), by the autodiff."""
        self.check_outputs(z)
        self.check_targets(z, y)
        return ad.grad(lambda zz: ad.sum(self.per_example(zz, y)))(z)

    def output_hessian(self, z, y=None):
        """Dense H_i per example, shape (batch, C, C), assembled from ``output_hessian_vp``."""
        B, C = ad.shape_of(z)
        eye = xp.eye(C, dtype=getval(z).dtype)
        cols = [self.output_hessian_vp(z, y, xp.broadcast_to(eye[c], (B, C))) for c in range(C)]
        return xp.stack(cols, axis=2)


class SoftmaxCrossEntropy(Loss):
    """Categorical NLL with integer labels y ∈ {0, …, C−1}.

    Sampling: for each draw and example a uniform u ∈ [0, 1) (host PCG64 from ``seed``) and the label
    is the smallest c with u < Σ_{c'≤c} p_c' (inverse CDF).
    """

    name = "softmax_cross_entropy"
    entry_per_output = False  # one entry per example, as torch's CrossEntropyLoss: "mean_all" is "mean"
    has_accuracy = True

    def accuracy(self, z, y) -> float:
        """Mean over examples of 1[argmax_c z_ic = y_i] (ties: the lowest class); y integer labels of shape (B,).
        A row with a non-finite output counts as wrong (argmax of NaN would name class 0)."""
        self.check_targets(z, y)
        zv = getval(z)
        right = (xp.argmax(zv, axis=1) == getval(y)) & xp.all(xp.isfinite(zv), axis=1)
        return float(xp.mean(right))

    def check_targets(self, z, y):
        """Require integer labels of shape (B,) in [0, C − 1]: TypeError for another dtype, else ValueError."""
        yv = getval(y)
        B, C = ad.shape_of(z)
        if not hasattr(yv, "dtype") or yv.dtype.kind not in "iu":
            raise TypeError(f"y: expected integer class labels, got {getattr(yv, 'dtype', type(yv))}")
        if yv.shape != (B,):
            raise ValueError(f"y: expected shape ({B},) to match z of shape {(B, C)}, got {tuple(yv.shape)}")
        if B and (int(yv.min()) < 0 or int(yv.max()) >= C):
            raise ValueError(f"y: labels must lie in [0, {C - 1}], got range [{int(yv.min())}, {int(yv.max())}]")

    def per_example(self, z, y):
        """ℓ_i = logsumexp(z_i) − z_i[y_i], shape (batch,)."""
        return ad.subtract(ad.logsumexp(z, axis=1), ad.take_labels(z, y))

    def __call__(self, z, y, check: bool = True):
        """The reduced loss L as one ``softmax_cross_entropy`` node (module docs: the same bits as the
        composition of ``per_example``, which a subclass that redefines ``per_example`` gets instead)."""
        if type(self).per_example is not SoftmaxCrossEntropy.per_example or self.entry_per_output:
            return super().__call__(z, y, check)
        if check:
            self.check_outputs(z)
            self.check_targets(z, y)
        # One entry per example: "mean_all" divides by B · 1, as "mean" does.
        return ad.softmax_cross_entropy(z, y, reduction="sum" if self.reduction == "sum" else "mean")

    def probabilities(self, z):
        """p_i = softmax(z_i) of the raw (untraced) outputs, shape (batch, C)."""
        return ad.softmax(getval(z), axis=1)

    def output_hessian_vp(self, z, y, u):
        """H_i u_i = p_i ⊙ u_i − p_i (p_iᵀ u_i), p = softmax(z); y is not used."""
        self._check_direction(z, u)
        p = self.probabilities(z)
        return p * u - p * xp.sum(p * u, axis=1, keepdims=True)

    def output_fisher(self, z):
        """Σ_c p_ic (p_i − e_c)(p_i − e_c)ᵀ, enumerating the C labels; shape (batch, C, C)."""
        p = self.probabilities(z)
        B, C = p.shape
        eye = xp.eye(C, dtype=p.dtype)
        r = p[:, None, :] - eye[None, :, :]          # r for label c: p − e_c, shape (B, c, C)
        return xp.einsum("bc,bci,bcj->bij", p, r, r)  # Σ_c p_c r_c r_cᵀ

    def sample(self, z, seed, k: int = 1):
        """k label sets, int64 of shape (k, batch), by the inverse CDF of softmax(z) (see the class docs)."""
        p = self.probabilities(z)
        cdf = xp.cumsum(p, axis=1)
        u = as_array(rng(seed).random((k, p.shape[0])), p.dtype)
        labels = xp.sum(cdf[None, :, :] <= u[:, :, None], axis=2)
        return xp.minimum(labels, p.shape[1] - 1).astype(xp.int64)


class Gaussian(Loss):
    """Gaussian NLL with fixed variance σ²: ℓ_i = ‖z_i − y_i‖² / (2σ²) (targets real, shape (B, C)).

    torch's ``MSELoss(reduction=r)`` is ``Gaussian(variance=0.5, reduction="mean_all" if r == "mean" else r)``.

    Sampling: y = z + σ ε with ε standard normal drawn on the host from ``seed``.
    """

    name = "gaussian"

    def __init__(self, reduction: str = "mean", variance: float = 1.0):
        super().__init__(reduction)
        if not variance > 0:
            raise ValueError(f"variance must be positive, got {variance}")
        self.variance = float(variance)

    def __repr__(self):
        return f"Gaussian(reduction={self.reduction!r}, variance={self.variance})"

    def check_targets(self, z, y):
        """Require finite real targets of exactly z's shape: TypeError for a non-float dtype, else ValueError."""
        yv = getval(y)
        if not hasattr(yv, "dtype") or yv.dtype.kind != "f":
            raise TypeError(f"y: expected real targets, got {getattr(yv, 'dtype', type(yv))}")
        if tuple(yv.shape) != ad.shape_of(z):
            raise ValueError(f"y: expected shape {ad.shape_of(z)} (same as z, no broadcasting), "
                             f"got {tuple(yv.shape)}")
        if not bool(xp.all(xp.isfinite(yv))):
            raise ValueError("y: targets contain NaN or Inf")

    def per_example(self, z, y):
        """ℓ_i = ‖z_i − y_i‖² / (2σ²), shape (batch,); untraced y is cast to z's dtype."""
        if not isinstance(y, ad.Box):  # targets in z's dtype, so a float32 model stays float32
            y = xp.asarray(y, dtype=getval(z).dtype)
        d = ad.subtract(z, y)
        return ad.divide(ad.sum(ad.multiply(d, d), axis=1), 2.0 * self.variance)

    def output_hessian_vp(self, z, y, u):
        """H_i u_i = u_i / σ² (y is not used)."""
        self._check_direction(z, u)
        return u / self.variance

    def output_fisher(self, z):
        """I / σ² for every example (E[r rᵀ], r = (z − y)/σ², y ∼ N(z, σ²I)); shape (batch, C, C)."""
        B, C = ad.shape_of(z)
        # E[r rᵀ] with r = (z − y)/σ², y − z ∼ N(0, σ² I): σ² I / σ⁴.
        return xp.broadcast_to(xp.eye(C, dtype=getval(z).dtype) / self.variance, (B, C, C)).copy()

    def sample(self, z, seed, k: int = 1):
        """k target sets y = z + σ ε, shape (k, batch, C), ε standard normal from ``seed``."""
        zv = getval(z)
        eps = as_array(rng(seed).standard_normal((k,) + tuple(zv.shape)), zv.dtype)
        return zv[None] + (self.variance ** 0.5) * eps


class Bernoulli(Loss):
    """Independent Bernoulli NLL on logits (sigmoid cross-entropy); targets in {0, 1}, shape (B, C).

    torch's ``BCEWithLogitsLoss(reduction=r)`` is ``Bernoulli("mean_all" if r == "mean" else r)``.

    Sampling: y = 1[u < sigmoid(z)] with u uniform on [0, 1) drawn on the host from ``seed``.
    """

    name = "bernoulli"
    has_accuracy = True

    def accuracy(self, z, y) -> float:
        """Mean over all B·C entries of 1[1[z_ic > 0] = y_ic]; y 0/1 targets of z's shape. A non-finite output
        counts as wrong (NaN > 0 is False, which would predict 0)."""
        self.check_targets(z, y)
        zv = getval(z)
        return float(xp.mean(((zv > 0) == (getval(y) == 1)) & xp.isfinite(zv)))

    def check_targets(self, z, y):
        """Require 0/1 targets of exactly z's shape with a float, int or bool dtype (else ValueError / TypeError)."""
        yv = getval(y)
        if not hasattr(yv, "dtype") or yv.dtype.kind not in "fiub":
            raise TypeError(f"y: expected 0/1 targets, got {getattr(yv, 'dtype', type(yv))}")
        if tuple(yv.shape) != ad.shape_of(z):
            raise ValueError(f"y: expected shape {ad.shape_of(z)} (same as z), got {tuple(yv.shape)}")
        if not bool(xp.all((yv == 0) | (yv == 1))):
            raise ValueError("y: Bernoulli targets must be 0 or 1")

    def per_example(self, z, y):
        """ℓ_i = Σ_c softplus(z_ic) − y_ic z_ic, shape (batch,)."""
        yf = xp.asarray(getval(y), dtype=getval(z).dtype)
        return ad.sum(ad.subtract(ad.softplus(z), ad.multiply(yf, z)), axis=1)

    def probabilities(self, z):
        """p = sigmoid(z) of the raw (untraced) outputs, shape (batch, C)."""
        return ad.sigmoid(getval(z))

    def output_hessian_vp(self, z, y, u):
        """H_i u_i = p_i (1 − p_i) ⊙ u_i, p = sigmoid(z); y is not used."""
        self._check_direction(z, u)
        p = self.probabilities(z)
        return p * (1.0 - p) * u

    def output_fisher(self, z):
        """diag(p_i (1 − p_i)) per example, by enumerating y_c ∈ {0, 1}; shape (batch, C, C)."""
        # r = p − y with independent coordinates: E[r_c r_d] = 0 for c ≠ d and p(1−p) on the diagonal,
        # computed by enumerating y_c ∈ {0, 1}: p (p − 1)² + (1 − p) p² = p (1 − p).
        p = self.probabilities(z)
        var = p * (p - 1.0) ** 2 + (1.0 - p) * p ** 2
        B, C = p.shape
        out = xp.zeros((B, C, C), dtype=p.dtype)
        idx = xp.arange(C)
        out[:, idx, idx] = var
        return out

    def sample(self, z, seed, k: int = 1):
        """k target sets y = 1[u < sigmoid(z)], shape (k, batch, C) in z's dtype (see the class docs)."""
        p = self.probabilities(z)
        u = as_array(rng(seed).random((k,) + tuple(p.shape)), p.dtype)
        return (u < p[None]).astype(p.dtype)


LOSSES = {"softmax_cross_entropy": SoftmaxCrossEntropy, "gaussian": Gaussian, "bernoulli": Bernoulli}


def make_loss(name: str, **kwargs) -> Loss:
    """A loss by name (``LOSSES`` lists them)."""
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; choose from {sorted(LOSSES)}")
    return LOSSES[name](**kwargs)
