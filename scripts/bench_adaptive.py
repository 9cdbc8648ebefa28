"""Per-step cost of the adaptive optimizers relative to a plain gradient step (issue 5's speed targets).

Problem: MLP 256-512-512-10 (tanh), softmax cross-entropy, batch 512, float64, random data (seeded).
The optimizers take turns step by step (round robin), so a load spike on a shared machine hits all of
them alike; a round is 10 steps of each (Shampoo's T = 10 roots and Sophia-G's k = 10 refreshes are
amortised exactly), and each round gives every optimizer a ratio mean(its step) / mean(SGD step).
The table reports the median ratio over the rounds and its range.

Targets (ratio to SGD): Adam ≤ 1.05, Shampoo T=10 ≤ 1.5, Sophia-G k=10 ≤ 1.3, AdaHessian ≤ 3.

    python scripts/bench_adaptive.py            # about a minute on 2 quiet cores (5 rounds)
    python scripts/bench_adaptive.py --quick    # about 15 s (2 rounds), noisier
    python scripts/bench_adaptive.py --json out.json

The BLAS thread count is set to the CPUs this process may use unless OPENBLAS_NUM_THREADS is already
set (OpenBLAS otherwise starts one thread per core of the host, which on a shared 2-core allotment slows
matrix products down many times).
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
    "shampoo T=10 block=128": ("shampoo", dict(lr=0.01, precondition_interval=10, block_size=128), None),
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


class FixedGradient:
    """An oracle that returns one precomputed gradient: times an optimizer's own arithmetic."""

    def __init__(self, loss, grad):
        self.loss, self.grad = loss, grad

    def value_and_grad(self, params):
        return self.loss, self.grad


def arithmetic_ms(name, params0, oracle, repeats: int = 3) -> float:
    """Mean time of 10 steps (one refresh cycle) of ``name`` on a fixed gradient, best of ``repeats``."""
    reg, hp, _ = CONFIGS[name]
    opt = make_optimizer(reg, **hp)
    state = opt.init(params0)
    params, state, _ = opt.update(params0, state, oracle)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(10):
            params, state, _ = opt.update(params, state, oracle)
        best = min(best, (time.perf_counter() - t0) / 10)
    return 1e3 * best


GRADIENT_ONLY = ("sgd", "adam", "adamw", "adagrad", "shampoo T=10", "shampoo T=10 block=128")


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="2 rounds instead of 5 (about 15 s)")
    ap.add_argument("--rounds", type=int, default=None, help="rounds of 10 steps per optimizer")
    ap.add_argument("--only", nargs="*", default=None, help="subset of the configurations")
    ap.add_argument("--json", default=None, help="write the results to this file")
    args = ap.parse_args(argv)
    rounds = args.rounds or (2 if args.quick else 5)
    names = args.only or list(CONFIGS)
    if "sgd" not in names:
        names = ["sgd"] + names

    model, oracle = build_problem()
    params0 = model.init(0)
    runs = {}
    for name in names:  # warm-up step (state construction, first roots / refresh)
        reg, hp, _ = CONFIGS[name]
        opt = make_optimizer(reg, **hp)
        state = opt.init(params0)
        params, state, _ = opt.update(params0, state, oracle)
        runs[name] = {"opt": opt, "params": params, "state": state, "round_means": []}
    for _ in range(rounds):
        spent = {name: 0.0 for name in names}
        for _ in range(10):
            for name in names:
                r = runs[name]
                t0 = time.perf_counter()
                r["params"], r["state"], _ = r["opt"].update(r["params"], r["state"], oracle)
                spent[name] += time.perf_counter() - t0
        for name in names:
            runs[name]["round_means"].append(spent[name] / 10)

    base = runs["sgd"]["round_means"]
    results = {"problem": "MLP 256-512-512-10 tanh, softmax CE, batch 512, float64",
               "threads": os.environ.get("OPENBLAS_NUM_THREADS"), "rounds": rounds, "optimizers": {}}
    print(f"{results['problem']}; {rounds} round(s) of 10 steps, BLAS threads {results['threads']}")
    print(f"{'optimizer':26s} {'ms/step':>8s} {'ratio':>6s} {'range':>12s} {'target':>7s}")
    for name in names:
        means = runs[name]["round_means"]
        ratios = [m / b for m, b in zip(means, base)]
        ratio = statistics.median(ratios)
        target = CONFIGS[name][2]
        verdict = "" if target is None else ("met" if ratio <= target else "MISSED")
        print(f"{name:26s} {1e3 * statistics.median(means):8.1f} {ratio:6.2f} "
              f"{min(ratios):5.2f}–{max(ratios):<5.2f} {'' if target is None else f'≤{target:g}':>7s} {verdict}")
        results["optimizers"][name] = {"ms_per_step": 1e3 * statistics.median(means), "ratio": ratio,
                                       "ratio_range": [min(ratios), max(ratios)], "target": target,
                                       "met": None if target is None else ratio <= target}
    # Second, low-noise view for the optimizers that need only gradients: their own arithmetic timed on
    # a fixed gradient, added to the gradient's share of the measured SGD step.
    fixed = FixedGradient(*oracle.value_and_grad(params0))
    arith = {name: arithmetic_ms(name, params0, fixed) for name in ["sgd"] + [n for n in GRADIENT_ONLY
                                                                                if n in names and n != "sgd"]}
    sgd_ms = 1e3 * statistics.median(base)
    print(f"\noptimizer arithmetic on a fixed gradient (ms/step) and the implied ratio "
          f"(SGD step {sgd_ms:.1f} ms, of which {arith['sgd']:.1f} ms arithmetic):")
    for name, ms in arith.items():
        implied = (sgd_ms - arith["sgd"] + ms) / sgd_ms
        print(f"{name:26s} {ms:8.1f} {implied:6.2f}")
        results["optimizers"][name]["arithmetic_ms"] = ms
        results["optimizers"][name]["implied_ratio"] = implied
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=2)
    return results


if __name__ == "__main__":
    main()
