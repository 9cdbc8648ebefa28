"""Run every benchmark script and print one summary table (issue 13): what, median, range, target, bound, verdict.

Each script runs as a subprocess with ``--quick`` (and ``--threads N`` when given here, which also sets
OPENBLAS_NUM_THREADS / OMP_NUM_THREADS / MKL_NUM_THREADS in its environment): bench_autodiff.py,
bench_adaptive.py, bench_kfac.py --parts cost, bench_quasi_newton.py and bench_cnn.py. Their output is shown as it
comes; the summary is built from the ``--json`` file each writes (a list of measurements with a median, a
range over interleaved rounds, a target and a bound). A script that exits without writing its file is
reported as such, its printed output above being the record.

    python scripts/bench_all.py --quick                 # under about 2 minutes on 2 cores
    python scripts/bench_all.py --quick --threads 1     # one BLAS thread (the steadiest on a shared machine)
    python scripts/bench_all.py --quick --markdown      # also the README "Measured speed" rows
    python scripts/bench_all.py --quick --json all.json

``--markdown`` prints the rows of README.md's "Measured speed" table (| what | measured | target |) from
the measured numbers, with a line naming the machine and the thread settings, so the table can be
regenerated from this command; every missed target is marked **missed**.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import _bench as B  # noqa: E402

# (label, script, extra arguments)
SCRIPTS = [
    ("autodiff", "bench_autodiff.py", []),
    ("adaptive", "bench_adaptive.py", []),
    ("kfac", "bench_kfac.py", ["--parts", "cost"]),
    ("quasi_newton", "bench_quasi_newton.py", []),
    ("cnn", "bench_cnn.py", []),
]


def run_script(label: str, script: str, extra: list, quick: bool, threads, folder: str) -> dict:
    """Run one script (output streamed), return {"label", "seconds", "returncode", "json" or None, "output"}."""
    cmd = [sys.executable, os.path.join(HERE, script)] + (["--quick"] if quick else []) + extra
    env = dict(os.environ)
    if threads is not None:
        cmd += ["--threads", str(threads)]
        for var in B.THREAD_VARS:
            env[var] = str(threads)
    path = os.path.join(folder, f"{label}.json")   # every script in SCRIPTS takes --json (B.common_arguments)
    cmd += ["--json", path]
    print(f"\n=== {' '.join(os.path.relpath(c) if c.endswith('.py') else c for c in cmd[1:])}", flush=True)
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    lines = []
    for line in proc.stdout:
        print(line, end="", flush=True)
        lines.append(line)
    proc.wait()
    seconds = time.perf_counter() - t0
    data = None
    if os.path.exists(path):
        with open(path) as fh:
            data = json.load(fh)
    return {"label": label, "script": script, "seconds": seconds, "returncode": proc.returncode, "json": data,
            "output": "".join(lines)}


def rows_of(result: dict) -> list:
    """The measurements of one script's JSON (each: what, unit, median, range, target, bound, met)."""
    data = result["json"] or {}
    parts = [data] + [v for v in data.values() if isinstance(v, dict)]   # bench_kfac nests its part "cost"
    out = []
    for part in parts:
        for m in part.get("measurements", []):
            out.append({"script": result["label"], "threads": part.get("threads", data.get("threads", "?")), **m})
    return out


def verdict(m: dict) -> str:
    if m.get("target") is None:
        return ""
    return "met" if m.get("met") else "MISSED"


def summary_table(rows: list) -> str:
    lines = [f"{'what':52s} {'median':>8s} {'range':>13s} {'unit':>16s} {'target':>8s} {'bound':>6s}  verdict",
             "-" * 118]
    for m in rows:
        rng = m.get("range") or [m["median"], m["median"]]
        target = "" if m.get("target") is None else f"≤ {m['target']:g}"
        bound = "" if m.get("bound") is None else f"{m['bound']:.2f}"
        lines.append(f"{m['what'][:52]:52s} {m['median']:8.3g} {rng[0]:6.3g}–{rng[1]:<6.3g} "
                     f"{m.get('unit', ''):>16s} {target:>8s} {bound:>6s}  {verdict(m)}")
    return "\n".join(lines)


def machine() -> str:
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    import numpy  # noqa: PLC0415 (only for its version)
    return f"{model}, {B.available_cpus()} CPUs available, NumPy {numpy.__version__}, Python {platform.python_version()}"


def markdown(rows: list, results: list, threads, quick: bool) -> str:
    """The README "Measured speed" rows (| what | measured | target |) from the measured numbers."""
    thread_counts = sorted({str(m["threads"]) for m in rows})
    cmd = "python scripts/bench_all.py" + (" --quick" if quick else "") + (f" --threads {threads}" if threads else "")
    out = [f"Measured with `{cmd} --markdown` on {machine()}; BLAS threads {', '.join(thread_counts) or '?'}; "
           "float64; medians (ranges) over interleaved rounds.", "",
           "| what | measured | target |", "|---|---|---|"]
    for m in rows:
        rng = m.get("range") or [m["median"], m["median"]]
        unit = m.get("unit", "")
        if unit.startswith("×"):
            measured = f"{m['median']:.2f}{unit} ({rng[0]:.2f}–{rng[1]:.2f})"
        else:
            measured = f"{m['median']:.3g} {unit} ({rng[0]:.3g}–{rng[1]:.3g})"
        if m.get("bound") is not None:   # a "× bound" row's bound is in SGD steps, a ratio's in its own unit
            measured += (f"; bound {m['bound']:.2f}× an SGD step" if unit == "× bound"
                         else f"; flop bound {m['bound']:.2f}{unit}" if unit.startswith("×")
                         else f"; bound {m['bound']:.2f}")
        elif m.get("bound_note"):
            measured += f"; {m['bound_note']}"
        if m.get("peak_fraction") is not None:
            measured += f"; {100 * m['peak_fraction']:.0f} % of matmul peak"
        if m.get("target") is None:
            target = ""
        else:
            on = {"sgd": "× an SGD step", "bound": "× the flop bound"}.get(m.get("target_on"), "")
            target = f"≤ {m['target']:g}{on} " + ("✓" if m.get("met") else "**missed**")
        out.append(f"| {m['what']} | {measured} | {target} |")
    for r in results:
        if r["json"] is None:
            out.append(f"| {r['script']} | (no results written: see its output above) | |")
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    B.common_arguments(ap, quick="each script with --quick (under about 2 minutes in all)", rounds=None)
    ap.add_argument("--only", nargs="*", default=None, help=f"a subset of {[s[0] for s in SCRIPTS]}")
    ap.add_argument("--markdown", action="store_true", help="print the README 'Measured speed' rows")
    args = ap.parse_args(argv)
    unknown = sorted(set(args.only or ()) - {s[0] for s in SCRIPTS})
    if unknown:
        ap.error(f"--only: unknown script(s) {unknown}; choose from {[s[0] for s in SCRIPTS]}")
    chosen = [s for s in SCRIPTS if args.only is None or s[0] in args.only]
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        results = [run_script(label, script, extra, args.quick, args.threads, folder) for label, script, extra in chosen]
    rows = [m for r in results for m in rows_of(r)]
    print(f"\n=== summary ({time.perf_counter() - t0:.0f} s; {machine()})")
    print(summary_table(rows))
    for r in results:
        state = "ok" if r["returncode"] == 0 else f"exit status {r['returncode']}"
        note = "" if r["json"] is not None else "; it wrote no results: its printed output above is the record"
        print(f"  {r['script']}: {r['seconds']:.0f} s, {state}{note}")
    if args.markdown:
        print("\n" + markdown(rows, results, args.threads, args.quick))
    B.write_json(args.json, {"machine": machine(), "threads": args.threads, "quick": args.quick, "rows": rows,
                             "scripts": [{k: v for k, v in r.items() if k != "json"} | {"json": r["json"]}
                                         for r in results]})
    return 0 if all(r["returncode"] == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
