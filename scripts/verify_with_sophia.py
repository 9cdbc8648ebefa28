#!/usr/bin/env python
"""Check refopt's Liuhong99/Sophia profiles against the authors' sophia.py, step by step.

The official code is not part of refopt: point ``--source DIR`` (or $SOPHIA_SRC) at a checkout of
github.com/Liuhong99/Sophia; the script loads ``SophiaG`` from ``sophia.py`` at commit 195a786 and
``SophiaH`` from commit 01af183 (``git show 195a786:sophia.py > DIR/sophia_195a786.py``, likewise
``sophia_01af183.py``; a plain ``DIR/sophia.py`` is used when those are absent). Both sides start from
the trace problem's θ_0 and get refopt's gradients (``check_torch``'s closure) and refopt's draws:
after the step of every iteration t with t % k == 0 (the training loop's ``iter_num % interval ==
interval − 1``) the script writes, at the updated parameters θ_{t+1},
* SophiaG: ĝ = ∇ of the mean loss at refopt's sampled labels of step t into ``p.grad``,
* SophiaH: z ⊙ Hz with refopt's probe z of step t into ``p.grad`` (the repository has no SophiaH loop;
  this is the protocol the profile assumes),
and calls ``update_hessian()``; SophiaG's ``step`` gets ``bs`` = the batch size (refopt's default).
Each profile runs with its defaults and with exaggerated settings (large lr, decay, small k).
Prints per profile, setting and problem "matches" with the largest relative difference; exit status 1
on a divergence. Without torch or the source it prints a message and exits 0.

    python scripts/verify_with_sophia.py [--source DIR] [--steps 40]
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import sys

try:
    import torch
except ImportError:  # pragma: no cover - depends on the machine
    print("verify_with_sophia: torch is not installed; skipping")
    sys.exit(0)

import numpy as np

from refopt import tree as T
from refopt.verify import TRACE_PROBLEMS
from refopt.verify.adapters import Harness

torch.set_default_dtype(torch.float64)

SETTINGS = {
    "Liuhong99/Sophia.SophiaG": [{}, {"lr": 0.02, "gamma": 0.3, "weight_decay": 0.05, "k": 3, "beta1": 0.9,
                                      "beta2": 0.8}],
    "Liuhong99/Sophia.SophiaH": [{}, {"lr": 0.02, "gamma": 0.5, "weight_decay": 0.05, "k": 3, "beta1": 0.8,
                                      "beta2": 0.7}],
}


def load(source: str, commit: str):
    path = os.path.join(source, f"sophia_{commit}.py")
    if not os.path.exists(path):
        path = os.path.join(source, "sophia.py")
    spec = importlib.util.spec_from_file_location(f"sophia_{commit}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run(cls, reference, problem, steps, overrides):
    h = Harness(reference, problem, steps, 0, overrides)
    hp = h.hyperparameters
    tensors = [torch.tensor(leaf, requires_grad=True) for leaf in T.leaves(h.params0)]
    gamma_name = "rho" if cls.__name__ == "SophiaG" else "gamma"
    opt = cls(tensors, lr=hp["lr"], betas=(hp["beta1"], hp["beta2"]), weight_decay=hp["weight_decay"],
              **{gamma_name: hp["gamma"]})

    def current():
        values = iter([p.detach().numpy().copy() for p in tensors])
        return [{k: next(values) for k in sorted(layer)} for layer in h.params0]

    def set_grad(tree):
        for p, leaf in zip(tensors, T.leaves(tree)):
            p.grad = torch.tensor(np.asarray(leaf, dtype=np.float64))

    oracle = h._oracle  # refopt's oracle of the trace problem (for ĝ at sampled labels)
    sequence = [current()]
    for t in range(1, steps + 1):
        set_grad(h.value_and_grad(current())[1])
        if cls.__name__ == "SophiaG":
            opt.step(bs=oracle.batch_size)
        else:
            opt.step()
        if t % hp["k"] == 0:
            theta = current()
            if cls.__name__ == "SophiaG":
                labels = h.draws(t)
                labels = labels[0] if labels.ndim == np.ndim(h.trace.y) + 1 else labels
                from refopt.verify.adapters import _device_tree, _host_tree  # noqa: PLC0415
                set_grad(_host_tree(oracle.grad_at_labels(_device_tree(theta), labels)))
            else:
                set_grad(h.hutchinson(theta, t))
            opt.update_hessian()
        sequence.append(current())
    return h.report(sequence, rtol=1e-10, atol=1e-12, producer=f"torch {torch.__version__} {cls.__name__}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--source", default=os.environ.get("SOPHIA_SRC"))
    ap.add_argument("--steps", type=int, default=40)
    args = ap.parse_args()
    if not args.source or not os.path.isdir(args.source):
        print("verify_with_sophia: no Liuhong99/Sophia source (--source DIR or $SOPHIA_SRC); skipping")
        return 0
    classes = {"Liuhong99/Sophia.SophiaG": load(args.source, "195a786").SophiaG,
               "Liuhong99/Sophia.SophiaH": load(args.source, "01af183").SophiaH}
    failed = 0
    for reference, settings in SETTINGS.items():
        for overrides in settings:
            for problem in sorted(TRACE_PROBLEMS):
                report = run(classes[reference], reference, problem, args.steps, overrides)
                failed += report.divergence is not None
                print(f"{overrides or 'defaults'}: {report}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
