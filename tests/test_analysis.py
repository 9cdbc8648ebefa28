"""Loss-surface analysis (refopt.analysis) against dense matrices built independently in this file.

Ground truth: the Hessian, Jacobian, GGN and Fisher matrices of an MLP 3-4-2 (tanh, softmax cross-entropy,
n = 26) are built here with HIPS autograd on a forward pass written in this file (flattening [vec(W₁), b₁,
vec(W₂), b₂], row-major) and the softmax formulas H_i = diag(p_i) − p_i p_iᵀ, r_i = p_i − e_{y_i}; the K-FAC
and EKFAC matrices with np.kron from the layer factors; a quadratic ½xᵀAx has a chosen spectrum. Spectra come
from numpy.linalg.eigvalsh. Tolerances: float64 rounding scaled by the spectral norm ‖A‖₂ (the matrices here
are O(1) and n ≤ 26, so products are exact to ~1e-15·‖A‖₂); 1e-8·‖A‖₂ where an iteration's own stopping
point sets the error (power iteration).
"""
from __future__ import annotations

import contextlib
import io
import itertools
import json
import math
import re
import sys
from pathlib import Path

import autograd
import autograd.numpy as anp
import numpy as np
import pytest

from refopt import analysis as A
from refopt import backend as Bk
from refopt import tree as T
from refopt.curvature import kfac_matrices as KM
from refopt.nn import MLP, SoftmaxCrossEntropy
from refopt.oracle import FunctionOracle, Oracle

from _kfac_helpers import dense_kfac as kron_blocks

ROOT = Path(__file__).resolve().parent.parent
SIZES = (3, 4, 2)
BATCH = 8
N = (3 + 1) * 4 + (4 + 1) * 2      # 26 parameters


# --- the problem and its dense matrices, built independently ------------------------------------------------
@pytest.fixture(scope="module")
def net():
    gen = np.random.default_rng(0)
    model = MLP(list(SIZES), "tanh", init="normal", init_scale=0.8)
    params = model.init(1)
    X = gen.standard_normal((BATCH, SIZES[0]))
    y = gen.integers(0, SIZES[-1], BATCH)
    return model, params, X, y


def make_oracle(net):
    model, params, X, y = net
    return Oracle(model, SoftmaxCrossEntropy(), X, y), params


def _unflat(theta):
    """[(W, b), ...] from the flat vector [vec(W₁), b₁, vec(W₂), b₂] (row-major W of shape (fan_in, fan_out))."""
    out, i = [], 0
    for fi, fo in zip(SIZES[:-1], SIZES[1:]):
        W = anp.reshape(theta[i:i + fi * fo], (fi, fo))
        i += fi * fo
        out.append((W, theta[i:i + fo]))
        i += fo
    return out


def _logits(theta, X):
    a = X
    layers = _unflat(theta)
    for l, (W, b) in enumerate(layers):
        a = anp.dot(a, W) + b
        if l < len(layers) - 1:
            a = anp.tanh(a)
    return a


def _softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


@pytest.fixture(scope="module")
def dense(net):
    """H, GGN, the Jacobian (B, C, n), the probabilities (B, C) and the flat params, from autograd and formulas."""
    model, params, X, y = net
    theta = np.asarray(T.ravel(params))

    def loss(th):
        z = _logits(th, X)
        zmax = anp.max(z, axis=1, keepdims=True)
        lse = anp.log(anp.sum(anp.exp(z - zmax), axis=1)) + zmax[:, 0]
        return anp.mean(lse - z[np.arange(len(y)), y])
    H = autograd.hessian(loss)(theta)
    J = autograd.jacobian(lambda th: _logits(th, X))(theta)                       # (B, C, n)
    p = _softmax(_logits(theta, X))
    G = sum(J[i].T @ (np.diag(p[i]) - np.outer(p[i], p[i])) @ J[i] for i in range(BATCH)) / BATCH
    return {"H": H, "G": G, "J": J, "p": p, "theta": theta, "y": y}


def fisher_at_labels(dense, labels):
    """(1/k) Σ_j (1/B) Σ_i J_iᵀ r r ᵀ J_i with r = p_i − e_{label}: the empirical Fisher for the data labels
    (k = 1), the Monte-Carlo Fisher for sampled ones."""
    labels = np.atleast_2d(labels)
    F = np.zeros((N, N))
    for lab in labels:
        for i in range(BATCH):
            g = dense["J"][i].T @ (dense["p"][i] - np.eye(SIZES[-1])[lab[i]])
            F += np.outer(g, g)
    return F / (BATCH * len(labels))


def spectral_norm(M):
    return float(np.abs(np.linalg.eigvalsh(M)).max())


def quadratic(eigenvalues, seed=0):
    """(FunctionOracle of ½xᵀAx with A = Q diag(eigenvalues) Qᵀ, A, x0)."""
    lam = np.asarray(eigenvalues, float)
    Q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((len(lam), len(lam))))
    M = (Q * lam) @ Q.T
    M = (M + M.T) / 2
    return FunctionOracle(lambda x: 0.5 * x @ (M @ x), grad=lambda x: M @ x, hvp=lambda x, v: M @ v), M, np.zeros(len(lam))


def test_the_independent_dense_matrices_are_refopts(net, dense):
    # a check on the ground truth itself: autograd's H and the formula GGN are the oracle's dense matrices
    o, params = make_oracle(net)
    np.testing.assert_allclose(o.dense_hessian(params), dense["H"], atol=1e-13)
    np.testing.assert_allclose(o.dense_ggn(params), dense["G"], atol=1e-13)


# --- operators -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["hessian", "ggn", "true", "mc", "empirical"])
def test_operators_match_the_dense_matrices(net, dense, kind):
    o, params = make_oracle(net)
    labels = o.sample_labels(params, 5, 3) if kind == "mc" else None
    expected = {"hessian": dense["H"], "ggn": dense["G"], "true": dense["G"],   # softmax: true Fisher = GGN
                "empirical": fisher_at_labels(dense, dense["y"])}.get(kind)
    if kind == "mc":
        expected = fisher_at_labels(dense, np.asarray(labels))
    options = {"seed": 5, "samples": 3} if kind == "mc" else {}
    op = A.make_operator(kind, o, params, **options)
    assert op.shape == (N, N) and op.dtype == np.float64 and op.symmetric
    tol = 1e-13 * spectral_norm(expected)
    np.testing.assert_allclose(op.to_dense(), expected, rtol=0, atol=tol)
    V = np.random.default_rng(1).standard_normal((N, 3))
    np.testing.assert_allclose(op.matmat(V), expected @ V, rtol=0, atol=10 * tol)
    np.testing.assert_allclose(op @ V[:, 0], expected @ V[:, 0], rtol=0, atol=10 * tol)
    np.testing.assert_allclose(op.matvec(V[:, :1]), expected @ V[:, :1], rtol=0, atol=10 * tol)  # (n, 1) in, (n, 1) out
    assert op.matvec(V[:, :1]).shape == (N, 1)
    if kind == "mc":   # the seeded operator is the operator of the labels that seed draws
        injected = A.fisher_operator(o, params, "mc", labels=labels)
        np.testing.assert_array_equal(injected.to_dense(), op.to_dense())


def test_the_empirical_fisher_differs_from_the_ggn(dense):
    # so the kind test above could fail if the kinds were mixed up
    assert np.abs(fisher_at_labels(dense, dense["y"]) - dense["G"]).max() > 1e-3
    assert np.abs(dense["H"] - dense["G"]).max() > 1e-3


def test_each_matvec_is_one_oracle_product(net):
    o, params = make_oracle(net)
    v = np.ones(N)
    cases = [("hessian", "nhvp", {}), ("ggn", "nggnvp", {}), ("true", "nfvp", {}), ("empirical", "nfvp", {}),
             ("mc", "nfvp", {"seed": 0})]
    for kind, counter, options in cases:
        op = A.make_operator(kind, o, params, **options)
        before = o.counts.as_dict()
        op.matvec(v)
        op.matmat(np.ones((N, 3)))
        after = o.counts.as_dict()
        changed = {k: after[k] - before[k] for k in after if after[k] != before[k]}
        assert changed == {counter: 4}, kind
        assert op.nmatvec == 4
    # K-FAC: one statistics pass when made; its Kronecker products do not touch the batch
    before = o.counts.as_dict()
    K = A.kfac_operator(o, params, damping=0.1)
    made = o.counts.as_dict()
    assert made["nstats"] == before["nstats"] + 1
    K.matmat(np.ones((N, 5)))
    assert o.counts.as_dict() == made and K.nmatvec == 5


def dense_kfac(o, params, damping, scheme, bias_block="joint", fisher="true"):
    """blockdiag_l of the damped Kronecker products of the oracle's layer factors (``_kfac_helpers.dense_kfac``,
    np.kron: "pi" / "tikhonov" (A + πγI) ⊗ (G + γ/π I), "eigen" A ⊗ G + λI; "separate" adds the bias block
    G + γI / G + λI after each layer's weight block)."""
    As, Gs = KM.layer_factors(o, params, fisher, bias_block=bias_block)
    return kron_blocks(As, Gs, damping, scheme, bias_block)


def matrix_power_sym(M, p):
    w, Q = np.linalg.eigh((M + M.T) / 2)
    return (Q * w ** p) @ Q.T


@pytest.mark.parametrize("scheme,bias_block", [("eigen", "joint"), ("pi", "joint"), ("tikhonov", "joint"),
                                               ("eigen", "separate"), ("tikhonov", "separate")])
def test_kfac_operator_powers_against_a_dense_kronecker_construction(net, scheme, bias_block):
    o, params = make_oracle(net)
    lam = 0.05
    P = dense_kfac(o, params, lam, scheme, bias_block)
    np.testing.assert_allclose(P, KM.kfac_matrix(o, params, lam, scheme, bias_block=bias_block), atol=1e-14)
    for power in (1, -1, 0.5, -0.5):
        op = A.kfac_operator(o, params, damping=lam, damping_scheme=scheme, power=power, bias_block=bias_block)
        expected = matrix_power_sym(P, power)
        np.testing.assert_allclose(op.to_dense(), expected, rtol=0,
                                   atol=1e-12 * np.abs(expected).max(), err_msg=f"power {power}")
    # P^{-1/2} P^{-1/2} is the library's own inverse product
    half = A.kfac_operator(o, params, damping=lam, damping_scheme=scheme, power=-0.5, bias_block=bias_block)
    v = np.random.default_rng(2).standard_normal(N)
    inv = T.ravel(KM.kfac_inverse_vp(o, params, T.unravel(v, params), lam, scheme, "eig", bias_block=bias_block))
    np.testing.assert_allclose(half.matvec(half.matvec(v)), inv, rtol=1e-11, atol=1e-11 * np.abs(inv).max())


def dense_ekfac(o, params, damping, dense_fisher, bias_block="joint"):
    """blockdiag_l(Q diag(diag(Qᵀ F_ll Q) + λ) Qᵀ), Q = Q_A ⊗ Q_G: the EKFAC of the true Fisher is K-FAC's
    eigenbasis with the exact Fisher block's diagonal in it (George et al. 2018); "separate": Q =
    blockdiag(Q_A ⊗ Q_G, Q_G) with A = (1/B) Σ a aᵀ, the bias rows in Q_G alone."""
    As, Gs = KM.layer_factors(o, params, "true", bias_block=bias_block)
    out, i = np.zeros((N, N)), 0
    for A_, G_ in zip(As, Gs):
        QG = np.linalg.eigh(G_)[1]
        Q = np.kron(np.linalg.eigh(A_)[1], QG)
        if bias_block == "separate":
            Q = np.block([[Q, np.zeros((len(Q), len(QG)))], [np.zeros((len(QG), len(Q))), QG]])
        k = len(Q)
        s = np.diag(Q.T @ dense_fisher[i:i + k, i:i + k] @ Q)
        out[i:i + k, i:i + k] = (Q * (s + damping)) @ Q.T
        i += k
    return out


def test_ekfac_operator_against_the_fisher_diagonal_in_the_kfac_eigenbasis(net, dense):
    o, params = make_oracle(net)
    lam = 0.05
    for bias_block, powers in (("joint", (1, -1, -0.5)), ("separate", (1, -1, 0.5, -0.5))):
        E = dense_ekfac(o, params, lam, dense["G"], bias_block)       # softmax: the true Fisher is the GGN
        np.testing.assert_allclose(E, KM.ekfac_matrix(o, params, lam, bias_block=bias_block), atol=1e-12)
        for power in powers:
            op = A.ekfac_operator(o, params, damping=lam, power=power, bias_block=bias_block)
            expected = matrix_power_sym(E, power)
            np.testing.assert_allclose(op.to_dense(), expected, rtol=0, atol=1e-11 * np.abs(expected).max(),
                                       err_msg=f"{bias_block}, power {power}")
        # and EKFAC is not K-FAC (else the test above could not tell them apart)
        assert np.abs(E - dense_kfac(o, params, lam, "eigen", bias_block)).max() > 1e-4
    # the bias rows apart are another matrix than the joint block's
    assert np.abs(dense_ekfac(o, params, lam, dense["G"], "separate") - dense_ekfac(o, params, lam, dense["G"])).max() > 1e-4


@pytest.mark.parametrize("curvature", ["kfac", "ekfac"])
def test_preconditioned_ggn_is_symmetric_with_the_eigenvalues_of_the_nonsymmetric_product(net, dense, curvature):
    o, params = make_oracle(net)
    lam, mu = 0.05, 0.02
    P = dense_kfac(o, params, lam, "pi") if curvature == "kfac" else dense_ekfac(o, params, lam, dense["G"])
    Ph = matrix_power_sym(P, -0.5)
    M = Ph @ (dense["G"] + mu * np.eye(N)) @ Ph
    op = A.kfac_preconditioned_ggn_operator(o, params, lam, "pi", curvature=curvature, ggn_damping=mu)
    np.testing.assert_allclose(op.to_dense(), M, rtol=0, atol=1e-12 * spectral_norm(M))
    nonsym = np.linalg.solve(P, dense["G"] + mu * np.eye(N))            # P⁻¹(G + μI): similar, not symmetric
    np.testing.assert_allclose(np.sort(np.linalg.eigvals(nonsym).real), np.linalg.eigvalsh(M),
                               rtol=1e-9, atol=1e-12)
    with pytest.raises(ValueError, match="not symmetric"):
        A.check_symmetric(nonsym)
    # the condition estimate with n Lanczos steps is the dense one
    pairs = A.lanczos_eigenpairs(op, 1, steps=N)
    w = np.linalg.eigvalsh(M)
    assert abs(pairs.largest.values[0] / pairs.smallest.values[0] - w[-1] / w[0]) <= 1e-9 * w[-1] / w[0]


def test_preconditioned_ggn_takes_kfac_operators_switches_and_a_given_ggn(net):
    """P of the preconditioned GGN is kfac_operator's of the same switches (a CNN's kfac_approx and
    conv_row_scale, the MLP's output_grad_scale), each of which changes P; a GGN operator passed as ``ggn``
    is used (no second one is made) and one of another size is refused."""
    from refopt.nn import CNN, Conv2d, Dense, Flatten  # noqa: PLC0415
    from refopt.problems.registry import network_oracle  # noqa: PLC0415
    cnn = CNN((2, 4, 4), [Conv2d(2, 3, 3), "tanh", Flatten(), Dense(12, 3)])
    g = np.random.default_rng(3)
    X, y = g.standard_normal((5, 32)), g.integers(0, 3, 5)
    oc, pc = network_oracle(cnn, SoftmaxCrossEntropy(), X, y), cnn.init(2)
    om, pm = make_oracle(net)
    lam, mu = 0.05, 0.02
    cases = [(oc, pc, dict(kfac_approx="reduce")), (oc, pc, dict(conv_row_scale="inverse_locations")),
             (om, pm, dict(output_grad_scale="reduced_loss"))]
    for o, params, kw in cases:
        n = T.size(params)
        Gd = A.ggn_operator(o, params).to_dense()
        dense_of = {}
        for options in ({}, kw):
            Ph = matrix_power_sym(A.kfac_operator(o, params, lam, "pi", fisher="empirical", **options).to_dense(), -0.5)
            dense_of[bool(options)] = Ph @ (Gd + mu * np.eye(n)) @ Ph
        M = dense_of[True]
        assert np.abs(M - dense_of[False]).max() > 1e-6 * spectral_norm(M), kw        # the switch matters
        op = A.kfac_preconditioned_ggn_operator(o, params, lam, fisher="empirical", ggn_damping=mu, **kw)
        np.testing.assert_allclose(op.to_dense(), M, rtol=0, atol=1e-11 * spectral_norm(M), err_msg=str(kw))
    ggn = A.ggn_operator(om, pm)
    made = []
    real = om.curvature_operator
    om.curvature_operator = lambda *a, **k: made.append(a) or real(*a, **k)
    try:
        op = A.kfac_preconditioned_ggn_operator(om, pm, lam, ggn=ggn)
        op.matvec(np.ones(N))
        assert made == [] and ggn.nmatvec == 1
    finally:
        del om.curvature_operator
    with pytest.raises(ValueError, match="ggn must be the GGN operator of these params"):
        A.kfac_preconditioned_ggn_operator(om, pm, lam, ggn=A.as_operator(np.eye(N + 1)))


def test_analyze_builds_one_ggn_operator_for_ggn_top_and_the_condition_estimate(net, monkeypatch):
    o, params = make_oracle(net)
    made = []
    real = o.curvature_operator
    monkeypatch.setattr(o, "curvature_operator", lambda p, kind="ggn", *a, **k: made.append(kind) or real(p, kind, *a, **k))
    A.analyze(o, params, k=1, analyses=("ggn_top", "kfac_condition"), damping=0.05)
    assert made == ["ggn"]


def test_operators_share_the_optimizers_bound_on_draws(net, monkeypatch):
    """The Fisher and K-FAC operators bound ``samples`` by ``optim.base.MAX_DRAWS``, the optimizers' bound."""
    from refopt.analysis import operators as Op  # noqa: PLC0415
    monkeypatch.setattr(Op, "MAX_DRAWS", 5)
    o, params = make_oracle(net)
    for call in (lambda: A.fisher_operator(o, params, "mc", samples=6, seed=0),
                 lambda: A.kfac_operator(o, params, samples=6)):
        with pytest.raises(ValueError, match=r"samples must be an integer in \[1, 5\]"):
            call()


def test_scipy_eigsh_on_refopt_operators_agrees_with_eigvalsh(net, dense):
    spla = pytest.importorskip("scipy.sparse.linalg")
    o, params = make_oracle(net)
    for kind, M in (("hessian", dense["H"]), ("ggn", dense["G"])):
        op = A.make_operator(kind, o, params)
        w = np.linalg.eigvalsh(M)
        scale = spectral_norm(M)
        for operator in (op, op.to_scipy()):          # directly (aslinearoperator) and as a LinearOperator
            top = np.sort(spla.eigsh(operator, k=3, which="LA", return_eigenvectors=False))
            np.testing.assert_allclose(top, w[-3:], rtol=0, atol=1e-10 * scale)
        bottom = np.sort(spla.eigsh(op, k=2, which="SA", return_eigenvectors=False))
        np.testing.assert_allclose(bottom, w[:2], rtol=0, atol=1e-10 * scale)
        lin = op.to_scipy()
        assert lin.shape == (N, N) and lin.dtype == np.float64
        np.testing.assert_allclose(lin.matmat(np.eye(N)), M, atol=1e-13 * scale)
        np.testing.assert_allclose(lin.rmatvec(np.ones(N)), M @ np.ones(N), atol=1e-13 * scale)


# --- power iteration -------------------------------------------------------------------------------------------
def by_magnitude(M):
    w = np.linalg.eigvalsh(M)
    return w[np.argsort(-np.abs(w), kind="stable")]


def test_power_iteration_on_a_known_spectrum_finds_the_largest_magnitudes_with_signs():
    lam = [10.0, -8.0, 5.0, 3.0, 2.0, 1.0, 0.5, 0.1, 0.0, -0.2]
    o, M, x = quadratic(lam)
    op = A.hessian_operator(o, x)
    r = A.top_eigenpairs(op, 4, max_iter=2000, tol=1e-15)
    np.testing.assert_allclose(r.values, [10.0, -8.0, 5.0, 3.0], rtol=0, atol=1e-8 * 10)
    assert all(r.converged) and max(r.iterations) < 2000
    w, Q = np.linalg.eigh(M)
    for i, target in enumerate([10.0, -8.0, 5.0, 3.0]):
        q = Q[:, np.argmin(np.abs(w - target))]
        assert abs(abs(r.vectors[:, i] @ q) - 1) < 1e-8
        assert r.residuals[i] == pytest.approx(np.linalg.norm(M @ r.vectors[:, i] - r.values[i] * r.vectors[:, i]),
                                               rel=1e-6, abs=1e-13)
    # 2 products for the symmetry check, then one per iteration
    assert r.nmatvec == 2 + sum(r.iterations) == op.nmatvec


@pytest.mark.parametrize("kind", ["hessian", "ggn"])
def test_power_iteration_top3_of_the_mlp_matches_eigvalsh(net, dense, kind):
    o, params = make_oracle(net)
    M = dense["H"] if kind == "hessian" else dense["G"]
    r = A.top_eigenpairs(A.make_operator(kind, o, params), 3, max_iter=3000, tol=1e-14, seed=3)
    np.testing.assert_allclose(r.values, by_magnitude(M)[:3], rtol=0, atol=1e-8 * spectral_norm(M))
    if kind == "hessian":
        assert r.values[2] < 0      # the third largest magnitude of this Hessian is a negative eigenvalue


def test_power_iteration_pyhessian_defaults_stop_on_the_relative_change(net, dense):
    o, params = make_oracle(net)
    r = A.top_eigenpairs(A.hessian_operator(o, params), 1)          # tol 1e-3, max_iter 100
    assert r.converged == (True,) and r.iterations[0] < 100
    top = by_magnitude(dense["H"])[0]
    # the docs' claim: an eigenvalue lies within the residual ‖Av − λv‖ of the Rayleigh quotient (plus rounding)
    assert abs(r.values[0] - top) <= r.residuals[0] + 1e-13 * abs(top)
    assert abs(r.values[0] - top) < 1e-2 * abs(top)     # tighter here: the residual is 1.2e-2, the error 1.2e-3
    v = r.vectors[:, 0]                                  # and the value is v's Rayleigh quotient
    assert r.values[0] == pytest.approx(v @ dense["H"] @ v / (v @ v), rel=1e-13)


def test_power_iteration_with_injected_starts_reproduces_the_seeded_run(net):
    o, params = make_oracle(net)
    op = A.hessian_operator(o, params)
    gen = np.random.default_rng(7)
    v0 = np.stack([gen.standard_normal(N) for _ in range(2)], axis=1)
    a = A.top_eigenpairs(op, 2, max_iter=50, tol=0, seed=7)
    b = A.top_eigenpairs(op, 2, max_iter=50, tol=0, v0=v0)
    np.testing.assert_array_equal(a.values, b.values)
    np.testing.assert_array_equal(a.vectors, b.vectors)
    c = A.top_eigenpairs(op, 2, max_iter=50, tol=0, seed=8)
    assert not np.array_equal(a.vectors, c.vectors)


def test_power_iteration_does_not_call_a_pair_converged_when_only_its_projection_vanished():
    """A = [[0, 1], [1, 0]] (eigenvalues ±1) from e₁, two iterations per pair: the first pair ends at v = e₂,
    λ = 0 (PyHessian's relative-change rule is met by 0 → 0); the second, from e₁ again, has A e₁ = e₂ inside
    the deflated span, so P A v = 0 while ‖A v − λ v‖ = 1: that pair has not converged. A null vector has."""
    M = np.array([[0.0, 1.0], [1.0, 0.0]])
    r = A.top_eigenpairs(M, 2, max_iter=2, v0=np.array([[1.0, 1.0], [0.0, 0.0]]))
    assert r.values[1] == 0.0 and r.residuals[1] == pytest.approx(1.0)
    assert r.converged[1] is False
    z = A.top_eigenpairs(np.diag([1.0, 0.0]), 2, max_iter=5, v0=np.eye(2))
    assert z.converged == (True, True) and z.residuals[1] == 0.0


def test_start_vectors_and_probes_are_drawn_one_at_a_time(net, monkeypatch):
    """Only the vector in use is drawn: a callback that stops the run after the first pair or probe leaves one
    draw made (before, all k start vectors and all N probes were drawn first). The draws themselves are the
    seeded sequence (the injected-vector tests compare them with draws made in order)."""
    from refopt.analysis import spectral
    o, params = make_oracle(net)
    H = A.hessian_operator(o, params)
    made = []
    for name in ("normal", "rademacher"):
        real = getattr(spectral, name)
        monkeypatch.setattr(spectral, name,
                            lambda gen, shape, dtype, real=real: made.append(shape) or real(gen, shape, dtype))

    class Stop(Exception):
        pass

    def stop(done, total):
        raise Stop
    for call in (lambda: A.top_eigenpairs(H, 20, max_iter=3, callback=stop, check_symmetry=False),
                 lambda: A.hutchinson_trace(H, spectral.MAX_PROBES, callback=stop),
                 lambda: A.slq(H, 3, probes=spectral.MAX_PROBES, callback=stop, check_symmetry=False)):
        made.clear()
        with pytest.raises(Stop):
            call()
        assert made == [(N,)]


# --- Lanczos ---------------------------------------------------------------------------------------------------
def test_lanczos_with_n_steps_gives_the_whole_spectrum_and_its_relations(net, dense):
    o, params = make_oracle(net)
    H = dense["H"]
    scale = spectral_norm(H)
    res = A.lanczos(A.hessian_operator(o, params), N, seed=1)
    Q = res.basis
    np.testing.assert_allclose(Q.T @ Q, np.eye(N), atol=1e-13)                    # full reorthogonalisation
    np.testing.assert_allclose(Q.T @ H @ Q, res.tridiagonal(), atol=1e-13 * scale)  # QᵀAQ = T
    pairs = A.lanczos_eigenpairs(A.hessian_operator(o, params), 3, steps=N, seed=1)
    w = np.linalg.eigvalsh(H)
    np.testing.assert_allclose(pairs.largest.values, w[::-1][:3], rtol=0, atol=1e-12 * scale)
    np.testing.assert_allclose(pairs.smallest.values, w[:3], rtol=0, atol=1e-12 * scale)
    for p in (pairs.largest, pairs.smallest):
        Y = p.vectors
        np.testing.assert_allclose(H @ Y, Y * p.values, atol=1e-11 * scale)


def test_lanczos_ritz_values_interlace_and_lie_within_their_residuals_of_eigenvalues(net, dense):
    o, params = make_oracle(net)
    H = dense["H"]
    w = np.linalg.eigvalsh(H)
    scale = spectral_norm(H)
    for steps in (5, 10, 15):
        pairs = A.lanczos_eigenpairs(A.hessian_operator(o, params), 2, steps=steps, seed=4)
        assert pairs.largest.values[0] <= w[-1] + 1e-13 * scale and pairs.smallest.values[0] >= w[0] - 1e-13 * scale
        for p in (pairs.largest, pairs.smallest):
            true = np.linalg.norm(H @ p.vectors - p.vectors * p.values, axis=0)
            np.testing.assert_allclose(p.residuals, true, rtol=1e-6, atol=1e-12 * scale)   # |β_m s_mi| = ‖Ay − θy‖
            for theta, r in zip(p.values, p.residuals):
                assert np.abs(w - theta).min() <= r + 1e-13 * scale
    # the extreme Ritz values converge: 15 steps of 26 get the top one to 1e-6
    assert abs(pairs.largest.values[0] - w[-1]) < 1e-6 * scale


def test_lanczos_restarts_after_an_invariant_subspace_and_still_finds_every_eigenvalue():
    # diag(d) with repeated entries: from a Gaussian start the Krylov space closes after 3 steps (3 distinct
    # values), exactly up to rounding; the restarts on unit vectors then find the remaining eigenvalues
    d = np.array([3.0, 3.0, 3.0, 1.0, 1.0, -2.0, -2.0, -2.0])
    res = A.lanczos(np.diag(d), len(d), seed=0)
    assert res.restarts >= 3 and np.count_nonzero(res.beta) == 2
    np.testing.assert_allclose(np.linalg.eigvalsh(res.tridiagonal()), np.sort(d), atol=1e-14)
    np.testing.assert_allclose(res.basis.T @ res.basis, np.eye(len(d)), atol=1e-15)
    # rotated, the repeated eigenvalues split by rounding and β falls to ~1e-13 instead of 0: Lanczos goes on
    # through that near-breakdown (full reorthogonalisation keeps Q orthonormal) and still gets every eigenvalue
    o, M, x = quadratic(d, seed=2)
    res = A.lanczos(A.hessian_operator(o, x), len(d), seed=0)
    np.testing.assert_allclose(np.linalg.eigvalsh(res.tridiagonal()), np.sort(d), atol=1e-12)
    np.testing.assert_allclose(res.basis.T @ res.basis, np.eye(len(d)), atol=1e-13)
    np.testing.assert_allclose(res.basis.T @ M @ res.basis, res.tridiagonal(), atol=1e-13)


def test_adaptive_lanczos_stops_once_the_wanted_ritz_pairs_converge():
    """n = 200 with the top three eigenvalues 3, 2.5, 2 well apart from the rest in [0, 1]: the three largest
    converge in a few dozen steps; by default the run stops there with each residual ≤ √eps·|θ| and each value
    within its residual of the eigenvalue (in fact to rounding). The bottom end (a dense cluster) is left
    unconverged and says so; asking for it (which="both") takes more steps."""
    lam = np.concatenate([[3.0, 2.5, 2.0], np.linspace(0.0, 1.0, 197)])
    o, M, x = quadratic(lam, seed=1)
    op = A.hessian_operator(o, x)
    pairs = A.lanczos_eigenpairs(op, 3, which="largest")
    tol = math.sqrt(np.finfo(float).eps)
    assert pairs.steps < 60 and not pairs.complete and pairs.tol == tol
    top = pairs.largest
    assert all(top.converged) and np.all(top.residuals <= tol * np.abs(top.values))
    np.testing.assert_allclose(top.values, [3.0, 2.5, 2.0], rtol=0, atol=1e-12)
    assert np.all(np.abs(top.values - [3.0, 2.5, 2.0]) <= top.residuals + 1e-14)
    assert not any(pairs.smallest.converged) and pairs.smallest.values[0] >= 0.0 - 1e-14   # θ_min ≥ λ_min
    both = A.lanczos_eigenpairs(op, 1, which="both")
    assert both.steps > pairs.steps and both.largest.converged[0] and both.smallest.converged[0]
    assert abs(both.smallest.values[0]) <= both.smallest.residuals[0] + 1e-14
    # tol 0: no pair passes above the rounding floor until the cap (or n)
    capped = A.lanczos_eigenpairs(op, 1, tol=0.0, max_steps=45, which="both")
    assert capped.steps == 45 and capped.largest.nmatvec == 45 + 2      # + the two of the symmetry check
    # fixed steps run exactly that many, as before
    assert A.lanczos_eigenpairs(op, 2, steps=7).steps == 7
    full = A.lanczos_eigenpairs(np.diag(lam[:30]), 2, tol=0.0)
    assert full.steps == 30 and full.complete and all(full.largest.converged)   # m = n: exact, the floor passes
    for call, message in [(lambda: A.lanczos_eigenpairs(op, 1, which="top"), "which must be one of"),
                          (lambda: A.lanczos_eigenpairs(op, 5, max_steps=4), r"k = 5 is larger than max_steps \(4\)"),
                          (lambda: A.lanczos_eigenpairs(op, 1, max_steps=201), "max_steps = 201 is larger than"),
                          (lambda: A.lanczos_eigenpairs(op, 1, tol=-1.0), "tol must be a non-negative")]:
        with pytest.raises(ValueError, match=message):
            call()


# --- Hutchinson ------------------------------------------------------------------------------------------------
def test_hutchinson_is_exact_for_a_diagonal_operator_with_rademacher_probes():
    d = np.array([3.0, -1.0, 0.5, 2.0, 7.0])
    est = A.hutchinson_trace(np.diag(d), probes=20, seed=3)
    assert est.estimate == pytest.approx(d.sum(), abs=1e-14) and est.stderr <= 1e-15
    assert est.probes == 20 and est.nmatvec == 20 and est.distribution == "rademacher"
    gauss = A.hutchinson_trace(np.diag(d), probes=20, seed=3, distribution="gaussian")
    assert gauss.stderr > 0.1          # not exact with Gaussian probes


def test_hutchinson_over_all_rademacher_probes_is_exact_with_the_stated_variance():
    n = 8
    gen = np.random.default_rng(5)
    M = gen.standard_normal((n, n))
    M = M + M.T
    Z = np.array(list(itertools.product([-1.0, 1.0], repeat=n))).T             # every probe, (n, 2ⁿ)
    est = A.hutchinson_trace(M, vectors=Z)
    assert est.probes == 2 ** n
    assert est.estimate == pytest.approx(np.trace(M), abs=1e-12)
    variance = 2 * (np.sum(M ** 2) - np.sum(np.diag(M) ** 2))                   # Var zᵀAz, Rademacher
    assert np.var(est.samples) == pytest.approx(variance, rel=1e-12)
    assert est.stderr == pytest.approx(np.std(est.samples, ddof=1) / math.sqrt(2 ** n), rel=1e-12)


@pytest.mark.parametrize("distribution", ["rademacher", "gaussian"])
def test_hutchinson_on_the_mlp_hessian_is_within_its_standard_error(net, dense, distribution):
    o, params = make_oracle(net)
    H = dense["H"]
    op = A.hessian_operator(o, params)
    variance = 2 * np.sum(H ** 2) - (2 * np.sum(np.diag(H) ** 2) if distribution == "rademacher" else 0.0)
    probes = 64
    for seed in range(8):
        est = A.hutchinson_trace(op, probes, seed=seed, distribution=distribution)
        assert abs(est.estimate - np.trace(H)) <= 4 * est.stderr            # 4 standard errors, every seed
        assert 0.6 < est.stderr / math.sqrt(variance / probes) < 1.5         # the stated error is the true one


def test_hutchinson_injected_probes_reproduce_the_seeded_ones(net):
    o, params = make_oracle(net)
    op = A.hessian_operator(o, params)
    gen = np.random.default_rng(11)
    Z = np.stack([gen.integers(0, 2, N) * 2.0 - 1.0 for _ in range(5)], axis=1)   # the documented draw order
    a = A.hutchinson_trace(op, 5, seed=11)
    b = A.hutchinson_trace(op, vectors=Z)
    np.testing.assert_array_equal(a.samples, b.samples)


# --- stochastic Lanczos quadrature ---------------------------------------------------------------------------
def test_slq_per_probe_moments_are_gauss_quadrature_of_the_probe(net, dense):
    # identity checked: Σ_i w_i θ_i^p = vᵀ H^p v / ‖v‖² for the probe v, exactly for p ≤ 2m − 1 (not for p = 2m)
    o, params = make_oracle(net)
    H = dense["H"]
    gen = np.random.default_rng(2)
    Z = np.stack([gen.integers(0, 2, N) * 2.0 - 1.0 for _ in range(3)], axis=1)
    for m in (2, 3):
        res = A.slq(A.hessian_operator(o, params), m, vectors=Z)
        np.testing.assert_allclose(res.weights.sum(axis=1), 1.0, atol=1e-14)
        for j in range(3):
            v = Z[:, j]
            exact = [v @ np.linalg.matrix_power(H, p) @ v / (v @ v) for p in range(2 * m + 1)]
            quad = [np.sum(res.weights[j] * res.nodes[j] ** p) for p in range(2 * m + 1)]
            np.testing.assert_allclose(quad[:2 * m], exact[:2 * m], rtol=1e-12, atol=1e-14)
            assert abs(quad[2 * m] - exact[2 * m]) > 1e-8 * abs(exact[2 * m])


def test_slq_moments_are_the_dense_spectrums_when_the_steps_reach_the_dimension(net, dense):
    # identity checked: with m = n and the n probes the columns of an orthogonal matrix U,
    # (1/n) Σ_j Σ_i w_ji θ_ji^p = (1/n) Σ_j u_jᵀ H^p u_j = tr(H^p)/n for every p (here 0..3 and 6)
    o, params = make_oracle(net)
    H = dense["H"]
    U, _ = np.linalg.qr(np.random.default_rng(3).standard_normal((N, N)))
    res = A.slq(A.hessian_operator(o, params), N, vectors=U)
    w = np.linalg.eigvalsh(H)
    for p in (0, 1, 2, 3, 6):
        assert res.moment(p) == pytest.approx(np.mean(w ** p), rel=1e-12, abs=1e-15)
    # one Rademacher probe with m = n: its nodes of non-negligible weight are eigenvalues of H
    one = A.slq(A.hessian_operator(o, params), N, probes=1, seed=4)
    heavy = one.nodes[0][one.weights[0] > 1e-8]
    assert len(heavy) > N // 2
    assert max(np.abs(w - t).min() for t in heavy) < 1e-10 * spectral_norm(H)


def test_slq_density_integrates_to_one_and_has_the_quadrature_mean():
    o, M, x = quadratic([4.0, 1.0, 0.5, -1.0, 2.0, 0.0])
    res = A.slq(A.hessian_operator(o, x), 3, probes=4, seed=1)
    grid, phi = res.density(num=4001)
    dx = grid[1] - grid[0]
    assert np.sum(phi) * dx == pytest.approx(1.0, abs=1e-6)
    assert np.sum(grid * phi) * dx == pytest.approx(res.moment(1), abs=1e-6)
    # the broadening by hand at one point
    sigma = res.default_sigma()
    x0 = 0.3
    hand = np.mean([np.sum(w * np.exp(-(x0 - t) ** 2 / (2 * sigma ** 2)) / (sigma * math.sqrt(2 * math.pi)))
                    for t, w in zip(res.nodes, res.weights)])
    assert res.density(grid=np.array([x0]))[1][0] == pytest.approx(hand, rel=1e-12)
    assert sigma == pytest.approx(0.01 * (res.nodes.max() - res.nodes.min()))


def test_slq_gaussian_probes_are_normalised_and_injected_probes_reproduce_seeded_ones(net):
    o, params = make_oracle(net)
    op = A.hessian_operator(o, params)
    g = A.slq(op, 4, probes=3, seed=2, distribution="gaussian")
    np.testing.assert_allclose(g.weights.sum(axis=1), 1.0, atol=1e-14)
    gen = np.random.default_rng(2)
    Z = np.stack([gen.standard_normal(N) for _ in range(3)], axis=1)
    h = A.slq(op, 4, vectors=Z)
    np.testing.assert_array_equal(g.nodes, h.nodes)


# --- symmetry ----------------------------------------------------------------------------------------------------
def test_symmetry_check_tolerance_and_its_use():
    gen = np.random.default_rng(0)
    S = gen.standard_normal((20, 20))
    S = S + S.T
    N_ = gen.standard_normal((20, 20))
    N_ = N_ - N_.T
    assert A.check_symmetric(S) < 1e-14
    assert A.check_symmetric(S + 1e-12 * N_) < math.sqrt(np.finfo(float).eps)      # rounding-sized: passes
    bad = S + 1e-3 * N_
    with pytest.raises(ValueError, match="not symmetric"):
        A.check_symmetric(bad)
    for call in (lambda: A.top_eigenpairs(bad, 1), lambda: A.lanczos(bad, 5), lambda: A.lanczos_eigenpairs(bad, 1),
                 lambda: A.slq(bad, 5)):
        with pytest.raises(ValueError, match="not symmetric"):
            call()
    assert A.hutchinson_trace(bad, 4).probes == 4            # the trace needs no symmetry
    A.top_eigenpairs(bad, 1, check_symmetry=False)           # and the check can be turned off
    declared = A.CurvatureOperator(lambda v: S @ v, 20, np.float64, "declared", symmetric=False)
    with pytest.raises(ValueError, match="declared non-symmetric"):
        A.lanczos(declared, 3)


# --- bad inputs ----------------------------------------------------------------------------------------------------
def test_bad_inputs_are_clear_value_errors(net):
    o, params = make_oracle(net)
    H = A.hessian_operator(o, params)
    cases = [
        (lambda: A.top_eigenpairs(H, N + 1), r"k = 27 is larger than the dimension n \(26\)"),
        (lambda: A.top_eigenpairs(H, 0), "k must be at least 1"),
        (lambda: A.lanczos_eigenpairs(H, 27), "k = 27 is larger than the dimension"),
        (lambda: A.lanczos_eigenpairs(H, 5, steps=4), r"k = 5 is larger than steps \(4\)"),
        (lambda: A.lanczos(H, 0), "steps must be at least 1"),
        (lambda: A.lanczos(H, N + 1), "steps = 27 is larger than the dimension"),
        (lambda: A.slq(H, 0), "steps must be at least 1"),
        (lambda: A.slq(H, 3, probes=0), r"probes must be an integer in \[1,"),
        (lambda: A.hutchinson_trace(H, 0), r"probes must be an integer in \[1,"),
        (lambda: A.hutchinson_trace(H, 2.5), "probes must be an integer"),
        (lambda: A.hutchinson_trace(H, 3, distribution="uniform"), "distribution must be one of"),
        (lambda: A.top_eigenpairs(H, 1, max_iter=0), "max_iter must be an integer"),
        (lambda: A.top_eigenpairs(H, 1, tol=-1.0), "tol must be a non-negative"),
        (lambda: A.top_eigenpairs(H, 2, v0=np.ones(N)), "v0 must have 2 column"),
        (lambda: A.top_eigenpairs(H, 1, v0=np.ones(N + 1)), r"v0 must have shape \(26,\)"),
        (lambda: A.hutchinson_trace(H, vectors=np.ones((N, 2), np.float32)), "vectors must be an array of dtype float64"),
        (lambda: A.lanczos(H, 3, v0=np.zeros(N)), "v0 must not be the zero vector"),
        (lambda: H.matvec(np.ones(N + 1)), r"hessian: v must have shape \(26,\)"),
        (lambda: H.matvec(np.ones(N, np.float32)), "v must have dtype float64"),
        (lambda: H.matvec([1.0] * N), "v must be an array"),
        (lambda: H.matvec(np.full(N, np.nan)), "v contains NaN or Inf"),
        (lambda: H.matmat(np.ones(N)), r"V must have shape \(26, k\)"),
        (lambda: A.as_operator(np.ones((3, 4))), "square"),
        (lambda: A.make_operator("hessain", o, params), "kind must be one of"),
        (lambda: A.fisher_operator(o, params, "mc"), "needs seed= or labels="),
        (lambda: A.kfac_operator(o, params, power=-1), "needs damping > 0"),
        (lambda: A.kfac_operator(o, params, damping=0.1, power=2), "power must be one of"),
        (lambda: A.kfac_operator(o, params, damping=-1.0), "damping must be a non-negative"),
        (lambda: A.kfac_operator(o, params, damping=0.1, damping_scheme="pi", bias_block="separate"), "separate"),
        (lambda: A.kfac_operator(o, params, fisher="mc"), "needs seed= or labels="),
        (lambda: A.kfac_preconditioned_ggn_operator(o, params, 0.0), "damping must be positive"),
        (lambda: A.kfac_preconditioned_ggn_operator(o, params, 0.1, curvature="shampoo"), "curvature must be one of"),
        (lambda: A.kfac_operator(o, [params[0]["W"]]), r"needs network params, a list of \{'W', 'b'\} layer dicts"),
    ]
    for call, message in cases:
        with pytest.raises(ValueError, match=message):
            call()
    f, _, x = quadratic([1.0, 2.0])
    for call in (lambda: A.ggn_operator(f, x), lambda: A.fisher_operator(f, x), lambda: A.kfac_operator(f, x)):
        with pytest.raises(ValueError, match="needs an oracle that provides"):
            call()


def test_non_finite_products_are_refused(net):
    bad = np.eye(4)
    bad[2, 2] = np.inf
    with pytest.raises(ValueError, match="the product is not finite"):
        A.top_eigenpairs(bad, 1, check_symmetry=False)
    with pytest.raises(ValueError, match="the product is not finite"):
        A.hutchinson_trace(bad, 3)
    model, params, X, y = net
    o = Oracle(model, SoftmaxCrossEntropy(), X, y)
    broken = T.tree_map(np.copy, params)
    broken[1]["b"][0] = np.nan                                  # a NaN parameter: every product is NaN
    for kind in ("hessian", "ggn"):
        with pytest.raises(ValueError, match=f"{kind}: the product is not finite"), np.errstate(all="ignore"):
            A.make_operator(kind, o, broken).matvec(np.ones(N))


# --- float32 and the CuPy stand-in -------------------------------------------------------------------------------
def test_float32_operators_and_tools_stay_float32_and_agree_with_float64(net, dense):
    model, params, X, y = net
    p32 = T.tree_map(lambda a: a.astype(np.float32), params)
    o = Oracle(model, SoftmaxCrossEntropy(), X.astype(np.float32), y)
    op = A.ggn_operator(o, p32)
    assert op.dtype == np.float32 and op.matvec(np.ones(N, np.float32)).dtype == np.float32
    pairs = A.lanczos_eigenpairs(op, 1, steps=N)
    top = np.linalg.eigvalsh(dense["G"])[-1]
    # float32 rounding (eps₃₂ ≈ 1.2e-7) of O(1) products and 26-term dot products: 2e-6 relative (~16 eps₃₂)
    assert abs(pairs.largest.values[0] - top) < 2e-6 * top
    assert pairs.largest.vectors.dtype == np.float32
    with pytest.raises(ValueError, match="dtype float32"):
        op.matvec(np.ones(N))


def test_the_tools_run_on_the_cupy_stand_in_with_numpys_numbers(net):
    from _helpers import on_both
    model, params, X, y = net

    def run():
        o = Oracle(model, SoftmaxCrossEntropy(), X, y)
        p = T.tree_map(Bk.to_device, params)
        H = A.hessian_operator(o, p)
        K = A.kfac_preconditioned_ggn_operator(o, p, 0.1)
        return (A.top_eigenpairs(H, 2, max_iter=30).values, A.lanczos_eigenpairs(K, 2, steps=10).largest.values,
                A.hutchinson_trace(H, 5).estimate, A.slq(H, 5, probes=2).nodes)
    ref, got = on_both(run, host_ok=True)   # eigenvalues, trace and nodes are host summaries by design
    for a, b in zip(ref, got):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-10, atol=1e-12)


# --- the report ---------------------------------------------------------------------------------------------------
def test_analyze_reports_what_the_dense_spectra_say(net, dense):
    o, params = make_oracle(net)
    seen = []
    report = A.analyze(o, params, k=3, probes=64, steps=N, density_probes=2, damping=0.05,
                       progress=lambda stage, done, total: seen.append((stage, done, total)))
    json.dumps(report)                                               # plain floats and lists
    H, G = dense["H"], dense["G"]
    for name, M in (("hessian_top", H), ("ggn_top", G)):           # the largest algebraic, descending
        e = report[name]
        w = np.linalg.eigvalsh(M)[::-1][:3]
        assert e["method"] == "lanczos" and e["order"] == "largest algebraic, descending" and all(e["converged"])
        np.testing.assert_allclose(e["values"], w, rtol=0, atol=1e-8 * spectral_norm(M))
        assert np.all(np.abs(np.array(e["values"]) - w) <= np.array(e["residuals"]) + 1e-13 * spectral_norm(M))
    assert by_magnitude(H)[2] < 0 < np.linalg.eigvalsh(H)[-3]   # the two orders differ here: a negative third
    power = A.analyze(o, params, k=3, method="power", max_iter=3000, tol=1e-14, seed=3, analyses=["hessian_top"])
    np.testing.assert_allclose(power["hessian_top"]["values"], by_magnitude(H)[:3], atol=1e-8 * spectral_norm(H))
    assert power["hessian_top"]["order"] == "largest magnitude, descending"
    for name, M in (("hessian_trace", H), ("ggn_trace", G)):
        e = report[name]
        assert abs(e["estimate"] - np.trace(M)) <= 4 * e["stderr"] and e["probes"] == 64
    P = dense_kfac(o, params, 0.05, "pi")
    Ph = matrix_power_sym(P, -0.5)
    w = np.linalg.eigvalsh(Ph @ (G + 0.05 * np.eye(N)) @ Ph)
    kc = report["kfac_condition"]
    assert kc["preconditioned"]["condition"] == pytest.approx(w[-1] / w[0], rel=1e-9)
    wg = np.linalg.eigvalsh(G) + 0.05
    assert kc["damped_ggn"]["condition"] == pytest.approx(wg[-1] / wg[0], rel=1e-9)
    assert not kc["preconditioned"]["lower_bound"] and not kc["damped_ggn"]["lower_bound"]
    d = report["density"]
    assert len(d["nodes"]) == 2 and len(d["nodes"][0]) == N
    assert sum(d["weights"][0]) == pytest.approx(1.0)
    assert report["counts"]["nhvp"] > 0 and report["counts"]["nstats"] == 1
    stages = {s for s, _, _ in seen}
    assert stages == set(A.ANALYSES)
    assert ("hessian_top", 1, N) in seen and ("density", 2, 2) in seen   # Lanczos counts steps against its cap
    text = A.format_report(report)
    assert "± " in text and "K-FAC-preconditioned" in text and "≥" not in text
    with pytest.raises(ValueError, match=r"k must be an integer in \[1, 26\]"):
        A.analyze(o, params, k=N + 1)
    big, _, xb = quadratic(np.linspace(1.0, 2.0, 120))
    with pytest.raises(ValueError, match=r"k must be an integer in \[1, 100\]"):   # MAX_TOP bounds the work
        A.analyze(big, xb, k=101)
    with pytest.raises(ValueError, match="method must be one of"):
        A.analyze(o, params, method="arnoldi")
    with pytest.raises(ValueError, match=r"k = 5 is larger than max_steps \(4\)"):
        A.analyze(o, params, k=5, max_steps=4)


def test_condition_estimates_stop_when_converged_and_are_lower_bounds_before():
    """An MLP 4-10-3 (n = 83): both extreme Ritz pairs of G + λI and of the preconditioned GGN converge (relative
    residual ≤ 1e-4) before n steps, and κ is then the dense one (of the operators' own dense forms, which the
    tests above check against independent constructions) to ~1e-4 (in fact far closer: Ritz values converge
    quadratically in the residual). Capped at 8 steps they have not, and κ is a strict lower bound, flagged."""
    gen = np.random.default_rng(0)
    model = MLP([4, 10, 3], "tanh", init="normal", init_scale=0.8)
    params = model.init(1)
    o = Oracle(model, SoftmaxCrossEntropy(), gen.standard_normal((40, 4)), gen.integers(0, 3, 40))
    n, lam = 83, 0.05
    dense = {"damped_ggn": np.linalg.eigvalsh(A.ggn_operator(o, params).to_dense() + lam * np.eye(n)),
             "preconditioned": np.linalg.eigvalsh(A.kfac_preconditioned_ggn_operator(o, params, lam).to_dense())}
    report = A.analyze(o, params, analyses=["kfac_condition"], damping=lam)
    capped = A.analyze(o, params, analyses=["kfac_condition"], damping=lam, max_steps=8)
    for key, w in dense.items():
        e, c = report["kfac_condition"][key], capped["kfac_condition"][key]
        assert e["converged"] and not e["lower_bound"] and not e["complete"] and e["steps"] < n
        assert e["residual_min"] <= 1e-4 * e["lambda_min"] and e["residual_max"] <= 1e-4 * e["lambda_max"]
        assert e["condition"] == pytest.approx(w[-1] / w[0], rel=1e-6)
        assert c["lower_bound"] and not c["converged"] and c["steps"] == 8
        assert c["lambda_max"] <= w[-1] * (1 + 1e-12) and c["lambda_min"] >= w[0] * (1 - 1e-12)   # interlacing
        assert c["condition"] < 0.99 * w[-1] / w[0]
    text, low = A.format_report(report), A.format_report(capped)
    assert "≥" not in text and text.count("relative Ritz residuals") == 2
    assert low.count("condition number of the") == 2 and low.count(": ≥ ") == 2 and "a lower bound" in low


def test_analyze_a_function_problem_skips_the_network_analyses():
    o, M, x = quadratic([3.0, -1.0, 2.0, 0.5])
    report = A.analyze(o, x + 1.0, k=2, probes=8, steps=4)
    np.testing.assert_allclose(report["hessian_top"]["values"], [3.0, 2.0], atol=1e-8)
    assert set(report["skipped"]) == {"ggn_top", "ggn_trace", "kfac_condition"}
    assert "does not provide 'ggn'" in report["skipped"]["ggn_top"]
    assert "skipped" in A.format_report(report)
    with pytest.raises(ValueError, match="params must be given"):
        A.analyze(o)
    with pytest.raises(ValueError, match="analyses must be one of"):
        A.analyze(o, x, analyses=["spectrum"])


def test_plot_density_writes_a_file_or_says_why_not(tmp_path, monkeypatch):
    o, M, x = quadratic([3.0, -1.0, 2.0, 0.5])
    report = A.analyze(o, x, k=1, probes=4, steps=4, analyses=["density"])
    pytest.importorskip("matplotlib")
    path = A.plot_density(report, str(tmp_path / "density.png"))
    assert path and Path(path).stat().st_size > 1000
    monkeypatch.setitem(sys.modules, "matplotlib", None)                # as if it were not installed
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert A.plot_density(report, str(tmp_path / "again.png")) is None
    assert "matplotlib is not installed" in err.getvalue() and not (tmp_path / "again.png").exists()
    with pytest.raises(ValueError, match="needs an SLQResult"):
        A.plot_density({"hessian_top": {}}, str(tmp_path / "x.png"))


# --- the documentation's example -----------------------------------------------------------------------------------
def test_the_docs_python_example_runs(tmp_path, monkeypatch):
    pytest.importorskip("sklearn")
    pytest.importorskip("scipy")
    text = (ROOT / "docs" / "analysis.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert blocks, "docs/analysis.md has no python example"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    for source in blocks:
        with contextlib.redirect_stdout(io.StringIO()):
            exec(compile(source, "docs/analysis.md", "exec"), {"__name__": "__docs__"})
