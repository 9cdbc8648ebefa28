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

Declarations, each made once on the class and read by everything else:

    conventions  a tuple of ``Switch``: each convention that implementations disagree on, with its
                 choices, the paper's default, what it means and who uses which value. Construction
                 validates through it (``self.set_switch``), ``switches`` ({name: choices}, searched by
                 ``refopt.verify``) is derived from it, and so are the switch tables of CONTRIBUTING.md
                 and the family docs (``refopt.optim.conventions_table``); tests/test_declarations.py
                 checks that every generated table in the docs is current, that every default is the
                 constructor's, and that no doc lists switches in a hand-written table.
    requires     the oracle capabilities (``refopt.oracle.CAPABILITIES``) the method needs;
                 ``check_oracle`` compares them with ``oracle.provides`` when a run is set up.
    draws        what ``update`` samples: None (nothing; ``update(..., draws=x)`` with x not None is
                 refused), "labels" (an integer array of labels sampled from the model, (k, B) or
                 (k, B, C)), "signs" (Rademacher sign sets in output space, a float array (k, B, C)
                 of ±1: K-FAC's curvature propagation) or "probes" (a list of probe trees shaped like
                 the parameters);
                 ``check_draws`` validates injected draws before anything is computed.

Learning rate and schedule: an optimizer with a learning rate validates ``lr`` and then calls
``self.set_schedule(schedule)`` (the constructor argument ``schedule=``, ``optim/schedules.py``), and its
update takes η_t = ``self.lr_at(state.step)``, which is ``lr`` itself under the default constant schedule
(so every golden trace replays bit for bit) and is what ``info["lr"]`` reports.

Gradient-in steps (``optim/gradients.py``): ``opt.apply_gradients(grads, state, params, loss=None,
**estimates)`` runs ``update`` on an oracle that answers with the given gradient and refuses anything
else. ``gradient_in`` declares it: None (the method cannot: ``gradient_in_reason`` says why) or the
tuple of estimates the method accepts in place of its own draws (() for gradients only);
``estimates_needed(state)`` names those the next step uses.

The checks (``check_positive``, ``check_nonnegative``, ``check_unit_interval``, ``check_int``,
``check_bool``, ``check_choice``, ``check_real_array``) accept real numbers given as Python or NumPy
scalars and return plain Python values; they refuse bools as numbers, complex numbers, strings, arrays,
NaN, ±inf and integers beyond the float range, each with a ValueError that names the argument. Every
integer has an upper bound (the MAX_* constants below) so that no value means unbounded work.
"""
from __future__ import annotations

import inspect
import math
import numbers
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Optional

from .. import tree as T
from ..backend import as_array
from ..oracle import FunctionOracle, check_capabilities

__all__ = ["Optimizer", "Switch", "check_positive", "check_nonnegative", "check_unit_interval", "check_bool",
           "check_choice", "check_int", "step_info", "refuse", "MAX_SEED", "MAX_DRAWS", "MAX_ITERATIONS",
           "MAX_MEMORY", "MAX_PERIOD", "MAX_DIMENSION", "MAX_DENSE_SIZE", "MAX_AXIS", "as_real", "check_real_array", "show_value"]


@dataclass(frozen=True)
class Switch:
    """One convention that implementations disagree on, declared once on the optimizer class.

    ``choices`` are the values the convention search tries; for a discrete switch they are also the only
    valid values (validated with ``check_bool`` when they are True/False, else ``check_choice``). A switch
    that also takes other values (a numeric one such as an initial accumulator) gives ``check``, the
    validator ``check(name, value) -> value``. ``default`` is the paper's choice; ``meaning`` says in one
    line what the switch changes, ``source`` who uses which value.
    """

    name: str
    choices: tuple
    default: Any
    meaning: str
    source: str = ""
    check: Optional[Callable] = None

    def validate(self, value):
        """``value`` checked (and normalised) for this switch; ValueError naming the switch otherwise."""
        if self.check is not None:
            return self.check(self.name, value)
        if all(isinstance(c, bool) for c in self.choices):
            return check_bool(self.name, value)
        return check_choice(self.name, value, self.choices)


class _Declared:
    """A value derived from an optimizer's declarations (``switches``, ``needs_network``), read on the class
    (from its declarations, for the default arguments) or on an instance (from the instance's, where
    ``__init__`` set ``requires`` from an argument)."""

    def __init__(self, derive):
        self.derive, self.__doc__ = derive, derive.__doc__

    def __get__(self, obj, cls):
        return self.derive(cls if obj is None else obj)


class Optimizer:
    """Base class: subclasses set ``name`` and implement ``init`` and ``update``; they declare
    ``conventions``, ``requires`` and ``draws`` (see the module docs).

    ``requires`` and ``draws`` are class attributes (what the method needs with its default arguments);
    where they depend on a constructor argument (Newton-CG's ``curvature="ggn"`` needs "ggn") ``__init__``
    sets them on the instance, and they are not hyperparameters. A variant that fixes a switch of its base
    (EKFAC's ``damping_scheme="eigen"``) omits it from its own ``conventions``; ``switch`` then finds the
    base's declaration, so the base constructor still validates it.
    """

    name: ClassVar[str] = "optimizer"
    conventions: ClassVar[tuple] = ()
    requires: ClassVar[frozenset] = frozenset({"value", "gradient"})
    draws: ClassVar[Optional[str]] = None
    gradient_in: ClassVar[Optional[tuple]] = None   # see the module docs ("Gradient-in steps")
    gradient_in_reason: ClassVar[str] = "it declares no gradient-in interface"
    _schedule = None   # the Schedule set by ``set_schedule``; None: the constant η_t = lr

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        names = [sw.name for sw in cls.conventions]
        if len(set(names)) != len(names):
            raise TypeError(f"{cls.__name__}: a switch is declared twice in conventions: {names}")

    @_Declared
    def switches(owner) -> dict:
        """{name: choices} of the class's ``conventions`` (its own or inherited): what ``refopt.verify``
        searches."""
        return {sw.name: sw.choices for sw in owner.conventions}

    @_Declared
    def needs_network(owner) -> bool:
        """Whether the method needs more than a function oracle provides (per-layer statistics, the GGN or
        Fisher, labels sampled from the model)."""
        return not owner.requires <= FunctionOracle.provides

    @classmethod
    def switch(cls, name: str) -> Switch:
        """The declaration of the switch ``name``: the class's own, else the nearest base class's."""
        for klass in cls.__mro__:
            for sw in vars(klass).get("conventions", ()):
                if sw.name == name:
                    return sw
        raise KeyError(f"{cls.__name__} declares no switch {name!r}")

    def set_switch(self, name: str, value) -> None:
        """Validate ``value`` by the switch's declaration and keep it as ``self.<name>``."""
        setattr(self, name, type(self).switch(name).validate(value))

    def check_oracle(self, oracle) -> None:
        """ValueError naming what this optimizer requires that ``oracle`` does not provide."""
        check_capabilities(oracle, self.requires, type(self).name)

    def check_draws(self, draws) -> None:
        """Refuse injected ``draws`` of the wrong kind for this optimizer (see the module docs)."""
        if draws is None:
            return
        who = type(self).name
        if self.draws is None:
            raise ValueError(f"{who} makes no random draws, but draws were given")
        if self.draws == "labels":
            kind = getattr(getattr(draws, "dtype", None), "kind", None)
            if kind not in ("i", "u", "f") or getattr(draws, "ndim", 0) not in (2, 3):
                raise ValueError(f"{who}: draws must be an array of sampled labels, (k, B) or (k, B, C), "
                                 f"got {show_value(draws)}")
        elif self.draws == "signs":
            kind = getattr(getattr(draws, "dtype", None), "kind", None)
            if kind != "f" or getattr(draws, "ndim", 0) != 3 or not bool(((draws == 1) | (draws == -1)).all()):
                raise ValueError(f"{who}: draws must be Rademacher signs, a float array (k, B, C) of ±1, "
                                 f"got {show_value(draws)}")
        elif not (isinstance(draws, (list, tuple)) and len(draws) > 0):
            raise ValueError(f"{who}: draws must be a non-empty list of probe trees, got {show_value(draws)}")

    def set_schedule(self, schedule) -> None:
        """Validate ``schedule`` (``schedules.make_schedule``: None, a name, a dict spec or a Schedule) against
        ``self.lr`` and keep its JSON spec as ``self.schedule`` (None for the constant schedule)."""
        from .schedules import Constant, make_schedule  # noqa: PLC0415 (schedules imports this module)
        sched = make_schedule(schedule)
        sched.check_lr(self.lr)
        self._schedule = None if isinstance(sched, Constant) else sched
        self.schedule = None if self._schedule is None else sched.spec()

    def lr_at(self, step: int) -> float:
        """η_t of the step taken from a state whose step count is ``step``: ``lr`` under the constant schedule."""
        return self.lr if self._schedule is None else self._schedule(self.lr, step)

    def gradient_in_refusal(self) -> Optional[str]:
        """Why this optimizer, as configured, cannot take gradient-in steps; None when it can."""
        return self.gradient_in_reason if self.gradient_in is None else None

    def estimates_needed(self, state) -> tuple:
        """The injected estimates (names of ``gradient_in``) that the step from ``state`` uses."""
        return ()

    def apply_gradients(self, grads, state, params, loss=None, **estimates):
        """One step from gradients computed elsewhere: (new params, new state, info), by ``update`` on an
        oracle that returns ``grads`` (and ``loss``) at ``params`` (``optim/gradients.py``)."""
        from .gradients import apply_gradients  # noqa: PLC0415 (gradients imports this module)
        return apply_gradients(self, grads, state, params, loss, **estimates)

    def init(self, params) -> Any:
        """The initial state for ``params``: a NamedTuple of arrays and numbers."""
        raise NotImplementedError

    def update(self, params, state, oracle, draws=None):
        """One step from ``params``: returns (new params, new state, info); see the module docs."""
        raise NotImplementedError

    def hyperparameters(self) -> dict:
        """The constructor's arguments by its signature, each with the value the instance holds (validated
        and normalised), for logs, checkpoints and traces: ``type(opt)(**opt.hyperparameters())`` builds an
        optimizer that behaves the same. A switch whose default None means "derived from another switch"
        (Newton's ``line_search``, the quasi-Newton ``form``) is reported as the value it resolved to,
        which the constructor accepts and which round-trips; one resolved only when used (Sophia's
        ``refresh``) stays None."""
        names = [p.name for p in inspect.signature(type(self).__init__).parameters.values()
                 if p.name != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        return {name: getattr(self, name) for name in names}

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.hyperparameters().items())
        return f"{type(self).__name__}({args})"


# What the checks accept as a number: any real number (numbers.Real: Python ints and floats, and NumPy's
# integer and floating scalars such as np.float32(0.1) or np.int64(3), which is what reading a config
# through NumPy gives); never bools (True is not 1.0), complex numbers, strings, arrays or None. A value
# is converted to a Python float or int, so hyperparameters() and checkpoints hold plain numbers. An
# integer too large for a float (10**400) is refused with the argument's name, not an OverflowError.


def _is_bool(value) -> bool:
    """Python's bool or a NumPy bool scalar (np.bool_ is not a numbers.Integral, bool is)."""
    return isinstance(value, bool) or (type(value).__name__ in ("bool_", "bool")
                                       and type(value).__module__ == "numpy")

# Upper bounds of the integer hyperparameters (a larger value would mean unbounded work, memory or a
# number no file format holds); the table in CONTRIBUTING.md ("Bad input") lists which argument has which.
from ..serialize import MAX_SEED  # noqa: E402,F401 (seeds: an int64 in every file; defined in serialize.py)
from ..serialize import short_repr  # noqa: E402
MAX_DRAWS = 1000                # probes and label samples per step (each is one more pass)
MAX_ITERATIONS = 10_000         # inner iterations: CG iterations, line-search evaluations, damping trials
MAX_MEMORY = 10_000             # stored curvature pairs (L-BFGS, K-BFGS's L-BFGS variant)
MAX_PERIOD = 10 ** 9            # refresh intervals and start steps, counted in steps
MAX_DIMENSION = 2 ** 31 - 1     # sizes compared with array shapes (block sizes, Sophia's bs)
MAX_DENSE_SIZE = 2 ** 16        # size caps of dense n×n matrices (max_size): n = 65536 is 32 GiB in float64
MAX_AXIS = 63                   # array axes (NumPy arrays have at most 64)


show_value = short_repr  # the one value-display helper, serialize's (a huge integer by its digits)


def as_real(value):
    """``value`` as a Python float (possibly inf or nan), or None when it is not a real number (a bool, a
    complex number, a string, an array, None) or an integer beyond the float range."""
    if not isinstance(value, numbers.Real) or _is_bool(value):
        return None
    try:
        return float(value)
    except OverflowError:  # an int beyond the float range
        return None


def check_positive(name: str, value) -> float:
    """``value`` as a float; ValueError naming ``name`` unless it is a positive finite real number (not a bool)."""
    x = as_real(value)
    if x is None or not math.isfinite(x) or x <= 0:
        raise ValueError(f"{name} must be a positive finite number, got {show_value(value)}")
    return x


def check_nonnegative(name: str, value) -> float:
    """``value`` as a float; ValueError naming ``name`` unless it is a non-negative finite real number (not a bool)."""
    x = as_real(value)
    if x is None or not math.isfinite(x) or x < 0:
        raise ValueError(f"{name} must be a non-negative finite number, got {show_value(value)}")
    return x


def check_unit_interval(name: str, value) -> float:
    """β-style hyperparameters: a real number in [0, 1), as a float."""
    x = as_real(value)
    if x is None or not 0 <= x < 1:
        raise ValueError(f"{name} must lie in [0, 1), got {show_value(value)}")
    return x


def check_bool(name: str, value) -> bool:
    """Switches that are on or off: True or False only (NumPy's bool too; a string such as "no" or the
    number 1 is not silently read as True)."""
    if not _is_bool(value):
        raise ValueError(f"{name} must be True or False, got {show_value(value)}")
    return bool(value)


def check_choice(name: str, value, choices):
    """The matching entry of ``choices`` (strings or None); ValueError naming ``name`` for anything else.

    Matching is by type as well as value, so an unhashable or array-like value is refused cleanly, and a
    NumPy string comes back as the plain str of the choice.
    """
    for c in choices:
        if value is c or (isinstance(c, str) and isinstance(value, str) and value == c):
            return c
    raise ValueError(f"{name} must be one of {tuple(choices)}, got {show_value(value)}")


def check_int(name: str, value, minimum: int = 1, maximum: int = MAX_PERIOD) -> int:
    """``value`` as a Python int; ValueError naming ``name`` unless it is an integer (Python or NumPy, not
    a bool) with ``minimum`` ≤ value ≤ ``maximum``. The bound keeps a large value from meaning unbounded
    work (see the MAX_* constants)."""
    if not isinstance(value, numbers.Integral) or _is_bool(value) or not minimum <= value <= maximum:
        raise ValueError(f"{name} must be an integer in [{minimum}, {maximum}], got {show_value(value)}")
    return int(value)


def check_real_array(name: str, value):
    """``value`` (an array or nested list of real numbers) as a backend array of the default float dtype;
    ValueError naming ``name`` for strings, dicts, complex or object entries, ragged lists and numbers
    beyond the float range. Finiteness and shape are the caller's to check."""
    kind = getattr(getattr(value, "dtype", None), "kind", None)
    if isinstance(value, (str, bytes, dict, set)) or kind not in (None, "f", "i", "u"):
        raise ValueError(f"{name} must be an array of real numbers, got {show_value(value)}")
    try:
        return as_array(value)
    except (TypeError, ValueError, OverflowError) as exc:
        raise ValueError(f"{name} must be an array of real numbers, got {show_value(value)} ({exc})") from None


def step_info(loss, grad, **extra) -> dict:
    """The standard info dict of a step taken at a point with loss ``loss`` and gradient ``grad``."""
    info = {"loss": float(loss), "grad_norm": T.norm(grad), "skipped": False, "message": ""}
    info.update(extra)
    return info


def refuse(params, state, loss, message: str, grad=None):
    """Return params and state untouched with an info that says why the step was refused."""
    gn = T.norm(grad) if grad is not None and T.all_finite(grad) else float("nan")
    return params, state, {"loss": float(loss), "grad_norm": gn, "skipped": True, "message": message}
