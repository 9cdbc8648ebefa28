"""Curvature products and estimators against dense matrices, identities and exact enumeration.

* GGN = Jᵀ (scale · blockdiag H_ℓ) J with J from ``jacobian`` and H_ℓ from ``output_hessian``;
* true Fisher = GGN for all three likelihoods; the MC Fisher converges to it; the empirical Fisher
  is scale · Σ_i ∇ℓ_i ∇ℓ_iᵀ and differs from it;
* Hutchinson averaged over all 2ⁿ Rademacher probes is diag(H) exactly;
* the Gauss-Newton-Bartlett estimate averaged over every label draw (weighted by its probability)
  is diag(GGN) exactly, for mean and sum reduction;
* seeded estimators equal the same estimators fed the injected draws.
"""
from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from refopt import autodiff as ad
from refopt import curvature as C
from refopt import tree as T
from refopt.nn import MLP, Bernoulli, Gaussian, SoftmaxCrossEntropy, layer_statistics
from refopt.oracle import Oracle

TOL = dict(rtol=1e-9, atol=1e-11)
KINDS = ["softmax", "gaussian", "bernoulli"]


def problem(kind, reduction="mean", sizes=(3, 4, 3), B=4, seed=0, act="tanh"):
    gen = np.random.default_rng(seed)
    model = MLP(list(sizes), activation=act, init="normal", init_scale=0.8)
    params = T.tree_map(lambda a: a + 0.2 * gen.standard_normal(a.shape), model.init(seed))
    X = gen.standard_normal((B, sizes[0]))
    out = sizes[-1]
    if kind == "softmax":
        loss, y = SoftmaxCrossEntropy(reduction), gen.integers(0, out, B)
    elif kind == "gaussian":
        loss, y = Gaussian(reduction, variance=0.7), gen.standard_normal((B, out))
    else:
        loss, y = Bernoulli(reduction), gen.integers(0, 2, (B, out)).astype(float)
    return Oracle(model, loss, X, y), params, gen


def dense_ggn_from_jacobian(oracle, params):
    """Jᵀ (scale · blockdiag(H_1, …, H_B)) J, every piece dense."""
    J = ad.jacobian(lambda p: oracle.model.apply(p, oracle.X), params)          # (B·C, n), rows (i, c)
    z = oracle.outputs(params)
    Hs = oracle.loss.output_hessian(z, oracle.y)                                # (B, C, C)
    B, Cn = z.shape
    Hblock = np.zeros((B * Cn, B * Cn))
    for i in range(B):
        Hblock[i * Cn:(i + 1) * Cn, i * Cn:(i + 1) * Cn] = Hs[i]
    return J.T @ (oracle.loss.scale(B, Cn) * Hblock) @ J


@settings(max_examples=8)
@given(kind=st.sampled_from(KINDS), reduction=st.sampled_from(["mean", "mean_all", "sum"]), seed=st.integers(0, 2 ** 31),
       act=st.sampled_from(["tanh", "relu", "sigmoid"]))
def test_ggn_and_true_fisher_against_dense_construction(kind, reduction, seed, act):
    oracle, params, gen = problem(kind, reduction, seed=seed, act=act)
    G = dense_ggn_from_jacobian(oracle, params)
    np.testing.assert_allclose(oracle.dense_ggn(params), G, **TOL)
    np.testing.assert_allclose(oracle.dense_fisher(params, "true"), G, **TOL)  # F = GGN (natural parameters)
    v = T.unravel(gen.standard_normal(G.shape[0]), params)
    Gv = G @ T.ravel(v)
    np.testing.assert_allclose(T.ravel(oracle.ggn_vp(params, v)), Gv, **TOL)
    np.testing.assert_allclose(T.ravel(oracle.fisher_vp(params, v, "true")), Gv, **TOL)
    np.testing.assert_allclose(T.ravel(C.ggn_vp(oracle.model, oracle.loss, params, oracle.X, oracle.y, v)), Gv, **TOL)
    np.testing.assert_allclose(T.ravel(oracle.curvature_operator(params, "true")(v)), Gv, **TOL)
    assert np.all(np.linalg.eigvalsh(G) > -1e-10)  # PSD, unlike the Hessian in general


def test_network_jacobian_products_and_linearize():
    oracle, params, gen = problem("softmax")
    J = ad.jacobian(lambda p: oracle.model.apply(p, oracle.X), params)
    v = T.unravel(gen.standard_normal(J.shape[1]), params)
    u = gen.standard_normal((oracle.batch_size, 3))
    z, Jv = C.network_jvp(oracle.model, params, oracle.X, v)
    np.testing.assert_allclose(Jv.ravel(), J @ T.ravel(v), **TOL)
    z2, pullback = C.network_vjp(oracle.model, params, oracle.X)
    np.testing.assert_allclose(T.ravel(pullback(u)), J.T @ u.ravel(), **TOL)
    z3, Jv3, pullback3 = C.linearize(oracle.model, params, oracle.X, v)
    np.testing.assert_allclose(z3, z, **TOL)
    np.testing.assert_allclose(Jv3, Jv, **TOL)
    np.testing.assert_allclose(T.ravel(pullback3(u)), J.T @ u.ravel(), **TOL)
    np.testing.assert_allclose(oracle.jvp(params, v), Jv, **TOL)
    np.testing.assert_allclose(T.ravel(oracle.vjp(params, u)), J.T @ u.ravel(), **TOL)


@pytest.mark.parametrize("kind", KINDS)
def test_hessian_equals_ggn_plus_residual_term_and_differs_in_general(kind):
    """∇²L = GGN + ∇²_θ ⟨scale · r, f(X; θ)⟩ with r = ∂ℓ/∂z held fixed (the Gauss-Newton split);
    for a linear model the residual vanishes, with a hidden layer it does not (a case)."""
    oracle, params, _ = problem(kind, sizes=(3, 3))
    np.testing.assert_allclose(oracle.dense_hessian(params), oracle.dense_ggn(params), **TOL)
    oracle, params, _ = problem(kind)
    Hm, G = oracle.dense_hessian(params), oracle.dense_ggn(params)
    w = oracle.loss.scale(oracle.batch_size) * oracle.loss.output_grad(oracle.outputs(params), oracle.y)
    residual = ad.hessian(lambda p: ad.dot(w, oracle.model.apply(p, oracle.X)), params)
    np.testing.assert_allclose(Hm, G + residual, **TOL)
    assert np.linalg.norm(residual) > 1e-2 * np.linalg.norm(G)


@pytest.mark.parametrize("kind", KINDS)
def test_monte_carlo_fisher_converges_to_the_true_fisher(kind):
    """Seeded: the error of F̂ v shrinks like 1/√k; with 40 000 samples it is within 3% of F v."""
    oracle, params, gen = problem(kind, B=3)
    v = T.unravel(gen.standard_normal(T.size(params)), params)
    Fv = T.ravel(oracle.fisher_vp(params, v, "true"))
    errs = {k: np.linalg.norm(T.ravel(oracle.fisher_vp(params, v, "mc", samples=k, seed=k)) - Fv) /
            np.linalg.norm(Fv) for k in (10, 40_000)}
    assert errs[40_000] < 0.03
    assert errs[40_000] < errs[10] / 10  # √4000 ≈ 63 in expectation; 10 leaves room for the seed


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("reduction", ["mean", "mean_all", "sum"])
def test_empirical_fisher_is_the_outer_product_of_per_example_gradients_and_differs(kind, reduction):
    oracle, params, _ = problem(kind, reduction)
    Fe = oracle.dense_fisher(params, "empirical")
    scale = oracle.loss.scale(oracle.batch_size, oracle.model.sizes[-1])
    per = []
    for i in range(oracle.batch_size):
        Xi, yi = oracle.X[i:i + 1], oracle.y[i:i + 1]
        per.append(T.ravel(ad.grad(lambda p: ad.sum(oracle.loss.per_example(oracle.model.apply(p, Xi), yi)))(params)))
    np.testing.assert_allclose(Fe, scale * sum(np.outer(g, g) for g in per), **TOL)
    F = oracle.dense_fisher(params, "true")
    assert np.linalg.norm(Fe - F) > 0.1 * np.linalg.norm(F)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_hutchinson_over_all_rademacher_probes_is_the_exact_diagonal(reduction):
    oracle, params, _ = problem("softmax", reduction, sizes=(2, 1, 3), B=3)  # n = 9 parameters
    n = T.size(params)
    probes = [T.unravel(np.array(signs, dtype=float), params) for signs in itertools.product([-1, 1], repeat=n)]
    est = oracle.hutchinson_diag(params, probes=probes)
    np.testing.assert_allclose(T.ravel(est), np.diag(oracle.dense_hessian(params)), **TOL)
    assert oracle.counts.nhvp == 2 ** n


def test_hutchinson_with_gaussian_probes_is_unbiased():
    """z ⊙ Hz with Gaussian z: mean diag(H), variance Σ_j H_ij² + H_ii²; 5 standard errors on 4000 probes."""
    A = np.array([[2.0, 0.5, -0.3], [0.5, 1.0, 0.2], [-0.3, 0.2, 3.0]])

    def f(x):
        return 0.5 * ad.dot(x, A @ x)

    k = 4000
    probes = C.draw_probes(np.zeros(3), seed=0, k=k, distribution="gaussian")
    est = C.hutchinson_diagonal(f, np.zeros(3), probes)
    se = np.sqrt((A ** 2).sum(1) + np.diag(A) ** 2) / np.sqrt(k)
    assert np.all(np.abs(est - np.diag(A)) < 5 * se)
    assert not np.allclose(est, np.diag(A), atol=1e-6)  # it is an estimate, not the exact value


@pytest.mark.parametrize("kind", ["softmax", "bernoulli"])
@pytest.mark.parametrize("reduction", ["mean", "mean_all", "sum"])
def test_gnb_expectation_over_every_label_draw_is_diag_ggn(kind, reduction):
    """Σ over all label vectors ŷ of P(ŷ) ĝ(ŷ) ⊙ ĝ(ŷ) / scale = diag(GGN): Sophia's estimator is unbiased."""
    B = 2
    oracle, params, _ = problem(kind, reduction, sizes=(2, 3, 3), B=B)
    z = oracle.outputs(params)
    if kind == "softmax":
        p = np.exp(z - z.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        draws = [(np.array(ys), np.prod([p[i, c] for i, c in enumerate(ys)]))
                 for ys in itertools.product(range(3), repeat=B)]                      # Cᴮ = 9 draws
    else:
        p = 0.5 * (np.tanh(0.5 * z) + 1)
        draws = []
        for bits in itertools.product([0.0, 1.0], repeat=B * 3):                        # 2^(B·C) = 64 draws
            ys = np.array(bits).reshape(B, 3)
            draws.append((ys, np.prod(np.where(ys == 1, p, 1 - p))))
    assert abs(sum(w for _, w in draws) - 1) < 1e-12
    expectation = sum(w * T.ravel(oracle.gnb_diag(params, labels=ys[None])) for ys, w in draws)
    np.testing.assert_allclose(expectation, np.diag(oracle.dense_ggn(params)), **TOL)
    # The same through the function (k label sets at once are averaged).
    labels = np.stack([ys for ys, _ in draws[:3]])
    avg = np.mean([T.ravel(oracle.gnb_diag(params, labels=ys[None])) for ys, _ in draws[:3]], axis=0)
    direct = C.gnb_diagonal(oracle.model, oracle.loss, params, oracle.X, labels)
    np.testing.assert_allclose(T.ravel(direct), avg, **TOL)
    # ĝ is the ordinary gradient of the reduced loss at the sampled labels (its own reverse pass here).
    g_hat = T.ravel(oracle.grad_at_labels(params, labels[1]))
    np.testing.assert_allclose(T.ravel(oracle.gnb_diag(params, labels=labels[1:2])),
                               g_hat * g_hat / oracle.loss.scale(B, 3), **TOL)


@pytest.mark.parametrize("fisher", ["empirical", "mc", "true"])
def test_mean_all_is_the_torch_mse_mapping_for_fisher_and_kfac(fisher):
    """torch's MSELoss("mean") has two refopt spellings with its value and gradient: Gaussian(½, "mean_all")
    and Gaussian(C/2, "mean"). They share the GGN and true Fisher, but the empirical Fisher and K-FAC's G
    (for "empirical", and for "mc" at the same labels) of "mean_all" are C× those of "mean" (curvlinops'
    normalisation by the B·C loss terms); G is (1/(B·C)) Σ_i Dg_i Dg_iᵀ with Dg_i = ∂ℓ_i/∂s_l, ℓ_i = ‖z_i − y_i‖²."""
    oracle, params, gen = problem("gaussian", "mean_all", sizes=(3, 4, 3), B=5)
    B, Cn = oracle.batch_size, oracle.model.sizes[-1]
    new = Oracle(oracle.model, Gaussian("mean_all", variance=0.5), oracle.X, oracle.y)
    old = Oracle(oracle.model, Gaussian("mean", variance=Cn / 2), oracle.X, oracle.y)
    np.testing.assert_allclose(new.value(params), old.value(params), rtol=1e-14)
    np.testing.assert_allclose(T.ravel(new.grad(params)), T.ravel(old.grad(params)), rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(new.dense_ggn(params), old.dense_ggn(params), **TOL)
    labels = new.loss.sample(new.outputs(params), seed=3, k=1)  # N(z, ½ I): curvlinops' MSE draws
    if fisher == "empirical":
        np.testing.assert_allclose(new.dense_fisher(params, "empirical"),
                                   Cn * old.dense_fisher(params, "empirical"), **TOL)
    A_new, G_new = C.layer_factors(new, params, fisher=fisher, labels=labels)
    A_old, G_old = C.layer_factors(old, params, fisher=fisher, labels=labels)
    ratio = 1.0 if fisher == "true" else Cn
    for l in range(oracle.model.num_layers):
        np.testing.assert_allclose(A_new[l], A_old[l], **TOL)
        np.testing.assert_allclose(G_new[l], ratio * G_old[l], **TOL)
    # The closed form of the empirical G from single-example passes (sum reduction, ℓ_i alone).
    if fisher == "empirical":
        single = Gaussian("sum", variance=0.5)
        Dg = [layer_statistics(oracle.model, single, params, oracle.X[i:i + 1], oracle.y[i:i + 1]).output_grads
              for i in range(B)]
        for l in range(oracle.model.num_layers):
            expect = sum(np.outer(d[l][0], d[l][0]) for d in Dg) / (B * Cn)
            np.testing.assert_allclose(G_new[l], expect, **TOL)


def test_injected_draws_reproduce_seeded_ones():
    oracle, params, _ = problem("softmax")
    v = T.tree_map(np.ones_like, params)
    # probes
    probes = C.draw_probes(params, 3, k=4)
    np.testing.assert_array_equal(T.ravel(oracle.hutchinson_diag(params, seed=3, k=4)),
                                  T.ravel(oracle.hutchinson_diag(params, probes=probes)))
    g = np.random.default_rng(3)  # the documented layout: per probe, per leaf in tree order
    leaves = T.leaves(params)
    for probe in probes:
        for leaf, drawn in zip(leaves, T.leaves(probe)):
            np.testing.assert_array_equal(drawn, g.integers(0, 2, leaf.shape) * 2.0 - 1.0)
    gp = C.draw_probes(params, 3, k=2, distribution="gaussian")
    g = np.random.default_rng(3)
    expected = [np.concatenate([g.standard_normal(leaf.shape).ravel() for leaf in leaves]) for _ in range(2)]
    np.testing.assert_array_equal(T.ravel(gp[1]), expected[1])
    # labels
    labels = oracle.sample_labels(params, 5, k=3)
    np.testing.assert_array_equal(labels, oracle.loss.sample(oracle.outputs(params), 5, 3))
    np.testing.assert_array_equal(T.ravel(oracle.gnb_diag(params, seed=5, k=3)),
                                  T.ravel(oracle.gnb_diag(params, labels=labels)))
    np.testing.assert_array_equal(T.ravel(oracle.fisher_vp(params, v, "mc", samples=3, seed=5)),
                                  T.ravel(oracle.fisher_vp(params, v, "mc", labels=labels)))
    np.testing.assert_array_equal(T.ravel(oracle.curvature_operator(params, "mc", samples=3, seed=5)(v)),
                                  T.ravel(oracle.curvature_operator(params, "mc", labels=labels)(v)))
    np.testing.assert_allclose(T.ravel(oracle.curvature_operator(params, "mc", labels=labels)(v)),
                               T.ravel(oracle.fisher_vp(params, v, "mc", labels=labels)), **TOL)


def test_monte_carlo_fisher_with_one_label_set_is_the_empirical_fisher_at_those_labels():
    oracle, params, gen = problem("bernoulli")
    labels = oracle.sample_labels(params, 0, k=1)
    v = T.unravel(gen.standard_normal(T.size(params)), params)
    at_labels = oracle.with_batch(oracle.X, labels[0])
    np.testing.assert_allclose(T.ravel(oracle.fisher_vp(params, v, "mc", labels=labels)),
                               T.ravel(at_labels.fisher_vp(params, v, "empirical")), **TOL)


def test_estimator_argument_errors():
    oracle, params, _ = problem("softmax")
    v = T.tree_map(np.ones_like, params)
    with pytest.raises(ValueError, match="distribution"):
        C.draw_probes(params, 0, distribution="uniform")
    with pytest.raises(ValueError, match="k must be"):
        C.draw_probes(params, 0, k=0)
    with pytest.raises(ValueError, match="seed= or probes="):
        oracle.hutchinson_diag(params)
    with pytest.raises(ValueError, match="seed= or labels="):
        oracle.gnb_diag(params)
    with pytest.raises(ValueError, match="seed= or labels="):
        oracle.fisher_vp(params, v, "mc")
    with pytest.raises(ValueError, match="seed= or labels="):
        oracle.curvature_operator(params, "mc")
    with pytest.raises(ValueError, match="kind"):
        oracle.fisher_vp(params, v, "exact")
    with pytest.raises(ValueError, match="labels: expected k label sets"):
        oracle.fisher_vp(params, v, "mc", labels=np.zeros(4, dtype=int))
    with pytest.raises(ValueError, match="y: labels must lie"):
        oracle.fisher_vp(params, v, "mc", labels=np.full((2, 4), 7))
    with pytest.raises(ValueError, match="y: labels must lie"):
        oracle.gnb_diag(params, labels=np.full((1, 4), 7))
    with pytest.raises(ValueError, match="kind"):  # refused when the operator is made, not at its first use
        oracle.curvature_operator(params, "exact")
    # k = 0 label sets or probes would average over nothing (NaN or a ZeroDivisionError): refused.
    none = np.zeros((0, 4), dtype=int)
    with pytest.raises(ValueError, match="at least one label set"):
        oracle.fisher_vp(params, v, "mc", labels=none)
    with pytest.raises(ValueError, match="at least one label set"):
        oracle.fisher_vp(params, v, "mc", samples=0, seed=0)
    with pytest.raises(ValueError, match="at least one label set"):
        oracle.curvature_operator(params, "mc", labels=none)
    with pytest.raises(ValueError, match="at least one label set"):
        oracle.gnb_diag(params, labels=none)
    with pytest.raises(ValueError, match="probes: expected at least one"):
        oracle.hutchinson_diag(params, probes=[])


def test_curvature_operator_computes_the_output_space_matrix_once(monkeypatch):
    """r, E[r rᵀ] and the sampled r̂ do not depend on v: CG's many products must not recompute them."""
    oracle, params, gen = problem("softmax")
    calls = {"output_grad": 0, "output_fisher": 0}
    for name in calls:
        method = getattr(oracle.loss, name)
        monkeypatch.setattr(oracle.loss, name,
                            lambda *a, _m=method, _n=name: calls.__setitem__(_n, calls[_n] + 1) or _m(*a))
    vs = [T.unravel(gen.standard_normal(T.size(params)), params) for _ in range(3)]
    for kind, counted in (("true", "output_fisher"), ("empirical", "output_grad"), ("mc", "output_grad")):
        op = oracle.curvature_operator(params, kind, seed=0, samples=2)
        before = dict(calls)
        for v in vs:
            np.testing.assert_allclose(T.ravel(op(v)), T.ravel(oracle.fisher_vp(params, v, kind, seed=0, samples=2)),
                                       **TOL)
        assert calls[counted] - before[counted] == len(vs)  # once per fisher_vp call, never per op(v)


def test_dense_matrices_refuse_large_models_and_name_the_alternative():
    oracle, params, _ = problem("softmax")
    n = T.size(params)
    with pytest.raises(ValueError, match="ggn_vp with conjugate gradient"):
        oracle.dense_ggn(params, max_size=n - 1)
    with pytest.raises(ValueError, match="fisher_vp with conjugate gradient"):
        oracle.dense_fisher(params, "true", max_size=n - 1)
    with pytest.raises(ValueError, match="hvp"):
        oracle.dense_hessian(params, max_size=n - 1)
    big = MLP([100, 100, 10])  # 11 110 parameters > DENSE_MAX_SIZE
    bo = Oracle(big, SoftmaxCrossEntropy(), np.zeros((2, 100)), np.zeros(2, dtype=int))
    with pytest.raises(ValueError, match="ggn_vp"):
        bo.dense_ggn(big.init(0))
    assert oracle.dense_ggn(params, max_size=n).shape == (n, n)
