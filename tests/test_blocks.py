"""Curvature blocks and the verifier's K-FAC functions against dense constructions written here.

The expectations never go through refopt's factor helpers: the tanh MLP's forward pass, each example's
output-to-pre-activation Jacobian, the softmax output Fisher diag(p) − ppᵀ and the residuals p − e_y are
computed below in NumPy, and A, G, A ⊗ G (np.kron), π, the EKFAC diagonal and the solves are formed
from them.
"""

import numpy as np
import pytest

from refopt import tree as T
from refopt import curvature as CB
from refopt.nn import MLP, SoftmaxCrossEntropy
from refopt.oracle import Oracle
from refopt.optim.kfac import KFAC

from _kfac_helpers import blockdiag, dense_kfac

FISHERS = ("true", "mc", "empirical")
BIAS = ("joint", "separate")


def problem(reduction="mean", sizes=(3, 4, 3), batch=7, seed=0):
    g = np.random.default_rng(seed)
    model = MLP(list(sizes), activation="tanh")
    params = model.init(seed + 1)
    X = g.standard_normal((batch, sizes[0]))
    y = g.integers(0, sizes[-1], batch)
    return params, Oracle(model, SoftmaxCrossEntropy(reduction), X, y)


def per_example(params, X):
    """Layer inputs a_{l-1} (B, fan_in), per-example Jacobians J_l = ∂z/∂s_l (B, C, fan_out), probabilities."""
    inputs, pre = [], []
    a = X
    for i, p in enumerate(params):
        inputs.append(a)
        s = a @ p["W"] + p["b"]
        pre.append(s)
        a = np.tanh(s) if i < len(params) - 1 else s
    z = a
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    B, C = z.shape
    J = [None] * len(params)
    J[-1] = np.broadcast_to(np.eye(C), (B, C, C))
    for l in range(len(params) - 2, -1, -1):      # ∂z/∂s_l = ∂z/∂s_{l+1} W_{l+1}ᵀ diag(1 − tanh²(s_l))
        J[l] = np.einsum("bck,jk->bcj", J[l + 1], params[l + 1]["W"]) * (1 - np.tanh(pre[l]) ** 2)[:, None, :]
    return inputs, J, p


def output_second_moments(p, y, fisher, labels):
    """E[r rᵀ] per example (B, C, C), r = ∂ℓ_i/∂z = p − e_y, with y from the model (exactly or k draws) or the data."""
    B, C = p.shape
    if fisher == "true":
        return np.stack([np.diag(pi) - np.outer(pi, pi) for pi in p])
    sets = [y] if fisher == "empirical" else list(labels)
    M = np.zeros((B, C, C))
    for ys in sets:
        r = p - np.eye(C)[ys]
        M += np.einsum("bi,bj->bij", r, r) / len(sets)
    return M


def dense_factors(params, oracle, fisher, labels=None, bias_block="joint"):
    """A_l, G_l and the exact layer Fisher blocks F_l (indexed by vec(W̄)) from per-example quantities."""
    X, y = oracle.X, oracle.y
    B = X.shape[0]
    scale = 1 / B if oracle.loss.reduction == "mean" else 1.0
    inputs, J, p = per_example(params, X)
    M = output_second_moments(p, y, fisher, labels)
    A, G, F = [], [], []
    for a, Jl in zip(inputs, J):
        abar = np.hstack([a, np.ones((B, 1))])
        u = abar if bias_block == "joint" else a
        Dg2 = np.einsum("bci,bcd,bdj->bij", Jl, M, Jl)               # E[Dg Dgᵀ] per example
        A.append(sum(np.outer(x, x) for x in u) / B)
        G.append(B * scale * Dg2.mean(axis=0))
        F.append(scale * sum(np.kron(np.outer(x, x), d) for x, d in zip(abar, Dg2)))
    return A, G, F


def dense_ekfac(A, G, F, damping, bias_block):
    """Per layer Q diag(diag(Qᵀ F Q) + λ) Qᵀ, Q = Q_A ⊗ Q_G of the batch's factors; "separate" rotates the
    weight block by Q_A ⊗ Q_G and the bias block by Q_G."""
    out = []
    for a, g, f in zip(A, G, F):
        QG = np.linalg.eigh(g)[1]
        if bias_block == "joint":
            parts = [(np.kron(np.linalg.eigh(a)[1], QG), f)]
        else:
            nw = len(a) * len(g)
            parts = [(np.kron(np.linalg.eigh(a)[1], QG), f[:nw, :nw]), (QG, f[nw:, nw:])]
        for Q, fb in parts:
            out.append(Q @ np.diag(np.diag(Q.T @ fb @ Q) + damping) @ Q.T)
    return blockdiag(out)


def labels_for(oracle, params, fisher):
    return oracle.sample_labels(params, seed=3, k=4) if fisher == "mc" else None


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("bias_block", BIAS)
@pytest.mark.parametrize("fisher", FISHERS)
def test_layer_factors_and_dense_kfac_matrix(fisher, bias_block, reduction):
    params, oracle = problem(reduction)
    labels = labels_for(oracle, params, fisher)
    A, G = CB.layer_factors(oracle, params, fisher, labels=labels, bias_block=bias_block)
    eA, eG, _ = dense_factors(params, oracle, fisher, labels, bias_block)
    for x, e in zip(A + G, eA + eG):
        np.testing.assert_allclose(x, e, rtol=1e-12, atol=1e-14)
    schemes = ("eigen", "tikhonov") if bias_block == "separate" else ("eigen", "tikhonov", "pi")
    for scheme in schemes:
        for damping in (0.0, 0.05):
            M = CB.kfac_matrix(oracle, params, damping, scheme, fisher, labels=labels, bias_block=bias_block)
            np.testing.assert_allclose(M, dense_kfac(eA, eG, damping, scheme, bias_block), rtol=1e-11, atol=1e-13)


def test_single_example_kfac_matrix_is_the_fisher_block_diagonal():
    """B = 1: each layer's Fisher block is exactly A ⊗ G (the dense F_l here is built without factors)."""
    params, oracle = problem(batch=1, seed=4)
    _, _, F = dense_factors(params, oracle, "true")
    np.testing.assert_allclose(CB.kfac_matrix(oracle, params), blockdiag(F), rtol=1e-11, atol=1e-14)


@pytest.mark.parametrize("bias_block", BIAS)
@pytest.mark.parametrize("fisher", FISHERS)
def test_dense_ekfac_matrix(fisher, bias_block):
    params, oracle = problem(seed=1)
    labels = labels_for(oracle, params, fisher)
    eA, eG, F = dense_factors(params, oracle, fisher, labels, "joint")
    if bias_block == "separate":
        eA = dense_factors(params, oracle, fisher, labels, "separate")[0]
    for damping in (0.0, 0.1):
        M = CB.ekfac_matrix(oracle, params, damping, fisher, labels=labels, bias_block=bias_block)
        np.testing.assert_allclose(M, dense_ekfac(eA, eG, F, damping, bias_block), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("bias_block,scheme,inverse", [
    ("joint", "pi", "inverse"), ("joint", "pi", "eig"), ("joint", "tikhonov", "inverse"), ("joint", "eigen", "eig"),
    ("separate", "tikhonov", "inverse"), ("separate", "tikhonov", "eig"), ("separate", "eigen", "eig")])
@pytest.mark.parametrize("fisher", FISHERS)
def test_damped_inverse_applied_to_a_vector(fisher, bias_block, scheme, inverse):
    params, oracle = problem(seed=2)
    labels = labels_for(oracle, params, fisher)
    eA, eG, F = dense_factors(params, oracle, fisher, labels, bias_block)
    v = T.unravel(np.random.default_rng(5).standard_normal(T.size(params)), params)
    damping = 0.03
    x = CB.kfac_inverse_vp(oracle, params, v, damping, scheme, inverse, fisher, labels=labels, bias_block=bias_block)
    expected = np.linalg.solve(dense_kfac(eA, eG, damping, scheme, bias_block), T.ravel(v))
    np.testing.assert_allclose(T.ravel(x), expected, rtol=1e-9, atol=1e-12 * np.abs(expected).max())
    if scheme == "eigen" and fisher != "mc":
        if bias_block == "separate":
            F = dense_factors(params, oracle, fisher, labels, "joint")[2]
        x = CB.ekfac_inverse_vp(oracle, params, v, damping, fisher, labels=labels, bias_block=bias_block)
        expected = np.linalg.solve(dense_ekfac(eA, eG, F, damping, bias_block), T.ravel(v))
        np.testing.assert_allclose(T.ravel(x), expected, rtol=1e-8, atol=1e-12 * np.abs(expected).max())


def test_kfac_step_is_the_verifier_inverse_of_the_gradient():
    params, oracle = problem(seed=6)
    opt = KFAC(lr=1.0, momentum=0.0, decay=0.0, kl_clip=None, inverse_interval=1, fisher="true", damping=0.02)
    new = opt.update(params, opt.init(params), oracle)[0]
    x = CB.kfac_inverse_vp(oracle, params, oracle.grad(params), 0.02)
    np.testing.assert_allclose(T.ravel(T.sub(params, new)), T.ravel(x), rtol=1e-12, atol=1e-15)


def _block_objects():
    return [CB.KroneckerBlocks("pi", "inverse"), CB.KroneckerBlocks("pi", "eig"),
            CB.KroneckerBlocks("tikhonov", "inverse", "separate"), CB.KroneckerBlocks("eigen", "eig", "separate"),
            CB.EigenbasisBlocks(0.9), CB.EigenbasisBlocks(0.9, "separate"), CB.TridiagonalBlocks("pi"),
            CB.TridiagonalBlocks("tikhonov")]


@pytest.mark.parametrize("blocks", _block_objects(), ids=lambda b: type(b).__name__)
def test_powers_minus_one_and_one_are_inverse(blocks):
    """multiply(power=1) and multiply(power=−1) are inverse operators: for the tridiagonal chain that is
    F̂ = Ξ⁻¹ Λ⁻¹ Ξ⁻ᵀ against F̂⁻¹ = Ξᵀ Λ Ξ."""
    from refopt.curvature import kronecker as K
    params, oracle = problem(sizes=(3, 4, 3, 2), seed=7)
    stats = K.kfac_statistics(oracle, params, "true")
    factors = blocks.estimate(stats)
    pre = blocks.update_estimate(blocks.refresh(factors, 0.05), stats)
    M, Minv = (blocks.to_dense(factors, pre, 0.05, power) for power in (1, -1))
    np.testing.assert_allclose(M @ Minv, np.eye(len(M)), atol=1e-8)
    np.testing.assert_allclose(M, M.T, atol=1e-10 * np.abs(M).max())
    with pytest.raises(ValueError, match="power"):
        blocks.multiply([], factors, pre, 0.05, power=2)


@pytest.mark.parametrize("blocks", _block_objects(), ids=lambda b: type(b).__name__)
def test_half_powers_square_to_the_matrix_and_its_inverse(blocks):
    """multiply(power=±½) from the eigenpairs: (C^½)² = C and C^-½ C C^-½ = I, symmetric; blocks without
    eigenpairs (the damped inverses of inverse="inverse", the tridiagonal chain) refuse ±½ by name."""
    from refopt.curvature import kronecker as K
    params, oracle = problem(sizes=(3, 4, 3, 2), seed=7)
    stats = K.kfac_statistics(oracle, params, "true")
    factors = blocks.estimate(stats)
    pre = blocks.update_estimate(blocks.refresh(factors, 0.05), stats)
    if isinstance(blocks, CB.TridiagonalBlocks) or getattr(blocks, "inverse", "eig") == "inverse":
        with pytest.raises(ValueError, match="power"):
            blocks.to_dense(factors, pre, 0.05, 0.5)
        return
    M, H, Hinv = (blocks.to_dense(factors, pre, 0.05, power) for power in (1, 0.5, -0.5))
    scale = np.abs(M).max()
    np.testing.assert_allclose(H @ H, M, rtol=0, atol=1e-12 * scale)
    np.testing.assert_allclose(Hinv @ M @ Hinv, np.eye(len(M)), rtol=0, atol=1e-10)
    np.testing.assert_allclose(H, H.T, rtol=0, atol=1e-13 * np.abs(H).max())


@pytest.mark.parametrize("kwargs", [dict(damping_scheme="levenberg"), dict(inverse="cholesky"),
                                    dict(bias_block="split"), dict(output_grad_scale="batch"),
                                    dict(damping_scheme="eigen", inverse="inverse"),
                                    dict(damping_scheme="pi", bias_block="separate")])
def test_bad_block_arguments_raise(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        CB.KroneckerBlocks(**kwargs)
    with pytest.raises(ValueError, match="damping_scheme"):
        CB.TridiagonalBlocks("eigen")
