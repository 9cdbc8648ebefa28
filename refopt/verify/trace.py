"""Golden traces: a reproducible record of an optimizer's run, and the comparison of two runs.

A trace (``.npz``, written atomically) holds everything another implementation needs to replay a run
and everything refopt needs to replay theirs:

========================  ==========================================================================
key                       content
========================  ==========================================================================
``meta``                  JSON string: ``format`` ("refopt-trace/1"), ``version``, ``optimizer``,
                          ``hyperparameters``, ``profile`` (or null), ``problem`` (see below),
                          ``steps`` T, ``seed``, ``param_names`` (tree order, e.g. "0.W", "0.b"),
                          ``dtype``
``problem/X``,            the data of the problem (inputs (B, d) and targets)
``problem/y``
``params/<name>``         shape (T+1, *leaf shape): parameters before step 1 (index 0) and after each step
``loss``                  (T,) loss at the incoming parameters of each step (optional in theirs)
``grad/<name>``           (T, *leaf shape) gradient at the incoming parameters (optional in theirs)
``draws/<t>/labels``      labels the optimizer sampled from the model during step t (1-based), shape
                          (k, B) for classes or (k, B, C); absent on steps without draws
``draws/<t>/probes/<j>/<name>``  leaf ``name`` of the j-th Hutchinson probe drawn during step t
========================  ==========================================================================

``meta.problem`` is ``{"type": "mlp", "sizes": [...], "activations": [...], "loss": "...",
"reduction": "...", "variance": σ²}``: a dense network s = a @ W + b as in ``refopt.nn``, so a JAX or
PyTorch user can rebuild it (note W has shape (fan_in, fan_out)).

Comparison: a parameter entry diverges when |theirs − ours| > atol + rtol·|ours| (NumPy's ``allclose``
rule, stated here because tolerances are the first thing two implementations disagree on). The report
names the first step, parameter and flat index that diverge.
"""
from __future__ import annotations

import itertools
import json
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import __version__
from .. import tree as T
from ..backend import as_array, rng, to_host, xp
from ..nn import MLP, make_loss
from ..oracle import Oracle
from ..optim import make_optimizer, optimizer_class
from ..serialize import load_npz, savez_atomic

__all__ = ["TRACE_FORMAT", "TRACE_PROBLEMS", "Trace", "Divergence", "make_trace", "export_trace", "load_trace",
           "compare_traces", "check_trace", "search_conventions", "param_names"]

TRACE_FORMAT = "refopt-trace/1"


def _tiny_data(spec: dict, seed: int):
    g = rng([seed, 7])
    B, d, C = spec["batch"], spec["sizes"][0], spec["sizes"][-1]
    X = g.standard_normal((B, d))
    if spec["loss"] == "softmax_cross_entropy":
        y = g.integers(0, C, size=B).astype(np.int64)
    elif spec["loss"] == "bernoulli":
        y = (g.random((B, C)) < 0.5).astype(np.float64)
    else:
        y = g.standard_normal((B, C))
    return X, y


# Problems small enough to write out in full; every optimizer applies to them (dense methods included).
TRACE_PROBLEMS: dict[str, dict] = {
    "tiny_mlp": {"type": "mlp", "sizes": [4, 5, 3], "activations": ["tanh", "identity"],
                 "loss": "softmax_cross_entropy", "reduction": "mean", "batch": 6},
    "tiny_regression": {"type": "mlp", "sizes": [4, 3], "activations": ["identity"], "loss": "gaussian",
                        "reduction": "mean", "variance": 1.0, "batch": 8},
    "tiny_logistic": {"type": "mlp", "sizes": [3, 2], "activations": ["identity"], "loss": "bernoulli",
                      "reduction": "sum", "batch": 5},
}


def _build(spec: dict):
    sizes = spec["sizes"]
    acts = spec["activations"]
    model = MLP(sizes, activation=acts[:-1], output_activation=acts[-1])
    kwargs = {"reduction": spec["reduction"]}
    if spec["loss"] == "gaussian":
        kwargs["variance"] = spec.get("variance", 1.0)
    return model, make_loss(spec["loss"], **kwargs)


def param_names(params) -> list[str]:
    """Names of the leaves in tree order: "0.W", "0.b", "1.W", ..."""
    names = []
    for l, layer in enumerate(params):
        for key in sorted(layer):
            names.append(f"{l}.{key}")
    return names


@dataclass
class Trace:
    """A recorded run: meta, the problem's data, T+1 parameter trees, and each step's loss, gradient and draws."""

    meta: dict
    X: Any
    y: Any
    params: list          # T+1 parameter trees
    loss: list            # T floats (may be empty)
    grads: list           # T trees (may be empty)
    draws: list           # T entries: None, a labels array, or a list of probe trees

    @property
    def steps(self) -> int:
        """T, the number of steps recorded."""
        return len(self.params) - 1


def make_trace(optimizer: str, hyperparameters: dict | None = None, problem: str = "tiny_mlp", steps: int = 5,
               seed: int = 0, profile: str | None = None, replay_draws=None) -> Trace:
    """Run refopt and record a trace (``replay_draws``: per-step draws to inject instead of sampling)."""
    hyperparameters = dict(hyperparameters or {})
    if profile is not None:
        from .profiles import get_profile  # noqa: PLC0415
        prof = get_profile(profile)
        if prof.optimizer != optimizer:
            raise ValueError(f"profile {profile!r} is for optimizer {prof.optimizer!r}, not {optimizer!r}")
        hyperparameters = {**prof.hyperparameters, **hyperparameters}
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    if problem not in TRACE_PROBLEMS:
        raise ValueError(f"unknown trace problem {problem!r}; choose from {sorted(TRACE_PROBLEMS)}")
    spec = TRACE_PROBLEMS[problem]
    X, y = _tiny_data(spec, seed)
    return _replay(optimizer, hyperparameters, spec, as_array(X), xp.asarray(y), None, steps, seed, profile,
                   replay_draws, problem_name=problem)


def _replay(optimizer, hyperparameters, spec, X, y, params0, steps, seed, profile, replay_draws, problem_name=None):
    """Run the optimizer, recording its draws (``info["draws"]``) or injecting ``replay_draws``."""
    model, loss = _build(spec)
    opt = make_optimizer(optimizer, **hyperparameters)
    params = model.init(seed) if params0 is None else params0
    state = opt.init(params)
    oracle = Oracle(model, loss, X, y)
    recorder = Oracle(model, loss, X, y)  # the trace's loss and gradient, kept out of the optimizer's counts
    out_params, losses, grads, draws = [params], [], [], []
    for t in range(steps):
        value, g = recorder.value_and_grad(params)
        injected = None if replay_draws is None else replay_draws[t]
        if injected is not None:
            params, state, info = opt.update(params, state, oracle, draws=injected)
        else:
            params, state, info = opt.update(params, state, oracle)
        out_params.append(params)
        losses.append(value)
        grads.append(g)
        draws.append(injected if injected is not None else info.get("draws"))
    meta = {"format": TRACE_FORMAT, "version": __version__, "optimizer": optimizer,
            "hyperparameters": hyperparameters, "profile": profile,
            "problem": {k: v for k, v in spec.items() if k != "batch"} | {"name": problem_name},
            "steps": steps, "seed": seed, "param_names": param_names(out_params[0]),
            "dtype": str(T.leaves(out_params[0])[0].dtype)}
    return Trace(meta, X, y, out_params, losses, grads, draws)


def _leafdict(names, tree_list):
    return {n: np.stack([to_host(T.leaves(p)[i]) for p in tree_list]) for i, n in enumerate(names)}


def export_trace(trace: Trace, path: str) -> None:
    """Write ``trace`` to ``path`` in the layout of the module docs (atomically)."""
    names = trace.meta["param_names"]
    arrays = {"problem/X": to_host(trace.X), "problem/y": to_host(trace.y), "loss": np.asarray(trace.loss)}
    arrays.update({f"params/{n}": a for n, a in _leafdict(names, trace.params).items()})
    if trace.grads:
        arrays.update({f"grad/{n}": a for n, a in _leafdict(names, trace.grads).items()})
    for t, step_draws in enumerate(trace.draws, start=1):
        if step_draws is None:
            continue
        if isinstance(step_draws, (list, tuple)):  # Hutchinson probes: a list of trees
            for j, probe in enumerate(step_draws):
                for n, leaf in zip(names, T.leaves(probe)):
                    arrays[f"draws/{t}/probes/{j}/{n}"] = to_host(leaf)
        else:
            arrays[f"draws/{t}/labels"] = to_host(step_draws)
    savez_atomic(path, meta=np.array(json.dumps(trace.meta)), **arrays)


def _tree_from_names(names, values):
    layers: dict[int, dict] = {}
    for n, v in zip(names, values):
        l, key = n.split(".")
        layers.setdefault(int(l), {})[key] = v
    return [layers[i] for i in sorted(layers)]


def load_trace(path: str) -> Trace:
    """Read and validate a trace; ValueError names what is missing, misshapen or not finite."""
    files = load_npz(path)
    if "meta" not in files:
        raise ValueError(f"{path}: missing array 'meta'")
    try:
        meta = json.loads(str(files["meta"]))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: 'meta' is not JSON ({exc})") from exc
    for key in ("optimizer", "problem", "param_names"):
        if key not in meta:
            raise ValueError(f"{path}: meta has no {key!r}")
    spec = meta["problem"]
    if spec.get("type") != "mlp":
        raise ValueError(f"{path}: problem type {spec.get('type')!r} is not supported (expected 'mlp')")
    for key in ("problem/X", "problem/y"):
        if key not in files:
            raise ValueError(f"{path}: missing array {key!r}")
    names = meta["param_names"]
    model, _ = _build(spec)
    template = model.init(0)
    expected = dict(zip(param_names(template), [tuple(l.shape) for l in T.leaves(template)]))
    if sorted(names) != sorted(expected):
        raise ValueError(f"{path}: param_names {names} do not match the problem's parameters {sorted(expected)}")
    steps = None
    for n in names:
        key = f"params/{n}"
        if key not in files:
            raise ValueError(f"{path}: missing array {key!r}")
        a = files[key]
        if a.ndim < 1 or tuple(a.shape[1:]) != expected[n]:
            raise ValueError(f"{path}: {key} has shape {a.shape}, expected (T+1, {', '.join(map(str, expected[n]))})")
        if steps is None:
            steps = a.shape[0] - 1
        elif a.shape[0] - 1 != steps:
            raise ValueError(f"{path}: {key} has {a.shape[0]} entries, other parameters have {steps + 1}")
        if not np.all(np.isfinite(a)):
            raise ValueError(f"{path}: {key} contains NaN or Inf")
    if steps is None or steps < 1:
        raise ValueError(f"{path}: a trace needs at least one step")
    X = files["problem/X"]
    if X.ndim != 2 or X.shape[1] != spec["sizes"][0] or not np.all(np.isfinite(X)):
        raise ValueError(f"{path}: problem/X must be finite with shape (B, {spec['sizes'][0]}), got {X.shape}")
    params = [_tree_from_names(names, [as_array(files[f"params/{n}"][t]) for n in names]) for t in range(steps + 1)]
    grads = []
    if all(f"grad/{n}" in files for n in names):
        grads = [_tree_from_names(names, [as_array(files[f"grad/{n}"][t]) for n in names]) for t in range(steps)]
    draws = []
    for t in range(1, steps + 1):
        if f"draws/{t}/labels" in files:
            draws.append(xp.asarray(files[f"draws/{t}/labels"]))
            continue
        probes = []
        for j in itertools.count():
            keys = [f"draws/{t}/probes/{j}/{n}" for n in names]
            if not all(k in files for k in keys):
                break
            probes.append(_tree_from_names(names, [as_array(files[k]) for k in keys]))
        draws.append(probes or None)
    loss = list(files["loss"]) if "loss" in files else []
    return Trace(meta, as_array(X), xp.asarray(files["problem/y"]), params, loss, grads, draws)


@dataclass
class Divergence:
    """Where two traces first differ: the step, parameter name and index, and the two values."""

    step: int          # first step (1-based) whose parameters differ
    parameter: str     # parameter name, e.g. "0.W"
    index: tuple       # index of the largest violation within that parameter
    ours: float
    theirs: float

    def __str__(self):
        return (f"step {self.step}, parameter {self.parameter}{list(self.index)}: refopt {self.ours:.17g}, "
                f"theirs {self.theirs:.17g} (difference {abs(self.ours - self.theirs):.3g})")


def compare_traces(ours: Trace, theirs: Trace, rtol: float = 1e-7, atol: float = 1e-10) -> Divergence | None:
    """The first divergence of ``theirs`` from ``ours`` (see module docs for the rule), or None."""
    names = ours.meta["param_names"]
    for t in range(1, min(ours.steps, theirs.steps) + 1):
        for n, a, b in zip(names, T.leaves(ours.params[t]), T.leaves(theirs.params[t])):
            a, b = to_host(a), to_host(b)
            bad = np.abs(b - a) > atol + rtol * np.abs(a)
            if bad.any():
                excess = np.where(bad, np.abs(b - a) - rtol * np.abs(a), -np.inf)
                idx = np.unravel_index(int(np.argmax(excess)), a.shape)
                return Divergence(t, n, tuple(int(i) for i in idx), float(a[idx]), float(b[idx]))
    return None


def _rerun(theirs: Trace, hyperparameters: dict) -> Trace:
    m = theirs.meta
    return _replay(m["optimizer"], hyperparameters, m["problem"], theirs.X, theirs.y, theirs.params[0], theirs.steps,
                   m.get("seed", 0), m.get("profile"), theirs.draws if any(d is not None for d in theirs.draws) else None,
                   problem_name=m["problem"].get("name"))


def check_trace(theirs: Trace | str, rtol: float = 1e-7, atol: float = 1e-10):
    """Replay ``theirs`` with refopt (same problem, initial parameters and draws); (Divergence|None, ours)."""
    if isinstance(theirs, str):
        theirs = load_trace(theirs)
    ours = _rerun(theirs, dict(theirs.meta.get("hyperparameters", {})))
    return compare_traces(ours, theirs, rtol, atol), ours


def search_conventions(theirs: Trace | str, rtol: float = 1e-7, atol: float = 1e-10, max_combinations: int = 512):
    """Try every combination of the optimizer's convention switches; return the settings that reproduce
    ``theirs``, each as a dict of the switches that differ from the trace's stated hyperparameters, the
    settings with fewest changed switches first. Beyond ``max_combinations`` settings only the closest
    ones are tried (with a warning).

    The switches come from the optimizer class's ``switches`` attribute ({name: allowed values}).
    """
    if isinstance(theirs, str):
        theirs = load_trace(theirs)
    base = dict(theirs.meta.get("hyperparameters", {}))
    cls = optimizer_class(theirs.meta["optimizer"])
    switches: dict = dict(getattr(cls, "switches", {}))
    if not switches:
        raise ValueError(f"optimizer {theirs.meta['optimizer']!r} declares no convention switches to search")
    names = sorted(switches)
    stated = [base.get(n, _default(cls, n)) for n in names]
    combos = list(itertools.product(*[switches[n] for n in names]))
    # Fewest changed switches first, so a cap on the number of runs drops only the most far-fetched settings.
    combos.sort(key=lambda c: sum(v != s for v, s in zip(c, stated)))
    if len(combos) > max_combinations:
        warnings.warn(f"{len(combos)} combinations of switches; trying the {max_combinations} closest to the stated "
                      "hyperparameters (raise max_combinations for all)", stacklevel=2)
        combos = combos[:max_combinations]
    matches = []
    for combo in combos:
        hp = {**base, **dict(zip(names, combo))}
        try:
            ours = _rerun(theirs, hp)
        except (ValueError, NotImplementedError):
            continue
        if compare_traces(ours, theirs, rtol, atol) is None:
            matches.append({n: v for n, v, st in zip(names, combo, stated) if st != v})
    return matches


def _default(cls, name):
    import inspect  # noqa: PLC0415
    p = inspect.signature(cls.__init__).parameters.get(name)
    return None if p is None else p.default


def describe_match(match: dict) -> str:
    """One line for a match of ``search_conventions``: the switches that differ, or that none do."""
    if not match:
        return "matches refopt with the stated hyperparameters"
    return "matches refopt with " + ", ".join(f"{k}={v!r}" for k, v in match.items())
