"""Running an optimizer on a problem: the training loop, its log, checkpoints and resumption.

One step = one ``update`` call of the optimizer on the oracle of the current batch (full batch when
``batch_size`` is None). Mini-batch order is a pure function of (seed, epoch): epoch e visits the
examples in the order ``rng((seed, e)).permutation(n)``, cut into ⌊n / batch_size⌋ batches (the
remainder of the permutation is left out of that epoch; ``batch_indices``), so a run resumed at step t sees
exactly the batches an uninterrupted run would. With the optimizer's own randomness kept in its state, a
resumed run is bit-identical to an uninterrupted one. Checkpoints (``refopt.checkpoint``, whose
``save_checkpoint``, ``load_checkpoint``, ``load_checkpoint_params``, ``CHECKPOINT_FORMAT``, ``MAX_COUNT`` and
``MAX_ELAPSED`` this module re-exports) record the run's identity, with the hyperparameters the optimizer
really uses, and the problem's; a run with ``checkpoint_path`` writes one at the end (and every
``checkpoint_every`` steps), and one on Ctrl-C.

Each record of the log holds: step, loss (at the incoming parameters, on the step's batch), train_loss
(full-batch loss, every ``eval_every`` steps and at a run's last step, whether its budget or a stop rule
ends it), grad_norm, step_norm, lr, skipped,
message, the oracle's cumulative counts (nfev, ngev, nhvp, ...) and elapsed seconds; the dense methods' records
also hold nhev, that step's dense matrices (``RunResult.nhev`` adds them up). Where train_loss is recorded,
so are train_accuracy, val_loss and val_accuracy: the loss and accuracy (``Loss.accuracy``) on the
problem's held-out examples, and the accuracy on the training examples; None where the problem holds out
nothing or its loss has no accuracy (the Gaussian), and in the records between evaluations. These
evaluations use counts of their own: they are not requests of the optimizer. The same four at the initial
parameters are ``RunResult.initial_loss``, ``initial_train_accuracy``, ``initial_val_loss`` and
``initial_val_accuracy`` (the log has one record per step, so no step-0 record; a resumed run recomputes
them from ``init_params(seed)``). NumPy's overflow warnings inside these evaluations are silenced: a
training loss that overflows is reported as the run's divergence.

Divergence: a run stops with status "diverged" when a recorded training loss is not finite, or, with
``divergence_factor`` = c, when it exceeds ``divergence_bound`` = L₀ + (c − 1)·max(|L₀|, 1), L₀ the
full-batch training loss at the initial parameters: c·L₀ for L₀ ≥ 1; for a small, zero or negative L₀
(test functions whose minimum is at or below 0) the loss must rise by more than c − 1 above it.
``DIVERGENCE_FACTOR`` = 10 is ``refopt train``'s and ``refopt compare``'s default; a RunConfig's is None
(only non-finite losses). Target: with ``target_loss``, a run stops ("target_reached") at the first
recorded training loss at or below it; when L₀ already is, at once, after 0 steps.

Sharpness along training (``analyze_every`` = N): at every N-th step (N, 2N, ...), the record also holds
hessian_max, the algebraic largest eigenvalue of the full-batch Hessian at the step's new parameters (the
largest Ritz value of ``ANALYZE_LANCZOS_STEPS`` = 30 Lanczos steps, n when smaller, from the Gaussian start
of seed 0, with full reorthogonalisation: ``analysis.lanczos_eigenpairs``), hessian_max_residual (its
residual |β_m s_m|, which bounds its distance to an eigenvalue of H) and stability_threshold
(``stability_threshold``): the λ_max above which the optimizer's step at the step's lr η is unstable on a
quadratic, where that is known: gradient descent (sgd) only, 2(1 + β)/η with heavy-ball momentum β (2/η
without; Cohen et al. 2021, "Gradient descent on neural networks typically occurs at the edge of stability",
whose appendix treats momentum), 2(1 + β)/((1 + 2β)η) with Nesterov's, η(1 − δ) in place of η with torch's
dampening δ, less the L2 weight decay λ; None for every other optimizer (a preconditioned or line-searched
step has no such threshold in λ_max of H). Between those steps the three are None.
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
this way). Mini-batch runs do not apply this rule (each step sees another batch).

Resumption: a resumed run replays its history through the monitor and applies every stop rule but the time
limit (diverged, converged, precision, target_reached) to the checkpoint's last record, so it stops where an
uninterrupted run with its config does; the time limit is not replayed, since extending it is what a resume
is for. ``max_seconds`` is checked after each update, before the step's evaluations.

``describe_hyperparameters`` states every hyperparameter an optimizer runs with on a problem, grouped by
origin (given, the problem's setting of ``problems.tuned``, defaults); ``refopt train`` and ``refopt
compare --show-hyperparameters`` print it.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field

import numpy as np

from . import tree as T
from .backend import rng
from .checkpoint import (CHECKPOINT_FORMAT, MAX_COUNT, MAX_ELAPSED, load_checkpoint, load_checkpoint_params,
                         run_identity, save_checkpoint)
from .oracle import Counts
from .minimize import StallMonitor, at_rounding_level, dtype_eps
from .optim import make_optimizer
from .optim.base import (MAX_DIMENSION, MAX_SEED, as_real, check_int, check_nonnegative, check_positive,
                         show_value)

__all__ = ["RunConfig", "RunResult", "run", "CHECKPOINT_FORMAT", "MAX_COUNT", "MAX_ELAPSED", "load_checkpoint",
           "load_checkpoint_params", "save_checkpoint", "Interrupted", "ANALYZE_LANCZOS_STEPS", "DIVERGENCE_FACTOR",
           "divergence_bound", "batch_indices", "stability_threshold", "describe_hyperparameters"]

# Lanczos steps behind ``analyze_every``'s hessian_max (n when smaller): the largest Ritz value of 30 steps
# converges fast when λ_max is separated from the rest (its error falls like a Chebyshev polynomial of the
# gap: the Kaniel–Paige bound, Golub & Van Loan §10.1), and 30 products stay cheap beside a step.
ANALYZE_LANCZOS_STEPS = 30
DIVERGENCE_FACTOR = 10.0   # the command line's divergence factor c (module docs)


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
    divergence_factor: float | None = None  # stop ("diverged") above divergence_bound(L₀, this) (module docs)
    analyze_every: int | None = None  # record hessian_max (and the stability threshold) every N steps (module docs)

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
        """What a checkpoint must match to be resumed by this configuration (``checkpoint.run_identity``: the
        hyperparameters as the optimizer it makes uses them, every default included)."""
        return run_identity(self)


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
    initial_train_accuracy: float | None = None  # and the accuracy there (None for a loss without one)
    initial_val_loss: float | None = None  # the held-out loss and accuracy there (None without held-out examples)
    initial_val_accuracy: float | None = None

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


def divergence_bound(initial_loss: float, factor: float) -> float:
    """The training loss above which a run has diverged: L₀ + (c − 1)·max(|L₀|, 1) (module docs)."""
    return initial_loss + (factor - 1.0) * max(abs(initial_loss), 1.0)


def batch_indices(n: int, batch_size: int, seed: int, step: int):
    """The examples of step ``step``'s mini-batch (0 the first) of a run with ``seed`` on ``n`` examples: batch
    ``step mod ⌊n / batch_size⌋`` of epoch ``step div ⌊n / batch_size⌋``'s permutation ``rng([seed, epoch])``."""
    per_epoch = max(1, n // batch_size)
    epoch, pos = divmod(step, per_epoch)
    order = rng([seed, epoch]).permutation(n)
    return order[pos * batch_size:(pos + 1) * batch_size]


def stability_threshold(optimizer, lr) -> float | None:
    """The λ_max of the Hessian above which ``optimizer``'s step at step size ``lr`` is unstable on a quadratic
    (module docs), or None where refopt knows no such threshold (every optimizer but SGD; a step size that is
    not a positive finite number)."""
    from .optim.sgd import SGD  # noqa: PLC0415

    eta = as_real(lr)
    if not isinstance(optimizer, SGD) or eta is None or not math.isfinite(eta) or eta <= 0:
        return None
    beta = optimizer.momentum
    if beta:
        # heavy ball on h·x: the iteration matrix's roots z² − (1 + β − ηh)z + β stay inside the unit circle
        # iff ηh < 2(1 + β); Nesterov's (torch's form) z² − (1 + β)(1 − ηh)z + β(1 − ηh): iff ηh < 2(1 + β)/(1 + 2β)
        if optimizer.dampening >= 1:  # the buffer never takes the gradient in after the first step
            return None
        eta *= 1.0 - optimizer.dampening
        limit = 2.0 * (1.0 + beta) / (1.0 + 2.0 * beta) if optimizer.nesterov else 2.0 * (1.0 + beta)
    else:
        limit = 2.0
    return limit / eta - optimizer.weight_decay   # L2 decay adds λ to every eigenvalue of the step's Hessian


def describe_hyperparameters(problem, optimizer: str, given: dict | None = None) -> str:
    """Every hyperparameter ``optimizer`` runs with on ``problem`` (a name or a problem object), as used
    (``Optimizer.hyperparameters``), grouped by origin: "given: a=1 | tuned for P: b=2 | defaults: c=3" (empty
    groups left out)."""
    from .problems.tuned import settings, tuned_hyperparameters  # noqa: PLC0415

    given = dict(given or {})
    tuned = {k: v for k, v in tuned_hyperparameters(problem, optimizer).items() if k not in given}
    used = make_optimizer(optimizer, **{**tuned, **given}).hyperparameters()
    origin = settings(problem)[0]
    groups = [("given", [k for k in used if k in given]), (origin, [k for k in used if k in tuned]),
              ("defaults", [k for k in used if k not in given and k not in tuned])]
    return " | ".join(f"{label}: " + ", ".join(f"{k}={used[k]!r}" for k in keys)
                      for label, keys in groups if keys)


class Interrupted(Exception):
    """Raised by ``run`` after it saved a checkpoint on Ctrl-C."""

    def __init__(self, path: str, step: int):
        super().__init__(f"interrupted at step {step}; checkpoint written to {path}")
        self.path, self.step = path, step


def run(config: RunConfig, problem=None, resume: str | None = None, log_path: str | None = None,
        checkpoint_path: str | None = None, checkpoint_every: int | None = None, progress=None,
        optimizer=None) -> RunResult:
    """Run ``config``; see the module docs. ``progress`` is a callable(record) or None. ``optimizer``: an
    optimizer object to run instead of the one ``config`` makes (its name must be ``config.optimizer``);
    checkpoints then record its own hyperparameters."""
    from .problems.registry import make_problem  # noqa: PLC0415 (the registry imports data sets)

    opt = optimizer if optimizer is not None else make_optimizer(config.optimizer, **config.hyperparameters)
    if getattr(opt, "name", None) != config.optimizer:
        raise ValueError(f"optimizer: a {getattr(opt, 'name', type(opt).__name__)!r} optimizer, but the config names "
                         f"{config.optimizer!r}")
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
    if checkpoint_every is not None:
        checkpoint_every = check_int("checkpoint_every", checkpoint_every)
    if checkpoint_every and not checkpoint_path:
        raise ValueError("checkpoint_every needs a checkpoint path (--checkpoint PATH)")
    counts = Counts()
    # the held-out examples' oracle (validated once here), with counts of its own like ``full``
    val = problem.validation_oracle(counts=Counts()) if getattr(problem, "has_validation", False) else None
    identity = problem.identity() if (resume or checkpoint_path) else None  # digests the data: only when needed
    init = problem.init_params(config.seed)
    # L₀ of the divergence rule and the step-0 metrics, recomputed on resume (the log has no step-0 record)
    initial_loss, initial_accuracy = _evaluate(full, init)
    initial_val = _evaluate(val, init) if val is not None else (None, None)
    if resume:  # the fresh run's params and state fix what the checkpoint must look like
        start, params, state, history, counts = load_checkpoint(resume, config, problem, init, opt.init(init), opt,
                                                                 problem_identity=identity)
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
    # Full batch: the "precision" stop (module docs). A resumed run replays its history through the monitor
    # and applies every stop rule but the time limit (extending it is what resuming is for) to its last
    # record, so it stops where an uninterrupted run does.
    monitor = StallMonitor(dtype_eps(params)) if whole is not None else None
    reason = None
    for rec in history if monitor is not None else ():
        reason = _precision_stop(rec, monitor)
    stop = _stop(history[-1], config, initial_loss, reason) if history else None
    if stop is None and config.target_loss is not None and initial_loss <= config.target_loss:
        stop = "target_reached", (f"the initial training loss {initial_loss:.6g} is already at or below the target "
                                  f"{config.target_loss:g}")
    if stop is not None:
        status, message = stop
    try:
        while step < config.steps and status == "completed":
            if whole is not None:
                oracle = whole
            else:
                oracle = problem.batch_oracle(batch_indices(problem.num_examples, config.batch_size,
                                                            config.seed, step), counts=counts)
            new_params, new_state, info = opt.update(params, state, oracle)
            # The log keeps scalars; the step's random draws (info["draws"]) belong in a trace, not a log.
            rec = {"step": step + 1, **{k: _plain(v) for k, v in info.items() if k != "draws"}}
            # The rules that need no training loss decide first, so a run that stops here evaluates its
            # final iterate whatever eval_every says (the monitor observes each record once).
            reason = _precision_stop(rec, monitor) if monitor is not None else None
            elapsed = time.perf_counter() - t0
            evaluate = (step + 1) % config.eval_every == 0 or step + 1 == config.steps \
                or _stop(rec, config, initial_loss, reason, elapsed) is not None
            rec["train_loss"], rec["train_accuracy"] = _evaluate(full, new_params) if evaluate else (None, None)
            rec["val_loss"], rec["val_accuracy"] = _evaluate(val, new_params) if evaluate and val else (None, None)
            if config.analyze_every is not None:  # on ``full``: its counts are not the optimizer's
                sharp = (step + 1) % config.analyze_every == 0  # a function of the step: resumption-safe
                rec.update(_sharpness(full, new_params, stability_threshold(opt, rec.get("lr"))) if sharp
                           else dict.fromkeys(_SHARPNESS))
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
                save_checkpoint(checkpoint_path, config, step, params, state, history, counts, identity, opt)
            stop = _stop(rec, config, initial_loss, reason, elapsed)
            if stop is not None:
                status, message = stop
                break
    except KeyboardInterrupt:
        path = checkpoint_path or "interrupted.ckpt.npz"
        save_checkpoint(path, config, step, params, state, history, counts, identity or problem.identity(), opt)
        raise Interrupted(path, step) from None
    finally:
        if log:
            log.close()
    if checkpoint_path:  # the final state, whether or not a periodic checkpoint fell on the last step
        save_checkpoint(checkpoint_path, config, step, params, state, history, counts, identity, opt)
    return RunResult(config, params, state, history, status, message, initial_loss, initial_accuracy, *initial_val)


def _stop(rec: dict, config: RunConfig, initial_loss: float, precision: str | None = None,
          elapsed: float | None = None) -> tuple[str, str] | None:
    """(status, message) of the first stop rule that fires at record ``rec``, or None; in order: diverged
    (train_loss not finite, or above ``divergence_bound``), converged (grad_norm ≤ gtol), precision
    (``precision``: the monitor's reason for ``rec``, which the caller computes, the monitor keeping state),
    target_reached, time_limit (``elapsed`` seconds beyond max_seconds; None: not applied). A record without
    train_loss can stop only by the rules that need none."""
    tl = rec.get("train_loss")
    if tl is not None and not math.isfinite(tl):
        return "diverged", f"training loss became {tl} at step {rec.get('step')}"
    factor = config.divergence_factor
    if factor is not None and tl is not None and tl > divergence_bound(initial_loss, factor):
        return "diverged", (f"training loss {tl:.3g} at step {rec.get('step')} exceeds "
                            f"{divergence_bound(initial_loss, factor):.3g} = L₀ + {factor - 1:g} × "
                            f"max(|L₀|, 1), L₀ = {initial_loss:.3g}")
    gn = rec.get("grad_norm")
    if gn is not None and gn <= config.gtol:
        return "converged", ""
    if precision:
        return "precision", precision
    if config.target_loss is not None and tl is not None and tl <= config.target_loss:
        return "target_reached", ""
    if config.max_seconds is not None and elapsed is not None and elapsed > config.max_seconds:
        return "time_limit", ""
    return None


def _evaluate(oracle, params):
    """(loss, accuracy) of ``params`` on ``oracle``'s examples: both from one forward pass (``evaluate``, whose
    loss equals ``value``'s bit for bit), accuracy None for a function or a loss without one
    (``Loss.has_accuracy``). NumPy's overflow and invalid-value warnings are silenced: a loss that overflows
    here is non-finite, and the run reports it as diverged."""
    with np.errstate(over="ignore", invalid="ignore"):
        value, z = oracle.evaluate(params)
        has = z is not None and getattr(oracle.loss, "has_accuracy", False)
        accuracy = oracle.loss.accuracy(z, oracle.y) if has else None
    return value, accuracy


_SHARPNESS = ("hessian_max", "hessian_max_residual", "stability_threshold")


class _CurvatureOverflow(Exception):
    """A Hessian product of ``_sharpness`` is not finite: the curvature overflows at the step's parameters."""


def _sharpness(oracle, params, threshold) -> dict:
    """hessian_max (the algebraic largest eigenvalue of ``oracle``'s Hessian at ``params``, by Lanczos), its
    residual, and the step's stability threshold ``threshold`` (``stability_threshold``; module docs)."""
    from .analysis import CurvatureOperator, lanczos_eigenpairs  # noqa: PLC0415 (only runs that ask need it)

    value = residual = math.nan
    if T.all_finite(params):
        hessian = oracle.hessian_operator(params)  # the gradient recorded once, one reverse sweep per product

        def product(v):  # an overflow is refused by a class of its own, so nothing else is caught with it
            out = T.ravel(hessian(T.unravel(v, params)))
            if not T.all_finite(out):
                raise _CurvatureOverflow
            return out
        H = CurvatureOperator(product, T.size(params), T.leaves(params)[0].dtype, "hessian")
        try:
            top = lanczos_eigenpairs(H, 1, steps=min(ANALYZE_LANCZOS_STEPS, H.n), seed=0).largest
            value, residual = float(top.values[0]), float(top.residuals[0])
        except _CurvatureOverflow:
            pass
    return {"hessian_max": value, "hessian_max_residual": residual, "stability_threshold": threshold}


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
