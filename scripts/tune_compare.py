"""Choose the hyperparameters of the default comparison (refopt.compare.DEFAULT_OPTIMIZERS) by a small grid.

For each optimizer, every setting on its grid runs with the comparison's budget (200 steps, 3 s) on the
default problem; the setting with the lowest final training loss wins (diverged runs lose). Prints the
winners as a dict to paste into refopt/compare.py.

    python scripts/tune_compare.py [--problem digits_mlp] [--only adam,sgd]
"""
import argparse
import itertools
import math

from refopt.compare import compare

GRIDS = {
    "sgd": {"lr": [0.3, 1.0, 3.0], "momentum": [0.9]},
    "adam": {"lr": [0.01, 0.03, 0.1]},
    "adagrad": {"lr": [0.1, 0.3, 1.0]},
    "shampoo": {"lr": [0.3, 1.0, 3.0]},
    "adahessian": {"lr": [0.1, 0.3, 1.0]},
    "sophia_g": {"lr": [0.01, 0.03, 0.1]},
    "sophia_h": {"lr": [0.01, 0.03, 0.1]},
    "kfac": {"lr": [0.1, 0.3, 1.0]},
    "kfac_tridiag": {"lr": [0.1, 0.3, 1.0]},
    "ekfac": {"lr": [0.1, 0.3, 1.0]},
    "kbfgs": {"lr": [0.03, 0.1, 0.3]},
    "natural_gradient": {"lr": [0.3, 1.0]},
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--problem", default="digits_mlp")
    ap.add_argument("--only", default=None)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--max-seconds", type=float, default=3.0)
    args = ap.parse_args()
    names = args.only.split(",") if args.only else list(GRIDS)
    best = {}
    for name in names:
        grid = GRIDS[name]
        keys = sorted(grid)
        scores = []
        for combo in itertools.product(*[grid[k] for k in keys]):
            hp = dict(zip(keys, combo))
            (entry,) = compare([name], args.problem, args.steps, args.max_seconds, overrides={name: hp})
            loss = entry.result.final_loss if entry.result and not entry.error else math.inf
            loss = loss if math.isfinite(loss) else math.inf
            scores.append((loss, hp))
            print(f"{name:18s} {hp}  final loss {loss:.4g}")
        best[name] = min(scores, key=lambda s: s[0])[1]
    print(best)


if __name__ == "__main__":
    main()
