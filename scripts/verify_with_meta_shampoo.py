#!/usr/bin/env python
"""Check the facebookresearch/distributed_shampoo profile against Meta's real code, 30 steps per case.

Meta's code is not on PyPI: put a checkout of github.com/facebookresearch/optimizers on the path
(``META_SHAMPOO=/path/to/optimizers``; its ``distributed_shampoo`` package is pure PyTorch and runs
single-process on CPU) beside a CPU torch. Each case drives ``DistributedShampoo`` with refopt's gradients
(``refopt.verify.adapters.check_torch``) on the three trace problems and prints the largest relative
difference from the profile (with the case's hyperparameters on both sides). Cases run with float64
factor and inverse-factor dtypes, except the "float32" ones: Meta's defaults, compared with
``factor_dtype="float32"``. Without torch or Meta's package the script says so and exits 0.

    META_SHAMPOO=/tmp/meta python scripts/verify_with_meta_shampoo.py [--steps 30]
"""
from __future__ import annotations

import logging
import os
import sys

sys.path.insert(0, os.environ.get("META_SHAMPOO", "."))
try:
    import torch
    from distributed_shampoo import (AdaGradPreconditionerConfig, DistributedShampoo,
                                     RootInvShampooPreconditionerConfig, WeightDecayType)
except ImportError as exc:  # pragma: no cover - depends on the machine
    print(f"verify_with_meta_shampoo: {exc}; skipping (needs torch and META_SHAMPOO=<optimizers checkout>)")
    sys.exit(0)

from refopt.verify import TRACE_PROBLEMS
from refopt.verify.adapters import check_torch

logging.disable(logging.WARNING)
torch.set_default_dtype(torch.float64)
PROFILE = "facebookresearch/distributed_shampoo"

# name -> (Meta keyword arguments beyond the profile's, the same for refopt, float64 factors?)
CASES = {
    "defaults, epsilon=1e-6": ({"epsilon": 1e-6}, {"eps": 1e-6}, True),
    "betas=(0.5, 0.9), epsilon=1e-4, lr=0.05": (
        {"betas": (0.5, 0.9), "epsilon": 1e-4, "lr": 0.05},
        {"filter_beta": 0.5, "statistics": "ema_debiased", "beta2": 0.9, "eps": 1e-4, "lr": 0.05}, True),
    "precondition_frequency=3, start=5, AdaGrad grafting, decoupled decay": (
        {"precondition_frequency": 3, "start_preconditioning_step": 5, "epsilon": 1e-5, "weight_decay": 0.01,
         "grafting_config": AdaGradPreconditionerConfig(epsilon=1e-3)},
        {"precondition_interval": 3, "start_step": 5, "eps": 1e-5, "weight_decay": 0.01, "grafting": "adagrad",
         "graft_eps": 1e-3}, True),
    "L2 decay, betas=(0.9, 0.99), max_preconditioner_dim=4": (
        {"betas": (0.9, 0.99), "epsilon": 1e-6, "weight_decay": 0.05, "weight_decay_type": WeightDecayType.L2,
         "max_preconditioner_dim": 4},
        {"statistics": "ema_debiased", "beta2": 0.99, "eps": 1e-6, "weight_decay": 0.05,
         "weight_decay_mode": "l2", "merge_dims": 4, "block_size": 4}, True),
    "Meta's default epsilon=1e-12": ({}, {}, True),
    "float32 factors (Meta's default dtypes), epsilon=1e-6": ({"epsilon": 1e-6}, {"eps": 1e-6, "factor_dtype": "float32"},
                                                                False),
    "float32 factors (Meta's default dtypes), epsilon=1e-12": ({}, {"factor_dtype": "float32"}, False),
}


def main(steps: int = 30) -> None:
    for name, (meta_kw, ours, f64) in CASES.items():
        dtype = {"factor_matrix_dtype": torch.float64, "inv_factor_matrix_dtype": torch.float64} if f64 else {}
        kw = dict(lr=1e-2, betas=(0.9, 1.0), epsilon=1e-12, max_preconditioner_dim=1024, precondition_frequency=1,
                  start_preconditioning_step=1, preconditioner_config=RootInvShampooPreconditionerConfig(**dtype))
        kw.update(meta_kw)
        worst = {}
        for problem in TRACE_PROBLEMS:
            rep = check_torch(DistributedShampoo, kw, PROFILE, problem=problem, steps=steps, overrides=ours,
                              search=False)
            worst[problem] = rep.max_relative_difference
        print(f"{name:70s} " + "  ".join(f"{p} {v:.1e}" for p, v in worst.items()))


if __name__ == "__main__":
    main(int(sys.argv[sys.argv.index("--steps") + 1]) if "--steps" in sys.argv else 30)
