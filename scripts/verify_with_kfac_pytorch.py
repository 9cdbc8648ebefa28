#!/usr/bin/env python
"""Check the gpauloski/kfac-pytorch profile against the real kfac-pytorch, step by step: dense MLPs and a CNN.

For every MLP trace problem (``refopt.verify.trace.MLP_TRACE_PROBLEMS``) the script takes refopt's trace of the
``gpauloski/kfac-pytorch`` profile (``make_trace``: data, θ_0, hyperparameters, with the overrides below),
rebuilds the MLP in PyTorch (float64 ``nn.Linear`` layers, weight = Wᵀ), and runs the library as its
README does: ``loss.backward(); preconditioner.step(); optimizer.step()`` with
``kfac.preconditioner.KFACPreconditioner`` (compute_method='eigen', factor/inverse updates every step,
factor_dtype = inv_dtype = float64) and ``torch.optim.SGD(lr, momentum)``. The gradients are torch's own
autodiff of the same reduced loss (softmax CE mean, Gaussian mean, Bernoulli sum), so nothing is
injected: kfac-pytorch's hooks see the activations and the output gradients of the user's backward pass
(the empirical Fisher, no draws). It prints max_t max_leaf |θ_t^theirs − θ_t^refopt|∞ / |θ_t^refopt|∞.

kfac-pytorch casts every factor to float32 before ``torch.linalg.eigh`` (kfac/layers/eigen.py,
compute_a_inv / compute_g_inv) whatever ``inv_dtype`` is. The script runs twice: ``float32`` (the library
as it is; the difference is that rounding) and ``float64`` (its eigen module sees a ``torch`` whose
``float32`` is float64, so the eigendecomposition is the only change); only the float64 run is checked
against ``--rtol``.

Last run (kfac-pytorch 0.4.2, commit 869cf11, torch 2.13.0+cpu; 40 steps, lr 0.05, momentum 0.5,
damping 1e-2, factor_decay 0.9, kl_clip 1e-2; and the profile's defaults lr 0.1, momentum 0.9, damping
1e-3, factor_decay 0.95, kl_clip 1e-3): float64 eigh tiny_mlp ≤ 6.7e-15, tiny_regression ≤ 1.5e-15,
tiny_logistic ≤ 8.9e-16; the library's float32 eigh ≤ 6.6e-7. A refopt run with damping_scheme='tikhonov'
instead of 'eigen' differs by 1.1 (the check can fail). Without kfac (pip install kfac-pytorch
--no-deps) or torch it prints a message and exits 0.

The CNN check (``avgpool_cnn`` below: its own network, not the tiny_cnn trace problem, with average pooling; 2@5×5 images →
Conv2d(2, 3, 3, stride 2, padding 1), L = 9 locations → tanh → Conv2d(3, 4, 2), L = 4 → tanh →
AvgPool2d(2, stride 1) → Flatten → Linear(4, 3), softmax cross-entropy mean over 6 examples) builds the
network in refopt (``refopt.nn.CNN``, glorot init, seed 0), copies θ_0 into torch (conv kernels OIHW in
both, the Linear weight transposed) and runs the profile with ``conv_row_scale`` "none" (refopt's
default, which must differ) and "inverse_locations" (the profile's setting: kfac-pytorch's Conv2dModuleHelper: every patch row, bias 1 included,
and every output-gradient row ÷ L before get_cov, so a conv layer's A = (1/(N·L³)) Σ āāᵀ and
G = (1/(N·L³)) Σ g gᵀ). Besides θ_t it compares kfac-pytorch's running factors (``layer.a_factor`` /
``layer.g_factor``, bias last like refopt's ā) with refopt's ``state.factors`` after every step; only
"inverse_locations" with the float64 eigh is checked against ``--rtol``.

Last CNN run (same versions, 40 steps, both settings): "inverse_locations" float64 eigh θ ≤ 3.0e-15, factors
≤ 1.0e-15; the library's float32 eigh θ ≤ 9.1e-7, factors ≤ 7.2e-8; "none" θ 1.0 and 1.5 (defaults,
non-default), factors 0.88 and 0.98 (its conv factors are L² = 81 and 16 times kfac-pytorch's).

    python scripts/verify_with_kfac_pytorch.py [--steps 40] [--rtol 1e-10]
"""
from __future__ import annotations

import argparse
import sys
import types
import warnings

try:
    import torch
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import kfac
        import kfac.layers.eigen as kfac_eigen
        from kfac.preconditioner import KFACPreconditioner
except ImportError:  # pragma: no cover - depends on the machine
    print("verify_with_kfac_pytorch: torch/kfac-pytorch is not installed; skipping "
          "(pip install torch; pip install --no-deps kfac-pytorch)")
    sys.exit(0)

import numpy as np  # noqa: E402

from refopt.nn import CNN, AvgPool2d, Conv2d, Dense, Flatten, SoftmaxCrossEntropy  # noqa: E402
from refopt.optim import make_optimizer  # noqa: E402
from refopt.problems.registry import network_oracle  # noqa: E402
from refopt.verify import TRACE_PROBLEMS, make_trace  # noqa: E402
from refopt.verify.trace import MLP_TRACE_PROBLEMS  # noqa: E402
from refopt.verify.external import torch_network  # noqa: E402
from refopt.verify.profiles import get_profile  # noqa: E402

PROFILE = "gpauloski/kfac-pytorch"
SETTINGS = {
    "defaults": {"lr": 0.1, "momentum": 0.9, "damping": 1e-3, "decay": 0.95, "kl_clip": 1e-3},
    "non-default": {"lr": 0.05, "momentum": 0.5, "damping": 1e-2, "decay": 0.9, "kl_clip": 1e-2},
}


class _Float64Torch(types.ModuleType):
    """``torch`` as kfac/layers/eigen.py sees it, with float32 meaning float64 (its eigh cast)."""

    float32 = torch.float64

    def __getattr__(self, name):
        return getattr(torch, name)


def torch_loss(spec, z, y):
    if spec["loss"] == "softmax_cross_entropy":
        return torch.nn.functional.cross_entropy(z, y, reduction=spec["reduction"])
    if spec["loss"] == "gaussian":
        per = 0.5 * ((y - z) ** 2).sum(dim=1) / spec.get("variance", 1.0)
        return per.sum() if spec["reduction"] == "sum" else per.mean()
    return torch.nn.functional.binary_cross_entropy_with_logits(z, y, reduction=spec["reduction"])


def kfac_pytorch_run(spec, trace, steps, hp):
    """θ_1..θ_T of KFACPreconditioner + SGD from the trace's θ_0 on its full batch."""
    model = torch_network(spec, trace.params[0])
    X = torch.from_numpy(np.asarray(trace.X))
    y = torch.from_numpy(np.asarray(trace.y))
    opt = torch.optim.SGD(model.parameters(), lr=hp["lr"], momentum=hp["momentum"])
    pre = KFACPreconditioner(model, factor_update_steps=1, inv_update_steps=1, damping=hp["damping"],
                             factor_decay=hp["decay"], kl_clip=hp["kl_clip"], lr=hp["lr"],
                             compute_method="eigen", factor_dtype=torch.float64, inv_dtype=torch.float64)
    out = []
    for _ in range(steps):
        opt.zero_grad()
        with warnings.catch_warnings():   # full backward hook on the first layer, whose input needs no grad
            warnings.simplefilter("ignore", UserWarning)
            torch_loss(spec, model(X), y).backward()
        pre.step()
        opt.step()
        lins = [m for m in model if isinstance(m, torch.nn.Linear)]
        out.append([{"W": m.weight.detach().numpy().T.copy(), "b": m.bias.detach().numpy().copy()} for m in lins])
    return out


def avgpool_cnn():
    """The CNN of the conv check (module docs): two conv layers with L = 9 and 4 output locations, so the
    division by L is visible, a stride and a padding (kfac-pytorch's _extract_patches pads and strides; it
    ignores dilation, so there is none), an average pooling and a dense head."""
    return CNN((2, 5, 5), [Conv2d(2, 3, 3, stride=2, padding=1), "tanh", Conv2d(3, 4, 2), "tanh",
                           AvgPool2d(2, stride=1), Flatten(), Dense(4, 3)])


def torch_cnn(params):
    """(``avgpool_cnn`` as a float64 torch.nn.Sequential holding refopt's ``params``
    (``external.torch_network``), its Conv2d and Linear modules)."""
    net = torch_network({"type": "cnn", **avgpool_cnn().config()}, params)
    return net, [m for m in net if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]


def cnn_data(seed=0, n=6):
    g = np.random.default_rng([seed, 11])
    return g.standard_normal((n, 2, 5, 5)), g.integers(0, 3, size=n).astype(np.int64)


def refopt_cnn_run(hp, row_scale, steps, seed=0):
    """(θ_1..θ_T, [(A_l, G_l) per layer] after each step) of the profile with ``conv_row_scale`` on the CNN."""
    model = avgpool_cnn()
    X, y = cnn_data(seed)
    oracle = network_oracle(model, SoftmaxCrossEntropy(), X.reshape(X.shape[0], -1), y)
    opt = make_optimizer("kfac", **{**get_profile(PROFILE).hyperparameters, **hp, "conv_row_scale": row_scale})
    params = model.init(seed)
    state = opt.init(params)
    thetas, factors = [], []
    for _ in range(steps):
        params, state, _ = opt.update(params, state, oracle)
        thetas.append(params)
        factors.append(list(zip(state.factors["A"], state.factors["G"])))
    return model.init(seed), thetas, factors


def kfac_pytorch_cnn_run(params0, steps, hp, seed=0):
    """The same for KFACPreconditioner + SGD on ``torch_cnn`` from θ_0 (the factors are its running averages)."""
    net, layers = torch_cnn(params0)
    X, y = (torch.from_numpy(a) for a in cnn_data(seed))
    opt = torch.optim.SGD(net.parameters(), lr=hp["lr"], momentum=hp["momentum"])
    pre = KFACPreconditioner(net, factor_update_steps=1, inv_update_steps=1, damping=hp["damping"],
                             factor_decay=hp["decay"], kl_clip=hp["kl_clip"], lr=hp["lr"],
                             compute_method="eigen", factor_dtype=torch.float64, inv_dtype=torch.float64)
    kfac_layers = [layer for _, layer in pre._layers.values()]   # registration order = the modules' order
    thetas, factors = [], []
    for _ in range(steps):
        opt.zero_grad()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            torch.nn.functional.cross_entropy(net(X), y).backward()
        pre.step()
        opt.step()
        thetas.append([{"W": (m.weight.detach().numpy() if m.weight.ndim == 4 else m.weight.detach().numpy().T).copy(),
                        "b": m.bias.detach().numpy().copy()} for m in layers])
        factors.append([(lay.a_factor.numpy().copy(), lay.g_factor.numpy().copy()) for lay in kfac_layers])
    return thetas, factors


def max_rel_factors(ours, theirs) -> float:
    """max over steps, layers and {A, G} of ‖ours − theirs‖∞ / ‖ours‖∞."""
    worst = 0.0
    for o_t, t_t in zip(ours, theirs):
        for o_pair, t_pair in zip(o_t, t_t):
            for o, t in zip(o_pair, t_pair):
                o = np.asarray(o)
                worst = max(worst, float(np.max(np.abs(o - t)) / max(np.max(np.abs(o)), 1e-300)))
    return worst


def max_rel(ours, theirs) -> float:
    worst = 0.0
    for o_t, t_t in zip(ours, theirs):
        for o, t in zip(o_t, t_t):
            for k in ("W", "b"):
                oo = np.asarray(o[k])
                worst = max(worst, float(np.max(np.abs(oo - t[k])) / max(np.max(np.abs(oo)), 1e-300)))
    return worst


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--rtol", type=float, default=1e-10)
    args = ap.parse_args(argv)
    print(f"kfac-pytorch {getattr(kfac, '__version__', '?')}, torch {torch.__version__}, {args.steps} steps")
    failed = False
    for setting, hp in SETTINGS.items():
        for problem in MLP_TRACE_PROBLEMS:   # the conv check below builds its own CNN
            spec = TRACE_PROBLEMS[problem]
            trace = make_trace("kfac", {**hp}, problem, args.steps, 0, PROFILE)
            for eig_dtype in ("float64", "float32"):
                kfac_eigen.torch = _Float64Torch("torch") if eig_dtype == "float64" else torch
                theirs = kfac_pytorch_run(spec, trace, args.steps, hp)
                kfac_eigen.torch = torch
                d = max_rel(trace.params[1:], theirs)
                bad = eig_dtype == "float64" and not d <= args.rtol
                failed |= bad
                print(f"{setting:12s} {problem:16s} eigh {eig_dtype}: max rel diff {d:.2e}"
                      f"{'  FAIL' if bad else ''}")
    for setting, hp in SETTINGS.items():
        for row_scale in ("inverse_locations", "none"):
            params0, ours, our_factors = refopt_cnn_run(hp, row_scale, args.steps)
            for eig_dtype in ("float64", "float32"):
                kfac_eigen.torch = _Float64Torch("torch") if eig_dtype == "float64" else torch
                theirs, their_factors = kfac_pytorch_cnn_run(params0, args.steps, hp)
                kfac_eigen.torch = torch
                d, f = max_rel(ours, theirs), max_rel_factors(our_factors, their_factors)
                checked = row_scale == "inverse_locations" and eig_dtype == "float64"
                bad = checked and not (d <= args.rtol and f <= args.rtol)
                failed |= bad
                note = "  FAIL" if bad else ("" if row_scale == "inverse_locations" else "  (expected to differ)")
                print(f"{setting:12s} avgpool_cnn conv_row_scale={row_scale:17s} eigh {eig_dtype}: max rel diff "
                      f"θ {d:.2e}, factors {f:.2e}{note}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
