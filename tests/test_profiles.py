"""Every convention profile reproduces a hand-computed two-step case of its library.

Each ``lib_*`` function below is an independent plain-NumPy transcription of a library's update rule,
written from that library's source (named in its docstring and in the profile's ``source``), not from
refopt's code. Two steps on a tiny problem are compared with refopt run under the profile at a tight
tolerance. Where a profile has a documented gap (``Profile.gaps``), a test shows the gap is real and
that it is the only difference (the transcription with the gap removed matches refopt).

Problems: a quartic f(x) = ½xᵀHx − cᵀx + (α/4)Σx⁴ with closed-form gradient and Hessian, on the
tree [{"W": (4, 3), "b": (3,)}] (W first, then b, row-major: refopt's tree order), and a 3-4-3 tanh
network with a softmax cross-entropy (mean) for the K-FAC and Sophia-G cases.
"""
import math

import numpy as np
import pytest

from refopt.nn import MLP, make_loss
from refopt.optim import make_optimizer
from refopt.oracle import FunctionOracle, Oracle
from refopt.verify.profiles import PROFILES, Profile, conventions_table, get_profile

RTOL = 1e-12


# --- problems -------------------------------------------------------------------------------------------
class Quartic:
    """f(x) = ½ xᵀHx − cᵀx + (α/4) Σ x⁴ with H SPD (eigenvalues in [0.5, 1.5] unless ``eigenvalues``
    says otherwise: a negative lower end makes f nonconvex); c is chosen so that
    ∇f(x0) = r with ‖r‖₁ = grad0_l1 (small gradients keep unit steps inside the Wolfe conditions)."""

    def __init__(self, n=15, seed=0, alpha=0.1, grad0_l1=0.8, eigenvalues=(0.5, 1.5)):
        g = np.random.default_rng(seed)
        Q, _ = np.linalg.qr(g.standard_normal((n, n)))
        self.H = (Q * g.uniform(*eigenvalues, n)) @ Q.T
        self.H = 0.5 * (self.H + self.H.T)
        self.alpha = alpha
        self.x0 = 0.5 * g.standard_normal(n)
        r = g.standard_normal(n)
        r *= grad0_l1 / np.abs(r).sum()
        self.c = self.H @ self.x0 + alpha * self.x0 ** 3 - r

    def f(self, x):
        return float(0.5 * x @ self.H @ x - self.c @ x + 0.25 * self.alpha * np.sum(x ** 4))

    def grad(self, x):
        return self.H @ x - self.c + self.alpha * x ** 3

    def hvp(self, x, v):
        return self.H @ v + 3.0 * self.alpha * x ** 2 * v


def to_tree(x):
    return [{"W": np.array(x[:12]).reshape(4, 3), "b": np.array(x[12:15])}]


def to_flat(p):
    return np.concatenate([np.ravel(p[0]["W"]), np.ravel(p[0]["b"])])


def tree_oracle(prob):
    return FunctionOracle(lambda p: prob.f(to_flat(p)), grad=lambda p: to_tree(prob.grad(to_flat(p))),
                          hvp=lambda p, v: to_tree(prob.hvp(to_flat(p), to_flat(v))))


def vector_oracle(prob):
    return FunctionOracle(prob.f, grad=prob.grad)


def rademacher_probes(seed, steps, n=15):
    g = np.random.default_rng(seed)
    return [g.choice([-1.0, 1.0], size=n) for _ in range(steps)]


def run(profile, oracle, params, steps=2, draws=None, **overrides):
    """Flat parameter vectors [θ₀, θ₁, …] of refopt under ``profile`` (+ overrides)."""
    prof = get_profile(profile)
    opt = make_optimizer(prof.optimizer, **{**prof.hyperparameters, **overrides})
    state = opt.init(params)
    out = [params]
    for t in range(steps):
        if draws is None:
            params, state, info = opt.update(params, state, oracle)
        else:
            params, state, info = opt.update(params, state, oracle, draws=draws[t])
        assert not info["skipped"], info["message"]
        out.append(params)
    return out


def flat_all(seq):
    """Stack a sequence of parameter trees [{"W", "b"}] (or flat vectors) as rows."""
    return np.stack([to_flat(p) if isinstance(p, list) else np.asarray(p) for p in seq])


def assert_same(ours, theirs, rtol=RTOL):
    ours, theirs = np.asarray(ours), np.asarray(theirs)
    assert ours.shape == theirs.shape
    scale = max(np.max(np.abs(theirs)), 1e-300)
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=rtol * scale)


def assert_differ(ours, theirs, rtol=1e-6):
    ours, theirs = np.asarray(ours), np.asarray(theirs)
    assert np.max(np.abs(ours - theirs)) > rtol * np.max(np.abs(theirs)), "expected a difference"


# --- first-order transcriptions ------------------------------------------------------------------------
def lib_torch_sgd(prob, x, lr, momentum, steps=2, weight_decay=0.0, dampening=0.0):
    """torch/optim/sgd.py _single_tensor_sgd, nesterov=False: the buffer is a copy of the first d_p."""
    out, buf = [x], None
    for _ in range(steps):
        d = prob.grad(x) + weight_decay * x
        if momentum:
            buf = d.copy() if buf is None else buf * momentum + (1 - dampening) * d  # mul_(μ).add_(d_p, 1 − δ)
            d = buf
        x = x - lr * d
        out.append(x)
    return out


def lib_optax_sgd(prob, x, lr, momentum, steps=2):
    """optax/_src/alias.py sgd = trace(decay=momentum) then scale_by_learning_rate."""
    out, trace = [x], np.zeros_like(x)
    for _ in range(steps):
        trace = prob.grad(x) + momentum * trace  # transform.trace: f(g) + decay * t
        x = x - lr * trace
        out.append(x)
    return out


def lib_torch_adam(prob, x, lr, b1, b2, eps, weight_decay=0.0, decoupled=False, steps=2, amsgrad=False):
    """torch/optim/adam.py _single_tensor_adam (capturable=False): lerp, addcmul, addcdiv; amsgrad keeps
    max_exp_avg_sqs = max(max_exp_avg_sqs, exp_avg_sq) and divides by its root ÷ √bc2."""
    out, m, v, vmax = [x], np.zeros_like(x), np.zeros_like(x), np.zeros_like(x)
    for step in range(1, steps + 1):
        g = prob.grad(x)
        if weight_decay:
            if decoupled:
                x = x * (1 - lr * weight_decay)   # param.mul_(1 - lr * weight_decay)
            else:
                g = g + weight_decay * x          # grad.add(param, alpha=weight_decay)
        m = m + (g - m) * (1 - b1)                # exp_avg.lerp_(grad, 1 - beta1)
        v = v * b2 + (1 - b2) * g * g
        bc1, bc2 = 1 - b1 ** step, 1 - b2 ** step
        if amsgrad:
            vmax = np.maximum(vmax, v)
            denom = np.sqrt(vmax) / math.sqrt(bc2) + eps
        else:
            denom = np.sqrt(v) / math.sqrt(bc2) + eps
        x = x - (lr / bc1) * m / denom
        out.append(x)
    return out


def lib_optax_adam(prob, x, lr, b1, b2, eps, eps_root=0.0, weight_decay=0.0, steps=2):
    """optax scale_by_adam (+ add_decayed_weights for adamw) then scale_by_learning_rate."""
    out, mu, nu = [x], np.zeros_like(x), np.zeros_like(x)
    for count in range(1, steps + 1):
        g = prob.grad(x)
        mu = (1 - b1) * g + b1 * mu               # update_moment(order 1)
        nu = (1 - b2) * g ** 2 + b2 * nu          # update_moment_per_elem_norm(order 2)
        mu_hat, nu_hat = mu / (1 - b1 ** count), nu / (1 - b2 ** count)
        u = mu_hat / (np.sqrt(nu_hat + eps_root) + eps)
        u = u + weight_decay * x                  # add_decayed_weights
        x = x - lr * u
        out.append(x)
    return out


def lib_torch_adagrad(prob, x, lr, eps, weight_decay=0.0, lr_decay=0.0, initial=0.0, steps=2):
    """torch/optim/adagrad.py _single_tensor_adagrad (dense)."""
    out, state_sum = [x], np.full_like(x, initial)
    for step in range(1, steps + 1):
        g = prob.grad(x) + weight_decay * x
        clr = lr / (1 + (step - 1) * lr_decay)
        state_sum = state_sum + g * g
        x = x - clr * g / (np.sqrt(state_sum) + eps)
        out.append(x)
    return out


def lib_optax_adagrad(prob, x, lr, eps, initial, steps=2):
    """optax scale_by_rss: where(G > 0, rsqrt(G + eps), 0) · g, then −lr."""
    out, sos = [x], np.full_like(x, initial)
    for _ in range(steps):
        g = prob.grad(x)
        sos = g * g + sos
        inv = np.where(sos > 0, 1.0 / np.sqrt(sos + eps), 0.0)
        x = x - lr * inv * g
        out.append(x)
    return out


# --- quasi-Newton transcriptions ------------------------------------------------------------------------
def _strong_wolfe_holds(prob, x, d, t, c1=1e-4, c2=0.9):
    g0d = prob.grad(x) @ d
    return prob.f(x + t * d) <= prob.f(x) + c1 * t * g0d and abs(prob.grad(x + t * d) @ d) <= -c2 * g0d


def lib_torch_lbfgs(prob, x, lr=1.0, history_size=100, line_search_fn=None, steps=2):
    """torch/optim/lbfgs.py LBFGS.step with max_iter=1 per call (one iteration per step).

    With line_search_fn='strong_wolfe', torch's _strong_wolfe returns its first trial t when the
    strong Wolfe conditions hold there; the transcription asserts that they do (else torch's cubic
    search would pick another point, which it does not model)."""
    out = [x]
    n_iter, d, t = 0, None, None
    old_dirs, old_stps, ro, H_diag, prev_g = [], [], [], 1.0, None
    for _ in range(steps):
        g = prob.grad(x)
        assert np.max(np.abs(g)) > 1e-7                      # tolerance_grad
        n_iter += 1
        if n_iter == 1:
            d = -g
            old_dirs, old_stps, ro, H_diag = [], [], [], 1.0
        else:
            y = g - prev_g
            s = d * t
            ys = y @ s
            if ys > 1e-10:
                if len(old_dirs) == history_size:
                    old_dirs.pop(0), old_stps.pop(0), ro.pop(0)
                old_dirs.append(y), old_stps.append(s), ro.append(1.0 / ys)
                H_diag = ys / (y @ y)
            q = -g
            al = [0.0] * len(old_dirs)
            for i in range(len(old_dirs) - 1, -1, -1):
                al[i] = (old_stps[i] @ q) * ro[i]
                q = q - al[i] * old_dirs[i]
            r = q * H_diag
            for i in range(len(old_dirs)):
                be_i = (old_dirs[i] @ r) * ro[i]
                r = r + old_stps[i] * (al[i] - be_i)
            d = r
        prev_g = g
        t = min(1.0, 1.0 / np.abs(g).sum()) * lr if n_iter == 1 else lr
        assert g @ d < -1e-9                                  # tolerance_change
        if line_search_fn == "strong_wolfe":
            assert _strong_wolfe_holds(prob, x, d, t), "torch's search would not stop at its first trial"
        x = x + t * d
        out.append(x)
    return out


def lib_optax_lbfgs(prob, x, memory_size=10, linesearch=True, steps=2):
    """optax lbfgs = scale_by_lbfgs(scale_init_precond=True) + scale(-1) + zoom linesearch
    (initial_guess_strategy='one'): the zoom search returns stepsize 1 when it satisfies the
    sufficient decrease and curvature conditions, which the transcription asserts."""
    n, m = x.size, memory_size
    dp_mem, du_mem, w_mem = np.zeros((m, n)), np.zeros((m, n)), np.zeros(m)
    prev_params, prev_updates = np.zeros(n), np.zeros(n)
    out = [x]
    for count in range(steps):
        g = prob.grad(x)
        memory_idx, prev_idx = count % m, (count - 1) % m
        dp, du = x - prev_params, g - prev_updates
        vd = du @ dp
        weight = 0.0 if vd == 0.0 else 1.0 / vd
        if count == 0:
            dp, du, weight = np.zeros(n), np.zeros(n), 0.0
        dp_mem[prev_idx], du_mem[prev_idx], w_mem[prev_idx] = dp, du, weight
        den = du @ du
        gamma = (du @ dp) / den if den > 0 else 1.0
        if count == 0:
            gamma = min(1.0, 1.0 / np.linalg.norm(g))
        indices = [(memory_idx + i) % m for i in range(m)]
        vec, alphas = g.copy(), {}
        for idx in reversed(indices):                          # right_product, reverse scan
            alphas[idx] = w_mem[idx] * (dp_mem[idx] @ vec)
            vec = vec - alphas[idx] * du_mem[idx]
        vec = gamma * vec
        for idx in indices:                                    # left_product
            beta = w_mem[idx] * (du_mem[idx] @ vec)
            vec = vec + (alphas[idx] - beta) * dp_mem[idx]
        prev_params, prev_updates = x, g
        update = -vec                                          # transform.scale(-1.0)
        if linesearch:
            assert _strong_wolfe_holds(prob, x, update, 1.0), "the zoom search would not accept stepsize 1"
        x = x + update
        out.append(x)
    return out


def lib_scipy_bfgs(prob, x, steps=2, c1=1e-4, c2=0.9):
    """scipy/optimize/_optimize.py _minimize_bfgs: H₀ = I, old_old_fval = f + ‖g‖/2, and
    line_search_wolfe1's first trial alpha1 = min(1, 1.01·2(φ0 − φ_old)/φ'(0)) (1 if negative);
    MINPACK's dcsrch stops there when the strong Wolfe conditions hold (asserted)."""
    n = x.size
    Hk = np.eye(n)
    old_fval, gfk = prob.f(x), prob.grad(x)
    old_old_fval = old_fval + np.linalg.norm(gfk) / 2
    out = [x]
    for _ in range(steps):
        pk = -Hk @ gfk
        derphi0 = gfk @ pk
        alpha1 = min(1.0, 1.01 * 2 * (old_fval - old_old_fval) / derphi0)
        if alpha1 < 0:
            alpha1 = 1.0
        assert _strong_wolfe_holds(prob, x, pk, alpha1, c1, c2), "dcsrch would not stop at its first trial"
        sk = alpha1 * pk
        xkp1 = x + sk
        gfkp1 = prob.grad(xkp1)
        yk = gfkp1 - gfk
        old_old_fval, old_fval = old_fval, prob.f(xkp1)
        x, gfk = xkp1, gfkp1
        rhok_inv = yk @ sk
        rhok = 1000.0 if rhok_inv == 0.0 else 1.0 / rhok_inv
        A1 = np.eye(n) - sk[:, None] * yk[None, :] * rhok
        A2 = np.eye(n) - yk[:, None] * sk[None, :] * rhok
        Hk = A1 @ Hk @ A2 + rhok * sk[:, None] * sk[None, :]
        out.append(x)
    return out


# --- Sophia, AdaHessian -----------------------------------------------------------------------------------
def lib_optax_sophia(prob, x, probes, lr, b1, b2, eps, gamma, weight_decay, update_interval=1, steps=2,
                     estimate_at="current"):
    """optax/contrib/_sophia.py scale_by_sophia + add_decayed_weights + scale_by_learning_rate, with the
    default Hutchinson estimator (z ⊙ Hz). The update uses the old ν; the estimate is made at the
    current θ on count % update_interval == 0. ``estimate_at="updated"`` moves the estimate to θ_{t+1}
    (not optax: the variant refopt's refresh='after' computes, to show that is the only difference)."""
    out, mu, nu = [x], np.zeros_like(x), np.zeros_like(x)
    for count in range(steps):
        g = prob.grad(x)
        count_inc = count + 1
        mu = (1 - b1) * g + b1 * mu
        mu_hat = mu / (1 - b1 ** count_inc)
        u = np.clip(mu_hat / np.maximum(gamma * nu, eps), -1.0, 1.0)
        x_new = x - lr * (u + weight_decay * x)
        if count % update_interval == 0:
            at = x if estimate_at == "current" else x_new
            z = probes[count]
            nu = (1 - b2) * (z * prob.hvp(at, z)) + b2 * nu
        x = x_new
        out.append(x)
    return out


def lib_sophia_h_official(prob, x, probes, lr, b1, b2, gamma, weight_decay, k, steps=2):
    """Liuhong99/Sophia sophia.py SophiaH (commit 01af183) with update_hessian() called after step()
    on iterations iter % k == k − 1 with p.grad = z ⊙ Hz at the updated parameters."""
    out, m, h = [x], np.zeros_like(x), np.zeros_like(x)
    for it in range(steps):
        g = prob.grad(x)
        step = it + 1
        x = x * (1 - lr * weight_decay)                         # param.mul_(1 - lr * weight_decay)
        m = m * b1 + (1 - b1) * g
        step_size_neg = -lr / (1 - b1 ** step)
        ratio = np.minimum(np.abs(m) / (gamma * np.maximum(h, 0.0) + 1e-12), 1.0)
        x = x + step_size_neg * np.sign(m) * ratio
        if it % k == k - 1:
            z = probes[it]
            h = h * b2 + (1 - b2) * (z * prob.hvp(x, z))
        out.append(x)
    return out


def lib_adahessian(prob, x, probes, lr, b1, b2, eps, weight_decay=0.0, hessian_power=1.0, average_rows=False,
                   steps=2):
    """amirgholami/adahessian: get_trace() gives |Hz| (z Rademacher; |hv·z| = |hv|), averaged over dim 1
    of a 2-D torch weight (out, in) in instruction/adahessian.py (``average_rows``), not averaged in
    image_classification/optim_adahessian.py; the update is the latter's step()."""
    out, m, v = [x], np.zeros_like(x), np.zeros_like(x)
    for it in range(steps):
        g = prob.grad(x)
        hv = np.abs(prob.hvp(x, probes[it]))
        if average_rows:  # W (in, out) in refopt's layout is torch's weight (out, in) transposed
            W_torch = hv[:12].reshape(4, 3).T                    # (out, in)
            W_torch = np.broadcast_to(W_torch.mean(axis=1, keepdims=True), W_torch.shape)
            hv = np.concatenate([W_torch.T.ravel(), hv[12:]])    # biases (1-D): no averaging
        step = it + 1
        m = m * b1 + (1 - b1) * g
        v = v * b2 + (1 - b2) * hv * hv
        bc1, bc2 = 1 - b1 ** step, 1 - b2 ** step
        denom = (np.sqrt(v) ** hessian_power) / math.sqrt(bc2) ** hessian_power + eps
        x = x - lr * (m / bc1 / denom + weight_decay * x)
        out.append(x)
    return out


# --- Shampoo ----------------------------------------------------------------------------------------------
def _mode_stat(G, i):
    others = [j for j in range(G.ndim) if j != i]
    return np.tensordot(G, G, axes=(others, others))


def _mode_apply(G, mats):
    for i, P in enumerate(mats):
        G = np.moveaxis(np.tensordot(P, G, axes=([1], [i])), 0, i)
    return G


def _eig_power(M, p, eps):
    lam, Q = np.linalg.eigh(M)
    return (Q * (lam + eps) ** p) @ Q.T


def _meta_inverse_root(A, root, epsilon):
    """distributed_shampoo's A^(−1/root): L, Q = eigh(A + εI); if λ_min < ε, L ← L − λ_min + ε."""
    lam, Q = np.linalg.eigh(A + epsilon * np.eye(len(A)))
    if lam.min() < epsilon:
        lam = lam - lam.min() + epsilon
    return (Q * lam ** (-1.0 / root)) @ Q.T


def _google_merge(shape, max_dim):
    """scalable_shampoo merge_small_dims."""
    if shape and all(d == 1 for d in shape):
        return [1]
    out, product = [], 1
    for d in shape:
        if product * d <= max_dim:
            product *= d
        else:
            if product > 1:
                out.append(product)
            product = d
    if product > 1:
        out.append(product)
    return out


def lib_google_shampoo(prob, x, lr, beta2, matrix_epsilon, start_preconditioning_step, merge=True, steps=2,
                       relative=False, beta1=0.0, nesterov=False):
    """google-research scalable_shampoo/optax/distributed_shampoo.py with graft_type=SGD,
    moving_average_for_momentum=False and the inverse p-th root computed exactly (the library's coupled
    Newton iteration approximates it, and its power iteration approximates λ_max for
    relative_matrix_epsilon). _transform_grad keeps two momentum buffers, one for the Shampoo update and
    one for the graft (SGD) update, and steps with the graft's while step < start_preconditioning_step;
    nesterov: update = wd_update + β₁·momentum_update."""
    leaves = lambda v: [to_tree(v)[0]["W"], to_tree(v)[0]["b"]]  # noqa: E731
    shapes = [(4, 3), (3,)]
    merged = [_google_merge(list(s), 4096) if merge else list(s) for s in shapes]
    stats = [[matrix_epsilon * np.eye(d) for d in ms] for ms in merged]
    momentum = [np.zeros(s) for s in shapes]
    diagonal_momentum = [np.zeros(s) for s in shapes]
    out = [x]
    for count in range(steps):
        grads = leaves(prob.grad(x))
        updates = []
        for j, (G, ms, S) in enumerate(zip(grads, merged, stats)):
            Gm = G.reshape(ms)
            for i in range(len(ms)):                              # _compute_stats: w1 = β2, w2 = 1 − β2
                S[i] = beta2 * S[i] + (1 - beta2) * _mode_stat(Gm, i)
            exponent = 2 * len(ms)                                # exponent_for_preconditioner
            ridges = [matrix_epsilon * max(np.linalg.eigvalsh(Si).max(), 1e-6) if relative else matrix_epsilon
                      for Si in S]
            P = [_eig_power(Si, -1.0 / exponent, r) for Si, r in zip(S, ridges)]
            precond = _mode_apply(Gm, P).reshape(G.shape)
            grafting = G                                          # GraftingType.SGD
            shampoo = precond * (np.linalg.norm(grafting) / (np.linalg.norm(precond) + 1e-16))
            shampoo_m = momentum[j] * beta1 + shampoo
            grafting_m = diagonal_momentum[j] * beta1 + grafting
            run_shampoo = count >= start_preconditioning_step
            update = shampoo_m if run_shampoo else grafting_m
            if nesterov:
                update = (shampoo if run_shampoo else grafting) + beta1 * update
            momentum[j], diagonal_momentum[j] = shampoo_m, grafting_m
            updates.append(-lr * update)
        x = x + np.concatenate([u.ravel() for u in updates])
        out.append(x)
    return out


def lib_meta_shampoo(prob, x, lr, epsilon, momentum=0.0, grafting_epsilon=None, merge=True,
                     inv_root_override=0, precondition_frequency=1, start_preconditioning_step=1, steps=2,
                     beta2=1.0, beta1=0.9, nesterov=False):
    """facebookresearch/optimizers distributed_shampoo with betas=(beta1, beta2), beta3 = beta1 and
    use_bias_correction=True: _compute_filtered_grad_list lerps G̃ toward the raw G and divides by
    1 − β₃β₁^(t−1) = 1 − β₁ᵗ; the factor matrices (summed for beta2 = 1, else an EMA whose roots are taken
    of L / (1 − β₂ᵗ), _bias_correction2) and the grafting accumulator see the raw G; eigh roots with the
    PSD shift, optional AdaGrad grafting (grafting_beta2=1) of the filtered gradient, and momentum
    (dampening 0). Roots are recomputed when step % precondition_frequency == 0 and step > start, or
    step == start (_group_step_body); before the start the grafting method steps. The roots are those of
    matrix_eigendecomposition + matrix_inverse_root_from_eigendecomposition with the default
    PerturbationConfig(perturb_before_computation=True): eigh(L + εI), shifted by ε − λ_min when λ_min < ε;
    lr lives in a float32 tensor (_instantiate_lr_tensors), so the step is −float32(lr)·P."""
    lr = float(np.float32(lr))
    leaves = lambda v: [to_tree(v)[0]["W"], to_tree(v)[0]["b"]]  # noqa: E731
    shapes = [(4, 3), (3,)]
    merged = [[int(np.prod(s))] if (merge and len(s) > 1 and np.prod(s) <= 1024) else list(s) for s in shapes]
    factors = [[np.zeros((d, d)) for d in ms] for ms in merged]
    graft = [np.zeros(s) for s in shapes]
    mom = [np.zeros(s) for s in shapes]
    filt = [np.zeros(s) for s in shapes]
    inverse = [None, None]
    out = [x]
    for step in range(1, steps + 1):
        grads = leaves(prob.grad(x))
        if beta1:
            filt = [f + (G - f) * (1 - beta1) for f, G in zip(filt, grads)]     # lerp_(grad, 1 − beta1)
            filtered = [f / (1.0 - beta1 * beta1 ** (step - 1)) for f in filt]
        else:
            filtered = grads
        compute_root_inverse = (step % precondition_frequency == 0 and step > start_preconditioning_step
                                or step == start_preconditioning_step)
        use_grafting_method = step < start_preconditioning_step and grafting_epsilon is not None
        updates = []
        for j, (G, ms, F, Gf) in enumerate(zip(grads, merged, factors, filtered)):
            Gm = G.reshape(ms)
            for i in range(len(ms)):
                if beta2 == 1.0:
                    F[i] = F[i] + _mode_stat(Gm, i)               # β2 = 1: L ← L + G Gᵀ
                else:
                    F[i] = beta2 * F[i] + (1 - beta2) * _mode_stat(Gm, i)
            if grafting_epsilon is not None:                      # AdaGradGraftingConfig: V ← V + G²
                graft[j] = graft[j] + G * G
                gdir = Gf / (np.sqrt(graft[j]) + grafting_epsilon)
            if compute_root_inverse:
                root = (inv_root_override or 2 * len(ms))
                bias_correction2 = 1.0 - beta2 ** step if beta2 < 1.0 else 1.0
                inverse[j] = [_meta_inverse_root(Fi / bias_correction2, root, epsilon) for Fi in F]
            if use_grafting_method:
                P = gdir
            else:
                P = _mode_apply(Gf.reshape(ms), inverse[j]).reshape(G.shape)
                if grafting_epsilon is not None:
                    P = P * (np.linalg.norm(gdir) / (np.linalg.norm(P) + 1e-16))
            if momentum:                                          # _update_momentum, dampening 0
                mom[j] = momentum * mom[j] + P
                P = P + momentum * mom[j] if nesterov else mom[j]
            updates.append(-lr * P)
        x = x + np.concatenate([u.ravel() for u in updates])
        out.append(x)
    return out


# --- the network problem (K-FAC, Sophia-G) ------------------------------------------------------------
def net_problem(B, seed=3, sizes=(3, 4, 3)):
    g = np.random.default_rng(seed)
    X = g.standard_normal((B, sizes[0]))
    y = g.integers(0, sizes[-1], size=B)
    model = MLP(list(sizes), activation="tanh")
    params = model.init(seed)
    oracle = Oracle(model, make_loss("softmax_cross_entropy", reduction="mean"), X, y)
    labels = [g.integers(0, sizes[-1], size=(1, B)) for _ in range(3)]  # injected "sampled" labels
    return X, y, params, oracle, labels


def _softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _forward(Ws, X):
    """Inputs of each layer and the output z of s = a W + b with tanh between layers."""
    acts, a = [], X
    for l, (W, b) in enumerate(Ws):
        acts.append(a)
        s = a @ W + b
        a = np.tanh(s) if l < len(Ws) - 1 else s
    return acts, a


def _backprop(Ws, acts, dz):
    """∂(Σ ⟨dz, z⟩)/∂s_l for every layer (rows are examples)."""
    out, g = [None] * len(Ws), dz
    for l in range(len(Ws) - 1, -1, -1):
        out[l] = g
        if l > 0:
            g = (g @ Ws[l][0].T) * (1.0 - acts[l] ** 2)
    return out


def _abar(a):
    return np.concatenate([a, np.ones((a.shape[0], 1))], axis=1)


def _onehot(y, C):
    return np.eye(C)[y]


def _net_leaves(params):
    return [(p["W"].copy(), p["b"].copy()) for p in params]


def _net_flat(Ws):
    return np.concatenate([np.concatenate([W.ravel(), b]) for W, b in Ws])


def _mean_ce_grad(Ws, X, y):
    """(∇W̄ per layer, acts, P) of the mean cross-entropy at labels y; W̄ = [W; b] (in+1, out)."""
    B, C = X.shape[0], Ws[-1][0].shape[1]
    acts, z = _forward(Ws, X)
    P = _softmax(z)
    gs = _backprop(Ws, acts, (P - _onehot(y, C)) / B)
    return [_abar(a).T @ gl for a, gl in zip(acts, gs)], acts, P


def _apply(Ws, deltas):
    return [(W + D[:-1], b + D[-1]) for (W, b), D in zip(Ws, deltas)]


def lib_kfac_jax(Ws, X, y, labels, lr, momentum, damping, ema, inverse_update_period, steps=2, pi="kfac_jax",
                 momentum_style="kfac_jax"):
    """kfac-jax DenseTwoKroneckerFactored (x with a trailing one, A = xᵀx/B, G = dyᵀdy/B with dy the
    per-example tangents of the sampled loss, "fisher_gradients"), WeightedMovingAverage factors
    (value = raw/weight), pi_adjusted_kronecker_inverse refreshed every inverse_update_period steps,
    fixed learning rate and momentum: v ← μv − η·F̂⁻¹g, θ ← θ + v.

    ``pi="tracenorm"``, ``momentum_style="tf"`` give tensorflow/kfac's compute_pi_adjusted_damping
    (A + π√λ, G + √λ/π) and its "regular" momentum (v ← μv + F̂⁻¹g, θ ← θ − ηv)."""
    L, B, C = len(Ws), X.shape[0], Ws[-1][0].shape[1]
    raw = {"A": [0.0] * L, "G": [0.0] * L}
    weight, velocity, inv, out = 0.0, None, None, [_net_flat(Ws)]
    for t in range(steps):
        grad, acts, P = _mean_ce_grad(Ws, X, y)
        dys = _backprop(Ws, acts, P - _onehot(labels[t][0], C))   # sum of per-example sampled losses
        weight = ema * weight + 1.0                                 # ema_old, ema_new (cancels in the value)
        for l in range(L):
            x = _abar(acts[l])
            raw["A"][l] = ema * raw["A"][l] + 1.0 * (x.T @ x / B)
            raw["G"][l] = ema * raw["G"][l] + 1.0 * (dys[l].T @ dys[l] / B)
        if t % inverse_update_period == 0:
            inv = []
            for l in range(L):
                A, G = raw["A"][l] / weight, raw["G"][l] / weight
                if pi == "kfac_jax":                                # utils/math.py pi_adjusted_kronecker_factors
                    norms = np.array([np.trace(A) / A.shape[0], np.trace(G) / G.shape[0]])
                    c_k = np.exp(np.mean(np.log(norms)))
                    d_k = damping ** 0.5 / c_k
                    Ah = (A / norms[0] + d_k * np.eye(A.shape[0])) * c_k
                    Gh = (G / norms[1] + d_k * np.eye(G.shape[0])) * c_k
                else:                                               # fisher_blocks.py compute_pi_tracenorm
                    pi_t = math.sqrt((np.trace(A) * G.shape[0]) / (np.trace(G) * A.shape[0]))
                    Ah = A + damping ** 0.5 * pi_t * np.eye(A.shape[0])
                    Gh = G + damping ** 0.5 / pi_t * np.eye(G.shape[0])
                inv.append((np.linalg.inv(Ah), np.linalg.inv(Gh)))
        pg = [Ai @ gr @ Gi for (Ai, Gi), gr in zip(inv, grad)]
        if momentum_style == "kfac_jax":
            velocity = [-lr * p if velocity is None else momentum * v - lr * p for v, p in zip(velocity or pg, pg)]
            Ws = _apply(Ws, velocity)
        else:
            velocity = [p if velocity is None else momentum * v + p for v, p in zip(velocity or pg, pg)]
            Ws = _apply(Ws, [-lr * v for v in velocity])
        out.append(_net_flat(Ws))
    return out


def lib_kfac_pytorch(Ws, X, y, lr, damping, factor_decay, kl_clip, momentum, steps=2, g_rescale=1.0):
    """gpauloski/kfac-pytorch (torch layout): A = get_cov([a, 1]), G = get_cov(grad_output) of the loss
    the user backpropagates, factors started at the identity and averaged with α = factor_decay,
    KFACEigenLayer (eigenvalues clamped at 0, v = QG[(QGᵀ grad QA)/(dG dAᵀ + λ)]QAᵀ), the KL clip of
    _compute_grad_scale, then torch.optim.SGD(momentum). ``g_rescale`` multiplies each new G (not
    the library: B for a mean loss turns its G into refopt's, the documented gap)."""
    L, B, C = len(Ws), X.shape[0], Ws[-1][0].shape[1]
    A_f, G_f, buf, out = [None] * L, [None] * L, None, [_net_flat(Ws)]

    def get_cov(a):
        cov = a.T @ (a / a.shape[0])
        return (cov + cov.T) / 2.0

    for _ in range(steps):
        acts, z = _forward(Ws, X)
        P = _softmax(z)
        grad_out = _backprop(Ws, acts, (P - _onehot(y, C)) / B)   # dL/ds of the mean loss
        vs, grads = [], []
        for l in range(L):
            a_new, g_new = get_cov(_abar(acts[l])), g_rescale * get_cov(grad_out[l])
            A_f[l] = np.eye(a_new.shape[0]) if A_f[l] is None else A_f[l]
            G_f[l] = np.eye(g_new.shape[0]) if G_f[l] is None else G_f[l]
            A_f[l] = factor_decay * A_f[l] + (1 - factor_decay) * a_new
            G_f[l] = factor_decay * G_f[l] + (1 - factor_decay) * g_new
            dA, QA = np.linalg.eigh(A_f[l])
            dG, QG = np.linalg.eigh(G_f[l])
            dA, dG = np.maximum(dA, 0.0), np.maximum(dG, 0.0)
            grad_t = (_abar(acts[l]).T @ grad_out[l]).T          # torch layout (out, in + 1)
            v1 = QG.T @ grad_t @ QA
            v2 = v1 / (np.outer(dG, dA) + damping)
            vs.append(QG @ v2 @ QA.T)
            grads.append(grad_t)
        vg_sum = sum(float(np.sum(v * g * lr ** 2)) for v, g in zip(vs, grads))
        nu = min(1.0, math.sqrt(kl_clip / abs(vg_sum)))
        d_p = [nu * v for v in vs]
        buf = d_p if buf is None else [momentum * b + d for b, d in zip(buf, d_p)]
        Ws = _apply(Ws, [-lr * bb.T for bb in buf])
        out.append(_net_flat(Ws))
    return out


def lib_curvlinops(Ws, X, y, labels, damping, lr, steps=2, separate_weight_and_bias=True):
    """f-dangel/curvlinops KFACLinearOperator(fisher_type='mc', mc_samples=1, separate_weight_and_bias)
    rebuilt at every step, then KFACLinearOperator.inverse(damping) (δ added to each factor) applied to
    the gradient: θ ← θ − η·K⁻¹g. With separate_weight_and_bias=True (the default) the weight group's
    input covariance has no bias pad and the bias group is the one-factor product of the gradient
    covariance alone (kfac_hooks.py: the forward hook is installed only for groups with a weight)."""
    L, B, C = len(Ws), X.shape[0], Ws[-1][0].shape[1]
    out = [_net_flat(Ws)]
    for t in range(steps):
        grad, acts, P = _mean_ce_grad(Ws, X, y)
        grad_outputs = (P - _onehot(labels[t][0], C)) / math.sqrt(1) * (1.0 / B)  # mc weight, mean scale
        gs = _backprop(Ws, acts, grad_outputs)
        N = B
        correction = B ** 2 / N                                    # compute_loss_correction("mean", n_data=N)
        deltas = []
        for l in range(L):
            ggT = gs[l].T @ gs[l] * correction
            Ginv = np.linalg.inv(ggT + damping * np.eye(ggT.shape[0]))
            if separate_weight_and_bias:
                aaT = acts[l].T @ acts[l] / N
                Ainv = np.linalg.inv(aaT + damping * np.eye(aaT.shape[0]))
                v_weight = Ginv @ grad[l][:-1].T @ Ainv.T          # (out, in)
                v_bias = Ginv @ grad[l][-1]                        # (out,)
                v_torch = np.concatenate([v_weight, v_bias[:, None]], axis=1)
            else:
                aaT = _abar(acts[l]).T @ _abar(acts[l]) / N
                Ainv = np.linalg.inv(aaT + damping * np.eye(aaT.shape[0]))
                v_torch = Ginv @ grad[l].T @ Ainv.T                # (G⊗A)⁻¹ on the (out, in+1) gradient
            deltas.append(-lr * v_torch.T)
        Ws = _apply(Ws, deltas)
        out.append(_net_flat(Ws))
    return out


def lib_sophia_g_official(Ws, X, y, labels, lr, b1, b2, rho, weight_decay, k, bs, steps=2):
    """Liuhong99/Sophia sophia.py SophiaG (commit 195a786) with train_sophiag.py's loop: step(bs=bs),
    then on iter % k == k − 1 a backward pass of the mean loss at labels sampled from the model at the
    updated parameters, and update_hessian(): h ← β₂h + (1 − β₂) ĝ⊙ĝ."""
    L = len(Ws)
    m = [np.zeros((W.shape[0] + 1, W.shape[1])) for W, _ in Ws]
    h = [np.zeros_like(mm) for mm in m]
    out = [_net_flat(Ws)]
    for it in range(steps):
        grad, _, _ = _mean_ce_grad(Ws, X, y)
        deltas = []
        for l in range(L):
            W, b = Ws[l]
            Wbar = np.vstack([W, b])
            m[l] = m[l] * b1 + (1 - b1) * grad[l]
            decayed = Wbar * (1 - lr * weight_decay)
            ratio = np.minimum(np.abs(m[l]) / (rho * bs * h[l] + 1e-15), 1.0)
            deltas.append(decayed - lr * np.sign(m[l]) * ratio - Wbar)
        Ws = _apply(Ws, deltas)
        if it % k == k - 1:
            ghat, _, _ = _mean_ce_grad(Ws, X, labels[it][0])
            h = [hh * b2 + (1 - b2) * gg * gg for hh, gg in zip(h, ghat)]
        out.append(_net_flat(Ws))
    return out


# --- the cases: one per profile ------------------------------------------------------------------------
def lib_po_sophia_h(prob, x, probes, lr, b1, b2, p, eps, weight_decay, update_period, steps=3):
    """kozistr/pytorch_optimizer optimizer/sophia.py SophiaH.step (4.1.0, weight_decouple=True): z⊙Hz at θ_t on
    steps with (step − 1) % update_period == 0, used at once; momentum.lerp_(g, 1 − β₁), θ.mul_(1 − lr·wd),
    update = clamp(m / clamp(h, min=eps), −p, p), θ ← θ − lr·update."""
    out, m, h = [x], np.zeros_like(x), np.zeros_like(x)
    for step in range(1, steps + 1):
        g = prob.grad(x)
        refresh = (step - 1) % update_period == 0
        if refresh:                                              # compute_hutchinson_hessian, before the step
            z = probes[step - 1]
            hz = z * prob.hvp(x, z)
        x = x * (1 - weight_decay * lr)                          # apply_weight_decay (decoupled)
        m = m + (1 - b1) * (g - m)                               # lerp_
        if refresh:
            h = h + (1 - b2) * (hz - h)
        x = x - lr * np.clip(m / np.maximum(h, eps), -p, p)
        out.append(x)
    return out


def lib_po_adahessian(prob, x, probes, lr, b1, b2, eps, hessian_power, weight_decay, steps=3):
    """kozistr/pytorch_optimizer optimizer/adahessian.py AdaHessian.step (4.1.0, update_period=1,
    weight_decouple=True, adam_debias=False): h = z⊙Hz (no abs, no averaging), θ.mul_(1 − lr·wd),
    exp_avg.lerp_(g), v ← β₂v + (1 − β₂)h², θ ← θ − (lr/bc₁)·m / ((v/bc₂)^{k/2} + eps)."""
    out, m, v = [x], np.zeros_like(x), np.zeros_like(x)
    for step in range(1, steps + 1):
        g, z = prob.grad(x), probes[step - 1]
        h = z * prob.hvp(x, z)
        x = x * (1 - lr * weight_decay)
        m = m + (1 - b1) * (g - m)
        v = v * b2 + (1 - b2) * h * h
        x = x - (lr / (1 - b1 ** step)) * m / ((v / (1 - b2 ** step)) ** (hessian_power / 2) + eps)
        out.append(x)
    return out


def lib_po_shampoo(prob, x, lr, momentum, weight_decay, matrix_eps, weight_decouple=False, steps=3):
    """kozistr/pytorch_optimizer optimizer/shampoo.py Shampoo.step (4.1.0), on torch's layout of the leaves:
    the buffer starts as a copy of G₁, grad.lerp_(buffer, μ), the weight decay, then for each mode
    pre_cond_i += G_(i)G_(i)ᵀ (from εI) and G ← G ×_i compute_power_svd(pre_cond_i, 2·order), buffer = G,
    θ ← θ − lr·G."""
    def svd_root(M, power):                                     # utils/matrix.py compute_power_svd
        u, sv, vh = np.linalg.svd(M, full_matrices=False)
        return (u * sv ** (-1.0 / power)) @ vh
    W_of = lambda v: v[:12].reshape(4, 3).T                     # noqa: E731  torch's weight (out, in)
    out, buf, pre = [x], None, [[matrix_eps * np.eye(3), matrix_eps * np.eye(4)], [matrix_eps * np.eye(3)]]
    for _ in range(steps):
        g = prob.grad(x)
        Gs, ps = [W_of(g), g[12:]], [W_of(x), x[12:]]
        buf = buf or [G.copy() for G in Gs]
        new = []
        for j, (G, P, B) in enumerate(zip(Gs, ps, buf)):
            G = G + momentum * (B - G)                            # grad.lerp_(momentum_buffer, momentum)
            if weight_decouple:
                P = P * (1 - weight_decay * lr)
            else:
                G = G + weight_decay * P
            if G.ndim == 2:
                pre[j][0] = pre[j][0] + G @ G.T
                pre[j][1] = pre[j][1] + G.T @ G
                U = svd_root(pre[j][0], 4) @ G @ svd_root(pre[j][1], 4)
            else:
                pre[j][0] = pre[j][0] + np.outer(G, G)
                U = svd_root(pre[j][0], 2) @ G
            buf[j] = U
            new.append(P - lr * U)
        x = np.concatenate([new[0].T.ravel(), new[1]])
        out.append(x)
    return out


def _quartic_case(profile, lib, steps=2, probes=None, prob=None, **overrides):
    """(refopt's, the library's) parameter sequences on ``prob`` (default ``Quartic()``); ``probes`` (one flat
    vector per step, which ``lib`` takes from its closure) are injected into refopt as its draws."""
    prob = prob or Quartic()
    draws = None if probes is None else _probe_draws(probes)
    ours = flat_all(run(profile, tree_oracle(prob), to_tree(prob.x0), steps, draws, **overrides))
    theirs = np.stack(lib(prob, prob.x0.copy()))
    return ours, theirs


def _probe_draws(probes):
    return [[to_tree(z)] for z in probes]


def case_torch_sgd():
    ours, theirs = _quartic_case("torch.optim.SGD", lambda p, x: lib_torch_sgd(p, x, 0.1, 0.9))
    assert_same(ours, theirs)
    for dampening in (0.3, 1.0):   # three steps: the undamped first buffer, then two damped updates
        ours, theirs = _quartic_case("torch.optim.SGD", lambda p, x: lib_torch_sgd(p, x, 0.1, 0.9, steps=3,
                                                                                   dampening=dampening),
                                     steps=3, dampening=dampening)
        assert_same(ours, theirs)
        assert_differ(ours, _quartic_case("torch.optim.SGD", lambda p, x: lib_torch_sgd(p, x, 0.1, 0.9), steps=3)[0])


def case_optax_sgd():
    ours, theirs = _quartic_case("optax.sgd", lambda p, x: lib_optax_sgd(p, x, 0.1, 0.9))
    assert_same(ours, theirs)


def case_torch_adam():
    # amsgrad with β₂ = 0.5 and lr = 0.5, so that v shrinks within three steps and the maximum matters
    for wd, amsgrad, lr, b2 in ((0.0, False, 0.05, 0.999), (0.3, False, 0.05, 0.999), (0.3, True, 0.5, 0.5)):
        ours, theirs = _quartic_case("torch.optim.Adam",
                                     lambda p, x: lib_torch_adam(p, x, lr, 0.9, b2, 1e-8, wd, amsgrad=amsgrad, steps=3),
                                     steps=3, lr=lr, beta2=b2, weight_decay=wd, amsgrad="max_v" if amsgrad else "none")
        assert_same(ours, theirs)
        if amsgrad:
            assert_differ(ours, np.stack(lib_torch_adam(Quartic(), Quartic().x0.copy(), lr, 0.9, b2, 1e-8, wd,
                                                        steps=3)))


def case_torch_adamw():
    for amsgrad in (False, True):
        ours, theirs = _quartic_case(
            "torch.optim.AdamW",
            lambda p, x: lib_torch_adam(p, x, 0.5, 0.9, 0.5, 1e-8, 0.3, decoupled=True, amsgrad=amsgrad, steps=3),
            steps=3, lr=0.5, beta2=0.5, weight_decay=0.3, amsgrad="max_v" if amsgrad else "none")
        assert_same(ours, theirs)


def case_optax_adam():
    for eps, eps_root in ((1e-8, 0.0), (1e-2, 1e-2)):    # eps_root > 0 together with ε > 0
        ours, theirs = _quartic_case("optax.adam",
                                     lambda p, x: lib_optax_adam(p, x, 0.05, 0.9, 0.999, eps, eps_root=eps_root),
                                     lr=0.05, eps=eps, eps_root=eps_root)
        assert_same(ours, theirs)


def case_optax_adamw():
    for eps_root in (0.0, 1e-2):
        ours, theirs = _quartic_case(
            "optax.adamw",
            lambda p, x: lib_optax_adam(p, x, 0.05, 0.9, 0.999, 1e-3, eps_root=eps_root, weight_decay=0.3),
            lr=0.05, eps=1e-3, weight_decay=0.3, eps_root=eps_root)
        assert_same(ours, theirs)


def case_torch_adagrad():
    for wd, lr_decay in ((0.0, 0.0), (0.2, 0.0), (0.2, 0.7)):
        ours, theirs = _quartic_case("torch.optim.Adagrad",
                                     lambda p, x: lib_torch_adagrad(p, x, 0.1, 1e-10, weight_decay=wd,
                                                                    lr_decay=lr_decay, steps=3),
                                     steps=3, lr=0.1, weight_decay=wd, lr_decay=lr_decay)
        assert_same(ours, theirs)


def case_optax_adagrad():
    ours, theirs = _quartic_case("optax.adagrad", lambda p, x: lib_optax_adagrad(p, x, 0.1, 1e-7, 0.1), lr=0.1)
    assert_same(ours, theirs)


def _vector_case(profile, lib, prob=None, steps=2, **overrides):
    prob = prob or Quartic()
    ours = np.stack(run(profile, vector_oracle(prob), prob.x0.copy(), steps, **overrides))
    return ours, np.stack(lib(prob, prob.x0.copy()))


def case_torch_lbfgs():
    # ‖g₀‖₁ = 2 > 1 > ‖g₀‖₂ (torch's ℓ1 first step differs from a unit-length one) and lr ≠ 1
    for lr in (1.0, 0.6):
        ours, theirs = _vector_case("torch.optim.LBFGS", lambda p, x: lib_torch_lbfgs(p, x, lr=lr, steps=3),
                                    Quartic(grad0_l1=2.0), steps=3, lr=lr)
        assert_same(ours, theirs)


def case_torch_lbfgs_strong_wolfe():
    for lr in (1.0, 0.8):
        ours, theirs = _vector_case(
            "torch.optim.LBFGS+strong_wolfe",
            lambda p, x: lib_torch_lbfgs(p, x, lr=lr, line_search_fn="strong_wolfe", steps=3),
            Quartic(grad0_l1=2.0), steps=3, lr=lr)
        assert_same(ours, theirs)


def case_optax_lbfgs():
    ours, theirs = _vector_case("optax.lbfgs", lambda p, x: lib_optax_lbfgs(p, x, steps=3), steps=3)
    assert_same(ours, theirs)


def case_optax_lbfgs_no_linesearch():
    ours, theirs = _vector_case("optax.lbfgs+no_linesearch",
                                lambda p, x: lib_optax_lbfgs(p, x, linesearch=False, steps=3), steps=3)
    assert_same(ours, theirs)
    # nonconvex: the first pair has sᵀy < 0; optax keeps it and follows the direction it gives
    prob = Quartic(seed=4, alpha=0.5, grad0_l1=3.0, eigenvalues=(-1.0, 1.5))
    ours, theirs = _vector_case("optax.lbfgs+no_linesearch",
                                lambda p, x: lib_optax_lbfgs(p, x, linesearch=False, steps=4), prob, steps=4)
    assert (theirs[1] - theirs[0]) @ (prob.grad(theirs[1]) - prob.grad(theirs[0])) < 0
    assert_same(ours, theirs)


def case_scipy_bfgs():
    for grad0_l1 in (0.8, 8.0):   # ‖g₀‖ < 1 (first trial 1) and > 1 (first trial 1.01/‖g₀‖)
        ours, theirs = _vector_case("scipy.optimize.fmin_bfgs", lambda p, x: lib_scipy_bfgs(p, x, steps=3),
                                    Quartic(grad0_l1=grad0_l1), steps=3)
        assert_same(ours, theirs)


def _scipy_iterates(prob, method, steps, x0=None, **options):
    """x_1, x_2, … of scipy's own minimize (x_k via the callback), run with every stop test off."""
    minimize = pytest.importorskip("scipy.optimize").minimize
    xs = []
    options = {"maxiter": steps, "gtol": 0.0, **({"ftol": 0.0} if method == "L-BFGS-B" else {}), **options}
    minimize(prob.f, np.array(prob.x0 if x0 is None else x0, dtype=float), jac=prob.grad, method=method,
             options=options, callback=lambda intermediate_result: xs.append(intermediate_result.x.copy()))
    return np.stack(xs)


def case_scipy_lbfgsb():
    # scipy itself (scipy is a test dependency): ‖g₀‖ < 1 (first trial 1/‖g₀‖ > 1, uncapped) and > 1
    for grad0_l1 in (0.8, 8.0):
        prob = Quartic(grad0_l1=grad0_l1)
        ours = np.stack(run("scipy.optimize.fmin_l_bfgs_b", vector_oracle(prob), prob.x0.copy(), 3))
        assert_same(ours[1:], _scipy_iterates(prob, "L-BFGS-B", 3), rtol=1e-12)


def case_optax_sophia():
    # a non-constant Hessian (α = 0.5), update_interval 1, 2 and optax's default 10; gamma = 1 leaves part of
    # the coordinates unclipped (with 0.01 every step is a sign step and h is untested)
    prob = Quartic(alpha=0.5)
    probes = rademacher_probes(5, 4)
    kw = dict(lr=0.05, b1=0.965, b2=0.99, eps=1e-8, gamma=1.0, weight_decay=1e-4, steps=4)
    for k in (1, 2, 10):
        ours = flat_all(run("optax.contrib.sophia", tree_oracle(prob), to_tree(prob.x0), 4, _probe_draws(probes),
                            lr=0.05, gamma=1.0, k=k))
        assert_same(ours, np.stack(lib_optax_sophia(prob, prob.x0.copy(), probes, update_interval=k, **kw)))


def case_sophia_g_official():
    X, y, params, oracle, labels = net_problem(B=5)
    # k=10: no refresh within three steps (h = 0: sign steps); k=1: refresh every step. ρ = 100 leaves part
    # of the coordinates unclipped (with ρ = 0.04 every step of this tiny problem is a sign step).
    for k in (1, 10):
        ours = np.stack([_net_flat(_net_leaves(p)) for p in
                         run("Liuhong99/Sophia.SophiaG", oracle, params, 3, labels, lr=0.05, k=k, gamma=100.0)])
        theirs = np.stack(lib_sophia_g_official(_net_leaves(params), X, y, labels, lr=0.05, b1=0.965, b2=0.99,
                                                rho=100.0, weight_decay=0.1, k=k, bs=5, steps=3))
        assert_same(ours, theirs)


def case_sophia_h_official():
    # k = 10: no refresh within three steps (h = 0: sign steps); k = 1: h refreshed after every step. The
    # nonconvex quartic makes some z⊙Hz negative, so the official max(h, 0) is exercised (4 coordinates at
    # steps 2 and 3), and γ = 10 leaves most coordinates unclipped from step 2 on.
    prob = Quartic(eigenvalues=(-1.0, 1.5))
    probes = rademacher_probes(6, 3)
    for k in (1, 10):
        ours, theirs = _quartic_case(
            "Liuhong99/Sophia.SophiaH",
            lambda p, x: lib_sophia_h_official(p, x, probes, lr=0.05, b1=0.9, b2=0.99, gamma=10.0,
                                               weight_decay=1e-2, k=k, steps=3),
            steps=3, probes=probes, prob=prob, lr=0.05, k=k)
        assert_same(ours, theirs)


def _adahessian_case(profile, seed, average_rows, weight_decays):
    """The two official AdaHessian codes differ only in the averaging of a weight's |Hz| (``average_rows``)."""
    probes = rademacher_probes(seed, 2)
    for wd in weight_decays:
        ours, theirs = _quartic_case(
            profile,
            lambda p, x: lib_adahessian(p, x, probes, 0.15, 0.9, 0.999, 1e-4, weight_decay=wd,
                                        average_rows=average_rows),
            probes=probes, weight_decay=wd)
        assert_same(ours, theirs)


def case_adahessian_instruction():
    _adahessian_case("amirgholami/adahessian", 7, average_rows=True, weight_decays=(0.0, 0.05))


def case_adahessian_image_classification():
    _adahessian_case("amirgholami/adahessian+image_classification", 8, average_rows=False, weight_decays=(0.05,))


def case_google_shampoo():
    # start_preconditioning_step s ↔ start_step s + 1; matrix_epsilon is both the initial statistic and the
    # ridge (× λ_max with relative_matrix_epsilon, the default). beta1 > 0 only with s = 0 (the graft-phase
    # momentum buffer is separate; see gaps). ε = 0.05 makes the relative ridge matter at 1e-12.
    for merge, start, beta1, relative in ((True, 1, 0.0, False), (False, 1, 0.0, True), (False, 0, 0.0, True),
                                         (True, 0, 0.9, True), (False, 0, 0.5, False)):
        ours, theirs = _quartic_case(
            "google-research/scalable_shampoo",
            lambda p, x: lib_google_shampoo(p, x, 0.1, 0.999, 0.05, start, merge=merge, relative=relative,
                                            beta1=beta1, nesterov=True, steps=3),
            steps=3, lr=0.1, momentum=beta1, nesterov=beta1 > 0, eps=0.05, initial_accumulator=0.05,
            start_step=start + 1, merge_dims=4096 if merge else None,
            eps_mode="relative" if relative else "add")
        assert_same(ours, theirs)


def case_po_sophia_h():
    # the nonconvex quartic gives negative z⊙Hz (h clamped at eps); p = 0.3 leaves part of the coordinates unclipped
    prob = Quartic(eigenvalues=(-1.0, 1.5), alpha=0.5)
    for k, dist in ((1, "rademacher"), (2, "gaussian")):
        g = np.random.default_rng(8)
        probes = [g.standard_normal(15) if dist == "gaussian" else g.choice([-1.0, 1.0], size=15) for _ in range(3)]
        lib = dict(lr=0.05, b1=0.9, b2=0.95, p=0.3, eps=1e-10, weight_decay=1e-2, update_period=k)
        ours, theirs = _quartic_case("pytorch_optimizer.SophiaH", lambda pr, x: lib_po_sophia_h(pr, x, probes, **lib),
                                     steps=3, probes=probes, prob=prob, beta1=0.9, beta2=0.95, k=k,
                                     probe_distribution=dist, lr=0.05 * 0.3, gamma=0.3, eps=0.3 * 1e-10,
                                     weight_decay=1e-2 / 0.3)
        assert_same(ours, theirs)


def case_po_adahessian():
    prob = Quartic(eigenvalues=(-1.0, 1.5), alpha=0.5)
    probes = rademacher_probes(9, 3)
    ours, theirs = _quartic_case("pytorch_optimizer.AdaHessian",
                                 lambda p, x: lib_po_adahessian(p, x, probes, 0.05, 0.8, 0.99, 1e-6, 0.7, 1e-2),
                                 steps=3, probes=probes, prob=prob, lr=0.05, beta1=0.8, beta2=0.99, eps=1e-6,
                                 hessian_power=0.7, weight_decay=1e-2)
    assert_same(ours, theirs)


def case_po_shampoo():
    for kw in (dict(momentum=0.0, weight_decay=0.0), dict(momentum=0.5, weight_decay=1e-2),
               dict(momentum=0.5, weight_decay=1e-2, weight_decouple=True)):
        ours, theirs = _quartic_case(
            "pytorch_optimizer.Shampoo", lambda p, x: lib_po_shampoo(p, x, 0.1, matrix_eps=1e-2, **kw), steps=3,
            lr=0.1, initial_accumulator=1e-2, momentum=kw["momentum"], weight_decay=kw["weight_decay"],
            weight_decay_mode="decoupled" if kw.get("weight_decouple") else "l2")
        assert_same(ours, theirs)


def case_meta_shampoo():
    cases = [dict(merge=True), dict(merge=False), dict(merge=False, grafting_epsilon=1e-3, momentum=0.5),
             dict(merge=False, inv_root_override=2),
             dict(merge=False, grafting_epsilon=1e-3, precondition_frequency=2, start_preconditioning_step=2),
             dict(merge=False, beta2=0.9), dict(merge=True, beta2=0.5, precondition_frequency=2,
                                                  start_preconditioning_step=2, grafting_epsilon=1e-3),
             dict(merge=False, beta1=0.0), dict(merge=True, beta1=0.5, grafting_epsilon=1e-3, momentum=0.5),
             dict(merge=False, momentum=0.5, nesterov=True)]
    for c in cases:
        overrides = dict(lr=0.1, eps=1e-4, merge_dims=1024 if c["merge"] else None)
        if "beta1" in c:
            overrides.update(filter_beta=c["beta1"])
        if c.get("nesterov"):
            overrides.update(momentum=c["momentum"], nesterov=True)
        if "beta2" in c:
            overrides.update(statistics="ema_debiased", beta2=c["beta2"])
        if "grafting_epsilon" in c:
            overrides.update(grafting="adagrad", graft_eps=c["grafting_epsilon"], momentum=c.get("momentum", 0.0))
        if "inv_root_override" in c:
            overrides.update(exponent=-1.0 / c["inv_root_override"])
        if "precondition_frequency" in c:   # roots at steps 2, 4, …; step 1 is an AdaGrad step; step 3 reuses
            overrides.update(precondition_interval=c["precondition_frequency"],
                             start_step=c["start_preconditioning_step"])
        ours, theirs = _quartic_case("facebookresearch/distributed_shampoo",
                                     lambda p, x: lib_meta_shampoo(p, x, 0.1, 1e-4, steps=3, **c), steps=3,
                                     **overrides)
        assert_same(ours, theirs)


def _net_run(profile, B, **overrides):
    X, y, params, oracle, labels = net_problem(B)
    prof = get_profile(profile)
    draws = labels if {**prof.hyperparameters, **overrides}.get("fisher") == "mc" else None
    ours = np.stack([_net_flat(_net_leaves(p)) for p in run(profile, oracle, params, 2, draws, **overrides)])
    return ours, X, y, _net_leaves(params), labels


def case_kfac_jax():
    for period, momentum in ((5, 0.0), (1, 0.9)):
        ours, X, y, Ws, labels = _net_run("google-deepmind/kfac-jax", 5, lr=0.3, damping=1e-2, fisher="mc",
                                          burnin=0, inverse_interval=period, momentum=momentum)
        theirs = lib_kfac_jax(Ws, X, y, labels, lr=0.3, momentum=momentum, damping=1e-2, ema=0.95,
                              inverse_update_period=period)
        assert_same(ours, np.stack(theirs))


def case_tensorflow_kfac():
    ours, X, y, Ws, labels = _net_run("tensorflow/kfac", 5, lr=0.3, damping=1e-2)
    theirs = lib_kfac_jax(Ws, X, y, labels, lr=0.3, momentum=0.9, damping=1e-2, ema=0.95,
                          inverse_update_period=10, pi="tracenorm", momentum_style="tf")
    assert_same(ours, np.stack(theirs))


def case_kfac_pytorch():
    # B = 5: G = (1/B) Σ g gᵀ of the mean loss's output gradients; kl_clip 1 leaves part of the steps unclipped
    for B, kl_clip in ((1, 1e-3), (5, 1e-3), (5, 1.0)):
        ours, X, y, Ws, _ = _net_run("gpauloski/kfac-pytorch", B, kl_clip=kl_clip)
        theirs = lib_kfac_pytorch(Ws, X, y, lr=0.1, damping=1e-3, factor_decay=0.95, kl_clip=kl_clip, momentum=0.9)
        assert_same(ours, np.stack(theirs))


def case_curvlinops():
    for separate in (True, False):
        ours, X, y, Ws, labels = _net_run("f-dangel/curvlinops", 5, lr=0.5, damping=1e-2 ** 2,
                                          bias_block="separate" if separate else "joint")
        theirs = lib_curvlinops(Ws, X, y, labels, damping=1e-2, lr=0.5, separate_weight_and_bias=separate)
        assert_same(ours, np.stack(theirs))


def _cnn_reduce_transcription(W1, b1, W2, b2, X, y, labels, damping, lr, steps=2):
    """curvlinops KFACLinearOperator(kfac_approx='reduce', fisher_type='mc', separate_weight_and_bias=True) then
    inverse(damping) on the CNN Conv2d(1, 2, 3) → tanh → Flatten → Linear(8, 3), written out: patches by loops,
    P[n, l, (c, i, j)], l = (y, x) row-major; A = (1/N) Σ_n p̄ p̄ᵀ with p̄ the patches' mean over the L = 4
    locations; G = N·Σ_n (Σ_l g)(Σ_l g)ᵀ of the mean loss's output gradients at the sampled labels
    (compute_loss_correction: B²/N); the bias block G alone; the dense layer as in lib_curvlinops."""
    N, C = X.shape[0], W2.shape[1]
    P = np.zeros((N, 4, 9))
    for yy in range(2):
        for xx in range(2):
            for i in range(3):
                for j in range(3):
                    P[:, yy * 2 + xx, i * 3 + j] = X[:, 0, yy + i, xx + j]
    out = [np.concatenate([W1.ravel(), b1, W2.ravel(), b2])]
    for t in range(steps):
        Wbar = W1.reshape(2, 9).T                                   # (K, O)
        s1 = P @ Wbar + b1                                          # (N, L, O)
        a1 = np.tanh(s1)
        a1f = a1.transpose(0, 2, 1).reshape(N, 8)                   # NCHW flattened: index o·L + l
        z = a1f @ W2 + b2
        prob = np.exp(z - z.max(1, keepdims=True))
        prob /= prob.sum(1, keepdims=True)

        def backward(targets):
            dz = (prob - np.eye(C)[targets]) / N                    # the mean loss's output gradient
            g1 = ((dz @ W2.T).reshape(N, 2, 4).transpose(0, 2, 1)) * (1 - a1 ** 2)   # (N, L, O)
            return dz, g1
        dz, g1 = backward(y)
        grads = (np.einsum("nlk,nlo->ko", P, g1), g1.sum((0, 1)), a1f.T @ dz, dz.sum(0))
        mz, mg1 = backward(labels[t][0])
        pbar = P.mean(1)
        A1, G1 = pbar.T @ pbar / N, mg1.sum(1).T @ mg1.sum(1) * N
        A2, G2 = a1f.T @ a1f / N, mz.T @ mz * N
        inv = lambda M: np.linalg.inv(M + damping * np.eye(len(M)))  # noqa: E731
        Wbar = Wbar - lr * inv(A1) @ grads[0] @ inv(G1)
        b1 = b1 - lr * grads[1] @ inv(G1)
        W2 = W2 - lr * inv(A2) @ grads[2] @ inv(G2)
        b2 = b2 - lr * grads[3] @ inv(G2)
        W1 = Wbar.T.reshape(2, 1, 3, 3)
        out.append(np.concatenate([W1.ravel(), b1, W2.ravel(), b2]))
    return out


def case_curvlinops_reduce():
    from refopt.nn.conv import CNN, Conv2d, Dense, Flatten
    from refopt.problems.registry import network_oracle
    # on a dense network reduce is expand: the f-dangel/curvlinops transcription
    ours, X, y, Ws, labels = _net_run("f-dangel/curvlinops+reduce", 5, lr=0.5, damping=1e-2 ** 2)
    assert_same(ours, np.stack(lib_curvlinops(Ws, X, y, labels, damping=1e-2, lr=0.5)))
    # on a conv layer with L = 4 locations, the reduce transcription
    model = CNN((1, 4, 4), [Conv2d(1, 2, 3), "tanh", Flatten(), Dense(8, 3)])
    g = np.random.default_rng(3)
    X, y = g.standard_normal((5, 1, 4, 4)), g.integers(0, 3, 5)
    labels = [g.integers(0, 3, (1, 5)) for _ in range(2)]
    params = [{"W": g.standard_normal((2, 1, 3, 3)) * 0.5, "b": g.standard_normal(2) * 0.1},
              {"W": g.standard_normal((8, 3)) * 0.5, "b": g.standard_normal(3) * 0.1}]
    oracle = network_oracle(model, make_loss("softmax_cross_entropy", reduction="mean"), X.reshape(5, 16), y)
    seq = run("f-dangel/curvlinops+reduce", oracle, params, 2, labels, lr=0.5, damping=1e-2 ** 2)
    ours = np.stack([np.concatenate([p[0]["W"].ravel(), p[0]["b"], p[1]["W"].ravel(), p[1]["b"]]) for p in seq])
    theirs = _cnn_reduce_transcription(params[0]["W"], params[0]["b"], params[1]["W"], params[1]["b"], X, y,
                                       labels, damping=1e-2, lr=0.5)
    assert_same(ours, np.stack(theirs))
    # and the profile's reduce is what makes it: expand moves the conv layer otherwise
    seq = run("f-dangel/curvlinops", oracle, params, 2, labels, lr=0.5, damping=1e-2 ** 2)
    assert np.max(np.abs(seq[1][0]["W"] - theirs[1][:18].reshape(2, 1, 3, 3))) > 1e-3


CASES = {
    "torch.optim.SGD": case_torch_sgd,
    "optax.sgd": case_optax_sgd,
    "torch.optim.Adam": case_torch_adam,
    "torch.optim.AdamW": case_torch_adamw,
    "optax.adam": case_optax_adam,
    "optax.adamw": case_optax_adamw,
    "torch.optim.Adagrad": case_torch_adagrad,
    "optax.adagrad": case_optax_adagrad,
    "torch.optim.LBFGS": case_torch_lbfgs,
    "torch.optim.LBFGS+strong_wolfe": case_torch_lbfgs_strong_wolfe,
    "optax.lbfgs": case_optax_lbfgs,
    "optax.lbfgs+no_linesearch": case_optax_lbfgs_no_linesearch,
    "scipy.optimize.fmin_bfgs": case_scipy_bfgs,
    "scipy.optimize.fmin_l_bfgs_b": case_scipy_lbfgsb,
    "optax.contrib.sophia": case_optax_sophia,
    "Liuhong99/Sophia.SophiaG": case_sophia_g_official,
    "Liuhong99/Sophia.SophiaH": case_sophia_h_official,
    "amirgholami/adahessian": case_adahessian_instruction,
    "amirgholami/adahessian+image_classification": case_adahessian_image_classification,
    "google-research/scalable_shampoo": case_google_shampoo,
    "facebookresearch/distributed_shampoo": case_meta_shampoo,
    "pytorch_optimizer.SophiaH": case_po_sophia_h,
    "pytorch_optimizer.AdaHessian": case_po_adahessian,
    "pytorch_optimizer.Shampoo": case_po_shampoo,
    "google-deepmind/kfac-jax": case_kfac_jax,
    "gpauloski/kfac-pytorch": case_kfac_pytorch,
    "f-dangel/curvlinops": case_curvlinops,
    "f-dangel/curvlinops+reduce": case_curvlinops_reduce,
    "tensorflow/kfac": case_tensorflow_kfac,
}


def test_every_profile_has_a_two_step_case():
    assert set(CASES) == set(PROFILES)


@pytest.mark.parametrize("name", sorted(CASES))
def test_profile_reproduces_its_library(name):
    CASES[name]()


# --- the documented gaps are real, and are the only difference -----------------------------------------------
def test_optax_lbfgs_keeps_negative_curvature_pairs():
    """With sᵀy < 0 in the first pair, refopt's default skip-and-reset differs from optax; the profile's
    curvature_skip_rule='never' and descent_check='none' are both needed."""
    prob = Quartic(seed=4, alpha=0.5, grad0_l1=3.0, eigenvalues=(-1.0, 1.5))
    theirs = np.stack(lib_optax_lbfgs(prob, prob.x0.copy(), linesearch=False, steps=4))
    for flip in (dict(curvature_skip_rule="relative"), dict(descent_check="reset")):
        ours = np.stack(run("optax.lbfgs+no_linesearch", vector_oracle(prob), prob.x0.copy(), 4, **flip))
        assert_differ(ours, theirs)


def test_torch_lbfgs_first_step_uses_the_l1_norm():
    """With ‖g₀‖₂ < 1 < ‖g₀‖₁ torch scales the first step by 1/‖g₀‖₁: the profile does, and refopt's default
    first step (unit length) would not."""
    prob = Quartic(grad0_l1=2.0)
    assert np.linalg.norm(prob.grad(prob.x0)) < 1.0
    ours = np.stack(run("torch.optim.LBFGS", vector_oracle(prob), prob.x0.copy(), 1))
    default = np.stack(run("torch.optim.LBFGS", vector_oracle(prob), prob.x0.copy(), 1, first_step="unit_length"))
    theirs = np.stack(lib_torch_lbfgs(prob, prob.x0.copy(), steps=1))
    assert_same(ours, theirs)
    np.testing.assert_allclose(theirs[1] - theirs[0], (default[1] - default[0]) / 2.0, rtol=1e-12)


def test_scipy_bfgs_first_trial_is_1_01_over_the_gradient_norm():
    """From ‖g₀‖ > 1 scipy's first trial is 1.01/‖g₀‖ (the profile), not the unit-length 1/‖g₀‖."""
    prob = Quartic(grad0_l1=8.0)
    g0 = prob.grad(prob.x0)
    assert np.linalg.norm(g0) > 1.0
    ours = np.stack(run("scipy.optimize.fmin_bfgs", vector_oracle(prob), prob.x0.copy(), 3))
    assert_same(ours, np.stack(lib_scipy_bfgs(prob, prob.x0.copy(), steps=3)))
    np.testing.assert_allclose(ours[1] - ours[0], -1.01 / np.linalg.norm(g0) * g0, rtol=1e-12)


def test_scipy_bfgs_against_scipy_itself():
    """scipy's own minimize(method='BFGS') gives the profile's iterates (skipped without scipy, which is
    only an optional dependency of refopt)."""
    minimize = pytest.importorskip("scipy.optimize").minimize
    for grad0_l1 in (0.8, 8.0):
        prob = Quartic(grad0_l1=grad0_l1)
        xs = []
        minimize(prob.f, prob.x0.copy(), jac=prob.grad, method="BFGS", options={"maxiter": 3, "gtol": 0.0},
                 callback=lambda intermediate_result: xs.append(intermediate_result.x.copy()))
        ours = np.stack(run("scipy.optimize.fmin_bfgs", vector_oracle(prob), prob.x0.copy(), 3))
        assert_same(ours[1:], np.stack(xs[:3]), rtol=1e-10)


# --- the scipy profiles follow scipy for 30+ iterations of nonconvex problems whose first trials fail -------
class _Scaled:
    """``prob`` with f and ∇f multiplied by ``factor`` (‖g₀‖ < 1: L-BFGS-B's uncapped first step 1/‖g₀‖)."""

    def __init__(self, prob, factor):
        self.f = lambda x: factor * prob.f(x)
        self.grad = lambda x: factor * prob.grad(x)
        self.x0 = prob.x0


def _scipy_problems(names):
    from refopt.problems.functions import make_problem
    out = {n: make_problem(n, **kw) for n, kw in names}
    if "rosenbrock" in out:
        out["rosenbrock×1e-4"] = _Scaled(out["rosenbrock"], 1e-4)
    return out


def _follow(profile, prob, method, steps, **overrides):
    """(max relative difference ‖x_k − x_k^scipy‖ / ‖x_k^scipy‖ over the run, iterations, backtracking steps)."""
    theirs = _scipy_iterates(prob, method, steps)
    opt = make_optimizer(get_profile(profile).optimizer, **{**get_profile(profile).hyperparameters, **overrides})
    oracle, x = vector_oracle(prob), np.array(prob.x0, dtype=float)
    state, worst, backtracks = opt.init(x), 0.0, 0
    for target in theirs:
        x, state, info = opt.update(x, state, oracle)
        backtracks += info["nfev"] > 1
        worst = max(worst, np.linalg.norm(x - target) / np.linalg.norm(target))
    return worst, len(theirs), backtracks


# Measured on this machine (OpenBLAS), max over the run of ‖Δx_k‖/‖x_k‖: BFGS 7.5e-9 (Rosenbrock, 36
# iterations to its minimum), 6.1e-10 (Wood, 40), 7.7e-11 (Powell, 40), 8e-15 (Dixon-Price n=10, 30); L-BFGS-B
# (30 iterations) 7.8e-11 (Rosenbrock), 4.0e-12 (extended Rosenbrock n=10), 4.0e-9 (Wood), 1.7e-13 (Powell),
# 1.3e-15 (Dixon-Price), 8.3e-10 (Rosenbrock×1e-4). The differences start at 1e-16 from the first update (another
# order of operations) and grow as scipy's own run does from a 1-ulp change of x₀ (2e-10 on Rosenbrock). BFGS on
# extended Rosenbrock n=10 is not tested: there scipy's own run turns a 1-ulp change of x₀ into 2e-1 by iteration 7.
SCIPY_FOLLOW_RTOL = 1e-7


@pytest.mark.parametrize("name", ["rosenbrock", "wood", "powell_singular", "dixon_price"])
def test_scipy_bfgs_profile_follows_scipy_for_30_iterations(name):
    prob = _scipy_problems([(name, {"n": 10} if name == "dixon_price" else {})])[name]
    worst, iterations, backtracks = _follow("scipy.optimize.fmin_bfgs", prob, "BFGS", 40)
    assert iterations >= 30 and backtracks >= 2, (iterations, backtracks)
    assert worst <= SCIPY_FOLLOW_RTOL, worst


def test_scipy_bfgs_profile_needs_its_line_search():
    """With refopt's N&W zoom in place of scipy's dcsrch → wolfe2 the run parts from scipy's (the issue: at
    the first iteration whose first trial fails)."""
    prob = _scipy_problems([("rosenbrock", {})])["rosenbrock"]
    worst, _, _ = _follow("scipy.optimize.fmin_bfgs", prob, "BFGS", 36, line_search="strong_wolfe")
    assert worst > 1e-2


@pytest.mark.parametrize("name", ["rosenbrock", "extended_rosenbrock", "wood", "powell_singular", "dixon_price",
                                  "rosenbrock×1e-4"])
def test_scipy_lbfgsb_profile_follows_scipy_for_30_iterations(name):
    base = {"extended_rosenbrock": {"n": 10}, "dixon_price": {"n": 10}}
    key = name.split("×")[0]
    prob = _scipy_problems([(key, base.get(key, {}))])[name]
    worst, iterations, backtracks = _follow("scipy.optimize.fmin_l_bfgs_b", prob, "L-BFGS-B", 30)
    assert iterations == 30 and backtracks >= 1, (iterations, backtracks)
    assert worst <= SCIPY_FOLLOW_RTOL, worst


def test_scipy_lbfgsb_profile_needs_its_settings():
    """refopt's strong Wolfe search, or a capped first step, parts from L-BFGS-B."""
    probs = _scipy_problems([("rosenbrock", {})])
    assert _follow("scipy.optimize.fmin_l_bfgs_b", probs["rosenbrock"], "L-BFGS-B", 30,
                   line_search="strong_wolfe")[0] > 1e-3
    assert _follow("scipy.optimize.fmin_l_bfgs_b", probs["rosenbrock×1e-4"], "L-BFGS-B", 30,
                   first_step="unit_length")[0] > 1e-3


def test_optax_sophia_lag_is_needed():
    """On a non-constant Hessian optax estimates at θ_t and first uses the estimate at step t + 1: refresh
    'after' (estimate at θ_{t+1}) and 'before' (used at once) both differ from it."""
    prob = Quartic(alpha=0.5)
    probes = rademacher_probes(9, 3)
    kw = dict(lr=0.05, b1=0.965, b2=0.99, eps=1e-8, gamma=1.0, weight_decay=1e-4, steps=3)
    theirs = np.stack(lib_optax_sophia(prob, prob.x0.copy(), probes, **kw))
    ours = {refresh: flat_all(run("optax.contrib.sophia", tree_oracle(prob), to_tree(prob.x0), 3,
                                  _probe_draws(probes), lr=0.05, gamma=1.0, k=1, refresh=refresh))
            for refresh in ("after", "before")}
    for refresh in ours:
        assert_differ(ours[refresh], theirs)
    # and the estimate's point is the only difference of "after"
    assert_same(ours["after"], np.stack(lib_optax_sophia(prob, prob.x0.copy(), probes, estimate_at="updated", **kw)))


def test_kfac_pytorch_g_normalisation_is_reduced_loss():
    """For B > 1 kfac-pytorch's G is refopt's per-example G × scale/B (= 1/B² here): the default
    output_grad_scale differs from the library, and equals the library's rule with each new G × B²."""
    ours, X, y, Ws, _ = _net_run("gpauloski/kfac-pytorch", 5, output_grad_scale="per_example")
    kw = dict(lr=0.1, damping=1e-3, factor_decay=0.95, kl_clip=1e-3, momentum=0.9)
    assert_differ(ours, np.stack(lib_kfac_pytorch(Ws, X, y, **kw)))
    assert_same(ours, np.stack(lib_kfac_pytorch(Ws, X, y, g_rescale=25.0, **kw)))


def test_curvlinops_separate_blocks_differ_from_joint():
    """curvlinops' default separate weight/bias blocks are not the joint [W; b] block."""
    ours, X, y, Ws, labels = _net_run("f-dangel/curvlinops", 5, lr=0.5, damping=1e-2 ** 2, bias_block="joint")
    assert_differ(ours, np.stack(lib_curvlinops(Ws, X, y, labels, damping=1e-2, lr=0.5)))


def test_google_shampoo_conventions_are_needed():
    """relative_matrix_epsilon (ε·λ_max) is not the absolute ε, Nesterov is not heavy ball, and with a graft
    phase (start_preconditioning_step > 0) and β₁ > 0 the library's separate buffers differ from refopt's one
    (the documented gap)."""
    prob = Quartic()
    base = dict(steps=3, lr=0.1, eps=0.05, initial_accumulator=0.05, start_step=1, merge_dims=4096)
    lib = lambda **kw: np.stack(lib_google_shampoo(prob, prob.x0.copy(), 0.1, 0.999, 0.05,  # noqa: E731
                                                   kw.pop("start", 0), steps=3, **kw))
    ours = flat_all(run("google-research/scalable_shampoo", tree_oracle(prob), to_tree(prob.x0), 3,
                        **{k: v for k, v in base.items() if k != "steps"}, momentum=0.9, nesterov=True,
                        eps_mode="add"))
    assert_differ(ours, lib(relative=True, beta1=0.9, nesterov=True), rtol=1e-7)   # grafting hides most of it
    assert_same(ours, lib(relative=False, beta1=0.9, nesterov=True))
    assert_differ(ours, lib(relative=False, beta1=0.9, nesterov=False))
    # (with a one-step graft phase the two agree: the first statistics are rank one, so P(G₁) ∥ G₁)
    ours = flat_all(run("google-research/scalable_shampoo", tree_oracle(prob), to_tree(prob.x0), 4, lr=0.1, eps=1e-4,
                        initial_accumulator=1e-4, start_step=3, merge_dims=4096, momentum=0.9, nesterov=True))
    theirs = np.stack(lib_google_shampoo(prob, prob.x0.copy(), 0.1, 0.999, 1e-4, 2, steps=4, relative=True,
                                         beta1=0.9, nesterov=True))
    assert_same(ours[:3], theirs[:3])          # the graft phase agrees; the Shampoo phase does not
    assert_differ(ours, theirs)


# --- the table ------------------------------------------------------------------------------------------
def test_conventions_table_lists_every_profile():
    table = conventions_table()
    lines = table.splitlines()
    assert lines[0].startswith("| library | refopt |") and len(lines) == 2 + len(PROFILES)
    for name, p in PROFILES.items():
        row = [line for line in lines if line.startswith(f"| {name} |")]
        assert len(row) == 1, name
        assert row[0].count("|") == 7, f"{name}: a cell contains '|'"
        assert f"`{p.optimizer}`" in row[0] and p.source in row[0]


def test_profiles_are_complete_and_valid():
    for name, p in PROFILES.items():
        assert isinstance(p, Profile) and p.library == name
        assert p.differs and p.source and "/" in p.source, name   # source names a repository and a file
        assert " " not in name and "|" not in name
        make_optimizer(p.optimizer, **p.hyperparameters)         # valid refopt settings


def test_unknown_profile_names_the_choices():
    with pytest.raises(ValueError, match="torch.optim.Adam"):
        get_profile("torch.optim.Adamax")


# --- against the real code: torch.optim.SGD and pytorch_optimizer (skipped without torch) -------------------
# Both sides run 40 steps on the same tanh network, data and labels, each computing its own gradients at its own
# iterate (torch by autograd); the Hutchinson probes that refopt draws are handed to pytorch_optimizer's own
# estimator (compute_hutchinson_hessian) by standing in for torch.randn_like / torch.randint_like, so the
# library's refresh schedule is exercised, not refopt's. The bound is rounding growth: measured max relative
# differences are in the docstrings.
TORCH_STEPS = 40


def _torch_problem(seed):
    g = np.random.default_rng(seed)
    sizes = (5, 8, 4)
    X = g.standard_normal((16, sizes[0]))
    y = g.integers(0, sizes[-1], size=16)
    model = MLP(list(sizes), activation="tanh")
    return model.init(seed), Oracle(model, make_loss("softmax_cross_entropy", reduction="mean"), X, y), X, y


def _refopt_run(profile, oracle, params, **overrides):
    """refopt under ``profile`` (+ overrides): the flat parameters after each step and the draws each step used."""
    prof = get_profile(profile)
    opt = make_optimizer(prof.optimizer, **{**prof.hyperparameters, **overrides})
    state, seq, draws = opt.init(params), [], []
    for _ in range(TORCH_STEPS):
        params, state, info = opt.update(params, state, oracle)
        assert not info["skipped"], info["message"]
        seq.append([np.array(leaf) for layer in params for leaf in (layer["W"], layer["b"])])
        draws.append(info.get("draws"))
    return seq, draws


def _torch_run(torch, monkeypatch, make_opt, params, X, y, draws=None):
    """The real optimizer ``make_opt(tensors)`` on the same network: the leaves after each step. ``draws`` (refopt's
    probes per step, or None) replace the library's random probes, leaf by leaf in parameter order."""
    ps = [torch.tensor(np.array(leaf), dtype=torch.float64, requires_grad=True)
          for layer in params for leaf in (layer["W"], layer["b"])]
    Xt, yt = torch.tensor(X), torch.tensor(y)
    opt = make_opt(ps)
    queue = []

    def next_probe(p, *args, **kwargs):
        assert queue, "the library drew probes on a step where refopt did not refresh"
        return torch.tensor(queue.pop(0), dtype=p.dtype)

    monkeypatch.setattr(torch, "randn_like", next_probe)
    monkeypatch.setattr(torch, "randint_like", lambda p, lo, hi: (next_probe(p) + 1.0) / 2.0)  # ·2 − 1 gives z
    seq = []
    for t in range(TORCH_STEPS):
        opt.zero_grad()
        a = Xt
        for l in range(0, len(ps), 2):
            s = a @ ps[l] + ps[l + 1]
            a = torch.tanh(s) if l < len(ps) - 2 else s
        torch.nn.functional.cross_entropy(s, yt).backward(create_graph=draws is not None)
        if draws is not None and draws[t] is not None:
            queue.extend(np.array(leaf) for z in draws[t] for layer in z for leaf in (layer["W"], layer["b"]))
        opt.step()
        assert not queue, "the library drew fewer probes than refopt"
        seq.append([p.detach().numpy().copy() for p in ps])
    return seq


def _max_relative_difference(ours, theirs):
    return max(float(np.max(np.abs(a - b)) / np.max(np.abs(a))) for sa, sb in zip(ours, theirs)
               for a, b in zip(sa, sb))


@pytest.mark.parametrize("seed", [0, 1])
def test_torch_sgd_dampening_against_torch(seed, monkeypatch):
    """torch.optim.SGD with dampening (and with Nesterov, dampening 0): measured ≤ 1e-15 (9.0e-16) over 40 steps."""
    torch = pytest.importorskip("torch")
    params, oracle, X, y = _torch_problem(seed)
    for kw in (dict(lr=0.2, momentum=0.8, dampening=0.3, weight_decay=1e-3),
               dict(lr=0.2, momentum=0.7, dampening=1.0), dict(lr=0.1, momentum=0.9, nesterov=True)):
        ours, _ = _refopt_run("torch.optim.SGD", oracle, params, **kw)
        theirs = _torch_run(torch, monkeypatch, lambda ps: torch.optim.SGD(ps, **kw), params, X, y)
        assert _max_relative_difference(ours, theirs) < 1e-12, kw


def _sophia_h_mapping(lr, p, eps, weight_decay):
    """pytorch_optimizer SophiaH's (lr, p, eps, weight_decay) as refopt's (the profile's differs)."""
    return dict(lr=lr * p, gamma=p, eps=p * eps, weight_decay=weight_decay / p)


@pytest.mark.parametrize("distribution", ["gaussian", "rademacher"])
def test_pytorch_optimizer_sophia_h_against_the_library(distribution, monkeypatch):
    """pytorch_optimizer.SophiaH (update_period 3, p = 0.5 leaving part of the coordinates unclipped):
    measured ≤ 2e-15 over 40 steps."""
    torch = pytest.importorskip("torch")
    po = pytest.importorskip("pytorch_optimizer")
    params, oracle, X, y = _torch_problem(2)
    lib = dict(lr=0.05, betas=(0.9, 0.95), weight_decay=1e-2, p=0.5, update_period=3, eps=1e-10,
               hessian_distribution=distribution)
    ours, draws = _refopt_run("pytorch_optimizer.SophiaH", oracle, params, beta1=0.9, beta2=0.95, k=3,
                              probe_distribution=distribution, **_sophia_h_mapping(0.05, 0.5, 1e-10, 1e-2))
    theirs = _torch_run(torch, monkeypatch, lambda ps: po.SophiaH(ps, **lib), params, X, y, draws)
    assert _max_relative_difference(ours, theirs) < 1e-12


def test_pytorch_optimizer_adahessian_against_the_library(monkeypatch):
    """pytorch_optimizer.AdaHessian (two probes, hessian_power 0.7, decoupled decay): measured ≤ 2e-14
    (1.1e-14) over 40 steps."""
    torch = pytest.importorskip("torch")
    po = pytest.importorskip("pytorch_optimizer")
    params, oracle, X, y = _torch_problem(3)
    ours, draws = _refopt_run("pytorch_optimizer.AdaHessian", oracle, params, lr=0.05, beta1=0.8, beta2=0.99,
                              eps=1e-6, hessian_power=0.7, weight_decay=1e-2, probes=2)
    lib = dict(lr=0.05, betas=(0.8, 0.99), eps=1e-6, hessian_power=0.7, weight_decay=1e-2, num_samples=2)
    theirs = _torch_run(torch, monkeypatch, lambda ps: po.AdaHessian(ps, **lib), params, X, y, draws)
    assert _max_relative_difference(ours, theirs) < 1e-12


@pytest.mark.parametrize("decouple,momentum,matrix_eps", [(False, 0.5, 0.5), (True, 0.5, 0.5), (False, 0.0, 1e-3)])
def test_pytorch_optimizer_shampoo_against_the_library(decouple, momentum, matrix_eps, monkeypatch):
    """pytorch_optimizer.Shampoo with momentum (blended into the gradient as the previous update), weight decay
    and SVD roots: measured ≤ 3e-15 over 40 steps (1.4e-14 without
    momentum at matrix_eps 1e-3). Its momentum multiplies a component the gradients do not
    reach by μ/√matrix_eps per step (a matrix: ε^{-1/4} from each side), so with matrix_eps < μ² rounding grows
    exponentially and two runs of the library itself from points 1 ulp apart part ways (μ = 0.6, ε = 1e-3:
    rel. diff 0.7 after 40 steps); hence ε ≥ μ² with momentum here."""
    torch = pytest.importorskip("torch")
    po = pytest.importorskip("pytorch_optimizer")
    params, oracle, X, y = _torch_problem(4)
    ours, _ = _refopt_run("pytorch_optimizer.Shampoo", oracle, params, lr=0.05, momentum=momentum, weight_decay=1e-3,
                          initial_accumulator=matrix_eps, weight_decay_mode="decoupled" if decouple else "l2")
    lib = dict(lr=0.05, momentum=momentum, weight_decay=1e-3, matrix_eps=matrix_eps, weight_decouple=decouple)
    theirs = _torch_run(torch, monkeypatch, lambda ps: po.Shampoo(ps, **lib), params, X, y)
    assert _max_relative_difference(ours, theirs) < 1e-12


def _optax_lbfgs_problems(jax, jnp):
    """Rosenbrock (2-D), Wood, extended Rosenbrock n = 10 and a 3-6-3 tanh MLP (softmax cross-entropy on 24
    seeded points, a flat vector of 45 parameters), as JAX functions, with their starting points."""
    def rosen(x):
        return jnp.sum(100.0 * (x[1::2] - x[::2] ** 2) ** 2 + (1.0 - x[::2]) ** 2)

    def wood(x):
        a, b, c, d = x
        return (100 * (b - a * a) ** 2 + (1 - a) ** 2 + 90 * (d - c * c) ** 2 + (1 - c) ** 2
                + 10.1 * ((b - 1) ** 2 + (d - 1) ** 2) + 19.8 * (b - 1) * (d - 1))
    rng = np.random.default_rng(0)
    X, y = jnp.asarray(rng.normal(size=(24, 3))), jnp.asarray(rng.integers(0, 3, size=24))

    def mlp(t):
        z = jnp.tanh(X @ t[:18].reshape(3, 6) + t[18:24]) @ t[24:42].reshape(6, 3) + t[42:45]
        return jnp.mean(jax.nn.logsumexp(z, axis=1) - z[jnp.arange(24), y])
    start = np.random.default_rng(1).normal(size=45) * 0.5   # (function, start, memory, bound on the rel. diff)
    return {"rosenbrock": (rosen, np.array([-1.2, 1.0]), 10, 1e-7),
            "wood": (wood, np.array([-3.0, -1.0, -3.0, -1.0]), 10, 1e-9),
            "extended_rosenbrock_10": (rosen, np.tile([-1.2, 1.0], 5), 10, 1e-7), "tiny_mlp": (mlp, start, 3, 1e-10)}


@pytest.mark.parametrize("problem", ["rosenbrock", "wood", "extended_rosenbrock_10", "tiny_mlp"])
def test_optax_lbfgs_against_the_library(problem):
    """The optax.lbfgs profile (line_search='optax_zoom') against optax.lbfgs() itself (jax_enable_x64), 40
    iterations from the classical starts (memory 10; 3 for the MLP), both fed the same JAX value and gradient,
    on problems where the unit step fails at several iterations (asserted): max rel. diff of the iterates
    measured 6.8e-9 (Rosenbrock), 2.1e-10 (Wood), 5.5e-9 (extended Rosenbrock), 3.7e-12 (MLP): rounding growth
    along the curved valleys, which shrinks again at convergence. With the profile's former strong-Wolfe
    search: 1.9, 0.15, 6.7 and 5.4e-2, parting at the first backtrack."""
    jax = pytest.importorskip("jax")
    optax = pytest.importorskip("optax")
    jax.config.update("jax_enable_x64", True)
    jnp = jax.numpy
    f, x0, memory, bound = _optax_lbfgs_problems(jax, jnp)[problem]
    opt, value_and_grad = optax.lbfgs(memory_size=memory), optax.value_and_grad_from_state(f)

    @jax.jit
    def step(x, state):
        v, g = value_and_grad(x, state=state)
        u, state = opt.update(g, state, x, value=v, grad=g, value_fn=f)
        return optax.apply_updates(x, u), state
    x, state, theirs = jnp.asarray(x0), opt.init(jnp.asarray(x0)), [x0]
    for _ in range(40):
        x, state = step(x, state)
        theirs.append(np.asarray(x))
    vg = jax.jit(jax.value_and_grad(f))
    oracle = FunctionOracle(lambda t: float(vg(jnp.asarray(t))[0]), lambda t: np.asarray(vg(jnp.asarray(t))[1]))
    ours_opt = make_optimizer("lbfgs", **dict(PROFILES["optax.lbfgs"].hyperparameters, memory=memory))
    x, state, ours, backtracks = np.array(x0), ours_opt.init(np.array(x0)), [x0], 0
    for _ in range(40):
        x, state, info = ours_opt.update(x, state, oracle)
        ours.append(np.array(x))
        backtracks += info["nfev"] > 1
    assert backtracks >= 1
    rel = [np.max(np.abs(a - b)) / np.max(np.abs(b)) for a, b in zip(ours, theirs)]
    assert max(rel) < bound, (problem, max(rel), int(np.argmax(rel)))
