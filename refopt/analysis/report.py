"""The loss-surface report of a problem at given parameters, its text form and its density plot.

``analyze(problem, params)`` runs, on the full batch, what PyHessian reports and one K-FAC figure:

* "hessian_top", "ggn_top": the k largest eigenvalues of H and of the GGN. ``method="lanczos"`` (the
  default): the k largest **algebraic** Ritz values, descending, of Lanczos with full reorthogonalisation
  (``spectral.lanczos_eigenpairs``), run until each has a Ritz residual r_i ≤ ``tol``·|θ_i| (default √eps,
  1.5e-8 in float64) or ``max_steps``; ``method="power"``: PyHessian's power iteration with deflation (``spectral.top_eigenpairs``,
  ``tol`` 1e-3 on the relative change and ``max_iter`` 100 by default), the k of largest **magnitude**, sorted
  by magnitude. Either way each value comes with its residual r = ‖A y − θ y‖, and some eigenvalue lies
  within r of it; ``format_report`` prints the digits r supports.
* "hessian_trace", "ggn_trace": Hutchinson's traces with their standard errors (``probes`` Rademacher probes);
* "kfac_condition": the extreme eigenvalues and the condition number θ_max/θ_min of the damped
  K-FAC-preconditioned GGN P^{-1/2}(G + λI)P^{-1/2} ("preconditioned") and of G + λI ("damped_ggn"), each
  from one Lanczos run continued until both extreme Ritz pairs have r ≤ ``condition_tol``·|θ| (default 1e-4)
  or ``max_steps`` (default min(n, 3000); at m = n the Ritz values are the eigenvalues). Ritz values lie
  inside the spectrum (θ_max ≤ λ_max, θ_min ≥ λ_min), so θ_max/θ_min ≤ κ always: an entry whose extremes
  have not converged has ``lower_bound`` True and prints as "≥". λ_min of these matrices converges slowly
  (it sits at the end of a cluster of small eigenvalues): on the digits MLP (n = 2410) the damped GGN's run
  stops after 929 steps, the preconditioned one's after 304 (about 5 s together on one core).
* "density": stochastic Lanczos quadrature of H (``steps`` steps, ``density_probes`` probes): nodes and
  weights, and the broadening σ that ``plot_density`` uses by default.

``k`` is at most min(n, ``MAX_TOP`` = 100) (the work and the eigenvectors held grow with it). Network
analyses are skipped, with the reason in ``report["skipped"]``, for an oracle that does not provide them (a
``FunctionOracle``: only the Hessian's). Every number is a Python float or list, so the report is JSON as it
stands; ``report["counts"]`` holds the oracle requests it made. ``progress(stage, done, total)``, for a
progress display, is called with (stage, 0, 1) when a stage starts and then after each eigenpair, probe or
Lanczos step (a Lanczos run counts up to its step cap and may stop before it; "kfac_condition" runs two).
"""
from __future__ import annotations

import math

from .. import tree as T
from ..optim.base import check_choice, check_int, check_nonnegative, check_positive
from . import operators as O
from . import spectral as S

__all__ = ["ANALYSES", "METHODS", "TOP_TOL", "CONDITION_TOL", "MAX_TOP", "analyze", "format_report",
           "plot_density"]

ANALYSES = ("hessian_top", "ggn_top", "hessian_trace", "ggn_trace", "kfac_condition", "density")
METHODS = ("lanczos", "power")
# Lanczos: the relative Ritz residual (None: √eps of the dtype, 1.5e-8 in float64); power: PyHessian's relative change
TOP_TOL = {"lanczos": None, "power": 1e-3}
CONDITION_TOL = 1e-4                          # relative Ritz residual of the extreme pairs of kfac_condition
MAX_TOP = 100
_NEEDS = {"ggn_top": "ggn", "ggn_trace": "ggn", "kfac_condition": "layer_statistics"}
_MATRIX = {"hessian_top": "hessian", "ggn_top": "ggn", "hessian_trace": "hessian", "ggn_trace": "ggn"}
_ORDER = {"lanczos": "largest algebraic, descending", "power": "largest magnitude, descending"}


def _floats(values) -> list:
    return [float(x) for x in values]


def _top(op, k: int, method: str, tol: float, max_iter: int, max_steps: int, seed, callback) -> dict:
    if method == "lanczos":
        pairs = S.lanczos_eigenpairs(op, k, tol=tol, max_steps=max_steps, which="largest", seed=seed,
                                     callback=callback)
        top = pairs.largest
        return {"values": _floats(top.values), "residuals": _floats(top.residuals), "converged": list(top.converged),
                "products": top.nmatvec, "method": "lanczos", "order": _ORDER[method], "tol": tol,
                "steps": pairs.steps, "max_steps": max_steps, "complete": pairs.complete}
    pairs = S.top_eigenpairs(op, k, max_iter, tol, seed=seed, callback=callback)
    order = sorted(range(k), key=lambda i: -abs(float(pairs.values[i])))   # stable: ties keep the order found
    return {"values": [float(pairs.values[i]) for i in order], "residuals": [float(pairs.residuals[i]) for i in order],
            "converged": [pairs.converged[i] for i in order], "products": pairs.nmatvec, "method": "power",
            "order": _ORDER[method], "tol": tol, "iterations": [pairs.iterations[i] for i in order],
            "max_iter": max_iter}


def _trace_entry(est: S.TraceEstimate) -> dict:
    return {"estimate": est.estimate, "stderr": est.stderr, "probes": est.probes, "distribution": est.distribution}


def _extremes(op, tol: float, max_steps: int, seed, callback) -> dict:
    pairs = S.lanczos_eigenpairs(op, 1, tol=tol, max_steps=max_steps, which="both", seed=seed, callback=callback)
    hi, lo = float(pairs.largest.values[0]), float(pairs.smallest.values[0])
    converged = bool(pairs.largest.converged[0] and pairs.smallest.converged[0])
    return {"lambda_max": hi, "lambda_min": lo, "condition": hi / lo if lo > 0 else math.inf,
            "residual_max": float(pairs.largest.residuals[0]), "residual_min": float(pairs.smallest.residuals[0]),
            "converged": converged, "lower_bound": not (converged or pairs.complete), "steps": pairs.steps,
            "max_steps": max_steps, "complete": pairs.complete, "products": pairs.largest.nmatvec}


def analyze(problem, params=None, k: int = 3, method: str = "lanczos", tol=None, max_iter: int = 100,
            max_steps=None, condition_tol: float = CONDITION_TOL, probes: int = 100, steps: int = 30,
            density_probes: int = 1, damping: float = 1e-3, damping_scheme: str = "pi", fisher: str = "true",
            seed: int = 0, analyses=None, progress=None) -> dict:
    """The report (module docs) of ``problem`` (a registry problem, whose full-batch oracle is used and whose
    ``init_params(seed)`` are the default ``params``, or an oracle with ``params`` given). ``tol``: the top-k
    method's (default ``TOP_TOL[method]``); ``max_steps``: the Lanczos step cap of the top-k and the condition
    runs (default min(n, 3000)); ``steps``: the density's Lanczos steps. ``analyses``: a subset of
    ``ANALYSES`` (default: every one the oracle supports)."""
    if hasattr(problem, "oracle") and hasattr(problem, "init_params"):
        oracle = problem.oracle()
        params = problem.init_params(seed) if params is None else params
    else:
        oracle = problem
        if params is None:
            raise ValueError("params must be given with an oracle (a problem supplies its initial params)")
    n = T.size(params)
    method = check_choice("method", method, METHODS)
    k = check_int("k", k, 1, min(n, MAX_TOP))
    max_iter = check_int("max_iter", max_iter, 1, S.MAX_ITERATIONS)
    tol = TOP_TOL[method] if tol is None else check_nonnegative("tol", tol)
    if tol is None:
        tol = math.sqrt(S.machine_epsilon(T.leaves(params)[0].dtype))
    max_steps = min(n, S.MAX_LANCZOS_STEPS) if max_steps is None else check_int("max_steps", max_steps, 1, n)
    if method == "lanczos" and k > max_steps:
        raise ValueError(f"k = {k} is larger than max_steps ({max_steps}): m Lanczos steps give m Ritz values")
    condition_tol = check_nonnegative("condition_tol", condition_tol)
    probes = check_int("probes", probes, 1, S.MAX_PROBES)
    steps = check_int("steps", steps, 1, S.MAX_ITERATIONS)
    density_probes = check_int("density_probes", density_probes, 1, S.MAX_PROBES)
    damping = check_positive("damping", damping)
    wanted = ANALYSES if analyses is None else tuple(check_choice("analyses", a, ANALYSES) for a in analyses)
    provides = getattr(oracle, "provides", ())
    before = oracle.counts.as_dict()
    report = {"n": n, "dtype": str(T.leaves(params)[0].dtype), "seed": seed, "loss": oracle.value(params),
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
            report[name] = _top(op(_MATRIX[name]), k, method, tol, max_iter, max_steps, seed, stage(name))
        elif name in ("hessian_trace", "ggn_trace"):
            report[name] = _trace_entry(S.hutchinson_trace(op(_MATRIX[name]), probes, seed=seed, callback=stage(name)))
        elif name == "kfac_condition":
            pre = O.kfac_preconditioned_ggn_operator(oracle, params, damping, damping_scheme, fisher=fisher, seed=seed,
                                                     ggn=op("ggn"))   # one GGN, shared with ggn_top
            damped = O.CurvatureOperator(lambda v: op("ggn").matvec(v) + damping * v, pre.n, pre.dtype,
                                         "damped ggn")
            report[name] = {"damping": damping, "damping_scheme": damping_scheme, "fisher": fisher,
                            "tol": condition_tol,
                            "preconditioned": _extremes(pre, condition_tol, max_steps, seed, stage(name)),
                            "damped_ggn": _extremes(damped, condition_tol, max_steps, seed, stage(name))}
        else:
            result = S.slq(op("hessian"), min(steps, n), density_probes, seed=seed, callback=stage(name))
            report[name] = {"matrix": "hessian", "steps": result.steps, "probes": result.probes,
                            "distribution": result.distribution, "sigma": result.default_sigma(),
                            "nodes": [_floats(r) for r in result.nodes], "weights": [_floats(r) for r in result.weights]}
    after = oracle.counts.as_dict()
    report["counts"] = {key: after[key] - before[key] for key in after if after[key] != before[key]}
    return report


MAX_DIGITS = 15


def _digits(value: float, bound: float) -> int:
    """How many significant digits of ``value`` an error of at most ``bound`` supports: the most whose last
    unit is still ≥ ``bound`` (d = ⌊log₁₀|value|⌋ + 1 − ⌈log₁₀ bound⌉), in [1, ``MAX_DIGITS``]."""
    if not (math.isfinite(value) and value != 0):
        return 6
    if not (bound > 0 and math.isfinite(bound)):
        return MAX_DIGITS if bound == 0 else 1
    d = math.floor(math.log10(abs(value))) + 1 - math.ceil(math.log10(bound))
    return min(max(d, 1), MAX_DIGITS)


def _sig(value: float, digits: int) -> str:
    """``value`` with ``digits`` significant digits, trailing zeros kept (they are digits the bound supports)."""
    text = f"{value:#.{digits}g}"
    return text[:-1] if text.endswith(".") else text


def _up(bound: float) -> str:
    """``bound`` rounded up to one significant digit (a bound printed must not shrink)."""
    if not (bound > 0 and math.isfinite(bound)):
        return f"{bound:.1g}"
    unit = 10.0 ** math.floor(math.log10(bound))
    return f"{math.ceil(bound / unit * (1 - 1e-12)) * unit:.1g}"


def _floor(report: dict, scale: float) -> float:
    """The rounding level n·eps·scale below which a residual says nothing more."""
    return report["n"] * S.machine_epsilon(report["dtype"]) * scale


def _top_line(report: dict, e: dict, label: str) -> str:
    floor = _floor(report, max(abs(v) for v in e["values"]))
    bounds = [max(r, floor) for r in e["residuals"]]
    shown = ", ".join(f"{_sig(v, _digits(v, b))} ± {_up(b)}" for v, b in zip(e["values"], bounds))
    how = (f"Lanczos, {e['steps']} steps" if e["method"] == "lanczos"
           else "power iteration with deflation, PyHessian's method")
    line = f"top {len(e['values'])} eigenvalues of the {label} ({e['order']}; {how}): {shown}"
    if not all(e["converged"]):
        limit = f"max_steps = {e['max_steps']}" if e["method"] == "lanczos" else f"max_iter = {e['max_iter']}"
        line += f"  [not all converged to tol {e['tol']:.2g} within {limit}]"
    return line


def _condition_line(report: dict, e: dict, label: str) -> str:
    floor = _floor(report, abs(e["lambda_max"]))
    hi, lo = abs(e["lambda_max"]), abs(e["lambda_min"])
    rel_hi = max(e["residual_max"], floor) / hi if hi > 0 else math.inf
    rel_lo = max(e["residual_min"], floor) / lo if lo > 0 else math.inf
    residuals = f"relative Ritz residuals {rel_hi:.1g} (λ_max), {rel_lo:.1g} (λ_min)"
    if e["lower_bound"]:
        value = f"≥ {e['condition']:.4g}"
        why = (f"a lower bound: not converged to tol {report['kfac_condition']['tol']:g} in {e['steps']} Lanczos "
               f"steps, {residuals}")
    else:
        # κ's relative error is at most about the sum of the two relative residuals
        value = _sig(e["condition"], _digits(e["condition"], (rel_hi + rel_lo) * e["condition"]))
        why = (f"exact to rounding: {e['steps']} = n Lanczos steps" if e["complete"] else
               f"{e['steps']} Lanczos steps, {residuals}")
    return (f"condition number of the {label}: {value}  (λ_max {e['lambda_max']:.6g}, λ_min {e['lambda_min']:.6g}; "
            f"{why})")


def format_report(report: dict) -> str:
    """The report as the lines the command line prints: each top eigenvalue with the digits its residual
    bound supports and ± that bound; condition numbers as "≥" when they are only lower bounds."""
    lines = [f"parameters n = {report['n']} ({report['dtype']}), loss {report['loss']:.6g}"]
    for name, label in (("hessian_top", "Hessian"), ("ggn_top", "GGN")):
        if name in report:
            lines.append(_top_line(report, report[name], label))
    for name, label in (("hessian_trace", "Hessian"), ("ggn_trace", "GGN")):
        if name in report:
            e = report[name]
            lines.append(f"trace of the {label}: {e['estimate']:.6g} ± {e['stderr']:.2g} "
                         f"({e['probes']} {e['distribution']} probes, standard error)")
    if "kfac_condition" in report:
        e = report["kfac_condition"]
        lines.append(_condition_line(report, e["damped_ggn"], f"damped GGN G + λI (λ = {e['damping']:g})"))
        lines.append(_condition_line(report, e["preconditioned"],
                                     f"K-FAC-preconditioned damped GGN ({e['damping_scheme']} damping)"))
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
    from ..plotting import plot_format, pyplot, save_figure  # noqa: PLC0415 (matplotlib is optional)
    plot_format(path)  # a format matplotlib does not write is refused before any drawing
    plt = pyplot("density plot")
    if plt is None:
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
    return save_figure(fig, path)  # atomically, as compare's plots
