"""Named problems for the command line and the comparison: networks on data sets, and test functions.

A problem gives initial parameters from a seed and oracles: the full-batch one, and one per mini-batch
(network problems only). ``PROBLEMS`` maps names to factories; ``make_problem(name)`` builds one.

A network problem's model is an MLP or a CNN (``refopt.nn.conv``); a CNN's oracle is a ``CNNOracle``, which
provides everything an ``Oracle`` does (K-FAC's layer statistics of conv layers included) except
"dense_layer_statistics", so the block-tridiagonal K-FAC and K-BFGS are refused when a run is set up, with
the capability and the reason named. Its images are stored
flattened, (N, C·H·W) in C order, as every ``Oracle`` takes its inputs; the CNN reads them as (N, C, H, W).
"""
from __future__ import annotations

from typing import Callable

from ..backend import xp
from ..nn import (CNN, MLP, AvgPool2d, Bernoulli, Conv2d, Dense, Flatten, Gaussian, SoftmaxCrossEntropy,
                  cnn_layer_statistics)
from ..oracle import Counts, FunctionOracle, Oracle, batch_digest
from .datasets import digits, synthetic_classification

__all__ = ["NetworkProblem", "FunctionProblem", "CNNOracle", "network_oracle", "PROBLEMS", "make_problem",
           "problem_names"]


class CNNOracle(Oracle):
    """The ``Oracle`` of a CNN: everything an ``Oracle`` gives (values, gradients, every curvature product,
    labels, the diagonal estimators, K-FAC's layer statistics with conv layers' patches and spatial gradients)
    but "dense_layer_statistics", so ``check_oracle`` refuses kfac_tridiag and K-BFGS by name."""

    provides = Oracle.provides - {"dense_layer_statistics"}

    def layer_stats(self, params, targets=None):
        """Loss, gradient, and per-layer statistics at the data labels or at ``targets``: a conv layer's patches
        and its output gradients at every location (``nn.conv.cnn_layer_statistics``)."""
        self.counts.nstats += 1
        return cnn_layer_statistics(self.model, self.loss, params, self.X, self.y if targets is None else targets)


def network_oracle(model, loss, X, y, counts: Counts | None = None) -> Oracle:
    """The oracle of ``model`` on (X, y): a ``CNNOracle`` for a CNN, an ``Oracle`` otherwise."""
    return (CNNOracle if isinstance(model, CNN) else Oracle)(model, loss, X, y, counts=counts)


class NetworkProblem:
    """An MLP or a CNN, a loss and a data set, with optional held-out examples ``X_val``, ``y_val`` (never trained
    on: ``oracle`` and ``batch_oracle`` see only ``X``, ``y``; ``validation_oracle`` sees only them)."""

    kind = "network"

    def __init__(self, name: str, model: MLP, loss, X, y, description: str = "", X_val=None, y_val=None):
        if (X_val is None) != (y_val is None):
            raise ValueError("X_val and y_val: give both (a held-out split) or neither")
        self.name, self.model, self.loss, self.X, self.y = name, model, loss, X, y
        self.X_val, self.y_val = X_val, y_val
        self.description = description

    @property
    def has_validation(self) -> bool:
        """Whether the problem holds out examples for validation metrics."""
        return self.X_val is not None

    def validation_oracle(self, counts: Counts | None = None) -> Oracle:
        """The ``Oracle`` of the held-out examples (ValueError when there are none)."""
        if self.X_val is None:
            raise ValueError(f"problem {self.name!r} has no held-out examples")
        return network_oracle(self.model, self.loss, self.X_val, self.y_val, counts=counts)

    def identity(self) -> dict:
        """What a checkpoint of a run on this problem must match (JSON-ready): the network's sizes, activations and
        initialisation (a CNN's whole architecture too, ``CNN.config``), the loss (its repr: class, reduction,
        variance) and a BLAKE2b digest (``oracle.batch_digest``) of the training and held-out arrays' shapes,
        dtypes and bytes."""
        held_out = (self.X_val, self.y_val) if self.has_validation else ("no held-out examples",)
        m = self.model
        ident = {"kind": self.kind, "sizes": list(m.sizes), "activations": list(m.activations), "init": m.init_name,
                 "init_scale": m.init_scale, "loss": repr(self.loss),
                 "data": batch_digest(self.X, self.y, "held out:", *held_out)}
        if isinstance(m, CNN):
            ident["cnn"] = m.config()
        return ident

    @property
    def num_examples(self) -> int:
        """The number of examples in the data set."""
        return int(self.X.shape[0])

    def init_params(self, seed: int):
        """The network's seeded initial parameters."""
        return self.model.init(seed)

    def oracle(self, counts: Counts | None = None) -> Oracle:
        """The full-batch ``Oracle``, sharing ``counts`` when given. Its batch token is the digest of the data
        (``Oracle.batch_token``), the same for every oracle on these data, so a resumed run's oracle matches
        the point cached in a checkpoint's state, and a problem of the same name on other data does not."""
        return network_oracle(self.model, self.loss, self.X, self.y, counts=counts)

    def batch_oracle(self, indices, counts: Counts | None = None) -> Oracle:
        """The ``Oracle`` of the examples at ``indices``, sharing ``counts`` when given."""
        idx = xp.asarray(indices)
        return network_oracle(self.model, self.loss, self.X[idx], self.y[idx], counts=counts)


class FunctionProblem:
    """A test function of a vector with known minimiser (see ``refopt.problems.functions``)."""

    kind = "function"

    def __init__(self, name: str, make: Callable, description: str = ""):
        self.name, self._make, self.description = name, make, description
        self._fn = None

    @property
    def fn(self):
        """The test function's ``Problem``, built on first use."""
        if self._fn is None:
            self._fn = self._make()
        return self._fn

    num_examples = 0

    def identity(self) -> dict:
        """What a checkpoint of a run on this problem must match: the function's name (no data to digest)."""
        return {"kind": self.kind, "name": self.name}

    def init_params(self, seed: int):
        """A copy of the standard start point x0 (the seed is not used)."""
        return self.fn.x0.copy()

    def oracle(self, counts: Counts | None = None) -> FunctionOracle:
        """A ``FunctionOracle`` with the analytic derivatives, sharing ``counts`` when given; its batch token
        is the problem's name, the same for every oracle of the problem in every process (a function has no
        data to hash), so a resumed run reuses the checkpoint's point as for ``NetworkProblem.oracle``."""
        fn = self.fn
        return FunctionOracle(fn.f, grad=fn.grad, hess=fn.hess, hvp=fn.hvp, counts=counts, batch_token=self.name)

    def batch_oracle(self, indices, counts=None):
        """Always a ValueError: a function of a vector has no mini-batches."""
        raise ValueError(f"problem {self.name!r} is a function of a vector: it has no mini-batches")


# The digits problems train on 1437 examples and hold out a fixed 360 (``datasets.digits``); the synthetic
# ones hold out 128 examples drawn from the same distribution after the training ones.
def _digits_mlp():
    d = digits()
    return NetworkProblem("digits_mlp", MLP([64, 32, 10], "tanh"), SoftmaxCrossEntropy("mean"), d.X, d.y,
                          "scikit-learn digits (1437×64 training, 360 held out, 10 classes), MLP 64-32-10 tanh, "
                          "softmax cross-entropy", d.X_val, d.y_val)


def _digits_logistic():
    d = digits()
    return NetworkProblem("digits_logistic", MLP([64, 10]), SoftmaxCrossEntropy("mean"), d.X, d.y,
                          "softmax (multinomial logistic) regression on the digits (1437 training, 360 held out)",
                          d.X_val, d.y_val)


def _digits_autoencoder():
    d = digits()
    return NetworkProblem("digits_autoencoder", MLP([64, 32, 8, 32, 64], "tanh"), Gaussian("mean"), d.X, d.X,
                          "deep autoencoder 64-32-8-32-64 (tanh) on the digits (1437 training, 360 held out), "
                          "Gaussian (squared-error) loss", d.X_val, d.X_val)


# The digits as 1×8×8 images: the same standardised pixels and held-out split as digits_mlp (the 64 features
# are the 8×8 images in row-major order, which the CNN reads as (N, 1, 8, 8)).
DIGITS_CNN_LAYERS = ("Conv2d(1, 8, 3, padding='same'), tanh, AvgPool2d(2), Conv2d(8, 16, 3, padding='same'), "
                     "tanh, AvgPool2d(2), Flatten(), Dense(64, 10)")


def digits_cnn_model() -> CNN:
    """The digits_cnn problem's network (``DIGITS_CNN_LAYERS``): 8×8 → 8@8×8 → 8@4×4 → 16@4×4 → 16@2×2 → 64
    → 10."""
    return CNN((1, 8, 8), [Conv2d(1, 8, 3, padding="same"), "tanh", AvgPool2d(2), Conv2d(8, 16, 3, padding="same"),
                           "tanh", AvgPool2d(2), Flatten(), Dense(64, 10)])


def _digits_cnn():
    d = digits()
    return NetworkProblem("digits_cnn", digits_cnn_model(), SoftmaxCrossEntropy("mean"), d.X, d.y,
                          "scikit-learn digits as 1×8×8 images (1437 training, 360 held out, 10 classes), CNN "
                          f"{DIGITS_CNN_LAYERS} (1,898 parameters), softmax cross-entropy", d.X_val, d.y_val)


def _synthetic_mlp():
    d = synthetic_classification(n=512, d=16, classes=4, seed=0, n_val=128)
    return NetworkProblem("synthetic_mlp", MLP([16, 32, 4], "tanh"), SoftmaxCrossEntropy("mean"), d.X, d.y,
                          "seeded Gaussian blobs (512×16 training, 128 held out, 4 classes), MLP 16-32-4 tanh",
                          d.X_val, d.y_val)


def _logistic():
    d = synthetic_classification(n=256, d=8, classes=2, seed=1, n_val=128)
    y = (d.y[:, None] == 1).astype(d.X.dtype)
    y_val = (d.y_val[:, None] == 1).astype(d.X.dtype)
    return NetworkProblem("logistic", MLP([8, 1]), Bernoulli("mean"), d.X, y,
                          "binary logistic regression on seeded data (256×8 training, 128 held out)", d.X_val, y_val)


PROBLEMS: dict[str, Callable] = {
    "digits_mlp": _digits_mlp,
    "digits_logistic": _digits_logistic,
    "digits_autoencoder": _digits_autoencoder,
    "digits_cnn": _digits_cnn,
    "synthetic_mlp": _synthetic_mlp,
    "logistic": _logistic,
}


def _function_problems() -> dict:
    try:
        from . import functions  # noqa: PLC0415 (test functions live in their own module)
    except ImportError:
        return {}
    registry = getattr(functions, "FUNCTIONS", {})
    return {name: (lambda n=name: FunctionProblem(n, registry[n])) for name in registry}


def problem_names() -> list[str]:
    """The names ``make_problem`` accepts: the network problems, then the test functions, each sorted."""
    return sorted(PROBLEMS) + sorted(_function_problems())


def make_problem(name: str):
    """Build the problem ``name`` (``problem_names()`` lists them)."""
    if name in PROBLEMS:
        return PROBLEMS[name]()
    functions = _function_problems()
    if name in functions:
        return functions[name]()
    raise ValueError(f"unknown problem {name!r}; choose from {', '.join(problem_names())}")
