"""What commands cost as the catalog grows: wall time and peak memory at 10^5..10^7 samples.

A catalog is synthesised through the catalog's own writer (no image bytes: these commands
read the catalog only), with 50 batches of up to 100 items, half of them labelled. Each
measurement runs in a fresh interpreter, so its peak RSS is its own:

- ``status``: ``load_state(store).summary()``, what ``activeflow status`` prints;
- ``plan-scoring``: the store keys of every unlabelled, unqueued sample, in shards
  (``scoring.plan_scoring``; TensorFlow's import is not timed, but is in the RSS).

    python benchmarks/scale.py --sizes 100000,1000000 [--out benchmarks/results/scale.json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa

from activeflow.catalog import Catalog
from activeflow.pool import BatchItemRecord, BatchManifest, manifest_rows
from activeflow.store import LocalStore

BATCHES, ITEMS = 50, 100
CHUNK = 1_000_000  # rows per commit while synthesising

MEASURE = {
    "status": """
from activeflow.pool import load_state
start = time.perf_counter()
summary = load_state(store).summary(None)
result = {"unlabelled": summary["unlabelled"], "labelled": summary["labelled"]}
""",
    "plan-scoring": """
from activeflow import scoring
from activeflow.pool import load_state
start = time.perf_counter()
plan = scoring.plan_scoring(load_state(store), 512)
result = {"samples": plan.total, "shards": len(plan.shards)}
""",
}
_CHILD = """
import json, resource, sys, time
from activeflow.store import LocalStore
store = LocalStore(sys.argv[1])
{body}
seconds = time.perf_counter() - start
peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({{"seconds": round(seconds, 3), "peak_rss_mb": round(peak_mb, 1), **result}}))
"""


def sample_id(n: int) -> str:
    return hashlib.sha256(n.to_bytes(8, "little")).hexdigest()


def synthesise(store: LocalStore, size: int) -> None:
    catalog = Catalog(store)
    for first in range(0, size, CHUNK):
        ids = [sample_id(n) for n in range(first, min(first + CHUNK, size))]
        count = len(ids)
        catalog.append(
            "samples",
            pa.table(
                {
                    "id": ids, "ext": ["png"] * count, "source": [f"in/{i}.png" for i in ids],
                    "size": [1000] * count, "ingested_at": ["2026-11-28T00:00:00+00:00"] * count,
                    "split": ["pool"] * count, "label": pa.nulls(count, pa.string()),
                }
            ),
        )
    items = max(1, min(ITEMS, size // (2 * BATCHES)))  # batches take at most half the pool
    manifests = [
        BatchManifest(
            batch_id=f"b{b:03d}", created_at="2026-11-28T00:00:00+00:00", strategy="margin",
            model_version="m1", budget_per_run=items, budget_total=None,
            items=[BatchItemRecord(sample_id=sample_id(b * items + i), score=0.5) for i in range(items)],
        )
        for b in range(BATCHES)
    ]
    catalog.append("batch_items", pa.concat_tables([manifest_rows(m) for m in manifests]), after=0)
    labels = [
        {"batch_id": m.batch_id, "sample_id": sid, "label": "cat", "source_file": "x.csv", "imported_at": "t"}
        for m in manifests[: BATCHES // 2]
        for sid in m.sample_ids
    ]
    catalog.append("labels", pa.Table.from_pylist(labels), after=0)
    # A champion, so scoring can be planned.
    store.put("models/champion/000001.json", json.dumps({
        "sequence": 1, "version": "m1", "accuracy": 0.5, "previous": None, "promoted_at": "t",
    }).encode())


def measure(root: Path, what: str) -> dict[str, object]:
    code = _CHILD.format(body=MEASURE[what])
    out = subprocess.run([sys.executable, "-c", code, str(root)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100000,1000000")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/scale.json"))
    args = parser.parse_args()
    rows = []
    for size in (int(s) for s in args.sizes.split(",")):
        with tempfile.TemporaryDirectory() as folder:
            store = LocalStore(Path(folder) / "store")
            start = time.perf_counter()
            synthesise(store, size)
            row = {"samples": size, "synthesise_seconds": round(time.perf_counter() - start, 1)}
            for what in MEASURE:
                row[what] = measure(store.root, what)
            rows.append(row)
            print(json.dumps(row), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"benchmark": "scale", "results": rows}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
