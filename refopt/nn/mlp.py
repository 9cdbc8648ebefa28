"""Multilayer perceptrons of dense layers, and the per-layer statistics K-FAC needs.

Layer l computes  s_l = a_{l-1} @ W_l + b_l,  a_l = φ_l(s_l),  with W_l of shape (fan_in, fan_out),
a_0 = X (batch, d_in) and the network output z = s_L (no activation on the last layer unless one is
asked for; the losses take logits / means); s_l is one ``autodiff.affine`` node. Parameters are a
list of dicts ``{"W": W_l, "b": b_l}``, which flatten (``refopt.tree``) to [vec(W_1), b_1, vec(W_2),
b_2, ...] with row-major vec.

Per-layer statistics. ``layer_statistics`` returns, for every layer and every example, the layer's
input a_{l-1} and g_l = ∂L/∂s_l, the gradient of the *reduced* loss L with respect to the
pre-activation. They come from the autodiff, not a second backprop: the forward pass adds a zero
perturbation e_l to each s_l and g_l = ∂L/∂e_l at e = 0. Then ∇W_l = a_{l-1}ᵀ g_l and ∇b_l = Σ_b g_l
exactly; with mean reduction a single example's own gradient is B·g_l (the 1/B of the mean is inside
g_l), with sum reduction it is g_l.
"""
from __future__ import annotations

import math
from typing import NamedTuple, Sequence

from .. import autodiff as ad
from ..backend import as_array, default_dtype, is_floating, rng, xp
from ..autodiff.core import getval

__all__ = ["MLP", "ACTIVATIONS", "LayerStats", "layer_statistics", "perturbed_statistics", "init_layer_params",
           "check_layer_params"]


def _identity(x):
    return x


ACTIVATIONS = {"tanh": ad.tanh, "relu": ad.relu, "sigmoid": ad.sigmoid, "softplus": ad.softplus,
               "identity": _identity}

_INITS = ("glorot", "he", "lecun", "normal")

def check_dtypes(params, X):
    """The value of ``X`` after checking that every W and b share one float dtype and ``X`` has it too
    (TypeError otherwise: mixing would silently promote a float32 model to float64). Runs on every forward
    pass of an MLP or a CNN: the dtypes are compared, a box reading its value's."""
    dtype = params[0]["W"].dtype
    mixed = any(p["W"].dtype != dtype or p["b"].dtype != dtype for p in params)
    if mixed or not is_floating(dtype):
        dtypes = {getval(p[k]).dtype for p in params for k in ("W", "b")}
        raise TypeError(f"params: expected every W and b in one dtype, float32 or float64, got "
                        f"{sorted(str(d) for d in dtypes)}")
    Xv = getval(X)
    if not hasattr(Xv, "dtype") or not is_floating(Xv.dtype):
        raise TypeError(f"X: expected a float32 or float64 array, got {getattr(Xv, 'dtype', type(Xv))}")
    if Xv.dtype != dtype:
        raise TypeError(f"X: dtype {Xv.dtype} differs from the parameters' {dtype}; convert one of them "
                        f"(e.g. as_array(X, dtype))")
    return Xv


def draw_weights(gen, init: str, shape, fan_in: int, fan_out: int, scale: float):
    """A weight array of ``shape`` drawn from ``gen`` by the scheme ``init`` (``MLP``'s docs) with the given fans
    (a conv kernel's count its receptive field, as PyTorch's)."""
    if init == "glorot":
        lim = math.sqrt(6.0 / (fan_in + fan_out))
        return gen.uniform(-lim, lim, size=shape)
    if init == "he":
        return gen.standard_normal(shape) * math.sqrt(2.0 / fan_in)
    if init == "lecun":
        return gen.standard_normal(shape) * math.sqrt(1.0 / fan_in)
    return gen.standard_normal(shape) * scale


def init_layer_params(seed, dtype, init: str, scale: float, layers) -> list[dict]:
    """Seeded {"W", "b"} per layer, ``layers`` = [(W's shape, b's shape, fan_in, fan_out), ...]: one host
    generator from ``seed`` draws each W in order (``draw_weights``), biases start at zero, all moved to the
    backend in ``dtype`` (default: the backend's), so every backend sees the same draws."""
    gen = rng(seed)
    dtype = dtype or default_dtype()
    if not is_floating(dtype):
        raise TypeError(f"dtype must be float32 or float64, got {dtype}")
    params = []
    for wshape, bshape, fan_in, fan_out in layers:
        W = draw_weights(gen, init, wshape, fan_in, fan_out, scale)
        params.append({"W": as_array(W, dtype), "b": as_array([0.0] * bshape[0], dtype)})
    return params


def check_layer_params(params, shapes) -> None:
    """ValueError unless ``params`` is one {"W", "b"} dict per (W's shape, b's shape) of ``shapes``."""
    if not isinstance(params, (list, tuple)) or len(params) != len(shapes):
        raise ValueError(f"params: expected a list of {len(shapes)} layer dicts with keys 'W' and 'b'")
    for l, (p, (wshape, bshape)) in enumerate(zip(params, shapes)):
        if not isinstance(p, dict) or len(p) != 2 or "W" not in p or "b" not in p:
            raise ValueError(f"params[{l}]: expected a dict with keys 'W' and 'b'")
        if tuple(ad.shape_of(p["W"])) != wshape or tuple(ad.shape_of(p["b"])) != bshape:
            raise ValueError(f"params[{l}]: expected W of shape {wshape} and b of shape {bshape}, got "
                             f"{tuple(ad.shape_of(p['W']))} and {tuple(ad.shape_of(p['b']))}")


class MLP:
    """Dense network with layer sizes ``sizes = [d_in, h_1, ..., d_out]``.

    ``activation`` is the hidden activation (one name, or one per hidden layer);
    ``output_activation`` defaults to identity (losses take logits). ``init``: "glorot"
    (uniform ±sqrt(6/(fan_in+fan_out)), the default), "he" (normal, std sqrt(2/fan_in)), "lecun"
    (normal, std sqrt(1/fan_in)) or "normal" (std ``init_scale``); biases start at zero.
    """

    def __init__(self, sizes: Sequence[int], activation="tanh", output_activation="identity",
                 init: str = "glorot", init_scale: float = 0.01):
        sizes = [int(s) for s in sizes]
        if len(sizes) < 2 or any(s < 1 for s in sizes):
            raise ValueError(f"sizes must list at least two positive layer widths, got {sizes}")
        hidden = len(sizes) - 2
        acts = [activation] * hidden if isinstance(activation, str) else list(activation)
        if len(acts) != hidden:
            raise ValueError(f"activation: expected {hidden} names (one per hidden layer), got {len(acts)}")
        for a in acts + [output_activation]:
            if a not in ACTIVATIONS:
                raise ValueError(f"unknown activation {a!r}; choose from {sorted(ACTIVATIONS)}")
        if init not in _INITS:
            raise ValueError(f"init must be one of {_INITS}, got {init!r}")
        self.sizes = sizes
        self.activations = acts + [output_activation]
        self.init_name = init
        self.init_scale = float(init_scale)

    def __repr__(self):
        return f"MLP({self.sizes}, activations={self.activations})"

    @property
    def num_layers(self) -> int:
        """L, the number of dense layers (len(sizes) − 1)."""
        return len(self.sizes) - 1

    @property
    def output_size(self) -> int:
        """The number of network outputs per example (``sizes[-1]``)."""
        return self.sizes[-1]

    @property
    def num_params(self) -> int:
        """The number of parameters, Σ_l (fan_in_l + 1) · fan_out_l (weights and biases)."""
        return sum((i + 1) * o for i, o in zip(self.sizes[:-1], self.sizes[1:]))

    def parameter_shapes(self) -> list:
        """(W's shape, b's shape) of each layer: (fan_in, fan_out), (fan_out,)."""
        return [((fan_in, fan_out), (fan_out,)) for fan_in, fan_out in zip(self.sizes[:-1], self.sizes[1:])]

    def init(self, seed, dtype=None) -> list[dict]:
        """Seeded initial parameters (drawn on the host, so identical on every backend)."""
        return init_layer_params(seed, dtype, self.init_name, self.init_scale,
                                 [(w, b) + w for w, b in self.parameter_shapes()])  # W is (fan_in, fan_out)

    def check(self, params, X) -> None:
        """Raise ValueError/TypeError when ``params`` or ``X`` do not fit this network."""
        sizes = self.sizes
        check_layer_params(params, self.parameter_shapes())
        Xv = check_dtypes(params, X)
        if Xv.ndim != 2 or Xv.shape[1] != sizes[0]:
            raise ValueError(f"X: expected shape (batch, {sizes[0]}), got {tuple(Xv.shape)}")

    def apply(self, params, X, perturbations=None, record_inputs=None):
        """Network output z (batch, d_out). ``perturbations[l]`` is added to s_l (see module docs);
        ``record_inputs``, a list, receives each layer's input a_{l-1}."""
        self.check(params, X)
        a = X
        for l, (p, act) in enumerate(zip(params, self.activations)):
            if record_inputs is not None:
                record_inputs.append(a)
            s = ad.affine(a, p["W"], p["b"])  # a @ W + b, one node
            if perturbations is not None:
                s = ad.add(s, perturbations[l])
            a = ACTIVATIONS[act](s)
        return a

    __call__ = apply


class LayerStats(NamedTuple):
    """Per-layer statistics at one point: loss value, gradient, a_{l-1} and g_l = ∂L/∂s_l per example."""

    loss: float
    grad: list
    inputs: list        # a_{l-1}, shape (batch, fan_in), no trailing 1
    output_grads: list  # g_l, shape (batch, fan_out), gradient of the reduced loss


def layer_statistics(model: MLP, loss, params, X, targets) -> LayerStats:
    """Loss, gradient and the per-layer (a_{l-1}, g_l) in one forward and one reverse pass."""
    B = X.shape[0]
    return perturbed_statistics(model, loss, params, X, targets, [(B, n) for n in model.sizes[1:]])


def perturbed_statistics(model, loss, params, X, targets, shapes) -> LayerStats:
    """``LayerStats`` of any model whose ``apply`` takes ``perturbations`` and ``record_inputs``: zero
    perturbations of the given ``shapes`` added to the pre-activations, g_l = ∂L/∂e_l at e = 0 (module docs)."""
    zeros = [xp.zeros(shape, dtype=getval(params[0]["W"]).dtype) for shape in shapes]
    inputs: list = []

    def f(pe):
        p, e = pe
        inputs.clear()
        return loss(model.apply(p, X, perturbations=e, record_inputs=inputs), targets)

    value, (g_params, g_s) = ad.value_and_grad(f)((params, zeros))
    return LayerStats(float(value), g_params, [getval(a) for a in inputs], list(g_s))
