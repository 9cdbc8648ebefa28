"""A user's own data as a network problem (refopt.problems.user_data): reading .csv and .npz files, every bad
file as one line naming it, the seeded split, standardisation by the training rows, sizes against the data,
and the accuracy of the classification losses (refopt.nn.losses) that the runner records."""
import numpy as np
import pytest

from refopt.problems import user_data as U
from refopt.problems.user_data import data_problem, load_data


def _write(tmp_path, text, name="d.csv"):
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return str(path)


def _npz(tmp_path, name="d.npz", **arrays):
    path = tmp_path / name
    np.savez(path, **arrays)
    return str(path)


def _refused(fragment, path, **kwargs):
    with pytest.raises(ValueError) as info:
        data_problem(path, **kwargs) if kwargs or path.endswith((".csv", ".npz")) else load_data(path)
    text = str(info.value)
    assert "\n" not in text and fragment in text, text
    return text


# --- reading files ----------------------------------------------------------------------------------------

def test_csv_with_header_and_trailing_blank_lines(tmp_path):
    path = _write(tmp_path, "x1, x2,label\n1,2.5,0\n-3,4e-1,2\n7, 8 ,1\n\n\n")
    X, y = load_data(path)
    np.testing.assert_array_equal(X, [[1, 2.5], [-3, 0.4], [7, 8]])
    np.testing.assert_array_equal(y, [0, 2, 1])


def test_csv_without_header_keeps_its_first_row(tmp_path):
    X, y = load_data(_write(tmp_path, "1,2,0\n3,4,1\n"))
    np.testing.assert_array_equal(X, [[1, 2], [3, 4]])
    np.testing.assert_array_equal(y, [0, 1])


def test_npz_with_X_and_y(tmp_path):
    X = np.arange(12.0).reshape(4, 3)
    Y = np.array([[0, 1], [1, 1], [0, 0], [1, 0]])
    got = load_data(_npz(tmp_path, X=X, y=Y))
    np.testing.assert_array_equal(got[0], X)
    np.testing.assert_array_equal(got[1], Y)
    assert got[0].dtype == np.float64


@pytest.mark.parametrize("text,fragment", [
    ("", "d.csv: the file is empty"),
    ("\n\n  \n", "d.csv: the file is empty"),
    ("a,b,label\n", "d.csv: the file has a header row and no data rows"),
    ("1,2,0\n3,4\n", "d.csv: row 2 has 2 columns, row 1 has 3"),
    ("a,b,c\n1,2,0\n3,4,1,5\n", "d.csv: row 3 has 4 columns, row 1 has 3"),
    ("1,2,0\n3,abc,1\n", "d.csv: row 2, column 2: 'abc' is not a number"),
    ("a,b,c\n1,2,0\n,4,1\n", "d.csv: row 3, column 1: '' is not a number"),
    ("1,2,0\n3,nan,1\n", "d.csv: row 2, column 2: 'nan' is not finite (NaN or inf)"),
    ("1,2,0\n3,4,-inf\n", "d.csv: row 2, column 3: '-inf' is not finite"),
    ("1,2,0\n\n3,4,1\n", "d.csv: row 2 is empty"),
    ("1\n2\n", "d.csv: row 1 has 1 column; a csv needs feature columns and the label"),
    (b"1,2,0\n3,\xff,1\n", "d.csv: not a text file (not UTF-8)"),
    ('1,2,0\n"3,4,1\n', "d.csv: not a readable csv"),
])
def test_bad_csv_files_are_one_line_naming_file_row_and_column(tmp_path, text, fragment):
    _refused(fragment, _write(tmp_path, text))


def test_missing_file_directory_extension_and_size_cap(tmp_path, monkeypatch):
    _refused("nope.csv: No such file", str(tmp_path / "nope.csv"))
    (tmp_path / "folder.csv").mkdir()
    _refused("folder.csv: is not a regular file", str(tmp_path / "folder.csv"))
    _refused("d.txt: expected a .csv or .npz data file", _write(tmp_path, "1,2\n", "d.txt"))
    path = _write(tmp_path, "1,2,0\n3,4,1\n")
    monkeypatch.setattr(U, "MAX_DATA_BYTES", 8)
    _refused("d.csv: 12 bytes; data files are read up to 8 bytes", path)


@pytest.mark.parametrize("arrays,fragment", [
    ({"X": np.zeros((3, 2)), "y": np.zeros(3), "w": np.zeros(3)}, "exactly the arrays X and y, this one ['X', 'w', 'y']"),
    ({"X": np.zeros((3, 2))}, "exactly the arrays X and y, this one ['X']"),
    ({"X": np.zeros(3), "y": np.zeros(3)}, "X must be 2-D (examples × features), got shape (3,)"),
    ({"X": np.zeros((3, 2, 1)), "y": np.zeros(3)}, "X must be 2-D"),
    ({"X": np.zeros((3, 2)), "y": np.zeros((3, 1, 1))}, "y must be 1-D labels or 2-D targets"),
    ({"X": np.zeros((3, 2)), "y": np.zeros(4)}, "X has 3 rows and y 4; they must match"),
    ({"X": np.array([[0.0, 1], [2, np.nan], [4, 5]]), "y": np.zeros(3)}, "X[1, 1] is nan; the data must be finite"),
    ({"X": np.zeros((3, 2)), "y": np.array([0, np.inf, 1])}, "y[1] is inf"),
    ({"X": np.array([["a", "b"]] * 3), "y": np.zeros(3)}, "X has dtype <U1; expected numbers"),
    ({"X": np.zeros((3, 2), complex), "y": np.zeros(3)}, "X has dtype complex128; expected numbers"),
    ({"X": np.zeros((3, 2)), "y": np.array([None, 1, 2], dtype=object)}, "holds Python objects (pickles are refused)"),
])
def test_bad_npz_files_are_one_line(tmp_path, arrays, fragment):
    text = _refused(fragment, _npz(tmp_path, **arrays))
    assert text.startswith(str(tmp_path / "d.npz")) or text.startswith("d.npz")


def test_npz_that_is_not_an_archive_or_declares_too_much(tmp_path, monkeypatch):
    text = _refused("not an .npz archive (a zip of .npy arrays); the file starts with b'not '",
                    _write(tmp_path, b"not a zip at all", "d.npz"))
    assert "allow_pickle" not in text  # NumPy's own answer, advice that does not apply to a text file
    path = tmp_path / "zeros.npz"
    np.savez_compressed(path, X=np.zeros((500, 4)), y=np.zeros(500))  # 20 kB of zeros, compressed to < 1 kB
    assert path.stat().st_size < 2000
    monkeypatch.setattr(U, "MAX_DATA_BYTES", 2000)  # the file fits, its declared arrays do not
    _refused("its arrays exceed 2000 bytes", str(path))


def test_loading_an_npz_never_unpickles(tmp_path, monkeypatch):
    """An object array in the file is refused from its header; nothing is unpickled."""
    import pickle
    calls = []
    monkeypatch.setattr(pickle, "loads", lambda *a, **k: calls.append(a))
    _refused("pickles are refused", _npz(tmp_path, X=np.zeros((2, 2)), y=np.array([{}, {}], dtype=object)))
    assert calls == []


# --- labels, sizes and the split --------------------------------------------------------------------------

CSV = "f1,f2,label\n" + "".join(f"{i},{(i * 7) % 5},{i % 3}\n" for i in range(10))


@pytest.mark.parametrize("text,kwargs,fragment", [
    ("1,2,0\n3,4,1.5\n5,6,1\n", {}, "d.csv: labels must be integers 0, 1, 2, ... (below 2³¹) for softmax; example 2 has 1.5"),
    ("1,2,0\n3,4,-1\n5,6,1\n", {}, "example 2 has -1.0"),
    ("1,2,0\n3,4,1e12\n5,6,1\n", {"sizes": [2, 3]}, "below 2³¹"),
    ("1,2,0\n3,4,20000\n5,6,1\n", {}, "a softmax label of 20000 (at most 9999 with the default sizes)"),
    ("1,2,0\n3,4,2\n5,6,1\n", {"sizes": [2, 4, 2]},
     "sizes: the last size 2 is too small for softmax on d.csv: labels go up to 2, so it must be at least 3"),
    ("1,2,0\n3,4,0\n5,6,0\n", {"sizes": [2, 1]}, "the last size 1 is too small for softmax on d.csv"),
    ("1,2,0\n3,4,2\n5,6,1\n", {"loss": "bernoulli"}, "Bernoulli targets must be 0 or 1; example 2, target 1 has 2.0"),
    ("1,2,0\n3,4,1\n5,6,1\n", {"loss": "bernoulli", "sizes": [2, 2]},
     "sizes: the last size must be 1, the number of target columns of d.csv for bernoulli, got 2"),
    ("1,2,0.5\n3,4,1\n5,6,1\n", {"loss": "gaussian", "sizes": [2, 8, 3]}, "the last size must be 1"),
    ("1,2,0\n3,4,1\n5,6,1\n", {"sizes": [3, 2]},
     "sizes: the first size must be the number of features, 2 in d.csv, got 3"),
    ("1,2,0\n3,4,1\n5,6,1\n", {"sizes": [2]}, "sizes must list at least two positive integer layer widths"),
    ("1,2,0\n3,4,1\n5,6,1\n", {"sizes": [2, 0, 2]}, "sizes must list at least two positive integer"),
    ("1,2,0\n3,4,1\n5,6,1\n", {"sizes": "2,2"}, "sizes must be a list of layer widths"),
    ("1,2,0\n3,4,1\n5,6,1\n", {"sizes": [2, 4, 4, 2], "activation": ["tanh"]},
     "activation: expected 2 names (one per hidden layer), got 1"),
    ("1,2,0\n3,4,1\n5,6,1\n", {"activation": "swish"}, "unknown activation 'swish'"),
    ("1,2,0\n", {}, "d.csv: 1 example; at least 2 are needed"),
    ("a,b,c\n1,2,0\n", {}, "d.csv: 1 example; at least 2 are needed"),
    ("1,2,0\n3,4,1\n", {"val_fraction": 0.2}, "val_fraction 0.2 of the 2 examples of d.csv holds out none"),
    ("1,2,0\n3,4,1\n", {"val_fraction": 0.75}, "val_fraction 0.75 of the 2 examples of d.csv leaves none to train on"),
    ("1,2,0\n3,4,1\n", {"loss": "mse"}, "loss must be one of softmax, gaussian, bernoulli, got 'mse'"),
    ("1,2,0\n3,4,1\n", {"val_fraction": 1}, "val_fraction must be a number in [0, 1), got 1"),
    ("1,2,0\n3,4,1\n", {"val_fraction": -0.1}, "val_fraction must be a number in [0, 1)"),
    ("1,2,0\n3,4,1\n", {"val_fraction": float("nan")}, "val_fraction must be a number in [0, 1)"),
    ("1,2,0\n3,4,1\n", {"val_fraction": True}, "val_fraction must be a number in [0, 1)"),
    ("1,2,0\n3,4,1\n", {"val_fraction": "0.2"}, "val_fraction must be a number in [0, 1)"),
    ("1,2,0\n3,4,1\n", {"standardize": "no"}, "standardize must be True or False, got 'no'"),
    ("1,2,0\n3,4,1\n", {"split_seed": -1}, "split_seed must be an integer in [0, 2⁶³ − 1]"),
    ("1,2,0\n3,4,1\n", {"split_seed": 2 ** 63}, "split_seed must be an integer"),
    ("1,2,0\n3,4,1\n", {"split_seed": 1.0}, "split_seed must be an integer"),
])
def test_bad_labels_sizes_and_splits_are_one_line(tmp_path, text, kwargs, fragment):
    _refused(fragment, _write(tmp_path, text), **{"val_fraction": 0.0, **kwargs})


def test_the_split_is_a_seeded_permutation_and_standardised_by_the_training_rows(tmp_path):
    path = _write(tmp_path, CSV)
    raw = np.array([[i, (i * 7) % 5] for i in range(10)], float)
    labels = np.arange(10) % 3
    for seed, fraction, n_val in [(0, 0.2, 2), (5, 0.25, 3), (5, 0.3, 3)]:  # ⌊f·n + ½⌋: 2.5 rounds up to 3
        p = data_problem(path, val_fraction=fraction, split_seed=seed)
        order = np.random.default_rng(seed).permutation(10)  # backend.rng is NumPy's PCG64 default_rng
        train, val = order[:10 - n_val], order[10 - n_val:]
        mu, sd = raw[train].mean(axis=0), raw[train].std(axis=0)
        np.testing.assert_allclose(p.X, (raw[train] - mu) / sd, rtol=0, atol=1e-15)  # a few roundings of O(1)
        np.testing.assert_allclose(p.X_val, (raw[val] - mu) / sd, rtol=0, atol=1e-15)
        np.testing.assert_array_equal(p.y, labels[train])
        np.testing.assert_array_equal(p.y_val, labels[val])
        assert p.y.dtype == np.int64 and p.X.dtype == np.float64
    a, b = data_problem(path, split_seed=0), data_problem(path, split_seed=1)
    assert not np.array_equal(a.y_val, b.y_val) or not np.array_equal(a.X_val, b.X_val)


def test_no_standardisation_and_no_held_out_split(tmp_path):
    path = _write(tmp_path, CSV)
    p = data_problem(path, val_fraction=0, standardize=False, split_seed=3)
    order = np.random.default_rng(3).permutation(10)
    np.testing.assert_array_equal(p.X, np.array([[i, (i * 7) % 5] for i in order], float))
    assert not p.has_validation and p.X_val is None


def test_a_constant_feature_maps_to_zero(tmp_path):
    p = data_problem(_write(tmp_path, "".join(f"{i},4,{i % 2}\n" for i in range(6))), val_fraction=0.5)
    assert np.all(p.X[:, 1] == 0) and np.all(p.X_val[:, 1] == 0)


def test_a_constant_float_feature_maps_to_zero_and_held_out_rows_to_their_difference(tmp_path):
    """0.1 three times: its computed mean is 0.10000000000000002 and its deviation 1.4e-17, so the plain
    formula maps the training rows to ±1 and a held-out 0.2 to about 7e15. Constant (max = min) means
    deviation 1: training rows 0, the held-out row 0.2 − 0.1."""
    held = int(np.random.default_rng(0).permutation(4)[-1])  # the row val_fraction 0.25 holds out (seed 0)
    rows = [f"{i},{0.2 if i == held else 0.1},{i % 2}\n" for i in range(4)]
    assert np.mean([0.1, 0.1, 0.1]) != 0.1 and np.std([0.1, 0.1, 0.1]) > 0  # what broke the plain formula
    p = data_problem(_write(tmp_path, "".join(rows)), val_fraction=0.25)
    assert np.all(p.X[:, 1] == 0)
    assert abs(p.X_val[0, 1] - 0.1) <= 1e-16


def test_values_near_the_float_maximum_standardise_without_overflow(tmp_path):
    """±1e308 in a csv: the plain moments overflow (inf, then NaN); standardisation is scale-free, so the result
    equals that of the same data divided by 1e300, computed here with NumPy's formula."""
    g = np.random.default_rng(2)
    X = g.uniform(-1.7, 1.7, (10, 2)) * 1e308
    path = _write(tmp_path, "".join(f"{float(a)!r},{float(b)!r},{i % 2}\n" for i, (a, b) in enumerate(X)))
    with np.errstate(over="raise", invalid="raise"):  # no overflow anywhere on the way
        p = data_problem(path, val_fraction=0.2)
    order = np.random.default_rng(0).permutation(10)
    small = X / 1e300
    mu, sd = small[order[:8]].mean(axis=0), small[order[:8]].std(axis=0)
    np.testing.assert_allclose(p.X, (small[order[:8]] - mu) / sd, rtol=0, atol=1e-13)  # 1e300 rounds each x
    np.testing.assert_allclose(p.X_val, (small[order[8:]] - mu) / sd, rtol=0, atol=1e-13)


def test_a_held_out_value_beyond_the_float_range_once_standardised_is_one_line(tmp_path):
    """Training values within 1e-300 of each other and a held-out 1e10: (x − μ)/σ ≈ 1e310 is not a float64."""
    held = int(np.random.default_rng(0).permutation(4)[-1])
    rows = [f"{i},{1e10 if i == held else (1 + i) * 1e-300},{i % 2}\n" for i in range(4)]
    text = _refused("d.csv: column 2: the held-out value 1e+10: standardised by the training rows' moments, it is "
                    "inf, beyond the range of float64", _write(tmp_path, "".join(rows)), val_fraction=0.25)
    assert "RuntimeWarning" not in text


def test_raw_values_beyond_float32_are_one_line_in_a_float32_run(tmp_path):
    from refopt import backend
    backend.set_default_dtype("float32")
    path = _write(tmp_path, "1,2,0\n3,1e39,1\n5,6,1\n")
    _refused("d.csv: column 2: the training value 1e+39: it is 1e+39, beyond the range of float32", path,
             val_fraction=0, standardize=False)
    assert data_problem(path, val_fraction=0).X.dtype == np.float32  # standardised, it fits


def test_a_first_row_of_numbers_and_text_is_an_error_not_a_header(tmp_path):
    """A typo in the first example (1,x,0) used to make it a header, silently dropping the example."""
    _refused("d.csv: row 1 mixes numbers and text (column 2: 'x'); a header row holds no number, a data row "
             "only numbers", _write(tmp_path, "1,x,0\n3,4,1\n5,6,1\n"))
    X, _ = load_data(_write(tmp_path, "a,,label\n1,2,0\n"))  # no number at all: a header (an empty name too)
    np.testing.assert_array_equal(X, [[1, 2]])


def test_default_sizes_losses_and_name(tmp_path):
    from refopt.nn import Bernoulli, Gaussian, SoftmaxCrossEntropy
    p = data_problem(_write(tmp_path, CSV, "blobs.csv"))
    assert p.name == "data:blobs.csv" and p.model.sizes == [2, 32, 3] and p.model.activations == ["tanh", "identity"]
    assert isinstance(p.loss, SoftmaxCrossEntropy) and p.loss.reduction == "mean"
    one_class = data_problem(_write(tmp_path, "1,2,0\n3,4,0\n5,6,0\n"), val_fraction=0)
    assert one_class.model.sizes == [2, 32, 2]  # softmax needs two outputs at least
    b = data_problem(_write(tmp_path, "1,2,0\n3,4,1\n5,6,1\n"), loss="bernoulli", val_fraction=0)
    assert b.model.sizes == [2, 32, 1] and isinstance(b.loss, Bernoulli) and b.y.shape == (3, 1)
    X = np.random.default_rng(0).standard_normal((8, 3))
    g = data_problem(_npz(tmp_path, X=X, y=X[:, :2] * 2.0), loss="gaussian", sizes=[3, 5, 4, 2],
                     activation=["relu", "sigmoid"], val_fraction=0.25)
    assert g.model.sizes == [3, 5, 4, 2] and g.model.activations == ["relu", "sigmoid", "identity"]
    assert isinstance(g.loss, Gaussian) and g.y.shape == (6, 2) and g.y_val.shape == (2, 2)
    order = np.random.default_rng(0).permutation(8)
    np.testing.assert_array_equal(g.y, X[order[:6], :2] * 2.0)  # targets are not standardised


def test_identity_tells_data_split_and_architecture_apart(tmp_path):
    path = _write(tmp_path, CSV)
    base = data_problem(path).identity()
    assert data_problem(path).identity() == base
    assert data_problem(path, split_seed=1).identity()["data"] != base["data"]
    assert data_problem(path, standardize=False).identity()["data"] != base["data"]
    assert data_problem(path, val_fraction=0.3).identity()["data"] != base["data"]
    assert data_problem(path, sizes=[2, 8, 3]).identity()["sizes"] == [2, 8, 3]
    assert data_problem(path, activation="relu").identity()["activations"] == ["relu", "identity"]
    other = _write(tmp_path, CSV.replace("9,3,0", "9,3.5,0"), "e.csv")
    assert data_problem(other).identity()["data"] != base["data"]


def test_training_on_a_csv_problem_reaches_the_held_out_examples(tmp_path):
    """Two well separated blobs: a few Adam steps classify the held-out examples; the val metrics are the
    independent evaluation of the final parameters."""
    from refopt.runner import RunConfig, run
    g = np.random.default_rng(1)
    y = g.integers(0, 2, 60)
    X = g.standard_normal((60, 2)) * 0.3 + np.where(y[:, None] == 1, 2.0, -2.0)
    path = _write(tmp_path, "".join(f"{a},{b},{c}\n" for (a, b), c in zip(X, y)))
    p = data_problem(path)
    res = run(RunConfig("adam", {"lr": 0.05}, p.name, steps=40), problem=p)
    z = np.tanh(p.X_val @ res.params[0]["W"] + res.params[0]["b"]) @ res.params[1]["W"] + res.params[1]["b"]
    assert res.final_val_accuracy == np.mean(z.argmax(axis=1) == p.y_val) == 1.0


# --- accuracy of the classification losses (refopt.nn.losses) -------------------------------------------

def test_softmax_accuracy_by_hand():
    from refopt.nn import SoftmaxCrossEntropy
    z = np.array([[2.0, 1, 0], [0, 0, 5], [1, 1, 0], [0, 3, 1]])
    y = np.array([0, 1, 0, 1])
    # predictions 0, 2, 0 (a tie of classes 0 and 1 goes to 0), 1: three of four right
    assert SoftmaxCrossEntropy().accuracy(z, y) == 0.75
    assert SoftmaxCrossEntropy().accuracy(z, np.array([1, 2, 1, 1])) == 0.5  # the tie now counts as wrong
    with pytest.raises(ValueError, match="labels must lie in"):
        SoftmaxCrossEntropy().accuracy(z, np.array([0, 1, 0, 3]))


def test_bernoulli_accuracy_by_hand():
    from refopt.nn import Bernoulli
    z = np.array([[0.5, -1], [0.0, 2], [-3, -0.1]])
    y = np.array([[1.0, 0], [0, 1], [1, 0]])
    # predictions 1[z > 0]: [[1, 0], [0, 1], [0, 0]] (z = 0 predicts 0): five of six entries right
    assert Bernoulli().accuracy(z, y) == 5 / 6
    assert Bernoulli().has_accuracy


def test_the_gaussian_has_no_accuracy():
    from refopt.nn import Gaussian
    assert not Gaussian().has_accuracy
    with pytest.raises(ValueError, match="Gaussian has no accuracy"):
        Gaussian().accuracy(np.zeros((2, 1)), np.zeros((2, 1)))


# --- what a file may cost: memory, numbers and the network's size -------------------------------------------

def _peak(fn):
    """(result or the ValueError, peak bytes Python allocated while fn ran: tracemalloc counts NumPy's buffers)."""
    import tracemalloc
    tracemalloc.start()
    try:
        out = fn()
    except ValueError as exc:
        out = exc
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return out, peak


def test_a_million_blank_lines_cost_little_memory(tmp_path):
    """10⁶ newlines (1 MB) used to be read into two lists of rows (~300 bytes per byte, 2.4 GB for 8 MiB); the
    stream keeps no row: the peak stays under 2 × the file, also for 10⁵ of them after two data rows."""
    blank = _write(tmp_path, "\n" * 10 ** 6, "blank.csv")
    err, peak = _peak(lambda: load_data(blank))
    assert isinstance(err, ValueError) and "the file is empty" in str(err)
    assert peak < 2 * 10 ** 6, peak
    trailing = _write(tmp_path, "1,2,0\n3,4,1\n" + "\n" * 10 ** 5, "trailing.csv")
    (X, y), peak = _peak(lambda: load_data(trailing))
    np.testing.assert_array_equal(X, [[1, 2], [3, 4]])
    assert peak < 2 * 10 ** 5, peak


def test_an_ordinary_csv_costs_about_its_array(tmp_path):
    """20,000 rows of 5 numbers: the float64 array is 800 kB; the stream's doubling buffer and one row's cells
    keep the peak within 2.5 × that (a list of every row's strings cost ~22 × the file)."""
    g = np.random.default_rng(0)
    A = np.round(g.standard_normal((20000, 5)), 3)
    path = _write(tmp_path, "".join(",".join(repr(float(v)) for v in row) + "\n" for row in A), "big.csv")
    (X, y), peak = _peak(lambda: load_data(path))
    np.testing.assert_array_equal(np.column_stack([X, y]), A)
    assert peak < 2.5 * A.nbytes, (peak, A.nbytes)


def test_more_numbers_than_the_cap_are_refused_while_reading(tmp_path, monkeypatch):
    monkeypatch.setattr(U, "MAX_CELLS", 12)
    assert load_data(_write(tmp_path, "1,2,0\n" * 4))[0].shape == (4, 2)  # 12 numbers: at the cap
    _refused("d.csv: more than 12 numbers (rows × columns) at row 5; data files hold at most 12",
             _write(tmp_path, "1,2,0\n" * 5))
    _refused("d.npz: X (5, 2) and y (5,) hold 15 numbers; data files hold at most 12",
             _npz(tmp_path, X=np.zeros((5, 2), bool), y=np.zeros(5)))


def test_one_line_wider_than_half_the_cap_is_refused_before_the_csv_module_splits_it(tmp_path, monkeypatch):
    """A single 128 MiB line of "1,1,1,..." would have the csv module build ~43 million strings before the
    numbers cap is checked; the line is refused first, by counting its separators."""
    monkeypatch.setattr(U, "MAX_CELLS", 12)
    split = []
    real = U.csv.reader
    monkeypatch.setattr(U.csv, "reader", lambda lines, **kw: real((split.append(l) or l for l in lines), **kw))
    _refused("d.csv: line 2 has more than 6 cells; a data file holds at most 12 numbers in at least 2 rows",
             _write(tmp_path, "1,2,0\n" + ",".join(["1"] * 7) + "\n"))
    assert split == ["1,2,0\n"]  # the wide line never reached the csv module
    assert load_data(_write(tmp_path, "1,2,3,4,5,0\n" * 2))[0].shape == (2, 5)  # 6 cells: allowed


def test_a_network_over_the_parameter_cap_is_refused_before_it_is_built(tmp_path, monkeypatch):
    """--sizes 2,10⁹,3 used to end in a MemoryError; a wide file's default sizes the same. The count is checked
    from the sizes, (fan_in + 1) × fan_out per layer, before the MLP exists."""
    path = _write(tmp_path, "1,2,0\n3,4,1\n5,6,1\n")

    def never(*args, **kwargs):
        raise AssertionError("the MLP was built")
    monkeypatch.setattr(U, "MLP", never)
    _refused(f"sizes 2-1000000000-3 give {3 * 10 ** 9 + 10 ** 9 * 3 + 3} parameters; a data problem's network has at "
             f"most {10 ** 8}", path, sizes=[2, 10 ** 9, 3])
    monkeypatch.setattr(U, "MAX_PARAMETERS", (2 + 1) * 32 + (32 + 1) * 2 - 1)  # one fewer than [2, 32, 2] has
    _refused("d.csv: the default sizes 2-32-2 give 162 parameters; a data problem's network has at most 161", path)
