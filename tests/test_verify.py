"""Golden traces: export/load round trip, divergence reports, convention search, bad files."""
import json

import numpy as np
import pytest

from refopt import tree as T
from refopt.verify import check_trace, compare_traces, export_trace, load_trace, make_trace, search_conventions


def _rewrite(path, out, **changes):
    with np.load(path) as data:
        files = dict(data)
    for k, v in changes.items():
        if v is None:
            files.pop(k)
        else:
            files[k] = v
    np.savez(out, **files)
    return out


def test_export_load_round_trip_and_self_check(tmp_path):
    trace = make_trace("sgd", {"lr": 0.1, "momentum": 0.9}, "tiny_mlp", steps=4)
    path = tmp_path / "t.npz"
    export_trace(trace, str(path))
    loaded = load_trace(str(path))
    assert loaded.steps == 4 and loaded.meta["param_names"] == ["0.W", "0.b", "1.W", "1.b"]
    for a, b in zip(trace.params, loaded.params):
        assert all(np.array_equal(x, y) for x, y in zip(T.leaves(a), T.leaves(b)))
    divergence, _ = check_trace(str(path), rtol=0, atol=0)
    assert divergence is None


def test_layout_is_plain_numpy(tmp_path):
    """A JAX or PyTorch user reads the trace with np.load alone."""
    path = tmp_path / "t.npz"
    export_trace(make_trace("sgd", {"lr": 0.1}, "tiny_regression", steps=3), str(path))
    with np.load(path) as data:
        meta = json.loads(str(data["meta"]))
        assert data["params/0.W"].shape == (4, 4, 3)  # (T+1, fan_in, fan_out)
        assert data["grad/0.b"].shape == (3, 3)
        assert data["loss"].shape == (3,)
        # step 1 of plain gradient descent, recomputed from the stored arrays
        np.testing.assert_allclose(data["params/0.W"][1], data["params/0.W"][0] - 0.1 * data["grad/0.W"][0])
    assert meta["optimizer"] == "sgd" and meta["problem"]["loss"] == "gaussian"


def test_divergence_names_step_and_parameter(tmp_path):
    path = tmp_path / "t.npz"
    export_trace(make_trace("sgd", {"lr": 0.1}, "tiny_mlp", steps=4), str(path))
    with np.load(path) as data:
        W = data["params/1.b"].copy()
    W[3, 2] += 1e-3  # perturb step 3, parameter 1.b, entry 2
    bad = _rewrite(path, tmp_path / "bad.npz", **{"params/1.b": W})
    divergence, _ = check_trace(str(bad))
    assert (divergence.step, divergence.parameter, divergence.index) == (3, "1.b", (2,))
    # within a loose tolerance, it matches
    assert check_trace(str(bad), rtol=0, atol=1e-2)[0] is None


def test_search_finds_planted_convention(tmp_path):
    """A trace made with nesterov=True but labelled nesterov=False: the search names the switch."""
    trace = make_trace("sgd", {"lr": 0.1, "momentum": 0.9, "nesterov": True}, "tiny_mlp", steps=3)
    trace.meta["hyperparameters"]["nesterov"] = False
    path = tmp_path / "planted.npz"
    export_trace(trace, str(path))
    divergence, _ = check_trace(str(path))
    assert divergence is not None and divergence.step == 1
    assert search_conventions(str(path)) == [{"nesterov": True}]


def _relabelled(name, steps=12, **changes):
    """A trace of profile ``name`` whose meta states only the profile's plain hyperparameters (switches at
    their defaults), with ``changes`` to them: what a verifier who does not know the conventions writes."""
    from refopt.optim import optimizer_class
    from refopt.verify.profiles import PROFILES
    prof = PROFILES[name]
    trace = make_trace(prof.optimizer, {}, "tiny_mlp", steps=steps, profile=name)
    switches = optimizer_class(prof.optimizer).switches
    trace.meta["hyperparameters"] = {k: v for k, v in prof.hyperparameters.items() if k not in switches} | changes
    trace.meta["profile"] = None
    return trace


def test_search_answers_the_smallest_set_and_drops_no_op_switches():
    """AdaHessian's official profile: the answer is the two switches that matter. Injected probes make
    probe_distribution a no-op, weight_decay=0 makes weight_decay_mode one: reported once, in no match.
    `absolute` alone changes nothing (v averages D²) but does with spatial averaging: it stays."""
    found = search_conventions(_relabelled("amirgholami/adahessian"))
    assert found == [{"spatial_block": -1, "absolute": True}]
    # kernel_average acts on 4-D conv kernels only, so on this MLP's trace it is a no-op too
    assert found.no_effect == ("kernel_average", "probe_distribution", "weight_decay_mode") and found.diagnosis is None


def test_search_lists_equivalent_settings_once():
    """Official SophiaH: refresh=None means 'after' there, and a draw distribution is moot when the draws are
    injected, so the longer settings run bit for bit as {parametrization: official} and are not listed."""
    assert search_conventions(_relabelled("Liuhong99/Sophia.SophiaH")) == [{"parametrization": "official"}]


def test_search_orders_ties_by_declaration():
    """With a tolerance that everything passes, the matches come fewest switches first, ties in the order of
    the class's conventions and of each switch's choices."""
    from refopt.optim import optimizer_class
    trace = make_trace("adam", {"lr": 0.01, "eps": 0.1}, "tiny_mlp", steps=2)
    found = search_conventions(trace, rtol=1.0, atol=1.0)
    switches = optimizer_class("adam").switches
    names = list(switches)

    def key(m):
        return len(m), sorted((names.index(k), switches[k].index(v)) for k, v in m.items())
    assert found[0] == {} and len(found) > 3 and list(found) == sorted(found, key=key)
    assert found[1] == {names[0]: switches[names[0]][1]}


def test_diagnosis_names_the_learning_rate():
    """SGD with momentum run at lr = 0.2, labelled 0.1: no switch matches; the step ratio at step 1 is 2 on
    every coordinate, and refopt with lr = 0.2 reproduces all 30 steps."""
    trace = make_trace("sgd", {"lr": 0.2, "momentum": 0.9}, "tiny_mlp", steps=30)
    trace.meta["hyperparameters"]["lr"] = 0.1
    found = search_conventions(trace)
    assert found == [] and found.diagnosis.step == 1 and found.diagnosis.ratio == pytest.approx(2.0, rel=1e-12)
    findings = found.diagnosis.findings
    assert list(findings)[0] == "lr"
    assert findings["lr"] == "the learning rate differs by 2.0: refopt with lr=0.2 reproduces all 30 steps"
    assert "2.0 × refopt's on every coordinate at step 1" in findings["step_ratio"]
    assert findings["onset"].startswith("differs from step 1") and "leaves" not in findings


def test_diagnosis_of_a_sign_flip_and_of_the_bias_leaves():
    """Their θ_t = 2θ_0 − θ_t (every step reversed): a sign flip at every step. Their biases moved by
    an extra 1e-3 per step: only the bias leaves differ, and no constant ratio is claimed."""
    from refopt.verify.trace import diagnose_divergence
    ours = make_trace("adam", {"lr": 0.02}, "tiny_mlp", steps=10)
    flipped = make_trace("adam", {"lr": 0.02}, "tiny_mlp", steps=10)
    flipped.params = [T.tree_map2(lambda a, b: 2 * a - b, ours.params[0], p) for p in ours.params]
    d = diagnose_divergence(ours, flipped)
    assert d.ratio == pytest.approx(-1.0) and "every step from 1 to 10" in d.findings["sign_flip"]
    assert "step_ratio" not in d.findings and "lr" not in d.findings
    biased = make_trace("adam", {"lr": 0.02}, "tiny_mlp", steps=10)
    biased.params = [[{"W": layer["W"], "b": layer["b"] + 1e-3 * t} for layer in p] for t, p in enumerate(ours.params)]
    d = diagnose_divergence(ours, biased)
    assert d.ratio is None and d.findings["leaves"].startswith("only the bias leaves 0.b, 1.b differ at step 1")
    assert diagnose_divergence(ours, ours) is None


def test_diagnosis_of_a_later_divergence():
    """Sophia-G refreshing every 3 steps, labelled every 2: both refresh at step 1, so they agree for 2 steps."""
    trace = make_trace("sophia_g", {"lr": 0.05, "k": 3, "gamma": 50.0}, "tiny_mlp", steps=8)
    trace.meta["hyperparameters"]["k"] = 2
    found = search_conventions(trace)
    assert found == [] and found.diagnosis.step == 3
    assert found.diagnosis.findings["onset"].startswith("agrees for 2 steps, then parts at step 3")


def test_cli_search_prints_no_effect_and_diagnosis(tmp_path, capsys):
    from refopt.cli import main
    path = tmp_path / "adahessian.npz"
    export_trace(_relabelled("amirgholami/adahessian", steps=4), str(path))
    assert main(["verify", "check", str(path), "--search"]) == 1
    out = capsys.readouterr().out
    assert "  matches refopt with spatial_block=-1, absolute=True\n" in out
    assert "  has no effect on this trace: kernel_average, probe_distribution, weight_decay_mode" in out
    trace = make_trace("sgd", {"lr": 0.2}, "tiny_mlp", steps=5)
    trace.meta["hyperparameters"]["lr"] = 0.1
    export_trace(trace, str(path))
    assert main(["verify", "check", str(path), "--search"]) == 1
    out = capsys.readouterr().out
    assert "no combination of refopt's convention switches reproduces it; the divergence:" in out
    assert "    the learning rate differs by 2.0: refopt with lr=0.2 reproduces all 5 steps" in out


def test_compare_identical_traces():
    a = make_trace("sgd", {"lr": 0.1}, "tiny_logistic", steps=2)
    assert compare_traces(a, a, 0, 0) is None


@pytest.mark.parametrize("change,message", [
    ({"params/0.W": None}, "missing array 'params/0.W'"),
    ({"meta": None}, "missing array 'meta'"),
    ({"problem/X": None}, "problem/X"),
    ({"params/0.b": np.zeros((5, 7))}, "shape"),
    ({"params/1.b": np.full((5, 3), np.nan)}, "NaN"),
    ({"meta": np.array("{not json")}, "not JSON"),
])
def test_bad_trace_files(tmp_path, change, message):
    path = tmp_path / "t.npz"
    export_trace(make_trace("sgd", {"lr": 0.1}, "tiny_mlp", steps=4), str(path))
    bad = _rewrite(path, tmp_path / "bad.npz", **change)
    with pytest.raises(ValueError, match=message):
        load_trace(str(bad))


def test_unknown_trace_problem_and_bad_steps():
    with pytest.raises(ValueError, match="tiny_mlp"):
        make_trace("sgd", {}, "no_such_problem")
    with pytest.raises(ValueError, match="steps"):
        make_trace("sgd", {}, "tiny_mlp", steps=0)


def test_export_is_atomic(tmp_path, monkeypatch):
    """A failure while writing leaves neither a partial file nor a temporary one."""
    import refopt.verify.trace as tr
    path = tmp_path / "t.npz"

    def boom(*a, **k):
        raise RuntimeError("disk full")
    monkeypatch.setattr(tr.np, "savez", boom)
    with pytest.raises(RuntimeError):
        export_trace(make_trace("sgd", {"lr": 0.1}, "tiny_mlp", steps=1), str(path))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("optimizer,hp,planted", [
    ("adam", {"lr": 0.05, "eps": 0.1}, {"eps_mode": "inside"}),
    ("adagrad", {"lr": 0.1}, {"initial_accumulator": 0.1}),
    ("sophia_g", {"lr": 0.05, "k": 2, "gamma": 50.0}, {"parametrization": "official"}),
])
def test_search_finds_planted_switch_of_randomised_and_adaptive_methods(tmp_path, optimizer, hp, planted):
    """A trace produced with one switch flipped (and labelled with the default) is traced back to it,
    with the random draws (Sophia-G's sampled labels) replayed from the trace."""
    trace = make_trace(optimizer, {**hp, **planted}, "tiny_mlp", steps=4)
    trace.meta["hyperparameters"] = dict(hp)
    path = tmp_path / "planted.npz"
    export_trace(trace, str(path))
    assert check_trace(str(path))[0] is not None
    assert planted in search_conventions(str(path))


def test_every_optimizer_declares_its_switches():
    """Each registered optimizer lists its discrete convention switches (what --search tries); each is a
    constructor argument whose default is one of the listed values (or None, meaning "chosen from the other
    settings", as Newton's line search or a quasi-Newton method's form)."""
    import inspect

    from refopt.optim import OPTIMIZERS, optimizer_class
    for name in OPTIMIZERS:
        cls = optimizer_class(name)
        switches = getattr(cls, "switches", None)
        assert switches, f"{name} declares no switches"
        params = inspect.signature(cls.__init__).parameters
        for key, values in switches.items():
            assert key in params, (name, key)
            default = params[key].default
            assert default is None or default in values, (name, key, default, values)


def test_search_cap_tries_the_closest_settings_first(tmp_path):
    """With a cap, the settings with fewest changed switches are tried first, and the cap is announced."""
    trace = make_trace("adam", {"lr": 0.05, "eps": 0.1, "eps_mode": "inside"}, "tiny_mlp", steps=3)
    trace.meta["hyperparameters"] = {"lr": 0.05, "eps": 0.1}
    from refopt.optim import optimizer_class
    # 1 + (number of single flips) settings reach every one-switch change; the planted one is among them.
    singles = 1 + sum(len(v) - 1 for v in optimizer_class("adam").switches.values())
    with pytest.warns(UserWarning, match="closest"):
        assert search_conventions(trace, max_combinations=singles) == [{"eps_mode": "inside"}]
    with pytest.warns(UserWarning, match="closest"):
        assert search_conventions(trace, max_combinations=1) == []


def test_on_off_switches_refuse_non_booleans():
    """Every constructor argument whose default is True or False refuses a string such as "no"."""
    import inspect

    from refopt.optim import OPTIMIZERS, optimizer_class
    checked = 0
    for name in OPTIMIZERS:
        cls = optimizer_class(name)
        for key, p in inspect.signature(cls.__init__).parameters.items():
            if isinstance(p.default, bool):
                with pytest.raises(ValueError, match=key):
                    cls(**{key: "no"})
                checked += 1
    assert checked >= 8


def test_network_only_optimizers_are_refused_on_test_functions():
    from refopt.runner import RunConfig, run
    for name in ("kfac", "sophia_g", "gauss_newton", "natural_gradient", "kbfgs", "ekfac", "kfac_tridiag"):
        with pytest.raises(ValueError, match="needs a network problem"):
            run(RunConfig(name, {}, "rosenbrock", steps=1))


# --- malformed trace metadata and arrays (issue 9): one-line ValueError before the network is built ---

def _meta_edit(path, out, edit):
    with np.load(path) as data:
        meta = json.loads(str(data["meta"]))
    return _rewrite(path, out, meta=np.array(json.dumps(edit(meta))))


def _with(d, **kw):
    return {**d, **kw}


def _without(d, key):
    return {k: v for k, v in d.items() if k != key}


@pytest.mark.parametrize("edit,message", [
    (lambda m: _with(m, problem="tiny_mlp"), "meta problem must be an object"),
    (lambda m: _with(m, problem=_without(m["problem"], "sizes")), "meta problem has no 'sizes'"),
    (lambda m: _with(m, optimizer=["sgd"]), "meta optimizer must be one of"),
    (lambda m: _with(m, optimizer="no_such"), "meta optimizer must be one of"),
    (lambda m: _with(m, hyperparameters=[["lr", 0.1]]), "meta hyperparameters must be an object"),
    (lambda m: _with(m, problem=_with(m["problem"], sizes=[4, 200000, 200000, 3],
                                      activations=["tanh", "tanh", "identity"])), "more than 1000000 parameters"),
    (lambda m: _with(m, problem=_with(m["problem"], sizes=[4, True])), "positive integers"),
    (lambda m: _with(m, problem=_with(m["problem"], sizes=[4, 0])), "positive integers"),
    (lambda m: _with(m, problem=_with(m["problem"], sizes="4,5,3")), "positive integers"),
    (lambda m: _with(m, problem=_with(m["problem"], activations=["tanh"])), "problem activations must list 2"),
    (lambda m: _with(m, problem=_with(m["problem"], activations=["os.system", "identity"])), "activations"),
    (lambda m: _with(m, problem=_with(m["problem"], loss=["gaussian"])), "problem loss must be one of"),
    (lambda m: _with(m, problem=_with(m["problem"], reduction="max")), "problem reduction"),
    (lambda m: _with(m, problem=_with(m["problem"], variance="1")), "problem variance"),
    (lambda m: _with(m, seed="zero"), "meta seed must be an integer"),
    (lambda m: _with(m, seed=-1), "meta seed must be an integer"),
    (lambda m: _with(m, steps="4"), "meta steps"),
    (lambda m: _with(m, steps=10 ** 6), "meta steps must be an integer in [1, 10000]"),
    (lambda m: _with(m, steps=3), "meta steps is 3 but params/0.W holds 4 steps"),
    (lambda m: _with(m, profile=3), "meta profile"),
    (lambda m: _with(m, param_names="0.W"), "param_names must be a list"),
    (lambda m: _with(m, param_names=[0, 1, 2, 3]), "param_names must be a list"),
    (lambda m: _with(m, format="refopt-checkpoint/1"), "is not 'refopt-trace/1'"),
    (lambda m: [m], "meta must be a JSON object"),
])
def test_malformed_trace_meta_is_refused_before_building(tmp_path, monkeypatch, edit, message):
    import refopt.verify.trace as tr
    _assert_refused_before_building(tmp_path, monkeypatch, "tiny_mlp", 4, edit, message, forbid=[(tr, "MLP")])


def _no_build(*a, **k):
    raise AssertionError("the network or its arrays were built from an unchecked trace")


def _assert_refused_before_building(tmp_path, monkeypatch, problem, steps, edit, message, forbid=()):
    """An SGD trace of ``problem`` with its meta edited by ``edit`` is refused by load_trace with ``message``
    in one line, before a network's arrays are built (``_build`` and the ``forbid`` (object, name) pairs fail
    when called)."""
    import refopt.verify.trace as tr
    path = tmp_path / "t.npz"
    export_trace(make_trace("sgd", {"lr": 0.1}, problem, steps=steps), str(path))
    bad = _meta_edit(path, tmp_path / "bad.npz", edit)
    for obj, name in [(tr, "_build"), *forbid]:
        monkeypatch.setattr(obj, name, _no_build)
    with pytest.raises(ValueError) as info:
        load_trace(str(bad))
    assert message in str(info.value) and "\n" not in str(info.value), str(info.value)


@pytest.mark.parametrize("change,message", [
    ({"loss": np.array(["a", "b", "c", "d"])}, "loss must be a real array"),
    ({"loss": np.zeros(3)}, "loss has shape (3,), expected (4)"),
    ({"params/0.W": np.zeros((5, 4, 5), dtype=np.int64)}, "params/0.W must be a float32/float64 array"),
    ({"params/0.W": np.zeros((5, 5, 4))}, "params/0.W has shape (5, 5, 4), expected (5, 4, 5)"),
    ({"params/0.W": np.zeros((5, 4, 5), dtype=np.float32)}, "must share one dtype"),
    ({"params/0.b": np.zeros(5)}, "params/0.b has shape (5,)"),
    ({"problem/X": np.zeros((6, 3))}, "problem/X has shape (6, 3), expected (·, 4)"),
    ({"problem/X": np.array(["x"] * 24).reshape(6, 4)}, "problem/X must be a float32/float64 array"),
    ({"problem/y": np.full(6, 3)}, "class labels must lie in [0, 3)"),
    ({"problem/y": np.zeros(6)}, "problem/y must be integer class labels"),
    ({"problem/y": np.zeros(5, dtype=np.int64)}, "problem/y has shape (5,), expected (6)"),
    ({"grad/0.W": None}, "grad/* must be given for every parameter or for none"),
    ({"grad/0.W": np.zeros((5, 4, 5))}, "grad/0.W has shape (5, 4, 5), expected (4, 4, 5)"),
    ({"draws/1/labels": np.zeros((1, 7), dtype=np.int64)}, "draws/1/labels has shape (1, 7), expected (·, 6)"),
    ({"draws/1/labels": np.zeros((0, 6), dtype=np.int64)}, "holds 0 label sets, expected 1 to 1000"),
    ({"draws/1/labels": np.full((1, 6), 3)}, "draws/1/labels: class labels must lie in [0, 3)"),
    ({"draws/2/probes/0/0.W": np.zeros((4, 5))}, "missing array 'draws/2/probes/0/0.b'"),
    ({"meta": np.array(3)}, "'meta' must be a JSON string"),
    ({"meta": np.array('{"a": ' * 100000 + "1" + "}" * 100000)}, "nested too deeply"),
])
def test_malformed_trace_arrays_are_refused(tmp_path, change, message):
    _assert_trace_refused(tmp_path, change, message)


def _assert_trace_refused(tmp_path, change, message):
    """A 4-step SGD trace on the tiny MLP, rewritten with ``change``, is refused in one line naming ``message``."""
    path = tmp_path / "t.npz"
    export_trace(make_trace("sgd", {"lr": 0.1}, "tiny_mlp", steps=4), str(path))
    bad = _rewrite(path, tmp_path / "bad.npz", **change)
    with pytest.raises(ValueError) as info:
        load_trace(str(bad))
    assert message in str(info.value) and "\n" not in str(info.value), str(info.value)


def test_trace_with_more_steps_than_the_cap_is_refused(tmp_path):
    """A few MB of parameters would otherwise mean hours of replay (and ~2 KB of memory per step)."""
    from refopt.verify.trace import MAX_TRACE_STEPS
    path = tmp_path / "t.npz"
    export_trace(make_trace("sgd", {"lr": 0.1}, "tiny_regression", steps=2), str(path))
    n = MAX_TRACE_STEPS + 2  # T = n − 1 steps
    long = _rewrite(_meta_edit(path, tmp_path / "nosteps.npz", lambda m: _without(m, "steps")), tmp_path / "long.npz",
                    **{"params/0.W": np.zeros((n, 4, 3)), "params/0.b": np.zeros((n, 3)), "loss": None,
                       "grad/0.W": None, "grad/0.b": None})
    with pytest.raises(ValueError, match=f"holds {n - 1} steps, more than {MAX_TRACE_STEPS}"):
        load_trace(str(long))
    with pytest.raises(ValueError, match="steps must be an integer in"):
        make_trace("sgd", {"lr": 0.1}, "tiny_regression", steps=MAX_TRACE_STEPS + 1)


@pytest.mark.parametrize("optimizer,hp,problem", [
    ("sophia_h", {"k": 1}, "tiny_mlp"),          # Rademacher probes in the trace
    ("kfac", {}, "tiny_regression"),             # sampled real-valued labels (k, B, C)
    ("sophia_g", {"k": 1}, "tiny_mlp"),          # sampled class labels (k, B)
    ("sgd", {"lr": 0.1}, "tiny_logistic"),
])
def test_traces_with_draws_pass_the_checks_and_replay(tmp_path, optimizer, hp, problem):
    """The checks accept every layout refopt writes: a trace replays to itself exactly."""
    path = tmp_path / "t.npz"
    export_trace(make_trace(optimizer, hp, problem, steps=3), str(path))
    divergence, _ = check_trace(str(path), rtol=0, atol=0)
    assert divergence is None


# --- review of issue 9: unknown entries, the profile, the seed's range ------------------------------------

@pytest.mark.parametrize("change,message", [
    # a mistyped name next to the real ones, and gradients stored under a wrong prefix (all of them)
    ({"grad/0.w": np.zeros((4, 4, 5))}, "unknown entry 'grad/0.w'"),
    ({**{f"grad/{n}": None for n in ("0.W", "0.b", "1.W", "1.b")}, "grads/0.W": np.zeros((4, 4, 5))},
     "unknown entry 'grads/0.W'"),
    ({"grad/0.W": None, "grad/0.w": np.zeros((4, 4, 5))}, "unknown entry 'grad/0.w'"),
    ({"params/2.W": np.zeros((5, 3, 3))}, "unknown entry 'params/2.W'"),
    ({"draws/5/labels": np.zeros((1, 6), dtype=np.int64)}, "unknown entry 'draws/5/labels'"),   # T = 4
    ({"draws/0/labels": np.zeros((1, 6), dtype=np.int64)}, "unknown entry 'draws/0/labels'"),
    ({"draws/01/labels": np.zeros((1, 6), dtype=np.int64)}, "unknown entry 'draws/01/labels'"),
    ({"draws/1/label": np.zeros((1, 6), dtype=np.int64)}, "unknown entry 'draws/1/label'"),
    ({"loss2": np.zeros(4), "extra": np.zeros(1)}, "unknown entries 'extra', 'loss2'"),
    # probe 1 without probe 0: it would be skipped without a word
    ({f"draws/1/probes/1/{n}": np.zeros(s) for n, s in (("0.W", (4, 5)), ("0.b", (5,)), ("1.W", (5, 3)),
                                                        ("1.b", (3,)))}, "unknown entries 'draws/1/probes/1/0.W'"),
    ({"draws/1/labels": np.zeros((1, 6), dtype=np.int64),
      **{f"draws/1/probes/0/{n}": np.zeros(s) for n, s in (("0.W", (4, 5)), ("0.b", (5,)), ("1.W", (5, 3)),
                                                         ("1.b", (3,)))}}, "draws/1 holds both labels and probes"),
])
def test_unknown_trace_entries_are_refused(tmp_path, change, message):
    _assert_trace_refused(tmp_path, change, message)


def test_many_unknown_entries_are_named_in_one_short_line(tmp_path):
    path = tmp_path / "t.npz"
    export_trace(make_trace("sgd", {"lr": 0.1}, "tiny_mlp", steps=4), str(path))
    bad = _rewrite(path, tmp_path / "bad.npz", **{f"junk{i:03d}": np.zeros(1) for i in range(100)})
    with pytest.raises(ValueError) as info:
        load_trace(str(bad))
    text = str(info.value)
    assert "unknown entries 'junk000', 'junk001', 'junk002', 'junk003', 'junk004' and 95 more" in text
    assert "\n" not in text and len(text) < 600, text


@pytest.mark.parametrize("edit,message", [
    (lambda m: _with(m, profile="torch.optim.Adamm"), "meta profile must be a profile name"),
    (lambda m: _with(m, profile="torch.optim.Adam"), "meta profile 'torch.optim.Adam' is for optimizer 'adam', not 'sgd'"),
])
def test_trace_profile_must_exist_and_fit_the_optimizer(tmp_path, edit, message):
    path = tmp_path / "t.npz"
    export_trace(make_trace("sgd", {"lr": 0.1}, "tiny_mlp", steps=2), str(path))
    bad = _meta_edit(path, tmp_path / "bad.npz", edit)
    with pytest.raises(ValueError) as info:
        load_trace(str(bad))
    assert message in str(info.value) and "\n" not in str(info.value), str(info.value)


def test_trace_with_a_profile_round_trips(tmp_path):
    path = tmp_path / "t.npz"
    export_trace(make_trace("sgd", {}, "tiny_mlp", steps=2, profile="torch.optim.SGD"), str(path))
    assert load_trace(str(path)).meta["profile"] == "torch.optim.SGD"
    assert check_trace(str(path), rtol=0, atol=0)[0] is None


@pytest.mark.parametrize("seed", [-1, 2 ** 63, 10 ** 23, True, 1.0, "0"])
def test_make_trace_bounds_the_seed_as_load_trace_does(seed):
    """make_trace accepted seeds above 2⁶³ − 1, writing traces that load_trace refuses."""
    with pytest.raises(ValueError, match=r"seed must be an integer in \[0, 9223372036854775807\]"):
        make_trace("sgd", {"lr": 0.1}, "tiny_regression", steps=1, seed=seed)


def test_largest_seed_round_trips(tmp_path):
    path = tmp_path / "t.npz"
    export_trace(make_trace("sgd", {"lr": 0.1}, "tiny_regression", steps=1, seed=2 ** 63 - 1), str(path))
    assert load_trace(str(path)).meta["seed"] == 2 ** 63 - 1


# --- issue 12: a trace states every hyperparameter as used, and what was given -------------------------------
def test_meta_holds_every_hyperparameter_with_defaults_and_what_was_given(tmp_path):
    from refopt.optim import make_optimizer
    trace = make_trace("kfac", {"lr": 0.05}, steps=1)
    assert trace.meta["given"] == {"lr": 0.05}
    assert trace.meta["hyperparameters"] == make_optimizer("kfac", lr=0.05).hyperparameters()
    assert {"damping", "kl_clip", "momentum"} <= set(trace.meta["hyperparameters"])
    export_trace(trace, str(tmp_path / "t.npz"))
    loaded = load_trace(str(tmp_path / "t.npz"))
    assert loaded.meta["hyperparameters"] == trace.meta["hyperparameters"]   # JSON round trip
    assert check_trace(loaded)[0] is None


def test_a_profile_trace_states_the_profile_settings_as_given():
    trace = make_trace("sgd", {}, steps=1, profile="torch.optim.SGD")
    from refopt.verify.profiles import PROFILES
    assert trace.meta["given"] == PROFILES["torch.optim.SGD"].hyperparameters
    assert trace.meta["hyperparameters"]["lr"] == trace.meta["given"].get("lr", trace.meta["hyperparameters"]["lr"])


def test_an_old_trace_with_only_the_given_hyperparameters_still_replays():
    trace = make_trace("adam", {"lr": 0.01}, steps=3)
    trace.meta["hyperparameters"] = dict(trace.meta.pop("given"))   # the layout before issue 12
    assert check_trace(trace)[0] is None


def test_search_compares_against_resolved_switches():
    """Newton's line_search=None resolves to armijo for the eigenvalue modification: the full record states
    armijo, and the stated settings are still the match with no change."""
    trace = make_trace("newton", {"modification": "eigenvalue"}, steps=3)
    assert trace.meta["hyperparameters"]["line_search"] == "armijo"
    assert list(search_conventions(trace))[0] == {}
    theirs = make_trace("newton", {"modification": "eigenvalue_abs"}, steps=3)
    theirs.meta["hyperparameters"] = trace.meta["hyperparameters"]   # stated: eigenvalue
    assert {"modification": "eigenvalue_abs"} in list(search_conventions(theirs))


def test_load_refuses_a_given_that_is_not_an_object(tmp_path):
    trace = make_trace("sgd", {}, steps=1)
    trace.meta["given"] = [["lr", 0.1]]
    export_trace(trace, str(tmp_path / "t.npz"))
    with pytest.raises(ValueError, match="meta given must be an object"):
        load_trace(str(tmp_path / "t.npz"))


# --- CNN traces (issue 15): the layout, an independent rebuild from the meta, the search, bad descriptions -----


def test_cnn_trace_layout_round_trip_and_self_check(tmp_path):
    trace = make_trace("kfac", {}, "tiny_cnn", steps=3)
    path = tmp_path / "cnn.npz"
    export_trace(trace, str(path))
    with np.load(path) as f:
        meta = json.loads(str(f["meta"]))
        assert f["problem/X"].shape == (6, 2, 5, 5)                      # images, NCHW
        assert f["params/0.W"].shape == (4, 3, 2, 3, 3)                  # T+1 OIHW kernels
        assert f["params/1.W"].shape == (4, 4, 3, 2, 2) and f["params/1.b"].shape == (4, 4)
        assert f["params/2.W"].shape == (4, 4, 3)                        # the dense head, (fan_in, fan_out)
        assert f["draws/1/labels"].shape == (1, 6)                       # K-FAC's Monte-Carlo labels
    assert meta["problem"]["type"] == "cnn" and meta["problem"]["input_shape"] == [2, 5, 5]
    assert meta["param_names"] == ["0.W", "0.b", "1.W", "1.b", "2.W", "2.b"]
    loaded = load_trace(str(path))
    for a, b in zip(trace.params, loaded.params):
        assert all(np.array_equal(x, y) for x, y in zip(T.leaves(a), T.leaves(b)))
    divergence, _ = check_trace(str(path), rtol=0, atol=0)
    assert divergence is None


def _autograd_cnn_loss(problem, X, y):
    """The loss of the trace's CNN written from docs/verify.md's description alone with HIPS autograd's numpy:
    convolutions as a sum over kernel offsets of strided slices of the zero-padded input, pools as maxima over
    the window's slices, Flatten in C order, dense layers a @ W + b."""
    import autograd.numpy as anp

    def conv(a, W, b, stride, padding, dilation):
        (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
        a = anp.pad(a, ((0, 0), (0, 0), (ph, ph), (pw, pw)), mode="constant")
        O, C, kh, kw = W.shape
        Ho = (a.shape[2] - dh * (kh - 1) - 1) // sh + 1
        Wo = (a.shape[3] - dw * (kw - 1) - 1) // sw + 1
        out = 0.0
        for i in range(kh):
            for j in range(kw):
                window = a[:, :, i * dh:i * dh + sh * (Ho - 1) + 1:sh, j * dw:j * dw + sw * (Wo - 1) + 1:sw]
                out = out + anp.einsum("nchw,oc->nohw", window, W[:, :, i, j])
        return out + b[None, :, None, None]

    def maxpool(a, k, s):
        Ho, Wo = (a.shape[2] - k[0]) // s[0] + 1, (a.shape[3] - k[1]) // s[1] + 1
        slices = [a[:, :, i:i + s[0] * (Ho - 1) + 1:s[0], j:j + s[1] * (Wo - 1) + 1:s[1]]
                  for i in range(k[0]) for j in range(k[1])]
        return anp.max(anp.stack(slices), axis=0)

    def loss(params):
        a, l = X, 0
        for layer in problem["layers"]:
            if layer == "tanh":
                a = anp.tanh(a)
            elif layer["layer"] == "Conv2d":
                a = conv(a, params[l]["W"], params[l]["b"], layer["stride"], layer["padding"], layer["dilation"])
                l += 1
            elif layer["layer"] == "MaxPool2d":
                assert layer["padding"] == [0, 0] and layer["dilation"] == [1, 1]
                a = maxpool(a, layer["kernel_size"], layer["stride"])
            elif layer["layer"] == "Flatten":
                a = anp.reshape(a, (a.shape[0], -1))
            else:
                a = anp.dot(a, params[l]["W"]) + params[l]["b"]
                l += 1
        z = a - anp.max(a, axis=1, keepdims=True)
        logp = z - anp.log(anp.sum(anp.exp(z), axis=1, keepdims=True))
        return -anp.mean(logp[anp.arange(len(y)), y])
    return loss


def test_cnn_trace_loss_and_gradient_match_a_network_rebuilt_from_the_meta():
    import autograd
    trace = make_trace("sgd", {"lr": 0.1}, "tiny_cnn", steps=2)
    X, y = np.asarray(trace.X), np.asarray(trace.y)
    loss = _autograd_cnn_loss(trace.meta["problem"], X, y)
    for t in range(2):
        params = [{k: np.asarray(v) for k, v in layer.items()} for layer in trace.params[t]]
        assert abs(loss(params) - trace.loss[t]) <= 1e-14 * abs(trace.loss[t])
        expected = autograd.grad(loss)(params)
        for a, b in zip(T.leaves(trace.grads[t]), T.leaves(expected)):
            np.testing.assert_allclose(a, b, rtol=1e-11, atol=1e-15)


def _restated(trace, path, **stated):
    trace.meta["hyperparameters"].update(stated)
    trace.meta["given"] = {}
    export_trace(trace, str(path))
    return str(path)


def test_search_names_reduce_for_a_k_fac_that_reduces(tmp_path):
    import warnings
    path = _restated(make_trace("ekfac", {"kfac_approx": "reduce"}, "tiny_cnn", 4), tmp_path / "e.npz",
                       kfac_approx="expand")
    assert check_trace(path)[0] is not None
    assert list(search_conventions(path)) == [{"kfac_approx": "reduce"}]
    path = _restated(make_trace("kfac", {}, "tiny_cnn", 4), tmp_path / "k.npz", kfac_approx="reduce")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # K-FAC has more switch combinations than the search's cap
        matches = search_conventions(path, max_combinations=40)
    assert matches[0] == {"kfac_approx": "expand"}
    # on an MLP the two approximations are one: the switch is reported as having no effect
    path = _restated(make_trace("ekfac", {}, "tiny_mlp", 3), tmp_path / "m.npz", kfac_approx="reduce")
    assert check_trace(path)[0] is None
    assert "kfac_approx" in search_conventions(path).no_effect


@pytest.mark.parametrize("optimizer", ["kbfgs", "kfac_tridiag"])
def test_dense_only_optimizers_refuse_a_cnn_trace_by_name(optimizer):
    with pytest.raises(ValueError, match="supports dense layers only: layer 0 is a convolution"):
        make_trace(optimizer, {}, "tiny_cnn", 2)


def test_check_update_drives_a_plain_update_on_the_cnn():
    from refopt.verify import check_update

    def init(params):
        return None

    def update(grads, state):
        return [{k: -0.1 * g for k, g in layer.items()} for layer in grads], state
    report = check_update(update, init, ("sgd", {"lr": 0.1}), problem="tiny_cnn", steps=5)
    assert report.passed, report
    report = check_update(update, init, ("sgd", {"lr": 0.2}), problem="tiny_cnn", steps=5)
    assert not report.passed and "lr=0.1" in report.diagnosis.replace(" ", ""), report.diagnosis


def _conv_layer(**kw):
    return {"layer": "Conv2d", "in_channels": 2, "out_channels": 3, "kernel_size": [3, 3], "stride": [2, 2],
            "padding": [1, 1], "dilation": [1, 1], **kw}


def _cnn_meta(**problem):
    def edit(m):
        return _with(m, problem=_with(m["problem"], **problem))
    return edit


def _first_layer(entry):
    def edit(m):
        return _with(m, problem=_with(m["problem"], layers=[entry] + m["problem"]["layers"][1:]))
    return edit


@pytest.mark.parametrize("edit,message", [
    (_first_layer({"layer": "Lambda", "function": "os.system"}), "whose 'layer' is one of"),
    (_first_layer("__import__('os').system('true')"), "unknown activation"),
    (_first_layer(_conv_layer(kernel_size="3")), "kernel_size must be an integer in [0, 2³¹] or a pair"),
    (_first_layer(_conv_layer(kernel_size=[3, True])), "kernel_size must be an integer in [0, 2³¹] or a pair"),
    (_first_layer(_conv_layer(stride=1.5)), "stride must be an integer in [0, 2³¹] or a pair"),
    (_first_layer(_conv_layer(stride=[0, 1])), "stride must be ≥ 1"),
    (_first_layer(_conv_layer(padding="full")), "padding must be an integer in [0, 2³¹] or a pair"),
    (_first_layer(_conv_layer(in_channels=5)), "Conv2d expects 5 input channels, got 2"),
    (_first_layer(_conv_layer(kernel_size=[9, 9])), "larger than the padded input"),
    (_first_layer(_conv_layer(groups=2)), "unknown key 'groups'"),
    (_cnn_meta(layers=[_conv_layer(out_channels=10 ** 6), {"layer": "Flatten"},
                       {"layer": "Dense", "in_features": 9 * 10 ** 6, "out_features": 3}]), "more than 1000000 (the cap"),
    # 69 parameters, but a forward pass over 6 images padded by 3000 would hold 2·10⁹ entries (patches included)
    (lambda m: _with(_cnn_meta(layers=[_conv_layer(padding=[3000, 3000], stride=[1, 1]),
                       {"layer": "MaxPool2d", "kernel_size": [6003, 6003], "stride": [6003, 6003], "padding": [0, 0],
                        "dilation": [1, 1]}, {"layer": "Flatten"},
                       {"layer": "Dense", "in_features": 3, "out_features": 3}])(m),
                     param_names=["0.W", "0.b", "1.W", "1.b"]), "more than 16777216"),
    (_first_layer(_conv_layer(stride=[0, 1])), "layers[0]: Conv2d: stride must be ≥ 1"),
    (_first_layer({"layer": ["Conv2d"]}), "whose 'layer' is one of"),
    (_first_layer(_conv_layer(out_channels=10 ** 4000)), "an integer of about 4001 digits"),
    (_cnn_meta(input_shape=[2, 10 ** 4000, 5]), "input_shape must be a list of three integers"),
    (_cnn_meta(init_scale=10 ** 400), "init_scale must be a positive finite number"),
    (_cnn_meta(variance=10 ** 400), "problem variance must be a positive number"),
    # 69 parameters, but 2×5×5 images padded by 2000 with stride 5000 (1×1 outputs) make a padded input of
    # 2·4005² entries per example, which the cap counts
    (lambda m: _with(_cnn_meta(layers=[_conv_layer(stride=[5000, 5000], padding=[2000, 2000]), {"layer": "Flatten"},
                                       {"layer": "Dense", "in_features": 3, "out_features": 3}])(m),
                     param_names=["0.W", "0.b", "1.W", "1.b"]), "more than 16777216"),
    # a stride-1 max pooling of 64×64 windows on a 128×128 image unfolds 65²·64² entries (5·10⁷ with its mask and
    # selection): refused for one example, before problem/X is read
    (lambda m: _with(_cnn_meta(input_shape=[1, 128, 128],
                               layers=[{"layer": "MaxPool2d", "kernel_size": [64, 64], "stride": [1, 1],
                                        "padding": [0, 0], "dilation": [1, 1]}, {"layer": "Flatten"},
                                       {"layer": "Dense", "in_features": 65 * 65, "out_features": 3}])(m),
                     param_names=["0.W", "0.b"]), "more than 16777216"),
    (_cnn_meta(layers=["tanh"] * 300), "layers must be a list of 1 to 256"),
    (_cnn_meta(layers={"layer": "Flatten"}), "layers must be a list"),
    (_cnn_meta(input_shape=[2, 5]), "input_shape must be a list of three integers"),
    (_cnn_meta(input_shape=[2, 5, 5.0]), "input_shape must be a list of three integers"),
    (_cnn_meta(sizes=[50, 3]), "unknown keys 'sizes'"),
    (_cnn_meta(init="eval"), "init must be one of"),
    (_cnn_meta(init_scale=float("nan")), "init_scale must be a positive finite number"),
    (lambda m: _with(m, problem=_without(m["problem"], "layers")), "meta problem has no 'layers'"),
    (_cnn_meta(type="rnn"), "problem type 'rnn' is not supported"),
])
def test_malformed_cnn_trace_meta_is_refused_before_building(tmp_path, monkeypatch, edit, message):
    from refopt.nn.conv import CNN   # a CNN object only describes shapes; its init makes the arrays
    _assert_refused_before_building(tmp_path, monkeypatch, "tiny_cnn", 2, edit, message, forbid=[(CNN, "init")])


@pytest.mark.parametrize("change,message", [
    ({"problem/X": np.zeros((6, 50))}, "problem/X has shape (6, 50), expected (·, 2, 5, 5)"),
    # a kernel written HWIO (flax's layout) instead of OIHW
    ({"params/0.W": np.zeros((3, 3, 3, 2, 3))}, "params/0.W has shape (3, 3, 3, 2, 3), expected (3, 3, 2, 3, 3)"),
])
def test_malformed_cnn_trace_arrays_are_refused(tmp_path, change, message):
    import re
    path = tmp_path / "t.npz"
    export_trace(make_trace("sgd", {"lr": 0.1}, "tiny_cnn", steps=2), str(path))
    with pytest.raises(ValueError, match=re.escape(message)):
        load_trace(_rewrite(path, tmp_path / "bad.npz", **change))


def _doc_blocks(marker: str) -> list:
    """The Python blocks of docs/verify.md that contain ``marker``."""
    import re
    from pathlib import Path
    text = (Path(__file__).resolve().parent.parent / "docs" / "verify.md").read_text(encoding="utf-8")
    return [b for b in re.findall(r"```python\n(.*?)```", text, re.S) if marker in b]


@pytest.mark.parametrize("library,output", [("torch", "theirs_torch_cnn.npz"), ("jax", "theirs_jax_cnn.npz")])
def test_docs_cnn_rebuild_scripts_run_and_match(tmp_path, monkeypatch, library, output):
    """docs/verify.md's PyTorch and JAX loops that rebuild tiny_cnn from a trace's meta run as written, and
    refopt accepts their runs at rtol 1e-12 (skipped where the library is absent, as in CI)."""
    pytest.importorskip(library)
    if library == "jax":
        pytest.importorskip("optax")
    blocks = [b for b in _doc_blocks('np.load("adam_cnn.npz")') if output in b]
    assert len(blocks) == 1
    monkeypatch.chdir(tmp_path)
    export_trace(make_trace("adam", {}, "tiny_cnn", 5, profile="torch.optim.Adam"), "adam_cnn.npz")
    exec(compile(blocks[0], f"docs/verify.md ({library} CNN)", "exec"), {"__name__": "__docs__"})
    divergence, _ = check_trace(output, rtol=1e-12, atol=1e-14)
    assert divergence is None, divergence


def test_docs_cnn_rebuild_scripts_are_found():
    # the two scripts above exist (so that a rename in the docs cannot turn their test into a skip)
    assert len(_doc_blocks('np.load("adam_cnn.npz")')) == 2


@pytest.mark.parametrize("problem", ["tiny_cnn", "tiny_mlp"])
def test_external_torch_network_computes_the_trace_problem_s_outputs(problem):
    """``verify.external.torch_network`` (the scripts' torch modules of a trace problem) gives refopt's logits
    (skipped without torch)."""
    torch = pytest.importorskip("torch")
    from refopt.verify.external import torch_network
    from refopt.verify.trace import _model
    trace = make_trace("sgd", {"lr": 0.1}, problem, 1)
    spec, X = trace.meta["problem"], np.asarray(trace.X)
    ours = _model(spec).apply(trace.params[0], X.reshape(len(X), -1))
    theirs = torch_network(spec, trace.params[0])(torch.from_numpy(X)).detach().numpy()
    np.testing.assert_allclose(theirs, ours, rtol=1e-13, atol=1e-15)


def test_export_help_names_every_trace_problem(capsys):
    from refopt.cli import main
    from refopt.verify import TRACE_PROBLEMS
    with pytest.raises(SystemExit):
        main(["verify", "export", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert all(name in text for name in TRACE_PROBLEMS), text
