#!/usr/bin/env python
"""Check the gpauloski/kfac-pytorch profile against the real kfac-pytorch, step by step.

For every trace problem (``refopt.verify.TRACE_PROBLEMS``) the script takes refopt's trace of the
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

from refopt.verify import TRACE_PROBLEMS, make_trace  # noqa: E402
from refopt.verify.external import torch_mlp  # noqa: E402

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
    model = torch_mlp(spec, trace.params[0])
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
        for problem, spec in TRACE_PROBLEMS.items():
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
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
