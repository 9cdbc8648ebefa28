"""Shared pieces of the benchmark scripts: BLAS threads, interleaved timing, the matmul peak, flop counts, JSON.

Conventions (every ``scripts/bench_*.py`` that imports this module follows them):

* Threads. ``preset_threads()`` runs before NumPy is imported: ``--threads N`` on the command line (else
  ``default``, else nothing) sets OPENBLAS_NUM_THREADS, OMP_NUM_THREADS and MKL_NUM_THREADS unless the
  caller's environment already sets them; ``apply_threads(n)`` limits a running process through
  threadpoolctl when it is importable. ``blas_threads()`` reports the count in effect: threadpoolctl's
  (if importable), else the environment variable, else "unknown". No new runtime dependency.
* Options. ``common_arguments(parser)`` adds --quick, --rounds, --threads and --json to a script's parser;
  --rounds and --threads below 1 are the parser's error.
* Timing. ``interleaved(fns, rounds, inner=...)`` times the functions round robin (each round calls every
  function once, or ``inner[name]`` times in a loop, in turn), after ``warmup`` calls of each, so a load
  spike on a shared machine hits all of them alike; ratios are taken round by round (``per_round_ratios``)
  and reported as the median with the range (min–max) over the rounds (``spread``).
* Peak. ``matmul_peak()`` times a 512³ float64 matmul in the calling process (the fastest of several,
  before and after the measurements) and returns GFLOP/s = 2·512³ / t: the "achieved fraction of peak" of
  a measurement is its counted flops / its time / that rate.
* Flops. A gemm of (m × k)(k × n) counts 2mkn; a symmetric product XᵀX of X (k × n) counts n²k (half:
  NumPy's matmul calls BLAS syrk for it, and only one triangle is needed). Decompositions are measured,
  not counted, for the bound (``decomposition_seconds``); for the peak fraction an n × n ``eigh`` counts
  9n³ (Golub & Van Loan, *Matrix Computations*, 4th ed., §8.3: symmetric QR with the eigenvectors
  accumulated ≈ 9n³; the tridiagonal reduction alone is 4n³/3) and an ``inv`` 2n³ (GvL §3.2: LU 2n³/3
  plus the n triangular solves).
* An MLP's gradient (``mlp_flops``): the forward s_l = a_{l−1} W_l, the weight gradients a_{l−1}ᵀ g_l and
  the input gradients g_l W_lᵀ for every layer but the first: 3 matmuls per layer, 2 for the first.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

THREAD_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def available_cpus() -> int:
    """The CPUs this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def threads_argument(argv=None):
    """The N of ``--threads N`` / ``--threads=N`` in ``argv`` (default ``sys.argv``), or None."""
    argv = sys.argv[1:] if argv is None else argv
    for i, a in enumerate(argv):
        text = argv[i + 1] if a == "--threads" and i + 1 < len(argv) else (
            a.split("=", 1)[1] if a.startswith("--threads=") else None)
        if text is not None:   # a bad value is left to the script's argument parser (check_threads) to refuse
            return int(text) if text.isdigit() and int(text) >= 1 else None
    return None


def positive_int(text: str) -> int:
    """argparse type: an integer ≥ 1 (a bad value is the parser's one-line error, exit status 2)."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {n}")
    return n


def common_arguments(parser, quick: str = "fewer rounds", rounds: str | None = "interleaved rounds per measurement"):
    """Add the options every benchmark script shares: --quick, --rounds (unless ``rounds`` is None), --threads
    and --json; --rounds and --threads must be integers ≥ 1 (None when not given, so the script's default
    applies)."""
    parser.add_argument("--quick", action="store_true", help=quick)
    if rounds is not None:
        parser.add_argument("--rounds", type=positive_int, default=None, help=rounds)
    parser.add_argument("--threads", type=positive_int, default=None,
                        help="BLAS threads (set before NumPy loads; 1: the steadiest ratios on a shared machine)")
    parser.add_argument("--json", default=None, help="write the results to this file (bench_all.py reads it)")
    return parser


def check_threads(parser, n) -> None:
    """The argument parser's one-line error unless ``--threads`` is absent or a positive integer."""
    if n is not None and n < 1:
        parser.error(f"--threads must be a positive integer, got {n}")


def preset_threads(default=None, argv=None):
    """Before NumPy's import: the BLAS thread variables from ``--threads`` (overriding the environment) or,
    failing that, ``default`` (only where the environment sets none). Returns the count set, or None."""
    n = threads_argument(argv)
    if n is not None:
        for var in THREAD_VARS:
            os.environ[var] = str(n)
        return n
    if default is not None:
        for var in THREAD_VARS:
            os.environ.setdefault(var, str(default))
        return default
    return None


def apply_threads(n) -> bool:
    """Limit the BLAS threads of this (running) process to ``n`` with threadpoolctl; False if unavailable."""
    if n is None:
        return False
    try:
        from threadpoolctl import threadpool_limits  # noqa: PLC0415 (optional)
    except ImportError:
        return False
    global _LIMITS
    _LIMITS = threadpool_limits(int(n), user_api="blas")
    return True


_LIMITS = None   # keeps threadpoolctl's limiter alive for the life of the process


def torch_threads(torch) -> int:
    """Give torch's intra-op pool the BLAS thread count in effect (1 when unknown), so that its timings beside
    refopt's use as many cores; returns the count set."""
    threads = blas_threads()
    n = int(threads) if threads.isdigit() else 1
    torch.set_num_threads(n)
    return n


def blas_threads() -> str:
    """The BLAS thread count in effect: threadpoolctl's report, else the environment variable, else "unknown"."""
    try:
        from threadpoolctl import threadpool_info  # noqa: PLC0415 (optional)
        counts = sorted({str(info["num_threads"]) for info in threadpool_info() if info.get("user_api") == "blas"})
        if counts:
            return ",".join(counts)
    except Exception:  # not installed, or a library it cannot inspect
        pass
    for var in THREAD_VARS:
        if os.environ.get(var):
            return os.environ[var]
    return "unknown"


def interleaved(fns: dict, rounds: int, warmup: int = 1, inner: dict | None = None) -> dict:
    """{name: [seconds per call, one per round]}: every ``fn()`` called once per round, in turn (round robin),
    or ``inner[name]`` times in a loop for functions too short to time alone (the loop's time ÷ its calls)."""
    inner = inner or {}
    for name, fn in fns.items():
        for _ in range(warmup * inner.get(name, 1)):
            fn()
    times = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            n = inner.get(name, 1)
            t0 = time.perf_counter()
            for _ in range(n):
                fn()
            times[name].append((time.perf_counter() - t0) / n)
    return times


def per_round_ratios(times, base) -> list:
    """times[i] / base[i] for each round i."""
    return [t / b for t, b in zip(times, base)]


def spread(values) -> dict:
    """{"median", "min", "max"} of a list of numbers."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def matmul_peak(n: int = 512, repeats: int = 7) -> float:
    """GFLOP/s of an n³ float64 matmul in this process: the fastest of ``repeats`` after one warm-up (a peak is
    what the machine can do; on a shared machine the slower runs measure the neighbours). Scripts measure it
    before and after their timings and keep the larger."""
    import numpy as np  # noqa: PLC0415 (after preset_threads)
    gen = np.random.default_rng(0)
    a, b = gen.standard_normal((n, n)), gen.standard_normal((n, n))
    a @ b
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        ts.append(time.perf_counter() - t0)
    return 2.0 * n ** 3 / min(ts) / 1e9


def gemm(m: int, k: int, n: int) -> float:
    """Flops of an (m × k)(k × n) product: 2mkn."""
    return 2.0 * m * k * n


def syrk(k: int, n: int) -> float:
    """Flops of XᵀX for X of shape (k × n): n²k (one triangle of the symmetric result)."""
    return float(n) * n * k


def eigh_flops(n: int) -> float:
    """9n³ for an n × n symmetric eigendecomposition with eigenvectors (module docs)."""
    return 9.0 * n ** 3


def inv_flops(n: int) -> float:
    """2n³ for an n × n inverse by LU (module docs)."""
    return 2.0 * n ** 3


def mlp_flops(sizes, batch: int) -> dict:
    """Matmul flops of one gradient of a dense MLP (module docs): forward, weight and input gradients."""
    layers = list(zip(sizes[:-1], sizes[1:]))
    forward = sum(gemm(batch, i, o) for i, o in layers)
    weights = sum(gemm(i, batch, o) for i, o in layers)
    inputs = sum(gemm(batch, o, i) for i, o in layers[1:])
    return {"forward": forward, "weight_grads": weights, "input_grads": inputs,
            "gradient": forward + weights + inputs}


def decomposition_seconds(kind: str, sizes, repeats: int = 3, seed: int = 0) -> float:
    """Median seconds of NumPy's ``eigh`` or ``inv`` (``kind``) of a random SPD matrix of each size in
    ``sizes``, summed: the measured bound of a refresh's decompositions."""
    import numpy as np  # noqa: PLC0415
    gen = np.random.default_rng(seed)
    fn = np.linalg.eigh if kind == "eigh" else np.linalg.inv
    total = 0.0
    for n in sizes:
        X = gen.standard_normal((2 * n, n))
        M = X.T @ X / (2 * n) + 1e-3 * np.eye(n)
        fn(M)
        ts = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn(M)
            ts.append(time.perf_counter() - t0)
        total += statistics.median(ts)
    return total


def optional(module: str):
    """The imported module, or None when it is not installed (or fails to import)."""
    try:
        return __import__(module, fromlist=["_"])
    except Exception:
        return None


def write_json(path, obj) -> None:
    """Write ``obj`` as indented JSON to ``path`` (nothing when ``path`` is None)."""
    if path:
        with open(path, "w") as fh:
            json.dump(obj, fh, indent=1, default=str)


def fmt_range(s: dict, digits: int = 2) -> str:
    """"lo–hi" of a ``spread``."""
    return f"{s['min']:.{digits}f}–{s['max']:.{digits}f}"
