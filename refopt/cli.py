"""The ``refopt`` command: ``train``, ``compare``, ``verify`` and ``list``.

Errors in what the user typed (unknown names, an empty ``--optimizers`` list, hyperparameters of the wrong
type or range, ``--hp-json`` that is not a JSON object of objects, a ``--seed`` outside [0, 2⁶³ − 1],
non-finite stopping rules, unreadable or mismatched files, a ``--resume`` that is not a regular file,
output paths that cannot be written, a bad REFOPT_BACKEND or REFOPT_DTYPE) print one line
``refopt: error: ...`` naming the option and exit with status 2. Output
paths (--log, --checkpoint, --csv, --plot, verify export --out) are checked before any training starts.
"""
from __future__ import annotations

import argparse
import math
import sys

# The argument readers live in cli_args.py (verify's subcommands use them too); re-exported here.
from .cli_args import (check_input_file, check_output_path, check_seed, parse_hp_json, parse_hyperparameters,
                       parse_optimizer_list, parse_value)  # noqa: F401 (parse_value: re-exported)

__all__ = ["main", "parse_hyperparameters", "check_output_path", "check_seed", "parse_optimizer_list", "parse_hp_json"]


def _progress(total: int, enabled: bool):
    """(report(record), close()): a tqdm bar when tqdm is installed (created at the first step, so an
    invalid configuration fails before any bar is drawn), else a line every tenth of the run."""
    if not enabled:
        return None, lambda: None
    try:
        from tqdm import tqdm  # noqa: PLC0415 (optional, from the 'scripts' extra)
    except ImportError:
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
    from .runner import Interrupted, RunConfig, run  # noqa: PLC0415

    check_seed(args.seed)
    config = RunConfig(args.optimizer, parse_hyperparameters(args.hp), args.problem, args.steps, args.batch_size,
                       args.seed, args.target_loss, args.max_seconds, args.eval_every, args.gtol)
    for path, option in ((args.log, "--log"), (args.checkpoint, "--checkpoint")):
        if path is not None:
            check_output_path(path, option)
    if args.resume is not None:
        check_input_file(args.resume, "--resume")
    report, close = _progress(args.steps, not args.no_progress)
    try:
        result = run(config, resume=args.resume, log_path=args.log, checkpoint_path=args.checkpoint,
                     checkpoint_every=args.checkpoint_every, progress=report)
    except Interrupted as exc:
        print(f"refopt: {exc}", file=sys.stderr)
        return 130
    finally:
        close()
    last = result.history[-1] if result.history else {}
    print(f"{config.optimizer} on {config.problem}: {result.status} after {len(result.history)} steps; "
          f"final training loss {result.final_loss:.6g}; grad norm {last.get('grad_norm', math.nan):.3g}; "
          f"nfev {last.get('nfev', 0)}, ngev {last.get('ngev', 0)}, nhvp {last.get('nhvp', 0)}"
          + (f", nhev {result.nhev} (dense matrices)" if result.nhev else "") + "; "
          f"{last.get('elapsed', 0.0):.2f} s" + (f"; {result.message}" if result.message else ""))
    return 0


def cmd_compare(args) -> int:
    """``refopt compare``: run the optimizers on one problem, print the table, plot and CSV if asked; returns 0."""
    from .compare import DEFAULT_OPTIMIZERS, compare, format_table, plot_comparison  # noqa: PLC0415

    names = parse_optimizer_list(args.optimizers) if args.optimizers is not None else list(DEFAULT_OPTIMIZERS)
    check_seed(args.seed)
    for path, option in ((args.csv, "--csv"), (args.plot, "--plot")):
        if path:  # --plot '' means no plot
            check_output_path(path, option)
    overrides = parse_hp_json(args.hp_json) if args.hp_json is not None else {}
    results = compare(names, problem=args.problem, steps=args.steps, max_seconds=args.max_seconds,
                      target_loss=args.target_loss, seed=args.seed, overrides=overrides, batch_size=args.batch_size,
                      verbose=not args.quiet)
    print(format_table(results, args.target_loss))
    if args.plot:
        path = plot_comparison(results, args.plot)
        if path:
            print(f"plot written to {path}")
    if args.csv:
        from .compare import write_csv  # noqa: PLC0415
        write_csv(results, args.csv)
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

    t = sub.add_parser("train", help="run one optimizer on one problem")
    t.add_argument("optimizer", help="optimizer name (see `refopt list`)")
    t.add_argument("hp", nargs="*", metavar="NAME=VALUE", help="hyperparameters, e.g. lr=0.1 momentum=0.9")
    t.add_argument("--problem", default="digits_mlp")
    t.add_argument("--steps", type=int, default=100)
    t.add_argument("--batch-size", type=int, default=None, help="mini-batch size (default: full batch)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--target-loss", type=float, default=None)
    t.add_argument("--max-seconds", type=float, default=None)
    t.add_argument("--eval-every", type=int, default=1, help="full-batch training loss every N steps")
    t.add_argument("--gtol", type=float, default=0.0, help="stop once the gradient norm is at most this")
    t.add_argument("--log", default=None, help="write a JSON-lines log here")
    t.add_argument("--checkpoint", default=None, help="checkpoint file (.npz)")
    t.add_argument("--checkpoint-every", type=int, default=None)
    t.add_argument("--resume", default=None, help="resume from this checkpoint")
    t.add_argument("--no-progress", action="store_true")
    t.set_defaults(func=cmd_train)

    c = sub.add_parser("compare", help="every optimizer (or a chosen set) on one problem, same budget")
    c.add_argument("--problem", default="digits_mlp")
    c.add_argument("--optimizers", default=None, help="comma-separated names (default: the standard set)")
    c.add_argument("--steps", type=int, default=200)
    c.add_argument("--max-seconds", type=float, default=3.0, help="wall-clock budget per optimizer")
    c.add_argument("--target-loss", type=float, default=1e-3)
    c.add_argument("--batch-size", type=int, default=None)
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--hp-json", default=None, help='per-optimizer overrides, e.g. \'{"adam": {"lr": 0.01}}\'')
    c.add_argument("--plot", default="refopt-compare.png", help="plot file ('' for none)")
    c.add_argument("--csv", default=None)
    c.add_argument("--quiet", action="store_true")
    c.set_defaults(func=cmd_compare)

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
    else:
        text = str(exc) or type(exc).__name__
    print("refopt: error: " + " ".join(text.split()), file=sys.stderr)
    return 2


# What main reports as a one-line error: bad input (ValueError, TypeError), files and paths (OSError:
# missing, a directory, no permission, disk full), a missing optional package or GPU (RuntimeError).
_USER_ERRORS = (ValueError, TypeError, OSError, RuntimeError)


def main(argv=None) -> int:
    """Run ``refopt`` on ``argv`` (None: sys.argv[1:]); returns the exit status, 2 after a one-line input error."""
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
