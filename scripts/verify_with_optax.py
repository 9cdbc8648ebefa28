#!/usr/bin/env python
"""Check refopt's optax profiles against the real optax (JAX, float64), step by step.

For every optax profile (refopt.verify.profiles) and every trace problem (refopt.verify.TRACE_PROBLEMS),
the script takes refopt's golden trace of that profile (``make_trace``: data, initial parameters,
hyperparameters), rebuilds the network in JAX (W of shape (fan_in, fan_out), s = a @ W + b; the tiny_cnn
problem with lax.conv_general_dilated on NCHW/OIHW and lax.reduce_window pools), runs the
optax transformation on it for the same number of steps, writes optax's parameter sequence (and, for
optax.contrib.sophia, the Rademacher probes optax drew, recomputed from its PRNG key exactly as its
Hutchinson estimator does) into a trace, and checks that trace with ``refopt.verify.check_trace`` (the
check ``refopt verify check`` runs on a file). It prints, per profile, setting and problem, "matches"
or the first divergence. Each profile runs with its library defaults and with exaggerated settings
(larger lr, ε, decay, γ, eps_root > 0 for Adam; for Sophia update_interval 2, so that the Hessian EMA
is refreshed within the run; for L-BFGS memory 2, so that the history wraps around) that make a wrong
convention show above the
tolerance.

Divergences that the profile's documented gaps explain are marked "expected" (exit status 0); any
other divergence makes the exit status 1. Without optax/jax installed the script prints a message and
exits 0.

    python scripts/verify_with_optax.py [--steps 5] [--rtol 1e-10] [--atol 1e-12] [--out DIR]
"""
from __future__ import annotations

import sys

try:
    import jax
    import jax.numpy as jnp
    import optax
except ImportError:  # pragma: no cover - depends on the machine
    print("verify_with_optax: optax/jax is not installed; skipping (pip install optax to run this check)")
    sys.exit(0)

jax.config.update("jax_enable_x64", True)

import numpy as np  # noqa: E402

from refopt.verify import Trace  # noqa: E402
from refopt.verify.external import check_profiles, parse_arguments  # noqa: E402

# profile -> (optax transformation from refopt hyperparameters, overrides of the "exaggerated" setting)
SETUPS = {
    "optax.sgd": (lambda hp: optax.sgd(hp["lr"], momentum=hp.get("momentum") or None),
                  {"lr": 0.3, "momentum": 0.9}),
    "optax.adam": (lambda hp: optax.adam(hp["lr"], b1=hp["beta1"], b2=hp["beta2"], eps=hp["eps"],
                                         eps_root=hp.get("eps_root", 0.0)),
                   {"lr": 0.05, "eps": 1e-3, "eps_root": 1e-3}),
    "optax.adamw": (lambda hp: optax.adamw(hp["lr"], b1=hp["beta1"], b2=hp["beta2"], eps=hp["eps"],
                                           eps_root=hp.get("eps_root", 0.0), weight_decay=hp["weight_decay"]),
                    {"lr": 0.05, "eps": 1e-3, "eps_root": 1e-3, "weight_decay": 0.5}),
    "optax.adagrad": (lambda hp: optax.adagrad(hp["lr"], initial_accumulator_value=hp["initial_accumulator"],
                                               eps=hp["eps"]),
                      {"lr": 0.3, "eps": 1e-2, "initial_accumulator": 0.5}),
    "optax.lbfgs": (lambda hp: optax.lbfgs(memory_size=hp["memory"]), {"memory": 2}),
    "optax.lbfgs+no_linesearch": (lambda hp: optax.lbfgs(memory_size=hp["memory"], linesearch=None),
                                  {"memory": 2}),
    "optax.contrib.sophia": (lambda hp: optax.contrib.sophia(hp["lr"], b1=hp["beta1"], b2=hp["beta2"], eps=hp["eps"],
                                                             weight_decay=hp["weight_decay"], gamma=hp["gamma"],
                                                             update_interval=hp["k"]),
                             {"lr": 0.05, "gamma": 100.0, "k": 2}),
}


ACT_FNS = {"tanh": jnp.tanh, "identity": lambda s: s, "relu": jax.nn.relu, "sigmoid": jax.nn.sigmoid}


def _pads(layer) -> list:
    """A conv or pool layer's (before, after) zero padding of H and W, as refopt's conv_geometry sets it."""
    padding = layer.get("padding", [0, 0])
    if padding == "valid":
        return [(0, 0), (0, 0)]
    if padding == "same":  # total d(k − 1) split ⌊·/2⌋ before, the rest after (PyTorch's and refopt's rule)
        totals = [d * (k - 1) for d, k in zip(layer["dilation"], layer["kernel_size"])]
        return [(t // 2, t - t // 2) for t in totals]
    return [(p, p) for p in padding]


def jax_network(spec):
    """The trace problem's network as a function (params, X) -> logits written with JAX's own operations: dense
    layers a @ W + b; for a "cnn" problem lax.conv_general_dilated with NCHW/OIHW dimension numbers and
    lax.reduce_window pools (average pooling counts zero padding, as PyTorch and refopt), so that JAX's autodiff,
    not refopt's, differentiates the convolutions."""
    if spec["type"] == "mlp":
        def mlp(params, a):
            for layer, act in zip(params, spec["activations"]):
                a = ACT_FNS[act](a @ layer["W"] + layer["b"])
            return a
        return mlp

    def cnn(params, a):
        l = 0
        for layer in spec["layers"]:
            if isinstance(layer, str):
                a = ACT_FNS[layer](a)
                continue
            kind = layer["layer"]
            if kind == "Conv2d":
                a = jax.lax.conv_general_dilated(a, params[l]["W"], tuple(layer["stride"]), _pads(layer),
                                                 rhs_dilation=tuple(layer["dilation"]),
                                                 dimension_numbers=("NCHW", "OIHW", "NCHW"))
                a = a + params[l]["b"][None, :, None, None]
                l += 1
            elif kind == "Dense":
                a = a @ params[l]["W"] + params[l]["b"]
                l += 1
            elif kind in ("MaxPool2d", "AvgPool2d"):
                window, strides = (1, 1, *layer["kernel_size"]), (1, 1, *layer["stride"])
                pads = [(0, 0), (0, 0), *_pads(layer)]
                if kind == "MaxPool2d":
                    a = jax.lax.reduce_window(a, -jnp.inf, jax.lax.max, window, strides, pads,
                                              window_dilation=(1, 1, *layer["dilation"]))
                else:
                    a = jax.lax.reduce_window(a, 0.0, jax.lax.add, window, strides, pads) / float(np.prod(window))
            else:  # Flatten, C order
                a = a.reshape(a.shape[0], -1)
        return a
    return cnn


def jax_loss_fn(spec, X, y):
    """The trace problem's reduced loss as a function of a JAX params tree [{"W", "b"}, ...]."""
    net = jax_network(spec)
    Xj = jnp.asarray(np.asarray(X))
    yj = jnp.asarray(np.asarray(y))

    def loss(params):
        z = net(params, Xj)
        if spec["loss"] == "softmax_cross_entropy":
            per = -jnp.take_along_axis(jax.nn.log_softmax(z, axis=1), yj[:, None], axis=1)[:, 0]
        elif spec["loss"] == "gaussian":
            per = jnp.sum((z - yj) ** 2, axis=1) / (2.0 * spec.get("variance", 1.0))
        else:  # bernoulli: Σ_c softplus(z) − y z
            per = jnp.sum(jax.nn.softplus(z) - yj * z, axis=1)
        return jnp.mean(per) if spec["reduction"] == "mean" else jnp.sum(per)

    return loss


def sophia_probes(opt_state, params, update_interval):
    """The probes optax's hutchinson_estimator_diag_hessian draws in this update (None if it does not)."""
    sophia_state = opt_state[0]
    if int(sophia_state.count) % update_interval != 0:
        return None
    _, subkey = jax.random.split(sophia_state.hessian_fn_state.key)
    signs = optax.tree.random_like(subkey, params, jax.random.rademacher, dtype=jnp.float32)
    return [[{k: np.asarray(v, dtype=np.float64) for k, v in layer.items()} for layer in signs]]


def run_optax(profile: str, trace: Trace) -> Trace:
    """optax's parameter sequence (and Sophia's probes) from the trace's data and initial parameters."""
    spec, hp = trace.meta["problem"], trace.meta["hyperparameters"]
    make, _ = SETUPS[profile]
    tx = make(hp)
    loss_fn = jax_loss_fn(spec, trace.X, trace.y)
    value_and_grad = jax.value_and_grad(loss_fn)
    params = [{k: jnp.asarray(np.asarray(v)) for k, v in layer.items()} for layer in trace.params[0]]
    state = tx.init(params)

    @jax.jit  # one compiled step (eager lax control flow in the line search and in Sophia is slow)
    def step(params, state):
        value, grads = value_and_grad(params)
        extra = {}
        if profile.startswith("optax.lbfgs"):
            extra = {"value": value, "grad": grads, "value_fn": loss_fn}
        elif profile == "optax.contrib.sophia":
            extra = {"obj_fn": loss_fn}
        updates, state = tx.update(grads, state, params, **extra)
        return optax.apply_updates(params, updates), state

    seq, draws = [trace.params[0]], []
    for _ in range(trace.steps):
        draws.append(sophia_probes(state, params, hp["k"]) if profile == "optax.contrib.sophia" else None)
        params, state = step(params, state)
        seq.append([{k: np.asarray(v, dtype=np.float64) for k, v in layer.items()} for layer in params])
    meta = dict(trace.meta, producer=f"optax {optax.__version__}, jax {jax.__version__}")
    return Trace(meta, trace.X, trace.y, seq, [], [], draws)


def expected_gap(profile: str, trace: Trace, divergence) -> str | None:
    """Why a divergence is expected from the profile's documented gaps, or None."""
    spec = trace.meta["problem"]
    if profile.startswith("optax.lbfgs"):
        from refopt.optim import make_optimizer  # noqa: PLC0415
        from refopt.verify.trace import problem_oracle  # noqa: PLC0415
        oracle = problem_oracle(spec, trace.X, trace.y)
        opt = make_optimizer("lbfgs", **trace.meta["hyperparameters"])
        params, state = trace.params[0], opt.init(trace.params[0])
        for _ in range(divergence.step):
            params, state, info = opt.update(params, state, oracle)
            if info.get("reset"):
                return "after a pair with sᵀy < 0 refopt reset a non-descent direction to −g (gap)"
        if info["nfev"] > 1:
            return (f"the unit step failed the strong Wolfe conditions at step {divergence.step} (gap: optax's "
                    "zoom search picks other trial points)")
    return None


def main(argv=None) -> int:
    args = parse_arguments(__doc__.split("\n\n")[0], "optax", argv)
    print(f"optax {optax.__version__}, jax {jax.__version__} (x64); rule |optax − refopt| ≤ {args.atol:g} + "
          f"{args.rtol:g}·|refopt|, {args.steps} steps")
    unexpected = check_profiles("optax", SETUPS, run_optax, expected_gap, args.steps, args.seed, args.rtol, args.atol,
                                args.out, width=27)
    print("all optax profiles behave as documented" if unexpected == 0 else f"{unexpected} unexpected divergence(s)")
    return 0 if unexpected == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
