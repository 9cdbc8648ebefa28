"""refopt's losses against torch's, and their empirical Fisher / K-FAC / EKFAC against curvlinops'.

Runs only where torch (and, for the curvature cases, curvlinops) is installed. The mapping checked
(docs/core.md, "Losses and the libraries"):

    torch MSELoss("mean")           = Gaussian(variance=0.5, reduction="mean_all")
    torch MSELoss("sum")            = Gaussian(variance=0.5, reduction="sum")
    torch BCEWithLogitsLoss("mean") = Bernoulli("mean_all");   "sum" = Bernoulli("sum")
    torch CrossEntropyLoss("mean")  = SoftmaxCrossEntropy("mean") = SoftmaxCrossEntropy("mean_all")

Value and gradient with respect to the outputs agree to 1e-14 (relative); curvlinops'
``EFLinearOperator``, ``KFACLinearOperator`` / ``EKFACLinearOperator`` with ``fisher_type="empirical"``
(and "mc" with refopt's labels injected into ``draw_label``) agree with refopt's empirical Fisher,
K-FAC factors and EKFAC matrix to rounding, with C = 3 outputs, where the per-example mapping
Gaussian(variance=C/2, "mean") is off by the factor C.
"""
from __future__ import annotations

import numpy as np
import pytest

from refopt import autodiff as ad
from refopt.curvature import ekfac_matrix, layer_factors
from refopt.nn import MLP, Bernoulli, Gaussian, SoftmaxCrossEntropy
from refopt.oracle import Oracle

B, SIZES = 7, [4, 5, 3]
C = SIZES[-1]


def _rel(a, b):
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


def _targets(kind, gen, n=B):
    if kind == "mse":
        return gen.standard_normal((n, C))
    if kind == "bce":
        return gen.integers(0, 2, (n, C)).astype(float)
    return gen.integers(0, C, n)


def _pair(kind, reduction):
    """(torch loss, refopt loss) that are the same function."""
    torch = pytest.importorskip("torch")
    mapped = "mean_all" if reduction == "mean" else reduction
    if kind == "mse":
        return torch.nn.MSELoss(reduction=reduction), Gaussian(mapped, variance=0.5)
    if kind == "bce":
        return torch.nn.BCEWithLogitsLoss(reduction=reduction), Bernoulli(mapped)
    return torch.nn.CrossEntropyLoss(reduction=reduction), SoftmaxCrossEntropy(mapped)


@pytest.mark.parametrize("kind", ["mse", "bce", "ce"])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_value_and_output_gradient_equal_torch(kind, reduction):
    torch = pytest.importorskip("torch")
    tloss, rloss = _pair(kind, reduction)
    gen = np.random.default_rng(3)
    worst = 0.0
    for _ in range(20):
        z, y = 2.0 * gen.standard_normal((B, C)), _targets(kind, gen)
        zt = torch.tensor(z, dtype=torch.float64, requires_grad=True)
        tv = tloss(zt, torch.tensor(y))
        tv.backward()
        value, dz = ad.value_and_grad(lambda zz: rloss(zz, y))(z)
        worst = max(worst, _rel(value, tv.item()), _rel(dz, zt.grad.numpy()))
    assert worst <= 1e-14, worst
    if kind == "ce":  # one entry per example: "mean_all" is "mean", bit for bit
        assert SoftmaxCrossEntropy("mean_all")(z, y) == SoftmaxCrossEntropy("mean")(z, y)


# --- curvature against curvlinops --------------------------------------------------------------------
def _problem(kind, seed=0):
    """refopt (model, params, X, y) and the same network in torch, float64."""
    torch = pytest.importorskip("torch")
    gen = np.random.default_rng(seed)
    model = MLP(SIZES, activation="tanh", init="normal", init_scale=0.9)
    params = model.init(seed)
    X, y = gen.standard_normal((B, SIZES[0])), _targets(kind, gen)
    layers = []
    for l, p in enumerate(params):
        lin = torch.nn.Linear(p["W"].shape[0], p["W"].shape[1]).double()
        with torch.no_grad():
            lin.weight.copy_(torch.tensor(p["W"].T))
            lin.bias.copy_(torch.tensor(p["b"]))
        layers += [lin] + ([torch.nn.Tanh()] if l < len(params) - 1 else [])
    net = torch.nn.Sequential(*layers)
    return model, params, X, y, net, (torch.tensor(X), torch.tensor(y))


def _to_refopt_order(params):
    """Permutation P with refopt_flat = torch_flat[P]: torch holds weight (out, in) then bias per layer,
    refopt vec(W) of W (in, out) row-major, then b."""
    index, offset = [], 0
    for p in params:
        fi, fo = p["W"].shape
        w = offset + np.arange(fi * fo).reshape(fo, fi)       # torch weight entries (o, i)
        index.append(w.T.reshape(-1))                         # refopt's (i, o) row-major
        index.append(offset + fi * fo + np.arange(fo))
        offset += fi * fo + fo
    return np.concatenate(index)


def _dense(op, n):
    torch = pytest.importorskip("torch")
    return (op @ torch.eye(n, dtype=torch.float64)).detach().numpy()


@pytest.mark.parametrize("kind", ["mse", "bce", "ce"])
def test_empirical_fisher_equals_curvlinops_ef(kind):
    torch = pytest.importorskip("torch")
    curvlinops = pytest.importorskip("curvlinops")
    tloss, rloss = _pair(kind, "mean")
    model, params, X, y, net, data = _problem(kind)
    n = model.num_params
    EF = _dense(curvlinops.EFLinearOperator(net, tloss, list(net.parameters()), [data]), n)
    P = _to_refopt_order(params)
    ours = Oracle(model, rloss, X, y).dense_fisher(params, "empirical")
    assert _rel(ours, EF[np.ix_(P, P)]) <= 1e-13
    if kind == "mse":  # the per-example mapping has torch's value but an EF C× smaller
        old = Oracle(model, Gaussian("mean", variance=C / 2), X, y).dense_fisher(params, "empirical")
        assert _rel(C * old, EF[np.ix_(P, P)]) <= 1e-13 and _rel(old, EF[np.ix_(P, P)]) > 0.5
    del torch


def _curvlinops_factors(kind, net, tloss, data, fisher_type, labels=None):
    torch = pytest.importorskip("torch")
    curvlinops = pytest.importorskip("curvlinops")
    kfac = curvlinops.KFACLinearOperator(net, tloss, list(net.parameters()), [data], fisher_type=fisher_type,
                                         separate_weight_and_bias=False, check_deterministic=False)
    if labels is not None:  # refopt's draws, so both sides see the same labels
        kfac.draw_label = lambda output: torch.tensor(labels)
    kfac.compute_kronecker_factors()
    state = kfac.state_dict()
    names = list(state["input_covariances"])
    return ([state["input_covariances"][k].numpy() for k in names],
            [state["gradient_covariances"][k].numpy() for k in names])


@pytest.mark.parametrize("kind", ["mse", "bce", "ce"])
@pytest.mark.parametrize("fisher", ["empirical", "mc"])
def test_kfac_factors_equal_curvlinops(kind, fisher):
    """A and G per layer (bias joint, last row of W̄) equal curvlinops' KFAC factors; "mc" with the labels
    refopt's ``sample`` drew (for MSE: N(z, ½), the variance of the mapping) fed to curvlinops."""
    tloss, rloss = _pair(kind, "mean")
    model, params, X, y, net, data = _problem(kind, seed=1)
    oracle = Oracle(model, rloss, X, y)
    labels = rloss.sample(oracle.outputs(params), seed=5, k=1) if fisher == "mc" else None
    A, G = layer_factors(oracle, params, fisher=fisher, labels=labels)
    tA, tG = _curvlinops_factors(kind, net, tloss, data, fisher, None if labels is None else labels[0])
    for l in range(model.num_layers):
        assert _rel(A[l], tA[l]) <= 1e-13
        assert _rel(G[l], tG[l]) <= 1e-13, (l, _rel(G[l], tG[l]))


def test_mse_sampling_variance_is_curvlinops_half():
    """curvlinops' MSELoss labels are z + √½ ε; Gaussian(variance=0.5).sample draws the same law."""
    torch = pytest.importorskip("torch")
    curvlinops = pytest.importorskip("curvlinops")
    tloss, rloss = _pair("mse", "mean")
    _, _, _, _, net, data = _problem("mse")
    kfac = curvlinops.KFACLinearOperator(net, tloss, list(net.parameters()), [data], check_deterministic=False)
    kfac._generator = torch.Generator().manual_seed(0)
    z = torch.zeros(20000, C, dtype=torch.float64)
    theirs = kfac.draw_label(z).numpy()
    ours = rloss.sample(np.zeros((20000, C)), seed=0)[0]
    assert abs(theirs.var() - 0.5) < 0.02 and abs(ours.var() - 0.5) < 0.02


@pytest.mark.parametrize("kind", ["mse", "bce"])
def test_empirical_ekfac_equals_curvlinops(kind):
    torch = pytest.importorskip("torch")
    curvlinops = pytest.importorskip("curvlinops")
    tloss, rloss = _pair(kind, "mean")
    model, params, X, y, net, data = _problem(kind, seed=2)
    op = curvlinops.EKFACLinearOperator(net, tloss, list(net.parameters()), [data], fisher_type="empirical",
                                        separate_weight_and_bias=False, check_deterministic=False)
    P = _to_refopt_order(params)
    theirs = _dense(op, model.num_params)[np.ix_(P, P)]
    ours = ekfac_matrix(Oracle(model, rloss, X, y), params, fisher="empirical")
    assert _rel(ours, theirs) <= 1e-13
    del torch
