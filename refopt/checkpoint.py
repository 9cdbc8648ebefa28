"""Checkpoints of a run: written atomically, read back only after every check (loading never runs code).

A checkpoint is a ``serialize.write_npz_atomic`` file: the entries ``meta`` (JSON), ``skeleton`` and the
arrays of ``params``, ``state`` and ``history``. The meta holds ``format`` (``CHECKPOINT_FORMAT``),
``version``, ``step``, the run's identity (``run_identity``: the optimizer's name, its hyperparameters as
used, ``Optimizer.hyperparameters()`` with every default, made JSON-ready by ``json_hyperparameters``, the
problem's name, the batch size and the seed), ``given`` (the hyperparameters the run was given, for the
reader; not checked), ``problem_identity`` (the problem's ``identity()``), ``counts`` (the oracle's counts)
and ``dtype`` (the default dtype it was written in).

``load_checkpoint`` refuses, in one ValueError line naming the file, a checkpoint that the run cannot resume:
its meta is checked before anything is decoded (format, version, identity: the first differing entry is
named, a hyperparameter by its name; dtype; problem identity; step ≤ 10⁹; counts ≤ ``MAX_COUNT``), then
its history (one record of JSON scalars per step, ``elapsed`` ≤ ``MAX_ELAPSED``), and its params and state
against a fresh run's (structure, shapes, dtypes). Equivalent settings compare equal because both sides are
the optimizers' own normalised hyperparameters (a schedule by its canonical spec, every field included).
``load_checkpoint_params`` reads the params alone (``refopt analyze``): the params are checked against the
problem's, the state is not (no optimizer state is built from the file's hyperparameters).
``checkpoint_problem`` reads the meta alone and returns the problem it names.
"""
from __future__ import annotations

import hashlib
import json
from typing import NamedTuple

from . import __version__
from .backend import default_dtype, to_host
from .oracle import Counts
from .optim import OPTIMIZERS, make_optimizer, optimizer_class
from .optim.base import MAX_PERIOD
from .serialize import json_entry, load_npz, read_npz, short_repr, write_npz_atomic

__all__ = ["CHECKPOINT_FORMAT", "MAX_COUNT", "MAX_ELAPSED", "RunIdentity", "run_identity", "json_hyperparameters",
           "save_checkpoint", "load_checkpoint", "load_checkpoint_params", "checkpoint_problem"]

# 2: the meta holds the problem's identity (``problem_identity``) and the records the held-out metrics.
CHECKPOINT_FORMAT = "refopt-checkpoint/2"
# Caps on what a checkpoint's meta and history may claim (``load_checkpoint``). A count is at most 2⁵³:
# every integer up to it is exact in a float64, so the JSON meta and log read the same in any JSON reader,
# and what a run can add to it (at most 10⁹ steps, each a bounded number of requests) stays far below the
# 2⁶³ − 1 that saving accepts, so a resumed run can always write its next checkpoint. ``step`` is at most
# 10⁹ (``MAX_PERIOD``, the cap on a run's ``steps``); ``elapsed`` at most 10⁹ s (about 32 years).
MAX_COUNT = 2 ** 53
MAX_ELAPSED = 1e9
_IDENTITY_KEYS = ("optimizer", "hyperparameters", "problem", "batch_size", "seed")


class RunIdentity(NamedTuple):
    """What a checkpoint's meta says of its run (``load_checkpoint_params``): the optimizer, its hyperparameters
    as used (JSON-ready), the problem's name, the batch size and the seed."""

    optimizer: str
    hyperparameters: dict
    problem: str
    batch_size: object
    seed: int


def json_hyperparameters(hyperparameters: dict) -> dict:
    """``hyperparameters`` as JSON values that read back equal: NumPy scalars as Python numbers, tuples as lists,
    an array as {"array": shape, "dtype": ..., "blake2b": digest of its bytes} (L-BFGS's ``initial_matrix``),
    anything else that JSON cannot hold by its type and repr."""
    def plain(v):
        if v is None or isinstance(v, (bool, int, float, str)):
            return v
        if isinstance(v, dict):
            return {str(k): plain(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if hasattr(v, "shape") and hasattr(v, "dtype"):
            host = to_host(v)
            if host.ndim == 0:
                return host.item()
            digest = hashlib.blake2b(host.tobytes(order="C"), digest_size=16).hexdigest()
            return {"array": list(host.shape), "dtype": str(host.dtype), "blake2b": digest}
        return {"type": type(v).__name__, "repr": short_repr(v)}
    return json.loads(json.dumps(plain(dict(hyperparameters))))


def run_identity(config, optimizer=None) -> dict:
    """What a checkpoint of ``config`` (a ``runner.RunConfig``) must match to be resumed: its optimizer, problem,
    batch size and seed, and the hyperparameters ``optimizer`` really uses (``optimizer`` None: the one
    ``config`` makes)."""
    opt = optimizer if optimizer is not None else make_optimizer(config.optimizer, **config.hyperparameters)
    return {"optimizer": config.optimizer, "hyperparameters": json_hyperparameters(opt.hyperparameters()),
            "problem": config.problem, "batch_size": config.batch_size, "seed": config.seed}


def save_checkpoint(path: str, config, step: int, params, state, history, counts: Counts, problem_identity: dict,
                    optimizer=None) -> None:
    """Atomically write step ``step``'s checkpoint of the run of ``config`` with ``optimizer`` (None: the one
    ``config`` makes): params, state, history, counts, ``run_identity``, the given hyperparameters, the dtype
    and ``problem_identity`` (the problem's ``identity()``)."""
    meta = {"format": CHECKPOINT_FORMAT, "version": __version__, "step": step, **run_identity(config, optimizer),
            "given": json_hyperparameters(config.hyperparameters), "problem_identity": problem_identity,
            "counts": counts.as_dict(), "dtype": default_dtype().__name__}
    write_npz_atomic(path, meta, params=params, state=state, history=history)


def _check_format(path: str, meta: dict) -> None:
    """Refuse a file that is not a checkpoint of this format and version."""
    fmt = meta.get("format")
    if isinstance(fmt, str) and fmt.startswith("refopt-checkpoint/") and fmt != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: checkpoint format {short_repr(fmt)}, this refopt reads {CHECKPOINT_FORMAT!r} "
                         "(checkpoints are not carried across formats)")
    if fmt != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: not a refopt checkpoint (format {short_repr(fmt)})")
    if meta.get("version") != __version__:
        raise ValueError(f"{path}: written by refopt {short_repr(meta.get('version'))}, this is {__version__}; "
                         "checkpoints are not carried across versions")


def _check_identity(path: str, meta: dict, want: dict) -> None:
    """Refuse a checkpoint of another run: the first differing entry of the identities, a hyperparameter by its
    name, with both values."""
    for key, value in want.items():
        got = meta.get(key)
        if key == "hyperparameters" and isinstance(got, dict):
            for name in [*value, *(k for k in got if k not in value)]:
                if name not in got or name not in value or got[name] != value[name]:
                    theirs = short_repr(got[name]) if name in got else "(none)"
                    ours = short_repr(value[name]) if name in value else "(none)"
                    raise ValueError(f"{path}: hyperparameters differ: checkpoint has {name}={theirs}, this run has "
                                     f"{name}={ours}")
        elif got != value:
            raise ValueError(f"{path}: checkpoint has {key}={short_repr(got)}, this run has {key}={short_repr(value)}")


def _check_meta(path: str, meta: dict, identity: dict | None, problem_identity: dict) -> None:
    """Refuse (ValueError) a checkpoint whose meta the run of ``identity`` (``run_identity``; None: any run,
    ``load_checkpoint_params``) on the problem of ``problem_identity`` cannot resume; runs before anything is
    decoded."""
    _check_format(path, meta)
    if identity is not None:
        _check_identity(path, meta, json.loads(json.dumps(identity)))
    dtype = default_dtype().__name__
    if "dtype" not in meta:  # every file of this format records it (files without it were format 1)
        raise ValueError(f"{path}: meta has no dtype; every {CHECKPOINT_FORMAT} checkpoint records it")
    if meta["dtype"] != dtype:
        raise ValueError(f"{path}: checkpoint is {short_repr(meta['dtype'])}, this run's dtype is {dtype} "
                         f"(set REFOPT_DTYPE={short_repr(meta['dtype'])} to resume it)")
    # after the dtype: the data digest depends on it
    _check_problem_identity(path, meta.get("problem_identity"), json.loads(json.dumps(problem_identity)))
    step = meta.get("step")
    if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step <= MAX_PERIOD:
        raise ValueError(f"{path}: meta step must be a non-negative integer at most 10⁹ (the cap on a run's steps), "
                         f"got {short_repr(step)}")
    counts = meta.get("counts")
    names = set(Counts().as_dict())
    if not isinstance(counts, dict) or set(counts) != names:
        raise ValueError(f"{path}: meta counts must be an object with the keys {sorted(names)}, got "
                         f"{short_repr(counts)}")
    for k, v in counts.items():
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= MAX_COUNT:
            raise ValueError(f"{path}: meta counts[{k!r}] must be a non-negative integer at most 2⁵³, "
                             f"got {short_repr(v)}")


def _check_problem_identity(path: str, got, want: dict) -> None:
    """Refuse a checkpoint written for another problem: the first differing entry of the identities is named."""
    if not isinstance(got, dict):
        raise ValueError(f"{path}: checkpoint has no problem identity (problem_identity={short_repr(got)}); "
                         "it cannot be matched to this run's problem")
    for key in sorted(set(got) | set(want)):
        if got.get(key) != want.get(key):
            what = "data (training or held-out arrays)" if key == "data" else key
            raise ValueError(f"{path}: checkpoint was written for another problem: its {what} differ "
                             f"(checkpoint {short_repr(got.get(key))}, this run {short_repr(want.get(key))})")


def _check_like(path: str, what: str, obj, like, dtype, strict: bool = False) -> None:
    """Refuse ``obj`` unless it has ``like``'s structure: same classes and dict keys, arrays of ``like``'s shapes
    and dtypes, every other floating array of one of the ``dtype`` (a tuple: the run's dtype, and those the
    fresh state holds, e.g. Shampoo's float32 factors in a float64 run). Unless ``strict``, lists and tuples of
    another length than ``like``'s (memories that grow) and leaves where ``like`` holds None are only checked
    for their dtype; where ``like`` holds a number, ``obj`` must be one of the same kind (a boolean, a
    non-negative integer, a number)."""
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
            raise ValueError(f"{path}: {what} must be {kind}, got {short_repr(obj)}")
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
        for k, v in rec.items():  # a log record holds JSON scalars only (the runner's ``_plain``)
            if not (v is None or isinstance(v, (bool, int, float, str))):
                raise ValueError(f"{path}: history[{i}][{k!r}] must be a number, string, boolean or null, "
                                 f"got {type(v).__name__}")
        # summarised and monitored as numbers
        for k in ("loss", "train_loss", "grad_norm", "train_accuracy", "val_loss", "val_accuracy"):
            v = rec.get(k)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
                raise ValueError(f"{path}: history[{i}][{k!r}] must be a number or null, got {short_repr(v)}")
        elapsed = rec.get("elapsed")  # seconds since the run began; the resumed clock starts from the last one
        if isinstance(elapsed, bool) or not isinstance(elapsed, (int, float)) \
                or not 0 <= elapsed <= MAX_ELAPSED:  # also refuses NaN and ±inf
            raise ValueError(f"{path}: history[{i}]['elapsed'] must be a number of seconds in [0, 1e9], "
                             f"got {short_repr(elapsed)}")


def _need_problem(problem) -> None:
    if problem is None or not callable(getattr(problem, "identity", None)):
        raise ValueError(f"problem: a checkpoint is checked against its problem's identity(); got "
                         f"{short_repr(problem)}")


def load_checkpoint(path: str, config, problem, params_like=None, state_like=None, optimizer=None,
                    problem_identity=None):
    """(step, params, state, history, counts) from ``path``, refusing one that the run of ``config`` (with
    ``optimizer``; None: the one ``config`` makes) on ``problem`` cannot resume (module docs). ``params_like``
    / ``state_like`` (a fresh run's initial params and state) fix the structure, shapes and dtypes the
    checkpoint must have; without them only the dtypes are checked. ``problem_identity``: ``problem.identity()``
    when the caller already has it (it digests the data). Every refusal is a one-line ValueError."""
    _need_problem(problem)
    optimizer_class(config.optimizer)  # imports the module whose state classes the file may name
    identity = run_identity(config, optimizer)
    step, params, state, history, counts, _ = _load_checked(path, identity, problem, params_like, state_like,
                                                            problem_identity)
    return step, params, state, history, counts


def load_checkpoint_params(path: str, problem):
    """(step, params, run) of the checkpoint at ``path`` for ``problem`` (its ``init_params`` fix the params'
    structure), without a run configuration: ``run`` is the ``RunIdentity`` of the file's meta. The meta and
    the params pass ``load_checkpoint``'s checks; the state is decoded (serialize's validation) but not
    compared with a fresh one: no optimizer is built from the file's hyperparameters (a dense method's fresh
    state could be n × n for a hostile ``max_size``). The optimizer name is only looked up in
    refopt's table; a bad meta, another problem or data, another dtype or params that do not fit is a
    one-line ValueError naming ``path``."""
    _need_problem(problem)
    init = problem.init_params(0)
    step, params, _, _, _, meta = _load_checked(path, None, problem, init, None)
    run = RunIdentity(meta["optimizer"], meta["hyperparameters"], meta.get("problem"), meta.get("batch_size"),
                      meta.get("seed"))
    return step, params, run


def _check_run_names(path: str, meta: dict) -> None:
    """The meta of a checkpoint read without a configuration names an optimizer of refopt's table (whose module
    is then imported, for its state classes) and holds its hyperparameters as an object."""
    name = meta.get("optimizer")
    if not isinstance(name, str) or name not in OPTIMIZERS:
        raise ValueError(f"{path}: checkpoint meta: optimizer must be one of refopt's (`refopt list`), got "
                         f"{short_repr(name)}")
    if not isinstance(meta.get("hyperparameters"), dict):
        raise ValueError(f"{path}: checkpoint meta: hyperparameters must be an object, got "
                         f"{short_repr(meta.get('hyperparameters'))}")
    optimizer_class(name)


def _load_checked(path: str, identity, problem, params_like, state_like, want=None):
    """The reading and checks of ``load_checkpoint`` (``identity`` None: ``load_checkpoint_params``'s, the meta
    naming the optimizer; ``want``: the problem's identity if known); returns (step, params, state, history,
    counts, meta)."""
    want = problem.identity() if want is None else want

    def check(meta):
        if identity is None:
            _check_format(path, meta)  # first: a file of another kind has no optimizer to read
            _check_run_names(path, meta)
        _check_meta(path, meta, identity, want)
    meta, objs = read_npz(path, check_meta=check)
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
    elif identity is not None:
        _check_dtype(path, "state", state, dtype)
    return step, params, state, history, Counts(**meta["counts"]), meta


def checkpoint_problem(path: str) -> tuple[str, dict]:
    """(name, identity) of the problem the checkpoint at ``path`` was written for, from its meta alone (read by
    ``serialize.load_npz``, every header checked, no other entry read or decoded), after the format and
    version checks: e.g. ("digits_mlp", {...}) or ("data:blobs.csv", {...}) (``refopt analyze --checkpoint``
    without ``--problem``). ValueError (one line, naming ``path``) for a file that is not a checkpoint of this
    format or whose meta names no problem."""
    files = load_npz(path, keys=("meta",))
    meta = json_entry(files, "meta", path)
    if not isinstance(meta, dict):
        raise ValueError(f"{path}: meta must be a JSON object, got {type(meta).__name__}")
    _check_format(path, meta)
    name, identity = meta.get("problem"), meta.get("problem_identity")
    if not isinstance(name, str) or not isinstance(identity, dict):
        raise ValueError(f"{path}: checkpoint meta names no problem (problem={short_repr(name)}, "
                         f"problem_identity={short_repr(identity)})")
    return name, identity
