"""Benchmark the digits_cnn network: its gradient through refopt's autodiff against a hand-written im2col NumPy
backprop (part "gradient"), and K-FAC's step on it against the plain gradient and against its flop bound (part
"kfac").

Network: the ``digits_cnn`` problem's CNN (1×8×8 → conv 1→8 3×3 same, tanh, avg-pool 2 → conv 8→16 3×3
same, tanh, avg-pool 2 → flatten → dense 64→10), softmax cross-entropy (mean), float64.

Part "gradient", on random inputs at two batch sizes: 1437 (the problem's full training batch) and 128 (a
mini-batch, where the tracer's per-node overhead weighs more). The target (issue 15) is a ratio ≤ 1.3.
The hand-written backprop is the same algorithm written directly: im2col by copying each kernel offset's
block and one transposing copy (as ``autodiff.unfold``), one matrix product per layer, the pooling as a
reshape and a mean, and the reverse pass by hand (col2im adding each offset's block back). The script
checks that it returns refopt's gradient (to 1e-12 relative) before timing. Peak fraction: the gradient's
matrix-product flops (per conv layer 2·N·L·K·O for the forward product, the same for the weight gradient
and, except for the first layer, whose input needs no cotangent, for the patches' cotangent; per dense layer
2·N·fan_in·fan_out likewise) over refopt's median time, as a fraction of a 512³ float64 matmul timed in the
same process. With 1 to 16 channels the products are small and the copies of im2col and col2im take most of
the time, so the fraction is low for both implementations.

Part "kfac" (issue 15, deliverable 7), at batch sizes 64 and 256 of the digits training images (the first N
of the problem's training split; random standard-normal images and labels when scikit-learn is absent,
which the output says): ``KFAC`` with its defaults (fisher="mc" with one label set, factor_interval T₁ = 1,
inverse_interval T₂ = 20, inverse="inverse", damping "pi", KL clip, momentum 0.9) and kfac_approx "expand"
and "reduce". Each round takes T₂ steps of each K-FAC and T₂ plain gradients (``CNNOracle.value_and_grad``
at fixed parameters), in turn, so one refresh is amortised exactly once per round; the per-step ratio to the
gradient is taken round by round (median, range). Per conv layer l, with N examples, L output locations,
K = C·kh·kw patch entries and O output channels (R = N·L rows; a dense layer has L = 1, K = fan_in), the
step's matrix products, counted as in ``scripts/_bench.py`` (gemm 2mkn, a symmetric XᵀX n²k), are

    statistics pass   forward P W̄ 2·R·K·O, weight gradient gᵀP 2·R·K·O, patch cotangents g W 2·R·K·O (l ≥ 2)
                      (the pass records the pre-activation perturbations, ``kronecker.capture_layers``, so its
                      sweep has the plain gradient's products: the same count as the gradient)
    MC sweep          one more backward sweep at the sampled labels: g W 2·R·K·O (l ≥ 2)
    factor products   A: āᵀā (K+1)²·R_A, G: gᵀg O²·R_G; R_A = R_G = R ("expand") or N ("reduce")
    preconditioning   A⁻¹ V̄ G⁻¹: 2(K+1)²O + 2(K+1)O²
    refresh           numpy.linalg.inv of the 2 factors per layer (K+1 and O), every T₂ steps: measured here
                      (``_bench.decomposition_seconds``), ÷ T₂; counted 2n³ only for the peak fraction

The time bound of a step is each of those products timed alone at its own shape and orientation in this
process (the fastest of several runs: the rate the BLAS reaches on a GEMM of that size, which for these thin
products is far below the 512³ rate), summed, plus the refresh's measured time ÷ T₂; the achieved fraction
is bound ÷ measured step time, round by round. The gradient gets the same treatment (its three product
kinds), so the two fractions can be compared. "bound × gradient" is bench_kfac.py's form: 1 + (K-FAC's
extra counted flops ÷ the gradient's) + refresh ÷ T₂ ÷ the measured gradient, i.e. every extra product
assumed to run at the gradient's achieved rate; "÷ bound" is the measured ratio over it. The flop bound
leaves out what is not a matrix product: the im2col / col2im copies, the trailing column of ones appended
to the patches (a copy of (R, K+1)), the mean over locations of "reduce", the running averages, the
tanh / pooling / softmax work and the tracer's Python overhead. The breakdown times the step's parts alone
(``KFAC``'s own calls: the statistics pass, ``_blocks.estimate``, the running averages, ``_blocks.refresh``
÷ T₂, ``_blocks.precondition``) in interleaved rounds with T₂ steps and, for comparison, the plain gradient and
the statistics pass with fisher="empirical" (the same pass without the MC sweep, whose cost is the difference
of the two passes, round by round), each against its share of the bound; "rest" is, round by round, the step
minus its parts (KL clip, momentum and parameter update, bookkeeping, and the noise of all the differences).

Timing: interleaved rounds (each round calls every timed function in turn), so load from other processes
hits all alike; ratios are taken round by round and printed as the median with its range (min–max). The
BLAS thread count in effect is printed (threadpoolctl's when it is installed, else the environment's). On a
2-core machine shared with other work, ``--threads 1`` gives the steadiest ratios; the machine being shared,
only ratios (and fractions measured in the same process) are meaningful.

Run:  python scripts/bench_cnn.py [--quick] [--parts gradient,kfac] [--rounds N] [--threads N] [--json PATH]
      (default under 2 minutes on a busy 2-core machine; --quick: under 30 s)

``--json`` writes {"threads", "measurements": [{what, unit, median, range, target, bound, met, ...}], "kfac":
{...the part's tables...}}.
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _bench as B  # noqa: E402  (the shared thread, timing and peak helpers)

if __name__ == "__main__":  # --threads N, before NumPy is imported: the BLAS reads its thread count when it loads
    B.preset_threads()

import argparse  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))  # run from a checkout

from refopt import tree as T  # noqa: E402
from refopt.nn import SoftmaxCrossEntropy  # noqa: E402
from refopt.problems.registry import CNNOracle, digits_cnn_model  # noqa: E402


# ---------------------------------------------------------------------------------------------------
# The hand-written backprop (NCHW, OIHW kernels, stride 1, "same" padding of a 3×3 kernel: 1 on each side).
def im2col(x, k, pad):
    """Patches (N·Ho·Wo, C·k·k) of x (N, C, H, W), entries in (c, i, j) order."""
    N, C, H, W = x.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    Ho, Wo = H + 2 * pad - k + 1, W + 2 * pad - k + 1
    cols = np.empty((N, C, k, k, Ho, Wo))
    for i in range(k):
        for j in range(k):
            cols[:, :, i, j] = xp[:, :, i:i + Ho, j:j + Wo]
    return cols.transpose(0, 4, 5, 1, 2, 3).reshape(N * Ho * Wo, C * k * k)


def col2im(dcols, shape, k, pad):
    """The adjoint of ``im2col``: each patch entry added back to the input position it was read from."""
    N, C, H, W = shape
    Ho, Wo = H + 2 * pad - k + 1, W + 2 * pad - k + 1
    d = np.ascontiguousarray(dcols.reshape(N, Ho, Wo, C, k, k).transpose(0, 3, 4, 5, 1, 2))
    out = np.zeros((N, C, H + 2 * pad, W + 2 * pad))
    for i in range(k):
        for j in range(k):
            out[:, :, i:i + Ho, j:j + Wo] += d[:, :, i, j]
    return out[:, :, pad:pad + H, pad:pad + W]


def conv_forward(x, W, b):
    N, C, H, Wd = x.shape
    O = W.shape[0]
    cols = im2col(x, 3, 1)
    s = cols @ W.reshape(O, -1).T + b
    return s.reshape(N, H, Wd, O).transpose(0, 3, 1, 2), cols


def conv_backward(ds, cols, x_shape, W, need_input):
    N, O, H, Wd = ds.shape
    g = ds.transpose(0, 2, 3, 1).reshape(N * H * Wd, O)
    dW = (g.T @ cols).reshape(W.shape)
    db = g.sum(axis=0)
    dx = col2im(g @ W.reshape(O, -1), x_shape, 3, 1) if need_input else None
    return dx, dW, db


def pool_forward(a):
    N, C, H, W = a.shape
    return a.reshape(N, C, H // 2, 2, W // 2, 2).mean(axis=(3, 5))


def pool_backward(dp):
    N, C, Ho, Wo = dp.shape
    return np.broadcast_to((dp / 4.0)[:, :, :, None, :, None], (N, C, Ho, 2, Wo, 2)).reshape(N, C, 2 * Ho, 2 * Wo)


def handwritten(params, X, y):
    """(loss, gradient) of the digits CNN by hand."""
    (W1, b1), (W2, b2), (W3, b3) = ((p["W"], p["b"]) for p in params)
    N = X.shape[0]
    s1, c1 = conv_forward(X, W1, b1)
    a1 = np.tanh(s1)
    p1 = pool_forward(a1)
    s2, c2 = conv_forward(p1, W2, b2)
    a2 = np.tanh(s2)
    p2 = pool_forward(a2)
    f = p2.reshape(N, -1)
    z = f @ W3 + b3
    m = z.max(axis=1, keepdims=True)
    e = np.exp(z - m)
    lse = np.log(e.sum(axis=1, keepdims=True)) + m
    loss = float(np.mean(lse[:, 0] - z[np.arange(N), y]))
    dz = e / e.sum(axis=1, keepdims=True)
    dz[np.arange(N), y] -= 1.0
    dz /= N
    dW3, db3 = f.T @ dz, dz.sum(axis=0)
    dp2 = (dz @ W3.T).reshape(p2.shape)
    ds2 = pool_backward(dp2) * (1.0 - a2 * a2)
    dp1, dW2, db2 = conv_backward(ds2, c2, p1.shape, W2, True)
    ds1 = pool_backward(dp1) * (1.0 - a1 * a1)
    _, dW1, db1 = conv_backward(ds1, c1, X.shape, W1, False)
    return loss, [{"W": dW1, "b": db1}, {"W": dW2, "b": db2}, {"W": dW3, "b": db3}]


def gradient_flops(model, batch) -> int:
    """The matrix-product flops of one gradient (module docs)."""
    flops = 0
    for l, (kind, shape) in enumerate(zip(model.layer_kinds, model.perturbation_shapes(batch))):
        wshape = model.parameter_shapes()[l][0]
        rows, out = (shape[0] * shape[1], shape[2]) if kind == "conv" else (shape[0], shape[1])
        fan_in = wshape[1] * wshape[2] * wshape[3] if kind == "conv" else wshape[0]
        flops += (2 if l == 0 else 3) * 2 * rows * fan_in * out
    return flops


def bench(batch, rounds, seed=0):
    """Median and range of refopt's gradient time over the hand-written one's, and the two medians."""
    model = digits_cnn_model()
    gen = np.random.default_rng(seed)
    X = gen.standard_normal((batch, 64))
    y = gen.integers(0, 10, batch)
    params = model.init(seed)
    for p in params:  # non-zero biases, as after training
        p["b"] = gen.standard_normal(p["b"].shape) * 0.1
    oracle = CNNOracle(model, SoftmaxCrossEntropy("mean"), X, y)
    X4 = X.reshape(batch, 1, 8, 8)
    value, grad = oracle.value_and_grad(params)
    hand_value, hand_grad = handwritten(params, X4, y)
    assert abs(value - hand_value) <= 1e-12 * abs(value), (value, hand_value)
    err = float(np.max(np.abs(T.ravel(grad) - T.ravel(hand_grad))))
    assert err <= 1e-12 * (1 + float(np.max(np.abs(T.ravel(hand_grad))))), err
    times = B.interleaved({"ours": lambda: oracle.value_and_grad(params), "hand": lambda: handwritten(params, X4, y)},
                          rounds)   # one warm-up call of each first
    ours, hand = times["ours"], times["hand"]
    ratios = B.per_round_ratios(ours, hand)
    return statistics.median(ratios), min(ratios), max(ratios), statistics.median(ours), statistics.median(hand)


# ---------------------------------------------------------------------------------------------------
# Part "kfac": K-FAC's step on the CNN against the gradient and against its flop bound (module docs).
KFAC_BATCHES = (64, 256)
KFAC_APPROXES = ("expand", "reduce")


def kfac_data(batch, seed=0):
    """(X (batch, 64), y, source): the first ``batch`` digits training images, or random ones without scikit-learn."""
    try:
        from refopt.problems.datasets import digits  # noqa: PLC0415 (needs scikit-learn)
        d = digits()
        return d.X[:batch], d.y[:batch], "the first N digits training images"
    except (ImportError, RuntimeError):
        gen = np.random.default_rng(seed)
        return (gen.standard_normal((batch, 64)), gen.integers(0, 10, batch),
                "random standard-normal images and labels (scikit-learn is not installed)")


def layer_dims(model, batch) -> list:
    """(N, L, K, O) of each parametrised layer: L = 1 and K = fan_in for a dense layer."""
    out = []
    for kind, shape, (wshape, _) in zip(model.layer_kinds, model.perturbation_shapes(batch), model.parameter_shapes()):
        if kind == "conv":
            out.append((batch, shape[1], wshape[1] * wshape[2] * wshape[3], wshape[0]))
        else:
            out.append((batch, 1, wshape[0], wshape[1]))
    return out


# A product: ("gemm", (m, k, n)) is (m × k)(k × n) on C-contiguous operands; ("tn", (r, m, n)) is XᵀY with X (r, m),
# Y (r, n) contiguous (the weight gradient gᵀP, as ``kronecker._layer_grad`` forms it); ("syrk", (r, n)) is XᵀX with
# X (r, n), which NumPy hands to BLAS syrk.
def product_flops(op, shape) -> float:
    if op == "gemm":
        return B.gemm(*shape)
    if op == "tn":
        r, m, n = shape
        return B.gemm(m, r, n)
    return B.syrk(*shape)


def kfac_products(dims, approx, samples=1) -> dict:
    """{part: [product]} of one K-FAC step (fisher="mc", ``samples`` label sets, inverse="inverse"; module docs)."""
    parts = {name: [] for name in ("forward", "weight_grads", "input_grads", "mc_sweep", "factor_A", "factor_G",
                                   "precondition")}
    for l, (N, L, K, O) in enumerate(dims):
        R = N * L
        parts["forward"].append(("gemm", (R, K, O)))
        parts["weight_grads"].append(("tn", (R, O, K)))
        if l:   # the first layer's input (the data) needs no cotangent
            parts["input_grads"].append(("gemm", (R, O, K)))
            parts["mc_sweep"] += [("gemm", (R, O, K))] * samples
        rows = R if approx == "expand" else N
        parts["factor_A"].append(("syrk", (rows, K + 1)))
        parts["factor_G"] += [("syrk", (rows, O))] * samples
        parts["precondition"] += [("gemm", (K + 1, K + 1, O)), ("gemm", (K + 1, O, O))]
    return parts


GRADIENT_PARTS = ("forward", "weight_grads", "input_grads")
STATS_PARTS = GRADIENT_PARTS + ("mc_sweep",)


def product_seconds(op, shape, cache, repeats=5, min_seconds=2e-3) -> float:
    """Seconds of one product of that kind and shape alone: the fastest of ``repeats`` timed loops of enough calls
    to last ``min_seconds`` (so the timer's resolution does not count), after a warm-up."""
    key = (op, shape)
    if key not in cache:
        gen = np.random.default_rng(0)
        if op == "gemm":
            m, k, n = shape
            a, b = gen.standard_normal((m, k)), gen.standard_normal((k, n))
            fn = lambda: a @ b  # noqa: E731
        elif op == "tn":
            r, m, n = shape
            x, y = gen.standard_normal((r, m)), gen.standard_normal((r, n))
            fn = lambda: x.T @ y  # noqa: E731
        else:
            r, n = shape
            x = gen.standard_normal((r, n))
            fn = lambda: x.T @ x  # noqa: E731
        fn()
        calls, t = 1, 0.0
        while True:
            t0 = time.perf_counter()
            for _ in range(calls):
                fn()
            t = time.perf_counter() - t0
            if t >= min_seconds:
                break
            calls *= 4
        best = t / calls
        for _ in range(repeats - 1):
            t0 = time.perf_counter()
            for _ in range(calls):
                fn()
            best = min(best, (time.perf_counter() - t0) / calls)
        cache[key] = best
    return cache[key]


def part_costs(parts, cache) -> dict:
    """{part: (flops, bound seconds)}: each product's flops and its time alone at its shape, summed per part."""
    return {name: (sum(product_flops(op, s) for op, s in prods),
                   sum(product_seconds(op, s, cache) for op, s in prods)) for name, prods in parts.items()}


def factor_sizes(dims) -> list:
    return [K + 1 for _, _, K, _ in dims] + [O for _, _, _, O in dims]


def take_step(r, oracle) -> None:
    """One K-FAC step of the run ``r`` (its params, state and last info updated), counting a refused step or a
    skipped factor update (a cheaper step than the ones the bound describes)."""
    r["params"], r["state"], r["info"] = r["opt"].update(r["params"], r["state"], oracle)
    r["refused"] += bool(r["info"].get("skipped") or r["info"].get("message"))


def bench_kfac(rounds, breakdown_rounds, log=print) -> dict:
    """The K-FAC part: per batch size, the gradient and K-FAC (each kfac_approx) in interleaved rounds of T₂ steps,
    the bounds, and the breakdown of each step into its parts."""
    from refopt.curvature import kronecker as K  # noqa: PLC0415
    from refopt.optim import make_optimizer  # noqa: PLC0415
    from refopt.optim.update_rules import ema_into  # noqa: PLC0415

    model = digits_cnn_model()
    peak = B.matmul_peak()
    cache: dict = {}
    out = {"settings": None, "data": None, "batches": []}
    for batch in KFAC_BATCHES:
        X, y, source = kfac_data(batch)
        out["data"] = source
        oracle = CNNOracle(model, SoftmaxCrossEntropy("mean"), X, y)
        params0 = model.init(0)
        runs = {}
        for approx in KFAC_APPROXES:
            opt = make_optimizer("kfac", kfac_approx=approx)
            state = opt.init(params0)
            params, state, _ = opt.update(params0, state, oracle)   # step 0's refresh is not amortised: outside
            runs[approx] = {"opt": opt, "params": params, "state": state, "refused": 0}
        opt0 = runs[KFAC_APPROXES[0]]["opt"]
        T2 = opt0.inverse_interval
        out["settings"] = {"fisher": opt0.fisher, "samples": opt0.samples, "factor_interval": opt0.factor_interval,
                           "inverse_interval": T2, "inverse": opt0.inverse, "damping_scheme": opt0.damping_scheme,
                           "damping": opt0.damping, "lr": opt0.lr, "momentum": opt0.momentum, "kl_clip": opt0.kl_clip}

        def gradient_steps():
            for _ in range(T2):
                oracle.value_and_grad(params0)

        def kfac_steps(r):
            def fn():
                for _ in range(T2):
                    take_step(r, oracle)
            return fn
        fns = {"gradient": gradient_steps} | {a: kfac_steps(runs[a]) for a in KFAC_APPROXES}
        times = {k: [t / T2 for t in v] for k, v in B.interleaved(fns, rounds).items()}   # warm-up: one round, T₂ steps
        dims = layer_dims(model, batch)
        decomposition = B.decomposition_seconds("inv", factor_sizes(dims))
        grad_parts = part_costs({k: v for k, v in kfac_products(dims, "expand").items() if k in GRADIENT_PARTS}, cache)
        grad_flops = sum(f for f, _ in grad_parts.values())
        grad_bound = sum(t for _, t in grad_parts.values())
        grad_med = statistics.median(times["gradient"])
        row = {"batch": batch, "gradient_ms": B.spread([1e3 * t for t in times["gradient"]]),
               "gradient_mflop": grad_flops / 1e6, "gradient_bound_ms": 1e3 * grad_bound,
               "gradient_bound_fraction": B.spread([grad_bound / t for t in times["gradient"]]),
               "gradient_peak_fraction": grad_flops / grad_med / (peak * 1e9),
               "refresh_ms": 1e3 * decomposition, "kfac": {}}
        for approx in KFAC_APPROXES:
            r = runs[approx]
            costs = part_costs(kfac_products(dims, approx, r["opt"].samples), cache)
            matmul_flops = sum(f for f, _ in costs.values())
            flops = matmul_flops + sum(B.inv_flops(n) for n in factor_sizes(dims)) / T2
            bound = sum(t for _, t in costs.values()) + decomposition / T2
            rel_bound = matmul_flops / grad_flops + decomposition / T2 / grad_med   # bench_kfac.py's form
            ratios = B.per_round_ratios(times[approx], times["gradient"])
            med = statistics.median(times[approx])
            row["kfac"][approx] = {
                "ms": B.spread([1e3 * t for t in times[approx]]), "ratio": B.spread(ratios),
                "bound_x_gradient": rel_bound, "to_bound": B.spread([x / rel_bound for x in ratios]),
                "mflop": flops / 1e6, "bound_ms": 1e3 * bound,
                "bound_fraction": B.spread([bound / t for t in times[approx]]),
                "peak_fraction": flops / med / (peak * 1e9),
                "parts": {k: {"mflop": f / 1e6, "bound_ms": 1e3 * t} for k, (f, t) in costs.items()},
                "final_loss": float(r["info"]["loss"])}   # updated after the breakdown
            log(f"  batch {batch} {approx}: {1e3 * med:.2f} ms per step, {statistics.median(ratios):.2f}× gradient",
                flush=True)
        # the breakdown: the step's parts alone, interleaved, at the parameters and state the runs reached
        for approx in KFAC_APPROXES:
            r = runs[approx]
            opt, blocks, state = r["opt"], r["opt"]._blocks, r["state"]
            held = {}

            def stats_pass(r=r, opt=opt, held=held):
                held["stats"] = K.kfac_statistics(oracle, r["params"], opt.fisher, opt.samples, seed=[opt.seed, 1])

            def empirical_pass(r=r, opt=opt):   # the same pass without the MC sweep (probes: the gradient's own)
                K.kfac_statistics(oracle, r["params"], "empirical", opt.samples, seed=[opt.seed, 1])

            def estimate(blocks=blocks, held=held):
                held["estimate"] = blocks.estimate(held["stats"])

            def fold(state=state, held=held):   # ema_into overwrites the estimate in place: a fresh one each round
                for name in state.factors:
                    ema_into(state.factors[name], tuple(held["estimate"][name]), opt.decay)

            def refresh(blocks=blocks, state=state):
                blocks.refresh(state.factors, state.damping)

            def precondition(blocks=blocks, state=state, held=held):
                gbar = [K.layer_matrix(layer) for layer in held["stats"].grad]
                blocks.precondition(gbar, state.preconditioner, state.damping)

            def step(r=r):   # T₂ steps, so that the step's time holds one refresh, as the parts' sum does
                for _ in range(T2):
                    take_step(r, oracle)
            pieces = {"gradient": lambda: oracle.value_and_grad(params0), "statistics": stats_pass, "empirical": empirical_pass, "estimate": estimate, "fold": fold, "refresh": refresh,
                      "precondition": precondition, "step": step}
            bt = B.interleaved(pieces, breakdown_rounds)
            bt["refresh"] = [t / T2 for t in bt["refresh"]]
            bt["step"] = [t / T2 for t in bt["step"]]
            named = ("statistics", "estimate", "fold", "refresh", "precondition")
            # paired round by round (the parts and the step of one round saw the same load), then the median
            bt["rest"] = [st - sum(bt[k][i] for k in named) for i, st in enumerate(bt["step"])]
            bt["mc"] = [a - b for a, b in zip(bt["statistics"], bt["empirical"])]
            ms = {k: 1e3 * statistics.median(v) for k, v in bt.items()}
            parts = row["kfac"][approx]["parts"]
            stats_bound = sum(parts[k]["bound_ms"] for k in STATS_PARTS)
            row["kfac"][approx]["breakdown"] = [
                {"part": "statistics pass (forward, gradient sweep, MC sweep)", "ms": ms["statistics"],
                 "bound_ms": stats_bound, "mflop": sum(parts[k]["mflop"] for k in STATS_PARTS)},
                {"part": "  of which the MC sweep (the pass minus one with fisher='empirical')", "ms": ms["mc"],
                 "bound_ms": parts["mc_sweep"]["bound_ms"], "mflop": parts["mc_sweep"]["mflop"]},
                {"part": "  the pass with fisher='empirical' (no MC sweep: the gradient's products)",
                 "ms": ms["empirical"], "bound_ms": 1e3 * grad_bound, "mflop": grad_flops / 1e6},
                {"part": "  for comparison: the plain gradient (not part of the step)", "ms": ms["gradient"],
                 "bound_ms": 1e3 * grad_bound, "mflop": grad_flops / 1e6},
                {"part": "factor products āᵀā, gᵀg (with the rows' copies)", "ms": ms["estimate"],
                 "bound_ms": parts["factor_A"]["bound_ms"] + parts["factor_G"]["bound_ms"],
                 "mflop": parts["factor_A"]["mflop"] + parts["factor_G"]["mflop"]},
                {"part": "running averages", "ms": ms["fold"], "bound_ms": None, "mflop": None},
                {"part": f"refresh (2 inverses per layer) ÷ {T2}", "ms": ms["refresh"],
                 "bound_ms": 1e3 * decomposition / T2, "mflop": sum(B.inv_flops(n) for n in factor_sizes(dims)) / T2 / 1e6},
                {"part": "preconditioning A⁻¹ V̄ G⁻¹ (with V̄ = [W; b])", "ms": ms["precondition"],
                 "bound_ms": parts["precondition"]["bound_ms"], "mflop": parts["precondition"]["mflop"]},
                {"part": "rest: the step − the parts, round by round (KL clip, momentum, θ update; noise)",
                 "ms": ms["rest"], "bound_ms": None, "mflop": None},
                {"part": "the step, timed alongside", "ms": ms["step"], "bound_ms": row["kfac"][approx]["bound_ms"],
                 "mflop": row["kfac"][approx]["mflop"]}]
            row["kfac"][approx]["final_loss"] = float(r["info"]["loss"])
            row["kfac"][approx]["refused_or_skipped"] = r["refused"]
        out["batches"].append(row)
    out["peak_gflops"] = max(peak, B.matmul_peak())
    out["rounds"], out["breakdown_rounds"] = rounds, breakdown_rounds
    return out


def format_kfac(res) -> str:
    s = res["settings"]
    lines = [f"K-FAC on the digits_cnn network, data: {res['data']}; fisher={s['fisher']!r} ({s['samples']} label "
             f"set), T1={s['factor_interval']}, T2={s['inverse_interval']}, inverse={s['inverse']!r}, damping "
             f"{s['damping_scheme']!r} {s['damping']:g}; {res['rounds']} interleaved rounds of {s['inverse_interval']} "
             f"steps; BLAS threads {B.blas_threads()}; 512³ matmul {res['peak_gflops']:.1f} GFLOP/s",
             "| batch | kfac_approx | ms / step | × gradient (range) | bound × gradient | ÷ bound | MFLOP / step | "
             "time bound ms | % of time bound (range) | % of 512³ peak |",
             "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in res["batches"]:
        g = row["gradient_ms"]
        gf = row["gradient_bound_fraction"]
        lines.append(f"| {row['batch']} | gradient | {g['median']:.2f} | 1 | 1 | | {row['gradient_mflop']:.1f} | "
                     f"{row['gradient_bound_ms']:.3f} | {100 * gf['median']:.1f} ({100 * gf['min']:.1f}–"
                     f"{100 * gf['max']:.1f}) | {100 * row['gradient_peak_fraction']:.1f} |")
        for approx, k in row["kfac"].items():
            bf = k["bound_fraction"]
            lines.append(f"| {row['batch']} | {approx} | {k['ms']['median']:.2f} | {k['ratio']['median']:.2f} "
                         f"({B.fmt_range(k['ratio'])}) | {k['bound_x_gradient']:.2f} | {k['to_bound']['median']:.2f} | "
                         f"{k['mflop']:.1f} | {k['bound_ms']:.3f} | {100 * bf['median']:.1f} ({100 * bf['min']:.1f}–"
                         f"{100 * bf['max']:.1f}) | {100 * k['peak_fraction']:.1f} |")
    lines.append(f"breakdown (each part alone, {res['breakdown_rounds']} interleaved rounds, median ms per step; "
                 "bound: the part's products timed alone at their shapes)")
    lines += ["| batch | kfac_approx | part | ms | % of the step | bound ms | % of bound | MFLOP |",
              "|---:|---|---|---:|---:|---:|---:|---:|"]
    for row in res["batches"]:
        for approx, k in row["kfac"].items():
            whole = k["breakdown"][-1]["ms"]
            for p in k["breakdown"]:
                b = "—" if p["bound_ms"] is None else f"{p['bound_ms']:.3f}"
                f = "—" if p["bound_ms"] is None or p["ms"] <= 0 else f"{100 * p['bound_ms'] / p['ms']:.0f}"
                mf = "—" if p["mflop"] is None else f"{p['mflop']:.2f}"
                lines.append(f"| {row['batch']} | {approx} | {p['part']} | {p['ms']:.3f} | {100 * p['ms'] / whole:.0f} "
                             f"| {b} | {f} | {mf} |")
    losses = ", ".join(f"batch {row['batch']} {a} {k['final_loss']:.2g}" for row in res["batches"]
                       for a, k in row["kfac"].items())
    bad = sum(k["refused_or_skipped"] for row in res["batches"] for k in row["kfac"].values())
    lines.append(f"training loss after the timed steps: {losses}; steps refused or with a skipped factor update: {bad}")
    return "\n".join(lines)


def kfac_measurements(res) -> list:
    """The part's rows for ``--json`` (bench_all.py's summary): the ratio to the gradient, with its bound."""
    rows = []
    for row in res["batches"]:
        for approx, k in row["kfac"].items():
            rows.append({"what": f"K-FAC step on the digits_cnn network (batch {row['batch']}, kfac_approx={approx}) "
                                 "vs its gradient", "unit": "× gradient", "median": k["ratio"]["median"],
                         "range": [k["ratio"]["min"], k["ratio"]["max"]], "target": None,
                         "bound": k["bound_x_gradient"], "met": None, "to_bound": k["to_bound"],
                         "time_bound_ms": k["bound_ms"], "bound_fraction": k["bound_fraction"],
                         "peak_fraction": k["peak_fraction"]})
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    B.common_arguments(ap, quick="fewer rounds (under 30 s)", rounds="timing rounds per batch size")
    ap.add_argument("--parts", default="gradient,kfac", help="comma-separated: gradient, kfac")
    args = ap.parse_args(argv)
    B.apply_threads(args.threads)
    parts = {p.strip() for p in args.parts.split(",") if p.strip()}
    unknown = sorted(parts - {"gradient", "kfac"})
    if unknown or not parts:
        ap.error(f"--parts: unknown part(s) {unknown or [args.parts]}; choose from gradient, kfac")
    measurements, result = [], {"threads": B.blas_threads()}
    if "gradient" in parts:
        measurements += gradient_part(args.rounds or (7 if args.quick else 31))
    if "kfac" in parts:
        rounds = args.rounds or (5 if args.quick else 21)
        print(f"\nK-FAC step vs the gradient and its flop bound ({rounds} rounds)", flush=True)
        res = bench_kfac(rounds, max(5, rounds // 2))
        print(format_kfac(res))
        measurements += kfac_measurements(res)
        result["kfac"] = res
    result["measurements"] = measurements
    B.write_json(args.json, result)


def gradient_part(rounds) -> list:
    threads, peak, model = B.blas_threads(), 1e9 * B.matmul_peak(), digits_cnn_model()  # FLOP/s
    print(f"digits_cnn network ({model.num_params} parameters), float64, NumPy {np.__version__}, BLAS threads "
          f"{threads}, {rounds} interleaved rounds; matmul peak {peak / 1e9:.1f} GFLOP/s")
    print(f"{'batch':>6} {'refopt ms':>10} {'by hand ms':>11} {'ratio':>6} {'range':>13} {'peak':>6}   target ≤ 1.3")
    measurements = []
    for batch in (1437, 128):
        med, lo, hi, ours, hand = bench(batch, rounds)
        fraction = gradient_flops(model, batch) / ours / peak
        print(f"{batch:6d} {ours * 1e3:10.2f} {hand * 1e3:11.2f} {med:6.2f} {lo:6.2f}–{hi:<6.2f} "
              f"{100 * fraction:5.1f}%", flush=True)
        measurements.append({"what": f"CNN gradient (digits_cnn network, batch {batch}) vs a hand-written im2col "
                                     "backprop", "unit": "× hand-written", "median": med, "range": [lo, hi],
                             "target": 1.3, "bound": None, "met": med <= 1.3, "peak_fraction": fraction})
    return measurements


if __name__ == "__main__":
    main()
