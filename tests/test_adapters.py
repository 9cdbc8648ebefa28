"""The adapters of refopt.verify.adapters: a user's optimizer driven on refopt's gradients and draws.

The plain-callable adapter is checked with optimizers written here from their papers in NumPy (Adam,
Kingma & Ba 2015 Algorithm 1; AdaHessian, Yao et al. 2021 Algorithm 1 with b = 1), not from refopt's
code; the torch and optax adapters run only where those libraries are installed.
"""
import numpy as np
import pytest

from refopt.verify import Harness, Report, check_update
from refopt.verify.adapters import reference_trace

PROBLEMS = ["tiny_mlp", "tiny_regression", "tiny_logistic"]


def _zeros(params):
    return [{k: np.zeros_like(v) for k, v in layer.items()} for layer in params]


def numpy_adam(lr=1e-3, b1=0.9, b2=0.999, eps=1e-8, eps_inside=False):
    """Kingma & Ba's Algorithm 1 as an (init, update) pair; update(grads, state) -> (updates, state).

    eps_inside=True puts ε under the square root, sqrt(v̂ + ε), a convention the paper does not use.
    """
    def init(params):
        return 0, _zeros(params), _zeros(params)

    def denominator(v_hat):
        return np.sqrt(v_hat + eps) if eps_inside else np.sqrt(v_hat) + eps

    def update(grads, state):
        t, m, v = state
        t += 1
        m = [{k: b1 * mi[k] + (1 - b1) * g for k, g in gl.items()} for mi, gl in zip(m, grads)]
        v = [{k: b2 * vi[k] + (1 - b2) * g * g for k, g in gl.items()} for vi, gl in zip(v, grads)]
        updates = [{k: -lr * (mi[k] / (1 - b1 ** t)) / denominator(vi[k] / (1 - b2 ** t)) for k in mi}
                   for mi, vi in zip(m, v)]
        return updates, (t, m, v)
    return init, update


@pytest.mark.parametrize("problem", PROBLEMS)
def test_plain_adam_matches_the_adam_profiles(problem):
    init, update = numpy_adam()
    for profile in ("torch.optim.Adam", "optax.adam"):
        report = check_update(update, init, profile, problem=problem, steps=30)
        assert isinstance(report, Report) and report.passed, str(report)
        assert report.steps == 30 and report.max_relative_difference < 1e-13
        assert "matches refopt" in str(report)


def test_plain_adam_against_optimizer_and_hyperparameters():
    init, update = numpy_adam(lr=0.05, b2=0.5)
    report = check_update(update, init, ("adam", {"lr": 0.05, "beta2": 0.5}), steps=30)
    assert report.passed, str(report)
    assert not check_update(update, init, ("adam", {"lr": 0.05}), steps=30, search=False).passed


def test_doubled_learning_rate_is_diagnosed():
    init, update = numpy_adam(lr=2e-3)
    report = check_update(update, init, "torch.optim.Adam", steps=30)
    assert not report.passed and report.divergence.step == 1
    assert report.matches == [] and "no setting of the reference's switches" in report.diagnosis
    # the search's account of the divergence: the step ratio and the learning rate that reproduces the run
    assert "the learning rate differs by 2.0" in report.diagnosis
    assert "refopt with lr=0.002 reproduces all 30 steps" in report.diagnosis
    assert report.max_relative_difference > 0.5  # a doubled step: the difference is of the order of the step


def test_a_wrong_convention_is_found_by_the_search():
    """Adam with ε inside the square root: the search names eps_mode."""
    lr, eps = 0.05, 1e-3
    init, update = numpy_adam(lr=lr, eps=eps, eps_inside=True)
    report = check_update(update, init, "torch.optim.Adam", overrides={"lr": lr, "eps": eps}, steps=30)
    assert not report.passed
    assert {"eps_mode": "inside"} in report.matches and "eps_mode='inside'" in report.diagnosis


def test_update_may_take_params_and_a_stall_is_reported():
    """update(grads, state, params) receives θ_t; a step that leaves θ unchanged is named as a stall."""
    init, adam = numpy_adam()
    seen = []

    def update(grads, state, params):
        seen.append(params)
        updates, state = adam(grads, state)
        if state[0] == 4:  # an "early exit" at step 4
            updates = _zeros(updates)
        return updates, state
    report = check_update(update, init, "torch.optim.Adam", steps=6, search=False)
    assert len(seen) == 6 and np.array_equal(seen[0][0]["W"], reference_trace("torch.optim.Adam", steps=1).params[0][0]["W"])
    assert report.divergence.step == 4 and report.stalled == 4 and "no step at step 4" in report.diagnosis
    assert report.max_relative_difference_before(4) < 1e-13


def test_harness_gradients_and_probes():
    """Gradients at the user's iterate (central differences) and the Hutchinson hook with refopt's probes."""
    h = Harness("amirgholami/adahessian", "tiny_mlp", steps=3)
    theta = h.params0
    theta[0]["W"] = theta[0]["W"] + 0.1  # an iterate that is not refopt's
    value, g = h.value_and_grad(theta)
    probes = h.draws(1)
    assert isinstance(probes, list) and len(probes) == 1
    assert set(np.unique(probes[0][0]["W"])) <= {-1.0, 1.0}
    step = 1e-5
    for (l, key, idx) in [(0, "W", (1, 2)), (0, "b", (0,))]:
        plus, minus = h.params0, h.params0
        for p, s in ((plus, step), (minus, -step)):
            p[0]["W"] = p[0]["W"] + 0.1
            p[l][key][idx] += s
        numeric = (h.value_and_grad(plus)[0] - h.value_and_grad(minus)[0]) / (2 * step)
        assert abs(numeric - g[l][key][idx]) < 1e-8
    # z ⊙ Hz: H z by central differences of refopt's gradient along z (error O(step²) ~ 1e-10 here)
    z = probes[0]
    shifted = [[{k: th[k] + s * zl[k] for k in th} for th, zl in zip(theta, z)] for s in (step, -step)]
    hz = [{k: (a[k] - b[k]) / (2 * step) for k in a}
          for a, b in zip(h.value_and_grad(shifted[0])[1], h.value_and_grad(shifted[1])[1])]
    d = h.hutchinson(theta, 1)
    for dl, zl, hl in zip(d, z, hz):
        for k in dl:
            np.testing.assert_allclose(dl[k], zl[k] * hl[k], rtol=1e-6, atol=1e-9)
    assert min(dl[k].min() for dl in d for k in dl) < -1e-3  # signed entries: a wrong |z ⊙ Hz| would show
    with pytest.raises(ValueError, match="draws no probes"):
        Harness("torch.optim.Adam", steps=1).hutchinson(theta, 1)


def test_plain_adahessian_fed_refopts_probes_matches_refopt():
    """AdaHessian (b = 1, k = 1, no decay) written here, fed D_t = z ⊙ Hz through the hook each step."""
    lr, b1, b2, eps = 0.15, 0.9, 0.999, 1e-4

    def init(params):
        return 0, _zeros(params), _zeros(params)

    def update(grads, state, hessian):
        t, m, v = state
        t += 1
        m = [{k: b1 * mi[k] + (1 - b1) * g for k, g in gl.items()} for mi, gl in zip(m, grads)]
        v = [{k: b2 * vi[k] + (1 - b2) * d * d for k, d in dl.items()} for vi, dl in zip(v, hessian)]
        return [{k: -lr * (mi[k] / (1 - b1 ** t)) / (np.sqrt(vi[k] / (1 - b2 ** t)) + eps) for k in mi}
                for mi, vi in zip(m, v)], (t, m, v)

    def fed(h, t, params):
        return {"hessian": h.hutchinson(params, t)}
    for problem in PROBLEMS:
        report = check_update(update, init, ("adahessian", {}), problem=problem, steps=30, update_kwargs=fed)
        assert report.passed and report.max_relative_difference < 1e-12, str(report)
    # the same optimizer fed other probes (all ones) parts from refopt at step 1
    ones = lambda h, t, params: {"hessian": [{k: h.hutchinson(params, t)[i][k] * 0 + 1.0 for k in layer}  # noqa: E731
                                             for i, layer in enumerate(params)]}
    assert check_update(update, init, ("adahessian", {}), steps=3, update_kwargs=ones, search=False).divergence.step == 1


def test_bad_arguments():
    init, update = numpy_adam()
    with pytest.raises(ValueError, match="reference must be a profile name"):
        check_update(update, init, ["adam", {}])
    with pytest.raises(ValueError, match="unknown trace problem"):
        check_update(update, init, "torch.optim.Adam", problem="nope")
    with pytest.raises(ValueError, match="expected 4 parameter trees"):
        Harness("torch.optim.Adam", steps=3).report([Harness("torch.optim.Adam", steps=3).params0])


def test_torch_adapter():
    torch = pytest.importorskip("torch")
    from refopt.verify import check_torch
    for problem in PROBLEMS:
        report = check_torch(torch.optim.Adam, {"lr": 0.05, "betas": (0.9, 0.5), "amsgrad": True}, "torch.optim.Adam",
                             problem=problem, overrides={"lr": 0.05, "beta2": 0.5, "amsgrad": "max_v"})
        assert report.passed and report.max_relative_difference < 1e-13, str(report)
    wrong = check_torch(torch.optim.Adam, {"lr": 2e-3}, "torch.optim.Adam", steps=5)
    assert not wrong.passed and wrong.divergence.step == 1
    # torch's L-BFGS calls the closure at each trial of its strong-Wolfe search: refopt's gradients there
    report = check_torch(torch.optim.LBFGS, {"lr": 0.5, "max_iter": 1, "max_eval": 25, "line_search_fn": "strong_wolfe",
                                             "tolerance_grad": 0.0, "tolerance_change": 0.0},
                         "torch.optim.LBFGS+strong_wolfe", overrides={"lr": 0.5})
    assert report.passed and report.max_relative_difference < 1e-10, str(report)


def test_optax_adapter():
    optax = pytest.importorskip("optax")
    from refopt.verify import check_optax
    for problem in PROBLEMS:
        report = check_optax(optax.adam(0.05, eps=1e-3, eps_root=1e-3), "optax.adam", problem=problem,
                             overrides={"lr": 0.05, "eps": 1e-3, "eps_root": 1e-3})
        assert report.passed and report.max_relative_difference < 1e-13, str(report)
    assert check_optax(optax.adam(2e-3), "optax.adam", steps=5).divergence.step == 1
    # optax.lbfgs evaluates refopt's loss through value_fn (a pure_callback with refopt's gradient as its jvp)
    report = check_optax(optax.lbfgs(), "optax.lbfgs", steps=10, value_fn=True)
    assert report.passed and report.max_relative_difference < 1e-12, str(report)
