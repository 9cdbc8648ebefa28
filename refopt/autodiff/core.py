"""The tracer: boxes, primitives, and the reverse and forward passes.

How it works (the scheme of HIPS autograd, reduced to what refopt needs):

* Differentiating opens a *trace* with a fresh integer id. Inputs are wrapped in a ``Box`` carrying
  that id; reverse traces give each box a ``Node`` of the recorded graph, forward traces give it a
  tangent.
* A ``Primitive`` called with boxed arguments unwraps the arguments of the highest trace, calls itself
  again on the unwrapped values (which may still be boxes of lower, enclosing traces), and wraps the
  result: a new graph node (reverse) or the tangent from the primitive's jvp rules (forward).
* Every derivative rule is written with primitives. The backward pass of an inner trace, run on values
  that are boxes of an outer trace, is therefore itself recorded by the outer trace: derivatives nest
  to any order, and the Hessian-vector product is one line (``grad`` of ``<grad f, v>``, or ``jvp`` of
  ``grad f``).

Rule signatures: ``vjp(g, ans, *args, **kwargs)`` returns the cotangent for one argument;
``jvp(t, ans, *args, **kwargs)`` returns the tangent contribution of one argument. ``args`` are the
values one trace down (possibly boxes of enclosing traces), ``ans`` likewise.

Plain fast path. A node records whether its inputs and output are plain arrays (no box of an enclosing
trace: ``Node.plain``). When such a node meets a plain cotangent, nothing outside the sweep watches it,
so the sweep may use the primitive's *plain* vjp rule (``defvjp_plain``) instead: the same formula on
raw arrays, without the primitives' dispatch, returning the same bits. A plain rule may write in place
only into arrays it allocated itself in that call (never into ``g``, ``ans`` or the arguments, which
the user or other nodes may hold), and only with the correctly rounded ufuncs (+, −, ×, ÷), whose bits
do not depend on the loop NumPy picks. A primitive with ``impl_saving`` also keeps, on a plain node,
what its forward computed and its rules would recompute (``saved=``; softmax cross-entropy's logsumexp).

Constants and conversions. A box never turns into a plain number: ``float(box)``, ``int``, ``complex``,
``operator.index``, ``math.exp(box)`` (math's functions call ``__float__``), and ``np.asarray(box)``,
``np.array(box)``, ``np.array([box, ...])``, ``np.float64(box)`` (NumPy reads a box through ``__array__``)
raise a TypeError (``TracedConversionError``), as ``bool(box)`` does, because the derivative would be
lost silently (a constant has derivative zero; an object array of boxes defeats NumPy's functions).
Boxes are immutable (item assignment is refused), and an attribute NumPy arrays have and boxes do not
raises ``UnsupportedAttribute``, naming the ones they have.
"""
from __future__ import annotations

import functools
import itertools

__all__ = ["Box", "LazyBox", "Node", "Primitive", "NonDifferentiable", "new_trace_id", "backward", "getval",
           "defvjp", "defjvp", "defvjp_plain", "defvjp_variadic", "defjvp_variadic", "set_add",
           "TracedConversionError", "UnsupportedAttribute"]

_trace_ids = itertools.count(1)


def new_trace_id() -> int:
    """A fresh trace id; ids grow, so a nested (inner) trace always has the larger id."""
    return next(_trace_ids)


class Node:
    """A vertex of a reverse-mode graph: the primitive, its output, its inputs, traced parents, and
    whether inputs and output are plain arrays (no box of an enclosing trace)."""

    __slots__ = ("prim", "ans", "args", "kwargs", "parents", "plain")

    def __init__(self, prim, ans, args, kwargs, parents, plain=True):
        self.prim = prim
        self.ans = ans
        self.args = args
        self.kwargs = kwargs
        self.parents = parents  # list of (argnum, Node)
        self.plain = plain


class Box:
    """A value being differentiated in trace ``trace``: reverse (``node`` set) or forward (``tangent``)."""

    __slots__ = ("value", "trace", "node", "tangent")
    # NumPy's dispatch protocols: primitives.py installs __array_ufunc__ and __array_function__, so
    # ndarray + Box and np.exp(Box) call the primitives. CuPy's cupy_array * Box sees a non-None
    # __array_ufunc__ and calls numpy.multiply, whose dispatch asks CuPy's __array_ufunc__ first (it
    # returns NotImplemented for a Box) and then the Box's. NumPy and CuPy find __array_ufunc__ before
    # they read the priority; it stays for libraries that know only the older protocol.
    __array_priority__ = 1000.0

    def __init__(self, value, trace, node=None, tangent=None):
        self.value = value
        self.trace = trace
        self.node = node
        self.tangent = tangent

    # Array-like attributes (read through nested boxes).
    shape = property(lambda self: self.value.shape if hasattr(self.value, "shape") else ())
    ndim = property(lambda self: len(self.shape))
    dtype = property(lambda self: self.value.dtype)
    size = property(lambda self: self.value.size)

    def __len__(self):
        return len(self.value)

    def __repr__(self):
        kind = "reverse" if self.node is not None else "forward"
        return f"Box({kind}, trace={self.trace}, value={self.value!r})"

    def __bool__(self):
        raise TypeError("the truth value of a traced array is undefined; branch on getval(x) instead")

    # Conversions to Python or NumPy numbers: refused, the derivative would be lost (module docs).
    def __float__(self):
        raise TracedConversionError("float")

    def __int__(self):
        raise TracedConversionError("int")

    def __index__(self):
        raise TracedConversionError("operator.index")

    def __complex__(self):
        raise TracedConversionError("complex")

    def __array__(self, dtype=None, copy=None):
        # np.asarray, np.array and np.float64 read a box through this; refusing keeps them from building a
        # constant (or an object array of boxes) in place of the traced value.
        raise TracedConversionError("numpy.asarray / numpy.array / numpy.float64", array=True)

    def __setitem__(self, index, value):
        raise TypeError("item assignment into a traced value is not supported (traced values are immutable); "
                        "build the new value with np.where, np.concatenate or np.stack instead")

    def __getattr__(self, name):
        # Only reached when normal lookup fails, so it costs nothing on the hot path.
        if name.startswith("__") or hasattr(type(self), name):  # protocol probes; a property that failed
            raise AttributeError(name)
        raise UnsupportedAttribute(name, _public_attributes())


class TracedConversionError(TypeError):
    """float(), int(), complex(), math.*, np.float64() of a traced value: refused, the derivative would be lost."""

    def __init__(self, conversion: str, array: bool = False):
        what = ("a constant array (or an object array of boxes) would replace it" if array
                else "a Python or NumPy number is a constant")
        hint = ("; build arrays of traced entries with np.stack([...]) or np.concatenate, not np.array([...])"
                if array else "")
        super().__init__(
            f"{conversion}() of a value traced by refopt's autodiff is not supported: the derivative would be lost "
            f"({what}). Use refopt's or NumPy's functions on the traced value (np.exp(x[0]), not math.exp(x[0]); "
            f"x[0] ** 2, not float(x[0]) ** 2){hint}; getval(x) reads the value where a constant is meant")


class UnsupportedAttribute(TypeError, AttributeError):
    """An array attribute or method that traced values do not have.

    A TypeError, as an unsupported NumPy function on a traced value is, and an AttributeError, so that
    ``hasattr`` and ``getattr(x, name, default)`` still answer."""

    def __init__(self, name: str, supported):
        super().__init__(f"the array attribute or method {name!r} is not supported on values traced by refopt's "
                         f"autodiff; supported are {', '.join(supported)} (and the NumPy functions of "
                         "refopt.autodiff.NUMPY_SUPPORTED)")
        self.name = name


_INTERNAL = frozenset({"value", "trace", "node", "tangent", "pending", "known_shape"})


def _public_attributes() -> list:
    """The array attributes and methods of boxes (those installed by primitives.py and its companions)."""
    return sorted(n for n in dir(Box) if not n.startswith("_") and n not in _INTERNAL)


def getval(x):
    """The raw array inside any number of boxes."""
    while isinstance(x, Box):
        x = x.value
    return x


class Primitive:
    """A differentiable operation with a vjp and a jvp rule per differentiable argument.

    ``impl_saving``, if given, returns ``(impl's value, saved)`` with the same bits as ``impl``; a reverse
    trace recording a plain node (raw inputs) calls it instead and passes ``saved=`` to that node's vjp
    rules, which must also work without it (nested nodes and direct calls do not have it).

    ``lazy_shape``, if given, maps the primitive's arguments to its output shape and declares that no
    jvp rule reads ``ans``. A forward trace then defers the primal value (a ``LazyBox``) and computes
    it only when something reads it. In a forward-over-reverse Hessian-vector product the primal of
    each parameter's gradient (a matmul per layer) is never read, so it is never computed.
    """

    def __init__(self, name: str, impl, lazy_shape=None, impl_saving=None):
        self.name = name
        self.impl = impl
        self.lazy_shape = lazy_shape
        self.impl_saving = impl_saving  # optional: (ans, saved) for a plain node's rules (``defvjp_plain``)
        self.vjps: dict[int, object] = {}
        self.jvps: dict[int, object] = {}
        self.plain_vjps: dict[int, object] = {}  # optional fast rules on raw arrays (see the module docs)

    def __repr__(self):
        return f"<primitive {self.name}>"

    def __call__(self, *args, **kwargs):
        top = 0
        for a in args:
            if isinstance(a, Box) and a.trace > top:
                top = a.trace
        if not top:
            return self.impl(*args, **kwargs)
        vals = list(args)
        traced = []
        plain = True  # no box of a lower trace among the unwrapped values: call impl directly
        for i, a in enumerate(args):
            if isinstance(a, Box):
                if a.trace == top:
                    v = vals[i] = a.value
                    traced.append(i)
                    if isinstance(v, Box):
                        plain = False
                else:
                    plain = False
        if args[traced[0]].node is not None:  # reverse trace: record a node
            if not plain:
                ans = self(*vals, **kwargs)
            elif self.impl_saving is None:
                ans = self.impl(*vals, **kwargs)
            else:  # keep what the forward computed and the rules would recompute: their kwarg ``saved``
                ans, saved = self.impl_saving(*vals, **kwargs)
                kwargs = {**kwargs, "saved": saved}
            vjps = self.vjps
            parents = []
            for i in traced:
                if i not in vjps:
                    raise NotImplementedError(f"no vjp rule for argument {i} of {self.name}")
                parents.append((i, args[i].node))
            return Box(ans, top, Node(self, ans, vals, kwargs, parents, plain))
        # forward trace: push tangents through the jvp rules
        if self.lazy_shape is not None:
            ans = None
        else:
            ans = self.impl(*vals, **kwargs) if plain else self(*vals, **kwargs)
        tangent = None
        for i in traced:
            rule = self.jvps.get(i)
            if rule is None:
                raise NotImplementedError(f"no jvp rule for argument {i} of {self.name}")
            t = rule(args[i].tangent, ans, *vals, **kwargs)
            tangent = t if tangent is None else _add(tangent, t)
        if self.lazy_shape is not None:
            return LazyBox(top, tangent, self, vals, kwargs, self.lazy_shape(*vals, **kwargs))
        return Box(ans, top, None, tangent)


_box_value = Box.value  # the slot descriptor that stores a Box's value


class LazyBox(Box):
    """A forward-trace box whose primal value is computed on first read (see ``Primitive``).

    Its shape is known without computing the value, so shape checks in rules do not force it.
    """

    __slots__ = ("pending", "known_shape")

    def __init__(self, trace, tangent, prim, vals, kwargs, shape):
        _box_value.__set__(self, None)
        self.trace = trace
        self.node = None
        self.tangent = tangent
        self.pending = (prim, vals, kwargs)
        self.known_shape = shape

    @property
    def value(self):
        """The primal value, computed from the deferred primitive call on first read and then kept."""
        if self.pending is not None:
            prim, vals, kwargs = self.pending
            _box_value.__set__(self, prim(*vals, **kwargs))
            self.pending = None
        return _box_value.__get__(self)

    shape = property(lambda self: self.known_shape)


class NonDifferentiable(Primitive):
    """An operation whose output is piecewise constant (masks, one-hots): boxes are stripped."""

    def __call__(self, *args, **kwargs):
        return self.impl(*[getval(a) for a in args], **{k: getval(v) for k, v in kwargs.items()})


def defvjp(prim: Primitive, *rules) -> None:
    """Register vjp rules for arguments 0, 1, ... (``None`` for a non-differentiable argument)."""
    for i, rule in enumerate(rules):
        if rule is not None:
            prim.vjps[i] = rule


def defvjp_plain(prim: Primitive, *rules) -> None:
    """Register plain-array vjp rules for arguments 0, 1, ... (``None``: the primitive rule is used).

    Each must return exactly what the primitive rule returns on raw arrays (the tests compare the bits)
    and write only into arrays it allocated itself; see the module docs.
    """
    for i, rule in enumerate(rules):
        if rule is not None:
            if i not in prim.vjps:
                raise ValueError(f"{prim.name}: a plain vjp rule for argument {i}, which has no vjp rule")
            prim.plain_vjps[i] = rule


def defjvp(prim: Primitive, *rules) -> None:
    """Register jvp rules for arguments 0, 1, ... (``None`` for a non-differentiable argument)."""
    for i, rule in enumerate(rules):
        if rule is not None:
            prim.jvps[i] = rule


class _EveryArgument(dict):
    """Rules of a variadic primitive: one rule for every argument position, made on first use."""

    def __init__(self, rule):
        super().__init__()
        self._rule = rule

    def __contains__(self, argnum):
        return isinstance(argnum, int) and argnum >= 0

    def __missing__(self, argnum):
        rule = self[argnum] = functools.partial(self._rule, argnum)
        return rule

    def get(self, argnum, default=None):
        """The rule for argument ``argnum`` (every position has one)."""
        return self[argnum] if argnum in self else default


def defvjp_variadic(prim: Primitive, rule) -> None:
    """Register ``rule(argnum, g, ans, *args, **kwargs)`` as the vjp rule of every argument (``concatenate``)."""
    prim.vjps = _EveryArgument(rule)


def defjvp_variadic(prim: Primitive, rule) -> None:
    """Register ``rule(argnum, t, ans, *args, **kwargs)`` as the jvp rule of every argument."""
    prim.jvps = _EveryArgument(rule)


_add = None  # set by primitives.py (the add primitive), used to sum cotangents and tangents


def set_add(add_primitive) -> None:
    """Install the add primitive that sums cotangents and tangents (primitives.py calls this once)."""
    global _add
    _add = add_primitive


class _Root:
    """A virtual node whose parents are the outputs being seeded, so several outputs share one pass."""

    __slots__ = ("parents",)

    def __init__(self, nodes):
        self.parents = [(None, n) for n in nodes]


def backward(seeds):
    """Reverse pass. ``seeds`` is a list of (Node, cotangent); returns {input Node: its cotangent}.

    Nodes are visited in reverse topological order, so each node's cotangent is complete before it is
    pushed to its parents. Only the cotangents of input nodes (``prim is None``) are kept; the others
    are dropped as soon as they have been pushed on, which keeps a sweep's peak memory low. The graph
    is left intact: the same recording can be swept many times (this is what makes a recorded
    gradient a reusable Hessian-vector operator). The visiting order, and so the order in which a
    node's cotangent contributions are summed, depends only on the graph and the seeds.
    """
    root = _Root([n for n, _ in seeds])
    child_counts: dict[object, int] = {}
    stack = [root]
    while stack:  # count, for each node, how many recorded children reach it
        for _, parent in stack.pop().parents:
            if parent in child_counts:
                child_counts[parent] += 1
            else:
                child_counts[parent] = 1
                stack.append(parent)
    add = _add
    add_plain = add.impl
    outgrads: dict[object, object] = {}
    for n, g in seeds:
        outgrads[n] = g if n not in outgrads else add(outgrads[n], g)
        child_counts[n] -= 1
    ready = [n for n in {id(n): n for n, _ in seeds}.values() if child_counts[n] == 0]
    done: dict[object, object] = {}
    while ready:
        node = ready.pop()
        g = outgrads.pop(node)
        prim = node.prim
        if prim is None:  # an input: keep its cotangent (input nodes have no parents)
            done[node] = g
            continue
        fast = prim.plain_vjps if node.plain and not isinstance(g, Box) else None
        vjps, ans, args, kwargs = prim.vjps, node.ans, node.args, node.kwargs
        for argnum, parent in node.parents:
            pg = ((fast.get(argnum) if fast else None) or vjps[argnum])(g, ans, *args, **kwargs)
            if parent in outgrads:  # the add primitive on raw arrays is its impl: call that directly
                prev = outgrads[parent]
                outgrads[parent] = (add(prev, pg) if isinstance(prev, Box) or isinstance(pg, Box)
                                    else add_plain(prev, pg))
            else:
                outgrads[parent] = pg
            count = child_counts[parent] - 1
            child_counts[parent] = count
            if not count:
                ready.append(parent)
    return done
