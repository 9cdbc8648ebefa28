"""MLPs, losses as negative log-likelihoods, per-layer statistics, and their input checks."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from refopt import autodiff as ad
from refopt import tree as T
from refopt.nn import LOSSES, MLP, Bernoulli, Gaussian, SoftmaxCrossEntropy, layer_statistics, make_loss

TOL = dict(rtol=1e-10, atol=1e-12)
seeds = st.integers(0, 2 ** 31)

NP_ACT = {"tanh": np.tanh, "relu": lambda s: np.maximum(s, 0.0), "identity": lambda s: s,
          "sigmoid": lambda s: 1.0 / (1.0 + np.exp(-s)), "softplus": lambda s: np.log1p(np.exp(s))}


def _softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def make_problem(kind, reduction, B, C, gen, dtype=np.float64):
    """(loss, z, y) for a loss kind with random outputs and matching targets."""
    z = gen.standard_normal((B, C)).astype(dtype)
    if kind == "softmax":
        return SoftmaxCrossEntropy(reduction), z, gen.integers(0, C, B)
    if kind == "gaussian":
        return Gaussian(reduction, variance=float(gen.uniform(0.3, 3.0))), z, gen.standard_normal((B, C)).astype(dtype)
    return Bernoulli(reduction), z, gen.integers(0, 2, (B, C)).astype(dtype)


# ---------------------------------------------------------------------------------------------------
# MLP.

@pytest.mark.parametrize("act", sorted(NP_ACT))
def test_forward_pass_matches_numpy(act):
    gen = np.random.default_rng(0)
    model = MLP([3, 5, 4, 2], activation=act)
    params = model.init(1)
    X = gen.standard_normal((6, 3))
    a = X
    for l, p in enumerate(params):
        s = a @ p["W"] + p["b"]
        a = NP_ACT[act](s) if l < 2 else s
    np.testing.assert_allclose(model.apply(params, X), a, **TOL)
    np.testing.assert_allclose(model(params, X), a, **TOL)


@pytest.mark.parametrize("act", ["tanh", "relu", "identity"])
def test_forward_pass_is_numpys_bit_for_bit_and_writes_no_input(act):
    """One affine node per layer (its bias added in place into the fresh product) computes exactly
    NumPy's a @ W + b, and the in-place add never reaches X or the parameters."""
    gen = np.random.default_rng(2)
    model = MLP([5, 16, 8, 3], activation=act)
    params = T.tree_map(lambda a: a + 0.1 * gen.standard_normal(a.shape), model.init(0))
    X = gen.standard_normal((7, 5))
    kept = [a.copy() for a in T.leaves((params, X))]
    a = X
    for l, p in enumerate(params):
        a = a @ p["W"] + p["b"]
        a = NP_ACT[act](a) if l < 2 else a
    for z in (model.apply(params, X), ad.vjp(lambda p: model.apply(p, X), params)[0]):
        assert z.dtype == a.dtype and z.tobytes() == a.tobytes()
    for x, k in zip(T.leaves((params, X)), kept):
        assert x.tobytes() == k.tobytes()


def test_per_layer_activations_and_output_activation():
    model = MLP([2, 3, 3, 1], activation=["relu", "tanh"], output_activation="sigmoid")
    assert model.activations == ["relu", "tanh", "sigmoid"]
    params = model.init(0)
    X = np.random.default_rng(0).standard_normal((4, 2))
    out = model.apply(params, X)
    expected = _sigmoid(np.tanh(np.maximum(X @ params[0]["W"] + params[0]["b"], 0) @ params[1]["W"]
                                + params[1]["b"]) @ params[2]["W"] + params[2]["b"])
    np.testing.assert_allclose(out, expected, **TOL)


def test_initialisation_is_seeded_and_follows_each_scheme():
    sizes = [200, 300, 10]
    a, b = MLP(sizes).init(5), MLP(sizes).init(5)
    assert all(np.array_equal(x, y) for x, y in zip(T.leaves(a), T.leaves(b)))
    assert not np.array_equal(MLP(sizes).init(6)[0]["W"], a[0]["W"])
    lim = np.sqrt(6 / 500)
    assert np.abs(a[0]["W"]).max() <= lim and np.abs(a[0]["W"]).max() > 0.95 * lim  # glorot uniform
    assert all(np.all(p["b"] == 0) for p in a)
    he = MLP(sizes, init="he").init(0)[0]["W"]
    assert abs(he.std() / np.sqrt(2 / 200) - 1) < 0.02
    lecun = MLP(sizes, init="lecun").init(0)[0]["W"]
    assert abs(lecun.std() / np.sqrt(1 / 200) - 1) < 0.02
    normal = MLP(sizes, init="normal", init_scale=0.3).init(0)[0]["W"]
    assert abs(normal.std() / 0.3 - 1) < 0.02
    assert MLP([3, 4, 2]).num_params == 3 * 4 + 4 + 4 * 2 + 2 == T.size(MLP([3, 4, 2]).init(0))
    # The documented scheme: one host Generator, layer by layer, W then nothing for b (zeros).
    g = np.random.default_rng(5)
    np.testing.assert_array_equal(a[0]["W"], g.uniform(-lim, lim, (200, 300)))
    lim2 = np.sqrt(6 / 310)
    np.testing.assert_array_equal(a[1]["W"], g.uniform(-lim2, lim2, (300, 10)))



def test_mlp_and_cnn_share_their_parameter_code():
    """MLP.parameter_shapes as CNN's; the dense CNN with the MLP's layers draws the MLP's parameters bit for bit
    (one init_layer_params) and refuses wrong ones with the same messages (one check_layer_params)."""
    from refopt.nn.conv import CNN, Dense, Flatten
    from refopt.nn.mlp import check_layer_params, init_layer_params
    mlp = MLP([12, 5, 3], init="he")
    cnn = CNN((3, 2, 2), [Flatten(), Dense(12, 5), "tanh", Dense(5, 3)], init="he")
    assert mlp.parameter_shapes() == cnn.parameter_shapes() == [((12, 5), (5,)), ((5, 3), (3,))]
    for dtype in (np.float64, np.float32):
        a, b = mlp.init(7, dtype), cnn.init(7, dtype)
        assert all(x.dtype == dtype and np.array_equal(x, y) for x, y in zip(T.leaves(a), T.leaves(b)))
    assert T.size(mlp.init(0)) == mlp.num_params
    p = mlp.init(0)
    X = np.zeros((2, 12))
    bad = [p[:1], [p[0], {"W": p[1]["W"]}], [p[0], {"W": p[1]["W"].T, "b": p[1]["b"]}]]
    for params in bad:
        with pytest.raises(ValueError) as m_err:
            mlp.check(params, X)
        with pytest.raises(ValueError) as c_err:
            cnn.check(params, X)
        assert str(m_err.value) == str(c_err.value)
    with pytest.raises(ValueError, match=r"params\[1\]: expected W of shape \(5, 3\) and b of shape \(3,\), got "
                                         r"\(3, 5\) and \(3,\)"):
        check_layer_params(bad[2], mlp.parameter_shapes())
    with pytest.raises(TypeError, match="dtype must be float32 or float64"):
        init_layer_params(0, np.int64, "glorot", 0.01, [((2, 2), (2,), 2, 2)])

def test_float32_model_end_to_end():
    model = MLP([3, 4, 2])
    params = model.init(0, dtype=np.float32)
    X = np.random.default_rng(0).standard_normal((5, 3)).astype(np.float32)
    y = np.array([0, 1, 1, 0, 1])
    f = lambda p: SoftmaxCrossEntropy()(model.apply(p, X), y)  # noqa: E731
    value, g = ad.value_and_grad(f)(params)
    assert value.dtype == np.float32 and all(leaf.dtype == np.float32 for leaf in T.leaves(g))
    hv = ad.hvp(f, params, T.tree_map(np.ones_like, params))
    assert all(leaf.dtype == np.float32 for leaf in T.leaves(hv))
    g64 = ad.grad(lambda p: SoftmaxCrossEntropy()(model.apply(p, X.astype(float)), y))(
        T.tree_map(lambda a: a.astype(float), params))
    np.testing.assert_allclose(T.ravel(g), T.ravel(g64), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("kwargs,match", [
    (dict(sizes=[3]), "sizes"), (dict(sizes=[3, 0, 2]), "sizes"), (dict(sizes=[3, 4, 2], activation="gelu"), "gelu"),
    (dict(sizes=[3, 4, 2], activation=["tanh", "relu"]), "activation"), (dict(sizes=[3, 2], init="xavier"), "init"),
    (dict(sizes=[3, 2], output_activation="softmax"), "softmax")])
def test_invalid_networks_are_value_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MLP(**kwargs)


def test_bad_inputs_to_the_network_name_the_argument():
    model = MLP([3, 4, 2])
    params = model.init(0)
    X = np.zeros((5, 3))
    with pytest.raises(ValueError, match=r"X: expected shape \(batch, 3\)"):
        model.apply(params, np.zeros((5, 4)))
    with pytest.raises(ValueError, match="X: expected shape"):
        model.apply(params, np.zeros(3))
    with pytest.raises(TypeError, match="X: expected a float32 or float64"):
        model.apply(params, np.zeros((5, 3), dtype=np.int64))
    with pytest.raises(TypeError, match="X: expected a float32 or float64"):
        model.apply(params, np.zeros((5, 3), dtype=np.float16))
    with pytest.raises(TypeError, match="X: dtype float32 differs"):
        model.apply(params, X.astype(np.float32))
    bad = [dict(p) for p in params]
    bad[1]["W"] = np.zeros((4, 3))
    with pytest.raises(ValueError, match=r"params\[1\]: expected W of shape \(4, 2\)"):
        model.apply(bad, X)
    bad = [dict(p) for p in params]
    bad[0]["b"] = np.zeros((1, 4))  # would broadcast silently
    with pytest.raises(ValueError, match=r"params\[0\]"):
        model.apply(bad, X)
    with pytest.raises(ValueError, match="params"):
        model.apply(params[:1], X)
    with pytest.raises(ValueError, match=r"params\[0\]: expected a dict"):
        model.apply([{"W": params[0]["W"]}, params[1]], X)
    half = [{"W": p["W"].astype(np.float16), "b": p["b"].astype(np.float16)} for p in params]
    with pytest.raises(TypeError, match="params"):
        model.apply(half, X.astype(np.float16))
    mixed = [{"W": params[0]["W"].astype(np.float32), "b": params[0]["b"]}, params[1]]
    with pytest.raises(TypeError, match="params"):
        model.apply(mixed, X)
    with pytest.raises(TypeError, match="dtype"):
        model.init(0, dtype=np.float16)


# ---------------------------------------------------------------------------------------------------
# Losses.

@settings(max_examples=10)
@given(kind=st.sampled_from(["softmax", "gaussian", "bernoulli"]), B=st.integers(1, 5), C=st.integers(2, 4),
       seed=seeds)
def test_losses_closed_forms(kind, B, C, seed):
    gen = np.random.default_rng(seed)
    loss_sum, z, y = make_problem(kind, "sum", B, C, gen)
    loss_mean = type(loss_sum)("mean", **({"variance": loss_sum.variance} if kind == "gaussian" else {}))
    if kind == "softmax":
        p = _softmax(z)
        per = -np.log(p[np.arange(B), y])
        r = p - np.eye(C)[y]
        Hs = [np.diag(pi) - np.outer(pi, pi) for pi in p]
    elif kind == "gaussian":
        s2 = loss_sum.variance
        per = ((z - y) ** 2).sum(1) / (2 * s2)
        r = (z - y) / s2
        Hs = [np.eye(C) / s2] * B
    else:
        p = _sigmoid(z)
        per = -(y * np.log(p) + (1 - y) * np.log(1 - p)).sum(1)
        r = p - y
        Hs = [np.diag(pi * (1 - pi)) for pi in p]
    np.testing.assert_allclose(loss_sum.per_example(z, y), per, rtol=1e-10)
    np.testing.assert_allclose(loss_sum(z, y), per.sum(), rtol=1e-10)
    np.testing.assert_allclose(loss_mean(z, y), per.mean(), rtol=1e-10)
    assert loss_mean.scale(B) == 1.0 / B and loss_sum.scale(B) == 1.0
    np.testing.assert_allclose(loss_sum.output_grad(z, y), r, **TOL)
    np.testing.assert_allclose(loss_mean.output_grad(z, y), r, **TOL)  # per example, unreduced
    np.testing.assert_allclose(loss_sum.output_hessian(z, y), np.stack(Hs), **TOL)
    u = gen.standard_normal((B, C))
    np.testing.assert_allclose(loss_sum.output_hessian_vp(z, y, u), np.einsum("bij,bj->bi", np.stack(Hs), u), **TOL)
    # The output Hessian is the autodiff's Hessian of ℓ_i with respect to z_i.
    for i in range(B):
        Hi = ad.hessian(lambda zi: ad.sum(loss_sum.per_example(ad.reshape(zi, (1, C)), y[i:i + 1])), z[i])
        np.testing.assert_allclose(Hi, Hs[i], **TOL)


@pytest.mark.parametrize("kind", ["softmax", "bernoulli"])
def test_output_fisher_by_enumerating_every_label(kind):
    """E_y[r rᵀ] from enumeration over all labels (every class; every 0/1 vector) equals output_fisher,
    which equals the output Hessian: the true Fisher is the GGN for these likelihoods."""
    gen = np.random.default_rng(0)
    B, C = 3, 3
    loss, z, _ = make_problem(kind, "mean", B, C, gen)
    expect = np.zeros((B, C, C))
    for i in range(B):
        zi = z[i:i + 1]
        if kind == "softmax":
            p = _softmax(zi)[0]
            draws = [(np.array([c]), p[c]) for c in range(C)]
        else:
            p = _sigmoid(zi)[0]
            draws = [(np.array([bits], dtype=float), np.prod(np.where(np.array(bits) == 1, p, 1 - p)))
                     for bits in itertools.product([0, 1], repeat=C)]
        for yv, prob in draws:
            r = loss.output_grad(zi, yv)[0]
            expect[i] += prob * np.outer(r, r)
    np.testing.assert_allclose(loss.output_fisher(z), expect, **TOL)
    np.testing.assert_allclose(loss.output_hessian(z), expect, **TOL)


def test_gaussian_output_fisher_matches_sampling():
    """E[r rᵀ] = I/σ² under y ∼ N(z, σ² I), checked on 200 000 seeded draws within 5 standard errors."""
    loss = Gaussian(variance=0.5)
    z = np.array([[0.3, -1.0]])
    ys = loss.sample(z, 0, 200_000)[:, 0, :]
    r = (z - ys) / loss.variance
    est = np.einsum("ki,kj->ij", r, r) / len(r)
    # each entry of r rᵀ has variance ≤ 2/σ⁴ (Gaussian fourth moments): SE ≈ sqrt(2/n)/σ²
    se = np.sqrt(2 / len(r)) / loss.variance
    np.testing.assert_allclose(est, loss.output_fisher(z)[0], atol=5 * se)
    np.testing.assert_allclose(loss.output_fisher(z)[0], np.eye(2) / 0.5, **TOL)


def test_sampling_follows_the_documented_schemes():
    gen = np.random.default_rng(0)
    z = gen.standard_normal((4, 3))
    k = 5
    ce = SoftmaxCrossEntropy()
    u = np.random.default_rng(11).random((k, 4))
    cdf = np.cumsum(_softmax(z), axis=1)
    expected = np.array([[int(np.argmax(u[j, b] < cdf[b])) for b in range(4)] for j in range(k)])
    labels = ce.sample(z, 11, k)
    np.testing.assert_array_equal(labels, expected)
    assert labels.dtype == np.int64 and labels.shape == (k, 4)
    np.testing.assert_array_equal(ce.sample(z, 11, k), labels)  # same seed, same draws
    be = Bernoulli()
    ub = np.random.default_rng(12).random((k, 4, 3))
    np.testing.assert_array_equal(be.sample(z, 12, k), (ub < _sigmoid(z)).astype(float))
    ga = Gaussian(variance=2.0)
    eps = np.random.default_rng(13).standard_normal((k, 4, 3))
    np.testing.assert_allclose(ga.sample(z, 13, k), z[None] + np.sqrt(2.0) * eps, **TOL)


def test_sampled_label_frequencies_match_the_model():
    z = np.array([[2.0, 0.0, -1.0], [0.0, 0.0, 0.0]])
    labels = SoftmaxCrossEntropy().sample(z, 0, 40_000)
    p = _softmax(z)
    for b in range(2):
        freq = np.bincount(labels[:, b], minlength=3) / labels.shape[0]
        assert np.all(np.abs(freq - p[b]) < 5 * np.sqrt(p[b] * (1 - p[b]) / labels.shape[0]))
    bern = Bernoulli().sample(z, 1, 40_000).mean(axis=0)
    assert np.all(np.abs(bern - _sigmoid(z)) < 5 * np.sqrt(0.25 / 40_000))


def test_loss_registry():
    assert set(LOSSES) == {"softmax_cross_entropy", "gaussian", "bernoulli"}
    made = make_loss("gaussian", variance=2.0)
    assert isinstance(made, Gaussian) and made.variance == 2.0
    with pytest.raises(ValueError, match="unknown loss"):
        make_loss("hinge")


def test_loss_constructor_errors():
    with pytest.raises(ValueError, match="reduction"):
        SoftmaxCrossEntropy("none")
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="variance"):
            Gaussian(variance=bad)


def test_bad_targets_and_outputs_name_the_argument():
    z = np.zeros((4, 3))
    ce = SoftmaxCrossEntropy()
    with pytest.raises(TypeError, match="y: expected integer class labels"):
        ce(z, np.array([0.0, 1.0, 2.0, 1.0]))
    with pytest.raises(ValueError, match=r"y: labels must lie in \[0, 2\]"):
        ce(z, np.array([0, 1, 3, 1]))
    with pytest.raises(ValueError, match=r"y: labels must lie"):
        ce(z, np.array([0, -1, 2, 1]))
    with pytest.raises(ValueError, match=r"y: expected shape \(4,\)"):
        ce(z, np.array([[0], [1], [2], [1]]))
    ga = Gaussian()
    with pytest.raises(ValueError, match=r"y: expected shape \(4, 3\)"):
        ga(z, np.zeros(3))  # would broadcast over the batch
    with pytest.raises(ValueError, match=r"y: expected shape \(4, 3\)"):
        ga(z, np.zeros((4, 1)))
    with pytest.raises(TypeError, match="y: expected real targets"):
        ga(z, np.zeros((4, 3), dtype=int))
    with pytest.raises(ValueError, match="y: targets contain NaN"):
        ga(z, np.full((4, 3), np.nan))
    be = Bernoulli()
    with pytest.raises(ValueError, match="y: Bernoulli targets must be 0 or 1"):
        be(z, np.full((4, 3), 0.5))
    with pytest.raises(ValueError, match=r"y: expected shape \(4, 3\)"):
        be(z, np.zeros((4, 1)))
    for loss, y in ((ce, np.zeros(4, dtype=int)), (ga, np.zeros((4, 3))), (be, np.zeros((4, 3)))):
        with pytest.raises(ValueError, match="z: the network outputs .* NaN or Inf"):
            loss(np.full((4, 3), np.inf), y)
        with pytest.raises(ValueError, match="z: expected network outputs of shape"):
            loss(np.zeros(3), y)
        with pytest.raises(ValueError, match="u: expected shape"):
            loss.output_hessian_vp(z, y, np.ones(3))
    # check=False lets a non-finite output through (a line search's trial point) as a non-finite loss
    assert not np.isfinite(ga(np.full((4, 3), np.inf), np.zeros((4, 3)), check=False))


def test_gaussian_targets_take_the_outputs_dtype():
    z = np.ones((2, 2), dtype=np.float32)
    value = Gaussian()(z, np.zeros((2, 2)))
    assert value.dtype == np.float32


@settings(max_examples=10)
@given(kind=st.sampled_from(["softmax", "gaussian", "bernoulli"]), B=st.integers(1, 5), C=st.integers(2, 4),
       seed=seeds)
def test_mean_all_reduction_closed_forms(kind, B, C, seed):
    """"mean_all" is (1/(B·E)) Σ_i ℓ_i with E = C entries per example (Gaussian, Bernoulli) or E = 1
    (softmax CE, where it is "mean" bit for bit); the gradient in z is r/(B·E); scale(B, C) = 1/(B·E);
    the likelihood's pieces (H_i, output Fisher, samples) do not depend on the reduction."""
    gen = np.random.default_rng(seed)
    loss_sum, z, y = make_problem(kind, "sum", B, C, gen)
    kw = {"variance": loss_sum.variance} if kind == "gaussian" else {}
    loss_all, loss_mean = type(loss_sum)("mean_all", **kw), type(loss_sum)("mean", **kw)
    E = 1 if kind == "softmax" else C
    per = loss_sum.per_example(z, y)
    np.testing.assert_allclose(loss_all(z, y), per.sum() / (B * E), rtol=1e-12)
    assert loss_all.scale(B, C) == 1.0 / (B * E) and loss_all.entries(C) == E
    np.testing.assert_allclose(ad.grad(lambda zz: loss_all(zz, y))(z), loss_sum.output_grad(z, y) / (B * E), **TOL)
    np.testing.assert_array_equal(loss_all.output_grad(z, y), loss_mean.output_grad(z, y))  # per example
    np.testing.assert_array_equal(loss_all.output_hessian(z, y), loss_mean.output_hessian(z, y))
    np.testing.assert_array_equal(loss_all.output_fisher(z), loss_mean.output_fisher(z))
    np.testing.assert_array_equal(loss_all.sample(z, seed=seed % 1000, k=2), loss_mean.sample(z, seed=seed % 1000, k=2))
    if kind == "softmax":
        assert loss_all(z, y) == loss_mean(z, y) and loss_all.scale(B) == loss_mean.scale(B)
    else:
        with pytest.raises(ValueError, match="outputs=C"):
            loss_all.scale(B)


def test_torch_loss_mappings_in_closed_form():
    """torch's MSELoss("mean") = mean((z − y)²) is Gaussian(0.5, "mean_all"); the per-example mapping
    Gaussian(C/2, "mean") has the same value; BCEWithLogitsLoss("mean") (the mean of the elementwise
    sigmoid cross-entropy) is Bernoulli("mean_all") and C× smaller than Bernoulli("mean")."""
    gen = np.random.default_rng(4)
    B, C = 6, 3
    z, y = gen.standard_normal((B, C)), gen.standard_normal((B, C))
    np.testing.assert_allclose(Gaussian("mean_all", variance=0.5)(z, y), np.mean((z - y) ** 2), rtol=1e-14)
    np.testing.assert_allclose(Gaussian("mean", variance=C / 2)(z, y), np.mean((z - y) ** 2), rtol=1e-14)
    np.testing.assert_allclose(Gaussian("sum", variance=0.5)(z, y), np.sum((z - y) ** 2), rtol=1e-14)
    t = gen.integers(0, 2, (B, C)).astype(float)
    bce = np.mean(np.logaddexp(0.0, z) - t * z)
    np.testing.assert_allclose(Bernoulli("mean_all")(z, t), bce, rtol=1e-14)
    np.testing.assert_allclose(Bernoulli("mean")(z, t), C * bce, rtol=1e-14)
    # Sampling belongs to the likelihood: Gaussian(variance=σ²) draws y = z + σ ε, ε from rng(seed).
    eps = np.random.default_rng(9).standard_normal((1, B, C))
    np.testing.assert_array_equal(Gaussian("mean_all", variance=0.5).sample(z, 9), z[None] + 0.5 ** 0.5 * eps)


# ---------------------------------------------------------------------------------------------------
# Per-layer statistics.

@settings(max_examples=10)
@given(kind=st.sampled_from(["softmax", "gaussian", "bernoulli"]),
       reduction=st.sampled_from(["mean", "mean_all", "sum"]),
       depth=st.integers(1, 3), B=st.integers(1, 4), act=st.sampled_from(["tanh", "relu", "softplus"]), seed=seeds)
def test_layer_statistics_reproduce_the_gradient(kind, reduction, depth, B, act, seed):
    """∇W_l = Σ_i a_{l−1,i} g_{l,i}ᵀ and ∇b_l = Σ_i g_{l,i}; example i's own gradient is g_{l,i}/scale."""
    gen = np.random.default_rng(seed)
    sizes = [int(gen.integers(1, 4)) for _ in range(depth)] + [3]
    model = MLP(sizes, activation=act, init="normal", init_scale=0.7)
    params = model.init(seed)
    loss, _, y = make_problem(kind, reduction, B, 3, gen)
    X = gen.standard_normal((B, sizes[0]))
    stats = layer_statistics(model, loss, params, X, y)
    value, grad = ad.value_and_grad(lambda p: loss(model.apply(p, X), y))(params)
    np.testing.assert_allclose(stats.loss, value, **TOL)
    np.testing.assert_allclose(T.ravel(stats.grad), T.ravel(grad), **TOL)
    assert len(stats.inputs) == len(stats.output_grads) == model.num_layers
    a = X
    for l, p in enumerate(params):
        assert stats.inputs[l].shape == (B, sizes[l]) and stats.output_grads[l].shape == (B, sizes[l + 1])
        np.testing.assert_allclose(stats.inputs[l], a, **TOL)
        np.testing.assert_allclose(stats.inputs[l].T @ stats.output_grads[l], grad[l]["W"], **TOL)
        np.testing.assert_allclose(stats.output_grads[l].sum(0), grad[l]["b"], **TOL)
        # With the bias as the last row of [W; b] and a trailing 1 on a: [a, 1]ᵀ g = [∇W; ∇b].
        abar = np.hstack([stats.inputs[l], np.ones((B, 1))])
        np.testing.assert_allclose(abar.T @ stats.output_grads[l], np.vstack([grad[l]["W"], grad[l]["b"]]), **TOL)
        a = NP_ACT[act](a @ p["W"] + p["b"]) if l < len(params) - 1 else None
    # Per example: g_l / scale is the gradient of ℓ_i alone (B·g_l for mean, g_l for sum).
    i = int(gen.integers(0, B))
    sl = slice(i, i + 1)
    gi = ad.grad(lambda p: ad.sum(loss.per_example(model.apply(p, X[sl]), y[sl])))(params)
    scale = loss.scale(B, sizes[-1])
    for l in range(model.num_layers):
        own = np.outer(stats.inputs[l][i], stats.output_grads[l][i]) / scale
        np.testing.assert_allclose(own, gi[l]["W"], **TOL)


# ---------------------------------------------------------------------------------------------------
# Softmax cross-entropy as one node: the same bits as the five-node composition it replaced.

def _composed_ce(reduction):
    """L written out with the five primitives, as Loss.__call__ composes it from ``per_example``."""
    def f(z, y):
        total = ad.sum(ad.subtract(ad.logsumexp(z, axis=1), ad.take_labels(z, y)))
        return total if reduction == "sum" else ad.divide(total, float(ad.shape_of(z)[0]))
    return f


class _ComposedCE(SoftmaxCrossEntropy):
    """Redefines ``per_example`` (with the same formula), so the loss takes the base class's composition."""

    def per_example(self, z, y):
        return ad.subtract(ad.logsumexp(z, axis=1), ad.take_labels(z, y))


def _bits(x):
    """Every array and number in a (nested) result as (type, dtype, shape, bytes): equal means bit-identical,
    except that every NaN counts as one (NumPy 1.23 gives the composition itself NaNs of either sign from
    one call to the next, where a NaN cotangent meets the −NaN of its negation)."""
    if isinstance(x, dict):
        return [(k, _bits(v)) for k, v in sorted(x.items())]
    if isinstance(x, (list, tuple)):
        return [type(x).__name__] + [_bits(v) for v in x]
    if x is None or isinstance(x, (bool, int, str)):
        return x
    a = np.asarray(x)
    if a.dtype.kind == "f":
        a = np.where(np.isnan(a), np.array(np.nan, dtype=a.dtype), a)
    return (type(x).__name__, a.dtype.str, a.shape, a.tobytes())


def _top_primitive(loss, z, y):
    """The primitive of the node that makes the loss's output (None if it is untraced)."""
    seen = []

    def f(zz):
        out = loss(zz, y)
        seen.append(out.node.prim if isinstance(out, ad.Box) else None)
        return out
    ad.grad(f)(z)
    return seen[0]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("reduction", ["mean", "mean_all", "sum"])
def test_fused_cross_entropy_is_the_composition_bit_for_bit(dtype, reduction):
    """Value, gradient, vjp (cotangents 2.5, −1, ±0, ∞, NaN), jvp and the Hessian-vector products in three modes
    (fwd-over-rev, rev-over-rev, rev-over-fwd) on random logits, some rows with probabilities that underflow to 0,
    B = 1..9 and C = 1..4: equal to the written-out composition to the bit, dtype and type included."""
    gen = np.random.default_rng(11)
    loss = SoftmaxCrossEntropy(reduction)
    composed = _composed_ce(reduction)
    specials = [2.5, -1.0, 0.0, -0.0, np.inf, np.nan]
    for B in range(1, 10):
        for C in range(1, 5):
            z = (gen.standard_normal((B, C)) * (300.0 if B % 3 == 0 else 2.0)).astype(dtype)  # ×300: p underflows
            y = gen.integers(0, C, B)
            u, w = (gen.standard_normal((B, C)).astype(dtype) for _ in range(2))
            fused, comp = (lambda zz: loss(zz, y, check=False)), (lambda zz: composed(zz, y))
            assert _bits(fused(z)) == _bits(comp(z))
            assert _bits(ad.value_and_grad(fused)(z)) == _bits(ad.value_and_grad(comp)(z))
            (vf, back_f), (vc, back_c) = ad.vjp(fused, z), ad.vjp(comp, z)
            with np.errstate(all="ignore"):  # ∞ · 0 in the cotangent is wanted here
                for g in specials:
                    g = np.asarray(g, dtype=dtype)
                    assert _bits(back_f(g)) == _bits(back_c(g)), (B, C, g)
            assert _bits(ad.jvp(fused, z, u)) == _bits(ad.jvp(comp, z, u))
            assert _bits(ad.hvp(fused, z, u)) == _bits(ad.hvp(comp, z, u))
            assert _bits(ad.hvp_operator(fused, z)[1](u)) == _bits(ad.hvp_operator(comp, z)[1](u))
            rof_f = ad.grad(lambda zz: ad.sum(ad.multiply(ad.jvp(fused, zz, w)[1], 1.0)))(z)
            rof_c = ad.grad(lambda zz: ad.sum(ad.multiply(ad.jvp(comp, zz, w)[1], 1.0)))(z)
            assert _bits(rof_f) == _bits(rof_c)
    assert _top_primitive(loss, z, y) is ad.softmax_cross_entropy  # one node, not the composition
    assert _top_primitive(_ComposedCE(reduction), z, y) is not ad.softmax_cross_entropy


def test_fused_cross_entropy_sweeps_reuse_the_forward_logsumexp(monkeypatch):
    """A plain node keeps the forward's per-example logsumexp (``impl_saving``): a gradient computes it once, and
    each hvp_operator product none, instead of once more per sweep (the same bits: the tests above)."""
    from refopt.autodiff import primitives as P
    calls = []
    impl = P._logsumexp_impl
    monkeypatch.setattr(P, "_logsumexp_impl", lambda *a, **k: calls.append(1) or impl(*a, **k))
    gen = np.random.default_rng(3)
    z, y = gen.standard_normal((6, 4)), gen.integers(0, 4, 6)
    f = lambda zz: ad.softmax_cross_entropy(zz, y)  # noqa: E731
    for reduction in ("mean", "sum"):
        calls.clear()
        ad.grad(lambda zz: ad.softmax_cross_entropy(zz, y, reduction=reduction))(z)
        assert len(calls) == 1, reduction
    _, product = ad.hvp_operator(f, z)
    calls.clear()
    product(z)
    product(z)
    assert not calls


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_curvature_of_the_fused_cross_entropy_is_the_compositions(reduction):
    """Through an MLP the oracle's gradient, HVPs, GGN and Fisher products (true, mc, empirical), per-layer and
    K-FAC statistics, GNB and Hutchinson estimates are bit-identical with the fused loss and the composition."""
    from refopt.oracle import Oracle
    gen = np.random.default_rng(2)
    model = MLP([4, 6, 5, 3], activation="tanh")
    params = model.init(4)
    X, y = gen.standard_normal((7, 4)), gen.integers(0, 3, 7)
    v = T.tree_map(lambda a: gen.standard_normal(a.shape), params)
    results = []
    for loss in (SoftmaxCrossEntropy(reduction), _ComposedCE(reduction)):
        o = Oracle(model, loss, X, y)
        value, grad, product = o.value_and_hvp_operator(params)
        results.append([
            o.value(params), o.value_and_grad(params), o.hvp(params, v), o.hvp_operator(params)[1](v),
            value, grad, product(v), o.ggn_vp(params, v),
            [o.fisher_vp(params, v, kind, seed=3) for kind in ("true", "mc", "empirical")],
            [o.curvature_operator(params, kind, seed=3)(v) for kind in ("ggn", "true", "mc", "empirical")],
            o.layer_stats(params), o.kfac_statistics(params, fisher="mc", seed=5),
            o.kfac_statistics(params, fisher="empirical"), o.gnb_estimate(params, seed=6, gradient=True),
            o.hutchinson_diag(params, seed=7)])
    assert _bits(results[0]) == _bits(results[1])


@settings(max_examples=10)
@given(B=st.integers(1, 6), C=st.integers(1, 5), reduction=st.sampled_from(["mean", "sum"]), seed=seeds)
def test_fused_cross_entropy_hvp_is_the_closed_form_and_autograds(B, C, reduction, seed):
    """∇²L u = s · (p_b ⊙ u_b − p_b (p_bᵀ u_b)) per example (s = 1/B or 1), and HIPS autograd's Hessian-vector
    product of the written-out formula; a wrong rule is off by O(|u|), rounding by a few eps."""
    agrad = pytest.importorskip("autograd")
    anp = pytest.importorskip("autograd.numpy")
    gen = np.random.default_rng(seed)
    z, u, y = 2.0 * gen.standard_normal((B, C)), gen.standard_normal((B, C)), gen.integers(0, C, B)
    loss = SoftmaxCrossEntropy(reduction)
    s = 1.0 / B if reduction == "mean" else 1.0
    p = _softmax(z)
    closed = s * (p * u - p * (p * u).sum(axis=1, keepdims=True))

    def written_out(zz):
        m = anp.max(zz, axis=1, keepdims=True)
        lse = anp.log(anp.sum(anp.exp(zz - m), axis=1)) + m[:, 0]
        return s * anp.sum(lse - zz[np.arange(B), y])
    theirs = agrad.grad(lambda zz: anp.sum(agrad.grad(written_out)(zz) * u))(z)
    fwd_over_rev = ad.hvp(lambda zz: loss(zz, y), z, u)
    rev_over_rev = ad.hvp_operator(lambda zz: loss(zz, y), z)[1](u)
    for ours in (fwd_over_rev, rev_over_rev):
        np.testing.assert_allclose(ours, closed, rtol=0, atol=1e-14 * (1 + np.abs(u).max()))
        np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-14 * (1 + np.abs(u).max()))
    g = ad.grad(lambda zz: loss(zz, y))(z)
    np.testing.assert_allclose(g, s * (p - np.eye(C)[y]), rtol=0, atol=1e-15)


def test_a_subclass_with_its_own_per_example_keeps_it():
    """The fused node applies only to the class's own ℓ_i; a label-smoothed subclass gets its formula."""
    class Smoothed(SoftmaxCrossEntropy):
        def per_example(self, z, y):
            return ad.subtract(ad.logsumexp(z, axis=1),
                               ad.add(ad.multiply(0.9, ad.take_labels(z, y)), ad.multiply(0.1, ad.mean(z, axis=1))))
    gen = np.random.default_rng(0)
    z, y = gen.standard_normal((5, 3)), gen.integers(0, 3, 5)
    p = _softmax(z)
    per = -np.log(p[np.arange(5), y]) * 0.9 - 0.1 * np.log(p).mean(axis=1)
    np.testing.assert_allclose(Smoothed()(z, y), per.mean(), rtol=1e-13)
    np.testing.assert_allclose(Smoothed("sum")(z, y), per.sum(), rtol=1e-13)
    g = ad.grad(lambda zz: Smoothed()(zz, y))(z)
    np.testing.assert_allclose(g, (p - 0.9 * np.eye(3)[y] - 0.1 / 3) / 5, rtol=0, atol=1e-15)


def test_fused_cross_entropy_refuses_an_unknown_reduction():
    with pytest.raises(ValueError, match="softmax_cross_entropy: reduction must be one of"):
        ad.softmax_cross_entropy(np.zeros((2, 3)), np.array([0, 1]), reduction="mean_all")
    with pytest.raises(ValueError, match="reduction"):
        ad.softmax_cross_entropy(np.zeros((2, 3)), np.array([0, 1]), reduction="none")


def test_accuracy_counts_non_finite_outputs_as_wrong():
    """A diverged network's NaN or inf outputs predict nothing: argmax of a NaN row is class 0 and NaN > 0 is
    False, which would score a diverged run by its share of label 0."""
    from refopt.nn import Bernoulli, SoftmaxCrossEntropy
    z = np.array([[np.nan, np.nan], [np.inf, 0.0], [2.0, 1.0], [0.0, 3.0]])
    y = np.array([0, 0, 0, 1])
    assert SoftmaxCrossEntropy().accuracy(z, y) == 0.5  # rows 3 and 4 right; the non-finite rows wrong
    zb = np.array([[np.nan], [-np.inf], [-1.0], [2.0]])
    yb = np.array([[0.0], [0.0], [0.0], [1.0]])
    assert Bernoulli().accuracy(zb, yb) == 0.5  # −inf is not finite either, though it "predicts" 0
