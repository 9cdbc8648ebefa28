"""The ``refopt`` command: ``train``, ``compare``, ``analyze``, ``verify`` and ``list``.

Errors in what the user typed (unknown names, an empty ``--optimizers`` list, hyperparameters of the wrong
type or range, ``--hp-json`` that is not a JSON object of objects, a ``--seed`` outside [0, 2⁶³ − 1],
non-finite stopping rules, unreadable or mismatched files, a ``--resume`` that is not a regular file,
output paths that cannot be written, a ``--plot`` format matplotlib does not write, a bad REFOPT_BACKEND or
REFOPT_DTYPE; running out of memory) print one line ``refopt: error: ...`` naming the option and exit with
status 2. Output paths (--log, --checkpoint, --csv, --plot, analyze's --json, verify export --out) are checked
before any training or analysis starts. Python warnings print as one line each, ``refopt: warning: ...``
(no source line). Progress bars (tqdm, when installed) are drawn only when stderr is a terminal; otherwise
a line every tenth of the run.
"""
from __future__ import annotations

import argparse
import math
import sys
import warnings

# The argument readers live in cli_args.py (verify's subcommands use them too); re-exported here.
from .cli_args import (add_data_arguments, check_input_file, check_output_path, check_plot_path, check_seed,
                       parse_divergence_factor, parse_hp_json, parse_hyperparameters, parse_optimizer_list,
                       parse_value, problem_from_args, problem_name_from_args)  # noqa: F401 (parse_value: re-exported)

__all__ = ["main", "parse_hyperparameters", "check_output_path", "check_seed", "parse_optimizer_list", "parse_hp_json"]


def _tqdm():
    """tqdm's bar class when tqdm is installed and stderr is a terminal (a bar's redraws would fill a redirected
    file), else None."""
    isatty = getattr(sys.stderr, "isatty", None)
    if not (callable(isatty) and isatty()):
        return None
    try:
        from tqdm import tqdm  # noqa: PLC0415 (optional, from the 'scripts' extra)
    except ImportError:
        return None
    return tqdm


def _progress(total: int, enabled: bool):
    """(report(record), close()): a tqdm bar (``_tqdm``; created at the first step, so an invalid configuration
    fails before any bar is drawn), else a line every tenth of the run."""
    if not enabled:
        return None, lambda: None
    tqdm = _tqdm()
    if tqdm is None:
        def report(rec):
            if rec["step"] % max(1, total // 10) == 0 or rec["step"] == total:
                print(f"step {rec['step']:5d}  loss {rec['loss']:.6g}", file=sys.stderr)
        return report, lambda: None
    bar = []

    def report(rec):
        if not bar:
            bar.append(tqdm(total=total, initial=rec["step"] - 1, unit="step", file=sys.stderr, leave=False))
        bar[0].update(1)
        bar[0].set_postfix(loss=f"{rec['loss']:.4g}")

    def close():
        if bar:
            bar[0].close()
    return report, close


def cmd_train(args) -> int:
    """``refopt train``: run one optimizer on one problem and print a summary; returns 0, or 130 after Ctrl-C."""
    from .problems.tuned import tuned_hyperparameters  # noqa: PLC0415
    from .runner import Interrupted, RunConfig, describe_hyperparameters, run  # noqa: PLC0415

    from .optim import optimizer_class  # noqa: PLC0415

    # what the user typed is checked before the problem (and its data set) is built
    optimizer_class(args.optimizer)
    given = parse_hyperparameters(args.hp)
    check_seed(args.seed)
    divergence_factor = parse_divergence_factor(args.divergence_factor)
    problem = problem_from_args(args)  # a built-in --problem, or --data with --sizes, --loss, ...
    args.problem = problem.name  # "data:<file>" for --data: what the summary, the settings and a checkpoint name
    # compare's settings for this problem (refopt/problems/tuned.py), the NAME=VALUE pairs on top
    hyperparameters = {**tuned_hyperparameters(problem, args.optimizer), **given}
    config = RunConfig(args.optimizer, hyperparameters, args.problem, args.steps, args.batch_size,
                       args.seed, args.target_loss, args.max_seconds, args.eval_every, args.gtol,
                       divergence_factor=divergence_factor, analyze_every=args.analyze_every)
    for path, option in ((args.log, "--log"), (args.checkpoint, "--checkpoint")):
        if path is not None:
            check_output_path(path, option)
    if args.plot is not None:
        check_plot_path(args.plot, "--plot")
    if args.resume is not None:
        check_input_file(args.resume, "--resume")
    print(f"hyperparameters: {describe_hyperparameters(problem, args.optimizer, given)}")
    report, close = _progress(args.steps, not args.no_progress)
    try:
        result = run(config, problem=problem, resume=args.resume, log_path=args.log,
                     checkpoint_path=args.checkpoint, checkpoint_every=args.checkpoint_every, progress=report)
    except Interrupted as exc:
        print(f"refopt: {exc}", file=sys.stderr)
        return 130
    finally:
        close()
    last = result.history[-1] if result.history else {}
    steps = len(result.history)
    print(f"{config.optimizer} on {config.problem}: {result.status} after {steps} step{'' if steps == 1 else 's'}; "
          f"final training loss {result.final_loss:.6g}; grad norm {last.get('grad_norm', math.nan):.3g}; "
          f"nfev {last.get('nfev', 0)}, ngev {last.get('ngev', 0)}, nhvp {last.get('nhvp', 0)}"
          + (f", nhev {result.nhev} (dense matrices)" if result.nhev else "") + "; "
          f"{last.get('elapsed', 0.0):.2f} s" + (f"; {result.message}" if result.message else ""))
    held_out = _held_out_summary(result, problem)
    if held_out:
        print(held_out)
    sharp = next((r for r in reversed(result.history) if r.get("hessian_max") is not None), None)
    if sharp is not None:  # --analyze-every: the last sharpness recorded, against gradient descent's threshold
        threshold = sharp.get("stability_threshold")
        print(f"Hessian λ_max at step {sharp['step']}: {sharp['hessian_max']:.6g}"
              + (f" (gradient descent's stability threshold at this lr: {threshold:.6g})" if threshold is not None
                 else ""))
    if args.checkpoint:
        print(f"checkpoint of step {steps} written to {args.checkpoint}")
    if args.plot:  # the compare plot of this one run: training (and held-out) loss against steps
        from .compare import ComparisonEntry, plot_comparison  # noqa: PLC0415
        entry = ComparisonEntry(config.optimizer, config.hyperparameters, result)
        if plot_comparison([entry], args.plot, title=f"{config.optimizer} on {config.problem}"):
            print(f"plot written to {args.plot}")
    return 0


def _held_out_summary(result, problem) -> str:
    """'validation loss 0.112, validation accuracy 0.972 (360 held out); training accuracy 0.99', the parts
    the run recorded ('' for none)."""
    parts = []
    if result.final_val_loss is not None:
        parts.append(f"validation loss {result.final_val_loss:.3g}")
    if result.final_val_accuracy is not None:
        parts.append(f"validation accuracy {result.final_val_accuracy:.3f}")
    text = ", ".join(parts)
    if text and getattr(problem, "X_val", None) is not None:
        text += f" ({problem.X_val.shape[0]} held out)"
    if result.final_train_accuracy is not None:
        text += ("; " if text else "") + f"training accuracy {result.final_train_accuracy:.3f}"
    return text


def cmd_compare(args) -> int:
    """``refopt compare``: run the optimizers on one problem, print the table, plot and CSV if asked; returns 0."""
    from .compare import (DEFAULT_OPTIMIZERS, check_overrides, compare, describe_hyperparameters,  # noqa: PLC0415
                          format_table, hyperparameter_source, plot_comparison)

    names = parse_optimizer_list(args.optimizers) if args.optimizers is not None else list(DEFAULT_OPTIMIZERS)
    check_seed(args.seed)
    divergence_factor = parse_divergence_factor(args.divergence_factor)
    # --data builds the problem here (compare builds a built-in one by name); args.problem becomes its name
    problem = problem_from_args(args) if args.data is not None else None
    args.problem = problem.name if problem is not None else problem_name_from_args(args)
    overrides = parse_hp_json(args.hp_json) if args.hp_json is not None else {}
    check_overrides(overrides, names, "--hp-json")
    if args.show_hyperparameters:  # what a run would use, without running
        print(f"hyperparameters on {args.problem}: {hyperparameter_source(problem or args.problem)}, then each "
              "optimizer's "
              "defaults" + ("; --hp-json given" if overrides else ""))
        for name in names:
            print(f"{name:16s} {describe_hyperparameters(problem or args.problem, name, overrides.get(name))}")
        return 0
    if args.csv:
        check_output_path(args.csv, "--csv")
    if args.plot:  # --plot '' means no plot
        check_plot_path(args.plot, "--plot")
    results = compare(names, problem=problem or args.problem, steps=args.steps, max_seconds=args.max_seconds,
                      target_loss=args.target_loss, seed=args.seed, overrides=overrides, batch_size=args.batch_size,
                      verbose=not args.quiet, divergence_factor=divergence_factor)
    print(format_table(results, args.target_loss))
    if args.plot:
        path = plot_comparison(results, args.plot, title=f"refopt compare on {results.problem}: {args.steps} steps")
        if path:
            print(f"plot written to {path}")
    if args.csv:
        from .compare import write_csv  # noqa: PLC0415
        write_csv(results, args.csv)
        print(f"csv written to {args.csv}")
    return 0


def _analysis_progress(enabled: bool):
    """(progress(stage, done, total), close()) for ``analysis.analyze``: a tqdm bar per stage (``_tqdm``), else a
    line on stderr when a stage starts and every tenth of it."""
    if not enabled:
        return None, lambda: None
    tqdm = _tqdm()
    if tqdm is None:
        def report(stage, done, total):
            if done == 0 or done % max(1, total // 10) == 0 or done == total:
                print(f"analyze: {stage} {done}/{total}", file=sys.stderr)
        return report, lambda: None
    bar = {}

    def close():
        if bar.get("bar") is not None:
            bar.pop("bar").close()

    def report(stage, done, total):
        if done == 0:  # a stage starts; its bar is made at its first unit, when its total is known
            close()
            return
        b = bar.get("bar")
        if b is None or b.total != total or done < b.n:  # the first unit, or a second pass (kfac_condition)
            close()
            b = bar["bar"] = tqdm(total=total, desc=stage, file=sys.stderr, leave=False)
        b.update(done - b.n)
    return report, close


def _json_ready(obj):
    """``obj`` with every non-finite float as None (strict JSON has no NaN or Infinity)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _json_ready(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_ready(v) for v in obj]
    return obj


def _checkpoint_problem(path: str) -> str:
    """The built-in problem the checkpoint at ``path`` was written for (``checkpoint.checkpoint_problem``: its meta
    alone, checked). A checkpoint of the user's own data (problem "data:<file>") cannot be rebuilt from the
    file: ValueError asking for --data, whose problem identity the loader then compares with the file's."""
    from .checkpoint import checkpoint_problem  # noqa: PLC0415
    from .problems.registry import problem_names  # noqa: PLC0415

    name, _ = checkpoint_problem(path)
    if name.startswith("data:"):
        raise ValueError(f"--checkpoint {path} was written for your own data ({name[:80]!r}): give --data with "
                         "that file and the --sizes, --activation, --loss, ... of the run; the checkpoint's "
                         "problem identity then confirms they are the same")
    if name not in problem_names():
        raise ValueError(f"--checkpoint {path}: its meta names problem {name[:80]!r}, which is not a built-in "
                         "problem (see `refopt list`)")
    return name


def cmd_analyze(args) -> int:
    """``refopt analyze``: the loss-surface report (``analysis.analyze``) of a problem at its initial
    parameters or a checkpoint's, on the full batch or a seeded batch; prints it, writes the density plot
    and the JSON report if asked; returns 0."""
    import json  # noqa: PLC0415

    from .analysis import ANALYSES, MAX_TOP, analyze, format_report, plot_density  # noqa: PLC0415
    from .analysis.spectral import MAX_LANCZOS_STEPS, MAX_PROBES  # noqa: PLC0415
    from .optim.base import MAX_ITERATIONS, check_int, check_nonnegative, check_positive  # noqa: PLC0415
    from .checkpoint import load_checkpoint_params  # noqa: PLC0415
    from .runner import batch_indices  # noqa: PLC0415
    from .serialize import atomic_path  # noqa: PLC0415
    from .tree import size  # noqa: PLC0415

    seed = check_seed(args.seed)
    if args.iterations is not None and args.method != "power":
        raise ValueError("--iterations is power iteration's (--method power); Lanczos stops on --tol or --max-steps")
    iterations = 100 if args.iterations is None else check_int("--iterations", args.iterations, 1, MAX_ITERATIONS)
    tol = None if args.tol is None else check_nonnegative("--tol", args.tol)  # None: the method's default
    condition_tol = check_nonnegative("--condition-tol", args.condition_tol)
    probes = check_int("--probes", args.probes, 1, MAX_PROBES)
    density_probes = check_int("--density-probes", args.density_probes, 1, MAX_PROBES)
    steps = check_int("--lanczos-steps", args.lanczos_steps, 1, MAX_ITERATIONS)
    damping = check_positive("--damping", args.damping)
    if args.top is not None and args.top < 1:
        raise ValueError(f"-k/--top must be a positive integer, got {args.top}")
    if args.top is not None and args.top > MAX_TOP:
        raise ValueError(f"-k/--top must be at most {MAX_TOP}, got {args.top}")
    if args.max_steps is not None:
        check_int("--max-steps", args.max_steps, 1, MAX_ITERATIONS)
    wanted = list(ANALYSES)
    if args.analyses is not None:
        wanted = [a.strip() for a in args.analyses.split(",")]
        bad = [a for a in wanted if a not in ANALYSES]
        if bad or not wanted:
            raise ValueError(f"--analyses: expected names from {', '.join(ANALYSES)} separated by commas, "
                             f"got {args.analyses!r}")
    plot = args.plot
    if plot is None:  # the default file, written only when the density is computed
        plot = "refopt-density.png" if "density" in wanted else ""
    elif plot and "density" not in wanted:
        raise ValueError("--plot draws the eigenvalue density: add density to --analyses (or give --plot '')")
    if plot:  # '' means none
        check_plot_path(plot, "--plot")
    if args.json:
        check_output_path(args.json, "--json")
    if args.checkpoint is not None:
        check_input_file(args.checkpoint, "--checkpoint")
        if args.problem is None and args.data is None:  # the checkpoint's own problem (module docs)
            args.problem = _checkpoint_problem(args.checkpoint)
    problem = problem_from_args(args)
    if args.checkpoint is not None:  # the checked loader: the meta names the optimizer (docs/analysis.md)
        step, params, run = load_checkpoint_params(args.checkpoint, problem)
        where = f"the parameters of {args.checkpoint} (step {step} of {run.optimizer})"
        source = {"checkpoint": args.checkpoint, "step": step, "optimizer": run.optimizer}
    else:
        params = problem.init_params(seed)
        where = f"the initial parameters (seed {seed})" if problem.kind == "network" else "the start point"
        source = {"init_seed": seed}
    n = size(params)
    top = min(3, n) if args.top is None else args.top
    if top > n:
        raise ValueError(f"-k/--top must be at most n = {n} (the number of parameters), got {top}")
    max_steps = min(n, MAX_LANCZOS_STEPS) if args.max_steps is None else args.max_steps
    if max_steps > n:
        raise ValueError(f"--max-steps must be at most n = {n} (the number of parameters), got {max_steps}")
    if args.method == "lanczos" and top > max_steps and {"hessian_top", "ggn_top"} & set(wanted):
        raise ValueError(f"-k/--top ({top}) must be at most --max-steps ({max_steps}): m Lanczos steps give m "
                         "Ritz values")
    if args.batch_size is None:
        oracle, batch = problem.oracle(), f"all {problem.num_examples} training examples"
    else:
        if problem.kind != "network":
            raise ValueError(f"--batch-size: problem {problem.name!r} is a function of a vector, it has no examples")
        b = check_int("--batch-size", args.batch_size, 1, problem.num_examples)
        # the first mini-batch of `refopt train --batch-size b --seed s`
        oracle = problem.batch_oracle(batch_indices(problem.num_examples, b, seed, 0))
        batch = f"a batch of {b} of the {problem.num_examples} training examples (seed {seed})"
    print(f"{problem.name} at {where}" + (f", on {batch}" if problem.kind == "network" else ""))
    progress, close = _analysis_progress(not args.no_progress)
    try:
        report = analyze(oracle, params, k=top, method=args.method, tol=tol, max_iter=iterations,
                         max_steps=max_steps, condition_tol=condition_tol, probes=probes, steps=steps,
                         density_probes=density_probes, damping=damping, seed=seed, analyses=wanted,
                         progress=progress)
    finally:
        close()
    print(format_report(report))
    print("oracle requests: " + ", ".join(f"{k} {v}" for k, v in report["counts"].items()))
    if plot and "density" in report:
        if plot_density(report, plot, title=f"Hessian eigenvalue density of {problem.name} (SLQ)"):
            print(f"density plot written to {plot}")
    if args.json:
        full = {"problem": problem.name, "params": source, "batch_size": args.batch_size, **report}
        with atomic_path(args.json) as tmp, open(tmp, "w") as f:  # a reader never sees half a report
            json.dump(_json_ready(full), f, indent=1)
            f.write("\n")
        print(f"report written to {args.json}")
    return 0


def cmd_list(args) -> int:
    """``refopt list``: print the names of the optimizers, problems and convention profiles (with
    ``--switches``, the table of every optimizer's convention switches instead, or with ``--family`` too,
    one family's); returns 0."""
    from .optim import OPTIMIZERS, conventions_table  # noqa: PLC0415
    from .problems.registry import problem_names  # noqa: PLC0415
    from .verify.profiles import PROFILES  # noqa: PLC0415

    if args.family is not None and not args.switches:
        raise ValueError("--family needs --switches")
    if args.switches:
        print(conventions_table(args.family))
        return 0
    print("optimizers: " + ", ".join(sorted(OPTIMIZERS)))
    print("problems:   " + ", ".join(problem_names()))
    print("profiles:   " + ", ".join(sorted(PROFILES)))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``refopt`` command and its subcommands."""
    p = argparse.ArgumentParser(prog="refopt", description="Reference second-order optimizers: train, compare, verify.")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="run one optimizer on one problem",
                       description="Run one optimizer on one problem. Hyperparameters not given as NAME=VALUE come "
                                   "from the problem's setting in refopt/problems/tuned.py (the one `refopt compare` "
                                   "uses), then the optimizer's defaults; the first output line lists them all.")
    t.add_argument("optimizer", help="optimizer name (see `refopt list`)")
    t.add_argument("hp", nargs="*", metavar="NAME=VALUE",
                   help="hyperparameters, e.g. lr=0.1 momentum=0.9 (the others: refopt/problems/tuned.py, defaults)")
    add_data_arguments(t)  # --problem, or --data with --sizes, --activation, --loss, --val-fraction, ...
    t.add_argument("--steps", type=int, default=100, help="updates to take (default 100)")
    t.add_argument("--batch-size", type=int, default=None, help="mini-batch size (default: full batch)")
    t.add_argument("--seed", type=int, default=0, help="seed of the initial parameters and mini-batches (default 0)")
    t.add_argument("--target-loss", type=float, default=None,
                   help="stop once the training loss is at most this (default: none)")
    t.add_argument("--max-seconds", type=float, default=None, help="wall-clock limit (default: none)")
    t.add_argument("--divergence-factor", default="10", metavar="C",
                   help="stop as diverged once the training loss exceeds L0 + (C - 1)·max(|L0|, 1), L0 the initial "
                        "loss ('none': only when it is not finite; default 10, as compare)")
    t.add_argument("--eval-every", type=int, default=1,
                   help="full-batch training loss (and held-out loss and accuracy) every N steps (default 1)")
    t.add_argument("--gtol", type=float, default=0.0, help="stop once the gradient norm is at most this (default 0)")
    t.add_argument("--analyze-every", type=int, default=None, metavar="N",
                   help="log the Hessian's largest eigenvalue (Lanczos) and, for sgd, its stability threshold "
                        "2(1 + momentum)/lr every N steps")
    t.add_argument("--log", default=None, help="write a JSON-lines log here")
    t.add_argument("--checkpoint", default=None,
                   help="checkpoint file (.npz): written at the end (and every --checkpoint-every steps, and on Ctrl-C)")
    t.add_argument("--checkpoint-every", type=int, default=None, help="also write the checkpoint every N steps")
    t.add_argument("--resume", default=None, help="resume from this checkpoint")
    t.add_argument("--no-progress", action="store_true", help="no progress bar or progress lines")
    t.add_argument("--plot", default=None,
                   help="write the training and validation loss against steps here (png, pdf, svg, ...; default: none)")
    t.set_defaults(func=cmd_train)

    c = sub.add_parser("compare", help="every optimizer (or a chosen set) on one problem, same budget",
                       description="Run optimizers on one problem with one budget and print a table. Each runs with the "
                                   "problem's setting in refopt/problems/tuned.py (--show-hyperparameters lists them), "
                                   "then --hp-json on top.")
    add_data_arguments(c)
    c.add_argument("--optimizers", default=None, help="comma-separated names (default: the standard set of 15)")
    c.add_argument("--steps", type=int, default=200, help="updates per optimizer (default 200)")
    c.add_argument("--max-seconds", type=float, default=None,
                   help="wall-clock cap per optimizer (default: none, the budget is --steps alone)")
    c.add_argument("--target-loss", type=float, default=1e-3,
                   help="the training loss of the 'target step' columns (default 1e-3; runs do not stop there)")
    c.add_argument("--divergence-factor", default="10", metavar="C",
                   help="a run whose training loss exceeds L0 + (C - 1)·max(|L0|, 1) has diverged ('none': only "
                        "non-finite losses; default 10)")
    c.add_argument("--batch-size", type=int, default=None, help="mini-batch size (default: full batch)")
    c.add_argument("--seed", type=int, default=0, help="seed of the initial parameters and mini-batches (default 0)")
    c.add_argument("--hp-json", default=None,
                   help='per-optimizer overrides of the compared optimizers, e.g. \'{"adam": {"lr": 0.01}}\'')
    c.add_argument("--plot", default="refopt-compare.png",
                   help="plot file, png, pdf, svg, ... by its extension (default refopt-compare.png; '' for none)")
    c.add_argument("--csv", default=None, help="write every run's log here, one row per step (default: none)")
    c.add_argument("--quiet", action="store_true", help="no line per optimizer on stderr while they run")
    c.add_argument("--show-hyperparameters", action="store_true",
                   help="list every hyperparameter each optimizer would run with on the problem, and exit")
    c.set_defaults(func=cmd_compare)

    a = sub.add_parser("analyze", help="top eigenvalues, traces, K-FAC condition and eigenvalue density of the "
                                       "Hessian and GGN (docs/analysis.md)")
    add_data_arguments(a)
    a.add_argument("--checkpoint", default=None, metavar="PATH",
                   help="analyze at the params of this `refopt train --checkpoint` file (default: initial params); "
                        "without --problem/--data, on the checkpoint's own built-in problem")
    a.add_argument("--seed", type=int, default=0,
                   help="seed of the initial params (without --checkpoint), the random vectors and --batch-size")
    a.add_argument("-k", "--top", type=int, default=None,
                   help="how many of the largest eigenvalues of H and of the GGN (default 3, n when smaller; "
                        "at most 100)")
    a.add_argument("--method", choices=("lanczos", "power"), default="lanczos",
                   help="top eigenvalues by Lanczos (the largest algebraic, the default) or by PyHessian's power "
                        "iteration with deflation (the largest magnitude)")
    a.add_argument("--tol", type=float, default=None,
                   help="Lanczos: stop when every Ritz residual is at most tol·|θ| (default √eps, 1.5e-8 in "
                        "float64); power: stop at this relative change (default 1e-3, PyHessian's)")
    a.add_argument("--iterations", type=int, default=None,
                   help="power iterations per eigenvalue at most (default 100, PyHessian's; --method power only)")
    a.add_argument("--max-steps", type=int, default=None,
                   help="Lanczos steps at most, for the top eigenvalues and each condition estimate (default n, "
                        "3000 when n is larger)")
    a.add_argument("--condition-tol", type=float, default=1e-4,
                   help="the condition estimates' Lanczos runs stop when both extreme Ritz residuals are at most "
                        "this·|θ| (default 1e-4); unconverged ones print as lower bounds (≥)")
    a.add_argument("--probes", type=int, default=100, help="Rademacher probes of Hutchinson's traces")
    a.add_argument("--density-probes", type=int, default=1, help="probes of stochastic Lanczos quadrature")
    a.add_argument("--lanczos-steps", type=int, default=30,
                   help="Lanczos steps per probe of the density (n when smaller)")
    a.add_argument("--damping", type=float, default=1e-3, help="λ of the damped GGN and K-FAC (> 0)")
    a.add_argument("--batch-size", type=int, default=None,
                   help="analyze on a seeded batch of this many training examples (default: all)")
    a.add_argument("--analyses", default=None, metavar="NAME[,NAME...]",
                   help="a subset of hessian_top, ggn_top, hessian_trace, ggn_trace, kfac_condition, density")
    a.add_argument("--plot", default=None,
                   help="density plot file (default refopt-density.png when the density is computed; '' for none)")
    a.add_argument("--json", default=None, metavar="PATH", help="write the whole report here as JSON")
    a.add_argument("--no-progress", action="store_true")
    a.set_defaults(func=cmd_analyze)

    v = sub.add_parser("verify", help="golden traces and checks of other implementations")
    from .verify.cli import add_verify_commands  # noqa: PLC0415
    add_verify_commands(v)

    ls = sub.add_parser("list", help="list optimizers, problems and convention profiles")
    ls.add_argument("--switches", action="store_true",
                    help="print every optimizer's convention switches: default, other choices, meaning, source")
    from .optim import FAMILIES  # noqa: PLC0415
    ls.add_argument("--family", choices=list(FAMILIES), default=None,
                    help="with --switches: only this family's optimizers (the table in the family's doc)")
    ls.set_defaults(func=cmd_list)
    return p


def _error(exc: BaseException) -> int:
    """Print ``exc`` as the one line ``refopt: error: ...`` on stderr; returns 2."""
    if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        text = f"{exc.filename}: {exc.strerror}"
    elif isinstance(exc, MemoryError):
        text = "out of memory" + (f" ({exc})" if str(exc) else "") + ": a smaller network, batch or data set needs less"
    else:
        text = str(exc) or type(exc).__name__
    print("refopt: error: " + " ".join(text.split()), file=sys.stderr)
    return 2


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """``warnings.showwarning`` of the command: one line ``refopt: warning: ...``, without the source line."""
    print("refopt: warning: " + " ".join(str(message).split()), file=sys.stderr if file is None else file)


# What main reports as a one-line error: bad input (ValueError, TypeError), files and paths (OSError:
# missing, a directory, no permission, disk full), a missing optional package or GPU (RuntimeError), and
# running out of memory (MemoryError: a model, batch or file too large for this machine).
_USER_ERRORS = (ValueError, TypeError, OSError, RuntimeError, MemoryError)


def main(argv=None) -> int:
    """Run ``refopt`` on ``argv`` (None: sys.argv[1:]); returns the exit status, 2 after a one-line input error."""
    with warnings.catch_warnings():  # restores the caller's warning display afterwards
        warnings.showwarning = _show_warning
        try:  # building the parser imports the array backend, which applies REFOPT_BACKEND / REFOPT_DTYPE
            parser = build_parser()
        except _USER_ERRORS as exc:
            return _error(exc)
        args = parser.parse_args(argv)
        try:
            return args.func(args)
        except _USER_ERRORS as exc:
            return _error(exc)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
