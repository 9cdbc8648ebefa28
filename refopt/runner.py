"""Running an optimizer on a problem: the training loop, its log, checkpoints and resumption.

One step = one ``update`` call of the optimizer on the oracle of the current batch (full batch when
``batch_size`` is None). Mini-batch order is a pure function of (seed, epoch): epoch e visits the
examples in the order ``rng((seed, e)).permutation(n)``, cut into ⌊n / batch_size⌋ batches (the
remainder of the permutation is left out of that epoch), so a run resumed at step t sees exactly the
batches an uninterrupted run would. With the optimizer's own randomness kept in its state, a resumed
run is bit-identical to an uninterrupted one. A checkpoint records the dtype it was written in and is
resumed only under that default dtype; ``load_checkpoint`` checks its meta before decoding anything and
its params and state against a fresh run's (structure, shapes, dtype), refusing in one ValueError line.

Each record of the log holds: step, loss (at the incoming parameters, on the step's batch), train_loss
(full-batch loss, every ``eval_every`` steps and at the end), grad_norm, step_norm, lr, skipped,
message, the oracle's cumulative counts (nfev, ngev, nhvp, ...) and elapsed seconds; the dense methods' records
also hold nhev, that step's dense matrices (``RunResult.nhev`` adds them up). Where train_loss is recorded,
so are train_accuracy, val_loss and val_accuracy: the loss and accuracy (``Loss.accuracy``) on the
problem's held-out examples, and the accuracy on the training examples; None where the problem holds out
nothing or its loss has no accuracy (the Gaussian), and in the records between evaluations. These
evaluations use counts of their own: they are not requests of the optimizer.

Divergence: a run stops with status "diverged" when a recorded training loss is not finite, or, with
``divergence_factor`` = c, when it exceeds c·|L₀|, L₀ the full-batch training loss at the initial
parameters (``RunResult.initial_loss``; a resumed run recomputes it from ``init_params(seed)``, so the
history keeps one record per step). A problem whose L₀ is 0 diverges at any positive loss.

Checkpoint identity: a checkpoint records the config's identity and the problem's (``identity()`` of the
problem: for a network its sizes, activations, initialisation, loss and a digest of its training and
held-out arrays), and is resumed only by a run whose both are equal.
``load_checkpoint_params(path, problem)`` reads a checkpoint's params without a run configuration (for
``refopt analyze``): the optimizer, hyperparameters, batch size and seed come from the file's meta, the
problem is the caller's, and every check of ``load_checkpoint`` applies (the optimizer's name is looked
up in refopt's own table; a checkpoint of another problem is refused).

Sharpness along training (``analyze_every`` = N): at every N-th step (N, 2N, ...), the record also holds
hessian_max, the algebraic largest eigenvalue of the full-batch Hessian at the step's new parameters (the
largest Ritz value of ``ANALYZE_LANCZOS_STEPS`` = 30 Lanczos steps, n when smaller, from the Gaussian start
of seed 0, with full reorthogonalisation: ``analysis.lanczos_eigenpairs``), hessian_max_residual (its
residual |β_m s_m|, which bounds its distance to an eigenvalue of H) and, where the step reports a positive
lr, two_over_lr = 2/lr: gradient descent with step size lr is stable on a quadratic only while λ_max < 2/lr,
the threshold of Cohen et al. 2021 ("edge of stability"; with heavy-ball momentum β it is (2 + 2β)/lr, and for
preconditioned methods it concerns the preconditioned Hessian). Between those steps the three are None.
hessian_max is NaN where the Hessian's products are not finite (parameters that overflow). These products
use an oracle with counts of its own and touch neither the optimizer's state nor its random draws, so the
trajectory is the same with and without them. The steps are multiples of N only (not the run's last, as
for train_loss), so a run resumed with the same N records exactly where an uninterrupted one does.
``analyze_every`` is not part of the identity: like ``eval_every`` it is this run's choice, so a resumed run
records sharpness where its own config says (the history it resumes keeps the values already recorded).

A full-batch run stops with status "precision" (converged as far as the dtype resolves the loss) when a
step's line search reports "precision", or when ``minimize.StallMonitor`` sees, for 10 steps, every line
search work at the rounding level of the loss, the loss not fall by more than the noise it showed in this
run, and the gradient norm not halve; the message says which (optimizers without a line search never stop
this way). A resumed run replays
its history through the monitor, so it stops where an uninterrupted one does. Mini-batch runs do not
apply this rule (each step sees another batch).
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field

from . import __version__
from . import tree as T
from .autodiff.core import getval
from .backend import default_dtype, rng
from .oracle import Counts, Oracle
from .minimize import StallMonitor, at_rounding_level, dtype_eps
from .optim import make_optimizer, optimizer_class
from .optim.base import (MAX_DIMENSION, MAX_PERIOD, MAX_SEED, as_real, check_int, check_nonnegative, check_positive,
                         show_value)
from .serialize import read_npz, write_npz_atomic

__all__ = ["RunConfig", "RunResult", "run", "CHECKPOINT_FORMAT", "MAX_COUNT", "MAX_ELAPSED", "load_checkpoint",
           "load_checkpoint_params", "save_checkpoint", "Interrupted", "ANALYZE_LANCZOS_STEPS"]

# 2: the meta holds the problem's identity (``problem_identity``) and the records the held-out metrics.
CHECKPOINT_FORMAT = "refopt-checkpoint/2"
# Caps on what a checkpoint's meta and history may claim (``load_checkpoint``). A count is at most 2⁵³:
# every integer up to it is exact in a float64, so the JSON meta and log read the same in any JSON reader,
# and what a run can add to it (at most 10⁹ steps, each a bounded number of requests) stays far below the
# 2⁶³ − 1 that saving accepts, so a resumed run can always write its next checkpoint. ``step`` is at most
# 10⁹ (``MAX_PERIOD``, the cap on a run's ``steps``); ``elapsed`` at most 10⁹ s (about 32 years).
MAX_COUNT = 2 ** 53
MAX_ELAPSED = 1e9
# Lanczos steps behind ``analyze_every``'s hessian_max (n when smaller): the largest Ritz value of 30 steps
# converges fast when λ_max is separated from the rest (its error falls like a Chebyshev polynomial of the
# gap: the Kaniel–Paige bound, Golub & Van Loan §10.1), and 30 products stay cheap beside a step.
ANALYZE_LANCZOS_STEPS = 30


@dataclass
class RunConfig:
    """What to run: optimizer and hyperparameters, problem, steps, batch size, seed, stopping rules, eval interval."""

    optimizer: str
    hyperparameters: dict = field(default_factory=dict)
    problem: str = "digits_mlp"
    steps: int = 100
    batch_size: int | None = None
    seed: int = 0
    target_loss: float | None = None
    max_seconds: float | None = None
    eval_every: int = 1
    gtol: float = 0.0      # stop ("converged") once the gradient norm at a step's start is ≤ gtol
    divergence_factor: float | None = None  # stop ("diverged") once a training loss exceeds this × |initial loss|
    analyze_every: int | None = None  # record hessian_max (and 2/lr) every N steps (module docs)

    def __post_init__(self):
        """Validate every field (ValueError naming it): names are strings, counts are integers within the
        bounds of optim.base (steps and eval_every ≤ 10⁹, seed ≤ 2⁶³ − 1), and the stopping rules are
        finite (a NaN target loss or time budget would never stop a run, or stop it at once); a
        divergence factor is None or a finite number > 1 (at most 1 would stop runs that make no progress);
        analyze_every is None or an integer in [1, 10⁹]."""
        for name in ("optimizer", "problem"):
            if not isinstance(getattr(self, name), str):
                raise ValueError(f"{name} must be a name (a string), got {show_value(getattr(self, name))}")
        if not isinstance(self.hyperparameters, dict) or not all(isinstance(k, str) for k in self.hyperparameters):
            raise ValueError(f"hyperparameters must be a dict of name → value, got {show_value(self.hyperparameters)}")
        self.steps = check_int("steps", self.steps)
        self.eval_every = check_int("eval_every", self.eval_every)
        self.seed = check_int("seed", self.seed, minimum=0, maximum=MAX_SEED)
        if self.batch_size is not None:
            self.batch_size = check_int("batch_size", self.batch_size, maximum=MAX_DIMENSION)
        self.gtol = check_nonnegative("gtol", self.gtol)
        if self.max_seconds is not None:
            self.max_seconds = check_positive("max_seconds", self.max_seconds)
        if self.target_loss is not None:
            x = as_real(self.target_loss)
            if x is None or not math.isfinite(x):
                raise ValueError(f"target_loss must be a finite number, got {show_value(self.target_loss)}")
            self.target_loss = x
        if self.divergence_factor is not None:
            x = as_real(self.divergence_factor)
            if x is None or not math.isfinite(x) or not x > 1:
                raise ValueError("divergence_factor must be None or a finite number > 1, "
                                 f"got {show_value(self.divergence_factor)}")
            self.divergence_factor = x
        if self.analyze_every is not None:
            self.analyze_every = check_int("analyze_every", self.analyze_every)

    def identity(self) -> dict:
        """What a checkpoint must match to be resumed by this configuration."""
        return {"optimizer": self.optimizer, "hyperparameters": self.hyperparameters, "problem": self.problem,
                "batch_size": self.batch_size, "seed": self.seed}


@dataclass
class RunResult:
    """What ``run`` returns: the config, final params and state, the log records, the status and a message."""

    config: RunConfig
    params: object
    state: object
    history: list
    status: str           # "completed", "converged", "precision", "target_reached", "time_limit", "diverged"
    message: str = ""
    initial_loss: float = math.nan  # the full-batch training loss at the initial parameters

    def _last(self, key: str):
        for rec in reversed(self.history):
            if rec.get(key) is not None:
                return rec[key]
        return None

    @property
    def final_val_loss(self) -> float | None:
        """The last held-out loss in the history (None when the problem holds out nothing)."""
        return self._last("val_loss")

    @property
    def final_val_accuracy(self) -> float | None:
        """The last held-out accuracy in the history (None without held-out examples or for a loss without one)."""
        return self._last("val_accuracy")

    @property
    def final_train_accuracy(self) -> float | None:
        """The last full-batch training accuracy in the history (None for a loss without one)."""
        return self._last("train_accuracy")

    @property
    def nhev(self) -> int:
        """Dense curvature matrices formed (the Hessian for newton, the GGN for gauss_newton): the sum of the
        steps' ``info["nhev"]``; 0 for the methods that form none."""
        return sum(int(rec.get("nhev") or 0) for rec in self.history)

    @property
    def final_loss(self) -> float:
        """The last full-batch training loss in the history (NaN when none was recorded)."""
        for rec in reversed(self.history):
            if rec.get("train_loss") is not None:
                return rec["train_loss"]
        return math.nan


def _batch_indices(n: int, batch_size: int, seed: int, step: int):
    per_epoch = max(1, n // batch_size)
    epoch, pos = divmod(step, per_epoch)
    order = rng([seed, epoch]).permutation(n)
    return order[pos * batch_size:(pos + 1) * batch_size]


class Interrupted(Exception):
    """Raised by ``run`` after it saved a checkpoint on Ctrl-C."""

    def __init__(self, path: str, step: int):
        super().__init__(f"interrupted at step {step}; checkpoint written to {path}")
        self.path, self.step = path, step


def save_checkpoint(path: str, config: RunConfig, step: int, params, state, history, counts: Counts,
                    problem_identity: dict | None = None) -> None:
    """Atomically write step ``step``'s checkpoint (params, state, history, counts, config identity, dtype, and
    ``problem_identity``: the problem's ``identity()``; None records null, which no run resumes)."""
    meta = {"format": CHECKPOINT_FORMAT, "version": __version__, "step": step, **config.identity(),
            "problem_identity": problem_identity, "counts": counts.as_dict(), "dtype": default_dtype().__name__}
    write_npz_atomic(path, meta, params=params, state=state, history=history)


def _check_meta(path: str, meta: dict, config: RunConfig, problem_identity: dict | None = None) -> None:
    """Refuse (ValueError) a checkpoint whose meta ``config`` (on the problem of ``problem_identity``, when
    given) cannot resume; runs before anything is decoded."""
    _check_format(path, meta)
    want = json.loads(json.dumps(config.identity()))
    for key, value in want.items():
        if meta.get(key) != value:
            raise ValueError(f"{path}: checkpoint has {key}={_short(meta.get(key))}, this run has {key}={value!r}")
    dtype = default_dtype().__name__
    if "dtype" not in meta:  # every file of this format records it (files without it were format 1)
        raise ValueError(f"{path}: meta has no dtype; every {CHECKPOINT_FORMAT} checkpoint records it")
    if meta["dtype"] != dtype:
        raise ValueError(f"{path}: checkpoint is {_short(meta['dtype'])}, this run's dtype is {dtype} "
                         f"(set REFOPT_DTYPE={_short(meta['dtype'])} to resume it)")
    if problem_identity is not None:  # after the dtype: the data digest depends on it
        _check_problem_identity(path, meta.get("problem_identity"), json.loads(json.dumps(problem_identity)))
    step = meta.get("step")
    if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step <= MAX_PERIOD:
        raise ValueError(f"{path}: meta step must be a non-negative integer at most 10⁹ (the cap on a run's steps), "
                         f"got {_short(step)}")
    counts = meta.get("counts")
    names = set(Counts().as_dict())
    if not isinstance(counts, dict) or set(counts) != names:
        raise ValueError(f"{path}: meta counts must be an object with the keys {sorted(names)}, got {_short(counts)}")
    for k, v in counts.items():
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= MAX_COUNT:
            raise ValueError(f"{path}: meta counts[{k!r}] must be a non-negative integer at most 2⁵³, got {_short(v)}")


def _check_format(path: str, meta: dict) -> None:
    """Refuse a file that is not a checkpoint of this format and version."""
    fmt = meta.get("format")
    if isinstance(fmt, str) and fmt.startswith("refopt-checkpoint/") and fmt != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: checkpoint format {_short(fmt)}, this refopt reads {CHECKPOINT_FORMAT!r} "
                         "(checkpoints are not carried across formats)")
    if fmt != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: not a refopt checkpoint (format {_short(fmt)})")
    if meta.get("version") != __version__:
        raise ValueError(f"{path}: written by refopt {_short(meta.get('version'))}, this is {__version__}; "
                         "checkpoints are not carried across versions")


def _check_problem_identity(path: str, got, want: dict) -> None:
    """Refuse a checkpoint written for another problem: the first differing entry of the identities is named."""
    if not isinstance(got, dict):
        raise ValueError(f"{path}: checkpoint has no problem identity (problem_identity={_short(got)}); "
                         "it cannot be matched to this run's problem")
    for key in sorted(set(got) | set(want)):
        if got.get(key) != want.get(key):
            what = "data (training or held-out arrays)" if key == "data" else key
            raise ValueError(f"{path}: checkpoint was written for another problem: its {what} differ "
                             f"(checkpoint {_short(got.get(key))}, this run {_short(want.get(key))})")


def _check_like(path: str, what: str, obj, like, dtype, strict: bool = False) -> None:
    """Refuse ``obj`` unless it has ``like``'s structure: same classes and dict keys, arrays of ``like``'s shapes
    and dtypes, every other floating array of one of the ``dtype`` (a tuple: the run's dtype, and those the
    fresh state holds, e.g. Shampoo's float32 factors in a float64 run). Unless ``strict``, lists and tuples of another length than ``like``'s
    (memories that grow) and leaves where ``like`` holds None are only checked for their dtype; where ``like``
    holds a number, ``obj`` must be one of the same kind (a boolean, a non-negative integer, a number)."""
    if hasattr(like, "shape") and hasattr(like, "dtype"):
        if not (hasattr(obj, "shape") and hasattr(obj, "dtype")) or tuple(obj.shape) != tuple(like.shape):
            got = tuple(obj.shape) if hasattr(obj, "shape") else type(obj).__name__
            raise ValueError(f"{path}: {what} should be an array of shape {tuple(like.shape)}, got {got}")
        if obj.dtype.kind != like.dtype.kind or (like.dtype.kind == "f" and obj.dtype != like.dtype):
            raise ValueError(f"{path}: {what} is {obj.dtype}, this run's dtype is {like.dtype}")
        return
    if hasattr(obj, "shape") and hasattr(obj, "dtype"):
        _check_dtype(path, what, obj, dtype)
    if isinstance(like, tuple) and hasattr(like, "_fields"):
        if type(obj) is not type(like):
            raise ValueError(f"{path}: {what} is a {type(obj).__name__}, this run needs a {type(like).__name__}")
        for f in like._fields:
            _check_like(path, f"{what}.{f}", getattr(obj, f), getattr(like, f), dtype, strict)
        return
    if isinstance(like, dict):
        if not isinstance(obj, dict) or set(obj) != set(like):
            got = sorted(obj) if isinstance(obj, dict) else type(obj).__name__
            raise ValueError(f"{path}: {what} should be a dict with keys {sorted(like)}, got {got}")
        for k in like:
            _check_like(path, f"{what}[{k!r}]", obj[k], like[k], dtype, strict)
        return
    if isinstance(like, (bool, int, float)) and not hasattr(like, "dtype"):  # step counters, seeds, damping
        if isinstance(like, bool):
            ok = isinstance(obj, bool)
        elif isinstance(like, int):
            ok = isinstance(obj, int) and not isinstance(obj, bool) and (obj >= 0 or like < 0)
        else:
            ok = isinstance(obj, (int, float)) and not isinstance(obj, bool)
        if not ok:
            kind = "a boolean" if isinstance(like, bool) else "a non-negative integer" if isinstance(like, int) \
                else "a number"
            raise ValueError(f"{path}: {what} must be {kind}, got {_short(obj)}")
        return
    if isinstance(like, (list, tuple)):
        if type(obj) is not type(like):
            raise ValueError(f"{path}: {what} should be a {type(like).__name__}, got {type(obj).__name__}")
        if strict and len(obj) != len(like):
            raise ValueError(f"{path}: {what} should be a {type(like).__name__} of {len(like)}, got {len(obj)}")
        if len(obj) == len(like):
            for i, (o, l) in enumerate(zip(obj, like)):
                _check_like(path, f"{what}[{i}]", o, l, dtype, strict)
            return
    _check_dtype(path, what, obj, dtype)


def _floating_dtypes(obj) -> tuple:
    """The floating dtypes of the arrays in a nested state (those a fresh state of this run holds)."""
    if hasattr(obj, "shape") and hasattr(obj, "dtype"):
        return (obj.dtype,) if obj.dtype.kind == "f" else ()
    items = obj.values() if isinstance(obj, dict) else obj if isinstance(obj, (list, tuple)) else ()
    return tuple(dict.fromkeys(d for item in items for d in _floating_dtypes(item)))


def _check_dtype(path: str, what: str, obj, dtype) -> None:
    """Every floating array inside ``obj`` has one of the dtypes ``dtype`` (a tuple; the first is the run's)."""
    if hasattr(obj, "shape") and hasattr(obj, "dtype"):
        if obj.dtype.kind == "f" and obj.dtype not in dtype:
            raise ValueError(f"{path}: {what} is {obj.dtype}, this run's dtype is {dtype[0].__name__}")
    elif isinstance(obj, dict):
        for k, v in obj.items():
            _check_dtype(path, f"{what}[{k!r}]", v, dtype)
    elif isinstance(obj, tuple) and hasattr(obj, "_fields"):
        for f in obj._fields:
            _check_dtype(path, f"{what}.{f}", getattr(obj, f), dtype)
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _check_dtype(path, f"{what}[{i}]", v, dtype)


def _check_history(path: str, history, step: int) -> None:
    if not isinstance(history, list) or len(history) != step:
        got = len(history) if isinstance(history, list) else type(history).__name__
        raise ValueError(f"{path}: history must be a list of {step} records (one per step), got {got}")
    for i, rec in enumerate(history):
        if not isinstance(rec, dict):
            raise ValueError(f"{path}: history[{i}] must be a record (dict), got {type(rec).__name__}")
        for k, v in rec.items():  # a log record holds JSON scalars only (``_plain``); the log rewrites them
            if not (v is None or isinstance(v, (bool, int, float, str))):
                raise ValueError(f"{path}: history[{i}][{k!r}] must be a number, string, boolean or null, "
                                 f"got {type(v).__name__}")
        # summarised and monitored as numbers
        for k in ("loss", "train_loss", "grad_norm", "train_accuracy", "val_loss", "val_accuracy"):
            v = rec.get(k)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
                raise ValueError(f"{path}: history[{i}][{k!r}] must be a number or null, got {_short(v)}")
        elapsed = rec.get("elapsed")  # seconds since the run began; the resumed clock starts from the last one
        if isinstance(elapsed, bool) or not isinstance(elapsed, (int, float)) \
                or not 0 <= elapsed <= MAX_ELAPSED:  # also refuses NaN and ±inf
            raise ValueError(f"{path}: history[{i}]['elapsed'] must be a number of seconds in [0, 1e9], "
                             f"got {_short(elapsed)}")


def load_checkpoint(path: str, config: RunConfig, params_like=None, state_like=None, problem=None):
    """(step, params, state, history, counts) from ``path``, refusing one that ``config`` cannot resume.

    The meta (format, version, the config's identity, the identity of ``problem`` when given (``run`` always
    gives it), dtype, step ≤ 10⁹, counts ≤ ``MAX_COUNT`` = 2⁵³) is
    checked before anything is decoded; state classes come only from the registry of ``refopt.serialize`` (the optimizer's module is
    imported first, from refopt's own table). ``params_like`` / ``state_like`` (a fresh run's initial
    params and state) fix the structure, shapes and dtype the checkpoint must have. Every refusal is a
    one-line ValueError.
    """
    optimizer_class(config.optimizer)  # imports the module whose state classes the file may name
    return _load_checked(path, lambda meta: config, params_like, lambda _: state_like, problem)[:5]


def load_checkpoint_params(path: str, problem):
    """(step, params, config) of the checkpoint at ``path`` for ``problem`` (its ``init_params`` fix the
    params' structure), without a run configuration: ``config`` is the ``RunConfig`` the file's meta names
    (optimizer, hyperparameters, batch size and seed; the problem's name is ``problem.name``), and the file
    passes every check of ``load_checkpoint``, its state against the named optimizer's fresh state. The
    optimizer name is only looked up in refopt's table; a bad meta, another problem or data, another dtype
    or a params tree that does not fit is a one-line ValueError naming ``path``."""
    def config_of(meta):
        _check_format(path, meta)  # first: a file of another kind has no optimizer to read
        try:
            config = RunConfig(meta.get("optimizer"), meta.get("hyperparameters"), problem.name,
                               batch_size=meta.get("batch_size"), seed=meta.get("seed"))
            optimizer_class(config.optimizer)  # refopt's own table; imports the module of its state classes
        except ValueError as exc:
            raise ValueError(f"{path}: checkpoint meta: {exc}") from None
        return config

    def state_of(config):
        try:
            return make_optimizer(config.optimizer, **config.hyperparameters).init(init)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{path}: the checkpoint's hyperparameters do not make a {config.optimizer!r} "
                             f"optimizer: {exc}") from None

    init = problem.init_params(0)
    step, params, _, _, _, config = _load_checked(path, config_of, init, state_of, problem)
    return step, params, config


def _load_checked(path: str, config_of, params_like, state_like_of, problem):
    """``load_checkpoint``'s reading and checks, with the config taken from the meta by ``config_of(meta)``
    (before anything is decoded) and the state's model from ``state_like_of(config)``; returns (step, params,
    state, history, counts, config)."""
    want = problem.identity() if problem is not None else None
    chosen = {}

    def check(meta):
        config = chosen["config"] = config_of(meta)
        _check_meta(path, meta, config, want)
    meta, objs = read_npz(path, check_meta=check)
    state_like = state_like_of(chosen["config"])
    if set(objs) != {"params", "state", "history"}:
        raise ValueError(f"{path}: a checkpoint holds params, state and history, this one {sorted(objs)}")
    dtype = (default_dtype(),)
    params, state, history = objs["params"], objs["state"], objs["history"]
    step = meta["step"]
    _check_history(path, history, step)
    if params_like is not None:
        _check_like(path, "params", params, params_like, dtype, strict=True)
    else:
        _check_dtype(path, "params", params, dtype)
    if state_like is not None:
        _check_like(path, "state", state, state_like, dtype + _floating_dtypes(state_like))
    else:
        _check_dtype(path, "state", state, dtype)
    return step, params, state, history, Counts(**meta["counts"]), chosen["config"]


def _short(obj, limit: int = 60) -> str:
    text = repr(obj)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def run(config: RunConfig, problem=None, resume: str | None = None, log_path: str | None = None,
        checkpoint_path: str | None = None, checkpoint_every: int | None = None, progress=None,
        optimizer=None) -> RunResult:
    """Run ``config``; see the module docs. ``progress`` is a callable(record) or None."""
    from .problems.registry import make_problem  # noqa: PLC0415 (the registry imports data sets)

    opt = optimizer or make_optimizer(config.optimizer, **config.hyperparameters)  # names first: cheap to check
    problem = problem or make_problem(config.problem)
    full = problem.oracle(counts=Counts())  # evaluations for the log are not the optimizer's
    try:  # what the optimizer requires against what the problem's oracles provide, once, before anything runs
        opt.check_oracle(full)
    except ValueError as exc:
        kind = "a network problem" if problem.kind != "network" else "another problem"
        raise ValueError(f"optimizer {config.optimizer!r} needs {kind}: {exc}") from None
    if config.batch_size is not None and problem.kind != "network":
        raise ValueError("batch_size: only network problems have mini-batches")
    if config.batch_size is not None and not 1 <= config.batch_size <= problem.num_examples:
        raise ValueError(f"batch_size must lie in [1, {problem.num_examples}], got {config.batch_size}")
    if checkpoint_every is not None and (not isinstance(checkpoint_every, int) or checkpoint_every < 1):
        raise ValueError(f"checkpoint_every must be a positive integer, got {checkpoint_every!r}")
    if checkpoint_every and not checkpoint_path:
        raise ValueError("checkpoint_every needs a checkpoint path (--checkpoint PATH)")
    counts = Counts()
    # the held-out examples' oracle (validated once here), with counts of its own like ``full``
    val = problem.validation_oracle(counts=Counts()) if getattr(problem, "has_validation", False) else None
    identity = problem.identity() if (resume or checkpoint_path) else None  # digests the data: only when needed
    init = problem.init_params(config.seed)
    initial_loss = full.value(init)  # L₀ of the divergence rule, recomputed on resume (no step-0 record)
    if resume:  # the fresh run's params and state fix what the checkpoint must look like
        start, params, state, history, counts = load_checkpoint(resume, config, init, opt.init(init), problem)
    else:
        start, params, history = 0, init, []
        state = opt.init(params)
    log = open(log_path, "w") if log_path else None
    if log:  # a resumed run rewrites the log up to its checkpoint, so no record is written twice
        for rec in history:
            log.write(json.dumps(rec) + "\n")
    t0 = time.perf_counter() - (history[-1]["elapsed"] if history else 0.0)
    status, message = "completed", ""
    step = start
    whole = problem.oracle(counts=counts) if config.batch_size is None else None  # validated once, reused
    # Full batch: the "precision" stop (module docs); replaying the history makes a resumed run stop where
    # an uninterrupted one does.
    monitor = StallMonitor(dtype_eps(params)) if whole is not None else None
    reason = None
    for rec in history if monitor is not None else ():
        reason = _precision_stop(rec, monitor)
    if reason:
        status, message = "precision", reason
    try:
        while step < config.steps and status == "completed":
            if whole is not None:
                oracle = whole
            else:
                oracle = problem.batch_oracle(_batch_indices(problem.num_examples, config.batch_size,
                                                             config.seed, step), counts=counts)
            new_params, new_state, info = opt.update(params, state, oracle)
            # The log keeps scalars; the step's random draws (info["draws"]) belong in a trace, not a log.
            rec = {"step": step + 1, **{k: _plain(v) for k, v in info.items() if k != "draws"}}
            last = step + 1 == config.steps
            evaluate = (step + 1) % config.eval_every == 0 or last
            rec["train_loss"], rec["train_accuracy"] = _evaluate(full, new_params) if evaluate else (None, None)
            rec["val_loss"], rec["val_accuracy"] = _evaluate(val, new_params) if evaluate and val else (None, None)
            if config.analyze_every is not None:  # on ``full``: its counts are not the optimizer's
                sharp = (step + 1) % config.analyze_every == 0  # a function of the step: resumption-safe
                rec.update(_sharpness(full, new_params, rec.get("lr")) if sharp else dict.fromkeys(_SHARPNESS))
            rec.update(counts.as_dict())
            rec["elapsed"] = time.perf_counter() - t0
            # Commit the step in one assignment, so Ctrl-C leaves a consistent (step, params, state).
            params, state, step = new_params, new_state, step + 1
            history.append(rec)
            if log:
                log.write(json.dumps(rec) + "\n")
                log.flush()
            if progress:
                progress(rec)
            if checkpoint_path and checkpoint_every and step % checkpoint_every == 0:
                save_checkpoint(checkpoint_path, config, step, params, state, history, counts, identity)
            tl = rec["train_loss"]
            if tl is not None and not math.isfinite(tl):
                status, message = "diverged", f"training loss became {tl} at step {step}"
                break
            factor = config.divergence_factor
            if factor is not None and tl is not None and tl > factor * abs(initial_loss):
                status, message = "diverged", (f"training loss {tl:.3g} at step {step} exceeds {factor:g} × the "
                                               f"initial {initial_loss:.3g}")
                break
            gn = rec.get("grad_norm")
            if gn is not None and gn <= config.gtol:
                status = "converged"
                break
            reason = _precision_stop(rec, monitor) if monitor is not None else None
            if reason:
                status, message = "precision", reason
                break
            if config.target_loss is not None and tl is not None and tl <= config.target_loss:
                status = "target_reached"
                break
            if config.max_seconds is not None and rec["elapsed"] > config.max_seconds:
                status = "time_limit"
                break
    except KeyboardInterrupt:
        path = checkpoint_path or "interrupted.ckpt.npz"
        save_checkpoint(path, config, step, params, state, history, counts, identity or problem.identity())
        raise Interrupted(path, step) from None
    finally:
        if log:
            log.close()
    if checkpoint_path and checkpoint_every:
        save_checkpoint(checkpoint_path, config, step, params, state, history, counts, identity)
    return RunResult(config, params, state, history, status, message, initial_loss)


def _evaluate(oracle, params):
    """(loss, accuracy) of ``params`` on ``oracle``'s examples: for a network, both from one forward pass (the
    loss computed as ``Oracle.value`` does, so equal to it bit for bit), accuracy None for a loss without one
    (``Loss.has_accuracy``); for a function, (value, None)."""
    if not isinstance(oracle, Oracle):  # a FunctionOracle: no outputs, no accuracy
        return oracle.value(params), None
    oracle.counts.nfev += 1
    z = oracle.outputs(params)
    value = float(getval(oracle.loss(z, oracle.y, check=False)))
    accuracy = oracle.loss.accuracy(z, oracle.y) if getattr(oracle.loss, "has_accuracy", False) else None
    return value, accuracy


_SHARPNESS = ("hessian_max", "hessian_max_residual", "two_over_lr")


def _sharpness(oracle, params, lr) -> dict:
    """hessian_max (the algebraic largest eigenvalue of ``oracle``'s Hessian at ``params``, by Lanczos), its
    residual, and two_over_lr = 2/lr for a positive number ``lr`` (None otherwise); module docs."""
    from .analysis import hessian_operator, lanczos_eigenpairs  # noqa: PLC0415 (only runs that ask need it)

    lr = as_real(lr)
    two_over_lr = 2.0 / lr if lr is not None and math.isfinite(lr) and lr > 0 else None
    value = residual = math.nan
    if T.all_finite(params):
        H = hessian_operator(oracle, params)
        try:
            top = lanczos_eigenpairs(H, 1, steps=min(ANALYZE_LANCZOS_STEPS, H.n), seed=0).largest
            value, residual = float(top.values[0]), float(top.residuals[0])
        except ValueError as exc:  # the operator refuses a product that is not finite (curvature overflows)
            if "not finite" not in str(exc):
                raise
    return {"hessian_max": value, "hessian_max_residual": residual, "two_over_lr": two_over_lr}


def _precision_stop(rec: dict, monitor) -> str | None:
    """Why a full-batch run must stop at record ``rec`` for precision, or None: its line search found no
    decrease measurable at the rounding level of f, or ``monitor`` (a ``minimize.StallMonitor``) saw no
    measurable progress in its patience of steps."""
    if rec.get("line_search") == "precision":
        return f"step {rec.get('step')}: {rec.get('message') or 'line search: precision'}"
    loss, gn = rec.get("loss"), rec.get("grad_norm")
    if isinstance(loss, (int, float)) and isinstance(gn, (int, float)) \
            and monitor.observe(loss, gn, at_rounding_level(rec, monitor.eps)):
        return f"step {rec.get('step')}: {monitor.message}"
    return None


def _plain(v):
    """JSON-friendly scalars for the log (NumPy scalars and 0-d arrays become floats)."""
    if isinstance(v, (bool, int, float, str)) or v is None:
        return v
    try:
        return float(v)
    except (TypeError, ValueError):
        return str(v)
