#!/usr/bin/env python
"""Check the f-dangel/curvlinops profile against the real curvlinops, step by step.

The profile says: a K-FAC step is one ``KFACLinearOperator`` pass over the batch (fisher_type='mc',
mc_samples=1, weight and bias in separate blocks, no running average) and its
``KFACInverseLinearOperator(damping=δ)`` ((A + δI) ⊗ (G + δI))⁻¹, applied to the gradient by the user:
θ_{t+1} = θ_t − η · K⁻¹ g. For every trace problem (``refopt.verify.TRACE_PROBLEMS``) the script takes
refopt's trace of the profile (``make_trace``, damping = δ², see the profile's gaps), and at every step t,
**at refopt's iterate θ_t**, builds the float64 torch MLP (weight = Wᵀ), a fresh KFACLinearOperator on the
full batch whose ``draw_label`` returns refopt's labels of step t (so both sides use the same Monte-Carlo
draw), inverts it with curvlinops and applies it to torch's gradient of the loss. It prints
max_t max_leaf |θ_{t+1}^theirs − θ_{t+1}^refopt|∞ / |θ_{t+1}^refopt|∞ (one-step differences, so they
do not compound).

Losses: softmax CE mean → ``CrossEntropyLoss()``; Bernoulli sum → ``BCEWithLogitsLoss(reduction='sum')``;
Gaussian (σ² = 1) mean → ``MSELoss()``. curvlinops has no Gaussian of variance σ²: MSELoss is the loss
(1/(BC)) Σ‖y − z‖², whose GGN is c = 2σ²/C times refopt's, and its ``draw_label`` draws y = z + √½ ε.
So for tiny_regression the injected label is z + √½ (y_refopt − z)/σ, the step's gradient is refopt's
loss's, and the gradient covariances are divided by c before inverting.

A CNN trace problem (``tiny_cnn``: images NCHW, kernels OIHW in both libraries) is rebuilt as a torch
``Sequential`` of ``Conv2d`` / pooling / ``Flatten`` / ``Linear`` modules and checked the same way, once with
the profile as it is (``kfac_approx="expand"``) and once under "f-dangel/curvlinops+reduce" (``kfac_approx="reduce"``
on both sides).

Convolutions, further (``CNN_CASES``: a stride-2 conv, two convs, a dilated 2×2 conv with ReLU, max
pooling and a sum loss; batch 8, softmax cross-entropy, biases random): for each of ``--cnn-points``
parameter points, the Kronecker factors of every conv and dense layer, refopt's ``layer_factors`` against
``KFACLinearOperator``'s ``_input_covariances`` / ``_gradient_covariances``, for fisher_type "mc" (refopt's
labels injected), "empirical" and "type-2" (refopt's "true"), kfac_approx "expand" and "reduce", and
separate_weight_and_bias True and False (refopt's bias_block "separate" / "joint"), with a control that
refopt's "expand" factors differ from curvlinops' "reduce" ones; then ``--cnn-steps`` steps of refopt's
KFAC under the profile with each kfac_approx and bias layout, compared one step at a time with curvlinops'
inverse applied to torch's gradient, as above (the sum-loss case at a tenth of the learning rate).
curvlinops' conv factors (curvlinops/kfac.py, ``_hook_accumulate_input_covariance`` and
``_accumulate_gradient_covariance``; patches by curvlinops/kfac_utils.py ``extract_patches`` /
``extract_averaged_patches``): "expand" A = Σ_{n,l} x xᵀ / (N·L), G = Σ_{n,l} g gᵀ · c; "reduce"
A = Σ_n x̄ x̄ᵀ / N with x̄ the patches' mean over the L locations, G = Σ_n (Σ_l g)(Σ_l g)ᵀ · c; c = N for a
mean loss and 1 for a sum (g the output gradient of the reduced loss), the ones for a joint bias appended
after the rows are formed. These are refopt's formulas (``refopt.curvature.kronecker`` module docs).

Last run (curvlinops-for-pytorch 3.0.1, torch 2.13.0+cpu, 30 steps; lr 0.5, δ = 0.1 and lr 1.0, δ = 0.3):
tiny_mlp ≤ 3.0e-15, tiny_regression ≤ 1.2e-15, tiny_logistic ≤ 6.2e-16, tiny_cnn ≤ 1.9e-15 (expand and
reduce). CNN cases, 3 points: factors ≤ 7.0e-16 for every fisher type, approximation and bias layout (the
control: 0.97 in A, 9.6 in G); 3 steps ≤ 3.8e-15, except the sum-loss case under "reduce" at lr 0.05,
δ = 0.1 (its loss rises 16 → 31): 2.8e-14. Injecting other labels or passing δ instead of √(refopt's damping)
gives 0.28 and 2.2 on the MLPs. Without torch or curvlinops it prints a message and exits 0.

    python scripts/verify_with_curvlinops.py [--steps 30] [--rtol 1e-10] [--cnn-steps 3] [--cnn-points 3]
"""
from __future__ import annotations

import argparse
import math
import sys
from importlib.metadata import version

try:
    import torch
    from curvlinops import KFACInverseLinearOperator, KFACLinearOperator
except ImportError:  # pragma: no cover - depends on the machine
    print("verify_with_curvlinops: torch/curvlinops is not installed; skipping (pip install curvlinops-for-pytorch)")
    sys.exit(0)

import numpy as np  # noqa: E402

from refopt.verify import TRACE_PROBLEMS, make_trace  # noqa: E402
from refopt.verify.external import torch_network  # noqa: E402

PROFILE = "f-dangel/curvlinops"
SETTINGS = {"lr 0.5, delta 0.1": (0.5, 0.1), "lr 1.0, delta 0.3": (1.0, 0.3)}


def loss_and_scale(spec):
    """(curvlinops loss, c = its GGN / refopt's GGN, refopt's loss in torch)."""
    if spec["loss"] == "softmax_cross_entropy":
        return torch.nn.CrossEntropyLoss(reduction=spec["reduction"]), 1.0, \
            lambda z, y: torch.nn.functional.cross_entropy(z, y, reduction=spec["reduction"])
    if spec["loss"] == "bernoulli":
        return torch.nn.BCEWithLogitsLoss(reduction=spec["reduction"]), 1.0, \
            lambda z, y: torch.nn.functional.binary_cross_entropy_with_logits(z, y, reduction=spec["reduction"])
    assert spec["reduction"] == "mean"
    var, C = spec.get("variance", 1.0), spec["sizes"][-1]

    def gaussian(z, y):
        return (0.5 * ((y - z) ** 2).sum(dim=1) / var).mean()
    return torch.nn.MSELoss(), 2.0 * var / C, gaussian


def curvlinops_step(spec, theta, X, y, labels, lr, delta, approx="expand"):
    """θ − η K⁻¹ g with curvlinops' K-FAC at θ (refopt's labels injected), and its factors (A, G) per layer;
    a CNN trace problem's network is built by ``external.torch_network`` and its conv factors by ``kfac_approx=approx``."""
    cnn = spec.get("type") == "cnn"
    model = torch_network(spec, theta)
    params = [p for p in model.parameters()]
    loss_func, c, ref_loss = loss_and_scale(spec)
    lab = torch.from_numpy(np.asarray(labels))
    if spec["loss"] == "gaussian":
        def draw_label(output):   # curvlinops: z + √½ ε; refopt: z + σ ε
            z = output.detach()
            return z + math.sqrt(0.5) * (lab - z) / math.sqrt(spec.get("variance", 1.0))
    else:
        def draw_label(output):
            return lab.to(torch.int64) if spec["loss"] == "softmax_cross_entropy" else lab.to(output.dtype)
    K = KFACLinearOperator(model, loss_func, params, [(X, y)], fisher_type="mc", mc_samples=1,
                           separate_weight_and_bias=True, check_deterministic=False, kfac_approx=approx)
    K.draw_label = draw_label
    K.compute_kronecker_factors()
    for name in K._gradient_covariances:
        K._gradient_covariances[name] = K._gradient_covariances[name] / c
    inv = KFACInverseLinearOperator(K, damping=delta)
    model.zero_grad()
    ref_loss(model(X), y).backward()
    step = inv @ [p.grad.detach() for p in params]
    new = [(p.detach() - lr * s).numpy() for p, s in zip(params, step)]
    out = [{"W": new[2 * l].copy() if new[2 * l].ndim == 4 else new[2 * l].T.copy(), "b": new[2 * l + 1].copy()}
           for l in range(len(new) // 2)]
    names = list(K._mapping)   # the modules in the model's order (sorted names would put "10" before "2")
    factors = [(K._input_covariances[n].numpy(), K._gradient_covariances[n].numpy()) for n in names]
    return out, factors


def rel(ours, theirs) -> float:
    ours = np.asarray(ours)
    return float(np.max(np.abs(ours - theirs)) / max(np.max(np.abs(ours)), 1e-300))


# --- convolutional networks ------------------------------------------------------------------------------
# Each case: (input shape (C, H, W), layers, loss reduction, lr factor of the step checks: the sum loss's
# gradient and G are N times the mean's, and at lr 0.5 its "reduce" run diverges, 16 → 9e3 in three steps,
# where the comparison would measure rounding in factors of 1e-120). A layer is ("conv", C, O, k, stride, padding,
# dilation), ("avg", k, stride), ("max", k, stride), "flatten", ("dense", in, out) or an activation name;
# ``refopt_cnn`` builds refopt's network from it, ``external.torch_network`` torch's from that network's config.
CNN_CASES = {
    "conv-s2": ((2, 5, 5), [("conv", 2, 3, 3, 2, 1, 1), "tanh", ("avg", 2, 1), "flatten", ("dense", 12, 4)],
                "mean", 1.0),
    "conv-conv": ((2, 5, 5), [("conv", 2, 3, 3, 1, 1, 1), "tanh", ("conv", 3, 4, 3, 2, 1, 1), "tanh",
                              ("avg", 2, 1), "flatten", ("dense", 16, 4)], "mean", 1.0),
    "conv-dil-sum": ((2, 6, 6), [("conv", 2, 3, 2, 1, 0, 2), "relu", ("max", 2, 2), "flatten",
                                 ("dense", 12, 4)], "sum", 0.1),
}
CNN_BATCH = 8
# refopt's fisher name for each curvlinops fisher_type compared
CNN_FISHERS = {"mc": "mc", "empirical": "empirical", "type-2": "true"}


def refopt_cnn(shape, layers):
    """refopt's CNN of a case's layer list."""
    from refopt.nn import CNN, AvgPool2d, Conv2d, Dense, Flatten, MaxPool2d  # noqa: PLC0415
    out = []
    for layer in layers:
        if isinstance(layer, str):
            out.append(Flatten() if layer == "flatten" else layer)
        elif layer[0] == "conv":
            out.append(Conv2d(*layer[1:4], stride=layer[4], padding=layer[5], dilation=layer[6]))
        elif layer[0] in ("avg", "max"):
            out.append((AvgPool2d if layer[0] == "avg" else MaxPool2d)(layer[1], stride=layer[2]))
        else:
            out.append(Dense(*layer[1:]))
    return CNN(shape, out)


def cnn_problem(case, point):
    """(refopt model, loss, oracle, params, X images (torch), y (torch)) of a case at parameter point ``point``:
    refopt's glorot init of seed ``point`` with small random biases (zero biases would leave the bias rows of
    the factors untested at step 0), random images and labels."""
    from refopt.nn import SoftmaxCrossEntropy  # noqa: PLC0415
    from refopt.problems.registry import network_oracle  # noqa: PLC0415
    shape, layers, reduction, _ = CNN_CASES[case]
    model = refopt_cnn(shape, layers)
    loss = SoftmaxCrossEntropy(reduction)
    g = np.random.default_rng(1000 + point)
    params = model.init(point)
    for p in params:
        p["b"] = 0.3 * g.standard_normal(p["b"].shape)
    Ximg = g.standard_normal((CNN_BATCH, *shape))
    y = g.integers(0, model.sizes[-1], CNN_BATCH)
    oracle = network_oracle(model, loss, Ximg.reshape(CNN_BATCH, -1), y)
    return model, loss, oracle, params, torch.from_numpy(Ximg), torch.from_numpy(y)


def curvlinops_cnn_operator(config, params, reduction, X, y, labels, fisher_type, approx, separate):
    """(torch model, its parameters, KFACLinearOperator with its factors computed; refopt's labels injected
    for "mc")."""
    model = torch_network({"type": "cnn", **config}, params)
    ps = list(model.parameters())
    K = KFACLinearOperator(model, torch.nn.CrossEntropyLoss(reduction=reduction), ps, [(X, y)],
                           fisher_type=fisher_type, mc_samples=1, kfac_approx=approx,
                           separate_weight_and_bias=separate, check_deterministic=False)
    if labels is not None:
        lab = torch.from_numpy(np.asarray(labels)).to(torch.int64)
        K.draw_label = lambda output: lab
    K.compute_kronecker_factors()
    return model, ps, K


def cnn_factor_checks(points: int) -> dict:
    """Max relative difference of A and G per (fisher type, kfac_approx, bias layout), every case, layer and
    point; and one cross check (refopt "expand" against curvlinops "reduce") that shows the comparison sees
    the difference between the two."""
    from refopt.curvature import layer_factors  # noqa: PLC0415
    res = {}
    for case, (shape, layers, reduction, _) in CNN_CASES.items():
        for point in range(points):
            model, loss, oracle, params, X, y = cnn_problem(case, point)
            labels = oracle.sample_labels(params, [7, point], 1)     # (1, N): refopt's draw, injected
            for ftype, fisher in CNN_FISHERS.items():
                lab = labels if ftype == "mc" else None
                for approx in ("expand", "reduce"):
                    for separate in (True, False):
                        _, _, K = curvlinops_cnn_operator(model.config(), params, reduction, X, y,
                                                          None if lab is None else lab[0], ftype, approx, separate)
                        A_o, G_o = layer_factors(oracle, params, fisher=fisher, labels=lab,
                                                 bias_block="separate" if separate else "joint",
                                                 kfac_approx=approx)
                        names = list(K._mapping)
                        key = (ftype, approx, "separate" if separate else "joint")
                        r = res.get(key, (0.0, 0.0))
                        res[key] = (max([r[0]] + [rel(a, K._input_covariances[n].numpy()) for a, n in zip(A_o, names)]),
                                    max([r[1]] + [rel(g_, K._gradient_covariances[n].numpy())
                                                  for g_, n in zip(G_o, names)]))
            # negative control: the two approximations really differ on these conv layers
            _, _, K = curvlinops_cnn_operator(model.config(), params, reduction, X, y, None, "empirical", "reduce", True)
            A_o, G_o = layer_factors(oracle, params, fisher="empirical", bias_block="separate", kfac_approx="expand")
            n0 = list(K._mapping)[0]
            r = res.get("cross", (0.0, 0.0))
            res["cross"] = (max(r[0], rel(A_o[0], K._input_covariances[n0].numpy())),
                            max(r[1], rel(G_o[0], K._gradient_covariances[n0].numpy())))
    return res


def cnn_step_checks(steps: int, lr: float, delta: float) -> dict:
    """Max relative difference of θ_(t+1) per (kfac_approx, bias layout): refopt's KFAC under the
    f-dangel/curvlinops profile (damping δ², the bias layout and kfac_approx overridden) runs ``steps`` steps
    from each case's point 0; at every step, at refopt's iterate, curvlinops' K-FAC (refopt's labels of that
    step injected) and KFACInverseLinearOperator(damping=δ) applied to torch's gradient give θ − η K⁻¹ g."""
    from refopt.optim.kfac import KFAC  # noqa: PLC0415
    from refopt.verify.profiles import get_profile  # noqa: PLC0415
    res = {}
    for case, (shape, layers, reduction, factor) in CNN_CASES.items():
        cnn, _, oracle, params0, X, y = cnn_problem(case, 0)
        lr_case = lr * factor
        for approx in ("expand", "reduce"):
            for bias in ("separate", "joint"):
                hp = dict(get_profile(PROFILE).hyperparameters, lr=lr_case, damping=delta ** 2, kfac_approx=approx,
                          bias_block=bias)
                opt = KFAC(**hp)
                params, state, worst = params0, opt.init(params0), 0.0
                for _ in range(steps):
                    new, state, info = opt.update(params, state, oracle)
                    model, ps, K = curvlinops_cnn_operator(cnn.config(), params, reduction, X, y, info["draws"][0], "mc",
                                                           approx, bias == "separate")
                    inv = KFACInverseLinearOperator(K, damping=delta)
                    model.zero_grad()
                    torch.nn.functional.cross_entropy(model(X), y, reduction=reduction).backward()
                    step = inv @ [p.grad.detach() for p in ps]
                    theirs = [(p.detach() - lr_case * s).numpy() for p, s in zip(ps, step)]
                    for l, o in enumerate(new):
                        W = theirs[2 * l] if o["W"].ndim == 4 else theirs[2 * l].T
                        worst = max(worst, rel(o["W"], W), rel(o["b"], theirs[2 * l + 1]))
                    params = new
                res[(case, approx, bias)] = (worst, info["loss"])
    return res


def cnn_main(args) -> bool:
    """The CNN checks; True if one exceeds ``args.rtol``."""
    failed = False
    print(f"CNN cases {', '.join(CNN_CASES)}; batch {CNN_BATCH}; softmax CE; {args.cnn_points} points")
    for key, (ra, rg) in cnn_factor_checks(args.cnn_points).items():
        if key == "cross":
            print(f"  control: refopt expand vs curvlinops reduce (1st conv layer): A {ra:.2e}  G {rg:.2e}"
                  f"{'' if min(ra, rg) > 1e-3 else '  FAIL (the check does not discriminate)'}")
            failed |= not min(ra, rg) > 1e-3
            continue
        bad = not max(ra, rg) <= args.rtol
        failed |= bad
        print(f"  factors fisher {key[0]:9s} {key[1]:6s} bias {key[2]:8s}  A {ra:.2e}  G {rg:.2e}"
              f"{'  FAIL' if bad else ''}")
    for setting, (lr, delta) in SETTINGS.items():
        for (case, approx, bias), (r, last) in cnn_step_checks(args.cnn_steps, lr, delta).items():
            bad = not r <= args.rtol
            failed |= bad
            print(f"  {setting:18s} {case:12s} {approx:6s} bias {bias:8s} {args.cnn_steps} steps "
                  f"(last loss {last:.3g})  max rel diff of θ_(t+1) {r:.2e}{'  FAIL' if bad else ''}")
    return failed


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--rtol", type=float, default=1e-10)
    ap.add_argument("--cnn-steps", type=int, default=3, help="K-FAC steps per CNN case (0: skip the CNN checks)")
    ap.add_argument("--cnn-points", type=int, default=3, help="parameter points per CNN case for the factors")
    args = ap.parse_args(argv)
    print(f"curvlinops {version('curvlinops-for-pytorch')}, torch {torch.__version__}, {args.steps} steps")
    failed = False
    for setting, (lr, delta) in SETTINGS.items():
        for problem, spec in TRACE_PROBLEMS.items():
            # a CNN trace problem (images NCHW in the trace) is checked under both conv approximations
            for approx in ("expand", "reduce") if spec.get("type") == "cnn" else ("expand",):
                hp = {"lr": lr, "damping": delta ** 2}
                trace = make_trace("kfac", hp, problem, args.steps, 0, PROFILE + ("+reduce" if approx == "reduce" else ""))
                X = torch.from_numpy(np.asarray(trace.X))
                y = torch.from_numpy(np.asarray(trace.y))
                worst = 0.0
                for t in range(args.steps):
                    labels = np.asarray(trace.draws[t])[0]
                    theirs, _ = curvlinops_step(spec, trace.params[t], X, y, labels, lr, delta, approx)
                    for o, th in zip(trace.params[t + 1], theirs):
                        worst = max(worst, rel(o["W"], th["W"]), rel(o["b"], th["b"]))
                bad = not worst <= args.rtol
                failed |= bad
                name = problem + (f" {approx}" if spec.get("type") == "cnn" else "")
                print(f"{setting:18s} {name:16s} max rel diff of θ_(t+1) {worst:.2e}{'  FAIL' if bad else ''}")
    if args.cnn_steps:
        failed |= cnn_main(args)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
