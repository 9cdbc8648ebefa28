"""Fuzz tests over every registered optimizer (issue 9, Deliver 6).

(b) Every constructor argument, found with inspect.signature (so a new optimizer or argument is covered
    without editing this file), is given wrong types, non-finite, huge and out-of-range values: each must
    be a ValueError or TypeError whose message names the argument; never OverflowError, never accepted.
    Arguments with a None default get the wrong values of the kind of their valid values (an integer
    cap is given 2.5 and 2**63, a float −1, a switch an unknown string).
(a) Random well-posed problems (tiny MLPs with random sizes, seeds and losses, and classical test
    functions for the optimizers that do not need a network) and random hyperparameters drawn from the
    valid values of VALID_ARGUMENTS (keyed by argument name, ARG_OVERRIDES per optimizer; a test fails
    when a constructor argument has no entry): no NaN or Inf reaches params or the state's arrays, and a
    refused step gives back params and state bit-identical to what went in. Since 15 examples draw only
    subsets, a deterministic test also sets every argument alone to a non-default valid value and runs
    2 steps.

All bounded for CI: (b) is an exhaustive table (a few thousand constructions, well under a second);
(a) runs under the hypothesis profile of conftest.py (15 derandomized examples per optimizer, 4 steps);
the whole file takes about 3 s.
"""
import copy
import inspect
import math
import re

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from _helpers import assert_same_values, mlp_problem
from refopt.optim import OPTIMIZERS, optimizer_class
from refopt.optim.base import MAX_SEED, show_value
from refopt.optim.newton import NotPositiveDefiniteError
from refopt.problems import functions as F

NAMES = sorted(OPTIMIZERS)


def _arguments(cls):
    """(name, Parameter) of every constructor argument."""
    return [(k, p) for k, p in inspect.signature(cls.__init__).parameters.items() if k != "self"]


def _kind(p) -> str:
    """What an argument holds, read from its default: bool, int, float, str or other (None defaults)."""
    d = p.default
    if isinstance(d, bool):
        return "bool"
    if isinstance(d, int):
        return "int"
    if isinstance(d, float):
        return "float"
    if isinstance(d, str):
        return "str"
    return "other"


def _optional(p) -> bool:
    """None is a documented value: the default is None or the annotation says Optional / | None."""
    return p.default is None or "None" in str(p.annotation) or "Optional" in str(p.annotation)


class _Unprintable:
    def __repr__(self):
        raise RuntimeError("no repr")


# Values no argument of any optimizer accepts (no choice is "bogus", no number is infinite or beyond the
# float range, no argument is a complex number, a dict, bytes or an arbitrary object).
NEVER_VALID = {
    "a string": "bogus", "bytes": b"sqrt", "a dict": {}, "an object": object(), "a broken repr": _Unprintable(),
    "complex": 1 + 2j, "nan": math.nan, "inf": math.inf, "-inf": -math.inf, "numpy nan": np.float64("nan"),
    "10**400": 10 ** 400, "-10**400": -10 ** 400, "10**5000": 10 ** 5000,
}
# Arguments documented to take a negative number: Shampoo's exponent (< 0), AdaHessian's spatial_block −1.
NEGATIVE_ALLOWED = {("shampoo", "exponent"), ("adahessian", "spatial_block")}


# Positive numbers outside the range of arguments documented to take negative ones (Shampoo's exponent < 0)
POSITIVE_INVALID = {("shampoo", "exponent")}


def _value_kind(name, arg, p) -> str:
    """The kind of ``arg``'s values: its default's, or for a None default (cg_maxiter, exponent, form, ...)
    that of its valid values in VALID_ARGUMENTS (``initial_matrix`` stays "other")."""
    kind = _kind(p)
    if kind != "other" or arg == "initial_matrix":
        return kind
    cls = optimizer_class(name)
    kinds = {_kind(inspect.Parameter("x", inspect.Parameter.KEYWORD_ONLY, default=v))
             for v in valid_values(cls, arg) if v is not None and not isinstance(v, OfSize)}
    return kinds.pop() if len(kinds) == 1 else "other"


def _bad_values(name, arg, p):
    """(label, value) pairs outside ``arg``'s documented range, by the kind of its values."""
    bad = dict(NEVER_VALID)
    kind = _value_kind(name, arg, p)
    if (name, arg) in POSITIVE_INVALID:
        bad.update({"0": 0.0, "0.5": 0.5, "2**63": 2 ** 63})
    if arg == "initial_matrix":   # a positive scalar (L-BFGS) or an SPD matrix: never ≤ 0
        bad.update({"-1": -1.0, "0": 0, "True": True})
    if kind == "other" and valid_values(optimizer_class(name), arg) == [None]:   # DFP/SR1's damping: None only
        bad.update({"'powell'": "powell", "1": 1, "True": True})
    if not _optional(p):
        bad["None"] = None
    if kind in ("int", "float") and (name, arg) not in NEGATIVE_ALLOWED:
        bad.update({"-1": -1, "-1.0": -1.0, "-1e308": -1e308})
    if kind == "int":  # integers: no float, no bool, and a stated upper bound (2**63 is over every bound)
        bad.update({"2.5": 2.5, "1e308": 1e308, "True": True, "2**63": 2 ** 63, "[1]": [1], "'3'": "3"})
    if kind == "float":
        bad.update({"True": True, "[0.5]": [0.5], "'0.1'": "0.1", "np array": np.array([0.5, 0.5])})
    if kind == "bool":
        bad.update({"1": 1, "0": 0, "'yes'": "yes", "'False'": "False", "[]": []})
    if kind == "str":
        example = p.default if isinstance(p.default, str) else next(
            v for v in valid_values(optimizer_class(name), arg) if isinstance(v, str))
        bad.update({"1": 1, "True": True, "['x']": [example], "upper case": example.upper() + "X"})
    return bad


def _names_argument(message: str, arg: str) -> bool:
    return re.search(rf"(?<![A-Za-z_]){re.escape(arg)}(?![A-Za-z_])", message) is not None


@pytest.mark.parametrize("name", NAMES)
def test_every_bad_constructor_argument_is_refused_by_name(name):
    cls = optimizer_class(name)
    problems = []
    for arg, p in _arguments(cls):
        for label, value in _bad_values(name, arg, p).items():
            try:
                cls(**{arg: value})
            except (ValueError, TypeError) as exc:
                if not _names_argument(str(exc), arg):
                    problems.append(f"{arg}={label}: {type(exc).__name__} without the name: {exc}")
            except Exception as exc:  # noqa: BLE001 - anything else is the defect being fuzzed for
                problems.append(f"{arg}={label}: {type(exc).__name__}: {exc}"[:200])
            else:
                problems.append(f"{arg}={label}: accepted")
    assert not problems, f"{name}: {len(problems)} bad arguments not refused by name:\n" + "\n".join(problems)


@pytest.mark.parametrize("name", NAMES)
def test_numpy_scalars_are_accepted_as_numbers(name):
    """np.float64 / np.float32 / np.int64 defaults are read as the Python numbers they hold (documented
    in optim/base.py), and hyperparameters() gives back plain Python numbers."""
    cls = optimizer_class(name)
    kw = {}
    for arg, p in _arguments(cls):
        if _kind(p) == "float":
            kw[arg] = np.float64(p.default)
        elif _kind(p) == "int":
            kw[arg] = np.int64(p.default)
        elif _kind(p) == "bool":
            kw[arg] = np.bool_(p.default)
    opt = cls(**kw)
    for arg, value in opt.hyperparameters().items():
        if arg in kw:
            assert type(value) in (int, float, bool) and value == kw[arg], arg


def test_float32_scalars_are_converted_exactly():
    """np.float32(0.1) is the float32 number nearest 0.1, converted exactly (not re-rounded to 0.1)."""
    from refopt.optim.adam import Adam
    assert Adam(lr=np.float32(0.1)).lr == float(np.float32(0.1)) != 0.1


@pytest.mark.parametrize("arg", ["probes", "seed"])
@pytest.mark.parametrize("name", ["adahessian", "sophia_h"])
def test_work_bounds_are_enforced_at_construction(name, arg):
    """probes=10**400 used to be accepted and then hang in update; the bound is checked up front."""
    from refopt.optim import base
    cls = optimizer_class(name)
    limit = base.MAX_DRAWS if arg == "probes" else MAX_SEED
    assert getattr(cls(**{arg: limit}), arg) == limit
    with pytest.raises(ValueError, match=rf"{arg} must be an integer in \[\d+, {limit}\]"):
        cls(**{arg: limit + 1})


@pytest.mark.parametrize("name", ["sr1", "bfgs", "dfp", "sherman_morrison", "lbfgs"])
@pytest.mark.parametrize("value", ["bogus", [["a"]], [[1 + 2j]], [[10 ** 400]], {"a": 1}])
def test_initial_matrix_garbage_names_the_argument(name, value):
    with pytest.raises(ValueError, match="initial_matrix"):
        optimizer_class(name)(initial_matrix=value)


# --- (a) random problems and hyperparameters ---------------------------------------------------------
def _problem(draw, network: bool):
    """(params, oracle): a tiny MLP (random sizes, seed, loss, batch) or a classical test function."""
    if network or draw(st.booleans()):
        sizes = draw(st.lists(st.integers(1, 3), min_size=2, max_size=3))
        sizes[-1] = max(sizes[-1], 2)
        loss = draw(st.sampled_from(["softmax", "gaussian"]))
        _, params, oracle = mlp_problem(sizes, draw(st.integers(1, 5)), draw(st.integers(0, 10 ** 6)), loss=loss)
        return params, oracle
    make = draw(st.sampled_from([lambda: F.rosenbrock(2), lambda: F.beale(), lambda: F.powell_singular(4),
                                 lambda: F.quadratic(3, 1e3, seed=1)]))
    problem = make()
    return problem.x0, problem.oracle()


class Scaled(tuple):
    """Valid values given as multiples of the argument's default (lr, eps, ...: the scale is per optimizer)."""


class OfSize:
    """A valid value that depends on the problem's size n (an n×n matrix, a cap ≥ n), made once n is known."""

    def __init__(self, make):
        self.make = make


SWITCHES = "switches"   # the declared choices of ``cls.switches[arg]``
_EYE2 = OfSize(lambda n: 2.0 * np.eye(n))
_DIAG = OfSize(lambda n: np.diag(np.linspace(0.5, 2.0, n)))

# Valid values of every constructor argument, by name (overridden per optimizer in ARG_OVERRIDES where one
# name means different things); within the documented ranges, non-default values first.
VALID_ARGUMENTS = {
    "absolute": [True, False], "adapt_damping": [True, False], "amsgrad": SWITCHES, "approximate_wolfe": [False, True],
    "beta1": [0.5, 0.0, 0.99], "beta2": [0.9, 0.5, 0.9999], "bias_block": SWITCHES, "bias_correction": [False, True],
    "block_size": [2, 1, 3, 100], "blocks": SWITCHES, "bs": [2, 1, 8], "burnin": [2, 0, 5], "c1": [1e-3, 0.1, 0.4], "c2": [0.5, 0.99],
    "cg_maxiter": [5, 1, 50], "cg_tol": [1e-6, 0.1], "curvature": SWITCHES, "curvature_skip": [1e-8, 0.0],
    "curvature_skip_rule": SWITCHES, "damping": [1e-3, 0.1, 1.0], "damping_decrease": [0.5, 0.9],
    "damping_increase": [3.0, 1.1], "damping_interval": [1, 10], "dampening": [0.5, 0.0, 1.0], "damping_scheme": SWITCHES, "decay": [0.5, 0.0, 0.99],
    "dense_max_size": [1, 10, 1000], "descent_check": SWITCHES, "eigenvalue_floor": [1e-4, 1e-12], "empirical_scale": SWITCHES, "kfac_approx": SWITCHES, "conv_row_scale": SWITCHES, "kernel_average": SWITCHES, "tensor_view": SWITCHES,
    "eps": Scaled((0.01, 100.0)), "eps_mode": SWITCHES, "eps_root": [1e-8, 1e-3, 0.0], "eta": [0.1, 0.0, 0.25],
    "exponent": [-0.25, -0.5, -1.0, None], "factor_dtype": SWITCHES, "factor_init": SWITCHES, "factor_interval": [2, 1, 3],
    "filter_beta": [0.5, 0.0, 0.9], "first_step": SWITCHES, "fisher": SWITCHES, "forcing": ["linear", "sqrt", 0.5, 0.1],
    "form": SWITCHES, "gamma": [0.1, 0.001, 1.0], "graft_eps": [1e-6, 1e-12], "grafting": SWITCHES,
    "hessian_power": [0.5, 1.0], "initial_accumulator": [0.1, 1.0, 0.0], "initial_matrix": [_EYE2, _DIAG, None],
    "initial_radius": [0.1, 10.0], "initial_scaling": SWITCHES, "initial_step": SWITCHES, "inverse": SWITCHES,
    "inverse_interval": [5, 1, 50], "k": [2, 1, 5], "kl_clip": [None, 1e-2, 1.0], "kl_epsilon": [1e-4, 0.1],
    "line_search": SWITCHES, "lr": Scaled((0.5, 0.1, 2.0)), "lr_decay": [0.01, 1.0, 0.0], "lr_dtype": SWITCHES, "lr_scaled_decay": [True],
    "max_evals": [5, 1, 100], "max_radius": [10.0, 1e4], "max_size": [OfSize(lambda n: n), 1000, None],
    "max_trials": [5, 1, 50], "memory": [3, 1, 50], "merge_dims": [4, 1, 1000, None], "min_damping": [1e-4, 1e-12],
    "modification": SWITCHES, "momentum": [0.5, 0.0, 0.99], "nesterov": [True, False], "output_grad_scale": SWITCHES,
    "parametrization": SWITCHES, "powell": [0.5, 0.1], "precondition": SWITCHES, "precondition_interval": [2, 1, 5],
    "probe_distribution": SWITCHES, "probes": [2, 1, 4], "progress_tol": [5e-4, 1e-4, None], "refresh": SWITCHES,
    "root": SWITCHES, "samples": [2, 1, 3], "scale_decay": [0.5, 0.0, 0.99, None],
    "schedule": [{"name": "cosine", "decay_steps": 3, "warmup_steps": 1}, {"name": "step", "step_size": 1, "gamma": 0.5},
                 {"name": "linear_warmup", "warmup_steps": 2}, None], "secant_decay": [0.5, 0.0, 0.99],
    "seed": [1, 0, MAX_SEED], "solver": ["dense", "cg", "auto"], "spatial_axis": [1, 0], "spatial_block": [-1, 1, 2],
    "sr1_skip": [1e-6, 0.0], "start_step": [2, 1, 5], "statistics": SWITCHES, "step_rule": SWITCHES,
    "variant": SWITCHES, "vector_diagonal": [True, False], "warm_start": [0.5, 0.0, 0.95],
    "weight_decay": [1e-4, 0.1, 0.0], "weight_decay_mode": SWITCHES,
}
_QN_SEARCHES = ["armijo", "none", "strong_wolfe"]
ARG_OVERRIDES = {
    **{(n, "line_search"): _QN_SEARCHES + ["minpack", "scipy"] for n in ("bfgs", "dfp", "sr1", "sherman_morrison")},
    ("lbfgs", "line_search"): _QN_SEARCHES + ["minfunc", "minpack"],
    **{(n, "damping"): [None] for n in ("dfp", "sr1", "sherman_morrison")},     # Powell damping: BFGS only
    **{(n, "damping"): ["powell", None] for n in ("bfgs", "lbfgs")},
    **{(n, "damping"): [1e-3, 1.0, 0.0] for n in ("newton", "gauss_newton", "newton_cg")},
    **{(n, "initial_scaling"): ["none"] for n in ("sr1", "sherman_morrison")},   # SR1 refuses scaling
    ("lbfgs", "initial_matrix"): [2.0, OfSize(lambda n: np.linspace(0.5, 2.0, n)), None],
    ("adagrad_full", "max_size"): [OfSize(lambda n: n), 1, 8192],   # 1: leaves above it fall back (documented)
    **{(n, "eps"): [1e-12, 1e-8, None] for n in ("sophia_g", "sophia_h")},
    ("trust_ncg", "eta"): [0.1, 0.0, 0.2],
    ("kbfgs", "inverse_interval"): [5, 1, None],
    ("natural_gradient", "cg_maxiter"): [5, 1, 50],
}
# Arguments that only make sense with another one set (a value alone would be refused by design)
REQUIRES = {("sgd", "nesterov"): {"momentum": 0.9}, ("sgd", "dampening"): {"momentum": 0.9}, ("shampoo", "nesterov"): {"momentum": 0.9},
            ("shampoo", "precondition"): {"momentum": 0.9}, ("kfac", "bias_block"): {"damping_scheme": "tikhonov"},
            ("kfac", "empirical_scale"): {"fisher": "empirical"}}


def valid_values(cls, arg) -> list:
    """The valid values of ``cls``'s argument ``arg`` from the table (KeyError: the table lacks it)."""
    entry = ARG_OVERRIDES.get((cls.name, arg), VALID_ARGUMENTS[arg])
    if entry == SWITCHES:
        entry = list(cls.switches[arg])
    if isinstance(entry, Scaled):
        default = inspect.signature(cls.__init__).parameters[arg].default
        entry = [default * f for f in entry] + [default]
    return list(entry)


def _resolve(kw, n):
    return {k: (v.make(n) if isinstance(v, OfSize) else v) for k, v in kw.items()}


def _hyperparameters(draw, cls):
    """A few arguments moved away from their defaults, each drawn from its valid values in the table."""
    kw = {}
    args = dict(_arguments(cls))
    for arg in draw(st.lists(st.sampled_from(sorted(args)), max_size=4, unique=True)):
        kw[arg] = draw(st.sampled_from(valid_values(cls, arg)))
        if arg == "seed" and draw(st.booleans()):
            kw[arg] = draw(st.integers(0, MAX_SEED))
        for extra, value in REQUIRES.get((cls.name, arg), {}).items():
            kw.setdefault(extra, value)
    return kw


def test_every_constructor_argument_has_valid_values_in_the_table():
    """So a new argument cannot be forgotten by the random-hyperparameter fuzz."""
    missing = []
    for name in NAMES:
        cls = optimizer_class(name)
        for arg, _ in _arguments(cls):
            try:
                values = valid_values(cls, arg)
            except KeyError:
                values = []
            if not values:
                missing.append(f"{name}.{arg}")
    assert not missing, "no valid values in VALID_ARGUMENTS / ARG_OVERRIDES for: " + ", ".join(missing)


def _non_default(cls, arg, p):
    """The first value of the table that differs from the default (the default itself when none does)."""
    for v in valid_values(cls, arg):
        if isinstance(v, OfSize) or type(v) is not type(p.default) or v != p.default:
            return v
    return p.default


@pytest.mark.parametrize("name", NAMES)
def test_each_argument_alone_at_a_non_default_value_runs(name):
    """Every argument of every optimizer, set alone (plus what it REQUIRES) to a valid non-default value,
    constructs, initialises and runs 2 steps on a tiny MLP with finite params and state: the random
    fuzz above draws subsets, this makes sure every argument is exercised in CI."""
    cls = optimizer_class(name)
    _, params0, oracle = mlp_problem([2, 3, 2], 3, 7)
    n = sum(int(np.size(a)) for a in _leaves(params0))
    problems = []
    for arg, p in _arguments(cls):
        kw = _resolve(dict(REQUIRES.get((name, arg), {}), **{arg: _non_default(cls, arg, p)}), n)
        try:
            opt = cls(**kw)
            params, state = params0, opt.init(params0)
            for _ in range(2):
                params, state, info = opt.update(params, state, oracle)
            if not (_all_finite(params) and _all_finite(state)):
                problems.append(f"{arg}={kw[arg]!r}: non-finite params or state")
        except Exception as exc:  # noqa: BLE001 - a valid value must run
            problems.append(f"{arg}={show_value(kw[arg])}: {type(exc).__name__}: {exc}"[:240])
    assert not problems, f"{name}:\n" + "\n".join(problems)


def _leaves(tree):
    """The arrays and Python floats in a nested state (NamedTuples, lists, dicts, objects)."""
    if isinstance(tree, (np.ndarray, float)):
        return [tree]
    if isinstance(tree, dict):
        return [a for v in tree.values() for a in _leaves(v)]
    if isinstance(tree, (list, tuple)):
        return [a for v in tree for a in _leaves(v)]
    return [a for v in vars(tree).values() for a in _leaves(v)] if hasattr(tree, "__dict__") else []


def _all_finite(tree) -> bool:
    """Arrays finite; float scalars finite or NaN (states use NaN for "not yet": L-BFGS's γ and previous
    loss before the first pair), never ±inf (Gauss-Newton's damping overflowed to inf)."""
    return all(bool(np.all(np.isfinite(a))) if isinstance(a, np.ndarray) else not math.isinf(a)
               for a in _leaves(tree) if isinstance(a, float) or a.dtype.kind in "fc")


@pytest.mark.parametrize("name", NAMES)
@given(data=st.data())
def test_no_non_finite_value_escapes_and_refusals_change_nothing(name, data):
    cls = optimizer_class(name)
    kw = _hyperparameters(data.draw, cls)
    # curvature="ggn" needs a network (refused on a test function with a ValueError naming the fix)
    params, oracle = _problem(data.draw, cls.needs_network or kw.get("curvature") == "ggn")
    kw = _resolve(kw, sum(int(np.size(a)) for a in _leaves(params)))    # n×n initial matrices, caps ≥ n
    try:
        opt = cls(**kw)
    except ValueError:
        assume(False)  # a combination the constructor refuses (c1 ≥ c2, nesterov without momentum, ...)
    try:
        state = opt.init(params)
    except ValueError:
        assume(False)  # a documented refusal of this problem (too large for a dense method, scalar leaves)
    for _ in range(4):
        before = copy.deepcopy((params, state))
        try:
            new_params, new_state, info = opt.update(params, state, oracle)
        except NotPositiveDefiniteError:  # modification="error" documents this exception
            assert kw.get("modification") == "error"
            return
        if info["skipped"]:
            assert_same_values(new_params, before[0])
            assert_same_values(new_state, before[1])
            assert_same_values(params, before[0])   # nothing was modified in place either
            assert_same_values(state, before[1])
        assert _all_finite(new_params), (name, kw, info)
        assert _all_finite(new_state), (name, kw, info)
        params, state = new_params, new_state


# --- what the fuzzers found (regressions) ----------------------------------------------------------
def test_gauss_newton_damping_never_overflows_into_the_state():
    """Gauss-Newton with defaults on a softmax MLP [3, 3] with one example: the loss reaches the rounding
    floor (1e-14), every Levenberg–Marquardt trial is rejected and λ grew by 1.5·3·6·…·2¹⁹·1.5 per step, so
    at step 7 the state held damping = inf (then NaN matrices) with skipped False. λ now stops at
    MAX_DAMPING and the state stays finite."""
    from refopt.optim.newton import MAX_DAMPING, GaussNewton
    _, params, oracle = mlp_problem([3, 3], 1, 6)
    opt = GaussNewton()
    state = opt.init(params)
    for _ in range(12):
        params, state, info = opt.update(params, state, oracle)
        assert math.isfinite(state.damping) and state.damping <= MAX_DAMPING, info
        assert _all_finite(params)
    assert state.damping == MAX_DAMPING   # the case did reach the cap (the test exercises it)


def test_damping_above_the_cap_is_refused():
    from refopt.optim.newton import MAX_DAMPING
    for name in ("newton", "gauss_newton", "newton_cg"):
        assert optimizer_class(name)(damping=MAX_DAMPING).damping == MAX_DAMPING
        with pytest.raises(ValueError, match="damping must be at most"):
            optimizer_class(name)(damping=1e308)


def test_shampoo_refuses_a_singular_preconditioner_instead_of_raising():
    """Three SGD steps (start_step=3) throw Rosenbrock to |x| ≈ 3e5, the statistics reach 1e34 and
    ε = 1e-4 is lost in their rounding: the root (H + εI)^(−1/4) used to raise a ValueError mid-run."""
    from _helpers import assert_refused
    from refopt.optim.shampoo import Shampoo
    problem = F.rosenbrock(2)
    oracle, opt = problem.oracle(), Shampoo(start_step=3)
    x, state = problem.x0, opt.init(problem.x0)
    for _ in range(2):
        x, state, info = opt.update(x, state, oracle)
        assert not info["skipped"]
    assert_refused(opt, x, state, oracle, "singular preconditioner")


def test_beale_gradient_overflows_to_inf_instead_of_raising():
    """SGD at its default lr diverges on Beale; at |y| ≈ 1e200 the analytic gradient used Python's
    float ** int, which raises OverflowError (a crash mid-run); products overflow to inf, so the
    optimizer sees a non-finite gradient and refuses the step."""
    from _helpers import assert_refused
    from refopt.optim.sgd import SGD
    problem = F.beale()
    x = np.array([1.0, 1e200])
    assert not np.all(np.isfinite(problem.grad(x)))
    opt = SGD()
    assert_refused(opt, x, opt.init(x), problem.oracle(), "non-finite")
