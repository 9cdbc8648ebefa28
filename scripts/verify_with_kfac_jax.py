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

It prints the max relative difference max|ours − theirs| / max|theirs| per mode and problem, and exits 1
if one exceeds ``--rtol``. Without kfac_jax installed it prints a message and exits 0.

    python scripts/verify_with_kfac_jax.py [--points 5] [--rtol 1e-12]
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


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--points", type=int, default=5, help="parameter points (seeds) per problem")
    ap.add_argument("--rtol", type=float, default=1e-12)
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
    return 0 if worst <= args.rtol else 1


if __name__ == "__main__":
    sys.exit(main())
