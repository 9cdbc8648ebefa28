#!/usr/bin/env python
"""Check refopt's torch.optim profiles against the real torch.optim, step by step.

For every torch profile (refopt.verify.profiles) and every trace problem (refopt.verify.TRACE_PROBLEMS),
the script takes refopt's golden trace of that profile (``make_trace``: data, initial parameters,
hyperparameters), rebuilds the network in PyTorch (float64, W of shape (fan_in, fan_out), s = a @ W + b; the
tiny_cnn problem with torch.nn.functional's conv2d and max_pool2d on OIHW kernels, so torch's autodiff of the
convolutions is checked too), runs the torch optimizer on it for the same number of steps, writes torch's parameter sequence into a
trace, and checks that trace with ``refopt.verify.check_trace`` (the same check ``refopt verify check``
runs on a file). It prints, per profile, setting and problem, "matches" (with the largest relative
difference seen) or the first divergence. Each profile runs twice: with its library defaults, and with
exaggerated settings (larger lr, ε, decay; AMSGrad with β₂ = 0.5 for Adam/AdamW, lr_decay for Adagrad;
lr = 0.5 for L-BFGS) that make a wrong convention show above the tolerance. The L-BFGS profiles also
run two step() calls with torch's default max_iter=20: after a call that brought torch's iteration
count to k (20, or fewer when an early exit fired), torch's parameters are compared with refopt's
after k updates (less one per call that ended with an iteration stopped before its step).

Divergences that the profile's documented gaps explain are marked "expected" (the exit status is 0);
any other divergence makes the exit status 1. Without torch installed the script prints a message and
exits 0.

    python scripts/verify_with_torch.py [--steps 5] [--rtol 1e-10] [--atol 1e-12] [--out DIR]

``--out DIR`` also writes torch's traces as .npz (``refopt verify check DIR/<file>.npz`` reads them).
"""
from __future__ import annotations

import sys

try:
    import torch
except ImportError:  # pragma: no cover - depends on the machine
    print("verify_with_torch: torch is not installed; skipping (pip install torch to run this check)")
    sys.exit(0)

import numpy as np

from refopt.verify import TRACE_PROBLEMS, Trace, make_trace
from refopt.verify.external import check_profiles, parse_arguments
from refopt.verify.profiles import get_profile

torch.set_default_dtype(torch.float64)

# profile -> (torch constructor from refopt hyperparameters, overrides of the "exaggerated" setting)
SETUPS = {
    "torch.optim.SGD": (
        lambda ps, hp: torch.optim.SGD(ps, lr=hp["lr"], momentum=hp.get("momentum", 0.0),
                                       nesterov=hp.get("nesterov", False),
                                       weight_decay=hp.get("weight_decay", 0.0)),
        {"lr": 0.3, "momentum": 0.9, "weight_decay": 0.1}),
    "torch.optim.Adam": (
        lambda ps, hp: torch.optim.Adam(ps, lr=hp["lr"], betas=(hp["beta1"], hp["beta2"]), eps=hp["eps"],
                                        weight_decay=hp.get("weight_decay", 0.0),
                                        amsgrad=hp.get("amsgrad", "none") == "max_v"),
        {"lr": 0.05, "eps": 1e-3, "weight_decay": 0.1, "beta2": 0.5, "amsgrad": "max_v"}),
    "torch.optim.AdamW": (
        lambda ps, hp: torch.optim.AdamW(ps, lr=hp["lr"], betas=(hp["beta1"], hp["beta2"]), eps=hp["eps"],
                                         weight_decay=hp["weight_decay"],
                                         amsgrad=hp.get("amsgrad", "none") == "max_v"),
        {"lr": 0.05, "eps": 1e-3, "weight_decay": 0.5, "beta2": 0.5, "amsgrad": "max_v"}),
    "torch.optim.Adagrad": (
        lambda ps, hp: torch.optim.Adagrad(ps, lr=hp["lr"], eps=hp["eps"],
                                           initial_accumulator_value=hp.get("initial_accumulator", 0.0),
                                           weight_decay=hp.get("weight_decay", 0.0), lr_decay=hp.get("lr_decay", 0.0)),
        {"lr": 0.3, "eps": 1e-2, "weight_decay": 0.1, "lr_decay": 0.5}),
    "torch.optim.LBFGS": (
        lambda ps, hp, max_iter=1: torch.optim.LBFGS(ps, lr=hp["lr"], max_iter=max_iter, history_size=hp["memory"],
                                                     line_search_fn=None),
        {"lr": 0.5}),
    "torch.optim.LBFGS+strong_wolfe": (
        # max_iter=1: the search budget max_ls = max_eval − 1, so max_eval = refopt's max_evals (torch's
        # default max_eval for max_iter=1 would be 1); max_iter=20: torch's default max_eval = 25
        lambda ps, hp, max_iter=1: torch.optim.LBFGS(ps, lr=hp["lr"], max_iter=max_iter, history_size=hp["memory"],
                                                     max_eval=hp["max_evals"] if max_iter == 1 else None,
                                                     line_search_fn="strong_wolfe"),
        {"lr": 0.5}),
}


def torch_forward(spec):
    """The trace problem's network as a function (params list [W0, b0, W1, ...], X) -> logits, written with
    torch's own operations: dense layers a @ W + b (W is (fan_in, fan_out)); for a "cnn" problem
    torch.nn.functional's conv2d (OIHW kernels as they are), max_pool2d, avg_pool2d and flatten, so that torch's
    autodiff, not refopt's, differentiates the convolutions."""
    F = torch.nn.functional
    act_fns = {"tanh": torch.tanh, "identity": lambda s: s, "relu": torch.relu, "sigmoid": torch.sigmoid}
    if spec["type"] == "mlp":
        def mlp(ps, a):
            for l, act in enumerate(spec["activations"]):
                a = act_fns[act](a @ ps[2 * l] + ps[2 * l + 1])
            return a
        return mlp

    def cnn(ps, a):
        l = 0
        for layer in spec["layers"]:
            if isinstance(layer, str):
                a = act_fns[layer](a)
                continue
            kind, args = layer["layer"], {k: v for k, v in layer.items() if k != "layer"}
            if kind == "Conv2d":
                a = F.conv2d(a, ps[2 * l], ps[2 * l + 1], stride=args["stride"], padding=args["padding"],
                             dilation=args["dilation"])
                l += 1
            elif kind == "Dense":
                a = a @ ps[2 * l] + ps[2 * l + 1]
                l += 1
            elif kind == "MaxPool2d":
                a = F.max_pool2d(a, args["kernel_size"], args["stride"], args["padding"], args["dilation"])
            elif kind == "AvgPool2d":
                a = F.avg_pool2d(a, args["kernel_size"], args["stride"], args["padding"])
            else:  # Flatten
                a = torch.flatten(a, 1)
        return a
    return cnn


def torch_loss_fn(spec, X, y):
    """The trace problem's reduced loss as a function of a list of torch parameters [W0, b0, W1, ...]."""
    net = torch_forward(spec)
    Xt = torch.as_tensor(np.asarray(X))
    if spec["loss"] == "softmax_cross_entropy":
        yt = torch.as_tensor(np.asarray(y), dtype=torch.long)
    else:
        yt = torch.as_tensor(np.asarray(y), dtype=torch.float64)

    def loss(ps):
        z = net(ps, Xt)
        if spec["loss"] == "softmax_cross_entropy":
            per = torch.nn.functional.cross_entropy(z, yt, reduction="none")
        elif spec["loss"] == "gaussian":
            per = ((z - yt) ** 2).sum(dim=1) / (2.0 * spec.get("variance", 1.0))
        else:  # bernoulli: Σ_c softplus(z) − y z
            per = torch.nn.functional.binary_cross_entropy_with_logits(z, yt, reduction="none").sum(dim=1)
        return per.mean() if spec["reduction"] == "mean" else per.sum()

    return loss


def run_torch(profile: str, trace: Trace, max_iter: int = 1) -> Trace:
    """torch's parameter sequence from the trace's data and initial parameters, as a Trace (for L-BFGS with
    ``max_iter`` iterations per step() call: then one torch step is ``max_iter`` refopt updates)."""
    spec = trace.meta["problem"]
    make, _ = SETUPS[profile]
    ps = []
    for layer in trace.params[0]:
        ps += [torch.tensor(np.array(layer["W"]), requires_grad=True),
               torch.tensor(np.array(layer["b"]), requires_grad=True)]
    hp = trace.meta["hyperparameters"]
    opt = make(ps, hp, max_iter) if max_iter > 1 else make(ps, hp)
    loss_fn = torch_loss_fn(spec, trace.X, trace.y)

    def closure():
        opt.zero_grad()
        value = loss_fn(ps)
        value.backward()
        return value

    seq, iterations = [trace.params[0]], [0]
    for _ in range(trace.steps if max_iter == 1 else 2):
        opt.step(closure)
        seq.append([{"W": ps[2 * l].detach().numpy().copy(), "b": ps[2 * l + 1].detach().numpy().copy()}
                    for l in range(len(ps) // 2)])
        iterations.append(opt.state[ps[0]].get("n_iter", 0) if max_iter > 1 else len(seq) - 1)
    meta = dict(trace.meta, producer=f"torch {torch.__version__}", iterations=iterations)
    return Trace(meta, trace.X, trace.y, seq, [], [], [None] * trace.steps)


def expected_gap(profile: str, trace: Trace, divergence) -> str | None:
    """Why a divergence is expected from the profile's documented gaps, or None. Every torch profile is
    now exact on these problems (the remaining gaps, e.g. torch's early exits and its per-call search
    budget, do not fire here), so no divergence is expected."""
    return None


def _close(ours_params, theirs_params, rtol, atol):
    """(all entries within the rule, largest relative difference)."""
    ok, worst = True, 0.0
    for la, lb in zip(ours_params, theirs_params):
        for key in ("W", "b"):
            x, y = np.asarray(la[key]), np.asarray(lb[key])
            ok &= not np.any(np.abs(x - y) > atol + rtol * np.abs(x))
            worst = max(worst, float(np.max(np.abs(x - y)) / max(np.max(np.abs(x)), 1e-300)))
    return ok, worst


def check_max_iter(profile: str, problem: str, seed: int, max_iter: int, rtol: float, atol: float):
    """Two torch step() calls with ``max_iter`` iterations each: after a call whose iteration count
    (torch's state["n_iter"]) is k, torch's parameters must be refopt's after k updates — less one for each
    call that ended with an iteration stopped before its step (gᵀd > −tolerance_change: converged). k < 2·max_iter
    when one of torch's early exits fired. Returns (status, message), status "ok", "expected" or "bad"."""
    prof = get_profile(profile)
    ours = make_trace(prof.optimizer, {}, problem, 2 * max_iter, seed, profile)
    theirs = run_torch(profile, ours, max_iter)
    worst, ks, notes = 0.0, theirs.meta["iterations"], []
    stopped = 0   # torch iterations that ended before their step (each call can end with one)
    for call, (k, p_theirs) in enumerate(zip(ks, theirs.params)):
        ok, diff = _close(ours.params[k - stopped], p_theirs, rtol, atol)
        if not ok and call > stopped:
            ok, diff = _close(ours.params[k - stopped - 1], p_theirs, rtol, atol)
            if ok:
                stopped += 1
                notes.append(f"torch's iteration {k} stopped before its step")
        if not ok:
            div = type("Divergence", (), {"step": k})()
            for step in range(1, k + 1):   # the first update where the two searches may part
                div.step = step
                reason = expected_gap(profile, ours, div)
                if reason:
                    return "expected", f"diverges at refopt update {k} [expected: {reason}]"
            return "bad", f"diverges at refopt update {k} [UNEXPECTED]"
        worst = max(worst, diff)
    note = f"; {', '.join(notes)}" if notes else ""
    return "ok", (f"matches: torch's iteration counts {ks[1:]} ↔ refopt updates{note} (max relative difference "
                  f"{worst:.1e})")


def main(argv=None) -> int:
    args = parse_arguments(__doc__.split("\n\n")[0], "torch", argv)
    print(f"torch {torch.__version__}; rule |torch − refopt| ≤ {args.atol:g} + {args.rtol:g}·|refopt|, "
          f"{args.steps} steps")
    unexpected = check_profiles("torch", SETUPS, run_torch, expected_gap, args.steps, args.seed, args.rtol, args.atol,
                                args.out, width=32)
    for profile in ("torch.optim.LBFGS", "torch.optim.LBFGS+strong_wolfe"):
        for problem in TRACE_PROBLEMS:   # torch's default max_iter=20: one step() call is 20 refopt updates
            # 40 iterations compound roundoff (to 1e-10 relative here): the check_trace default rule 1e-7
            status, message = check_max_iter(profile, problem, args.seed, 20, 1e-7, 1e-10)
            unexpected += status == "bad"
            print(f"{profile:32s} {'max_iter=20':11s} {problem:16s} {message}")
    print("all torch profiles behave as documented" if unexpected == 0 else f"{unexpected} unexpected divergence(s)")
    return 0 if unexpected == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
