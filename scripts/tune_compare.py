"""Tune the comparison's hyperparameters (refopt/problems/tuned.py) by a small grid per problem and optimizer.

Network problems (every built-in one): for each default optimizer with a grid below, every setting of the
grid runs once with the comparison's budget (``compare``'s defaults: 200 steps, seed 0, full batch, no
wall-clock limit, divergence factor 10) from the optimizer's defaults plus the grid point (``tuned=False``).
Criterion: the lowest final training loss among the settings that did not fail (failed: diverged, i.e. a
training loss non-finite or above 10 × |initial loss|, or an error); ties (within a relative 1e-9) go to
the earlier setting of the grid (the smaller step size). An optimizer without a grid (lbfgs, bfgs,
newton_cg: line searches, no step size) keeps its defaults.

Generic setting (``GENERIC``, for network problems without a tuned entry, e.g. the user's ``--data``): per
optimizer, among the grid settings that failed on no built-in network problem, the one whose worst rank
over the problems (rank 1: the lowest final training loss among that optimizer's settings on the problem)
is best; ties by the sum of the ranks, then grid order. If every setting failed somewhere: the defaults.

Test functions (``FUNCTIONS``): an optimizer that runs on a function oracle keeps its defaults unless they
diverge on some test function within the budget; then its lr steps down the ladder 3·10ᵏ, 10ᵏ from the
default (at most 6 rungs) to the largest value that diverges on none; if none does, the defaults stay (the
table then shows the divergence) and the script says so.

    python scripts/tune_compare.py                    # everything; print the module text
    python scripts/tune_compare.py --write            # ... and write refopt/problems/tuned.py
    python scripts/tune_compare.py --only adam,sgd --problems digits_mlp     # a part, printed only
"""
import argparse
import datetime
import math
import pathlib
import sys
import textwrap
import time

from refopt.compare import DEFAULT_OPTIMIZERS, DIVERGENCE_FACTOR, compare
from refopt.optim import make_optimizer
from refopt.problems.registry import PROBLEMS, problem_names

STEPS = 200   # compare's default budget
LADDER = [0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0]


def _lr(lo, hi, **fixed):
    """The grid {lr: LADDER[lo..hi]} (factor-of-3 steps) with ``fixed`` hyperparameters beside it."""
    return [{"lr": lr, **fixed} for lr in LADDER[LADDER.index(lo):LADDER.index(hi) + 1]]


GRIDS = {
    "sgd": _lr(0.01, 10.0, momentum=0.9),
    "adam": _lr(0.001, 1.0),
    "adagrad": _lr(0.01, 10.0),
    "shampoo": _lr(0.03, 10.0),
    "adahessian": _lr(0.03, 3.0),
    "sophia_g": _lr(0.003, 1.0),
    "sophia_h": _lr(0.003, 1.0),
    "natural_gradient": _lr(0.1, 3.0),
    "kfac": _lr(0.03, 3.0),
    "kfac_tridiag": _lr(0.03, 3.0),
    "ekfac": _lr(0.03, 3.0),
    "kbfgs": _lr(0.03, 3.0),
}


def run_one(name, problem, hp):
    """(final training loss or None when the run failed, the failure text, seconds)."""
    t0 = time.perf_counter()
    (entry,) = compare([name], problem, STEPS, overrides={name: hp}, tuned=False)
    seconds = time.perf_counter() - t0
    if entry.error or entry.result is None or not math.isfinite(entry.result.final_loss):
        return None, entry.error or "non-finite loss", seconds
    return entry.result.final_loss, "", seconds


def tune_networks(names, problems):
    """{problem: {optimizer: [final loss or None per grid setting]}}, printing each run."""
    losses = {}
    for problem in problems:
        for name in names:
            row = []
            for hp in GRIDS[name]:
                loss, error, seconds = run_one(name, problem, hp)
                row.append(loss)
                print(f"{problem:20s} {name:18s} {hp}  {f'{loss:.4g}' if loss is not None else error}  "
                      f"({seconds:.1f} s)", flush=True)
            losses.setdefault(problem, {})[name] = row
    return losses


# Losses within a relative 1e-9 tie: differences that small are rounding (step sizes that K-FAC's KL clip
# cuts to the same step differ only in the last bits), so the smaller step size wins.
TIE = 1e-9


def best(row):
    """Index of the lowest loss that did not fail (the first of those tying with it), or None."""
    ok = [loss for loss in row if loss is not None]
    if not ok:
        return None
    low = min(ok)
    return next(i for i, loss in enumerate(row) if loss is not None and loss <= low + TIE * abs(low))


def ranks(row):
    """Rank of each setting (1 + how many did better by more than a tie), None where it failed."""
    return [None if loss is None else 1 + sum(o is not None and o < loss - TIE * abs(loss) for o in row)
            for loss in row]


def generic(name, losses):
    """Index of the generic setting of ``name`` (module docs), or None."""
    per_problem = [ranks(losses[p][name]) for p in losses if name in losses[p]]
    safe = [i for i in range(len(GRIDS[name])) if all(r[i] is not None for r in per_problem)]
    return min(safe, key=lambda i: (max(r[i] for r in per_problem), sum(r[i] for r in per_problem), i)) \
        if safe else None


def tune_functions(names):
    """{optimizer: hyperparameters} for the test functions (module docs), and notes for the module text."""
    functions = [p for p in problem_names() if p not in PROBLEMS]
    out, notes = {}, []
    for name in names:
        entries = compare([name], functions[0], 1, tuned=False)
        if entries[0].error and entries[0].error.startswith("not applicable"):
            continue

        def diverges(hp):
            bad = [p for p in functions if compare([name], p, STEPS, overrides={name: hp}, tuned=False)[0].error]
            print(f"{'test functions':20s} {name:18s} {hp}  {'fails on ' + ', '.join(bad) if bad else 'ok'}",
                  flush=True)
            return bad

        bad = diverges({})
        if not bad:
            continue
        default = make_optimizer(name).hyperparameters().get("lr")
        rungs = sorted((float(f"{m}e{e}") for e in range(-8, 2) for m in (1, 3)), reverse=True)
        for lr in [r for r in rungs if default is not None and r < default][:6]:
            if not diverges({"lr": lr}):
                out[name] = {"lr": lr}
                notes.append(f"{name}: its default lr = {default:g} diverges on {', '.join(bad)}; lr = {lr:g} on none")
                break
        else:
            notes.append(f"{name}: its defaults diverge on {', '.join(bad)} and so does every lr tried; the defaults"
                         " stay (the table shows the divergence)")
    return out, notes


def _py(v) -> str:
    """A Python literal in the project's style (double quotes)."""
    if isinstance(v, dict):
        return "{" + ", ".join(f"{_py(k)}: {_py(x)}" for k, x in v.items()) + "}"
    return f'"{v}"' if isinstance(v, str) else repr(v)


def _literal(table: dict, indent: str) -> str:
    return "".join(f"{indent}{_py(k)}: {_py(v)},\n" for k, v in table.items())


def _comment(text: str) -> str:
    return "".join(f"#   {line}\n" for line in textwrap.wrap(text, 104, subsequent_indent="  "))


def edges(tuned) -> list:
    """(problem, optimizer) whose winner is the largest step size of its grid (a larger one might do better)."""
    return [(p, n) for p, table in tuned.items() for n, hp in table.items() if hp == GRIDS[n][-1]]


def module_text(tuned, generic_table, functions, notes, seconds) -> str:
    """The text of refopt/problems/tuned.py."""
    grids = "".join(f"#   {name}: lr in {[hp['lr'] for hp in grid]}"
                    + "".join(f", {k}={v}" for k, v in grid[0].items() if k != "lr") + "\n"
                    for name, grid in GRIDS.items())
    body = "".join(f"    {_py(problem)}: {{\n{_literal(table, '        ')}    }},\n"
                   for problem, table in tuned.items())
    top = _comment("Winners at the top of their grid: " + (", ".join(f"{n} on {p}" for p, n in edges(tuned))
                                                            or "none") + ".")
    return f'''"""The hyperparameters of the comparison, per problem and optimizer (data only).

``TUNED[problem][optimizer]``: the built-in network problems; ``GENERIC[optimizer]``: any other network
problem (the user's data); ``FUNCTIONS[optimizer]``: the test functions. What is not listed is the
optimizer's default. ``refopt.compare.tuned_hyperparameters`` reads these tables for ``refopt compare``
and ``refopt train``; ``runner.run`` does not (a RunConfig's hyperparameters are all it uses).
"""

# Written by scripts/tune_compare.py --write on {datetime.date.today().isoformat()} ({seconds / 60:.0f} minutes of CPU); its
# docstring gives the criterion. Each setting ran {STEPS} steps (compare's budget: full batch, seed 0, no time
# limit) from the optimizer's defaults; the winner has the lowest final training loss among the settings that did
# not diverge (a training loss non-finite or above {DIVERGENCE_FACTOR:g} × |initial loss|), the smaller step size on
# ties (within a relative {TIE:g}). The grids (factor-of-3 ladders):
{grids}#   lbfgs, bfgs, newton_cg: no grid (line searches; their defaults).
{top}# GENERIC: per optimizer, the setting that diverged on no built-in network problem and had the best worst-case
# rank over them. FUNCTIONS: the defaults, except where they diverge on a test function:
{"".join(_comment(note) for note in notes) or _comment("(none)")}
TUNED: dict[str, dict[str, dict]] = {{
{body}}}

GENERIC: dict[str, dict] = {{
{_literal(generic_table, "    ")}}}

FUNCTIONS: dict[str, dict] = {{
{_literal(functions, "    ")}}}
'''


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default=None, help="comma-separated optimizers (default: every one with a grid)")
    ap.add_argument("--problems", default=None, help="comma-separated network problems (default: every built-in)")
    ap.add_argument("--write", action="store_true", help="write refopt/problems/tuned.py (a full run only)")
    args = ap.parse_args()
    names = args.only.split(",") if args.only else [n for n in DEFAULT_OPTIMIZERS if n in GRIDS]
    problems = args.problems.split(",") if args.problems else sorted(PROBLEMS)
    if args.write and (args.only or args.problems):
        sys.exit("--write needs the full run (no --only, no --problems)")
    t0 = time.process_time()
    losses = tune_networks(names, problems)
    tuned = {p: {n: GRIDS[n][best(losses[p][n])] for n in names if best(losses[p][n]) is not None} for p in problems}
    generic_table = {n: GRIDS[n][generic(n, losses)] for n in names if generic(n, losses) is not None}
    functions, notes = tune_functions([n for n in DEFAULT_OPTIMIZERS if args.only is None or n in names])
    text = module_text(tuned, generic_table, functions, notes, time.process_time() - t0)
    print(text)
    if args.write:
        path = pathlib.Path(__file__).resolve().parent.parent / "refopt" / "problems" / "tuned.py"
        path.write_text(text, encoding="utf-8")
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
