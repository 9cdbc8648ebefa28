"""Golden traces: a reproducible record of an optimizer's run, and the comparison of two runs.

A trace (``.npz``, written atomically) holds everything another implementation needs to replay a run
and everything refopt needs to replay theirs:

========================  ==========================================================================
key                       content
========================  ==========================================================================
``meta``                  JSON string: ``format`` ("refopt-trace/1"), ``version``, ``optimizer``,
                          ``hyperparameters`` (every one as used, defaults included; ``schedule`` is
                          the learning-rate schedule's full spec, null for constant), ``given`` (those
                          given explicitly; optional), ``profile`` (or null), ``problem`` (see below),
                          ``steps`` T, ``seed``, ``param_names`` (tree order, e.g. "0.W", "0.b"),
                          ``dtype``
``problem/X``,            the data of the problem: inputs (B, d) of an MLP, images (B, C, H, W) (NCHW)
``problem/y``             of a CNN; targets (B,) class labels or (B, C_out)
``params/<name>``         shape (T+1, *leaf shape): parameters before step 1 (index 0) and after each step
``loss``                  (T,) loss at the incoming parameters of each step (optional in theirs)
``grad/<name>``           (T, *leaf shape) gradient at the incoming parameters (optional in theirs)
``draws/<t>/labels``      labels the optimizer sampled from the model during step t (1-based), shape
                          (k, B) for classes or (k, B, C); or K-FAC's curvature-propagation signs, float
                          (k, B, C) of ±1; absent on steps without draws
``draws/<t>/probes/<j>/<name>``  leaf ``name`` of the j-th Hutchinson probe drawn during step t
========================  ==========================================================================

``meta.problem`` is ``{"type": "mlp", "sizes": [...], "activations": [...], "loss": "...",
"reduction": "...", "variance": σ²}``: a dense network s = a @ W + b as in ``refopt.nn``, so a JAX or
PyTorch user can rebuild it (note W has shape (fan_in, fan_out)); or ``{"type": "cnn", "input_shape":
[C, H, W], "layers": [...], "init": ..., "init_scale": ..., "loss", "reduction", "variance"}``: a
``refopt.nn.conv.CNN`` in the form ``CNN.config()`` writes and ``cnn_from_config`` reads (layers are
activation names and dicts such as ``{"layer": "Conv2d", "in_channels": 2, "out_channels": 3,
"kernel_size": [3, 3], "stride": [2, 2], "padding": [1, 1], "dilation": [1, 1]}``, ``"AvgPool2d"``,
``"MaxPool2d"``, ``"Flatten"``, ``{"layer": "Dense", "in_features": ..., "out_features": ...}``). A CNN's
parameters are named as an MLP's, one ``l.W`` and ``l.b`` per conv or dense layer in order: a conv kernel
in PyTorch's OIHW layout (O, C, kh, kw) with bias (O,), a dense W as (fan_in, fan_out) (PyTorch's Linear
weight transposed). docs/verify.md shows the loop that rebuilds the network in PyTorch and JAX.

Loading (``load_trace``) checks the meta (types, names, the profile, the problem's sizes: at most
``MAX_TRACE_PARAMETERS`` = 10⁶ parameters; a CNN's layers as ``cnn_from_config`` checks them and at most
``MAX_TRACE_ENTRIES`` = 2²⁴ array entries in one forward pass over the batch, padded inputs and unfolded
windows included (``CNN.entries_per_example``); at most
``MAX_TRACE_STEPS`` = 10⁴ steps), that every entry of
the file is one of the layout above (an unknown entry, such as a mistyped ``grad/0.w``, is refused rather
than ignored) and every array's dtype and shape before it builds the network or moves anything to the
backend; each refusal is a one-line ValueError (docs/verify.md lists the checks).

Comparison: a parameter entry diverges when |theirs − ours| > atol + rtol·|ours| (NumPy's ``allclose``
rule, stated here because tolerances are the first thing two implementations disagree on). The report
names the first step, parameter and flat index that diverge.

Convention search (``search_conventions``): every combination of the optimizer's switches is replayed;
the settings that reproduce a trace are listed fewest changed switches first (ties in declaration order),
equivalent ones (bit-identical runs) once, and switches that change nothing in this trace are named apart.
When nothing matches, ``diagnose_divergence`` says what the divergence looks like: from step 1 or after
agreeing steps, a constant ratio of their step θ_t − θ_{t−1} to refopt's (a learning rate, checked by one
replay with lr·r), a sign flip, which leaves part (only the biases?), and how large the gap is.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import __version__
from .. import tree as T
from ..backend import as_array, rng, to_host, xp
from ..nn import MLP, make_loss
from ..nn.conv import cnn_from_config
from ..nn.losses import LOSSES
from ..nn.mlp import ACTIVATIONS
from ..optim import OPTIMIZERS, make_optimizer, optimizer_class
from ..optim.base import MAX_DRAWS, MAX_SEED, check_int
from ..problems.registry import network_oracle
from ..serialize import MAX_INT, load_npz, savez_atomic, short_repr as _short

__all__ = ["TRACE_FORMAT", "MAX_TRACE_PARAMETERS", "MAX_TRACE_STEPS", "MAX_TRACE_ENTRIES", "TRACE_PROBLEMS",
           "MLP_TRACE_PROBLEMS", "Trace", "Divergence", "make_trace", "export_trace", "load_trace",
           "compare_traces", "check_trace", "search_conventions", "param_names", "num_parameters", "describe_match",
           "ConventionMatches", "Diagnosis", "diagnose_divergence", "problem_oracle"]

TRACE_FORMAT = "refopt-trace/1"
MAX_TRACE_PARAMETERS = 10 ** 6  # cap on Σ (d_{l−1} + 1)·d_l of a trace's MLP, checked before it is built
MAX_TRACE_STEPS = 10 ** 4       # cap on a trace's T: checking replays every step (a search up to 1026 times)
MAX_TRACE_ENTRIES = 1 << 24     # cap on B × a CNN's entries per example (CNN.entries_per_example): its memory


def _input_shape(spec: dict) -> tuple:
    """One example's input shape: (d,) for an MLP, (C, H, W) for a CNN."""
    return tuple(spec["input_shape"]) if spec["type"] == "cnn" else (spec["sizes"][0],)


def _tiny_data(spec: dict, seed: int):
    g = rng([seed, 7])
    B, C = spec["batch"], _model(spec).output_size
    X = g.standard_normal((B, *_input_shape(spec)))
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
    # Two conv layers with several output locations each (L = 9 and 4, so "expand" and "reduce" differ), max
    # pooling and a dense head: 124 parameters, few enough for the dense methods.
    "tiny_cnn": {"type": "cnn", "input_shape": [2, 5, 5],
                 "layers": [{"layer": "Conv2d", "in_channels": 2, "out_channels": 3, "kernel_size": [3, 3],
                             "stride": [2, 2], "padding": [1, 1], "dilation": [1, 1]}, "tanh",
                            {"layer": "Conv2d", "in_channels": 3, "out_channels": 4, "kernel_size": [2, 2],
                             "stride": [1, 1], "padding": [0, 0], "dilation": [1, 1]}, "tanh",
                            {"layer": "MaxPool2d", "kernel_size": [2, 2], "stride": [2, 2], "padding": [0, 0],
                             "dilation": [1, 1]},
                            {"layer": "Flatten"}, {"layer": "Dense", "in_features": 4, "out_features": 3}],
                 "init": "glorot", "init_scale": 0.01, "loss": "softmax_cross_entropy", "reduction": "mean",
                 "batch": 6},
}
# The dense ones, for code that rebuilds a trace problem's network from "sizes" (the scripts that run other libraries).
MLP_TRACE_PROBLEMS = tuple(name for name, spec in TRACE_PROBLEMS.items() if spec["type"] == "mlp")
_CNN_KEYS = ("input_shape", "layers", "init", "init_scale")


def _model(spec: dict):
    """The network of a (checked) problem spec: an ``MLP`` or a ``CNN``; builds no arrays."""
    if spec["type"] == "cnn":
        return cnn_from_config({k: spec[k] for k in _CNN_KEYS if k in spec})
    acts = spec["activations"]
    return MLP(spec["sizes"], activation=acts[:-1], output_activation=acts[-1])


def _parameter_shapes(spec: dict, model) -> dict:
    """{name: shape} of the problem's parameters ("0.W": (fan_in, fan_out) or OIHW, "0.b": (fan_out,)); ``model``
    is the CNN of a "cnn" problem (None for an MLP, whose sizes say it all)."""
    if spec["type"] == "cnn":
        pairs = model.parameter_shapes()
    else:
        pairs = [((a, b), (b,)) for a, b in zip(spec["sizes"][:-1], spec["sizes"][1:])]
    out = {}
    for l, (w, b) in enumerate(pairs):
        out[f"{l}.W"], out[f"{l}.b"] = tuple(w), tuple(b)
    return out


def _build(spec: dict):
    model = _model(spec)
    kwargs = {"reduction": spec["reduction"]}
    if spec["loss"] == "gaussian":
        kwargs["variance"] = spec.get("variance", 1.0)
    return model, make_loss(spec["loss"], **kwargs)


def problem_oracle(spec: dict, X, y):
    """The oracle of a trace problem on (X, y): an ``Oracle`` for an MLP, a ``CNNOracle`` for a CNN, whose images
    (B, C, H, W) it takes flattened in C order."""
    model, loss = _build(spec)
    return network_oracle(model, loss, xp.reshape(X, (X.shape[0], -1)), y)


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
    """Run refopt and record a trace (``replay_draws``: per-step draws to inject instead of sampling).
    ``seed`` is an integer in [0, 2⁶³ − 1] (``MAX_SEED``, the range ``load_trace`` accepts)."""
    seed = check_int("seed", seed, minimum=0, maximum=MAX_SEED)
    hyperparameters = dict(hyperparameters or {})
    if profile is not None:
        from .profiles import get_profile  # noqa: PLC0415
        prof = get_profile(profile)
        if prof.optimizer != optimizer:
            raise ValueError(f"profile {profile!r} is for optimizer {prof.optimizer!r}, not {optimizer!r}")
        hyperparameters = {**prof.hyperparameters, **hyperparameters}
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= MAX_TRACE_STEPS:
        raise ValueError(f"steps must be an integer in [1, {MAX_TRACE_STEPS}], got {_short(steps)}")
    if problem not in TRACE_PROBLEMS:
        raise ValueError(f"unknown trace problem {problem!r}; choose from {sorted(TRACE_PROBLEMS)}")
    spec = TRACE_PROBLEMS[problem]
    X, y = _tiny_data(spec, seed)
    return _replay(optimizer, hyperparameters, spec, as_array(X), xp.asarray(y), None, steps, seed, profile,
                   replay_draws, problem_name=problem)


def _replay(optimizer, hyperparameters, spec, X, y, params0, steps, seed, profile, replay_draws, problem_name=None):
    """Run the optimizer, recording its draws (``info["draws"]``) or injecting ``replay_draws``, which must be
    of the kind the optimizer declares (``Optimizer.draws``: labels or probes; none for one that does not draw)."""
    model = _model(spec)
    opt = make_optimizer(optimizer, **hyperparameters)
    for t, step_draws in enumerate(replay_draws or (), start=1):
        kind = None if step_draws is None else "probes" if isinstance(step_draws, (list, tuple)) else "labels"
        if kind == "labels" and opt.draws == "signs":   # an output-space array either way (kept as labels)
            kind = "signs"
        if kind is not None and kind != opt.draws:
            does = "makes no random draws" if opt.draws is None else f"draws {opt.draws}"
            raise ValueError(f"the trace's draws of step {t} are {kind}, but {optimizer} {does}")
    params = model.init(seed) if params0 is None else params0
    state = opt.init(params)
    oracle = problem_oracle(spec, X, y)
    recorder = problem_oracle(spec, X, y)  # the trace's loss and gradient, kept out of the optimizer's counts
    opt.check_oracle(oracle)  # K-BFGS and the block-tridiagonal K-FAC refuse a CNN by name
    out_params, losses, grads, draws = [params], [], [], []
    for t in range(steps):
        value, g = recorder.value_and_grad(params)
        injected = None if replay_draws is None else replay_draws[t]
        if opt.draws is not None:
            params, state, info = opt.update(params, state, oracle, draws=injected)
        else:
            params, state, info = opt.update(params, state, oracle)
        out_params.append(params)
        losses.append(value)
        grads.append(g)
        draws.append(injected if injected is not None else info.get("draws"))
    # Every hyperparameter as used (the constructor's, defaults included, ``Optimizer.hyperparameters``), so a
    # verifier need not read the source for a default; what was given explicitly is kept beside it.
    meta = {"format": TRACE_FORMAT, "version": __version__, "optimizer": optimizer,
            "hyperparameters": opt.hyperparameters(), "given": dict(hyperparameters), "profile": profile,
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


def _fail(path, message):
    raise ValueError(f"{path}: {message}")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_real(v) -> bool:
    """A finite real number (not a bool); an integer too large for a float (JSON's 10**400) is not."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return False
    try:
        return math.isfinite(v)
    except OverflowError:
        return False


def num_parameters(sizes) -> int:
    """Σ (d_{l−1} + 1)·d_l: the parameter count of a dense MLP with layer widths ``sizes``."""
    return sum((a + 1) * b for a, b in zip(sizes[:-1], sizes[1:]))


def _check_meta(meta, path: str):
    """Validate a trace's meta (types, names, the problem and its size) before any array is built;
    (the problem spec, its CNN or None for an MLP: a CNN object describes shapes and holds no arrays)."""
    if not isinstance(meta, dict):
        _fail(path, f"meta must be a JSON object, got {type(meta).__name__}")
    for key in ("optimizer", "problem", "param_names"):
        if key not in meta:
            _fail(path, f"meta has no {key!r}")
    if meta.get("format", TRACE_FORMAT) != TRACE_FORMAT:
        _fail(path, f"meta format {_short(meta['format'])} is not {TRACE_FORMAT!r}")
    if not isinstance(meta["optimizer"], str) or meta["optimizer"] not in OPTIMIZERS:
        _fail(path, f"meta optimizer must be one of {', '.join(sorted(OPTIMIZERS))}, got {_short(meta['optimizer'])}")
    if not isinstance(meta.get("hyperparameters", {}), dict):
        _fail(path, f"meta hyperparameters must be an object of NAME: value, got {_short(meta['hyperparameters'])}")
    if not isinstance(meta.get("given", {}), dict):
        _fail(path, f"meta given must be an object of NAME: value, got {_short(meta['given'])}")
    if meta.get("profile") is not None:
        from .profiles import PROFILES  # noqa: PLC0415
        profile = meta["profile"]
        if not isinstance(profile, str) or profile not in PROFILES:
            _fail(path, f"meta profile must be a profile name (`refopt verify profiles`) or null, got {_short(profile)}")
        if PROFILES[profile].optimizer != meta["optimizer"]:
            _fail(path, f"meta profile {profile!r} is for optimizer {PROFILES[profile].optimizer!r}, "
                        f"not {meta['optimizer']!r}")
    seed = meta.get("seed", 0)
    if not _is_int(seed) or not 0 <= seed <= MAX_INT:
        _fail(path, f"meta seed must be an integer in [0, 2⁶³ − 1], got {_short(seed)}")
    if "steps" in meta and (not _is_int(meta["steps"]) or not 1 <= meta["steps"] <= MAX_TRACE_STEPS):
        _fail(path, f"meta steps must be an integer in [1, {MAX_TRACE_STEPS}], got {_short(meta['steps'])}")
    if meta.get("dtype") is not None and meta["dtype"] not in ("float32", "float64"):
        _fail(path, f"meta dtype must be 'float32' or 'float64', got {_short(meta['dtype'])}")
    names = meta["param_names"]
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names) or len(set(names)) != len(names):
        _fail(path, f"meta param_names must be a list of distinct names such as '0.W', got {_short(names)}")
    spec = meta["problem"]
    if not isinstance(spec, dict):
        _fail(path, f"meta problem must be an object (type, sizes, activations, loss, reduction), got {_short(spec)}")
    if spec.get("type") not in ("mlp", "cnn"):
        _fail(path, f"problem type {_short(spec.get('type'))} is not supported (expected 'mlp' or 'cnn')")
    for key in ("sizes", "activations", "loss", "reduction") if spec["type"] == "mlp" else \
            ("input_shape", "layers", "loss", "reduction"):
        if key not in spec:
            _fail(path, f"meta problem has no {key!r}")
    model = None if spec["type"] == "mlp" else _check_cnn(spec, path)
    if spec["type"] == "mlp":
        _check_mlp(spec, path)
    if not isinstance(spec["loss"], str) or spec["loss"] not in LOSSES:
        _fail(path, f"problem loss must be one of {sorted(LOSSES)}, got {_short(spec['loss'])}")
    if spec["reduction"] not in ("mean", "mean_all", "sum"):
        _fail(path, f"problem reduction must be 'mean', 'mean_all' or 'sum', got {_short(spec['reduction'])}")
    if "variance" in spec and not (_is_real(spec["variance"]) and spec["variance"] > 0):
        _fail(path, f"problem variance must be a positive number, got {_short(spec['variance'])}")
    if spec.get("name") is not None and not isinstance(spec["name"], str):
        _fail(path, f"problem name must be a string or null, got {_short(spec['name'])}")
    return spec, model


def _check_mlp(spec: dict, path: str):
    sizes = spec["sizes"]
    if not isinstance(sizes, list) or len(sizes) < 2 or not all(_is_int(s) and s >= 1 for s in sizes):
        _fail(path, f"problem sizes must be a list of at least two positive integers, got {_short(sizes)}")
    if len(sizes) > MAX_TRACE_PARAMETERS or num_parameters(sizes) > MAX_TRACE_PARAMETERS:
        _fail(path, f"problem sizes {_short(sizes)} give more than {MAX_TRACE_PARAMETERS} parameters "
                    "(the cap on a trace's problem)")
    acts = spec["activations"]
    if not isinstance(acts, list) or len(acts) != len(sizes) - 1 \
            or not all(isinstance(a, str) and a in ACTIVATIONS for a in acts):
        _fail(path, f"problem activations must list {len(sizes) - 1} names from {sorted(ACTIVATIONS)}, "
                    f"got {_short(acts)}")


def _check_cnn(spec: dict, path: str):
    unknown = sorted(set(spec) - {"type", "name", "loss", "reduction", "variance", *_CNN_KEYS})
    if unknown:
        _fail(path, f"meta problem of type 'cnn' has unknown keys {', '.join(_short(k, 40) for k in unknown[:5])}")
    try:
        model = _model(spec)  # cnn_from_config checks every layer and shape; it evaluates nothing
    except (ValueError, TypeError) as exc:
        _fail(path, f"problem (cnn): {exc}")
    if model.num_params > MAX_TRACE_PARAMETERS:
        _fail(path, f"the problem's CNN has {model.num_params} parameters, more than {MAX_TRACE_PARAMETERS} "
                    "(the cap on a trace's problem)")
    if model.entries_per_example > MAX_TRACE_ENTRIES:  # already for one example; load_trace checks B of them
        _fail(path, f"a forward pass of the problem's CNN over one example holds {model.entries_per_example} array "
                    f"entries, more than {MAX_TRACE_ENTRIES} (the cap on a trace's problem)")
    return model


def _check_array(path, files, key, shape, kinds="f", what="a float32/float64 array"):
    """files[key] with ``shape`` (None entries: any length) and a dtype of ``kinds``, finite if floating."""
    if key not in files:
        _fail(path, f"missing array {key!r}")
    a = files[key]
    if a.dtype.kind not in kinds or (a.dtype.kind == "f" and a.dtype.name not in ("float32", "float64")):
        _fail(path, f"{key} must be {what}, got dtype {a.dtype}")
    if a.ndim != len(shape) or any(s is not None and s != n for s, n in zip(shape, a.shape)):
        want = ", ".join("·" if s is None else str(s) for s in shape)
        _fail(path, f"{key} has shape {a.shape}, expected ({want})")
    if a.dtype.kind == "f" and not np.all(np.isfinite(a)):
        _fail(path, f"{key} contains NaN or Inf")
    return a


def _is_index(text: str) -> bool:
    """``text`` is a non-negative integer written as ``str(int)`` writes it ("0", "12"; not "012", "+1", "²")."""
    return text.isascii() and text.isdigit() and str(int(text)) == text


def _known_entry(key: str, names, steps: int) -> bool:
    """``key`` has the form of an entry of the layout (module docs) for these parameter names and T = ``steps``."""
    if key in ("meta", "problem/X", "problem/y", "loss"):
        return True
    parts = key.split("/")
    if len(parts) == 2 and parts[0] in ("params", "grad"):
        return parts[1] in names
    if len(parts) in (3, 5) and parts[0] == "draws" and _is_index(parts[1]) and 1 <= int(parts[1]) <= steps:
        if len(parts) == 3:
            return parts[2] == "labels"
        return parts[2] == "probes" and _is_index(parts[3]) and parts[4] in names
    return False


def _fail_unknown(path, keys, why: str):
    shown = ", ".join(_short(k, 40) for k in keys[:5]) + (f" and {len(keys) - 5} more" if len(keys) > 5 else "")
    _fail(path, f"unknown entr{'y' if len(keys) == 1 else 'ies'} {shown} ({why})")


def load_trace(path: str) -> Trace:
    """Read and validate a trace; ValueError (one line) names what is missing, misshapen, mistyped, too
    large or not finite. Everything is checked (meta, then every array's dtype and shape) before the
    problem's network is built or an array is moved to the backend."""
    files = load_npz(path)
    if "meta" not in files:
        _fail(path, "missing array 'meta'")
    m = files["meta"]
    if m.ndim != 0 or m.dtype.kind != "U":
        _fail(path, f"'meta' must be a JSON string (0-d str array), got {m.dtype} of shape {m.shape}")
    try:
        meta = json.loads(str(m))
    except RecursionError:
        _fail(path, "'meta' is nested too deeply to read")
    except ValueError as exc:  # JSONDecodeError, and integers beyond Python's digit limit
        _fail(path, f"'meta' is not JSON ({' '.join(str(exc).split())})")
    spec, model = _check_meta(meta, path)
    names = meta["param_names"]
    expected = _parameter_shapes(spec, model)
    if sorted(names) != sorted(expected):
        _fail(path, f"param_names {_short(names)} do not match the problem's parameters {sorted(expected)}")
    X = _check_array(path, files, "problem/X", (None, *_input_shape(spec)))
    B, C = X.shape[0], spec["sizes"][-1] if model is None else model.output_size
    if B < 1:
        _fail(path, "problem/X has no examples")
    if spec["type"] == "cnn" and B * model.entries_per_example > MAX_TRACE_ENTRIES:
        _fail(path, f"a forward pass of the problem's CNN over {B} examples holds {B * model.entries_per_example} "
                    f"array entries, more than {MAX_TRACE_ENTRIES} (the cap on a trace's problem)")
    classes = spec["loss"] == "softmax_cross_entropy"
    if classes:
        y = _check_array(path, files, "problem/y", (B,), "iu", "integer class labels")
        if y.size and not (y.min() >= 0 and y.max() < C):
            _fail(path, f"problem/y: class labels must lie in [0, {C})")
    else:
        y = _check_array(path, files, "problem/y", (B, C))
    first = f"params/{names[0]}"
    if first not in files:
        _fail(path, f"missing array {first!r}")
    steps = files[first].shape[0] - 1 if files[first].ndim >= 1 else -1
    if steps < 1:
        _fail(path, f"a trace needs at least one step ({first} needs shape (T+1, ...) with T ≥ 1)")
    if steps > MAX_TRACE_STEPS:
        _fail(path, f"{first} holds {steps} steps, more than {MAX_TRACE_STEPS} (the cap on a trace's steps)")
    if meta.get("steps", steps) != steps:
        _fail(path, f"meta steps is {meta['steps']} but {first} holds {steps} steps")
    unknown = sorted(k for k in files if not _known_entry(k, names, steps))
    if unknown:  # a mistyped name (grad/0.w) would otherwise drop the user's data without a word
        _fail_unknown(path, unknown, f"a trace holds meta, problem/X, problem/y, loss, params/<name>, grad/<name> and "
                                     f"draws/<t>/... for t in 1..{steps}, with <name> in {names}")
    for n in names:
        _check_array(path, files, f"params/{n}", (steps + 1, *expected[n]))
    dtypes = {files[f"params/{n}"].dtype for n in names} | {X.dtype}
    if len(dtypes) > 1:
        _fail(path, f"params/* and problem/X must share one dtype, got {sorted(map(str, dtypes))}")
    has_grad = [f"grad/{n}" in files for n in names]
    if any(has_grad) and not all(has_grad):
        _fail(path, "grad/* must be given for every parameter or for none")
    for n in names if all(has_grad) else []:
        _check_array(path, files, f"grad/{n}", (steps, *expected[n]))
    if "loss" in files:
        _check_array(path, files, "loss", (steps,), "fiu", "a real array")
    label_shape = (None, B) if classes else (None, B, C)
    probe_counts = []
    for t in range(1, steps + 1):
        signs = classes and f"draws/{t}/labels" in files and files[f"draws/{t}/labels"].ndim == 3
        if signs:   # K-FAC's curvature-propagation signs on a classification problem
            _check_array(path, files, f"draws/{t}/labels", (None, B, C), "f", "a float array")
            if not np.all(np.abs(files[f"draws/{t}/labels"]) == 1):
                _fail(path, f"draws/{t}/labels: (k, B, C) draws of a classification problem must be signs ±1")
        if f"draws/{t}/labels" in files:
            k = (files[f"draws/{t}/labels"] if signs else _check_array(
                path, files, f"draws/{t}/labels", label_shape, "iu" if classes else "f",
                "integer labels" if classes else "a float array")).shape[0]
            if not 1 <= k <= MAX_DRAWS:
                _fail(path, f"draws/{t}/labels holds {k} label sets, expected 1 to {MAX_DRAWS}")
            if classes and not signs and not (files[f"draws/{t}/labels"].min() >= 0 and files[f"draws/{t}/labels"].max() < C):
                _fail(path, f"draws/{t}/labels: class labels must lie in [0, {C})")
        j = 0
        while j < MAX_DRAWS and any(f"draws/{t}/probes/{j}/{n}" in files for n in names):
            for n in names:
                _check_array(path, files, f"draws/{t}/probes/{j}/{n}", expected[n])
            j += 1
        if any(f"draws/{t}/probes/{j}/{n}" in files for n in names):
            _fail(path, f"draws/{t} holds more than {MAX_DRAWS} probes")
        if j and f"draws/{t}/labels" in files:
            _fail(path, f"draws/{t} holds both labels and probes (a step draws one or the other)")
        probe_counts.append(j)
    read = {"meta", "problem/X", "problem/y", "loss"} | {f"params/{n}" for n in names} \
        | ({f"grad/{n}" for n in names} if all(has_grad) else set()) \
        | {f"draws/{t}/labels" for t in range(1, steps + 1)} \
        | {f"draws/{t}/probes/{j}/{n}" for t, count in enumerate(probe_counts, 1) for j in range(count) for n in names}
    unread = sorted(set(files) - read)
    if unread:
        _fail_unknown(path, unread, "the probes of a step are numbered 0, 1, 2, ... without gaps")
    # Everything is checked: build the network and move the arrays.
    params = [_tree_from_names(names, [as_array(files[f"params/{n}"][t]) for n in names]) for t in range(steps + 1)]
    grads = []
    if all(has_grad):
        grads = [_tree_from_names(names, [as_array(files[f"grad/{n}"][t]) for n in names]) for t in range(steps)]
    draws = []
    for t, j_count in zip(range(1, steps + 1), probe_counts):
        if f"draws/{t}/labels" in files:
            draws.append(xp.asarray(files[f"draws/{t}/labels"]))
            continue
        probes = [_tree_from_names(names, [as_array(files[f"draws/{t}/probes/{j}/{n}"]) for n in names])
                  for j in range(j_count)]
        draws.append(probes or None)
    loss = [float(v) for v in files["loss"]] if "loss" in files else []
    return Trace(meta, as_array(X), xp.asarray(y), params, loss, grads, draws)


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


class ConventionMatches(list):
    """The result of ``search_conventions``: a list of matches (dicts of the switches that differ from the
    trace's stated hyperparameters), smallest first, with two attributes: ``no_effect``, the switches that
    change nothing in this trace (in no match), and ``diagnosis``, what the divergence of the stated
    settings looks like (a ``Diagnosis``; None when some setting matches or the stated one cannot run)."""

    no_effect: tuple = ()
    diagnosis: "Diagnosis | None" = None


def search_conventions(theirs: Trace | str, rtol: float = 1e-7, atol: float = 1e-10,
                       max_combinations: int = 1024) -> ConventionMatches:
    """Try every combination of the optimizer's convention switches; return the settings that reproduce
    ``theirs`` (a ``ConventionMatches`` list), each as a dict of the switches that differ from the trace's
    stated hyperparameters.

    Order: fewest changed switches first; ties in the order the optimizer declares its switches (its
    ``conventions``) and each switch its choices, compared switch by switch over the changed ones.
    Equivalent settings (bit-identical parameters at every step) are listed once, by the first of them.
    A switch has no effect on this trace when changing it alone, from the stated settings and from every
    listed match, gives bit-identical parameters wherever that setting was tried (injected probes make
    ``probe_distribution`` one): it is in no match and is reported once in ``no_effect``. Beyond
    ``max_combinations`` settings only the closest ones are tried (with a warning). When nothing matches,
    ``diagnosis`` describes how the stated settings' replay departs from ``theirs``.
    """
    if isinstance(theirs, str):
        theirs = load_trace(theirs)
    base = dict(theirs.meta.get("hyperparameters", {}))
    cls = optimizer_class(theirs.meta["optimizer"])
    switches: dict = dict(getattr(cls, "switches", {}))
    if not switches:
        raise ValueError(f"optimizer {theirs.meta['optimizer']!r} declares no convention switches to search")
    names = list(switches)  # declaration order: the tie-break between matches of equal size
    stated = tuple(base.get(n, _default(cls, n)) for n in names)
    combos = list(itertools.product(*[switches[n] for n in names]))

    def changes(combo) -> dict:
        return {n: v for n, v, st in zip(names, combo, stated) if v != st}

    def position(combo):
        changed = changes(combo)
        return len(changed), sorted((names.index(n), switches[n].index(v)) for n, v in changed.items())
    # Fewest changed switches first, so a cap on the number of runs drops only the most far-fetched settings.
    combos.sort(key=lambda c: len(changes(c)))
    if len(combos) > max_combinations:
        warnings.warn(f"{len(combos)} combinations of switches; trying the {max_combinations} closest to the stated "
                      "hyperparameters (raise max_combinations for all)", stacklevel=2)
        combos = combos[:max_combinations]
    try:
        stated_run = _rerun(theirs, base)
    except (ValueError, NotImplementedError):
        stated_run = None
    runs = {} if stated_run is None else {stated: _fingerprint(stated_run)}  # setting -> its parameters' hash
    found = []
    for combo in combos:
        if combo in runs:
            ours = stated_run
        else:
            try:
                ours = _rerun(theirs, {**base, **dict(zip(names, combo))})
            except (ValueError, NotImplementedError):
                continue
            runs[combo] = _fingerprint(ours)
        if compare_traces(ours, theirs, rtol, atol) is None:
            found.append(combo)
    kept, seen = [], set()
    for combo in sorted(found, key=position):
        if runs[combo] not in seen:  # a longer setting that runs bit for bit as a listed one adds nothing
            kept.append(combo)
            seen.add(runs[combo])

    def no_effect(i: int) -> bool:
        pairs = [(ref, ref[:i] + (v,) + ref[i + 1:]) for ref in [stated, *kept] for v in switches[names[i]]
                 if v != ref[i]]
        pairs = [(a, b) for a, b in pairs if a in runs and b in runs]
        return bool(pairs) and all(runs[a] == runs[b] for a, b in pairs)
    result = ConventionMatches(changes(c) for c in kept)
    result.no_effect = tuple(n for i, n in enumerate(names) if no_effect(i))
    if not kept and stated_run is not None:
        result.diagnosis = diagnose_divergence(stated_run, theirs, rtol, atol, confirm=True)
    return result


def _fingerprint(trace: Trace) -> str:
    """A hash of every parameter of every step: equal for bit-identical runs."""
    h = hashlib.sha256()
    for p in trace.params:
        for leaf in T.leaves(p):
            h.update(np.ascontiguousarray(to_host(leaf)).tobytes())
    return h.hexdigest()


@dataclass
class Diagnosis:
    """What a divergence looks like: the first divergent step, the steps that agree before it, and the
    findings, {kind: one line}, in the order they are worth reading. Kinds: "onset" (from step 1, or after
    agreeing steps), "lr" (refopt with the learning rate scaled by the step ratio reproduces the trace),
    "step_ratio" (their step θ_t − θ_{t−1} is a constant multiple of refopt's), "sign_flip" (the multiple
    is −1), "leaves" (only some parameters differ, e.g. only the biases), "size" (how large the difference
    is next to the step, and how it grows)."""

    step: int
    agreed: int
    findings: dict
    ratio: float | None = None   # the constant step ratio at ``step``, if there is one

    def __str__(self):
        return "\n".join(self.findings.values())


def _flat(tree) -> np.ndarray:
    return np.concatenate([np.ravel(to_host(leaf)) for leaf in T.leaves(tree)])


def _step_ratio(ours: Trace, theirs: Trace, t: int, ratio_rtol: float) -> float | None:
    """The constant r with θᵗʰᵉⁱʳˢ_t − θᵗʰᵉⁱʳˢ_{t−1} = r·(θ_t − θ_{t−1}) on every coordinate where refopt's step
    is not negligible (ratios within ``ratio_rtol``·|r| of their median), or None."""
    d_ours = _flat(ours.params[t]) - _flat(ours.params[t - 1])
    d_theirs = _flat(theirs.params[t]) - _flat(theirs.params[t - 1])
    scale = float(np.max(np.abs(d_ours)))
    if scale == 0:
        return None
    moving = np.abs(d_ours) > 1e-6 * scale  # a tiny step's ratio is mostly the rounding of θ_{t−1}
    if np.any(np.abs(d_theirs[~moving]) > 1e-6 * max(scale, float(np.max(np.abs(d_theirs))))):
        return None                         # they move where refopt does not: not a multiple
    ratios = d_theirs[moving] / d_ours[moving]
    r = float(np.median(ratios))
    return r if float(np.max(np.abs(ratios - r))) <= ratio_rtol * max(abs(r), 1e-12) else None


def _nice(x: float) -> str:
    return repr(float(f"{x:.6g}"))


def _ratio_finding(ours: Trace, theirs: Trace, t: int, r: float, ratio_rtol: float) -> tuple[str, str]:
    steps = min(ours.steps, theirs.steps)
    later = [_step_ratio(ours, theirs, s, ratio_rtol) for s in range(t + 1, steps + 1)]
    where = (f"at every step from {t} to {steps}" if later and all(q is not None and abs(q - r) <= ratio_rtol * abs(r)
                                                                    for q in later) else f"at step {t}")
    if r == 0:
        return "step_ratio", f"their parameters do not move {where} while refopt's do (a skipped step?)"
    if abs(r + 1) <= ratio_rtol:
        return "sign_flip", f"their step is the negative of refopt's {where} (a sign flip: ascent, or a sign in the update)"
    return "step_ratio", f"their step θ_t − θ_(t−1) is {_nice(r)} × refopt's on every coordinate {where}"


def _lr_finding(ours: Trace, theirs: Trace, r: float, rtol: float, atol: float) -> str | None:
    """Whether refopt with lr·r reproduces ``theirs`` (one replay), as a finding; None if not or no lr."""
    hp = dict(ours.meta.get("hyperparameters", {}))
    lr = hp.get("lr", _default(optimizer_class(ours.meta["optimizer"]), "lr"))
    if r <= 0 or not _is_real(lr):
        return None
    try:
        scaled = _rerun(theirs, {**hp, "lr": lr * r})
    except (ValueError, NotImplementedError):
        return None
    if compare_traces(scaled, theirs, rtol, atol) is not None:
        return None
    return f"the learning rate differs by {_nice(r)}: refopt with lr={_nice(lr * r)} reproduces all {theirs.steps} steps"


def _leaves_finding(ours: Trace, theirs: Trace, t: int, rtol: float, atol: float) -> str | None:
    names = ours.meta["param_names"]
    parted = [n for n, a, b in zip(names, T.leaves(ours.params[t]), T.leaves(theirs.params[t]))
              if np.any(np.abs(to_host(b) - to_host(a)) > atol + rtol * np.abs(to_host(a)))]
    if len(parted) == len(names):
        return None
    listed = f"{', '.join(parted)} differ{'s' if len(parted) == 1 else ''} at step {t}"
    if all(n.endswith(".b") for n in parted):
        return f"only the bias leaves {listed}: a weight decay, averaging or preconditioner that treats biases apart?"
    if all(n.endswith(".W") for n in parted):
        return f"only the weight leaves {listed} (the biases agree): a weight-only decay or a convention of W alone?"
    return f"only {listed}"


def diagnose_divergence(ours: Trace, theirs: Trace, rtol: float = 1e-7, atol: float = 1e-10,
                        ratio_rtol: float = 1e-6, confirm: bool = False) -> Diagnosis | None:
    """Describe how ``theirs`` departs from ``ours`` (refopt's replay of it), or None when they agree under
    the rule of ``compare_traces``. At the first divergent step t both start from agreeing parameters, so
    their steps θ_t − θ_{t−1} compare directly: a constant ratio r (to ``ratio_rtol``) is reported, and
    said to hold at every later step where it does. With ``confirm``, refopt is replayed once with lr·r
    (when the optimizer has a numeric ``lr`` and r > 0) to say whether the learning rate explains it all."""
    first = compare_traces(ours, theirs, rtol, atol)
    if first is None:
        return None
    t, steps = first.step, min(ours.steps, theirs.steps)
    findings = {"onset": "differs from step 1: the update rule or a hyperparameter (lr, ε, β, damping), not a "
                         "schedule" if t == 1 else
                         f"agrees for {t - 1} step{'s' if t > 2 else ''}, then parts at step {t}: a line search, "
                         "a refresh or warm-up schedule, or state that acts only later?"}
    r = _step_ratio(ours, theirs, t, ratio_rtol)
    if r is not None:
        lr = _lr_finding(ours, theirs, r, rtol, atol) if confirm else None
        findings = {"lr": lr, **findings} if lr else findings
        kind, line = _ratio_finding(ours, theirs, t, r, ratio_rtol)
        findings[kind] = line
    leaves = _leaves_finding(ours, theirs, t, rtol, atol)
    if leaves:
        findings["leaves"] = leaves
    step_size = float(np.max(np.abs(_flat(ours.params[t]) - _flat(ours.params[t - 1]))))
    gap = [float(np.max(np.abs(_flat(ours.params[s]) - _flat(theirs.params[s])))) for s in (t, steps)]
    if step_size > 0:
        relative = gap[0] / step_size
        findings["size"] = (f"at step {t} the parameters differ by {gap[0]:.3g} ({relative:.3g} × refopt's step)"
                            + (" (small: ε placement, damping, precision or the order of operations?)"
                               if relative < 1e-3 else "")
                            + (f"; by {gap[1]:.3g} at step {steps}" if steps > t else ""))
    return Diagnosis(t, t - 1, findings, r)


def _default(cls, name):
    import inspect  # noqa: PLC0415
    p = inspect.signature(cls.__init__).parameters.get(name)
    return None if p is None else p.default


def describe_match(match: dict) -> str:
    """One line for a match of ``search_conventions``: the switches that differ, or that none do."""
    if not match:
        return "matches refopt with the stated hyperparameters"
    return "matches refopt with " + ", ".join(f"{k}={v!r}" for k, v in match.items())
