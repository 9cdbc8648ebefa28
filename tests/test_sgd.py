"""SGD's dampening (torch.optim.SGD): the first buffer is the undamped gradient, later ones μv + (1 − δ)g.

An independent transcription of torch/optim/sgd.py's _single_tensor_sgd on scripted gradients; the comparison
with torch itself is in tests/test_profiles.py (skipped without torch)."""
import numpy as np
import pytest

from refopt.optim.sgd import SGD

from _helpers import ScriptedOracle
from _helpers import run as run_oracle

GRADS = [np.array([1.0, -2.0, 0.5]), np.array([0.3, 0.4, -1.0]), np.array([-0.7, 1.1, 0.2])]
X0 = np.array([0.5, -0.25, 1.0])


def torch_sgd(x, grads, lr, momentum, dampening, weight_decay=0.0):
    """_single_tensor_sgd: buf = clone(d_p) on the first step, then buf.mul_(μ).add_(d_p, alpha=1 − δ)."""
    buf = None
    for g in grads:
        d = g + weight_decay * x
        buf = d.copy() if buf is None else buf * momentum + (1 - dampening) * d
        x = x - lr * buf
    return x


@pytest.mark.parametrize("dampening", [0.0, 0.3, 0.9, 1.0])
@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_dampening_follows_torch(dampening, weight_decay):
    opt = SGD(lr=0.1, momentum=0.8, dampening=dampening, weight_decay=weight_decay)
    x = run_oracle(opt, X0.copy(), ScriptedOracle(GRADS), len(GRADS))[0]
    np.testing.assert_allclose(x, torch_sgd(X0, GRADS, 0.1, 0.8, dampening, weight_decay), rtol=1e-14)


def test_first_step_is_undamped_and_later_ones_are_not():
    """After one step dampening has no effect (v₁ = g₁); after two it has ((1 − δ) scales g₂)."""
    one = [run_oracle(SGD(lr=0.1, momentum=0.8, dampening=d), X0.copy(), ScriptedOracle(GRADS[:1]), 1)[0]
           for d in (0.0, 0.5)]
    np.testing.assert_array_equal(one[0], one[1])
    two = [run_oracle(SGD(lr=0.1, momentum=0.8, dampening=d), X0.copy(), ScriptedOracle(GRADS[:2]), 2)[0]
           for d in (0.0, 0.5)]
    np.testing.assert_allclose(two[0] - two[1], -0.1 * 0.5 * GRADS[1], rtol=1e-12)


def test_dampening_without_momentum_is_plain_gradient_descent():
    a = run_oracle(SGD(lr=0.1, dampening=0.5), X0.copy(), ScriptedOracle(GRADS), 3)[0]
    np.testing.assert_array_equal(a, X0 - 0.1 * GRADS[0] - 0.1 * GRADS[1] - 0.1 * GRADS[2])


@pytest.mark.parametrize("kw", [dict(dampening=-0.1), dict(dampening=1.5), dict(dampening=float("nan")),
                                dict(dampening=0.5, momentum=0.9, nesterov=True)])
def test_bad_dampening_raises(kw):
    with pytest.raises(ValueError, match="dampening"):
        SGD(**kw)


# --- learning-rate schedule and gradient-in steps --------------------------------------------------------
def test_a_scheduled_step_is_exactly_minus_eta_t_g_t():
    """θ_{t+1} − θ_t = −η_t g_t bit for bit (descent_step forms (−η_t)·g + θ), info["lr"] = η_t, with η_t of
    a cosine with warm-up written out: 0, ½η, η, then η_f + (η − η_f)·½(1 + cos(πk/4))."""
    import math
    spec = {"name": "cosine", "decay_steps": 6, "warmup_steps": 2, "final_lr": 0.01}
    opt = SGD(lr=0.5, schedule=spec)
    g = np.random.default_rng(0).standard_normal((6, 3))
    oracle = ScriptedOracle(list(g))
    theta = np.ones(3)
    state = opt.init(theta)
    etas = [0.0, 0.25, 0.5] + [0.01 + 0.49 * 0.5 * (1 + math.cos(math.pi * k / 4)) for k in (1, 2, 3)]
    for t in range(6):
        new, state, info = opt.update(theta, state, oracle)
        assert info["lr"] == pytest.approx(etas[t], rel=1e-15, abs=0)
        np.testing.assert_array_equal(new, (-info["lr"]) * g[t] + theta)
        theta = new


def test_gradient_in_momentum_steps_match_the_closed_form():
    """Heavy ball from given gradients: v_t = μv_{t−1} + g_t, θ_{t+1} = θ_t − ηv_t, written out."""
    opt = SGD(lr=0.1, momentum=0.5)
    gs = [np.array([1.0, -2.0]), np.array([0.5, 0.25]), np.array([-1.0, 1.0])]
    theta, state = np.zeros(2), opt.init(np.zeros(2))
    v, want = np.zeros(2), np.zeros(2)
    for g in gs:
        theta, state, info = opt.apply_gradients(g, state, theta)
        v = 0.5 * v + g
        want = want - 0.1 * v
        np.testing.assert_allclose(theta, want, rtol=1e-15, atol=1e-16)
    assert state.step == 3 and np.isnan(info["loss"])
