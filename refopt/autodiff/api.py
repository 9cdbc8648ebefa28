"""User-facing transformations: grad, value_and_grad, vjp, jvp, hvp, jacobian, hessian.

All of them differentiate a function ``f(x, *args, **kwargs)`` with respect to its first argument
``x``, which may be an array or a tree (nested lists/tuples/dicts) of arrays; the other arguments are
passed through as constants. Every transformation opens its own trace, so they compose:
``grad(lambda x: vdot(grad(f)(x), v))`` is a Hessian-vector product.
"""
from __future__ import annotations

from .. import tree as T
from ..backend import xp
from . import primitives as P
from .core import Box, Node, backward, getval, new_trace_id

__all__ = ["vjp", "jvp", "grad", "value_and_grad", "hvp", "hvp_operator", "jacobian", "hessian",
           "DENSE_MAX_SIZE", "check_dense_size"]

# A dense n×n matrix of float64 with n = 8192 takes 512 MiB; refuse more unless asked.
DENSE_MAX_SIZE = 8192


def _zeros_like_leaf(x):
    return xp.zeros(P.shape_of(x), dtype=getval(x).dtype)


def vjp(f, x, *args, has_aux: bool = False, **kwargs):
    """Return ``(f(x), vjp_fn)``; ``vjp_fn(ct)`` is ``J(x)ᵀ ct`` as a tree like ``x``.

    The recorded graph is kept, so ``vjp_fn`` may be called many times (each call is one reverse
    sweep). Output leaves that do not depend on ``x`` get no cotangent. With ``has_aux=True``, ``f``
    returns ``(out, aux)``: ``aux`` is computed in the same pass but not differentiated, and the result
    is ``(out, vjp_fn, aux)``.
    """
    trace, xs, xdef, nodes, out = _record(f, x, args, kwargs)
    if has_aux:
        out, aux = out
    value, vjp_fn = _pullback(trace, xs, xdef, nodes, out)
    if has_aux:
        return value, vjp_fn, T.tree_map(lambda a: _strip(a, trace), aux)
    return value, vjp_fn


def _record(f, x, args, kwargs):
    """Run ``f`` on ``x`` boxed in a fresh reverse trace: (trace, leaves, treedef, input nodes, output)."""
    trace = new_trace_id()
    xs, xdef = T.flatten(x)
    nodes = [Node(None, leaf, (), {}, []) for leaf in xs]
    out = f(T.unflatten(xdef, [Box(leaf, trace, n) for leaf, n in zip(xs, nodes)]), *args, **kwargs)
    return trace, xs, xdef, nodes, out


def _gradients(xs, xdef, nodes, seeds):
    """The input cotangents of one reverse sweep from ``seeds``, as a tree like the input (zeros where none)."""
    grads = backward(seeds) if seeds else {}
    return T.unflatten(xdef, [grads[n] if n in grads else _zeros_like_leaf(leaf) for n, leaf in zip(nodes, xs)])


def _pullback(trace, xs, xdef, nodes, out):
    """(value, vjp_fn) of a recorded output (see ``vjp``)."""
    outs, outdef = T.flatten(out)
    _check_outputs(outs)
    value = T.unflatten(outdef, [_strip(o, trace) for o in outs])

    def vjp_fn(ct):
        cts, ctdef = T.flatten(ct)
        if len(cts) != len(outs):
            raise ValueError(f"cotangent: a tree of {len(cts)} leaves for an output of {len(outs)} leaves")
        for o, c in zip(outs, cts):  # a broadcastable cotangent would silently give a wrong product
            if P.shape_of(c) != P.shape_of(o):
                raise ValueError(f"cotangent: leaf of shape {P.shape_of(c)} for an output of shape "
                                 f"{P.shape_of(o)}")
        return _gradients(xs, xdef, nodes, [(o.node, c) for o, c in zip(outs, cts)
                                            if isinstance(o, Box) and o.trace == trace])

    return value, vjp_fn


def _check_outputs(outs):
    """TypeError for an output the tracer cannot see into (its derivative would silently read as zero)."""
    for o in outs:
        if not isinstance(o, Box) and getattr(getattr(o, "dtype", None), "kind", "") == "O":
            raise TypeError("the function returned a NumPy object array (np.array of traced values?), which the "
                            "autodiff cannot differentiate; return one traced expression instead")


def _strip(o, trace):
    """The value of ``o`` in trace ``trace`` (boxes of enclosing traces are kept)."""
    return o.value if isinstance(o, Box) and o.trace == trace else o


def jvp(f, x, v, *args, **kwargs):
    """Return ``(f(x), J(x) v)`` by forward mode: one pass carrying tangents alongside values."""
    return _forward(f, x, v, args, kwargs, need_value=True)


def _forward(f, x, v, args, kwargs, need_value):
    trace = new_trace_id()
    xs, xdef = T.flatten(x)
    vs, vdef = T.flatten(v)
    if len(vs) != len(xs):
        raise ValueError(f"v: a tangent tree of {len(vs)} leaves for an input of {len(xs)} leaves")
    for xi, vi in zip(xs, vs):
        if P.shape_of(xi) != P.shape_of(vi):
            raise ValueError(f"v: tangent leaf of shape {P.shape_of(vi)} for an input of shape {P.shape_of(xi)}")
    boxes = [Box(leaf, trace, tangent=t) for leaf, t in zip(xs, vs)]
    out = f(T.unflatten(xdef, boxes), *args, **kwargs)
    outs, outdef = T.flatten(out)
    _check_outputs(outs)
    vals, tans = [], []
    for o in outs:
        if isinstance(o, Box) and o.trace == trace:
            # Reading .value of a LazyBox computes it; a caller that only wants tangents skips that.
            vals.append(o.value if need_value else None)
            tans.append(o.tangent)
        else:
            vals.append(o)
            tans.append(_zeros_like_leaf(o))
    return (T.unflatten(outdef, vals) if need_value else None), T.unflatten(outdef, tans)


def _check_scalar(value):
    if P.shape_of(value) not in ((), (1,)):
        raise ValueError(f"grad needs a scalar-valued function, got output of shape {P.shape_of(value)}")


def value_and_grad(f):
    """``x -> (f(x), ∇f(x))`` for a scalar-valued ``f``."""
    def vg(x, *args, **kwargs):
        trace, xs, xdef, nodes, out = _record(f, x, args, kwargs)
        if isinstance(out, Box) and out.trace == trace:  # the usual output, one traced leaf: vjp's checks hold
            value = out.value
            _check_scalar(value)
            return value, _gradients(xs, xdef, nodes, [(out.node, _one_like(value))])
        value, back = _pullback(trace, xs, xdef, nodes, out)
        _check_scalar(value)
        return value, back(_one_like(value))
    return vg


def _one_like(value):
    """The cotangent 1 of a scalar output (an array of its shape and dtype; 1.0 for a Python number)."""
    raw = getval(value)
    return xp.ones(P.shape_of(value), dtype=raw.dtype) if hasattr(raw, "dtype") else 1.0


def grad(f):
    """``x -> ∇f(x)`` for a scalar-valued ``f``."""
    vg = value_and_grad(f)
    return lambda x, *args, **kwargs: vg(x, *args, **kwargs)[1]


def hvp(f, x, v, *args, **kwargs):
    """Hessian-vector product ∇²f(x) v, by forward-over-reverse: the directional derivative of ∇f.

    Only the tangent is returned, so the primal gradient's last products (one matmul per weight) are
    never computed (they are ``LazyBox`` values nobody reads).
    """
    return _forward(grad(f), x, v, args, kwargs, need_value=False)[1]


def hvp_operator(f, x, *args, **kwargs):
    """Record ∇f(x) once and return ``(∇f(x), v -> ∇²f(x) v)`` (reverse-over-reverse).

    The gradient's own computation is recorded as a graph; each product is one reverse sweep of that
    graph with cotangent ``v`` (the Hessian is symmetric, so ``vᵀ∇²f = (∇²f v)ᵀ``). This is the cheap
    way to take many products at one point, as conjugate gradient does.
    """
    return vjp(grad(f), x, *args, **kwargs)


def _flat_size(tree):
    return sum(int(getattr(getval(leaf), "size", 1)) for leaf in T.leaves(tree))


def _unit_tree(like, i):
    flat = xp.zeros(_flat_size(like), dtype=getval(T.leaves(like)[0]).dtype)
    flat[i] = 1.0
    return T.unravel(flat, T.tree_map(getval, like))


def check_dense_size(n: int, max_size: int | None, what: str, alternative: str) -> None:
    """ValueError naming ``alternative`` when a dense n×n ``what`` exceeds ``max_size`` (None: DENSE_MAX_SIZE)."""
    limit = DENSE_MAX_SIZE if max_size is None else max_size
    if n > limit:
        gib = n * n * 8 / 2 ** 30
        raise ValueError(f"{what}: n={n}; a dense n×n matrix ({gib:.1f} GiB in float64) "
                         f"exceeds max_size={limit}. Use {alternative} instead, or raise max_size.")


def hessian(f, x, *args, max_size=None, **kwargs):
    """Dense Hessian of a scalar ``f`` as an (n, n) array over the flattened (row-major) input.

    Built column by column from Hessian-vector products on the recorded gradient, so it is exactly
    what the matrix-free products compute. Refuses inputs with more than ``max_size`` entries.
    """
    n = _flat_size(x)
    check_dense_size(n, max_size, "hessian", "hvp / hvp_operator with conjugate gradient")
    _, hv = hvp_operator(f, x, *args, **kwargs)
    cols = [T.ravel(hv(_unit_tree(x, i))) for i in range(n)]
    return xp.stack(cols, axis=1)


def jacobian(f, x, *args, max_size=None, **kwargs):
    """Dense Jacobian (m, n) of the flattened output with respect to the flattened input."""
    n = _flat_size(x)
    check_dense_size(n, max_size, "jacobian (input)", "jvp / vjp")
    out, back = vjp(f, x, *args, **kwargs)
    m = _flat_size(out)
    check_dense_size(m, max_size, "jacobian (output)", "jvp / vjp")
    rows = [T.ravel(back(_unit_tree(out, i))) for i in range(m)]
    return xp.stack(rows, axis=0) if rows else xp.zeros((0, n))
