"""Kronecker factors of an MLP's Fisher blocks: the statistics K-FAC and its relatives are built on.

Convention (s = a W, row-major vec). A dense layer computes s_l = a_{l-1} W_l + b_l with W_l of shape
(fan_in, fan_out). Weight and bias are treated together as W̄_l = [W_l; b_l] (the bias is the LAST row,
shape (fan_in + 1, fan_out)) and the input gets a trailing one, ā = [a, 1]. Flattened row-major,
vec(W̄_l) = [vec(W_l), b_l], which is exactly how ``refopt.tree`` flattens the layer's dict {"W", "b"};
so a layer's block of any dense curvature matrix refopt builds is indexed by vec(W̄_l).

One example's gradient of its loss ℓ_i with respect to W̄_l is the outer product ā_i Dg_iᵀ with
Dg_i = ∂ℓ_i/∂s_l, and row-major vec(u vᵀ) = u ⊗ v, so

    F_ll = scale · Σ_i E_y[(ā_i ⊗ Dg_i)(ā_i ⊗ Dg_i)ᵀ] = scale · Σ_i (ā_i ā_iᵀ) ⊗ E_y[Dg_i Dg_iᵀ]
         ≈ A_l ⊗ G_l                                   (K-FAC: expectation of a product ≈ product)

    A_l = (1/B) Σ_i ā_i ā_iᵀ                          (B = batch size)
    G_l = (B · scale) · (1/B) Σ_i E_y[Dg_i Dg_iᵀ]      (scale = 1/B "mean", 1/(B·C) "mean_all", 1 "sum")

Scaling of G with the reduction: for reduction="mean" G is the plain average of the per-example
outer products E[Dg Dgᵀ]; for "mean_all" (torch's MSELoss / BCEWithLogitsLoss mean) 1/C of that, as
curvlinops' K-FAC; for reduction="sum" it is B times that, so that in every case A ⊗ G
approximates the Fisher of the *reduced* loss L that the optimizer sees. In terms of the MLP's layer
statistics g_i = ∂L/∂s_l (gradient of the reduced loss, g_i = scale · Dg_i) this is
G_l = (1/scale) Σ_i g_i g_iᵀ. Kronecker-vector products follow the row-major rule

    (A ⊗ G) vec(V) = vec(A V Gᵀ)  =  vec(A V G) for symmetric G,

so the layer's K-FAC natural gradient is A⁻¹ ∇W̄ G⁻¹ (not G⁻¹ ∇W A⁻¹, which is the s = W a form used
by libraries with W of shape (fan_out, fan_in) and column-major vec).

What G estimates (``fisher``; names as ``refopt.curvature.FISHER_KINDS``):
* "mc" (default): labels ŷ ∼ p(·|x) sampled from the model, k label sets, averaged (Monte-Carlo true
  Fisher); one extra backward sweep per label set.
* "empirical": the data labels (the gradient's own backward pass; no extra sweep). A different matrix.
* "true": the exact expectation over labels, E_y[Dg Dgᵀ] = J_iᵀ F_out,i J_i with F_out,i the loss's
  output-space Fisher. We factor F_out,i = L_i L_iᵀ (softmax: enumerate classes, column c is
  √p_c (p − e_c); otherwise a symmetric eigen-square-root of ``loss.output_fisher``) and backpropagate
  each column: C extra sweeps.
* "curvature_prop" (Rademacher curvature propagation, Martens, Sutskever & Swersky 2012; kfac-jax's
  default ``estimation_mode="ggn_curvature_prop"``): with H_ℓ,i = L_i L_iᵀ the output Hessian of
  example i (equal to its output Fisher for the shipped likelihoods) and k sign vectors ε ∈ {±1}^C,
  drawn Rademacher, backpropagate L_i ε: E[(L ε)(L ε)ᵀ] = L E[ε εᵀ] Lᵀ = L Lᵀ, so G is unbiased for
  the GGN factor of "true" at k sweeps instead of C. L is kfac-jax's: softmax L ε = √p ⊙ ε − p (√pᵀε),
  a diagonal H_ℓ (Gaussian, Bernoulli) √diag(H_ℓ) ⊙ ε, otherwise the eigen-square-root Q √Λ.

All four are expressed the same way: a list of "probes" p, each a list over layers of (B, fan_out)
arrays g_{p,l} in the scaling of the reduced loss, such that G_l = (1/scale) Σ_p g_{p,l}ᵀ g_{p,l}
(an MC or curvature-propagation probe carries the factor 1/√k). The cross-layer factors of the block-tridiagonal variant and
the eigenbasis statistics of EKFAC are read from the same probes.

Burn-in (``factor_weight``'s ``burnin`` = n, kfac-jax's ``num_burnin_steps``): the first n estimates are
averaged with equal weights (ε_k = 1 − 1/k), as kfac-jax's WeightedMovingAverage with ema_old = ema_new = 1;
the running average then continues as if those n had weight n.

Convolutions (KFC, Grosse & Martens 2016; "expand" and "reduce" as Eschenhagen et al. 2023). A conv layer
s_l = P_l W̄_l at every location (``nn.conv``: W̄_l = [W_l.reshape(O, K)ᵀ; b_l], shape (K + 1, O), K = C·kh·kw;
vec(W̄_l) is NOT the OIHW leaf's flattening, it is vec of its transpose) has patches P (N, L, K) and g (N, L, O):

    "expand" (KFC): A = (1/(N·L)) Σ_{n,l} ā_{n,l} ā_{n,l}ᵀ,    G = (1/scale) Σ_{n,l} g_{n,l} g_{n,l}ᵀ
    "reduce":       A = (1/N) Σ_n ā_n ā_nᵀ, ā_n = mean_l ā_{n,l},  G = (1/scale) Σ_n ĝ_n ĝ_nᵀ, ĝ_n = Σ_l g_{n,l}

i.e. the N·L locations are rows of a dense layer ("expand"), or each example's patches are averaged and its
output gradients summed first ("reduce"); with L = 1 both are the dense layer's A and G above, exactly.
These are curvlinops' KFACLinearOperator(kfac_approx=...) scalings with its default loss_average="batch"
(A from the rows divided by √rows; G's rows ×N²/N for a mean loss); GM16 put the 1/L on G instead of A
(Ω = Σ_l E[āāᵀ], Γ = (1/L) Σ_l E[g gᵀ]): the same A ⊗ G, but not the same split under per-factor damping.
``conv_input_rows`` / ``conv_grad_rows`` turn the statistics into those rows; dense layers pass through.

Rows divided by L (``conv_row_scale``, ``scale_conv_factors``; K-FAC's switch): "none" (default, the
scalings above) or "inverse_locations", gpauloski/kfac-pytorch's: every row of a conv layer, the augmented
patch ā_{n,l} (the bias's 1 included) and the output gradient g_{n,l}, is divided by L before its
second moment is taken (kfac/layers/modules.py, Conv2dModuleHelper.get_a_factor / get_g_factor:
``a / spatial_size`` after ``append_bias_ones``, ``g / spatial_size``, then kfac/layers/utils.py ``get_cov``
divides by the row count N·L), so

    A = (1/(N·L)) Σ_{n,l} (ā_{n,l}/L)(ā_{n,l}/L)ᵀ = (1/L²) A_expand,   G = (1/L²) G_expand

(with output_grad_scale="reduced_loss": G = (1/(N·L³)) Σ_{n,l} g_{n,l} g_{n,l}ᵀ, kfac-pytorch's own). A ⊗ G
shrinks by L⁴ per conv layer, which moves the damping's balance layer by layer (λ is not rescaled) and, with
an identity start of the running averages, the split between A and G; dense layers (L = 1) are unchanged.

Source: Martens & Grosse 2015, sections 2-3 (Kronecker factorisation, eq. (1) and section 3.1), and
section 5 for the label sampling; Martens, Sutskever & Swersky 2012, "Estimating the Hessian by
back-propagating curvature" (ICML), for curvature propagation.
"""
from __future__ import annotations

import math
from typing import NamedTuple, Sequence

from .. import autodiff as ad
from .. import tree as T
from ..autodiff.core import getval
from ..backend import rademacher, xp

__all__ = [
    "FISHER_ESTIMATES", "FACTOR_INITS", "augment", "layer_matrix", "layer_tree", "input_factor", "grad_factor",
    "cross_input_factor", "cross_grad_factor", "kron_matvec", "dense_kron", "block_diagonal",
    "pi_correction", "output_fisher_factor", "LayerCapture", "capture_layers", "KFACStatistics",
    "kfac_statistics", "statistics_pass", "factor_weight", "OUTPUT_GRAD_SCALES", "output_hessian_sqrt_vp",
    "draw_signs", "KFAC_APPROXIMATIONS", "conv_input_rows", "conv_grad_rows", "layer_dims", "CONV_ROW_SCALES",
    "scale_conv_factors",
]

FISHER_ESTIMATES = ("mc", "empirical", "true", "curvature_prop")
OUTPUT_GRAD_SCALES = ("per_example", "reduced_loss")
FACTOR_INITS = ("mean", "debiased", "identity")
KFAC_APPROXIMATIONS = ("expand", "reduce")
CONV_ROW_SCALES = ("none", "inverse_locations")


# --- the layer as a matrix ------------------------------------------------------------------------
def augment(a):
    """ā = [a, 1]: the layer input with a trailing one for the bias, shape (B, fan_in + 1)."""
    return xp.concatenate([a, xp.ones((a.shape[0], 1), dtype=a.dtype)], axis=1)


def layer_matrix(layer: dict):
    """W̄ = [W; b] of shape (fan_in + 1, fan_out); row-major vec(W̄) is the layer's flattened params. A conv
    kernel (O, C, kh, kw) enters as W.reshape(O, K)ᵀ (module docs)."""
    W = layer["W"]
    if W.ndim == 4:
        W = W.reshape(W.shape[0], -1).T
    return xp.concatenate([W, layer["b"][None, :]], axis=0)


def layer_tree(Wbar, shape=None) -> dict:
    """The inverse of ``layer_matrix``: {"W": W̄[:-1], "b": W̄[-1]}; ``shape`` a conv kernel's (O, C, kh, kw)
    folds W̄[:-1]ᵀ back to it."""
    if shape is not None and len(shape) == 4:
        return {"W": xp.ascontiguousarray(Wbar[:-1].T).reshape(shape), "b": Wbar[-1]}
    return {"W": Wbar[:-1], "b": Wbar[-1]}


def layer_dims(W) -> tuple:
    """(fan_in, fan_out) of a layer's W: W's shape for a dense layer, (C·kh·kw, O) for a conv kernel."""
    if W.ndim == 4:
        return (W.shape[1] * W.shape[2] * W.shape[3], W.shape[0])
    return tuple(W.shape)


def conv_input_rows(a, approx: str = "expand"):
    """A layer's inputs as the rows A is formed from: a dense layer's (B, fan_in) unchanged, a conv layer's
    patches (N, L, K) as (N·L, K) ("expand") or their mean over the L locations, (N, K) ("reduce")."""
    if a.ndim == 2:
        return a
    require_approx(approx)
    return a.reshape(-1, a.shape[2]) if approx == "expand" else xp.mean(a, axis=1)


def conv_grad_rows(g, approx: str = "expand"):
    """A layer's output gradients (or probes) as the rows G is formed from: (B, fan_out) unchanged, a conv
    layer's (N, L, O) as (N·L, O) ("expand") or summed over the L locations, (N, O) ("reduce")."""
    if g.ndim == 2:
        return g
    require_approx(approx)
    return g.reshape(-1, g.shape[2]) if approx == "expand" else xp.sum(g, axis=1)


def scale_conv_factors(estimate: dict, inputs: Sequence, row_scale: str = "none") -> dict:
    """This batch's {"A": [A_l], "G": [G_l], ...} with a conv layer's A_l and G_l divided by L_l² under
    ``row_scale="inverse_locations"`` (each row ā_{n,l}, g_{n,l} ÷ L: kfac-pytorch; module docs); ``inputs``
    are the statistics' layer inputs (a conv layer's patches (N, L, K) give L). Dense layers, other statistics
    and row_scale="none" are returned as they are (the same arrays)."""
    if row_scale not in CONV_ROW_SCALES:
        raise ValueError(f"conv_row_scale must be one of {CONV_ROW_SCALES}, got {row_scale!r}"[:200])
    if row_scale == "none" or all(a.ndim == 2 for a in inputs):
        return estimate
    out = dict(estimate)
    for name in ("A", "G"):
        out[name] = [F if a.ndim == 2 else F / (a.shape[1] * a.shape[1]) for F, a in zip(estimate[name], inputs)]
    return out


def require_approx(approx) -> None:
    """ValueError naming kfac_approx unless it is "expand" or "reduce"."""
    if approx not in KFAC_APPROXIMATIONS:
        raise ValueError(f"kfac_approx must be one of {KFAC_APPROXIMATIONS}, got {approx!r}"[:200])


# --- factors ---------------------------------------------------------------------------------------
def input_factor(a):
    """A = (1/B) Σ_i ā_i ā_iᵀ from the layer inputs a (B, fan_in)."""
    abar = augment(a)
    A = abar.T @ abar   # one triangle's work: NumPy's matmul calls BLAS syrk for XᵀX
    A /= abar.shape[0]  # in place on the fresh product (the same rounding as A / B)
    return A


def cross_input_factor(a_prev, a_next):
    """A_{l,l+1} = (1/B) Σ_i ā_{l-1,i} ā_{l,i}ᵀ: inputs of layer l against inputs of layer l+1."""
    A = augment(a_prev).T @ augment(a_next)
    A /= a_prev.shape[0]
    return A


def grad_factor(probes: Sequence, scale: float, output_grad_scale: str = "per_example"):
    """G from one layer's probe gradients g_p (B, fan_out) of the reduced loss (module docs):

    * "per_example" (Martens & Grosse): G = (1/scale) Σ_p g_pᵀ g_p, i.e. the batch average of the
      per-example outer products E[Dg Dgᵀ] (times B for a sum loss), so A ⊗ G approximates the Fisher
      of the reduced loss;
    * "reduced_loss": G = (1/B) Σ_p g_pᵀ g_p, the average outer product of the rows of the reduced
      loss's backpropagated gradient (gpauloski/kfac-pytorch's get_cov(grad_output)): "per_example"
      × scale/B, i.e. 1/B² of it for a mean loss and 1/B for a sum.
    """
    if output_grad_scale not in OUTPUT_GRAD_SCALES:
        raise ValueError(f"output_grad_scale must be one of {OUTPUT_GRAD_SCALES}, got {output_grad_scale!r}")
    G = probes[0].T @ probes[0]
    for g in probes[1:]:   # ((G₁ + G₂) + G₃) + …, accumulated in place on the fresh first product
        G += g.T @ g
    G /= scale if output_grad_scale == "per_example" else probes[0].shape[0]
    return G


def cross_grad_factor(probes_l: Sequence, probes_next: Sequence, scale: float):
    """G_{l,l+1} = (1/scale) Σ_p g_{p,l}ᵀ g_{p,l+1}, shape (fan_out_l, fan_out_{l+1})."""
    G = probes_l[0].T @ probes_next[0]
    for g, h in zip(probes_l[1:], probes_next[1:]):
        G += g.T @ h
    G /= scale
    return G


def factor_weight(k: int, decay: float, init: str, burnin: int = 0) -> float:
    """ε_k in F ← ε_k F + (1 − ε_k) F̂ for the k-th estimate F̂ (k = 1, 2, ...) of a running average.

    With ``burnin`` = n > 0 the estimates k ≤ n are averaged plainly, ε_k = 1 − 1/k, and from k = n + 1
    on the rule of ``init`` continues from that mean of weight n ("debiased": the weight w_k = decay·w_{k−1}
    + 1 from w_n = n, ε_k = decay·w_{k−1} / w_k, kfac-jax's WeightedMovingAverage after its burn-in;
    "mean" and "identity": their rules below unchanged).

    * "mean" (Martens & Grosse 2015, section 5): ε_k = min(1 − 1/k, decay): the first estimate is
      taken as is, then a plain mean of the estimates so far until the weight reaches ``decay``.
    * "debiased" (zero start with bias correction, as kfac-jax's weighted moving average):
      F_k = (Σ_j decay^{k−j} (1 − decay) F̂_j) / (1 − decay^k), i.e. ε_k = decay (1 − decay^{k−1}) / (1 − decay^k).
    * "identity" (start from F_0 = I, as several PyTorch K-FACs do): ε_k = decay for every k.
    """
    if burnin and init in FACTOR_INITS:
        if k <= burnin:
            return 1.0 - 1.0 / k
        if init == "debiased":
            m = k - 1 - burnin                      # estimates since the burn-in, before this one
            w = decay ** m * burnin + (sum(decay ** j for j in range(m)))
            return decay * w / (decay * w + 1.0)
    if init == "mean":
        return min(1.0 - 1.0 / k, decay)
    if init == "debiased":
        return decay * (1.0 - decay ** (k - 1)) / (1.0 - decay ** k) if decay > 0 else 0.0
    if init == "identity":
        return decay
    raise ValueError(f"init must be one of {FACTOR_INITS}, got {init!r}")


def pi_correction(A, G) -> float:
    """π = sqrt((tr A / dim A) / (tr G / dim G)), the trace-norm choice of Martens & Grosse 2015, section 6.3.

    Damping A + πγI and G + (γ/π)I keeps the damped product unchanged when A → cA and G → G/c.
    A factor with zero (or non-finite) trace gives π = 1 (nothing to balance against).
    """
    ta = float(xp.trace(A)) / A.shape[0]
    tg = float(xp.trace(G)) / G.shape[0]
    if not (ta > 0 and tg > 0 and math.isfinite(ta) and math.isfinite(tg)):
        return 1.0
    return math.sqrt(ta / tg)


# --- dense constructions (tests, small models) -------------------------------------------------------
def kron_matvec(A, G, V):
    """(A ⊗ G) vec(V) as a matrix: A V Gᵀ (row-major vec)."""
    return A @ V @ G.T


def dense_kron(A, G):
    """A ⊗ G as a dense matrix (row-major: entry ((i,k),(j,l)) is A_ij G_kl)."""
    return xp.kron(A, G)


def block_diagonal(blocks: Sequence):
    """The dense block-diagonal matrix with the given square blocks."""
    n = sum(b.shape[0] for b in blocks)
    out = xp.zeros((n, n), dtype=blocks[0].dtype)
    i = 0
    for b in blocks:
        k = b.shape[0]
        out[i:i + k, i:i + k] = b
        i += k
    return out


# --- statistics from one forward and a few backward sweeps ------------------------------------------
def output_fisher_factor(loss, z):
    """L (B, C, K) with L_i L_iᵀ = E_y[r rᵀ] (the output-space Fisher of example i).

    Softmax cross-entropy enumerates the classes (column c = √p_c (p − e_c), K = C); other losses
    take a symmetric square root of ``loss.output_fisher(z)`` by eigendecomposition.
    """
    from ..nn.losses import SoftmaxCrossEntropy  # noqa: PLC0415 (avoid an import cycle at load time)

    if isinstance(loss, SoftmaxCrossEntropy):
        p = loss.probabilities(z)
        eye = xp.eye(p.shape[1], dtype=p.dtype)
        r = p[:, None, :] - eye[None, :, :]                  # (B, c, C): residual for label c
        return xp.swapaxes(xp.sqrt(p)[:, :, None] * r, 1, 2)  # (B, C, c)
    F = loss.output_fisher(z)
    lam, Q = xp.linalg.eigh(F)
    return Q * xp.sqrt(xp.maximum(lam, 0.0))[:, None, :]


def output_hessian_sqrt_vp(loss, z, signs):
    """L_i ε_i for every example, with L_i L_iᵀ = H_ℓ,i (the output Hessian, here the output Fisher) and
    ``signs`` ε of z's shape (B, C); the factor L is kfac-jax's (module docs), so injected signs give its
    vectors exactly."""
    from ..nn.losses import SoftmaxCrossEntropy  # noqa: PLC0415 (avoid an import cycle at load time)

    if isinstance(loss, SoftmaxCrossEntropy):
        p = loss.probabilities(z)
        sqrt_p = xp.sqrt(p)
        return sqrt_p * signs - p * xp.sum(sqrt_p * signs, axis=1, keepdims=True)
    F = loss.output_fisher(z)
    d = xp.diagonal(F, axis1=1, axis2=2)
    if bool(xp.all(F == d[:, :, None] * xp.eye(F.shape[1], dtype=F.dtype))):   # diagonal H_ℓ: √diag, no eigh
        return xp.sqrt(xp.maximum(d, 0.0)) * signs
    Lf = output_fisher_factor(loss, z)
    return xp.einsum("bck,bk->bc", Lf, signs)


def draw_signs(z, seed, k: int = 1):
    """k Rademacher sign sets ε of z's shape, (k, B, C), for curvature propagation (host-drawn from ``seed``)."""
    return rademacher(seed, (k, *z.shape), getval(z).dtype)


class LayerCapture(NamedTuple):
    """One recorded forward pass: outputs z, layer inputs a_{l-1}, and u ↦ [∂⟨u, z⟩/∂s_l]_l."""

    z: object
    inputs: list
    pullback: object


def capture_layers(model, params, X) -> LayerCapture:
    """Forward pass recording only the pre-activation perturbations, so each backward sweep costs the
    input-gradient matmuls and no weight gradients (those are formed as āᵀ g where needed)."""
    from ..nn.conv import CNN  # noqa: PLC0415 (the CNN's perturbations are (N, L, O) at conv layers)

    dtype = getval(params[0]["W"]).dtype
    shapes = model.perturbation_shapes(X.shape[0]) if isinstance(model, CNN) else \
        [(X.shape[0], n) for n in model.sizes[1:]]
    zeros = [xp.zeros(shape, dtype=dtype) for shape in shapes]
    inputs: list = []
    z, pullback = ad.vjp(lambda e: model.apply(params, X, perturbations=e, record_inputs=inputs), zeros)
    return LayerCapture(z, [getval(a) for a in inputs], pullback)


class KFACStatistics(NamedTuple):
    """What one statistics pass returns (see module docs for the probes)."""

    loss: float
    grad: list | None     # ∇L as a params tree (exact: ∇W = aᵀ g, ∇b = Σ_i g); None if not asked for
    inputs: list          # a_{l-1} (B, fan_in) per layer, without the trailing one; a conv layer's patches (N, L, K)
    output_grads: list    # g_l = ∂L/∂s_l (B, fan_out) at the data labels; a conv layer's (N, L, O)
    probes: list | None   # list over probes of lists over layers of (B, fan_out) / (N, L, O); None if not asked for
    scale: float          # the reduction's factor (1/B or 1)
    labels: object = None  # the draws behind the probes: "mc" label sets (k, ...), "curvature_prop" signs (k, B, C)
    sweeps: int = 0        # backward sweeps beyond the gradient's (one network vjp each; the oracle counts them)


def _layer_grad(a, g, shape) -> dict:
    """∇W = aᵀ g, ∇b = Σ_i g_i; a conv layer's ∇W = (Σ_{n,l} g_{n,l} P_{n,l}ᵀ) folded to OIHW, ∇b = Σ_{n,l} g_{n,l}."""
    if a.ndim == 2:
        return {"W": a.T @ g, "b": xp.sum(g, axis=0)}
    rows_a, rows_g = a.reshape(-1, a.shape[2]), g.reshape(-1, g.shape[2])
    return {"W": (rows_g.T @ rows_a).reshape(shape), "b": xp.sum(rows_g, axis=0)}


def _reduced_output_grad(loss, z, y):
    """(L, ∂L/∂z) of the reduced loss without input checks (non-finite values pass through)."""
    value, dz = ad.value_and_grad(lambda zz: loss(zz, y, check=False))(z)
    return float(getval(value)), dz


def kfac_statistics(oracle, params, fisher: str | None = "mc", samples: int = 1, seed=None,
                    labels=None, gradient: bool = True) -> KFACStatistics:
    """Loss, gradient, layer inputs and G-probes from one forward pass and 1 + (extra) backward sweeps:
    ``oracle.kfac_statistics``, which counts the pass and runs ``statistics_pass`` on its batch.

    ``fisher`` chooses the probes ("mc", "empirical", "true" or None for none). For "mc" the labels
    are ``labels`` (shape (k, ...) as ``loss.sample`` returns) if given, else
    ``oracle.sample_labels(params, seed, samples)``: injecting the labels that the seed would draw
    reproduces the seeded result exactly. ``gradient=False`` skips forming ∇W = aᵀ g (``grad`` is None)
    for a caller that needs only the layer statistics.
    """
    return oracle.kfac_statistics(params, fisher, samples, seed, labels, gradient)


def statistics_pass(model, loss, params, X, y, fisher: str | None = "mc", labels=None, sample=None,
                    gradient: bool = True) -> KFACStatistics:
    """``kfac_statistics`` on the batch (X, y), counting nothing: for "mc" without ``labels`` the label
    sets are ``sample(z)`` of the recorded outputs z (so no second forward pass is needed; the oracle's
    ``sample_labels`` with ``outputs=z``); for "curvature_prop" ``labels`` are the signs (k, B, C), or
    ``sample(z)`` draws them (``draw_signs``). ``sweeps`` in the result is the number of extra backward sweeps.
    """
    if fisher is not None and fisher not in FISHER_ESTIMATES:
        raise ValueError(f"fisher must be one of {FISHER_ESTIMATES}, got {fisher!r}")
    cap = capture_layers(model, params, X)
    scale = loss.scale(*cap.z.shape)
    value, dz = _reduced_output_grad(loss, cap.z, y)
    g = cap.pullback(dz)
    grad = [_layer_grad(a, gl, p["W"].shape) for a, gl, p in zip(cap.inputs, g, params)] if gradient else None
    probes = None
    finite = math.isfinite(value) and T.all_finite(g)
    if fisher == "empirical":
        probes = [g]
    elif fisher == "mc" and finite:
        if labels is None:
            labels = sample(cap.z)
        w = 1.0 / math.sqrt(len(labels))
        probes = []
        for yk in labels:
            swept = cap.pullback(_reduced_output_grad(loss, cap.z, yk)[1])
            probes.append(swept if w == 1.0 else [w * gl for gl in swept])   # 1·g is g: no copy for one set
    elif fisher == "curvature_prop" and finite:
        if labels is None:
            labels = sample(cap.z)
        w = scale / math.sqrt(len(labels))
        probes = [cap.pullback(w * output_hessian_sqrt_vp(loss, cap.z, eps)) for eps in labels]
    elif fisher == "true" and finite:
        Lf = output_fisher_factor(loss, cap.z)
        probes = []
        for k in range(Lf.shape[2]):
            probes.append(cap.pullback(scale * Lf[:, :, k]))
    elif fisher is not None:
        probes = [g]  # non-finite pass: the caller sees non-finite statistics and skips the update
    sweeps = len(probes) if fisher in ("mc", "true", "curvature_prop") and finite else 0
    return KFACStatistics(value, grad, cap.inputs, g, probes, scale,
                          labels if fisher in ("mc", "curvature_prop") else None, sweeps)
