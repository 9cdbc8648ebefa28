"""The CNN model (refopt/nn/conv.py), its per-layer statistics, the digits_cnn problem and the optimizers on it.

References: the loop convolution and pooling of tests/test_conv.py (values), HIPS autograd on a loop-written
CNN (gradient and the dense Hessian), central differences of gradients (Hessian-vector products), the MLP
(a 1×1 convolution on a 1×1 image is a dense layer: outputs, gradients, Hessians and the per-layer
statistics coincide), closed forms (the softmax cross-entropy's output gradient) and the identities of the
statistics (∇W = (Σ Pᵀ g)ᵀ in OIHW, ∇b = Σ g).

Tolerances: autograd and refopt differ only in the order of float64 sums, 1e-12 relative (Hessian: 1e-10,
entries are sums over every example of products of three to four such factors); a network through a 1×1
convolution and the same MLP differ in one BLAS product's operand layout, 1e-13; central differences of
gradients with h = 1e-5 have truncation error h²|∇⁴L| ≈ 1e-10 and rounding ε|∇L|/h ≈ 1e-11, checked at 1e-7.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from _helpers import on_both
from refopt import autodiff as ad
from refopt import backend as B
from refopt import tree as T
from refopt.nn import (CNN, MLP, AvgPool2d, Conv2d, Dense, Flatten, MaxPool2d, SoftmaxCrossEntropy,
                       cnn_layer_statistics, layer_statistics)
from refopt.optim import OPTIMIZERS, make_optimizer
from refopt.problems.registry import CNNOracle, NetworkProblem, make_problem
from test_conv import loop_conv2d, loop_pool

autograd = pytest.importorskip("autograd")
anp = pytest.importorskip("autograd.numpy")

RTOL = 1e-12


def _close(a, b, rtol, what=""):
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    assert a.shape == b.shape, f"{what}: shapes {a.shape} vs {b.shape}"
    err = float(np.max(np.abs(a - b))) if a.size else 0.0
    assert err <= rtol * (1.0 + float(np.max(np.abs(b)))), f"{what}: max error {err:.3e}"


def small_cnn():
    """2@6×6 → conv 2→3 3×3 same → tanh → max 2 → 3@3×3 → conv 3→4 2×2 → sigmoid → 4@2×2 → flatten → 16 → 5."""
    return CNN((2, 6, 6), [Conv2d(2, 3, 3, padding="same"), "tanh", MaxPool2d(2), Conv2d(3, 4, 2), "sigmoid",
                           Flatten(), Dense(16, 5)])


def tiny_cnn():
    """1@4×4 → conv 1→2 2×2 → tanh → avg 3, stride 1 → 2@1×1 → flatten → dense 2 → 3: 17 parameters."""
    return CNN((1, 4, 4), [Conv2d(1, 2, 2), "tanh", AvgPool2d(3, 1), Flatten(), Dense(2, 3)])


def _data(model, batch, seed):
    g = np.random.default_rng(seed)
    return g.standard_normal((batch,) + model.input_shape), g.integers(0, model.output_size, batch)


def _loss(model, X, y):
    loss = SoftmaxCrossEntropy()
    return lambda p: loss(model.apply(p, X), y)


def test_forward_pass_against_loops():
    model = small_cnn()
    params = model.init(0)
    for p in params:  # non-zero biases, so that a bias added at the wrong place shows
        p["b"] = np.random.default_rng(1).standard_normal(p["b"].shape)
    X, _ = _data(model, 3, 2)
    a = np.tanh(loop_conv2d(X, params[0]["W"], params[0]["b"], 1, "same", 1))
    a = loop_pool(a, 2, kind="max")
    a = 1.0 / (1.0 + np.exp(-loop_conv2d(a, params[1]["W"], params[1]["b"])))
    ref = a.reshape(3, -1) @ params[2]["W"] + params[2]["b"]
    _close(model.apply(params, X), ref, RTOL, "CNN output")
    # flattened images (how a problem stores them) give the same bits
    assert model.apply(params, X.reshape(3, -1)).tobytes() == model.apply(params, X).tobytes()
    assert model.sizes == [72, 108, 16, 5] and model.activations == ["tanh", "sigmoid", "identity"]
    assert model.shapes == [(3, 6, 6), (3, 6, 6), (3, 3, 3), (4, 2, 2), (4, 2, 2), (16,), (5,)]
    assert model.layer_kinds == ["conv", "conv", "dense"] and model.num_layers == 3
    assert model.num_params == (3 * 2 * 9 + 3) + (4 * 3 * 4 + 4) + (16 * 5 + 5) == T.size(params)


def _autograd_tiny(theta, X, y):
    """tiny_cnn's loss in autograd.numpy, from the flat parameter vector in tree.ravel's order (W before b)."""
    W1, b1 = theta[:8].reshape(2, 1, 2, 2), theta[8:10]
    W2, b2 = theta[10:16].reshape(2, 3), theta[16:19]
    rows = []
    for yy in range(3):
        rows.append(anp.stack([anp.tensordot(X[:, :, yy:yy + 2, xx:xx + 2], W1, axes=([1, 2, 3], [1, 2, 3])) + b1
                               for xx in range(3)], axis=-1))
    a = anp.tanh(anp.stack(rows, axis=-2))                    # (N, 2, 3, 3)
    a = anp.mean(a, axis=(2, 3))                              # avg 3×3 stride 1 on 3×3: one location
    z = anp.dot(a, W2) + b2
    zmax = anp.max(z, axis=1, keepdims=True)
    lse = anp.log(anp.sum(anp.exp(z - zmax), axis=1)) + zmax[:, 0]
    return anp.mean(lse - z[np.arange(len(y)), y])


def test_gradient_and_hessian_against_autograd():
    model = tiny_cnn()
    X, y = _data(model, 4, 3)
    params = model.init(4)
    params[0]["b"] = np.array([0.3, -0.2])
    theta = T.ravel(params)
    assert np.array_equal(theta[8:10], params[0]["b"]) and np.array_equal(theta[:8], params[0]["W"].ravel())
    f = _loss(model, X, y)
    assert float(f(params)) == pytest.approx(float(_autograd_tiny(theta, X, y)), rel=1e-14)
    _close(T.ravel(ad.grad(f)(params)), autograd.grad(_autograd_tiny)(theta, X, y), RTOL, "gradient")
    Hs = autograd.hessian(_autograd_tiny)(theta, X, y)
    _close(ad.hessian(f, params), Hs, 1e-10, "dense Hessian (reverse over reverse)")
    v = np.random.default_rng(5).standard_normal(theta.size)
    _close(T.ravel(ad.hvp(f, params, T.unravel(v, params))), Hs @ v, 1e-10, "hvp (forward over reverse)")


def test_hessian_vector_products_against_differences_of_gradients():
    model = small_cnn()
    X, y = _data(model, 5, 6)
    params = model.init(7)
    f = _loss(model, X, y)
    v = T.tree_map(lambda a: np.random.default_rng(8).standard_normal(a.shape), params)
    h = 1e-5
    fd = (T.ravel(ad.grad(f)(T.axpy(h, v, params))) - T.ravel(ad.grad(f)(T.axpy(-h, v, params)))) / (2 * h)
    _close(T.ravel(ad.hvp(f, params, v)), fd, 1e-7, "forward-over-reverse hvp")
    _close(T.ravel(ad.hvp_operator(f, params)[1](v)), fd, 1e-7, "reverse-over-reverse hvp")


def _conv_mlp_pair(seed, all_conv):
    """A 1×1 convolution network on 1×1 images and the MLP it equals, with parameters mapped between them."""
    C, Hd, O = 3, 4, 2
    layers = ([Conv2d(C, Hd, 1), "tanh", Conv2d(Hd, O, 1), Flatten()] if all_conv else
              [Conv2d(C, Hd, 1), "tanh", Flatten(), Dense(Hd, O)])
    cnn, mlp = CNN((C, 1, 1), layers), MLP([C, Hd, O], "tanh")
    pc = cnn.init(seed)
    for p in pc:
        p["b"] = np.random.default_rng(seed + 1).standard_normal(p["b"].shape)
    pm = [{"W": p["W"][:, :, 0, 0].T if p["W"].ndim == 4 else p["W"], "b": p["b"]} for p in pc]
    return cnn, mlp, pc, pm


def _to_mlp(tree_c):
    return [{"W": p["W"][:, :, 0, 0].T if p["W"].ndim == 4 else p["W"], "b": p["b"]} for p in tree_c]


@pytest.mark.parametrize("all_conv", [False, True])
def test_a_1x1_convolution_on_1x1_images_is_a_dense_layer(all_conv):
    cnn, mlp, pc, pm = _conv_mlp_pair(9, all_conv)
    g = np.random.default_rng(10)
    X, y = g.standard_normal((6, 3)), g.integers(0, 2, 6)
    loss = SoftmaxCrossEntropy()
    _close(cnn.apply(pc, X), mlp.apply(pm, X), 1e-13, "outputs")
    gc, gm = ad.grad(lambda p: loss(cnn.apply(p, X), y))(pc), ad.grad(lambda p: loss(mlp.apply(p, X), y))(pm)
    _close(T.ravel(_to_mlp(gc)), T.ravel(gm), 1e-13, "gradients")
    # Hessians: the MLP's, with rows and columns in the CNN's parameter order
    index = T.unravel(np.arange(T.size(pm), dtype=float), pm)
    order = T.ravel([{"W": ip["W"].T[:, :, None, None] if pc[l]["W"].ndim == 4 else ip["W"], "b": ip["b"]}
                     for l, ip in enumerate(index)]).astype(int)
    Hc = ad.hessian(lambda p: loss(cnn.apply(p, X), y), pc)
    Hm = ad.hessian(lambda p: loss(mlp.apply(p, X), y), pm)
    _close(Hc, Hm[np.ix_(order, order)], 1e-13, "Hessians")
    sc, sm = cnn_layer_statistics(cnn, loss, pc, X, y), layer_statistics(mlp, loss, pm, X, y)
    assert sc.loss == pytest.approx(sm.loss, rel=1e-14)
    for a_c, a_m, g_c, g_m in zip(sc.inputs, sm.inputs, sc.output_grads, sm.output_grads):
        if a_c.ndim == 3:  # a conv layer: one location
            assert a_c.shape[1] == 1 and g_c.shape[1] == 1
            a_c, g_c = a_c[:, 0], g_c[:, 0]
        _close(a_c, a_m, 1e-13, "layer inputs")
        _close(g_c, g_m, 1e-13, "layer output gradients")


def _im2col(a, kernel, padding):
    """The patches of ``a`` (N, C, H, W) for a stride-1 convolution, written as loops (test_conv's layout)."""
    N, C, H, W = a.shape
    ap = np.pad(a, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    Ho, Wo = H + 2 * padding - kernel + 1, W + 2 * padding - kernel + 1
    out = np.zeros((N, Ho * Wo, C * kernel * kernel))
    for n in range(N):
        for y in range(Ho):
            for x in range(Wo):
                out[n, y * Wo + x] = ap[n, :, y:y + kernel, x:x + kernel].reshape(-1)
    return out


def test_layer_statistics_identities():
    """inputs[l] are the patches (N, L, K) of the layer's input, the gradient is (Σ_n P[n]ᵀ g[n])ᵀ in OIHW and
    Σ g for each conv layer, and the dense layer's g is the closed form (softmax(z) − onehot(y)) / B."""
    model = small_cnn()
    X, y = _data(model, 4, 11)
    params = model.init(12)
    loss = SoftmaxCrossEntropy()
    stats = cnn_layer_statistics(model, loss, params, X, y)
    grad = ad.grad(lambda p: loss(model.apply(p, X), y))(params)
    a1 = loop_pool(np.tanh(loop_conv2d(X, params[0]["W"], params[0]["b"], 1, "same")), 2, kind="max")
    _close(stats.inputs[0], _im2col(X, 3, 1), RTOL, "patches of layer 0")
    _close(stats.inputs[1], _im2col(a1, 2, 0), RTOL, "patches of layer 1")
    assert [g.shape for g in stats.output_grads] == [(4, 36, 3), (4, 4, 4), (4, 5)]
    assert [g.shape for g in stats.output_grads] == model.perturbation_shapes(4)
    for l in (0, 1):
        P, g = stats.inputs[l], stats.output_grads[l]
        dW = np.einsum("npk,npo->ok", P, g).reshape(params[l]["W"].shape)
        _close(dW, grad[l]["W"], RTOL, f"∇W of conv layer {l}")
        _close(g.sum(axis=(0, 1)), grad[l]["b"], RTOL, f"∇b of conv layer {l}")
    z = model.apply(params, X)
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    _close(stats.output_grads[2], (p - np.eye(5)[y]) / 4, RTOL, "dense output gradient")
    _close(stats.inputs[2].T @ stats.output_grads[2], grad[2]["W"], RTOL, "∇W of the dense layer")
    for a, b in zip(T.ravel(stats.grad), T.ravel(grad)):
        assert a == b
    assert stats.loss == pytest.approx(float(loss(z, y)), rel=1e-14)


def test_initialisation_is_seeded_and_follows_each_scheme():
    from refopt.backend import rng
    layers = [Conv2d(2, 3, (3, 2)), "relu", Flatten(), Dense(3 * 2 * 3, 4)]
    shapes = [((3, 2, 3, 2), 2 * 6, 3 * 6), ((18, 4), 18, 4)]  # (W shape, fan_in, fan_out)
    for init in ("glorot", "he", "lecun", "normal"):
        model = CNN((2, 4, 4), layers, init=init, init_scale=0.05)
        params = model.init(3)
        gen = rng(3)
        for p, (shape, fan_in, fan_out) in zip(params, shapes):
            if init == "glorot":
                lim = np.sqrt(6.0 / (fan_in + fan_out))
                W = gen.uniform(-lim, lim, size=shape)
            else:
                std = {"he": np.sqrt(2.0 / fan_in), "lecun": np.sqrt(1.0 / fan_in), "normal": 0.05}[init]
                W = gen.standard_normal(shape) * std
            np.testing.assert_array_equal(p["W"], W)
            np.testing.assert_array_equal(p["b"], np.zeros(shape[0] if len(shape) == 4 else shape[1]))
    model = CNN((2, 4, 4), layers)
    assert T.ravel(model.init(3)).tobytes() == T.ravel(model.init(3)).tobytes()
    assert not np.array_equal(T.ravel(model.init(3)), T.ravel(model.init(4)))
    assert all(a.dtype == np.float32 for a in T.flatten(model.init(3, np.float32))[0])
    with pytest.raises(TypeError, match="dtype must be float32 or float64"):
        model.init(0, np.int32)


@pytest.mark.parametrize("build, match", [
    (lambda: CNN((1, 8, 8), [Conv2d(2, 4, 3), Flatten(), Dense(144, 2)]), r"layers\[0\]: Conv2d expects 2 input channels, got 1"),
    (lambda: CNN((1, 8, 8), [Conv2d(1, 4, 3), Dense(144, 2)]), r"layers\[1\]: Dense needs a vector input, got images \(4, 6, 6\); put Flatten\(\) before it"),
    (lambda: CNN((1, 8, 8), [Flatten(), Dense(60, 2)]), r"layers\[1\]: Dense expects 60 input features, got 64"),
    (lambda: CNN((1, 8, 8), [Flatten(), Conv2d(1, 2, 3)]), r"layers\[1\]: Conv2d needs images \(C, H, W\), got a vector of 64"),
    (lambda: CNN((1, 8, 8), [Conv2d(1, 2, 3)]), r"the network must end with a vector output .*add Flatten\(\)"),
    (lambda: CNN((1, 8, 8), [Conv2d(1, 2, 9), Flatten()]), r"layers\[0\] \(Conv2d\): the kernel \(9×9 with dilation\) is larger than the padded input \(8×8\)"),
    (lambda: CNN((1, 4, 4), [Conv2d(1, 2, 3), MaxPool2d(3), Flatten()]), r"layers\[1\] \(MaxPool2d\): the kernel \(3×3 with dilation\) is larger"),
    (lambda: CNN((1, 8, 8), [Conv2d(1, 2, 3), "swish", Flatten()]), r"layers\[1\]: unknown activation 'swish'"),
    (lambda: CNN((1, 8, 8), [Conv2d(1, 2, 3), 3, Flatten()]), r"layers\[1\]: expected a Conv2d, Dense, AvgPool2d, MaxPool2d, Flatten"),
    (lambda: CNN((1, 8, 8), [Flatten()]), "at least one Conv2d or Dense layer"),
    (lambda: CNN((1, 8, 8), []), "layers: expected a non-empty list"),
    (lambda: CNN((8, 8), [Flatten(), Dense(64, 2)]), r"input_shape must be \(C, H, W\)"),
    (lambda: CNN((1, 0, 8), [Flatten(), Dense(64, 2)]), "CNN: input_shape must be a positive integer"),
    (lambda: CNN((1, 8, 8), [Flatten(), Dense(64, 2)], init="xavier"), "init must be one of"),
    (lambda: Conv2d(1, 2, 3, groups=2), "Conv2d: groups must be 1"),
    (lambda: Conv2d(0, 2, 3), "Conv2d: in_channels must be a positive integer, got 0"),
    (lambda: Conv2d(1, 2.5, 3), "Conv2d: out_channels must be a positive integer, got 2.5"),
    (lambda: Conv2d(1, 2, 3, stride=1.5), "Conv2d: stride must be an integer or a pair of integers, got 1.5"),
    (lambda: Conv2d(1, 2, 3, stride=2, padding="same"), "Conv2d: padding='same' needs stride 1"),
    (lambda: Conv2d(1, 2, (3, 0)), r"Conv2d: kernel_size must be ≥ 1, got \(3, 0\)"),
    (lambda: MaxPool2d(2, padding=2), "MaxPool2d: padding must be at most half the kernel size"),
    (lambda: AvgPool2d(2, stride=0), "AvgPool2d: stride must be ≥ 1"),
    (lambda: Dense(3, 0), "Dense: out_features must be a positive integer"),
])
def test_bad_architectures_are_one_line_value_errors(build, match):
    with pytest.raises(ValueError, match=match) as err:
        build()
    assert "\n" not in str(err.value)


def test_bad_parameters_and_inputs_name_the_argument():
    model = tiny_cnn()
    params = model.init(0)
    X = np.zeros((2, 1, 4, 4))
    with pytest.raises(ValueError, match=r"params: expected a list of 2 layer dicts"):
        model.apply(params[:1], X)
    with pytest.raises(ValueError, match=r"params\[0\]: expected a dict with keys 'W' and 'b'"):
        model.apply([{"W": params[0]["W"]}, params[1]], X)
    with pytest.raises(ValueError, match=r"params\[0\]: expected W of shape \(2, 1, 2, 2\) and b of shape \(2,\)"):
        model.apply([{"W": params[0]["W"][:1], "b": params[0]["b"]}, params[1]], X)
    with pytest.raises(TypeError, match="params: expected every W and b in one dtype"):
        model.apply([{"W": params[0]["W"].astype(np.float32), "b": params[0]["b"]}, params[1]], X)
    with pytest.raises(ValueError, match=r"X: expected images of shape \(batch, 1, 4, 4\) or \(batch, 16\) flattened, got \(2, 1, 4, 5\)"):
        model.apply(params, np.zeros((2, 1, 4, 5)))
    with pytest.raises(ValueError, match=r"got \(2, 15\)"):
        model.apply(params, np.zeros((2, 15)))
    with pytest.raises(TypeError, match="X: expected a float32 or float64 array, got int64"):
        model.apply(params, np.zeros((2, 16), dtype=np.int64))
    with pytest.raises(TypeError, match="X: dtype float32 differs from the parameters' float64"):
        model.apply(params, np.zeros((2, 16), dtype=np.float32))


def test_dense_shaped_perturbations_are_refused_with_the_reason():
    """A statistics pass written for dense layers perturbs each layer by zeros of shape (B, sizes[l+1]); a conv
    layer refuses that layout instead of computing something else."""
    model = tiny_cnn()
    params = model.init(0)
    X = np.zeros((3, 16))
    with pytest.raises(ValueError, match=r"perturbations\[0\]: expected shape \(3, 9, 2\) .*got \(3, 18\); "
                                         r"a conv layer's statistics are per location: build the perturbations from "
                                         r"perturbation_shapes"):
        model.apply(params, X, perturbations=[np.zeros((3, n)) for n in model.sizes[1:]])
    with pytest.raises(ValueError, match=r"perturbations\[1\]: expected shape \(3, 3\), got \(3, 4\)"):
        model.apply(params, X, perturbations=[np.zeros((3, 9, 2)), np.zeros((3, 4))])
    with pytest.raises(ValueError, match="perturbations: expected a list of 2 arrays"):
        model.apply(params, X, perturbations=[np.zeros((3, 9, 2))])


def test_repr_and_config_describe_the_architecture():
    model = small_cnn()
    assert repr(model) == repr(small_cnn()) and "Conv2d(2, 3, kernel_size=(3, 3)" in repr(model)
    assert "MaxPool2d(kernel_size=(2, 2), stride=(2, 2)" in repr(model)
    config = model.config()
    assert json.loads(json.dumps(config)) == config
    numpy_ints = Conv2d(np.int64(2), np.int64(3), np.int64(3), padding=np.int64(1), stride=(np.int64(1), 1))
    assert repr(numpy_ints) == "Conv2d(2, 3, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1), dilation=(1, 1))"
    assert json.dumps(numpy_ints.config())
    assert config["layers"][0] == {"layer": "Conv2d", "in_channels": 2, "out_channels": 3, "kernel_size": [3, 3],
                                   "stride": [1, 1], "padding": "same", "dilation": [1, 1]}
    assert config["layers"][1] == "tanh" and config["layers"][-1] == {"layer": "Dense", "in_features": 16,
                                                                      "out_features": 5}
    other = CNN((2, 6, 6), [Conv2d(2, 3, 3, padding="same"), "tanh", AvgPool2d(2), Conv2d(3, 4, 2), "sigmoid",
                            Flatten(), Dense(16, 5)])
    assert other.sizes == model.sizes and other.config() != config and repr(other) != repr(model)
    # each layer's config holds exactly its constructor's arguments (average pooling has no dilation)
    pool = other.config()["layers"][2]
    assert pool == {"layer": "AvgPool2d", "kernel_size": [2, 2], "stride": [2, 2], "padding": [0, 0]}
    for layer in other.layers + model.layers:
        if not isinstance(layer, str):
            args = {k: tuple(v) if isinstance(v, list) else v for k, v in layer.config().items() if k != "layer"}
            assert repr(type(layer)(**args)) == repr(layer)


def test_cnn_from_config_reads_back_what_config_writes_and_nothing_else():
    from refopt.nn.conv import cnn_from_config
    model = small_cnn()
    again = cnn_from_config(json.loads(json.dumps(model.config())))
    assert repr(again) == repr(model) and again.config() == model.config()
    params = model.init(3)
    X = np.random.default_rng(0).standard_normal((2,) + model.input_shape)
    np.testing.assert_array_equal(again.apply(again.init(3), X), model.apply(params, X))
    # entries per example, counted by hand: the input 2·5·5; the conv's output 3·3·3, its padded input 2·7·7 and
    # twice its patches (L = 9) × (K = 18); tanh 27; the pool's output 3, its input 3·3·3 (no padding) and three
    # times its windows 3 channels × 1 location × 9; Flatten 3; Dense 2
    tiny = CNN((2, 5, 5), [Conv2d(2, 3, 3, stride=2, padding=1), "tanh", MaxPool2d(3), Flatten(), Dense(3, 2)])
    assert tiny.entries_per_example == 50 + (27 + 98 + 2 * 9 * 18) + 27 + (3 + 27 + 3 * 27) + 3 + 2
    # a strided conv that pads a 1×1 image by 2000 holds a 4001² padded input, though its output is 1×1
    wide = CNN((1, 1, 1), [Conv2d(1, 1, 1, stride=5000, padding=2000), Flatten(), Dense(1, 1)])
    assert wide.entries_per_example > 4001 ** 2
    for bad, match in [([], "a CNN config must be a dict"), ({"layers": []}, "needs 'input_shape'"),
                       ({"input_shape": [1, 4, 4], "layers": [], "code": "x"}, "not 'code'"),
                       ({"input_shape": [1, 4, 4], "layers": []}, "layers must be a list of 1 to 256"),
                       ({"input_shape": [1, 4, 4], "layers": [{"layer": "Flatten", "start_dim": 2}]},
                        "unknown key 'start_dim'; a Flatten takes none"),
                       ({"input_shape": [1, 4, 4], "layers": [{"layer": "AvgPool2d", "kernel_size": 2,
                                                                "dilation": [2, 2]}]},
                        "unknown key 'dilation'; a AvgPool2d takes kernel_size, stride, padding"),
                       ({"input_shape": [1, 4, 4], "layers": [{"layer": "AvgPool2d", "kernel_size": 2,
                                                                "dilation": [1, 1]}]}, "unknown key 'dilation'"),
                       ({"input_shape": [1, 4, 4], "layers": [{"layer": "Flatten"}], "init": 3}, "init must be one of")]:
        with pytest.raises(ValueError, match=match):
            cnn_from_config(bad)


def test_float32_network_keeps_float32_and_agrees_with_float64():
    """float32 outputs and gradients equal float64's within the float32 rounding of the network's sums (at most
    a few hundred O(1) terms per entry: 1e-4 relative leaves a margin over 300 · 2⁻²⁴ ≈ 2e-5)."""
    model = small_cnn()
    X, y = _data(model, 4, 13)
    p64 = model.init(14)
    p32 = model.init(14, np.float32)
    X32 = X.astype(np.float32)
    loss = SoftmaxCrossEntropy()
    v32, g32 = ad.value_and_grad(lambda p: loss(model.apply(p, X32), y))(p32)
    v64, g64 = ad.value_and_grad(lambda p: loss(model.apply(p, X), y))(p64)
    assert v32.dtype == np.float32 and all(a.dtype == np.float32 for a in T.flatten(g32)[0])
    _close(v32, v64, 1e-4)
    _close(T.ravel(g32), T.ravel(g64), 1e-4)
    stats = cnn_layer_statistics(model, loss, p32, X32, y)
    assert all(a.dtype == np.float32 for a in stats.inputs + stats.output_grads)


def test_on_the_cupy_stand_in_without_a_host_device_leak():
    """Gradient, Hessian-vector product and statistics on tests/fake_cupy.py equal NumPy's bit for bit (the
    stand-in makes the same NumPy calls)."""
    model = small_cnn()
    X, y = _data(model, 3, 15)

    def compute():
        params = model.init(16)
        Xd, yd = B.to_device(X), B.to_device(y)
        f = lambda p: SoftmaxCrossEntropy()(model.apply(p, Xd), yd)  # noqa: E731
        g = ad.grad(f)(params)
        hv = ad.hvp(f, params, params)
        stats = cnn_layer_statistics(model, SoftmaxCrossEntropy(), params, Xd, yd)
        return T.flatten((g, hv, stats.inputs, stats.output_grads))[0]   # on the device: on_both checks that

    ref, dev = on_both(compute)
    assert len(ref) == len(dev)
    for a, b in zip(ref, dev):
        assert a.dtype == b.dtype and a.tobytes() == b.tobytes()


# ---------------------------------------------------------------------------------------------------
# Problems and optimizers.
def _tiny_problem():
    model = tiny_cnn()
    X, y = _data(model, 12, 17)
    return NetworkProblem("tiny_cnn", model, SoftmaxCrossEntropy(), X.reshape(12, -1), y)


DENSE_ONLY = {"kfac_tridiag", "kbfgs"}   # refused on CNNs: no convolutional form of their statistics


def test_every_optimizer_runs_on_a_cnn_or_is_refused_for_its_layer_statistics():
    from refopt.compare import compare
    prob = _tiny_problem()
    oracle = prob.oracle()
    assert isinstance(oracle, CNNOracle) and "layer_statistics" in oracle.provides
    assert "dense_layer_statistics" not in oracle.provides
    assert isinstance(oracle.with_batch(prob.X[:4], prob.y[:4]), CNNOracle)
    assert isinstance(prob.batch_oracle([0, 1, 2]), CNNOracle)
    entries = compare(sorted(OPTIMIZERS), problem=prob, steps=2, tuned=False)
    for e in entries:
        if e.name in DENSE_ONLY:
            assert e.result is None and "needs dense_layer_statistics" in e.error, (e.name, e.error)
        else:
            assert e.error is None and np.isfinite(e.result.final_loss), (e.name, e.error)
    start = float(oracle.value(prob.init_params(0)))
    assert next(e for e in entries if e.name == "newton_cg").result.final_loss < start
    for name in sorted(DENSE_ONLY):
        with pytest.raises(ValueError, match=f"{name} needs dense_layer_statistics .*no convolutional form.*"
                                             "which CNNOracle does not provide"):
            make_optimizer(name).check_oracle(oracle)
    for name in ("kfac", "ekfac"):
        make_optimizer(name).check_oracle(oracle)
    # driven directly, without the runner's check, they refuse a conv layer at init, naming it
    for name in sorted(DENSE_ONLY):
        with pytest.raises(ValueError, match="supports dense layers only: layer 0 is a convolution"):
            make_optimizer(name).init(prob.init_params(0))
    # the oracle's layer statistics of a CNN are cnn_layer_statistics' (patches, spatial gradients)
    params = prob.init_params(0)
    got, want = oracle.layer_stats(params), cnn_layer_statistics(prob.model, prob.loss, params, prob.X, prob.y)
    assert got.loss == want.loss
    for a, b in zip(got.inputs + got.output_grads, want.inputs + want.output_grads):
        np.testing.assert_array_equal(a, b)


def test_digits_cnn_problem():
    pytest.importorskip("sklearn")
    from sklearn.datasets import load_digits
    from refopt.problems.datasets import digits
    raw = load_digits()
    assert np.array_equal(raw.images.reshape(len(raw.images), 64), raw.data)  # the 64 features are the pixels, row-major
    prob, d = make_problem("digits_cnn"), digits()
    assert prob.model.input_shape == (1, 8, 8) and prob.model.num_params == 1898
    np.testing.assert_array_equal(prob.X, d.X)   # digits_mlp's standardised pixels and held-out split
    np.testing.assert_array_equal(prob.X_val, d.X_val)
    np.testing.assert_array_equal(prob.y, d.y)
    assert "1×8×8 images" in prob.description and "Conv2d(1, 8, 3, padding='same')" in prob.description
    assert isinstance(prob.oracle(), CNNOracle) and isinstance(prob.validation_oracle(), CNNOracle)
    ident = prob.identity()  # (equal for two builds: tests/test_datasets.py, for every problem)
    assert ident["cnn"] == prob.model.config()
    assert ident["sizes"] == [64, 512, 256, 10] and ident["activations"] == ["tanh", "tanh", "identity"]


def test_train_and_compare_on_digits_cnn(capsys, tmp_path, monkeypatch):
    pytest.importorskip("sklearn")
    from refopt.cli import main
    monkeypatch.chdir(tmp_path)
    assert main(["train", "adam", "--problem", "digits_cnn", "--steps", "5", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "adam on digits_cnn: completed after 5 steps" in out
    assert main(["train", "kfac", "--problem", "digits_cnn", "--steps", "2", "--no-progress"]) == 0
    assert "kfac on digits_cnn: completed after 2 steps" in capsys.readouterr().out
    assert main(["train", "kbfgs", "--problem", "digits_cnn", "--steps", "1", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "kbfgs needs dense_layer_statistics" in err and "CNNOracle does not provide" in err and err.count("\n") == 1
    # (README.md's compare of adam, sgd and newton_cg on digits_cnn runs in tests/test_readme.py)
    assert main(["compare", "--problem", "digits_cnn", "--steps", "1", "--optimizers", "sgd,kbfgs", "--plot", ""]) == 0
    table = capsys.readouterr().out
    # compare's row carries the setup check's message, the one train prints
    assert "not applicable: kbfgs needs dense_layer_statistics" in table and "CNNOracle does not provide" in table
    rows = [line for line in table.splitlines() if line.split()[:1] == ["sgd"]]
    assert len(rows) == 1 and "not applicable" not in rows[0]


def test_the_docs_python_example_runs_and_prints_what_it_says(capsys):
    """docs/cnn.md's Python block runs as written and prints the shapes its comment states."""
    from pathlib import Path
    from test_readme import extract_python
    text = (Path(__file__).resolve().parent.parent / "docs" / "cnn.md").read_text(encoding="utf-8")
    (lineno, source), = extract_python(text)
    exec(compile(source, f"docs/cnn.md:{lineno}", "exec"), {"__name__": "__docs__"})
    printed = capsys.readouterr().out.strip()
    expected = next(line for line in source.splitlines() if line.startswith("# [("))[2:]
    assert printed == expected


def test_a_checkpointed_cnn_run_resumes_to_the_uninterrupted_result(tmp_path):
    """The problem identity (with the CNN's architecture) round-trips through a checkpoint, a resumed run ends
    where an uninterrupted one does, and another architecture refuses the checkpoint."""
    from refopt.runner import RunConfig, run
    prob = _tiny_problem()
    whole = run(RunConfig("adam", {"lr": 0.05}, prob.name, steps=4), problem=prob)
    path = str(tmp_path / "ck.npz")
    run(RunConfig("adam", {"lr": 0.05}, prob.name, steps=2), problem=prob, checkpoint_path=path, checkpoint_every=1)
    resumed = run(RunConfig("adam", {"lr": 0.05}, prob.name, steps=4), problem=prob, resume=path)
    assert resumed.final_loss == whole.final_loss
    other = NetworkProblem("tiny_cnn", CNN((1, 4, 4), [Conv2d(1, 2, 2), "relu", AvgPool2d(3, 1), Flatten(),
                                                         Dense(2, 3)]), SoftmaxCrossEntropy(), prob.X, prob.y)
    with pytest.raises(ValueError, match="checkpoint"):
        run(RunConfig("adam", {"lr": 0.05}, prob.name, steps=4), problem=other, resume=path)


def test_compare_names_the_convolutional_network_in_a_not_applicable_row():
    from refopt.compare import compare
    g = np.random.default_rng(0)
    model = CNN((1, 4, 4), [Conv2d(1, 2, 3), "tanh", Flatten(), Dense(8, 3)])
    prob = NetworkProblem("tiny_cnn", model, SoftmaxCrossEntropy(), g.standard_normal((6, 16)), g.integers(0, 3, 6))
    entries = compare(["kbfgs", "sgd"], problem=prob, steps=1)
    # the setup check's message (compare.py), naming the CNN's oracle
    assert entries[0].error.startswith("not applicable: kbfgs needs dense_layer_statistics (")
    assert entries[0].error.endswith("), which CNNOracle does not provide")
    assert entries[1].error is None
