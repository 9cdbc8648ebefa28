"""Block-diagonal K-FAC: dense solves for every damping scheme, invariances, schedule, clip, momentum,
weight decay, Levenberg–Marquardt, label draws and bad inputs."""
import math
import pickle

import numpy as np
import pytest
from hypothesis import given, strategies as st

from refopt import tree as T
from refopt.curvature import kronecker as K
from refopt.optim import optimizer_class
from refopt.curvature.blocks import kronecker_inverse, kronecker_precondition
from refopt.optim.kfac import KFAC
from refopt.optim.sgd import SGD

from _helpers import mlp_problem

SCHEMES = [("pi", "inverse"), ("tikhonov", "inverse"), ("pi", "eig"), ("tikhonov", "eig"), ("eigen", "eig")]


def problem(sizes=(3, 4, 3), batch=5, seed=0, loss="softmax", X=None):
    return mlp_problem(sizes, batch, seed, loss, X)


def plain(**kw):
    """K-FAC reduced to its preconditioner: one fresh estimate, no clip, no momentum, unit step."""
    base = dict(lr=1.0, momentum=0.0, decay=0.0, kl_clip=None, inverse_interval=1, fisher="true")
    base.update(kw)
    return KFAC(**base)


def snapshot(*trees) -> bytes:
    """The exact contents of params/state nests (arrays, numbers, NamedTuples): equal bytes, equal values."""
    return pickle.dumps(trees)


def batch_factors(oracle, params, fisher="true", labels=None):
    stats = K.kfac_statistics(oracle, params, fisher, labels=labels)
    n = len(params)
    return ([K.input_factor(a) for a in stats.inputs],
            [K.grad_factor([p[l] for p in stats.probes], stats.scale) for l in range(n)], stats)


def dense_matrix(A, G, damping, scheme):
    """The damped layer block, written from the paper and not from refopt's helpers: A ⊗ G + λI ("eigen"),
    else (A + πγI) ⊗ (G + γ/π I), γ = √λ, π = sqrt((tr A/dim A) / (tr G/dim G)) (M&G 2015 §6.3; π = 1
    for "tikhonov")."""
    if scheme == "eigen":
        return np.kron(A, G) + damping * np.eye(A.shape[0] * G.shape[0])
    ta, tg = np.trace(A) / len(A), np.trace(G) / len(G)
    pi = math.sqrt(ta / tg) if scheme == "pi" and ta > 0 and tg > 0 else 1.0   # a zero-trace factor: π = 1
    gamma = math.sqrt(damping)
    return np.kron(A + pi * gamma * np.eye(len(A)), G + gamma / pi * np.eye(len(G)))


@given(sizes=st.lists(st.integers(1, 4), min_size=2, max_size=4), batch=st.integers(1, 6),
       scheme=st.sampled_from(SCHEMES), damping=st.sampled_from([1e-3, 0.1, 2.0]), seed=st.integers(0, 1000),
       fisher=st.sampled_from(["true", "empirical"]))
def test_step_is_the_dense_block_diagonal_solve(sizes, batch, scheme, damping, seed, fisher):
    model, params, oracle = problem(sizes, batch, seed)
    opt = plain(damping=damping, damping_scheme=scheme[0], inverse=scheme[1], fisher=fisher)
    new, _, info = opt.update(params, opt.init(params), oracle)
    A, G, stats = batch_factors(oracle, params, fisher)
    M = K.block_diagonal([dense_matrix(a, g, damping, scheme[0]) for a, g in zip(A, G)])
    expected = np.linalg.solve(M, T.ravel(stats.grad))
    assert np.allclose(T.ravel(T.sub(params, new)), expected, rtol=1e-8, atol=1e-10 * np.abs(expected).max())
    assert info["factors_updated"] and info["preconditioner_refreshed"] and not info["skipped"]


@pytest.mark.parametrize("method", ["inverse", "eig"])
def test_pi_and_eigen_damping_are_invariant_to_factor_rescaling_and_tikhonov_is_not(rng, method):
    a, g = rng.standard_normal((6, 4)), rng.standard_normal((6, 3))
    A, G, V = a.T @ a / 6, 0.01 * g.T @ g / 6, rng.standard_normal((4, 3))
    c, lam = 50.0, 1e-2
    for scheme in ("pi", "eigen", "tikhonov"):
        if scheme == "eigen" and method == "inverse":
            continue
        x = kronecker_precondition(V, kronecker_inverse(A, G, lam, scheme, method), lam, scheme)
        y = kronecker_precondition(V, kronecker_inverse(c * A, G / c, lam, scheme, method), lam, scheme)
        if scheme == "tikhonov":
            assert np.linalg.norm(x - y) > 0.1 * np.linalg.norm(x)
        else:
            assert np.allclose(x, y, rtol=1e-9, atol=1e-12)


def test_batch_of_one_rank_one_factors_stay_invertible():
    model, params, oracle = problem((3, 4, 2), batch=1, seed=2)
    A, G, stats = batch_factors(oracle, params)
    assert all(np.linalg.matrix_rank(a) == 1 for a in A)
    for scheme, method in SCHEMES:
        opt = plain(damping=1e-3, damping_scheme=scheme, inverse=method)
        new, _, info = opt.update(params, opt.init(params), oracle)
        M = K.block_diagonal([dense_matrix(a, g, 1e-3, scheme) for a, g in zip(A, G)])
        expected = np.linalg.solve(M, T.ravel(stats.grad))
        assert T.all_finite(new)
        assert np.allclose(T.ravel(T.sub(params, new)), expected, rtol=1e-9, atol=1e-12 * np.abs(expected).max())


@pytest.mark.parametrize("name", ["kfac", "kfac_tridiag", "ekfac"])
def test_layer_with_all_zero_inputs(name):
    """a = 0 for every example: A is rank one (only the bias entry), ∇W = 0, and the damped factor keeps
    the weight rows decoupled from the bias row, so W does not move while b does."""
    model, params, oracle = problem((3, 4, 2), batch=4, seed=3, X=np.zeros((4, 3)))
    opt = optimizer_class(name)(fisher="true")
    new, _, info = opt.update(params, opt.init(params), oracle)
    assert not info["skipped"] and T.all_finite(new)
    assert np.array_equal(new[0]["W"], params[0]["W"])
    assert not np.allclose(new[0]["b"], params[0]["b"])


@pytest.mark.parametrize("init", ["mean", "debiased", "identity"])
def test_running_averages_follow_the_stated_weights(init):
    model, params, oracle = problem(seed=4)
    opt = KFAC(decay=0.7, factor_init=init, seed=5)
    state = opt.init(params)
    A_run, G_run = None, None
    for t in range(4):
        labels = oracle.loss.sample(oracle.outputs(params), opt.step_seed(t), 1)
        A, G, _ = batch_factors(oracle, params, "mc", labels=labels)
        w = K.factor_weight(t + 1, 0.7, init)
        if A_run is None:
            A_run, G_run = list(state.factors["A"]), list(state.factors["G"])
        A_run = [w * x + (1 - w) * y for x, y in zip(A_run, A)]
        G_run = [w * x + (1 - w) * y for x, y in zip(G_run, G)]
        params, state, info = opt.update(params, state, oracle)
    for x, y in zip(state.factors["A"] + state.factors["G"], A_run + G_run):
        assert np.allclose(x, y, atol=1e-13)
    assert state.factor_updates == 4


def test_factor_and_inverse_refresh_schedule():
    model, params, oracle = problem(seed=6)
    opt = KFAC(factor_interval=2, inverse_interval=3)
    state = opt.init(params)
    for t in range(7):
        old = state
        params, state, info = opt.update(params, state, oracle)
        assert info["factors_updated"] == (t % 2 == 0)
        assert info["preconditioner_refreshed"] == (t % 3 == 0)
        if t % 2:
            assert all(x is y for x, y in zip(state.factors["A"], old.factors["A"]))
        if t % 3:
            assert state.preconditioner is old.preconditioner
    assert state.factor_updates == 4 and state.step == 7
    assert oracle.counts.nvjp == 4  # one sampled-label sweep per factor refresh, none otherwise


def test_kl_clip_bounds_the_quadratic_kl():
    model, params, oracle = problem(seed=7)
    c, lr = 1e-4, 0.5
    opt = KFAC(lr=lr, kl_clip=c, momentum=0.0, fisher="true")
    new, _, info = opt.update(params, opt.init(params), oracle)
    loose = KFAC(lr=lr, kl_clip=None, momentum=0.0, fisher="true")
    free, _, _ = loose.update(params, loose.init(params), oracle)
    v = T.scale(-1 / lr, T.sub(free, params))              # the unclipped natural gradient V
    vg = float(T.vdot(v, oracle.grad(params)))
    nu = math.sqrt(c / (lr ** 2 * vg))
    assert info["kl_nu"] == pytest.approx(nu, rel=1e-12) and nu < 1
    assert np.allclose(T.ravel(T.sub(new, params)), -lr * nu * T.ravel(v), atol=1e-15)
    assert lr ** 2 * nu ** 2 * vg == pytest.approx(c, rel=1e-12)
    big = KFAC(lr=lr, kl_clip=1e6, momentum=0.0, fisher="true")
    assert big.update(params, big.init(params), oracle)[2]["kl_nu"] == 1.0


def test_momentum_is_applied_to_the_natural_gradient():
    model, params, oracle = problem(seed=8)
    mu = 0.8
    opt, flat = KFAC(momentum=mu, fisher="true"), KFAC(momentum=0.0, fisher="true")
    p1, s1, _ = opt.update(params, opt.init(params), oracle)
    p2, s2, _ = opt.update(p1, s1, oracle)
    _, s2_flat, _ = flat.update(p1, s1, oracle)          # same state: ν₂V₂ alone
    assert np.allclose(T.ravel(s2.velocity), mu * T.ravel(s1.velocity) + T.ravel(s2_flat.velocity), atol=1e-14)
    assert np.allclose(T.ravel(T.sub(p2, p1)), -opt.lr * T.ravel(s2.velocity), atol=1e-15)


def test_weight_decay_decoupled_and_l2():
    model, params, oracle = problem(seed=9)
    wd, lr = 0.3, 0.5
    kw = dict(lr=lr, momentum=0.0, kl_clip=None, fisher="true", decay=0.0)
    base = KFAC(**kw).update(params, KFAC(**kw).init(params), oracle)[0]
    dec = KFAC(weight_decay=wd, **kw)
    new = dec.update(params, dec.init(params), oracle)[0]
    assert np.allclose(T.ravel(new), T.ravel(base) - lr * wd * T.ravel(params), atol=1e-14)
    l2 = KFAC(weight_decay=wd, weight_decay_mode="l2", **kw)
    new = l2.update(params, l2.init(params), oracle)[0]
    A, G, stats = batch_factors(oracle, params)
    M = K.block_diagonal([dense_matrix(a, g, 1e-3, "pi") for a, g in zip(A, G)])
    expected = np.linalg.solve(M, T.ravel(stats.grad) + wd * T.ravel(params))
    assert np.allclose(T.ravel(T.sub(params, new)), lr * expected, rtol=1e-8)


def test_levenberg_marquardt_adapts_the_damping():
    model, params, oracle = problem(seed=10)
    omega = 19 / 20
    for lr, direction in ((1e-3, "down"), (3.5, "up")):
        opt = KFAC(lr=lr, damping=0.1, momentum=0.0, kl_clip=None, fisher="true", adapt_damping=True,
                   damping_interval=1)
        new, state, info = opt.update(params, opt.init(params), oracle)
        delta = T.ravel(T.sub(new, params))
        F = oracle.dense_fisher(params, "true")
        g = T.ravel(oracle.grad(params))
        model_change = g @ delta + 0.5 * delta @ F @ delta
        rho = (oracle.value(new) - oracle.value(params)) / model_change
        assert model_change < 0 and info["rho"] == pytest.approx(rho, rel=1e-8)
        if direction == "down":
            assert rho > 0.75 and state.damping == pytest.approx(0.1 * omega)
        else:
            assert rho < 0.25 and state.damping == pytest.approx(0.1 / omega)
    # A step the quadratic model itself predicts to increase the loss counts as a failure (ρ = −∞).
    opt = KFAC(lr=8.0, damping=0.1, momentum=0.0, kl_clip=None, fisher="true", adapt_damping=True, damping_interval=1)
    _, state, info = opt.update(params, opt.init(params), oracle)
    assert info["rho"] == -math.inf and state.damping == pytest.approx(0.1 / omega)
    opt = KFAC(adapt_damping=True, damping_interval=3)
    state = opt.init(params)
    for t in range(3):
        params, state, info = opt.update(params, state, oracle)
        assert ("rho" in info) == (t == 2)


def test_seeded_draws_equal_injected_draws():
    model, params, oracle = problem(seed=11)
    opt = KFAC(samples=2, seed=4)
    state = opt.init(params)
    a, sa, _ = opt.update(params, state, oracle)
    labels = oracle.loss.sample(oracle.outputs(params), opt.step_seed(0), 2)
    b, sb, _ = opt.update(params, state, oracle, draws=labels)
    assert np.array_equal(T.ravel(a), T.ravel(b))
    assert all(np.array_equal(x, y) for x, y in zip(sa.factors["G"], sb.factors["G"]))


@pytest.mark.parametrize("name", ["kfac", "kfac_tridiag", "ekfac"])
def test_non_finite_statistics_skip_the_factor_update(name):
    """Gaussian loss with injected NaN labels: the first step has no factors to fall back on and is
    refused; later such a step keeps the old factors, says so, and still steps with them."""
    model, params, oracle = problem(seed=12, loss="gaussian")
    opt = optimizer_class(name)()
    state = opt.init(params)
    nan_labels = np.full((1,) + oracle.y.shape, np.nan)
    before = snapshot(params, state)
    new, new_state, info = opt.update(params, state, oracle, draws=nan_labels)
    assert info["skipped"] and new is params and new_state is state and "non-finite factor" in info["message"]
    assert snapshot(new, new_state) == before
    params, state, info = opt.update(params, state, oracle)
    assert not info["skipped"] and info["message"] == ""
    factors = snapshot(state.factors, state.factor_updates)
    new, new_state, info = opt.update(params, state, oracle, draws=nan_labels)
    assert not info["skipped"] and not info["factors_updated"] and "old factors kept" in info["message"]
    assert snapshot(new_state.factors, new_state.factor_updates) == factors and T.all_finite(new)
    assert not np.allclose(T.ravel(new), T.ravel(params))


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("name", ["kfac", "kfac_tridiag", "ekfac"])
def test_non_finite_gradient_refuses_the_step(name):
    """Mid-run (factors, preconditioner and momentum all set), a non-finite gradient returns the same
    params and state objects with their contents untouched."""
    model, params, oracle = problem(seed=13)
    opt = optimizer_class(name)(inverse_interval=2)
    state = opt.init(params)
    for _ in range(2):
        params, state, _ = opt.update(params, state, oracle)
    bad = T.copy(params)
    bad[1]["b"][0] = np.inf
    before = snapshot(bad, state)
    new, new_state, info = opt.update(bad, state, oracle)
    assert info["skipped"] and new is bad and new_state is state and "non-finite" in info["message"]
    assert snapshot(new, new_state) == before


def test_kfac_beats_tuned_sgd_on_badly_scaled_inputs():
    X = np.random.default_rng(14).standard_normal((32, 4)) * np.array([1.0, 10.0, 0.1, 3.0])
    model, params, oracle = problem((4, 8, 3), seed=14, X=X)

    def final_loss(opt):
        p, s = params, opt.init(params)
        for _ in range(30):
            p, s, _ = opt.update(p, s, oracle)
        return oracle.value(p)

    kfac = final_loss(KFAC(lr=0.5, damping=1e-3, kl_clip=0.1, momentum=0.5, fisher="true"))
    sgd = min(final_loss(SGD(lr=lr, momentum=0.9)) for lr in (0.1, 0.3, 1.0))
    assert kfac < 0.6 * sgd


@pytest.mark.parametrize("kwargs", [dict(damping=0.0), dict(damping=-1e-3), dict(decay=1.0), dict(decay=-0.1),
                                    dict(momentum=1.0), dict(lr=0.0), dict(kl_clip=0.0), dict(factor_interval=0),
                                    dict(inverse_interval=0), dict(damping_scheme="levenberg"),
                                    dict(inverse="cholesky"), dict(factor_init="zeros"), dict(fisher="exact"),
                                    dict(weight_decay=-1.0), dict(weight_decay_mode="adamw"), dict(samples=0),
                                    dict(output_grad_scale="batch"), dict(bias_block="split"),
                                    dict(bias_block="separate", damping_scheme="pi")])
def test_bad_hyperparameters_raise(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        KFAC(**kwargs)


def test_eigen_damping_needs_eigendecompositions():
    with pytest.raises(ValueError, match="eigen"):
        KFAC(damping_scheme="eigen", inverse="inverse")
    KFAC(damping_scheme="eigen", inverse="eig")


def test_init_rejects_non_mlp_params():
    with pytest.raises(ValueError, match="params"):
        KFAC().init({"w": np.zeros(3)})


def test_registry_names():
    for name in ("kfac", "kfac_tridiag", "ekfac", "kbfgs", "natural_gradient"):
        assert optimizer_class(name).name == name


@pytest.mark.parametrize("name", ["kfac", "kfac_tridiag", "ekfac", "kbfgs", "natural_gradient"])
def test_state_survives_a_checkpoint_round_trip(name, tmp_path):
    """States are plain nests of NamedTuples, dicts, tuples, arrays and numbers: a checkpoint written
    mid-run and read back continues bit-identically (what the runner's resumption relies on)."""
    from refopt.optim import make_optimizer
    from refopt.serialize import read_npz, write_npz_atomic

    model, params, oracle = problem(seed=15)
    opt = make_optimizer(name, **({"fisher": "mc"} if name == "natural_gradient" else {"inverse_interval": 2}))
    state = opt.init(params)
    for _ in range(3):
        params, state, _ = opt.update(params, state, oracle)
    write_npz_atomic(str(tmp_path / "ckpt.npz"), {}, params=params, state=state)
    _, saved = read_npz(str(tmp_path / "ckpt.npz"))
    a, b = (params, state), (saved["params"], saved["state"])
    for _ in range(2):
        a = opt.update(*a, oracle)[:2]
        b = opt.update(*b, oracle)[:2]
    assert np.array_equal(T.ravel(a[0]), T.ravel(b[0]))


@pytest.mark.parametrize("name", ["kfac", "ekfac", "kfac_tridiag", "natural_gradient"])
def test_reported_draws_replay_the_step(name):
    """info["draws"] is the labels array the step used; injecting it reproduces the step exactly, and
    steps without a factor refresh report None."""
    from refopt.optim import make_optimizer

    model, params, oracle = problem(seed=16)
    kw = {"fisher": "mc", "samples": 2} | ({} if name == "natural_gradient" else {"factor_interval": 2})
    opt = make_optimizer(name, **kw)
    state = opt.init(params)
    reported = []
    for _ in range(3):
        new, new_state, info = opt.update(params, state, oracle)
        reported.append(info["draws"])
        if info["draws"] is not None:
            again = opt.update(params, state, oracle, draws=info["draws"])[0]
            assert np.array_equal(T.ravel(again), T.ravel(new))
            assert info["draws"].shape == (2,) + oracle.y.shape
        params, state = new, new_state
    expected_none = [False, False, False] if name == "natural_gradient" else [False, True, False]
    assert [d is None for d in reported] == expected_none


# --- library conventions: G's scaling and separate weight/bias blocks (two steps against dense solves) ------
def _layer_block(a, g_probes, scale, damping, scheme, bias_block, output_grad_scale):
    """The damped dense curvature block of one layer, indexed by vec([W; b]) (row-major)."""
    G = K.grad_factor(g_probes, scale, output_grad_scale)
    if bias_block == "joint":
        return dense_matrix(K.input_factor(a), G, damping, scheme)
    A = a.T @ a / a.shape[0]
    eye_g = np.eye(len(G))
    if scheme == "eigen":
        W = np.kron(A, G) + damping * np.eye(len(A) * len(G))
        bias = G + damping * eye_g
    else:                                   # tikhonov: γ = √λ on every factor, the bias's only factor too
        gamma = math.sqrt(damping)
        W = np.kron(A + gamma * np.eye(len(A)), G + gamma * eye_g)
        bias = G + gamma * eye_g
    return K.block_diagonal([W, bias])


@pytest.mark.parametrize("loss", ["softmax", "gaussian_sum"])
@pytest.mark.parametrize("bias_block,output_grad_scale,scheme", [
    ("joint", "reduced_loss", "pi"), ("joint", "reduced_loss", "eigen"), ("separate", "per_example", "tikhonov"),
    ("separate", "per_example", "eigen"), ("separate", "reduced_loss", "tikhonov")])
def test_two_steps_are_dense_solves_with_the_switches(loss, bias_block, output_grad_scale, scheme):
    """Each of two steps (fresh factors: decay 0) is the dense block solve of its batch's factors, with
    G = "per_example" or × scale/B ("reduced_loss") and [W; b] in one block or in W and b blocks."""
    if loss == "gaussian_sum":
        from refopt.nn import MLP, make_loss  # noqa: PLC0415
        from refopt.oracle import Oracle  # noqa: PLC0415
        g = np.random.default_rng(1)
        model = MLP([3, 4, 2], activation="tanh")
        params = model.init(1)
        oracle = Oracle(model, make_loss("gaussian", reduction="sum"), g.standard_normal((6, 3)),
                        g.standard_normal((6, 2)))
    else:
        model, params, oracle = problem((3, 4, 3), 5, 2)
    damping = 0.05
    opt = plain(damping=damping, damping_scheme=scheme, inverse="eig" if scheme == "eigen" else "inverse",
                bias_block=bias_block, output_grad_scale=output_grad_scale)
    state = opt.init(params)
    for _ in range(2):
        stats = K.kfac_statistics(oracle, params, "true")
        blocks = [_layer_block(stats.inputs[l], [p[l] for p in stats.probes], stats.scale, damping, scheme,
                               bias_block, output_grad_scale) for l in range(len(params))]
        expected = np.linalg.solve(K.block_diagonal(blocks), T.ravel(stats.grad))
        new, state, info = opt.update(params, state, oracle)
        np.testing.assert_allclose(T.ravel(T.sub(params, new)), expected, rtol=1e-9,
                                   atol=1e-12 * np.abs(expected).max())
        params = new


def test_reduced_loss_g_is_scale_over_batch_times_per_example():
    model, params, oracle = problem((3, 4, 3), 5, 3)
    stats = K.kfac_statistics(oracle, params, "empirical")
    probes = [p[0] for p in stats.probes]
    g = stats.output_grads[0]
    np.testing.assert_allclose(K.grad_factor(probes, stats.scale, "reduced_loss"), g.T @ g / 5, rtol=1e-14)
    np.testing.assert_allclose(K.grad_factor(probes, stats.scale, "reduced_loss"),
                               K.grad_factor(probes, stats.scale) * stats.scale / 5, rtol=1e-14)
    with pytest.raises(ValueError, match="output_grad_scale"):
        K.grad_factor(probes, stats.scale, "batch")


def test_switches_are_declared_with_the_defaults():
    from _helpers import assert_switches_declared_with_defaults  # noqa: PLC0415
    assert_switches_declared_with_defaults(*(optimizer_class(n) for n in
                                             ("kfac", "kfac_tridiag", "ekfac", "kbfgs", "natural_gradient")))


# --- kfac-jax's conventions: curvature propagation, the empirical-Fisher scale, burn-in (issue 11) ------------
def test_empirical_scale_batch_divides_the_empirical_G_by_B():
    """kfac-jax's fisher_empirical: vjp ÷ √B on top of its blocks' 1/B, so G ÷ B and A unchanged."""
    model, params, oracle = problem(batch=5)
    kw = dict(fisher="empirical", decay=0.0, momentum=0.0, kl_clip=None)
    ours = KFAC(**kw)
    theirs = KFAC(empirical_scale="batch", **kw)
    s1 = ours.update(params, ours.init(params), oracle)[1]
    s2 = theirs.update(params, theirs.init(params), oracle)[1]
    for A1, A2, G1, G2 in zip(s1.factors["A"], s2.factors["A"], s1.factors["G"], s2.factors["G"]):
        np.testing.assert_array_equal(A1, A2)
        np.testing.assert_allclose(G2, G1 / 5, rtol=1e-13)
    with pytest.raises(ValueError, match="empirical_scale"):
        KFAC(empirical_scale="batch")   # fisher="mc": nothing to rescale


@pytest.mark.parametrize("loss, reduction", [("softmax", "mean"), ("softmax", "sum"), ("gaussian", "mean_all")])
def test_empirical_scale_batch_is_kfac_jax_fisher_empirical_for_every_reduction(loss, reduction):
    """NumPy transcription of kfac-jax 0.0.8's fisher_empirical (block_diagonal.py, DenseTwoKroneckerFactored):
    its loss is (w/B) Σ ℓ_i with w = B·scale, the vjp vector is w ∂ℓ_i/∂z ÷ √B and G = (1/B) Σ_i v_i v_iᵀ,
    i.e. Σ_i g_i g_iᵀ of the reduced loss's rows g_i; a sum loss (w = B) keeps the per-example G
    (checked against the real kfac-jax by scripts/verify_with_kfac_jax.py)."""
    from refopt.nn.losses import Gaussian, SoftmaxCrossEntropy  # noqa: PLC0415
    from refopt.oracle import Oracle  # noqa: PLC0415
    model, params, base = problem(sizes=(3, 4, 3), batch=5, loss=loss)
    lossfn = SoftmaxCrossEntropy(reduction=reduction) if loss == "softmax" else Gaussian(reduction=reduction)
    oracle = Oracle(model, lossfn, base.X, base.y)
    opt = KFAC(fisher="empirical", empirical_scale="batch", decay=0.0, momentum=0.0, kl_clip=None)
    state = opt.update(params, opt.init(params), oracle)[1]
    stats = K.kfac_statistics(oracle, params, None, gradient=False)
    B = 5
    for G, g in zip(state.factors["G"], stats.output_grads):
        v = math.sqrt(B) * g                 # kfac-jax: w · ∂ℓ_i/∂s ÷ √B, with w ∂ℓ_i = B · g_i
        np.testing.assert_allclose(G, v.T @ v / B, rtol=1e-13)


def test_curvature_prop_draws_signs_that_replay_and_refuses_labels():
    model, params, oracle = problem(batch=5)
    opt = KFAC(fisher="curvature_prop", samples=2)
    assert opt.draws == "signs" and "labels" not in opt.requires
    new, _, info = opt.update(params, opt.init(params), oracle)
    assert info["draws"].shape == (2, 5, 3) and set(np.unique(info["draws"])) <= {-1.0, 1.0}
    again, _, _ = opt.update(params, opt.init(params), oracle, draws=info["draws"])
    assert snapshot(new) == snapshot(again)
    with pytest.raises(ValueError, match="Rademacher signs"):
        opt.update(params, opt.init(params), oracle, draws=np.zeros((1, 5), dtype=np.int64))


@pytest.mark.parametrize("fisher", ["curvature_prop", "mc", "true"])
def test_burnin_folds_extra_estimates_before_step_0(fisher):
    """burnin = n: step 0 first folds n estimates with equal weights (a plain mean, weight n), then its own with
    the debiased rule (w = 0.95·n + 1, as kfac-jax); its draws are the n + 1 passes' sets concatenated, and
    injecting them replays the step exactly."""
    model, params, oracle = problem(batch=5)
    kw = dict(fisher=fisher, factor_init="debiased", decay=0.95, samples=1)
    opt = KFAC(burnin=3, **kw)
    new, state, info = opt.update(params, opt.init(params), oracle)
    assert state.factor_updates == 4
    if fisher == "true":
        assert info["draws"] is None
        plainrun = KFAC(**kw)
        np.testing.assert_allclose(new[0]["W"], plainrun.update(params, plainrun.init(params), oracle)[0][0]["W"],
                                   rtol=1e-12)   # identical estimates on one batch: the mean is the estimate
        return
    assert len(info["draws"]) == 4
    again, state2, _ = opt.update(params, opt.init(params), oracle, draws=info["draws"])
    assert snapshot(new, state) == snapshot(again, state2)
    stats = [K.kfac_statistics(oracle, params, fisher, labels=info["draws"][j:j + 1]) for j in range(4)]
    Gs = [K.grad_factor([s.probes[0][-1]], s.scale) for s in stats]
    want = (0.95 * 3 * (sum(Gs[:3]) / 3) + Gs[3]) / (0.95 * 3 + 1)
    np.testing.assert_allclose(state.factors["G"][-1], want, rtol=1e-12)
    later = opt.update(new, state, oracle)[2]   # step 1: no burn-in, one set
    assert len(later["draws"]) == 1
    with pytest.raises(ValueError, match="burnin"):
        opt.update(params, opt.init(params), oracle, draws=info["draws"][:3])


# --- the fused tail and the finite check ---------------------------------------------------------------------
@pytest.mark.parametrize("kw", [{}, dict(momentum=0.0, kl_clip=1e-6), dict(weight_decay=0.1, inverse="eig"),
                                dict(adapt_damping=True, damping_interval=2, weight_decay=0.01)])
def test_chunks_change_no_bit(kw, monkeypatch):
    """The step's tail (momentum, −η·m, decay, θ + δ) and the factor averages run chunk by chunk; on a 5-9-3 MLP
    chunks of 7 give the bits of one chunk per leaf over four steps, and the step norms agree to rounding."""
    from _kfac_helpers import run_chunked  # noqa: PLC0415
    _, params, orc = mlp_problem([5, 9, 3], 16, seed=6)
    (x1, s1, n1), (x2, s2, n2) = run_chunked(monkeypatch, lambda: KFAC(lr=0.05, inverse_interval=2, **kw), params,
                                             orc, 4, lambda info: info["step_norm"])
    for a, b in zip(T.leaves((x1, s1.velocity, s1.factors)), T.leaves((x2, s2.velocity, s2.factors))):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(n1, n2, rtol=1e-15)


@pytest.mark.parametrize("kw", [{}, dict(momentum=0.0), dict(weight_decay=0.1, kl_clip=None)])
def test_the_levenberg_marquardt_step_runs_the_plain_tail(kw, monkeypatch):
    """A step that applies the Levenberg–Marquardt rule moves θ and m exactly as the same step without it (the
    rule changes λ for later steps only), and its step norm is the plain step's, summed chunk by chunk."""
    from refopt.optim import update_rules  # noqa: PLC0415
    monkeypatch.setattr(update_rules, "CHUNK", 7)
    _, params, orc = mlp_problem([5, 9, 3], 16, seed=6)
    runs = []
    for adapt in (False, True):
        opt = KFAC(lr=0.05, fisher="true", adapt_damping=adapt, damping_interval=1, **kw)
        runs.append(opt.update(params, opt.init(params), orc))
    (x1, s1, i1), (x2, s2, i2) = runs
    assert "rho" in i2 and s2.damping != s1.damping
    for a, b in zip(T.leaves((x1, s1.velocity)), T.leaves((x2, s2.velocity))):
        np.testing.assert_array_equal(a, b)
    assert i1["step_norm"] == i2["step_norm"]


def test_the_gram_factors_finite_check_reads_their_diagonals():
    """A NaN or Inf anywhere in the layer inputs or probes shows on the diagonal of A or G (Gram matrices); a
    cross factor (block-tridiagonal) is checked entry by entry."""
    from refopt.curvature.blocks import KroneckerBlocks  # noqa: PLC0415
    from refopt.curvature.tridiagonal import TridiagonalBlocks  # noqa: PLC0415
    model, params, orc = mlp_problem([3, 4, 3], 6, seed=2)
    stats = K.kfac_statistics(orc, params, "empirical")
    blocks = KroneckerBlocks()
    assert blocks.all_finite(blocks.estimate(stats))
    for bad in (np.nan, np.inf):
        inputs = [a.copy() for a in stats.inputs]
        inputs[1][2, 3] = bad
        assert not blocks.all_finite(blocks.estimate(stats._replace(inputs=inputs)))
        probes = [[g.copy() for g in p] for p in stats.probes]
        probes[0][0][4, 1] = bad
        assert not blocks.all_finite(blocks.estimate(stats._replace(probes=probes)))
    tri = TridiagonalBlocks()
    est = tri.estimate(stats)
    assert tri.all_finite(est)
    est["A_cross"][0][1, 2] = np.nan                          # off the diagonal of a non-Gram factor
    assert not tri.all_finite(est)
