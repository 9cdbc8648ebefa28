#!/usr/bin/env python
"""Check refopt's amirgholami/adahessian profiles against the authors' optimizer code, step by step.

The authors' code is not part of refopt: point ``--source DIR`` (or $ADAHESSIAN_SRC) at a directory with
``optim_adahessian.py`` (image_classification/ of github.com/amirgholami/adahessian) and
``adahessian_instruction.py`` (its instruction/adahessian.py). The "+image_classification" profile runs
that file's ``Adahessian`` as it is; the "amirgholami/adahessian" profile runs the same class with
``get_trace`` replaced by instruction/adahessian.py's (whose own step() refers to undefined names), with
spatial_average_block_size = (-1, -1, -1, -1). Parameters are given to torch in torch's layout (W as
(out, in), as nn.Linear; conv kernels OIHW, as nn.Conv2d and refopt), so "the entire row" is an output unit's
inputs, and on the tiny_cnn problem the authors' averaging of 4-D kernels over their kernel window is checked. ``p.grad`` holds refopt's
gradient as a differentiable tensor whose backward is refopt's Hessian-vector product, and
``torch.randint_like`` returns refopt's probes of the step, so both sides see the same ∇L, Hz and z.
Each profile runs with its defaults and with exaggerated settings. Prints "matches" with the largest
relative difference per profile, setting and problem; exit status 1 on a divergence. Without torch or
the source it prints a message and exits 0.

    python scripts/verify_with_adahessian.py [--source DIR] [--steps 40]
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import types

try:
    import torch
except ImportError:  # pragma: no cover - depends on the machine
    print("verify_with_adahessian: torch is not installed; skipping")
    sys.exit(0)

import numpy as np

from refopt import tree as T
from refopt.verify import TRACE_PROBLEMS
from refopt.verify.adapters import Harness, _device_tree, _host_tree

torch.set_default_dtype(torch.float64)

EXAGGERATED = {"lr": 0.05, "eps": 1e-2, "weight_decay": 0.05, "hessian_power": 0.5, "beta1": 0.8, "beta2": 0.9}
PROFILES = ("amirgholami/adahessian", "amirgholami/adahessian+image_classification")


def load(path: str, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run(modules, reference, problem, steps, overrides):
    h = Harness(reference, problem, steps, 0, overrides)
    hp = h.hyperparameters
    oracle = h._oracle  # refopt's oracle of the trace problem (its Hessian-vector products)
    layers = h.params0

    def to_torch(tree):   # refopt tree -> [W, b, ...] in torch's layout: dense W as (out, in), conv OIHW as it is
        return [torch.tensor(np.ascontiguousarray(leaf.T) if k == "W" and leaf.ndim == 2 else np.ascontiguousarray(leaf))
                for layer in tree for k, leaf in sorted(layer.items(), key=lambda kv: kv[0] != "W")]

    def to_tree(tensors):
        arrays = [t.detach().numpy().copy() for t in tensors]
        return [{"W": arrays[2 * i].T.copy() if arrays[2 * i].ndim == 2 else arrays[2 * i], "b": arrays[2 * i + 1]}
                for i in range(len(layers))]

    class Gradient(torch.autograd.Function):   # ∇L(θ) with backward v ↦ H(θ)v, both refopt's
        @staticmethod
        def forward(ctx, *ps):
            ctx.theta = to_tree(ps)
            return tuple(to_torch(h.value_and_grad(ctx.theta)[1]))

        @staticmethod
        def backward(ctx, *vs):
            hv = oracle.hvp(_device_tree(ctx.theta), _device_tree(to_tree(vs)))
            return tuple(to_torch(_host_tree(hv)))

    params = [p.requires_grad_(True) for p in to_torch(layers)]
    cls = modules["image_classification"].Adahessian
    opt = cls(params, lr=hp["lr"], betas=(hp["beta1"], hp["beta2"]), eps=hp["eps"],
              weight_decay=hp["weight_decay"], hessian_power=hp["hessian_power"])
    if reference == "amirgholami/adahessian":
        opt.spatial_average_block_size = (-1, -1, -1, -1)
        opt.get_trace = types.MethodType(modules["instruction"].Adahessian.get_trace, opt)
    probes = []
    original = torch.randint_like
    torch.randint_like = lambda p, high=2, **kw: (probes.pop(0) + 1.0) / 2.0   # 2r − 1 = refopt's z
    try:
        sequence = [to_tree(params)]
        for t in range(1, steps + 1):
            (z,) = h.draws(t)
            probes[:] = to_torch(z)
            for p, g in zip(params, Gradient.apply(*params)):
                p.grad = g
            opt.step()
            assert not probes, "the optimizer did not draw one probe per parameter"
            sequence.append(to_tree(params))
    finally:
        torch.randint_like = original
    return h.report(sequence, rtol=1e-10, atol=1e-12, producer=f"torch {torch.__version__} Adahessian")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--source", default=os.environ.get("ADAHESSIAN_SRC"))
    ap.add_argument("--steps", type=int, default=40)
    args = ap.parse_args()
    files = {"image_classification": "optim_adahessian.py", "instruction": "adahessian_instruction.py"}
    if not args.source or not all(os.path.exists(os.path.join(args.source, f)) for f in files.values()):
        print("verify_with_adahessian: no amirgholami/adahessian source (--source DIR); skipping")
        return 0
    modules = {k: load(os.path.join(args.source, f), f"adahessian_{k}") for k, f in files.items()}
    failed = 0
    for reference in PROFILES:
        for overrides in ({}, EXAGGERATED):
            for problem in sorted(TRACE_PROBLEMS):
                report = run(modules, reference, problem, args.steps, overrides)
                failed += report.divergence is not None
                print(f"{overrides or 'defaults'}: {report}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
