"""Benchmark refopt's autodiff against a hand-written NumPy backprop, its flop bound and other autodiffs.

Model: MLP 256-512-512-10, tanh, softmax cross-entropy (mean), batch 512, float64; then a tiny MLP
(10-32-32-3, batch 32) where the tracer's overhead per node, not the matrix products, sets the time.

Every function is timed in interleaved rounds (one call of each per round, in a fixed order; the tiny
model's calls in short loops), so load from other processes hits all of them alike; each row prints the
median and the range (min–max) over the rounds. Columns:

* ratio: to the hand-written backprop for gradients, to refopt's gradient for HVP / GGN products;
* bound: time / (matmul flops / peak), where peak is a 512³ float64 matmul timed before and after the
  rounds (``_bench.matmul_peak``, the faster of the two) and
  the flops are those of the model's matrix products only, 2·B·fan_in·fan_out each. Per layer l
  (0 = first; its input X needs no cotangent, so the first layer skips the products that would make one):
  gradient 3 products (2 for l = 0): forward, weight gradient, input cotangent; one-shot HVP
  (forward-over-reverse; the weight gradients' primal products are never computed) 8 (3);
  ``hvp_operator`` per product (one reverse sweep of the recorded gradient) 6 (2); record + one product
  9 (4); GGN-vector product (one jvp, one pullback) 5 (3). Elementwise work is not in the bound, so 1.0
  is out of reach; the bound says how far from the matrix products' own time a measurement is;
* peak: the fraction of the measured matmul peak achieved (flops / time / peak).

``--json`` (bench_all.py's summary) writes, per round's ratios (median, range): the gradient against the
hand-written backprop (target ≤ 1.05, with its peak fraction) and the tiny model's (target ≤ 3); the one-shot
HVP, the ``hvp_operator`` product, the one-shot GGN-vector product and the GGN operator's product against
refopt's gradient, each with its flop ratio to the gradient as the bound (PRODUCTS: 2.38, 1.75, 1.63, 1.63
on this MLP); HIPS autograd's gradients against the hand-written ones when it is installed.

The thread count in effect is read from threadpoolctl when it is installed, else from the environment.
torch (eager), jax (jit) and HIPS autograd are timed on the same model when they are importable;
``--baseline DIR`` times another refopt checkout (DIR holds its ``refopt`` package, e.g. an older
commit unpacked with ``git archive``) in the same rounds, for before/after numbers.

Run:  python scripts/bench_autodiff.py [--quick] [--rounds N] [--threads N] [--baseline DIR] [--profile]

``--threads N`` sets the BLAS threads (the environment variables, before NumPy is imported, when run as a
script; threadpoolctl otherwise). On a 2-core machine shared with other work, ``--threads 1`` (or
``OPENBLAS_NUM_THREADS=1``) gives the steadiest ratios. ``--profile`` adds where the tiny model's time
goes (phases of the gradient, and cProfile's functions by own time).
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _bench as B  # noqa: E402  (the shared thread, timing and peak helpers)

if __name__ == "__main__":  # --threads N, before NumPy is imported: the BLAS reads its thread count when it loads
    B.preset_threads()

import argparse  # noqa: E402
import cProfile  # noqa: E402
import importlib  # noqa: E402
import importlib.util  # noqa: E402
import io  # noqa: E402
import platform  # noqa: E402
import pstats  # noqa: E402
import statistics  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))  # run from a checkout

from refopt import autodiff as ad  # noqa: E402
from refopt import curvature as C  # noqa: E402
from refopt import tree as T  # noqa: E402
from refopt.autodiff import core  # noqa: E402
from refopt.nn import MLP, SoftmaxCrossEntropy  # noqa: E402
from refopt.oracle import Oracle  # noqa: E402

BIG, BIG_BATCH = [256, 512, 512, 10], 512
TINY, TINY_BATCH = [10, 32, 32, 3], 32
PEAK_N = 512

# Matrix products per layer (first layer, later layers) for each kind of measurement (module docs); the
# gradient's (2, 3) are _bench.mlp_flops's.
PRODUCTS = {"hvp": (3, 8), "hvp_op": (2, 6), "hvp_rec": (4, 9), "ggn": (3, 5)}


# ---------------------------------------------------------------------------------------------------
# Environment.
def load_refopt(root: str, name: str = "refopt_baseline"):
    """The refopt package under ``root`` (a checkout's top folder) imported as ``name``, beside this one."""
    init = os.path.join(root, "refopt", "__init__.py")
    if not os.path.exists(init):
        raise SystemExit(f"--baseline: no refopt package in {root}")
    spec = importlib.util.spec_from_file_location(name, init, submodule_search_locations=[os.path.dirname(init)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------------------------------------------
# Flops.
def matmul_flops(sizes, batch, kind) -> float:
    """Flops of the matrix products of one ``kind`` of measurement on an MLP (see PRODUCTS); the gradient's
    are ``_bench.mlp_flops``'s."""
    if kind == "grad":
        return B.mlp_flops(sizes, batch)["gradient"]
    first, later = PRODUCTS[kind]
    layers = enumerate(zip(sizes[:-1], sizes[1:]))
    return sum(2.0 * batch * i * o * (first if l == 0 else later) for l, (i, o) in layers)


def flop_ratio(sizes, batch, kind) -> float:
    """The flop bound of a ``kind`` measurement in gradients: its matrix products' flops ÷ the gradient's."""
    return matmul_flops(sizes, batch, kind) / matmul_flops(sizes, batch, "grad")


def report(rows, times, peak, sizes, batch, unit="ms") -> None:
    """Print one line per (label, name, kind, reference name): median, range, ratio, bound, peak."""
    scale = 1e3 if unit == "ms" else 1e6
    print(f"  {'measurement':44s} {'median':>9s} {'range (min-max)':>19s}  {'ratio':>16s}  "
          f"{'bound':>6s}  {'peak':>5s}")
    for label, name, kind, ref in rows:
        if name not in times:
            continue
        ts = times[name]
        med = statistics.median(ts)
        line = (f"  {label:44s} {med * scale:7.3f}{unit} {min(ts) * scale:8.3f}-{max(ts) * scale:<9.3f} ")
        if ref is not None and ref[1] in times:
            line += f" {med / statistics.median(times[ref[1]]):5.2f}x {ref[0]:>9s}"
        else:
            line += " " * 17
        if kind is not None and peak is not None:
            flops = matmul_flops(sizes, batch, kind)
            line += f"  {med / (flops / peak):5.2f}x  {flops / med / peak:5.1%}"
        print(line)


# ---------------------------------------------------------------------------------------------------
# The model, written out and in other libraries.
def problem(sizes, batch, seed=0):
    model = MLP(sizes, activation="tanh")
    params = model.init(seed)
    gen = np.random.default_rng(seed + 1)
    X = gen.standard_normal((batch, sizes[0]))
    y = gen.integers(0, sizes[-1], size=batch)
    v = T.unravel(gen.standard_normal(T.size(params)), params)
    return model, params, X, y, v


def handwritten_value_and_grad(params, X, y):
    """Forward and backward pass of a tanh MLP with softmax cross-entropy (mean), written out."""
    B = X.shape[0]
    acts = [X]
    a = X
    for l, p in enumerate(params):
        s = a @ p["W"] + p["b"]
        a = np.tanh(s) if l < len(params) - 1 else s
        acts.append(a)
    z = acts[-1]
    m = z.max(axis=1, keepdims=True)
    e = np.exp(z - m)
    se = e.sum(axis=1, keepdims=True)
    loss = float(np.mean(np.log(se[:, 0]) + m[:, 0] - z[np.arange(B), y]))
    delta = e / se
    delta[np.arange(B), y] -= 1.0
    delta /= B
    grads = [None] * len(params)
    for l in range(len(params) - 1, -1, -1):
        a_in = acts[l]
        grads[l] = {"W": a_in.T @ delta, "b": delta.sum(axis=0)}
        if l:
            delta = (delta @ params[l]["W"].T) * (1.0 - acts[l] ** 2)
    return loss, grads


def handwritten_products(params, X, y):
    """Only the hand-written backprop's matrix products (same shapes): the matmul part of its time."""
    a = X
    acts = [X]
    for p in params:
        a = a @ p["W"]
        acts.append(a)
    delta = np.ones_like(acts[-1])
    for l in range(len(params) - 1, -1, -1):
        acts[l].T @ delta
        if l:
            delta = delta @ params[l]["W"].T


def refopt_fns(pkg, model, params, X, y, v, big: bool) -> dict:
    """The refopt measurements (``pkg``: this refopt or a baseline's package) on one problem."""
    adp = importlib.import_module(pkg.__name__ + ".autodiff")
    nnp = importlib.import_module(pkg.__name__ + ".nn")
    loss = nnp.SoftmaxCrossEntropy()
    m = nnp.MLP(model.sizes, activation="tanh")

    def f(p):
        return loss(m.apply(p, X), y, check=False)

    vg = adp.value_and_grad(f)
    fns = {"grad": lambda: vg(params)}
    if big:
        fns["hvp"] = lambda: adp.hvp(f, params, v)
    return fns


def torch_fns(params, X, y, v, threads):
    try:
        import torch  # noqa: PLC0415 (optional)
    except ImportError:
        return {}
    B.torch_threads(torch)   # the BLAS threads refopt runs with
    P = [torch.tensor(p[k], requires_grad=True) for p in params for k in ("W", "b")]
    V = [torch.tensor(u[k]) for u in v for k in ("W", "b")] if v is not None else None
    Xt, yt = torch.tensor(X), torch.tensor(y)

    def loss():
        a = Xt
        for l in range(len(params)):
            a = a @ P[2 * l] + P[2 * l + 1]
            a = torch.tanh(a) if l < len(params) - 1 else a
        return torch.nn.functional.cross_entropy(a, yt)

    def grad():
        value = loss()
        return value, torch.autograd.grad(value, P)

    def hvp():  # reverse-over-reverse: the gradient recorded, then one more sweep
        g = torch.autograd.grad(loss(), P, create_graph=True)
        return torch.autograd.grad(g, P, V)

    return {"torch": grad, "torch_hvp": hvp} if V is not None else {"torch": grad}


def jax_fns(params, X, y, v):
    try:
        import jax  # noqa: PLC0415 (optional)
    except ImportError:
        return {}
    jax.config.update("jax_enable_x64", True)
    jnp = jax.numpy
    P = [(jnp.asarray(p["W"]), jnp.asarray(p["b"])) for p in params]
    Xj, yj = jnp.asarray(X), jnp.asarray(y)

    def loss(P):
        a = Xj
        for l, (W, b) in enumerate(P):
            a = a @ W + b
            a = jnp.tanh(a) if l < len(P) - 1 else a
        return jnp.mean(jax.nn.logsumexp(a, axis=1) - a[jnp.arange(a.shape[0]), yj])

    vg = jax.jit(jax.value_and_grad(loss))
    fns = {"jax": lambda: jax.block_until_ready(vg(P))}
    if v is not None:
        V = [(jnp.asarray(u["W"]), jnp.asarray(u["b"])) for u in v]
        hv = jax.jit(lambda P, V: jax.jvp(jax.grad(loss), (P,), (V,))[1])
        fns["jax_hvp"] = lambda: jax.block_until_ready(hv(P, V))
    return fns


def autograd_fns(params, X, y, v):
    try:
        import autograd  # noqa: PLC0415 (optional)
        import autograd.numpy as anp  # noqa: PLC0415
    except ImportError:
        return {}

    def loss(params):
        a = X
        for l, p in enumerate(params):
            a = anp.dot(a, p["W"]) + p["b"]
            a = anp.tanh(a) if l < len(params) - 1 else a
        m = anp.max(a, axis=1, keepdims=True)
        lse = anp.log(anp.sum(anp.exp(a - m), axis=1)) + m[:, 0]
        return anp.mean(lse - a[np.arange(X.shape[0]), y])

    vg = autograd.value_and_grad(loss)
    fns = {"autograd": lambda: vg(params)}
    if v is not None:
        hvp = autograd.make_hvp(loss)
        fns["autograd_hvp"] = lambda: hvp(params)[0](v)
    return fns


# ---------------------------------------------------------------------------------------------------
def count_nodes(f, params) -> int:
    """Nodes recorded by one gradient of ``f`` (a reverse trace walked from its output)."""
    trace = core.new_trace_id()
    leaves, treedef = T.flatten(params)
    out = f(T.unflatten(treedef, [core.Box(x, trace, core.Node(None, x, (), {}, [])) for x in leaves]))
    seen, stack = set(), [out.node]
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        stack.extend(p for _, p in node.parents)
    return len(seen) - len(leaves)


def big_model(args, baseline, threads) -> float:
    model, params, X, y, v = problem(BIG, BIG_BATCH)
    loss = SoftmaxCrossEntropy()
    oracle = Oracle(model, loss, X, y)

    def f(p):
        return loss(model.apply(p, X), y, check=False)

    # Every method computes the same gradient, so the timings compare like with like.
    ref_val, ref_g = handwritten_value_and_grad(params, X, y)
    val, g = ad.value_and_grad(f)(params)
    assert abs(float(val) - ref_val) < 1e-10 and float(T.norm(T.sub(g, ref_g))) < 1e-10

    _, hv = ad.hvp_operator(f, params)
    op = oracle.curvature_operator(params, "ggn")
    fns = {"hand": lambda: handwritten_value_and_grad(params, X, y)}
    fns.update(refopt_fns(sys.modules["refopt"], model, params, X, y, v, big=True))
    fns.update({
        "hvp_op": lambda: hv(v),
        "hvp_rec": lambda: ad.hvp_operator(f, params)[1](v),
        "ggn": lambda: C.ggn_vp(model, loss, params, X, y, v),
        "ggn_op": lambda: op(v),
    })
    if baseline is not None:
        fns.update({f"base_{k}": fn for k, fn in refopt_fns(baseline, model, params, X, y, v, big=True).items()})
    others = {**autograd_fns(params, X, y, v), **torch_fns(params, X, y, v, threads), **jax_fns(params, X, y, v)}
    fns.update(others)
    peaks = [B.matmul_peak(PEAK_N)]
    times = B.interleaved(fns, args.rounds)
    peaks.append(B.matmul_peak(PEAK_N))
    peak = 1e9 * max(peaks)   # FLOP/s
    print(f"MLP {'-'.join(map(str, BIG))}, tanh, softmax CE (mean), batch {BIG_BATCH}, float64; "
          f"{args.rounds} interleaved rounds")
    flops = matmul_flops(BIG, BIG_BATCH, "grad")
    print(f"  matmul peak ({PEAK_N}³ float64): {peak / 1e9:.1f} GFLOP/s; gradient's matrix products: "
          f"{flops / 1e6:.0f} MFLOP (bound {flops / peak * 1e3:.2f} ms)")
    H, R = ("hand-written", "hand"), ("refopt grad", "grad")
    rows = [
        ("hand-written backprop (value + grad)", "hand", "grad", None),
        ("refopt value_and_grad", "grad", "grad", H),
        ("refopt hvp (one-shot, fwd-over-rev)", "hvp", "hvp", R),
        ("refopt hvp_operator (per product)", "hvp_op", "hvp_op", R),
        ("refopt hvp_operator (record + 1 product)", "hvp_rec", "hvp_rec", R),
        ("refopt ggn_vp (one-shot)", "ggn", "ggn", R),
        ("refopt curvature_operator ggn (per product)", "ggn_op", "ggn", R),
        ("baseline refopt value_and_grad", "base_grad", "grad", H),
        ("baseline refopt hvp (one-shot)", "base_hvp", "hvp", ("base grad", "base_grad")),
        ("HIPS autograd value_and_grad", "autograd", "grad", H),
        ("HIPS autograd make_hvp", "autograd_hvp", "hvp_rec", ("autograd", "autograd")),
        ("torch eager value + grad", "torch", "grad", H),
        ("torch double-backward HVP", "torch_hvp", "hvp_rec", ("torch", "torch")),
        ("jax.jit value_and_grad", "jax", "grad", H),
        ("jax.jit jvp(grad) HVP", "jax_hvp", "hvp", ("jax", "jax")),
    ]
    report(rows, times, peak, BIG, BIG_BATCH)
    _load_warning(peaks)
    where = f"MLP {'-'.join(map(str, BIG))}"
    _measure(times, "refopt gradient / hand-written", "grad", "hand", where, target=1.05,
             peak_fraction=flops / statistics.median(times["grad"]) / peak)
    for label, name, kind in (("refopt hvp one-shot (fwd-over-rev) / refopt gradient", "hvp", "hvp"),
                              ("refopt hvp_operator per product / refopt gradient", "hvp_op", "hvp_op"),
                              ("refopt ggn_vp one-shot / refopt gradient", "ggn", "ggn"),
                              ("refopt GGN operator per product / refopt gradient", "ggn_op", "ggn")):
        _measure(times, label, name, "grad", where, bound=flop_ratio(BIG, BIG_BATCH, kind))
    if "autograd" in times:
        _measure(times, "HIPS autograd gradient / hand-written", "autograd", "hand", where)
    if "base_grad" in times:
        _measure(times, "refopt gradient / baseline's", "grad", "base_grad")
    libraries = (("HIPS autograd", "autograd"), ("torch", "torch"), ("jax", "jax"))
    missing = [lib for lib, key in libraries if key not in times]
    if missing:
        print(f"  not installed, not timed: {', '.join(missing)}")
    return peak


def tiny_model(args, baseline, threads, peak) -> None:
    model, params, X, y, _ = problem(TINY, TINY_BATCH, seed=3)
    loss = SoftmaxCrossEntropy()

    def f(p):
        return loss(model.apply(p, X), y, check=False)

    fns = {"hand": lambda: handwritten_value_and_grad(params, X, y)}
    fns.update(refopt_fns(sys.modules["refopt"], model, params, X, y, None, big=False))
    fns["checked"] = lambda: ad.value_and_grad(lambda p: loss(model.apply(p, X), y))(params)
    fns["oracle"] = lambda: Oracle(model, loss, X, y).value_and_grad(params)
    if baseline is not None:
        fns.update({f"base_{k}": fn for k, fn in refopt_fns(baseline, model, params, X, y, None, big=False).items()})
    fns.update({**autograd_fns(params, X, y, None), **torch_fns(params, X, y, None, threads),
                **jax_fns(params, X, y, None)})
    inner = {name: args.inner for name in fns}
    times = B.interleaved(fns, args.rounds, inner=inner)
    nodes = count_nodes(f, params)
    print(f"\nMLP {'-'.join(map(str, TINY))}, batch {TINY_BATCH}; {args.rounds} interleaved rounds of "
          f"{args.inner} calls each")
    H = ("hand-written", "hand")
    rows = [("hand-written backprop", "hand", "grad", H),
            ("refopt value_and_grad", "grad", "grad", H),
            ("refopt value_and_grad, checked loss", "checked", "grad", H),
            ("refopt new Oracle + value_and_grad", "oracle", "grad", H),
            ("baseline refopt value_and_grad", "base_grad", "grad", H),
            ("HIPS autograd value_and_grad", "autograd", "grad", H),
            ("torch eager value + grad", "torch", "grad", H),
            ("jax.jit value_and_grad", "jax", "grad", H)]
    print(f"  the bound uses the {PEAK_N}³ peak measured above (timed apart: a large product between these calls "
          f"would evict their data); the products are {matmul_flops(TINY, TINY_BATCH, 'grad') / 1e6:.2f} MFLOP, so "
          "per-call overhead, not arithmetic, sets every time below")
    report(rows, times, peak, TINY, TINY_BATCH, unit="us")
    t_grad, t_hand = statistics.median(times["grad"]), statistics.median(times["hand"])
    print(f"  refopt records {nodes} nodes per gradient: {t_grad / nodes * 1e6:.1f} µs per node in all, "
          f"{(t_grad - t_hand) / nodes * 1e6:.1f} µs per node above the hand-written backprop")
    where = f"MLP {'-'.join(map(str, TINY))}"
    _measure(times, "tiny gradient / hand-written", "grad", "hand", where, target=3.0)
    if "autograd" in times:
        _measure(times, "HIPS autograd tiny gradient / hand-written", "autograd", "hand", where)
    if "base_grad" in times:
        _measure(times, "tiny gradient / baseline's", "grad", "base_grad")
    if args.profile:
        profile_tiny(model, loss, params, X, y, args)


def _load_warning(peaks) -> None:
    """Warn when the matmul peak measured before and after the rounds differ by more than 30 %."""
    spread = max(peaks) / min(peaks)
    if spread > 1.3:
        print(f"  warning: the {PEAK_N}³ matmul peak differed {spread:.1f}x between before and after the rounds: "
              "other work was competing for the cores, and the ratios above are unreliable")


MEASUREMENTS: list = []  # what --json writes: one entry per summary line ({what, unit, median, range, target, ...})
UNITS = {"hand": "× hand-written", "grad": "× refopt gradient"}


def _measure(times, label, a, b, what: str = "", target=None, bound=None, peak_fraction=None) -> None:
    """Print and record times[a] ÷ times[b], round by round (median, range), against ``target`` (≤) if given;
    ``bound`` is the flop ratio of the two measurements (the same unit)."""
    r = B.spread(B.per_round_ratios(times[a], times[b]))
    verdict = "" if target is None else f"  target <= {target:g}: {'met' if r['median'] <= target else 'MISSED'}"
    extra = "" if bound is None else f"; flop bound {bound:.2f}, {r['median'] / bound:.2f}x it"
    print(f"  {label}: {r['median']:.3f} (per-round ratios, range {B.fmt_range(r)}){extra}{verdict}")
    MEASUREMENTS.append({"what": f"{label} ({what})" if what else label, "unit": UNITS.get(b, f"× {b}"),
                         "median": r["median"], "range": [r["min"], r["max"]], "target": target, "bound": bound,
                         "met": None if target is None else r["median"] <= target,
                         "peak_fraction": peak_fraction})


def profile_tiny(model, loss, params, X, y, args) -> None:
    """Where the tiny gradient's time goes: phases against the hand-written pieces, then cProfile."""
    def f(p):
        return loss(model.apply(p, X), y, check=False)

    vg = ad.value_and_grad(f)
    _, back = ad.vjp(f, params)
    one = np.ones(())
    fns = {"grad": lambda: vg(params), "hand": lambda: handwritten_value_and_grad(params, X, y),
           "hand_mm": lambda: handwritten_products(params, X, y), "forward": lambda: f(params),
           "record": lambda: ad.vjp(f, params), "sweep": lambda: back(one)}
    times = B.interleaved(fns, args.rounds, inner={k: args.inner for k in fns})
    m = {k: statistics.median(v) * 1e6 for k, v in times.items()}
    print(f"\n  where the tiny gradient's {m['grad']:.0f} µs go (medians, µs):")
    print(f"    hand-written backprop {m['hand']:.0f}, of which its {len(params) * 3 - 1} matrix products "
          f"{m['hand_mm']:.0f}")
    print(f"    refopt forward without a trace {m['forward']:.0f}; forward recorded (vjp) {m['record']:.0f}; "
          f"one reverse sweep of a recorded graph {m['sweep']:.0f}")
    print(f"    shares of the refopt gradient: matrix products {m['hand_mm'] / m['grad']:.0%}, the rest of the "
          f"hand-written work (elementwise, loss) {(m['hand'] - m['hand_mm']) / m['grad']:.0%}, "
          f"tracer and refopt's extra NumPy calls {(m['grad'] - m['hand']) / m['grad']:.0%}")
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(20 * args.inner):
        vg(params)
    prof.disable()
    out = io.StringIO()
    stats = pstats.Stats(prof, stream=out).sort_stats("tottime")
    stats.print_stats(12)
    total_calls = sum(nc for (_, _, _), (_, nc, _, _, _) in stats.stats.items())
    print(f"    cProfile: {total_calls / (20 * args.inner):.0f} Python-visible calls per gradient; "
          "by own time (profiler overhead inflates the small functions):")
    for line in out.getvalue().splitlines():
        if line.strip() and (line.lstrip()[0].isdigit() or line.lstrip().startswith("ncalls")):
            print("      " + line.strip())


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    B.common_arguments(parser, quick="fewer rounds (a smoke run, well under 30 s)")
    parser.add_argument("--inner", type=B.positive_int, default=None, help="calls per round for the tiny model")
    parser.add_argument("--baseline", default=None, help="a checkout whose refopt is timed beside this one")
    parser.add_argument("--profile", action="store_true", help="where the tiny model's gradient time goes")
    args = parser.parse_args(argv)
    args.rounds = args.rounds or (5 if args.quick else 15)
    args.inner = args.inner or (20 if args.quick else 50)
    if args.threads is not None and not B.apply_threads(args.threads) \
            and os.environ.get("OPENBLAS_NUM_THREADS") != str(args.threads):
        print(f"warning: --threads {args.threads} needs threadpoolctl once NumPy is loaded; "
              f"BLAS threads: {B.blas_threads()}")
    baseline = load_refopt(args.baseline) if args.baseline else None
    print(f"refopt autodiff benchmark: {platform.machine()} {platform.processor() or ''}, {B.available_cpus()} CPUs, "
          f"Python {platform.python_version()}, NumPy {np.__version__}; BLAS threads: {B.blas_threads()}"
          + (f"; baseline: {args.baseline}" if baseline else ""))
    MEASUREMENTS.clear()
    peak = big_model(args, baseline, args.threads)
    tiny_model(args, baseline, args.threads, peak)
    B.write_json(args.json, {"threads": B.blas_threads(), "measurements": MEASUREMENTS})


if __name__ == "__main__":
    main()
