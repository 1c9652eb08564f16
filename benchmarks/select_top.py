"""Time select_top against a full argsort on 10**7 float64 scores.

Run: python benchmarks/select_top.py
Writes benchmarks/results/select_top.json next to this script.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

from activeflow.core.score.strategies import select_top

N = 10**7
KS = (100, 10_000, 1_000_000)
REPEATS = 3
SEED = 0


def best_of(fn, repeats: int = REPEATS) -> float:
    """Minimum wall time over ``repeats`` calls: the least noisy estimate of the cost itself."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    scores = np.random.default_rng(SEED).random(N)  # [N] float64

    # The full sort select_top avoids. The default (introsort) argsort is the fastest full sort
    # and so the conservative baseline; the stable descending sort is the one that would give
    # select_top's exact tie rule, reported alongside.
    argsort_seconds = best_of(lambda: np.argsort(scores))
    stable_argsort_seconds = best_of(lambda: np.argsort(-scores, kind="stable"))

    rows = []
    for k in KS:
        seconds = best_of(lambda k=k: select_top(scores, k))
        rows.append(
            {
                "n": N,
                "k": k,
                "seconds": seconds,
                "argsort_seconds": argsort_seconds,
                "stable_argsort_seconds": stable_argsort_seconds,
                "speedup": argsort_seconds / seconds,
            }
        )

    print(f"select_top vs np.argsort, n = {N:,} float64, best of {REPEATS}")
    print(f"{'k':>10}  {'select_top s':>12}  {'argsort s':>10}  {'speedup':>7}")
    for r in rows:
        print(
            f"{r['k']:>10,}  {r['seconds']:>12.4f}  {r['argsort_seconds']:>10.4f}  "
            f"{r['speedup']:>6.1f}x"
        )
    print(f"(stable descending argsort: {stable_argsort_seconds:.4f} s)")

    out_dir = Path(__file__).resolve().parent / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    out_path = out_dir / "select_top.json"
    payload = {
        "benchmark": "select_top",
        "repeats": REPEATS,
        "seed": SEED,
        "argsort": "np.argsort(scores)",
        "stable_argsort": 'np.argsort(-scores, kind="stable")',
        "numpy_version": np.__version__,
        "python_version": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "results": rows,
    }
    out_path.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {out_path}")


if __name__ == "__main__":
    main()
