"""Gradient-in steps: a refopt optimizer driven by gradients computed elsewhere (any framework, one's own loop).

refopt's own interface asks an oracle, ``params, state, info = opt.update(params, state, oracle)``. A loop
that already has g = ∇L(θ) (from JAX, PyTorch, HIPS autograd or by hand) calls instead

    params, state, info = opt.apply_gradients(grads, state, params, loss=None, **estimates)

or uses the optax-shaped pair (``init``, ``update``) of ``as_gradient_transformation(opt)``:

    tx = as_gradient_transformation(opt)
    state = tx.init(params)
    updates, state = tx.update(grads, state, params)   # updates = θ_{t+1} − θ_t
    params = apply_updates(params, updates)            # θ_t + updates, as optax.apply_updates

Both run the very same ``update`` on a ``GradientOracle``, an oracle that answers ``value_and_grad`` at the
given params with the given gradient (and loss: NaN when not given), hands over injected estimates and
refuses everything else (a request at other parameters, as a line search makes; Hessian-vector products;
labels sampled from the model; layer statistics) with a ValueError naming what the method needed. No update
rule is written twice: on the gradients an oracle would compute, ``apply_gradients`` takes the oracle run's
steps bit for bit. ``apply_updates(params, tx.update(...)[0])`` adds back the difference θ_{t+1} − θ_t, which
rounds: it agrees with ``apply_gradients`` to about one ulp of θ, not bit for bit.

Which methods take gradient-in steps is declared on each class (``Optimizer.gradient_in``; every registered
name is tested):

    gradients only       sgd, adam, adamw, adagrad, adagrad_full, shampoo
    + hessian_diagonal   adahessian (the Hutchinson estimate D_t of diag ∇²L at θ_t, every step), sophia_h and
                         sophia_g (the estimate ĥ_t of diag ∇²L or diag GGN, on the steps that refresh h:
                         ``opt.estimates_needed(state)`` says which)
    refused              the Newton family (newton, gauss_newton, newton_cg, trust_ncg, sr1, sherman_morrison,
                         bfgs, dfp, lbfgs: trial points of a line search or a ratio test, curvature products)
                         and the Fisher family (natural_gradient, kfac, kfac_tridiag, ekfac, kbfgs: the
                         network's layer statistics, sampled labels, Fisher products)

An injected estimate replaces the method's own draws: ``info["draws"]`` is None on such a step and the
state's seed is untouched, so the estimate computed from the draws an oracle run reported
(``info["draws"]``) reproduces that run. ``hessian_diagonal`` is in the units of the h the method
averages: diag ∇²L (diag GGN for Sophia-G, e.g. B·ĝ⊙ĝ), except Sophia-G with parametrization="official",
whose h holds ĝ⊙ĝ of the mean loss (give that, and give ``bs``: no batch size is known here). Sophia's
refresh="after" (the official default) estimates h at θ_{t+1}, which only an oracle can: it is refused,
use refresh="before" or "lagged". An estimate given on a step that does not use it is ignored, as
injected draws are.

Checks, each a one-line ValueError: ``grads`` (and every estimate) must have the structure of ``params``
(the same lists, tuples and dict keys) and, leaf by leaf, its shape and dtype (nothing is cast); a leaf
is an array of the backend or anything NumPy converts (a JAX array, ``tensor.numpy()``), moved to the
backend; ``loss`` is a real number (or a one-element array) or None; an estimate name the method does not
accept is refused. A non-finite gradient or estimate follows the optimizer's own rule: the step is refused,
params and state come back unchanged and ``info["skipped"]`` is True (zero updates from the adapter).
Learning-rate schedules apply as in any run: η_t is read from the state's step count.
"""
from __future__ import annotations

import math
from typing import Callable, NamedTuple

import numpy as np

from .. import tree as T
from ..backend import to_device, to_host, xp
from ..oracle import CAPABILITIES, Counts
from ..serialize import shorten as _short
from .base import as_real, show_value

__all__ = ["GradientOracle", "GradientTransformation", "ESTIMATES", "apply_gradients", "as_gradient_transformation",
           "apply_updates", "given_estimate", "check_like_params", "gradient_in_methods"]

# The estimates a gradient-in step can inject, with what they are.
ESTIMATES: dict[str, str] = {
    "hessian_diagonal": "an estimate of diag ∇²L at params, in the units of the method's h",
}

# What the oracle methods that a GradientOracle refuses compute (for the refusal's message).
_REQUESTS = {
    "hvp": "Hessian-vector products", "hvp_operator": "Hessian-vector products",
    "hessian_operator": "Hessian-vector products", "value_and_hvp_operator": "Hessian-vector products",
    "draw_probes": "Hutchinson probes", "hutchinson_diag": "Hutchinson's diagonal estimate",
    "sample_labels": "labels sampled from the model", "grad_at_labels": "gradients at sampled labels",
    "gnb_diag": "the Gauss-Newton-Bartlett estimate (sampled labels)",
    "gnb_estimate": "the Gauss-Newton-Bartlett estimate (sampled labels)",
    "layer_stats": "per-layer statistics of the network", "kfac_statistics": "per-layer statistics of the network",
    "ggn_vp": "Gauss-Newton products", "curvature_operator": "Gauss-Newton or Fisher products",
    "fisher_vp": "Fisher products", "jvp": "network Jacobian products", "vjp": "network Jacobian products",
    "outputs": "the network's outputs", "dense_hessian": "the dense Hessian", "dense_ggn": "the dense GGN",
    "dense_fisher": "the dense Fisher", "batch_size": "the batch size", "batch_token": "the batch's identity",
    "model": "the model", "loss": "the loss function", "X": "the inputs", "y": "the targets",
    "with_batch": "other mini-batches",
}


def _suggestion(accepts) -> str:
    """How to get past a refusal: the estimates to pass, or an oracle."""
    if accepts:
        return "pass " + " or ".join(f"{name}=... ({ESTIMATES[name]})" for name in accepts) + " or use an oracle"
    return "use an oracle (refopt.oracle.Oracle or FunctionOracle)"


class GradientOracle:
    """An oracle of one point: ``value_and_grad(params)`` returns the given (loss, gradient), ``estimate``
    the injected estimates; every other request, and any request at other parameters, is a ValueError
    that names what ``who`` needed (module docs). ``counts`` counts the answers, as an oracle's do."""

    provides = frozenset({"value", "gradient"})

    def __init__(self, who: str, params, grads, loss: float = math.nan, estimates: dict | None = None,
                 accepts: tuple = ()):
        self._who, self._params, self._grads, self._loss = who, params, grads, loss
        self._estimates, self._accepts = dict(estimates or {}), tuple(accepts)
        self.counts = Counts()

    def _at(self, params, what: str) -> None:
        # Identity, not equality: the optimizer hands back the very params it was given; anything else is a
        # point of its own making (a trial point, θ_{t+1}).
        if params is not self._params:
            raise ValueError(f"{self._who} asks for {what} at other parameters than the given ones (a line search, "
                             f"a ratio test or a refresh at θ_(t+1)), which given gradients cannot answer; use an "
                             "oracle")

    def value(self, params) -> float:
        """The given loss (NaN when none was given)."""
        self._at(params, "the loss")
        self.counts.nfev += 1
        return self._loss

    def value_and_grad(self, params):
        """(the given loss, the given gradient)."""
        self._at(params, "the gradient")
        self.counts.nfev += 1
        self.counts.ngev += 1
        return self._loss, self._grads

    def grad(self, params):
        """The given gradient."""
        return self.value_and_grad(params)[1]

    def estimate(self, name: str, params):
        """The injected estimate ``name`` at ``params`` (a tree like them), or None when none was given."""
        self._at(params, f"the {name} estimate")
        return self._estimates.get(name)

    def __getattr__(self, name):
        if name.startswith("_"):   # Python's own protocols (copy, pickle) look for these
            raise AttributeError(name)
        what = _REQUESTS.get(name, name)
        raise ValueError(f"{self._who} needs {what} ({name}), which given gradients do not provide; "
                         f"{_suggestion(self._accepts)}")


def given_estimate(oracle, name: str, params):
    """The estimate ``name`` injected into a gradient-in step at ``params``; None on any other oracle or when
    none was given (the optimizer then computes its own)."""
    return oracle.estimate(name, params) if isinstance(oracle, GradientOracle) else None


def _structure(tree) -> str:
    """A tree's nesting in a few characters: [{W, b}, {W, b}], (·, ·), · (dict keys sorted, as tree.py's)."""
    if isinstance(tree, dict):
        inner = ", ".join(str(k) if not isinstance(tree[k], (dict, list, tuple)) else f"{k}: {_structure(tree[k])}"
                          for k in sorted(tree))
        return "{" + inner + "}"
    if isinstance(tree, (list, tuple)):
        inner = ", ".join(_structure(c) for c in tree)
        return f"[{inner}]" if isinstance(tree, list) else f"({inner})"
    return "·"


def _paths(tree, prefix: str = "") -> list[str]:
    """The name of every leaf in flattening order (tree.py's: dict keys sorted): [0]['W'], ..."""
    if isinstance(tree, dict):
        return [p for k in sorted(tree) for p in _paths(tree[k], f"{prefix}[{k!r}]")]
    if isinstance(tree, (list, tuple)):
        return [p for i, c in enumerate(tree) for p in _paths(c, f"{prefix}[{i}]")]
    return [prefix]


def check_like_params(what: str, tree, params):
    """``tree`` with its leaves as fresh backend arrays (copies: nothing returned or kept aliases the caller's
    buffers), after checking that it matches ``params``: structure, then
    each leaf's shape and dtype (one-line ValueErrors naming ``what`` and the leaf)."""
    leaves, treedef = T.flatten(tree)
    p_leaves, p_treedef = T.flatten(params)
    if treedef != p_treedef:
        raise ValueError(f"{what} must have the structure of params, {_short(_structure(params))}; got "
                         f"{_short(_structure(tree))}")
    out = []
    for name, leaf, p in zip(_paths(params), leaves, p_leaves):
        if not hasattr(leaf, "shape") or isinstance(leaf, (str, bytes)):
            raise ValueError(f"{what}{name} must be an array of shape {tuple(p.shape)}, got {show_value(leaf)}")
        if not isinstance(leaf, xp.ndarray):
            try:   # another framework's array, through NumPy (JAX arrays, CPU tensors' .numpy())
                leaf = to_device(np.asarray(leaf))
            except Exception as exc:  # noqa: BLE001 - anything NumPy cannot read is the user's error to see
                raise ValueError(f"{what}{name} is not an array NumPy can read: {type(leaf).__name__} "
                                 f"({exc})"[:200]) from None
        if tuple(leaf.shape) != tuple(p.shape):
            raise ValueError(f"{what}{name} has shape {tuple(leaf.shape)}, params{name} has {tuple(p.shape)}")
        if leaf.dtype != p.dtype:
            raise ValueError(f"{what}{name} has dtype {leaf.dtype}, params{name} has {p.dtype} (refopt does not "
                             "cast: convert it)")
        # A copy: an optimizer may keep the gradient itself in its state (SGD's first momentum buffer with
        # dampening is g), and the caller's loop may overwrite its buffer in place (torch's grad.zero_()).
        out.append(leaf.copy())
    return T.unflatten(p_treedef, out)


def _check_loss(loss) -> float:
    """The loss as a float (NaN for None); ValueError for anything but a real number or a one-element array."""
    if loss is None:
        return math.nan
    x = as_real(loss)
    if x is not None:
        return x
    kind = getattr(getattr(loss, "dtype", None), "kind", None)
    if kind in ("f", "i", "u") and getattr(loss, "size", 0) == 1:
        return float(to_host(loss).reshape(()))
    raise ValueError(f"loss must be a real number (or None), got {show_value(loss)}")


def apply_gradients(opt, grads, state, params, loss=None, **estimates):
    """``opt.update(params, state, GradientOracle(...))`` after the checks of the module docs: one step of
    ``opt`` from the given gradient (and loss and estimates); returns (new params, new state, info)."""
    who = type(opt).name
    reason = opt.gradient_in_refusal()
    if reason is not None:
        raise ValueError(f"{who} takes no gradient-in steps: {reason}")
    accepts = tuple(opt.gradient_in)
    unknown = sorted(set(estimates) - set(accepts))
    if unknown:
        takes = f"accepts {', '.join(accepts)}" if accepts else "takes gradients only (no estimates)"
        raise ValueError(f"{who} {takes}; got {', '.join(unknown)}")
    grads = check_like_params("grads", grads, params)
    given = {name: check_like_params(name, value, params) for name, value in estimates.items() if value is not None}
    missing = [name for name in opt.estimates_needed(state) if name not in given]
    if missing:
        needs = sorted(opt.requires - {"value", "gradient"})
        sources = " and ".join(CAPABILITIES[n].split(" (")[0] for n in needs)
        raise ValueError(f"{who} needs {missing[0]} at this step: it would compute it from {sources}, which given "
                         f"gradients do not provide; {_suggestion(accepts)}")
    oracle = GradientOracle(who, params, grads, _check_loss(loss), given, accepts)
    return opt.update(params, state, oracle)


class GradientTransformation(NamedTuple):
    """optax's pair: ``init(params) -> state``, ``update(grads, state, params) -> (updates, state)``."""

    init: Callable
    update: Callable


def apply_updates(params, updates):
    """params + updates, leafwise (optax.apply_updates for refopt trees)."""
    return T.add(params, updates)


def as_gradient_transformation(opt) -> GradientTransformation:
    """``opt`` as an optax-style ``GradientTransformation`` (module docs): ``update(grads, state, params,
    loss=None, **estimates)`` returns the updates θ_{t+1} − θ_t (zeros for a refused step) and the new state.
    ValueError at once for an optimizer that takes no gradient-in steps."""
    reason = opt.gradient_in_refusal()
    if reason is not None:
        raise ValueError(f"{type(opt).name} takes no gradient-in steps: {reason}")

    def init(params):
        return opt.init(params)

    def update(grads, state, params=None, loss=None, **estimates):
        if params is None:
            raise ValueError(f"params: refopt's {type(opt).name} needs the current params (update(grads, state, "
                             "params)), as optax's weight-decaying transformations do")
        new, new_state, _ = apply_gradients(opt, grads, state, params, loss, **estimates)
        return T.sub(new, params), new_state

    return GradientTransformation(init, update)


def gradient_in_methods() -> dict:
    """{name: the estimates it accepts} of every registered optimizer that takes gradient-in steps (with its
    default arguments), in ``OPTIMIZERS`` order."""
    from . import OPTIMIZERS, optimizer_class  # noqa: PLC0415 (the registry imports the optimizers lazily)
    return {name: optimizer_class(name).gradient_in for name in OPTIMIZERS
            if optimizer_class(name).gradient_in is not None}
