"""refopt.compare: step budgets that reproduce, per-problem settings, divergence as a failure, the table's
columns and the plot's y-range and styles (the command itself: tests/test_cli.py)."""
import inspect
import itertools
import math
import time

import numpy as np
import pytest

import refopt.compare as C
from refopt.compare import (DEFAULT_OPTIMIZERS, ComparisonEntry, compare, format_table, loss_range,
                            tuned_hyperparameters)
from refopt.optim import FAMILIES, make_optimizer, optimizer_class
from refopt.problems.registry import PROBLEMS, NetworkProblem, make_problem
from refopt.problems.tuned import FUNCTIONS, GENERIC, TUNED


def _without_time(entries):
    """The entries' histories with every record's clock reading removed (all that may differ between runs)."""
    return [(e.name, e.error, e.result.status if e.result else None,
             [{k: v for k, v in r.items() if k != "elapsed"} for r in e.history]) for e in entries]


def _table_without_seconds(entries):
    for e in entries:
        e.seconds = 0.0
        for r in e.history:
            r["elapsed"] = 0.0
    return format_table(entries)


def test_same_call_same_table_however_slow_the_clock(monkeypatch):
    """Budgets are steps: a second run under a clock that jumps 100 s per reading (a machine under heavy
    load) gives the same records and table apart from the seconds. With the old 3 s cap it stopped at 1 step."""
    names, kw = ["sgd", "lbfgs", "kfac"], dict(problem="synthetic_mlp", steps=12, target_loss=0.5)
    quiet = compare(names, **kw)
    ticks = itertools.count(start=1000.0, step=100.0)
    monkeypatch.setattr(time, "perf_counter", lambda: next(ticks))
    busy = compare(names, **kw)
    assert all(len(e.history) == 12 for e in busy) and busy[0].history[-1]["elapsed"] > 1000
    assert _without_time(busy) == _without_time(quiet)
    assert _table_without_seconds(busy) == _table_without_seconds(quiet)


def test_max_seconds_caps_each_run_when_given():
    """A cap no step can meet (10⁻⁹ s) stops every run after its first step, with status time_limit."""
    entries = compare(["sgd", "adam"], problem="synthetic_mlp", steps=50, max_seconds=1e-9)
    assert [(len(e.history), e.result.status) for e in entries] == [(1, "time_limit")] * 2
    assert "at most 1e-09 s each" in format_table(entries)
    with pytest.raises(ValueError, match="max_seconds must be a positive finite number"):
        compare(["sgd"], problem="synthetic_mlp", steps=1, max_seconds=0)


def test_divergence_above_the_bound_is_a_failure():
    """SGD at lr = 10³ on synthetic_mlp: the row shows the loss that crossed L₀ + 9·max(|L₀|, 1) (L₀ computed
    here from the problem; above 1, so the bound is 10·L₀), at the first step that crossed it, and says
    "diverged" in the failure column and in the stop column."""
    (e,) = compare(["sgd"], problem="synthetic_mlp", steps=50, overrides={"sgd": {"lr": 1e3}})
    prob = make_problem("synthetic_mlp")
    L0 = prob.oracle().value(prob.init_params(0))
    assert L0 > 1
    losses = [r["train_loss"] for r in e.history]
    assert e.diverged and e.result.status == "diverged" and len(losses) < 50
    assert losses[-1] > 10 * L0 and all(v <= 10 * L0 for v in losses[:-1])
    assert e.error == f"diverged at step {len(losses)}: loss {losses[-1]:.3g} > {10 * L0:.3g}"
    row = next(line for line in format_table([e]).splitlines() if line.startswith("sgd "))
    assert float(row.split()[1]) == pytest.approx(losses[-1], rel=1e-3) and row.endswith(e.error)
    assert row.split()[5] == "diverged"  # optimizer, train loss, val loss, val acc, steps, stop


def test_non_finite_loss_is_a_failure_without_the_factor():
    """With the factor switched off, SGD at its default lr = 0.1 on Rosenbrock overflows: "loss inf" or nan."""
    with np.errstate(over="ignore", invalid="ignore"):  # the overflow is the point
        (e,) = compare(["sgd"], problem="rosenbrock", steps=200, tuned=False, divergence_factor=None)
    last = e.history[-1]["train_loss"]
    assert e.diverged and not math.isfinite(last) and e.error == f"diverged at step {len(e.history)}: loss {last:.3g}"
    (kept,) = compare(["sgd"], problem="rosenbrock", steps=200, tuned=False)
    assert kept.diverged and len(kept.history) < len(e.history)  # the factor stops it before the overflow
    with pytest.raises(ValueError, match="divergence_factor must be None or a finite number > 1"):
        compare(["sgd"], problem="rosenbrock", steps=1, divergence_factor=1.0)


def test_settings_come_from_the_tables():
    """Built-in network problems: TUNED, by name or by object; any other network problem: GENERIC; a test
    function: FUNCTIONS; compare(tuned=False): the optimizers' own defaults; overrides on top."""
    assert set(TUNED) == set(PROBLEMS)
    assert tuned_hyperparameters("digits_mlp", "sgd") == TUNED["digits_mlp"]["sgd"] != {}
    prob = make_problem("synthetic_mlp")
    assert tuned_hyperparameters(prob, "adam") == TUNED["synthetic_mlp"]["adam"]
    mine = NetworkProblem("mine", prob.model, prob.loss, prob.X, prob.y)
    assert tuned_hyperparameters(mine, "adam") == GENERIC["adam"]
    assert tuned_hyperparameters("rosenbrock", "sgd") == FUNCTIONS["sgd"]
    assert tuned_hyperparameters("rosenbrock", "lbfgs") == {}
    got = tuned_hyperparameters("digits_mlp", "sgd")
    got["lr"] = -1.0  # a copy: the table is untouched
    assert TUNED["digits_mlp"]["sgd"]["lr"] > 0
    with pytest.raises(ValueError, match="unknown problem 'nowhere'"):
        tuned_hyperparameters("nowhere", "sgd")
    entries = compare(["sgd", "adam"], problem=mine, steps=1, overrides={"adam": {"beta1": 0.5}})
    assert entries[0].hyperparameters == GENERIC["sgd"] and entries.problem == "mine"
    assert entries[1].hyperparameters == {**GENERIC["adam"], "beta1": 0.5}
    plain = compare(["adam"], problem="synthetic_mlp", steps=1, tuned=False)
    assert plain[0].hyperparameters == {} and "hyperparameters: the optimizers' defaults;" in format_table(plain)


def test_every_tuned_setting_builds_and_names_a_default_optimizer():
    for table in [*TUNED.values(), GENERIC, FUNCTIONS]:
        assert set(table) <= set(DEFAULT_OPTIMIZERS)
        for name, hp in table.items():
            make_optimizer(name, **hp)
    for problem in TUNED:
        if not problem.startswith("digits_"):   # the digits problems need scikit-learn: the next test
            _assert_tuned_where_tunable(problem)


def _assert_tuned_where_tunable(problem):
    """Every default optimizer that ``problem`` serves and that has a step size and no line search (those keep
    their defaults) has a tuned setting; one the problem refuses has none (it could not have been tuned)."""
    provides = make_problem(problem).oracle().provides
    opts = {n: make_optimizer(n) for n in DEFAULT_OPTIMIZERS}
    tunable = {n for n, opt in opts.items() if opt.requires <= provides
               and "lr" in opt.hyperparameters() and "line_search" not in opt.hyperparameters()}
    assert tunable == set(TUNED[problem]), problem


def test_every_digits_problem_is_tuned_where_tunable():
    pytest.importorskip("sklearn")  # the digits data set
    digits = [p for p in TUNED if p.startswith("digits_")]
    assert "digits_cnn" in digits
    for problem in digits:
        _assert_tuned_where_tunable(problem)


def test_a_not_applicable_row_states_check_oracles_refusal_and_is_not_counted_untuned():
    """The row of an optimizer the problem refuses gives Optimizer.check_oracle's message; it ran at no
    setting, so the footer does not list it among those that ran at their defaults."""
    prob = make_problem("rosenbrock")   # a function: no layers, so both are refused
    entries = compare(["kbfgs", "kfac_tridiag"], problem=prob, steps=1)
    for e in entries:
        with pytest.raises(ValueError) as refusal:
            make_optimizer(e.name).check_oracle(prob.oracle())
        assert e.result is None and e.error == f"not applicable: {refusal.value}"
    assert entries.untuned == [] and "no setting for" not in format_table(entries)


def test_a_problem_object_runs_like_its_name():
    by_name = compare(["sgd"], problem="synthetic_mlp", steps=3)
    by_object = compare(["sgd"], problem=make_problem("synthetic_mlp"), steps=3)
    assert _without_time(by_name) == _without_time(by_object)
    with pytest.raises(ValueError, match="problem must be a problem name or a NetworkProblem"):
        compare(["sgd"], problem=3, steps=1)


def test_compare_refuses_an_empty_list_of_names():
    for names in ([], (), "sgd"):
        with pytest.raises(ValueError, match="names must be a non-empty list of optimizer names"):
            compare(names, problem="rosenbrock", steps=1)


def _forward(params, X):
    """The MLP 16-32-4 (tanh) of synthetic_mlp in plain NumPy: s = a W + b."""
    h = np.tanh(X @ params[0]["W"] + params[0]["b"])
    return h @ params[1]["W"] + params[1]["b"]


def test_table_columns_hold_the_held_out_metrics_and_counts():
    """val loss and val acc against a plain NumPy forward pass on the held-out examples; the counts; the
    footer naming the columns, the budget and the hyperparameters' origin; every line within 150 characters."""
    entries = compare(["sgd", "lbfgs"], problem="synthetic_mlp", steps=5, target_loss=10.0)
    prob = make_problem("synthetic_mlp")
    lines = format_table(entries).splitlines()
    head = lines[0].split()
    for col in ("train", "val", "acc", "steps", "stop", "target", "nfev", "ngev", "nhvp", "other", "nhev", "seconds"):
        assert col in head
    for e, line in zip(entries, lines[2:4]):
        z = _forward(e.result.params, prob.X_val)
        zmax = z.max(axis=1)
        ce = np.mean(zmax + np.log(np.exp(z - zmax[:, None]).sum(axis=1)) - z[np.arange(len(z)), prob.y_val])
        acc = np.mean(z.argmax(axis=1) == prob.y_val)
        cells = line.split()
        assert e.result.final_val_loss == pytest.approx(ce, rel=1e-12)  # float64, a well-scaled 128-sum
        assert float(cells[2]) == pytest.approx(ce, rel=1e-3) and cells[3] == f"{acc:.4f}"
        assert cells[5] == "-"  # stop: the run used its budget
        assert cells[6] == "0"  # a target of 10 is met by the initial loss already
        assert int(cells[8]) == e.history[-1]["nfev"] and int(cells[12]) == 0
    assert "hyperparameters: tuned for synthetic_mlp (refopt/problems/tuned.py); --show-hyperparameters lists them." \
        in lines
    assert any(line.startswith("budget: 5 steps per optimizer, no wall-clock limit") for line in lines)
    # lbfgs has no tuned setting: the footer says it ran at its defaults
    assert lines[-1] == ("no setting for synthetic_mlp in refopt/problems/tuned.py, so at the optimizers' defaults: "
                         "lbfgs.")
    # each footer line is about one thing and ends with a full stop (no line reads on into the next)
    footer = lines[4:]
    assert all(line.endswith(".") for line in footer), footer
    assert all(len(line) <= 150 for line in lines)


def test_table_has_no_held_out_columns_without_held_out_examples_and_counts_dense_matrices():
    entries = compare(["newton", "adam"], problem="rosenbrock", steps=3)
    head = format_table(entries).splitlines()[0]
    assert "val loss" not in head and "val acc" not in head
    row = format_table(entries).splitlines()[2].split()
    assert row[0] == "newton" and int(row[-2]) == 3  # nhev: one dense Hessian per Newton step
    pytest.importorskip("sklearn")  # the digits data set
    auto = compare(["sgd"], problem="digits_autoencoder", steps=1)  # Gaussian loss: a val loss, no accuracy
    head = format_table(auto).splitlines()[0]
    assert "val loss" in head and "val acc" not in head


def test_csv_holds_the_held_out_columns_from_step_0(tmp_path):
    """A step-0 row of the initial losses and accuracies (counts 0), then one row per step; nhev 0 (not empty)
    for a method that forms no dense matrix; the training accuracy column."""
    import csv
    entries = compare(["sgd"], problem="synthetic_mlp", steps=3)
    C.write_csv(entries, str(tmp_path / "c.csv"))
    with open(tmp_path / "c.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    r = entries[0].result
    assert [int(row["step"]) for row in rows] == [0, 1, 2, 3]
    assert [float(row["val_loss"]) for row in rows] == [r.initial_val_loss] + [h["val_loss"] for h in r.history]
    assert [float(row["train_accuracy"]) for row in rows] == [r.initial_train_accuracy] + \
        [h["train_accuracy"] for h in r.history]
    assert float(rows[0]["train_loss"]) == r.initial_loss and rows[0]["nfev"] == "0"
    assert all(row["nhev"] == "0" for row in rows)


# --- the plot ----------------------------------------------------------------------------------------------------
class _Result:
    """A stand-in for RunResult: the history, status and initial loss the plot reads."""

    def __init__(self, losses, status="completed", initial=None):
        self.history = [{"step": i + 1, "train_loss": v, "val_loss": None} for i, v in enumerate(losses)]
        self.status, self.initial_loss = status, initial


def _entry(name, losses, status="completed", initial=None):
    return ComparisonEntry(name, {}, _Result(losses, status, initial))


def test_loss_range_comes_from_the_runs_that_did_not_diverge():
    entries = [_entry("sgd", [4.0, 1.0, 0.5], initial=8.0), _entry("adam", [3.0, 1e6, math.inf], "diverged")]
    assert loss_range(entries) == (0.25, 16.0, "log")  # [0.5, 8] with a factor 2 either side
    negative = [_entry("sgd", [1.0, -3.0]), _entry("adam", [-1e9], "diverged")]
    assert loss_range(negative) == pytest.approx((-3.2, 1.2, "linear"))  # 5 % of the span 4
    assert loss_range([_entry("adam", [2.0, 1e3, math.nan], "diverged")]) == (1.0, 2000.0, "log")  # all diverged
    assert loss_range([ComparisonEntry("sgd", {}, None, "error")]) is None


def test_plot_is_a_png_and_diverged_runs_do_not_set_the_y_range(tmp_path):
    pytest.importorskip("matplotlib")
    entries = compare(["sgd", "adam"], problem="synthetic_mlp", steps=8, overrides={"sgd": {"lr": 1e3}})
    assert entries[0].diverged and not entries[1].diverged
    fig = C.comparison_figure(entries)
    assert len(fig.axes) == 4  # two families (gradient, adaptive), training and held-out rows
    gradient, adaptive = fig.axes[:2]  # the training-loss row
    adam = [entries[1].result.initial_loss] + [r["train_loss"] for r in entries[1].history]
    for ax in (gradient, adaptive):
        assert ax.get_ylim() == pytest.approx((min(adam) / 2, max(adam) * 2)) and ax.get_yscale() == "log"
    assert gradient.get_legend_handles_labels()[1] == ["sgd (diverged)"]
    assert adaptive.get_legend_handles_labels()[1] == ["adam"]
    sgd_losses = [r["train_loss"] for r in entries[0].history]
    assert max(sgd_losses) > 10 * max(adam)  # what would have set the range
    top = max(max(line.get_ydata()) for line in gradient.get_lines())
    assert top < gradient.get_ylim()[1]  # the diverged curve is clipped under the top, not off the chart
    cross = [line for line in gradient.get_lines() if line.get_marker() == "X"]
    assert len(cross) == 1 and list(cross[0].get_xdata()) == [len(sgd_losses)]  # at the divergence step
    path = tmp_path / "cmp.png"
    assert C.plot_comparison(entries, str(path)) == str(path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_fifteen_optimizers_have_fifteen_styles_and_one_panel_per_family():
    pytest.importorskip("matplotlib")
    entries = [_entry(n, [1.0 / (k + 1), 0.5 / (k + 1)], initial=2.0) for k, n in enumerate(DEFAULT_OPTIMIZERS)]
    fig = C.comparison_figure(entries)
    lines = [line for ax in fig.axes for line in ax.get_lines() if not line.get_label().startswith("_")]
    styles = {(line.get_color(), line.get_linestyle(), line.get_marker()) for line in lines}
    assert len(lines) == 15 and len(styles) == 15
    families = {f for f, members in FAMILIES.items() if set(members) & set(DEFAULT_OPTIMIZERS)}
    assert len(fig.axes) == len(families)  # no held-out records: one row
    for ax in fig.axes:  # each panel holds one family's optimizers only
        names = {line.get_label() for line in ax.get_lines()}
        assert any(names <= set(members) for members in FAMILIES.values())


def test_describe_lists_every_hyperparameter_once_by_origin():
    """given, then tuned, then the defaults: together exactly the constructor's arguments, defaults as in
    the signature."""
    text = C.describe_hyperparameters("digits_mlp", "sgd", {"nesterov": True})
    groups = dict(part.split(": ", 1) for part in text.split(" | "))
    assert list(groups) == ["given", "tuned for digits_mlp", "defaults"]
    assert groups["given"] == "nesterov=True"
    assert groups["tuned for digits_mlp"] == ", ".join(f"{k}={v!r}" for k, v in TUNED["digits_mlp"]["sgd"].items())
    sig = inspect.signature(optimizer_class("sgd").__init__).parameters
    rest = [k for k in sig if k not in ("self", "nesterov") and k not in TUNED["digits_mlp"]["sgd"]]
    assert groups["defaults"] == ", ".join(f"{k}={sig[k].default!r}" for k in rest)


# --- review of issue 12: why runs stopped, step-0 targets, overrides, the defaults in the footer, the plot's step 0

def test_the_stop_column_says_why_a_run_ended_early():
    """L-BFGS on Rosenbrock converges within the budget: "converged" (gtol 0: a zero gradient) or "precision"
    (its loss stops changing at the dtype's resolution), never a failure; SGD there runs out its budget: "-"."""
    entries = compare(["lbfgs", "sgd"], problem="rosenbrock", steps=200)
    lbfgs, sgd = entries
    assert lbfgs.result.status in ("precision", "converged") and len(lbfgs.history) < 200 and lbfgs.error is None
    assert sgd.result.status == "completed" and sgd.stop == "-"
    rows = {line.split()[0]: line.split() for line in format_table(entries).splitlines()[2:4]}
    assert rows["lbfgs"][3] == lbfgs.result.status and rows["sgd"][3] == "-"
    assert format_table(entries).splitlines()[2].rstrip().endswith(f"{lbfgs.seconds:7.2f}")  # empty failure column


def test_target_step_is_0_when_the_initial_loss_already_meets_it():
    (e,) = compare(["sgd"], problem="synthetic_mlp", steps=2, target_loss=1e3, overrides={"sgd": {"lr": 0.01}})
    first = e.history[0]["train_loss"]
    assert first < e.result.initial_loss  # a small step: the loss falls
    assert e.to_target(1e3) == (0, 0.0) and e.to_target(1e-9) is None
    assert e.to_target(first) == (1, e.history[0]["elapsed"])


def test_overrides_for_optimizers_not_compared_or_unknown_are_refused():
    with pytest.raises(ValueError, match="overrides: unknown optimizer\\(s\\) 'nope'; choose from"):
        compare(["sgd"], problem="synthetic_mlp", steps=1, overrides={"nope": {"lr": 1}})
    with pytest.raises(ValueError, match="overrides: settings for adam, which is not among the optimizers compared "
                                         "\\(sgd\\)"):
        compare(["sgd"], problem="synthetic_mlp", steps=1, overrides={"adam": {"lr": 1}})
    C.check_overrides({"sgd": {}}, ["sgd", "adam"])  # a subset of the names: fine


def test_the_footer_names_the_rows_at_their_defaults():
    """adamw has no entry in tuned.py: it runs at lr 1e-3 beside adam's tuned 0.1, and the footer says so."""
    entries = compare(["adamw", "adam"], problem="synthetic_mlp", steps=1)
    assert entries.untuned == ["adamw"] and entries[0].hyperparameters == {}
    assert format_table(entries).splitlines()[-1] == ("no setting for synthetic_mlp in refopt/problems/tuned.py, so at "
                                                      "the optimizers' defaults: adamw.")
    plain = compare(["adam"], problem="synthetic_mlp", steps=1, tuned=False)
    assert plain.untuned == [] and "no setting" not in format_table(plain)


def test_both_loss_panels_start_at_step_0():
    pytest.importorskip("matplotlib")
    entries = compare(["sgd"], problem="synthetic_mlp", steps=3)
    fig = C.comparison_figure(entries)
    train, val = fig.axes
    r = entries[0].result
    for ax, first in ((train, r.initial_loss), (val, r.initial_val_loss)):
        line = next(line for line in ax.get_lines() if line.get_label() == "sgd")
        assert list(line.get_xdata()) == [0, 1, 2, 3] and line.get_ydata()[0] == first


def test_plot_comparison_refuses_a_format_matplotlib_does_not_write(tmp_path):
    pytest.importorskip("matplotlib")
    entries = compare(["sgd"], problem="synthetic_mlp", steps=1)
    with pytest.raises(ValueError, match="format 'txt' is not one refopt writes; use one of png, pdf, svg"):
        C.plot_comparison(entries, str(tmp_path / "x.txt"))
    assert list(tmp_path.iterdir()) == []
    assert C.plot_comparison(entries, str(tmp_path / "x.svg")) and (tmp_path / "x.svg").read_text().lstrip().startswith("<?xml")


def test_the_comparison_figure_takes_pyplot_from_plotting(monkeypatch):
    """One import of matplotlib for every figure (plotting.pyplot, Agg): without it the figure is refused."""
    monkeypatch.setattr(C, "pyplot", lambda what="plot": None)
    with pytest.raises(ImportError, match="comparison_figure needs matplotlib"):
        C.comparison_figure([])
