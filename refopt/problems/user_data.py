"""Your own data as a network problem: a ``.csv`` or ``.npz`` file, a seeded held-out split, an MLP and a loss.

Files (``load_data``), at most ``MAX_DATA_BYTES`` = 128 MiB on disk (and, for ``.npz``, of array data as its
headers declare, checked before anything is read):

* ``.csv``: one example per row, comma-separated numbers, the last column the label (or the regression
  target). The first row is a header when not every one of its cells is a number; blank lines at the end
  are ignored. Rows are counted as the file's lines from 1, columns from 1, in the error messages.
* ``.npz``: exactly the arrays ``X`` (n, d) and ``y``: (n,) labels, or (n, k) targets for the Gaussian and
  Bernoulli losses; bool, integer or float dtypes only. Read by ``serialize.load_npz``
  (``allow_pickle=False``, headers checked first): loading never runs code.

Every bad file is one ValueError line that names the file and what is wrong (for a csv, the row and column):
a missing or empty file, ragged rows, a cell that is not a number, NaN or ±inf, X not 2-D, X and y of
different row counts, fewer than 2 examples, labels that are not integers (softmax) or not 0/1 (Bernoulli)
or do not fit the network's output size.

``data_problem`` builds the ``NetworkProblem``. Losses (mean reduction): "softmax" (softmax cross-entropy;
integer labels 0 … C−1 need an output size C ≥ max label + 1, and at least 2), "bernoulli" (0/1 targets,
one output per target column), "gaussian" (real targets, one output per target column; unit variance).
Default sizes: [d, 32, C] with C = max(2, max label + 1) for softmax, [d, 32, k] for the others (k target
columns, 1 for a label vector). The split: the examples are permuted by ``backend.rng(split_seed)`` and the
last n_val = ⌊val_fraction · n + ½⌋ of the permutation are held out (not stratified), the rest train, in
permutation order (as ``datasets.digits``). Standardisation (on by default) maps each feature of both parts
with the training rows' mean and deviation (a constant feature maps to 0); targets are not scaled.
"""
from __future__ import annotations

import csv
import math
import os

import numpy as np

from ..backend import as_array, default_dtype, rng, xp
from ..nn import MLP, Bernoulli, Gaussian, SoftmaxCrossEntropy
from ..serialize import load_npz
from .datasets import _moments
from .registry import NetworkProblem

__all__ = ["load_data", "data_problem", "LOSS_NAMES", "MAX_DATA_BYTES", "MAX_CLASSES", "DEFAULT_HIDDEN"]

MAX_DATA_BYTES = 2 ** 27  # 128 MiB: a file on disk, and an .npz's declared array data
MAX_CLASSES = 10 ** 4     # default sizes: a softmax label above 9999 is refused (a target column taken for labels?)
DEFAULT_HIDDEN = 32       # the hidden width of the default sizes
MAX_SEED = 2 ** 63 - 1    # optim.base.MAX_SEED (not imported: optim lies above problems)
LOSS_NAMES = {"softmax": SoftmaxCrossEntropy, "gaussian": Gaussian, "bernoulli": Bernoulli}


def _number(text: str):
    """The float of a csv cell, or None when it is not a number ('nan' and 'inf' are numbers here: the
    finiteness check names them)."""
    try:
        return float(text)
    except ValueError:
        return None


def _read_csv(path: str, name: str):
    """(A, header): the numeric rows of the csv at ``path`` as a float64 array (n, columns)."""
    try:
        with open(path, encoding="utf-8-sig", newline="") as fh:
            rows = [(reader.line_num, row) for reader in [csv.reader(fh, strict=True)] for row in reader]
    except UnicodeDecodeError:
        raise ValueError(f"{name}: not a text file (not UTF-8)") from None
    except csv.Error as exc:
        raise ValueError(f"{name}: not a readable csv ({' '.join(str(exc).split())})") from None
    cells = [(line, [c.strip() for c in row]) for line, row in rows]
    while cells and not any(cells[-1][1]):  # blank lines at the end
        cells.pop()
    if not cells:
        raise ValueError(f"{name}: the file is empty")
    header = not all(_number(c) is not None for c in cells[0][1])
    width = len(cells[0][1])
    data = cells[1:] if header else cells
    if width < 2:
        raise ValueError(f"{name}: row {cells[0][0]} has {width} column; a csv needs feature columns and the "
                         "label as its last column")
    out = np.empty((len(data), width))
    for i, (line, row) in enumerate(data):
        if not any(row):
            raise ValueError(f"{name}: row {line} is empty")
        if len(row) != width:
            raise ValueError(f"{name}: row {line} has {len(row)} columns, row {cells[0][0]} has {width}")
        for j, text in enumerate(row):
            x = _number(text)
            if x is None:
                raise ValueError(f"{name}: row {line}, column {j + 1}: {text[:40]!r} is not a number")
            if not math.isfinite(x):
                raise ValueError(f"{name}: row {line}, column {j + 1}: {text[:40]!r} is not finite (NaN or inf)")
            out[i, j] = x
    if out.shape[0] == 0:
        raise ValueError(f"{name}: the file has a header row and no data rows")
    return out


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


def _check_sizes(name: str, sizes, d: int, loss: str, Y) -> list:
    if sizes is None:
        if loss == "softmax":
            top = int(Y.max())
            if top >= MAX_CLASSES:
                raise ValueError(f"{name}: a softmax label of {top} (at most {MAX_CLASSES - 1} with the default "
                                 "sizes); is the last column the label? give sizes to allow more classes")
            return [d, DEFAULT_HIDDEN, max(2, top + 1)]
        return [d, DEFAULT_HIDDEN, Y.shape[1]]
    if isinstance(sizes, (str, bytes)) or not hasattr(sizes, "__iter__"):
        raise ValueError(f"sizes must be a list of layer widths, got {sizes!r}")
    sizes = list(sizes)
    if len(sizes) < 2 or not all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s >= 1
                                 for s in sizes):
        raise ValueError(f"sizes must list at least two positive integer layer widths, got {sizes}")
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
    return sizes


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
        raise ValueError(f"val_fraction must be a number in [0, 1), got {val_fraction!r}")
    if not isinstance(standardize, (bool, np.bool_)):
        raise ValueError(f"standardize must be True or False, got {standardize!r}")
    if isinstance(split_seed, bool) or not isinstance(split_seed, (int, np.integer)) or not 0 <= split_seed <= MAX_SEED:
        raise ValueError(f"split_seed must be an integer in [0, 2⁶³ − 1], got {split_seed!r}")
    X, y = load_data(path)
    name = os.path.basename(os.fspath(path))
    n, d = X.shape
    if n < 2:
        raise ValueError(f"{name}: {n} example; at least 2 are needed")
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
    mu, sd = _moments(X[train]) if standardize else (np.zeros(d), np.ones(d))
    dt = default_dtype()

    def inputs(rows):
        return as_array((X[rows] - mu) / sd, dt)

    def targets(rows):
        return xp.asarray(Y[rows]) if loss == "softmax" else as_array(Y[rows], dt)

    held = (inputs(val), targets(val)) if n_val else (None, None)
    acts = model.activations[:-1]
    description = (f"{name}: {n - n_val}×{d} training, {n_val} held out (split seed {split_seed}), "
                   f"{'standardised' if standardize else 'raw'} inputs, MLP {'-'.join(map(str, sizes))} "
                   f"{','.join(acts) or 'linear'}, {loss} loss")
    return NetworkProblem(f"data:{name}", model, LOSS_NAMES[loss]("mean"), inputs(train), targets(train),
                          description, *held)
