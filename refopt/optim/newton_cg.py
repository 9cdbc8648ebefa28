"""Newton-CG / Hessian-free and trust-region Newton-CG (Steihaug): Newton steps from curvature products only.

Line-search Newton-CG (Nocedal & Wright, *Numerical Optimization*, 2nd ed., Algorithm 7.1; Martens 2010,
"Deep learning via Hessian-free optimization", Algorithm 1):

    solve (M + λI) p = −g approximately by conjugate gradient, stopping when
        ‖r_j‖ ≤ η_k ‖g‖                                  (forcing term, N&W eq. 7.3)
        or on negative curvature dⱼᵀ(M + λI)dⱼ ≤ 0       (return p = −g at j = 0, else the current iterate)
        or (optional) on Martens' relative progress of the quadratic model φ(p) = gᵀp + ½ pᵀ(M + λI)p:
        i > k, φ_i < 0 and (φ_i − φ_{i−k}) / φ_i < k ε,  k = max(10, ⌈0.1 i⌉)     (Martens 2010, §4.4)
    θ⁺ = θ + α p, α from a line search.

Trust-region Newton-CG (N&W Algorithm 7.2, CG–Steihaug, inside the trust-region framework of Algorithm 4.1):
CG on M p = −g inside ‖p‖ ≤ Δ, leaving at the boundary on negative curvature or when an iterate would
cross it; ρ = (L(θ) − L(θ + p)) / (m(0) − m(p)); ρ < ¼ → Δ ← ¼Δ; ρ > ¾ and ‖p‖ = Δ → Δ ← min(2Δ, Δ_max);
the step is taken when ρ > η (one trial per ``update``: a rejected trial leaves θ unchanged).

No dense matrix is formed anywhere: M is used only through products.

Switches (defaults first):

* ``curvature``: "hessian" (Hessian-vector products, Pearlmutter 1994: one recorded gradient, one reverse
  sweep per product) or "ggn" (Gauss-Newton-vector products Jᵀ H_ℓ J v, Schraudolph 2002 — Martens'
  choice; network oracles only: ``requires`` then has "ggn" instead of "hvp"). The Hessian products come
  from the oracle's ``hessian_operator`` (a function oracle's analytic hvp, a network's recorded gradient).
* ``forcing``: "sqrt" (η_k = min(½, √‖g‖), superlinear; N&W Alg. 7.1), "linear" (η_k = min(½, ‖g‖),
  quadratic), or a constant η ∈ [0, 1).
* ``damping`` λ ≥ 0 (default 0) and ``adapt_damping`` (default False): the Levenberg–Marquardt rule of
  Martens (2010, §4.1): ρ = (L(θ + αp) − L(θ)) / q(αp) with the undamped model q(s) = gᵀs + ½ sᵀMs;
  ρ < ¼ → λ ← (3/2)λ, ρ > ¾ → λ ← (2/3)λ (``damping_increase``, ``damping_decrease``; λ is first raised to
  ``min_damping`` when it is 0).
* ``warm_start`` ζ ∈ [0, 1) (default 0: CG starts from 0, N&W): CG starts from ζ·p_{k−1}, Martens' 0.95.
* ``cg_maxiter`` (default n), ``progress_tol`` ε (default None: off; Martens 5·10⁻⁴).
* ``line_search``: "armijo" (default), "strong_wolfe" or "none".

``NewtonCG.hessian_free()`` returns Martens' configuration: GGN, λ₀ = 1 adapted, ζ = 0.95, ε = 5·10⁻⁴,
at most 250 CG iterations, Armijo backtracking with c₁ = 10⁻². (Martens' backtracking over saved CG
iterates and his preconditioner are not implemented.)
"""
from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple, Optional

from .. import tree as T
from ..backend import xp
from ..serialize import register_state
from .base import MAX_ITERATIONS, Switch, as_real, check_int, check_nonnegative, check_positive, refuse, show_value
from .descent import DescentMethod, Evaluation
from .globalisation import Outcome, check_damping, evaluate_trial, ratio_damping, reduction_ratio, trust_radius

__all__ = ["NewtonCG", "NewtonCGState", "TrustRegionNewtonCG", "TrustRegionState", "truncated_cg", "steihaug_cg",
           "TruncatedCGResult", "SteihaugResult", "CURVATURES", "curvature_product"]

CURVATURES = ("hessian", "ggn")


# --- the inner solvers ------------------------------------------------------------------------
class TruncatedCGResult(NamedTuple):
    """What ``truncated_cg`` returns: the step, iterations, stopping status, pᵀAp and residual norm."""

    p: Any                  # the step (flat vector)
    iterations: int         # products with A used by the iterations (a warm start adds one more)
    status: str             # "converged", "negative_curvature", "progress", "max_iterations"
    pAp: float              # pᵀ A p (A = M + λI), from the residual: no extra product
    residual_norm: float


def truncated_cg(A: Callable, g, tol: float, maxiter: int, x0=None, progress_tol: Optional[float] = None):
    """Approximately solve A p = −g by CG (N&W Algorithm 7.1's inner loop; see the module docs)."""
    z = xp.zeros_like(g) if x0 is None else x0
    r = g if x0 is None else A(x0) + g          # r = A z + g, the model's gradient at z
    d = -r
    rr = float(xp.vdot(r, r))
    phis: list = []
    status = "max_iterations"
    j = 0
    while True:
        if rr ** 0.5 <= tol:
            status = "converged"
            break
        if j >= maxiter:
            break
        Ad = A(d)
        dAd = float(xp.vdot(d, Ad))
        if not dAd > 0 or not math.isfinite(dAd):
            status = "negative_curvature"
            if j == 0 and x0 is None:
                z, r = -g, None   # N&W: steepest descent when the very first direction has curvature ≤ 0
            break
        alpha = rr / dAd
        z = z + alpha * d
        r = r + alpha * Ad
        rr_new = float(xp.vdot(r, r))
        j += 1
        if progress_tol is not None:
            phis.append(0.5 * float(xp.vdot(z, r + g)))   # φ(z) = gᵀz + ½ zᵀAz = ½ zᵀ(r + g)
            k = max(10, math.ceil(0.1 * j))
            if j > k and phis[-1] < 0 and (phis[-1] - phis[-1 - k]) / phis[-1] < k * progress_tol:
                rr = rr_new
                status = "progress"
                break
        d = -r + (rr_new / rr) * d
        rr = rr_new
    if r is None:
        pAp = float(xp.vdot(z, A(z)))
        return TruncatedCGResult(z, j + 1, status, pAp, math.nan)
    pAp = float(xp.vdot(z, r - g))                      # zᵀAz = zᵀ(r − g)
    return TruncatedCGResult(z, j, status, pAp, rr ** 0.5)


class SteihaugResult(NamedTuple):
    """What ``steihaug_cg`` returns: the step, iterations, stopping status, model decrease, whether ‖p‖ = Δ."""

    p: Any
    iterations: int
    status: str        # "converged", "negative_curvature", "boundary", "max_iterations"
    model_decrease: float  # m(0) − m(p) = −(gᵀp + ½ pᵀMp)
    on_boundary: bool


def _to_boundary(z, d, radius):
    """The two τ with ‖z + τ d‖ = Δ (τ₋ ≤ 0 ≤ τ₊ since ‖z‖ ≤ Δ)."""
    dd, zd, zz = float(xp.vdot(d, d)), float(xp.vdot(z, d)), float(xp.vdot(z, z))
    disc = math.sqrt(max(zd * zd - dd * (zz - radius * radius), 0.0))
    return (-zd - disc) / dd, (-zd + disc) / dd


def steihaug_cg(B: Callable, g, radius: float, tol: float, maxiter: int) -> SteihaugResult:
    """CG–Steihaug (N&W Algorithm 7.2): approximately minimise m(p) = gᵀp + ½ pᵀBp over ‖p‖ ≤ Δ."""
    z = xp.zeros_like(g)
    r = g
    d = -r
    rr = float(xp.vdot(r, r))
    m = 0.0  # m(z) − m(0)
    if rr ** 0.5 <= tol:
        return SteihaugResult(z, 0, "converged", 0.0, False)
    for j in range(maxiter):
        Bd = B(d)
        dBd = float(xp.vdot(d, Bd))
        rd = float(xp.vdot(r, d))
        if not dBd > 0 or not math.isfinite(dBd):
            # follow d to the boundary, at whichever end the model is lower
            candidates = [(m + t * rd + 0.5 * t * t * dBd, t) for t in _to_boundary(z, d, radius)]
            mt, t = min(candidates)
            return SteihaugResult(z + t * d, j + 1, "negative_curvature", -mt, True)
        alpha = rr / dBd
        z_new = z + alpha * d
        if float(xp.linalg.norm(z_new)) >= radius:
            t = _to_boundary(z, d, radius)[1]
            return SteihaugResult(z + t * d, j + 1, "boundary", -(m + t * rd + 0.5 * t * t * dBd), True)
        m += alpha * rd + 0.5 * alpha * alpha * dBd
        z = z_new
        r = r + alpha * Bd
        rr_new = float(xp.vdot(r, r))
        if rr_new ** 0.5 <= tol:
            return SteihaugResult(z, j + 1, "converged", -m, False)
        d = -r + (rr_new / rr) * d
        rr = rr_new
    return SteihaugResult(z, maxiter, "max_iterations", -m, False)


# --- shared pieces ----------------------------------------------------------------------------
def _forcing(rule, gnorm: float) -> float:
    if rule == "sqrt":
        return min(0.5, math.sqrt(gnorm))
    if rule == "linear":
        return min(0.5, gnorm)
    return float(rule)


def _check_forcing(name: str, forcing):
    """The forcing rule: "sqrt", "linear" or a constant η ∈ [0, 1)."""
    if isinstance(forcing, str) and forcing in ("sqrt", "linear"):
        return str(forcing)
    x = as_real(forcing)
    if x is not None and 0 <= x < 1:
        return x
    raise ValueError(f"{name} must be 'sqrt', 'linear' or a number in [0, 1), got {show_value(forcing)}")


def curvature_product(oracle, params, kind: str):
    """v ↦ M v on flat vectors at ``params``: M = ∇²L ("hessian") or the GGN ("ggn")."""
    if kind == "ggn":
        if "ggn" not in oracle.provides:
            raise ValueError(f"curvature='ggn' needs a network Oracle (model + likelihood loss); "
                             f"{type(oracle).__name__} has no Gauss-Newton matrix. Use curvature='hessian'.")
        op = oracle.curvature_operator(params, "ggn")
    else:
        op = oracle.hessian_operator(params)

    def product(v):
        return T.ravel(op(T.unravel(v, params)))
    return product


# The switches both methods share.
CURVATURE = Switch("curvature", CURVATURES, "hessian", "the matrix M of the CG solve: the Hessian or the GGN",
                   "N&W Ch. 7 (hessian); Schraudolph 2002, Martens 2010 (ggn)")
FORCING = Switch("forcing", ("sqrt", "linear"), "sqrt",
                 "CG stops at ‖r‖ ≤ η_k‖g‖, η_k = min(½, √‖g‖) or min(½, ‖g‖); also a constant η ∈ [0, 1)",
                 "N&W eq. 7.3 / Alg. 7.1 (sqrt); Martens 2010 (constant 0, with progress_tol)",
                 check=_check_forcing)


def _requires(curvature: str) -> frozenset:
    """What the oracle must provide for ``curvature``."""
    return frozenset({"value", "gradient", "ggn" if curvature == "ggn" else "hvp"})


# --- line-search Newton-CG / Hessian-free -------------------------------------------------------
@register_state
class NewtonCGState(NamedTuple):
    """Newton-CG's state: the step count, λ, the last CG solution (for warm starts) and the cached point."""

    step: int
    damping: float           # λ
    previous: Any            # the last CG solution (flat), for warm starts; None at first
    point: Optional[Evaluation]


class NewtonCG(DescentMethod):
    """Truncated-CG Newton with a line search (N&W Alg. 7.1); Hessian-free with ``hessian_free()``."""

    name = "newton_cg"
    conventions = (
        CURVATURE,
        FORCING,
        Switch("adapt_damping", (False, True), False,
               "adapt λ by the reduction ratio ρ of the undamped model: ×3/2 if ρ < ¼, ×2/3 if ρ > ¾",
               "Martens 2010 §4.1 (True, as hessian_free()); N&W Alg. 7.1 (False)"),
        Switch("line_search", ("armijo", "strong_wolfe", "none"), "armijo", "globalisation of the CG step",
               "N&W Alg. 7.1 and Martens 2010 (armijo backtracking)"),
    )
    requires = frozenset({"value", "gradient", "hvp"})   # curvature="ggn": "ggn" instead of "hvp" (__init__)

    def __init__(self, curvature: str = "hessian", damping: float = 0.0, adapt_damping: bool = False,
                 forcing="sqrt", cg_maxiter: Optional[int] = None, progress_tol: Optional[float] = None,
                 warm_start: float = 0.0, line_search: str = "armijo", c1: float = 1e-4, c2: float = 0.9,
                 max_evals: int = 30, damping_increase: float = 1.5, damping_decrease: float = 2.0 / 3.0,
                 min_damping: float = 1e-8, approximate_wolfe: bool = True):
        self.set_switch("curvature", curvature)
        self.requires = _requires(self.curvature)
        self.damping = check_damping(damping)
        self.set_switch("adapt_damping", adapt_damping)
        self.set_switch("forcing", forcing)
        self.cg_maxiter = None if cg_maxiter is None else check_int("cg_maxiter", cg_maxiter, maximum=MAX_ITERATIONS)
        self.progress_tol = None if progress_tol is None else check_positive("progress_tol", progress_tol)
        self.warm_start = check_nonnegative("warm_start", warm_start)
        if self.warm_start >= 1:
            raise ValueError(f"warm_start (the decay ζ) must lie in [0, 1), got {warm_start!r}")
        self.set_line_search(line_search, c1, c2, max_evals, approximate_wolfe)
        self.set_damping_factors(damping_increase, damping_decrease)
        self.min_damping = check_positive("min_damping", min_damping)

    @classmethod
    def hessian_free(cls, damping: float = 1.0, **overrides) -> "NewtonCG":
        """Martens (2010)'s Hessian-free configuration (see the module docs); keywords override it."""
        config = dict(curvature="ggn", damping=damping, adapt_damping=True, forcing=0.0, cg_maxiter=250,
                      progress_tol=5e-4, warm_start=0.95, line_search="armijo", c1=1e-2)
        config.update(overrides)
        return cls(**config)

    def init(self, params) -> NewtonCGState:
        """Step 0, λ = ``damping``, no previous CG solution and no cached point."""
        return NewtonCGState(0, self.damping, None, None)

    def step(self, params, state, oracle, loss, g):
        """One Newton-CG step: truncated CG on (M + λI) p = −g, a line search, then λ's update if ``adapt_damping``."""
        x, gf = T.ravel(params), T.ravel(g)
        M = curvature_product(oracle, params, self.curvature)
        lam = state.damping

        def A(v):
            Mv = M(v)
            return Mv + lam * v if lam else Mv

        gnorm = float(xp.linalg.norm(gf))
        x0 = None
        if self.warm_start and state.previous is not None and state.previous.shape == gf.shape:
            x0 = self.warm_start * state.previous
        maxiter = self.cg_maxiter or gf.size
        cg = truncated_cg(A, gf, _forcing(self.forcing, gnorm) * gnorm, maxiter, x0, self.progress_tol)
        if not bool(xp.all(xp.isfinite(cg.p))):
            return refuse(params, state, loss, "non-finite curvature products: step refused", g)
        p, reset = self.descent_or_reset(gf, cg.p)
        out = self.search(oracle, params, x, loss, gf, p)
        new_lam, rho = lam, math.nan
        if self.adapt_damping:   # Martens' ρ with the undamped model; pᵀMp from CG's pᵀ(M + λI)p when it is CG's p
            pMp = (cg.pAp - lam * float(xp.vdot(p, p))) if not reset else float(xp.vdot(p, M(p)))
            a = out.alpha
            rho = reduction_ratio(loss, out.point, -(a * float(xp.vdot(gf, p)) + 0.5 * a * a * pMp))
            new_lam = ratio_damping(lam, rho, self.damping_increase, self.damping_decrease, self.min_damping)
        previous = cg.p if not reset else None
        return self.finish(oracle, params, NewtonCGState(state.step + 1, new_lam, previous, state.point), loss, g, p,
                           out, reset, cg_iterations=cg.iterations, cg_status=cg.status, damping=lam, rho=rho)


# --- trust-region Newton-CG -----------------------------------------------------------------------
@register_state
class TrustRegionState(NamedTuple):
    """Trust-region Newton-CG's state: the step count, the radius Δ and the cached point."""

    step: int
    radius: float            # Δ
    point: Optional[Evaluation]


class TrustRegionNewtonCG(DescentMethod):
    """Trust-region Newton-CG with CG–Steihaug (N&W Algorithms 4.1 and 7.2; see the module docs)."""

    name = "trust_ncg"
    conventions = (CURVATURE, FORCING)
    requires = frozenset({"value", "gradient", "hvp"})   # curvature="ggn": "ggn" instead of "hvp" (__init__)

    def __init__(self, curvature: str = "hessian", initial_radius: float = 1.0, max_radius: float = 1000.0,
                 eta: float = 0.15, forcing="sqrt", cg_maxiter: Optional[int] = None):
        self.set_switch("curvature", curvature)
        self.requires = _requires(self.curvature)
        self.initial_radius = check_positive("initial_radius", initial_radius)
        self.max_radius = check_positive("max_radius", max_radius)
        if self.initial_radius > self.max_radius:
            raise ValueError(f"initial_radius ({initial_radius!r}) must not exceed max_radius ({max_radius!r})")
        self.eta = check_nonnegative("eta", eta)
        if self.eta >= 0.25:
            raise ValueError(f"eta must lie in [0, 1/4) (N&W Algorithm 4.1), got {eta!r}")
        self.set_switch("forcing", forcing)
        self.cg_maxiter = None if cg_maxiter is None else check_int("cg_maxiter", cg_maxiter, maximum=MAX_ITERATIONS)

    def init(self, params) -> TrustRegionState:
        """Step 0, Δ = ``initial_radius`` and no cached point."""
        return TrustRegionState(0, self.initial_radius, None)

    def step(self, params, state, oracle, loss, g):
        """One trust-region trial: CG–Steihaug step, ratio ρ, new Δ; θ moves only when ρ > η."""
        x, gf = T.ravel(params), T.ravel(g)
        B = curvature_product(oracle, params, self.curvature)
        gnorm = float(xp.linalg.norm(gf))
        radius = state.radius
        sol = steihaug_cg(B, gf, radius, _forcing(self.forcing, gnorm) * gnorm, self.cg_maxiter or 2 * gf.size)
        p = sol.p
        if not bool(xp.all(xp.isfinite(p))):
            return refuse(params, state, loss, "non-finite curvature products: step refused", g)
        point = evaluate_trial(oracle, params, x, p)
        rho = reduction_ratio(loss, point, sol.model_decrease)
        new_radius = trust_radius(radius, rho, sol.on_boundary, self.max_radius)
        new_state = TrustRegionState(state.step + 1, new_radius, state.point)
        details = dict(cg_iterations=sol.iterations, cg_status=sol.status, radius=radius, rho=rho)
        if point is not None and rho > self.eta:
            return self.finish(oracle, params, new_state, loss, g, p, Outcome(1.0, point, 1), **details)
        return self.finish(oracle, params, new_state, loss, g, p, Outcome(0.0, None, 1), **details,
                           message=f"trial step rejected (ρ = {rho:.3g}); radius reduced to {new_radius:.3g}")
