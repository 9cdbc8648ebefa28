#!/usr/bin/env python
"""Conformance of refopt's profiles with the real libraries: every installed library, ≥ 30 steps, four problems.

For each case (a real optimizer with library-side arguments, and the refopt profile that claims to
reproduce it, with the same settings in refopt's names) the script drives the real optimizer through the
adapters of ``refopt.verify.adapters`` — ``check_torch`` for torch.optim and pytorch_optimizer,
``check_optax`` for optax (optax.lbfgs with refopt's loss as its ``value_fn``), the ``Harness`` with a
callback for scipy.optimize — on refopt's gradients (computed by refopt at the library's own iterate,
line-search trial points included) and refopt's draws, for ``--steps`` steps (30) on the trace problems
tiny_mlp (tanh MLP, softmax cross-entropy: nonconvex), tiny_regression (linear least squares: convex),
tiny_logistic (logistic regression: convex) and tiny_cnn (two conv layers, max pooling: 4-D kernels, which
Shampoo preconditions by their four dimensions). Each profile runs with the library's defaults and a second,
exaggerated setting (larger lr, ε, decay; AMSGrad; lr = 0.5 for torch's L-BFGS, so that its strong-Wolfe
search brackets and zooms); the line-search methods also start from 10·θ_0, where first trials fail.

One row per case: library, version, profile, setting, problem, steps, "trials>1" (the steps at which
refopt's line search needed more than one trial: the backtracks the case exercised), max relative
difference max_t max_leaf ‖θ_lib − θ_refopt‖∞ / ‖θ_refopt‖∞, and pass (every step within
|θ_lib − θ_refopt| ≤ atol + rtol·|θ_refopt|) or the first divergent step with the diagnosis of the
convention search. A library's early exit (a step that leaves its parameters unchanged while refopt moves)
counts as a documented gap when the profile's gaps name early exits; the difference is then the one
before it. Absent libraries, and profiles refopt does not ship, are skipped with a note. Exit status 1 if
any case fails.

    python scripts/conformance.py [--steps 30] [--rtol 1e-9] [--atol 1e-12] [--markdown] [--only LIBRARY]
                                  [--no-scripts] [--script-timeout 600]

With ``--scripts`` (the default) it then runs the libraries that have their own check,
``scripts/verify_with_{meta_shampoo,...,tf_kfac}.py``, each in a subprocess with the same interpreter and a
timeout, and appends one summary row per script: library (from the script name), the version the script
prints ("-" if none), "see script" as profile, the largest "max rel" number in its output ("-" if none) and
pass / FAIL (exit status 1, another non-zero status, or the timeout) / skipped (not installed) or
skipped (its own reason) when the script says it skips.

Run it in each environment that holds a library (torch and pytorch_optimizer in one, jax and optax in
another; scipy is in the test extras).
"""
from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import re
import subprocess
import sys
from pathlib import Path
import warnings

import numpy as np

from refopt import tree as T
from refopt.optim import make_optimizer
from refopt.verify import PROFILES, TRACE_PROBLEMS
from refopt.verify.adapters import Harness, check_optax, check_torch
from refopt.verify.trace import problem_oracle

HARD = ("θ0×10", {}, {}, 10.0)  # a setting: (label, refopt overrides, library extras, start scale)


def _settings(exaggerated: dict | None, library_extra: dict | None = None, hard: bool = False) -> list:
    rows = [("defaults", {}, {}, 1.0)]
    if exaggerated is not None:
        rows.append(("exaggerated", exaggerated, library_extra or {}, 1.0))
    return rows + ([HARD] if hard else [])


def _torch_cases():
    import torch  # noqa: PLC0415
    torch.set_default_dtype(torch.float64)
    o = torch.optim

    def lbfgs(wolfe):
        def make(hp, extra):
            return o.LBFGS, dict(lr=hp["lr"], max_iter=1, history_size=hp["memory"],
                                 line_search_fn="strong_wolfe" if wolfe else None,
                                 **({"max_eval": hp["max_evals"]} if wolfe else {}), **extra)
        return make
    no_exits = ("tolerances=0", {}, {"tolerance_grad": 0.0, "tolerance_change": 0.0}, 1.0)  # all steps compared
    return [  # (profile, settings, (hp, library extras) -> (class, kwargs), step_kwargs)
        ("torch.optim.SGD", _settings({"lr": 0.3, "momentum": 0.9, "weight_decay": 0.1, "nesterov": True}),
         lambda hp, extra: (o.SGD, dict(lr=hp["lr"], momentum=hp.get("momentum", 0.0),
                                        nesterov=hp.get("nesterov", False), weight_decay=hp.get("weight_decay", 0.0))),
         None),
        ("torch.optim.Adam", _settings({"lr": 0.05, "eps": 1e-3, "weight_decay": 0.1, "beta2": 0.5, "amsgrad": "max_v"}),
         lambda hp, extra: (o.Adam, dict(lr=hp["lr"], betas=(hp["beta1"], hp["beta2"]), eps=hp["eps"],
                                         weight_decay=hp["weight_decay"], amsgrad=hp["amsgrad"] == "max_v")), None),
        ("torch.optim.AdamW", _settings({"lr": 0.05, "eps": 1e-3, "weight_decay": 0.5, "beta2": 0.5, "amsgrad": "max_v"}),
         lambda hp, extra: (o.AdamW, dict(lr=hp["lr"], betas=(hp["beta1"], hp["beta2"]), eps=hp["eps"],
                                          weight_decay=hp["weight_decay"], amsgrad=hp["amsgrad"] == "max_v")), None),
        ("torch.optim.Adagrad", _settings({"lr": 0.3, "eps": 1e-2, "weight_decay": 0.1, "lr_decay": 0.5}),
         lambda hp, extra: (o.Adagrad, dict(lr=hp["lr"], eps=hp["eps"], initial_accumulator_value=hp["initial_accumulator"],
                                            weight_decay=hp["weight_decay"], lr_decay=hp["lr_decay"])), None),
        ("torch.optim.LBFGS", _settings({"lr": 0.5}) + [no_exits], lbfgs(False), None),
        ("torch.optim.LBFGS+strong_wolfe", _settings({"lr": 0.5}, hard=True) + [no_exits], lbfgs(True), None),
    ]


def _pytorch_optimizer_cases():
    """pytorch_optimizer's second-order methods at their defaults, fed refopt's probes through step(hessian=...)."""
    import pytorch_optimizer as po  # noqa: PLC0415

    def fed(h, t, params):  # z ⊙ Hz with refopt's probes, on the steps where refopt draws them
        return {"hessian": h.hutchinson(params, t)} if h.draws(t) is not None else {}
    exaggerated = {  # refopt overrides, and the same setting in the library's arguments
        "AdaHessian": ({"lr": 0.3, "beta2": 0.9, "eps": 1e-4}, {"lr": 0.3, "betas": (0.9, 0.9), "eps": 1e-4}),
        # p = 1: little clipping (refopt lr = lr·p, γ = p, ε = p·ε)
        "SophiaH": ({"lr": 0.06, "gamma": 1.0, "eps": 1e-12}, {"p": 1.0}),
        "Shampoo": ({"lr": 0.05, "initial_accumulator": 1e-2}, {"lr": 0.05, "matrix_eps": 1e-2}),
    }
    return [(f"pytorch_optimizer.{name}", _settings(*exaggerated[name]),
             (lambda cls: lambda hp, extra: (cls, extra))(getattr(po, name)), None if name == "Shampoo" else fed)
            for name in ("AdaHessian", "SophiaH", "Shampoo")]


def _optax_cases():
    import optax  # noqa: PLC0415
    return [  # (profile, settings, hp -> transformation, value_fn)
        ("optax.sgd", _settings({"lr": 0.3, "momentum": 0.5}),
         lambda hp: optax.sgd(hp["lr"], momentum=hp.get("momentum") or None), False),
        ("optax.adam", _settings({"lr": 0.05, "eps": 1e-3, "eps_root": 1e-3}),
         lambda hp: optax.adam(hp["lr"], b1=hp["beta1"], b2=hp["beta2"], eps=hp["eps"], eps_root=hp["eps_root"]), False),
        ("optax.adamw", _settings({"lr": 0.05, "eps": 1e-3, "eps_root": 1e-3, "weight_decay": 0.5}),
         lambda hp: optax.adamw(hp["lr"], b1=hp["beta1"], b2=hp["beta2"], eps=hp["eps"], eps_root=hp["eps_root"],
                                weight_decay=hp["weight_decay"]), False),
        ("optax.adagrad", _settings({"lr": 0.3, "eps": 1e-2, "initial_accumulator": 0.5}),
         lambda hp: optax.adagrad(hp["lr"], initial_accumulator_value=hp["initial_accumulator"], eps=hp["eps"]), False),
        ("optax.lbfgs", _settings({"memory": 2}, hard=True), lambda hp: optax.lbfgs(memory_size=hp["memory"]), True),
        ("optax.lbfgs+no_linesearch", _settings({"memory": 2}),
         lambda hp: optax.lbfgs(memory_size=hp["memory"], linesearch=None), True),
    ]


def _scipy_bfgs(profile, problem, steps, seed, scale, rtol, atol):
    """scipy.optimize.minimize(method="BFGS") on refopt's value and gradient; x_k from its callback."""
    from scipy.optimize import minimize  # noqa: PLC0415
    h = Harness(profile, problem, steps, seed, None, scale)
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
    if len(xs) < steps + 1:  # scipy stopped early (its line search lost precision): compare what it did
        h = Harness(profile, problem, len(xs) - 1, seed, None, scale)
    return h.report([unflat(x) for x in xs], rtol, atol, producer="scipy.optimize.minimize BFGS")


def _trials(report) -> str:
    """The steps at which refopt's run needed more than one function evaluation (line-search trials)."""
    meta = report.ours.meta
    if "line_search" not in meta["hyperparameters"] or meta["hyperparameters"]["line_search"] == "none":
        return "-"
    oracle = problem_oracle(meta["problem"], report.ours.X, report.ours.y)
    opt = make_optimizer(meta["optimizer"], **meta["hyperparameters"])
    params, state, more = report.ours.params[0], None, []
    state = opt.init(params)
    for t in range(1, report.steps + 1):
        params, state, info = opt.update(params, state, oracle)
        if info.get("nfev", 1) > 1:
            more.append(t)
    return str(len(more)) + (f" (first at {more[0]})" if more else "")


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "?"


def _rows(args):
    """Yield (library, version, profile, setting, problem, report or note)."""
    libraries = [("torch", ("torch",), _torch_cases), ("pytorch_optimizer", ("pytorch_optimizer",), _pytorch_optimizer_cases),
                 ("optax", ("optax", "jax"), _optax_cases), ("scipy", ("scipy",), None)]
    for library, modules, cases in libraries:
        if args.only and library not in args.only:
            continue
        try:
            for module in modules:
                importlib.import_module(module)
        except ImportError:
            yield library, "-", "-", "-", "-", f"skipped: {' / '.join(modules)} not installed"
            continue
        version = _version(library) + (f", jax {_version('jax')} (x64)" if library == "optax" else "")
        if cases is None:  # scipy's BFGS: no options of its line search to exaggerate; a harder start instead
            for label, _, _, scale in _settings(None, hard=True):
                for problem in TRACE_PROBLEMS:
                    yield (library, version, "scipy.optimize.fmin_bfgs", label, problem,
                           _scipy_bfgs("scipy.optimize.fmin_bfgs", problem, args.steps, args.seed, scale, args.rtol,
                                       args.atol))
            continue
        for profile, settings, make, hook in cases():
            if profile not in PROFILES:
                yield library, version, profile, "-", "-", "skipped: refopt has no such profile yet"
                continue
            for label, overrides, extra, scale in settings:
                for problem in TRACE_PROBLEMS:
                    hp = {**PROFILES[profile].hyperparameters, **overrides}
                    if library == "optax":
                        report = check_optax(make(hp), profile, problem, args.steps, args.seed, overrides, args.rtol,
                                             args.atol, value_fn=hook, start_scale=scale)
                    else:
                        cls, kwargs = make(hp, extra)
                        report = check_torch(cls, kwargs, profile, problem, args.steps, args.seed, overrides,
                                             args.rtol, args.atol, step_kwargs=hook, start_scale=scale)
                    yield library, version, profile, label, problem, report


def _result(report, gaps: str):
    """(result cell, max relative difference, whether a divergence is a documented gap)."""
    if report.passed:
        return "pass", report.max_relative_difference, False
    k = report.divergence.step
    if report.stalled == k and "early exit" in gaps:
        return (f"pass to step {k - 1}; library's early exit at step {k} (documented gap)",
                report.max_relative_difference_before(k), True)
    before = report.max_relative_difference_before(k)  # ~rtol: rounding growth; ~1e-15: a discrete event
    diagnosis = report.diagnosis if len(report.diagnosis) <= 120 else report.diagnosis[:117] + "..."
    return (f"FAIL at step {k} (max rel. diff before it {before:.1e}): {diagnosis}",
            report.max_relative_difference, False)


def _summarise(group, cells, line):
    """Fold rows of one (library, profile, setting) into one; print the previous group when a new one starts."""
    key = cells[:4]
    if group is not None and group[0] != key:
        print(line(_summary_cells(group)), flush=True)
        group = None
    if group is None:
        group = (key, [])
    group[1].append(cells)
    return group


def _summary_cells(group):
    key, rows = group
    if len(rows) == 1 and rows[0][5] == "-":
        return rows[0]
    steps = "/".join(r[5] for r in rows)
    trials = "/".join(r[6].split(" ")[0] for r in rows)
    worst = f"{max(float(r[7]) for r in rows):.1e}"
    parts = [f"{r[4].replace('tiny_', '')}: {r[8]}" for r in rows if r[8] != "pass"]
    result = "pass on all" if not parts else "; ".join(p if len(p) < 110 else p[:107] + "..." for p in parts)
    return (*key, "/".join(r[4].replace("tiny_", "") for r in rows), steps, trials, worst, result)


SCRIPTS = ("meta_shampoo", "kfac_jax", "kfac_pytorch", "curvlinops", "sophia", "adahessian", "optax_sophia",
           "scalable_shampoo", "tf_kfac")  # scripts/verify_with_<name>.py: libraries checked by their own script
_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_VERSION = re.compile(r"^([A-Za-z][\w.+-]*) v?(\d+(?:\.\d+)+[\w.+-]*)")


def _script_row(name: str, timeout: float):
    """Run scripts/verify_with_<name>.py with this interpreter; (cells, failed) for its summary row."""
    path = Path(__file__).resolve().parent / f"verify_with_{name}.py"
    if not path.exists():
        return (name, "-", "see script", "-", "-", "-", "-", "-", f"skipped (no {path.name})"), False
    try:
        done = subprocess.run([sys.executable, str(path)], capture_output=True, text=True, timeout=timeout,
                              cwd=path.parent.parent)
        out, rc = (done.stdout or "") + "\n" + (done.stderr or ""), done.returncode
    except subprocess.TimeoutExpired as exc:
        out = "\n".join(x.decode(errors="replace") if isinstance(x, bytes) else (x or "")
                        for x in (exc.stdout, exc.stderr))
        rc = None
    lines = out.splitlines()
    version = "-"
    for text in lines:  # the first line like "kfac-jax 0.0.6, jax 0.4.30 (x64); ...": its "name version" parts
        parts = [m.group(0) for part in re.split(r"[,;]", text) if (m := _VERSION.match(part.strip()))]
        if parts:
            version = ", ".join(parts)
            break
    worst = []  # loose: after each "max rel", the first number written with a point or an exponent
    for text in lines:
        for segment in re.split(r"max\.? ?rel", text, flags=re.I)[1:]:
            number = next((x for x in re.findall(_NUMBER, segment) if re.search(r"[eE.]", x)), None)
            if number is not None:
                worst.append(float(number))
    worst_cell = f"{max(worst):.1e}" if worst else "-"
    skip = next((t for t in lines if re.match(rf"verify_with_{name}:.*skipping", t.strip())), None)
    if rc is None:
        return (name, version, "see script", "-", "-", "-", "-", worst_cell, f"FAIL (timeout after {timeout:g} s)"), True
    if rc == 0 and skip is not None and not worst:
        why = ("not installed" if re.search(r"not installed|No module named", skip)
               else skip.split(":", 1)[1].split(";")[0].strip())
        return (name, version, "see script", "-", "-", "-", "-", "-", f"skipped ({why})"), False
    if rc == 0:
        return (name, version, "see script", "-", "-", "-", "-", worst_cell, "pass"), False
    last = next((t.strip() for t in reversed(lines) if t.strip()), "")
    last = (last if len(last) <= 100 else last[:97] + "...").replace("|", "/")  # keeps a Markdown row intact
    return (name, version, "see script", "-", "-", "-", "-", worst_cell,
            "FAIL" + ("" if rc == 1 else f" (exit {rc})") + (f": {last}" if last else "")), True


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rtol", type=float, default=1e-9)
    ap.add_argument("--atol", type=float, default=1e-12)
    ap.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    ap.add_argument("--only", nargs="*", help="libraries to run (torch, pytorch_optimizer, optax, scipy, or a script's library: "
                    + ", ".join(SCRIPTS) + ")")
    ap.add_argument("--summary", action="store_true", help="one row per profile and setting (all problems)")
    ap.add_argument("--scripts", action=argparse.BooleanOptionalAction, default=True,
                    help="also run scripts/verify_with_{%s}.py (one summary row each; default: on)" % ",".join(SCRIPTS))
    ap.add_argument("--script-timeout", type=float, default=600.0, help="seconds per script (600)")
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore", message=".*combinations of switches")  # the search tries the closest 1024
    print(f"rule |θ_lib − θ_refopt| ≤ {args.atol:g} + {args.rtol:g}·|θ_refopt| at every step; refopt's gradients "
          f"and draws on both sides")
    header = ("library", "version", "profile", "setting", "problem", "steps", "trials>1", "max rel. diff", "result")
    line = (lambda cells: "| " + " | ".join(cells) + " |") if args.markdown else "  ".join
    print(line(header))
    if args.markdown:
        print("|" + "---|" * len(header))
    failed, group = 0, None
    for library, version, profile, label, problem, report in _rows(args):
        if isinstance(report, str):
            cells = (library, version, profile, label, problem, "-", "-", "-", report)
        else:
            result, worst, gap = _result(report, PROFILES[profile].gaps)
            failed += not (report.passed or gap)
            cells = (library, version, profile, label, problem, str(report.steps), _trials(report), f"{worst:.1e}",
                     result)
        if args.summary:
            group = _summarise(group, cells, line)
            continue
        print(line(cells), flush=True)
    if args.summary and group:
        print(line(_summary_cells(group)))
    if args.scripts:
        for name in SCRIPTS:
            if args.only and name not in args.only:
                continue
            cells, bad = _script_row(name, args.script_timeout)
            failed += bad
            print(line(cells), flush=True)
    print("all installed libraries conform" if failed == 0 else f"{failed} case(s) fail")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
