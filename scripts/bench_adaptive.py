"""Per-step cost of the adaptive optimizers relative to a plain gradient step (issue 5's speed targets).

Problem: MLP 256-512-512-10 (tanh), softmax cross-entropy, batch 512, float64, random data (seeded).
Each optimizer runs blocks of ``--steps`` consecutive steps (a multiple of 10, so Shampoo's T = 10
root recomputations and Sophia-G's k = 10 refreshes are amortised exactly); the blocks of all
optimizers are interleaved over ``--rounds`` rounds so that a load spike on a shared machine hits
every optimizer alike, and the fastest block of each optimizer is reported (and the median).

Targets (ratio to SGD): Adam ≤ 1.05, Shampoo T=10 ≤ 1.5, Sophia-G k=10 ≤ 1.3, AdaHessian ≤ 3.

    python scripts/bench_adaptive.py            # ~1 minute on 2 cores
    python scripts/bench_adaptive.py --quick    # ~20 s, noisier
    python scripts/bench_adaptive.py --json out.json

The BLAS thread count is set to the CPUs this process may use (OpenBLAS otherwise starts one thread
per core of the host, which on a shared 2-core allotment slows matrix products down many times);
set OPENBLAS_NUM_THREADS yourself to override.
"""
from __future__ import annotations

import os

_cpus = str(len(os.sched_getaffinity(0))) if hasattr(os, "sched_getaffinity") else str(os.cpu_count() or 1)
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, _cpus)

import argparse  # noqa: E402  (after the thread settings, which must precede the NumPy import)
import json  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from refopt.nn import MLP, SoftmaxCrossEntropy  # noqa: E402
from refopt.optim import make_optimizer  # noqa: E402
from refopt.oracle import Oracle  # noqa: E402

# name shown -> (registry name, hyperparameters, target ratio or None)
CONFIGS = {
    "sgd": ("sgd", dict(lr=0.01), None),
    "adam": ("adam", dict(lr=1e-3), 1.05),
    "adamw": ("adamw", dict(lr=1e-3), None),
    "adagrad": ("adagrad", dict(lr=0.01), None),
    "shampoo T=10": ("shampoo", dict(lr=0.01, precondition_interval=10), 1.5),
    "shampoo T=10 diag-bias": ("shampoo", dict(lr=0.01, precondition_interval=10, vector_diagonal=True), None),
    "sophia_g k=10": ("sophia_g", dict(lr=1e-3, k=10), 1.3),
    "sophia_h k=10": ("sophia_h", dict(lr=1e-3, k=10), None),
    "adahessian": ("adahessian", dict(lr=0.1), 3.0),
}


def build_problem(batch: int = 512, sizes=(256, 512, 512, 10), seed: int = 0):
    gen = np.random.default_rng(seed)
    model = MLP(list(sizes), activation="tanh")
    X = gen.standard_normal((batch, sizes[0]))
    y = gen.integers(0, sizes[-1], batch)
    return model, Oracle(model, SoftmaxCrossEntropy(), X, y)


def time_block(opt, params, state, oracle, steps: int):
    t0 = time.perf_counter()
    for _ in range(steps):
        params, state, _ = opt.update(params, state, oracle)
    return (time.perf_counter() - t0) / steps, params, state


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer rounds (about 20 s)")
    ap.add_argument("--steps", type=int, default=10, help="steps per timed block (multiple of 10)")
    ap.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 3, quick 1)")
    ap.add_argument("--only", nargs="*", default=None, help="subset of the configurations")
    ap.add_argument("--json", default=None, help="write the results to this file")
    args = ap.parse_args(argv)
    rounds = args.rounds or (1 if args.quick else 3)
    names = args.only or list(CONFIGS)
    if "sgd" not in names:
        names = ["sgd"] + names

    model, oracle = build_problem()
    params0 = model.init(0)
    runs = {}
    for name in names:  # warm-up: builds states and performs one full refresh cycle's first step
        reg, hp, _ = CONFIGS[name]
        opt = make_optimizer(reg, **hp)
        state = opt.init(params0)
        params, state, _ = opt.update(params0, state, oracle)
        runs[name] = [opt, params, state, []]
    for _ in range(rounds):
        for name in names:
            opt, params, state, times = runs[name]
            per_step, params, state = time_block(opt, params, state, oracle, args.steps)
            runs[name][1:3] = [params, state]
            times.append(per_step)

    base_best = min(runs["sgd"][3])
    base_median = statistics.median(runs["sgd"][3])
    results = {"problem": "MLP 256-512-512-10 tanh, softmax CE, batch 512, float64",
               "threads": os.environ.get("OPENBLAS_NUM_THREADS"), "steps_per_block": args.steps,
               "rounds": rounds, "optimizers": {}}
    print(f"{results['problem']}; {args.steps} steps/block, {rounds} round(s), "
          f"BLAS threads {results['threads']}")
    print(f"{'optimizer':26s} {'ms/step':>9s} {'ratio':>7s} {'median':>7s} {'target':>7s}")
    for name in names:
        times = runs[name][3]
        best, med = min(times), statistics.median(times)
        ratio, ratio_med = best / base_best, med / base_median
        target = CONFIGS[name][2]
        verdict = "" if target is None else ("met" if ratio <= target else "MISSED")
        print(f"{name:26s} {1e3 * best:9.1f} {ratio:7.2f} {ratio_med:7.2f} "
              f"{'' if target is None else f'≤{target:g}':>7s} {verdict}")
        results["optimizers"][name] = {"ms_per_step": 1e3 * best, "ratio": ratio, "ratio_median": ratio_med,
                                       "target": target, "met": None if target is None else ratio <= target}
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=2)
    return results


if __name__ == "__main__":
    main()
