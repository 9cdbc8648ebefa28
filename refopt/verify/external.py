"""Checking a real library against refopt's profiles, for the ``scripts/verify_with_*.py`` examples.

A script supplies ``run_library(profile, trace) -> Trace`` (the library run from the trace's initial
parameters on the trace's problem, its parameters written into a copy of the trace) and
``expected_gap(profile, trace, divergence) -> str | None`` (a reason when a divergence is one of the
profile's documented gaps). ``check_profiles`` runs every profile on every trace problem, with the
library's defaults and with exaggerated settings, and prints one line per case.
"""
from __future__ import annotations

import argparse
import os
from typing import Callable

from .. import tree as T
from ..backend import to_host
from .profiles import get_profile
from .trace import TRACE_PROBLEMS, Trace, check_trace, export_trace, make_trace

__all__ = ["max_relative_difference", "check_profiles", "parse_arguments", "torch_mlp"]


def parse_arguments(description: str, library: str, argv=None) -> argparse.Namespace:
    """The scripts' common options: --steps, --seed, --rtol, --atol, --out."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rtol", type=float, default=1e-10)
    ap.add_argument("--atol", type=float, default=1e-12)
    ap.add_argument("--out", default=None, help=f"folder for {library}'s traces (.npz)")
    return ap.parse_args(argv)


def torch_mlp(spec: dict, params):
    """The trace problem's MLP as a float64 ``torch.nn.Sequential`` holding ``params`` (refopt's W is
    (fan_in, fan_out), torch's Linear.weight its transpose). torch is imported here: only the scripts that
    check a torch library call this."""
    import numpy as np  # noqa: PLC0415  (host copies for torch; this module is for the scripts)
    import torch  # noqa: PLC0415

    layers = []
    for l, p in enumerate(params):
        lin = torch.nn.Linear(p["W"].shape[0], p["W"].shape[1]).double()
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(np.array(to_host(p["W"])).T))
            lin.bias.copy_(torch.from_numpy(np.array(to_host(p["b"]))))
        layers.append(lin)
        if spec["activations"][l] == "tanh":
            layers.append(torch.nn.Tanh())
    return torch.nn.Sequential(*layers)


def max_relative_difference(ours: Trace, theirs: Trace) -> float:
    """max over steps and leaves of ‖ours − theirs‖∞ / ‖ours‖∞."""
    worst = 0.0
    for a, b in zip(ours.params, theirs.params):
        for x, y in zip(T.leaves(a), T.leaves(b)):
            x, y = to_host(x), to_host(y)
            worst = max(worst, float(abs(x - y).max() / max(abs(x).max(), 1e-300)))
    return worst


def check_profiles(library: str, setups: dict, run_library: Callable, expected_gap: Callable, steps: int = 5,
                   seed: int = 0, rtol: float = 1e-10, atol: float = 1e-12, out: str | None = None,
                   width: int = 32) -> int:
    """Print "matches" or the first divergence per (profile, setting, problem); return the number of
    divergences that are not documented gaps. ``setups`` maps profile → (anything, exaggerated overrides)."""
    unexpected = 0
    for profile, (_, exaggerated) in setups.items():
        prof = get_profile(profile)
        settings = [("defaults", {})] + ([("exaggerated", exaggerated)] if exaggerated else [])
        for label, overrides in settings:
            for problem in TRACE_PROBLEMS:
                ours = make_trace(prof.optimizer, overrides, problem, steps, seed, profile)
                theirs = run_library(profile, ours)
                divergence, replay = check_trace(theirs, rtol, atol)
                head = f"{profile:{width}s} {label:11s} {problem:16s}"
                if divergence is None:
                    print(f"{head} matches (max relative difference {max_relative_difference(replay, theirs):.1e})")
                else:
                    reason = expected_gap(profile, ours, divergence)
                    unexpected += reason is None
                    print(f"{head} diverges at {divergence} [{f'expected: {reason}' if reason else 'UNEXPECTED'}]")
                if out:
                    os.makedirs(out, exist_ok=True)
                    name = f"{profile}@{label}@{problem}.npz".replace("/", "_")
                    export_trace(theirs, os.path.join(out, name))
    return unexpected
