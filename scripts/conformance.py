#!/usr/bin/env python
"""Conformance of refopt's profiles with the real libraries: every installed library, ≥ 30 steps, three problems.

For each case (a real optimizer with library-side arguments, and the refopt profile that claims to
reproduce it, with the same settings in refopt's names) the script drives the real optimizer through the
adapters of ``refopt.verify.adapters`` — ``check_torch`` for torch.optim and pytorch_optimizer,
``check_optax`` for optax, the ``Harness`` with a callback for scipy.optimize — on refopt's gradients
(computed by refopt at the library's own iterate) and refopt's draws, for ``--steps`` steps (30) on the
trace problems tiny_mlp (tanh MLP, softmax cross-entropy: nonconvex), tiny_regression (linear least
squares: convex) and tiny_logistic (logistic regression: convex). Each profile runs with the library's
defaults and with a second, exaggerated setting (larger lr, ε, decay; AMSGrad; lr = 0.5 for L-BFGS, so
that its strong-Wolfe search brackets and zooms). It prints one row per case: library, version, profile,
setting, problem, steps, max relative difference max_t max_leaf ‖θ_lib − θ_refopt‖∞ / ‖θ_refopt‖∞, and
pass (no step beyond |θ_lib − θ_refopt| ≤ atol + rtol·|θ_refopt|) or the first divergent step, with the
convention search's diagnosis. Libraries that are not installed are skipped with a note; so are profiles
that refopt does not ship yet. Exit status 1 if any case fails.

    python scripts/conformance.py [--steps 30] [--rtol 1e-9] [--atol 1e-12] [--markdown]

Run it in each environment that holds a library (torch and pytorch_optimizer in one, jax and optax in
another); scipy is in the test environment.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import sys

import numpy as np

from refopt import tree as T
from refopt.verify import PROFILES, TRACE_PROBLEMS
from refopt.verify.adapters import Harness, check_optax, check_torch


def _torch_cases():
    import torch  # noqa: PLC0415
    torch.set_default_dtype(torch.float64)
    o = torch.optim

    def lbfgs(hp, wolfe):
        return o.LBFGS, dict(lr=hp["lr"], max_iter=1, history_size=hp["memory"],
                             line_search_fn="strong_wolfe" if wolfe else None,
                             **({"max_eval": hp["max_evals"]} if wolfe else {}))

    return [  # (profile, refopt overrides of the exaggerated setting or a setting's name, hp -> (class, kwargs),
        #    step_kwargs)
        ("torch.optim.SGD", {"lr": 0.3, "momentum": 0.9, "weight_decay": 0.1, "nesterov": True},
         lambda hp: (o.SGD, dict(lr=hp["lr"], momentum=hp.get("momentum", 0.0), nesterov=hp.get("nesterov", False),
                                 weight_decay=hp.get("weight_decay", 0.0))), None),
        ("torch.optim.Adam", {"lr": 0.05, "eps": 1e-3, "weight_decay": 0.1, "beta2": 0.5, "amsgrad": "max_v"},
         lambda hp: (o.Adam, dict(lr=hp["lr"], betas=(hp["beta1"], hp["beta2"]), eps=hp["eps"],
                                  weight_decay=hp["weight_decay"], amsgrad=hp["amsgrad"] == "max_v")), None),
        ("torch.optim.AdamW", {"lr": 0.05, "eps": 1e-3, "weight_decay": 0.5, "beta2": 0.5, "amsgrad": "max_v"},
         lambda hp: (o.AdamW, dict(lr=hp["lr"], betas=(hp["beta1"], hp["beta2"]), eps=hp["eps"],
                                   weight_decay=hp["weight_decay"], amsgrad=hp["amsgrad"] == "max_v")), None),
        ("torch.optim.Adagrad", {"lr": 0.3, "eps": 1e-2, "weight_decay": 0.1, "lr_decay": 0.5},
         lambda hp: (o.Adagrad, dict(lr=hp["lr"], eps=hp["eps"], initial_accumulator_value=hp["initial_accumulator"],
                                     weight_decay=hp["weight_decay"], lr_decay=hp["lr_decay"])), None),
        ("torch.optim.LBFGS", {"lr": 0.5}, lambda hp: lbfgs(hp, False), None),
        ("torch.optim.LBFGS+strong_wolfe", {"lr": 0.5}, lambda hp: lbfgs(hp, True), None),
        # torch's early exits switched off (tolerance_grad = tolerance_change = 0): all 30 steps compared
        ("torch.optim.LBFGS", "tolerances=0", lambda hp: _no_exits(lbfgs(hp, False)), None),
        ("torch.optim.LBFGS+strong_wolfe", "tolerances=0", lambda hp: _no_exits(lbfgs(hp, True)), None),
    ]


def _no_exits(made):
    cls, kwargs = made
    return cls, dict(kwargs, tolerance_grad=0.0, tolerance_change=0.0)


def _pytorch_optimizer_cases():
    """pytorch_optimizer's second-order methods at their defaults, fed refopt's probes through step(hessian=...)."""
    import pytorch_optimizer as po  # noqa: PLC0415

    def fed(h, t, params):  # z ⊙ Hz with refopt's probes, on the steps where refopt draws them
        return {"hessian": h.hutchinson(params, t)} if h.draws(t) is not None else {}

    return [(f"pytorch_optimizer.{name}", None, (lambda cls: lambda hp: (cls, {}))(getattr(po, name)),
             fed if name != "Shampoo" else None)
            for name in ("AdaHessian", "SophiaH", "Shampoo")]


def _optax_cases():
    import optax  # noqa: PLC0415
    return [  # (profile, exaggerated overrides, hp -> transformation)
        ("optax.sgd", {"lr": 0.3, "momentum": 0.5}, lambda hp: optax.sgd(hp["lr"], momentum=hp.get("momentum") or None)),
        ("optax.adam", {"lr": 0.05, "eps": 1e-3, "eps_root": 1e-3},
         lambda hp: optax.adam(hp["lr"], b1=hp["beta1"], b2=hp["beta2"], eps=hp["eps"], eps_root=hp["eps_root"])),
        ("optax.adamw", {"lr": 0.05, "eps": 1e-3, "eps_root": 1e-3, "weight_decay": 0.5},
         lambda hp: optax.adamw(hp["lr"], b1=hp["beta1"], b2=hp["beta2"], eps=hp["eps"], eps_root=hp["eps_root"],
                                weight_decay=hp["weight_decay"])),
        ("optax.adagrad", {"lr": 0.3, "eps": 1e-2, "initial_accumulator": 0.5},
         lambda hp: optax.adagrad(hp["lr"], initial_accumulator_value=hp["initial_accumulator"], eps=hp["eps"])),
    ]


def _scipy_bfgs(profile, problem, steps, seed, overrides, rtol, atol):
    """scipy.optimize.minimize(method="BFGS") on refopt's value and gradient; x_k from its callback."""
    from scipy.optimize import minimize  # noqa: PLC0415
    h = Harness(profile, problem, steps, seed, overrides)
    like = h.params0
    shapes = [leaf.shape for leaf in T.leaves(like)]

    def unflat(x):
        parts, i = [], 0
        for s in shapes:
            n = int(np.prod(s))
            parts.append(x[i:i + n].reshape(s))
            i += n
        values = iter(parts)
        return [{k: next(values) for k in sorted(layer)} for layer in like]

    def fun(x):
        value, g = h.value_and_grad(unflat(x))
        return value, np.concatenate([leaf.ravel() for leaf in T.leaves(g)])

    xs = [np.concatenate([leaf.ravel() for leaf in T.leaves(like)])]
    minimize(fun, xs[0], jac=True, method="BFGS", callback=lambda xk: xs.append(np.array(xk)),
             options={"maxiter": steps, "gtol": 0.0})
    if len(xs) < steps + 1:  # scipy stopped early (its line search failed): compare what it did
        h = Harness(profile, problem, len(xs) - 1, seed, overrides)
    return h.report([unflat(x) for x in xs], rtol, atol, producer="scipy.optimize.minimize BFGS")


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "?"


def _rows(args):
    """Yield (library, version, profile, setting, problem, report-or-note)."""
    libraries = [("torch", "torch", _torch_cases), ("pytorch_optimizer", "pytorch_optimizer", _pytorch_optimizer_cases),
                 ("optax", "optax", _optax_cases), ("scipy", "scipy", None)]
    for library, module, cases in libraries:
        try:
            importlib.import_module(module)
            if library == "optax":
                importlib.import_module("jax")
        except ImportError:
            yield library, "-", "-", "-", "-", f"skipped: {library} is not installed"
            continue
        version = _version(library) + (f", jax {_version('jax')} (x64)" if library == "optax" else "")
        if cases is None:  # scipy
            for problem in TRACE_PROBLEMS:  # scipy's BFGS has no line-search options to exaggerate
                yield (library, version, "scipy.optimize.fmin_bfgs", "defaults", problem,
                       _scipy_bfgs("scipy.optimize.fmin_bfgs", problem, args.steps, args.seed, {}, args.rtol, args.atol))
            continue
        for case in cases():
            profile, exaggerated = case[0], case[1]
            if profile not in PROFILES:
                yield library, version, profile, "-", "-", "skipped: refopt has no such profile yet"
                continue
            if isinstance(exaggerated, str):  # a library-side setting alone, with refopt's defaults
                settings = [(exaggerated, {})]
            else:
                settings = [("defaults", {})] + ([("exaggerated", exaggerated)] if exaggerated else [])
            for label, overrides in settings:
                for problem in TRACE_PROBLEMS:
                    hp = Harness(profile, problem, 1, args.seed, overrides).hyperparameters
                    if library == "optax":
                        report = check_optax(case[2](hp), profile, problem, args.steps, args.seed, overrides,
                                             args.rtol, args.atol)
                    else:
                        cls, kwargs = case[2](hp)
                        report = check_torch(cls, kwargs, profile, problem, args.steps, args.seed, overrides,
                                             args.rtol, args.atol, step_kwargs=case[3])
                    yield library, version, profile, label, problem, report


def _result(report, gaps: str):
    """(result cell, max relative difference, whether a divergence is a documented gap). A library's early
    exit (its parameters unchanged by a step while refopt moves) is a gap when the profile's gaps name
    early exits; the difference is then the one before that step."""
    if report.passed:
        return "pass", report.max_relative_difference, False
    k = report.divergence.step
    if report.stalled == k and "early exit" in gaps:
        return (f"pass to step {k - 1}; at step {k} the library stops (early exit, a documented gap)",
                report.max_relative_difference_before(k), True)
    return f"FAIL at step {k}: {report.diagnosis}", report.max_relative_difference, False


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rtol", type=float, default=1e-9)
    ap.add_argument("--atol", type=float, default=1e-12)
    ap.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    args = ap.parse_args(argv)
    print(f"rule |θ_lib − θ_refopt| ≤ {args.atol:g} + {args.rtol:g}·|θ_refopt| at every step; "
          f"refopt's gradients and draws on both sides")
    header = ("library", "version", "profile", "setting", "problem", "steps", "max rel. diff", "result")
    print("| " + " | ".join(header) + " |" if args.markdown else "  ".join(header))
    if args.markdown:
        print("|" + "---|" * len(header))
    failed = 0
    for library, version, profile, label, problem, report in _rows(args):
        if isinstance(report, str):
            cells = (library, version, profile, label, problem, "-", "-", report)
        else:
            result, worst, gap = _result(report, PROFILES[profile].gaps)
            failed += not (report.passed or gap)
            cells = (library, version, profile, label, problem, str(report.steps), f"{worst:.1e}", result)
        print("| " + " | ".join(cells) + " |" if args.markdown else "  ".join(cells), flush=True)
    print("all installed libraries conform" if failed == 0 else f"{failed} case(s) fail")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
