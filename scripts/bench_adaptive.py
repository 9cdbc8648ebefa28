"""Per-step cost of the adaptive optimizers against a gradient step and against their flop bounds (issue 13).

Problem: MLP 256-512-512-10 (tanh), softmax cross-entropy, batch 512, float64, random data (seeded). The
optimizers take turns step by step (round robin), so a load spike on a shared machine hits all of them
alike; a round is 10 steps of each (Shampoo's T = 10 roots and Sophia's k = 10 refreshes fall exactly once
in every round), and each round gives every optimizer a ratio mean(its step) / mean(SGD step). Every row
prints the median and the range of that ratio over the rounds, its flop bound (in SGD steps), the ratio to
the bound, and the achieved fraction of the matmul peak (counted flops / time / the GFLOP/s of a 512³
float64 matmul timed in this process); the header names the BLAS thread count in effect.

The bounds, in SGD steps (flops counted as in ``scripts/_bench.py``: 2mkn a gemm, n²k a symmetric XᵀX):

* gradient-only methods (SGD, Adam, AdamW, Adagrad): 1, the gradient's flops (their updates are
  elementwise and memory-bound; the target of Adam, ≤ 1.05× an SGD step, is against the SGD step itself).
* Sophia-G, k = 10: 1 + (one backward sweep at the sampled labels) / k: the refresh needs ĝ at labels drawn
  from the outputs of a forward pass, which the gradient's own forward pass can supply. The target is the
  issue's ≤ 1.2× an SGD step. Sophia-H: 1 + (one HVP's tangent work) / k.
* AdaHessian: the issue's "≤ 1.1× (one HVP + an Adam step)" is read as ≤ 1.1× the bound gradient + HVP +
  Adam update: (gradient flops + the Hessian-vector product's tangent flops) / gradient flops, plus the
  Adam step's measured excess over the SGD step (max(0, Adam − SGD) of the same rounds). The tangent of
  Pearlmutter's forward-over-reverse product is 2 gemms for every gemm of the gradient whose two factors
  both vary (1 for the first layer, whose input is data): 2F₁ + 6F₂ + 6F₃ against the gradient's 2F₁ + 3F₂
  + 3F₃ (F_l = 2·B·n_{l−1}·n_l), so the HVP alone is 1.75 gradients and the bound 2.75 + the Adam excess.
* Shampoo, T = 10 (and block_size=128): 1 + (statistics G Gᵀ and GᵀG per block, n² per bias + the two
  mode products per matrix, one per vector + the roots' reconstruction (Q Λᵖ) Qᵀ, 2n³ per statistic, ÷ T)
  / gradient flops, plus the measured time of ``numpy.linalg.eigh`` on the statistics' sizes ÷ T (timed in
  this process: a flop count of eigh is ambiguous, its time is not). Target: ≤ 1.1× the bound.

A second, low-noise view times each gradient-only optimizer's own arithmetic on a fixed gradient.
When torch, pytorch_optimizer or jax/optax are importable, their steps on the same model (float64) are
timed the same way and reported as ratios to their own SGD step; absent libraries are skipped.

    python scripts/bench_adaptive.py            # about a minute on 2 quiet cores (5 rounds)
    python scripts/bench_adaptive.py --quick    # about 20 s (3 rounds), noisier
    python scripts/bench_adaptive.py --threads 1 --json out.json

The BLAS thread count is ``--threads`` if given, else OPENBLAS_NUM_THREADS if set, else the CPUs this
process may use (OpenBLAS otherwise starts one thread per core of the host, which on a shared 2-core
allotment slows matrix products down many times).
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(1, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))  # run from a checkout

import _bench as B  # noqa: E402

B.preset_threads(default=B.available_cpus())

import argparse  # noqa: E402  (after the thread settings, which must precede the NumPy import)
import statistics  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from refopt.nn import MLP, SoftmaxCrossEntropy  # noqa: E402
from refopt.optim import make_optimizer  # noqa: E402
from refopt.optim.shampoo import block_slices, merge_dims  # noqa: E402
from refopt.oracle import Oracle  # noqa: E402

SIZES, BATCH = (256, 512, 512, 10), 512

# name shown -> (registry name, hyperparameters, target, what the target is against: "sgd" or "bound")
CONFIGS = {
    "sgd": ("sgd", dict(lr=0.01), None, None),
    "adam": ("adam", dict(lr=1e-3), 1.05, "sgd"),
    "adamw": ("adamw", dict(lr=1e-3), None, None),
    "adagrad": ("adagrad", dict(lr=0.01), None, None),
    "shampoo T=10": ("shampoo", dict(lr=0.01, precondition_interval=10), 1.1, "bound"),
    "shampoo T=10 block=128": ("shampoo", dict(lr=0.01, precondition_interval=10, block_size=128), None, None),
    "sophia_g k=10": ("sophia_g", dict(lr=1e-3, k=10), 1.2, "sgd"),
    "sophia_h k=10": ("sophia_h", dict(lr=1e-3, k=10), None, None),
    "adahessian": ("adahessian", dict(lr=0.1), 1.1, "bound"),
}
GRADIENT_ONLY = ("sgd", "adam", "adamw", "adagrad", "shampoo T=10", "shampoo T=10 block=128")


def build_problem(batch: int = BATCH, sizes=SIZES, seed: int = 0):
    gen = np.random.default_rng(seed)
    model = MLP(list(sizes), activation="tanh")
    X = gen.standard_normal((batch, sizes[0]))
    y = gen.integers(0, sizes[-1], batch)
    return model, Oracle(model, SoftmaxCrossEntropy(), X, y), X, y


# --- flop bounds ---------------------------------------------------------------------------------------
def hvp_tangent_flops(sizes, batch: int) -> float:
    """The tangent work of a forward-over-reverse HVP of the MLP (module docs): 2F₁ + 6F_l for l ≥ 2."""
    F = [B.gemm(batch, i, o) for i, o in zip(sizes[:-1], sizes[1:])]
    return 2 * F[0] + 6 * sum(F[1:])


def shampoo_parts(shapes, interval: int, block_size=None) -> tuple[float, list]:
    """(flops per step of Shampoo beyond the gradient, the sizes of the statistics that are rooted)."""
    flops, roots = 0.0, []
    for shape in shapes:
        merged = merge_dims(tuple(shape), None)
        for sl in block_slices(merged, block_size):
            dims = [s.stop - s.start for s in sl]
            if len(dims) == 1:                       # a vector: H += g gᵀ, P = R g
                n = dims[0]
                flops += n * n + B.gemm(n, n, 1)
            else:                                    # a matrix block m × n: H₁ += G Gᵀ, H₂ += GᵀG; R₁ G R₂
                m, n = dims
                flops += B.syrk(n, m) + B.syrk(m, n) + B.gemm(m, m, n) + B.gemm(m, n, n)
            roots += dims
    flops += sum(B.gemm(n, n, n) for n in roots) / interval   # (Q Λᵖ) Qᵀ at each refresh
    return flops, roots


def bounds(sgd_ms: float, adam_excess_ms: float, eigh_ms: dict) -> dict:
    """{name: (bound in SGD steps, counted flops per step)} (module docs)."""
    grad = B.mlp_flops(SIZES, BATCH)
    Fg = grad["gradient"]
    backward = grad["weight_grads"] + grad["input_grads"]
    tangent = hvp_tangent_flops(SIZES, BATCH)
    shapes = [(i, o) for i, o in zip(SIZES[:-1], SIZES[1:])]
    shapes = [s for shape in shapes for s in (shape, (shape[1],))]
    out = {name: (1.0, Fg) for name in ("sgd", "adam", "adamw", "adagrad")}
    out["sophia_g k=10"] = (1 + backward / 10 / Fg, Fg + backward / 10)
    out["sophia_h k=10"] = (1 + tangent / 10 / Fg, Fg + tangent / 10)
    out["adahessian"] = ((Fg + tangent) / Fg + max(adam_excess_ms, 0.0) / sgd_ms, Fg + tangent)
    for name, block in (("shampoo T=10", None), ("shampoo T=10 block=128", 128)):
        extra, _ = shampoo_parts(shapes, 10, block)
        out[name] = (1 + extra / Fg + eigh_ms[name] / 10 / sgd_ms, Fg + extra)
    return out


def shampoo_root_sizes(block) -> list:
    shapes = [(i, o) for i, o in zip(SIZES[:-1], SIZES[1:])]
    shapes = [s for shape in shapes for s in (shape, (shape[1],))]
    return shampoo_parts(shapes, 10, block)[1]


# --- refopt's steps ------------------------------------------------------------------------------------
class FixedGradient:
    """An oracle that returns one precomputed gradient: times an optimizer's own arithmetic."""

    provides = frozenset({"value", "gradient"})

    def __init__(self, loss, grad):
        self.loss, self.grad = loss, grad

    def value_and_grad(self, params):
        return self.loss, self.grad


def arithmetic_ms(name, params0, oracle, repeats: int = 3) -> float:
    """Mean time of 10 steps (one refresh cycle) of ``name`` on a fixed gradient, best of ``repeats``."""
    reg, hp, _, _ = CONFIGS[name]
    opt = make_optimizer(reg, **hp)
    state = opt.init(params0)
    params, state, _ = opt.update(params0, state, oracle)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(10):
            params, state, _ = opt.update(params, state, oracle)
        best = min(best, (time.perf_counter() - t0) / 10)
    return 1e3 * best


def time_refopt(names, rounds: int, oracle, params0) -> dict:
    """{name: [mean seconds per step of each round]}: 10 steps of every optimizer per round, in turn."""
    runs = {}
    for name in names:  # warm-up step (state construction, first roots / refresh)
        reg, hp, _, _ = CONFIGS[name]
        opt = make_optimizer(reg, **hp)
        state = opt.init(params0)
        params, state, _ = opt.update(params0, state, oracle)
        runs[name] = {"opt": opt, "params": params, "state": state, "round_means": []}
    for _ in range(rounds):
        spent = {name: 0.0 for name in names}
        for _ in range(10):
            for name in names:
                r = runs[name]
                t0 = time.perf_counter()
                r["params"], r["state"], _ = r["opt"].update(r["params"], r["state"], oracle)
                spent[name] += time.perf_counter() - t0
        for name in names:
            runs[name]["round_means"].append(spent[name] / 10)
    return {name: runs[name]["round_means"] for name in names}


# --- the same model in other libraries (each optional) ----------------------------------------------
def _torch_steps(X, y, params0):
    """{name: step()} of torch.optim (and pytorch_optimizer) on the same MLP, float64; {} without torch."""
    torch = B.optional("torch")
    if torch is None:
        return {}
    from refopt.verify.external import torch_network  # noqa: PLC0415 (imports torch)
    B.torch_threads(torch)   # the BLAS threads refopt runs with
    Xt, yt = torch.tensor(X), torch.tensor(y)
    spec = {"type": "mlp", "activations": ["tanh"] * (len(params0) - 1) + ["identity"]}

    def stepper(make, create_graph=False):
        net = torch_network(spec, params0)
        opt = make(net.parameters())

        def step():
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(net(Xt), yt)
            loss.backward(create_graph=create_graph)
            opt.step()
        return step

    steps = {"torch sgd": stepper(lambda ps: torch.optim.SGD(ps, lr=0.01)),
             "torch adam": stepper(lambda ps: torch.optim.Adam(ps, lr=1e-3)),
             "torch adagrad": stepper(lambda ps: torch.optim.Adagrad(ps, lr=0.01))}
    po = B.optional("pytorch_optimizer")
    if po is not None:
        for name, make, graph in (   # the configurations above: T = 10 roots, k = 10 refreshes
                ("pytorch_optimizer Shampoo T=10",
                 lambda ps: po.Shampoo(ps, lr=0.01, preconditioning_compute_steps=10), False),
                ("pytorch_optimizer AdaHessian", lambda ps: po.AdaHessian(ps, lr=0.1), True),
                ("pytorch_optimizer SophiaH k=10", lambda ps: po.SophiaH(ps, lr=1e-3, update_period=10), True)):
            try:
                s = stepper(make, graph)
                s()
                steps[name] = s
            except Exception as exc:  # an API this script does not know: skip, say why
                print(f"  ({name} skipped: {type(exc).__name__}: {str(exc)[:80]})")
    return steps


def _optax_steps(X, y, params0):
    """{name: step()} of optax.sgd / optax.adam under jax.jit on the same MLP, float64; {} without them."""
    jax, optax = B.optional("jax"), B.optional("optax")
    if jax is None or optax is None:
        return {}
    jax.config.update("jax_enable_x64", True)
    jnp = jax.numpy
    Xj, yj = jnp.asarray(X), jnp.asarray(y)

    def loss_fn(ps):
        a = Xj
        for i, p in enumerate(ps):
            a = a @ p["W"] + p["b"]
            if i < len(ps) - 1:
                a = jnp.tanh(a)
        return jnp.mean(jax.nn.logsumexp(a, axis=1) - a[jnp.arange(a.shape[0]), yj])

    def stepper(tx):
        box = {"p": [{k: jnp.asarray(v) for k, v in p.items()} for p in params0]}
        box["s"] = tx.init(box["p"])

        @jax.jit
        def update(ps, st):
            g = jax.grad(loss_fn)(ps)
            u, st = tx.update(g, st, ps)
            return optax.apply_updates(ps, u), st

        def step():
            box["p"], box["s"] = update(box["p"], box["s"])
            jax.block_until_ready(box["p"])
        return step
    return {"optax sgd": stepper(optax.sgd(0.01)), "optax adam": stepper(optax.adam(1e-3))}


def _steps_or_none(make, X, y, params0) -> dict:
    """``make``'s steps, each run once (compiled, warmed up); {} with the reason printed if the library's API is
    not the one this script knows."""
    try:
        steps = make(X, y, params0)
        for step in steps.values():
            step()
        return steps
    except Exception as exc:
        print(f"  ({make.__name__.strip('_')} skipped: {type(exc).__name__}: {str(exc)[:80]})")
        return {}


def time_references(X, y, params0, rounds: int) -> dict:
    """{library step: {ms, ratio to that library's own SGD step}} for the installed libraries."""
    import warnings  # noqa: PLC0415
    warnings.filterwarnings("ignore", message="Using backward\\(\\) with create_graph=True")   # torch's, for AdaHessian
    out = {}
    for base, make in (("torch sgd", _torch_steps), ("optax sgd", _optax_steps)):
        steps = _steps_or_none(make, X, y, params0)
        if not steps:
            continue

        def ten(step):
            def run():
                for _ in range(10):
                    step()
            return run
        times = B.interleaved({name: ten(s) for name, s in steps.items()}, rounds)
        for name, ts in times.items():
            ratios = B.per_round_ratios(ts, times[base])
            out[name] = {"ms": 1e3 * statistics.median(ts) / 10, "ratio": B.spread(ratios), "base": base}
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    B.common_arguments(ap, quick="3 rounds instead of 5 (about 20 s)", rounds="rounds of 10 steps per optimizer")
    ap.add_argument("--only", nargs="*", default=None, help="subset of the configurations")
    args = ap.parse_args(argv)
    B.apply_threads(args.threads)
    rounds = args.rounds or (3 if args.quick else 5)
    names = args.only or list(CONFIGS)
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        ap.error(f"unknown configuration(s) {unknown}; choose from {list(CONFIGS)}")
    for needed in ("adam", "sgd"):   # the SGD step is every ratio's base, Adam's excess is in AdaHessian's bound
        if needed not in names:
            names = [needed] + names

    model, oracle, X, y = build_problem()
    params0 = model.init(0)
    peak = B.matmul_peak()
    eigh_ms = {name: 1e3 * B.decomposition_seconds("eigh", shampoo_root_sizes(block))
               for name, block in (("shampoo T=10", None), ("shampoo T=10 block=128", 128))}
    times = time_refopt(names, rounds, oracle, params0)
    peak = max(peak, B.matmul_peak())
    base = times["sgd"]
    sgd_ms = 1e3 * statistics.median(base)
    adam_excess = 1e3 * statistics.median([a - s for a, s in zip(times["adam"], base)])
    bound = bounds(sgd_ms, adam_excess, eigh_ms)
    threads = B.blas_threads()
    results = {"script": "bench_adaptive", "problem": "MLP 256-512-512-10 tanh, softmax CE, batch 512, float64",
               "threads": threads, "rounds": rounds, "peak_gflops": peak, "sgd_ms": sgd_ms,
               "eigh_ms": eigh_ms, "measurements": [], "references": {}}
    print(f"{results['problem']}; {rounds} round(s) of 10 steps; BLAS threads {threads}; 512³ matmul "
          f"{peak:.1f} GFLOP/s")
    print(f"{'optimizer':24s} {'ms/step':>8s} {'× SGD':>6s} {'range':>11s} {'bound':>6s} {'÷ bound':>8s} "
          f"{'% peak':>7s}  target")
    for name in names:
        ts = times[name]
        ratios = B.per_round_ratios(ts, base)
        b, flops = bound[name]
        to_bound = [r / b for r in ratios]
        _, _, target, against = CONFIGS[name]
        judged = to_bound if against == "bound" else ratios  # untargeted rows: against the SGD step
        med = statistics.median(judged)
        met = None if target is None else med <= target
        frac = flops / statistics.median(ts) / (peak * 1e9)
        verdict = "" if target is None else (f"≤ {target:g}× {'SGD' if against == 'sgd' else 'bound'} "
                                             + ("met" if met else "MISSED"))
        r = B.spread(ratios)
        print(f"{name:24s} {1e3 * statistics.median(ts):8.1f} {r['median']:6.2f} {B.fmt_range(r):>11s} "
              f"{b:6.2f} {statistics.median(to_bound):8.2f} {100 * frac:6.0f}%  {verdict}")
        results["measurements"].append({
            "what": f"{name}, per step", "name": name, "unit": "× SGD step" if against != "bound" else "× bound",
            "ms": B.spread([1e3 * t for t in ts]), "ratio": r, "bound": b, "to_bound": B.spread(to_bound),
            "median": med, "range": [min(judged), max(judged)], "target": target, "target_on": against,
            "met": met, "gflop": flops / 1e9, "peak_fraction": frac})
    print(f"(Shampoo's eigh of its statistics, timed here: {eigh_ms['shampoo T=10']:.1f} ms per refresh, "
          f"{eigh_ms['shampoo T=10 block=128']:.1f} ms with block_size=128; AdaHessian's bound includes Adam's "
          f"measured excess {adam_excess:.2f} ms)")

    fixed = FixedGradient(*oracle.value_and_grad(params0))
    arith = {name: arithmetic_ms(name, params0, fixed) for name in ["sgd"] + [n for n in GRADIENT_ONLY
                                                                                if n in names and n != "sgd"]}
    print(f"\noptimizer arithmetic on a fixed gradient (ms/step) and the implied ratio "
          f"(SGD step {sgd_ms:.1f} ms, of which {arith['sgd']:.1f} ms arithmetic):")
    for name, ms in arith.items():
        implied = (sgd_ms - arith["sgd"] + ms) / sgd_ms
        print(f"{name:24s} {ms:8.2f} {implied:6.2f}")
        entry = next(m for m in results["measurements"] if m["name"] == name)
        entry["arithmetic_ms"], entry["implied_ratio"] = ms, implied

    refs = time_references(X, y, params0, rounds)
    if refs:
        print("\nthe same model in other libraries (ratio to that library's own SGD step):")
        for name, r in refs.items():
            print(f"{name:30s} {r['ms']:8.1f} ms {r['ratio']['median']:6.2f}× {r['base']} "
                  f"({B.fmt_range(r['ratio'])})")
    else:
        print("\n(torch, pytorch_optimizer and jax/optax are not installed: no side-by-side timings)")
    results["references"] = refs
    B.write_json(args.json, results)
    return results


if __name__ == "__main__":
    main()
