"""Data sets: seeded synthetic ones, and scikit-learn's bundled handwritten digits (no download).

Each loader returns ``Dataset(X, y, num_classes, name, X_val, y_val)`` on the active backend; X is
standardised per feature (zero mean, unit variance over the training examples; the held-out examples,
when there are any, are scaled with the training examples' mean and deviation, so nothing about them
leaks into training) so that default step sizes transfer.

Standardisation (``standardisation(X)``, also the user's data's): a feature is constant when its largest and
smallest training values are equal; it gets deviation 1 and its value as mean, so it maps to exactly 0 (its
computed mean can be an ulp off the value, and its computed deviation ~1e-17 then blows held-out values up
to ~1e16). The moments are computed on each feature divided by the power of two within a factor 2 of its
largest magnitude, so that sums and squares of values up to the float64 maximum do not overflow; a power of
two scales exactly, so for every other feature the result is bit-identical to (X − mean) / deviation.

Held-out splits: ``digits()`` holds out a fixed 20 % (360 of 1797 examples, the last 360 of the
permutation ``rng(0).permutation(1797)``), the same on every machine and backend, so its validation
metrics compare across runs. ``synthetic_classification(n_val=...)`` draws its held-out examples from the
same generator after the training ones, so the training set does not depend on ``n_val``.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..backend import as_array, default_dtype, rng, xp

__all__ = ["Dataset", "Standardisation", "standardisation", "synthetic_classification", "synthetic_regression",
           "digits", "DATASETS", "load_dataset"]


class Dataset(NamedTuple):
    """A data set: inputs X, targets y, the number of classes (0 for regression) and its name."""

    X: object
    y: object
    num_classes: int  # 0 for regression
    name: str
    X_val: object = None  # held-out inputs (None: no held-out split)
    y_val: object = None


class Standardisation(NamedTuple):
    """Per-feature moments of training rows (host arrays of shape (d,)), in units of ``scale``: a feature x
    maps to (x / scale − mean) / deviation (module docs)."""

    scale: object      # the power of two 2^(e−1) ≤ the feature's largest training magnitude < 2^e (½ for zeros)
    mean: object       # the mean of x / scale (a constant feature: its value / scale)
    deviation: object  # the standard deviation of x / scale (a constant feature: 1 / scale)

    def apply(self, X):
        """The standardised rows of the host array ``X`` (n, d)."""
        return (X / self.scale - self.mean) / self.deviation


def standardisation(X) -> Standardisation:
    """The ``Standardisation`` of the training rows ``X`` (a host float64 array (n, d), n ≥ 1; module docs)."""
    X = np.asarray(X, dtype=np.float64)
    top = np.abs(X).max(axis=0)
    scale = np.ldexp(1.0, np.frexp(top)[1] - 1)  # 2^(e−1) ≤ top < 2^e (frexp: top = m·2^e, ½ ≤ m < 1): |x/scale| < 2
    Xs = X / scale
    mean, deviation = Xs.mean(axis=0), Xs.std(axis=0)
    constant = X.max(axis=0) == X.min(axis=0)
    mean[constant] = Xs[0, constant]
    deviation[constant] = 1.0 / scale[constant]
    return Standardisation(scale, mean, deviation)


def _standardise(X):
    return standardisation(X).apply(X)


def synthetic_classification(n: int = 512, d: int = 16, classes: int = 4, seed: int = 0, noise: float = 0.5,
                             n_val: int = 0):
    """Gaussian blobs around random class centres (seeded, host-side); ``n_val`` held-out examples are drawn
    after the ``n`` training ones from the same centres."""
    g = rng(seed)
    centres = g.standard_normal((classes, d)) * 2.0
    y = g.integers(0, classes, size=n)
    X = centres[y] + noise * g.standard_normal((n, d))
    st = standardisation(X)
    dt = default_dtype()
    if not n_val:
        return Dataset(as_array(st.apply(X), dt), xp.asarray(y.astype("int64")), classes, "synthetic")
    yv = g.integers(0, classes, size=n_val)
    Xv = centres[yv] + noise * g.standard_normal((n_val, d))
    return Dataset(as_array(st.apply(X), dt), xp.asarray(y.astype("int64")), classes, "synthetic",
                   as_array(st.apply(Xv), dt), xp.asarray(yv.astype("int64")))


def synthetic_regression(n: int = 256, d: int = 8, outputs: int = 2, seed: int = 0, noise: float = 0.1):
    """y = tanh(X W₁) W₂ + noise, a smooth target an MLP can fit."""
    g = rng(seed)
    X = as_array(g.standard_normal((n, d)), default_dtype())
    W1 = as_array(g.standard_normal((d, 16)) / d ** 0.5, default_dtype())
    W2 = as_array(g.standard_normal((16, outputs)) / 4.0, default_dtype())
    Y = xp.tanh(X @ W1) @ W2 + noise * as_array(g.standard_normal((n, outputs)), default_dtype())
    return Dataset(X, Y, 0, "synthetic_regression")


DIGITS_HELD_OUT = 360  # 20 % of the 1797 digits, held out by ``digits()`` (module docs)


def digits(held_out: bool = True):
    """scikit-learn's 8×8 handwritten digits (1797 examples, 64 features, 10 classes), standardised; with
    ``held_out`` (the default) split into 1437 training and 360 held-out examples (module docs)."""
    try:
        from sklearn.datasets import load_digits  # noqa: PLC0415 (optional: the 'scripts' extra)
    except ImportError as exc:
        raise RuntimeError("the digits data set needs scikit-learn: pip install 'refopt[scripts]'") from exc
    data = load_digits()
    X, y = data.data.astype("float64"), data.target.astype("int64")
    dt = default_dtype()
    if not held_out:
        return Dataset(as_array(_standardise(X), dt), xp.asarray(y), 10, "digits")
    order = rng(0).permutation(X.shape[0])
    train, val = order[:-DIGITS_HELD_OUT], order[-DIGITS_HELD_OUT:]
    st = standardisation(X[train])
    return Dataset(as_array(st.apply(X[train]), dt), xp.asarray(y[train]), 10, "digits",
                   as_array(st.apply(X[val]), dt), xp.asarray(y[val]))


DATASETS = {"digits": digits, "synthetic": synthetic_classification, "synthetic_regression": synthetic_regression}


def load_dataset(name: str, **kwargs) -> Dataset:
    """The data set ``name`` (``DATASETS`` lists them) built with ``kwargs``; ValueError for an unknown name."""
    if name not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; choose from {sorted(DATASETS)}")
    return DATASETS[name](**kwargs)
