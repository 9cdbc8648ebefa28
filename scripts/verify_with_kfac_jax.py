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
≤ 4.6e-13 (tiny_mlp, rounding growth).

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

from refopt.curvature import layer_factors  # noqa: E402
from refopt.oracle import Oracle  # noqa: E402
from refopt.verify.trace import TRACE_PROBLEMS, _build, _tiny_data  # noqa: E402

ACT = {"tanh": jnp.tanh, "identity": lambda s: s}


def jax_loss(spec: dict):
    """The reduced loss of ``spec`` in JAX, with its layers and likelihood registered for kfac-jax."""
    acts = [ACT[a] for a in spec["activations"]]

    def loss_fn(params, batch):
        X, y = batch
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


def kfac_jax_factors(spec, params, X, y, mode, key):
    """(A, G) per layer of kfac-jax's one-batch estimate (its moving averages are stored normalised)."""
    est = kfac_jax.BlockDiagonalCurvature(func=jax_loss(spec), default_estimation_mode=mode,
                                          auto_register_tags=False)
    args = (params, (X, y))
    state = est.init(jax.random.PRNGKey(0), args, None, None)
    state = est.update_curvature_matrix_estimate(state, ema_old=0.0, ema_new=1.0, identity_weight=0.0,
                                                 batch_size=X.shape[0], rng=key, func_args=args)
    A, G = [], []
    for block in state.blocks_states:
        fa, fg = block.factors
        A.append(np.asarray(fa.value))
        G.append(np.asarray(fg.value))
    return A, G


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
        estimation_mode="ggn_curvature_prop", use_automatic_registration=False, multi_device=False)
    batch = (X, y)
    B, C = X.shape[0], spec["sizes"][-1]
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
        trajectory.append([{"W": np.asarray(p["W"]), "b": np.asarray(p["b"])} for p in params])
    return trajectory, signs


def refopt_run(spec, params, Xn, yn, signs, lr, momentum, damping, burnin):
    """refopt's KFAC under the kfac-jax profile, the same lr / momentum / damping, kfac-jax's signs injected."""
    from refopt.optim.kfac import KFAC
    from refopt.verify.profiles import get_profile
    model, loss = _build(spec)
    hp = dict(get_profile("google-deepmind/kfac-jax").hyperparameters, lr=lr, momentum=momentum,
              damping=damping, burnin=burnin)
    opt = KFAC(**hp)
    oracle = Oracle(model, loss, Xn, yn)
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
                params = model.init(point)
                jparams = [{"W": jnp.asarray(p["W"]), "b": jnp.asarray(p["b"])} for p in params]
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
            Xn, yn = _tiny_data(spec, point)
            params = model.init(point)
            oracle = Oracle(model, loss, Xn, yn)
            jparams = [{"W": jnp.asarray(p["W"]), "b": jnp.asarray(p["b"])} for p in params]
            X, y = jnp.asarray(Xn), jnp.asarray(yn)
            B, C = Xn.shape[0], spec["sizes"][-1]
            key = jax.random.PRNGKey(100 + point)
            # curvature propagation: kfac-jax's signs from its key (single loss: split skipped)
            A_t, G_t = kfac_jax_factors(spec, jparams, X, y, "ggn_curvature_prop", key)
            signs = np.asarray(jax.random.rademacher(key, (B, C)), dtype=np.float64)[None]
            A_o, G_o = layer_factors(oracle, params, fisher="curvature_prop", labels=signs)
            res["ggn_curvature_prop"] = max(res["ggn_curvature_prop"], rel(A_o, A_t), rel(G_o, G_t))
            # empirical Fisher: kfac-jax's G is refopt's per-example empirical G × scale
            A_t, G_t = kfac_jax_factors(spec, jparams, X, y, "fisher_empirical", key)
            A_o, G_o = layer_factors(oracle, params, fisher="empirical")
            res["fisher_empirical"] = max(res["fisher_empirical"], rel(A_o, A_t), rel([g * loss.scale(B, C) for g in G_o], G_t))
        for mode, r in res.items():
            worst = max(worst, r)
            print(f"{name:16s} {mode:20s} points {args.points}  max rel. diff {r:.2e}  "
                  f"{'ok' if r <= args.rtol else 'FAIL'}")
    ok = worst <= args.rtol
    if args.steps:
        ok = optimizer_loop(args) <= args.rtol_steps and ok
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
