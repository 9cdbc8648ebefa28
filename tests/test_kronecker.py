"""Kronecker factors: the cases where A ⊗ G is the exact Fisher block, conventions, and the G estimators."""
import itertools

import numpy as np
import pytest
from hypothesis import given, strategies as st

from refopt import tree as T
from refopt.curvature import kronecker as K
from refopt.nn import MLP, Bernoulli, Gaussian, SoftmaxCrossEntropy
from refopt.oracle import Oracle

LOSSES = ("softmax", "gaussian", "bernoulli")


def make_problem(sizes, loss_name="softmax", reduction="mean", batch=3, seed=0, activation="tanh", X=None):
    g = np.random.default_rng(seed)
    model = MLP(sizes, activation=activation)
    params = model.init(seed + 1)
    X = g.standard_normal((batch, sizes[0])) if X is None else X
    C = sizes[-1]
    if loss_name == "softmax":
        loss, y = SoftmaxCrossEntropy(reduction), g.integers(0, C, X.shape[0])
    elif loss_name == "gaussian":
        loss, y = Gaussian(reduction, variance=0.7), g.standard_normal((X.shape[0], C))
    else:
        loss, y = Bernoulli(reduction), (g.random((X.shape[0], C)) < 0.5).astype(float)
    return model, params, Oracle(model, loss, X, y)


def factors(stats):
    n = len(stats.inputs)
    A = [K.input_factor(a) for a in stats.inputs]
    G = [K.grad_factor([p[l] for p in stats.probes], stats.scale) for l in range(n)]
    return A, G


def offsets(params):
    sizes = [T.size(p) for p in params]
    return np.concatenate([[0], np.cumsum(sizes)])


def block(F, off, l, m):
    return F[off[l]:off[l + 1], off[m]:off[m + 1]]


def test_row_major_kronecker_conventions(rng):
    A, G, V = rng.standard_normal((3, 3)), rng.standard_normal((4, 4)), rng.standard_normal((3, 4))
    u, v = rng.standard_normal(3), rng.standard_normal(4)
    assert np.allclose(np.kron(A, G) @ V.ravel(), (A @ V @ G.T).ravel(), atol=1e-13)
    assert np.allclose(K.kron_matvec(A, G, V).ravel(), np.kron(A, G) @ V.ravel(), atol=1e-13)
    assert np.allclose(np.outer(u, v).ravel(), np.kron(u, v), atol=1e-15)  # vec(u vᵀ) = u ⊗ v
    # G not symmetric: the rule is A V Gᵀ, not A V G.
    assert not np.allclose(np.kron(A, G) @ V.ravel(), (A @ V @ G).ravel())


def test_layer_matrix_is_the_tree_flattening(rng):
    layer = {"W": rng.standard_normal((3, 2)), "b": rng.standard_normal(2)}
    Wbar = K.layer_matrix(layer)
    assert Wbar.shape == (4, 2) and np.array_equal(Wbar[-1], layer["b"])
    assert np.array_equal(Wbar.ravel(), T.ravel(layer))
    assert all(np.array_equal(K.layer_tree(Wbar)[k], layer[k]) for k in layer)


@given(sizes=st.lists(st.integers(1, 4), min_size=2, max_size=4), loss_name=st.sampled_from(LOSSES),
       reduction=st.sampled_from(["mean", "sum"]), activation=st.sampled_from(["tanh", "relu", "sigmoid"]),
       seed=st.integers(0, 1000))
def test_single_example_fisher_is_exactly_kronecker(sizes, loss_name, reduction, activation, seed):
    """B = 1: every block of the true Fisher, diagonal and cross-layer, is a Kronecker product."""
    model, params, oracle = make_problem(sizes, loss_name, reduction, batch=1, seed=seed, activation=activation)
    stats = K.kfac_statistics(oracle, params, "true")
    A, G = factors(stats)
    F = oracle.dense_fisher(params, "true")
    off = offsets(params)
    for l in range(len(params)):
        assert np.allclose(block(F, off, l, l), np.kron(A[l], G[l]), atol=1e-12, rtol=1e-10)
    for l in range(len(params) - 1):
        Ax = K.cross_input_factor(stats.inputs[l], stats.inputs[l + 1])
        Gx = K.cross_grad_factor([p[l] for p in stats.probes], [p[l + 1] for p in stats.probes], stats.scale)
        assert np.allclose(block(F, off, l, l + 1), np.kron(Ax, Gx), atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("loss_name", LOSSES)
def test_single_example_empirical_and_injected_mc_fisher_are_kronecker(loss_name):
    model, params, oracle = make_problem([3, 4, 2], loss_name, batch=1, seed=3)
    off = offsets(params)
    stats = K.kfac_statistics(oracle, params, "empirical")
    A, G = factors(stats)
    F = oracle.dense_fisher(params, "empirical")
    for l in range(2):
        assert np.allclose(block(F, off, l, l), np.kron(A[l], G[l]), atol=1e-12)
    labels = oracle.sample_labels(params, seed=5, k=3)
    stats = K.kfac_statistics(oracle, params, "mc", labels=labels)
    A, G = factors(stats)
    F = oracle.dense_fisher(params, "mc", labels=labels)
    for l in range(2):
        assert np.allclose(block(F, off, l, l), np.kron(A[l], G[l]), atol=1e-12)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_linear_gaussian_model_is_exact_for_any_batch(reduction):
    """One linear layer with a Gaussian likelihood: Dg = r has E[r rᵀ] = I/σ² for every x, so F = A ⊗ G."""
    model, params, oracle = make_problem([3, 2], "gaussian", reduction, batch=7, seed=1)
    A, G = factors(K.kfac_statistics(oracle, params, "true"))
    scale = 1 / 7 if reduction == "mean" else 1.0
    assert np.allclose(G[0], 7 * scale * np.eye(2) / 0.7, atol=1e-13)
    assert np.allclose(oracle.dense_fisher(params, "true"), np.kron(A[0], G[0]), atol=1e-12)


def test_last_layer_of_a_gaussian_network_is_exact_and_hidden_layers_are_not():
    model, params, oracle = make_problem([2, 3, 2], "gaussian", batch=6, seed=2)
    A, G = factors(K.kfac_statistics(oracle, params, "true"))
    F = oracle.dense_fisher(params, "true")
    off = offsets(params)
    assert np.allclose(block(F, off, 1, 1), np.kron(A[1], G[1]), atol=1e-12)
    assert not np.allclose(block(F, off, 0, 0), np.kron(A[0], G[0]), atol=1e-6)


def test_identical_examples_are_exact():
    x = np.random.default_rng(4).standard_normal((1, 3))
    model, params, oracle = make_problem([3, 4, 3], "softmax", batch=5, seed=4, X=np.repeat(x, 5, axis=0))
    A, G = factors(K.kfac_statistics(oracle, params, "true"))
    F = oracle.dense_fisher(params, "true")
    off = offsets(params)
    for l in range(2):
        assert np.allclose(block(F, off, l, l), np.kron(A[l], G[l]), atol=1e-12)


@pytest.mark.parametrize("loss_name", LOSSES)
def test_gradient_from_statistics_is_the_autodiff_gradient(loss_name):
    model, params, oracle = make_problem([4, 3, 3, 2], loss_name, batch=5, seed=6)
    stats = K.kfac_statistics(oracle, params, None)
    loss, g = oracle.value_and_grad(params)
    assert stats.loss == pytest.approx(loss, rel=1e-14)
    assert np.allclose(T.ravel(stats.grad), T.ravel(g), atol=1e-14)
    lean = K.kfac_statistics(oracle, params, None, gradient=False)    # the same pass without ∇W = aᵀ g
    assert lean.grad is None and lean.loss == stats.loss
    assert all(np.array_equal(x, y) for x, y in zip(lean.inputs + lean.output_grads, stats.inputs + stats.output_grads))


def test_G_scaling_follows_the_reduction():
    """Sum reduction: A is unchanged, G is B times the mean-reduction G (so A ⊗ G approximates the
    Fisher of the reduced loss in both cases)."""
    B = 6
    _, params, om = make_problem([3, 3, 2], "softmax", "mean", batch=B, seed=7)
    _, _, os_ = make_problem([3, 3, 2], "softmax", "sum", batch=B, seed=7)
    Am, Gm = factors(K.kfac_statistics(om, params, "true"))
    As, Gs = factors(K.kfac_statistics(os_, params, "true"))
    for l in range(2):
        assert np.allclose(As[l], Am[l], atol=1e-14)
        assert np.allclose(Gs[l], B * Gm[l], atol=1e-12)


@pytest.mark.parametrize("loss_name", LOSSES)
def test_output_fisher_factor_squares_to_the_output_fisher(loss_name):
    _, params, oracle = make_problem([2, 3], loss_name, batch=4, seed=8)
    z = oracle.outputs(params)
    L = K.output_fisher_factor(oracle.loss, z)
    assert np.allclose(np.einsum("bik,bjk->bij", L, L), oracle.loss.output_fisher(z), atol=1e-14)


def test_true_G_is_the_expectation_over_every_label_assignment():
    """Enumerate all C^B label assignments of a tiny batch: Σ P(labels) G_empirical(labels) = G_true."""
    model, params, oracle = make_problem([2, 3, 3], "softmax", batch=2, seed=9)
    p = oracle.loss.probabilities(oracle.outputs(params))
    _, G_true = factors(K.kfac_statistics(oracle, params, "true"))
    G_enum = [np.zeros_like(g) for g in G_true]
    for labels in itertools.product(range(3), repeat=2):
        y = np.array(labels)
        weight = p[0, labels[0]] * p[1, labels[1]]
        _, G = factors(K.kfac_statistics(oracle.with_batch(oracle.X, y), params, "empirical"))
        G_enum = [ge + weight * g for ge, g in zip(G_enum, G)]
    for ge, gt in zip(G_enum, G_true):
        assert np.allclose(ge, gt, atol=1e-13)


def test_mc_G_converges_to_the_true_G_and_the_empirical_G_differs():
    model, params, oracle = make_problem([3, 4, 3], "softmax", batch=4, seed=10)
    _, G_true = factors(K.kfac_statistics(oracle, params, "true"))
    _, G_emp = factors(K.kfac_statistics(oracle, params, "empirical"))

    def rel_err(G):
        return max(np.linalg.norm(g - gt) / np.linalg.norm(gt) for g, gt in zip(G, G_true))

    errors = [rel_err(factors(K.kfac_statistics(oracle, params, "mc", samples=k, seed=11))[1]) for k in (4, 64, 1024)]
    # Standard error ∝ 1/√k: a factor 16 in k should cut the error by about 4.
    assert errors[2] < errors[1] < errors[0]
    assert errors[2] < 0.06
    assert rel_err(G_emp) > 0.3


def test_seeded_labels_equal_injected_labels():
    model, params, oracle = make_problem([3, 3, 2], "gaussian", batch=4, seed=12)
    a = K.kfac_statistics(oracle, params, "mc", samples=3, seed=[7, 2])
    labels = oracle.loss.sample(oracle.outputs(params), [7, 2], 3)
    b = K.kfac_statistics(oracle, params, "mc", labels=labels)
    for pa, pb in zip(a.probes, b.probes):
        for x, y in zip(pa, pb):
            assert np.array_equal(x, y)


def test_factor_weight_schemes():
    decay = 0.8
    rng_ = np.random.default_rng(0)
    estimates = [rng_.standard_normal((2, 2)) for _ in range(12)]

    def run(init, start):
        F = start
        for k, e in enumerate(estimates, start=1):
            w = K.factor_weight(k, decay, init)
            F = w * F + (1 - w) * e
        return F

    # "mean": a plain mean while 1 − 1/k ≤ decay (k ≤ 5), then an exponential average; the start is ignored.
    F = np.mean(estimates[:5], axis=0)
    for e in estimates[5:]:
        F = decay * F + (1 - decay) * e
    assert np.allclose(run("mean", np.full((2, 2), 1e6)), F, atol=1e-12)
    for k in range(2, 6):
        assert K.factor_weight(k, decay, "mean") == pytest.approx(1 - 1 / k)
    assert K.factor_weight(1, decay, "mean") == 0 and K.factor_weight(9, decay, "mean") == decay
    # "debiased": Σ_j decay^{k−j}(1−decay) F̂_j / (1 − decay^k), independent of the start value.
    k = len(estimates)
    expected = sum(decay ** (k - j) * (1 - decay) * e for j, e in enumerate(estimates, start=1)) / (1 - decay ** k)
    assert np.allclose(run("debiased", np.full((2, 2), 1e6)), expected, atol=1e-12)
    # "identity": F_k = decay^k I + Σ_j decay^{k−j}(1−decay) F̂_j.
    expected = decay ** k * np.eye(2) + sum(decay ** (k - j) * (1 - decay) * e for j, e in enumerate(estimates, 1))
    assert np.allclose(run("identity", np.eye(2)), expected, atol=1e-12)
    assert K.factor_weight(3, 0.0, "debiased") == 0.0
    with pytest.raises(ValueError, match="init"):
        K.factor_weight(1, 0.5, "zeros")


def test_pi_correction_scales_with_the_factors(rng):
    a, g = rng.standard_normal((5, 3)), rng.standard_normal((5, 2))
    A, G = a.T @ a, g.T @ g
    assert K.pi_correction(4.0 * A, G / 4.0) == pytest.approx(4.0 * K.pi_correction(A, G), rel=1e-12)
    assert K.pi_correction(np.zeros((3, 3)), G) == 1.0


def test_zero_input_layer_gives_a_rank_one_A():
    model, params, oracle = make_problem([3, 2, 2], "softmax", batch=4, seed=13, X=np.zeros((4, 3)))
    A, _ = factors(K.kfac_statistics(oracle, params, "true"))
    expected = np.zeros((4, 4))
    expected[-1, -1] = 1.0
    assert np.array_equal(A[0], expected)


def test_unknown_fisher_estimate_is_rejected():
    _, params, oracle = make_problem([2, 2], batch=2)
    with pytest.raises(ValueError, match="fisher"):
        K.kfac_statistics(oracle, params, "exact")
    with pytest.raises(ValueError, match="seed"):
        K.kfac_statistics(oracle, params, "mc")


# --- Rademacher curvature propagation (Martens, Sutskever & Swersky 2012; kfac-jax's default) ---------------
def _all_signs(B, C):
    """Every sign pattern ε ∈ {±1}^C, the same for each example: (2^C, B, C)."""
    patterns = np.array(list(itertools.product((-1.0, 1.0), repeat=C)))
    return np.repeat(patterns[:, None, :], B, axis=1)


@pytest.mark.parametrize("loss_name", LOSSES)
@pytest.mark.parametrize("reduction", ["mean", "sum", "mean_all"])
def test_curvature_prop_over_every_sign_pattern_is_the_exact_G(loss_name, reduction):
    """E[(Lε)(Lε)ᵀ] = L Lᵀ = H_ℓ: averaging the 2^C sign patterns gives the exact ("true") G, exactly."""
    model, params, oracle = make_problem([3, 4, 3], loss_name, reduction, batch=4)
    exact = K.kfac_statistics(oracle, params, "true")
    prop = K.kfac_statistics(oracle, params, "curvature_prop", labels=_all_signs(4, 3))
    for G_exact, G_prop in zip(factors(exact)[1], factors(prop)[1]):
        np.testing.assert_allclose(G_prop, G_exact, rtol=1e-12, atol=1e-15)
    one = K.kfac_statistics(oracle, params, "curvature_prop", labels=_all_signs(4, 3)[:1])
    assert not np.allclose(factors(one)[1][-1], factors(exact)[1][-1])   # one pattern alone is not exact


def test_curvature_prop_factor_is_kfac_jax_s_and_draws_replay():
    """L ε for softmax is √p ⊙ ε − p (√pᵀε) (kfac-jax's multiply_ggn_factor); seeded signs = injected signs."""
    model, params, oracle = make_problem([3, 4, 3], "softmax", batch=4)
    z = model.apply(params, oracle.X)
    eps = K.draw_signs(z, [0, 3], 2)
    assert eps.shape == (2, 4, 3) and set(np.unique(eps)) <= {-1.0, 1.0}
    p = oracle.loss.probabilities(z)
    want = np.sqrt(p) * eps[0] - p * np.sum(np.sqrt(p) * eps[0], axis=1, keepdims=True)
    np.testing.assert_allclose(K.output_hessian_sqrt_vp(oracle.loss, z, eps[0]), want, rtol=1e-15)
    F = oracle.loss.output_fisher(z)
    for loss in (Gaussian("mean", variance=0.7), Bernoulli("mean")):   # diagonal H_ℓ: √diag ⊙ ε
        d = np.sqrt(np.diagonal(loss.output_fisher(z), axis1=1, axis2=2))
        np.testing.assert_array_equal(K.output_hessian_sqrt_vp(loss, z, eps[0]), d * eps[0])
    assert F.shape == (4, 3, 3)
    seeded = K.kfac_statistics(oracle, params, "curvature_prop", samples=2, seed=[0, 3])
    injected = K.kfac_statistics(oracle, params, "curvature_prop", labels=seeded.labels)
    np.testing.assert_array_equal(seeded.labels, eps)
    for a, b in zip(factors(seeded)[1], factors(injected)[1]):
        np.testing.assert_array_equal(a, b)
    assert seeded.sweeps == 2


def test_burnin_factor_weights_are_kfac_jax_s_weighted_moving_average():
    """kfac-jax: w ← ema_old·w + 1, ε = 1 − 1/w, with ema_old = 1 for the n burn-in estimates, then decay."""
    for init in ("debiased", "mean", "identity"):
        assert [K.factor_weight(k, 0.9, init, burnin=3) for k in (1, 2, 3)] == [0.0, 0.5, 1 - 1 / 3]
    w, eps = 0.0, []
    for k in range(1, 12):
        old = 1.0 if k <= 3 else 0.9
        w = old * w + 1.0
        eps.append(old * (w - 1.0) / w / old if k <= 3 else 1.0 - 1.0 / w)
    np.testing.assert_allclose([K.factor_weight(k, 0.9, "debiased", burnin=3) for k in range(1, 12)], eps,
                               rtol=1e-14)
    assert K.factor_weight(5, 0.9, "mean", burnin=3) == K.factor_weight(5, 0.9, "mean")
    assert K.factor_weight(5, 0.9, "debiased", burnin=3) != K.factor_weight(5, 0.9, "debiased")


def test_factors_are_the_averaged_outer_products():
    """A = (1/B) Σ ā āᵀ, G = (1/scale) Σ_p g_pᵀ g_p (or ÷ B for "reduced_loss") and the cross factors, written out
    as sums of outer products, for several probes (accumulated in place: the inputs are not modified)."""
    gen = np.random.default_rng(8)
    a, a2 = gen.standard_normal((6, 3)), gen.standard_normal((6, 2))
    probes = [gen.standard_normal((6, 4)) for _ in range(3)]
    nxt = [gen.standard_normal((6, 5)) for _ in range(3)]
    keep = [x.copy() for x in [a, a2] + probes + nxt]
    abar = np.hstack([a, np.ones((6, 1))])
    a2bar = np.hstack([a2, np.ones((6, 1))])
    np.testing.assert_allclose(K.input_factor(a), sum(np.outer(r, r) for r in abar) / 6, rtol=1e-14)
    np.testing.assert_allclose(K.cross_input_factor(a, a2), sum(np.outer(r, q) for r, q in zip(abar, a2bar)) / 6,
                               rtol=1e-14)
    outer = sum(np.outer(r, r) for g in probes for r in g)
    np.testing.assert_allclose(K.grad_factor(probes, 0.25), outer / 0.25, rtol=1e-14)
    np.testing.assert_allclose(K.grad_factor(probes, 0.25, "reduced_loss"), outer / 6, rtol=1e-14)
    np.testing.assert_allclose(K.cross_grad_factor(probes, nxt, 0.5),
                               sum(np.outer(r, q) for g, h in zip(probes, nxt) for r, q in zip(g, h)) / 0.5,
                               rtol=1e-14)
    assert all(np.array_equal(x, y) for x, y in zip([a, a2] + probes + nxt, keep))
