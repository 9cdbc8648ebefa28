#!/usr/bin/env python
"""Check the f-dangel/curvlinops profile against the real curvlinops, step by step.

The profile says: a K-FAC step is one ``KFACLinearOperator`` pass over the batch (fisher_type='mc',
mc_samples=1, weight and bias in separate blocks, no running average) and its
``KFACInverseLinearOperator(damping=δ)`` ((A + δI) ⊗ (G + δI))⁻¹, applied to the gradient by the user:
θ_{t+1} = θ_t − η · K⁻¹ g. For every trace problem (``refopt.verify.TRACE_PROBLEMS``) the script takes
refopt's trace of the profile (``make_trace``, damping = δ², see the profile's gaps), and at every step t,
**at refopt's iterate θ_t**, builds the float64 torch MLP (weight = Wᵀ), a fresh KFACLinearOperator on the
full batch whose ``draw_label`` returns refopt's labels of step t (so both sides use the same Monte-Carlo
draw), inverts it with curvlinops and applies it to torch's gradient of the loss. It prints
max_t max_leaf |θ_{t+1}^theirs − θ_{t+1}^refopt|∞ / |θ_{t+1}^refopt|∞ (one-step differences, so they
do not compound).

Losses: softmax CE mean → ``CrossEntropyLoss()``; Bernoulli sum → ``BCEWithLogitsLoss(reduction='sum')``;
Gaussian (σ² = 1) mean → ``MSELoss()``. curvlinops has no Gaussian of variance σ²: MSELoss is the loss
(1/(BC)) Σ‖y − z‖², whose GGN is c = 2σ²/C times refopt's, and its ``draw_label`` draws y = z + √½ ε.
So for tiny_regression the injected label is z + √½ (y_refopt − z)/σ, the step's gradient is refopt's
loss's, and the gradient covariances are divided by c before inverting.

Last run (curvlinops-for-pytorch 3.0.1, torch 2.13.0+cpu, 30 steps; lr 0.5, δ = 0.1 and lr 1.0, δ = 0.3):
tiny_mlp ≤ 3.0e-15, tiny_regression ≤ 1.2e-15, tiny_logistic ≤ 6.2e-16. Injecting other labels or
passing δ instead of √(refopt's damping) gives 0.28 and 2.2. Without torch or curvlinops it prints a message
and exits 0.

    python scripts/verify_with_curvlinops.py [--steps 30] [--rtol 1e-10]
"""
from __future__ import annotations

import argparse
import math
import sys
from importlib.metadata import version

try:
    import torch
    from curvlinops import KFACInverseLinearOperator, KFACLinearOperator
except ImportError:  # pragma: no cover - depends on the machine
    print("verify_with_curvlinops: torch/curvlinops is not installed; skipping (pip install curvlinops-for-pytorch)")
    sys.exit(0)

import numpy as np  # noqa: E402

from refopt.verify import TRACE_PROBLEMS, make_trace  # noqa: E402
from refopt.verify.external import torch_mlp  # noqa: E402

PROFILE = "f-dangel/curvlinops"
SETTINGS = {"lr 0.5, delta 0.1": (0.5, 0.1), "lr 1.0, delta 0.3": (1.0, 0.3)}


def loss_and_scale(spec):
    """(curvlinops loss, c = its GGN / refopt's GGN, refopt's loss in torch)."""
    if spec["loss"] == "softmax_cross_entropy":
        return torch.nn.CrossEntropyLoss(reduction=spec["reduction"]), 1.0, \
            lambda z, y: torch.nn.functional.cross_entropy(z, y, reduction=spec["reduction"])
    if spec["loss"] == "bernoulli":
        return torch.nn.BCEWithLogitsLoss(reduction=spec["reduction"]), 1.0, \
            lambda z, y: torch.nn.functional.binary_cross_entropy_with_logits(z, y, reduction=spec["reduction"])
    assert spec["reduction"] == "mean"
    var, C = spec.get("variance", 1.0), spec["sizes"][-1]

    def gaussian(z, y):
        return (0.5 * ((y - z) ** 2).sum(dim=1) / var).mean()
    return torch.nn.MSELoss(), 2.0 * var / C, gaussian


def curvlinops_step(spec, theta, X, y, labels, lr, delta):
    """θ − η K⁻¹ g with curvlinops' K-FAC at θ (refopt's labels injected), and its factors (A, G) per layer."""
    model = torch_mlp(spec, theta)
    params = [p for p in model.parameters()]
    loss_func, c, ref_loss = loss_and_scale(spec)
    lab = torch.from_numpy(np.asarray(labels))
    if spec["loss"] == "gaussian":
        def draw_label(output):   # curvlinops: z + √½ ε; refopt: z + σ ε
            z = output.detach()
            return z + math.sqrt(0.5) * (lab - z) / math.sqrt(spec.get("variance", 1.0))
    else:
        def draw_label(output):
            return lab.to(torch.int64) if spec["loss"] == "softmax_cross_entropy" else lab.to(output.dtype)
    K = KFACLinearOperator(model, loss_func, params, [(X, y)], fisher_type="mc", mc_samples=1,
                           separate_weight_and_bias=True, check_deterministic=False)
    K.draw_label = draw_label
    K.compute_kronecker_factors()
    for name in K._gradient_covariances:
        K._gradient_covariances[name] = K._gradient_covariances[name] / c
    inv = KFACInverseLinearOperator(K, damping=delta)
    model.zero_grad()
    ref_loss(model(X), y).backward()
    step = inv @ [p.grad.detach() for p in params]
    new = [(p.detach() - lr * s).numpy() for p, s in zip(params, step)]
    out = [{"W": new[2 * l].T.copy(), "b": new[2 * l + 1].copy()} for l in range(len(new) // 2)]
    names = sorted(K._input_covariances)
    factors = [(K._input_covariances[n].numpy(), K._gradient_covariances[n].numpy()) for n in names]
    return out, factors


def rel(ours, theirs) -> float:
    ours = np.asarray(ours)
    return float(np.max(np.abs(ours - theirs)) / max(np.max(np.abs(ours)), 1e-300))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--rtol", type=float, default=1e-10)
    args = ap.parse_args(argv)
    print(f"curvlinops {version('curvlinops-for-pytorch')}, torch {torch.__version__}, {args.steps} steps")
    failed = False
    for setting, (lr, delta) in SETTINGS.items():
        for problem, spec in TRACE_PROBLEMS.items():
            trace = make_trace("kfac", {"lr": lr, "damping": delta ** 2}, problem, args.steps, 0, PROFILE)
            X = torch.from_numpy(np.asarray(trace.X))
            y = torch.from_numpy(np.asarray(trace.y))
            worst = 0.0
            for t in range(args.steps):
                labels = np.asarray(trace.draws[t])[0]
                theirs, _ = curvlinops_step(spec, trace.params[t], X, y, labels, lr, delta)
                for o, th in zip(trace.params[t + 1], theirs):
                    worst = max(worst, rel(o["W"], th["W"]), rel(o["b"], th["b"]))
            bad = not worst <= args.rtol
            failed |= bad
            print(f"{setting:18s} {problem:16s} max rel diff of θ_(t+1) {worst:.2e}{'  FAIL' if bad else ''}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
