"""The skeleton every method of the Newton family shares (Newton, Gauss-Newton, Newton-CG, trust-region
Newton-CG, the dense quasi-Newton methods, L-BFGS):

    L, g = evaluate(θ)                       (reusing the previous step's accepted trial point)
    p    = the method's direction            (newton.py, newton_cg.py, quasi_newton.py, lbfgs.py)
    θ⁺   = globalise(θ, p)                   (line search or ratio test: globalisation.py)
    info = one report of the step            (``DescentMethod.finish``)

as scipy.optimize splits ``_minimize_bfgs`` from ``_linesearch`` and ``_trustregion``. ``update`` =
``evaluate`` + ``step``; ``minimize`` calls the two itself so it can stop before stepping. A direction
that is not a descent direction (gᵀp ≥ 0 or not finite) is replaced by −g and ``info["reset"]`` says so.
Trial points with a non-finite loss or gradient are backtracked from; nothing non-finite enters the state.
Dense methods refuse models with more than ``max_size`` parameters (default 8192) with a ValueError
naming the matrix-free alternatives ('newton_cg', 'lbfgs').

The last evaluation lives in the state. Every globalisation evaluates the loss and gradient at the point
it accepts, so the state keeps that point as ``point = Evaluation(params, loss, grad, batch)`` and the
next ``evaluate`` returns its loss and gradient instead of asking the oracle again when

    (1) the params it is given are ``point.params``, entry for entry, and
    (2) the oracle's ``batch_token`` is ``point.batch``.

A cached gradient is only the gradient of the batch that produced it; the token says which (refopt/oracle.py).
A network ``Oracle``'s default token is a digest of its model, loss and data, computed once per oracle:
two oracles on equal data match (a new oracle per step on the same data, or a run resumed from a
checkpoint, reuses the point and counts the same evaluations as one oracle would), different batches
never do (a mini-batch run evaluates every batch afresh). A ``FunctionOracle``'s names its function
objects within the process, or is given by its maker (the registry's problems pass their name, so their
resumed runs reuse the point too). The token is a deterministic string, so identical runs end in equal states.

Secant methods (dense quasi-Newton, L-BFGS) share one step as well (``SecantMethod``): search along their
direction from α₀ = ``lr`` · ``initial_step``, then absorb the pair s = αp, y = ∇L_B(θ⁺) − ∇L_B(θ), both
gradients on the step's batch B (the second is the accepted trial's; Schraudolph, Yu & Günter 2007).
"""
from __future__ import annotations

import math
from typing import Any, NamedTuple, Optional

from .. import tree as T
from ..backend import xp
from ..curvature.dense import check_dense_size
from ..linesearch import LINE_SEARCHES
from ..serialize import register_state
from .base import MAX_ITERATIONS, Optimizer, Switch, check_bool, check_int, check_positive, refuse, step_info
from .globalisation import Outcome, initial_step, search_along

__all__ = ["DescentMethod", "SecantMethod", "Evaluation", "RESET_MESSAGE", "failed_search_message", "LINE_SEARCH"]

_DENSE_ALTERNATIVE = "the matrix-free 'newton_cg' (Hessian-free, products only) or 'lbfgs'"
RESET_MESSAGE = "not a descent direction: reset to steepest descent"

# The globalisation of the secant methods (dense quasi-Newton; L-BFGS adds "minfunc" in its own declaration).
LINE_SEARCH = Switch("line_search", LINE_SEARCHES + ("minpack", "scipy"), "strong_wolfe",
                     "globalisation: strong Wolfe (N&W Alg. 3.5-3.6), Armijo backtracking (Alg. 3.1), the bare step α₀p, "
                     "MINPACK-2 dcsrch (Moré-Thuente), or scipy BFGS's dcsrch then zoom",
                     "N&W Alg. 6.1 (strong_wolfe); N&W Alg. 3.1 (armijo); L-BFGS-B (minpack); scipy fmin_bfgs (scipy)")


@register_state
class Evaluation(NamedTuple):
    """The loss and gradient at ``params`` on the batch whose oracle has the token ``batch``."""

    params: Any
    loss: float
    grad: Any
    batch: str


def _same_params(a, b) -> bool:
    if a is b:
        return True
    la, lb = T.leaves(a), T.leaves(b)
    return len(la) == len(lb) and all(x.shape == y.shape and bool(xp.array_equal(x, y)) for x, y in zip(la, lb))


def failed_search_message(reset: bool, status: str) -> str:
    """info["message"] of a step whose line search found no acceptable point."""
    if status == "precision":
        why = "line search failed (precision): no decrease is measurable at the rounding level of f; no step"
    else:
        why = f"line search failed ({status}): no step"
    return (RESET_MESSAGE + "; " if reset else "") + why


class DescentMethod(Optimizer):
    """Base of the Newton / quasi-Newton family: ``update`` = ``evaluate`` + ``step`` (see the module docs).

    Subclasses implement ``step(params, state, oracle, loss, grad)`` for a point whose loss and gradient
    are known and finite, ending it with ``finish``; their state has a field ``point`` (an ``Evaluation``
    or None).
    """

    dense: bool = False
    max_size: Optional[int] = None
    gradient_in_reason = ("it evaluates the loss and gradient at trial points (a line search or a ratio test) or "
                          "needs curvature products, which gradients at the given params do not give: use an "
                          "oracle (refopt.oracle) or refopt.minimize")

    # --- hyperparameters the family shares --------------------------------------------------------
    def set_line_search(self, line_search: str, c1: float, c2: float, max_evals: int,
                        approximate_wolfe: bool = True) -> None:
        """Validate and store the line-search hyperparameters: ``line_search`` (by the class's Switch; every
        method of the family declares one), 0 < c1 < c2 < 1, ``max_evals``, ``approximate_wolfe``
        (``strong_wolfe``'s Hager–Zhang acceptance at the rounding level of f)."""
        self.set_switch("line_search", line_search)
        self.approximate_wolfe = check_bool("approximate_wolfe", approximate_wolfe)
        self.c1 = check_positive("c1", c1)
        self.c2 = check_positive("c2", c2)
        if not self.c1 < self.c2 < 1:
            raise ValueError(f"need 0 < c1 < c2 < 1, got c1={c1!r}, c2={c2!r}")
        self.max_evals = check_int("max_evals", max_evals, maximum=MAX_ITERATIONS)

    def set_damping_factors(self, damping_increase: float, damping_decrease: float) -> None:
        """Validate and store the Levenberg–Marquardt factors, damping_decrease < 1 < damping_increase."""
        self.damping_increase = check_positive("damping_increase", damping_increase)
        self.damping_decrease = check_positive("damping_decrease", damping_decrease)
        if not self.damping_decrease < 1 < self.damping_increase:
            raise ValueError("need damping_decrease < 1 < damping_increase, got "
                             f"{damping_decrease!r} and {damping_increase!r}")

    def check_size(self, params) -> None:
        """For a dense method, ValueError when the model has more than ``max_size`` parameters."""
        if self.dense:
            check_dense_size(T.size(params), self.max_size, f"{type(self).__name__}: the dense n×n matrix",
                             _DENSE_ALTERNATIVE)

    # --- the skeleton -----------------------------------------------------------------------------
    def evaluate(self, params, state, oracle):
        """(loss, gradient) at ``params``: the state's cached point when it is this point on this oracle's
        batch (the rule of the module docs), otherwise one ``value_and_grad`` call."""
        point = state.point
        if point is not None and point.batch == oracle.batch_token and _same_params(point.params, params):
            return point.loss, point.grad
        return oracle.value_and_grad(params)

    def update(self, params, state, oracle, draws=None):
        """``evaluate`` then ``step``; refuses a non-finite loss or gradient and takes no step at a zero gradient.
        The family draws nothing: ``draws`` must be None."""
        self.check_draws(draws)
        loss, g = self.evaluate(params, state, oracle)
        if not (math.isfinite(loss) and T.all_finite(g)):
            return refuse(params, state, loss, "non-finite loss or gradient at the current point: step refused", g)
        if T.norm(g) == 0.0:
            return self.finish(oracle, params, state, loss, g, None, Outcome(0.0, None, 0), accepted=True,
                               message="zero gradient: a stationary point, no step taken")
        return self.step(params, state, oracle, loss, g)

    def step(self, params, state, oracle, loss, g):
        """The method's step from a point with known, finite loss and gradient g: (params, state, info)."""
        raise NotImplementedError

    @staticmethod
    def descent_or_reset(g, p):
        """(p, reset): p itself when gᵀp < 0 and finite, else the steepest-descent direction −g."""
        d = float(xp.vdot(g, p))
        if math.isfinite(d) and d < 0 and bool(xp.all(xp.isfinite(p))):
            return p, False
        return -g, True

    def search(self, oracle, params, x, loss, g, p, alpha0: float = 1.0) -> Outcome:
        """``globalisation.search_along`` with this method's line-search hyperparameters."""
        return search_along(oracle, params, x, loss, g, p, self.line_search, alpha0, self.c1, self.c2,
                            self.max_evals, self.approximate_wolfe)

    def finish(self, oracle, params, state, loss, g, p, outcome: Outcome, reset: bool = False,
               accepted: Optional[bool] = None, message: Optional[str] = None, **details):
        """The one way a step ends: (params, state, info) after ``outcome``.

        ``state`` is the method's new state but for ``point``: an accepted trial becomes the new params and
        the cached point (on ``oracle``'s batch); otherwise params and point stay. ``info`` holds the
        standard entries (``base.step_info``), step_norm = α‖p‖, alpha, nfev (the globalisation's
        evaluations), new_loss, reset, accepted, the line search's status and whether it accepted by the
        approximate Wolfe conditions (only when there was a search), ``details`` (the method's own
        entries), and a message: ``message`` if given, else the reset or the failed search.
        """
        point = outcome.point
        if accepted is None:
            accepted = point is not None
        info = step_info(loss, g, step_norm=outcome.alpha * float(xp.linalg.norm(p)) if point is not None else 0.0,
                         alpha=outcome.alpha, nfev=outcome.nfev, new_loss=point.loss if point is not None else loss,
                         reset=reset, accepted=accepted)
        search = outcome.search
        if search is not None:
            info.update(line_search=search.status, approximate=search.approximate)
        info.update(details)
        if message is None:
            failed = search is not None and point is None
            message = failed_search_message(reset, search.status) if failed else RESET_MESSAGE if reset else ""
        info["message"] = message
        if point is None:
            return params, state, info
        return point.params, state._replace(point=Evaluation(*point, oracle.batch_token)), info


class SecantMethod(DescentMethod):
    """The line-search secant methods (dense quasi-Newton, L-BFGS): one ``step`` for all of them.

    Subclasses give ``direction(state, g)`` (p from the flat gradient), ``first(state)`` (no pair yet)
    and ``absorb(state, loss, s, y, Bs)`` → (state, details): the state after the accepted step s with
    y = ∇L_B(θ⁺) − ∇L_B(θ) and Bs = −αg (exact for the B = H⁻¹ that gave p = −Hg; None after a reset to
    −g), the step count advanced and ``loss`` kept as the previous loss.
    """

    first_step: str = "unit_length"   # α₀ of the first step (see ``initial_step``)
    lr: float = 1.0                   # multiplies every α₀ (L-BFGS's ``lr``, η_t under its ``schedule``)
    descent_check: str = "reset"      # "reset": a non-descent direction becomes −g; "none": L-BFGS may keep it

    def step(self, params, state, oracle, loss, g):
        """Search along the direction from α₀ = η_t · ``initial_step(…)`` (η_t = ``lr_at(step)``; for a
        ``first_step`` other than "unit_length", the libraries' rule: the run's first step), then absorb the
        pair. A failed search, or η_t = 0 (a schedule's), takes no step and changes only the state's step count."""
        self.check_size(params)
        x, gf = T.ravel(params), T.ravel(g)
        p = self.direction(state, gf)
        reset = False
        if self.descent_check != "none":
            p, reset = self.descent_or_reset(gf, p)
        first = state.step == 0 if self.first_step != "unit_length" else self.first(state)
        lr = self.lr_at(state.step)
        if lr == 0:   # no trial step to search from
            return self.finish(oracle, params, state._replace(step=state.step + 1), loss, g, p, Outcome(0.0, None, 0),
                               reset, accepted=False, message="learning rate 0 at this step (schedule): no step",
                               pair_skipped=True, lr=lr)
        alpha0 = lr * initial_step(self.initial_step, gf, p, loss, state.prev_loss, first, self.first_step)
        out = self.search(oracle, params, x, loss, gf, p, alpha0)
        if out.point is None:
            return self.finish(oracle, params, state._replace(step=state.step + 1), loss, g, p, out, reset,
                               pair_skipped=True, lr=lr)
        s = out.alpha * p
        y = T.ravel(out.point.grad) - gf
        new_state, details = self.absorb(state, loss, s, y, None if reset else -out.alpha * gf)
        return self.finish(oracle, params, new_state, loss, g, p, out, reset, lr=lr, **details)

    def direction(self, state, g):
        """The search direction p from the flat gradient g."""
        raise NotImplementedError

    def first(self, state) -> bool:
        """Whether no pair has been absorbed yet (the first step's α₀ rule applies)."""
        raise NotImplementedError

    def absorb(self, state, loss, s, y, Bs):
        """(new state, info details) after the accepted step s with gradient change y (see the class docs)."""
        raise NotImplementedError
