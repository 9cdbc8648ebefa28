"""Learning-rate schedules (refopt/optim/schedules.py) and the ``schedule=`` option of every optimizer.

Ground truth: each schedule's closed form written out here (boundaries t = 0, W, D and beyond), the optax and
torch formulas transcribed from their documentation (and the real libraries when importable), and for every
optimizer: a scheduled step from (θ_t, state_t) equals the step of the same optimizer built with the constant
lr = η_t from that same state (the state's moments and statistics do not depend on η), bit for bit.
"""
import inspect
import json
import math

import numpy as np
import pytest

from _helpers import ScriptedOracle, assert_same_values, mlp_problem
from refopt import tree as T
from refopt.optim import OPTIMIZERS, make_optimizer, optimizer_class
from refopt.optim.schedules import SCHEDULES, Constant, Cosine, LinearWarmup, StepDecay, make_schedule

WITH_LR = [n for n in sorted(OPTIMIZERS) if "schedule" in inspect.signature(optimizer_class(n).__init__).parameters]
ULPS = 4 * np.finfo(float).eps   # the libraries group the same operations differently: a few ulps apart


def test_every_optimizer_with_a_learning_rate_takes_a_schedule():
    with_lr = {n for n in OPTIMIZERS if "lr" in inspect.signature(optimizer_class(n).__init__).parameters}
    assert set(WITH_LR) == with_lr and len(with_lr) == 15
    for name in WITH_LR:   # the default is the constant schedule, reported as None
        assert make_optimizer(name).hyperparameters()["schedule"] is None


# --- values against closed forms written here ---------------------------------------------------------
def test_constant():
    assert [Constant()(0.3, t) for t in (0, 1, 10 ** 9)] == [0.3, 0.3, 0.3]


def test_linear_warmup_closed_form_and_boundaries():
    s = LinearWarmup(warmup_steps=4)           # η₀ = 0: step 0 has lr 0 (optax's convention)
    assert s(0.2, 0) == 0.0
    for t in range(4):
        assert s(0.2, t) == pytest.approx(0.2 * t / 4, rel=1e-15, abs=0)
    assert [s(0.2, t) for t in (4, 5, 1000)] == [0.2, 0.2, 0.2]     # η exactly from t = W on
    s = LinearWarmup(warmup_steps=3, init_lr=0.05)
    assert s(0.2, 0) == 0.05 and s(0.2, 3) == 0.2
    assert s(0.2, 1) == pytest.approx(0.05 + (0.2 - 0.05) / 3, rel=1e-15)
    assert s(0.2, 2) == pytest.approx(0.05 + 2 * (0.2 - 0.05) / 3, rel=1e-15)


def test_cosine_closed_form_and_boundaries():
    lr, D, final = 0.1, 10, 0.01
    s = Cosine(decay_steps=D, final_lr=final)
    assert s(lr, 0) == lr and s(lr, D) == final and s(lr, D + 1) == final and s(lr, 10 ** 9) == final
    for t in range(D + 1):
        want = final + (lr - final) * 0.5 * (1 + math.cos(math.pi * t / D))
        assert s(lr, t) == pytest.approx(want, rel=1e-15)
    assert s(lr, 5) == pytest.approx((lr + final) / 2, rel=1e-15)   # halfway: the mean of the two ends
    # with a warm-up: W steps up from η₀, then the cosine over the remaining D − W steps
    s = Cosine(decay_steps=12, final_lr=0.0, warmup_steps=4, init_lr=0.02)
    assert s(lr, 0) == 0.02 and s(lr, 4) == lr and s(lr, 12) == 0.0 and s(lr, 50) == 0.0
    assert s(lr, 2) == pytest.approx(0.02 + (lr - 0.02) * 2 / 4, rel=1e-15)
    assert s(lr, 8) == pytest.approx(lr / 2, rel=1e-15)   # (8 − 4)/(12 − 4) = ½ of the way down
    assert s(lr, 6) == pytest.approx(lr * 0.5 * (1 + math.cos(math.pi / 4)), rel=1e-15)


def test_step_closed_form_and_boundaries():
    s = StepDecay(step_size=3, gamma=0.5)
    assert [s(0.8, t) for t in range(8)] == [0.8, 0.8, 0.8, 0.4, 0.4, 0.4, 0.2, 0.2]   # powers of 2: exact
    assert StepDecay(step_size=1)(1.0, 2) == pytest.approx(0.01, rel=1e-15)   # torch's default γ = 0.1
    assert StepDecay(step_size=2, gamma=1.0)(0.3, 99) == 0.3


# --- against optax's and torch's formulas ----------------------------------------------------------------
# Transcribed from their documentation: optax.schedules (linear_schedule = polynomial_schedule with power 1:
# (I − E)(1 − min(t, T)/T) + E; cosine_decay_schedule: I((1 − α)·½(1 + cos(π min(t, T)/T)) + α);
# warmup_cosine_decay_schedule: linear_schedule(init, peak, W) joined at W with cosine_decay_schedule(peak,
# D − W, alpha=end/peak), the second evaluated at t − W; exponential_decay(staircase=True): I·r^⌊t/T⌋) and
# torch.optim.lr_scheduler's closed forms (StepLR: base·γ^(t // s); CosineAnnealingLR: η_min + (base − η_min)
# (1 + cos(π t/T_max))/2 for t ≤ T_max; LinearLR: base·(f₀ + (1 − f₀)·min(t, T)/T)).
def _optax_linear(init, end, T):
    return lambda t: (init - end) * (1 - min(t, T) / T) + end


def _optax_cosine(init, D, alpha=0.0):
    return lambda t: init * ((1 - alpha) * 0.5 * (1 + math.cos(math.pi * min(t, D) / D)) + alpha)


def _optax_warmup_cosine(init, peak, W, D, end):
    warm, cos = _optax_linear(init, peak, W), _optax_cosine(peak, D - W, end / peak)
    return lambda t: warm(t) if t < W else cos(t - W)


STEPS = range(0, 40)


@pytest.mark.parametrize("W,init", [(5, 0.0), (7, 0.01), (1, 0.0)])
def test_linear_warmup_is_optax_linear_schedule_and_torch_linear_lr(W, init):
    lr, s = 0.1, LinearWarmup(warmup_steps=W, init_lr=init)
    ref = _optax_linear(init, lr, W)
    for t in STEPS:
        assert s(lr, t) == pytest.approx(ref(t), rel=ULPS, abs=1e-300)
        if init > 0:
            f0 = init / lr
            assert s(lr, t) == pytest.approx(lr * (f0 + (1 - f0) * min(t, W) / W), rel=ULPS)


@pytest.mark.parametrize("D,W,init,final", [(20, 0, 0.0, 0.0), (20, 0, 0.0, 0.003), (30, 6, 0.0, 0.001),
                                            (25, 24, 0.02, 0.0)])
def test_cosine_is_optax_warmup_cosine_decay_and_torch_cosine_annealing(D, W, init, final):
    lr, s = 0.1, Cosine(decay_steps=D, final_lr=final, warmup_steps=W, init_lr=init)
    ref = _optax_warmup_cosine(init, lr, W, D, final) if W else _optax_cosine(lr, D, final / lr)
    for t in STEPS:
        assert s(lr, t) == pytest.approx(ref(t), rel=ULPS, abs=4 * lr * np.finfo(float).eps)
        if W == 0 and t <= D:   # torch's closed form (it rises again after T_max; refopt holds η_f)
            torch_value = final + (lr - final) * (1 + math.cos(math.pi * t / D)) / 2
            assert s(lr, t) == pytest.approx(torch_value, rel=ULPS, abs=4 * lr * np.finfo(float).eps)


@pytest.mark.parametrize("size,gamma", [(1, 0.9), (4, 0.5), (3, 0.1)])
def test_step_is_torch_step_lr_and_optax_staircase_exponential_decay(size, gamma):
    s = StepDecay(step_size=size, gamma=gamma)
    for t in STEPS:
        assert s(0.3, t) == 0.3 * gamma ** (t // size)              # torch's closed form, same operations
        assert s(0.3, t) == pytest.approx(0.3 * gamma ** math.floor(t / size), rel=ULPS)   # optax


def test_against_optax_itself():
    optax = pytest.importorskip("optax")
    pairs = [(LinearWarmup(warmup_steps=5, init_lr=0.01), optax.linear_schedule(0.01, 0.1, 5)),
             (Cosine(decay_steps=20, final_lr=0.002), optax.cosine_decay_schedule(0.1, 20, alpha=0.02)),
             (Cosine(decay_steps=30, warmup_steps=6, final_lr=0.001),
              optax.warmup_cosine_decay_schedule(0.0, 0.1, 6, 30, 0.001)),
             (StepDecay(step_size=4, gamma=0.5), optax.exponential_decay(0.1, 4, 0.5, staircase=True))]
    for ours, theirs in pairs:
        for t in STEPS:   # optax computes in float32 by default
            assert ours(0.1, t) == pytest.approx(float(theirs(t)), rel=1e-6, abs=1e-8)


def test_against_torch_itself():
    torch = pytest.importorskip("torch")
    cases = [(StepDecay(step_size=3, gamma=0.5), lambda o: torch.optim.lr_scheduler.StepLR(o, 3, 0.5)),
             (Cosine(decay_steps=10, final_lr=0.01), lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, 10, 0.01)),
             (LinearWarmup(warmup_steps=4, init_lr=0.025),
              lambda o: torch.optim.lr_scheduler.LinearLR(o, start_factor=0.25, total_iters=4))]
    for ours, make in cases:
        opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
        sched = make(opt)
        for t in range(11):   # torch's recursive updates round differently from the closed forms
            assert ours(0.1, t) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-12, abs=1e-15)
            opt.step()
            sched.step()


# --- specs: JSON, validation --------------------------------------------------------------------------
def test_spec_round_trips_through_json_and_hyperparameters():
    spec = {"name": "cosine", "decay_steps": 100, "warmup_steps": 5}
    opt = make_optimizer("adam", lr=0.01, schedule=spec)
    full = {"name": "cosine", "decay_steps": 100, "final_lr": 0.0, "warmup_steps": 5, "init_lr": 0.0}
    assert opt.hyperparameters()["schedule"] == full   # canonical: every field, defaults included
    again = make_optimizer("adam", **json.loads(json.dumps(opt.hyperparameters())))
    assert again.hyperparameters() == opt.hyperparameters()
    assert make_optimizer("sgd", schedule=Cosine(decay_steps=100, warmup_steps=5)).schedule == full
    for constant in (None, "constant", {"name": "constant"}, Constant()):
        assert make_optimizer("sgd", schedule=constant).schedule is None
    assert set(SCHEDULES) == {"constant", "linear_warmup", "cosine", "step"}


def test_a_schedule_from_the_command_line_parser():
    from refopt.cli_args import parse_hyperparameters
    hp = parse_hyperparameters(['schedule={"name": "step", "step_size": 2, "gamma": 0.5}', "lr=0.2"])
    assert make_optimizer("sgd", **hp).schedule == {"name": "step", "step_size": 2, "gamma": 0.5}


BAD_SPECS = [
    ("bogus", "schedule needs a name"), ({}, "schedule needs a name"), ({"name": 3}, "schedule needs a name"),
    ({"name": "cosine"}, "schedule 'cosine' needs decay_steps"), ("step", "schedule 'step' needs step_size"),
    ({"name": "cosine", "decay_steps": 10, "final": 0.0}, "schedule 'cosine' has no field final"),
    ({"name": "constant", "warmup_steps": 3}, "schedule 'constant' has no field warmup_steps"),
    ({"name": "linear_warmup", "warmup_steps": -5}, "schedule.warmup_steps must be an integer"),
    ({"name": "linear_warmup", "warmup_steps": 0}, "schedule.warmup_steps must be an integer"),
    ({"name": "linear_warmup", "warmup_steps": 2.0}, "schedule.warmup_steps must be an integer"),
    ({"name": "linear_warmup", "warmup_steps": True}, "schedule.warmup_steps must be an integer"),
    ({"name": "cosine", "decay_steps": 10 ** 10}, "schedule.decay_steps must be an integer"),
    ({"name": "cosine", "decay_steps": 0}, "schedule.decay_steps must be an integer"),
    ({"name": "cosine", "decay_steps": 10, "warmup_steps": 10}, "must be less than decay_steps=10"),
    ({"name": "cosine", "decay_steps": 10, "warmup_steps": 20}, "must be less than decay_steps=10"),
    ({"name": "cosine", "decay_steps": 10, "init_lr": 0.01}, "schedule.init_lr=0.01 needs warmup_steps > 0"),
    ({"name": "cosine", "decay_steps": 10, "final_lr": math.nan}, "schedule.final_lr must be a non-negative finite"),
    ({"name": "cosine", "decay_steps": 10, "final_lr": -0.1}, "schedule.final_lr must be a non-negative finite"),
    ({"name": "cosine", "decay_steps": 10, "final_lr": math.inf}, "schedule.final_lr must be a non-negative finite"),
    ({"name": "cosine", "decay_steps": 10, "final_lr": "0"}, "schedule.final_lr must be a non-negative finite"),
    ({"name": "linear_warmup", "warmup_steps": 3, "init_lr": -1.0}, "schedule.init_lr must be a non-negative"),
    ({"name": "step", "step_size": 2, "gamma": 0.0}, "schedule.gamma must be a positive finite"),
    ({"name": "step", "step_size": 2, "gamma": 1.5}, "schedule.gamma must lie in (0, 1]"),
    ({"name": "step", "step_size": 2, "gamma": math.nan}, "schedule.gamma must be a positive finite"),
    ({"name": "cosine", "decay_steps": 10, "final_lr": 0.5}, "schedule.final_lr=0.5 exceeds lr=0.1"),
    ({"name": "linear_warmup", "warmup_steps": 3, "init_lr": 0.2}, "schedule.init_lr=0.2 exceeds lr=0.1"),
    (3, "schedule must be None, a name, a dict"), ([{"name": "cosine"}], "schedule must be None, a name, a dict"),
]


@pytest.mark.parametrize("spec,message", BAD_SPECS, ids=[str(i) for i in range(len(BAD_SPECS))])
def test_bad_specs_are_one_line_errors_naming_the_schedule(spec, message):
    with pytest.raises(ValueError) as info:
        make_optimizer("sgd", lr=0.1, schedule=spec)
    text = str(info.value)
    assert message in text and "\n" not in text and len(text) < 200


def test_schedule_objects_validate_their_fields():
    with pytest.raises(ValueError, match="schedule.step_size"):
        StepDecay(step_size=0)
    with pytest.raises(ValueError, match="schedule.warmup_steps=5 must be less than decay_steps=5"):
        make_schedule(Cosine(decay_steps=5, warmup_steps=5))


def test_natural_gradient_kl_rule_takes_no_schedule():
    spec = {"name": "step", "step_size": 2}
    assert make_optimizer("natural_gradient", schedule=spec).schedule["name"] == "step"
    with pytest.raises(ValueError, match="schedule applies to step_rule='fixed'"):
        make_optimizer("natural_gradient", step_rule="kl", schedule=spec)


# --- optimizers use exactly η_t ------------------------------------------------------------------------
SCHEDULE = {"name": "cosine", "decay_steps": 6, "warmup_steps": 2, "init_lr": None, "final_lr": None}


def _spec_for(lr):
    """A cosine with warm-up whose every η_t is positive (so a constant-lr twin exists at each step)."""
    return {**SCHEDULE, "init_lr": 0.3 * lr, "final_lr": 0.1 * lr}


@pytest.mark.parametrize("name", WITH_LR)
def test_a_scheduled_step_is_the_constant_step_at_eta_t(name):
    """From the same (θ_t, state_t), the scheduled optimizer's step equals that of its twin built with the
    constant lr = η_t (every state is independent of η) and reports info["lr"] = η_t. AdamW's paper form
    scales its decay by the multiplier η_t/η, which the constant twin lacks: its twin gets λ·η_t/η."""
    cls = optimizer_class(name)
    lr = inspect.signature(cls.__init__).parameters["lr"].default
    opt = cls(schedule=_spec_for(lr))
    sched = make_schedule(_spec_for(lr))
    _, params, oracle = mlp_problem([3, 4, 2], 6, 1)
    state = opt.init(params)
    for t in range(8):
        eta = sched(lr, t)
        assert opt.lr_at(state.step) == eta
        twin_hp = {**opt.hyperparameters(), "lr": eta, "schedule": None}
        if name == "adamw":
            twin_hp["weight_decay"] = opt.weight_decay * (eta / lr)
        twin = cls(**twin_hp)
        new, new_state, info = opt.update(params, state, oracle)
        t_new, t_state, t_info = twin.update(params, state, oracle)
        assert_same_values(new, t_new)
        assert_same_values(new_state, t_state)
        assert info["lr"] == t_info["lr"] == eta
        params, state = new, new_state


@pytest.mark.parametrize("name", WITH_LR)
def test_a_zero_learning_rate_step_leaves_the_params(name):
    """Warm-up from η₀ = 0 (optax's convention): step 0 leaves θ unchanged (L-BFGS takes no step: its search
    needs α₀ > 0), the state stays finite, and the run proceeds."""
    opt = make_optimizer(name, schedule={"name": "linear_warmup", "warmup_steps": 2})
    _, params, oracle = mlp_problem([3, 4, 2], 6, 2)
    state = opt.init(params)
    new, state, info = opt.update(params, state, oracle)
    assert_same_values(new, params)
    assert not info["skipped"]
    assert all(np.all(np.isfinite(a)) for a in T.leaves(new))
    assert state.step == 1
    for _ in range(2):
        new, state, info = opt.update(new, state, oracle)
    assert not all(np.array_equal(a, b) for a, b in zip(T.leaves(new), T.leaves(params)))


# --- records: traces and checkpoints ------------------------------------------------------------------
def test_a_trace_records_the_schedule_and_replays_it(tmp_path):
    from refopt.verify.trace import check_trace, export_trace, load_trace, make_trace
    spec = {"name": "cosine", "decay_steps": 4, "warmup_steps": 1, "final_lr": 0.001}
    trace = make_trace("adam", {"lr": 0.01, "schedule": spec}, steps=5)
    assert trace.meta["hyperparameters"]["schedule"] == {**spec, "init_lr": 0.0}
    assert trace.meta["given"]["schedule"] == spec
    path = tmp_path / "t.npz"
    export_trace(trace, str(path))
    loaded = load_trace(str(path))
    assert loaded.meta["hyperparameters"]["schedule"] == {**spec, "init_lr": 0.0}
    assert check_trace(loaded, rtol=0, atol=0)[0] is None
    constant = make_trace("adam", {"lr": 0.01}, steps=5)   # the schedule changes the run
    assert not np.array_equal(T.leaves(constant.params[-1])[0], T.leaves(trace.params[-1])[0])


def test_a_resumed_run_under_a_cosine_schedule_is_bit_identical(tmp_path):
    from refopt.runner import RunConfig, run
    hp = {"lr": 0.05, "schedule": {"name": "cosine", "decay_steps": 10, "warmup_steps": 3, "final_lr": 0.001}}
    cfg = RunConfig("adam", hp, "synthetic_mlp", steps=12, seed=2)
    full = run(cfg)
    ckpt = tmp_path / "c.npz"
    run(RunConfig("adam", hp, "synthetic_mlp", steps=5, seed=2), checkpoint_path=str(ckpt), checkpoint_every=5)
    resumed = run(cfg, resume=str(ckpt))
    assert all(np.array_equal(a, b) for a, b in zip(T.leaves(full.params), T.leaves(resumed.params)))
    assert [r["lr"] for r in full.history] == [r["lr"] for r in resumed.history]
    sched = make_schedule(hp["schedule"])
    assert [r["lr"] for r in full.history] == [sched(0.05, t) for t in range(12)]
    other = RunConfig("adam", {**hp, "schedule": {"name": "cosine", "decay_steps": 11}}, "synthetic_mlp", steps=12,
                      seed=2)
    with pytest.raises(ValueError, match="hyperparameters"):   # the checkpoint's identity holds the schedule
        run(other, resume=str(ckpt))


@pytest.mark.parametrize("name", ["sgd", "adam", "kfac"])
def test_a_refused_step_does_not_advance_the_schedule(name):
    """A step refused for a non-finite gradient returns the state unchanged, so the next step still uses η_t of
    the same t (the module docs' claim): the schedule counts steps taken, not calls."""
    opt = make_optimizer(name, schedule={"name": "step", "step_size": 1, "gamma": 0.5})
    _, params, oracle = mlp_problem([3, 4, 2], 6, 3)
    state = opt.init(params)
    _, state, info0 = opt.update(params, state, oracle)
    poisoned = [{k: v * np.nan for k, v in layer.items()} for layer in params]
    _, same_state, info = opt.update(poisoned, state, oracle)
    assert info["skipped"]
    assert_same_values(same_state, state)
    _, _, info1 = opt.update(params, same_state, oracle)
    assert info1["lr"] == opt.lr * 0.5 == info0["lr"] * 0.5


def test_only_refopts_schedule_classes_are_accepted():
    class Mine(Cosine):
        pass

    with pytest.raises(ValueError, match="one of refopt's schedules"):
        make_schedule(Mine(decay_steps=10))
    assert make_schedule(Cosine(decay_steps=10)) == Cosine(decay_steps=10)
