"""Optimizers, one file per algorithm family, all with the ``init`` / ``update`` pair of ``base``.

``OPTIMIZERS`` maps each name to ``(module, class)``; modules are imported on first use, so a name is
cheap to list. ``make_optimizer(name, **hyperparameters)`` builds one. ``FAMILIES`` groups the names by
algorithm family, each with the doc that explains it. ``conventions_table()`` is the table of every
optimizer's declared convention switches (``Optimizer.conventions``), as CONTRIBUTING.md shows it and
``refopt list --switches`` prints it; ``conventions_table(family)`` is one family's, as its doc shows it
(``refopt list --switches --family NAME``).
"""
from __future__ import annotations

import importlib
import inspect

from .base import Optimizer

__all__ = ["Optimizer", "OPTIMIZERS", "FAMILIES", "FAMILY_DOCS", "make_optimizer", "optimizer_class",
           "conventions_table"]

OPTIMIZERS: dict[str, tuple[str, str]] = {
    # first order baselines
    "sgd": ("sgd", "SGD"),
    # Newton family and quasi-Newton (issue: Newton, Gauss-Newton, Hessian-free, quasi-Newton)
    "newton": ("newton", "Newton"),
    "gauss_newton": ("newton", "GaussNewton"),
    "newton_cg": ("newton_cg", "NewtonCG"),
    "trust_ncg": ("newton_cg", "TrustRegionNewtonCG"),
    "sr1": ("quasi_newton", "SR1"),
    "sherman_morrison": ("quasi_newton", "ShermanMorrison"),
    "bfgs": ("quasi_newton", "BFGS"),
    "dfp": ("quasi_newton", "DFP"),
    "lbfgs": ("lbfgs", "LBFGS"),
    # Fisher family
    "natural_gradient": ("natural_gradient", "NaturalGradient"),
    "kfac": ("kfac", "KFAC"),
    "kfac_tridiag": ("kfac_tridiag", "KFACTridiag"),
    "ekfac": ("ekfac", "EKFAC"),
    "kbfgs": ("kbfgs", "KBFGS"),
    # adaptive / diagonal preconditioners
    "adagrad": ("adagrad", "Adagrad"),
    "adagrad_full": ("adagrad", "FullMatrixAdagrad"),
    "adam": ("adam", "Adam"),
    "adamw": ("adam", "AdamW"),
    "shampoo": ("shampoo", "Shampoo"),
    "adahessian": ("adahessian", "AdaHessian"),
    "sophia_g": ("sophia", "SophiaG"),
    "sophia_h": ("sophia", "SophiaH"),
}

# The families of the comments above, in OPTIMIZERS order: each family's switch table is generated into
# its doc (FAMILY_DOCS) between "<!-- conventions_table family=NAME: begin -->" / "...: end -->" markers.
FAMILIES: dict[str, tuple[str, ...]] = {
    "gradient": ("sgd",),
    "newton": ("newton", "gauss_newton", "newton_cg", "trust_ncg", "sr1", "sherman_morrison", "bfgs", "dfp",
               "lbfgs"),
    "fisher": ("natural_gradient", "kfac", "kfac_tridiag", "ekfac", "kbfgs"),
    "adaptive": ("adagrad", "adagrad_full", "adam", "adamw", "shampoo", "adahessian", "sophia_g", "sophia_h"),
}
FAMILY_DOCS: dict[str, str] = {"newton": "docs/newton_quasi_newton.md", "fisher": "docs/kfac.md",
                               "adaptive": "docs/adaptive.md"}   # SGD's one switch: CONTRIBUTING.md only


def optimizer_class(name: str):
    """The optimizer class registered under ``name``."""
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; choose from {', '.join(sorted(OPTIMIZERS))}")
    module, cls = OPTIMIZERS[name]
    try:
        return getattr(importlib.import_module(f"{__name__}.{module}"), cls)
    except (ImportError, AttributeError) as exc:  # a registered name whose module is not there
        raise ValueError(f"optimizer {name!r} is registered but not available: {exc}") from exc


def make_optimizer(name: str, **hyperparameters) -> Optimizer:
    """Build the optimizer ``name`` with the given hyperparameters (validated by its constructor).

    An unknown hyperparameter name is a ValueError that lists the valid ones.
    """
    cls = optimizer_class(name)
    valid = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    unknown = sorted(set(hyperparameters) - set(valid))
    if unknown:
        raise ValueError(f"unknown hyperparameter(s) {', '.join(unknown)} for {name!r}; valid: {', '.join(valid)}")
    return cls(**hyperparameters)


def _cell(value) -> str:
    """A value or text as a Markdown table cell (a "|" in it would end the cell)."""
    return str(value).replace("|", "\\|")


def conventions_table(family: str | None = None) -> str:
    """The registered optimizers' convention switches, one Markdown table row each, in ``OPTIMIZERS``
    order: optimizer (several names when they share one declaration), switch, the paper's default, the
    other values the convention search tries, what the switch means and who uses which value (generated
    from the ``Switch`` declarations). ``family`` (a key of ``FAMILIES``) keeps that family's rows only;
    None gives every optimizer's."""
    if family is None:
        names = list(OPTIMIZERS)
    elif family in FAMILIES:
        names = list(FAMILIES[family])
    else:
        raise ValueError(f"unknown family {family!r}; choose from {', '.join(FAMILIES)}")
    groups: list = []   # [names, conventions], consecutive names with the very same declarations merged
    for name in names:
        conventions = optimizer_class(name).conventions
        if groups and groups[-1][1] is conventions:
            groups[-1][0].append(name)
        else:
            groups.append([[name], conventions])
    rows = ["| optimizer | switch | default | other choices | meaning | source |", "|---|---|---|---|---|---|"]
    for group, conventions in groups:
        for sw in conventions:
            others = ", ".join(_cell(c) for c in sw.choices if c != sw.default) or "-"
            rows.append(f"| {', '.join(group)} | {sw.name} | {_cell(sw.default)} | {others} | {_cell(sw.meaning)} "
                        f"| {_cell(sw.source)} |")
    return "\n".join(rows)
