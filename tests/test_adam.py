"""Adam and AdamW against Kingma & Ba's Algorithm 1 and Loshchilov & Hutter's Algorithm 2."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from refopt.nn import MLP, Gaussian
from refopt.optim import optimizer_class
from refopt.optim import update_rules
from refopt.optim.adam import Adam, AdamW
from refopt.oracle import Oracle

from _helpers import (ScriptedOracle, assert_descends, assert_refused, assert_same_values,
                      assert_switches_declared_with_defaults,
                      quadratic, run)


# --- construction --------------------------------------------------------------------------------
@pytest.mark.parametrize("cls", [Adam, AdamW])
@pytest.mark.parametrize("kw", [dict(lr=0.0), dict(lr=-1e-3), dict(beta1=1.0), dict(beta1=-0.1), dict(beta2=1.0),
                                dict(beta2=1.5), dict(eps=0.0), dict(eps=-1.0), dict(weight_decay=-0.1),
                                dict(eps_mode="sqrt"), dict(eps_root=-1e-8), dict(amsgrad=True),
                                dict(amsgrad="max"), dict(eps_root=1e-8, eps_mode="inside")])
def test_bad_hyperparameters_raise(cls, kw):
    with pytest.raises(ValueError, match=list(kw)[0]):
        cls(**kw)


@pytest.mark.parametrize("cls", [Adam, AdamW])
def test_zero_length_leaf_raises_at_init(cls):
    with pytest.raises(ValueError, match="zero-length"):
        cls().init({"a": np.zeros(2), "b": np.zeros((0,))})


# --- the first step --------------------------------------------------------------------------------
@given(hnp.arrays(np.float64, st.integers(1, 6),
                  elements=st.floats(-1e3, 1e3).filter(lambda v: abs(v) > 1e-6)),
       st.sampled_from(["outside", "inside", "hat"]), st.floats(0.0, 0.99), st.floats(0.0, 0.9999))
def test_first_bias_corrected_step_has_magnitude_lr(g, eps_mode, b1, b2):
    x0 = np.zeros_like(g)
    x1, _, _ = run(Adam(lr=0.01, beta1=b1, beta2=b2, eps=1e-300, eps_mode=eps_mode), x0, ScriptedOracle([g]), 1)
    np.testing.assert_allclose(x1, -0.01 * np.sign(g), rtol=1e-12)


def test_first_step_without_bias_correction_is_scaled():
    g = np.array([2.0, -0.5])
    x1, _, _ = run(Adam(lr=0.01, eps=1e-300, bias_correction=False), np.zeros(2), ScriptedOracle([g]), 1)
    np.testing.assert_allclose(x1, -0.01 * 0.1 / np.sqrt(0.001) * np.sign(g), rtol=1e-12)


# --- two steps by hand, and a reference transcription for every switch -----------------------------------
def test_two_steps_by_hand():
    # f = ½‖x‖², x0 = (1, −2), α = 0.1, β = (0.9, 0.999): x1 = x0 − α sign(x0) = (0.9, −1.9);
    # m2 = 0.09 g1 + 0.1 g2 = (0.18, −0.37), v2 = 0.000999 g1² + 0.001 g2² = (0.001809, 0.007606),
    # m̂ = m2 / 0.19, v̂ = v2 / 0.001999.
    orc = quadratic([1.0, 1.0], [0.0, 0.0])
    x2, s2, _ = run(Adam(lr=0.1, eps=1e-300), np.array([1.0, -2.0]), orc, 2)
    mhat = np.array([0.18, -0.37]) / 0.19
    vhat = np.array([0.001809, 0.007606]) / 0.001999
    np.testing.assert_allclose(x2, np.array([0.9, -1.9]) - 0.1 * mhat / np.sqrt(vhat), rtol=1e-12)
    np.testing.assert_allclose(s2.m, [0.18, -0.37], rtol=1e-13)
    np.testing.assert_allclose(s2.v, [0.001809, 0.007606], rtol=1e-12)


def adam_reference(x0, grad, steps, lr, b1, b2, eps, wd=0.0, decoupled=False, lr_scaled=False,
                   bias_correction=True, eps_mode="outside"):
    """Kingma & Ba Algorithm 1 / Loshchilov & Hutter Algorithm 2, transcribed line by line."""
    x = np.array(x0, float)
    m, v = np.zeros_like(x), np.zeros_like(x)
    for t in range(1, steps + 1):
        g = grad(x)
        if not decoupled:
            g = g + wd * x
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        if eps_mode == "hat":
            at = lr * np.sqrt(1 - b2 ** t) / (1 - b1 ** t)
            d = at * m / (np.sqrt(v) + eps)
        else:
            mh, vh = (m / (1 - b1 ** t), v / (1 - b2 ** t)) if bias_correction else (m, v)
            d = lr * (mh / (np.sqrt(vh) + eps) if eps_mode == "outside" else mh / np.sqrt(vh + eps))
        x = x - d - ((lr if lr_scaled else 1.0) * wd * x if decoupled else 0.0)
    return x


CASES = [(Adam, dict()), (Adam, dict(bias_correction=False)), (Adam, dict(eps_mode="inside")),
         (Adam, dict(eps_mode="hat")), (Adam, dict(weight_decay=0.2)),
         (AdamW, dict()), (AdamW, dict(weight_decay=0.05)), (AdamW, dict(weight_decay=0.05, lr_scaled_decay=True))]


@pytest.mark.parametrize("cls,kw", CASES)
def test_two_steps_every_switch(cls, kw):
    a, c, x0 = np.array([2.0, 0.5, 1.0]), np.array([0.3, -1.0, 0.0]), np.array([1.0, -2.0, 0.5])
    # a large ε makes every ε convention visible
    opt = cls(lr=0.1, beta1=0.8, beta2=0.9, eps=0.3, **kw)
    x, _, _ = run(opt, x0, quadratic(a, c), 2)
    ref = adam_reference(x0, lambda x: a * x + c, 2, 0.1, 0.8, 0.9, 0.3, wd=opt.weight_decay,
                         decoupled=cls is AdamW, lr_scaled=kw.get("lr_scaled_decay", False),
                         bias_correction=kw.get("bias_correction", True), eps_mode=kw.get("eps_mode", "outside"))
    np.testing.assert_allclose(x, ref, rtol=1e-13)
    if kw:  # the switch matters
        x_default, _, _ = run(cls(lr=0.1, beta1=0.8, beta2=0.9, eps=0.3), x0, quadratic(a, c), 2)
        assert np.max(np.abs(x_default - x)) > 1e-4


# --- AMSGrad and eps_root (torch.optim.Adam(amsgrad=True), optax.amsgrad / scale_by_adam(eps_root)) --------
AMS_GRADS = [np.array([2.0, -1.0, 0.5]), np.array([0.1, -3.0, 0.05]), np.array([0.5, 0.2, -0.1])]


def ams_reference(grads, lr, b1, b2, eps, amsgrad="none", eps_root=0.0):
    """torch's _single_tensor_adam with amsgrad (max of the raw v, then ÷ √(1 − β₂ᵗ)) and optax's
    scale_by_amsgrad (max of the bias-corrected v̂, then √(· + eps_root) + ε); "none": scale_by_adam."""
    x, m, v, vmax = np.zeros(3), np.zeros(3), np.zeros(3), np.zeros(3)
    for t, g in enumerate(grads, start=1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        mh, c2 = m / (1 - b1 ** t), 1 - b2 ** t
        if amsgrad == "max_v":
            vmax = np.maximum(vmax, v)
            den = np.sqrt(vmax) / np.sqrt(c2) + eps
        elif amsgrad == "max_v_hat":
            vmax = np.maximum(vmax, v / c2)
            den = np.sqrt(vmax + eps_root) + eps
        else:
            den = np.sqrt(v / c2 + eps_root) + eps
        x = x - lr * mh / den
    return x


@pytest.mark.parametrize("cls", [Adam, AdamW])
@pytest.mark.parametrize("kw", [dict(amsgrad="max_v"), dict(amsgrad="max_v_hat"), dict(eps_root=0.5),
                                dict(amsgrad="max_v_hat", eps_root=0.5)])
def test_amsgrad_and_eps_root_three_steps(cls, kw):
    """Three steps with gradients that shrink (so the maximum differs from v) in closed form; the two AMSGrad
    conventions differ from each other and from plain Adam."""
    lr, b1, b2, eps = 0.1, 0.5, 0.6, 0.05
    extra = dict(weight_decay=0.0) if cls is AdamW else {}
    x, s, _ = run(cls(lr=lr, beta1=b1, beta2=b2, eps=eps, **extra, **kw), np.zeros(3), ScriptedOracle(AMS_GRADS), 3)
    np.testing.assert_allclose(x, ams_reference(AMS_GRADS, lr, b1, b2, eps, **kw), rtol=1e-13)
    assert (s.v_max is None) == ("amsgrad" not in kw)
    others = [dict(), dict(amsgrad="max_v"), dict(amsgrad="max_v_hat")]
    for other in others:
        if other.get("amsgrad") != kw.get("amsgrad") or "eps_root" in kw:
            assert np.max(np.abs(x - ams_reference(AMS_GRADS, lr, b1, b2, eps, **other))) > 1e-4


def test_amsgrad_without_bias_correction_is_reddi_algorithm_2():
    """With bias_correction=False both conventions are v̂_t = max(v̂_{t−1}, v_t), θ ← θ − α m / (√v̂ + ε)."""
    x_ref, m, v, vh = np.zeros(3), np.zeros(3), np.zeros(3), np.zeros(3)
    for g in AMS_GRADS:
        m = 0.5 * m + 0.5 * g
        v = 0.6 * v + 0.4 * g * g
        vh = np.maximum(vh, v)
        x_ref = x_ref - 0.1 * m / (np.sqrt(vh) + 0.05)
    for mode in ("max_v", "max_v_hat"):
        opt = Adam(lr=0.1, beta1=0.5, beta2=0.6, eps=0.05, bias_correction=False, amsgrad=mode)
        np.testing.assert_allclose(run(opt, np.zeros(3), ScriptedOracle(AMS_GRADS), 3)[0], x_ref, rtol=1e-13)


# --- AdamW ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("lr_scaled", [False, True])
def test_adamw_decay_is_independent_of_gradient_scale(lr_scaled):
    # at x0 the gradient (−0.5, 0.5, −0.5) opposes the decay λθ, so the scale decides who wins under L2
    a, c, x0 = np.array([2.0, 0.5, 1.0]), np.array([-2.5, 1.5, -1.0]), np.array([1.0, -2.0, 0.5])
    runs = [run(AdamW(lr=0.05, eps=1e-300, weight_decay=0.1, lr_scaled_decay=lr_scaled), x0,
                quadratic(a, c, scale), 3)[0] for scale in (1.0, 1e3, 1e-3)]
    np.testing.assert_allclose(runs[1], runs[0], rtol=1e-12)
    np.testing.assert_allclose(runs[2], runs[0], rtol=1e-12)
    # L2 decay goes through the normalisation and depends on the scale
    l2 = [run(Adam(lr=0.05, eps=1e-300, weight_decay=0.1), x0, quadratic(a, c, scale), 3)[0] for scale in (1.0, 1e-3)]
    assert np.max(np.abs(l2[1] - l2[0])) > 0.1


def test_adamw_decay_alone():
    x0 = np.array([1.0, -4.0])
    x1, _, _ = run(AdamW(lr=0.1, weight_decay=0.01), x0, ScriptedOracle([np.zeros(2)]), 1)
    np.testing.assert_allclose(x1, 0.99 * x0, rtol=1e-15)
    x1, _, _ = run(AdamW(lr=0.1, weight_decay=0.01, lr_scaled_decay=True), x0, ScriptedOracle([np.zeros(2)]), 1)
    np.testing.assert_allclose(x1, 0.999 * x0, rtol=1e-15)


# --- bad input -----------------------------------------------------------------------------------
@pytest.mark.parametrize("cls", [Adam, AdamW])
@pytest.mark.parametrize("bad", [np.nan, -np.inf])
def test_non_finite_gradient_is_refused(cls, bad):
    opt = cls()
    x1, s1, _ = run(opt, np.array([1.0, 2.0]), ScriptedOracle([np.array([0.5, 1.0])]), 1)
    assert_refused(opt, x1, s1, ScriptedOracle([np.array([1.0, bad])]), "non-finite gradient")


def test_zero_gradient_does_not_move():
    x, s, info = run(Adam(), np.array([1.0, 2.0]), ScriptedOracle([np.zeros(2)] * 2), 2)
    np.testing.assert_array_equal(x, [1.0, 2.0])
    assert not info["skipped"] and np.all(np.isfinite(s.v))


def test_update_is_pure_and_works_on_trees_and_scalars():
    p = {"w": np.array([[1.0, 2.0]]), "s": np.array(3.0)}
    g = {"w": np.array([[0.5, -0.5]]), "s": np.array(1.0)}
    opt = Adam(lr=0.1)
    s0 = opt.init(p)
    p1, s1, _ = opt.update(p, s0, ScriptedOracle([g]))
    np.testing.assert_array_equal(p["w"], [[1.0, 2.0]])  # unchanged input
    np.testing.assert_array_equal(s0.m["w"], 0.0)
    # first bias-corrected step: α g / (|g| + ε) per coordinate
    np.testing.assert_allclose(p1["s"], 3.0 - 0.1 / (1.0 + 1e-8), rtol=1e-15)
    np.testing.assert_allclose(p1["w"], [[1.0 - 0.1 * 0.5 / (0.5 + 1e-8), 2.0 + 0.1 * 0.5 / (0.5 + 1e-8)]], rtol=1e-15)


def test_registry_and_mlp_descent():
    assert optimizer_class("adam") is Adam and optimizer_class("adamw") is AdamW
    rng = np.random.default_rng(0)
    model = MLP([3, 4, 2])
    orc = Oracle(model, Gaussian(), rng.standard_normal((16, 3)), rng.standard_normal((16, 2)))
    for opt in (Adam(lr=0.05), AdamW(lr=0.05)):
        assert_descends(opt, orc, model.init(0))


def test_switches_are_declared_with_the_defaults():
    assert_switches_declared_with_defaults(Adam, AdamW)


# --- the fused update against a plain transcription, every switch combination --------------------------------
def algorithm_1(params, grads, lr, b1, b2, eps, wd, decoupled, lr_scaled, bias_correction, eps_mode, eps_root,
                amsgrad):
    """Kingma & Ba's Algorithm 1 written out with m̂ and v̂ (one new array per operation), with L&H's decoupled
    decay, AMSGrad (Reddi et al.: torch's max of v, optax's max of v̂) and the three ε placements; leafwise on a
    dict of arrays. Returns (θ, m, v, v_max, step norms) after len(grads) steps."""
    x = {k: np.array(p, float) for k, p in params.items()}
    m = {k: np.zeros_like(p) for k, p in x.items()}
    v = {k: np.zeros_like(p) for k, p in x.items()}
    vmax = {k: np.zeros_like(p) for k, p in x.items()}
    norms = []
    for t, grad in enumerate(grads, start=1):
        c1 = 1 - b1 ** t if bias_correction else 1.0
        c2 = 1 - b2 ** t if bias_correction else 1.0
        sq = 0.0
        for k in x:
            g = grad[k] + (0.0 if decoupled else wd * x[k])
            m[k] = b1 * m[k] + (1 - b1) * g
            v[k] = b2 * v[k] + (1 - b2) * g ** 2
            m_hat, v_hat = m[k] / c1, v[k] / c2
            if amsgrad == "max_v":
                vmax[k] = np.maximum(vmax[k], v[k])
                v_hat = vmax[k] / c2
            elif amsgrad == "max_v_hat":
                vmax[k] = np.maximum(vmax[k], v_hat)
                v_hat = vmax[k]
            if eps_mode == "outside":
                update = lr * m_hat / (np.sqrt(v_hat + eps_root) + eps)
            elif eps_mode == "inside":
                update = lr * m_hat / np.sqrt(v_hat + eps)
            else:  # "hat": α_t = α √(1 − β₂ᵗ)/(1 − β₁ᵗ), ε not bias-corrected
                update = lr * np.sqrt(c2) / c1 * m[k] / (np.sqrt(v_hat * c2) + eps)
            if decoupled:
                update = update + (lr * wd if lr_scaled else wd) * x[k]
            sq += float(np.sum(update ** 2))
            x[k] = x[k] - update
        norms.append(np.sqrt(sq))
    return x, m, v, vmax, norms


ALGORITHM_1_CASES = [
    (cls, dict(bias_correction=bc, eps_mode=mode, eps_root=root, amsgrad=ams, **extra))
    for cls, extras in ((Adam, [dict(weight_decay=0.0), dict(weight_decay=0.3)]),
                        (AdamW, [dict(weight_decay=0.2, lr_scaled_decay=False),
                                 dict(weight_decay=0.2, lr_scaled_decay=True)]))
    for extra in extras
    for bc in (True, False)
    for mode in ("outside", "inside", "hat")
    for root in ((0.0, 0.05) if mode == "outside" else (0.0,))
    for ams in ("none", "max_v", "max_v_hat")]


@pytest.fixture(params=[None, 4], ids=["one-chunk", "chunk-4"])
def chunk(request, monkeypatch):
    """The fused update's chunk length: the default (these leaves fit one chunk) or 4 elements, so the (2, 3)
    leaf runs as two chunks (4 + 2) and every line of the loop meets a chunk boundary."""
    if request.param is not None:
        monkeypatch.setattr(update_rules, "CHUNK", request.param)
    return request.param


@pytest.mark.parametrize("cls,kw", ALGORITHM_1_CASES)
def test_fused_update_is_algorithm_1(cls, kw, chunk):
    """Adam.update folds the bias corrections into α_t and ε̂ and writes into three arrays per leaf, chunk by
    chunk; four steps on a two-leaf tree, with gradients that shrink (so AMSGrad's maximum matters) and a large ε
    (so every ε placement shows), agree with the plain transcription to rounding (rtol 1e-13: the two orders of
    operations differ by a few ulps per step on these O(1) values), whether a leaf is one chunk or several."""
    rng = np.random.default_rng(7)
    params = {"W": rng.standard_normal((2, 3)), "b": rng.standard_normal(3)}
    grads = [{k: rng.standard_normal(p.shape) * 2.0 ** -i for k, p in params.items()} for i in range(4)]
    hp = dict(lr=0.1, beta1=0.8, beta2=0.9, eps=0.3)
    opt = cls(**hp, **kw)
    x, state = params, opt.init(params)
    norms = []
    for g in grads:
        x, state, info = opt.update(x, state, ScriptedOracle([g]))
        norms.append(info["step_norm"])
    ref_x, ref_m, ref_v, ref_max, ref_norms = algorithm_1(
        params, grads, hp["lr"], hp["beta1"], hp["beta2"], hp["eps"], opt.weight_decay, cls is AdamW,
        kw.get("lr_scaled_decay", False), kw["bias_correction"], kw["eps_mode"], kw["eps_root"], kw["amsgrad"])
    for k in params:
        np.testing.assert_allclose(x[k], ref_x[k], rtol=1e-13, atol=1e-15)
        np.testing.assert_allclose(state.m[k], ref_m[k], rtol=1e-13)
        np.testing.assert_allclose(state.v[k], ref_v[k], rtol=1e-13)
        if kw["amsgrad"] != "none":
            np.testing.assert_allclose(state.v_max[k], ref_max[k], rtol=1e-13)
    assert (state.v_max is None) == (kw["amsgrad"] == "none")
    np.testing.assert_allclose(norms, ref_norms, rtol=1e-13)


# --- learning-rate schedule -------------------------------------------------------------------------------
def test_adamw_decay_follows_the_schedule_multiplier():
    """L&H Algorithm 2: θ_t = θ_{t−1} − η_t(α m̂/(√v̂ + ε) + λθ) with the schedule multiplier η_t = α_t/α; with
    zero gradients the step is the decay alone, θ(1 − λη_t) (paper) or θ(1 − α_tλ) (lr_scaled_decay)."""
    spec = {"name": "step", "step_size": 1, "gamma": 0.5}
    for scaled, factor in [(False, lambda a: 0.2 * a / 0.1), (True, lambda a: 0.2 * a)]:
        zeros = ScriptedOracle([np.zeros(2)] * 3)
        opt = AdamW(lr=0.1, weight_decay=0.2, lr_scaled_decay=scaled, schedule=spec)
        theta = np.array([1.0, -2.0])
        state = opt.init(theta)
        for t in range(3):
            alpha = 0.1 * 0.5 ** t
            new, state, info = opt.update(theta, state, zeros)
            np.testing.assert_allclose(new, theta * (1 - factor(alpha)), rtol=1e-15)
            assert info["lr"] == alpha
            theta = new


def test_a_scheduled_adam_step_uses_alpha_t_in_the_first_step_closed_form():
    """Step 1 of Adam is −α_0 sign(g)·|g|/(|g| + ε') (m̂ = g, v̂ = g²): with a warm-up from init_lr it is
    init_lr's step, and the gradient-in step is the same."""
    g = np.array([0.3, -2.0])
    opt = Adam(lr=0.1, eps=1e-8, schedule={"name": "linear_warmup", "warmup_steps": 4, "init_lr": 0.02})
    x1, _, info = opt.update(np.zeros(2), opt.init(np.zeros(2)), ScriptedOracle([g]))
    np.testing.assert_allclose(x1, -0.02 * g / (np.abs(g) + 1e-8), rtol=1e-15)
    y1, _, _ = opt.apply_gradients(g, opt.init(np.zeros(2)), np.zeros(2))
    np.testing.assert_array_equal(x1, y1)


@pytest.mark.parametrize("cls,kw", [(Adam, {}), (Adam, dict(weight_decay=0.3, amsgrad="max_v_hat", eps_root=0.01)),
                                    (AdamW, dict(amsgrad="max_v", lr_scaled_decay=True))])
def test_chunks_change_no_bit(cls, kw, monkeypatch):
    """The update is elementwise, so its chunking changes nothing: a 5-9-3 MLP (leaves of 45, 9, 27 and 3 entries)
    with chunks of 7 gives the very bits of one chunk per leaf, params and state, over four steps; the reported
    norms, summed chunk by chunk, agree to rounding."""
    from _kfac_helpers import run_chunked  # noqa: PLC0415
    model, params, orc = _mlp_problem()
    (x1, s1, n1), (x2, s2, n2) = run_chunked(monkeypatch, lambda: cls(lr=0.01, **kw), params, orc, 4,
                                             lambda info: (info["grad_norm"], info["step_norm"]))
    assert_same_values(x1, x2)
    assert_same_values(s1, s2)
    np.testing.assert_allclose(n1, n2, rtol=1e-15)


def test_a_non_finite_gradient_in_a_later_chunk_is_refused(monkeypatch):
    """A NaN in the third chunk of a leaf refuses the step (the chunks before it computed nothing that is kept)."""
    monkeypatch.setattr(update_rules, "CHUNK", 7)
    model, params, orc = _mlp_problem()
    opt = Adam(lr=0.01)
    x1, s1, _ = opt.update(params, opt.init(params), orc)
    g = [{k: np.ones_like(v) for k, v in layer.items()} for layer in params]
    g[0]["W"].reshape(-1)[20] = np.nan
    assert_refused(opt, x1, s1, ScriptedOracle([g]), "non-finite gradient")


def _mlp_problem():
    from _helpers import mlp_problem  # noqa: PLC0415
    return mlp_problem([5, 9, 3], 16, seed=3)
