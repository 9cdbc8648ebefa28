"""Check my optimizer: drive a user's optimizer, as it is, on refopt's problems and compare it with refopt.

Three adapters take the optimizer in the form its library gives it:

* ``check_update(update, init, reference)`` — a plain ``update(grads, state[, params]) -> (updates, state)``
  and its ``init(params) -> state`` (NumPy trees [{"W", "b"}, ...]; θ_{t+1} = θ_t + updates, optax's
  convention);
* ``check_torch(OptimizerClass, kwargs, reference)`` — a ``torch.optim.Optimizer`` subclass and its
  constructor arguments (float64 tensors, one per leaf in refopt's tree order: 0.W, 0.b, 1.W, ...);
* ``check_optax(transformation, reference)`` — an optax ``GradientTransformation`` (float64 with
  ``jax_enable_x64``).

``reference`` is a profile name (``refopt verify profiles``) or ``(optimizer, hyperparameters)``. Every
adapter runs the same loop, the *harness* (``Harness``): refopt records its own trace of the reference
on a trace problem (``make_trace``: data, initial θ_0, T steps, its draws), then at each step t = 1..T
the user's optimizer receives g_t = ∇L(θ_t) **computed by refopt at the user's own iterate θ_t** (so
the two sides share gradients, not a framework's autodiff), and its θ_{t+1} is recorded. Methods that
draw get refopt's draws of step t through the harness's hooks: ``draws(t)`` (labels, or a list of probe
trees z_j) and ``hutchinson(params, t)`` = (1/k) Σ_j z_j ⊙ H(θ) z_j with those probes — for example a
pytorch_optimizer AdaHessian or SophiaH fed through ``step(hessian=...)``. The user's parameter
sequence is written into a copy of refopt's trace (same meta, data and draws) and checked with
``check_trace`` (first step, parameter and index where |theirs − ours| > atol + rtol·|ours|); on a
divergence ``search_conventions`` is asked which settings of the reference's switches reproduce it.
Every adapter takes ``start_scale`` s to start both sides from s·θ_0 (a harder start: saturated units,
failing first line-search trials). The result is a ``Report``: the divergence (or None), the largest
relative difference max_t max_leaf ‖θ_t^theirs − θ_t^refopt‖∞ / ‖θ_t^refopt‖∞, the matching switch
settings, a one-line diagnosis, and both traces.

Torch and optax are imported only inside their adapters: refopt and its tests need neither.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from .. import tree as T
from ..backend import as_array, to_host
from .external import max_relative_difference
from .profiles import get_profile
from .trace import (TRACE_PROBLEMS, Divergence, Trace, check_trace, describe_match, make_trace, problem_oracle,
                    search_conventions)

__all__ = ["Harness", "Report", "check_update", "check_torch", "check_optax", "reference_trace"]


def reference_trace(reference, problem: str = "tiny_mlp", steps: int = 30, seed: int = 0,
                    overrides: dict | None = None) -> Trace:
    """refopt's trace of ``reference`` (a profile name, or (optimizer, hyperparameters)) with ``overrides``."""
    overrides = dict(overrides or {})
    if isinstance(reference, str):
        prof = get_profile(reference)
        return make_trace(prof.optimizer, overrides, problem, steps, seed, reference)
    if not (isinstance(reference, tuple) and len(reference) == 2 and isinstance(reference[0], str)
            and isinstance(reference[1], dict)):
        raise ValueError("reference must be a profile name or a tuple (optimizer name, hyperparameters dict)")
    optimizer, hyperparameters = reference
    return make_trace(optimizer, {**hyperparameters, **overrides}, problem, steps, seed)


@dataclass
class Report:
    """The outcome of checking a user's optimizer against a refopt reference."""

    reference: str
    problem: str
    steps: int
    divergence: Divergence | None
    max_relative_difference: float
    matches: list = field(default_factory=list)   # switch settings that reproduce theirs (search_conventions)
    diagnosis: str = ""
    ours: Trace | None = None
    theirs: Trace | None = None
    stalled: int | None = None                    # first step where theirs did not move and refopt did

    def max_relative_difference_before(self, step: int) -> float:
        """The largest relative difference over θ_0..θ_{step−1} (before a divergence or an early exit)."""
        cut = lambda tr: Trace(tr.meta, tr.X, tr.y, tr.params[:step], [], [], [])  # noqa: E731
        return max_relative_difference(cut(self.ours), cut(self.theirs))

    @property
    def passed(self) -> bool:
        """True when no step diverges beyond the tolerance."""
        return self.divergence is None

    def __str__(self):
        head = f"{self.reference} on {self.problem}, {self.steps} steps"
        if self.divergence is None:
            return f"{head}: matches refopt (max relative difference {self.max_relative_difference:.1e})"
        return f"{head}: diverges at {self.divergence}; {self.diagnosis}"


class Harness:
    """refopt's side of a check: the problem, refopt's reference trace, gradients at any iterate, the draws.

    ``start_scale`` s starts both sides from s·θ_0 instead of the trace problem's θ_0 (refopt's draws are those
    of the run from θ_0, injected on both sides)."""

    def __init__(self, reference, problem: str = "tiny_mlp", steps: int = 30, seed: int = 0,
                 overrides: dict | None = None, start_scale: float = 1.0):
        if problem not in TRACE_PROBLEMS:
            raise ValueError(f"unknown trace problem {problem!r}; choose from {sorted(TRACE_PROBLEMS)}")
        self.reference = reference if isinstance(reference, str) else reference[0]
        self.problem, self.steps = problem, steps
        self.trace = reference_trace(reference, problem, steps, seed, overrides)
        if start_scale != 1.0:  # θ_0 ← s·θ_0: a harder start (saturated units, failing first trials)
            start = T.scale(float(start_scale), self.trace.params[0])
            seed_trace = Trace(self.trace.meta, self.trace.X, self.trace.y, [start] * (steps + 1), [], [],
                               list(self.trace.draws))   # probes do not depend on θ; labels are injected as drawn
            _, self.trace = check_trace(seed_trace)
        self._oracle = problem_oracle(self.trace.meta["problem"], self.trace.X, self.trace.y)
        self.names = self.trace.meta["param_names"]

    @property
    def params0(self) -> list:
        """θ_0 as a NumPy tree [{"W", "b"}, ...] (a fresh copy)."""
        return _host_tree(self.trace.params[0])

    @property
    def hyperparameters(self) -> dict:
        """The reference's hyperparameters (profile settings and overrides), as refopt runs them."""
        return dict(self.trace.meta["hyperparameters"])

    def value_and_grad(self, params) -> tuple[float, list]:
        """(L(θ), ∇L(θ)) computed by refopt at ``params`` (a tree of NumPy arrays), as NumPy."""
        value, g = self._oracle.value_and_grad(_device_tree(params))
        return float(value), _host_tree(g)

    def draws(self, t: int):
        """refopt's draws of step t (1-based): None, a labels array, or a list of probe trees (NumPy)."""
        d = self.trace.draws[t - 1]
        if d is None:
            return None
        return [_host_tree(z) for z in d] if isinstance(d, (list, tuple)) else np.asarray(to_host(d))

    def hutchinson(self, params, t: int) -> list:
        """(1/k) Σ_j z_j ⊙ H(θ) z_j at ``params`` with refopt's k probes of step t (a NumPy tree)."""
        probes = self.draws(t)
        if not isinstance(probes, list):
            raise ValueError(f"the reference {self.reference!r} draws no probes in step {t}")
        theta = _device_tree(params)
        total = None
        for z in probes:
            zh = T.tree_map2(lambda a, b: a * b, _device_tree(z), self._oracle.hvp(theta, _device_tree(z)))
            total = zh if total is None else T.add(total, zh)
        return _host_tree(T.scale(1.0 / len(probes), total))

    def report(self, sequence: list, rtol: float = 1e-10, atol: float = 1e-12, search: bool = True,
               producer: str = "user") -> Report:
        """Check the user's θ_0..θ_T (NumPy trees) against refopt's trace; search the switches on divergence."""
        if len(sequence) != self.steps + 1:
            raise ValueError(f"expected {self.steps + 1} parameter trees (θ_0..θ_T), got {len(sequence)}")
        theirs = Trace(dict(self.trace.meta, producer=producer), self.trace.X, self.trace.y,
                       [_device_tree(p) for p in sequence], [], [], list(self.trace.draws))
        divergence, ours = check_trace(theirs, rtol, atol)
        worst = max_relative_difference(ours, theirs)
        stalled = _first_stall(ours, theirs)
        matches, diagnosis = [], ""
        if divergence is not None and stalled == divergence.step:
            # a library's early exit (a tolerance test) is not a convention: searching switches cannot explain it
            diagnosis = f"theirs made no step at step {stalled} (an early exit?), refopt did"
        elif divergence is not None:
            matches = _search(theirs, rtol, atol) if search else []
            diagnosis = "; ".join(describe_match(m) for m in matches[:3]) if matches else _describe(matches)
        return Report(self.reference, self.problem, self.steps, divergence, worst, matches, diagnosis, ours, theirs,
                      stalled)


def _moved(trace: Trace, t: int) -> bool:
    return not all(np.array_equal(to_host(a), to_host(b))
                   for a, b in zip(T.leaves(trace.params[t]), T.leaves(trace.params[t - 1])))


def _first_stall(ours: Trace, theirs: Trace) -> int | None:
    """The first step t at which theirs left θ unchanged (θ_t = θ_{t−1} exactly) while refopt moved."""
    return next((t for t in range(1, theirs.steps + 1) if not _moved(theirs, t) and _moved(ours, t)), None)


def _describe(result) -> str:
    """The search's account of a divergence that no setting of the switches explains (its ``diagnosis``)."""
    found = getattr(getattr(result, "diagnosis", None), "findings", None)
    head = "no setting of the reference's switches reproduces it"
    return head + (": " + "; ".join(found.values()) if found else "")


def _search(theirs: Trace, rtol: float, atol: float) -> list:
    try:
        return search_conventions(theirs, rtol, atol)
    except ValueError:  # the optimizer declares no switches
        return []


def _host_tree(tree) -> list:
    return [{k: np.array(to_host(v), order="C") for k, v in layer.items()} for layer in tree]


def _device_tree(tree) -> list:
    return [{k: as_array(np.asarray(v)) for k, v in layer.items()} for layer in tree]


def _accepts_params(fn: Callable, keywords) -> bool:
    """Whether ``fn`` takes θ_t after (grads, state): a parameter named ``params``, or a third positional one
    that is not one of the hook's ``keywords``."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return False
    positional = [p.name for p in sig.parameters.values() if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return "params" in sig.parameters or (len(positional) >= 3 and positional[2] not in keywords) \
        or any(p.kind == p.VAR_POSITIONAL for p in sig.parameters.values())


def check_update(update: Callable, init: Callable, reference, problem: str = "tiny_mlp", steps: int = 30,
                 seed: int = 0, overrides: dict | None = None, rtol: float = 1e-10, atol: float = 1e-12,
                 update_kwargs: Callable | None = None, search: bool = True, start_scale: float = 1.0) -> Report:
    """Drive a plain ``update(grads, state[, params]) -> (updates, state)`` with ``state = init(params)``.

    Trees are lists of {"W", "b"} NumPy arrays; θ_{t+1} = θ_t + updates. ``update_kwargs(harness, t, params)``
    returns extra keyword arguments for step t (the draws hook: ``harness.draws(t)``, ``harness.hutchinson``).
    """
    h = Harness(reference, problem, steps, seed, overrides, start_scale)
    params = h.params0
    state = init(h.params0)
    sequence = [params]
    for t in range(1, steps + 1):
        _, g = h.value_and_grad(params)
        extra = update_kwargs(h, t, params) if update_kwargs else {}
        with_params = _accepts_params(update, extra)
        updates, state = update(g, state, params, **extra) if with_params else update(g, state, **extra)
        params = [{k: np.asarray(p[k] + np.asarray(u[k], dtype=p[k].dtype)) for k in p} for p, u in zip(params, updates)]
        sequence.append(params)
    return h.report(sequence, rtol, atol, search, producer="update callable")


def check_torch(optimizer_class, kwargs: dict | None, reference, problem: str = "tiny_mlp", steps: int = 30,
                seed: int = 0, overrides: dict | None = None, rtol: float = 1e-10, atol: float = 1e-12,
                step_kwargs: Callable | None = None, search: bool = True, start_scale: float = 1.0) -> Report:
    """Drive ``optimizer_class(params, **kwargs)`` (a ``torch.optim.Optimizer``) with refopt's gradients.

    Each ``step(closure)`` gets a closure that writes refopt's ∇L at the tensors' current values into
    ``p.grad`` and returns L (line searches call it at every trial point). ``step_kwargs(harness, t, params)``
    gives extra keywords for step t; a tree in them (e.g. ``{"hessian": harness.hutchinson(params, t)}``)
    is passed as a list of tensors in parameter order.
    """
    import torch  # noqa: PLC0415 - optional: only this adapter needs it

    h = Harness(reference, problem, steps, seed, overrides, start_scale)
    tensors = [torch.tensor(leaf, dtype=torch.float64, requires_grad=True) for leaf in T.leaves(h.params0)]
    opt = optimizer_class(tensors, **(kwargs or {}))

    def current() -> list:
        values = iter([p.detach().numpy().copy() for p in tensors])
        return [{k: next(values) for k in sorted(layer)} for layer in h.params0]

    def closure():
        value, g = h.value_and_grad(current())
        for p, leaf in zip(tensors, T.leaves(g)):
            p.grad = torch.tensor(leaf, dtype=torch.float64)
        return torch.tensor(value, dtype=torch.float64)

    def as_torch(v):
        if isinstance(v, list) and v and isinstance(v[0], dict):
            return [torch.tensor(leaf, dtype=torch.float64) for leaf in T.leaves(v)]
        return v

    sequence = [current()]
    for t in range(1, steps + 1):
        extra = {k: as_torch(v) for k, v in (step_kwargs(h, t, sequence[-1]) if step_kwargs else {}).items()}
        opt.step(closure, **extra)
        sequence.append(current())
    return h.report(sequence, rtol, atol, search, producer=f"torch {torch.__version__} {optimizer_class.__name__}")


def check_optax(transformation, reference, problem: str = "tiny_mlp", steps: int = 30, seed: int = 0,
                overrides: dict | None = None, rtol: float = 1e-10, atol: float = 1e-12,
                update_kwargs: Callable | None = None, search: bool = True, value_fn: bool = False, jit: bool = True,
                start_scale: float = 1.0) -> Report:
    """Drive an optax ``GradientTransformation`` (init / update(grads, state, params)) with refopt's gradients.

    Needs ``jax.config.update("jax_enable_x64", True)`` before the call for a float64 comparison (the adapter
    sets it). ``update_kwargs(harness, t, params)`` gives extra keywords for ``update`` (trees become JAX trees;
    arrays only, unless ``jit=False``: the update is compiled once with ``jax.jit``).
    With ``value_fn=True`` the update also gets ``value``, ``grad`` and ``value_fn`` (optax's extra arguments
    of optax.lbfgs and its line searches): ``value_fn`` is refopt's loss as a JAX function (a
    ``pure_callback`` whose ``custom_jvp`` is refopt's gradient), so the line search's trial points are
    evaluated by refopt too. Transformations that draw with their own PRNG key (optax.contrib.sophia) are
    not fed refopt's draws here (scripts/verify_with_optax.py replays optax's own probes instead).
    """
    import jax  # noqa: PLC0415 - optional: only this adapter needs it
    import jax.numpy as jnp  # noqa: PLC0415

    jax.config.update("jax_enable_x64", True)
    h = Harness(reference, problem, steps, seed, overrides, start_scale)

    def to_jax(tree):
        return [{k: jnp.asarray(v) for k, v in layer.items()} for layer in tree]

    def to_numpy(tree) -> list:
        return [{k: np.array(v) for k, v in layer.items()} for layer in tree]

    params = to_jax(h.params0)
    state = transformation.init(params)
    objective = _jax_objective(h, params) if value_fn else None

    def core(g, state, params, value, extra):
        more = {"value": value, "grad": g, "value_fn": objective} if objective is not None else {}
        return transformation.update(g, state, params, **more, **extra)
    run = jax.jit(core) if jit else core  # one compiled update: eager lax loops (line searches) are slow
    sequence = [h.params0]
    for t in range(1, steps + 1):
        value, g = h.value_and_grad(sequence[-1])
        extra = update_kwargs(h, t, sequence[-1]) if update_kwargs else {}
        extra = {k: to_jax(v) if isinstance(v, list) and v and isinstance(v[0], dict) else v for k, v in extra.items()}
        updates, state = run(to_jax(g), state, params, jnp.asarray(value), extra)
        params = jax.tree_util.tree_map(lambda p, u: p + u, params, updates)
        sequence.append(to_numpy(params))
    return h.report(sequence, rtol, atol, search, producer="optax transformation")



def _jax_objective(h: Harness, like):
    """refopt's L(θ) as a JAX function of a tree shaped like ``like``: values and gradients by callback."""
    import jax  # noqa: PLC0415
    import jax.numpy as jnp  # noqa: PLC0415

    def host(tree):
        return [{k: np.asarray(v) for k, v in layer.items()} for layer in tree]
    value_shape = jax.ShapeDtypeStruct((), jnp.float64)
    grad_shape = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), like)

    @jax.custom_jvp
    def value_fn(params):
        return jax.pure_callback(lambda p: np.float64(h.value_and_grad(host(p))[0]), value_shape, params)

    @value_fn.defjvp
    def _jvp(primals, tangents):
        (params,), (dparams,) = primals, tangents
        g = jax.pure_callback(lambda p: h.value_and_grad(host(p))[1], grad_shape, params)
        slope = sum(jnp.vdot(a, b) for a, b in zip(jax.tree_util.tree_leaves(g), jax.tree_util.tree_leaves(dparams)))
        return value_fn(params), slope
    return value_fn
