"""The loss-surface report of a problem at given parameters, its text form and its density plot.

``analyze(problem, params)`` runs, on the full batch, what PyHessian reports and one K-FAC figure:

* "hessian_top", "ggn_top": the k eigenvalues of largest magnitude of H and of the GGN (power iteration
  with deflation, ``spectral.top_eigenpairs``; tol and max_iter as given, PyHessian's by default);
* "hessian_trace", "ggn_trace": Hutchinson's traces with their standard errors (``probes`` Rademacher probes);
* "kfac_condition": the extreme eigenvalues and the condition number θ_max/θ_min of the damped
  K-FAC-preconditioned GGN P^{-1/2}(G + λI)P^{-1/2} and, for comparison, of G + λI itself, from ``steps``
  Lanczos steps each (Ritz values lie inside the spectrum, so below n steps the condition numbers are
  lower bounds: θ_min ≥ λ_min);
* "density": stochastic Lanczos quadrature of H (``steps`` steps, ``density_probes`` probes): nodes and
  weights, and the broadening σ that ``plot_density`` uses by default.

Network analyses are skipped, with the reason in ``report["skipped"]``, for an oracle that does not
provide them (a ``FunctionOracle``: only the Hessian's). Every number is a Python float or list, so the
report is JSON as it stands; ``report["counts"]`` holds the oracle requests it made. ``progress(stage,
done, total)``, for a progress display, is called with (stage, 0, 1) when a stage starts and then after
each eigenpair, probe or Lanczos step ("kfac_condition" runs two Lanczos passes, each counting 1..steps).
"""
from __future__ import annotations

import math
import sys

from .. import tree as T
from ..optim.base import check_choice, check_int, check_nonnegative, check_positive
from . import operators as O
from . import spectral as S

__all__ = ["ANALYSES", "analyze", "format_report", "plot_density"]

ANALYSES = ("hessian_top", "ggn_top", "hessian_trace", "ggn_trace", "kfac_condition", "density")
_NEEDS = {"ggn_top": "ggn", "ggn_trace": "ggn", "kfac_condition": "layer_statistics"}
_MATRIX = {"hessian_top": "hessian", "ggn_top": "ggn", "hessian_trace": "hessian", "ggn_trace": "ggn"}


def _floats(values) -> list:
    return [float(x) for x in values]


def _eigen_entry(pairs: S.Eigenpairs, **settings) -> dict:
    return {"values": _floats(pairs.values), "residuals": _floats(pairs.residuals),
            "iterations": list(pairs.iterations), "converged": list(pairs.converged), "products": pairs.nmatvec,
            **settings}


def _trace_entry(est: S.TraceEstimate) -> dict:
    return {"estimate": est.estimate, "stderr": est.stderr, "probes": est.probes, "distribution": est.distribution}


def _extremes(op, steps: int, seed, progress, stage: str) -> tuple:
    pairs = S.lanczos_eigenpairs(op, 1, min(steps, op.n), seed=seed,
                                 callback=(lambda d, t: progress(stage, d, t)) if progress else None)
    hi, lo = float(pairs.largest.values[0]), float(pairs.smallest.values[0])
    return hi, lo, (hi / lo if lo > 0 else math.inf)


def analyze(problem, params=None, k: int = 3, max_iter: int = 100, tol: float = 1e-3, probes: int = 100,
            steps: int = 30, density_probes: int = 1, damping: float = 1e-3, damping_scheme: str = "pi",
            fisher: str = "true", seed: int = 0, analyses=None, progress=None) -> dict:
    """The report (module docs) of ``problem`` (a registry problem, whose full-batch oracle is used and whose
    ``init_params(seed)`` are the default ``params``, or an oracle with ``params`` given). ``analyses``: a
    subset of ``ANALYSES`` (default: every one the oracle supports)."""
    if hasattr(problem, "oracle") and hasattr(problem, "init_params"):
        oracle = problem.oracle()
        params = problem.init_params(seed) if params is None else params
    else:
        oracle = problem
        if params is None:
            raise ValueError("params must be given with an oracle (a problem supplies its initial params)")
    k = check_int("k", k, 1, T.size(params))
    max_iter = check_int("max_iter", max_iter, 1, S.MAX_ITERATIONS)
    tol = check_nonnegative("tol", tol)
    probes = check_int("probes", probes, 1, S.MAX_PROBES)
    steps = check_int("steps", steps, 1, S.MAX_ITERATIONS)
    density_probes = check_int("density_probes", density_probes, 1, S.MAX_PROBES)
    damping = check_positive("damping", damping)
    wanted = ANALYSES if analyses is None else tuple(check_choice("analyses", a, ANALYSES) for a in analyses)
    provides = getattr(oracle, "provides", ())
    before = oracle.counts.as_dict()
    report = {"n": T.size(params), "dtype": str(T.leaves(params)[0].dtype), "seed": seed, "loss": oracle.value(params),
              "skipped": {}}

    def stage(name):
        return (lambda d, t: progress(name, d, t)) if progress else None

    operators = {}

    def op(kind):
        if kind not in operators:
            operators[kind] = O.make_operator(kind, oracle, params)
        return operators[kind]

    for name in wanted:
        need = _NEEDS.get(name)
        if need is not None and need not in provides:
            report["skipped"][name] = f"the oracle ({type(oracle).__name__}) does not provide {need!r}"
            continue
        if progress:
            progress(name, 0, 1)
        if name in ("hessian_top", "ggn_top"):
            pairs = S.top_eigenpairs(op(_MATRIX[name]), k, max_iter, tol, seed=seed, callback=stage(name))
            report[name] = _eigen_entry(pairs, method="power iteration with deflation (largest magnitude)",
                                        tol=tol, max_iter=max_iter)
        elif name in ("hessian_trace", "ggn_trace"):
            report[name] = _trace_entry(S.hutchinson_trace(op(_MATRIX[name]), probes, seed=seed, callback=stage(name)))
        elif name == "kfac_condition":
            pre = O.kfac_preconditioned_ggn_operator(oracle, params, damping, damping_scheme, fisher=fisher, seed=seed)
            hi, lo, kappa = _extremes(pre, steps, seed, progress, name)
            damped = O.CurvatureOperator(lambda v: op("ggn").matvec(v) + damping * v, pre.n, pre.dtype,
                                         "damped ggn")
            ghi, glo, gkappa = _extremes(damped, steps, seed, progress, name)
            report[name] = {"damping": damping, "damping_scheme": damping_scheme, "fisher": fisher,
                            "steps": min(steps, pre.n), "lambda_max": hi, "lambda_min": lo, "condition": kappa,
                            "ggn_lambda_max": ghi, "ggn_lambda_min": glo, "ggn_condition": gkappa}
        else:
            result = S.slq(op("hessian"), min(steps, report["n"]), density_probes, seed=seed, callback=stage(name))
            report[name] = {"matrix": "hessian", "steps": result.steps, "probes": result.probes,
                            "distribution": result.distribution, "sigma": result.default_sigma(),
                            "nodes": [_floats(r) for r in result.nodes], "weights": [_floats(r) for r in result.weights]}
    after = oracle.counts.as_dict()
    report["counts"] = {key: after[key] - before[key] for key in after if after[key] != before[key]}
    return report


def format_report(report: dict) -> str:
    """The report as the lines the command line prints."""
    lines = [f"parameters n = {report['n']} ({report['dtype']}), loss {report['loss']:.6g}"]
    for name, label in (("hessian_top", "Hessian"), ("ggn_top", "GGN")):
        if name in report:
            e = report[name]
            values = ", ".join(f"{v:.6g}" for v in e["values"])
            lines.append(f"top {len(e['values'])} eigenvalues of the {label} (by magnitude): {values}  "
                         f"(max residual {max(e['residuals']):.2g})")
    for name, label in (("hessian_trace", "Hessian"), ("ggn_trace", "GGN")):
        if name in report:
            e = report[name]
            lines.append(f"trace of the {label}: {e['estimate']:.6g} ± {e['stderr']:.2g} "
                         f"({e['probes']} {e['distribution']} probes, standard error)")
    if "kfac_condition" in report:
        e = report["kfac_condition"]
        lines.append(f"condition of the damped GGN (λ = {e['damping']:g}): {e['ggn_condition']:.4g}; "
                     f"K-FAC-preconditioned ({e['damping_scheme']}): {e['condition']:.4g} "
                     f"[{e['lambda_min']:.4g}, {e['lambda_max']:.4g}] ({e['steps']} Lanczos steps)")
    if "density" in report:
        e = report["density"]
        nodes = [x for row in e["nodes"] for x in row]
        lines.append(f"eigenvalue density of the Hessian: {e['steps']} Lanczos steps × {e['probes']} probe(s), "
                     f"nodes in [{min(nodes):.4g}, {max(nodes):.4g}]")
    for name, why in report.get("skipped", {}).items():
        lines.append(f"{name}: skipped, {why}")
    return "\n".join(lines)


def plot_density(source, path: str, sigma=None, num: int = 2000, title: str | None = None):
    """Write the Gaussian-broadened eigenvalue density of ``source`` (an ``SLQResult``, a report or its
    "density" entry) to ``path`` on a log scale, with the nodes marked; returns ``path``, or None (with a
    message on stderr) when matplotlib is missing."""
    if isinstance(source, dict):
        entry = source.get("density", source)
        if "nodes" not in entry:
            raise ValueError("plot_density needs an SLQResult, a report with a 'density' entry, or that entry")
        from ..backend import as_array, to_host  # noqa: PLC0415
        nodes, weights = to_host(as_array(entry["nodes"])), to_host(as_array(entry["weights"]))
        source = S.SLQResult(nodes, weights, entry["steps"], entry["probes"], entry.get("distribution", ""), 0)
    if not isinstance(source, S.SLQResult):
        raise ValueError(f"plot_density needs an SLQResult or a report, got {type(source).__name__}")
    try:
        import matplotlib  # noqa: PLC0415 (optional, from the 'scripts' extra)
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError:
        print("refopt: matplotlib is not installed; no density plot written (pip install 'refopt[scripts]')",
              file=sys.stderr)
        return None
    sigma = source.default_sigma() if sigma is None else sigma
    grid, phi = source.density(sigma=sigma, num=num)
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.semilogy(grid, phi + 1e-12, color="C0")
    for row in source.nodes:
        ax.plot(row, [max(float(phi.max()), 1e-12)] * len(row), "|", color="C3", alpha=0.5)
    ax.set_xlabel("eigenvalue")
    ax.set_ylabel("density (log scale)")
    ax.set_title(title or f"SLQ: {source.steps} Lanczos steps × {source.probes} probe(s), σ = {sigma:.3g}")
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
