"""Time the batch-aware strategies selecting 1,000 of a 100,000-sample pool.

Pool: 128-d float32 embeddings, 10 classes with Dirichlet(1) probabilities, 5,000 labelled
embeddings (coreset starts from their coverage), random per-class test errors. The issue's
target: coreset and badge under 60 s on 2 cores, memory O(n * d).

Run: python benchmarks/strategies_select.py
Writes benchmarks/results/strategies_select.json next to this script.

Each strategy runs twice: once timed, once under tracemalloc (numpy reports its array
allocations to it) for the peak memory the selection itself allocates, beyond the inputs.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

from activeflow.core.score.strategies import PoolOutputs, select

N = 100_000
D = 128
C = 10
K = 1_000
M_LABELLED = 5_000
SEED = 0
NAMES = ("coreset", "badge", "margin-diverse", "class-balanced")
TARGET_SECONDS = 60.0  # for coreset and badge


def make_pool() -> PoolOutputs:
    rng = np.random.default_rng(SEED)
    return PoolOutputs(
        probs=rng.dirichlet(np.ones(C), size=N),  # [N, C]
        embeddings=rng.standard_normal((N, D), dtype=np.float32),  # [N, D]
        labelled_embeddings=rng.standard_normal((M_LABELLED, D), dtype=np.float32),  # [m, D]
        class_errors=rng.uniform(0.05, 0.5, size=C),  # [C]
    )


def timed(name: str, outputs: PoolOutputs) -> tuple[float, np.ndarray]:
    t0 = time.perf_counter()
    picks = select(name, outputs, K, seed=SEED)
    return time.perf_counter() - t0, picks


def traced_peak(name: str, outputs: PoolOutputs) -> int:
    tracemalloc.start()
    tracemalloc.reset_peak()
    select(name, outputs, K, seed=SEED)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak


def main() -> None:
    load_before = os.getloadavg()  # others' work on the machine inflates the timings
    outputs = make_pool()
    embeddings_bytes = outputs.embeddings.nbytes
    rows = []
    for name in NAMES:
        seconds, picks = timed(name, outputs)
        assert picks.shape == (K,) and np.unique(picks).shape == (K,), name
        peak = traced_peak(name, outputs)
        rows.append(
            {
                "strategy": name,
                "n": N,
                "d": D,
                "classes": C,
                "k": K,
                "labelled": M_LABELLED if name == "coreset" else 0,
                "seconds": seconds,
                "peak_alloc_bytes": peak,
                "peak_alloc_over_embeddings": peak / embeddings_bytes,
                "under_target": seconds < TARGET_SECONDS if name in ("coreset", "badge") else None,
            }
        )

    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"select {K:,} of {N:,}, d = {D} float32, C = {C}, {cpus} usable CPUs")
    print(f"embeddings themselves: {embeddings_bytes / 2**20:.1f} MiB")
    print(f"{'strategy':>15}  {'seconds':>8}  {'peak alloc MiB':>14}  {'x embeddings':>12}")
    for r in rows:
        print(
            f"{r['strategy']:>15}  {r['seconds']:>8.2f}  {r['peak_alloc_bytes'] / 2**20:>14.1f}  "
            f"{r['peak_alloc_over_embeddings']:>12.2f}"
        )
    # ru_maxrss is KiB on Linux: the whole process, inputs and interpreter included.
    max_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(f"process max RSS: {max_rss / 2**20:.0f} MiB")
    load_after = os.getloadavg()
    print(f"1-min load average: {load_before[0]:.2f} before, {load_after[0]:.2f} after")

    out_dir = Path(__file__).resolve().parent / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    out_path = out_dir / "strategies_select.json"
    payload = {
        "benchmark": "strategies_select",
        "seed": SEED,
        "target_seconds": TARGET_SECONDS,
        "embeddings_bytes": embeddings_bytes,
        "process_max_rss_bytes": max_rss,
        "numpy_version": np.__version__,
        "python_version": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "usable_cpus": cpus,
        "load_average_1min_before_after": [load_before[0], load_after[0]],
        "results": rows,
    }
    out_path.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {out_path}")


if __name__ == "__main__":
    main()
