"""Helpers shared by the K-FAC and fused-update test files: dense Kronecker constructions written with np.kron
(never through refopt's factor helpers) and the driver of the chunking tests."""
import math

import numpy as np

from refopt.optim import update_rules


def blockdiag(mats):
    """The block-diagonal matrix of the square ``mats``, in order."""
    n = sum(len(m) for m in mats)
    out, i = np.zeros((n, n)), 0
    for m in mats:
        out[i:i + len(m), i:i + len(m)] = m
        i += len(m)
    return out


def damped_kron(A, G, damping, scheme):
    """(A + πγI) ⊗ (G + γ/πI) with π = sqrt((tr A/dim A)/(tr G/dim G)) (Martens & Grosse 2015, §6.3), π = 1
    for "tikhonov"; A ⊗ G + λI for "eigen"."""
    if scheme == "eigen":
        return np.kron(A, G) + damping * np.eye(len(A) * len(G))
    ta, tg = np.trace(A) / len(A), np.trace(G) / len(G)
    pi = math.sqrt(ta / tg) if scheme == "pi" and ta > 0 and tg > 0 else 1.0   # a zero-trace factor: π = 1
    gamma = math.sqrt(damping)
    return np.kron(A + pi * gamma * np.eye(len(A)), G + gamma / pi * np.eye(len(G)))


def dense_kfac(A, G, damping, scheme, bias_block="joint"):
    """blockdiag_l of the damped A_l ⊗ G_l; "separate" adds the bias block G_l + γI ("eigen": G_l + λI) after
    each layer's weight block."""
    if bias_block == "joint":
        return blockdiag([damped_kron(a, g, damping, scheme) for a, g in zip(A, G)])
    bias_d = damping if scheme == "eigen" else math.sqrt(damping)
    return blockdiag([m for a, g in zip(A, G) for m in (damped_kron(a, g, damping, scheme),
                                                         g + bias_d * np.eye(len(g)))])


def run_chunked(monkeypatch, make, params, oracle, steps, record, sizes=(10 ** 9, 7)):
    """[(params, state, records)] of ``steps`` updates of ``make()`` from ``params`` for each chunk size in
    ``sizes`` (``update_rules.CHUNK``; the default: one chunk per leaf, then chunks of 7); ``record(info)`` is
    kept for every step."""
    runs = []
    for size in sizes:
        monkeypatch.setattr(update_rules, "CHUNK", size)
        opt = make()
        x, s, records = params, opt.init(params), []
        for _ in range(steps):
            x, s, info = opt.update(x, s, oracle)
            records.append(record(info))
        runs.append((x, s, records))
    return runs
