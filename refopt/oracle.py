"""Oracles: what optimizers may ask of a problem, with every request counted.

``Oracle`` binds an MLP, a loss and a batch (X, y); ``FunctionOracle`` wraps a function of a vector
(the classical test problems), with analytic derivatives when the problem has them and refopt's
autodiff otherwise. Both give values, gradients, Hessian-vector products and dense Hessians, and keep
``counts`` (nfev, ngev, nhvp, ...). The network oracle adds Gauss-Newton and Fisher products, Jacobian
products, per-layer statistics for K-FAC, label sampling and the diagonal estimators.

Capabilities: each oracle class states what it can compute in ``provides`` (names from ``CAPABILITIES``);
each optimizer states what it needs in ``requires``, and ``check_capabilities`` compares the two once, when
a run is set up, with an error that names what is missing. Optimizers ask ``"name" in oracle.provides``
for optional shortcuts; nothing probes an oracle with ``hasattr``.

A mini-batch run makes one oracle per batch with ``with_batch``; all of them share one ``Counts``.
``batch_token`` names what an oracle evaluates; the Newton family reuses a cached loss and gradient only
on the same token (optim/descent.py), so two oracles share one exactly when they evaluate the same thing:

* ``Oracle``: a digest (BLAKE2b, 128 bits) of the reprs of the model and the loss and of the batch's
  shapes, dtypes and bytes (X and y, on the host), computed once per oracle when first asked (only the
  Newton family asks). Two oracles on equal data share it, whoever made them (a resumed run, a new
  oracle per step), and oracles on different data never do; it is the same in every process.
* ``FunctionOracle``: there is no data to hash, so the token names the function objects (f, grad, hess,
  hvp) by serial numbers given to each live object in this process, behind a random process nonce
  (``function_token``): oracles built on the very same function objects share it, different functions
  never do, not even after one of them is freed or in another process. The cost: a state saved by one
  process and resumed on a user-built FunctionOracle in another evaluates its point once more.
  A maker who knows what its function is passes ``batch_token=`` (the named problems of
  ``refopt.problems.registry`` pass their name, so a resumed run reuses the checkpoint's point).
Trial points of a line search are ordinary calls: a non-finite loss there is returned as ``inf`` /
``nan``, never raised, so the line search can backtrack.
"""
from __future__ import annotations

import hashlib
import itertools
import uuid
import weakref
from dataclasses import dataclass, fields
from typing import NamedTuple

from . import autodiff as ad
from . import curvature as C
from .curvature import kronecker
from . import tree as T
from .backend import as_array, is_floating, to_device, to_host, xp
from .nn.mlp import layer_statistics

__all__ = ["Counts", "GNBEstimate", "Oracle", "FunctionOracle", "new_batch_token", "batch_digest", "function_token",
           "CAPABILITIES", "check_capabilities"]

# What an oracle can be asked for: the names in an oracle's ``provides`` and an optimizer's ``requires``.
CAPABILITIES: dict[str, str] = {
    "value": "loss values (value)",
    "gradient": "gradients (grad, value_and_grad)",
    "hvp": "Hessian-vector products (hvp, hvp_operator, hessian_operator, value_and_hvp_operator)",
    "dense_hessian": "the dense Hessian (dense_hessian)",
    "probes": "Hutchinson probes drawn for the parameters (draw_probes)",
    "hutchinson": "Hutchinson's diagonal estimate (hutchinson_diag)",
    "ggn": "Gauss-Newton products and curvature operators (ggn_vp, curvature_operator)",
    "fisher": "true, Monte-Carlo and empirical Fisher products (fisher_vp)",
    "jacobian": "network Jacobian products (jvp, vjp)",
    "dense_curvature": "dense GGN and Fisher matrices (dense_ggn, dense_fisher)",
    "layer_statistics": "per-layer inputs and output gradients (layer_stats, kfac_statistics; a conv layer's "
                        "patches and its output gradients at every location), for K-FAC",
    "dense_layer_statistics": "layer statistics of dense layers only: the block-tridiagonal K-FAC's cross-layer "
                              "factors and K-BFGS's secant pairs have no convolutional form here",
    "labels": "labels sampled from the model's predictive distribution (sample_labels, grad_at_labels)",
    "gnb": "the Gauss-Newton-Bartlett diagonal estimate (gnb_diag, gnb_estimate)",
}


def check_capabilities(oracle, required, who: str) -> None:
    """ValueError naming what ``who`` requires that ``oracle`` does not provide (see ``CAPABILITIES``)."""
    missing = sorted(set(required) - set(getattr(oracle, "provides", ())))
    if missing:
        wants = "; ".join(CAPABILITIES.get(m, m) for m in missing)
        raise ValueError(f"{who} needs {', '.join(missing)} ({wants}), which {type(oracle).__name__} does not "
                         "provide")


def new_batch_token() -> str:
    """A token no other oracle has (random, so not even one of another process, e.g. before a resume)."""
    return "oracle:" + uuid.uuid4().hex


def batch_digest(*parts) -> str:
    """"batch:" + a BLAKE2b digest of ``parts``: strings as UTF-8, arrays by shape, dtype and bytes (on the
    host, C order). Equal parts give equal digests in every process (the default token of an ``Oracle``)."""
    h = hashlib.blake2b(digest_size=16)
    for part in parts:
        if isinstance(part, str):
            h.update(b"s" + str(len(part)).encode() + b":" + part.encode())
            continue
        host = to_host(ad.getval(part))
        h.update(b"a" + repr((host.shape, host.dtype.str)).encode())
        h.update(host.tobytes(order="C"))
    return "batch:" + h.hexdigest()


# Serial numbers of the function objects FunctionOracles have been built on, for as long as each lives (a
# freed object's number is never given again, unlike its id); the nonce keeps another process's numbers apart.
_PROCESS = uuid.uuid4().hex[:16]
_serials = itertools.count()
_function_serials: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _serial(obj) -> str:
    if obj is None:
        return "-"
    try:
        number = _function_serials.get(obj)
        if number is None:
            number = _function_serials[obj] = next(_serials)
        return str(number)
    except TypeError:  # not weakly referenceable or not hashable: a number of its own, shared with nothing
        return "u" + str(next(_serials))


def function_token(*functions) -> str:
    """The default token of a ``FunctionOracle`` on ``functions`` (f, grad, hess, hvp; None for absent ones):
    equal for the same live objects (bound methods of one object compare equal), unequal otherwise, and
    unequal to any token of another process."""
    return f"function:{_PROCESS}:" + ",".join(_serial(fn) for fn in functions)


class GNBEstimate(NamedTuple):
    """What ``Oracle.gnb_estimate`` returns: ĥ, the label sets behind it, and the loss and gradient at the data
    labels (None unless asked for)."""

    hhat: object
    labels: object
    loss: object = None
    grad: object = None


@dataclass
class Counts:
    """How many of each request an oracle has served."""

    nfev: int = 0   # loss values (a value_and_grad counts one nfev and one ngev)
    ngev: int = 0   # gradients
    nhvp: int = 0   # Hessian-vector products
    nggnvp: int = 0  # Gauss-Newton-vector products
    nfvp: int = 0   # Fisher-vector products
    njvp: int = 0   # network Jacobian-vector products
    nvjp: int = 0   # network vector-Jacobian products
    nstats: int = 0  # per-layer statistics passes

    def as_dict(self) -> dict:
        """The counts as {name: count}."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


def _as_float(value) -> float:
    """A loss value as a Python float; non-finite values pass through (trial points of line searches)."""
    return float(ad.getval(value))


def _recorded_hvp(counts: Counts, f, x):
    """(∇f(x), v ↦ ∇²f(x) v) from one recording of the autodiff gradient (``autodiff.hvp_operator``): one
    ngev for the recording, one nhvp per product, counted in ``counts``."""
    counts.ngev += 1
    g, hv = ad.hvp_operator(f, x)

    def product(v):
        counts.nhvp += 1
        return hv(v)
    return g, product


def _recorded_value_hvp(counts: Counts, f, x):
    """(f(x), ∇f(x), v ↦ ∇²f(x) v) from one recording of the gradient that also keeps the value: one nfev and
    one ngev, then one nhvp per product (a reverse sweep of the recorded gradient), counted in ``counts``."""
    counts.nfev += 1
    counts.ngev += 1
    seen = {}

    def gradient(p):
        seen["value"], g = ad.value_and_grad(f)(p)
        return g
    g, hv = ad.vjp(gradient, x)

    def product(v):
        counts.nhvp += 1
        return hv(v)
    return _as_float(seen["value"]), g, product


class Oracle:
    """Model + loss + batch. ``X`` (B, d_in) float; ``y`` as the loss expects."""

    provides = frozenset(CAPABILITIES)  # a network oracle computes everything refopt's optimizers ask for

    def __init__(self, model, loss, X, y, counts: Counts | None = None, batch_token: str | None = None):
        if not hasattr(X, "dtype"):
            X = as_array(X)  # nested lists: the default float dtype
        if not is_floating(X.dtype):  # int or float16 data would be silently promoted or lose precision
            raise TypeError(f"X: expected a float32 or float64 array, got dtype {X.dtype}")
        if X.ndim != 2 or X.shape[1] != model.sizes[0]:
            raise ValueError(f"X: expected shape (batch, {model.sizes[0]}), got {tuple(X.shape)}")
        if X.shape[0] < 1:
            raise ValueError("X: the batch is empty")
        X = to_device(X)  # host data moves to the device once here, not on every product (CuPy refuses mixing)
        if not bool(xp.all(xp.isfinite(X))):
            raise ValueError("X: inputs contain NaN or Inf")
        self.model, self.loss, self.X = model, loss, X
        if hasattr(y, "dtype") and ad.getval(y) is y:
            y = to_device(y)
        self._check_targets(y)
        self.y = y
        self.counts = counts if counts is not None else Counts()
        self._batch_token = None if batch_token is None else str(batch_token)

    @property
    def batch_token(self) -> str:
        """What this oracle evaluates: ``batch_token=`` if given, else the digest of the model's and the loss's
        reprs and of X and y (``batch_digest``), computed on first use and kept (see the module docs)."""
        if self._batch_token is None:
            self._batch_token = batch_digest(repr(self.model), repr(self.loss), self.X, self.y)
        return self._batch_token

    def _check_targets(self, y) -> None:
        """The loss's target checks against outputs of this batch's shape (no forward pass needed)."""
        self.loss.check_targets(xp.zeros((self.X.shape[0], self.model.sizes[-1]), dtype=self.X.dtype), y)

    @property
    def batch_size(self) -> int:
        """B, the number of examples in the batch."""
        return int(self.X.shape[0])

    def with_batch(self, X, y) -> "Oracle":
        """The same model and loss on another batch, in this oracle's class (a subclass keeps what it provides),
        sharing its counts (the token: that batch's digest)."""
        return type(self)(self.model, self.loss, X, y, counts=self.counts)

    # --- values and gradients -------------------------------------------------------------
    def _objective(self, params, y=None):
        return self.loss(self.model.apply(params, self.X), self.y if y is None else y, check=False)

    def outputs(self, params):
        """Network outputs z = f(X; θ)."""
        return self.model.apply(params, self.X)

    def value(self, params) -> float:
        """The reduced loss L(θ) on the batch as a float (one nfev)."""
        self.counts.nfev += 1
        return _as_float(self._objective(params))

    def evaluate(self, params):
        """(L(θ), z): ``value``'s loss, bit for bit, and the outputs z = f(X; θ) it was computed from (one nfev),
        for a caller that also wants something of z (the runner's accuracy)."""
        self.counts.nfev += 1
        z = self.outputs(params)
        return _as_float(self.loss(z, self.y, check=False)), z

    def value_and_grad(self, params):
        """(L(θ), ∇L(θ)) from one reverse pass (one nfev and one ngev)."""
        self.counts.nfev += 1
        self.counts.ngev += 1
        value, g = ad.value_and_grad(self._objective)(params)
        return _as_float(value), g

    def grad(self, params):
        """∇L(θ), through ``value_and_grad`` (counted as such)."""
        return self.value_and_grad(params)[1]

    def grad_at_labels(self, params, labels):
        """Gradient of the reduced loss with the data labels replaced by ``labels``."""
        self._check_targets(labels)
        self.counts.ngev += 1
        return ad.grad(lambda p: self._objective(p, labels))(params)

    # --- curvature products ---------------------------------------------------------------
    def hvp(self, params, v):
        """∇²L(θ) v by forward-over-reverse autodiff (one nhvp)."""
        self.counts.nhvp += 1
        return ad.hvp(self._objective, params, v)

    def hvp_operator(self, params):
        """(∇L, v ↦ ∇²L v) with the gradient recorded once; each product is one reverse sweep."""
        return _recorded_hvp(self.counts, self._objective, params)

    def hessian_operator(self, params):
        """v ↦ ∇²L v at ``params`` for repeated products (Newton-CG): ``hvp_operator``'s, whose recorded
        gradient is counted once."""
        return self.hvp_operator(params)[1]

    def value_and_hvp_operator(self, params):
        """(L, ∇L, v ↦ ∇²L v) from one recording: ``hvp_operator`` that also returns the loss, which
        saves the extra forward pass of a separate ``value`` (AdaHessian needs all three every step)."""
        return _recorded_value_hvp(self.counts, self._objective, params)

    def jvp(self, params, v):
        """J v (batch, C)."""
        self.counts.njvp += 1
        return C.network_jvp(self.model, params, self.X, v)[1]

    def vjp(self, params, u):
        """Jᵀ u for an output cotangent u (batch, C)."""
        self.counts.nvjp += 1
        return C.network_vjp(self.model, params, self.X)[1](u)

    def ggn_vp(self, params, v):
        """The Gauss-Newton-vector product Jᵀ (scale · H_ℓ (J v)) on the batch (one nggnvp)."""
        self.counts.nggnvp += 1
        return C.ggn_vp(self.model, self.loss, params, self.X, self.y, v)

    def curvature_operator(self, params, kind="ggn", samples=1, seed=None, labels=None):
        """v ↦ M v for M the GGN (``kind="ggn"``) or a Fisher ("true", "mc", "empirical") at ``params``.

        The output pullback and the output-space matrix (for "mc", from labels sampled once) are fixed
        here, so repeated products, as in conjugate gradient, all use the same matrix and each costs
        one jvp and one sweep of the recorded pullback.
        """
        z, pullback = C.network_vjp(self.model, params, self.X)
        if kind == "mc" and labels is None:
            if seed is None:
                raise ValueError("the Monte-Carlo Fisher needs seed= or labels=")
            labels = self.loss.sample(z, seed, samples)
        scale = self.loss.scale(*z.shape)
        output_product = C.output_space_operator(self.loss, z, self.y, kind, labels)

        def product(v):
            if kind == "ggn":
                self.counts.nggnvp += 1
            else:
                self.counts.nfvp += 1
            Jv = C.network_jvp(self.model, params, self.X, v)[1]
            return pullback(scale * output_product(Jv))
        return product

    def fisher_vp(self, params, v, kind="true", samples=1, seed=None, labels=None):
        """F v for the Fisher ``kind`` "true", "mc" or "empirical" (``curvature.fisher_vp``; one nfvp)."""
        self.counts.nfvp += 1
        return C.fisher_vp(self.model, self.loss, params, self.X, self.y, v, kind, samples, seed, labels)

    # --- statistics and estimators --------------------------------------------------------
    def layer_stats(self, params, targets=None):
        """Loss, gradient, and per-layer (a_{l-1}, g_l) of a dense network at the data labels or at ``targets``
        (``problems.registry.CNNOracle`` overrides it for a CNN's)."""
        self.counts.nstats += 1
        return layer_statistics(self.model, self.loss, params, self.X, self.y if targets is None else targets)

    def kfac_statistics(self, params, fisher="mc", samples=1, seed=None, labels=None, gradient=True):
        """Loss, gradient, layer inputs and G-probes of K-FAC from one pass (``curvature.kronecker.
        statistics_pass``; "mc" labels are ``labels`` or drawn by ``sample_labels`` from the pass's outputs).
        Counts one statistics pass, one value and gradient, and one network vjp per extra backward sweep."""
        self.counts.nstats += 1
        self.counts.nfev += 1
        self.counts.ngev += 1

        def sample(z):
            if seed is None:
                raise ValueError(f"fisher={fisher!r} needs seed= or labels=")
            if fisher == "curvature_prop":   # Rademacher signs, not labels (kronecker.draw_signs)
                return kronecker.draw_signs(z, seed, samples)
            return self.sample_labels(params, seed, samples, outputs=z)
        stats = kronecker.statistics_pass(self.model, self.loss, params, self.X, self.y, fisher, labels, sample,
                                          gradient)
        self.counts.nvjp += stats.sweeps
        return stats

    def sample_labels(self, params, seed, k=1, outputs=None):
        """k label sets drawn from the model's predictive distribution at ``params`` (``outputs``: the
        network outputs there, when the caller has them, which saves the forward pass)."""
        return self.loss.sample(self.outputs(params) if outputs is None else outputs, seed, k)

    def draw_probes(self, params, seed, k=1, distribution="rademacher"):
        """k Hutchinson probe trees from ``seed`` (``curvature.draw_probes``): the one place where
        ``hutchinson_diag`` and the optimizers that draw probes (AdaHessian, Sophia-H) draw them, so a
        subclass can change or record the draws in one method."""
        return C.draw_probes(params, seed, k, distribution)

    def hutchinson_diag(self, params, seed=None, probes=None, k=1, distribution="rademacher"):
        """Hutchinson estimate of diag(∇²L): (1/k) Σ_j z_j ⊙ (∇²L z_j) over ``probes``, or k drawn from ``seed``."""
        if probes is None:
            if seed is None:
                raise ValueError("hutchinson_diag needs seed= or probes=")
            probes = self.draw_probes(params, seed, k, distribution)
        self.counts.ngev += 1
        self.counts.nhvp += len(probes)
        return C.hutchinson_diagonal(self._objective, params, probes)

    def gnb_diag(self, params, seed=None, labels=None, k=1):
        """Gauss-Newton-Bartlett estimate ĝ ⊙ ĝ / scale of diag(GGN) at ``labels``, or k label sets from ``seed``
        (``gnb_estimate``'s ĥ: one forward pass for the draw and the estimate)."""
        return self.gnb_estimate(params, seed, labels, k).hhat

    def gnb_estimate(self, params, seed=None, labels=None, k=1, gradient: bool = False) -> GNBEstimate:
        """``GNBEstimate``: the Gauss-Newton-Bartlett ĥ at ``labels`` or at k label sets drawn (``sample_labels``)
        from the outputs of the same recorded forward pass, and with ``gradient=True`` also the loss and the
        gradient at the data labels, by one more pullback of that pass: what Sophia-G's refresh at θ_t needs
        from one forward pass instead of three. Counts k ngev, plus one nfev and ngev for the gradient. The
        gradient is ``value_and_grad``'s (the same operations); when it is not finite nothing is drawn or
        estimated (hhat and labels None), as a step that refuses it would."""
        if labels is None and seed is None:
            raise ValueError("gnb_diag needs seed= or labels=")
        z, pullback = C.network_vjp(self.model, params, self.X)
        value = grad = None
        if gradient:
            self.counts.nfev += 1
            self.counts.ngev += 1
            value, dz = ad.value_and_grad(lambda out: self.loss(out, self.y, check=False))(z)
            value, grad = _as_float(value), pullback(dz)
            if not T.all_finite(grad):
                return GNBEstimate(None, None, value, grad)
        if labels is None:
            labels = self.sample_labels(params, seed, k, outputs=ad.getval(z))
        self.counts.ngev += len(labels)
        return GNBEstimate(C.gnb_from_pullback(self.loss, z, pullback, labels), labels, value, grad)

    # --- dense matrices (small models) -----------------------------------------------------
    def dense_hessian(self, params, max_size=None):
        """The dense n×n ∇²L(θ) in ``tree.ravel`` order; ValueError beyond ``max_size``."""
        return ad.hessian(self._objective, params, max_size=max_size)

    def dense_ggn(self, params, max_size=None):
        """The dense n×n GGN, from n GGN-vector products; ValueError beyond ``max_size``."""
        return C.dense_from_product(self.curvature_operator(params, "ggn"), params, max_size,
                                    "dense GGN", "ggn_vp with conjugate gradient")

    def dense_fisher(self, params, kind="true", max_size=None, **kw):
        """The dense n×n Fisher of ``kind``, from n Fisher-vector products; ValueError beyond ``max_size``."""
        return C.dense_from_product(self.curvature_operator(params, kind, **kw), params, max_size,
                                    f"dense {kind} Fisher", "fisher_vp with conjugate gradient")


class FunctionOracle:
    """A scalar function of a vector (or tree), with optional analytic derivatives.

    ``f`` must be written with refopt's primitives if ``grad``/``hess`` are not given (then the
    autodiff supplies them). ``hess(x)`` returns the dense Hessian; ``hvp(x, v)`` a product.
    """

    # with or without analytic derivatives, the autodiff supplies the rest; no network quantities
    provides = frozenset({"value", "gradient", "hvp", "dense_hessian", "probes"})

    def __init__(self, f, grad=None, hess=None, hvp=None, counts: Counts | None = None,
                 batch_token: str | None = None):
        self.f, self._grad, self._hess, self._hvp = f, grad, hess, hvp
        self.counts = counts if counts is not None else Counts()
        # the function objects' serials (``function_token``) unless the maker names the function
        self.batch_token = function_token(f, grad, hess, hvp) if batch_token is None else str(batch_token)

    def value(self, x) -> float:
        """f(x) as a float (one nfev)."""
        self.counts.nfev += 1
        return _as_float(self.f(x))

    def evaluate(self, x):
        """(f(x), None), as ``Oracle.evaluate`` (a function has no outputs): one nfev."""
        return self.value(x), None

    def value_and_grad(self, x):
        """(f(x), ∇f(x)), the analytic gradient if given, else by autodiff (one nfev and one ngev)."""
        self.counts.nfev += 1
        self.counts.ngev += 1
        if self._grad is not None:
            return _as_float(self.f(x)), self._grad(x)
        value, g = ad.value_and_grad(self.f)(x)
        return _as_float(value), g

    def grad(self, x):
        """∇f(x), analytic if given, else by autodiff (one ngev)."""
        self.counts.ngev += 1
        return self._grad(x) if self._grad is not None else ad.grad(self.f)(x)

    def hvp(self, x, v):
        """∇²f(x) v from the analytic hvp, else the analytic Hessian, else autodiff of ``f`` (one nhvp).

        Not of a given ``grad``: a gradient written as ``np.array([...])`` of traced entries builds an
        object array, which the tracer cannot see through, while ``f`` returns one traced scalar."""
        self.counts.nhvp += 1
        if self._hvp is not None:
            return self._hvp(x, v)
        if self._hess is not None:
            return self._hess(x) @ v
        return ad.hvp(self.f, x, v)

    def hvp_operator(self, x):
        """(∇f(x), v ↦ ∇²f(x) v): each product a call of the analytic ``hvp`` (or Hessian) when there is one,
        else one reverse sweep of ∇f recorded once (``autodiff.hvp_operator``, as ``Oracle.hvp_operator``);
        ∇f the given ``grad`` when there is one (one ngev more than the recording's), else the recording's."""
        if self._hvp is None and self._hess is None:
            g, product = self._recorded(x)
            return (self.grad(x) if self._grad is not None else g), product
        g = self.grad(x)
        return g, lambda v: self.hvp(x, v)

    def hessian_operator(self, x):
        """v ↦ ∇²f(x) v for repeated products at one point (Newton-CG's CG loop): the analytic ``hvp`` (or
        Hessian) per product, needing no gradient; by autodiff, ∇f recorded once (one ngev) and one reverse
        sweep per product, instead of a forward-over-reverse pass of ``hvp`` each."""
        if self._hvp is None and self._hess is None:
            return self._recorded(x)[1]
        return lambda v: self.hvp(x, v)

    def _recorded(self, x):
        """(∇f(x), counted v ↦ ∇²f(x) v) from one recording of the autodiff gradient."""
        return _recorded_hvp(self.counts, self.f, x)

    def value_and_hvp_operator(self, x):
        """(f, ∇f, v ↦ ∇²f v), as ``Oracle.value_and_hvp_operator``: by autodiff from one recording (each
        product one reverse sweep, not a forward-over-reverse pass that recomputes ∇f), else with the analytic
        gradient and products; f and ∇f from ``value_and_grad`` (the given ``grad``) whenever ``grad`` is given,
        the recording then serving the products alone."""
        if self._hvp is None and self._hess is None:
            if self._grad is None:
                return _recorded_value_hvp(self.counts, self.f, x)
            value, g = self.value_and_grad(x)
            return value, g, self._recorded(x)[1]
        value, g = self.value_and_grad(x)
        return value, g, lambda v: self.hvp(x, v)

    def draw_probes(self, x, seed, k=1, distribution="rademacher"):
        """k probe trees shaped like ``x`` (``curvature.draw_probes``), as ``Oracle.draw_probes``."""
        return C.draw_probes(x, seed, k, distribution)

    def dense_hessian(self, x, max_size=None):
        """The dense Hessian, analytic if given, else by autodiff; ValueError beyond ``max_size``."""
        if self._hess is not None:
            C.check_dense_size(T.size(x), max_size, "dense Hessian", "hvp with conjugate gradient")
            return self._hess(x)
        return ad.hessian(self.f, x, max_size=max_size)
