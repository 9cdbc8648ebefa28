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

__all__ = ["max_relative_difference", "check_profiles", "parse_arguments", "torch_network"]


def parse_arguments(description: str, library: str, argv=None) -> argparse.Namespace:
    """The scripts' common options: --steps, --seed, --rtol, --atol, --out."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rtol", type=float, default=1e-10)
    ap.add_argument("--atol", type=float, default=1e-12)
    ap.add_argument("--out", default=None, help=f"folder for {library}'s traces (.npz)")
    return ap.parse_args(argv)


def torch_network(spec: dict, params):
    """A trace problem's network (``spec``: its meta's "mlp" or "cnn" problem, or ``{"type": "cnn",
    **CNN.config()}``) as a float64 ``torch.nn.Sequential`` holding ``params``: dense W is (fan_in, fan_out) in
    refopt, torch's Linear.weight its transpose; conv kernels are OIHW in both; Conv2d and the pools take the
    config's arguments by the same names, Flatten is torch's (C order on
    NCHW). Modules for the libraries that hook them (curvlinops, kfac-pytorch); torch is imported here, only
    the scripts that check a torch library call this."""
    import numpy as np  # noqa: PLC0415  (host copies for torch; this module is for the scripts)
    import torch  # noqa: PLC0415

    nn = torch.nn
    acts = {"tanh": nn.Tanh, "relu": nn.ReLU, "sigmoid": nn.Sigmoid, "softplus": nn.Softplus, "identity": nn.Identity}
    if spec["type"] == "mlp":
        layers = []
        for p, act in zip(params, spec["activations"]):
            layers += [{"layer": "Dense", "in_features": p["W"].shape[0], "out_features": p["W"].shape[1]}, act]
    else:
        layers = spec["layers"]
    modules, leaves = [], iter(params)
    for layer in layers:
        if isinstance(layer, str):
            modules.append(acts[layer]())
            continue
        kind, args = layer["layer"], {k: tuple(v) if isinstance(v, list) else v for k, v in layer.items()
                                      if k != "layer"}
        if kind == "Flatten":
            modules.append(nn.Flatten())
        elif kind in ("AvgPool2d", "MaxPool2d"):
            modules.append(getattr(nn, kind)(**args))
        else:
            p = next(leaves)
            m = (nn.Conv2d(**args) if kind == "Conv2d" else nn.Linear(args["in_features"], args["out_features"])).double()
            W = np.array(to_host(p["W"]))
            with torch.no_grad():
                m.weight.copy_(torch.from_numpy(np.ascontiguousarray(W if kind == "Conv2d" else W.T)))
                m.bias.copy_(torch.from_numpy(np.array(to_host(p["b"]))))
            modules.append(m)
    return nn.Sequential(*modules)


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
