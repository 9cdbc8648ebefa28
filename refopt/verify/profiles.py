"""Convention profiles: refopt settings that reproduce the published behaviour of other libraries.

A profile names a refopt optimizer and the hyperparameters (convention switches and the library's
defaults) that make it follow a library's update rule, says in one sentence what that library does
differently from the paper (``differs``), where that behaviour is written (``source``: repository and
file), and what of it refopt's switches cannot express (``gaps``, empty when nothing). Every profile is
tested against an independent NumPy transcription of the library's update, two steps on a tiny
problem (``tests/test_profiles.py``); the torch and optax ones also against the real libraries
(``scripts/verify_with_torch.py``, ``scripts/verify_with_optax.py``), as are kfac-pytorch's and
curvlinops' (``scripts/verify_with_kfac_pytorch.py``, ``scripts/verify_with_curvlinops.py``).
``conventions_table()`` is the table of docs/verify.md (``refopt verify profiles`` prints it).

Names: the library's public name; a variant of one library gets ``+variant`` (no spaces or shell
metacharacters, so a name can be passed to ``refopt verify export --profile NAME`` as it is).
Hyperparameters a library leaves to the user (learning rates of kfac-jax, Shampoo's ``block_size``,
...) are set to the value its documentation recommends, or left at refopt's default when it has none.
"""
from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["Profile", "PROFILES", "get_profile", "conventions_table"]


@dataclass(frozen=True)
class Profile:
    """How to make a refopt optimizer follow a library: the settings, what differs from the paper, source, gaps."""

    library: str                 # e.g. "torch.optim.Adam"
    optimizer: str               # refopt optimizer name
    hyperparameters: dict = field(default_factory=dict)
    differs: str = ""            # what the library does differently from the paper (one sentence)
    source: str = ""             # repository and file where the behaviour is written
    gaps: str = ""               # what refopt cannot express (missing switches); "" when nothing


PROFILES: dict[str, Profile] = {}


def _add(p: Profile) -> None:
    if p.library in PROFILES:
        raise ValueError(f"duplicate profile {p.library!r}")
    PROFILES[p.library] = p


# --- first-order baselines ----------------------------------------------------------------------------
_add(Profile("torch.optim.SGD", "sgd", {"lr": 0.1, "momentum": 0.9, "dampening": 0.0},
             "momentum buffer v ← μv + (1 − dampening)g, started at v₁ = g₁ undamped (the paper's heavy ball uses "
             "v ← μv − ηg; equal for a constant η and dampening 0); Nesterov as a look-ahead on the gradient",
             "pytorch/pytorch torch/optim/sgd.py (_single_tensor_sgd)",
             "maximize"))
_add(Profile("optax.sgd", "sgd", {"lr": 0.1, "momentum": 0.9},
             "the same trace t ← g + μt, update −ηt, as torch.optim.SGD (no dampening)",
             "google-deepmind/optax optax/_src/alias.py (sgd), optax/transforms/_accumulation.py (trace)",
             "accumulator_dtype casts"))

# --- Adam, AdamW, Adagrad -----------------------------------------------------------------------------
_add(Profile("torch.optim.Adam", "adam",
             {"lr": 1e-3, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.0,
              "bias_correction": True, "eps_mode": "outside", "amsgrad": "none"},
             "Kingma & Ba's Algorithm 1 (ε outside √v̂, both moments bias-corrected), plus an optional L2 term "
             "λθ added to the gradient before the moments (the paper has no decay); amsgrad=True keeps the "
             "maximum of the raw v and bias-corrects it (amsgrad='max_v')",
             "pytorch/pytorch torch/optim/adam.py (_single_tensor_adam)",
             "maximize, decoupled_weight_decay=True (use torch.optim.AdamW)"))
_add(Profile("torch.optim.AdamW", "adamw",
             {"lr": 1e-3, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 1e-2,
              "bias_correction": True, "eps_mode": "outside", "lr_scaled_decay": True, "amsgrad": "none"},
             "the decoupled decay is multiplied by the learning rate, θ ← θ(1 − αλ), where Loshchilov & Hutter's "
             "Algorithm 2 uses the schedule multiplier η_t (1 here): θ ← θ − η_t λθ",
             "pytorch/pytorch torch/optim/adamw.py (decoupled_weight_decay=True), torch/optim/adam.py",
             "maximize"))
_add(Profile("optax.adam", "adam",
             {"lr": 1e-3, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "bias_correction": True,
              "eps_mode": "outside", "eps_root": 0.0},
             "Algorithm 1 with an extra eps_root inside the root, m̂ / (√(v̂ + eps_root) + ε), eps_root = 0 by "
             "default",
             "google-deepmind/optax optax/_src/alias.py (adam), optax/_src/transform.py (scale_by_adam)",
             "nesterov=True (NAdam)"))
_add(Profile("optax.adamw", "adamw",
             {"lr": 1e-3, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 1e-4,
              "bias_correction": True, "eps_mode": "outside", "lr_scaled_decay": True, "eps_root": 0.0},
             "add_decayed_weights before the learning-rate scaling, so the decay is θ ← θ − αλθ (the paper: "
             "θ − η_t λθ)",
             "google-deepmind/optax optax/_src/alias.py (adamw), optax/transforms/_adding.py",
             "mask (decay on a subset of leaves), nesterov=True"))
_add(Profile("torch.optim.Adagrad", "adagrad",
             {"lr": 1e-2, "eps": 1e-10, "initial_accumulator": 0.0, "eps_mode": "outside", "weight_decay": 0.0,
              "weight_decay_mode": "l2", "lr_decay": 0.0},
             "Duchi et al.'s diagonal rule with δ = 1e-10 outside the root, plus an optional learning-rate decay "
             "η/(1 + (t − 1)·lr_decay) and L2 term λθ in the gradient",
             "pytorch/pytorch torch/optim/adagrad.py (_single_tensor_adagrad)",
             "maximize, sparse gradients"))
_add(Profile("optax.adagrad", "adagrad",
             {"lr": 1e-2, "eps": 1e-7, "initial_accumulator": 0.1, "eps_mode": "inside"},
             "ε inside the root, g/√(G + ε), and an accumulator started at G₀ = 0.1 (the paper: δ + √G, G₀ = 0); "
             "coordinates whose G is 0 get no step",
             "google-deepmind/optax optax/_src/alias.py (adagrad), optax/_src/transform.py (scale_by_rss)",
             ""))

# --- quasi-Newton -------------------------------------------------------------------------------------
_LBFGS_TORCH_DOC = (
    "; one refopt update is one torch iteration: torch's step() runs max_iter=20 iterations, so its parameters "
    "after j calls are refopt's after 20j updates")
_LBFGS_TORCH_GAPS = (
    "tolerance_grad/tolerance_change/max_eval early exits; torch stops where the direction does not descend "
    "(gᵀd > −tolerance_change), refopt resets it to −g")
_add(Profile("torch.optim.LBFGS", "lbfgs",
             {"memory": 100, "initial_scaling": "every", "line_search": "none", "initial_step": "unit",
              "first_step": "gradient_l1", "lr": 1.0, "curvature_skip": 1e-10, "curvature_skip_rule": "absolute"},
             "a fixed step lr (no line search) from H⁰ = (sᵀy/yᵀy)I of the newest pair, a first step scaled by "
             "min(1, 1/‖g‖₁), pairs with yᵀs ≤ 1e-10 skipped, and up to max_iter=20 iterations per step() call"
             + _LBFGS_TORCH_DOC,
             "pytorch/pytorch torch/optim/lbfgs.py (LBFGS.step)",
             _LBFGS_TORCH_GAPS))
_add(Profile("torch.optim.LBFGS+strong_wolfe", "lbfgs",
             {"memory": 100, "initial_scaling": "every", "line_search": "minfunc", "c1": 1e-4, "c2": 0.9,
              "max_evals": 25, "initial_step": "unit", "first_step": "gradient_l1", "lr": 1.0,
              "curvature_skip": 1e-10, "curvature_skip_rule": "absolute"},
             "line_search_fn='strong_wolfe': minFunc's strong-Wolfe search (c₁ = 1e-4, c₂ = 0.9, cubic "
             "interpolation; refopt's line_search='minfunc') started at lr, or at min(1, 1/‖g‖₁)·lr on the first "
             "iteration, with max_ls = max_eval − (evaluations so far in this step() call), max_eval = "
             "max_iter·5/4 = 25 by default" + _LBFGS_TORCH_DOC,
             "pytorch/pytorch torch/optim/lbfgs.py (_strong_wolfe, _cubic_interpolate)",
             _LBFGS_TORCH_GAPS + "; torch's search budget shrinks within a step() call while refopt's "
             "max_evals is per update (exact while the budget does not bind; a torch run with max_iter=1 "
             "has max_eval=1 by default: use max_evals=max_eval)"))
_add(Profile("optax.lbfgs", "lbfgs",
             {"memory": 10, "initial_scaling": "every", "line_search": "optax_zoom", "c1": 1e-4, "c2": 0.9,
              "max_evals": 20, "initial_step": "unit", "first_step": "unit_length", "curvature_skip_rule": "never"},
             "the first direction is −min(1, 1/‖g‖)·g (a capped scale γ₀ the paper leaves open), then γ_k = sᵀy/yᵀy, "
             "optax's zoom line search (scale_by_zoom_linesearch(max_linesearch_steps=20, "
             "initial_guess_strategy='one'): doubling, cubic / quadratic / bisection zoom, Hager-Zhang approximate "
             "decrease with approx_dec_rtol = 1e-6; refopt's line_search='optax_zoom') started at step 1, and no "
             "pair is ever skipped",
             "google-deepmind/optax optax/_src/alias.py (lbfgs), optax/_src/transform.py (scale_by_lbfgs), "
             "optax/_src/linesearch.py (zoom_linesearch, scale_by_zoom_linesearch)",
             "after a pair with sᵀy < 0 a direction that does not descend is followed by optax, reset to −g by "
             "refopt; a search that ends at step 0 (its last trial not finite, no safe point) leaves optax a zero "
             "pair and γ = 1, refopt its history; XLA rounds the L-BFGS recursion in its own order, so the iterates "
             "agree to rounding growth, not bit for bit"))
_add(Profile("optax.lbfgs+no_linesearch", "lbfgs",
             {"memory": 10, "initial_scaling": "every", "line_search": "none", "initial_step": "unit",
              "first_step": "unit_length", "curvature_skip_rule": "never", "descent_check": "none"},
             "lbfgs(linesearch=None): a unit step along the L-BFGS direction, the first one −min(1, 1/‖g‖)·g; no "
             "pair is ever skipped and the direction is not checked for descent",
             "google-deepmind/optax optax/_src/alias.py (lbfgs), optax/_src/transform.py (scale_by_lbfgs)",
             ""))
_add(Profile("scipy.optimize.fmin_bfgs", "bfgs",
             {"form": "inverse", "initial_scaling": "none", "line_search": "scipy", "c1": 1e-4, "c2": 0.9,
              "max_evals": 120, "initial_step": "interpolate", "first_step": "interpolate", "curvature_skip": 0.0},
             "minimize(method='BFGS'): the inverse update (N&W 6.17) from H₀ = I with no initial scaling (N&W "
             "6.20 scales H₀ before the first update), and line_search_wolfe1 (MINPACK-2's dcsrch, xtol = 1e-14, "
             "falling back to scipy's own zoom, line_search_wolfe2; refopt's line_search='scipy') first tried at "
             "min(1, 1.01/‖g‖) and then at N&W eq. 3.60's interpolated step",
             "scipy/scipy scipy/optimize/_optimize.py (_minimize_bfgs, _line_search_wolfe12), "
             "scipy/optimize/_linesearch.py (line_search_wolfe1, scalar_search_wolfe2), scipy/optimize/_dcsrch.py",
             "sᵀy = 0 gives ρ = 1000 in scipy (refopt skips the pair); H is updated in another order of "
             "operations (N&W 6.17 expanded, scipy (I − ρsyᵀ)H(I − ρysᵀ) + ρssᵀ by BLAS), so the iterates "
             "agree to rounding growth, not bit for bit; after a failed search scipy stops, refopt stays put"))
_add(Profile("scipy.optimize.fmin_l_bfgs_b", "lbfgs",
             {"memory": 10, "initial_scaling": "every", "line_search": "minpack", "c1": 1e-3, "c2": 0.9,
              "max_evals": 20, "initial_step": "unit", "first_step": "inverse_norm",
              "curvature_skip_rule": "relative"},
             "minimize(method='L-BFGS-B') without bounds: m = 10 pairs, H⁰ = (sᵀy/yᵀy)I of the newest pair, and "
             "MINPACK-2's dcsrch with L-BFGS-B's own tolerances (ftol = 1e-3, gtol = 0.9, xtol = 0.1, stpmax = "
             "1e10, maxls = 20; refopt's line_search='minpack') started at 1/‖d‖ on the first iteration, uncapped, "
             "and at 1 afterwards",
             "scipy/scipy scipy/optimize/_lbfgsb_py.py (_minimize_lbfgsb), scipy/optimize/__lbfgsb.c (lnsrlb, "
             "mainlb; the Fortran lbfgsb.f v3.0 before scipy 1.15), scipy/optimize/_dcsrch.py",
             "bounds (the Cauchy point and subspace minimisation reduce to the L-BFGS direction without them, "
             "computed there from the compact representation, so iterates agree to rounding growth); L-BFGS-B "
             "skips a pair when sᵀy ≤ eps·(−gᵀs), refopt's rule is sᵀy ≤ 2.2e-16·yᵀy; after a failed search "
             "L-BFGS-B drops its pairs and retries from −g, refopt takes no step; the factr / pgtol stops"))

# --- diagonal second-order: Sophia, AdaHessian ----------------------------------------------------------
_add(Profile("optax.contrib.sophia", "sophia_h",
             {"lr": 1e-3, "beta1": 0.965, "beta2": 0.99, "gamma": 0.01, "eps": 1e-8, "weight_decay": 1e-4,
              "k": 10, "parametrization": "paper", "refresh": "lagged", "bias_correction": True, "probes": 1,
              "probe_distribution": "rademacher"},
             "the bias-corrected momentum m̂ is clipped, clip(m̂ / max(γh, ε), 1), and the Hutchinson estimate "
             "made at θ_t on steps t ≡ 1 (mod update_interval) is first used at step t + 1 (the paper's "
             "Algorithm 3 uses it at once), so the first step is a sign step",
             "google-deepmind/optax optax/contrib/_sophia.py (scale_by_sophia, hutchinson_estimator_diag_hessian)",
             "weight_decay_mask; hessian_diagonal_fn other than the Hutchinson default; clip_threshold ≠ 1 "
             "(refopt clips at 1); optax draws float32 Rademacher signs from its own PRNG key (replay them "
             "with draws=)"))
_add(Profile("Liuhong99/Sophia.SophiaG", "sophia_g",
             {"lr": 1e-4, "beta1": 0.965, "beta2": 0.99, "gamma": 0.04, "weight_decay": 1e-1, "k": 10,
              "parametrization": "official", "samples": 1},
             "h is an EMA of ĝ⊙ĝ (ĝ: gradient of the mean loss at sampled labels) refreshed after the step on "
             "iterations iter % k == k − 1, and the step is θ(1 − ηλ) − η·sign(m)·min(abs(m)/(ρ·bs·h + 1e-15), 1) "
             "with no bias correction (the paper: clip(m/max(γh, ε), 1), h refreshed before the step)",
             "Liuhong99/Sophia sophia.py (SophiaG, commit 195a786), train_sophiag.py (refresh loop), "
             "config/train_gpt2_small_sophiag.py (interval=10)",
             "bs is the training script's total_bs (step()'s default is 5120; refopt's default is the batch "
             "size, pass bs=...); the official loop refreshes h on the next batch (refopt: the same batch)"))
_add(Profile("Liuhong99/Sophia.SophiaH", "sophia_h",
             {"lr": 1e-3, "beta1": 0.9, "beta2": 0.99, "gamma": 10.0, "weight_decay": 1e-2, "k": 10,
              "parametrization": "official", "probes": 1, "probe_distribution": "rademacher"},
             "the step size η/(1 − β₁ᵗ) multiplies sign(m)·min(abs(m)/(γ·max(h, 0) + 1e-12), 1), so a coordinate "
             "may move by more than η early on, and h is refreshed after the step",
             "Liuhong99/Sophia sophia.py (SophiaH, commit 01af183)",
             "the repository ships no SophiaH training loop: refopt assumes SophiaG's refresh protocol "
             "(after the step, iter % k == k − 1) and that p.grad holds z⊙Hz when update_hessian() runs"))
_add(Profile("amirgholami/adahessian", "adahessian",
             {"lr": 0.15, "beta1": 0.9, "beta2": 0.999, "eps": 1e-4, "hessian_power": 1.0, "spatial_block": -1,
              "spatial_axis": 0, "absolute": True, "kernel_average": "spatial", "bias_correction": True,
              "eps_mode": "outside", "weight_decay": 0.0, "weight_decay_mode": "decoupled", "probes": 1,
              "probe_distribution": "rademacher"},
             "abs(Hz) (not z⊙Hz) is averaged over each output unit's inputs (a row of torch's (out, in) weight, "
             "spatial_average_block_size=-1), a 4-D convolution kernel's over its kernel window (mean over dims "
             "2, 3), biases are not averaged, and a decoupled decay θ − ηλθ is added",
             "amirgholami/adahessian instruction/adahessian.py (get_trace, step; its 4-D branch with the default "
             "block size -1)",
             "instruction/adahessian.py's step() refers to undefined names (gradsH, hut_trace): refopt follows its "
             "get_trace() averaging with the update rule of image_classification/optim_adahessian.py; "
             "block sizes other than -1 that do not divide fan_in (torch's view(-1, b) then crosses rows)"))
_add(Profile("amirgholami/adahessian+image_classification", "adahessian",
             {"lr": 0.15, "beta1": 0.9, "beta2": 0.999, "eps": 1e-4, "hessian_power": 1.0, "spatial_block": 1,
              "absolute": True, "kernel_average": "spatial", "bias_correction": True, "eps_mode": "outside",
              "weight_decay": 0.0, "weight_decay_mode": "decoupled", "probes": 1, "probe_distribution": "rademacher"},
             "dense weights and biases are not averaged (Eq. 10 with b = 1), 4-D convolution kernels are: abs(Hz) "
             "averaged over the kernel window (torch.mean(hv.abs(), dim=[2, 3])), and a decoupled decay θ − ηλθ "
             "is added (the paper has none)",
             "amirgholami/adahessian image_classification/optim_adahessian.py (Adahessian.get_trace, step)",
             ""))

_add(Profile("pytorch_optimizer.SophiaH", "sophia_h",
             {"lr": 6e-4, "beta1": 0.96, "beta2": 0.99, "gamma": 1e-2, "eps": 1e-14, "weight_decay": 0.0, "k": 10,
              "parametrization": "paper", "refresh": "before", "bias_correction": False, "probes": 1,
              "probe_distribution": "gaussian"},
             "its step is lr·clamp(m / max(h, eps), −p, p) (no bias correction, z⊙Hz at θ_t on steps t ≡ 1 mod "
             "update_period, used at once, Gaussian probes), which is Algorithm 3 under the mapping refopt "
             "lr = lr·p, γ = p, ε = p·eps, weight_decay = weight_decay/p (its θ(1 − lr·wd) is θ(1 − ηλ)): the "
             "settings shown are its defaults lr=6e-2, p=1e-2, eps=1e-12, weight_decay=0 mapped so",
             "kozistr/pytorch_optimizer pytorch_optimizer/optimizer/sophia.py (SophiaH.step), "
             "pytorch_optimizer/base/optimizer.py (compute_hutchinson_hessian, apply_weight_decay)",
             "weight_decouple=False (L2 term in the gradient) and fixed_decay=True; step(hessian=...) refreshes h on "
             "every step that passes one (k=1 when passed on every step); torch draws its own probes (replay them "
             "with draws=)"))
_add(Profile("pytorch_optimizer.AdaHessian", "adahessian",
             {"lr": 0.1, "beta1": 0.9, "beta2": 0.999, "eps": 1e-16, "hessian_power": 1.0, "spatial_block": 1,
              "absolute": False, "kernel_average": "none", "bias_correction": True, "eps_mode": "outside", "weight_decay": 0.0,
              "weight_decay_mode": "decoupled", "probes": 1, "probe_distribution": "rademacher"},
             "Algorithm 1 without spatial averaging, of dense weights or of convolution kernels (z⊙Hz as it is, "
             "no abs), ε = 1e-16 outside (v̂)^{k/2} and a "
             "decoupled decay θ(1 − ηλ) taken before the step (refopt's θ − η(d + λθ), equal up to rounding)",
             "kozistr/pytorch_optimizer pytorch_optimizer/optimizer/adahessian.py (AdaHessian.step), "
             "pytorch_optimizer/base/optimizer.py (compute_hutchinson_hessian, apply_weight_decay)",
             "update_period > 1 (v kept unchanged between estimates; refopt estimates every step); "
             "weight_decouple=False (λθ in the gradient only: refopt's 'l2' also adds λ to D), fixed_decay=True, "
             "adam_debias=True; torch draws its own probes (replay them with draws=)"))

# --- Shampoo --------------------------------------------------------------------------------------------
_add(Profile("google-research/scalable_shampoo", "shampoo",
             {"statistics": "ema", "beta2": 0.999, "initial_accumulator": 1e-6, "eps": 1e-6,
              "eps_mode": "relative", "merge_dims": 4096, "block_size": 128, "grafting": "sgd", "start_step": 6,
              "precondition_interval": 1, "momentum": 0.9, "nesterov": True, "precondition": "gradient",
              "vector_diagonal": False, "weight_decay_mode": "graft"},
             "statistics are an EMA (β₂ = 0.999) started at ε·I, the ridge is ε·λ_max, roots come from a coupled "
             "Newton iteration, the step is grafted to the SGD step's norm, the first start_preconditioning_step=5 "
             "steps are graft steps, and Nesterov momentum β₁ = 0.9 follows",
             "google-research/google-research scalable_shampoo/optax/distributed_shampoo.py (distributed_shampoo, "
             "_compute_stats, _transform_grad, matrix_inverse_pth_root, merge_small_dims)",
             "separate momentum buffers for the graft and Shampoo phases (both updated every step; refopt has one: "
             "exact with beta1 > 0 only when start_step = 1, i.e. start_preconditioning_step=0, or with beta1=0; "
             "with beta1 = 0.9 and start_step 2 or 6 the parameters differ by 2e-2..3e-1 relative over 30 steps, "
             "scripts/verify_with_scalable_shampoo.py); the coupled-Newton root matches eigh only to its "
             "error_tolerance 1e-6, and λ_max of the relative ε comes from a power iteration (tolerance 1e-6): "
             "otherwise the match is 4e-9..1.1e-7 relative over 30 steps; the refresh phase of "
             "preconditioning_compute_steps > 1 counts from step 0, refopt's from start_step; "
             "moving_average_for_momentum=True; decoupled_weight_decay=True (its step −η(d + ηλθ))"))
_add(Profile("facebookresearch/distributed_shampoo", "shampoo",
             {"lr": 1e-2, "statistics": "sum", "eps": 1e-12, "eps_mode": "shift", "initial_accumulator": 0.0,
              "merge_dims": 1024, "block_size": 1024, "grafting": "none", "start_step": 1,
              "precondition_interval": 1, "momentum": 0.0, "precondition": "gradient", "vector_diagonal": False,
              "filter_beta": 0.9, "weight_decay_mode": "decoupled", "refresh": "multiples", "lr_dtype": "float32",
              "factor_dtype": "native"},
             "statistics summed (β₂ = 1) or an EMA whose roots are taken of L/(1 − β₂ᵗ); roots by eigh of L + εI "
             "shifted by ε − λ_min when λ_min < ε (PerturbationConfig(perturb_before_computation=True)); roots "
             "recomputed at start_preconditioning_step and at every multiple of precondition_frequency after it; "
             "the gradient first filtered by a bias-corrected EMA (β₁ = 0.9), optionally grafted to the AdaGrad "
             "step's norm; decoupled weight decay; lr held in float32. Meta's default float32 factor and inverse "
             "factors are factor_dtype='float32' (the profile runs float64 factors: factor_matrix_dtype = "
             "inv_factor_matrix_dtype = torch.float64)",
             "facebookresearch/optimizers distributed_shampoo/distributed_shampoo.py (DistributedShampoo, "
             "_group_step_body, _compute_search_directions), distributed_shampoo/preconditioner/"
             "shampoo_preconditioner_list.py (update_preconditioners, _precondition_grad), "
             "distributed_shampoo/preconditioner/matrix_functions.py (matrix_eigendecomposition, "
             "matrix_inverse_root_from_eigendecomposition)",
             "betas[1] < 1 is statistics='ema_debiased', betas[0] is filter_beta, start_preconditioning_step is "
             "start_step (its −1 default means precondition_frequency); beta3 ≠ betas[0] and "
             "use_bias_correction=False; RMSprop/Adam grafting (betas < 1; refopt grafts to SGD or AdaGrad only); "
             "per-order inverse_exponent_override; decoupled decay with momentum (Meta adds λθ before the "
             "momentum); dampening > 0; the 1e-16 in Meta's graft ratio ‖D‖/(‖P‖ + 1e-16); with ε ≲ 1e-8 on "
             "rank-deficient factors (the first steps) the trajectory is rounding-sensitive: Meta differs from "
             "itself by ~1e-9..3e-5 (use_symmetric_packing on/off), so refopt matches it to that, not to 1e-10; "
             "factor_dtype='float32' follows Meta's float32 rounding steps but not its LAPACK's float32 eigh: "
             "with Meta's default float32 factors the match is 5e-4..4e-3 at ε = 1e-6 and 0.1..0.5 at ε = 1e-12 "
             "(30 steps, scripts/verify_with_meta_shampoo.py), no closer than float64 factors'"))

_add(Profile("pytorch_optimizer.Shampoo", "shampoo",
             {"lr": 1e-3, "statistics": "sum", "initial_accumulator": 1e-6, "eps": 1e-30, "eps_mode": "floor",
              "root": "svd", "grafting": "none", "start_step": 1, "precondition_interval": 1, "momentum": 0.0,
              "precondition": "blended", "vector_diagonal": False, "weight_decay": 0.0,
              "weight_decay_mode": "l2", "nesterov": False},
             "statistics summed from H₀ = matrix_eps·I with no ε at the root (refopt's floor 1e-30 never binds), "
             "roots U diag(s)^{−1/(2k)} Vᵀ by SVD, and momentum μ blended into the gradient before the "
             "statistics as the previous *preconditioned* update, G̃ = (1 − μ)G + μP_{t−1} (grad.lerp_)",
             "kozistr/pytorch_optimizer pytorch_optimizer/optimizer/shampoo.py (Shampoo.step), "
             "pytorch_optimizer/optimizer/utils/matrix.py (compute_power_svd)",
             "preconditioning_compute_steps > 1 (its inverse roots start at zero, so the steps before the first "
             "recomputation do not move θ; refopt's steps before start_step are gradient steps); fixed_decay=True"))

# --- K-FAC ---------------------------------------------------------------------------------------------
_add(Profile("google-deepmind/kfac-jax", "kfac",
             {"factor_init": "debiased", "decay": 0.95, "damping_scheme": "pi", "inverse": "inverse",
              "factor_interval": 1, "inverse_interval": 5, "fisher": "curvature_prop", "samples": 1,
              "burnin": 10, "kl_clip": None, "momentum": 0.0, "weight_decay": 0.0},
             "G by Rademacher curvature propagation (estimation_mode='ggn_curvature_prop'), factors start at zero "
             "with a normalised (bias-corrected) moving average after 10 equally weighted burn-in estimates, "
             "π-adjusted damping uses the factors' average traces, and the learning rate and momentum may come "
             "from the exact quadratic model; fisher_empirical is fisher='empirical', empirical_scale='batch'",
             "google-deepmind/kfac-jax kfac_jax/_src/curvature_blocks/kronecker_factored.py "
             "(DenseTwoKroneckerFactored, Conv2DTwoKroneckerFactored), kfac_jax/_src/patches_second_moment.py "
             "(patches_moments), kfac_jax/_src/utils/math.py (pi_adjusted_kronecker_factors), "
             "kfac_jax/_src/optimizer.py (Optimizer: curvature_ema, inverse_update_period, norm_constraint)",
             "burn-in batches come from its data iterator (refopt's burn-in uses step 0's batch); "
             "use_adaptive_learning_rate/momentum (M&G §7, not in refopt); "
             "use_adaptive_damping's rule (×0.9^5 every 5 steps) differs from refopt's (19/20)^interval; l2_reg "
             "is added to the damping (identity_weight = l2_reg + damping) while the user adds the L2 term to the "
             "loss; a conv layer is KFC's expand (its A = Σ āāᵀ/(N·L) over (kh, kw, c)-ordered patches, refopt's "
             "(c, kh, kw) permuted, and G = L·Σ ggᵀ/(N·L) through fixed_scale() = L: the same A ⊗ G, and with π "
             "damping the same step, scripts/verify_with_kfac_jax.py); kfac-jax has no 'reduce'; kfac-jax 0.0.8 "
             "passes no dilation to patches_moments, so a dilated conv gets the undilated kernel's factors"))
_add(Profile("gpauloski/kfac-pytorch", "kfac",
             {"lr": 0.1, "damping": 1e-3, "decay": 0.95, "factor_init": "identity", "damping_scheme": "eigen",
              "inverse": "eig", "factor_interval": 1, "inverse_interval": 1, "fisher": "empirical",
              "kl_clip": 1e-3, "momentum": 0.9, "weight_decay": 0.0, "output_grad_scale": "reduced_loss",
              "conv_row_scale": "inverse_locations"},
             "factors start at the identity with a constant-weight average (α = 0.95), G = (1/B) Σ g gᵀ of the "
             "output gradients the user's reduced loss backpropagates (empirical Fisher, B² smaller than the "
             "per-example G for a mean loss), damping is exact in the eigenbasis (dG dAᵀ + λ), and the step ν·V "
             "is handed to the user's torch.optim.SGD (momentum 0.9 in the examples); a Conv2d layer's patch rows "
             "(bias 1 included) and output-gradient rows are each divided by the L output locations before "
             "their covariance over the N·L rows, A = (1/(N·L³)) Σ āāᵀ, G likewise (KFC's expand ÷ L²)",
             "gpauloski/kfac-pytorch kfac/layers/base.py (update_a_factor), kfac/layers/modules.py "
             "(LinearModuleHelper, Conv2dModuleHelper), kfac/layers/utils.py (get_cov, append_bias_ones), kfac/layers/eigen.py, "
             "kfac/layers/inverse.py, kfac/base_preconditioner.py (_compute_grad_scale), kfac/preconditioner.py",
             "compute_method='inverse' (+λ on each factor) is damping_scheme='tikhonov' with damping=λ²; SGD's "
             "weight decay is added after preconditioning inside the momentum; eigendecompositions in float32 "
             "(kfac/layers/eigen.py casts each factor to float32 before eigh whatever inv_dtype is: relative "
             "differences ~1e-6 over 40 steps, 1e-15 with a float64 eigh; scripts/verify_with_kfac_pytorch.py); "
             "its Conv2d patches ignore dilation and groups and take no string padding ('same'), so match it only on "
             "convolutions without those"))
_add(Profile("f-dangel/curvlinops", "kfac",
             {"lr": 1.0, "momentum": 0.0, "decay": 0.0, "factor_init": "mean", "kl_clip": None,
              "factor_interval": 1, "inverse_interval": 1, "fisher": "mc", "samples": 1,
              "damping_scheme": "tikhonov", "inverse": "inverse", "bias_block": "separate"},
             "KFACLinearOperator is one pass over the data (no running average) with weight and bias in separate "
             "blocks by default, and its inverse(damping=δ) adds δ to each factor (π-heuristic and exact damping "
             "optional); a conv layer is kfac_approx='expand' by default (Eschenhagen et al. 2023: A = Σ āāᵀ/(N·L) "
             "over every location's patch, G = Σ ggᵀ·c with c = N for a mean loss, refopt's expand)",
             "f-dangel/curvlinops curvlinops/kfac.py (KFACLinearOperator), curvlinops/kfac_utils.py "
             "(extract_patches), curvlinops/computers/kfac_hooks.py, "
             "curvlinops/computers/kfac_math.py (compute_loss_correction), curvlinops/kronecker.py (inverse)",
             "separate_weight_and_bias=False is bias_block='joint'; inverse(damping=δ) is refopt's damping=δ² (the "
             "'tikhonov' γ is √λ); "
             "min_damping floor of the π heuristic; the step (lr, momentum) is the user's; its MSELoss is "
             "(1/(BC)) Σ‖y − z‖² (GGN 2/C × refopt's Gaussian σ² = 1, labels z + √½ ε; no variance σ²: "
             "scripts/verify_with_curvlinops.py rescales G by that factor)"))
_add(Profile("f-dangel/curvlinops+reduce", "kfac",
             {"lr": 1.0, "momentum": 0.0, "decay": 0.0, "factor_init": "mean", "kl_clip": None,
              "factor_interval": 1, "inverse_interval": 1, "fisher": "mc", "samples": 1,
              "damping_scheme": "tikhonov", "inverse": "inverse", "bias_block": "separate",
              "kfac_approx": "reduce"},
             "KFACLinearOperator(kfac_approx='reduce') (Eschenhagen et al. 2023): a conv layer's patches are averaged "
             "over its L output locations and its output gradients summed over them before the outer products, "
             "A = Σ_n x̄x̄ᵀ/N, G = Σ_n (Σ_l g)(Σ_l g)ᵀ·c (c = N for a mean loss); otherwise as f-dangel/curvlinops "
             "(one pass, separate bias block, inverse(damping=δ) adds δ to each factor); dense layers (L = 1) are "
             "unaffected",
             "f-dangel/curvlinops curvlinops/kfac.py (KFACLinearOperator._hook_accumulate_input_covariance, "
             "_accumulate_gradient_covariance), curvlinops/kfac_utils.py (extract_averaged_patches)",
             "as f-dangel/curvlinops; padding='same' with an even kernel (curvlinops' unfold refuses unequal padding; "
             "refopt pads one more at the bottom and right)"))
_add(Profile("tensorflow/kfac", "kfac",
             {"factor_init": "debiased", "decay": 0.95, "damping_scheme": "pi", "inverse": "inverse",
              "factor_interval": 1, "inverse_interval": 10, "fisher": "mc", "samples": 1, "kl_clip": None,
              "momentum": 0.9, "weight_decay": 0.0},
             "covariances start at zero and are zero-debiased (INIT_COVARIANCES_AT_ZERO, ZERO_DEBIAS), damping is "
             "π-adjusted per factor with the trace norm, inverses are recomputed every invert_every=10 steps, and "
             "the optional norm_constraint bounds η²·⟨F̂⁻¹g, g⟩ like the KL clip",
             "tensorflow/kfac kfac/python/ops/fisher_factors.py (INIT_COVARIANCES_AT_ZERO, ZERO_DEBIAS, "
             "compute_cov, append_homog), kfac/python/ops/fisher_blocks.py (compute_pi_tracenorm), "
             "kfac/python/ops/optimizer.py (KfacOptimizer), kfac/python/ops/kfac_utils/"
             "periodic_inv_cov_update_kfac_opt.py (invert_every=10)",
             "momentum_type='adam' or 'qmodel'; the tf.contrib.kfac constants (identity start, no debias: "
             "factor_init='identity'); losses registered with coeff ≠ B·scale (refopt's Fisher is the reduced "
             "loss's: coeff=1 for a mean, coeff=B for a sum); lr, damping, momentum, cov_ema_decay and coeff "
             "given as Python floats are rounded to float32 by the library's tf.cast / convert_to_tensor "
             "(relative 1e-8 per step; 3.8e-3 after 40 steps on tiny_mlp at these settings; float64 tensors "
             "match: scripts/verify_with_tf_kfac.py)"))


def get_profile(name: str) -> Profile:
    """The profile of the library ``name`` (``PROFILES`` lists them); ValueError for an unknown name."""
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}; choose from {', '.join(sorted(PROFILES))}")
    return PROFILES[name]


def conventions_table() -> str:
    """A Markdown table: library, refopt optimizer and settings, what differs from the paper, what
    refopt cannot express, and where the library's behaviour is written."""
    rows = ["| library | refopt | settings | differs from the paper | not expressible in refopt | source |",
            "|---|---|---|---|---|---|"]
    for p in PROFILES.values():
        settings = ", ".join(f"{k}={v!r}" for k, v in p.hyperparameters.items())
        rows.append(f"| {p.library} | `{p.optimizer}` | {settings} | {p.differs} | {p.gaps or '—'} | {p.source} |")
    return "\n".join(rows)

