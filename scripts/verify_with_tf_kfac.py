#!/usr/bin/env python
"""Check the tensorflow/kfac profile against the real tensorflow/kfac (``pip install kfac``), step by step.

For every MLP trace problem (``refopt.verify.trace.MLP_TRACE_PROBLEMS``; the script builds dense networks) the script takes refopt's trace of the
``tensorflow/kfac`` profile (``make_trace``: data, θ_0, hyperparameters, the model-sampled labels of every
step), rebuilds the MLP as a TF1 graph (``tf.compat.v1``, float64 variables W, b), registers the layers
(``register_fully_connected``) and the loss (softmax CE / normal predictive distribution with var 1 /
multi-Bernoulli) in a ``kfac.LayerCollection``, and runs ``kfac.PeriodicInvCovUpdateKfacOpt``
(invert_every, cov_update_every=1, momentum_type='regular', norm_constraint) on the same reduced loss.
The library's sampled targets (``loss.sample``) are replaced by a placeholder fed with refopt's draws of
that step, so both sides use identical labels. It prints
max_t max_leaf |θ_t^theirs − θ_t^refopt|∞ / |θ_t^refopt|∞.

The library casts Python-float hyperparameters with ``tf.cast`` / ``tf.convert_to_tensor``, which makes a
float32 tensor first: lr, √λ (``compute_pi_adjusted_damping``), momentum, cov_ema_decay and √coeff are
rounded to float32 even in a float64 model. The script runs twice: ``float64`` (those scalars passed as
float64 tensors; checked against ``--rtol``) and ``python`` (Python floats, the library as usually called;
the difference is that rounding). A sum-reduced loss is registered with coeff=B: kfac takes its losses as
batch averages, refopt's Fisher is the reduced loss's (the profile's gaps). The NormalMean loss's variance
must be a Python float (an assert) and makes a float32 tfp Normal; the script swaps in a float64 constant.

Last run (kfac 0.2.4 from PyPI, tensorflow-cpu 2.21.0, tensorflow-probability 0.25.0, tf-keras 2.21.0;
kfac's pin tensorflow-probability==0.8 ignored; 40 steps, "defaults" and "non-default" below): float64
scalars tiny_mlp ≤ 9.4e-11 (defaults: roundoff 2e-15 at step 1, amplified by λ = 1e-3 and μ = 0.9;
2.6e-15 non-default), tiny_regression ≤ 2.7e-15, tiny_logistic ≤ 9.3e-16; Python floats ≤ 3.8e-3
(tiny_mlp defaults), ≤ 1.1e-7 elsewhere. A refopt run with factor_init='mean' differs by 0.56,
damping_scheme='tikhonov' by 5.7 (the check can fail). Without tensorflow/kfac it prints a message and
exits 0 (pip install tensorflow-cpu tensorflow-probability tf-keras; pip install --no-deps kfac).

    python scripts/verify_with_tf_kfac.py [--steps 40] [--rtol 1e-9]
"""
from __future__ import annotations

import argparse
from importlib import metadata
import os
import sys
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
try:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import tensorflow as tf
        import kfac
except ImportError:  # pragma: no cover - depends on the machine
    print("verify_with_tf_kfac: tensorflow/kfac is not installed; skipping "
          "(pip install tensorflow-cpu tensorflow-probability tf-keras; pip install --no-deps kfac)")
    sys.exit(0)

import numpy as np  # noqa: E402

from refopt.verify import TRACE_PROBLEMS, make_trace  # noqa: E402
from refopt.verify.trace import MLP_TRACE_PROBLEMS  # noqa: E402

PROFILE = "tensorflow/kfac"
SETTINGS = {
    "defaults": {"lr": 0.1, "damping": 1e-3, "momentum": 0.9, "decay": 0.95, "inverse_interval": 10},
    "non-default": {"lr": 0.05, "damping": 1e-2, "momentum": 0.5, "decay": 0.9, "inverse_interval": 3,
                    "kl_clip": 1e-2},
}


def tf_kfac_run(spec, trace, steps, hp, scalars="float64"):
    """θ_1..θ_T of PeriodicInvCovUpdateKfacOpt from the trace's θ_0, fed refopt's label draws; ``scalars``:
    "float64" passes lr, λ, μ and ε as float64 tensors, "python" as Python floats (the library's casts
    ``tf.cast(python float, float64)`` go through float32 then)."""
    tf.compat.v1.disable_eager_execution()
    tf.compat.v1.reset_default_graph()
    f64 = tf.float64
    c = (lambda v: tf.constant(v, dtype=f64)) if scalars == "float64" else (lambda v: v)
    X = tf.constant(np.asarray(trace.X), dtype=f64)
    lc = kfac.LayerCollection()
    h, variables = X, []
    for l, p in enumerate(trace.params[0]):
        W = tf.compat.v1.get_variable(f"W{l}", initializer=np.array(p["W"]), dtype=f64)
        b = tf.compat.v1.get_variable(f"b{l}", initializer=np.array(p["b"]), dtype=f64)
        s = tf.matmul(h, W) + b
        lc.register_fully_connected((W, b), h, s)
        variables.append((W, b))
        h = tf.tanh(s) if spec["activations"][l] == "tanh" else s
    z, y = h, np.asarray(trace.y)
    # refopt's Fisher is that of the reduced loss: for a sum over B examples, B × the per-example average,
    # which kfac reaches with coeff=B (its losses are taken as batch averages, coeff 1).
    coeff = float(z.shape[0]) if spec["reduction"] == "sum" else 1.0
    if spec["loss"] == "softmax_cross_entropy":
        per = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=tf.constant(y), logits=z)
        lc.register_softmax_cross_entropy_loss(z, coeff=c(coeff))
        draw = tf.compat.v1.placeholder(tf.int64, shape=(z.shape[0],))
    elif spec["loss"] == "gaussian":
        var = spec.get("variance", 1.0)
        per = 0.5 * tf.reduce_sum((tf.constant(y) - z) ** 2, axis=1) / var
        lc.register_normal_predictive_distribution(z, var=float(var), coeff=c(coeff))
        lc.losses[0]._var = tf.constant(var, dtype=f64)   # its tfp Normal is float32 for a Python-float var
        draw = tf.compat.v1.placeholder(f64, shape=z.shape)
    else:
        per = tf.reduce_sum(tf.nn.sigmoid_cross_entropy_with_logits(labels=tf.constant(y), logits=z), axis=1)
        lc.register_multi_bernoulli_predictive_distribution(z, coeff=c(coeff))
        draw = tf.compat.v1.placeholder(f64, shape=z.shape)
    loss = tf.reduce_sum(per) if spec["reduction"] == "sum" else tf.reduce_mean(per)
    lc.losses[0].sample = lambda seed: draw     # refopt's labels instead of the library's own sampling
    opt = kfac.PeriodicInvCovUpdateKfacOpt(
        invert_every=hp["inverse_interval"], cov_update_every=1, learning_rate=c(hp["lr"]), damping=c(hp["damping"]),
        layer_collection=lc, momentum=c(hp["momentum"]), momentum_type="regular", cov_ema_decay=c(hp["decay"]),
        norm_constraint=hp.get("kl_clip"), dtype=f64)
    train = opt.minimize(loss)
    out = []
    with tf.compat.v1.Session() as sess:
        sess.run(tf.compat.v1.global_variables_initializer())
        for t in range(steps):
            sess.run(train, feed_dict={draw: np.asarray(trace.draws[t])[0]})
            out.append([{"W": sess.run(W), "b": sess.run(b)} for W, b in variables])
    return out


def max_rel(ours, theirs) -> float:
    worst = 0.0
    for o_t, t_t in zip(ours, theirs):
        for o, t in zip(o_t, t_t):
            for k in ("W", "b"):
                oo = np.asarray(o[k])
                worst = max(worst, float(np.max(np.abs(oo - t[k])) / max(np.max(np.abs(oo)), 1e-300)))
    return worst


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--rtol", type=float, default=1e-9)
    ap.add_argument("--problems", nargs="*", default=list(MLP_TRACE_PROBLEMS), choices=MLP_TRACE_PROBLEMS)
    args = ap.parse_args(argv)
    print(f"kfac {metadata.version('kfac')}, tensorflow {tf.__version__}, {args.steps} steps")
    failed = False
    for setting, hp in SETTINGS.items():
        for problem in args.problems:
            spec = TRACE_PROBLEMS[problem]
            trace = make_trace("kfac", {**hp}, problem, args.steps, 0, PROFILE)
            for scalars in ("float64", "python"):
                theirs = tf_kfac_run(spec, trace, args.steps, hp, scalars)
                d = max_rel(trace.params[1:], theirs)
                bad = scalars == "float64" and not d <= args.rtol
                failed |= bad
                print(f"{setting:12s} {problem:16s} scalars {scalars:7s}: max rel diff {d:.2e}"
                      f"{'  FAIL' if bad else ''}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
