"""Benchmark: refopt's Newton-family methods against scipy.optimize.minimize, and L-BFGS cost per step.

    python scripts/bench_quasi_newton.py            # full run (about 15 s on one core)
    python scripts/bench_quasi_newton.py --quick    # fewer problems and sizes
    python scripts/bench_quasi_newton.py --json out.json

Part 1 runs every method on the classical test problems of ``refopt.problems.functions`` from their
standard starting points and prints iterations, evaluations and the final error, side by side with
scipy's BFGS, L-BFGS-B, Newton-CG and trust-ncg. Stopping rules are made the same where scipy allows it:
‖g‖∞ ≤ 1e-5 for BFGS / L-BFGS (L-BFGS-B with ftol=0, so that it too stops on the gradient),
‖g‖₂ ≤ 1e-5 for trust-ncg; scipy's Newton-CG stops only on its step size (xtol=1e-5, its default), ours
on ‖g‖∞ ≤ 1e-5, both within scipy's default budget of 200·n iterations. A run "reaches" the minimum
when f − f* ≤ 1e-7·max(1, |f*|).

Targets checked (issue 3): BFGS and L-BFGS reach the minimum wherever scipy's do, with at most 1.25×
scipy's function evaluations; Newton-CG reaches it on problems where scipy's Newton-CG stalls.

Part 2 times L-BFGS steps (memory 10, strong Wolfe) on the separable extended Rosenbrock function for
n = 10³ … 10⁶ and fits the slope of log(time per step) against log n (1 = linear; target: no regression
of the linear scaling, slope ≤ 1.1 for n ≥ 10⁴).

Part 3, at n = 10⁶ (also with ``--quick``, with fewer iterations): time per iteration of refopt's L-BFGS
against scipy's L-BFGS-B (memory 10 both, from x0, the same function and gradient), and torch.optim.LBFGS
(history 10, strong Wolfe) when torch is importable, in interleaved rounds; the median and range of the
per-round ratio refopt ÷ scipy (target: below 1, refopt ahead). Its flops are counted as the two-loop
recursion's 8mn (2m dot products and axpys of length n) plus about 10n per function-and-gradient
evaluation, for the achieved fraction of the matmul peak (a 512³ float64 matmul timed in the same
process): L-BFGS is memory-bound, so that fraction is small by nature.

    python scripts/bench_quasi_newton.py --quick --threads 1 --json out.json   # about 40 s
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(1, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))  # run from a checkout

import _bench as B  # noqa: E402

B.preset_threads()

import argparse  # noqa: E402  (after the thread settings, which must precede the NumPy import)
import importlib.util  # noqa: E402
import math  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from refopt.minimize import minimize  # noqa: E402
from refopt.optim.lbfgs import LBFGS  # noqa: E402
from refopt.problems.functions import (beale, dixon_price, extended_rosenbrock,  # noqa: E402
                                       powell_singular, quadratic, rosenbrock, trid, wood)

PAIRS = [("bfgs", "BFGS"), ("lbfgs", "L-BFGS-B"), ("newton_cg", "Newton-CG"), ("trust_ncg", "trust-ncg")]
EXTRA = ["newton", "sr1", "sherman_morrison", "dfp"]
DENSE = {"bfgs", "newton", "sr1", "sherman_morrison", "dfp"}
DENSE_MAX_N = 100      # dense n×n methods (and scipy's BFGS) only up to this size: the benchmark stays short
EXTRA_MAXITER = 2000   # DFP in particular crawls with inexact line searches; cap it


def problems(quick: bool):
    out = [rosenbrock(), beale(), wood(), powell_singular(), trid(10), dixon_price(10), quadratic(20, 1e3, seed=0),
           rosenbrock(6), rosenbrock(20), extended_rosenbrock(100)]
    if not quick:
        out += [powell_singular(20), quadratic(50, 1e4, seed=1), rosenbrock(50), dixon_price(30),
                extended_rosenbrock(1000)]
    return out


def reached(f, p) -> bool:
    return bool(np.isfinite(f) and f - p.f_star <= 1e-7 * max(1.0, abs(p.f_star)))


def run_ours(p, method, maxiter=20000):
    if method == "newton_cg":
        maxiter = 200 * p.n     # the same budget as scipy's Newton-CG default
    gnorm = "2" if method == "trust_ncg" else "inf"
    t = time.perf_counter()
    r = minimize(p, method=method, gtol=1e-5, gnorm=gnorm, maxiter=maxiter)
    return dict(nit=r.nit, nfev=r.nfev, ngev=r.ngev, nhvp=r.nhvp, f=r.f, err=r.f - p.f_star, reached=reached(r.f, p),
                status=r.status, time=time.perf_counter() - t)


def run_scipy(p, method):
    import scipy.optimize as so  # noqa: PLC0415 (optional)
    x0 = np.asarray(p.x0, dtype=float)
    kw = dict(jac=p.grad)
    options = {"maxiter": 20000}
    if method == "BFGS":
        options.update(gtol=1e-5)
    elif method == "L-BFGS-B":
        options.update(gtol=1e-5, ftol=0.0, maxfun=100000)
    elif method == "Newton-CG":
        kw["hessp"] = p.hvp
        options = {}            # scipy's defaults: maxiter = 200 n, xtol = 1e-5
    elif method == "trust-ncg":
        kw["hessp"] = p.hvp
        options.update(gtol=1e-5)
    t = time.perf_counter()
    r = so.minimize(p.f, x0, method=method, options=options, **kw)
    return dict(nit=int(r.nit), nfev=int(r.nfev), ngev=int(getattr(r, "njev", 0) or 0),
                nhvp=int(getattr(r, "nhev", 0) or 0), f=float(r.fun), err=float(r.fun) - p.f_star,
                reached=reached(float(r.fun), p), status=str(r.message)[:40], time=time.perf_counter() - t)


def comparison(quick: bool):
    have_scipy = importlib.util.find_spec("scipy") is not None
    if not have_scipy:
        print("scipy is not installed: only refopt's numbers are shown")
    rows = []
    header = f"{'problem':22s} {'method':17s} {'reached':>7s} {'nit':>6s} {'nfev':>6s} {'ngev':>6s} {'nhvp':>6s} " \
             f"{'f - f*':>9s} {'time[s]':>8s}  status"
    print(header)
    print("-" * len(header))
    for p in problems(quick):
        label = f"{p.name}(n={p.n})"
        for ours, theirs in PAIRS:
            if ours in DENSE and p.n > DENSE_MAX_N:
                continue
            entries = [("refopt " + ours, run_ours(p, ours))]
            if have_scipy:
                entries.append(("scipy " + theirs, run_scipy(p, theirs)))
            for name, r in entries:
                rows.append(dict(problem=label, method=name, **r))
                print(f"{label:22s} {name:17s} {str(r['reached']):>7s} {r['nit']:6d} {r['nfev']:6d} {r['ngev']:6d} "
                      f"{r['nhvp']:6d} {r['err']:9.1e} {r['time']:8.3f}  {r['status']}")
        for ours in EXTRA:
            if p.n > DENSE_MAX_N:
                continue
            r = run_ours(p, ours, maxiter=EXTRA_MAXITER)
            rows.append(dict(problem=label, method="refopt " + ours, **r))
            print(f"{label:22s} {'refopt ' + ours:17s} {str(r['reached']):>7s} {r['nit']:6d} {r['nfev']:6d} "
                  f"{r['ngev']:6d} {r['nhvp']:6d} {r['err']:9.1e} {r['time']:8.3f}  {r['status']}")
        print()
    return rows, have_scipy


def check_targets(rows, ratios=None):
    """The verdicts of the targets (module docs), printed; each BFGS / L-BFGS evaluation ratio to scipy's with
    its verdict is appended to ``ratios`` when given."""
    by = {(r["problem"], r["method"]): r for r in rows}
    problems_seen = sorted({r["problem"] for r in rows}, key=[r["problem"] for r in rows].index)
    verdicts = []
    ratios = [] if ratios is None else ratios
    print("Targets")
    for ours, theirs in [("bfgs", "BFGS"), ("lbfgs", "L-BFGS-B")]:
        for prob in problems_seen:
            if (prob, "refopt " + ours) not in by:
                continue
            a, b = by[(prob, "refopt " + ours)], by.get((prob, "scipy " + theirs))
            if b is None or not b["reached"]:
                note = "scipy did not reach it" + ("; refopt did" if a["reached"] else "")
                print(f"  {ours:6s} {prob:22s} (no target: {note})")
                continue
            ratio = a["nfev"] / b["nfev"]
            ok = a["reached"] and ratio <= 1.25
            verdicts.append(ok)
            ratios.append((ratio, ok))
            why = "" if ok or a["reached"] else f" (refopt ended at f - f* = {a['err']:.3g}: another local minimum)"
            print(f"  {ours:6s} {prob:22s} nfev {a['nfev']:5d} vs {b['nfev']:5d}  ratio {ratio:5.2f}  "
                  f"{'met' if ok else 'MISSED'}{why}")
    for prob in problems_seen:
        a, b = by[(prob, "refopt newton_cg")], by.get((prob, "scipy Newton-CG"))
        if b is not None and not b["reached"]:
            ok = a["reached"]
            verdicts.append(ok)
            print(f"  newton_cg {prob:22s} scipy's Newton-CG stalls (f - f* = {b['err']:.1e}); refopt: "
                  f"f - f* = {a['err']:.1e} in {a['nit']} iterations  {'met' if ok else 'MISSED'}")
    print(f"  {sum(verdicts)} of {len(verdicts)} targets met")
    return verdicts


def lbfgs_scaling(sizes, steps: int = 12, warmup: int = 3):
    """Seconds per L-BFGS step (history full after 10 steps) on extended Rosenbrock, for each n."""
    print(f"\nL-BFGS (memory 10) on extended Rosenbrock: seconds per step over {steps} steps, after 10 + {warmup} "
          "steps that fill the history")
    out = []
    for n in sizes:
        p = extended_rosenbrock(n)
        o = p.oracle()
        opt = LBFGS(memory=10)
        x, state = p.x0, opt.init(p.x0)
        for _ in range(opt.memory + warmup):           # fill the history first: time steps with m = 10 pairs
            x, state, _ = opt.update(x, state, o)
        evals = o.counts.nfev
        t = time.perf_counter()
        for _ in range(steps):
            x, state, info = opt.update(x, state, o)
        dt = (time.perf_counter() - t) / steps
        per_eval = (o.counts.nfev - evals) / steps
        g = p.grad(x)
        t = time.perf_counter()
        for _ in range(3):
            opt.inverse_hessian_product(state, g)
        two_loop = (time.perf_counter() - t) / 3
        out.append(dict(n=n, seconds_per_step=dt, two_loop_seconds=two_loop, evals_per_step=per_eval,
                        memory_used=len(state.s)))
        print(f"  n = {n:>8d}: {dt * 1e3:9.3f} ms/step ({per_eval:.2f} evaluations/step, m = {len(state.s)}), "
              f"two-loop {two_loop * 1e3:8.3f} ms, {dt / n * 1e9:7.2f} ns per step per parameter")
    ns = np.array([r["n"] for r in out], dtype=float)
    ts = np.array([r["two_loop_seconds"] for r in out])
    ss = np.array([r["seconds_per_step"] for r in out])
    big = ns >= 1e4   # below that, fixed Python overheads dominate
    if big.sum() < 2:   # a line through one point has no slope: say so rather than print nan
        print(f"  log-log slope: not measured (it needs two sizes n ≥ 1e4, here {[int(n) for n in ns[big]]}: "
              "--max-n 1e5 or more)")
        return out, None, None
    slope_step = float(np.polyfit(np.log(ns[big]), np.log(ss[big]), 1)[0])
    slope_loop = float(np.polyfit(np.log(ns[big]), np.log(ts[big]), 1)[0])
    print(f"  log-log slope for n ≥ 1e4: per step {slope_step:.2f}, two-loop {slope_loop:.2f} (1.00 = linear)")
    return out, slope_step, slope_loop


def lbfgs_vs_scipy(n: int, iterations: int, rounds: int, peak: float):
    """Seconds per iteration of refopt's L-BFGS, scipy's L-BFGS-B (and torch's LBFGS) from x0 at size n,
    interleaved rounds of ``iterations`` iterations each (module docs)."""
    p = extended_rosenbrock(n)
    fns, nits = {}, {}

    def ours():
        o = p.oracle()
        opt = LBFGS(memory=10)
        x, state = p.x0, opt.init(p.x0)
        for _ in range(iterations):
            x, state, _ = opt.update(x, state, o)
        nits["refopt L-BFGS"] = (iterations, o.counts.nfev)
    fns["refopt L-BFGS"] = ours
    if importlib.util.find_spec("scipy") is not None:
        import scipy.optimize as so  # noqa: PLC0415 (optional)

        def theirs():
            r = so.minimize(p.f, np.asarray(p.x0, dtype=float), jac=p.grad, method="L-BFGS-B",
                            options={"maxiter": iterations, "maxcor": 10, "gtol": 0.0, "ftol": 0.0})
            nits["scipy L-BFGS-B"] = (int(r.nit), int(r.nfev))
        fns["scipy L-BFGS-B"] = theirs
    torch = B.optional("torch")
    if torch is not None:
        def torch_lbfgs():
            xt = torch.tensor(np.asarray(p.x0, dtype=float), requires_grad=True)
            opt = torch.optim.LBFGS([xt], lr=1, max_iter=1, history_size=10, line_search_fn="strong_wolfe")
            calls = [0]

            def closure():
                opt.zero_grad()
                u, w = xt[0::2], xt[1::2]
                f = torch.sum(100.0 * (w - u * u) ** 2 + (1.0 - u) ** 2)
                f.backward()
                calls[0] += 1
                return f
            for _ in range(iterations):
                opt.step(closure)
            nits["torch LBFGS"] = (iterations, calls[0])
        fns["torch LBFGS"] = torch_lbfgs
    times = B.interleaved(fns, rounds, warmup=0)
    per_it = {name: [t / nits[name][0] for t in ts] for name, ts in times.items()}
    out = {}
    print(f"\nL-BFGS per iteration at n = {n}: {rounds} interleaved round(s) of {iterations} iterations from x0")
    for name, ts in per_it.items():
        evals = nits[name][1] / nits[name][0]
        flops = (8 * 10 + 10 * evals) * n
        frac = flops / statistics.median(ts) / (peak * 1e9)
        out[name] = {"ms": B.spread([1e3 * t for t in ts]), "evals_per_iteration": evals, "peak_fraction": frac}
        line = f"  {name:16s} {1e3 * statistics.median(ts):8.1f} ms/iteration ({B.fmt_range(B.spread([1e3 * t for t in ts]), 1)}), " \
               f"{evals:.2f} evaluations/iteration, {100 * frac:.1f}% of matmul peak"
        if name != "refopt L-BFGS":
            ratio = B.spread(B.per_round_ratios(per_it["refopt L-BFGS"], ts))
            out[name]["refopt_ratio"] = ratio
            line += f"; refopt ÷ this {ratio['median']:.2f} ({B.fmt_range(ratio)})"
        print(line)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    B.common_arguments(ap, quick="fewer problems and sizes", rounds="interleaved rounds of part 3 (default 3, quick 2)")
    ap.add_argument("--max-n", type=float, default=1e6, help="largest n for the L-BFGS timing (default 1e6, at least 1e3)")
    args = ap.parse_args(argv)
    if not (math.isfinite(args.max_n) and args.max_n >= 1e3):
        ap.error(f"--max-n must be at least 1e3 (the smallest size timed), got {args.max_n:g}")
    B.apply_threads(args.threads)
    peak = B.matmul_peak()
    print(f"BLAS threads {B.blas_threads()}; 512³ matmul {peak:.1f} GFLOP/s")
    rows, have_scipy = comparison(args.quick)
    evaluation_ratios = []
    verdicts = check_targets(rows, evaluation_ratios) if have_scipy else []
    sizes = [n for n in (10 ** 3, 10 ** 4, 10 ** 5, 10 ** 6) if n <= args.max_n]
    if args.quick:
        sizes = [n for n in sizes if n <= 10 ** 5]
    scaling, slope_step, slope_loop = lbfgs_scaling(sizes)
    big_n = int(args.max_n)
    peak = max(peak, B.matmul_peak())
    head = lbfgs_vs_scipy(big_n, 10 if args.quick else 20, args.rounds or (2 if args.quick else 3), peak)
    measurements = [] if slope_step is None else [
        {"what": "L-BFGS log-log slope of time per step against n (n ≥ 1e4)", "unit": "(1 = linear)",
         "median": slope_step, "range": [slope_step, slope_step], "target": 1.1, "target_on": "slope",
         "bound": 1.0, "met": bool(slope_step <= 1.1)}]
    if evaluation_ratios:
        values = [r for r, _ in evaluation_ratios]
        met = sum(ok for _, ok in evaluation_ratios)
        measurements.append({"what": f"BFGS and L-BFGS function evaluations vs scipy.optimize.minimize "
                                     f"({len(values)} problem/method pairs, {met} within the target)",
                             "unit": "× scipy's evaluations", "median": statistics.median(values),
                             "range": [min(values), max(values)], "target": 1.25, "target_on": None,
                             "bound": None, "met": met == len(values)})
    ours = head["refopt L-BFGS"]
    measurements.append({"what": f"L-BFGS per iteration, n = {big_n:.0e}".replace("e+0", "e"), "unit": "ms", "ms": ours["ms"],
                         "median": ours["ms"]["median"], "range": [ours["ms"]["min"], ours["ms"]["max"]],
                         "target": None, "target_on": None, "bound": None, "met": None,
                         "peak_fraction": ours["peak_fraction"]})
    for name in ("scipy L-BFGS-B", "torch LBFGS"):
        if name in head:
            r = head[name]["refopt_ratio"]
            measurements.append({"what": f"L-BFGS per iteration vs {name}, n = {big_n:.0e}".replace("e+0", "e"), "unit": f"× {name}'s time",
                                 "median": r["median"], "range": [r["min"], r["max"]],
                                 "target": 1.0 if name.startswith("scipy") else None,
                                 "target_on": name if name.startswith("scipy") else None, "bound": None,
                                 "met": bool(r["median"] < 1.0) if name.startswith("scipy") else None,
                                 "theirs_ms": head[name]["ms"]})
    B.write_json(args.json, dict(script="bench_quasi_newton", threads=B.blas_threads(), peak_gflops=peak,
                                 comparison=rows, targets_met=sum(verdicts), targets=len(verdicts),
                                 lbfgs_scaling=scaling, slope_per_step=slope_step, slope_two_loop=slope_loop,
                                 large_n=head, measurements=measurements))
    return 0


if __name__ == "__main__":
    sys.exit(main())
