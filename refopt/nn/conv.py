"""Convolutional networks: Conv2d, pooling, flatten and dense layers, the ``CNN`` model, its per-layer statistics.

Layouts are PyTorch's: images NCHW, kernels OIHW (O, C, kh, kw), conv biases (O,); ``autodiff.conv2d``
gives the conversions from JAX/flax's NHWC and HWIO. A CNN takes X as images (N, C, H, W) or as the same
images flattened in C order, (N, C·H·W), which is how a problem stores them (an ``Oracle`` takes a
(batch, features) matrix). Dense layers are the MLP's, s = a @ W + b with W of shape (fan_in, fan_out).

A conv layer l unfolds its input into patches P_l (N, L, K), L = Ho·Wo output locations in row-major order
and K = C·kh·kw entries in (c, i, j) order (``autodiff.unfold``), and applies one dense map at every
location: s_l = P_l W̄_lᵀ + b_l, shape (N, L, O), with W̄_l = W_l.reshape(O, K); the layer's output is s_l
in NCHW, (N, O, Ho, Wo). Parameters are a list of dicts {"W": W_l, "b": b_l}, one per conv or dense layer
in order (activations, pooling and flatten have none).

Initialisation: the MLP's names with fan_in = C·kh·kw and fan_out = O·kh·kw for a conv layer (PyTorch's
fans): "glorot" uniform ±√(6/(fan_in + fan_out)) (the default), "he" normal with std √(2/fan_in), "lecun"
std √(1/fan_in), "normal" std ``init_scale``; biases start at zero; drawn on the host from the seed.

Per-layer statistics (``cnn_layer_statistics``), as ``mlp.layer_statistics`` obtains them for dense layers:
the forward pass adds a zero perturbation e_l to each s_l, in the (N, L, O) layout for a conv layer and
(N, fan_out) for a dense one, and g_l = ∂L/∂e_l at e = 0 is the gradient of the reduced loss with respect to
the pre-activation at every location. The inputs are the patches P_l (N, L, K) (a dense layer's: a_{l−1},
(N, fan_in)). Then ∇W̄_l = Σ_{n,p} g_l[n, p] P_l[n, p]ᵀ, that is (Σ_n P_l[n]ᵀ g_l[n])ᵀ reshaped to OIHW, and
∇b_l = Σ_{n,p} g_l[n, p].

For code written for MLPs: ``sizes`` = [C·H·W, n_1, ..., n_L] with n_l the number of pre-activations per
example of parametrised layer l (L·O for a conv layer), and ``activations[l]`` the activation that directly
follows layer l ("identity" if none); ``config()`` describes the whole architecture. A conv layer refuses a
perturbation of the dense shape (B, n_l), so a statistics pass written for dense layers fails with a clear
error instead of computing something else (K-FAC's pass, ``curvature.kronecker``, uses ``perturbation_shapes``).
"""
from __future__ import annotations

import math
import numbers
from typing import Sequence

from .. import autodiff as ad
from ..serialize import short_repr as _shown  # a file's value can be long or a huge integer
from .mlp import (_INITS, ACTIVATIONS, LayerStats, check_dtypes, check_layer_params, init_layer_params,
                  perturbed_statistics)

__all__ = ["Conv2d", "Dense", "AvgPool2d", "MaxPool2d", "Flatten", "CNN", "cnn_layer_statistics", "cnn_from_config",
           "MAX_CONFIG_LAYERS"]

_LARGE = (1 << 30, 1 << 30)  # an input size at which only the arguments themselves can be wrong


def _count(value, name: str, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{what}: {name} must be a positive integer, got {value!r}"[:200])
    return int(value)


class Conv2d:
    """A 2-D convolution layer (PyTorch's nn.Conv2d with bias, groups=1): ``in_channels`` C → ``out_channels`` O,
    kernel (O, C, kh, kw); ``stride``, ``padding`` (an integer, a pair, "same" or "valid") and ``dilation`` as in
    ``autodiff.conv_geometry``."""

    kind = "conv"

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1):
        self.in_channels = _count(in_channels, "in_channels", "Conv2d")
        self.out_channels = _count(out_channels, "out_channels", "Conv2d")
        if isinstance(groups, bool) or not isinstance(groups, numbers.Integral) or groups != 1:
            raise ValueError(f"Conv2d: groups must be 1 (grouped convolutions are not supported), got {groups!r}")
        geom = ad.conv_geometry(_LARGE, kernel_size, stride, padding, dilation, "Conv2d")  # checks the arguments
        self.kernel_size, self.stride, self.dilation = geom.kernel, geom.stride, geom.dilation
        self.padding = padding if isinstance(padding, str) else (geom.padding[0], geom.padding[2])

    def geometry(self, size, what: str = "Conv2d"):
        """The layer's ``autodiff.ConvGeometry`` on an input of spatial size (H, W)."""
        return ad.conv_geometry(size, self.kernel_size, self.stride, self.padding, self.dilation, what)

    def config(self) -> dict:
        """The layer as a JSON-ready dict."""
        return {"layer": "Conv2d", "in_channels": self.in_channels, "out_channels": self.out_channels,
                "kernel_size": list(self.kernel_size), "stride": list(self.stride),
                "padding": self.padding if isinstance(self.padding, str) else list(self.padding),
                "dilation": list(self.dilation)}

    def __repr__(self):
        return (f"Conv2d({self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding!r}, dilation={self.dilation})")


class Dense:
    """A dense layer s = a @ W + b with W of shape (``in_features``, ``out_features``), as the MLP's layers."""

    kind = "dense"

    def __init__(self, in_features, out_features):
        self.in_features = _count(in_features, "in_features", "Dense")
        self.out_features = _count(out_features, "out_features", "Dense")

    def config(self) -> dict:
        """The layer as a JSON-ready dict."""
        return {"layer": "Dense", "in_features": self.in_features, "out_features": self.out_features}

    def __repr__(self):
        return f"Dense({self.in_features}, {self.out_features})"


class _Pool:
    """Pooling over windows of each channel; ``stride`` None means the kernel size, as in PyTorch."""

    name = ""
    kind = "pool"

    def __init__(self, kernel_size, stride=None, padding=0, dilation=1):
        geom = ad.conv_geometry(_LARGE, kernel_size, kernel_size if stride is None else stride, padding, dilation,
                                self.name, pool=True)  # checks the arguments
        self.kernel_size, self.stride, self.dilation = geom.kernel, geom.stride, geom.dilation
        self.padding = (geom.padding[0], geom.padding[2])

    def geometry(self, size, what: str = ""):
        """The window's ``autodiff.ConvGeometry`` on an input of spatial size (H, W)."""
        return ad.conv_geometry(size, self.kernel_size, self.stride, self.padding, self.dilation, what or self.name,
                                pool=True)

    def config(self) -> dict:
        """The layer as a JSON-ready dict."""
        return {"layer": self.name, "kernel_size": list(self.kernel_size), "stride": list(self.stride),
                "padding": list(self.padding), "dilation": list(self.dilation)}


class AvgPool2d(_Pool):
    """Average pooling (``autodiff.avg_pool2d``: PyTorch's defaults, zero padding counted in the mean)."""

    name = "AvgPool2d"

    def __init__(self, kernel_size, stride=None, padding=0):
        super().__init__(kernel_size, stride, padding)

    def __call__(self, a):
        """The pooled batch (N, C, Ho, Wo)."""
        return ad.avg_pool2d(a, self.kernel_size, self.stride, self.padding)

    def config(self) -> dict:
        """The layer as a JSON-ready dict (no dilation: average pooling has none, the constructor takes none)."""
        out = super().config()
        del out["dilation"]
        return out

    def __repr__(self):
        return f"AvgPool2d(kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding})"


class MaxPool2d(_Pool):
    """Max pooling (``autodiff.max_pool2d``: the first maximum of a window, in row-major order, takes its
    cotangent)."""

    name = "MaxPool2d"

    def __call__(self, a):
        """The pooled batch (N, C, Ho, Wo)."""
        return ad.max_pool2d(a, self.kernel_size, self.stride, self.padding, self.dilation)

    def __repr__(self):
        return (f"MaxPool2d(kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
                f"dilation={self.dilation})")


class Flatten:
    """(N, C, H, W) → (N, C·H·W) in C order (``autodiff.flatten``; torch.nn.Flatten() on NCHW)."""

    kind = "flatten"

    def config(self) -> dict:
        """The layer as a JSON-ready dict."""
        return {"layer": "Flatten"}

    def __repr__(self):
        return "Flatten()"


class CNN:
    """A convolutional network on images of ``input_shape`` (C, H, W): ``layers`` in order, each a ``Conv2d``,
    ``Dense``, ``AvgPool2d``, ``MaxPool2d``, ``Flatten`` or an activation name of ``mlp.ACTIVATIONS``.

    Shapes are inferred and checked here (channels, kernels against the padded input, Flatten before Dense);
    the network must end with a vector output, the logits of the losses. ``init`` and ``init_scale``: see the
    module docs. Example, the ``digits_cnn`` problem's network:
    ``CNN((1, 8, 8), [Conv2d(1, 8, 3, padding="same"), "tanh", AvgPool2d(2), Conv2d(8, 16, 3, padding="same"),
    "tanh", AvgPool2d(2), Flatten(), Dense(64, 10)])``.
    """

    def __init__(self, input_shape: Sequence[int], layers: Sequence, init: str = "glorot", init_scale: float = 0.01):
        if not isinstance(input_shape, (tuple, list)) or len(input_shape) != 3:
            raise ValueError(f"input_shape must be (C, H, W), got {input_shape!r}"[:200])
        shape = tuple(_count(v, "input_shape", "CNN") for v in input_shape)
        if isinstance(layers, (str, bytes)) or not isinstance(layers, Sequence) or not layers:
            raise ValueError("layers: expected a non-empty list of layers and activation names")
        if init not in _INITS:
            raise ValueError(f"init must be one of {_INITS}, got {init!r}")
        self.input_shape, self.layers = shape, tuple(layers)
        self.init_name, self.init_scale = init, float(init_scale)
        self._plan = []      # (layer, geometry or None, output shape) per layer
        param_layers, sizes, activations = [], [math.prod(shape)], []
        for i, layer in enumerate(self.layers):
            where, geom = f"layers[{i}]", None
            if isinstance(layer, str):
                if layer not in ACTIVATIONS:
                    raise ValueError(f"{where}: unknown activation {layer!r}; choose from {sorted(ACTIVATIONS)}")
                if self._plan and getattr(self._plan[-1][0], "kind", None) in ("conv", "dense") and \
                        activations[-1] == "identity":
                    activations[-1] = layer
                out = shape
            elif isinstance(layer, (Conv2d, _Pool)):
                if len(shape) != 3:
                    raise ValueError(f"{where}: {type(layer).__name__} needs images (C, H, W), got a vector of "
                                     f"{shape[0]} (after Flatten or Dense)")
                if isinstance(layer, Conv2d) and shape[0] != layer.in_channels:
                    raise ValueError(f"{where}: Conv2d expects {layer.in_channels} input channels, got {shape[0]} "
                                     f"(its input is {shape})")
                geom = layer.geometry(shape[1:], f"{where} ({type(layer).__name__})")
                out = ((layer.out_channels if isinstance(layer, Conv2d) else shape[0]),) + tuple(geom.output)
            elif isinstance(layer, Flatten):
                out = (math.prod(shape),)
            elif isinstance(layer, Dense):
                if len(shape) != 1:
                    raise ValueError(f"{where}: Dense needs a vector input, got images {shape}; "
                                     "put Flatten() before it")
                if shape[0] != layer.in_features:
                    raise ValueError(f"{where}: Dense expects {layer.in_features} input features, got {shape[0]}")
                out = (layer.out_features,)
            else:
                raise ValueError(f"{where}: expected a Conv2d, Dense, AvgPool2d, MaxPool2d, Flatten or an activation "
                                 f"name, got {layer!r}"[:200])
            if isinstance(layer, (Conv2d, Dense)):
                param_layers.append(i)
                sizes.append(math.prod(out))
                activations.append("identity")
            self._plan.append((layer, geom, out))
            shape = out
        if len(shape) != 1:
            raise ValueError(f"layers: the network must end with a vector output (logits), got images {shape}; "
                             "add Flatten()")
        if not param_layers:
            raise ValueError("layers: the network needs at least one Conv2d or Dense layer")
        self.sizes, self.activations, self._param_layers = sizes, activations, param_layers

    def __repr__(self):
        return f"CNN({self.input_shape}, [{', '.join(repr(layer) for layer in self.layers)}])"

    @property
    def num_layers(self) -> int:
        """L, the number of parametrised (conv and dense) layers."""
        return len(self._param_layers)

    @property
    def layer_kinds(self) -> list:
        """"conv" or "dense" for each parametrised layer."""
        return [self.layers[i].kind for i in self._param_layers]

    @property
    def output_size(self) -> int:
        """The number of network outputs per example (``sizes[-1]``)."""
        return self.sizes[-1]

    @property
    def shapes(self) -> list:
        """The output shape of each layer for one example ((C, H, W) or (d,))."""
        return [out for _, _, out in self._plan]

    def parameter_shapes(self) -> list:
        """(W's shape, b's shape) of each parametrised layer: (O, C, kh, kw), (O,) or (fan_in, fan_out), (fan_out,)."""
        out = []
        for i in self._param_layers:
            layer = self.layers[i]
            if layer.kind == "conv":
                out.append(((layer.out_channels, layer.in_channels) + layer.kernel_size, (layer.out_channels,)))
            else:
                out.append(((layer.in_features, layer.out_features), (layer.out_features,)))
        return out

    @property
    def num_params(self) -> int:
        """The number of parameters (weights and biases)."""
        return sum(math.prod(w) + math.prod(b) for w, b in self.parameter_shapes())

    def perturbation_shapes(self, batch: int) -> list:
        """The shape of each parametrised layer's pre-activation s_l for ``batch`` examples: (batch, L, O) for a
        conv layer (locations × channels), (batch, fan_out) for a dense one; what ``apply``'s perturbations are."""
        out = []
        for i in self._param_layers:
            layer, geom, _ = self._plan[i]
            if layer.kind == "conv":
                out.append((batch, geom.output[0] * geom.output[1], layer.out_channels))
            else:
                out.append((batch, layer.out_features))
        return out

    @property
    def entries_per_example(self) -> int:
        """An upper estimate of the array entries one example's forward pass allocates: every layer's output
        and, for a conv or pooling layer, its zero-padded input C·Hp·Wp and its unfolded windows (a conv layer's
        patches L·K twice, im2col's block copy and its transposed copy; a pooling's C·L·kh·kw windows three
        times, with max pooling's mask and selection), whether or not the windows tile the input. What a caller
        that reads an architecture from a file caps before running it (the trace loader's MAX_TRACE_ENTRIES)."""
        total, shape = math.prod(self.input_shape), self.input_shape
        for layer, geom, out in self._plan:
            total += math.prod(out)
            if geom is not None:   # conv and pooling layers
                top, bottom, left, right = geom.padding
                total += shape[0] * (geom.input[0] + top + bottom) * (geom.input[1] + left + right)
                windows = geom.output[0] * geom.output[1] * shape[0] * math.prod(geom.kernel)
                total += 2 * windows if layer.kind == "conv" else 3 * windows
            shape = out
        return total

    def config(self) -> dict:
        """The architecture as a JSON-ready dict (what a checkpoint's problem identity records and what
        ``cnn_from_config`` reads back)."""
        return {"input_shape": list(self.input_shape),
                "layers": [layer if isinstance(layer, str) else layer.config() for layer in self.layers],
                "init": self.init_name, "init_scale": self.init_scale}

    def init(self, seed, dtype=None) -> list[dict]:
        """Seeded initial parameters (drawn on the host, so identical on every backend)."""
        layers = []
        for wshape, bshape in self.parameter_shapes():
            if len(wshape) == 4:   # PyTorch's fans of a conv kernel: channels × receptive field
                receptive = wshape[2] * wshape[3]
                layers.append((wshape, bshape, wshape[1] * receptive, wshape[0] * receptive))
            else:
                layers.append((wshape, bshape) + wshape)
        return init_layer_params(seed, dtype, self.init_name, self.init_scale, layers)

    def check(self, params, X) -> None:
        """Raise ValueError/TypeError when ``params`` or ``X`` do not fit this network."""
        check_layer_params(params, self.parameter_shapes())
        Xv = check_dtypes(params, X)
        flat = math.prod(self.input_shape)
        if not ((Xv.ndim == 4 and tuple(Xv.shape[1:]) == self.input_shape) or (Xv.ndim == 2 and Xv.shape[1] == flat)):
            raise ValueError(f"X: expected images of shape (batch, {', '.join(map(str, self.input_shape))}) or "
                             f"(batch, {flat}) flattened, got {tuple(Xv.shape)}")

    def _check_perturbations(self, perturbations, batch: int) -> None:
        expected = self.perturbation_shapes(batch)
        if not isinstance(perturbations, (list, tuple)) or len(perturbations) != len(expected):
            raise ValueError(f"perturbations: expected a list of {len(expected)} arrays, one per conv or dense layer")
        for l, (e, shape) in enumerate(zip(perturbations, expected)):
            got = tuple(ad.shape_of(e))
            if got != shape:
                hint = ("; a conv layer's statistics are per location: build the perturbations from "
                        "perturbation_shapes (as cnn_layer_statistics and K-FAC's statistics pass do)"
                        if len(shape) == 3 and got == (batch, self.sizes[l + 1]) else "")
                raise ValueError(f"perturbations[{l}]: expected shape {shape} (batch, locations, channels of the "
                                 f"convolution's pre-activation), got {got}{hint}" if len(shape) == 3 else
                                 f"perturbations[{l}]: expected shape {shape}, got {got}")

    def apply(self, params, X, perturbations=None, record_inputs=None):
        """Network output z (batch, d_out). ``perturbations[l]`` is added to s_l in the layout of
        ``perturbation_shapes``; ``record_inputs``, a list, receives each parametrised layer's input: the
        patches (N, L, K) of a conv layer, a_{l−1} (N, fan_in) of a dense one (module docs)."""
        self.check(params, X)
        N = ad.shape_of(X)[0]
        if perturbations is not None:
            self._check_perturbations(perturbations, N)
        a = X if len(ad.shape_of(X)) == 4 else ad.reshape(X, (N,) + self.input_shape)
        l = 0
        for layer, geom, out in self._plan:
            if isinstance(layer, str):
                a = ACTIVATIONS[layer](a)
            elif layer.kind == "conv":
                patches, s = ad.conv2d_locations(a, params[l]["W"], params[l]["b"], geom)  # (N, L, K), (N, L, O)
                if record_inputs is not None:
                    record_inputs.append(patches)
                if perturbations is not None:
                    s = ad.add(s, perturbations[l])
                a = ad.locations_to_nchw(s, geom)
                l += 1
            elif layer.kind == "dense":
                if record_inputs is not None:
                    record_inputs.append(a)
                a = ad.affine(a, params[l]["W"], params[l]["b"])
                if perturbations is not None:
                    a = ad.add(a, perturbations[l])
                l += 1
            elif layer.kind == "pool":
                a = layer(a)
            else:
                a = ad.flatten(a)
        return a

    __call__ = apply


def cnn_layer_statistics(model: CNN, loss, params, X, targets) -> LayerStats:
    """Loss, gradient and the per-layer (inputs, g_l) of a CNN in one forward and one reverse pass: for a conv
    layer the patches (N, L, K) and g_l (N, L, O) at every location, for a dense layer a_{l−1} and g_l as
    ``mlp.layer_statistics`` (module docs)."""
    return perturbed_statistics(model, loss, params, X, targets, model.perturbation_shapes(ad.shape_of(X)[0]))


MAX_CONFIG_LAYERS = 256  # cap on the layers of an architecture read by ``cnn_from_config``
MAX_CONFIG_INT = 1 << 31  # cap on every integer of such an architecture (sizes, kernels, strides, padding)
# The keys each layer's config may hold besides "layer" (``config()``), and the constructor that takes them.
_CONFIG_LAYERS = {"Conv2d": (Conv2d, ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation")),
                  "Dense": (Dense, ("in_features", "out_features")),
                  "AvgPool2d": (AvgPool2d, ("kernel_size", "stride", "padding")),
                  "MaxPool2d": (MaxPool2d, ("kernel_size", "stride", "padding", "dilation")),
                  "Flatten": (Flatten, ())}


def _config_int(v) -> bool:
    """An integer of a config: a (non-bool) int in [0, MAX_CONFIG_INT] (the layers refuse 0 where it is wrong)."""
    return isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= MAX_CONFIG_INT


def _config_layer(entry, where: str):
    if isinstance(entry, str):
        return entry  # an activation name: CNN checks it
    name = entry.get("layer") if isinstance(entry, dict) else None
    if not isinstance(name, str) or name not in _CONFIG_LAYERS:
        raise ValueError(f"{where}: expected an activation name or a dict whose 'layer' is one of "
                         f"{sorted(_CONFIG_LAYERS)}, got {_shown(entry)}")
    cls, keys = _CONFIG_LAYERS[name]
    args = {k: v for k, v in entry.items() if k != "layer"}
    unknown = sorted(map(str, set(args) - set(keys)))
    if unknown:
        raise ValueError(f"{where} ({name}): unknown key{'s' if len(unknown) > 1 else ''} "
                         f"{', '.join(map(repr, unknown))}; a {name} takes {', '.join(keys) or 'none'}"[:240])
    for k, v in args.items():  # JSON gives lists for pairs; only integers, pairs of them and padding names pass
        ok = (_config_int(v) or (isinstance(v, list) and len(v) == 2 and all(_config_int(i) for i in v))
              or (k == "padding" and v in ("same", "valid")))
        if not ok:
            names = " (or 'same' / 'valid')" if k == "padding" else ""
            raise ValueError(f"{where} ({name}): {k} must be an integer in [0, 2³¹] or a pair of them{names}, "
                             f"got {_shown(v)}")
    try:
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in args.items()})
    except ValueError as exc:   # the constructors' own checks (a stride of 0, ...), named by position
        raise ValueError(f"{where}: {exc}") from None


def cnn_from_config(config) -> CNN:
    """The ``CNN`` that ``config`` describes, in the form ``CNN.config()`` writes: {"input_shape": [C, H, W],
    "layers": [activation names and {"layer": "Conv2d", "in_channels": ..., ...} dicts], "init", "init_scale"}.
    Everything is checked (known layer names and keys only, integers in [0, ``MAX_CONFIG_INT``] where integers
    go, at most ``MAX_CONFIG_LAYERS`` layers, the shapes as ``CNN`` checks them); ValueError, one short line,
    names the first bad entry (``layers[i]``).
    Nothing is evaluated: a config read from a file can only describe a network."""
    if not isinstance(config, dict):
        raise ValueError(f"a CNN config must be a dict with 'input_shape' and 'layers', got {type(config).__name__}")
    unknown = sorted(map(str, set(config) - {"input_shape", "layers", "init", "init_scale"}))
    if unknown:
        raise ValueError(f"a CNN config takes input_shape, layers, init and init_scale, not "
                         f"{', '.join(map(repr, unknown))}"[:240])
    for key in ("input_shape", "layers"):
        if key not in config:
            raise ValueError(f"a CNN config needs {key!r}")
    shape, layers = config["input_shape"], config["layers"]
    if not isinstance(shape, list) or len(shape) != 3 or not all(_config_int(v) for v in shape):
        raise ValueError(f"input_shape must be a list of three integers [C, H, W] in [1, 2³¹], got {_shown(shape)}")
    if not isinstance(layers, list) or not 1 <= len(layers) <= MAX_CONFIG_LAYERS:
        raise ValueError(f"layers must be a list of 1 to {MAX_CONFIG_LAYERS} layers, got "
                         f"{type(layers).__name__ if not isinstance(layers, list) else f'{len(layers)} layers'}")
    init_scale = config.get("init_scale", 0.01)
    if isinstance(init_scale, int) and not isinstance(init_scale, bool) and _config_int(init_scale):
        init_scale = float(init_scale)   # a JSON integer; a huge one would overflow float()
    if not isinstance(init_scale, float) or not math.isfinite(init_scale) or init_scale <= 0:
        raise ValueError(f"init_scale must be a positive finite number, got {_shown(init_scale)}")
    init = config.get("init", "glorot")
    if not isinstance(init, str):
        raise ValueError(f"init must be one of {_INITS}, got {_shown(init)}")
    return CNN(tuple(shape), [_config_layer(entry, f"layers[{i}]") for i, entry in enumerate(layers)], init=init,
               init_scale=float(init_scale))
