"""Replay every golden trace in tests/data/golden (and its tiny_cnn/ subfolder) and report the largest
difference from the recorded parameters; with the default ``--rtol 0`` any difference at all is a failure.

On the machine (and BLAS kernel) that exported the traces a refactor that keeps behaviour replays them
bit-identically; elsewhere use ``--rtol`` (the suite's test_golden.py uses 1e-10).

    python scripts/check_golden.py [--rtol 0] [--folder tests/data/golden]
"""
import argparse
import os
import sys

import numpy as np

from refopt import tree as T
from refopt.backend import to_host
from refopt.verify.trace import check_trace, load_trace


def main() -> int:
    here = os.path.dirname(os.path.abspath(__file__))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", default=os.path.join(here, "..", "tests", "data", "golden"))
    parser.add_argument("--rtol", type=float, default=0.0)
    args = parser.parse_args()
    bad = 0
    files = sorted(os.path.relpath(os.path.join(root, f), args.folder)  # tiny_cnn/ holds the CNN traces
                   for root, _, names in os.walk(args.folder) for f in names if f.endswith(".npz"))
    for name in files:
        theirs = load_trace(os.path.join(args.folder, name))
        divergence, ours = check_trace(theirs, rtol=args.rtol, atol=0.0)
        worst = max(float(np.max(np.abs(to_host(a) - to_host(b)), initial=0.0))
                    for t in range(1, theirs.steps + 1)
                    for a, b in zip(T.leaves(ours.params[t]), T.leaves(theirs.params[t])))
        bad += divergence is not None
        print(f"{'ok  ' if divergence is None else 'DIFF'} {name:60s} max |Δθ| = {worst:.3g}")
    print(f"{len(files) - bad} of {len(files)} traces replay {'bit-identically' if args.rtol == 0 else f'within rtol {args.rtol:g}'}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
