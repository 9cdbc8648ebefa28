"""Convolution, pooling and flatten in the autodiff (``autodiff.unfold`` / ``fold`` and the composites built
on them) against references written here: direct loop convolutions and poolings (values), HIPS autograd's
reverse- and forward-mode derivatives of loop-written ones, central differences (first derivatives, and the
four second-order modes of tests/test_autodiff_primitives.py; the Hessian of a CNN against autograd's is in
tests/test_cnn.py), and the transpose identity of unfold and fold.

Tolerances. Values and autograd comparisons differ only by the order of float64 sums of at most a few
hundred O(1) terms: 1e-12 relative. Central differences use h = 1e-5: the truncation error is
h²|f'''|/6 ≈ 1e-11 here (a convolution is bilinear, so for it exactly 0) and the rounding error
ε|f|/h ≈ 1e-11; 1e-7 relative leaves a margin of 10⁴ while a wrong rule is off by O(1).
"""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from refopt import autodiff as ad
from refopt import tree as T
from test_autodiff_primitives import check_all_modes

autograd = pytest.importorskip("autograd")
anp = pytest.importorskip("autograd.numpy")

RTOL = 1e-12     # reference and refopt differ only in the order of float64 sums
FD_RTOL = 1e-7   # central differences (module docs)
STEP = 1e-5    # central-difference step (module docs)


def _close(a, b, rtol, what=""):
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    assert a.shape == b.shape, f"{what}: shapes {a.shape} vs {b.shape}"
    err = float(np.max(np.abs(a - b))) if a.size else 0.0
    assert err <= rtol * (1.0 + float(np.max(np.abs(b)))), f"{what}: max error {err:.3e}"


# ---------------------------------------------------------------------------------------------------
# References, written from the definitions (not from refopt's code).
def _pads(H, W, kernel, stride, padding, dilation):
    """(top, bottom, left, right) as PyTorch reads ``padding``: an int or pair on both sides; "same" with
    the extra row and column of an odd total at the bottom and right; "valid" none."""
    if padding == "valid":
        return 0, 0, 0, 0
    if padding == "same":
        th, tw = dilation[0] * (kernel[0] - 1), dilation[1] * (kernel[1] - 1)
        return th // 2, th - th // 2, tw // 2, tw - tw // 2
    ph, pw = (padding, padding) if isinstance(padding, int) else padding
    return ph, ph, pw, pw


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def loop_conv2d(x, W, b, stride=1, padding=0, dilation=1):
    """out[n, o, y, x] = b[o] + Σ_{c, i, j} W[o, c, i, j] x_pad[n, c, y·s + i·d, x·s + j·d], one scalar at a time."""
    N, C, H, Wd = x.shape
    O, _, kh, kw = W.shape
    (sh, sw), (dh, dw) = _pair(stride), _pair(dilation)
    t, bo, l, r = _pads(H, Wd, (kh, kw), (sh, sw), padding, (dh, dw))
    xp_ = np.zeros((N, C, H + t + bo, Wd + l + r))
    xp_[:, :, t:t + H, l:l + Wd] = x
    Ho = (H + t + bo - dh * (kh - 1) - 1) // sh + 1
    Wo = (Wd + l + r - dw * (kw - 1) - 1) // sw + 1
    out = np.zeros((N, O, Ho, Wo))
    for n, o, y, xx in itertools.product(range(N), range(O), range(Ho), range(Wo)):
        acc = 0.0 if b is None else b[o]
        for c, i, j in itertools.product(range(C), range(kh), range(kw)):
            acc += W[o, c, i, j] * xp_[n, c, y * sh + i * dh, xx * sw + j * dw]
        out[n, o, y, xx] = acc
    return out


def autograd_conv2d(x, W, b, stride=1, padding=0, dilation=1):
    """The same convolution in autograd.numpy (a loop over output positions, each a window · kernel
    contraction), so that autograd differentiates it."""
    N, C, H, Wd = x.shape
    O, _, kh, kw = W.shape
    (sh, sw), (dh, dw) = _pair(stride), _pair(dilation)
    t, bo, l, r = _pads(H, Wd, (kh, kw), (sh, sw), padding, (dh, dw))
    xp_ = anp.pad(x, ((0, 0), (0, 0), (t, bo), (l, r)), mode="constant")
    Ho = (H + t + bo - dh * (kh - 1) - 1) // sh + 1
    Wo = (Wd + l + r - dw * (kw - 1) - 1) // sw + 1
    rows = []
    for y in range(Ho):
        row = []
        for xx in range(Wo):
            window = xp_[:, :, y * sh:y * sh + dh * (kh - 1) + 1:dh, xx * sw:xx * sw + dw * (kw - 1) + 1:dw]
            row.append(anp.tensordot(window, W, axes=([1, 2, 3], [1, 2, 3])) + b)  # (N, O)
        rows.append(anp.stack(row, axis=-1))
    return anp.stack(rows, axis=-2)  # (N, O, Ho, Wo)


def loop_pool(x, kernel, stride=None, padding=0, dilation=1, kind="max"):
    """Max (−inf padding) or average (zeros counted, the divisor kh·kw) pooling by loops over n, c, y, x."""
    N, C, H, W = x.shape
    (kh, kw) = _pair(kernel)
    (sh, sw) = _pair(kernel if stride is None else stride)
    (ph, pw), (dh, dw) = _pair(padding), _pair(dilation)
    xp_ = np.full((N, C, H + 2 * ph, W + 2 * pw), -np.inf if kind == "max" else 0.0)
    xp_[:, :, ph:ph + H, pw:pw + W] = x
    Ho = (H + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    Wo = (W + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    out = np.zeros((N, C, Ho, Wo))
    for n, c, y, xx in itertools.product(range(N), range(C), range(Ho), range(Wo)):
        win = [xp_[n, c, y * sh + i * dh, xx * sw + j * dw] for i in range(kh) for j in range(kw)]
        out[n, c, y, xx] = max(win) if kind == "max" else sum(win) / (kh * kw)
    return out


GEOMETRIES = [  # (input H, W; kernel; stride; padding; dilation)
    ((5, 6), (3, 3), 1, 0, 1),
    ((5, 6), (3, 2), (2, 1), 1, 1),
    ((6, 5), (2, 3), 1, "same", 1),          # even kernel: the extra row of padding at the bottom
    ((6, 7), (2, 2), 1, "same", (2, 1)),     # dilated "same"
    ((7, 5), (3, 2), (1, 2), (2, 0), (1, 2)),
    ((4, 4), (4, 4), 1, "valid", 1),         # one output location
    ((3, 3), (1, 1), 2, 0, 1),
]


@pytest.mark.parametrize("geom", GEOMETRIES, ids=str)
def test_conv2d_values_against_a_direct_loop(geom):
    (H, W), kernel, stride, padding, dilation = geom
    g = np.random.default_rng(0)
    x, Wk, b = g.standard_normal((2, 3, H, W)), g.standard_normal((4, 3) + kernel), g.standard_normal(4)
    ref = loop_conv2d(x, Wk, b, stride, padding, dilation)
    got = ad.conv2d(x, Wk, b, stride=stride, padding=padding, dilation=dilation)
    _close(got, ref, RTOL, f"conv2d {geom}")
    _close(ad.conv2d(x, Wk, None, stride, padding, dilation), loop_conv2d(x, Wk, None, stride, padding, dilation),
           RTOL, "conv2d without bias")
    geometry = ad.conv_geometry((H, W), kernel, stride, padding, dilation)
    assert geometry.output == ref.shape[2:]
    if padding == "same":
        assert ref.shape[2:] == (H, W)  # "same": the output keeps the input's size (stride 1)


def test_same_padding_puts_the_extra_row_and_column_after():
    """A 2×2 kernel that reads only its top-left entry shows where "same" pads: out = x (no shift), because
    the single padding row and column are at the bottom and the right (PyTorch's and TensorFlow's rule)."""
    x = np.arange(12.0).reshape(1, 1, 3, 4)
    W = np.zeros((1, 1, 2, 2))
    W[0, 0, 0, 0] = 1.0
    np.testing.assert_array_equal(ad.conv2d(x, W, padding="same"), x)
    assert ad.conv_geometry((3, 4), 2, 1, "same").padding == (0, 1, 0, 1)
    assert ad.conv_geometry((3, 4), 4, 1, "same", dilation=(1, 2)).padding == (1, 2, 3, 3)


@pytest.mark.parametrize("geom", GEOMETRIES[:5], ids=str)
def test_conv2d_derivatives_against_autograd(geom):
    """The vjp with respect to x, W and b is autograd's gradient of ⟨u, conv⟩ of the loop convolution, the jvp
    autograd's forward-mode J v (``make_jvp``); the jvp satisfies ⟨u, J v⟩ = ⟨Jᵀu, v⟩ and matches central
    differences."""
    (H, W), kernel, stride, padding, dilation = geom
    g = np.random.default_rng(1)
    args = (g.standard_normal((2, 2, H, W)), g.standard_normal((3, 2) + kernel), g.standard_normal(3))

    def ours(p):
        return ad.conv2d(p[0], p[1], p[2], stride, padding, dilation)

    out = ours(args)
    u = g.standard_normal(out.shape)
    ref = autograd.grad(lambda p: anp.sum(u * autograd_conv2d(p[0], p[1], p[2], stride, padding, dilation)))(args)
    value, back = ad.vjp(ours, args)
    mine = back(u)
    for m, r, name in zip(mine, ref, ("x", "W", "b")):
        _close(m, r, RTOL, f"vjp wrt {name}")
    v = tuple(g.standard_normal(a.shape) for a in args)
    _, Jv = ad.jvp(ours, args, v)
    _close(Jv, autograd.make_jvp(lambda p: autograd_conv2d(p[0], p[1], p[2], stride, padding, dilation))(args)(v)[1],
           RTOL, "jvp vs autograd's forward mode")
    assert abs(float(np.sum(u * Jv)) - sum(float(np.sum(r * vi)) for r, vi in zip(ref, v))) <= 1e-10 * (
        1 + abs(float(np.sum(u * Jv))))
    fd = (ours(T.axpy(STEP, v, args)) - ours(T.axpy(-STEP, v, args))) / (2 * STEP)
    _close(Jv, fd, FD_RTOL, "jvp vs central differences")


@pytest.mark.parametrize("geom", [GEOMETRIES[1], GEOMETRIES[3]], ids=str)
def test_conv2d_in_every_mode_and_to_second_order(geom):
    """The shared check of every primitive (tests/test_autodiff_primitives.py): jvp and vjp against central
    differences and each other, and the four second-order modes, on tanh(conv2d(x, W, b)), where the
    Hessian has the x–W cross terms of the bilinear convolution and tanh's curvature."""
    (H, W), kernel, stride, padding, dilation = geom
    g = np.random.default_rng(2)
    args = (g.standard_normal((2, 2, H, W)) * 0.5, g.standard_normal((2, 2) + kernel) * 0.5, g.standard_normal(2))
    check_all_modes(lambda p: ad.tanh(ad.conv2d(p[0], p[1], p[2], stride, padding, dilation)), args, 3)


def _unfold_reference(x, geom: ad.ConvGeometry, pad_value=0.0):
    """patches[n, y·Wo + x, (c·kh + i)·kw + j] = x_pad[n, c, y·sh + i·dh, x·sw + j·dw], by loops."""
    N, C = x.shape[:2]
    (t, b, l, r), (kh, kw), (sh, sw), (dh, dw), (Ho, Wo) = (geom.padding, geom.kernel, geom.stride, geom.dilation,
                                                             geom.output)
    xp_ = np.full((N, C, x.shape[2] + t + b, x.shape[3] + l + r), pad_value)
    xp_[:, :, t:t + x.shape[2], l:l + x.shape[3]] = x
    out = np.zeros((N, Ho * Wo, C * kh * kw))
    for n, y, xx, c, i, j in itertools.product(range(N), range(Ho), range(Wo), range(C), range(kh), range(kw)):
        out[n, y * Wo + xx, (c * kh + i) * kw + j] = xp_[n, c, y * sh + i * dh, xx * sw + j * dw]
    return out


@pytest.mark.parametrize("geom", GEOMETRIES, ids=str)
def test_unfold_layout_and_fold_is_its_transpose(geom):
    (H, W), kernel, stride, padding, dilation = geom
    geometry = ad.conv_geometry((H, W), kernel, stride, padding, dilation)
    g = np.random.default_rng(3)
    x = g.standard_normal((2, 3, H, W))
    patches = ad.unfold(x, geometry)
    np.testing.assert_array_equal(patches, _unfold_reference(x, geometry))
    P = g.standard_normal(patches.shape)
    folded = ad.fold(P, 3, geometry)
    assert folded.shape == x.shape
    assert abs(float(np.sum(patches * P)) - float(np.sum(x * folded))) <= 1e-12 * float(np.sum(np.abs(patches * P)))
    # fold of all-ones patches counts, for each input entry, the windows that read it
    counts = np.zeros((H, W))
    ref = _unfold_reference(np.arange(H * W, dtype=float).reshape(1, 1, H, W) + 1.0, geometry)
    for v in ref[ref > 0]:
        counts.flat[int(v) - 1] += 1
    np.testing.assert_array_equal(ad.fold(np.ones((1,) + patches.shape[1:2] + (geometry.kernel[0] * geometry.kernel[1],)),
                                          1, geometry)[0, 0], counts)


def test_unfold_and_fold_nest_in_every_mode():
    geometry = ad.conv_geometry((4, 5), (2, 3), (1, 2), 1, 1)
    g = np.random.default_rng(4)
    x = g.standard_normal((2, 2, 4, 5))
    check_all_modes(lambda z: ad.square(ad.unfold(z, geometry)), x, 5)
    P = g.standard_normal(ad.unfold(x, geometry).shape)
    check_all_modes(lambda z: ad.sin(ad.fold(z, 2, geometry)), P, 6)


POOLS = [  # (input H, W; kernel; stride; padding; dilation)
    ((4, 6), 2, None, 0, 1),        # tiling windows: the reshape path
    ((5, 7), 2, None, 0, 1),        # tiling, the last row and column left over
    ((5, 5), 3, 1, 1, 1),           # overlapping, padded: the unfold path
    ((6, 5), (3, 2), (2, 1), (1, 1), 1),
    ((7, 7), 2, 2, 0, 2),           # dilated (max pooling only)
]


@pytest.mark.parametrize("kind, pool", [(kind, pool) for pool in POOLS for kind in ("max", "avg")
                                        if kind == "max" or pool[4] == 1],  # average pooling has no dilation
                         ids=str)
def test_pooling_values_and_gradients_against_loops_and_autograd(kind, pool):
    (H, W), kernel, stride, padding, dilation = pool
    g = np.random.default_rng(5)
    x = g.standard_normal((2, 3, H, W))  # continuous: no ties, so autograd's tie rule does not matter

    def ours(z):
        return (ad.max_pool2d(z, kernel, stride, padding, dilation) if kind == "max"
                else ad.avg_pool2d(z, kernel, stride, padding))

    ref = loop_pool(x, kernel, stride, padding, dilation, kind)
    _close(ours(x), ref, RTOL, "pooling values")

    (kh, kw), (sh, sw) = _pair(kernel), _pair(kernel if stride is None else stride)
    (ph, pw), (dh, dw) = _pair(padding), _pair(dilation)

    def reference(z):  # autograd.numpy: a loop over output positions
        zp = anp.pad(z, ((0, 0), (0, 0), (ph, ph), (pw, pw)), mode="constant",
                     constant_values=-np.inf if kind == "max" else 0.0)
        rows = []
        for y in range(ref.shape[2]):
            row = []
            for xx in range(ref.shape[3]):
                win = zp[:, :, y * sh:y * sh + dh * (kh - 1) + 1:dh, xx * sw:xx * sw + dw * (kw - 1) + 1:dw]
                row.append(anp.max(win, axis=(2, 3)) if kind == "max" else anp.sum(win, axis=(2, 3)) / (kh * kw))
            rows.append(anp.stack(row, axis=-1))
        return anp.stack(rows, axis=-2)

    u = g.standard_normal(ref.shape)
    _close(ad.vjp(ours, x)[1](u), autograd.grad(lambda z: anp.sum(u * reference(z)))(x), RTOL, "pooling vjp")
    v = g.standard_normal(x.shape)
    _close(ad.jvp(ours, x, v)[1], autograd.make_jvp(reference)(x)(v)[1], RTOL, "pooling jvp vs autograd")
    _close(ad.jvp(ours, x, v)[1], (ours(x + STEP * v) - ours(x - STEP * v)) / (2 * STEP), FD_RTOL, "pooling jvp")
    check_all_modes(lambda z: ad.tanh(ours(z)), x, 7)


def test_max_pool_ties_go_to_the_first_maximum_in_row_major_order():
    """Each window sends its whole cotangent to its first maximum in (i, j) row-major order (PyTorch's kernels
    update the running maximum only on a strictly greater value); overlapping windows add at an input."""
    x = np.array([[[[1.0, 3.0, 3.0],
                    [3.0, 0.0, 2.0],
                    [3.0, 3.0, 1.0]]]])
    # 2×2 windows, stride 1: every window's maximum is 3. Window (0, 0) reads 1, 3, 3, 0 and window (0, 1)
    # reads 3, 3, 0, 2: both pick (0, 1); window (1, 0) reads 3, 0, 3, 3: (1, 0); window (1, 1) reads
    # 0, 2, 3, 1: (2, 1). With cotangents 1, 10, 100, 1000 on the four windows:
    weights = np.array([[[[1.0, 10.0], [100.0, 1000.0]]]])
    grad = ad.grad(lambda z: ad.sum(ad.multiply(ad.max_pool2d(z, 2, 1), weights)))(x)
    expected = np.zeros((3, 3))
    expected[0, 1], expected[1, 0], expected[2, 1] = 1.0 + 10.0, 100.0, 1000.0
    np.testing.assert_array_equal(grad[0, 0], expected)
    np.testing.assert_array_equal(ad.max_pool2d(x, 2, 1)[0, 0], [[3.0, 3.0], [3.0, 3.0]])
    # the tangent follows the same choice; the second derivative through the mask is zero
    t = np.arange(9.0).reshape(1, 1, 3, 3)
    np.testing.assert_array_equal(ad.jvp(lambda z: ad.max_pool2d(z, 2, 1), x, t)[1][0, 0], [[1.0, 1.0], [3.0, 7.0]])
    np.testing.assert_array_equal(ad.hvp(lambda z: ad.sum(ad.max_pool2d(z, 2, 1)), x, t), np.zeros_like(x))
    # tiling windows (the reshape path) follow the same rule
    y = np.array([[[[2.0, 2.0], [2.0, 2.0]]]])
    np.testing.assert_array_equal(ad.grad(lambda z: ad.sum(ad.max_pool2d(z, 2)))(y)[0, 0], [[1.0, 0.0], [0.0, 0.0]])


def test_max_pool_padding_never_wins_and_nan_propagates():
    x = -np.ones((1, 1, 2, 2)) * 5.0
    out = ad.max_pool2d(x, 3, 1, 1)  # every window holds padding (−inf) and real entries −5
    np.testing.assert_array_equal(out, np.full((1, 1, 2, 2), -5.0))
    # each of the four padded 3×3 windows covers the whole 2×2 input: its first maximum, x[0, 0], takes
    # every window's cotangent
    np.testing.assert_array_equal(ad.grad(lambda z: ad.sum(ad.max_pool2d(z, 3, 1, 1)))(x)[0, 0], [[4, 0], [0, 0]])
    x = np.zeros((1, 1, 2, 2))
    x[0, 0, 1, 0] = np.nan
    assert np.isnan(ad.max_pool2d(x, 2)[0, 0, 0, 0])


def test_average_pool_counts_the_zero_padding():
    x = np.ones((1, 1, 2, 2))
    # 3×3 windows with padding 1 at each of the four positions see 4 ones and 5 zeros of padding: 4/9
    np.testing.assert_allclose(ad.avg_pool2d(x, 3, 1, 1), np.full((1, 1, 2, 2), 4.0 / 9.0), rtol=1e-15)


def test_flatten_is_c_order_over_channels_rows_columns():
    x = np.random.default_rng(6).standard_normal((2, 3, 4, 5))
    f = ad.flatten(x)
    for n, c, y, xx in itertools.product(range(2), range(3), range(4), range(5)):
        assert f[n, (c * 4 + y) * 5 + xx] == x[n, c, y, xx]
    check_all_modes(lambda z: ad.square(ad.flatten(z)), x[:, :2, :2, :2], 8)


# ---------------------------------------------------------------------------------------------------
# JAX/flax's NHWC / HWIO layouts.
def _nhwc_loop_conv(x, W, b):
    """flax.linen.Conv's cross-correlation with padding 'VALID', stride 1, written on NHWC / HWIO directly."""
    N, H, Wd, C = x.shape
    kh, kw, _, O = W.shape
    out = np.zeros((N, H - kh + 1, Wd - kw + 1, O))
    for n, y, xx, o in itertools.product(range(N), range(out.shape[1]), range(out.shape[2]), range(O)):
        out[n, y, xx, o] = b[o] + np.sum(x[n, y:y + kh, xx:xx + kw, :] * W[:, :, :, o])
    return out


def test_nhwc_and_hwio_conversions_and_their_inverses():
    g = np.random.default_rng(7)
    x_nhwc, W_hwio, b = g.standard_normal((2, 5, 4, 3)), g.standard_normal((3, 2, 3, 4)), g.standard_normal(4)
    x, W = ad.nhwc_to_nchw(x_nhwc), ad.hwio_to_oihw(W_hwio)
    assert x.shape == (2, 3, 5, 4) and W.shape == (4, 3, 3, 2)
    np.testing.assert_array_equal(ad.nchw_to_nhwc(x), x_nhwc)
    np.testing.assert_array_equal(ad.oihw_to_hwio(W), W_hwio)
    _close(ad.nchw_to_nhwc(ad.conv2d(x, W, b)), _nhwc_loop_conv(x_nhwc, W_hwio, b), RTOL, "flax-layout conv")
    # derivatives pass through the conversions (they are transposes)
    gx = ad.grad(lambda z: ad.sum(ad.square(ad.conv2d(ad.nhwc_to_nchw(z), W, b))))(x_nhwc)
    g_nchw = ad.grad(lambda z: ad.sum(ad.square(ad.conv2d(z, W, b))))(x)
    np.testing.assert_array_equal(gx, ad.nchw_to_nhwc(g_nchw))
    # a dense layer after flax's flatten of NHWC reads (h, w, c); after refopt's of NCHW it reads (c, h, w):
    # its weight rows permute as W_nchw = W_nhwc.reshape(H, W, C, out).transpose(2, 0, 1, 3).reshape(-1, out)
    D_nhwc = g.standard_normal((5 * 4 * 3, 6))
    D_nchw = D_nhwc.reshape(5, 4, 3, 6).transpose(2, 0, 1, 3).reshape(-1, 6)
    _close(x_nhwc.reshape(2, -1) @ D_nhwc, ad.flatten(x) @ D_nchw, RTOL, "dense after flatten")
    with pytest.raises(ValueError, match="hwio_to_oihw: W must be a non-empty 4-D"):
        ad.hwio_to_oihw(np.ones((3, 3, 2)))


# ---------------------------------------------------------------------------------------------------
# Bad input: one clear line naming the argument.
X4, W4 = np.ones((2, 3, 5, 5)), np.ones((4, 3, 3, 3))


@pytest.mark.parametrize("call, match", [
    (lambda: ad.conv2d(np.ones((3, 5, 5)), W4), r"conv2d: x must be a non-empty 4-D array \(N, C, H, W\), got shape \(3, 5, 5\)"),
    (lambda: ad.conv2d(X4, np.ones((4, 3, 3))), r"conv2d: W must be a non-empty 4-D array \(O, C, kh, kw\)"),
    (lambda: ad.conv2d(X4, np.ones((4, 2, 3, 3))), "conv2d: x has 3 channels but W of shape .* expects 2"),
    (lambda: ad.conv2d(X4, W4, np.ones(3)), r"conv2d: b must have shape \(4,\)"),
    (lambda: ad.conv2d(X4, np.ones((4, 3, 6, 3))), r"kernel \(6×3 with dilation\) is larger than the padded input \(5×5\)"),
    (lambda: ad.conv2d(X4, W4, dilation=3), r"kernel \(7×7 with dilation\) is larger than the padded input"),
    (lambda: ad.conv2d(X4, W4, padding=1, dilation=4), r"kernel \(9×9 with dilation\) is larger than the padded input \(7×7\)"),
    (lambda: ad.conv2d(X4, W4, stride=1.5), "conv2d: stride must be an integer or a pair of integers, got 1.5"),
    (lambda: ad.conv2d(X4, W4, stride=2.0), "conv2d: stride must be an integer or a pair of integers, got 2.0"),
    (lambda: ad.conv2d(X4, W4, stride=True), "conv2d: stride must be an integer or a pair of integers, got True"),
    (lambda: ad.conv2d(X4, W4, stride=(1, 2, 3)), "conv2d: stride must be an integer or a pair"),
    (lambda: ad.conv2d(X4, W4, stride=0), "conv2d: stride must be ≥ 1, got 0"),
    (lambda: ad.conv2d(X4, W4, dilation=(1, -1)), r"conv2d: dilation must be ≥ 1, got \(1, -1\)"),
    (lambda: ad.conv2d(X4, W4, padding=-1), "conv2d: padding must be ≥ 0, got -1"),
    (lambda: ad.conv2d(X4, W4, padding=0.5), "conv2d: padding must be an integer or a pair of integers, got 0.5"),
    (lambda: ad.conv2d(X4, W4, padding="full"), "conv2d: padding must be an integer, a pair of integers, 'same' or 'valid', got 'full'"),
    (lambda: ad.conv2d(X4, W4, stride=2, padding="same"), r"padding='same' needs stride 1 \(as in PyTorch\)"),
    (lambda: ad.conv2d(X4, W4, groups=3), "conv2d: groups must be 1"),
    (lambda: ad.max_pool2d(X4, 2, padding=2), r"max_pool2d: padding must be at most half the kernel size"),
    (lambda: ad.avg_pool2d(X4, 6), r"avg_pool2d: the kernel \(6×6 with dilation\) is larger than the padded input"),
    (lambda: ad.avg_pool2d(np.ones((5, 5)), 2), "avg_pool2d: x must be a non-empty 4-D array"),
    (lambda: ad.max_pool2d(X4, 0), "max_pool2d: kernel_size must be ≥ 1"),
    (lambda: ad.max_pool2d(X4, 3, 1, "same"), "max_pool2d: padding must be an integer or a pair of integers \\(no 'same'"),
    (lambda: ad.max_pool2d(X4, 2, stride="2"), "max_pool2d: stride must be an integer or a pair"),
    (lambda: ad.flatten(np.ones(3)), "flatten: expected an array with a batch axis"),
    (lambda: ad.unfold(np.ones((2, 3, 4, 5)), ad.conv_geometry((5, 5), 3)), r"unfold: expected an input of shape \(N, C, 5, 5\)"),
    (lambda: ad.fold(np.ones((2, 9, 26)), 3, ad.conv_geometry((5, 5), 3)), r"fold: expected patches of shape \(N, 9, 27\)"),
])
def test_bad_inputs_are_one_line_value_errors(call, match):
    with pytest.raises(ValueError, match=match) as err:
        call()
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("call, match", [
    (lambda: ad.conv2d(X4.astype(np.int64), W4), "conv2d: x must be a float32 or float64 array, got int64"),
    (lambda: ad.conv2d(X4.astype(np.float16), W4.astype(np.float16)), "conv2d: x must be a float32 or float64 array, got float16"),
    (lambda: ad.conv2d(X4.astype(np.float32), W4), "conv2d: expected one dtype, got x float32, W float64"),
    (lambda: ad.conv2d(X4, W4, np.ones(4, dtype=np.float32)), "conv2d: expected one dtype"),
    (lambda: ad.max_pool2d(X4.astype(int), 2), "max_pool2d: x must be a float32 or float64 array"),
])
def test_wrong_dtypes_are_type_errors(call, match):
    """As for the MLP (``MLP.check``): a wrong dtype is a TypeError, and mixed dtypes are refused rather than
    silently promoted."""
    with pytest.raises(TypeError, match=match):
        call()


def test_float32_stays_float32_and_agrees_with_float64():
    """float32 inputs give float32 values, derivatives and Hessian-vector products, equal to the float64 ones
    within the float32 rounding of sums of K = 27 products of O(1) terms: 27 · 2⁻²⁴ ≈ 2e-6 relative; 1e-5
    leaves a margin (the HVP's measured error is 2e-7)."""
    g = np.random.default_rng(8)
    x, W, b = g.standard_normal((2, 3, 5, 5)), g.standard_normal((4, 3, 3, 3)), g.standard_normal(4)

    def f(p):
        return ad.sum(ad.square(ad.max_pool2d(ad.tanh(ad.conv2d(p[0], p[1], p[2], padding=1)), 2)
                                + ad.avg_pool2d(ad.conv2d(p[0], p[1], p[2], padding="same"), 3, 2, 1)[..., :2, :2]))

    p64, p32 = (x, W, b), tuple(a.astype(np.float32) for a in (x, W, b))
    v32, g32 = ad.value_and_grad(f)(p32)
    v64, g64 = ad.value_and_grad(f)(p64)
    assert v32.dtype == np.float32 and all(a.dtype == np.float32 for a in g32)
    _close(v32, v64, 1e-5)
    for a, b_ in zip(g32, g64):
        _close(a, b_, 1e-5)
    hv = ad.hvp(f, p32, tuple(np.ones_like(a) for a in p32))
    assert all(a.dtype == np.float32 for a in hv)
    for a, b_ in zip(hv, ad.hvp(f, p64, tuple(np.ones_like(a) for a in p64))):
        _close(a, b_, 1e-5)


def test_plain_and_traced_sweeps_agree_bit_for_bit():
    """A gradient on raw arrays takes the plain rules; the same gradient inside an enclosing trace takes the
    primitive ones: the bits agree (the plain rules are the primitives' impls)."""
    g = np.random.default_rng(9)
    x, W = g.standard_normal((2, 2, 5, 5)), g.standard_normal((3, 2, 3, 3))
    f = lambda p: ad.sum(ad.tanh(ad.max_pool2d(ad.conv2d(p[0], p[1], padding=1, stride=2), 2, 1)))  # noqa: E731
    plain = ad.grad(f)((x, W))
    traced = ad.jvp(lambda p: ad.grad(f)(p), (x, W), (np.zeros_like(x), np.zeros_like(W)))[0]
    for a, b in zip(plain, traced):
        assert a.tobytes() == b.tobytes()


def test_the_conv_geometry_records_its_normalised_arguments():
    geom = ad.conv_geometry((7, 6), (3, 2), (2, 1), (1, 0), (1, 2))
    assert geom == ad.ConvGeometry((7, 6), (3, 2), (2, 1), (1, 1, 0, 0), (1, 2), (4, 4))
    assert geom.output == (math.floor((7 + 2 - 3) / 2) + 1, math.floor((6 - 3) / 1) + 1)
    assert ad.conv_geometry((5, 5), 3, padding="valid") == ad.conv_geometry((5, 5), 3, padding=0)
