#!/usr/bin/env python
"""Check the google-research/scalable_shampoo profile against the real distributed_shampoo (JAX, float64).

The real code is google-research's ``scalable_shampoo/optax/distributed_shampoo.py`` (its author's PyPI
package ``optax-shampoo`` ships the same module as ``optax_shampoo.distributed_shampoo``). The script imports
it from ``--source DIR`` (a folder holding ``scalable_shampoo/optax/`` or ``optax_shampoo/``) or, without
``--source``, as an installed ``optax_shampoo``; nothing of it is part of refopt. The module imports
``flax.struct`` only for its dataclasses: without flax installed the script puts a minimal stand-in for
``flax.struct.dataclass`` / ``field`` (a frozen dataclass registered as a JAX pytree) in front of it.

For every trace problem (tiny_mlp, tiny_regression, tiny_logistic) and each setting below, the transformation
``distributed_shampoo(...)`` is driven by ``refopt.verify.check_optax`` (refopt's gradients at the real
code's own iterates, ``jax_enable_x64``) against refopt's Shampoo with the profile's settings and the same
overrides, and the largest relative parameter difference over the run is printed. The mapping: lr ↔
learning_rate, momentum ↔ beta1, beta2 ↔ beta2, eps ↔ matrix_epsilon (and initial_accumulator = eps: the
statistics start at matrix_epsilon·I), graft_eps ↔ diagonal_epsilon, block_size, merge_dims ↔
merge_small_dims_block_size, start_step ↔ start_preconditioning_step + 1 (its step counter starts at 0),
precondition_interval ↔ preconditioning_compute_steps, weight_decay ↔ weight_decay with
weight_decay_mode="graft" (decoupled_weight_decay=False: λθ added after grafting, before the momentum).

The module was written for older JAX: under jax 0.10 two lines fail to trace with jax_enable_x64 (a
bool initial carry of the coupled-Newton while_loop whose body returns a float, and float32 initial
statistics / preconditioners that a cond then meets as float64). The last run used a local copy with
those two fixes only (carry ``jnp.asarray(1.0, new_error.dtype)``: the loop's first test 1 < 1.2 is
unchanged; ``dtype=param.dtype`` in init_fn); nothing else of it was changed.

Last run (optax-shampoo 0.0.6 = google-research scalable_shampoo/optax/distributed_shampoo.py of 2022, jax
0.10.2, optax 0.2.8, 30 steps, lr 0.05, β₂ 0.95, ε 1e-3, block_size 3, merge_dims 6, λ 1e-2, and the
profile's blocks/ε): max relative difference 4.4e-9..1.1e-7 on all three problems for β₁ = 0, β₁ = 0.5
(Nesterov or not, interval 1 or 3) and β₁ = 0.9 with start_step 1; 1.7e-2..3.4e-1 with β₁ = 0.9 and
start_step 2 or 6 (the two momentum buffers: a documented gap).

Exit status 1 if a setting marked exact exceeds ``--rtol``; the others (the profile's documented gap: two
momentum buffers, graft and Shampoo, where refopt keeps one) are printed only. Without jax/optax/chex or
the module the script prints a message and exits 0.

    python scripts/verify_with_scalable_shampoo.py [--source DIR] [--steps 30] [--rtol 1e-6]
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib
import os
import sys
import types

try:
    import chex  # noqa: F401
    import jax
    import optax  # noqa: F401
except ImportError:  # pragma: no cover - depends on the machine
    print("verify_with_scalable_shampoo: jax/optax/chex is not installed; skipping")
    sys.exit(0)

jax.config.update("jax_enable_x64", True)
if not hasattr(jax, "tree_map"):  # the module predates jax.tree_map's removal
    jax.tree_map = jax.tree_util.tree_map
for name in ("tree_flatten", "tree_unflatten", "tree_leaves"):
    if not hasattr(jax, name):
        setattr(jax, name, getattr(jax.tree_util, name))

from refopt.verify.adapters import check_optax  # noqa: E402

PROFILE = "google-research/scalable_shampoo"


def _flax_struct_stand_in() -> None:
    """Register a minimal ``flax.struct`` (dataclass + field) when flax is not installed."""
    try:
        import flax.struct  # noqa: F401,PLC0415
        return
    except ImportError:
        pass

    def field(pytree_node: bool = True, **kwargs):
        return dataclasses.field(metadata={"pytree_node": pytree_node}, **kwargs)

    def dataclass(cls):
        cls = dataclasses.dataclass(frozen=True)(cls)
        fields = dataclasses.fields(cls)
        jax.tree_util.register_dataclass(
            cls, data_fields=[f.name for f in fields if f.metadata.get("pytree_node", True)],
            meta_fields=[f.name for f in fields if not f.metadata.get("pytree_node", True)])
        cls.replace = lambda self, **changes: dataclasses.replace(self, **changes)
        return cls

    flax = types.ModuleType("flax")
    struct = types.ModuleType("flax.struct")
    struct.dataclass, struct.field = dataclass, field
    flax.struct = struct
    sys.modules["flax"], sys.modules["flax.struct"] = flax, struct


def load(source: str | None):
    """The real distributed_shampoo module, or None."""
    _flax_struct_stand_in()
    if source:
        sys.path.insert(0, os.path.abspath(source))
    for module in ("scalable_shampoo.optax.distributed_shampoo", "optax_shampoo.distributed_shampoo"):
        try:
            return importlib.import_module(module)
        except ImportError:
            continue
    return None


# name -> (refopt overrides of the profile, exact?) ; every setting also fixes lr, β₂, ε, blocks, decay
# name -> (refopt overrides of the profile, exact?); COMMON (lr, β₂, ε, small blocks, L2 decay) is applied first
COMMON = {"lr": 0.05, "beta2": 0.95, "eps": 1e-3, "initial_accumulator": 1e-3, "block_size": 3, "merge_dims": 6,
          "weight_decay": 1e-2}
SETTINGS = {
    "beta1=0, start_step=6": ({"momentum": 0.0, "nesterov": False, "start_step": 6}, True),
    "beta1=0.5 nesterov, start_step=1": ({"momentum": 0.5, "start_step": 1}, True),
    "beta1=0.5, interval 3, start_step=1": ({"momentum": 0.5, "nesterov": False, "start_step": 1,
                                             "precondition_interval": 3}, True),
    "profile blocks/eps, beta1=0.9, start 1": ({"momentum": 0.9, "start_step": 1, "beta2": 0.999, "eps": 1e-6,
                                                "initial_accumulator": 1e-6, "block_size": 128,
                                                "merge_dims": 4096}, True),
    "beta1=0.9 nesterov, start_step=2 (gap)": ({"momentum": 0.9, "start_step": 2}, False),
    "beta1=0.9 nesterov, start_step=6 (gap)": ({"momentum": 0.9, "start_step": 6}, False),
}


def transformation(ds, hp: dict):
    return ds.distributed_shampoo(
        learning_rate=hp["lr"], block_size=hp["block_size"], beta1=hp["momentum"], beta2=hp["beta2"],
        diagonal_epsilon=hp.get("graft_eps", 1e-10), matrix_epsilon=hp["eps"], weight_decay=hp["weight_decay"],
        start_preconditioning_step=hp["start_step"] - 1,
        preconditioning_compute_steps=hp.get("precondition_interval", 1), graft_type=ds.GraftingType.SGD,
        nesterov=hp["nesterov"], merge_small_dims_block_size=hp["merge_dims"], generate_training_metrics=False)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", default=None)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--rtol", type=float, default=1e-6)
    args = ap.parse_args(argv)
    ds = load(args.source)
    if ds is None:
        print("verify_with_scalable_shampoo: distributed_shampoo is not importable (--source DIR or "
              "pip install optax-shampoo); skipping")
        return 0
    from refopt.verify.profiles import get_profile  # noqa: PLC0415
    base = dict(get_profile(PROFILE).hyperparameters)
    bad = 0
    for name, (overrides, exact) in SETTINGS.items():
        over = {**COMMON, **overrides}
        hp = {**base, **over}
        for problem in ("tiny_mlp", "tiny_regression", "tiny_logistic"):
            report = check_optax(transformation(ds, hp), PROFILE, problem, args.steps, overrides=over,
                                 search=False)
            d = report.max_relative_difference
            verdict = "ok" if d <= args.rtol else ("FAIL" if exact else "gap")
            bad += verdict == "FAIL"
            print(f"{name:40s} {problem:16s} steps={args.steps} max rel diff {d:.2e}  {verdict}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
