"""Benchmark a CNN gradient through refopt's autodiff against a hand-written im2col NumPy backprop of the same network.

Network: the ``digits_cnn`` problem's CNN (1×8×8 → conv 1→8 3×3 same, tanh, avg-pool 2 → conv 8→16 3×3
same, tanh, avg-pool 2 → flatten → dense 64→10), softmax cross-entropy (mean), float64, on random
inputs at two batch sizes: 1437 (the problem's full training batch) and 128 (a mini-batch, where the
tracer's per-node overhead weighs more). The target (issue 15) is a ratio ≤ 1.3.

The hand-written backprop is the same algorithm written directly: im2col by copying each kernel offset's
block and one transposing copy (as ``autodiff.unfold``), one matrix product per layer, the pooling as a
reshape and a mean, and the reverse pass by hand (col2im adding each offset's block back). The script
checks that it returns refopt's gradient (to 1e-12 relative) before timing.

Timing: interleaved rounds (each round calls refopt's ``value_and_grad`` and the hand-written backprop once,
in turn), so load from other processes hits both alike; the ratio is taken round by round and printed as
the median with its range (min–max). The BLAS thread count in effect is printed (threadpoolctl's when it
is installed, else the environment's). On a 2-core machine shared with other work, ``--threads 1`` gives
the steadiest ratios; the machine being shared, only ratios are meaningful.

Peak fraction: the gradient's matrix-product flops (per conv layer 2·N·L·K·O for the forward product, the
same for the weight gradient and, except for the first layer, whose input needs no cotangent, for the
patches' cotangent; per dense layer 2·N·fan_in·fan_out likewise) over refopt's median time, as a fraction
of a 512³ float64 matmul timed in the same process. With 1 to 16 channels the products are small and the
copies of im2col and col2im take most of the time, so the fraction is low for both implementations.

Run:  python scripts/bench_cnn.py [--quick] [--rounds N] [--threads N] [--json PATH]   (--quick: under 30 s)

``--json`` writes {"threads", "measurements": [{what, unit, median, range, target, bound, met}]}.
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _bench as B  # noqa: E402  (the shared thread, timing and peak helpers)

if __name__ == "__main__":  # --threads N, before NumPy is imported: the BLAS reads its thread count when it loads
    B.preset_threads()

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))  # run from a checkout

from refopt import autodiff as ad  # noqa: E402
from refopt import tree as T  # noqa: E402
from refopt.nn import SoftmaxCrossEntropy  # noqa: E402
from refopt.problems.registry import CNNOracle, digits_cnn_model  # noqa: E402


def blas_threads() -> str:
    """The BLAS thread count in effect (``_bench.blas_threads``: threadpoolctl's, else the environment's)."""
    return B.blas_threads()


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


def interleaved(fns, rounds):
    """Seconds of each function per round, the functions called in turn within every round."""
    times = [[] for _ in fns]
    for _ in range(rounds):
        for k, fn in enumerate(fns):
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return times


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
    ours, hand = interleaved([lambda: oracle.value_and_grad(params), lambda: handwritten(params, X4, y)], rounds)
    ratios = [a / b for a, b in zip(ours, hand)]
    return statistics.median(ratios), min(ratios), max(ratios), statistics.median(ours), statistics.median(hand)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer rounds (under 30 s)")
    ap.add_argument("--rounds", type=int, default=None, help="timing rounds per batch size")
    ap.add_argument("--threads", type=int, default=None, help="BLAS threads (set before NumPy loads)")
    ap.add_argument("--json", default=None, help="write the measurements to this file")
    args = ap.parse_args()
    rounds = args.rounds or (7 if args.quick else 31)
    threads, peak, model = blas_threads(), 1e9 * B.matmul_peak(), digits_cnn_model()  # FLOP/s
    print(f"digits_cnn network ({model.num_params} parameters), float64, NumPy {np.__version__}, BLAS threads "
          f"{threads}, {rounds} interleaved rounds; matmul peak {peak / 1e9:.1f} GFLOP/s")
    print(f"{'batch':>6} {'refopt ms':>10} {'by hand ms':>11} {'ratio':>6} {'range':>13} {'peak':>6}   target ≤ 1.3")
    measurements = []
    for batch in (1437, 128):
        med, lo, hi, ours, hand = bench(batch, rounds)
        fraction = gradient_flops(model, batch) / ours / peak
        print(f"{batch:6d} {ours * 1e3:10.2f} {hand * 1e3:11.2f} {med:6.2f} {lo:6.2f}–{hi:<6.2f} "
              f"{100 * fraction:5.1f}%")
        measurements.append({"what": f"CNN gradient (digits_cnn network, batch {batch}) vs a hand-written im2col "
                                     "backprop", "unit": "× hand-written", "median": med, "range": [lo, hi],
                             "target": 1.3, "bound": None, "met": med <= 1.3, "peak_fraction": fraction})
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"threads": threads, "measurements": measurements}, fh, indent=1)
    _ = ad  # refopt's autodiff is what the oracle's value_and_grad runs


if __name__ == "__main__":
    main()
