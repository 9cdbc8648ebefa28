"""Reverse- and forward-mode automatic differentiation, written from scratch, nesting to any order.

``core`` holds the tracer, ``primitives`` the operations with their derivative rules, ``api`` the
transformations. Import the primitives as ``from refopt.autodiff import numpy_like as anp``-style
names directly from this package: ``from refopt.autodiff import tanh, matmul, grad``.
"""
from .api import DENSE_MAX_SIZE, grad, hessian, hvp, hvp_operator, jacobian, jvp, value_and_grad, vjp
from .core import Box, Primitive, defjvp, defvjp, getval
from .primitives import *  # noqa: F401,F403
from .primitives import __all__ as _prims

__all__ = ["grad", "value_and_grad", "vjp", "jvp", "hvp", "hvp_operator", "jacobian", "hessian",
           "DENSE_MAX_SIZE", "Box", "Primitive", "defvjp", "defjvp", "getval", *_prims]
