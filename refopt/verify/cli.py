"""``refopt verify``: export golden traces, check another implementation's trace, list profiles."""
from __future__ import annotations

import argparse
import os

__all__ = ["add_verify_commands"]


def _export(args) -> int:
    from ..cli_args import check_output_path, check_seed, parse_hyperparameters  # noqa: PLC0415
    from ..optim import OPTIMIZERS  # noqa: PLC0415
    from .profiles import PROFILES  # noqa: PLC0415
    from .trace import export_trace, make_trace  # noqa: PLC0415

    hp = parse_hyperparameters(args.hp)
    check_seed(args.seed)  # before any trace is made, and in the range load_trace accepts
    check_output_path(args.out, "--out", directory=args.all)
    if args.all:
        jobs = [(name, None) for name in sorted(OPTIMIZERS)] + [(p.optimizer, lib) for lib, p in PROFILES.items()]
        os.makedirs(args.out, exist_ok=True)
        for name, profile in jobs:
            label = name if profile is None else f"{name}@{profile}"
            path = os.path.join(args.out, label.replace("/", "_") + ".npz")
            try:
                export_trace(make_trace(name, {}, args.problem, args.steps, args.seed, profile), path)
                print(f"wrote {path}")
            except (ValueError, NotImplementedError) as exc:
                print(f"skipped {label}: {exc}")
        return 0
    if not args.optimizer:
        raise ValueError("verify export needs --optimizer NAME (or --all)")
    trace = make_trace(args.optimizer, hp, args.problem, args.steps, args.seed, args.profile)
    export_trace(trace, args.out)
    print(f"wrote {args.out}: {args.optimizer} on {args.problem}, {args.steps} steps")
    return 0


def _check(args) -> int:
    from .trace import check_trace, describe_match, load_trace, search_conventions  # noqa: PLC0415

    from ..optim.base import check_nonnegative  # noqa: PLC0415
    check_nonnegative("--rtol", args.rtol)
    check_nonnegative("--atol", args.atol)
    theirs = load_trace(args.trace)
    divergence, _ = check_trace(theirs, args.rtol, args.atol)
    rule = f"|theirs − refopt| ≤ {args.atol:g} + {args.rtol:g}·|refopt|"
    if divergence is None:
        print(f"{args.trace}: all {theirs.steps} steps match refopt ({rule})")
        return 0
    print(f"{args.trace}: diverges at {divergence} ({rule})")
    if args.search:
        matches = search_conventions(theirs, args.rtol, args.atol)
        for m in matches:  # smallest first
            print("  " + describe_match(m))
        if matches.no_effect:
            print(f"  has no effect on this trace: {', '.join(matches.no_effect)}")
        if not matches:
            print("  no combination of refopt's convention switches reproduces it; the divergence:")
            for line in matches.diagnosis.findings.values() if matches.diagnosis else ():
                print("    " + line)
    return 1


def _profiles(args) -> int:
    from .profiles import conventions_table  # noqa: PLC0415
    print(conventions_table())
    return 0


def add_verify_commands(parser: argparse.ArgumentParser) -> None:
    """Add the ``export``, ``check`` and ``profiles`` subcommands of ``refopt verify`` to ``parser``."""
    from .trace import TRACE_PROBLEMS  # noqa: PLC0415 (loaded with refopt.verify already: costs nothing here)

    sub = parser.add_subparsers(dest="verify_command", required=True)
    e = sub.add_parser("export", help="write golden traces (.npz)")
    e.add_argument("--optimizer", default=None)
    e.add_argument("hp", nargs="*", metavar="NAME=VALUE")
    e.add_argument("--profile", default=None, help="a library profile (see `refopt verify profiles`)")
    default = "tiny_mlp"
    names = ", ".join([f"{default} (default)", *(name for name in TRACE_PROBLEMS if name != default)])
    e.add_argument("--problem", default=default, help=f"a trace problem: {names} (docs/verify.md)")
    e.add_argument("--steps", type=int, default=5)
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--all", action="store_true", help="every optimizer and profile, into the folder --out")
    e.add_argument("--out", required=True)
    e.set_defaults(func=_export)
    c = sub.add_parser("check", help="compare another implementation's trace with refopt")
    c.add_argument("trace")
    c.add_argument("--rtol", type=float, default=1e-7)
    c.add_argument("--atol", type=float, default=1e-10)
    c.add_argument("--search", action="store_true", help="search convention switches that reproduce it")
    c.set_defaults(func=_check)
    p = sub.add_parser("profiles", help="print the conventions table of the library profiles")
    p.set_defaults(func=_profiles)
