"""Benchmark refopt's autodiff against a hand-written NumPy backprop and HIPS autograd.

Model: MLP 256-512-512-10, tanh, softmax cross-entropy (mean), batch 512, float64. Timed, each the
median of several repeats in one process:

* hand-written backprop (forward + backward written out in NumPy): the floor for a gradient;
* refopt ``value_and_grad``; HIPS autograd ``value_and_grad``;
* refopt HVP one-shot (``ad.hvp``, forward-over-reverse) and amortised (``ad.hvp_operator``: the
  gradient recorded once, then one reverse sweep per product); HIPS autograd's HVP (``make_hvp``);
* refopt GGN-vector product one-shot (``curvature.ggn_vp``) and through ``Oracle.curvature_operator``.

Then a tiny MLP (10-32-32-3, batch 32) where graph overhead dominates: refopt's gradient against
autograd's. Targets (issue 2): gradient ≤ 1.15× hand-written; HVP ≤ 2.5× refopt's gradient; GGN-vp ≤
2.5× refopt's gradient; tiny-MLP gradient no slower than autograd.

Run:  python scripts/bench_autodiff.py [--quick] [--repeats N] [--threads N]

The functions are timed round-robin, so load changes hit all of them alike; on a busy machine,
``--threads 1`` (or OPENBLAS_NUM_THREADS=1) keeps BLAS threads from fighting and the ratios stable.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))  # run from a checkout

from refopt import autodiff as ad
from refopt import curvature as C
from refopt import tree as T
from refopt.nn import MLP, SoftmaxCrossEntropy
from refopt.oracle import Oracle

try:
    import autograd
    import autograd.numpy as anp
    from autograd.scipy.special import logsumexp as a_logsumexp
except ImportError:  # the comparison is optional
    autograd = None


def median_times(fns: dict, repeats: int, warmup: int = 1) -> dict:
    """Median wall time in seconds of each ``fn()`` in ``fns``.

    The functions are timed round-robin (one call of each per round), so a change in the machine's
    load during the run affects all of them alike and the ratios stay meaningful on a shared machine.
    """
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}


def handwritten_value_and_grad(params, X, y):
    """Forward and backward pass of a tanh MLP with softmax cross-entropy (mean), written out."""
    B = X.shape[0]
    acts = [X]
    a = X
    for l, p in enumerate(params):
        s = a @ p["W"] + p["b"]
        a = np.tanh(s) if l < len(params) - 1 else s
        acts.append(a)
    z = acts[-1]
    m = z.max(axis=1, keepdims=True)
    e = np.exp(z - m)
    se = e.sum(axis=1, keepdims=True)
    loss = float(np.mean(np.log(se[:, 0]) + m[:, 0] - z[np.arange(B), y]))
    delta = e / se
    delta[np.arange(B), y] -= 1.0
    delta /= B
    grads = [None] * len(params)
    for l in range(len(params) - 1, -1, -1):
        a_in = acts[l]
        grads[l] = {"W": a_in.T @ delta, "b": delta.sum(axis=0)}
        if l:
            delta = (delta @ params[l]["W"].T) * (1.0 - acts[l] ** 2)
    return loss, grads


def autograd_loss(params, X, y):
    a = X
    for l, p in enumerate(params):
        s = anp.dot(a, p["W"]) + p["b"]
        a = anp.tanh(s) if l < len(params) - 1 else s
    return anp.mean(a_logsumexp(a, axis=1) - a[np.arange(X.shape[0]), y])


def problem(sizes, batch, seed=0):
    model = MLP(sizes, activation="tanh")
    params = model.init(seed)
    gen = np.random.default_rng(seed + 1)
    X = gen.standard_normal((batch, sizes[0]))
    y = gen.integers(0, sizes[-1], size=batch)
    v = T.unravel(gen.standard_normal(T.size(params)), params)
    return model, params, X, y, v


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats (a smoke run, ~10 s)")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats per measurement")
    parser.add_argument("--threads", type=int, default=None,
                        help="BLAS threads (needs threadpoolctl); 1 gives stable ratios on a shared machine")
    args = parser.parse_args(argv)
    repeats = args.repeats or (3 if args.quick else 15)
    if args.threads is not None:
        try:
            from threadpoolctl import threadpool_limits  # noqa: PLC0415 (optional)
        except ImportError:
            parser.error("--threads needs threadpoolctl (pip install threadpoolctl), or set OPENBLAS_NUM_THREADS")
        threadpool_limits(args.threads)

    sizes, batch = [256, 512, 512, 10], 512
    model, params, X, y, v = problem(sizes, batch)
    loss = SoftmaxCrossEntropy()
    oracle = Oracle(model, loss, X, y)

    def f(p):
        return loss(model.apply(p, X), y, check=False)

    # Sanity: every method computes the same gradient, so the timings compare like with like.
    ref_val, ref_g = handwritten_value_and_grad(params, X, y)
    val, g = ad.value_and_grad(f)(params)
    assert abs(float(val) - ref_val) < 1e-10 and float(T.norm(T.sub(g, ref_g))) < 1e-10

    _, hv = ad.hvp_operator(f, params)
    op = oracle.curvature_operator(params, "ggn")
    fns = {
        "hand": lambda: handwritten_value_and_grad(params, X, y),
        "grad": lambda: ad.value_and_grad(f)(params),
        "hvp": lambda: ad.hvp(f, params, v),
        "hvp_op": lambda: hv(v),
        "hvp_rec": lambda: ad.hvp_operator(f, params)[1](v),
        "ggn": lambda: C.ggn_vp(model, loss, params, X, y, v),
        "ggn_op": lambda: op(v),
    }
    if autograd is not None:
        ag_vg = autograd.value_and_grad(autograd_loss)
        ag_hvp = autograd.make_hvp(autograd_loss)
        fns["ag"] = lambda: ag_vg(params, X, y)
        fns["ag_hvp"] = lambda: ag_hvp(params, X, y)[0](v)
    t = median_times(fns, repeats)
    rows = [
        ("hand-written backprop (value+grad)", t["hand"], None),
        ("refopt value_and_grad", t["grad"], ("hand-written", t["grad"] / t["hand"], 1.15)),
        ("refopt hvp (one-shot, fwd-over-rev)", t["hvp"], ("refopt grad", t["hvp"] / t["grad"], 2.5)),
        ("refopt hvp_operator (per product)", t["hvp_op"], ("refopt grad", t["hvp_op"] / t["grad"], 2.5)),
        ("refopt hvp_operator (record + 1 product)", t["hvp_rec"], ("refopt grad", t["hvp_rec"] / t["grad"], None)),
        ("refopt ggn_vp (one-shot)", t["ggn"], ("refopt grad", t["ggn"] / t["grad"], 2.5)),
        ("refopt curvature_operator ggn (per product)", t["ggn_op"], ("refopt grad", t["ggn_op"] / t["grad"], 2.5)),
    ]
    if autograd is not None:
        rows.append(("autograd value_and_grad", t["ag"], ("hand-written", t["ag"] / t["hand"], None)))
        rows.append(("autograd make_hvp (one-shot)", t["ag_hvp"], ("autograd grad", t["ag_hvp"] / t["ag"], None)))
        rows.append(("refopt grad vs autograd grad", t["grad"], ("autograd grad", t["grad"] / t["ag"], None)))
        rows.append(("refopt hvp vs autograd hvp", t["hvp"], ("autograd hvp", t["hvp"] / t["ag_hvp"], None)))

    print(f"MLP {'-'.join(map(str, sizes))}, tanh, softmax CE (mean), batch {batch}, float64; "
          f"median of {repeats}")
    _table(rows)

    # Tiny MLP: graph overhead dominates.
    sizes_t, batch_t = [10, 32, 32, 3], 32
    model_t, params_t, X_t, y_t, _ = problem(sizes_t, batch_t, seed=3)

    def f_t(p):
        return loss(model_t.apply(p, X_t), y_t, check=False)

    reps_t = repeats * 20
    fns_t = {
        "hand": lambda: handwritten_value_and_grad(params_t, X_t, y_t),
        "grad": lambda: ad.value_and_grad(f_t)(params_t),
        "checked": lambda: ad.value_and_grad(lambda p: loss(model_t.apply(p, X_t), y_t))(params_t),
        "oracle": lambda: Oracle(model_t, loss, X_t, y_t).value_and_grad(params_t),
    }
    if autograd is not None:
        ag_vg_t = autograd.value_and_grad(autograd_loss)
        fns_t["ag"] = lambda: ag_vg_t(params_t, X_t, y_t)
    t = median_times(fns_t, reps_t)
    rows_t = [("hand-written backprop", t["hand"], None)]
    if autograd is not None:
        rows_t += [("autograd value_and_grad", t["ag"], None),
                   ("refopt value_and_grad", t["grad"], ("autograd", t["grad"] / t["ag"], 1.0)),
                   ("refopt value_and_grad, checked loss", t["checked"], ("autograd", t["checked"] / t["ag"], None)),
                   ("refopt new Oracle + value_and_grad", t["oracle"], ("autograd", t["oracle"] / t["ag"], None))]
    else:
        rows_t.append(("refopt value_and_grad", t["grad"], None))
    print(f"\nMLP {'-'.join(map(str, sizes_t))}, batch {batch_t}; median of {reps_t}")
    _table(rows_t)


def _table(rows) -> None:
    print(f"{'measurement':46s} {'time':>10s}  {'ratio':>24s}  target")
    for name, t, ratio in rows:
        if ratio is None:
            print(f"{name:46s} {t * 1e3:8.3f}ms")
            continue
        base, r, target = ratio
        verdict = "" if target is None else (f"<= {target:g}  " + ("met" if r <= target else "MISSED"))
        print(f"{name:46s} {t * 1e3:8.3f}ms  {r:6.2f}x {base:>15s}  {verdict}")


if __name__ == "__main__":
    main()
