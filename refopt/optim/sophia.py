"""Sophia (Liu, Li, Hall, Liang & Ma 2023, arXiv 2305.14342, Algorithm 3): clipped diagonal Newton.

Steps t = 1, 2, … with g_t = ∇L(θ_t) on the data labels; ĥ an estimate of diag(∇²L) or diag(GGN):

    m_t = β₁ m_{t−1} + (1 − β₁) g_t
    h_t = β₂ h_{t−k} + (1 − β₂) ĥ_t    if t mod k = 1 (estimate at θ_t, before the update); else h_t = h_{t−1}
    θ_t ← θ_t − η λ θ_t                                        (decoupled weight decay)
    θ_{t+1} = θ_t − η clip(m_t / max(γ h_t, ε), 1)              clip(z, 1) = max(min(z, 1), −1)

so no coordinate moves by more than η per step (besides the decay; the official Sophia-H below moves
up to η / (1 − β₁ᵗ)), and where the clip is inactive and h is the exact diagonal the step is the
diagonal Newton step −η m / (γ h).

Estimators (from the core, ``refopt.curvature``):
* ``SophiaG``: Gauss-Newton-Bartlett (the paper's Algorithm 2): labels ŷ_b ∼ p_θ(·|x_b) sampled from
  the model, ĝ = ∇ of the reduced loss at those labels, ĥ = ĝ ⊙ ĝ / scale (= B·ĝ⊙ĝ for mean
  reduction), unbiased for diag(GGN). Needs a network ``Oracle``.
* ``SophiaH``: Hutchinson (the paper's Algorithm 1), ĥ = (1/k_p) Σ_j z_j ⊙ (H z_j). Works on any oracle
  with Hessian-vector products (capability "hvp", so also a ``FunctionOracle``).

``parametrization="official"`` reproduces the authors' code instead:
* SophiaG: ``sophia.py`` of github.com/Liuhong99/Sophia (commit 195a786) with its README's training
  loop: h ← β₂h + (1 − β₂) ĝ⊙ĝ (ĝ of the *mean* loss, no factor B), ratio = min(|m| / (ρ·bs·h + 1e-15), 1),
  θ ← θ(1 − ηλ) − η sign(m)·ratio, no bias correction; the refresh runs after the step of every
  0-based iteration with iter % k == k − 1 (our t % k == 0), at the updated parameters θ_{t+1} on the
  same batch. ``gamma`` plays ρ, ``bs`` defaults to the oracle's batch size B (the official training
  script passes the number of tokens per step); ``eps`` defaults to 1e-15.
* SophiaH: the SophiaH class of the same repository (commit 01af183): h ← β₂h + (1 − β₂) ĥ,
  ratio = min(|m| / (ρ·max(h, 0) + 1e-12), 1), θ ← θ(1 − ηλ) − (η / (1 − β₁ᵗ)) sign(m)·ratio, with
  the same refresh protocol.
With B·(ĝ⊙ĝ) = ĥ the two parametrizations of SophiaG differ only in max(γh, ε) versus ρBh + ε and in
the refresh phase (``test_sophia.py`` checks this).

Switches (the paper first):
* ``parametrization`` "paper" | "official" (above).
* ``refresh`` (which step, before or after the update): "before" (t mod k = 1, estimate at θ_t, used
  by this step's update: Algorithm 3) | "after" (t mod k = 0, estimate at θ_{t+1}, first used by the
  next step: the official loop) | "lagged" (t mod k = 1, estimate at θ_t, first used by step t + 1:
  optax.contrib.sophia, which updates ν after computing the step from the old one, on count % k == 0).
  None picks the parametrization's own ("before" for "paper", "after" for "official").
* ``bias_correction`` (paper mode): False (Algorithm 3) | True (m̂ = m / (1 − β₁ᵗ) inside the clip).
* ``probe_distribution`` (SophiaH): "rademacher" | "gaussian"; ``probes`` / ``samples`` per refresh.
* The momentum m (not the raw gradient) is preconditioned, as in every Sophia implementation; the
  weight decay is always decoupled.

Randomness: the draws of the refresh made during the step that starts at ``state.step = s`` come
from ``numpy.random.default_rng([seed, s])``: SophiaG's labels are
``oracle.sample_labels(θ_refresh, that Generator, samples)`` (shape (samples, B) for class labels; drawn
inside ``Oracle.gnb_estimate`` from the outputs of the estimate's own forward pass, the same draws),
SophiaH's probes are ``draw_probes(params, that Generator, probes, probe_distribution)``. Either can be
injected with ``update(..., draws=...)`` (labels array, or list of probe trees); draws are ignored on
steps that do not refresh (``info["refreshed"]`` says which). ``info["draws"]`` reports the draws a
step used, in the form ``draws=`` accepts (None on steps without a refresh), so a run can be replayed.

Gradient-in steps (``optim/gradients.py``): ``apply_gradients(grads, state, params, hessian_diagonal=ĥ)``
takes ĥ_t at θ_t as given (in the units of the parametrization's h: paper B·ĝ⊙ĝ or Hutchinson's
z ⊙ Hz; official Sophia-G ĝ⊙ĝ of the mean loss) on the steps that refresh (``estimates_needed``) and draws
nothing. refresh="after" (at θ_{t+1}) is refused there, and official Sophia-G needs ``bs``.

``schedule`` (default None: constant; ``optim/schedules.py``) replaces η by η_t, t = the steps taken, in
the step and in the decoupled decay θ ← θ − η_tλθ (official Sophia-H: η_t / (1 − β₁ᵗ)).

Cost: a step is one gradient and an elementwise update (chunk by chunk, ``update_rules.chunks``); a
Sophia-G refresh at θ_t ("before", "lagged") takes the gradient, the label draw and ĥ from one forward
pass of the network and two backward sweeps (``Oracle.gnb_estimate(..., gradient=True)``), a refresh at
θ_{t+1} ("after") the draw and ĥ from one forward pass and one sweep.
"""
from __future__ import annotations

import math
from typing import NamedTuple

from .. import tree as T
from ..backend import xp
from ..serialize import register_state
from .adahessian import PROBE_DISTRIBUTION, check_probes, hutchinson_estimate, oracle_probes, step_generator
from .base import (MAX_DIMENSION, MAX_DRAWS, MAX_SEED, Optimizer, Switch, check_int, check_nonnegative, check_positive,
                   check_unit_interval, refuse, step_info)
from .gradients import given_estimate
from .update_rules import NON_FINITE_GRADIENT, bias_correction, check_nonempty_leaves, chunks, ema, ema_chunk, flat

__all__ = ["SophiaG", "SophiaH", "SophiaState"]

PARAMETRIZATIONS = ("paper", "official")
REFRESHES = ("before", "after", "lagged")

# The switches SophiaG and SophiaH share.
PARAMETRIZATION = Switch("parametrization", PARAMETRIZATIONS, "paper",
                         "Algorithm 3 as written, or the authors' code (ρ·bs in the denominator, no bias correction)",
                         "Liu et al. 2023 Algorithm 3 (paper); github.com/Liuhong99/Sophia (official)")
REFRESH = Switch("refresh", (None,) + REFRESHES, None,
                 "when h is re-estimated: before the step at θ_t (t mod k = 1), after it at θ_{t+1} (t mod k = 0), "
                 "or at θ_t (t mod k = 1) first used at step t + 1; None: derived from parametrization (before for "
                 "paper, after for official)",
                 "Algorithm 3 (before); the official loop (after); optax.contrib.sophia (lagged)")
BIAS_CORRECTION = Switch("bias_correction", (False, True), False, "m̂ = m / (1 − β₁ᵗ) inside the clip (paper mode)",
                         "Algorithm 3 (False)")


@register_state
class SophiaState(NamedTuple):
    """Sophia's state: the step count, the EMAs m and h, and the base seed of the estimator's draws."""

    step: int
    m: object  # EMA of gradients, a tree like params
    h: object  # EMA of the diagonal estimates (refreshed every k steps), a tree like params
    seed: int  # base seed of the estimator's draws (see module docs)


class _Sophia(Optimizer):
    """The update shared by SophiaG and SophiaH; subclasses supply ``_estimate``."""

    gradient_in = ("hessian_diagonal",)   # ĥ_t on the steps that refresh h (optim/gradients.py)

    def __init__(self, lr, beta1, beta2, gamma, eps, weight_decay, k, parametrization, refresh,
                 bias_correction, seed, schedule):
        self.lr = check_positive("lr", lr)
        self.set_schedule(schedule)
        self.beta1 = check_unit_interval("beta1", beta1)
        self.beta2 = check_unit_interval("beta2", beta2)
        self.gamma = check_positive("gamma", gamma)
        self.set_switch("parametrization", parametrization)
        self.eps = check_positive("eps", eps) if eps is not None else None
        self.weight_decay = check_nonnegative("weight_decay", weight_decay)
        self.k = check_int("k", k)
        self.set_switch("refresh", refresh)   # None: the parametrization's own (``_refresh_mode``)
        self.set_switch("bias_correction", bias_correction)
        if self.bias_correction and self.parametrization == "official":
            raise ValueError("bias_correction applies to parametrization='paper'; the official code fixes it")
        self.seed = check_int("seed", seed, minimum=0, maximum=MAX_SEED)

    # --- conventions ----------------------------------------------------------------------------
    def _refresh_mode(self) -> str:
        if self.refresh is not None:
            return self.refresh
        return "before" if self.parametrization == "paper" else "after"

    def _refreshes(self, t: int) -> bool:
        if self._refresh_mode() in ("before", "lagged"):
            return (t - 1) % self.k == 0
        return t % self.k == 0

    def _estimate(self, params, oracle, generator, draws):
        """(ĥ at ``params`` in the h units of the parametrization, the draws it used)."""
        raise NotImplementedError

    def _ratio_into(self, m, h, out, spare, t, oracle, lr) -> float:
        """The step size, with clip(m/denominator, 1) written into ``out`` (``spare``: scratch of the same size),
        for one chunk of a leaf: here the paper's (η_t, clip(m / max(γh, ε), 1)), with m̂ = m / (1 − β₁ᵗ) when
        bias_correction is on; the subclasses handle parametrization="official"."""
        eps = 1e-12 if self.eps is None else self.eps
        xp.multiply(h, self.gamma, out=out)                  # γh
        xp.maximum(out, eps, out=out)
        if self.bias_correction:
            m = xp.divide(m, bias_correction(self.beta1, t), out=spare)
        xp.divide(m, out, out=out)
        xp.clip(out, -1.0, 1.0, out=out)
        return lr

    # --- gradient-in steps ---------------------------------------------------------------------
    def gradient_in_refusal(self):
        """refresh="after" estimates h at θ_{t+1}, which a gradient-in step cannot ask for."""
        if self._refresh_mode() == "after":
            return ("refresh='after' (the official loop's) estimates h at the updated parameters θ_(t+1); "
                    "give ĥ at the given params with refresh='before' or 'lagged'")
        return None

    def estimates_needed(self, state) -> tuple:
        """("hessian_diagonal",) on the steps that refresh h, else ()."""
        return ("hessian_diagonal",) if self._refreshes(state.step + 1) else ()

    # --- interface -----------------------------------------------------------------------------
    def init(self, params) -> SophiaState:
        """Zero m and h, step 0 and the draw seed; refuses a leaf of size zero."""
        check_nonempty_leaves(params)
        return SophiaState(0, T.zeros_like(params), T.zeros_like(params), self.seed)

    def _value_grad_and_estimate(self, params, oracle, state, draws):
        """(L, ∇L, ĥ, draws) at ``params`` from one pass where the oracle offers it (Sophia-G on a network
        oracle: ``Oracle.gnb_estimate``), for the steps that refresh h at θ_t; None otherwise (then the
        gradient and ĥ are asked for apart). ĥ is None when the gradient is not finite."""
        return None

    def _refreshed_h(self, h, params, oracle, state, draws, estimate=None):
        """(β₂h + (1 − β₂)ĥ or None when ĥ is not finite, the draws used); ĥ injected by a gradient-in step
        (module docs), given as ``estimate`` = (ĥ, draws) from ``_value_grad_and_estimate``, or estimated here."""
        hhat, used = given_estimate(oracle, "hessian_diagonal", params), None
        if hhat is None:
            hhat, used = estimate if estimate is not None else self._estimate(
                params, oracle, step_generator(state.seed, state.step), draws)
        if not T.all_finite(hhat):
            return None, used
        return ema(h, hhat, self.beta2), used

    def update(self, params, state, oracle, draws=None):
        """One Sophia step: m, h refreshed every k steps (``refresh``), clipped step; ``draws`` injects the draws
        (reported as ``info["draws"]``)."""
        self.check_draws(draws)
        t = state.step + 1
        refresh, mode = self._refreshes(t), self._refresh_mode()
        fused = self._value_grad_and_estimate(params, oracle, state, draws) if refresh and mode != "after" else None
        if fused is None:
            loss, g = oracle.value_and_grad(params)      # the decay is decoupled, below
        else:
            loss, g, hhat, drawn = fused                 # ĥ at θ_t from the gradient's own forward pass
        h, used = state.h, None
        if refresh and mode == "before":
            if not T.all_finite(g):
                return refuse(params, state, loss, NON_FINITE_GRADIENT)
            h, used = self._refreshed_h(h, params, oracle, state, draws, None if fused is None else (hhat, drawn))
            if h is None:
                return refuse(params, state, loss, "non-finite curvature estimate: step refused", g)
        lr, lam = self.lr_at(state.step), self.weight_decay   # η_t of the schedule
        b1 = self.beta1
        ps, treedef = T.flatten(params)
        new_p, new_m = [], []
        clipped, sq, sq_g = 0, 0.0, 0.0
        for x, gi, mi, hi in zip(ps, T.leaves(g), T.leaves(state.m), T.leaves(h)):
            # Per chunk (update_rules.chunks): m_t = β₁m + (1 − β₁)g, the clipped ratio, θ(1 − ηλ) − η·ratio, each
            # written into fresh outputs or a scratch, in the rounding order they always had.
            m, new = xp.empty(x.shape, dtype=mi.dtype), xp.empty(x.shape, dtype=x.dtype)
            xf, gf, mf, hf, M, N = flat(x), flat(gi), flat(mi), flat(hi), flat(m), flat(new)
            pieces = chunks(xf.size)
            scratch = xp.empty(pieces[0].stop, dtype=x.dtype)
            spare = xp.empty_like(scratch)
            leaf_sq = 0.0
            for sl in pieces:
                k = sl.stop - sl.start
                d, e, gc, mc = scratch[:k], spare[:k], gf[sl], M[sl]
                part = float(xp.vdot(gc, gc))                  # ‖g‖² and the check in one pass (as Adam)
                sq_g += part
                if not math.isfinite(part) and not bool(xp.all(xp.isfinite(gc))):
                    return refuse(params, state, loss, NON_FINITE_GRADIENT)
                ema_chunk(mf[sl], gc, b1, mc, d)               # m_t = β₁m + (1 − β₁)g_t
                step_size = self._ratio_into(mc, hf[sl], d, e, t, oracle, lr)
                xp.abs(d, out=e)
                clipped += int(xp.count_nonzero(e >= 1.0))
                leaf_sq += float(xp.vdot(d, d))
                d *= step_size                                 # η·ratio
                if lam:   # θ(1 − ηλ) − step: the decoupled decay as the paper's shrink θ ← θ − ηλθ
                    xp.multiply(xf[sl], 1.0 - lr * lam, out=N[sl])
                    N[sl] -= d
                else:
                    xp.subtract(xf[sl], d, out=N[sl])
            sq += leaf_sq * step_size ** 2
            new_p.append(new)
            new_m.append(m)
        new, m = T.unflatten(treedef, new_p), T.unflatten(treedef, new_m)
        if refresh and mode in ("after", "lagged"):
            # "after": at θ_{t+1}; "lagged": at θ_t (optax), both first used by step t + 1
            at = new if mode == "after" else params
            h, used = self._refreshed_h(h, at, oracle, state, draws, None if fused is None else (hhat, drawn))
            if h is None:
                return refuse(params, state, loss, "non-finite curvature estimate: step refused", g)
        info = step_info(loss, (), lr=lr, step_norm=sq ** 0.5, refreshed=refresh, grad_norm=math.sqrt(sq_g),
                         clipped_fraction=clipped / max(T.size(params), 1), draws=used)
        return new, SophiaState(t, m, h, state.seed), info


class SophiaG(_Sophia):
    """Sophia with the Gauss-Newton-Bartlett estimator on labels sampled from the model (see module docs)."""

    name = "sophia_g"
    conventions = (PARAMETRIZATION, REFRESH, BIAS_CORRECTION)   # (the search skips invalid combinations)
    requires = frozenset({"value", "gradient", "labels", "gnb"})
    draws = "labels"

    def __init__(self, lr: float = 1e-3, beta1: float = 0.96, beta2: float = 0.99, gamma: float = 0.01,
                 eps: float | None = None, weight_decay: float = 0.0, k: int = 10, parametrization: str = "paper",
                 refresh: str | None = None, bias_correction: bool = False, samples: int = 1,
                 bs: int | None = None, seed: int = 0, schedule=None):
        super().__init__(lr, beta1, beta2, gamma, eps, weight_decay, k, parametrization, refresh,
                         bias_correction, seed, schedule)
        self.samples = check_int("samples", samples, maximum=MAX_DRAWS)
        self.bs = None if bs is None else check_int("bs", bs, maximum=MAX_DIMENSION)

    def _estimate(self, params, oracle, generator, draws, gradient=False):
        if "gnb" not in oracle.provides:
            raise TypeError("SophiaG needs a network Oracle (labels are sampled from the model); "
                            "use SophiaH for a FunctionOracle")
        # labels drawn from the outputs of the estimate's own forward pass (the same draws as sample_labels')
        est = oracle.gnb_estimate(params, generator, labels=draws, k=self.samples, gradient=gradient)
        hhat = est.hhat  # ĝ⊙ĝ / scale
        if hhat is not None and self.parametrization == "official":  # the official h holds ĝ⊙ĝ of the mean loss
            scale = oracle.loss.scale(oracle.batch_size, oracle.model.sizes[-1])
            hhat = T.scale(scale, hhat)
        return (hhat, est.labels) if not gradient else (est.loss, est.grad, hhat, est.labels)

    def _value_grad_and_estimate(self, params, oracle, state, draws):
        if "gnb" not in oracle.provides or given_estimate(oracle, "hessian_diagonal", params) is not None:
            return None
        return self._estimate(params, oracle, step_generator(state.seed, state.step), draws, gradient=True)

    def _ratio_into(self, m, h, out, spare, t, oracle, lr) -> float:
        if self.parametrization == "official":   # clip(m / (ρ·bs·h + ε), 1)
            eps = 1e-15 if self.eps is None else self.eps
            bs = self.bs if self.bs is not None else oracle.batch_size
            xp.multiply(h, self.gamma * bs, out=out)
            out += eps
            xp.divide(m, out, out=out)
            xp.clip(out, -1.0, 1.0, out=out)
            return lr
        return super()._ratio_into(m, h, out, spare, t, oracle, lr)

    def gradient_in_refusal(self):
        """Also: official Sophia-G scales by the batch size, unknown to a gradient-in step unless ``bs`` is given."""
        reason = super().gradient_in_refusal()
        if reason is None and self.parametrization == "official" and self.bs is None:
            reason = "parametrization='official' scales by the batch size: give bs= (no batch is known here)"
        return reason


class SophiaH(_Sophia):
    """Sophia with Hutchinson's diagonal estimator (see module docs)."""

    name = "sophia_h"
    conventions = (PARAMETRIZATION, REFRESH, BIAS_CORRECTION, PROBE_DISTRIBUTION)
    requires = frozenset({"value", "gradient", "hvp", "probes"})
    draws = "probes"

    def __init__(self, lr: float = 1e-3, beta1: float = 0.96, beta2: float = 0.99, gamma: float = 0.01,
                 eps: float | None = None, weight_decay: float = 0.0, k: int = 10, parametrization: str = "paper",
                 refresh: str | None = None, bias_correction: bool = False, probes: int = 1,
                 probe_distribution: str = "rademacher", seed: int = 0, schedule=None):
        super().__init__(lr, beta1, beta2, gamma, eps, weight_decay, k, parametrization, refresh,
                         bias_correction, seed, schedule)
        self.probes = check_int("probes", probes, maximum=MAX_DRAWS)
        self.set_switch("probe_distribution", probe_distribution)

    def _probes(self, params, oracle, generator, draws):
        if draws is None:
            return oracle_probes(oracle, params, generator, self.probes, self.probe_distribution)
        return check_probes(draws, params)

    def _value_grad_and_estimate(self, params, oracle, state, draws):
        """On a refresh at θ_t: the loss, the gradient and the products from one recording
        (``value_and_hvp_operator``, as AdaHessian), instead of a gradient and then Hutchinson's estimate
        recording the gradient again."""
        if "hvp" not in oracle.provides or given_estimate(oracle, "hessian_diagonal", params) is not None:
            return None
        probes = self._probes(params, oracle, step_generator(state.seed, state.step), draws)
        loss, g, hv = oracle.value_and_hvp_operator(params)
        return loss, g, hutchinson_estimate(hv, probes), probes

    def _estimate(self, params, oracle, generator, draws):
        probes = self._probes(params, oracle, generator, draws)
        if "hutchinson" in oracle.provides:  # a network oracle: the core estimator
            return oracle.hutchinson_diag(params, probes=probes), probes
        _, hv = oracle.hvp_operator(params)
        return hutchinson_estimate(hv, probes), probes

    def _ratio_into(self, m, h, out, spare, t, oracle, lr) -> float:
        if self.parametrization == "official":   # η/(1 − β₁ᵗ) and clip(m / (ρ·max(h, 0) + ε), 1)
            eps = 1e-12 if self.eps is None else self.eps
            xp.maximum(h, 0.0, out=out)
            out *= self.gamma
            out += eps
            xp.divide(m, out, out=out)
            xp.clip(out, -1.0, 1.0, out=out)
            return lr / bias_correction(self.beta1, t)
        return super()._ratio_into(m, h, out, spare, t, oracle, lr)
