"""Your own data as a network problem: a ``.csv`` or ``.npz`` file, a seeded held-out split, an MLP and a loss.

Files (``load_data``), at most ``MAX_DATA_BYTES`` = 128 MiB on disk (and, for ``.npz``, of array data as its
headers declare, checked before anything is read), and at most ``MAX_CELLS`` = 2²⁵ numbers (examples ×
columns: 256 MiB as float64), checked as a csv is read and from an ``.npz``'s headers:

* ``.csv``: one example per row, comma-separated numbers, the last column the label (or the regression
  target). The first row is a header when none of its cells is a number; a first row that mixes numbers and
  text is an error (a typo in the first example must not silently drop it). Blank lines at the end are
  ignored. Rows are counted as the file's lines from 1, columns from 1, in the error messages. The rows are
  streamed into a float64 array that doubles as it fills, so reading costs about the array's size.
* ``.npz``: exactly the arrays ``X`` (n, d) and ``y``: (n,) labels, or (n, k) targets for the Gaussian and
  Bernoulli losses; bool, integer or float dtypes only. Read by ``serialize.load_npz``
  (``allow_pickle=False``, headers checked first): loading never runs code.

Every bad file is one ValueError line that names the file and what is wrong (for a csv, the row and column):
a missing or empty file, ragged rows, a cell that is not a number, NaN or ±inf, X not 2-D, X and y of
different row counts, fewer than 2 examples, too many numbers, labels that are not integers (softmax) or not
0/1 (Bernoulli) or do not fit the network's output size, a value that is beyond the dtype's range once
standardised (or, raw, beyond float32's in a float32 run).

``data_problem`` builds the ``NetworkProblem`` "data:<file name>" (``data_name``). Losses (mean reduction):
"softmax" (softmax cross-entropy; integer labels 0 … C−1 need an output size C ≥ max label + 1, and at least
2), "bernoulli" (0/1 targets, one output per target column), "gaussian" (real targets, one output per target
column; unit variance). Default sizes: [d, 32, C] with C = max(2, max label + 1) for softmax, [d, 32, k] for
the others (k target columns, 1 for a label vector). Every network has at most ``MAX_PARAMETERS`` = 10⁸
parameters (800 MB of float64 weights, before any optimizer state), checked from the sizes before the MLP
is built: a wide file or ``sizes`` cannot ask for more. The split: the examples are permuted by
``backend.rng(split_seed)`` and the last n_val = ⌊val_fraction · n + ½⌋ of the permutation are held out (not
stratified), the rest train, in permutation order (as ``datasets.digits``). Standardisation (on by default)
maps each feature of both parts with the training rows' moments (``datasets.standardisation``: computed
without overflow for any finite data; a constant feature, equal largest and smallest training value, maps
to 0 on the training rows, and held-out rows to their difference from it); targets are not scaled.
"""
from __future__ import annotations

import csv
import math
import os

import numpy as np

from ..backend import as_array, default_dtype, rng, xp
from ..nn import MLP, Bernoulli, Gaussian, SoftmaxCrossEntropy
from ..serialize import MAX_SEED, load_npz, short_repr
from .datasets import standardisation
from .registry import NetworkProblem

__all__ = ["load_data", "data_problem", "data_name", "LOSS_NAMES", "MAX_DATA_BYTES", "MAX_CELLS", "MAX_CLASSES",
           "MAX_PARAMETERS", "DEFAULT_HIDDEN"]

MAX_DATA_BYTES = 2 ** 27  # 128 MiB: a file on disk, and an .npz's declared array data
MAX_CELLS = 2 ** 25       # numbers in a data file (examples × columns): 256 MiB as float64
MAX_CLASSES = 10 ** 4     # default sizes: a softmax label above 9999 is refused (a target column taken for labels?)
MAX_PARAMETERS = 10 ** 8  # weights and biases of a data problem's MLP (module docs)
DEFAULT_HIDDEN = 32       # the hidden width of the default sizes
LOSS_NAMES = {"softmax": SoftmaxCrossEntropy, "gaussian": Gaussian, "bernoulli": Bernoulli}


def data_name(path) -> str:
    """The problem name of the data file ``path``: "data:" + its file name."""
    return "data:" + os.path.basename(os.fspath(path))


def _number(text: str):
    """The float of a csv cell, or None when it is not a number ('nan' and 'inf' are numbers here: the
    finiteness check names them)."""
    try:
        return float(text)
    except ValueError:
        return None


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _bounded_lines(fh, name: str):
    """The file's lines, each refused before the csv module splits it when it has more cells than a data file
    may hold in a row (at least 2 rows of at most ``MAX_CELLS`` numbers: ``MAX_CELLS // 2``), so one long
    line cannot make the reader build tens of millions of Python strings first."""
    for number, line in enumerate(fh, start=1):
        if line.count(",") >= MAX_CELLS // 2:
            raise ValueError(f"{name}: line {number} has more than {MAX_CELLS // 2} cells; a data file holds at "
                             f"most {MAX_CELLS} numbers in at least 2 rows")
        yield line


def _read_csv(path: str, name: str):
    """The numeric rows of the csv at ``path`` as a float64 array (n, columns), streamed (module docs)."""
    buf, n, width, first, blank = None, 0, 0, None, None
    try:
        with open(path, encoding="utf-8-sig", newline="") as fh:
            reader = csv.reader(_bounded_lines(fh, name), strict=True)
            for row in reader:
                cells = [c.strip() for c in row] if row else row
                if not any(cells):  # blank: an error only if a row follows (trailing blanks are ignored)
                    blank = reader.line_num if blank is None else blank
                    continue
                line = reader.line_num
                if blank is not None:
                    raise ValueError(f"{name}: row {blank} is empty")
                if first is None:  # the first row: a header (no number), data (numbers only), or an error
                    first, width = line, len(cells)
                    numbers = [_number(c) is not None for c in cells]
                    if width < 2:
                        raise ValueError(f"{name}: row {line} has 1 column; a csv needs feature columns and the "
                                         "label as its last column")
                    if not any(numbers):
                        continue
                    if not all(numbers):
                        j = numbers.index(False)
                        raise ValueError(f"{name}: row {line} mixes numbers and text (column {j + 1}: "
                                         f"{cells[j][:40]!r}); a header row holds no number, a data row only "
                                         "numbers")
                if len(cells) != width:
                    raise ValueError(f"{name}: row {line} has {len(cells)} columns, row {first} has {width}")
                if buf is None or n == buf.shape[0]:
                    if (n + 1) * width > MAX_CELLS:
                        raise ValueError(f"{name}: more than {MAX_CELLS} numbers (rows × columns) at row {line}; "
                                         f"data files hold at most {MAX_CELLS}")
                    grown = np.empty((min(max(2 * n, 64), max(MAX_CELLS // width, 1)), width))
                    if buf is not None:
                        grown[:n] = buf
                    buf = grown
                for j, text in enumerate(cells):
                    x = _number(text)
                    if x is None:
                        raise ValueError(f"{name}: row {line}, column {j + 1}: {text[:40]!r} is not a number")
                    if not math.isfinite(x):
                        raise ValueError(f"{name}: row {line}, column {j + 1}: {text[:40]!r} is not finite "
                                         "(NaN or inf)")
                    buf[n, j] = x
                n += 1
    except UnicodeDecodeError:
        raise ValueError(f"{name}: not a text file (not UTF-8)") from None
    except csv.Error as exc:
        raise ValueError(f"{name}: not a readable csv ({' '.join(str(exc).split())})") from None
    if first is None:
        raise ValueError(f"{name}: the file is empty")
    if n == 0:
        raise ValueError(f"{name}: the file has a header row and no data rows")
    buf.resize((n, width), refcheck=False)  # in place: ``buf`` is this function's own, nothing else refers to it
    return buf


def _read_npz(path: str, name: str):
    arrays = load_npz(path, max_bytes=MAX_DATA_BYTES)
    if set(arrays) != {"X", "y"}:
        raise ValueError(f"{name}: an .npz data file holds exactly the arrays X and y, this one {sorted(arrays)}")
    X, y = arrays["X"], arrays["y"]
    for key, a in (("X", X), ("y", y)):
        if a.dtype.kind not in "biuf":
            raise ValueError(f"{name}: {key} has dtype {a.dtype}; expected numbers (bool, integer or float)")
    if X.ndim != 2:
        raise ValueError(f"{name}: X must be 2-D (examples × features), got shape {X.shape}")
    if y.ndim not in (1, 2):
        raise ValueError(f"{name}: y must be 1-D labels or 2-D targets, got shape {y.shape}")
    if X.shape[0] != y.shape[0]:
        raise ValueError(f"{name}: X has {X.shape[0]} rows and y {y.shape[0]}; they must match")
    if X.size + y.size > MAX_CELLS:  # before X becomes float64 (8 × a bool or int8 array's bytes)
        raise ValueError(f"{name}: X {X.shape} and y {y.shape} hold {X.size + y.size} numbers; data files hold at "
                         f"most {MAX_CELLS}")
    if X.shape[1] < 1 or (y.ndim == 2 and y.shape[1] < 1):
        raise ValueError(f"{name}: X has shape {X.shape} and y {y.shape}; each needs at least one column")
    for key, a in (("X", X), ("y", y)):
        if a.dtype.kind == "f" and not np.all(np.isfinite(a)):
            where = tuple(int(i) for i in np.argwhere(~np.isfinite(a))[0])
            raise ValueError(f"{name}: {key}{list(where)} is {a[where]}; the data must be finite")
    return X.astype(np.float64), y


def load_data(path) -> tuple:
    """(X, y) of a ``.csv`` or ``.npz`` data file (module docs), on the host: X float64 (n, d), y (n,) or (n, k)
    as stored (a csv's label column as float64); ValueError (one line, naming the file) for a bad file."""
    path = os.fspath(path)
    name = os.path.basename(path) or path
    ext = os.path.splitext(path)[1].lower()
    if ext not in (".csv", ".npz"):
        raise ValueError(f"{name}: expected a .csv or .npz data file")
    if not os.path.exists(path):
        raise ValueError(f"{path}: No such file")
    if not os.path.isfile(path):
        raise ValueError(f"{path}: is not a regular file")
    size = os.path.getsize(path)
    if size == 0:
        raise ValueError(f"{name}: the file is empty")
    if size > MAX_DATA_BYTES:
        raise ValueError(f"{name}: {size} bytes; data files are read up to {MAX_DATA_BYTES} bytes "
                         f"({MAX_DATA_BYTES / 2 ** 20:g} MiB)")
    if ext == ".npz":
        return _read_npz(path, name)
    A = _read_csv(path, name)
    return A[:, :-1], A[:, -1]


def _targets(name: str, loss: str, y):
    """y as the loss takes it (host array) and the output size it needs at least / exactly."""
    if loss == "softmax":
        if y.ndim != 1:
            raise ValueError(f"{name}: softmax needs a vector of class labels, got y of shape {y.shape}")
        yf = y.astype(np.float64)
        bad = np.flatnonzero((yf != np.round(yf)) | (yf < 0) | (yf >= 2 ** 31))
        if bad.size:
            raise ValueError(f"{name}: labels must be integers 0, 1, 2, ... (below 2³¹) for softmax; example "
                             f"{int(bad[0]) + 1} has {y[bad[0]]}")
        return yf.astype(np.int64)
    Y = y.reshape(-1, 1) if y.ndim == 1 else y
    if loss == "bernoulli":
        bad = np.argwhere((Y != 0) & (Y != 1))
        if bad.size:
            i, j = (int(v) for v in bad[0])
            raise ValueError(f"{name}: Bernoulli targets must be 0 or 1; example {i + 1}, target {j + 1} has {Y[i, j]}")
    return Y.astype(np.float64)


def _parameters(sizes) -> int:
    """Weights and biases of an MLP of ``sizes``."""
    return sum((a + 1) * b for a, b in zip(sizes[:-1], sizes[1:]))


def _check_parameters(name: str, sizes, given: bool) -> list:
    count = _parameters(sizes)
    if count > MAX_PARAMETERS:
        what = "sizes" if given else f"{name}: the default sizes"
        raise ValueError(f"{what} {'-'.join(map(str, sizes))} give {count} parameters; a data problem's network has "
                         f"at most {MAX_PARAMETERS}" + ("" if given else " (fewer features, or smaller --sizes)"))
    return sizes


def _check_sizes(name: str, sizes, d: int, loss: str, Y) -> list:
    if sizes is None:
        if loss == "softmax":
            top = int(Y.max())
            if top >= MAX_CLASSES:
                raise ValueError(f"{name}: a softmax label of {top} (at most {MAX_CLASSES - 1} with the default "
                                 "sizes); is the last column the label? give sizes to allow more classes")
            return _check_parameters(name, [d, DEFAULT_HIDDEN, max(2, top + 1)], False)
        return _check_parameters(name, [d, DEFAULT_HIDDEN, Y.shape[1]], False)
    if isinstance(sizes, (str, bytes)) or not hasattr(sizes, "__iter__"):
        raise ValueError(f"sizes must be a list of layer widths, got {short_repr(sizes)}")
    sizes = list(sizes)
    if len(sizes) < 2 or not all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s >= 1
                                 for s in sizes):
        raise ValueError(f"sizes must list at least two positive integer layer widths, got {short_repr(sizes)}")
    sizes = [int(s) for s in sizes]
    if sizes[0] != d:
        raise ValueError(f"sizes: the first size must be the number of features, {d} in {name}, got {sizes[0]}")
    out = sizes[-1]
    if loss == "softmax":
        top = int(Y.max())
        if out < max(2, top + 1):
            raise ValueError(f"sizes: the last size {out} is too small for softmax on {name}: labels go up to "
                             f"{top}, so it must be at least {max(2, top + 1)}")
    elif out != Y.shape[1]:
        raise ValueError(f"sizes: the last size must be {Y.shape[1]}, the number of target columns of {name} for "
                         f"{loss}, got {out}")
    return _check_parameters(name, sizes, True)


def data_problem(path, sizes=None, activation="tanh", loss: str = "softmax", val_fraction: float = 0.2,
                 standardize: bool = True, split_seed: int = 0) -> NetworkProblem:
    """The ``NetworkProblem`` "data:<file name>" of the data file ``path`` (module docs: files, losses, default
    sizes, the split, standardisation). ``activation``: one name for every hidden layer, or one per hidden
    layer; ``val_fraction`` in [0, 1), 0 for no held-out split. ValueError (one line) for a bad file or
    argument, naming it."""
    if loss not in LOSS_NAMES:
        raise ValueError(f"loss must be one of {', '.join(LOSS_NAMES)}, got {loss!r}")
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float, np.floating, np.integer)) \
            or not 0 <= val_fraction < 1:  # also refuses NaN
        raise ValueError(f"val_fraction must be a number in [0, 1), got {short_repr(val_fraction)}")
    if not isinstance(standardize, (bool, np.bool_)):
        raise ValueError(f"standardize must be True or False, got {short_repr(standardize)}")
    if isinstance(split_seed, bool) or not isinstance(split_seed, (int, np.integer)) or not 0 <= split_seed <= MAX_SEED:
        raise ValueError(f"split_seed must be an integer in [0, 2⁶³ − 1], got {short_repr(split_seed)}")
    X, y = load_data(path)
    name = os.path.basename(os.fspath(path))
    n, d = X.shape
    if n < 2:
        raise ValueError(f"{name}: {_plural(n, 'example')}; at least 2 are needed")
    Y = _targets(name, loss, y)
    sizes = _check_sizes(name, sizes, d, loss, Y)
    model = MLP(sizes, activation)  # ValueError for an unknown activation or the wrong number of them
    n_val = math.floor(float(val_fraction) * n + 0.5)
    if val_fraction > 0 and n_val == 0:
        raise ValueError(f"val_fraction {val_fraction} of the {n} examples of {name} holds out none; "
                         "use a larger fraction, or 0 for no held-out split")
    if n_val >= n:
        raise ValueError(f"val_fraction {val_fraction} of the {n} examples of {name} leaves none to train on")
    order = rng(int(split_seed)).permutation(n)
    train, val = order[:n - n_val], order[n - n_val:]
    st = standardisation(X[train]) if standardize else None
    dt = default_dtype()

    def fit(raw, Z, part, what):
        """Z (standardised or raw values of ``raw``) in the dtype; ValueError naming the column when one is
        beyond its range (a held-out value far outside the training rows', or a float32 run's raw 1e39)."""
        with np.errstate(over="ignore"):  # a value beyond the dtype's range is refused just below
            Zd = Z.astype(dt)
        if not np.all(np.isfinite(Zd)):
            i, j = (int(v) for v in np.argwhere(~np.isfinite(Zd.reshape(len(Zd), -1)))[0])
            how = "standardised by the training rows' moments, it is" if what == "column" and st is not None \
                else "it is"
            raise ValueError(f"{name}: {what} {j + 1}: the {part} value {raw.reshape(len(raw), -1)[i, j]:.6g}: {how} "
                             f"{Z.reshape(len(Z), -1)[i, j]:.3g}, beyond the range of {np.dtype(dt).name}")
        return as_array(Zd, dt)

    def inputs(rows, part):
        with np.errstate(over="ignore", invalid="ignore"):  # checked by fit
            Z = st.apply(X[rows]) if st is not None else X[rows]
        return fit(X[rows], Z, part, "column")

    def targets(rows, part):
        return xp.asarray(Y[rows]) if loss == "softmax" else fit(Y[rows], Y[rows], part, "target column")

    held = (inputs(val, "held-out"), targets(val, "held-out")) if n_val else (None, None)
    acts = model.activations[:-1]
    description = (f"{name}: {n - n_val}×{d} training, {n_val} held out (split seed {split_seed}), "
                   f"{'standardised' if standardize else 'raw'} inputs, MLP {'-'.join(map(str, sizes))} "
                   f"{','.join(acts) or 'linear'}, {loss} loss")
    return NetworkProblem(data_name(path), model, LOSS_NAMES[loss]("mean"), inputs(train, "training"),
                          targets(train, "training"), description, *held)
