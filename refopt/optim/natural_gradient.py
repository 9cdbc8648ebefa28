"""Natural gradient with the exact (or Monte-Carlo, or empirical) Fisher of the whole network.

    x = (F + λI)⁻¹ g                         dense Cholesky solve, or conjugate gradient on F-products
    δ = −η x,   η = lr                        (``step_rule="fixed"``)
           or  η = sqrt(2ε / (gᵀx))           (``step_rule="kl"``: the normalised natural gradient)
    θ ← θ + δ

F is the Fisher of the reduced loss at the current batch (``refopt.curvature.products``: F = Jᵀ(scale ·
E_y[r rᵀ])J; for refopt's likelihoods the true Fisher equals the Gauss-Newton matrix). The KL step
solves min_δ gᵀδ subject to ½ δᵀ(F + λI)δ = ε, so it moves a fixed distance in the damped Fisher
metric, KL(p_θ ‖ p_{θ+δ}) ≈ ε (source article section 4; Amari 1998). With CG the identity
gᵀx = xᵀ(F + λI)x of the CG iterate from x₀ = 0 keeps ½δᵀ(F + λI)δ = ε up to roundoff.

Switches (defaults first): ``fisher`` "true" | "mc" (``samples`` label sets per step, drawn as
``loss.sample(z, [seed, step], samples)`` or injected with ``update(..., draws=labels)``; reported
as ``info["draws"]``) |
"empirical"; ``solver`` "auto" (dense while the model has at most ``dense_max_size`` = 500 parameters,
else CG; the dense Fisher costs n products) | "dense" | "cg" (``cg_tol`` relative residual,
``cg_maxiter``; the defaults 1e-3 and 20 truncate CG, as Hessian-free practice does: an exact solve
with little damping follows the Fisher's tiny eigenvalues into huge steps); ``step_rule`` "fixed"
(``lr`` = 0.5) | "kl" (``kl_epsilon`` = ε). ``damping`` λ > 0 (default 1e-2) is required: the Fisher
of a network is singular whenever it has more parameters than the batch has outputs. ``schedule``
(default None: constant; ``optim/schedules.py``) replaces η by η_t, t = the steps taken, under "fixed";
"kl" takes none.
"""
from __future__ import annotations

import math
from typing import NamedTuple

from .. import tree as T
from ..curvature import FISHER_KINDS
from ..linalg import cg, damped_solve
from ..serialize import register_state
from .base import (MAX_DENSE_SIZE, MAX_DRAWS, MAX_ITERATIONS, MAX_SEED, Optimizer, Switch, check_choice, check_int,
                   check_positive, refuse, step_info)

__all__ = ["NaturalGradient", "NaturalGradientState", "natural_gradient_direction", "SOLVERS", "STEP_RULES", "FISHERS"]

SOLVERS = ("auto", "dense", "cg")
STEP_RULES = ("fixed", "kl")
FISHERS = FISHER_KINDS  # "true" (the default) | "mc" | "empirical"


@register_state
class NaturalGradientState(NamedTuple):
    """The natural gradient's state: only the step count (it seeds the Monte-Carlo labels)."""

    step: int


def natural_gradient_direction(oracle, params, g, damping: float, fisher: str = "true", solver: str = "dense",
                               labels=None, cg_tol: float = 1e-8, cg_maxiter: int = 100):
    """(x, cg_iterations, status) with x ≈ (F + λI)⁻¹ g for the Fisher ``fisher`` at ``params``."""
    if solver == "dense":
        F = oracle.dense_fisher(params, fisher, labels=labels)
        x = damped_solve(F, T.ravel(g), damping)
        return T.unravel(x, g), 0, "dense"
    product = oracle.curvature_operator(params, fisher, labels=labels)
    res = cg(product, g, damping=damping, tol=cg_tol, maxiter=cg_maxiter)
    return res.x, res.iterations, res.status


class NaturalGradient(Optimizer):
    """θ ← θ − η (F + λI)⁻¹ g (see module docs)."""

    name = "natural_gradient"
    conventions = (
        Switch("fisher", FISHERS, "true", "the Fisher: exact expectation, labels sampled from the model, or data labels",
               "Amari 1998 (true); Monte-Carlo and empirical variants as in the K-FAC literature"),
        Switch("step_rule", STEP_RULES, "fixed", "η = lr, or η = √(2ε / gᵀx) (a step of fixed KL ε)",
               "Amari 1998 (fixed); the source article §4, TRPO-style normalised natural gradient (kl)"),
    )
    requires = frozenset({"value", "gradient", "fisher", "dense_curvature"})   # the defaults; __init__ sets it
    gradient_in_reason = "it needs the network's Fisher (products or the dense matrix): use a network Oracle"

    def __init__(self, lr: float = 0.5, damping: float = 1e-2, fisher: str = "true", solver: str = "auto",
                 step_rule: str = "fixed", kl_epsilon: float = 1e-3, samples: int = 1, seed: int = 0,
                 cg_tol: float = 1e-3, cg_maxiter: int = 20, dense_max_size: int = 500, schedule=None):
        self.lr = check_positive("lr", lr)
        self.damping = check_positive("damping", damping)
        self.set_switch("fisher", fisher)
        self.solver = check_choice("solver", solver, SOLVERS)
        self.set_switch("step_rule", step_rule)
        self.set_schedule(schedule)
        if self.schedule is not None and self.step_rule == "kl":
            raise ValueError("schedule applies to step_rule='fixed' (the 'kl' rule sets η from kl_epsilon)")
        self.kl_epsilon = check_positive("kl_epsilon", kl_epsilon)
        self.samples = check_int("samples", samples, maximum=MAX_DRAWS)
        self.seed = check_int("seed", seed, minimum=0, maximum=MAX_SEED)
        self.cg_tol = check_positive("cg_tol", cg_tol)
        self.cg_maxiter = check_int("cg_maxiter", cg_maxiter, maximum=MAX_ITERATIONS)
        self.dense_max_size = check_int("dense_max_size", dense_max_size, maximum=MAX_DENSE_SIZE)
        # Fisher products (CG), dense Fisher matrices (solver "dense" or "auto"), model-sampled labels ("mc")
        needs = {"value", "gradient", "fisher"}
        needs |= {"dense_curvature"} if self.solver != "cg" else set()
        needs |= {"labels"} if self.fisher == "mc" else set()
        self.requires = frozenset(needs)
        self.draws = "labels" if self.fisher == "mc" else None

    def init(self, params) -> NaturalGradientState:
        """Step 0; the method keeps no curvature between steps."""
        return NaturalGradientState(0)

    def step_seed(self, step: int):
        """The seed of step ``step``'s label draws: ``loss.sample(z, [seed, step], samples)``."""
        return [self.seed, step]

    def update(self, params, state: NaturalGradientState, oracle, draws=None):
        """One step θ ← θ − η (F + λI)⁻¹ g (dense or CG solve, fixed or KL step); ``draws``: the "mc" labels
        (reported as ``info["draws"]``)."""
        self.check_draws(draws)
        loss, g = oracle.value_and_grad(params)
        if not (math.isfinite(loss) and T.all_finite(g)):
            return refuse(params, state, loss, "non-finite loss or gradient: step refused", g)
        labels = None
        if self.fisher == "mc":
            labels = draws if draws is not None else oracle.sample_labels(params, self.step_seed(state.step),
                                                                           self.samples)
        solver = self.solver
        if solver == "auto":
            solver = "dense" if T.size(params) <= self.dense_max_size else "cg"
        x, iterations, status = natural_gradient_direction(oracle, params, g, self.damping, self.fisher, solver,
                                                           labels, self.cg_tol, self.cg_maxiter)
        if not T.all_finite(x):
            return refuse(params, state, loss, "non-finite natural-gradient solve: step refused", g)
        gx = float(T.vdot(g, x))  # gᵀ(F + λI)⁻¹g, the squared natural-gradient norm
        if self.step_rule == "kl":
            eta = math.sqrt(2.0 * self.kl_epsilon / gx) if gx > 0 else 0.0
        else:
            eta = self.lr_at(state.step)   # η_t of the schedule
        new = T.axpy(-eta, x, params)
        info = step_info(loss, g, lr=eta, step_norm=eta * T.norm(x), natural_norm_sq=gx,
                         kl_estimate=0.5 * eta ** 2 * gx, solver=solver, cg_iterations=iterations, cg_status=status,
                         draws=labels)
        if gx <= 0:
            info["message"] = "zero natural gradient: no step"
        return new, NaturalGradientState(state.step + 1), info
