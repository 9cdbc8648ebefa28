"""Side-by-side comparison of optimizers on one problem with one budget (``refopt compare``).

Budget: every optimizer starts from the same initial parameters (same seed) and gets at most ``steps``
updates; a wall-clock cap only when ``max_seconds`` is given. Without one, the table is a function of the
command: the same on a busy machine as on a quiet one, apart from its seconds columns.

Hyperparameters: each optimizer runs with the setting ``tuned_hyperparameters(problem, name)`` of
``refopt.problems.tuned`` (a built-in network problem: its tuned entry, ``TUNED[problem][name]``; any other
network problem, such as the user's data: ``GENERIC[name]``; a test function: ``FUNCTIONS[name]``, the
optimizer's defaults except where they cannot work), then the caller's ``overrides`` on top (an override
for an optimizer that is not compared, or not refopt's, is an error); everything else is the optimizer's
default, and the footer names the optimizers that have no setting for the problem. ``refopt train``
resolves its hyperparameters the same way (``runner.describe_hyperparameters`` states them); ``runner.run``
does not: a ``RunConfig``'s hyperparameters are all it uses. (``tuned_hyperparameters``,
``hyperparameter_source`` and ``describe_hyperparameters`` are re-exported here.)

Failures (the failure column): a run "diverged" when a training loss is non-finite or above
``runner.divergence_bound`` (L₀ + (c − 1)·max(|L₀|, 1), c = ``divergence_factor``, 10 by default); its row
still shows the loss it reached. A run that raised shows the error; a problem whose oracle does not provide
what the optimizer ``requires`` is "not applicable", with the missing capabilities named. The stop column
says why a run ended before its budget without failing ("precision": its loss stopped changing at the
dtype's resolution; "converged"; "time_limit") or that it diverged; "-" for a run that used its budget.
"target step" is the first step whose training loss is at or below the target, 0 when the initial loss
already is.

The table's columns are explained in its footer (``format_table``). The plot (``comparison_figure``) draws
loss against steps from step 0 (the initial training and held-out losses), one panel per optimizer family
(``refopt.optim.FAMILIES``), a second row for the held-out loss when the problem has one; every optimizer has
its own color, line style and marker, the y-range comes from the runs that did not diverge
(``loss_range``), diverged runs are clipped to the top with a cross at their divergence step and
"(diverged)" in the legend, and a dotted line marks the target. ``write_csv`` writes every record, with a
step-0 row of the initial losses and accuracies.
"""
from __future__ import annotations

import csv
import math
import sys
import time

from .optim.base import as_real, show_value
from .plotting import pyplot, save_figure
from .problems.tuned import has_setting, hyperparameter_source, tuned_hyperparameters
from .runner import DIVERGENCE_FACTOR, RunConfig, describe_hyperparameters, divergence_bound, run
from .serialize import atomic_path

__all__ = ["DEFAULT_OPTIMIZERS", "DIVERGENCE_FACTOR", "Comparison", "ComparisonEntry", "compare", "check_overrides",
           "format_table", "tuned_hyperparameters", "hyperparameter_source", "describe_hyperparameters", "loss_range",
           "comparison_figure", "plot_comparison", "write_csv"]

# The standard set: what each family looks like with a setting tuned for the problem (refopt/problems/tuned.py).
DEFAULT_OPTIMIZERS: tuple[str, ...] = (
    "sgd", "adam", "adagrad", "shampoo", "adahessian", "sophia_g", "sophia_h", "lbfgs", "bfgs", "newton_cg",
    "natural_gradient", "kfac", "kfac_tridiag", "ekfac", "kbfgs")


def check_overrides(overrides: dict, names, option: str = "overrides") -> None:
    """ValueError naming ``option`` when ``overrides`` (optimizer → hyperparameters) names an optimizer that is
    not refopt's or not among ``names`` (it would be ignored without a word)."""
    from .optim import OPTIMIZERS  # noqa: PLC0415

    unknown = [n for n in overrides if n not in OPTIMIZERS]
    if unknown:
        raise ValueError(f"{option}: unknown optimizer(s) {', '.join(map(repr, unknown))}; choose from "
                         f"{', '.join(sorted(OPTIMIZERS))}")
    idle = [n for n in overrides if n not in names]
    if idle:
        raise ValueError(f"{option}: settings for {', '.join(idle)}, which {'is' if len(idle) == 1 else 'are'} not "
                         f"among the optimizers compared ({', '.join(names)})")


class ComparisonEntry:
    """One optimizer's comparison result: name, hyperparameters, ``RunResult`` (None on failure), error, seconds."""

    def __init__(self, name, hyperparameters, result=None, error=None, seconds=0.0):
        self.name, self.hyperparameters, self.result, self.error, self.seconds = (
            name, hyperparameters, result, error, seconds)

    @property
    def stop(self) -> str:
        """Why the run ended before its budget: its status ("precision", "converged", "time_limit",
        "diverged", "target_reached"), or "-" for a run that used its budget or did not run."""
        status = self.result.status if self.result is not None else "completed"
        return "-" if status == "completed" else status

    @property
    def history(self):
        """The run's log records ([] when the run failed)."""
        return self.result.history if self.result else []

    @property
    def diverged(self) -> bool:
        """Whether the run stopped because its training loss diverged (non-finite, or above the factor)."""
        return self.result is not None and self.result.status == "diverged"

    def to_target(self, target):
        """(step, seconds) at which the training loss first reached ``target`` ((0, 0.0) when the initial loss
        already is at or below it), or None."""
        initial = getattr(self.result, "initial_loss", None)
        if target is not None and initial is not None and initial <= target:
            return 0, 0.0
        for rec in self.history:
            tl = rec.get("train_loss")
            if target is not None and tl is not None and tl <= target:
                return rec["step"], rec["elapsed"]
        return None


class Comparison(list):
    """The entries of a comparison (a list, in the order of the names) and what they ran under: ``problem``
    (its name), ``source`` (``hyperparameter_source``), ``steps``, ``max_seconds``, ``target_loss``,
    ``divergence_factor`` and ``untuned`` (the optimizers without a setting for the problem, which ran at
    their defaults)."""

    def __init__(self, entries=(), problem="", source="", steps=None, max_seconds=None, target_loss=None,
                 divergence_factor=None, untuned=()):
        super().__init__(entries)
        self.problem, self.source, self.steps, self.max_seconds = problem, source, steps, max_seconds
        self.target_loss, self.divergence_factor, self.untuned = target_loss, divergence_factor, list(untuned)


def _divergence_text(result, factor) -> str:
    """'diverged at step k: loss L > B' (B = ``divergence_bound``; or 'loss nan') from the run's last recorded
    training loss."""
    rec = next((r for r in reversed(result.history) if r.get("train_loss") is not None), None)
    if rec is None:
        return f"diverged: {result.message}"
    tl = rec["train_loss"]
    bound = f" > {divergence_bound(result.initial_loss, factor):.3g}" if math.isfinite(tl) and factor is not None \
        else ""
    return f"diverged at step {rec['step']}: loss {tl:.3g}{bound}"


def compare(names, problem="digits_mlp", steps=200, max_seconds=None, target_loss=None, seed=0, overrides=None,
            batch_size=None, verbose=False, tuned=True, divergence_factor=DIVERGENCE_FACTOR) -> Comparison:
    """Run each optimizer in ``names`` on ``problem`` (a name or a ``NetworkProblem`` / ``FunctionProblem``)
    with the settings of the module docs (``tuned=False``: the optimizers' defaults) and ``overrides`` (name →
    hyperparameters) on top; returns a ``Comparison`` of ``ComparisonEntry``."""
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
    prob = make_problem(problem) if isinstance(problem, str) else problem
    if not hasattr(prob, "oracle") or not isinstance(getattr(prob, "name", None), str):
        raise ValueError(f"problem must be a problem name or a NetworkProblem / FunctionProblem, got "
                         f"{show_value(problem)}")
    overrides = overrides or {}
    check_overrides(overrides, names)
    settings = {n: {**(tuned_hyperparameters(prob, n) if tuned else {}), **overrides.get(n, {})} for n in names}
    # every configuration is validated (steps, budget, seed, hyperparameters) before anything runs
    configs = [RunConfig(n, settings[n], prob.name, steps, batch_size, seed, None, max_seconds,
                         divergence_factor=divergence_factor) for n in names]
    # a misspelt or out-of-range hyperparameter is an error, not a row of the table
    opts = [make_optimizer(config.optimizer, **config.hyperparameters) for config in configs]
    oracle = prob.oracle()  # what the problem provides, against each optimizer's requires
    applicable = {}
    for name, opt in zip(names, opts):
        try:
            opt.check_oracle(oracle)
            applicable[name] = None
        except ValueError as exc:  # e.g. a network-only method on a test function, or K-BFGS on a CNN
            applicable[name] = f"not applicable: {exc}"
    source = hyperparameter_source(prob) if tuned else "the optimizers' defaults"
    entries = Comparison(problem=prob.name, source=source + (" and the given overrides" if overrides else ""),
                         steps=steps, max_seconds=max_seconds, target_loss=target_loss,
                         divergence_factor=divergence_factor,
                         untuned=[n for n in names if tuned and applicable[n] is None and not has_setting(prob, n)])
    for name, config, opt in zip(names, configs, opts):
        hp = config.hyperparameters
        t0 = time.perf_counter()
        if applicable[name] is not None:
            entry = ComparisonEntry(name, hp, None, applicable[name])
        else:
            try:
                result = run(config, problem=prob, optimizer=opt)  # the optimizer built (and checked) above
                entry = ComparisonEntry(name, hp, result, _divergence_text(result, divergence_factor)
                                        if result.status == "diverged" else None)
            except (ValueError, NotImplementedError) as exc:
                entry = ComparisonEntry(name, hp, None, f"{type(exc).__name__}: {exc}")
        entry.seconds = time.perf_counter() - t0
        if verbose:
            status = entry.error or f"final loss {entry.result.final_loss:.4g}"
            print(f"  {name:18s} {entry.seconds:6.2f} s  {status}", file=sys.stderr)
        entries.append(entry)
    return entries


def _fmt(x, width: int, spec: str = ".4g") -> str:
    return f"{'-':>{width}s}" if x is None else f"{x:{width}{spec}}"


def format_table(entries, target_loss=None) -> str:
    """The comparison as a text table (columns below), then a footer explaining them and, for a
    ``Comparison``, its budget and where the hyperparameters came from. ``target_loss`` defaults to the
    comparison's."""
    if target_loss is None:
        target_loss = getattr(entries, "target_loss", None)
    results = [e.result for e in entries if e.result is not None]
    show_val = any(r.final_val_loss is not None for r in results)
    show_acc = any(r.final_val_accuracy is not None for r in results)
    cols = [("optimizer", 16, "<"), ("train loss", 10, ">")] + ([("val loss", 10, ">")] if show_val else []) \
        + ([("val acc", 7, ">")] if show_acc else []) \
        + [(h, w, ">") for h, w in (("steps", 5), ("stop", 10), ("target step", 11), ("target s", 8), ("nfev", 6),
                                    ("ngev", 6), ("nhvp", 6), ("other", 6), ("nhev", 5), ("seconds", 7))]
    head = " ".join(f"{h:{a}{w}s}" for h, w, a in cols) + "  failure"
    lines = [head, "-" * len(head)]
    for e in entries:
        r = e.result
        if r is None:
            cells = [f"{e.name:<16s}"] + [f"{'-':>{w}s}" for _, w, _ in cols[1:-1]] + [f"{e.seconds:7.2f}"]
        else:
            last = e.history[-1] if e.history else {}
            hit = e.to_target(target_loss)
            other = sum(last.get(k, 0) for k in ("nggnvp", "nfvp", "njvp", "nvjp", "nstats"))
            cells = [f"{e.name:<16s}", _fmt(r.final_loss, 10)]
            cells += [_fmt(r.final_val_loss, 10)] if show_val else []
            cells += [_fmt(r.final_val_accuracy, 7, ".4f")] if show_acc else []
            cells += [f"{len(e.history):5d}", f"{e.stop:>10s}", f"{(str(hit[0]) if hit else '-'):>11s}",
                      f"{(f'{hit[1]:.2f}' if hit else '-'):>8s}"]
            cells += [f"{last.get(k, 0):6d}" for k in ("nfev", "ngev", "nhvp")] + [f"{other:6d}", f"{r.nhev:5d}",
                                                                                   f"{e.seconds:7.2f}"]
        lines.append((" ".join(cells) + "  " + (e.error or "")).rstrip())
    lines += _footer(entries, target_loss, show_val, show_acc)
    return "\n".join(lines)


def _footer(entries, target_loss, show_val, show_acc) -> list[str]:
    """The lines under the table, each about one thing: the columns' meanings, the budget, the divergence rule,
    the hyperparameters' origin and the optimizers that ran at their defaults."""
    held_out = f"; {'val loss, val acc' if show_acc else 'val loss'}: on the held-out examples" if show_val else ""
    target = f"{target_loss:g}" if target_loss is not None else "the target (none given)"
    lines = [f"train loss: the final full-batch training loss{held_out}.",
             "steps: the updates taken; stop: why a run ended before its budget (precision: no change at the dtype's "
             "resolution; converged; time_limit; diverged).",
             f"target step, target s: the step and seconds at which the training loss first reached {target} (0: the "
             "initial loss had).",
             "nfev, ngev, nhvp: loss, gradient, Hessian-vector evaluations; other: GGN/Fisher/Jacobian products, "
             "layer statistics; nhev: dense matrices formed."]
    steps = getattr(entries, "steps", None)
    if steps is not None:
        secs = getattr(entries, "max_seconds", None)
        cap = f"at most {secs:g} s each (so the steps vary with the machine)" if secs is not None else \
            "no wall-clock limit (only the seconds vary with the machine)"
        factor = getattr(entries, "divergence_factor", None)
        rule = f"non-finite or above L₀ + {factor - 1:g} × max(|L₀|, 1), L₀ the initial loss" if factor is not None \
            else "non-finite"
        lines += [f"budget: {steps} steps per optimizer, {cap}.", f"diverged: a training loss {rule}."]
    source = getattr(entries, "source", "")
    if source:
        lines.append(f"hyperparameters: {source}; --show-hyperparameters lists them.")
    untuned = getattr(entries, "untuned", [])
    if untuned:
        lines.append(f"no setting for {getattr(entries, 'problem', 'this problem')} in refopt/problems/tuned.py, so at "
                     f"the optimizers' defaults: {', '.join(untuned)}.")
    return lines


_INITIAL = {"train_loss": "initial_loss", "val_loss": "initial_val_loss"}  # the RunResult field of step 0


def _points(entry, key: str) -> list:
    """[(step, value)] of the records' ``key``, from step 0 (the run's initial training or held-out loss)."""
    pts = [(r["step"], r[key]) for r in entry.history if r.get(key) is not None]
    initial = getattr(entry.result, _INITIAL.get(key, ""), None)
    if pts and isinstance(initial, (int, float)) and math.isfinite(initial):
        pts.insert(0, (0, initial))
    return pts


def loss_range(entries, key: str = "train_loss"):
    """(low, high, scale) of the plot's y-axis for the records' ``key`` (and the initial training loss), from
    the runs that did not diverge (every run, if all did), or None when there is nothing finite to draw:
    "log" with a factor 2 of margin when every value is positive, else "linear" with 5 % of the span."""
    def values(chosen):
        return [v for e in chosen for _, v in _points(e, key) if math.isfinite(v)]

    vals = values([e for e in entries if not e.diverged]) or values(entries)
    if not vals:
        return None
    lo, hi = min(vals), max(vals)
    if lo > 0:
        return lo / 2, hi * 2, "log"
    pad = 0.05 * (hi - lo) or 1.0
    return lo - pad, hi + pad, "linear"


# Families as panel titles; an optimizer outside refopt.optim.FAMILIES is drawn in a panel "other".
_FAMILY_TITLES = {"gradient": "gradient descent", "newton": "Newton and quasi-Newton",
                  "fisher": "natural gradient and K-FAC", "adaptive": "adaptive (diagonal, Shampoo, Sophia)"}
_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#7f7f7f",
           "#bcbd22")
_LINESTYLES = ("-", "--", "-.", ":")
_MARKERS = ("o", "s", "^", "v", "D", "P", "*", "<", ">", "h", "d", "p", "8")  # no "X": it marks divergence


def _style(i: int) -> dict:
    """The i-th style of a figure: color, line style and marker each cycle with a different period (10, 4,
    13), so no two of the first 260 optimizers share all three."""
    return {"color": _COLORS[i % len(_COLORS)], "linestyle": _LINESTYLES[i % len(_LINESTYLES)],
            "marker": _MARKERS[i % len(_MARKERS)]}


def comparison_figure(entries, title: str | None = None):
    """The matplotlib figure of the module docs (ImportError without matplotlib)."""
    from .optim import FAMILIES  # noqa: PLC0415

    plt = pyplot("figure")
    if plt is None:
        raise ImportError("comparison_figure needs matplotlib (pip install 'refopt[scripts]')")
    family_of = {n: f for f, members in FAMILIES.items() for n in members}
    drawn = [e for e in entries if e.history]
    present = {family_of.get(e.name, "other") for e in drawn}
    panels = [f for f in [*FAMILIES, "other"] if f in present] or ["other"]
    target = getattr(entries, "target_loss", None)
    rows = [k for k in ("train_loss", "val_loss") if k == "train_loss" or any(r.get(k) is not None for e in drawn
                                                                                for r in e.history)]
    fig, axes = plt.subplots(len(rows), len(panels), figsize=(4.4 * len(panels) + 0.4, 3.5 * len(rows) + 0.5),
                             squeeze=False, sharex=True)
    for row, key in enumerate(rows):
        yr = loss_range(entries, key)
        for col, family in enumerate(panels):
            ax = axes[row][col]
            members = [(i, e) for i, e in enumerate(drawn) if family_of.get(e.name, "other") == family]
            for k, (i, e) in enumerate(members):
                _draw(ax, e, key, yr, _style(i), k, len(members))
            if yr is not None:
                ax.set_yscale(yr[2])
                ax.set_ylim(yr[0], yr[1])
            if target is not None and key == "train_loss":
                ax.axhline(target, color="0.5", linewidth=0.8, linestyle=":")
            ax.grid(True, which="both", alpha=0.3)
            if row == 0:
                ax.set_title(_FAMILY_TITLES.get(family, family), fontsize=10)
                if ax.get_legend_handles_labels()[0]:
                    ax.legend(fontsize=7, loc="best")
            if row == len(rows) - 1:
                ax.set_xlabel("step")
            if col == 0:
                ax.set_ylabel("training loss" if key == "train_loss" else "validation loss")
    if title or target is not None:
        fig.suptitle((title or "") + (f" (dotted: target training loss {target:g})" if target is not None else ""),
                     fontsize=11)
    fig.tight_layout()
    return fig


def _draw(ax, entry, key, yr, style, k, n) -> None:
    """One run's ``key`` against steps on ``ax``, the k-th of the panel's n; a diverged run clipped to just
    under the top of ``yr`` with an X at its divergence step. So that curves that coincide (K-FAC and its
    tridiagonal variant) stay visible, earlier ones are drawn wider and underneath, and the markers of the
    panel's curves are staggered along the steps."""
    pts = _points(entry, key)
    if not pts:
        return
    steps, vals = [p[0] for p in pts], [p[1] for p in pts]
    label = entry.name
    if entry.diverged and yr is not None:
        lo, hi, scale = yr
        # the ceiling: 97 % of the axis height, so the clipped line is not hidden under the frame
        ceiling = math.exp(math.log(lo) + 0.97 * (math.log(hi) - math.log(lo))) if scale == "log" \
            else lo + 0.97 * (hi - lo)
        vals = [v if math.isfinite(v) and v < ceiling else ceiling for v in vals]
        label += " (diverged)"
        ax.plot([steps[-1]], [vals[-1]], marker="X", markersize=10, color=style["color"], linestyle="none",
                zorder=3 + n)
    every = max(1, len(steps) // 8)
    ax.plot(steps, vals, label=label, linewidth=1.0 + 2.0 * (n - 1 - k) / max(1, n - 1), markersize=5, zorder=2 + k,
            markevery=((k * every) // n, every), **style)


def plot_comparison(entries, path: str, title: str | None = None):
    """Write ``comparison_figure(entries, title)`` to ``path`` atomically (``plotting.save_figure``: the format
    from its extension, png by default); returns the path, or None (with a note on stderr) without matplotlib
    or for an empty path."""
    if not path:
        return None
    if pyplot("plot") is None:
        return None
    return save_figure(comparison_figure(entries, title), path)


CSV_KEYS = ("step", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "loss", "grad_norm", "elapsed", "nfev",
            "ngev", "nhvp", "nhev")


def write_csv(entries, path: str) -> None:
    """Write each entry's log to ``path`` atomically: per optimizer a step-0 row (the initial training and
    held-out loss and accuracy, counts 0) and one row per step (losses, held-out metrics, gradient norm,
    time, counts; nhev 0 for the methods that form no dense matrix)."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["optimizer", *CSV_KEYS])
        for e in entries:
            r = e.result
            if r is not None:
                initial = {"step": 0, "train_loss": r.initial_loss, "train_accuracy": r.initial_train_accuracy,
                           "val_loss": r.initial_val_loss, "val_accuracy": r.initial_val_accuracy, "elapsed": 0.0,
                           "nfev": 0, "ngev": 0, "nhvp": 0, "nhev": 0}
                w.writerow([e.name] + [initial.get(k) for k in CSV_KEYS])
            for rec in e.history:
                w.writerow([e.name] + [rec.get(k, 0 if k == "nhev" else None) for k in CSV_KEYS])
