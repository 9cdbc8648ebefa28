"""K-FAC for convolutions (KFC, Grosse & Martens 2016; "expand" / "reduce" of Eschenhagen et al. 2023).

The factors are checked against the same expectations built here from patches unfolded by a loop over
examples and locations; with one location (the kernel covering the image) both approximations are a dense
layer's K-FAC and, for one example, A ⊗ G is the layer's true Fisher block exactly. K-FAC's
conv_row_scale="inverse_locations" (kfac-pytorch's rows ÷ L) is checked against its definition on a strided,
padded convolution's loop patches.
"""
from __future__ import annotations

import numpy as np
import pytest

from refopt import autodiff as ad
from refopt import tree as T
from refopt.curvature import kronecker as K
from refopt.curvature.blocks import KroneckerBlocks, factor_estimates
from refopt.curvature.eigenbasis import EigenbasisBlocks, eigenbasis_scaling
from refopt.curvature.kfac_matrices import kfac_matrix, layer_factors
from refopt.nn import CNN, MLP, Conv2d, Dense, Flatten, SoftmaxCrossEntropy
from refopt.optim import make_optimizer
from refopt.optim.ekfac import EKFAC
from refopt.optim.kfac import KFAC
from refopt.problems.registry import network_oracle

RTOL = 1e-12   # float64, products of O(1) numbers over a few dozen terms


def conv_net():
    """2@4×4 → conv 2→3 3×3 (L = 4 locations, K = 18) → tanh → flatten → dense 12 → 3."""
    return CNN((2, 4, 4), [Conv2d(2, 3, 3), "tanh", Flatten(), Dense(12, 3)])


def loop_patches(X, k):
    """(N, L, C·k·k) patches of a valid, stride-1 convolution, by a loop; entries in (c, i, j) order."""
    N, C, H, W = X.shape
    out = [[X[n, :, y:y + k, x:x + k].reshape(-1) for y in range(H - k + 1) for x in range(W - k + 1)]
           for n in range(N)]
    return np.array(out)


def _setup(N=2, seed=0):
    model = conv_net()
    g = np.random.default_rng(seed)
    X, y = g.standard_normal((N, 2, 4, 4)), g.integers(0, 3, N)
    params = model.init(1)
    params[0]["b"] = g.standard_normal(3)
    oracle = network_oracle(model, SoftmaxCrossEntropy(), X.reshape(N, -1), y)
    return model, params, X, y, oracle


def test_the_statistics_pass_of_a_conv_layer_gives_loop_patches_and_the_exact_gradient():
    model, params, X, y, oracle = _setup()
    stats = oracle.kfac_statistics(params, "empirical")
    np.testing.assert_allclose(stats.inputs[0], loop_patches(X, 3), rtol=0, atol=0)
    assert stats.output_grads[0].shape == (2, 4, 3)
    want = ad.grad(lambda p: SoftmaxCrossEntropy()(model.apply(p, X), y))(params)
    for a, b in zip(T.leaves(stats.grad), T.leaves(want)):
        np.testing.assert_allclose(a, b, rtol=RTOL, atol=1e-15)


@pytest.mark.parametrize("approx", ["expand", "reduce"])
@pytest.mark.parametrize("fisher", ["empirical", "true"])
def test_conv_factors_against_a_loop_construction(approx, fisher):
    model, params, X, y, oracle = _setup()
    N = X.shape[0]
    stats = oracle.kfac_statistics(params, fisher, gradient=False)
    A, G = layer_factors(oracle, params, fisher, kfac_approx=approx)
    P = loop_patches(X, 3)                                             # (N, L, K)
    L = P.shape[1]
    abar = np.concatenate([P, np.ones((N, L, 1))], axis=2)
    probes = [p[0] for p in stats.probes]                              # each (N, L, O), reduced-loss scale 1/N
    scale = 1.0 / N
    if approx == "expand":
        A_want = sum(np.outer(abar[n, l], abar[n, l]) for n in range(N) for l in range(L)) / (N * L)
        G_want = sum(np.outer(g[n, l], g[n, l]) for g in probes for n in range(N) for l in range(L)) / scale
    else:
        A_want = sum(np.outer(abar[n].mean(0), abar[n].mean(0)) for n in range(N)) / N
        G_want = sum(np.outer(g[n].sum(0), g[n].sum(0)) for g in probes for n in range(N)) / scale
    np.testing.assert_allclose(A[0], A_want, rtol=RTOL, atol=1e-14)
    np.testing.assert_allclose(G[0], G_want, rtol=RTOL, atol=1e-16)
    assert A[0].shape == (19, 19) and G[0].shape == (3, 3)
    if fisher == "empirical":  # the probes themselves, not only their sums: ∂L/∂S by HIPS autograd of the net
        import autograd                                                # written here on the loop patches
        import autograd.numpy as anp

        def loss_of_preactivation(S):                                  # S (N, L, O): the conv layer's
            a = anp.reshape(anp.transpose(anp.tanh(S), (0, 2, 1)), (N, -1))
            z = anp.dot(a, params[1]["W"]) + params[1]["b"]
            zmax = anp.max(z, axis=1, keepdims=True)
            lse = anp.log(anp.sum(anp.exp(z - zmax), axis=1)) + zmax[:, 0]
            return anp.mean(lse - z[np.arange(N), y])
        S0 = np.einsum("nlk,ok->nlo", P, params[0]["W"].reshape(3, -1)) + params[0]["b"]
        np.testing.assert_allclose(probes[0], autograd.grad(loss_of_preactivation)(S0), rtol=1e-12, atol=1e-16)
    # the dense layer after the flatten is an ordinary K-FAC layer
    a1 = np.tanh(np.einsum("nlk,ok->nlo", P, params[0]["W"].reshape(3, -1)) + params[0]["b"])
    a1 = a1.transpose(0, 2, 1).reshape(N, -1)                          # NCHW flatten: (o, location)
    a1bar = np.concatenate([a1, np.ones((N, 1))], axis=1)
    np.testing.assert_allclose(A[1], a1bar.T @ a1bar / N, rtol=RTOL, atol=1e-15)


def test_expand_and_reduce_differ_when_there_are_several_locations():
    _, params, _, _, oracle = _setup()
    Ae, Ge = layer_factors(oracle, params, "true", kfac_approx="expand")
    Ar, Gr = layer_factors(oracle, params, "true", kfac_approx="reduce")
    assert not np.allclose(Ae[0], Ar[0]) and not np.allclose(Ge[0], Gr[0])
    np.testing.assert_array_equal(Ae[1], Ar[1])   # dense layers: the switch does nothing
    np.testing.assert_array_equal(Ge[1], Gr[1])


def _one_location_pair(seed=3):
    """A conv whose 3×3 kernel covers the 3×3 image (L = 1) and the MLP with the same maps: W_mlp = W.reshape(O, K)ᵀ."""
    cnn = CNN((2, 3, 3), [Conv2d(2, 4, 3), "tanh", Flatten(), Dense(4, 3)])
    mlp = MLP([18, 4, 3], activation="tanh")
    g = np.random.default_rng(seed)
    N = 5
    X, y = g.standard_normal((N, 18)), g.integers(0, 3, N)
    pc = cnn.init(0)
    pc[0]["b"] = 0.3 * g.standard_normal(4)
    pm = [{"W": pc[0]["W"].reshape(4, -1).T.copy(), "b": pc[0]["b"]}, {"W": pc[1]["W"], "b": pc[1]["b"]}]
    loss = SoftmaxCrossEntropy()
    return network_oracle(cnn, loss, X, y), pc, network_oracle(mlp, loss, X, y), pm


@pytest.mark.parametrize("fisher", ["true", "empirical"])
def test_one_location_expand_equals_reduce_equals_the_dense_layers_kfac(fisher):
    oc, pc, om, pm = _one_location_pair()
    Am, Gm = layer_factors(om, pm, fisher)
    for approx in ("expand", "reduce"):
        Ac, Gc = layer_factors(oc, pc, fisher, kfac_approx=approx)
        for a, b in zip(Ac + Gc, Am + Gm):
            np.testing.assert_allclose(a, b, rtol=RTOL, atol=1e-15)
    # and K-FAC's step on the CNN is the MLP's, mapped back to OIHW
    for approx in ("expand", "reduce"):
        opt_c = KFAC(fisher=fisher, kfac_approx=approx, lr=0.5)
        opt_m = KFAC(fisher=fisher, lr=0.5)
        new_c, _, info_c = opt_c.update(pc, opt_c.init(pc), oc)
        new_m, _, info_m = opt_m.update(pm, opt_m.init(pm), om)
        np.testing.assert_allclose(new_c[0]["W"].reshape(4, -1).T, new_m[0]["W"], rtol=1e-10, atol=1e-13)
        for key in ("b",):
            np.testing.assert_allclose(new_c[0][key], new_m[0][key], rtol=1e-10, atol=1e-13)
        np.testing.assert_allclose(new_c[1]["W"], new_m[1]["W"], rtol=1e-10, atol=1e-13)
        assert info_c["step_norm"] == pytest.approx(info_m["step_norm"], rel=1e-10)


def _conv_to_param_index(O, Kdim):
    """perm with dense_param[perm] = W̄-indexed: W̄ = [W.reshape(O, K)ᵀ; b] row-major vs [vec(W OIHW), b]."""
    perm = [o * Kdim + k for k in range(Kdim) for o in range(O)] + [O * Kdim + o for o in range(O)]
    return np.array(perm)


def test_one_example_one_location_kfac_is_the_true_fisher_block_exactly():
    oc, pc, _, _ = _one_location_pair()
    one = oc.with_batch(oc.X[:1], oc.y[:1])
    F = one.dense_fisher(pc, "true")
    n0 = 4 * 18 + 4                               # the conv layer's parameters come first
    perm = _conv_to_param_index(4, 18)
    F_block = F[:n0, :n0][np.ix_(perm, perm)]
    for approx in ("expand", "reduce"):
        M = kfac_matrix(one, pc, 0.0, fisher="true", kfac_approx=approx)
        np.testing.assert_allclose(M[:n0, :n0], F_block, rtol=1e-10, atol=1e-14)
    # with several locations the Kronecker approximation is only that (the check above can fail)
    _, params, _, _, oracle = _setup(N=1)
    F = oracle.dense_fisher(params, "true")
    n0 = 3 * 18 + 3
    perm = _conv_to_param_index(3, 18)
    M = kfac_matrix(oracle, params, 0.0, fisher="true")
    assert not np.allclose(M[:n0, :n0], F[:n0, :n0][np.ix_(perm, perm)], rtol=1e-3)


def test_ekfac_conv_scaling_is_the_per_example_fisher_diagonal_in_the_basis():
    model, params, X, y, oracle = _setup(N=3)
    stats = oracle.kfac_statistics(params, "empirical", gradient=False)
    A, G = layer_factors(oracle, params, "empirical")
    QA, QG = np.linalg.eigh(A[0])[1], np.linalg.eigh(G[0])[1]
    s = eigenbasis_scaling(stats.inputs[0], [stats.probes[0][0]], QA, QG, stats.scale)
    loss = SoftmaxCrossEntropy()
    want = np.zeros_like(s)
    for n in range(3):   # each example's own gradient of ℓ_n, as W̄, rotated and squared
        gn = ad.grad(lambda p: loss(model.apply(p, X[n:n + 1]), y[n:n + 1]))(params)[0]
        want += (QA.T @ K.layer_matrix(gn) @ QG) ** 2
    want *= stats.scale   # the Fisher of the mean loss: (1/N) Σ_n
    np.testing.assert_allclose(s, want, rtol=1e-10, atol=1e-16)


def test_kfac_and_ekfac_steps_on_digits_cnn_decrease_the_loss():
    pytest.importorskip("sklearn")
    from refopt.problems.registry import make_problem
    prob = make_problem("digits_cnn")
    oracle = prob.batch_oracle(list(range(256)))
    for opt in (KFAC(), KFAC(kfac_approx="reduce"), EKFAC(), make_optimizer("kfac", damping_scheme="tikhonov")):
        params = prob.init_params(0)
        state = opt.init(params)
        start = oracle.value(params)
        for _ in range(5):
            params, state, info = opt.update(params, state, oracle)
            assert not info["skipped"]
        assert oracle.value(params) < start - 0.05, type(opt).__name__
        assert params[0]["W"].shape == (8, 1, 3, 3)


def test_bad_kfac_approx_values_are_refused_naming_the_option():
    for bad in ("mean", "", None, 1, "Expand"):
        for make in (lambda v: KFAC(kfac_approx=v), lambda v: EKFAC(kfac_approx=v),
                     lambda v: KroneckerBlocks(kfac_approx=v), lambda v: EigenbasisBlocks(0.9, kfac_approx=v)):
            with pytest.raises(ValueError, match="kfac_approx"):
                make(bad)
    _, params, _, _, oracle = _setup()
    stats = oracle.kfac_statistics(params, "empirical", gradient=False)
    with pytest.raises(ValueError, match="kfac_approx"):
        factor_estimates(stats, kfac_approx="sum")
    assert KFAC.switch("kfac_approx").default == "expand" and KFAC.switches["kfac_approx"] == ("expand", "reduce")
    assert EKFAC.switches["kfac_approx"] == ("expand", "reduce")


def test_layer_matrix_and_layer_tree_round_trip_a_conv_kernel():
    g = np.random.default_rng(0)
    layer = {"W": g.standard_normal((3, 2, 3, 3)), "b": g.standard_normal(3)}
    Wbar = K.layer_matrix(layer)
    assert Wbar.shape == (19, 3)
    np.testing.assert_array_equal(Wbar[:-1], layer["W"].reshape(3, -1).T)
    back = K.layer_tree(Wbar, layer["W"].shape)
    np.testing.assert_array_equal(back["W"], layer["W"])
    np.testing.assert_array_equal(back["b"], layer["b"])
    assert K.layer_dims(layer["W"]) == (18, 3)


def test_the_analysis_kfac_operator_of_a_cnn_is_the_dense_kfac_matrix_in_the_params_order():
    """refopt.analysis applies K-FAC per layer without the n×n matrix, on flat vectors in the params' order;
    ``kfac_matrix`` indexes a conv layer by vec(W̄), W̄ = [W.reshape(O, K)ᵀ; b] (its docs). Permuted here by
    the index maps written out (W[o, c, i, j] is params entry ((o·C + c)·kh + i)·kw + j and W̄ entry
    k·O + o with k = (c·kh + i)·kw + j; b[o] is entry O·K + o of both), the two agree; with one example at
    one location both equal the exact empirical Fisher block g gᵀ."""
    from refopt.analysis import kfac_operator
    model, params, X, y, oracle = _setup(N=3)
    O, C, kh, kw = params[0]["W"].shape
    Kc = C * kh * kw
    perm = np.empty(O * Kc + O, dtype=int)   # params index → W̄ index, conv layer
    for o in range(O):
        for k in range(Kc):
            perm[o * Kc + k] = k * O + o
        perm[O * Kc + o] = Kc * O + o
    perm = np.concatenate([perm, np.arange(len(perm), T.size(params))])  # the dense layer: the same order
    dense = kfac_matrix(oracle, params, damping=0.1, fisher="empirical")[np.ix_(perm, perm)]
    op = kfac_operator(oracle, params, damping=0.1, fisher="empirical").to_dense()
    np.testing.assert_allclose(op, dense, rtol=0, atol=1e-12 * np.abs(dense).max())

    one = CNN((2, 3, 3), [Conv2d(2, 4, 3), "tanh", Flatten(), Dense(4, 3)])
    g = np.random.default_rng(5)
    X1, y1 = g.standard_normal((1, 2, 3, 3)), g.integers(0, 3, 1)
    p1 = one.init(1)
    o1 = network_oracle(one, SoftmaxCrossEntropy(), X1.reshape(1, -1), y1)
    grad = T.ravel(o1.grad(p1))
    n0 = T.size(p1[0])
    F = np.outer(grad[:n0], grad[:n0])
    got = kfac_operator(o1, p1, fisher="empirical").to_dense()[:n0, :n0]
    np.testing.assert_allclose(got, F, rtol=0, atol=1e-12 * np.abs(F).max())

    # the operator takes both conv switches: with kfac_approx="reduce" and conv_row_scale it is kfac_matrix's
    # of the same settings (the conv block of conv_net has L = 4 locations: ÷ L² = ÷ 16 on each factor)
    for approx, row_scale in (("reduce", "none"), ("expand", "inverse_locations")):
        dense = kfac_matrix(oracle, params, fisher="empirical", kfac_approx=approx,
                            conv_row_scale=row_scale)[np.ix_(perm, perm)]
        op = kfac_operator(oracle, params, fisher="empirical", kfac_approx=approx, conv_row_scale=row_scale).to_dense()
        np.testing.assert_allclose(op, dense, rtol=0, atol=1e-12 * np.abs(dense).max())
    A, G = layer_factors(oracle, params, fisher="empirical")
    A16, G16 = layer_factors(oracle, params, fisher="empirical", conv_row_scale="inverse_locations")
    np.testing.assert_allclose(A16[0] * 16, A[0], rtol=1e-14)
    np.testing.assert_allclose(G16[0] * 16, G[0], rtol=1e-14)
    np.testing.assert_array_equal(A16[1], A[1])   # the dense layer: unchanged


# --- conv_row_scale="inverse_locations": kfac-pytorch's rows divided by L ------------------------------------
def _strided_loop_patches(X, k, stride, pad):
    """(N, L, C·k·k) patches of a k×k convolution with the given stride and zero padding, by loops over
    examples and output locations (row-major), entries in (c, i, j) order: kfac-pytorch's _extract_patches
    (pad, then Tensor.unfold over rows and columns) written out."""
    N, C, H, W = X.shape
    Xp = np.zeros((N, C, H + 2 * pad, W + 2 * pad))
    Xp[:, :, pad:pad + H, pad:pad + W] = X
    Ho, Wo = (H + 2 * pad - k) // stride + 1, (W + 2 * pad - k) // stride + 1
    return np.array([[Xp[n, :, y * stride:y * stride + k, x * stride:x * stride + k].reshape(-1)
                      for y in range(Ho) for x in range(Wo)] for n in range(N)])


def test_inverse_locations_rows_give_kfac_pytorch_s_conv_factors_from_the_definition():
    """kfac-pytorch (kfac/layers/modules.py, Conv2dModuleHelper): A = get_cov(append_bias_ones(P)/L) and
    G = get_cov(g/L) over the N·L rows (get_cov: XᵀX / rows), g the reduced loss's output gradients. Built
    here from loop patches and HIPS autograd's ∂L/∂S of the network written on them; refopt's first factor
    estimate ("mean": taken as is) under output_grad_scale="reduced_loss" must be exactly that."""
    import autograd
    import autograd.numpy as anp

    model = CNN((2, 5, 5), [Conv2d(2, 3, 3, stride=2, padding=1), "tanh", Flatten(), Dense(27, 3)])
    g = np.random.default_rng(4)
    N = 4
    X, y = g.standard_normal((N, 2, 5, 5)), g.integers(0, 3, N)
    params = model.init(2)
    params[0]["b"] = 0.5 * g.standard_normal(3)
    oracle = network_oracle(model, SoftmaxCrossEntropy(), X.reshape(N, -1), y)
    P = _strided_loop_patches(X, 3, 2, 1)                                 # (N, 9, 18)
    L = P.shape[1]
    assert L == 9

    def loss_of_preactivation(S):                                         # S (N, L, O)
        a = anp.reshape(anp.transpose(anp.tanh(S), (0, 2, 1)), (N, -1))   # NCHW flatten: (o, location)
        z = anp.dot(a, params[1]["W"]) + params[1]["b"]
        zmax = anp.max(z, axis=1, keepdims=True)
        lse = anp.log(anp.sum(anp.exp(z - zmax), axis=1)) + zmax[:, 0]
        return anp.mean(lse - z[np.arange(N), y])
    S0 = np.einsum("nlk,ok->nlo", P, params[0]["W"].reshape(3, -1)) + params[0]["b"]
    gS = autograd.grad(loss_of_preactivation)(S0)                         # (N, L, O), reduced-loss scale
    rows_a = [np.append(P[n, l], 1.0) / L for n in range(N) for l in range(L)]
    rows_g = [gS[n, l] / L for n in range(N) for l in range(L)]
    A_want = sum(np.outer(r, r) for r in rows_a) / (N * L)
    G_want = sum(np.outer(r, r) for r in rows_g) / (N * L)
    assert A_want[-1, -1] == pytest.approx(1.0 / L ** 2)                  # the bias's 1 is divided too

    hp = dict(fisher="empirical", output_grad_scale="reduced_loss", factor_init="mean", inverse="eig",
              damping_scheme="eigen", kl_clip=None, momentum=0.0)
    opt = KFAC(conv_row_scale="inverse_locations", **hp)
    _, state, _ = opt.update(params, opt.init(params), oracle)
    np.testing.assert_allclose(state.factors["A"][0], A_want, rtol=RTOL, atol=1e-16)
    np.testing.assert_allclose(state.factors["G"][0], G_want, rtol=RTOL, atol=1e-20)
    # the dense head and "none" are the plain expand factors: 1/L² apart on the conv layer, equal on the dense
    plain = KFAC(**hp)
    _, s0, _ = plain.update(params, plain.init(params), oracle)
    np.testing.assert_allclose(s0.factors["A"][0], L ** 2 * A_want, rtol=RTOL, atol=1e-14)
    np.testing.assert_allclose(s0.factors["G"][0], L ** 2 * G_want, rtol=RTOL, atol=1e-18)
    for name in ("A", "G"):
        np.testing.assert_array_equal(state.factors[name][1], s0.factors[name][1])


def test_inverse_locations_changes_nothing_on_an_mlp_and_is_refused_when_misspelt():
    _, pc, om, pm = _one_location_pair()
    runs = []
    for row_scale in ("none", "inverse_locations"):
        opt = KFAC(conv_row_scale=row_scale, fisher="empirical", lr=0.5)
        params, state = pm, opt.init(pm)
        for _ in range(3):
            params, state, _ = opt.update(params, state, om)
        runs.append(params)
    for a, b in zip(T.leaves(runs[0]), T.leaves(runs[1])):
        np.testing.assert_array_equal(a, b)
    # one location (L = 1): the conv layer's factors are unchanged too
    oc = _one_location_pair()[0]
    stats = oc.kfac_statistics(pc, "empirical", gradient=False)
    est = factor_estimates(stats)
    scaled = K.scale_conv_factors(est, stats.inputs, "inverse_locations")
    for name in ("A", "G"):
        for a, b in zip(est[name], scaled[name]):
            np.testing.assert_array_equal(a, b)
    for bad in ("inverse", None, "Inverse_locations"):
        with pytest.raises(ValueError, match="conv_row_scale"):
            KFAC(conv_row_scale=bad)
        with pytest.raises(ValueError, match="conv_row_scale"):
            K.scale_conv_factors(est, stats.inputs, bad)
    assert KFAC.switch("conv_row_scale").default == "none"
    assert "conv_row_scale" not in EKFAC.switches   # kfac-pytorch has no EKFAC: not offered there
