"""K-FAC: Kronecker-factored approximate curvature, block-diagonal (Martens & Grosse 2015).

Each dense layer's Fisher block is approximated by A ⊗ G (``refopt.curvature.kronecker``: ā = [a, 1],
W̄ = [W; b], s = a W, row-major vec, (A ⊗ G) vec(V) = vec(A V G)), blocks of different layers are
taken as zero, and the step is (the curvature's estimate, refresh and (A ⊗ G + damping)⁻¹ are
``refopt.curvature.blocks.KroneckerBlocks``; the variants swap in another block object)

    Â ← ε_k Â + (1 − ε_k) A_t,   Ĝ ← ε_k Ĝ + (1 − ε_k) G_t       every T₁ steps (running averages)
    V_l = (Â_l ⊗ Ĝ_l + damping)⁻¹ vec(∇W̄_l)                       preconditioners refreshed every T₂ steps
    ν   = min(1, sqrt(c / (η² Σ_l ⟨V_l, ∇W̄_l⟩)))                   KL clip (Ba, Grosse & Martens 2017)
    m   ← μ m + ν V                                                 momentum on the natural gradient
    θ   ← θ − η m − η ω θ                                           weight decay ω in parameter space

Damping schemes (``damping_scheme``, λ = ``damping``, γ = √λ):
* "pi" (default; Martens & Grosse 2015, section 6.3, factored Tikhonov with the trace-norm π):
  (Â + πγ I) ⊗ (Ĝ + γ/π I), π = sqrt((tr Â/dim Â)/(tr Ĝ/dim Ĝ)); unchanged when Â → cÂ, Ĝ → Ĝ/c.
* "tikhonov" (per-factor Tikhonov, π = 1): (Â + γI) ⊗ (Ĝ + γI); NOT invariant to that rescaling.
* "eigen" (exact damping, their Appendix B / George et al. 2018): (Â ⊗ Ĝ + λI)⁻¹ through the
  eigenbases, Q_A [(Q_Aᵀ V Q_G) / (d_A d_Gᵀ + λ)] Q_Gᵀ. Needs ``inverse="eig"``.

Inverses (``inverse``): "inverse" (default, as Martens & Grosse) forms the damped inverses
(Â + πγI)⁻¹ and (Ĝ + γ/πI)⁻¹ explicitly at each refresh, with the λ of that moment (2 matmuls per
layer and step); "eig" eigendecomposes the undamped Â and Ĝ at each refresh and applies the damping
when preconditioning (4 matmuls per layer and step), so a change of λ takes effect at once, and it is
the only way to the exact "eigen" damping. Eigenvalues are clipped at 0 (roundoff).

Running averages (``decay`` = ε, ``factor_init``; see ``kronecker.factor_weight``): "mean" (default,
Martens & Grosse section 5: ε_k = min(1 − 1/k, ε), so the first estimate initialises the factors),
"debiased" (zero start, bias-corrected), "identity" (start from I, ε_k = ε).

Schedule. Step t (t = 0, 1, ...) re-estimates the factors when t % T₁ == 0 (``factor_interval``) and
refreshes the preconditioner, after the factor update of that step, when t % T₂ == 0
(``inverse_interval``); step 0 does both. The statistics come from one forward pass and the gradient's
backward sweep plus one sweep per sampled label set (``fisher="mc"``, ``samples`` sets; "empirical"
reuses the data-label sweep, "true" takes one sweep per output dimension, "curvature_prop" one per
Rademacher sign set ε of shape (B, C), backpropagating L ε with L Lᵀ = H_ℓ: Martens, Sutskever &
Swersky 2012, kfac-jax's default estimator; ``kronecker`` module docs). Labels of step t are
``loss.sample(z, [seed, t], samples)``, signs ``rademacher([seed, t], (samples, B, C))``;
``update(..., draws=...)`` injects them instead (labels, or signs for "curvature_prop": ``draws`` is
then "signs"), and ``info["draws"]`` reports those used (None on steps without draws).

Burn-in (``burnin`` = n, kfac-jax's ``num_burnin_steps``): step 0 first folds n extra estimates of the
factors into the running averages, equally weighted (``kronecker.factor_weight``), on its own batch
and at its own parameters, with the draws of seeds [seed, 0, j], j < n; injected draws of step 0 are
then the n + 1 passes' sets concatenated (burn-in first), and so is ``info["draws"]``.

Empirical-Fisher scale (``empirical_scale``): "per_example" (default: the empirical G scaled as the
other estimators', the batch average of the per-example outer products) or "batch" (G × scale, i.e.
G = Σ_i g_i g_iᵀ of the reduced loss's rows g_i = scale · Dg_i: kfac-jax's ``fisher_empirical`` divides
the vjp of its loss (weight/B) Σ ℓ_i, weight = B · scale, by √B on top of its blocks' 1/B; so G ÷ B for a
mean loss, (1/(B·C)) G for "mean_all" and G unchanged for a sum; measured against kfac-jax 0.0.8 by
scripts/verify_with_kfac_jax.py). Only with ``fisher="empirical"``.

Levenberg–Marquardt (``adapt_damping``; Martens & Grosse section 6.5): every ``damping_interval``
steps, ρ = (L(θ⁺) − L(θ)) / (∇Lᵀδ + ½ δᵀFδ) with F the exact Fisher of the batch (one Fisher-vector
product and one loss value); λ ← ω λ if ρ > 3/4, λ ← λ/ω if ρ < 1/4, ω = (19/20)^interval; a step the
quadratic model itself predicts to go uphill counts as ρ = −∞. (The paper numbers its periods
differently; here T₁ is the factor period and T₂ the inverse period, as in most libraries.)

Weight decay (``weight_decay_mode``): "decoupled" (default; in parameter space, outside the
preconditioner, as the source article says) or "l2" (ω θ added to the gradient before preconditioning).

Scaling of G (``output_grad_scale``, ``kronecker.grad_factor``): "per_example" (default, Martens &
Grosse: G averages the outer products of the per-example output gradients ∂ℓ_i/∂s, so A ⊗ G
approximates the Fisher of the reduced loss) or "reduced_loss" (G averages the outer products of the
rows of the reduced loss's backpropagated gradient ∂L/∂s_i: gpauloski/kfac-pytorch; that G is the
default's × scale/B, B² times smaller for a mean loss, which changes the step unless the damping is
scaled with it).

Weight and bias (``bias_block``): "joint" (default, Martens & Grosse: one block for W̄ = [W; b] with
ā = [a, 1]) or "separate" (f-dangel/curvlinops' default separate_weight_and_bias=True: a block
A ⊗ G for W with A = (1/B) Σ a aᵀ, and a block G for b — the bias's Fisher block needs no
Kronecker approximation). The one-factor bias block is damped as its G factor is in the weight block:
(G + γI)⁻¹ for "tikhonov", (G + λI)⁻¹ for "eigen" (exact); "separate" does not support "pi" (π balances
two factors; curvlinops' heuristic damping also needs two).

Convolutions (``kfac_approx``; KFC, Grosse & Martens 2016, and Eschenhagen et al. 2023): a conv layer's block
is A ⊗ G over W̄ = [W.reshape(O, K)ᵀ; b] with A, G from its patches and spatial output gradients, "expand"
(default: the locations as extra rows, A = (1/(N·L)) Σ āāᵀ, G = (1/scale) Σ_{n,l} g gᵀ) or "reduce" (patches
averaged and gradients summed per example); ``kronecker`` module docs. Dense layers are unaffected, so the
switch changes nothing on an MLP. ``conv_row_scale``: "none" (default) or "inverse_locations"
(gpauloski/kfac-pytorch, kfac/layers/modules.py Conv2dModuleHelper: each patch row, bias 1 included, and each
output-gradient row divided by the L locations before the second moment, so a conv layer's A and G are 1/L²
of the above; ``kronecker.scale_conv_factors``); nothing changes on dense layers either. With
``output_grad_scale="reduced_loss"``, ``damping_scheme="eigen"`` and ``factor_init="identity"`` this is
kfac-pytorch's KFACPreconditioner on Conv2d layers (scripts/verify_with_kfac_pytorch.py).

Bad statistics: non-finite factor estimates skip the factor update and keep the old factors (info
says so); with no factors yet (first estimate, except ``factor_init="identity"``) the step is refused.
A non-finite loss or gradient refuses the step. Not implemented from the paper: the re-scaling and
momentum chosen by the exact quadratic model (section 7) — the KL clip replaces it, as in Ba et al.

``schedule`` (default None: constant; ``optim/schedules.py``) replaces η by η_t, t = the steps taken, in the
KL clip, the step and the decay; at η_t = 0 the clip and the Levenberg–Marquardt adaptation are skipped
(there is no step to measure).

Cost per step: the statistics pass (one forward pass, the gradient's sweep and one sweep per label set),
the factor products āᵀā and gᵀg (symmetric: BLAS syrk), two products per layer for A⁻¹ ∇W̄ G⁻¹ and, every
T₂ steps, the factors' inverses or eigendecompositions; the running averages and the step's tail (momentum,
decay, θ + δ) run chunk by chunk (``update_rules.chunks``). ``scripts/bench_kfac.py`` derives the flop bound.
"""
from __future__ import annotations

import math
from typing import NamedTuple

from .. import tree as T
from ..backend import xp
from ..curvature import kronecker as K
from ..curvature.blocks import BIAS_BLOCKS, DAMPING_SCHEMES, INVERSE_METHODS, KroneckerBlocks
from ..serialize import register_state
from .base import (MAX_DRAWS, MAX_SEED, Optimizer, Switch, check_int, check_nonnegative, check_positive,
                   check_unit_interval, refuse, step_info)
from .update_rules import WEIGHT_DECAY_MODES, chunks, ema_into, flat, l2_decay

__all__ = ["KFAC", "KFACState", "WEIGHT_DECAY_CHOICES", "FACTOR_INIT", "FISHER", "WEIGHT_DECAY_MODE",
           "ADAPT_DAMPING", "KFAC_APPROX", "CONV_ROW_SCALE", "oracle_needs", "draws_kind"]

# update_rules' modes with "decoupled" (the source article's) first: the order of a Switch's choices decides
# ties in the convention search, so the K-FAC family keeps it.
WEIGHT_DECAY_CHOICES = tuple(sorted(WEIGHT_DECAY_MODES, key=lambda mode: mode != "decoupled"))

# The switches the K-FAC family shares (the variants and K-BFGS list them in their own ``conventions``).
FACTOR_INIT = Switch("factor_init", K.FACTOR_INITS, "mean",
                     "start of the running factor averages: the first estimate, a bias-corrected zero start, or I",
                     "Martens & Grosse 2015 §5 (mean)")
FISHER = Switch("fisher", K.FISHER_ESTIMATES, "mc",
                "the G statistics: labels sampled from the model, the data labels, the exact expectation, or "
                "Rademacher curvature propagation (backpropagated L ε, L Lᵀ = H_ℓ)",
                "Martens & Grosse 2015 (mc); curvlinops fisher_type 'mc' / 'empirical' / 'type-2' (true); "
                "Martens, Sutskever & Swersky 2012, kfac-jax's default ggn_curvature_prop (curvature_prop)")
WEIGHT_DECAY_MODE = Switch("weight_decay_mode", WEIGHT_DECAY_CHOICES, "decoupled",
                           "weight decay in parameter space after preconditioning, or as an L2 term before it",
                           "the source article (decoupled); an L2 term of the loss (l2)")


ADAPT_DAMPING = Switch("adapt_damping", (False, True), False,
                       "adapt λ every damping_interval steps by the reduction ratio ρ of the exact-Fisher model "
                       "(λ·ω if ρ > ¾, λ/ω if ρ < ¼), or keep λ fixed",
                       "Martens & Grosse 2015 §6.5 (True); kfac-jax use_adaptive_damping (default False)")


KFAC_APPROX = Switch("kfac_approx", K.KFAC_APPROXIMATIONS, "expand",
                     "conv layers: the L output locations as extra rows of A (÷ N·L) and G (summed), or each "
                     "example's patches averaged and its output gradients summed over locations first",
                     "Grosse & Martens 2016 KFC, Eschenhagen et al. 2023 (expand); Eschenhagen et al. 2023, "
                     "curvlinops kfac_approx='reduce' (reduce)")


CONV_ROW_SCALE = Switch("conv_row_scale", K.CONV_ROW_SCALES, "none",
                        "conv layers: the factors' rows as they are, or each patch row (bias 1 included) and each "
                        "output-gradient row divided by the L output locations (A and G ÷ L²)",
                        "Grosse & Martens 2016, Eschenhagen et al. 2023 (none); gpauloski/kfac-pytorch "
                        "Conv2dModuleHelper get_a_factor / get_g_factor (inverse_locations)")


def draws_kind(fisher: str):
    """What the K-FAC family draws with this Fisher type: "labels" ("mc"), "signs" ("curvature_prop") or None."""
    return {"mc": "labels", "curvature_prop": "signs"}.get(fisher)


def oracle_needs(fisher: str, adapt_damping: bool = False) -> frozenset:
    """What the K-FAC family asks of the oracle: layer statistics, model-sampled labels for
    ``fisher="mc"``, Fisher-vector products for the Levenberg–Marquardt rule."""
    return frozenset({"value", "gradient", "layer_statistics"} | ({"labels"} if fisher == "mc" else set())
                     | ({"fisher"} if adapt_damping else set()))


@register_state
class KFACState(NamedTuple):
    """K-FAC's state: step and factor-update counts, running factors, preconditioner, momentum and λ."""

    step: int              # t: updates taken so far
    factor_updates: int    # k: estimates folded into the running factors
    factors: dict          # name -> tuple over layers ("A", "G"; the tridiagonal variant adds cross factors)
    preconditioner: tuple  # per layer, from the last refresh; () before the first
    velocity: object       # m: momentum buffer on the natural gradient (a tree like params)
    damping: float         # λ (changed only by the Levenberg–Marquardt rule)


def _tail(m, n, x, mu: float, lr: float, c: float, keep_delta: bool = False):
    """(m', θ', ‖δ‖², δ) of one leaf: m' = μm + n (n itself when μ = 0), δ = −η·m' (+ cθ), θ' = θ + δ, each in the
    rounding order of ``momentum``, ``tree.scale``, ``decoupled_decay`` and ``tree.add``, run chunk by chunk
    (``update_rules.chunks``) into the fresh m' and θ' (so ‖δ‖² is summed chunk by chunk). δ is a scratch
    buffer, returned (whole) only with ``keep_delta`` (the Levenberg–Marquardt rule reads it), else None."""
    vel = xp.empty(n.shape, dtype=xp.result_type(m, n)) if mu else n
    new = xp.empty(x.shape, dtype=x.dtype)
    Vf, N, mf, nf, xf = flat(vel), flat(new), flat(m), flat(n), flat(x)
    pieces = chunks(N.size)
    delta = xp.empty(x.shape, dtype=x.dtype) if keep_delta else None
    d_all = flat(delta) if keep_delta else xp.empty(pieces[0].stop, dtype=x.dtype)
    sq = 0.0
    for sl in pieces:
        d = d_all[sl] if keep_delta else d_all[:sl.stop - sl.start]
        if mu:
            vs = xp.multiply(mf[sl], mu, out=Vf[sl])
            vs += nf[sl]                                  # μm + n
        xp.multiply(Vf[sl] if mu else nf[sl], -lr, out=d)  # δ = −η m'
        if c:
            d += c * xf[sl]
        sq += float(xp.vdot(d, d))
        xp.add(d, xf[sl], out=N[sl])                      # θ + δ
    return vel, new, sq, delta


def _check_params(params) -> None:
    if not isinstance(params, (list, tuple)) or not params or not all(
            isinstance(p, dict) and set(p) == {"W", "b"} for p in params):
        raise ValueError("params: K-FAC needs network parameters, a list of {'W', 'b'} layer dicts")


class KFAC(Optimizer):
    """Block-diagonal K-FAC (see module docs for every switch)."""

    name = "kfac"
    conventions = (
        Switch("damping_scheme", DAMPING_SCHEMES, "pi",
               "λ split between the factors by π, √λ on each factor, or exact (A ⊗ G + λI)⁻¹ in the eigenbases",
               "Martens & Grosse 2015 §6.3 (pi), App. B and George et al. 2018 (eigen); per-factor √λ (tikhonov)"),
        Switch("inverse", INVERSE_METHODS, "inverse",
               "damped factor inverses formed at each refresh, or eigendecompositions of the undamped factors, "
               "damped at each step so that a change of λ acts at once (roundoff only; eigen needs eig)",
               "Martens & Grosse 2015 (inverse); kfac-pytorch's compute_method 'eigen' (eig)"),
        FACTOR_INIT,
        FISHER,
        WEIGHT_DECAY_MODE,
        Switch("output_grad_scale", K.OUTPUT_GRAD_SCALES, "per_example",
               "G from per-example output gradients, or from the rows of the reduced loss's gradient (G × scale/B)",
               "Martens & Grosse 2015 (per_example); gpauloski/kfac-pytorch (reduced_loss)"),
        Switch("bias_block", BIAS_BLOCKS, "joint",
               "one Kronecker block for [W; b], or A ⊗ G for W (A = (1/B) Σ aaᵀ) and G alone for b, damped by √λ "
               "under tikhonov and λ under eigen (pi refused)",
               "Martens & Grosse 2015 (joint); curvlinops separate_weight_and_bias=True (separate)"),
        ADAPT_DAMPING,
        Switch("empirical_scale", ("per_example", "batch"), "per_example",
               "the empirical G as the other estimators' (batch average of per-example outer products), or × "
               "scale (÷ B for a mean loss; only with fisher='empirical')",
               "Martens & Grosse 2015 (per_example); kfac-jax fisher_empirical, vjp ÷ √B (batch)"),
        KFAC_APPROX,
        CONV_ROW_SCALE,
    )
    requires = oracle_needs("mc")   # with the default arguments; __init__ sets it from fisher and adapt_damping
    draws = "labels"                # "mc" label sets, "curvature_prop" signs, else None (__init__, draws_kind)
    gradient_in_reason = ("it needs the network's per-layer statistics (layer inputs, output gradients, sampled "
                          "labels) for its Kronecker factors: use a network Oracle")

    def __init__(self, lr: float = 0.1, damping: float = 1e-3, momentum: float = 0.9, decay: float = 0.95,
                 factor_init: str = "mean", factor_interval: int = 1, inverse_interval: int = 20,
                 inverse: str = "inverse", damping_scheme: str = "pi", kl_clip: float | None = 1e-3,
                 weight_decay: float = 0.0, weight_decay_mode: str = "decoupled", fisher: str = "mc",
                 samples: int = 1, seed: int = 0, adapt_damping: bool = False, damping_interval: int = 5,
                 output_grad_scale: str = "per_example", bias_block: str = "joint", burnin: int = 0,
                 empirical_scale: str = "per_example", schedule=None, kfac_approx: str = "expand",
                 conv_row_scale: str = "none"):
        self.lr = check_positive("lr", lr)
        self.set_schedule(schedule)
        self.damping = check_positive("damping", damping)
        self.momentum = check_unit_interval("momentum", momentum)
        self.decay = check_unit_interval("decay", decay)
        self.set_switch("factor_init", factor_init)
        self.factor_interval = check_int("factor_interval", factor_interval)
        self.inverse_interval = check_int("inverse_interval", inverse_interval)
        self.set_switch("inverse", inverse)
        self.set_switch("damping_scheme", damping_scheme)
        if self.damping_scheme == "eigen" and self.inverse != "eig":
            raise ValueError("damping_scheme='eigen' needs inverse='eig' (the eigenbases give (A⊗G + λI)⁻¹)")
        self.kl_clip = None if kl_clip is None else check_positive("kl_clip", kl_clip)
        self.weight_decay = check_nonnegative("weight_decay", weight_decay)
        self.set_switch("weight_decay_mode", weight_decay_mode)
        self.set_switch("fisher", fisher)
        self.samples = check_int("samples", samples, maximum=MAX_DRAWS)
        self.seed = check_int("seed", seed, minimum=0, maximum=MAX_SEED)
        self.set_switch("adapt_damping", adapt_damping)
        self.damping_interval = check_int("damping_interval", damping_interval)
        self.set_switch("output_grad_scale", output_grad_scale)
        self.set_switch("bias_block", bias_block)
        self.burnin = check_int("burnin", burnin, minimum=0, maximum=MAX_DRAWS - 1)
        if (self.burnin + 1) * self.samples > MAX_DRAWS:
            raise ValueError(f"burnin: step 0 would draw (burnin + 1) · samples > {MAX_DRAWS} sets")
        self.set_switch("empirical_scale", empirical_scale)
        if self.empirical_scale == "batch" and self.fisher != "empirical":
            raise ValueError("empirical_scale='batch' needs fisher='empirical' (it rescales the empirical G only)")
        self.set_switch("kfac_approx", kfac_approx)
        self.set_switch("conv_row_scale", conv_row_scale)
        self.requires = oracle_needs(self.fisher, self.adapt_damping)
        self.draws = draws_kind(self.fisher)
        if self.bias_block == "separate" and self.damping_scheme == "pi":
            raise ValueError("bias_block='separate' needs damping_scheme='tikhonov' or 'eigen': the π of 'pi' "
                             "balances two factors and the bias block has one")
        # The curvature: estimate, refresh and precondition live in refopt.curvature.blocks; a variant
        # sets another block object after this constructor (underscored: not a hyperparameter).
        self._blocks = KroneckerBlocks(self.damping_scheme, self.inverse, self.bias_block, self.output_grad_scale,
                                       self.kfac_approx, self.conv_row_scale)

    def init(self, params) -> KFACState:
        """Identity factors, no preconditioner yet, zero momentum, λ = ``damping`` and step 0; needs MLP layer dicts."""
        _check_params(params)
        return KFACState(0, 0, self._blocks.init(params), (), T.zeros_like(params), self.damping)

    def step_seed(self, step: int):
        """The seed of step ``step``'s label draws: ``loss.sample(z, [seed, step], samples)``."""
        return [self.seed, step]

    def _statistics(self, oracle, params, fisher, seed, draws, gradient=True):
        """One statistics pass; the empirical probes × √scale under empirical_scale="batch" (kfac-jax's vjp scale)."""
        stats = K.kfac_statistics(oracle, params, fisher, self.samples, seed=seed,
                                  labels=draws if fisher in ("mc", "curvature_prop") else None, gradient=gradient)
        if fisher == "empirical" and self.empirical_scale == "batch":
            w = math.sqrt(stats.scale)   # kfac-jax: G = Σ_i g_i g_iᵀ of the reduced loss = scale · per-example G
            stats = stats._replace(probes=[[w * g for g in probe] for probe in stats.probes])
        return stats

    def _fold(self, factors, k, stats):
        """(factors, k, updated): the running averages with this pass's estimate, if it is finite."""
        estimate = self._blocks.estimate(stats)
        if not self._blocks.all_finite(estimate):
            return factors, k, False
        eps = K.factor_weight(k + 1, self.decay, self.factor_init, self.burnin)
        return {name: ema_into(factors[name], tuple(estimate[name]), eps) for name in factors}, k + 1, True

    def update(self, params, state: KFACState, oracle, draws=None):
        """One K-FAC step: factors and preconditioner refreshed on schedule (after the burn-in estimates at
        step 0), KL-clipped step with momentum; ``draws``: this step's label or sign sets (``info["draws"]``)."""
        self.check_draws(draws)
        t = state.step
        refresh_factors = t % self.factor_interval == 0
        refresh = t % self.inverse_interval == 0 or not state.preconditioner
        fisher = self.fisher if refresh_factors else None
        factors, k = state.factors, state.factor_updates
        passes = self.burnin + 1 if t == 0 and self.burnin and refresh_factors else 1
        if draws is not None and passes > 1 and len(draws) % passes:
            raise ValueError(f"{self.name}: step 0's draws must hold (burnin + 1) = {passes} passes' sets, "
                             f"got {len(draws)}")
        per = None if draws is None else len(draws) // passes
        used = []
        for j in range(passes - 1):   # burn-in: estimates only, folded with equal weights
            stats = self._statistics(oracle, params, fisher, [self.seed, t, j],
                                     None if draws is None else draws[j * per:(j + 1) * per], gradient=False)
            if math.isfinite(stats.loss):
                factors, k, _ = self._fold(factors, k, stats)
            used.append(stats.labels)
        stats = self._statistics(oracle, params, fisher, self.step_seed(t),
                                 None if draws is None else draws[(passes - 1) * per:])
        used.append(stats.labels)
        loss, grad = stats.loss, stats.grad
        # ‖g‖ for the info and the check in one pass: a NaN or Inf anywhere makes it non-finite
        grad_norm = T.norm(grad)
        if not (math.isfinite(loss) and (math.isfinite(grad_norm) or T.all_finite(grad))):
            return refuse(params, state, loss, "non-finite loss or gradient: step refused", grad)
        message = ""
        factors_updated = False
        if refresh_factors:
            factors, k, factors_updated = self._fold(factors, k, stats)
            if not factors_updated and k == 0 and self.factor_init != "identity":
                return refuse(params, state, loss, "non-finite factor statistics and no earlier factors to keep: "
                              "step refused", grad)
            if not factors_updated:
                message = "non-finite factor statistics: factor update skipped, old factors kept"
        damping = state.damping
        precond = self._blocks.refresh(factors, damping) if refresh else state.preconditioner
        if factors_updated:  # statistics kept in the refreshed basis (EKFAC's ŝ) take this finite estimate
            precond = self._blocks.update_estimate(precond, stats)

        g = l2_decay(grad, params, self.weight_decay) if self.weight_decay_mode == "l2" else grad
        gbar = [K.layer_matrix(layer) for layer in g]
        V = self._blocks.precondition(gbar, precond, damping)
        vg = sum(float(xp.vdot(v, gb)) for v, gb in zip(V, gbar))
        lr = self.lr_at(t)   # η_t of the schedule
        nu = 1.0
        if self.kl_clip is not None and vg > 0 and lr > 0:
            nu = min(1.0, math.sqrt(self.kl_clip / (lr ** 2 * vg)))
        natural = [K.layer_tree(v if nu == 1.0 else nu * v, p["W"].shape) for v, p in zip(V, params)]   # 1·V is V
        ps, treedef = T.flatten(params)
        c = -lr * self.weight_decay if self.weight_decay_mode == "decoupled" else 0.0
        lm = self.adapt_damping and (t + 1) % self.damping_interval == 0 and lr > 0
        velocity, new, delta, sq = [], [], [], 0.0
        for m, n, x in zip(T.leaves(state.velocity), T.leaves(natural), ps):
            vel, theta, part, d = _tail(m, n, x, self.momentum, lr, c, keep_delta=lm)   # LM reads δ
            velocity.append(vel)
            new.append(theta)
            delta.append(d)
            sq += part
        velocity, new, step_norm = T.unflatten(treedef, velocity), T.unflatten(treedef, new), math.sqrt(sq)

        extra = {}
        if lm:
            delta = T.unflatten(treedef, delta)
            damping, extra["rho"] = self._levenberg_marquardt(oracle, params, new, delta, loss, grad, damping)
        new_state = KFACState(t + 1, k, factors, precond, velocity, damping)
        info = step_info(loss, (), lr=lr, step_norm=step_norm, grad_norm=grad_norm, damping=state.damping, kl_nu=nu,
                         factors_updated=factors_updated, preconditioner_refreshed=refresh,
                         draws=stats.labels if passes == 1 or used[0] is None else xp.concatenate(used, axis=0),
                         **extra)
        info["message"] = message
        return new, new_state, info

    def _levenberg_marquardt(self, oracle, params, new, delta, loss, grad, damping):
        """(new λ, ρ) by the reduction ratio of the exact-Fisher quadratic model (module docs)."""
        new_loss = oracle.value(new)
        Fd = oracle.fisher_vp(params, delta, kind="true")
        model = float(T.vdot(grad, delta)) + 0.5 * float(T.vdot(delta, Fd))
        rho = (new_loss - loss) / model if (model < 0 and math.isfinite(new_loss)) else -math.inf
        omega = (19.0 / 20.0) ** self.damping_interval
        if rho > 0.75:
            damping = damping * omega
        elif rho < 0.25:
            damping = damping / omega
        return damping, rho
