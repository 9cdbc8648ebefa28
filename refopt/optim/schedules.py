"""Learning-rate schedules η_t: one shared option, ``schedule=``, of every optimizer with a learning rate.

t = 0, 1, 2, … is the number of steps the optimizer has taken (its state's ``step``): the first update uses
η_0, as optax's ``count`` and torch's ``last_epoch`` (one ``scheduler.step()`` per optimizer step) do; a
refused step (non-finite gradient) does not count. η is the optimizer's ``lr``, the peak value; a schedule
gives η_t from η and t in closed form (nothing is accumulated, so a resumed run sees the same values):

    constant       η_t = η
    linear_warmup  η_t = (1 − t/W) η₀ + (t/W) η        for t < W;   η_t = η for t ≥ W
    cosine         η_t = the warm-up above               for t < W;
                   η_t = c_t η + (1 − c_t) η_f,  c_t = ½ (1 + cos(π min(t − W, D − W) / (D − W)))   for t ≥ W
    step           η_t = η γ^⌊t/s⌋

with W = ``warmup_steps``, η₀ = ``init_lr`` (default 0), D = ``decay_steps``, η_f = ``final_lr`` (default 0),
s = ``step_size``, γ = ``gamma`` (default 0.1). Each affine mix is written as the convex combination above,
so η_0 = η₀, η_W = η and η_D = η_f exactly; the values agree with the libraries' own closed forms (which
group the operations differently) to a few ulps, not bit for bit.

Which library each follows:
* ``linear_warmup`` is optax.linear_schedule(init_value=η₀, end_value=η, transition_steps=W) (=
  warmup_constant_schedule): with the default η₀ = 0 **step 0 has lr 0**, optax's (and Hugging Face's
  get_constant_schedule_with_warmup's) convention; torch.optim.lr_scheduler.LinearLR(start_factor=η₀/η,
  end_factor=1, total_iters=W) is the same with η₀ > 0 (torch requires start_factor > 0).
* ``cosine`` is optax.warmup_cosine_decay_schedule(init_value=η₀, peak_value=η, warmup_steps=W,
  decay_steps=D, end_value=η_f): D counts the warm-up (the cosine part lasts D − W steps) and η_f is held
  after step D. With W = 0 it is optax.cosine_decay_schedule(η, D, alpha=η_f/η), and for t ≤ D torch's
  CosineAnnealingLR(T_max=D, eta_min=η_f) in its closed form (torch's rises again after T_max; refopt
  holds η_f, as optax does).
* ``step`` is torch.optim.lr_scheduler.StepLR(step_size=s, gamma=γ), = optax.exponential_decay(η,
  transition_steps=s, decay_rate=γ, staircase=True).

A spec is JSON, so it travels through ``refopt train adam schedule='{"name": "cosine", "decay_steps": 1000}'``,
traces and checkpoints: None or "constant" (the default), or a dict {"name": ..., field: value, ...} with the
fields above, or a ``Schedule`` object. ``Schedule.spec()`` is the canonical dict, every field included,
which is what ``Optimizer.hyperparameters()`` reports (None for constant). Bad specs are one-line
ValueErrors naming ``schedule`` and the field: an unknown name or field, a missing required field, steps
that are not integers in their range (at most 10⁹), W ≥ D, a cosine's η₀ without a warm-up, non-finite or
negative rates, γ outside (0, 1], and (checked against the optimizer's lr) η₀ > η or η_f > η: a warm-up
rises to lr, a decay falls from it.
"""
from __future__ import annotations

import math
from dataclasses import MISSING, dataclass, fields
from typing import ClassVar

from .base import check_int, check_nonnegative, check_positive, show_value

__all__ = ["Schedule", "Constant", "LinearWarmup", "Cosine", "StepDecay", "SCHEDULES", "make_schedule"]


def _mix(a: float, b: float, f: float) -> float:
    """(1 − f)·a + f·b: a at f = 0 and b at f = 1, exactly."""
    return (1.0 - f) * a + f * b


@dataclass(frozen=True)
class Schedule:
    """A learning-rate schedule: ``schedule(lr, t)`` is η_t for the peak lr η (see the module docs)."""

    name: ClassVar[str] = "schedule"

    def __call__(self, lr: float, t: int) -> float:
        """η_t for peak ``lr`` at step ``t`` (0-based)."""
        raise NotImplementedError

    def spec(self) -> dict:
        """The JSON description: {"name": ..., every field: its value}."""
        return {"name": self.name, **{f.name: getattr(self, f.name) for f in fields(self)}}

    def check_lr(self, lr: float) -> None:
        """ValueError when the schedule does not fit the optimizer's peak ``lr`` (a rate above it)."""
        for field in ("init_lr", "final_lr"):
            value = getattr(self, field, None)
            if value is not None and value > lr:
                what = "a warm-up rises to lr" if field == "init_lr" else "a decay falls from lr"
                raise ValueError(f"schedule.{field}={value!r} exceeds lr={lr!r} ({what})")


@dataclass(frozen=True)
class Constant(Schedule):
    """η_t = η."""

    name: ClassVar[str] = "constant"

    def __call__(self, lr, t):
        return lr


@dataclass(frozen=True)
class LinearWarmup(Schedule):
    """η_t from η₀ at t = 0 linearly to η at t = W, then η (optax.linear_schedule)."""

    name: ClassVar[str] = "linear_warmup"
    warmup_steps: int
    init_lr: float = 0.0

    def __post_init__(self):
        object.__setattr__(self, "warmup_steps", check_int("schedule.warmup_steps", self.warmup_steps))
        object.__setattr__(self, "init_lr", check_nonnegative("schedule.init_lr", self.init_lr))

    def __call__(self, lr, t):
        return _mix(self.init_lr, lr, t / self.warmup_steps) if t < self.warmup_steps else lr


@dataclass(frozen=True)
class Cosine(Schedule):
    """Optional linear warm-up over W steps, then cosine decay to η_f at t = D (optax.warmup_cosine_decay_schedule)."""

    name: ClassVar[str] = "cosine"
    decay_steps: int
    final_lr: float = 0.0
    warmup_steps: int = 0
    init_lr: float = 0.0

    def __post_init__(self):
        object.__setattr__(self, "decay_steps", check_int("schedule.decay_steps", self.decay_steps))
        object.__setattr__(self, "final_lr", check_nonnegative("schedule.final_lr", self.final_lr))
        object.__setattr__(self, "warmup_steps", check_int("schedule.warmup_steps", self.warmup_steps, minimum=0))
        object.__setattr__(self, "init_lr", check_nonnegative("schedule.init_lr", self.init_lr))
        if self.warmup_steps >= self.decay_steps:
            raise ValueError(f"schedule.warmup_steps={self.warmup_steps} must be less than decay_steps="
                             f"{self.decay_steps} (decay_steps counts the warm-up, as optax's)")
        if self.init_lr and not self.warmup_steps:
            raise ValueError(f"schedule.init_lr={self.init_lr!r} needs warmup_steps > 0 (it is the warm-up's start)")

    def __call__(self, lr, t):
        W, D = self.warmup_steps, self.decay_steps
        if t < W:
            return _mix(self.init_lr, lr, t / W)
        c = 0.5 * (1.0 + math.cos(math.pi * min(t - W, D - W) / (D - W)))
        return _mix(self.final_lr, lr, c)


@dataclass(frozen=True)
class StepDecay(Schedule):
    """η_t = η γ^⌊t/s⌋ (torch's StepLR)."""

    name: ClassVar[str] = "step"
    step_size: int
    gamma: float = 0.1

    def __post_init__(self):
        object.__setattr__(self, "step_size", check_int("schedule.step_size", self.step_size))
        gamma = check_positive("schedule.gamma", self.gamma)
        if gamma > 1:
            raise ValueError(f"schedule.gamma must lie in (0, 1], got {show_value(self.gamma)}")
        object.__setattr__(self, "gamma", gamma)

    def __call__(self, lr, t):
        return lr * self.gamma ** (t // self.step_size)


SCHEDULES: dict[str, type] = {cls.name: cls for cls in (Constant, LinearWarmup, Cosine, StepDecay)}
_EXAMPLE = '{"name": "cosine", "decay_steps": 1000}'


def make_schedule(spec) -> Schedule:
    """The ``Schedule`` of ``spec``: None or a name (no other field), a dict {"name": ..., fields}, or a
    registered ``Schedule`` instance (returned as it is; a subclass of one's own is refused, since a trace or
    checkpoint could not rebuild it from its spec); a one-line ValueError naming ``schedule`` otherwise (module docs)."""
    if spec is None:
        return Constant()
    if isinstance(spec, Schedule):  # only the registered classes: their spec() is what a trace reloads
        if type(spec) not in SCHEDULES.values():
            raise ValueError(f"schedule must be one of refopt's schedules ({', '.join(SCHEDULES)}), got an instance "
                             f"of {type(spec).__name__}: its spec could not be read back from a trace or checkpoint")
        return spec
    if isinstance(spec, str):
        spec = {"name": spec}
    if not isinstance(spec, dict):
        raise ValueError(f"schedule must be None, a name, a dict such as {_EXAMPLE} or a Schedule, got "
                         f"{show_value(spec)}")
    name = spec.get("name")
    if not isinstance(name, str) or name not in SCHEDULES:
        raise ValueError(f"schedule needs a name from {', '.join(SCHEDULES)} (e.g. {_EXAMPLE}), got "
                         f"name={show_value(name)}")
    cls = SCHEDULES[name]
    names = [f.name for f in fields(cls)]
    unknown = sorted(str(k) for k in spec if k != "name" and k not in names)
    if unknown:
        raise ValueError(f"schedule {name!r} has no field {', '.join(unknown)}; its fields: {', '.join(names) or 'none'}")
    required = [f.name for f in fields(cls) if f.default is MISSING]
    missing = [f for f in required if f not in spec]
    if missing:
        raise ValueError(f"schedule {name!r} needs {', '.join(missing)} (e.g. {_EXAMPLE})")
    return cls(**{k: v for k, v in spec.items() if k != "name"})
