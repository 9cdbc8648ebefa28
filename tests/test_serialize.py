"""Saved states: exact round trips of every optimizer's state, and hostile files that must be refused
(one-line ValueError) without running, importing or allocating anything they name."""
import json
import os
import zipfile

import numpy as np
import pytest

import refopt.serialize as S
from refopt.optim import OPTIMIZERS, make_optimizer
from refopt.serialize import decode, encode, load_npz, read_npz, write_npz_atomic

from _helpers import mlp_problem


def _assert_identical(a, b, where="obj"):
    """Same types all the way down (NamedTuple class, list vs tuple), arrays equal bit for bit with one dtype."""
    assert type(a) is type(b), f"{where}: {type(a).__name__} vs {type(b).__name__}"
    if isinstance(a, tuple) and hasattr(a, "_fields"):
        assert a._fields == b._fields
        for f in a._fields:
            _assert_identical(getattr(a, f), getattr(b, f), f"{where}.{f}")
    elif isinstance(a, dict):
        assert list(a) == list(b), where
        for k in a:
            _assert_identical(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_identical(x, y, f"{where}[{i}]")
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.shape == b.shape, where
        assert a.tobytes() == b.tobytes(), where  # bit-exact, NaN payloads and signed zeros included
    elif isinstance(a, float):
        assert a.hex() == b.hex() or (a != a and b != b), where
    else:
        assert a == b, where


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_every_optimizer_state_round_trips_exactly(tmp_path, name):
    """After two steps on a tiny MLP, encode → file → decode gives back the same state (classes, fields,
    arrays bit for bit); this fails for any state class that is not registered."""
    _, params, oracle = mlp_problem([3, 4, 2], 5, 0)
    opt = make_optimizer(name)
    state = opt.init(params)
    for _ in range(2):
        params, state, _ = opt.update(params, state, oracle)
    path = tmp_path / "s.npz"
    write_npz_atomic(str(path), {"x": 1}, params=params, state=state)
    meta, objs = read_npz(str(path))
    assert meta == {"x": 1}
    _assert_identical(params, objs["params"], "params")
    _assert_identical(state, objs["state"], "state")


def test_an_unregistered_namedtuple_is_not_saved():
    from typing import NamedTuple

    class Stranger(NamedTuple):
        x: int

    with pytest.raises(TypeError, match="not a registered state class"):
        encode(Stranger(1), [])


def test_registry_refuses_a_second_class_under_a_taken_name():
    from typing import NamedTuple

    class AdamState(NamedTuple):  # same name as refopt.optim.adam.AdamState
        m: int

    with pytest.raises(ValueError, match="taken"):
        S.register_state(AdamState)
    with pytest.raises(TypeError, match="NamedTuple"):
        S.register_state(dict)


def test_old_module_qualname_form_maps_through_the_registry(tmp_path):
    """Files written before the registry name 'refopt.optim.sgd:SGDState'; the final name is looked up."""
    from refopt.optim.sgd import SGDState
    path = _write(tmp_path, {}, {"state": {"namedtuple": "refopt.optim.sgd:SGDState",
                                           "fields": {"step": {"int": 3}, "velocity": None}}})
    _, objs = read_npz(path)
    assert objs["state"] == SGDState(step=3, velocity=None)


# --- hostile files -----------------------------------------------------------------------------------

def _write(tmp_path, meta, skeleton, name="evil.npz", **arrays):
    """An .npz in write_npz_atomic's layout with the given (possibly hostile) meta and skeleton."""
    path = tmp_path / name
    np.savez(path, meta=np.array(json.dumps(meta) if not isinstance(meta, str) else meta),
             skeleton=np.array(json.dumps(skeleton) if not isinstance(skeleton, str) else skeleton), **arrays)
    return str(path)


def _refused(fn, *args, match=None, **kwargs):
    """fn(*args, **kwargs) raises a one-line ValueError (matching ``match``); returns its message."""
    with pytest.raises(ValueError) as info:
        fn(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message and message, message
    if match is not None:
        assert match in message, message
    return message


@pytest.fixture
def tripwires(monkeypatch, tmp_path):
    """Record every call of os.system, np.save and pickle loading: a hostile file that reaches any of them
    has run code. (eval and exec are left alone: namedtuple and the import system call them; the payloads
    aimed at them would create a marker file instead, which the tests look for.)"""
    import pickle
    calls = []

    def spy(label):
        def record(*a, **k):
            calls.append((label, a, k))
        return record
    monkeypatch.setattr(os, "system", spy("os.system"))
    monkeypatch.setattr(np, "save", spy("np.save"))
    monkeypatch.setattr(pickle, "loads", spy("pickle.loads"))
    monkeypatch.setattr(pickle, "load", spy("pickle.load"))
    return calls


MARKER = "refopt-hostile-marker"

CODE_EXECUTION = [
    # the exploit: os.system reached through the serialize module's globals
    ("refopt.serialize:os.system", {"command": {"dict": {}}}),
    ("refopt.serialize:os.system", {"command": "touch " + MARKER}),
    ("builtins:eval", {"source": "open('" + MARKER + "', 'w')"}),
    ("refopt.backend:_np.save", {"file": MARKER, "arr": {"int": 1}}),
    ("refopt.backend:_np.lib.npyio.DataSource", {"destpath": MARKER}),
    ("refopt.optim.adam:AdamState.__class__.__call__", {}),     # an attribute chain
    ("refopt.optim.adam:os.system", {"command": "touch " + MARKER}),
    ("os:system", {"command": "touch " + MARKER}),
    ("os.system", {"command": "touch " + MARKER}),
    ("system", {"command": "touch " + MARKER}),
    ("__import__", {"name": "subprocess"}),                     # dunder names
    ("__builtins__", {}),
    ("refopt:__builtins__", {}),
    ("_STATES", {}),
    ("AdamState.__new__", {}),
    ("refopt.optim.adam:AdamState\n", {}),
]


@pytest.mark.parametrize("name,fields", CODE_EXECUTION)
def test_code_execution_attempts_are_refused_and_nothing_runs(tmp_path, monkeypatch, tripwires, name, fields):
    monkeypatch.chdir(tmp_path)
    path = _write(tmp_path, {"format": "x"}, {"state": {"namedtuple": name, "fields": fields}})
    _refused(read_npz, path, match="state class")
    assert tripwires == [] and not os.path.exists(MARKER)


def test_a_pickled_object_array_is_refused_without_unpickling(tmp_path, monkeypatch, tripwires):
    """np.savez pickles object arrays; loading one would run its __reduce__ (here: create a marker file)."""
    monkeypatch.chdir(tmp_path)

    class Payload:
        def __reduce__(self):
            return (open, (MARKER, "w"))

    path = tmp_path / "pickled.npz"
    np.savez(path, meta=np.array("{}"), skeleton=np.array("{}"), a0=np.array([Payload()], dtype=object))
    _refused(load_npz, str(path), match="pickles are refused")
    _refused(read_npz, str(path), match="pickles are refused")
    assert not os.path.exists(MARKER) and tripwires == []


def _raw_npz(path, members: dict):
    """A zip whose members are raw bytes (so headers may lie about the data that follows)."""
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return str(path)


def _header(shape, descr="<f8"):
    import io
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": descr, "fortran_order": False, "shape": shape})
    return buf.getvalue()


def test_declared_sizes_are_capped_before_anything_is_read(tmp_path, monkeypatch):
    """A header that declares 8 TB is refused from the header alone; an honest array over a smaller cap too."""
    read = []
    real = np.lib.format.read_array
    monkeypatch.setattr(np.lib.format, "read_array", lambda *a, **k: read.append(1) or real(*a, **k))
    huge = _raw_npz(tmp_path / "huge.npz", {"meta.npy": _header((10 ** 6, 10 ** 6))})
    _refused(load_npz, huge, match=f"exceed {S.MAX_NPZ_BYTES} bytes")
    honest = tmp_path / "honest.npz"
    np.savez(honest, a=np.zeros(200))      # 1600 bytes of data
    _refused(load_npz, str(honest), 1000, match="exceed 1000 bytes")
    assert read == []
    assert load_npz(str(honest), 1600)["a"].shape == (200,)


@pytest.mark.parametrize("members,match", [
    ({"meta.npy": b"not an array at all"}, "is not an array"),
    ({"meta.npy": _header((3,)) + b"\x00" * 5}, "not a readable"),       # truncated data
    ({"meta.npy": b"\x93NUMPY\x03\x00" + b"\x00" * 20}, "not an array"),  # format 3.0
])
def test_members_that_are_not_arrays(tmp_path, members, match):
    _refused(load_npz, _raw_npz(tmp_path / "m.npz", members), match=match)


def test_files_that_are_not_npz_archives(tmp_path):
    npy = tmp_path / "a.npy"
    np.save(npy, np.zeros(3))
    _refused(load_npz, str(npy), match="not an .npz archive")
    text = tmp_path / "t.npz"
    text.write_text("hello")   # NumPy alone would answer with advice about allow_pickle, which does not apply
    with pytest.raises(ValueError) as info:
        load_npz(str(text))
    assert str(info.value) == f"{text}: not an .npz archive (a zip of .npy arrays); the file starts with b'hell'"
    _refused(load_npz, str(tmp_path), match="cannot be read")   # a folder
    with pytest.raises(FileNotFoundError):
        load_npz(str(tmp_path / "absent.npz"))


GOOD_ARRAY = {"a0": np.zeros(2)}

MALFORMED = [
    # (meta, skeleton, arrays, fragment of the message)
    ({}, 5, {}, "skeleton must be a JSON object"),
    ({}, [1, 2], {}, "skeleton must be a JSON object"),
    ([], {}, {}, "meta must be a JSON object"),
    (7, {}, {}, "meta must be a JSON object"),
    ({}, {"x": 5}, {}, "x: unreadable entry 5"),
    ({}, {"x": [1]}, {}, "unreadable entry"),
    ({}, {"x": {"array": 1}}, GOOD_ARRAY, "array index 1 out of range"),
    ({}, {"x": {"array": -1}}, GOOD_ARRAY, "array index -1 out of range"),
    ({}, {"x": {"array": True}}, GOOD_ARRAY, "expected an integer"),
    ({}, {"x": {"array": "0"}}, GOOD_ARRAY, "expected an integer"),
    ({}, {"x": {"array": 10 ** 30}}, GOOD_ARRAY, "beyond"),
    ({}, {"x": {"int": 10 ** 30}}, {}, "beyond"),
    ({}, {"x": {"int": 1.5}}, {}, "expected an integer"),
    ({}, {"x": {"float": 1.5}}, {}, "repr string"),
    ({}, {"x": {"float": "one"}}, {}, "not a float"),
    ({}, {"x": {"dict": [["a", 1]]}}, {}, "string keys"),
    ({}, {"x": {"list": {"a": 1}}}, {}, "JSON array"),
    ({}, {"x": {"int": 1, "float": "1"}}, {}, "unreadable entry"),
    ({}, {"x": {"lambda": "x"}}, {}, "unreadable entry"),
    ({}, {"x": {"namedtuple": "NoSuchState", "fields": {}}}, {}, "unknown state class 'NoSuchState'"),
    ({}, {"x": {"namedtuple": "SGDState", "fields": {"step": {"int": 1}}}}, {}, "missing ['velocity']"),
    ({}, {"x": {"namedtuple": "SGDState", "fields": {"step": {"int": 1}, "velocity": None, "evil": 1}}}, {},
     "unknown ['evil']"),
    ({}, {"x": {"namedtuple": "SGDState", "fields": [1, None]}}, {}, "must be an object"),
    ({}, {"x": {"namedtuple": 5, "fields": {}}}, {}, "named by a string"),
    ({}, {"x": {"array": 0}}, {"a0": np.array(["text"])}, "dtype <U4"),
    ({}, {"x": {"array": 0}}, {"a0": np.zeros(2, np.complex128)}, "dtype complex128"),
    ({}, {"x": {"array": 0}}, {"a0": np.zeros(2, np.float16)}, "dtype float16"),
    ({}, {}, {"a1": np.zeros(2)}, "unexpected entries ['a1']"),
    ({}, {}, {"evil": np.zeros(2)}, "unexpected entries ['evil']"),
    ('{"a": ' * 100000 + "1" + "}" * 100000, {}, {}, "nested too deeply"),          # RecursionError in json
    ({}, '{"x": ' + '{"list": [' * 80 + "1" + "]}" * 80 + "}", {}, "nested deeper than 64"),
    ({}, '{"x": {"int": ' + "9" * 5000 + "}}", {}, "not valid JSON"),              # beyond Python's digit limit
    ({}, "{not json", {}, "not valid JSON"),
]


@pytest.mark.parametrize("meta,skeleton,arrays,match", MALFORMED)
def test_malformed_files_are_refused_in_one_line(tmp_path, meta, skeleton, arrays, match):
    _refused(read_npz, _write(tmp_path, meta, skeleton, **arrays), match=match)


def test_meta_and_skeleton_must_be_json_strings(tmp_path):
    path = tmp_path / "num.npz"
    np.savez(path, meta=np.array(5), skeleton=np.array("{}"))
    _refused(read_npz, str(path), match="must be a JSON string")


def test_check_meta_runs_before_any_decoding(tmp_path, tripwires):
    path = _write(tmp_path, {"format": "wrong"}, {"x": {"namedtuple": "refopt.serialize:os.system",
                                                       "fields": {"command": "true"}}})

    def check(meta):
        raise ValueError(f"format {meta['format']!r}")
    _refused(read_npz, path, check_meta=check, match="format 'wrong'")
    assert tripwires == []


def test_decode_validates_python_objects_too():
    """decode on an in-memory skeleton: non-string dict keys and deep nesting are ValueErrors."""
    with pytest.raises(ValueError, match="string keys"):
        decode({"dict": {1: {"int": 1}}}, [])
    deep = 1
    for _ in range(S.MAX_DEPTH + 5):
        deep = {"list": [deep]}
    with pytest.raises(ValueError, match="nested deeper"):
        decode(deep, [])
    with pytest.raises(ValueError, match="out of range"):
        decode({"array": 0}, [])
    with pytest.raises(ValueError, match="beyond"):
        encode(10 ** 30, [])


# --- the command line: a hostile file exits 2 with one line on stderr, and nothing runs -------------------

def test_cli_train_resume_from_a_hostile_checkpoint(tmp_path, monkeypatch, capsys, tripwires):
    from refopt.cli import main
    from refopt.compare import tuned_hyperparameters
    from refopt.runner import RunConfig, run
    monkeypatch.chdir(tmp_path)
    # the hyperparameters `refopt train sgd --problem synthetic_mlp` runs with, so the identity matches and
    # the refusal comes from the state class the file names
    cfg = RunConfig("sgd", tuned_hyperparameters("synthetic_mlp", "sgd"), "synthetic_mlp", steps=2)
    run(cfg, checkpoint_path="ck.npz", checkpoint_every=1)
    with np.load("ck.npz") as data:
        files = dict(data)
    skeleton = json.loads(str(files["skeleton"]))
    skeleton["state"] = {"namedtuple": "refopt.serialize:os.system", "fields": {"command": "touch " + MARKER}}
    files["skeleton"] = np.array(json.dumps(skeleton))
    np.savez("evil.npz", **files)
    capsys.readouterr()
    assert main(["train", "sgd", "--problem", "synthetic_mlp", "--steps", "3", "--resume", "evil.npz",
                 "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("refopt: error: ") and "unknown state class" in err, err
    assert tripwires == [] and not os.path.exists(MARKER)


def test_cli_verify_check_of_a_hostile_trace(tmp_path, monkeypatch, capsys, tripwires):
    """A trace whose problem would need ~300 GiB is refused before anything is allocated."""
    import refopt.verify.trace as tr
    from refopt.cli import main
    from refopt.verify import export_trace, make_trace
    monkeypatch.chdir(tmp_path)
    export_trace(make_trace("sgd", {"lr": 0.1}, "tiny_mlp", steps=2), "t.npz")
    with np.load("t.npz") as data:
        files = dict(data)
    meta = json.loads(str(files["meta"]))
    meta["problem"].update(sizes=[4, 200000, 200000, 3], activations=["tanh", "tanh", "identity"])
    files["meta"] = np.array(json.dumps(meta))
    np.savez("evil.npz", **files)

    def no_build(*a, **k):
        raise AssertionError("the network was built from an unchecked trace")
    monkeypatch.setattr(tr, "_build", no_build)
    assert main(["verify", "check", "evil.npz"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "more than 1000000 parameters" in err, err
    assert tripwires == []


def test_one_seed_cap_and_one_short_repr_for_every_module():
    """MAX_SEED is defined once (serialize, the lowest unit that needs it) and the message helper once."""
    import refopt.serialize as S
    from refopt.optim import base
    from refopt.optim import gradients
    from refopt.problems import user_data
    from refopt.verify import trace
    assert base.MAX_SEED is S.MAX_SEED == 2 ** 63 - 1 and user_data.MAX_SEED is S.MAX_SEED
    assert trace._short is S.short_repr and gradients._short is S.shorten
    from refopt.autodiff import primitives
    from refopt.nn import conv
    assert base.show_value is S.short_repr and primitives._show is S.short_repr and conv._shown is S.short_repr
    assert S.short_repr("x" * 200) == repr("x" * 200)[:77] + "..." and len(S.short_repr("x" * 200)) == 80
    assert S.short_repr(10 ** 5000) == "an integer of about 5001 digits"  # repr() itself would raise
    assert S.short_repr(-10 ** 5000) == "a negative integer of about 5001 digits"
    assert S.short_repr(2 ** 256 - 1) == repr(2 ** 256 - 1)  # 78 digits: fits, shown in full
    # a huge argument of a primitive is named in one short line, not an error from repr()
    import refopt.autodiff as ad
    with pytest.raises(ValueError) as err:
        ad.conv2d(np.zeros((1, 1, 3, 3)), np.zeros((1, 1, 2, 2)), stride=-10 ** 5000)
    assert str(err.value) == "conv2d: stride must be ≥ 1, got a negative integer of about 5001 digits"

    class Broken:
        def __repr__(self):
            raise RuntimeError("no")
    assert S.short_repr(Broken()) == "<Broken>"


def test_load_npz_can_read_only_some_entries(tmp_path):
    path = tmp_path / "k.npz"
    np.savez(path, meta=np.array("{}"), a0=np.zeros(3))
    assert list(load_npz(str(path), keys=("meta",))) == ["meta"]
    assert sorted(load_npz(str(path))) == ["a0", "meta"]
