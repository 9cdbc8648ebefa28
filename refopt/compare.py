"""Side-by-side comparison of optimizers on one problem with one budget (``refopt compare``).

Every optimizer starts from the same initial parameters (same seed) and gets the same budget: at most
``steps`` updates and ``max_seconds`` of wall-clock time. The table reports the final full-batch
training loss, the iterations and seconds to reach ``target_loss``, the oracle counts, and failures (an
exception, a diverged loss, or a problem the optimizer does not apply to: "not applicable" when the
problem's oracle does not provide what the optimizer ``requires``, named).
"""
from __future__ import annotations

import csv
import math
import os
import sys
import time

from .optim.base import as_real, show_value
from .runner import RunConfig, run
from .serialize import atomic_path

__all__ = ["DEFAULT_OPTIMIZERS", "compare", "format_table", "plot_comparison", "write_csv", "ComparisonEntry"]

# The standard set with hyperparameters chosen for the default problem (digits MLP, full batch) by a small
# grid search (scripts/tune_compare.py): what each family looks like with a reasonable setting.
DEFAULT_OPTIMIZERS: dict[str, dict] = {
    "sgd": {"lr": 3.0, "momentum": 0.9},
    "adam": {"lr": 0.1},
    "adagrad": {"lr": 1.0},
    "shampoo": {"lr": 3.0},
    "adahessian": {"lr": 0.3},
    "sophia_g": {"lr": 0.03},
    "sophia_h": {"lr": 0.03},
    "lbfgs": {},
    "bfgs": {},
    "newton_cg": {},
    "natural_gradient": {},
    "kfac": {"lr": 1.0},
    "kfac_tridiag": {"lr": 1.0},
    "ekfac": {"lr": 1.0},
    "kbfgs": {"lr": 1.0},
}


class ComparisonEntry:
    """One optimizer's comparison result: name, hyperparameters, ``RunResult`` (None on failure), error, seconds."""

    def __init__(self, name, hyperparameters, result=None, error=None, seconds=0.0):
        self.name, self.hyperparameters, self.result, self.error, self.seconds = (
            name, hyperparameters, result, error, seconds)

    @property
    def history(self):
        """The run's log records ([] when the run failed)."""
        return self.result.history if self.result else []

    def to_target(self, target):
        """(iterations, seconds) at which the training loss first reached ``target``, or None."""
        for rec in self.history:
            tl = rec.get("train_loss")
            if target is not None and tl is not None and tl <= target:
                return rec["step"], rec["elapsed"]
        return None


def compare(names, problem="digits_mlp", steps=200, max_seconds=3.0, target_loss=None, seed=0, overrides=None,
            batch_size=None, verbose=False):
    """Run each optimizer in ``names`` on ``problem``; returns a list of ``ComparisonEntry``."""
    from .optim import OPTIMIZERS, make_optimizer  # noqa: PLC0415
    from .problems.registry import make_problem  # noqa: PLC0415

    if isinstance(names, str) or not names:
        raise ValueError(f"names must be a non-empty list of optimizer names, got {show_value(names)}")
    unknown = [n for n in names if n not in OPTIMIZERS]
    if unknown:
        raise ValueError(f"unknown optimizer(s) {', '.join(unknown)}; choose from {', '.join(sorted(OPTIMIZERS))}")
    if target_loss is not None and not math.isfinite(as_real(target_loss) if as_real(target_loss) is not None
                                                      else math.nan):
        raise ValueError(f"target_loss must be a finite number, got {show_value(target_loss)}")
    overrides = overrides or {}
    # every configuration is validated (steps, budget, seed, hyperparameters) before anything runs
    configs = [RunConfig(name, {**DEFAULT_OPTIMIZERS.get(name, {}), **overrides.get(name, {})}, problem, steps,
                         batch_size, seed, None, max_seconds) for name in names]
    # a misspelt or out-of-range hyperparameter is an error, not a row of the table
    opts = [make_optimizer(config.optimizer, **config.hyperparameters) for config in configs]
    prob = make_problem(problem)
    provides = prob.oracle().provides
    entries = []
    for name, config, opt in zip(names, configs, opts):
        hp = config.hyperparameters
        t0 = time.perf_counter()
        missing = sorted(opt.requires - provides)
        if missing:  # e.g. a network-only method on a test function
            entry = ComparisonEntry(name, hp, None, f"not applicable: needs {', '.join(missing)}, which a {prob.kind} "
                                                    "problem does not provide")
        else:
            try:
                result = run(config, problem=prob)
                entry = ComparisonEntry(name, hp, result, None if result.status != "diverged" else result.message)
            except (ValueError, NotImplementedError) as exc:
                entry = ComparisonEntry(name, hp, None, f"{type(exc).__name__}: {exc}")
        entry.seconds = time.perf_counter() - t0
        if verbose:
            status = entry.error or f"final loss {entry.result.final_loss:.4g}"
            print(f"  {name:18s} {entry.seconds:6.2f} s  {status}", file=sys.stderr)
        entries.append(entry)
    return entries


def format_table(entries, target_loss=None) -> str:
    """The comparison as a text table: final loss, steps, steps and seconds to ``target_loss``, counts, failures."""
    head = f"{'optimizer':18s} {'final loss':>11s} {'steps':>6s} {'to target':>10s} {'s to target':>11s} " \
           f"{'nfev':>6s} {'ngev':>6s} {'nhvp':>6s} {'other':>6s} {'seconds':>8s}  failure"
    lines = [head, "-" * len(head)]
    for e in entries:
        if e.result is None:
            lines.append(f"{e.name:18s} {'-':>11s} {'-':>6s} {'-':>10s} {'-':>11s} {'-':>6s} {'-':>6s} {'-':>6s} "
                         f"{'-':>6s} {e.seconds:8.2f}  {e.error}")
            continue
        last = e.history[-1] if e.history else {}
        hit = e.to_target(target_loss)
        other = sum(last.get(k, 0) for k in ("nggnvp", "nfvp", "njvp", "nvjp", "nstats"))
        lines.append(f"{e.name:18s} {e.result.final_loss:11.4g} {len(e.history):6d} "
                     f"{(str(hit[0]) if hit else '-'):>10s} {(f'{hit[1]:.2f}' if hit else '-'):>11s} "
                     f"{last.get('nfev', 0):6d} {last.get('ngev', 0):6d} {last.get('nhvp', 0):6d} {other:6d} "
                     f"{e.seconds:8.2f}  {e.error or ''}")
    if target_loss is not None:
        lines.append(f"(target training loss {target_loss:g}; 'other' counts GGN/Fisher/Jacobian products and "
                     "per-layer statistics passes)")
    return "\n".join(lines)


def plot_comparison(entries, path: str):
    """Loss against iterations and against seconds; returns the path, or None without matplotlib."""
    if not path:
        return None
    try:
        import matplotlib  # noqa: PLC0415 (optional, from the 'scripts' extra)
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError:
        print("refopt: matplotlib is not installed; no plot written (pip install 'refopt[scripts]')", file=sys.stderr)
        return None
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
    colors = plt.get_cmap("tab20").colors
    for i, e in enumerate(entries):
        pts = [(r["step"], r["elapsed"], r["train_loss"]) for r in e.history
               if r.get("train_loss") is not None and math.isfinite(r["train_loss"])]
        if not pts:
            continue
        steps, secs, loss = zip(*pts)
        style = {"label": e.name, "color": colors[(2 * i) % 20 + (i // 10) % 2], "linestyle": ("-", "--", ":")[i % 3]}
        axes[0].semilogy(steps, loss, **style)
        axes[1].semilogy(secs, loss, **style)
    axes[0].set_xlabel("iteration")
    axes[1].set_xlabel("seconds")
    for ax in axes:
        ax.set_ylabel("training loss")
        ax.grid(True, which="both", alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center right", fontsize=8)
    fig.tight_layout(rect=(0, 0, 0.86, 1))
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format=os.path.splitext(path)[1][1:] or "png")
    plt.close(fig)
    return path


def write_csv(entries, path: str) -> None:
    """Write each entry's log, one CSV row per step (losses, gradient norm, time, counts), to ``path`` atomically."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["optimizer", "step", "train_loss", "loss", "grad_norm", "elapsed", "nfev", "ngev", "nhvp"])
        for e in entries:
            for r in e.history:
                w.writerow([e.name, r["step"], r.get("train_loss"), r.get("loss"), r.get("grad_norm"),
                            r.get("elapsed"), r.get("nfev"), r.get("ngev"), r.get("nhvp")])
