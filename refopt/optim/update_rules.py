"""The update rules that the first-order and adaptive optimizers share, each written once.

With θ the parameters, g = ∇L(θ) and t = 1, 2, … the number of the step being taken:

    L2 weight decay          g ← g + λθ                     (the gradient of L + ½λ‖θ‖²)
    decoupled weight decay   Δ ← Δ + cθ,  θ ← θ − ηΔ        (Loshchilov & Hutter 2019, Alg. 2 line 12)
    moving average           m ← βm + (1 − β)x              (Adam's moments, AdaHessian, Sophia, Shampoo;
                                                              ``ema_into`` reuses a fresh x's buffer)
    bias correction          m̂ = m / (1 − βᵗ)               (Kingma & Ba 2014, §3)
    momentum                 v ← μv + d;  step v, or d + μv  (Polyak 1964; Nesterov in torch's form,
                                                              Sutskever et al. 2013)
    layer-wise grafting      P ← P · ‖D‖ / ‖P‖              (Agarwal et al. 2020, "Disentangling
                                                              adaptive gradient methods")
    step refusal             a non-finite ∇L(θ): params and state come back unchanged (``base.refuse``)

Decoupled decay has two placements of the learning rate, both in use: Adagrad, Shampoo and AdaHessian
take θ ← θ − η(d + λθ) (``descent_step``), Adam/AdamW and the K-FAC family add cθ to a step that already
holds η (``decoupled_decay`` with c = λ, or c = ηλ for the "lr-scaled" form of torch and optax). They
agree in exact arithmetic and differ in rounding, so each keeps its own.

Every function is pure (it returns new trees) and works leafwise on parameter trees; a bare array is a
tree of one leaf. ``chunks`` cuts a leaf for the fused updates (Adam, Sophia, AdaHessian), which make a dozen
elementwise passes per leaf: run chunk by chunk they stay in the cache with their temporaries, so memory sees
only the inputs read and the outputs written once; the results are elementwise, so the same bit for bit. Rounding is part of the contract (the golden traces replay bit for bit): each
docstring gives the exact order of the floating-point operations, and callers pass the same operands
they always did (Adam's second moment averages g ⊙ g, formed first).
"""
from __future__ import annotations

from .. import tree as T
from ..backend import backend_name, xp

__all__ = ["WEIGHT_DECAY_MODES", "NON_FINITE_GRADIENT", "check_nonempty_leaves", "l2_decay", "decayed_gradient",
           "decoupled_decay", "descent_step", "ema", "ema_chunk", "ema_into", "bias_correction", "momentum", "graft", "CHUNK", "chunks",
           "flat"]

WEIGHT_DECAY_MODES = ("l2", "decoupled")
NON_FINITE_GRADIENT = "non-finite gradient: step refused"   # the message of the step refusal

# Elements per chunk of a fused update: 128 KiB per float64 operand, so a chunk's ~8 operands and
# temporaries fit a 1–2 MiB L2 cache (on bench_adaptive's 512×512 leaves 16384 and 32768 are the fastest,
# whole-leaf passes about 20 % slower, 4096 slower again from the per-call overhead).
CHUNK = 16384


def chunks(n: int) -> list:
    """The slices that cut range(n) into runs of ``CHUNK`` elements; one slice on CuPy, where each chunk
    would be a kernel launch of its own."""
    if n <= CHUNK or backend_name() == "cupy":
        return [slice(0, n)]
    return [slice(s, min(s + CHUNK, n)) for s in range(0, n, CHUNK)]


def flat(x):
    """``x`` as a 1-d array in row-major order: a view of a C-contiguous array (the outputs of a fused update
    are allocated C-contiguous, so writes into the view land in them), a copy of any other."""
    return xp.reshape(x, (-1,))


def check_nonempty_leaves(params) -> None:
    """ValueError when a leaf of ``params`` has no entries (a zero-length mode: nothing to optimise)."""
    for leaf in T.leaves(params):
        if leaf.size == 0:
            raise ValueError(f"params: a leaf of shape {tuple(leaf.shape)} has a zero-length mode "
                             "(nothing to optimise)")


def l2_decay(g, params, weight_decay: float):
    """g + λθ (computed as λ·θ + g), the gradient of L + ½λ‖θ‖²; ``g`` itself when λ = 0."""
    return T.axpy(weight_decay, params, g) if weight_decay else g


def decayed_gradient(params, oracle, weight_decay: float = 0.0, mode: str = "l2"):
    """(L(θ), g) with g = ∇L(θ), plus λθ when ``mode`` is "l2"; g is None when ∇L(θ) is not finite, and the
    caller then refuses the step with ``NON_FINITE_GRADIENT``."""
    loss, g = oracle.value_and_grad(params)
    if not T.all_finite(g):
        return loss, None
    return loss, (l2_decay(g, params, weight_decay) if mode == "l2" else g)


def decoupled_decay(step, params, c: float):
    """Δ + c·θ: the step Δ of θ ← θ − Δ with the decoupled decay added; ``step`` itself when c = 0.

    Δ already holds the learning rate (Adam, K-FAC): c = λ is Loshchilov & Hutter's θ ← θ − λθ, c = ηλ the
    lr-scaled form. A signed update θ ← θ + Δ passes −c; each leaf is Δ + (c·θ) in that order."""
    return T.tree_map2(lambda d, x: d + c * x, step, params) if c else step


def descent_step(params, d, lr: float, weight_decay: float = 0.0, mode: str = "l2"):
    """θ − η·d, or θ − η·(d + λθ) under decoupled weight decay (``mode`` "decoupled"); computed as
    (−η)·(d + λ·θ) + θ, which is θ − η(d + λθ) bit for bit."""
    if mode == "decoupled":
        d = decoupled_decay(d, params, weight_decay)
    return T.axpy(-lr, d, params)


def ema(average, x, beta: float):
    """β·m + (1 − β)·x, leafwise: the exponential moving average m of x (``average`` is m)."""
    return T.tree_map2(lambda m, xi: beta * m + (1.0 - beta) * xi, average, x)


def ema_chunk(m, x, beta: float, out, tmp):
    """``ema`` of one chunk (arrays of one shape) into ``out``: (1 − β)·x formed in ``out`` (which may be x
    itself), then β·m formed in ``tmp`` (a scratch, or x's buffer when out is not x) and added. (1 − β)x + βm
    is ``ema``'s βm + (1 − β)x bit for bit: IEEE addition commutes. The fused updates' moving averages."""
    xp.multiply(x, 1.0 - beta, out=out)
    xp.multiply(m, beta, out=tmp)
    out += tmp
    return out


def ema_into(average, x, beta: float):
    """``ema(average, x, beta)`` computed without temporaries, chunk by chunk (``ema_chunk``): each result leaf
    is fresh, β·m formed in x's own buffer. The caller owns x (a fresh estimate) and does not read it again;
    the rounding is ``ema``'s."""
    def one(m, xi):
        out = xp.empty(m.shape, dtype=xp.result_type(m, xi))
        O, mf, xf = flat(out), flat(m), flat(xi)
        for sl in chunks(O.size):
            ema_chunk(mf[sl], xf[sl], beta, O[sl], xf[sl])
        return out
    return T.tree_map2(one, average, x)


def bias_correction(beta: float, t: int, on: bool = True) -> float:
    """1 − βᵗ, the factor that m = EMA_β of x with m_0 = 0 falls short of x by (m̂ = m / (1 − βᵗ)); 1.0 when off."""
    return 1.0 - beta ** t if on else 1.0


def momentum(velocity, d, mu: float, nesterov: bool = False):
    """(v, step) with v = μ·v_prev + d (no dampening) and step = v, or d + μ·v for Nesterov (torch's form:
    the look-ahead is taken on the direction, with the new v)."""
    v = T.axpy(mu, velocity, d)
    return v, (T.axpy(mu, v, d) if nesterov else v)


def graft(P, D):
    """P · (‖D‖ / ‖P‖), one array: the direction of P with the norm of D (P itself when ‖P‖ = 0)."""
    norm_P = float(xp.linalg.norm(P.ravel()))
    return P * (float(xp.linalg.norm(D.ravel())) / norm_P) if norm_P > 0 else P
