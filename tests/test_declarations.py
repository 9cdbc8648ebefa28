"""Every optimizer's declarations (issue 10): convention switches, oracle requirements and draws.

Each class declares its switches once (``conventions``), what it asks of the oracle (``requires``) and
what it samples (``draws``); everything else is derived from these, and these tests hold the
declarations to the constructors, the oracles, the runner, the trace replay and CONTRIBUTING.md.
"""
import copy
import importlib
import inspect
import pathlib
import pkgutil
import re

import numpy as np
import pytest

import refopt.optim
from refopt.cli import main
from refopt.compare import compare
from refopt.minimize import minimize
from refopt.optim import FAMILIES, FAMILY_DOCS, OPTIMIZERS, conventions_table, optimizer_class
from refopt.optim.base import Optimizer
from refopt.optim.newton_cg import NewtonCG, TrustRegionNewtonCG
from refopt.oracle import CAPABILITIES, FunctionOracle, Oracle
from refopt.problems.functions import rosenbrock
from refopt.runner import RunConfig, run
from refopt.verify import make_trace

from _helpers import mlp_problem

NAMES = list(OPTIMIZERS)
ROOT = pathlib.Path(__file__).resolve().parent.parent
CONTRIBUTING = ROOT / "CONTRIBUTING.md"
DOCS = [ROOT / "README.md", CONTRIBUTING, *sorted((ROOT / "docs").glob("*.md"))]


def _optimizer_classes() -> list:
    """Every Optimizer subclass defined in a module of refopt/optim (registered or not)."""
    found = []
    for info in pkgutil.iter_modules(refopt.optim.__path__):
        module = importlib.import_module(f"refopt.optim.{info.name}")
        found += [c for c in vars(module).values() if inspect.isclass(c) and issubclass(c, Optimizer)
                  and c is not Optimizer and c.__module__ == module.__name__]
    return found


# --- switches -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_switches_are_constructor_arguments_with_the_declared_defaults(name):
    cls = optimizer_class(name)
    assert cls.conventions, f"{name} declares no convention switch"
    sig = inspect.signature(cls.__init__).parameters
    for sw in cls.conventions:
        assert sw.name in sig, f"{name}: switch {sw.name} is not a constructor argument"
        assert sig[sw.name].default == sw.default and type(sig[sw.name].default) is type(sw.default), (name, sw.name)
        assert sw.default in sw.choices or sw.check is not None, (name, sw.name)   # else check validates it
        assert sw.validate(sw.default) == sw.default
        assert sw.meaning and sw.source, f"{name}: switch {sw.name} needs a meaning and a source"
    assert cls.switches == {sw.name: sw.choices for sw in cls.conventions}   # derived, for the search
    opt = cls()
    for sw in cls.conventions:   # the default configuration keeps the default (or what None stands for)
        assert sw.default is None or getattr(opt, sw.name) == sw.default


@pytest.mark.parametrize("name", NAMES)
def test_every_choice_constructs_and_is_kept(name):
    cls = optimizer_class(name)
    for sw in cls.conventions:
        for choice in sw.choices:
            try:
                opt = cls(**{sw.name: choice})
            except ValueError as exc:   # a combination the constructor refuses names the switch it conflicts with
                assert sw.name in str(exc) or "needs" in str(exc), (name, sw.name, choice, exc)
                continue
            assert choice is None or getattr(opt, sw.name) == choice


def test_no_class_defines_what_is_derived():
    classes = _optimizer_classes()
    assert len(classes) >= len(OPTIMIZERS)
    for cls in classes:
        for derived in ("switches", "needs_network"):
            assert derived not in vars(cls), f"{cls.__name__} defines {derived}; declare conventions / requires"


@pytest.mark.parametrize("name", NAMES)
def test_each_switch_refuses_a_bad_value_by_name(name):
    cls = optimizer_class(name)
    for sw in cls.conventions:
        for bad in ("not-a-choice", object(), [sw.default]):
            with pytest.raises(ValueError, match=re.escape(sw.name)):
                sw.validate(bad)
            with pytest.raises(ValueError, match=re.escape(sw.name)):
                cls(**{sw.name: bad})


@pytest.mark.parametrize("name", NAMES)
def test_a_variant_declares_every_base_switch_it_takes_as_an_argument(name):
    """A variant omits a base's switch only when it fixes it (EKFAC's damping_scheme): a constructor
    argument that a base class declares as a Switch is one of the variant's ``switches`` too, or the
    convention search and the generated tables skip it (K-FAC's adapt_damping on EKFAC and KFACTridiag)."""
    cls = optimizer_class(name)
    for argument in inspect.signature(cls.__init__).parameters:
        try:
            cls.switch(argument)
        except KeyError:
            continue
        assert argument in cls.switches, f"{name} takes {argument}, a base's switch, but does not declare it"


def test_a_variant_validates_a_fixed_switch_by_its_base_declaration():
    ekfac = optimizer_class("ekfac")
    assert "damping_scheme" not in ekfac.switches and ekfac.switch("damping_scheme").name == "damping_scheme"
    assert ekfac().damping_scheme == "eigen"
    assert optimizer_class("kfac_tridiag").switch("damping_scheme").choices == ("pi", "tikhonov")
    with pytest.raises(KeyError, match="no switch"):
        ekfac.switch("nonexistent")


# --- requirements -----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_requires_and_draws_are_declared(name):
    cls = optimizer_class(name)
    opt = cls()
    for holder in (cls, opt):
        assert holder.requires <= set(CAPABILITIES) and {"value", "gradient"} <= holder.requires
        assert holder.draws in (None, "labels", "probes")
        assert holder.needs_network == (not holder.requires <= FunctionOracle.provides)
    assert "requires" not in opt.hyperparameters() and "draws" not in opt.hyperparameters()
    assert Oracle.provides == frozenset(CAPABILITIES)


def test_requirements_that_depend_on_an_argument_are_the_instance_s():
    for cls in (NewtonCG, TrustRegionNewtonCG):
        assert not cls.needs_network and not cls().needs_network
        ggn = cls(curvature="ggn")
        assert "ggn" in ggn.requires and "hvp" not in ggn.requires and ggn.needs_network
    kfac = optimizer_class("kfac")
    assert kfac.draws == "labels" and kfac(fisher="true").draws is None
    assert "labels" not in kfac(fisher="empirical").requires and "fisher" in kfac(adapt_damping=True).requires
    ng = optimizer_class("natural_gradient")
    assert ng.draws is None and ng(fisher="mc").draws == "labels" and "labels" in ng(fisher="mc").requires
    assert "dense_curvature" not in ng(solver="cg").requires


def _network():
    _, params, oracle = mlp_problem((3, 4, 2), 6, seed=3)
    return params, oracle


@pytest.mark.parametrize("name", NAMES)
def test_each_optimizer_runs_on_the_oracles_that_provide_what_it_requires(name):
    cls = optimizer_class(name)
    params, oracle = _network()
    opt = cls()
    opt.check_oracle(oracle)
    state = opt.init(params)
    for _ in range(2):
        params, state, info = opt.update(params, state, oracle)
    assert np.isfinite(info["loss"])
    problem = rosenbrock()
    function_oracle = problem.oracle()
    if cls.requires <= FunctionOracle.provides:
        opt.check_oracle(function_oracle)
        x, s = np.array([-1.2, 1.0]), opt.init(np.array([-1.2, 1.0]))
        for _ in range(2):
            x, s, info = opt.update(x, s, function_oracle)
        assert np.isfinite(info["loss"])
    else:
        with pytest.raises(ValueError, match="FunctionOracle does not provide"):
            opt.check_oracle(function_oracle)


@pytest.mark.parametrize("name", [n for n in NAMES if optimizer_class(n).needs_network])
def test_a_network_method_on_a_function_is_refused_at_setup_naming_what_is_missing(name):
    missing = sorted(optimizer_class(name).requires - FunctionOracle.provides)
    with pytest.raises(ValueError) as exc:
        run(RunConfig(name, {}, "rosenbrock", steps=1))
    message = str(exc.value)
    assert "\n" not in message and "needs a network problem" in message
    assert all(m in message for m in missing), (missing, message)


def test_an_argument_that_needs_the_network_is_refused_at_setup_too():
    with pytest.raises(ValueError, match="ggn"):
        run(RunConfig("newton_cg", {"curvature": "ggn"}, "rosenbrock", steps=1))
    with pytest.raises(ValueError, match="ggn"):
        minimize(rosenbrock(), method=NewtonCG(curvature="ggn"))
    entries = compare(["kfac", "bfgs"], problem="rosenbrock", steps=2, max_seconds=5.0)
    assert entries[0].result is None and entries[0].error.startswith("not applicable: kfac needs ")
    assert "layer_statistics" in entries[0].error and entries[1].result is not None


# --- draws -----------------------------------------------------------------------------------------
def _wrong_draws(opt, params, oracle):
    """Draws of a kind ``opt`` does not take (any draws at all for a method that draws nothing)."""
    labels = np.zeros((1, oracle.batch_size), dtype=np.int64)
    probes = [copy.deepcopy(params)]
    return probes if opt.draws in (None, "labels") else labels


@pytest.mark.parametrize("name", NAMES)
def test_update_refuses_draws_of_the_wrong_kind_before_computing_anything(name):
    params, oracle = _network()
    opt = optimizer_class(name)()
    state = opt.init(params)
    before = oracle.counts.as_dict()
    with pytest.raises(ValueError, match="draws"):
        opt.update(params, state, oracle, draws=_wrong_draws(opt, params, oracle))
    assert oracle.counts.as_dict() == before
    if opt.draws is None:   # a method that draws nothing refuses even well-formed labels
        with pytest.raises(ValueError, match="makes no random draws"):
            opt.update(params, state, oracle, draws=np.zeros((1, oracle.batch_size), dtype=np.int64))


@pytest.mark.parametrize("name", NAMES)
def test_a_method_that_draws_reports_its_draws_in_the_form_it_accepts(name):
    params, oracle = _network()
    opt = optimizer_class(name)()
    state = opt.init(params)
    _, _, info = opt.update(params, state, oracle)
    if opt.draws is None:
        assert info.get("draws") is None
        return
    drawn = info["draws"]
    assert drawn is not None
    opt.check_draws(drawn)
    first = _outcome(opt.update(params, state, oracle))
    again = _outcome(opt.update(params, state, oracle, draws=drawn))   # replaying them: the same step
    assert len(again) == len(first) and all(np.array_equal(a, b) for a, b in zip(again, first))
    # the draws are used, not ignored: one changed draw changes the new parameters or the new state (the
    # seed in the state would give `again` the same draws even if update disregarded draws=)
    other = _outcome(opt.update(params, state, oracle, draws=_perturbed(drawn)))
    assert not all(np.array_equal(a, b) for a, b in zip(other, first))


def _leaves(tree):
    from refopt import tree as T   # noqa: PLC0415
    return T.leaves(tree)


def _outcome(result):
    """The arrays of update's (new params, new state): every leaf of both, as arrays."""
    new_params, new_state = result[0], result[1]
    return ([np.asarray(x) for x in _leaves(new_params)]
            + [np.asarray(x) for field in new_state for x in _leaves(field)])


def _perturbed(draws):
    """A copy of ``draws`` in the same form with one draw changed: the labels rotated by one sample along
    the batch, or the sign of the first entry of the first probe flipped."""
    if isinstance(draws, np.ndarray) and draws.dtype.kind in "iu":
        return np.roll(draws, 1, axis=-1)
    draws = copy.deepcopy(draws)

    def first_array(x):
        if isinstance(x, np.ndarray):
            return x
        for item in (x.values() if isinstance(x, dict) else x):
            found = first_array(item)
            if found is not None:
                return found
        return None
    first = first_array(draws)
    first.flat[0] = -first.flat[0]
    return draws


def test_a_trace_with_draws_of_the_wrong_kind_is_refused_in_one_line():
    kfac = make_trace("kfac", {}, steps=2)
    params = kfac.params[0]
    with pytest.raises(ValueError) as exc:   # probes in a K-FAC trace
        make_trace("kfac", {}, steps=2, replay_draws=[[params], None])
    assert str(exc.value) == "the trace's draws of step 1 are probes, but kfac draws labels"
    labels = kfac.draws[0]
    assert labels is not None
    with pytest.raises(ValueError) as exc:   # labels in an SGD trace
        make_trace("sgd", {}, steps=2, replay_draws=[None, labels])
    assert str(exc.value) == "the trace's draws of step 2 are labels, but sgd makes no random draws"
    again = make_trace("kfac", {}, steps=2, replay_draws=kfac.draws)   # the right kind replays exactly
    assert all(np.array_equal(a, b) for a, b in zip(_leaves(again.params[-1]), _leaves(kfac.params[-1])))


# --- the docs ------------------------------------------------------------------------------------------
def test_contributing_shows_the_generated_table_of_switches():
    text = CONTRIBUTING.read_text(encoding="utf-8")
    found = re.search(r"<!-- conventions_table: begin -->\n(.*?)\n<!-- conventions_table: end -->", text, re.S)
    assert found, "CONTRIBUTING.md has no conventions_table block"
    assert found.group(1) == conventions_table(), "regenerate it with `refopt list --switches`"
    section = text[text.index("### Switches by family"):text.index("## How to add things")]
    assert found.group(0) in section
    for name in NAMES:   # every switch of every optimizer, with its default, in its row
        for sw in optimizer_class(name).conventions:
            assert re.search(rf"^\| [^|]*\b{name}\b[^|]* \| {sw.name} \| {re.escape(str(sw.default))} \|",
                             found.group(1), re.M), (name, sw.name)


def test_refopt_list_prints_the_table(capsys):
    assert main(["list", "--switches"]) == 0
    assert capsys.readouterr().out == conventions_table() + "\n"
    for family in FAMILIES:
        assert main(["list", "--switches", "--family", family]) == 0
        assert capsys.readouterr().out == conventions_table(family) + "\n"
    assert main(["list", "--family", "newton"]) == 2   # --family alone is an input error
    assert "--family needs --switches" in capsys.readouterr().err


def test_families_partition_the_registry_in_its_order():
    assert [n for names in FAMILIES.values() for n in names] == list(OPTIMIZERS)
    assert set(FAMILY_DOCS) <= set(FAMILIES) and all((ROOT / d).is_file() for d in FAMILY_DOCS.values())
    header = conventions_table().split("\n")[:2]
    rows = [r for family in FAMILIES for r in conventions_table(family).split("\n")[2:]]
    assert header + rows == conventions_table().split("\n")   # the family tables are the full one, cut up
    with pytest.raises(ValueError, match="unknown family"):
        conventions_table("nonexistent")


# A generated block: <!-- conventions_table: begin --> (every optimizer) or
# <!-- conventions_table family=NAME: begin --> (one family), closed by the same marker with "end".
_BLOCK = re.compile(r"<!-- conventions_table(?: family=(\w*))?: begin -->\n(.*?)\n"
                    r"<!-- conventions_table(?: family=(\w*))?: end -->", re.S)
_SWITCH_NAMES = frozenset(sw.name for n in OPTIMIZERS for sw in optimizer_class(n).conventions)
_OPTIMIZER_NAMES = frozenset(OPTIMIZERS) | {optimizer_class(n).__name__ for n in OPTIMIZERS}


def _stale_blocks(text: str) -> list:
    """The generated blocks of ``text`` that differ from the current declarations (or are malformed)."""
    stale = []
    for found in _BLOCK.finditer(text):
        begin, body, end = found.groups()
        if begin != end or (begin is not None and begin not in FAMILIES):
            stale.append(found.group(0)[:80])
        elif body != conventions_table(begin):
            stale.append(found.group(0)[:80])
    if text.count("<!-- conventions_table") != 2 * len(_BLOCK.findall(text)):   # an unmatched marker
        stale.append("unmatched conventions_table marker")
    return stale


def _listed_switches(cell: str) -> set:
    """Switch names a table cell lists: comma-separated items that are a bare `name` in backticks (or
    `name`: ...); a setting `name="value"` or a name inside a phrase (`absolute` at 0) is not a listing."""
    items = (re.fullmatch(r"`(\w+)`", item.split(":")[0].strip()) for item in re.split(r"[,;]", cell))
    return {m.group(1) for m in items if m} & _SWITCH_NAMES


def _hand_written_switch_rows(text: str) -> list:
    """Markdown table rows outside the generated blocks that list switches, as a hand-written switch table
    (with its defaults) does: a header cell "switch ...", a first cell listing a switch, or a first cell
    naming an optimizer and a second listing a switch."""
    rows = []
    for line in _BLOCK.sub("", text).splitlines():
        if not line.startswith("|") or set(line) <= set("|-: "):
            continue
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip().strip("|"))]
        header = any(re.match(r"switch(es)?\b", c, re.I) for c in cells)
        names_optimizer = bool({w.strip("`\"' ") for w in re.split(r"[,/]", cells[0])} & _OPTIMIZER_NAMES)
        if header or _listed_switches(cells[0]) or (names_optimizer and len(cells) > 1 and _listed_switches(cells[1])):
            rows.append(line[:100])
    return rows


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.name)
def test_every_generated_block_is_current(path):
    assert _stale_blocks(path.read_text(encoding="utf-8")) == [], (
        f"{path.name}: regenerate with `refopt list --switches [--family NAME]`")


def test_each_family_doc_shows_its_family_table():
    for family, doc in FAMILY_DOCS.items():
        text = (ROOT / doc).read_text(encoding="utf-8")
        assert [m.group(1) for m in _BLOCK.finditer(text)] == [family], doc


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.name)
def test_no_doc_lists_switches_in_a_hand_written_table(path):
    assert _hand_written_switch_rows(path.read_text(encoding="utf-8")) == [], (
        f"{path.name}: a switch's default belongs in its Switch declaration and the generated tables")


def test_the_doc_checks_can_fail():
    table = conventions_table("adaptive")
    good = (f"<!-- conventions_table family=adaptive: begin -->\n{table}\n"
            "<!-- conventions_table family=adaptive: end -->")
    assert _stale_blocks(good) == []
    assert _stale_blocks(good.replace("| outside |", "| inside |", 1))               # an edited default
    assert _stale_blocks(good.replace("family=adaptive: end", "family=newton: end"))  # mismatched markers
    assert _stale_blocks(good.replace("family=adaptive", "family=nope"))
    assert _stale_blocks(good + "\n<!-- conventions_table: begin -->\n")             # unmatched marker
    assert _hand_written_switch_rows(good) == []
    assert _hand_written_switch_rows("| `eps_mode` | outside, inside | where ε enters |")
    assert _hand_written_switch_rows("| Adam, AdamW | `bias_correction` | True, False | m̂ = m/(1 − β₁ᵗ) |")
    assert _hand_written_switch_rows("| `lbfgs`, `bfgs` | `first_step`: \"unit_length\", ... | torch |")
    assert _hand_written_switch_rows("| Adagrad, full | `eps_mode` | outside, inside | δ + √G |")
    assert _hand_written_switch_rows("| optimizer | switch (default first) | reproduces |")
    assert not _hand_written_switch_rows("| `absolute` at 0 | 0 (sign(0) = 0) | 0 |")   # a primitive
    assert not _hand_written_switch_rows("| bias correction | `bias_correction` | 1 − βᵗ | Adam |")   # a function
    assert not _hand_written_switch_rows("| torch's first step | `lbfgs` with `first_step=\"gradient_l1\"` |")
    assert not _hand_written_switch_rows("| `MAX_DIMENSION` | `spatial_block` (AdaHessian), `bs` |")


# --- hyperparameters(): the constructor's arguments, round-tripping -----------------------------------
# Non-default arguments whose value another argument derives (None → resolved) or that a variant fixes.
_ROUND_TRIP_CASES = [(name, {}) for name in NAMES] + [
    ("newton", {"modification": "eigenvalue"}), ("gauss_newton", {"line_search": "armijo"}),
    ("sr1", {"form": "inverse"}), ("bfgs", {"form": None, "damping": "powell"}), ("ekfac", {"scale_decay": None}),
    ("ekfac", {"scale_decay": 0.5}), ("kfac_tridiag", {"damping_scheme": "tikhonov"}),
    ("sophia_g", {"refresh": None}), ("lbfgs", {"line_search": "minfunc", "damping": "powell"}),
    ("kfac", {"adapt_damping": True, "fisher": "true"})]


@pytest.mark.parametrize("name, kwargs", _ROUND_TRIP_CASES, ids=lambda v: v if isinstance(v, str) else repr(v))
def test_hyperparameters_are_the_constructor_s_arguments_and_round_trip(name, kwargs):
    """make_optimizer(name, **opt.hyperparameters()) is the same optimizer: its arguments by the signature
    (EKFAC's fixed ``inverse`` or ``damping_scheme`` are not among them), the same hyperparameters() again,
    and two identical steps."""
    from refopt.optim import make_optimizer
    from _helpers import assert_same_values
    opt = make_optimizer(name, **kwargs)
    hp = opt.hyperparameters()
    assert list(hp) == [p for p in inspect.signature(type(opt).__init__).parameters if p != "self"]
    twin = make_optimizer(name, **hp)
    assert_same_values(twin.hyperparameters(), hp)
    runs = []
    for o in (opt, twin):
        params, oracle = _network()
        state = o.init(params)
        for _ in range(2):
            params, state, info = o.update(params, state, oracle)
        runs.append((params, state, info["loss"]))
    assert_same_values(runs[0], runs[1])


@pytest.mark.parametrize("name, switch, values", [
    ("lbfgs", "damping", (None, "powell")),
    ("lbfgs", "line_search", ("strong_wolfe", "armijo", "none", "minfunc", "minpack", "optax_zoom")),
    ("bfgs", "line_search", ("strong_wolfe", "armijo", "none", "minpack", "scipy")),
    ("dfp", "line_search", ("strong_wolfe", "armijo", "none", "minpack", "scipy")),
    ("sr1", "line_search", ("strong_wolfe", "armijo", "none", "minpack", "scipy")),
    ("sherman_morrison", "line_search", ("strong_wolfe", "armijo", "none", "minpack", "scipy")), ("kfac", "adapt_damping", (False, True))])
def test_conventions_once_validated_outside_a_switch_are_declared(name, switch, values):
    """L-BFGS's damping, the secant methods' line search (minfunc, which the torch profile needs, included)
    and K-FAC's adapt_damping are Switches: searched, in the generated table, validated by set_switch."""
    cls = optimizer_class(name)
    assert cls.switches[switch] == values
    assert f"| {switch} |" in "\n".join(r for r in conventions_table().split("\n") if f" {name} " in r)
    for value in values:
        assert getattr(cls(**{switch: value}), switch) == value
    with pytest.raises(ValueError, match=switch):
        cls(**{switch: "bogus"})


# The family bullets of CONTRIBUTING's "Switches by family", by their bold lead, and the family of each.
_FAMILY_BULLETS = {"Gradient descent": "gradient", "Newton family": "newton", "Fisher family": "fisher",
                   "Adaptive family": "adaptive"}


def _named_as_switches(bullet: str) -> set:
    """The backticked names inside every "(switch …)" / "(switches …)" group of a bullet (nested
    parentheses included), i.e. what the prose calls switches."""
    names = set()
    for start in (m.end() for m in re.finditer(r"(?:\(|; )switch(?:es)?\s", bullet)):
        depth, end = 1, start
        while depth and end < len(bullet):
            depth += {"(": 1, ")": -1}.get(bullet[end], 0)
            end += 1
        names |= set(re.findall(r"`(\w+)`", bullet[start:end]))
    return names


def test_contributing_s_family_prose_names_every_declared_switch_as_a_switch():
    """Each family's bullet in "Switches by family" calls every switch of the family's optimizers a switch,
    so a switch declared later (adapt_damping, L-BFGS's damping, the secant methods' line_search) is not
    left among the plain hyperparameters or described as "not a declared switch"."""
    text = CONTRIBUTING.read_text(encoding="utf-8")
    section = text[text.index("### Switches by family"):text.index("Every declared convention switch")]
    bullets = {m.group(1): m.group(0) for m in re.finditer(r"^\* \*\*([^*]+)\*\*.*?(?=^\* |\Z)", section, re.M | re.S)}
    assert set(_FAMILY_BULLETS) <= set(bullets), sorted(bullets)
    assert "not a declared switch" not in section
    for lead, family in _FAMILY_BULLETS.items():
        declared = {sw for name in FAMILIES[family] for sw in optimizer_class(name).switches}
        assert declared - _named_as_switches(bullets[lead]) == set(), lead
