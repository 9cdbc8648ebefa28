#!/usr/bin/env python
"""Check refopt's K-FAC factors against the real kfac-jax (0.0.8, JAX float64), layer by layer.

For every trace problem (``refopt.verify.TRACE_PROBLEMS``: softmax CE, Gaussian, Bernoulli with a sum
reduction) and a few parameter points, the script rebuilds refopt's MLP in JAX (s = a @ W + b, W of
shape (fan_in, fan_out), params [{"W", "b"}, ...]), registers each layer with ``kfac_jax.register_dense``
and the loss with kfac-jax's registration of the same likelihood (a sum loss as kfac-jax's per-batch mean
with ``weight=B``), and runs one ``BlockDiagonalCurvature.update_curvature_matrix_estimate`` from a zero
state (ema_old 0, ema_new 1: the factors of that batch alone). It compares each layer's input factor A
and output factor G with ``refopt.curvature.layer_factors``:

* ``estimation_mode="ggn_curvature_prop"`` (kfac-jax's default) against ``fisher="curvature_prop"`` with
  the signs kfac-jax draws, recomputed from its PRNG key (one loss: the key itself,
  ``jax.random.rademacher(key, (B, C))``) and injected as ``labels``;
* ``estimation_mode="fisher_empirical"`` against ``fisher="empirical"`` × scale (÷ B for a mean loss,
  unchanged for a sum): refopt's ``empirical_scale="batch"`` lives in ``refopt.optim.kfac.KFAC`` (the
  probes × √scale), not in ``layer_factors``, so the script scales ``layer_factors``' G itself.

Besides the trace problems it runs a Gaussian under reduction="mean_all" (torch's MSELoss mean),
registered with ``weight=1/C``.

A CNN trace problem (``tiny_cnn``) is written in JAX by ``jax_cnn``: images NHWC, kernels HWIO
(``lax.conv_general_dilated`` plus a broadcast bias, the form kfac-jax's graph matcher tags as a conv2d
layer: its layers are registered automatically, ``auto_register_tags`` / ``use_automatic_registration``),
pooling by ``lax.reduce_window`` and the flatten in NCHW order (so the dense head keeps refopt's W); refopt's
OIHW kernels are transposed to HWIO and back. Its biases are drawn at random for the factor checks. kfac-jax's
conv block (kfac_jax/_src/curvature_blocks/kronecker_factored.py, Conv2DTwoKroneckerFactored; patches by
kfac_jax/_src/patches_second_moment.py, patches_moments) is "expand" only:

    A = Σ_{n,l} ā āᵀ / (N·L)  (patches in (kh, kw, c) order, the bias entry last: ā = [x, 1])
    G = Σ_{n,l} dy dyᵀ / (N·L), dy the per-example-scaled output tangents at every location
    block = fixed_scale() · A ⊗ G with fixed_scale() = L = num_locations

so A equals refopt's kfac_approx="expand" A after the index permutation (c, i, j) ↔ (i, j, c)
(``hwc_to_chw``), and L·G equals refopt's G: the same A ⊗ G, split with the 1/L on G (GM16's split) where
refopt and curvlinops keep it in A. Under kfac-jax's damping, (L·A ⊗ G + λI)⁻¹ by the π-adjusted inverse
of the unscaled factors with λ/L, the split cancels (π absorbs it), so the step equals refopt's "pi"
damping on its own factors; refopt's "tikhonov" would not. A dilated convolution (``DILATED_CNN``) is
mis-estimated by kfac-jax 0.0.8: Conv2DTwoKroneckerFactored passes no rhs_dilation to patches_moments and
to num_conv_locations, so its A is the undilated kernel's patches' (and L its location count); the script
shows that A equals refopt's A of the undilated kernel on the same input and differs from the dilated one.

Then the optimizer loop (``--steps``, 30 by default; 0 skips it): ``kfac_jax.Optimizer`` with a fixed
learning rate, momentum and damping (``use_adaptive_*`` False, ``l2_reg`` 0), its default inverse
schedule (every 5 steps), curvature EMA 0.95 and π-adjusted damping, ``estimation_mode="ggn_curvature_prop"``,
``num_burnin_steps`` 0 and then its default 10 (the burn-in batches are the full batch again), on every
trace problem from several parameter points, against ``refopt.optim.kfac.KFAC`` with the
google-deepmind/kfac-jax profile's settings and the same lr / momentum / damping / burn-in. Step t's key
is fold_in(PRNGKey(point), t); kfac-jax's signs are recomputed from it as its ``step`` splits it (step 0
with a burn-in: key, burnin_key = split(key); burn-in keys split(burnin_key, n), used first) and injected
through ``update(draws=...)``. It compares the parameters after every step.

It prints the max relative difference max|ours − theirs| / max|theirs| per mode and problem, and exits 1
if one exceeds ``--rtol`` (factors) or ``--rtol-steps`` (optimizer loop). Without kfac_jax installed it
prints a message and exits 0. Last run (kfac-jax 0.0.8, jax 0.7.2, 5 points, 30 steps, lr 0.05, momentum
0.5, damping 1e-2): factors ≤ 8.1e-16, parameters ≤ 5.9e-15 (tiny_mlp 3.4e-15, tiny_regression 4.6e-15,
tiny_logistic 5.9e-15; burn-in 0 and 10 alike); with lr 0.2, momentum 0.9, damping 1e-3 over 40 steps
≤ 4.6e-13 (tiny_mlp, rounding growth). tiny_cnn: factors ≤ 8.8e-16 (A permuted, L·G; without the L, G
differs by the factor L: 8.0 relative at L = 9), parameters over 30 steps ≤ 6.0e-15 (burn-in 0) and
1.0e-14 (burn-in 10); the dilated CNN's conv A differs from refopt's by 0.33 and matches the undilated
kernel's to 1.0e-15 (5 points).

    python scripts/verify_with_kfac_jax.py [--points 5] [--rtol 1e-12] [--steps 30] [--lr 0.05]
        [--momentum 0.5] [--damping 1e-2] [--rtol-steps 1e-10]
"""
from __future__ import annotations

import argparse
import sys

try:
    import jax
    import jax.numpy as jnp
    import kfac_jax
except ImportError:  # pragma: no cover - depends on the machine
    print("verify_with_kfac_jax: kfac_jax/jax is not installed; skipping (pip install kfac-jax 'jax<0.8')")
    sys.exit(0)

jax.config.update("jax_enable_x64", True)

import numpy as np  # noqa: E402

from refopt import autodiff as ad  # noqa: E402
from refopt.curvature import layer_factors  # noqa: E402
from refopt.curvature.kronecker import input_factor  # noqa: E402
from refopt.problems.registry import network_oracle  # noqa: E402
from refopt.verify.trace import TRACE_PROBLEMS, _build, _tiny_data  # noqa: E402

ACT = {"tanh": jnp.tanh, "relu": jax.nn.relu, "sigmoid": jax.nn.sigmoid, "softplus": jax.nn.softplus,
       "identity": lambda s: s}

# A CNN with a dilated convolution, outside the trace problems: kfac-jax 0.0.8's Conv2DTwoKroneckerFactored
# passes no kernel dilation to patches_moments (kfac_jax/_src/curvature_blocks/kronecker_factored.py,
# compute_inputs_stats) and counts its locations without it (num_locations), so its A is that of the undilated
# kernel; the script measures that difference instead of a match (``dilation_check``).
DILATED_CNN = {"type": "cnn", "input_shape": [2, 6, 6],
               "layers": [{"layer": "Conv2d", "in_channels": 2, "out_channels": 3, "kernel_size": [2, 2],
                           "stride": [1, 1], "padding": [0, 0], "dilation": [2, 2]}, "relu",
                          {"layer": "MaxPool2d", "kernel_size": [2, 2], "stride": [2, 2], "padding": [0, 0],
                           "dilation": [1, 1]}, {"layer": "Flatten"},
                          {"layer": "Dense", "in_features": 12, "out_features": 3}],
               "init": "glorot", "init_scale": 0.01, "loss": "softmax_cross_entropy", "reduction": "mean", "batch": 6}


def is_cnn(spec: dict) -> bool:
    return spec.get("type") == "cnn"


def jax_cnn(spec: dict, params, X):
    """refopt's CNN of a trace-problem spec in JAX: images NHWC, kernels HWIO (``to_jax``), conv by
    ``lax.conv_general_dilated`` plus a broadcast bias (the form kfac-jax's graph matcher recognises as a
    conv2d layer), pooling by ``lax.reduce_window`` (average: zero padding counted, as refopt and torch),
    and the flatten in refopt's NCHW (c, h, w) order, so a dense layer after it keeps refopt's W."""
    N = X.shape[0]
    C, H, W = spec["input_shape"]
    a = X.reshape(N, C, H, W).transpose(0, 2, 3, 1)    # X as the oracle holds it: NCHW flattened
    params = iter(params)
    for layer in spec["layers"]:
        kind = layer if isinstance(layer, str) else layer["layer"]
        if kind == "Conv2d":
            p = next(params)
            a = jax.lax.conv_general_dilated(a, p["W"], tuple(layer["stride"]), [(q, q) for q in layer["padding"]],
                                             rhs_dilation=tuple(layer["dilation"]),
                                             dimension_numbers=("NHWC", "HWIO", "NHWC")) + p["b"][None, None, None]
        elif kind in ("AvgPool2d", "MaxPool2d"):
            k, st = tuple(layer["kernel_size"]), tuple(layer["stride"])
            pad = [(0, 0)] + [(q, q) for q in layer["padding"]] + [(0, 0)]
            if kind == "AvgPool2d":
                a = jax.lax.reduce_window(a, 0.0, jax.lax.add, (1, *k, 1), (1, *st, 1), pad) / (k[0] * k[1])
            else:
                a = jax.lax.reduce_window(a, -jnp.inf, jax.lax.max, (1, *k, 1), (1, *st, 1), pad)
        elif kind == "Flatten":
            a = a.transpose(0, 3, 1, 2).reshape(N, -1)
        elif kind == "Dense":
            p = next(params)
            a = a @ p["W"] + p["b"]
        else:
            a = ACT[kind](a)
    return a


def to_jax(params):
    """refopt's params as JAX arrays, conv kernels OIHW → HWIO."""
    return [{"W": jnp.asarray(np.asarray(p["W"]).transpose(2, 3, 1, 0) if np.ndim(p["W"]) == 4 else p["W"]),
             "b": jnp.asarray(p["b"])} for p in params]


def from_jax(params):
    """The inverse of ``to_jax``, as NumPy arrays."""
    return [{"W": np.asarray(p["W"]).transpose(3, 2, 0, 1) if np.ndim(p["W"]) == 4 else np.asarray(p["W"]),
             "b": np.asarray(p["b"])} for p in params]


def jax_loss(spec: dict):
    """The reduced loss of ``spec`` in JAX, with its likelihood registered for kfac-jax, and an MLP's layers
    registered by hand (a CNN's layers are found by kfac-jax's graph matcher: automatic registration)."""
    acts = None if is_cnn(spec) else [ACT[a] for a in spec["activations"]]

    def loss_fn(params, batch):
        X, y = batch
        if is_cnn(spec):
            z = jax_cnn(spec, params, X)
        else:
            a = X
            for layer, act in zip(params, acts):
                s = a @ layer["W"] + layer["b"]
                s = kfac_jax.register_dense(s, a, layer["W"], layer["b"])
                a = act(s)
            z = a
        B = z.shape[0]
        if spec["loss"] == "softmax_cross_entropy":
            kfac_jax.register_softmax_cross_entropy_loss(z, y)
            logp = jax.nn.log_softmax(z)
            per = -jnp.take_along_axis(logp, y[:, None], axis=1)[:, 0]
        elif spec["loss"] == "gaussian":
            var = spec.get("variance", 1.0)
            weight = 1.0 / z.shape[1] if spec["reduction"] == "mean_all" else 1.0
            kfac_jax.register_normal_predictive_distribution(z, y, variance=var, weight=weight)
            per = 0.5 * jnp.sum((y - z) ** 2, axis=1) / var
        else:  # bernoulli
            weight = float(B) if spec["reduction"] == "sum" else 1.0
            kfac_jax.register_sigmoid_cross_entropy_loss(z, y, weight=weight)
            per = jnp.sum(jnp.maximum(z, 0) - z * y + jnp.log1p(jnp.exp(-jnp.abs(z))), axis=1)
        if spec["reduction"] == "mean_all":
            return jnp.mean(per) / z.shape[1]
        return jnp.sum(per) if spec["reduction"] == "sum" else jnp.mean(per)

    return loss_fn


def hwc_to_chw(C: int, kh: int, kw: int):
    """Index map from refopt's patch order (c, i, j), the rows of an OIHW kernel's W.reshape(O, K), to kfac-jax's
    (i, j, c) (patches_moments returns kernel_spatial_shape + (channels,), the rows of an HWIO kernel's reshape),
    with the bias entry last in both."""
    return [(i * kw + j) * C + c for c in range(C) for i in range(kh) for j in range(kw)] + [C * kh * kw]


def kfac_jax_factors(spec, params, X, y, mode, key):
    """(A, G, scales) per layer of kfac-jax's one-batch estimate (its moving averages are stored normalised).

    A conv block (Conv2DTwoKroneckerFactored) stores A = Σ_{n,l} āāᵀ / (N·L) over patches in (i, j, c) order,
    returned here permuted to refopt's (c, i, j); and G = Σ_{n,l} dy dyᵀ / (N·L), with fixed_scale() = L
    multiplying the whole block: ``scales`` are the blocks' fixed_scale(), L for a conv and 1 for a dense layer."""
    est = kfac_jax.BlockDiagonalCurvature(func=jax_loss(spec), default_estimation_mode=mode,
                                          auto_register_tags=is_cnn(spec))
    args = (params, (X, y))
    state = est.init(jax.random.PRNGKey(0), args, None, None)
    state = est.update_curvature_matrix_estimate(state, ema_old=0.0, ema_new=1.0, identity_weight=0.0,
                                                 batch_size=X.shape[0], rng=key, func_args=args)
    A, G, scales = [], [], []
    for block, bstate, p in zip(est.blocks, state.blocks_states, params):
        fa, fg = bstate.factors
        a = np.asarray(fa.value)
        if np.ndim(p["W"]) == 4:
            kh, kw, C, _ = p["W"].shape
            perm = hwc_to_chw(C, kh, kw)
            a = a[np.ix_(perm, perm)]
        A.append(a)
        G.append(np.asarray(fg.value))
        scales.append(float(block.fixed_scale()))
    return A, G, scales


def cnn_point(spec, point):
    """(X flattened NCHW, y, params) of a CNN spec at ``point``: refopt's init with random biases (its zero
    biases would leave the factors' bias rows at their trivial values)."""
    model, _ = _build(spec)
    X, y = _tiny_data(spec, point)
    params = model.init(point)
    g = np.random.default_rng(500 + point)
    for p in params:
        p["b"] = 0.3 * g.standard_normal(p["b"].shape)
    return X.reshape(X.shape[0], -1), y, params


def dilation_check(args) -> float:
    """kfac-jax on a dilated conv (``DILATED_CNN``): its first layer's A against refopt's (the dilated patches:
    expected to differ) and against refopt's A of the same input under the undilated kernel, normalised by
    N × that kernel's location count (expected to match: kfac-jax ignores rhs_dilation). G and the dense layer
    still match. Returns the largest of the differences expected to be rounding."""
    spec = DILATED_CNN
    model, loss = _build(spec)
    worst_match, worst_dil = 0.0, 0.0
    for point in range(args.points):
        Xn, yn, params = cnn_point(spec, point)
        oracle = network_oracle(model, loss, Xn, yn)
        A_t, G_t, L = kfac_jax_factors(spec, to_jax(params), jnp.asarray(Xn), jnp.asarray(yn), "fisher_empirical",
                                       jax.random.PRNGKey(point))
        A_o, G_o = layer_factors(oracle, params, fisher="empirical", kfac_approx="expand")
        B, C = Xn.shape[0], model.sizes[-1]
        worst_dil = max(worst_dil, rel(A_o[:1], A_t[:1]))
        conv = spec["layers"][0]
        geom = ad.conv_geometry(tuple(spec["input_shape"][1:]), conv["kernel_size"], conv["stride"], conv["padding"], 1)
        P = ad.unfold(Xn.reshape(B, *spec["input_shape"]), geom)      # (N, L', K): the undilated kernel's patches
        A_undilated = input_factor(np.asarray(P).reshape(-1, P.shape[2]))
        worst_match = max(worst_match, rel([A_undilated], A_t[:1]), rel(A_o[1:], A_t[1:]),
                          rel([g * loss.scale(B, C) for g in G_o], [l * g for l, g in zip(L, G_t)]))
    L_true = model.perturbation_shapes(1)[0][1]     # the conv layer's output locations, (N, L, O)
    print(f"{'dilated_cnn':16s} fisher_empirical     points {args.points}  conv A vs refopt {worst_dil:.2e} "
          f"(kfac-jax's L = {L[0]:.0f}, the layer's {L_true}); vs the undilated kernel's A, and G, dense layer: "
          f"{worst_match:.2e}  {'ok' if worst_match <= args.rtol else 'FAIL'}")
    return worst_match


def rel(ours, theirs) -> float:
    return max(float(np.max(np.abs(np.asarray(o) - t)) / max(np.max(np.abs(t)), 1e-300))
               for o, t in zip(ours, theirs))


def kfac_jax_run(spec, params, X, y, steps, lr, momentum, damping, burnin, seed=0):
    """kfac_jax.Optimizer for ``steps`` steps at fixed lr / momentum / damping on the full batch (X, y).

    Returns (params after every step, signs of every step): step t's key is fold_in(PRNGKey(seed), t);
    at step 0 with a burn-in, ``Optimizer.step`` splits it into (key, burnin_key) and the burn-in's
    keys are split(burnin_key, n); each estimate's signs are rademacher(key, (B, C)) (one loss, one sample).
    """
    fn = jax_loss(spec)
    opt = kfac_jax.Optimizer(
        value_and_grad_func=jax.value_and_grad(fn), l2_reg=0.0, use_adaptive_learning_rate=False,
        use_adaptive_momentum=False, use_adaptive_damping=False, num_burnin_steps=burnin,
        estimation_mode="ggn_curvature_prop", use_automatic_registration=is_cnn(spec), multi_device=False)
    batch = (X, y)
    B, C = X.shape[0], _build(spec)[0].sizes[-1]
    state = opt.init(params, jax.random.PRNGKey(12345), batch)
    trajectory, signs = [], []
    for t in range(steps):
        key = jax.random.fold_in(jax.random.PRNGKey(seed), t)
        keys = [key]
        if t == 0 and burnin:   # Optimizer.step: rng, burnin_rng = split(rng, 2); _burnin_phase: split(burnin_rng, n)
            step_key, burnin_key = jax.random.split(key, 2)
            keys = list(jax.random.split(burnin_key, burnin)) + [step_key]
        signs.append(np.stack([np.asarray(jax.random.rademacher(k, (B, C)), dtype=np.float64) for k in keys]))
        feed = dict(data_iterator=iter([batch] * (burnin + 1))) if t == 0 and burnin else dict(batch=batch)
        params, state, _ = opt.step(params, state, key, learning_rate=lr, momentum=momentum, damping=damping,
                                    global_step_int=t, **feed)
        trajectory.append(from_jax(params))
    return trajectory, signs


def refopt_run(spec, params, Xn, yn, signs, lr, momentum, damping, burnin):
    """refopt's KFAC under the kfac-jax profile, the same lr / momentum / damping, kfac-jax's signs injected."""
    from refopt.optim.kfac import KFAC
    from refopt.verify.profiles import get_profile
    model, loss = _build(spec)
    hp = dict(get_profile("google-deepmind/kfac-jax").hyperparameters, lr=lr, momentum=momentum,
              damping=damping, burnin=burnin)
    opt = KFAC(**hp)
    oracle = network_oracle(model, loss, Xn, yn)
    state = opt.init(params)
    trajectory = []
    for s in signs:
        params, state, info = opt.update(params, state, oracle, draws=s)
        trajectory.append(params)
    return trajectory


def optimizer_loop(args) -> float:
    """Max relative parameter difference of kfac_jax.Optimizer and refopt's profile over ``args.steps``."""
    worst = 0.0
    for name, spec in TRACE_PROBLEMS.items():
        model, _ = _build(spec)
        for burnin in (0, 10):
            r = 0.0
            for point in range(args.points):
                Xn, yn = _tiny_data(spec, point)
                Xn = Xn.reshape(Xn.shape[0], -1)   # a CNN's images NCHW, flattened as the oracle takes them
                params = model.init(point)
                jparams = to_jax(params)
                theirs, signs = kfac_jax_run(spec, jparams, jnp.asarray(Xn), jnp.asarray(yn), args.steps,
                                             args.lr, args.momentum, args.damping, burnin, seed=point)
                ours = refopt_run(spec, params, Xn, yn, signs, args.lr, args.momentum, args.damping, burnin)
                for o, t in zip(ours, theirs):
                    r = max(r, rel([p[k] for p in o for k in ("W", "b")], [p[k] for p in t for k in ("W", "b")]))
            worst = max(worst, r)
            print(f"{name:16s} Optimizer burnin {burnin:2d} steps {args.steps} points {args.points}  "
                  f"max rel. diff {r:.2e}  {'ok' if r <= args.rtol_steps else 'FAIL'}")
    return worst


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--points", type=int, default=5, help="parameter points (seeds) per problem")
    ap.add_argument("--rtol", type=float, default=1e-12)
    ap.add_argument("--steps", type=int, default=30, help="optimizer steps (0: factors only)")
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--momentum", type=float, default=0.5)
    ap.add_argument("--damping", type=float, default=1e-2)
    ap.add_argument("--rtol-steps", type=float, default=1e-10, help="bound on the optimizer loop's difference")
    args = ap.parse_args(argv)
    print(f"kfac-jax {getattr(kfac_jax, '__version__', '?')}, jax {jax.__version__}")
    worst = 0.0
    problems = dict(TRACE_PROBLEMS)
    problems["tiny_regression_mean_all"] = dict(TRACE_PROBLEMS["tiny_regression"], reduction="mean_all")
    for name, spec in problems.items():
        model, loss = _build(spec)
        res = {"ggn_curvature_prop": 0.0, "fisher_empirical": 0.0}
        for point in range(args.points):
            Xn, yn, params = cnn_point(spec, point) if is_cnn(spec) else (*_tiny_data(spec, point), model.init(point))
            oracle = network_oracle(model, loss, Xn, yn)
            jparams = to_jax(params)
            X, y = jnp.asarray(Xn), jnp.asarray(yn)
            B, C = Xn.shape[0], model.sizes[-1]
            key = jax.random.PRNGKey(100 + point)
            # curvature propagation: kfac-jax's signs from its key (single loss: split skipped). A conv block's
            # G times its fixed_scale L is refopt's "expand" G (kfac_jax_factors)
            A_t, G_t, L = kfac_jax_factors(spec, jparams, X, y, "ggn_curvature_prop", key)
            signs = np.asarray(jax.random.rademacher(key, (B, C)), dtype=np.float64)[None]
            A_o, G_o = layer_factors(oracle, params, fisher="curvature_prop", labels=signs, kfac_approx="expand")
            res["ggn_curvature_prop"] = max(res["ggn_curvature_prop"], rel(A_o, A_t),
                                            rel(G_o, [l * g for l, g in zip(L, G_t)]))
            # empirical Fisher: kfac-jax's G is refopt's per-example empirical G × scale
            A_t, G_t, L = kfac_jax_factors(spec, jparams, X, y, "fisher_empirical", key)
            A_o, G_o = layer_factors(oracle, params, fisher="empirical", kfac_approx="expand")
            res["fisher_empirical"] = max(res["fisher_empirical"], rel(A_o, A_t),
                                          rel([g * loss.scale(B, C) for g in G_o], [l * g for l, g in zip(L, G_t)]))
            if is_cnn(spec):   # without the scale L the conv blocks' G differ by the factor L
                res["conv G unscaled"] = max(res.get("conv G unscaled", 0.0),
                                             rel([g * loss.scale(B, C) for g, l in zip(G_o, L) if l != 1.0],
                                                 [g for g, l in zip(G_t, L) if l != 1.0]))
        for mode, r in res.items():
            if mode == "conv G unscaled":   # a control: it must differ (1 − 1/L)
                print(f"{name:16s} {mode:20s} points {args.points}  max rel. diff {r:.2e}  (control: L·G matches)")
                continue
            worst = max(worst, r)
            print(f"{name:16s} {mode:20s} points {args.points}  max rel. diff {r:.2e}  "
                  f"{'ok' if r <= args.rtol else 'FAIL'}")
    worst = max(worst, dilation_check(args))
    ok = worst <= args.rtol
    if args.steps:
        ok = optimizer_loop(args) <= args.rtol_steps and ok
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
