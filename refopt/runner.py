"""Running an optimizer on a problem: the training loop, its log, checkpoints and resumption.

One step = one ``update`` call of the optimizer on the oracle of the current batch (full batch when
``batch_size`` is None). Mini-batch order is a pure function of (seed, epoch): epoch e visits the
examples in the order ``rng((seed, e)).permutation(n)``, cut into ⌊n / batch_size⌋ batches (the
remainder of the permutation is left out of that epoch), so a run resumed at step t sees exactly the
batches an uninterrupted run would. With the optimizer's own randomness kept in its state, a resumed
run is bit-identical to an uninterrupted one.

Each record of the log holds: step, loss (at the incoming parameters, on the step's batch), train_loss
(full-batch loss, every ``eval_every`` steps and at the end), grad_norm, step_norm, lr, skipped,
message, the oracle's cumulative counts (nfev, ngev, nhvp, ...) and elapsed seconds.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field

from . import __version__
from .backend import rng
from .oracle import Counts
from .optim import make_optimizer
from .serialize import read_npz, write_npz_atomic

__all__ = ["RunConfig", "RunResult", "run", "CHECKPOINT_FORMAT", "load_checkpoint"]

CHECKPOINT_FORMAT = "refopt-checkpoint/1"


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

    def __post_init__(self):
        if not isinstance(self.steps, int) or self.steps < 1:
            raise ValueError(f"steps must be a positive integer, got {self.steps!r}")
        if not isinstance(self.eval_every, int) or self.eval_every < 1:
            raise ValueError(f"eval_every must be a positive integer, got {self.eval_every!r}")
        if not self.gtol >= 0:
            raise ValueError(f"gtol must be non-negative, got {self.gtol!r}")
        if self.max_seconds is not None and not self.max_seconds > 0:
            raise ValueError(f"max_seconds must be positive, got {self.max_seconds!r}")

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
    status: str           # "completed", "converged", "target_reached", "time_limit", "diverged"
    message: str = ""

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


def save_checkpoint(path: str, config: RunConfig, step: int, params, state, history, counts: Counts) -> None:
    """Atomically write step ``step``'s checkpoint (params, state, history, counts, config identity) to ``path``."""
    meta = {"format": CHECKPOINT_FORMAT, "version": __version__, "step": step, **config.identity(),
            "counts": counts.as_dict()}
    write_npz_atomic(path, meta, params=params, state=state, history=history)


def load_checkpoint(path: str, config: RunConfig):
    """(step, params, state, history, counts) from ``path``, refusing one that ``config`` cannot resume."""
    meta, objs = read_npz(path)
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: not a refopt checkpoint (format {meta.get('format')!r})")
    if meta.get("version") != __version__:
        raise ValueError(f"{path}: written by refopt {meta.get('version')}, this is {__version__}; "
                         "checkpoints are not carried across versions")
    want = json.loads(json.dumps(config.identity()))
    for key, value in want.items():
        if meta.get(key) != value:
            raise ValueError(f"{path}: checkpoint has {key}={meta.get(key)!r}, this run has {key}={value!r}")
    return meta["step"], objs["params"], objs["state"], objs["history"], Counts(**meta["counts"])


def run(config: RunConfig, problem=None, resume: str | None = None, log_path: str | None = None,
        checkpoint_path: str | None = None, checkpoint_every: int | None = None, progress=None,
        optimizer=None) -> RunResult:
    """Run ``config``; see the module docs. ``progress`` is a callable(record) or None."""
    from .problems.registry import make_problem  # noqa: PLC0415 (the registry imports data sets)

    opt = optimizer or make_optimizer(config.optimizer, **config.hyperparameters)  # names first: cheap to check
    problem = problem or make_problem(config.problem)
    if opt.needs_network and problem.kind != "network":
        raise ValueError(f"optimizer {config.optimizer!r} needs a network problem (per-layer statistics, output-space "
                         f"curvature or labels sampled from the model); {config.problem!r} is a function of a vector")
    if config.batch_size is not None and problem.kind != "network":
        raise ValueError("batch_size: only network problems have mini-batches")
    if config.batch_size is not None and not 1 <= config.batch_size <= problem.num_examples:
        raise ValueError(f"batch_size must lie in [1, {problem.num_examples}], got {config.batch_size}")
    if checkpoint_every is not None and (not isinstance(checkpoint_every, int) or checkpoint_every < 1):
        raise ValueError(f"checkpoint_every must be a positive integer, got {checkpoint_every!r}")
    if checkpoint_every and not checkpoint_path:
        raise ValueError("checkpoint_every needs a checkpoint path (--checkpoint PATH)")
    counts = Counts()
    if resume:
        start, params, state, history, counts = load_checkpoint(resume, config)
    else:
        start, params, history = 0, problem.init_params(config.seed), []
        state = opt.init(params)
    full = problem.oracle(counts=Counts())  # evaluations for the log are not the optimizer's
    log = open(log_path, "w") if log_path else None
    if log:  # a resumed run rewrites the log up to its checkpoint, so no record is written twice
        for rec in history:
            log.write(json.dumps(rec) + "\n")
    t0 = time.perf_counter() - (history[-1]["elapsed"] if history else 0.0)
    status, message = "completed", ""
    step = start
    whole = problem.oracle(counts=counts) if config.batch_size is None else None  # validated once, reused
    try:
        while step < config.steps:
            if whole is not None:
                oracle = whole
            else:
                oracle = problem.batch_oracle(_batch_indices(problem.num_examples, config.batch_size,
                                                             config.seed, step), counts=counts)
            new_params, new_state, info = opt.update(params, state, oracle)
            # The log keeps scalars; the step's random draws (info["draws"]) belong in a trace, not a log.
            rec = {"step": step + 1, **{k: _plain(v) for k, v in info.items() if k != "draws"}}
            last = step + 1 == config.steps
            rec["train_loss"] = full.value(new_params) if ((step + 1) % config.eval_every == 0 or last) else None
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
                save_checkpoint(checkpoint_path, config, step, params, state, history, counts)
            tl = rec["train_loss"]
            if tl is not None and not math.isfinite(tl):
                status, message = "diverged", f"training loss became {tl} at step {step}"
                break
            gn = rec.get("grad_norm")
            if gn is not None and gn <= config.gtol:
                status = "converged"
                break
            if config.target_loss is not None and tl is not None and tl <= config.target_loss:
                status = "target_reached"
                break
            if config.max_seconds is not None and rec["elapsed"] > config.max_seconds:
                status = "time_limit"
                break
    except KeyboardInterrupt:
        path = checkpoint_path or "interrupted.ckpt.npz"
        save_checkpoint(path, config, step, params, state, history, counts)
        raise Interrupted(path, step) from None
    finally:
        if log:
            log.close()
    if checkpoint_path and checkpoint_every:
        save_checkpoint(checkpoint_path, config, step, params, state, history, counts)
    return RunResult(config, params, state, history, status, message)


def _plain(v):
    """JSON-friendly scalars for the log (NumPy scalars and 0-d arrays become floats)."""
    if isinstance(v, (bool, int, float, str)) or v is None:
        return v
    try:
        return float(v)
    except (TypeError, ValueError):
        return str(v)
