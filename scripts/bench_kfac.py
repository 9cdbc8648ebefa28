"""Benchmark of the Fisher family (issues 4 and 13): per-step cost against flop bounds, and iterations /
seconds to a target loss.

Part "cost": MLP 256-512-512-10 (tanh), batch 512, float64, synthetic 10-class data. Each optimizer
takes steps in interleaved rounds of 10 (so a T₂ = 10 refresh is amortised exactly once per round);
the ratio to a plain gradient step (``SGD``, no momentum) is taken round by round and its median and range
reported, which keeps the comparison fair on a shared, noisy machine. Each K-FAC row also prints its flop
bound in SGD steps, the ratio to it, and the achieved fraction of the matmul peak (a 512³ float64 matmul
timed in this process); the header names the BLAS threads in effect. The bound (flops counted as in
``scripts/_bench.py``: 2mkn a gemm, n²k a symmetric XᵀX, which NumPy computes with syrk) of K-FAC with
T₁, T₂, one label sample (fisher="mc") and the joint [W; b] block is

    1 + [ (one backward sweep at the sampled labels: the input gradients g_l W_lᵀ, l ≥ 2)
          + Σ_l (ā_{l−1}ᵀ ā_{l−1}: (n_{l−1} + 1)² B) + Σ_l (g_lᵀ g_l: n_l² B) ] / T₁ / (gradient flops)
      + Σ_l (A_l⁻¹ V_l G_l⁻¹: 2a²n + 2an², a = n_{l−1} + 1, n = n_l; twice that for inverse="eig",
        Q_Aᵀ V Q_G and back) / (gradient flops)
      + (the time of numpy.linalg.inv, or eigh for inverse="eig", on the 2L factor sizes, measured in this
        process) / T₂ / (the SGD step's time)

so the gradient's flops stand for the measured SGD step and every other product is assumed to run at the
gradient's rate; the decompositions enter at their measured time (a flop count of a LAPACK inverse or
eigendecomposition is ambiguous: for the peak fraction they count 2n³ and 9n³). The block-tridiagonal
K-FAC, EKFAC and K-BFGS rows have no bound counted (they print "no bound counted"): only their ratio to the
SGD step. Target (issue 13): K-FAC
with T₁ = 1, T₂ = 10 at most 1.1× its bound. When torch is importable, its SGD step on the same model is
timed alongside as a reference gradient step.

Parts "digits" and "autoencoder": full-batch training on scikit-learn's digits (their 1437 × 64 training
split), the registered problems ``digits_mlp``
(MLP 64-32-10 tanh, softmax cross-entropy) and ``digits_autoencoder`` (64-32-8-32-64 tanh, Gaussian loss).
Every optimizer is tuned over a small grid; the table reports, for the best setting, the iterations and the
seconds spent in ``update`` until the full-batch training loss first reaches each target, and the loss at
the end.

    python scripts/bench_kfac.py                 # everything (about 2½ minutes with --threads 1 on 2 cores)
    python scripts/bench_kfac.py --quick         # smaller grids and caps (about 35 s)
    python scripts/bench_kfac.py --parts cost --quick --threads 1 --json out.json   # about 30 s
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(1, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))  # run from a checkout

import _bench as B  # noqa: E402

B.preset_threads()

import argparse  # noqa: E402  (after the thread settings, which must precede the NumPy import)
import json  # noqa: E402
import math  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

from refopt.nn import MLP, SoftmaxCrossEntropy  # noqa: E402
from refopt.optim import make_optimizer  # noqa: E402
from refopt.oracle import Oracle  # noqa: E402
from refopt.problems.datasets import synthetic_classification  # noqa: E402
from refopt.problems.registry import make_problem  # noqa: E402


# --- part 1: per-step cost ------------------------------------------------------------------------
SIZES, BATCH = (256, 512, 512, 10), 512
# (label, registry name, hyperparameters, bound spec (T₁, T₂, inverse) or None, target ÷ bound or None)
COST_OPTIMIZERS = [
    ("gradient step (SGD)", "sgd", {"lr": 0.01}, None, None),
    ("K-FAC T1=1 T2=10 (inverse, pi)", "kfac", {"inverse_interval": 10}, (1, 10, "inverse"), 1.1),
    ("K-FAC T1=1 T2=10 (eig, pi)", "kfac", {"inverse_interval": 10, "inverse": "eig"}, (1, 10, "eig"), None),
    ("K-FAC T1=10 T2=10 (inverse, pi)", "kfac", {"inverse_interval": 10, "factor_interval": 10},
     (10, 10, "inverse"), None),
    ("K-FAC tridiagonal T1=1 T2=10", "kfac_tridiag", {"inverse_interval": 10}, None, None),
    ("EKFAC T1=1 T2=10", "ekfac", {"inverse_interval": 10}, None, None),
    ("K-BFGS", "kbfgs", {}, None, None),
    ("K-BFGS(L)", "kbfgs", {"variant": "lbfgs", "memory": 10}, None, None),
]


def kfac_bound(spec, sgd_ms: float, decomposition_ms: dict, sizes=SIZES, batch=BATCH) -> tuple[float, float]:
    """(bound in SGD steps, counted flops per step) of K-FAC with (T₁, T₂, inverse) = ``spec`` (module docs)."""
    T1, T2, inverse = spec
    grad = B.mlp_flops(sizes, batch)
    layers = list(zip(sizes[:-1], sizes[1:]))
    statistics_flops = (grad["input_grads"] + sum(B.syrk(batch, i + 1) for i, _ in layers)
                        + sum(B.syrk(batch, o) for _, o in layers))
    precondition = sum(B.gemm(i + 1, i + 1, o) + B.gemm(i + 1, o, o) for i, o in layers)
    if inverse == "eig":
        precondition *= 2
    matmul = grad["gradient"] + statistics_flops / T1 + precondition
    count = B.eigh_flops if inverse == "eig" else B.inv_flops
    flops = matmul + sum(count(n) for n in factor_sizes(sizes)) / T2
    return matmul / grad["gradient"] + decomposition_ms[inverse] / T2 / sgd_ms, flops


def factor_sizes(sizes=SIZES) -> list:
    """The sizes of K-FAC's factors: A_l of (fan_in + 1) for the joint [W; b] block, then G_l of fan_out."""
    return [i + 1 for i in sizes[:-1]] + list(sizes[1:])


TORCH_SPEC = {"type": "mlp", "activations": ["tanh"] * (len(SIZES) - 2) + ["identity"]}


def torch_sgd_step(X, y, model, params):
    """A step() of torch.optim.SGD on the same MLP in float64, or None without torch."""
    torch = B.optional("torch")
    if torch is None:
        return None
    from refopt.verify.external import torch_network  # noqa: PLC0415 (imports torch)
    B.torch_threads(torch)   # the BLAS threads refopt runs with
    net = torch_network(TORCH_SPEC, params)
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    Xt, yt = torch.tensor(X), torch.tensor(y)

    def step():
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(Xt), yt).backward()
        opt.step()
    return step


def bench_cost(rounds: int, steps: int = 10) -> dict:
    data = synthetic_classification(n=BATCH, d=SIZES[0], classes=SIZES[-1], seed=0)
    model = MLP(list(SIZES), "tanh")
    oracle = Oracle(model, SoftmaxCrossEntropy(), data.X, data.y)
    peak = B.matmul_peak()
    decomposition_ms = {kind: 1e3 * B.decomposition_seconds("inv" if kind == "inverse" else "eigh", factor_sizes())
                        for kind in ("inverse", "eig")}
    runs = []
    for label, name, hp, spec, target in COST_OPTIMIZERS:
        opt = make_optimizer(name, **hp)
        params = model.init(0)
        state = opt.init(params)
        params, state, _ = opt.update(params, state, oracle)  # warm up (the first refresh is not amortised)
        runs.append({"label": label, "opt": opt, "params": params, "state": state, "times": [], "spec": spec,
                     "target": target})
    reference = torch_sgd_step(data.X, data.y, model, model.init(0))

    def take_steps(r):
        def fn():
            r["params"], r["state"], _ = r["opt"].update(r["params"], r["state"], oracle)
        return fn
    fns = {k: take_steps(r) for k, r in enumerate(runs)}
    if reference is not None:
        reference()   # the refopt runs are warm already (their first step above)
        fns["reference"] = reference
    # rounds of ``steps`` calls of each in turn, so a T₂ = 10 refresh falls once in every round
    times = B.interleaved(fns, rounds, warmup=0, inner={k: steps for k in fns})
    for k, r in enumerate(runs):
        r["times"] = times[k]
    ref_times = times.get("reference", [])
    peak = max(peak, B.matmul_peak())
    base = runs[0]["times"]
    sgd_ms = 1e3 * statistics.median(base)
    grad_flops = B.mlp_flops(SIZES, BATCH)["gradient"]
    rows = []
    for r in runs:
        ratios = B.per_round_ratios(r["times"], base)
        row = {"optimizer": r["label"], "what": f"{r['label']}, per step", "ms_per_step": 1e3 * statistics.median(r["times"]),
               "ms": B.spread([1e3 * t for t in r["times"]]), "ratio_to_gradient_step": statistics.median(ratios),
               "ratio": B.spread(ratios), "bound": None, "to_bound": None, "peak_fraction": None,
               "target": r["target"], "target_on": "bound" if r["target"] else None, "met": None,
               "unit": "× SGD step", "bound_note": None if r["spec"] is not None or r is runs[0] else "no bound counted"}
        flops = grad_flops if r is runs[0] else None   # the SGD step: the gradient's flops
        if r["spec"] is not None:
            bound, flops = kfac_bound(r["spec"], sgd_ms, decomposition_ms)
            to_bound = [x / bound for x in ratios]
            row.update(bound=bound, to_bound=B.spread(to_bound))
            if r["target"] is not None:
                row["met"] = statistics.median(to_bound) <= r["target"]
                row["unit"] = "× bound"
        if flops is not None:
            row["peak_fraction"] = flops / statistics.median(r["times"]) / (peak * 1e9)
            row["gflop"] = flops / 1e9
        judged = row["to_bound"] if row["target"] is not None else row["ratio"]
        row["median"], row["range"] = judged["median"], [judged["min"], judged["max"]]
        rows.append(row)
    out = {"script": "bench_kfac", "problem": "MLP 256-512-512-10 tanh, softmax CE, batch 512, float64",
           "threads": B.blas_threads(), "rounds": rounds, "peak_gflops": peak, "sgd_ms": sgd_ms,
           "decomposition_ms": decomposition_ms, "measurements": rows, "references": {}}
    if ref_times:
        ratios = B.per_round_ratios(ref_times, base)
        out["references"]["torch sgd"] = {"ms": 1e3 * statistics.median(ref_times), "ratio": B.spread(ratios),
                                          "base": "refopt sgd"}
    return out


# --- parts 2 and 3: iterations and seconds to a target -----------------------------------------------
def run_to_targets(problem, name, hp, targets, max_iters, max_seconds):
    opt = make_optimizer(name, **hp)
    params = problem.init_params(0)
    state = opt.init(params)
    oracle = problem.oracle()
    hits = {t: None for t in targets}
    spent, loss, iters = 0.0, math.nan, 0
    for i in range(max_iters + 1):
        t0 = time.perf_counter()
        new, new_state, info = opt.update(params, state, oracle)
        dt = time.perf_counter() - t0
        loss = info["loss"]                       # the full-batch loss at θ_i, after i updates
        if not math.isfinite(loss):
            break
        for t in targets:
            if hits[t] is None and loss <= t:
                hits[t] = (i, spent)
        if all(h is not None for h in hits.values()) or spent > max_seconds or i == max_iters:
            break
        params, state, spent, iters = new, new_state, spent + dt, i + 1
    return {"hits": hits, "final_loss": loss, "iterations_run": iters, "seconds_run": spent}


def grids(problem_name: str, quick: bool) -> dict:
    ae = problem_name == "digits_autoencoder"
    sgd_lrs = (0.03, 0.1, 0.3) if ae else (0.1, 0.3, 1.0)
    g = {
        "sgd": [{"lr": lr, "momentum": 0.9} for lr in sgd_lrs],
        "adam": [{"lr": lr} for lr in (0.003, 0.01, 0.03)],
        "kfac": [{"lr": lr, "damping": d, "kl_clip": c} for lr in (0.3, 1.0) for d in (1e-2, 1e-1)
                 for c in (1e-2, 1e-1)],
        "natural_gradient": [{"lr": lr, "damping": d, "solver": "cg", "cg_maxiter": 20, "cg_tol": 1e-3}
                             for lr in (0.5, 1.0) for d in (1e-3, 1e-2)],
        "kfac_tridiag": [{"lr": 0.3, "damping": d, "kl_clip": 0.1} for d in (1e-2, 1e-1)],
        "ekfac": [{"lr": 0.3, "damping": d, "kl_clip": 0.1} for d in (1e-2, 1e-1)],
        "kbfgs": [{"lr": lr, "damping": 0.3, "secant_decay": 0.0} for lr in (0.3, 1.0)],
    }
    if quick:
        g = {"sgd": g["sgd"][1:], "adam": g["adam"][1:],
             "kfac": [{"lr": 0.3, "damping": 1e-2, "kl_clip": c} for c in (1e-2, 1e-1)],
             "natural_gradient": [{"lr": 0.5, "damping": 1e-3, "solver": "cg", "cg_maxiter": 20, "cg_tol": 1e-3}],
             "kfac_tridiag": g["kfac_tridiag"][:1], "ekfac": g["ekfac"][:1], "kbfgs": g["kbfgs"][1:]}
    return g


SETTINGS = {  # targets and caps (full, quick); the natural gradient's CG steps are ~50× dearer, so capped lower
    "digits_mlp": {"targets": (0.01, 0.001), "iters": (400, 200), "ng_iters": (60, 30), "seconds": (60, 20)},
    "digits_autoencoder": {"targets": (9.0, 7.0), "iters": (1500, 600), "ng_iters": (60, 25), "seconds": (90, 30)},
}


def bench_convergence(problem_name: str, quick: bool, log=print) -> list[dict]:
    problem = make_problem(problem_name)
    cfg = SETTINGS[problem_name]
    q = 1 if quick else 0
    targets = cfg["targets"]
    rows = []
    for name, configs in grids(problem_name, quick).items():
        best = None
        for hp in configs:
            cap = cfg["ng_iters"][q] if name == "natural_gradient" else cfg["iters"][q]
            res = run_to_targets(problem, name, hp, targets, cap, cfg["seconds"][q])
            first = res["hits"][targets[0]]
            second = res["hits"][targets[1]]
            key = (second is None, second[0] if second else 0, first is None, first[0] if first else 0,
                   res["final_loss"] if math.isfinite(res["final_loss"]) else math.inf)
            log(f"  {problem_name:18s} {name:16s} {json.dumps(hp):80s} hits {res['hits']} "
                f"final {res['final_loss']:.4g} ({res['iterations_run']} it, {res['seconds_run']:.1f} s)")
            if best is None or key < best[0]:
                best = (key, hp, res)
        _, hp, res = best
        rows.append({"problem": problem_name, "optimizer": name, "hyperparameters": hp, "targets": list(targets),
                     "hits": [res["hits"][t] for t in targets], "final_loss": res["final_loss"],
                     "iterations_run": res["iterations_run"], "seconds_run": res["seconds_run"]})
    return rows


def format_cost(cost: dict) -> str:
    lines = [f"BLAS threads {cost['threads']}; 512³ matmul {cost['peak_gflops']:.1f} GFLOP/s; "
             f"inv of the factors {cost['decomposition_ms']['inverse']:.1f} ms, eigh "
             f"{cost['decomposition_ms']['eig']:.1f} ms per refresh (timed here)",
             "| optimizer | ms / step | × gradient step (range) | bound | ÷ bound (range) | % of matmul peak | target |",
             "|---|---:|---:|---:|---:|---:|---|"]
    for r in cost["measurements"]:
        bound = (r.get("bound_note") or "—") if r["bound"] is None else f"{r['bound']:.2f}"
        tb = "—" if r["to_bound"] is None else f"{r['to_bound']['median']:.2f} ({B.fmt_range(r['to_bound'])})"
        peak = "—" if r["peak_fraction"] is None else f"{100 * r['peak_fraction']:.0f} %"
        target = "" if r["target"] is None else f"≤ {r['target']:g}× bound {'met' if r['met'] else 'MISSED'}"
        lines.append(f"| {r['optimizer']} | {r['ms_per_step']:.1f} | {r['ratio']['median']:.2f} "
                     f"({B.fmt_range(r['ratio'])}) | {bound} | {tb} | {peak} | {target} |")
    for name, r in cost["references"].items():
        lines.append(f"| {name} (reference) | {r['ms']:.1f} | {r['ratio']['median']:.2f} ({B.fmt_range(r['ratio'])}) "
                     "| | | | |")
    return "\n".join(lines)


def format_convergence(rows) -> str:
    t = rows[0]["targets"]
    lines = [f"| optimizer | best setting | it. to {t[0]:g} | s to {t[0]:g} | it. to {t[1]:g} | s to {t[1]:g} | "
             f"final loss (it.) |", "|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        cells = []
        for h in r["hits"]:
            cells += ["—", "—"] if h is None else [str(h[0]), f"{h[1]:.2f}"]
        hp = ", ".join(f"{k}={v}" for k, v in r["hyperparameters"].items() if k not in ("solver", "cg_tol"))
        lines.append(f"| {r['optimizer']} | {hp} | " + " | ".join(cells)
                     + f" | {r['final_loss']:.4g} ({r['iterations_run']}) |")
    return "\n".join(lines)


PARTS = ("cost", "digits", "autoencoder")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    B.common_arguments(ap, quick="smaller grids, fewer rounds and iterations", rounds="rounds of 10 steps in the cost part")
    ap.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated: {', '.join(PARTS)}")
    args = ap.parse_args(argv)
    B.apply_threads(args.threads)
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown or not parts:
        ap.error(f"--parts: unknown part(s) {unknown or [args.parts]}; choose from {', '.join(PARTS)}")
    results = {}
    if "cost" in parts:
        rounds = args.rounds or (3 if args.quick else 6)
        print(f"per-step cost, MLP 256-512-512-10, batch 512, float64 ({rounds} rounds of 10 steps)", flush=True)
        results["cost"] = bench_cost(rounds)
        print(format_cost(results["cost"]), flush=True)
        if not results["cost"]["references"]:
            print("(torch is not installed: no reference gradient step)")
    for part, problem in (("digits", "digits_mlp"), ("autoencoder", "digits_autoencoder")):
        if part in parts:
            print(f"\n{problem}: full batch, iterations and seconds to the target training loss", flush=True)
            results[part] = bench_convergence(problem, args.quick)
            print(format_convergence(results[part]), flush=True)
            kfac = next(r for r in results[part] if r["optimizer"] == "kfac")
            adam = next(r for r in results[part] if r["optimizer"] == "adam")
            for i, t in enumerate(kfac["targets"]):
                if kfac["hits"][i] and adam["hits"][i]:
                    print(f"Adam / K-FAC iterations to {t:g}: {adam['hits'][i][0] / max(kfac['hits'][i][0], 1):.1f}×")
    B.write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
