"""The training loop: logs, budgets, mini-batches, checkpoints and bit-identical resumption."""
import json

import numpy as np
import pytest

from refopt import tree as T
from refopt.problems.registry import make_problem
from refopt.runner import Interrupted, RunConfig, load_checkpoint, run


def _leaves_equal(a, b):
    return all(np.array_equal(x, y) for x, y in zip(T.leaves(a), T.leaves(b)))


def test_run_decreases_loss_and_logs(tmp_path):
    log = tmp_path / "log.jsonl"
    res = run(RunConfig("sgd", {"lr": 0.5, "momentum": 0.9}, "synthetic_mlp", steps=15), log_path=str(log))
    lines = [json.loads(l) for l in log.read_text().splitlines()]
    assert len(lines) == len(res.history) == 15
    assert lines[-1]["train_loss"] < lines[0]["train_loss"]
    for key in ("step", "loss", "grad_norm", "step_norm", "lr", "nfev", "ngev", "elapsed", "skipped"):
        assert key in lines[0]
    assert [r["ngev"] for r in lines] == list(range(1, 16))  # one gradient per SGD step


def test_target_loss_stops_early():
    res = run(RunConfig("sgd", {"lr": 0.5, "momentum": 0.9}, "synthetic_mlp", steps=500, target_loss=0.5))
    assert res.status == "target_reached" and len(res.history) < 500
    assert res.final_loss <= 0.5


@pytest.mark.parametrize("batch_size", [None, 64])
def test_resume_is_bit_identical(tmp_path, batch_size):
    cfg = RunConfig("sgd", {"lr": 0.3, "momentum": 0.9, "nesterov": True}, "synthetic_mlp", steps=12,
                    batch_size=batch_size, seed=3)
    full = run(cfg)
    ckpt = tmp_path / "c.npz"
    first = RunConfig(**{**cfg.__dict__})
    first.steps = 7
    run(first, checkpoint_path=str(ckpt), checkpoint_every=7)
    resumed = run(cfg, resume=str(ckpt))
    assert _leaves_equal(full.params, resumed.params)
    assert _leaves_equal(full.state.velocity, resumed.state.velocity)
    assert [r["loss"] for r in full.history] == [r["loss"] for r in resumed.history]


def test_interrupt_writes_checkpoint_that_resumes_identically(tmp_path):
    cfg = RunConfig("sgd", {"lr": 0.3, "momentum": 0.5}, "synthetic_mlp", steps=10, seed=1)
    full = run(cfg)
    ckpt = tmp_path / "int.npz"

    def interrupt(rec):
        if rec["step"] == 4:
            raise KeyboardInterrupt

    with pytest.raises(Interrupted) as info:
        run(cfg, checkpoint_path=str(ckpt), progress=interrupt)
    assert info.value.step == 4
    step, params, state, history, counts = load_checkpoint(str(ckpt), cfg, make_problem("synthetic_mlp"))
    assert step == 4 and len(history) == 4 and counts.ngev == 4
    resumed = run(cfg, resume=str(ckpt))
    assert _leaves_equal(full.params, resumed.params)


def test_checkpoint_mismatch_is_refused(tmp_path):
    ckpt = tmp_path / "c.npz"
    cfg = RunConfig("sgd", {"lr": 0.3}, "synthetic_mlp", steps=2)
    run(cfg, checkpoint_path=str(ckpt), checkpoint_every=1)
    for change, word in [({"problem": "logistic"}, "problem"),
                         ({"hyperparameters": {"lr": 0.2}}, "hyperparameters differ: checkpoint has lr=0.3, this run has lr=0.2"),
                         ({"seed": 5}, "seed"), ({"batch_size": 32}, "batch_size")]:
        other = RunConfig(**{**cfg.__dict__, **change})
        with pytest.raises(ValueError, match=word):
            run(other, resume=str(ckpt))


def test_checkpoint_from_another_version_is_refused(tmp_path, monkeypatch):
    import refopt.checkpoint as K
    ckpt = tmp_path / "c.npz"
    cfg = RunConfig("sgd", {"lr": 0.3}, "synthetic_mlp", steps=2)
    run(cfg, checkpoint_path=str(ckpt), checkpoint_every=1)
    monkeypatch.setattr(K, "__version__", "99.0")
    with pytest.raises(ValueError, match="version|refopt 0"):
        run(cfg, resume=str(ckpt))


def test_not_a_checkpoint(tmp_path):
    bad = tmp_path / "x.npz"
    np.savez(bad, a=np.zeros(3))
    with pytest.raises(ValueError, match="not a refopt"):
        run(RunConfig("sgd", {}, "synthetic_mlp", steps=1), resume=str(bad))


def test_bad_batch_size():
    with pytest.raises(ValueError, match="batch_size"):
        run(RunConfig("sgd", {}, "synthetic_mlp", steps=1, batch_size=0))


def test_divergence_is_reported():
    from refopt.nn import MLP, Gaussian
    from refopt.problems.registry import NetworkProblem
    g = np.random.default_rng(0)
    prob = NetworkProblem("lsq", MLP([3, 1]), Gaussian(), g.standard_normal((10, 3)), g.standard_normal((10, 1)))
    res = run(RunConfig("sgd", {"lr": 1e100}, "lsq", steps=20), problem=prob)
    assert res.status == "diverged" and "loss" in res.message


def test_function_problem_converges_and_stops():
    res = run(RunConfig("lbfgs", {}, "rosenbrock", steps=500, gtol=1e-10))
    assert res.status == "converged" and len(res.history) < 500
    np.testing.assert_allclose(T.ravel(res.params), np.ones(2), atol=1e-8)


def test_function_problem_has_no_minibatches():
    with pytest.raises(ValueError, match="mini-batches"):
        run(RunConfig("lbfgs", {}, "rosenbrock", steps=5, batch_size=2))


def test_failed_checkpoint_write_keeps_the_previous_one(tmp_path, monkeypatch):
    """Checkpoints are written to a temporary file and renamed: a failed write leaves the last good one."""
    import refopt.serialize as S
    ckpt = tmp_path / "c.npz"
    cfg = RunConfig("sgd", {"lr": 0.3}, "synthetic_mlp", steps=2)
    run(cfg, checkpoint_path=str(ckpt), checkpoint_every=1)
    before = ckpt.read_bytes()
    real = S.np.savez

    def fail_midway(fh, **arrays):
        real(fh, **{k: v for k, v in list(arrays.items())[:1]})  # some bytes reach the disk ...
        raise OSError("disk full")                                 # ... then the write fails
    monkeypatch.setattr(S.np, "savez", fail_midway)
    with pytest.raises(OSError):
        run(RunConfig("sgd", {"lr": 0.3}, "synthetic_mlp", steps=4), checkpoint_path=str(ckpt), checkpoint_every=1)
    assert ckpt.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["c.npz"]


# --- malformed and hostile checkpoints (issue 9): one-line ValueError before anything is decoded or run ---

def _checkpoint(tmp_path, optimizer="sgd", hp=None, steps=2):
    cfg = RunConfig(optimizer, hp or {"lr": 0.1, "momentum": 0.9}, "synthetic_mlp", steps=steps)
    ckpt = tmp_path / "ck.npz"
    run(cfg, checkpoint_path=str(ckpt), checkpoint_every=1)
    return cfg, ckpt


def _edit(ckpt, out, meta=None, skeleton=None, **arrays):
    """Rewrite a checkpoint with meta / skeleton changed by the given functions and arrays replaced."""
    with np.load(ckpt) as data:
        files = dict(data)
    m, s = json.loads(str(files["meta"])), json.loads(str(files["skeleton"]))
    files["meta"] = np.array(json.dumps(meta(m) if meta else m))
    files["skeleton"] = np.array(json.dumps(skeleton(s) if skeleton else s))
    files.update(arrays)
    np.savez(out, **files)
    return str(out)


def _one_line_refusal(cfg, path, fragment):
    with pytest.raises(ValueError) as info:
        run(cfg, resume=path)
    assert "\n" not in str(info.value) and fragment in str(info.value), str(info.value)


def _set(d, **kw):
    d.update(kw)
    return d


def _drop(d, key):
    d.pop(key)
    return d


@pytest.mark.parametrize("meta,skeleton,fragment", [
    (lambda m: [m], None, "meta must be a JSON object"),
    (lambda m: _drop(m, "counts"), None, "meta counts must be an object"),
    (lambda m: _set(m, counts=[1, 2]), None, "meta counts must be an object"),
    (lambda m: _set(m, counts={**m["counts"], "nfev": -1}), None, "counts['nfev']"),
    (lambda m: _set(m, step="2"), None, "meta step must be a non-negative integer"),
    (lambda m: _set(m, step=10 ** 30), None, "meta step must be a non-negative integer"),
    (lambda m: _set(m, step=1), None, "history must be a list of 1 records"),
    (None, lambda s: 5, "skeleton must be a JSON object"),
    (None, lambda s: [s], "skeleton must be a JSON object"),
    (None, lambda s: _drop(s, "history"), "a checkpoint holds params, state and history"),
    (None, lambda s: _set(s, params={"list": [{"dict": {"W": {"array": 99}, "b": {"array": 1}}}]}),
     "array index 99 out of range"),
    (None, lambda s: _set(s, params={"array": -1}), "array index -1 out of range"),
    (None, lambda s: _set(s, params={"array": False}), "expected an integer"),
    (None, lambda s: _set(s, state={"namedtuple": "NoSuchState", "fields": {}}), "unknown state class"),
    (None, lambda s: _set(s, state={"namedtuple": "SGDState", "fields": {"step": {"int": 2}}}), "SGDState has fields"),
    (None, lambda s: _set(s, params={"list": []}), "params should be a list"),
    (None, lambda s: _set(s, history={"list": [{"int": 5}, {"int": 5}]}), "history[0] must be a record"),
    (None, lambda s: _set(s, history={"list": [{"dict": {}}, {"dict": {"elapsed": {"float": "nan"}}}]}),
     "history[0]['elapsed'] must be a number of seconds in [0, 1e9], got None"),
    # history records are rewritten to the log and summarised: JSON scalars, numeric losses
    (None, lambda s: _set(s, history={"list": [{"dict": {"x": {"array": 0}}}, s["history"]["list"][1]]}),
     "history[0]['x'] must be a number, string, boolean or null, got ndarray"),
    (None, lambda s: _set(s, history={"list": [s["history"]["list"][0], {"dict": {
        **s["history"]["list"][1]["dict"], "train_loss": "low"}}]}), "history[1]['train_loss'] must be a number"),
    # scalars of the state have the kind of a fresh state's (SGDState.step: a non-negative integer)
    (None, lambda s: _set(s, state={"namedtuple": "SGDState", "fields": {**s["state"]["fields"], "step": "two"}}),
     "state.step must be a non-negative integer, got 'two'"),
    (None, lambda s: _set(s, state={"namedtuple": "SGDState", "fields": {**s["state"]["fields"],
                                                                           "step": {"int": -3}}}),
     "state.step must be a non-negative integer, got -3"),
])
def test_malformed_checkpoints_are_refused(tmp_path, meta, skeleton, fragment):
    cfg, ckpt = _checkpoint(tmp_path)
    _one_line_refusal(cfg, _edit(ckpt, tmp_path / "bad.npz", meta, skeleton), fragment)


def test_checkpoint_of_another_shape_or_state_class_is_refused(tmp_path):
    cfg, ckpt = _checkpoint(tmp_path)
    with np.load(ckpt) as data:
        a0 = data["a0"]
    _one_line_refusal(cfg, _edit(ckpt, tmp_path / "shape.npz", a0=np.zeros((a0.shape[0] + 1, *a0.shape[1:]))),
                      "should be an array of shape")
    # a state of a registered class, with that class's fields, that is not this optimizer's
    from refopt.optim.adam import AdamState
    bad = _edit(ckpt, tmp_path / "cls.npz", skeleton=lambda s: _set(s, state={
        "namedtuple": "AdamState", "fields": {f: None for f in AdamState._fields}}))
    _one_line_refusal(cfg, bad, "state is a AdamState, this run needs a SGDState")


def test_float64_checkpoint_resumed_under_float32_is_refused(tmp_path):
    from refopt import backend
    cfg, ckpt = _checkpoint(tmp_path)
    backend.set_default_dtype("float32")
    _one_line_refusal(cfg, str(ckpt), "checkpoint is 'float64', this run's dtype is float32")
    # every file of this format records its dtype (format 1 files without it are refused by their format)
    _one_line_refusal(cfg, _edit(ckpt, tmp_path / "nodtype.npz", meta=lambda m: _drop(m, "dtype")),
                      "meta has no dtype")


def test_float32_checkpoint_resumes_under_float32(tmp_path):
    from refopt import backend
    backend.set_default_dtype("float32")
    cfg, ckpt = _checkpoint(tmp_path, steps=2)
    more = RunConfig(cfg.optimizer, cfg.hyperparameters, cfg.problem, steps=3)
    res = run(more, resume=str(ckpt))
    assert len(res.history) == 3 and all(l.dtype == np.float32 for l in T.leaves(res.params))


def test_hostile_state_name_in_a_valid_checkpoint_runs_nothing(tmp_path, monkeypatch):
    """The issue's exploit: a state named refopt.serialize:os.system with a command field."""
    import os
    calls = []
    monkeypatch.setattr(os, "system", lambda *a, **k: calls.append((a, k)))
    cfg, ckpt = _checkpoint(tmp_path)
    evil = _edit(ckpt, tmp_path / "evil.npz", skeleton=lambda s: _set(s, state={
        "namedtuple": "refopt.serialize:os.system", "fields": {"command": "touch pwned"}}))
    _one_line_refusal(cfg, evil, "unknown state class")
    assert calls == []


@pytest.mark.parametrize("name", sorted(__import__("refopt.optim", fromlist=["OPTIMIZERS"]).OPTIMIZERS))
def test_every_optimizer_resumes_bit_identically_through_the_checks(tmp_path, name):
    """The structure, shape and dtype checks of load_checkpoint accept every optimizer's real checkpoint
    (growing L-BFGS memories, cached evaluations, Kronecker factors) and resumption stays exact."""
    from refopt.nn import MLP, SoftmaxCrossEntropy
    from refopt.problems.registry import NetworkProblem
    g = np.random.default_rng(3)
    prob = NetworkProblem("tiny", MLP([3, 4, 2]), SoftmaxCrossEntropy(), g.standard_normal((6, 3)),
                          g.integers(0, 2, 6))
    ckpt = tmp_path / "ck.npz"
    full = run(RunConfig(name, {}, "tiny", steps=4), problem=prob)
    run(RunConfig(name, {}, "tiny", steps=2), problem=prob, checkpoint_path=str(ckpt), checkpoint_every=1)
    resumed = run(RunConfig(name, {}, "tiny", steps=4), problem=prob, resume=str(ckpt))
    assert _leaves_equal(full.params, resumed.params)
    assert [r["loss"] for r in full.history] == [r["loss"] for r in resumed.history]


def test_a_converged_full_batch_run_stops_for_precision():
    """Values at rounding level and a gradient at its noise floor (fixed hash patterns): L-BFGS's steps
    make no measurable progress, and the run stops with status "precision" within the monitor's patience
    instead of running its 200 steps; with N&W's search alone it stops at the first failed search."""
    from types import SimpleNamespace  # noqa: PLC0415
    from _helpers import rounding_floor_oracle  # noqa: PLC0415
    from refopt.problems.registry import FunctionProblem  # noqa: PLC0415
    oracle, x0 = rounding_floor_oracle(grad_noise=1e-9)
    fn = SimpleNamespace(x0=x0, f=oracle.f, grad=oracle._grad, hess=None, hvp=None)
    problem = FunctionProblem("rounding_floor", lambda: fn)
    res = run(RunConfig("lbfgs", {}, "rounding_floor", steps=200), problem=problem)
    assert res.status == "precision" and len(res.history) < 50
    assert res.history[-1]["nfev"] <= 2 * 200 and "no measurable progress" in res.message
    res = run(RunConfig("lbfgs", {"approximate_wolfe": False}, "rounding_floor", steps=200), problem=problem)
    assert res.status == "precision" and len(res.history) == 1 and "rounding level" in res.message


# --- review of issue 9: counts and elapsed times that a resumed run could not save or use ---------------

def _elapsed(i, node):
    """A skeleton edit: history[i]['elapsed'] replaced by the encoded ``node``."""
    def edit(s):
        rec = s["history"]["list"][i]["dict"]
        rec["elapsed"] = node
        return s
    return edit


@pytest.mark.parametrize("meta,skeleton,fragment", [
    # counts up to 2⁶³ − 1 were accepted and the next save then overflowed int64
    (lambda m: _set(m, counts={**m["counts"], "nfev": 2 ** 63 - 1}), None,
     "meta counts['nfev'] must be a non-negative integer at most 2⁵³, got 9223372036854775807"),
    (lambda m: _set(m, counts={**m["counts"], "ngev": 2 ** 53 + 1}), None, "counts['ngev'] must be"),
    (lambda m: _set(m, step=2 ** 40), None, "meta step must be a non-negative integer at most 10⁹"),
    (None, _elapsed(1, {"float": "nan"}), "history[1]['elapsed'] must be a number of seconds in [0, 1e9], got nan"),
    (None, _elapsed(1, {"float": "inf"}), "history[1]['elapsed'] must be a number of seconds in [0, 1e9], got inf"),
    (None, _elapsed(1, {"float": "1e+300"}), "history[1]['elapsed'] must be a number of seconds in [0, 1e9]"),
    (None, _elapsed(1, {"int": 2 ** 63 - 1}), "history[1]['elapsed'] must be a number of seconds in [0, 1e9]"),
    (None, _elapsed(1, {"float": "-1.0"}), "history[1]['elapsed'] must be a number of seconds in [0, 1e9]"),
    (None, _elapsed(0, True), "history[0]['elapsed'] must be a number of seconds in [0, 1e9], got True"),
    (None, _elapsed(0, "1.0"), "history[0]['elapsed'] must be a number of seconds in [0, 1e9], got '1.0'"),
])
def test_checkpoint_counts_and_elapsed_are_capped(tmp_path, meta, skeleton, fragment):
    cfg, ckpt = _checkpoint(tmp_path)
    _one_line_refusal(cfg, _edit(ckpt, tmp_path / "bad.npz", meta, skeleton), fragment)


def test_checkpoint_near_the_caps_resumes_and_saves_again(tmp_path):
    """Counts and an elapsed time just below the caps (2⁵³, 10⁹ s) are accepted, and the resumed run writes a
    checkpoint that loads again (without the cap, counts near 2⁶³ − 1 were accepted and this save failed)."""
    from refopt.runner import MAX_COUNT, MAX_ELAPSED
    cfg, ckpt = _checkpoint(tmp_path)
    near = _edit(ckpt, tmp_path / "cap.npz", lambda m: _set(m, counts={k: MAX_COUNT - 100 for k in m["counts"]}),
                 _elapsed(1, {"float": repr(MAX_ELAPSED - 1000)}))
    longer = RunConfig(cfg.optimizer, cfg.hyperparameters, cfg.problem, steps=4)
    out = tmp_path / "next.npz"
    result = run(longer, resume=near, checkpoint_path=str(out), checkpoint_every=1)
    assert result.history[-1]["ngev"] == MAX_COUNT - 98 and result.history[-1]["elapsed"] >= MAX_ELAPSED - 1000
    step, _, _, _, counts = load_checkpoint(str(out), RunConfig(cfg.optimizer, cfg.hyperparameters, cfg.problem,
                                                                 steps=4), make_problem(cfg.problem))
    assert step == 4 and counts.ngev == MAX_COUNT - 98


def test_a_state_that_holds_float32_factors_in_a_float64_run_resumes(tmp_path):
    """Shampoo's factor_dtype="float32" keeps its statistics in float32 in a float64 run: the checkpoint check takes
    the dtypes a fresh state of the run holds, not only the run's dtype (it refused such a checkpoint before)."""
    ck = str(tmp_path / "ck.npz")
    cfg = RunConfig(optimizer="shampoo", hyperparameters={"factor_dtype": "float32"}, problem="logistic",
                    steps=3, seed=0)
    run(cfg, checkpoint_path=ck, checkpoint_every=1)
    straight = run(RunConfig(optimizer="shampoo", hyperparameters={"factor_dtype": "float32"}, problem="logistic",
                             steps=5, seed=0))
    resumed = run(RunConfig(optimizer="shampoo", hyperparameters={"factor_dtype": "float32"}, problem="logistic",
                            steps=5, seed=0), resume=ck)
    assert [r["loss"] for r in resumed.history] == [r["loss"] for r in straight.history]


# --- issue 12: the divergence rule, held-out metrics, the problem's identity in checkpoints -------------------

def _np_forward(params, X, activations):
    """A plain NumPy forward pass of refopt's MLP (s = a W + b), written here independently of refopt.nn."""
    a = np.asarray(X)
    acts = {"tanh": np.tanh, "identity": lambda s: s}
    for layer, name in zip(params, activations):
        a = acts[name](a @ np.asarray(layer["W"]) + np.asarray(layer["b"]))
    return a


def _np_softmax_metrics(z, y):
    """(mean cross-entropy, accuracy) by hand: logsumexp(z_i) − z_i[y_i], argmax(z_i) == y_i."""
    m = z.max(axis=1, keepdims=True)
    lse = (m + np.log(np.exp(z - m).sum(axis=1, keepdims=True)))[:, 0]
    return float(np.mean(lse - z[np.arange(len(y)), y])), float(np.mean(z.argmax(axis=1) == y))


def _lsq_problem(n_val=0):
    from refopt.nn import MLP, Gaussian
    from refopt.problems.registry import NetworkProblem
    g = np.random.default_rng(0)
    X, Y = g.standard_normal((10, 3)), g.standard_normal((10, 1))
    val = (g.standard_normal((n_val, 3)), g.standard_normal((n_val, 1))) if n_val else (None, None)
    return NetworkProblem("lsq", MLP([3, 1]), Gaussian(), X, Y, "", *val)


@pytest.mark.parametrize("bad", [1, 1.0, 0.5, -3, float("nan"), float("inf"), "10", True, [10]])
def test_divergence_factor_is_validated(bad):
    with pytest.raises(ValueError, match="divergence_factor must be None or a finite number > 1"):
        RunConfig("sgd", {}, "synthetic_mlp", divergence_factor=bad)
    assert RunConfig("sgd", divergence_factor=np.float32(10)).divergence_factor == 10.0


def test_divergence_factor_stops_a_run_whose_loss_grows():
    """SGD with lr 1.5 on a linear least-squares problem: for this data the step overshoots and the loss grows
    geometrically but stays finite for many steps. The run stops at the first recorded loss above
    L₀ + 9·max(|L₀|, 1), with L₀ computed here by hand from the initial parameters."""
    prob = _lsq_problem()
    p0 = prob.init_params(0)
    r0 = prob.X @ p0[0]["W"] + p0[0]["b"] - prob.y
    L0 = float(np.mean(0.5 * np.sum(r0 ** 2, axis=1)))  # Gaussian(variance 1, mean): ½‖z − y‖² per example
    free = run(RunConfig("sgd", {"lr": 1.5}, "lsq", steps=60), problem=prob)
    losses = [r["train_loss"] for r in free.history]
    assert free.status == "completed" and np.all(np.isfinite(losses)) and losses[-1] > 1e3 * L0
    res = run(RunConfig("sgd", {"lr": 1.5}, "lsq", steps=60, divergence_factor=10), problem=prob)
    np.testing.assert_allclose(res.initial_loss, L0, rtol=1e-14)  # a sum of 10 squares: rounding only
    bound = L0 + 9 * max(abs(L0), 1.0)
    first = next(i for i, tl in enumerate(losses) if tl > bound)
    assert res.status == "diverged" and len(res.history) == first + 1
    assert [r["train_loss"] for r in res.history] == losses[:first + 1]
    tl = losses[first]
    assert res.message == (f"training loss {tl:.3g} at step {first + 1} exceeds {bound:.3g} = L₀ + 9 × max(|L₀|, 1), "
                           f"L₀ = {L0:.3g}")


def test_divergence_rule_on_resume_uses_the_recomputed_initial_loss(tmp_path):
    prob = _lsq_problem()
    cfg = RunConfig("sgd", {"lr": 1.5}, "lsq", steps=60, divergence_factor=10)
    straight = run(cfg, problem=prob)
    ckpt = tmp_path / "c.npz"
    run(RunConfig("sgd", {"lr": 1.5}, "lsq", steps=3, divergence_factor=10), problem=prob,
        checkpoint_path=str(ckpt), checkpoint_every=3)
    assert load_checkpoint(str(ckpt), cfg, problem=prob)[0] == 3  # one record per step, no step-0 record
    resumed = run(cfg, problem=prob, resume=str(ckpt))
    assert resumed.initial_loss == straight.initial_loss
    assert resumed.status == straight.status == "diverged" and resumed.message == straight.message
    assert len(resumed.history) == len(straight.history)


def test_the_initial_loss_of_a_function_problem():
    res = run(RunConfig("lbfgs", {}, "rosenbrock", steps=2))
    np.testing.assert_allclose(res.initial_loss, 24.2, rtol=1e-15)  # (1 + 1.2)² + 100 (1 − 1.44)² at (−1.2, 1)
    assert res.final_val_loss is None and res.final_val_accuracy is None and res.final_train_accuracy is None
    assert all(r["val_loss"] is None and r["train_accuracy"] is None for r in res.history)


def test_held_out_metrics_are_recorded_at_evaluations_and_match_an_independent_evaluation():
    from refopt.problems.registry import make_problem
    prob = make_problem("synthetic_mlp")
    res = run(RunConfig("sgd", {"lr": 0.5, "momentum": 0.9}, "synthetic_mlp", steps=7, eval_every=3), problem=prob)
    evaluated = [r["step"] for r in res.history if r["val_loss"] is not None]
    assert evaluated == [3, 6, 7] == [r["step"] for r in res.history if r["train_loss"] is not None]
    for r in res.history:
        assert (r["val_accuracy"] is None) == (r["train_accuracy"] is None) == (r["step"] not in evaluated)
    acts = prob.model.activations
    vl, va = _np_softmax_metrics(_np_forward(res.params, prob.X_val, acts), np.asarray(prob.y_val))
    tl, ta = _np_softmax_metrics(_np_forward(res.params, prob.X, acts), np.asarray(prob.y))
    # 128 or 512 log-sum-exps of O(1) values: float64 rounding, far below what a wrong formula changes
    np.testing.assert_allclose([res.final_val_loss, res.final_loss], [vl, tl], rtol=1e-12)
    assert res.final_val_accuracy == va and res.final_train_accuracy == ta  # counts over 128 / 512: exact
    assert 0.5 < va <= 1.0 and res.final_val_loss != res.final_loss  # held-out data, not the training data
    # the evaluations are not the optimizer's requests: SGD asks one gradient per step
    assert [r["nfev"] for r in res.history] == list(range(1, 8))


def test_held_out_loss_without_accuracy_for_the_gaussian_and_none_without_a_split():
    prob = _lsq_problem(n_val=5)
    res = run(RunConfig("sgd", {"lr": 0.1}, "lsq", steps=3), problem=prob)
    r = np.asarray(prob.X_val) @ res.params[0]["W"] + res.params[0]["b"] - prob.y_val
    np.testing.assert_allclose(res.final_val_loss, np.mean(0.5 * np.sum(r ** 2, axis=1)), rtol=1e-14)
    assert res.final_val_accuracy is None and res.final_train_accuracy is None
    res = run(RunConfig("sgd", {"lr": 0.1}, "lsq", steps=3), problem=_lsq_problem())
    assert res.final_val_loss is None and all(rec["val_loss"] is None for rec in res.history)


def test_resume_keeps_the_held_out_metrics(tmp_path):
    cfg = RunConfig("sgd", {"lr": 0.3, "momentum": 0.9}, "synthetic_mlp", steps=8, batch_size=64, seed=2)
    full = run(cfg)
    ckpt = tmp_path / "c.npz"
    run(RunConfig(**{**cfg.__dict__, "steps": 5}), checkpoint_path=str(ckpt), checkpoint_every=5)
    resumed = run(cfg, resume=str(ckpt))
    keys = ("train_loss", "train_accuracy", "val_loss", "val_accuracy")
    assert [[r[k] for k in keys] for r in full.history] == [[r[k] for k in keys] for r in resumed.history]


def _tiny(X=None, y=None, sizes=(3, 4, 2), loss=None, val=None):
    from refopt.nn import MLP, SoftmaxCrossEntropy
    from refopt.problems.registry import NetworkProblem
    g = np.random.default_rng(3)
    X = g.standard_normal((6, 3)) if X is None else X
    y = g.integers(0, 2, 6) if y is None else y
    return NetworkProblem("tiny", MLP(list(sizes)), loss or SoftmaxCrossEntropy(), X, y, "", *(val or (None, None)))


def test_a_checkpoint_of_another_problem_under_the_same_name_is_refused(tmp_path):
    """Same config (the problem's name included), other data / split / architecture / loss: refused, naming what."""
    from refopt.nn import SoftmaxCrossEntropy
    base = _tiny()
    ckpt = tmp_path / "c.npz"
    cfg = RunConfig("sgd", {"lr": 0.1}, "tiny", steps=2)
    run(cfg, problem=base, checkpoint_path=str(ckpt), checkpoint_every=1)
    X2 = np.array(base.X)
    X2[0, 0] += 1e-12  # one input changed in its last bits
    g = np.random.default_rng(9)
    for other, fragment in [
        (_tiny(X=X2), "its data (training or held-out arrays) differ"),
        (_tiny(y=1 - base.y), "its data"),
        (_tiny(val=(g.standard_normal((2, 3)), g.integers(0, 2, 2))), "its data"),
        (_tiny(sizes=(3, 5, 2)), "its sizes differ (checkpoint [3, 4, 2], this run [3, 5, 2])"),
        (_tiny(loss=SoftmaxCrossEntropy("sum")), "its loss differ"),
    ]:
        _one_line_refusal_on(cfg, other, str(ckpt), fragment)
    run(RunConfig("sgd", {"lr": 0.1}, "tiny", steps=3), problem=_tiny(), resume=str(ckpt))  # equal problem: resumes


def _one_line_refusal_on(cfg, problem, path, fragment):
    with pytest.raises(ValueError) as info:
        run(cfg, problem=problem, resume=path)
    assert "\n" not in str(info.value) and fragment in str(info.value), str(info.value)


def test_checkpoints_of_the_previous_format_or_without_a_problem_identity_are_refused(tmp_path):
    cfg, ckpt = _checkpoint(tmp_path)
    _one_line_refusal(cfg, _edit(ckpt, tmp_path / "f1.npz", lambda m: _set(m, format="refopt-checkpoint/1")),
                      "checkpoint format 'refopt-checkpoint/1', this refopt reads 'refopt-checkpoint/2'")
    _one_line_refusal(cfg, _edit(ckpt, tmp_path / "noid.npz", lambda m: _drop(m, "problem_identity")),
                      "checkpoint has no problem identity")


# --- review of issue 12: checkpoints record what the optimizer uses; step-0 metrics; target and divergence
# rules at a small or negative L₀; the stability threshold; quiet evaluations -----------------------------------

def _meta(path):
    with np.load(path) as data:
        return json.loads(str(data["meta"]))


def test_a_final_checkpoint_is_written_without_checkpoint_every(tmp_path):
    ckpt = tmp_path / "end.npz"
    cfg = RunConfig("sgd", {"lr": 0.3}, "synthetic_mlp", steps=3)
    run(cfg, checkpoint_path=str(ckpt))
    assert _meta(ckpt)["step"] == 3
    more = run(RunConfig("sgd", {"lr": 0.3}, "synthetic_mlp", steps=5), resume=str(ckpt))
    assert [r["loss"] for r in more.history] == [r["loss"] for r in run(RunConfig(**{**cfg.__dict__, "steps": 5})).history]


def test_the_checkpoint_records_every_hyperparameter_the_optimizer_uses(tmp_path):
    """A RunConfig with {} and an optimizer object with lr 0.5: the checkpoint holds what ran (lr 0.5, every
    default), so it resumes under {"lr": 0.5} and is refused under {} naming lr."""
    from refopt.optim import make_optimizer
    ckpt = tmp_path / "c.npz"
    opt = make_optimizer("sgd", lr=0.5)
    run(RunConfig("sgd", {}, "synthetic_mlp", steps=2), optimizer=opt, checkpoint_path=str(ckpt))
    meta = _meta(ckpt)
    assert meta["hyperparameters"] == opt.hyperparameters() and meta["hyperparameters"]["lr"] == 0.5
    assert meta["given"] == {}
    run(RunConfig("sgd", {"lr": 0.5}, "synthetic_mlp", steps=3), resume=str(ckpt))
    with pytest.raises(ValueError, match=r"hyperparameters differ: checkpoint has lr=0.5, this run has lr=0.1"):
        run(RunConfig("sgd", {}, "synthetic_mlp", steps=3), resume=str(ckpt))
    with pytest.raises(ValueError, match="a 'adam' optimizer, but the config names 'sgd'"):
        run(RunConfig("sgd", {}, "synthetic_mlp", steps=1), optimizer=make_optimizer("adam"))


def test_an_equivalent_schedule_resumes_and_another_is_refused_by_name(tmp_path):
    """Written with {"name": "cosine", "decay_steps": 100}, resumed with its default final_lr 0 given: the same
    schedule (both sides are the optimizer's canonical spec). Another decay is refused, naming the schedule."""
    ckpt = tmp_path / "c.npz"
    given = {"lr": 0.3, "schedule": {"name": "cosine", "decay_steps": 100}}
    run(RunConfig("sgd", given, "synthetic_mlp", steps=2), checkpoint_path=str(ckpt))
    same = {"lr": 0.3, "schedule": {"name": "cosine", "decay_steps": 100, "final_lr": 0}}
    assert len(run(RunConfig("sgd", same, "synthetic_mlp", steps=3), resume=str(ckpt)).history) == 3
    other = {"lr": 0.3, "schedule": {"name": "cosine", "decay_steps": 50}}
    with pytest.raises(ValueError) as info:
        run(RunConfig("sgd", other, "synthetic_mlp", steps=3), resume=str(ckpt))
    assert "hyperparameters differ: checkpoint has schedule=" in str(info.value) and "'decay_steps': 100" in str(info.value)


def test_load_checkpoint_needs_the_problem(tmp_path):
    cfg, ckpt = _checkpoint(tmp_path)
    with pytest.raises(ValueError, match="problem: a checkpoint is checked against its problem's identity"):
        load_checkpoint(str(ckpt), cfg, None)


def test_load_checkpoint_params_builds_no_optimizer_state(tmp_path, monkeypatch):
    """The meta may claim any hyperparameters (here an lr no optimizer accepts): the params come back, checked
    against the problem's, and no optimizer is made or initialised from the file."""
    from refopt.checkpoint import load_checkpoint_params
    from refopt.optim.base import Optimizer
    cfg, ckpt = _checkpoint(tmp_path)
    bad = _edit(ckpt, tmp_path / "hp.npz", lambda m: _set(m, hyperparameters={"lr": -1.0, "max_size": 65536}))
    monkeypatch.setattr(Optimizer, "init", lambda *a, **k: pytest.fail("an optimizer state was built"))
    step, params, meta_run = load_checkpoint_params(bad, make_problem("synthetic_mlp"))
    assert step == 2 and meta_run.optimizer == "sgd" and meta_run.hyperparameters["lr"] == -1.0
    assert _leaves_equal(params, run(cfg).params)
    with pytest.raises(ValueError, match="optimizer must be one of refopt's"):
        load_checkpoint_params(_edit(ckpt, tmp_path / "o.npz", lambda m: _set(m, optimizer="os.system")),
                               make_problem("synthetic_mlp"))


def test_checkpoint_problem_reads_the_meta_alone(tmp_path):
    from refopt.checkpoint import checkpoint_problem
    cfg, ckpt = _checkpoint(tmp_path)
    name, identity = checkpoint_problem(str(ckpt))
    assert name == "synthetic_mlp" and identity == json.loads(json.dumps(make_problem("synthetic_mlp").identity()))
    with np.load(ckpt) as data:
        files = dict(data)
    files["a0"] = np.zeros(3, dtype=object)  # a pickled entry: refused from its header although not read
    np.savez(tmp_path / "obj.npz", **files)
    with pytest.raises(ValueError, match="pickles are refused"):
        checkpoint_problem(str(tmp_path / "obj.npz"))
    with pytest.raises(ValueError, match="not a refopt checkpoint"):
        checkpoint_problem(_edit(ckpt, tmp_path / "f.npz", lambda m: _set(m, format="refopt-trace/1")))
    with pytest.raises(ValueError, match="checkpoint meta names no problem"):
        checkpoint_problem(_edit(ckpt, tmp_path / "p.npz", lambda m: _drop(m, "problem")))


def test_the_initial_metrics_are_those_of_the_initial_parameters():
    """initial_loss, initial_train_accuracy, initial_val_loss and initial_val_accuracy: a plain NumPy forward
    pass at init_params(seed)."""
    prob = make_problem("synthetic_mlp")
    res = run(RunConfig("sgd", {"lr": 0.5}, "synthetic_mlp", steps=1, seed=4), problem=prob)
    p0 = prob.init_params(4)
    acts = prob.model.activations
    vl, va = _np_softmax_metrics(_np_forward(p0, prob.X_val, acts), np.asarray(prob.y_val))
    tl, ta = _np_softmax_metrics(_np_forward(p0, prob.X, acts), np.asarray(prob.y))
    np.testing.assert_allclose([res.initial_val_loss, res.initial_loss], [vl, tl], rtol=1e-12)  # as above
    assert res.initial_val_accuracy == va and res.initial_train_accuracy == ta
    plain = run(RunConfig("sgd", {"lr": 0.1}, "lsq", steps=1), problem=_lsq_problem())
    assert plain.initial_val_loss is None and plain.initial_val_accuracy is None and plain.initial_train_accuracy is None


def _function_problem(name, f, grad, x0):
    from types import SimpleNamespace
    from refopt.problems.registry import FunctionProblem
    fn = SimpleNamespace(x0=np.asarray(x0, float), f=f, grad=grad, hess=None, hvp=None)
    return FunctionProblem(name, lambda: fn)


def test_the_divergence_bound_at_a_zero_negative_or_small_initial_loss():
    """L₀ + (c − 1)·max(|L₀|, 1): c·L₀ for L₀ ≥ 1 (as before); for L₀ = 0 the old c·|L₀| = 0 made any positive
    loss diverged. On f(x) = x² − ¼ from x₀ = ½ (L₀ = 0) with SGD at lr 1.5 (x ← −2x), the run stops at the
    first loss above the bound 9, computed here by hand."""
    from refopt.runner import divergence_bound
    assert divergence_bound(2.0, 10) == 20.0 and divergence_bound(0.0, 10) == 9.0
    assert divergence_bound(-5.0, 10) == 40.0 and divergence_bound(0.5, 3) == 2.5
    prob = _function_problem("shifted", lambda x: float(x[0] ** 2 - 0.25), lambda x: 2 * x, [0.5])  # L₀ = 0
    res = run(RunConfig("sgd", {"lr": 1.5}, "shifted", steps=50, divergence_factor=10), problem=prob)
    xs = [0.5 * (-2.0) ** k for k in range(1, 51)]  # x_{k+1} = x_k − 1.5·2x_k = −2x_k
    losses = [x * x - 0.25 for x in xs]
    first = next(i for i, v in enumerate(losses) if v > 9.0)
    assert res.initial_loss == 0.0 and res.status == "diverged" and len(res.history) == first + 1
    np.testing.assert_allclose([r["train_loss"] for r in res.history], losses[:first + 1], rtol=1e-15)


def test_a_target_the_initial_loss_already_meets_stops_at_once():
    res = run(RunConfig("lbfgs", {}, "rosenbrock", steps=10, target_loss=100.0))  # L₀ = 24.2
    assert res.status == "target_reached" and res.history == [] and "already at or below the target" in res.message


def test_evaluations_of_a_diverging_run_raise_no_overflow_warning():
    """SGD at lr 1e100 on least squares: the second evaluation overflows (loss ~1e400) and the run is reported
    as diverged; NumPy's overflow warning inside that evaluation is silenced, not raised."""
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = run(RunConfig("sgd", {"lr": 1e100}, "lsq", steps=20), problem=_lsq_problem())
    assert res.status == "diverged" and not np.isfinite(res.history[-1]["train_loss"])


@pytest.mark.parametrize("hp,threshold", [
    ({"lr": 0.1}, 2 / 0.1),
    ({"lr": 0.1, "momentum": 0.9}, 2 * 1.9 / 0.1),
    ({"lr": 0.1, "momentum": 0.9, "nesterov": True}, 2 * 1.9 / (2.8 * 0.1)),
    ({"lr": 0.1, "momentum": 0.5, "dampening": 0.5}, 2 * 1.5 / (0.1 * 0.5)),
    ({"lr": 0.1, "weight_decay": 0.5}, 2 / 0.1 - 0.5),
])
def test_the_stability_threshold_separates_decay_from_growth_on_a_quadratic(hp, threshold):
    """The formula against refopt's own SGD on f(x) = ½hx²: 400 steps at h 2 % below the threshold shrink |x|,
    2 % above they grow it (the iteration matrix's spectral radius is then above 1)."""
    from refopt.optim import make_optimizer
    from refopt.runner import stability_threshold
    opt = make_optimizer("sgd", **hp)
    assert stability_threshold(opt, hp["lr"]) == pytest.approx(threshold, rel=1e-15)
    for factor, grows in ((0.98, False), (1.02, True)):
        h = factor * threshold
        prob = _function_problem("quad", lambda x, h=h: float(0.5 * h * x[0] ** 2), lambda x, h=h: h * x, [1.0])
        res = run(RunConfig("sgd", hp, "quad", steps=400), problem=prob)
        assert (abs(res.params[0]) > 1.0) == grows, (factor, res.params)


def test_no_stability_threshold_outside_gradient_descent():
    from refopt.optim import make_optimizer
    from refopt.runner import stability_threshold
    for name in ("adam", "lbfgs", "kfac", "shampoo"):
        assert stability_threshold(make_optimizer(name), 0.1) is None
    assert stability_threshold(make_optimizer("sgd"), None) is None
    assert stability_threshold(make_optimizer("sgd", momentum=0.5, dampening=1.0), 0.1) is None


def test_batch_indices_are_the_epochs_permutation_cut_in_batches():
    from refopt.runner import batch_indices
    for step in range(7):  # ⌊10 / 3⌋ = 3 batches per epoch; the remainder of each permutation is left out
        epoch, pos = divmod(step, 3)
        want = np.random.default_rng([5, epoch]).permutation(10)[3 * pos:3 * pos + 3]
        np.testing.assert_array_equal(batch_indices(10, 3, 5, step), want)


# --- review R3: stops on resume, the final evaluation, argument checks -----------------------------------------

@pytest.mark.parametrize("config", [
    RunConfig("sgd", {"lr": 30.0}, "synthetic_mlp", steps=50, divergence_factor=1.5),      # diverges at step 1
    RunConfig("sgd", {"lr": 0.5}, "synthetic_mlp", steps=50, target_loss=0.1),              # reached at step 3
    RunConfig("lbfgs", {}, "rosenbrock", steps=100, gtol=1e-6),                              # converges at step 37
    RunConfig("lbfgs", {}, "rosenbrock", steps=100, eval_every=7, gtol=1e-6),
], ids=["diverged", "target_reached", "converged", "converged_eval_every_7"])
def test_resuming_the_final_checkpoint_of_a_stopped_run_stops_there_again(tmp_path, config):
    """The final checkpoint of a run that a stop rule ended resumes to the same status, message and history:
    every rule is applied to the checkpoint's last record (before, only "precision" was, so these took more
    steps)."""
    ckpt = str(tmp_path / "c.npz")
    first = run(config, checkpoint_path=ckpt)
    assert first.status != "completed" and len(first.history) < config.steps
    resumed = run(config, resume=ckpt)
    assert (resumed.status, resumed.message) == (first.status, first.message)
    assert resumed.history == first.history and _leaves_equal(resumed.params, first.params)


def test_a_resumed_run_extends_its_time_limit(tmp_path):
    """The time limit is the one rule not replayed: a run stopped by it continues when resumed with more time."""
    ckpt = str(tmp_path / "c.npz")
    cfg = RunConfig("sgd", {"lr": 0.5}, "synthetic_mlp", steps=4, max_seconds=1e-9)
    assert run(cfg, checkpoint_path=ckpt).status == "time_limit"
    resumed = run(RunConfig("sgd", {"lr": 0.5}, "synthetic_mlp", steps=4), resume=ckpt)
    assert resumed.status == "completed" and len(resumed.history) == 4


@pytest.mark.parametrize("config", [
    RunConfig("sgd", {"lr": 0.5}, "synthetic_mlp", steps=50, eval_every=10, max_seconds=1e-9),   # time_limit
    RunConfig("lbfgs", {}, "rosenbrock", steps=100, eval_every=7, gtol=1e-6),                  # converged
], ids=["time_limit", "converged"])
def test_an_early_stop_evaluates_the_final_iterate_whatever_eval_every_says(config):
    """A run that stops between evaluations records train_loss (and the held-out metrics) of its final
    parameters, computed independently here; before, final_loss was NaN or an earlier step's."""
    res = run(config)
    problem = make_problem(config.problem)
    last = res.history[-1]
    assert res.status != "completed" and last["step"] % config.eval_every != 0
    assert last["train_loss"] == res.final_loss == problem.oracle().value(res.params)
    if problem.kind == "network":
        assert last["val_loss"] == problem.validation_oracle().value(res.params)
        assert last["train_accuracy"] is not None and last["val_accuracy"] is not None
    steps = [r["step"] for r in res.history if r["train_loss"] is not None]
    assert steps == [s for s in range(1, last["step"]) if s % config.eval_every == 0] + [last["step"]]


def test_a_precision_stop_between_evaluations_evaluates_the_final_iterate():
    from types import SimpleNamespace  # noqa: PLC0415
    from _helpers import rounding_floor_oracle  # noqa: PLC0415
    from refopt.problems.registry import FunctionProblem  # noqa: PLC0415
    oracle, x0 = rounding_floor_oracle(grad_noise=1e-9)
    fn = SimpleNamespace(x0=x0, f=oracle.f, grad=oracle._grad, hess=None, hvp=None)
    res = run(RunConfig("lbfgs", {}, "rounding_floor", steps=200, eval_every=1000),
              problem=FunctionProblem("rounding_floor", lambda: fn))
    assert res.status == "precision" and res.history[-1]["train_loss"] == oracle.f(res.params)


@pytest.mark.parametrize("bad", [True, 1.0, 0, "2"])
def test_checkpoint_every_must_be_a_positive_integer(tmp_path, bad):
    with pytest.raises(ValueError, match="checkpoint_every must be an integer in"):
        run(RunConfig("sgd", {"lr": 0.1}, "rosenbrock", steps=1), checkpoint_path=str(tmp_path / "c.npz"),
            checkpoint_every=bad)


def test_sharpness_turns_an_overflowing_product_into_nan_and_lets_other_errors_through():
    """A Hessian product that overflows at finite parameters gives NaN; a ValueError of another origin whose text
    happens to say "not finite" is not swallowed (the overflow is caught by its class, not by its message)."""
    from refopt.backend import as_array  # noqa: PLC0415
    from refopt.oracle import FunctionOracle  # noqa: PLC0415
    from refopt.runner import _sharpness  # noqa: PLC0415
    f = lambda x: float(x[0] ** 2)  # noqa: E731
    overflowing = FunctionOracle(f, grad=lambda x: 2 * x, hvp=lambda x, v: v * np.inf)
    assert np.isnan(_sharpness(overflowing, as_array([1.0]), None)["hessian_max"])

    def refusing(x, v):
        raise ValueError("this input is not finite enough")
    with pytest.raises(ValueError, match="not finite enough"):
        _sharpness(FunctionOracle(f, grad=lambda x: 2 * x, hvp=refusing), as_array([1.0]), None)
