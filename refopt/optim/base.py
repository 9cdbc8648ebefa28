"""The interface every optimizer shares, and the checks they all use.

An optimizer is built with its hyperparameters (validated at construction: a ValueError names the bad
one) and then used as a pure pair

    state = opt.init(params)
    params, state, info = opt.update(params, state, oracle)

``state`` is a NamedTuple of arrays and numbers (so it can be saved, compared, restored); ``update``
never modifies ``params`` or ``state`` in place. ``info`` is a dict with at least

    loss       the loss at the incoming params (float)
    grad_norm  ‖g‖ at the incoming params
    skipped    True when the step was refused (non-finite gradient or statistics): params and state
               are then returned unchanged
    message    a short reason when something unusual happened ("" otherwise)

and, where they make sense, step_norm, lr, and method-specific entries (damping, cg_iterations, ...).
Randomness (probes, sampled labels) comes from a seed held in the state or from draws injected with
the ``draws`` argument of ``update``. An optimizer that draws reports what it drew as ``info["draws"]``
(the very object ``update(..., draws=)`` accepts: a labels array or a list of probe trees; None on steps
without draws), so a trace can record a run and replay it elsewhere on the same draws.
"""
from __future__ import annotations

import math
from typing import Any, ClassVar

from .. import tree as T

__all__ = ["Optimizer", "check_positive", "check_nonnegative", "check_unit_interval", "check_bool",
           "check_choice", "check_int", "step_info", "refuse"]


class Optimizer:
    """Base class: subclasses set ``name`` and implement ``init`` and ``update``."""

    name: ClassVar[str] = "optimizer"
    # True for methods that need a network Oracle (per-layer statistics, the GGN or Fisher, labels sampled
    # from the model) and cannot run on a FunctionOracle; the runner refuses such a pairing up front.
    needs_network: ClassVar[bool] = False

    def init(self, params) -> Any:
        """The initial state for ``params``: a NamedTuple of arrays and numbers."""
        raise NotImplementedError

    def update(self, params, state, oracle):
        """One step from ``params``: returns (new params, new state, info); see the module docs."""
        raise NotImplementedError

    def hyperparameters(self) -> dict:
        """The constructor arguments, for logs, checkpoints and traces."""
        return {k: v for k, v in vars(self).items() if not k.startswith("_")}

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.hyperparameters().items())
        return f"{type(self).__name__}({args})"


def check_positive(name: str, value) -> float:
    """``value`` as a float; ValueError naming ``name`` unless it is a positive finite number (not a bool)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return float(value)


def check_nonnegative(name: str, value) -> float:
    """``value`` as a float; ValueError naming ``name`` unless it is a non-negative finite number (not a bool)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a non-negative finite number, got {value!r}")
    return float(value)


def check_unit_interval(name: str, value) -> float:
    """β-style hyperparameters: in [0, 1)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value < 1:
        raise ValueError(f"{name} must lie in [0, 1), got {value!r}")
    return float(value)


def check_bool(name: str, value) -> bool:
    """Switches that are on or off: True or False only (a string such as "no" is not silently truthy)."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return value


def check_choice(name: str, value, choices) -> str:
    """``value`` itself; ValueError naming ``name`` unless it is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}")
    return value


def check_int(name: str, value, minimum: int = 1) -> int:
    """``value`` itself; ValueError naming ``name`` unless it is an integer (not a bool) ≥ ``minimum``."""
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an integer ≥ {minimum}, got {value!r}")
    return value


def step_info(loss, grad, **extra) -> dict:
    """The standard info dict of a step taken at a point with loss ``loss`` and gradient ``grad``."""
    info = {"loss": float(loss), "grad_norm": T.norm(grad), "skipped": False, "message": ""}
    info.update(extra)
    return info


def refuse(params, state, loss, message: str, grad=None):
    """Return params and state untouched with an info that says why the step was refused."""
    gn = T.norm(grad) if grad is not None and T.all_finite(grad) else float("nan")
    return params, state, {"loss": float(loss), "grad_norm": gn, "skipped": True, "message": message}
