"""Data sets: seeded synthetic ones, and scikit-learn's bundled handwritten digits (no download).

Each loader returns ``Dataset(X, y, num_classes, name)`` on the active backend; X is standardised per
feature (zero mean, unit variance over the training set) so that default step sizes transfer.
"""
from __future__ import annotations

from typing import NamedTuple

from ..backend import as_array, default_dtype, rng, xp

__all__ = ["Dataset", "synthetic_classification", "synthetic_regression", "digits", "DATASETS", "load_dataset"]


class Dataset(NamedTuple):
    """A data set: inputs X, targets y, the number of classes (0 for regression) and its name."""

    X: object
    y: object
    num_classes: int  # 0 for regression
    name: str


def _standardise(X):
    mu = X.mean(axis=0)
    sd = X.std(axis=0)
    sd[sd == 0] = 1.0
    return (X - mu) / sd


def synthetic_classification(n: int = 512, d: int = 16, classes: int = 4, seed: int = 0, noise: float = 0.5):
    """Gaussian blobs around random class centres (seeded, host-side)."""
    g = rng(seed)
    centres = g.standard_normal((classes, d)) * 2.0
    y = g.integers(0, classes, size=n)
    X = centres[y] + noise * g.standard_normal((n, d))
    return Dataset(as_array(_standardise(X), default_dtype()), xp.asarray(y.astype("int64")), classes, "synthetic")


def synthetic_regression(n: int = 256, d: int = 8, outputs: int = 2, seed: int = 0, noise: float = 0.1):
    """y = tanh(X W₁) W₂ + noise, a smooth target an MLP can fit."""
    g = rng(seed)
    X = as_array(g.standard_normal((n, d)), default_dtype())
    W1 = as_array(g.standard_normal((d, 16)) / d ** 0.5, default_dtype())
    W2 = as_array(g.standard_normal((16, outputs)) / 4.0, default_dtype())
    Y = xp.tanh(X @ W1) @ W2 + noise * as_array(g.standard_normal((n, outputs)), default_dtype())
    return Dataset(X, Y, 0, "synthetic_regression")


def digits():
    """scikit-learn's 8×8 handwritten digits (1797 examples, 64 features, 10 classes), standardised."""
    try:
        from sklearn.datasets import load_digits  # noqa: PLC0415 (optional: the 'scripts' extra)
    except ImportError as exc:
        raise RuntimeError("the digits data set needs scikit-learn: pip install 'refopt[scripts]'") from exc
    data = load_digits()
    X = _standardise(data.data.astype("float64"))
    return Dataset(as_array(X, default_dtype()), xp.asarray(data.target.astype("int64")), 10, "digits")


DATASETS = {"digits": digits, "synthetic": synthetic_classification, "synthetic_regression": synthetic_regression}


def load_dataset(name: str, **kwargs) -> Dataset:
    """The data set ``name`` (``DATASETS`` lists them) built with ``kwargs``; ValueError for an unknown name."""
    if name not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; choose from {sorted(DATASETS)}")
    return DATASETS[name](**kwargs)
