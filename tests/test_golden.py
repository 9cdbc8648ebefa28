"""Golden traces: every optimizer and every library profile, exported by ``refopt verify export --all`` (5 steps
on the tiny MLP, draws recorded), must replay to the same parameters; and, in ``tiny_cnn/``, the same on the
tiny CNN (``--problem tiny_cnn``) for every optimizer that takes a convolution (K-BFGS and the block-tridiagonal
K-FAC refuse one).

The files in ``tests/data/golden`` were exported before the redesign of the optimizer families (issue 10), so any
change of behaviour in a refactor shows up here as the first divergent step and parameter. Regenerate them only
for an intended change of behaviour: ``refopt verify export --all --out tests/data/golden`` (and ``--problem
tiny_cnn --out tests/data/golden/tiny_cnn``; the CNN traces were first written in issue 15).

Tolerance: on the machine that wrote them the replay is bit-identical (``scripts/check_golden.py`` checks that
with rtol = atol = 0). On other machines BLAS kernels add in other orders, and the rounding differences grow
with the conditioning of each step's solve. Measured across OpenBLAS's Prescott, Haswell and SkylakeX kernels:
≤ 1e-14 for most traces, ≤ 5e-11 absolute (≈ 1e-10 relative) for the Shampoo and curvlinops K-FAC profiles,
whose roots and inverses see condition numbers ≈ 1e4; rtol = 1e-8 leaves a factor ≈ 100 above that. Full-matrix
Adagrad at its default δ = 1e-6 is the exception: G_t + δI has condition ≈ ‖g‖²/δ ≈ 1e6, its inverse square root
≈ 1e3, and its small components drift by up to 2e-7 relative; it gets rtol = 1e-5 (on the CNN too). Meta's
Shampoo profile on the CNN takes inverse fourth roots of each conv kernel's four factors (one per dimension,
rank-deficient after the first steps) shifted by ε = 1e-12: a bias of the dense head moves by 5e-8 relative
between kernels at step 2 (the profile's gaps call such trajectories rounding-sensitive); it gets rtol = 1e-6.
Any change of a formula or convention moves parameters by ≥ 1e-4 (see the profile tests), far above these.
"""
import os

import pytest

from refopt.verify.trace import check_trace

GOLDEN = os.path.join(os.path.dirname(__file__), "data", "golden")
CNN = "tiny_cnn"   # the subfolder of the CNN traces
ILL_CONDITIONED = {"adagrad_full.npz": 1e-5, "tiny_cnn/adagrad_full.npz": 1e-5,  # see the module docstring
                   "tiny_cnn/shampoo@facebookresearch_distributed_shampoo.npz": 1e-6}
DENSE_ONLY = {"kbfgs", "kfac_tridiag"}       # refuse a convolution: no CNN trace
FILES = sorted(f for f in os.listdir(GOLDEN) if f.endswith(".npz"))
CNN_FILES = sorted(os.path.join(CNN, f) for f in os.listdir(os.path.join(GOLDEN, CNN)) if f.endswith(".npz"))


def _expected(optimizers) -> set:
    from refopt.verify.profiles import PROFILES
    # one file per optimizer ("adam") and one per profile ("adam@torch.optim.Adam", "/" written "_"), no other
    return set(optimizers) | {f"{p.optimizer}@{label.replace('/', '_')}" for label, p in PROFILES.items()
                              if p.optimizer in optimizers}


def test_every_optimizer_and_profile_has_a_golden_trace():
    from refopt.optim import OPTIMIZERS

    names = {f[:-4] for f in FILES}
    expected = _expected(set(OPTIMIZERS))
    assert names == expected, f"missing {sorted(expected - names)}, unexpected {sorted(names - expected)}"
    # and a CNN trace (tiny_cnn: `refopt verify export --all --problem tiny_cnn`) for each that takes a CNN
    names = {os.path.basename(f)[:-4] for f in CNN_FILES}
    expected = _expected(set(OPTIMIZERS) - DENSE_ONLY)
    assert names == expected, f"missing {sorted(expected - names)}, unexpected {sorted(names - expected)}"


@pytest.mark.parametrize("name", FILES + CNN_FILES)
def test_golden_trace_replays(name):
    rtol = ILL_CONDITIONED.get(name, 1e-8)
    divergence, _ = check_trace(os.path.join(GOLDEN, name), rtol=rtol, atol=1e-12)
    assert divergence is None, f"{name}: {divergence}"
