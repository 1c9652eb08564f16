"""What commands cost as the catalog grows: wall time and peak memory at 10^5..10^7 samples.

A catalog is synthesised through the catalog's own writer (no image bytes: these commands
read the catalog and the scores only): the pool and the source file each sample was read
from, 50 open batches of up to 100 items, and a
champion's complete scoring run over the rest of the pool in parts of 100,000 rows (10
classes; 128-d embeddings too, up to ``--embeddings-up-to`` samples). Each measurement runs
in a fresh interpreter, so its peak RSS is its own; TensorFlow's import (which the scoring
and export modules pull in) is not timed but is in the RSS:

- ``status``: ``load_state(store).summary()``, what ``activeflow status`` prints;
- ``plan-scoring``: which unlabelled samples the champion has not scored (none, here);
- ``export-margin``: an export of k = 1,000 by margin (selection, files and commit);
- ``export-coreset`` / ``export-badge``: the same with the diversity strategies (the
  exports run one after another on the same store, each taking 1,000 more samples);
- ``nightly`` (``--nightly``): 1 % new images (32 px PNGs) arrive in a pool whose other
  99 % the champion (an untrained small CNN) has scored. The night's run (ingest, score,
  export of 100 by margin) against scoring those new images alone (``score_shard`` on
  their keys, model load included, nothing planned or exported). Five nights in a row,
  each with its own 1 % new; the times are their medians (one night varies by 10-20 %).

- ``reingest`` (``--reingest N``): N small PNG files ingested into an empty store, then the
  same unchanged folder ingested again, three times (the median reported).

    python benchmarks/scale.py --sizes 100000,1000000 [--nightly] [--out benchmarks/results/scale/scale.json]
    python benchmarks/scale.py --sizes 0 --reingest 100000 --out benchmarks/results/scale/reingest.json
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from activeflow.core.storage.catalog import Catalog
from activeflow.core.storage.pool import BatchItemRecord, BatchManifest, manifest_rows, utc_now
from activeflow.core.storage.store import LocalStore

BATCHES, ITEMS = 50, 100
CHUNK = 1_000_000  # rows per commit while synthesising
PART = 100_000  # rows per score part
CLASSES = [f"c{i}" for i in range(10)]
EMBEDDING = 128

_EXPORT = """
from activeflow.core.label.batches import export_batch
from activeflow.settings import load_settings
settings = load_settings(storage={{"uri": str(store.root)}}, data={{"classes": {classes}}},
                         budget={{"per_run": 1000}}, strategy={{"name": "{name}"}})
start = time.perf_counter()
batch = export_batch(store, settings)
result = {{"batch": batch.size}}
"""

MEASURE = {
    "status": """
from activeflow.core.storage.pool import load_state
start = time.perf_counter()
summary = load_state(store).summary(None)
result = {"unlabelled": summary["unlabelled"], "labelled": summary["labelled"]}
""",
    "plan-scoring": """
from activeflow.core.score import scoring
from activeflow.core.storage.pool import load_state
from activeflow.settings import load_settings
settings = load_settings(storage={"uri": str(store.root)})
start = time.perf_counter()
plan = scoring.plan_scoring(load_state(store), settings)
result = {"to_score": plan.total, "reused": plan.reused}
""",
    **{f"export-{name}": _EXPORT.format(name=name, classes=CLASSES) for name in ("margin", "coreset", "badge")},
}
# Peak RSS from VmHWM: getrusage's ru_maxrss survives exec on Linux, so a child would
# report the parent's peak (which holds the synthesised tables) instead of its own.
_CHILD = """
import json, os, re, sys, time
from pathlib import Path
from activeflow.core.storage.store import LocalStore
store = LocalStore(sys.argv[1])

def write_pngs(folder, count, side, seed):
    import numpy as np
    from PIL import Image
    rng = np.random.default_rng(seed)
    for n in range(count):  # a thousand to a folder
        path = folder / f"{{n // 1000}}" / f"{{n}}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(path)
    return folder

{body}
seconds = time.perf_counter() - start
status = Path("/proc/self/status").read_text()
peak_mb = int(re.search(r"VmHWM:\\s+(\\d+) kB", status).group(1)) / 1024
print(json.dumps({{"seconds": round(seconds, 3), "peak_rss_mb": round(peak_mb, 1), **result}}))
"""


def sample_id(n: int) -> str:
    return hashlib.sha256(n.to_bytes(8, "little")).hexdigest()


def synthesise(store: LocalStore, size: int) -> int:
    """The pool and its open batches; returns how many samples the batches hold."""
    catalog = Catalog(store)
    now = utc_now()  # a fixed date would age the open batches past labelling.release_after_hours
    sequence = 0  # every ingest's commit is serial (Catalog.insert_new)
    for first in range(0, size, CHUNK):
        ids = [sample_id(n) for n in range(first, min(first + CHUNK, size))]
        count = len(ids)
        _, sequence = catalog.insert_new(
            "samples",
            pa.table(
                {
                    "id": ids, "ext": ["png"] * count, "source": [f"in/{i}.png" for i in ids],
                    "size": [1000] * count, "ingested_at": [now] * count,
                    "split": ["pool"] * count, "label": pa.nulls(count, pa.string()),
                }
            ),
            key="id",
            checked_at=sequence,
        )
        catalog.append(  # what ingest records of each file it read: a rerun skips them
            "sources",
            pa.table(
                {
                    "name": [f"/data/in/{i}.png" for i in ids], "version": ["1000:1764288000000000000"] * count,
                    "sample_id": ids, "read_at": [now] * count,
                }
            ),
        )
    items = max(1, min(ITEMS, size // (2 * BATCHES)))  # batches take at most half the pool
    manifests = [
        BatchManifest(
            batch_id=f"b{b:03d}", created_at=now, strategy="margin",
            model_version="m1", budget_per_run=items, budget_total=None,
            items=[BatchItemRecord(sample_id=sample_id(b * items + i), score=0.5) for i in range(items)],
        )
        for b in range(BATCHES)
    ]
    catalog.append("batch_items", pa.concat_tables([manifest_rows(m) for m in manifests]), after=0)
    store.put("models/champion/000001.json", json.dumps({
        "sequence": 1, "version": "m1", "accuracy": 0.5, "previous": None, "promoted_at": "t",
    }).encode())
    return BATCHES * items


def synthesise_scores(store: LocalStore, size: int, first: int, embeddings: bool) -> None:
    """The champion's complete scoring run over samples first..size (the unqueued ones)."""
    from activeflow.core.score import scoring  # TensorFlow: imported only to write the scores

    rng = np.random.default_rng(0)
    for number, start in enumerate(range(first, size, PART)):
        ids = [sample_id(n) for n in range(start, min(start + PART, size))]
        probs = rng.dirichlet(np.ones(len(CLASSES)), size=len(ids))
        vectors = rng.normal(size=(len(ids), EMBEDDING)).astype(np.float32) if embeddings else None
        table = scoring.scores_table(ids, probs, CLASSES, embeddings=vectors)
        buffer = io.BytesIO()
        pq.write_table(table, buffer)
        store.put(f"scores/m1/s1/part-{number:05d}.parquet", buffer.getvalue())
    columns = [scoring.EMBEDDING_COLUMN] if embeddings else []
    store.put("scores/m1/s1/_SUCCESS.json", json.dumps({"run_id": "s1", "model_version": "m1", "columns": columns}).encode())


NIGHTLY = """
import statistics
from pathlib import Path
from activeflow.core.score import modeling, scoring
from activeflow.core.label.batches import export_batch
from activeflow.core.ingest.ingest import ingest_images
from activeflow.settings import load_settings
from activeflow.core.ingest.sources import iter_source
settings = load_settings(storage={{"uri": str(store.root)}}, data={{"classes": {classes}}}, budget={{"per_run": 100}})
store.put("models/m1/model.keras", modeling.model_to_bytes(modeling.build_classifier(settings.model, 10)))
nights = []
start = time.perf_counter()
for night in range({nights}):  # each night's new 1 % joins the pool the next night sees
    inbox = write_pngs(Path(sys.argv[1]).parent / f"inbox-{{night}}", {new}, side=32, seed=night + 1)
    os.sync()  # a night starts on a settled disk, not on what was written before it
    scoring._MODELS.clear()  # each night is a new run: it loads the champion
    begin = time.perf_counter()
    ingest_images(store, iter_source(str(inbox), labelled=False))
    ingested = time.perf_counter()
    plan = scoring.score_pool(store, settings)
    scored = time.perf_counter()
    export_batch(store, settings)
    done = time.perf_counter()
    keys = [key for shard in plan.shards for key in shard]
    size = settings.scoring.shard_size
    scoring._MODELS.clear()  # scoring them alone would load the model too
    alone_start = time.perf_counter()
    for i in range(0, len(keys), size):
        scoring.score_shard(store, settings, "m1", f"alone-{{night}}", i // size, keys[i:i + size])
    alone_s = time.perf_counter() - alone_start
    nights.append({{"scored": plan.total, "reused": plan.reused,
                   "ingest_s": round(ingested - begin, 2), "plan_and_score_s": round(scored - ingested, 2),
                   "export_s": round(done - scored, 2), "night_s": round(done - begin, 2),
                   "score_new_alone_s": round(alone_s, 2),
                   "night_over_scoring_alone": round((done - begin) / alone_s, 2),
                   "score_and_export_over_scoring_alone": round((done - ingested) / alone_s, 2)}})
median = {{key: statistics.median(n[key] for n in nights) for key in nights[0] if key.endswith(("_s", "_alone"))}}
result = {{"new": {new}, "scored": nights[0]["scored"], "reused": nights[0]["reused"], **median, "nights": nights}}
"""


REINGEST = """
from pathlib import Path
from activeflow.core.ingest.ingest import ingest_images
from activeflow.core.ingest.sources import iter_source
inbox = write_pngs(Path(sys.argv[1]).parent / "source", {count}, side=12, seed=2)
os.sync()
start = time.perf_counter()
first = ingest_images(store, iter_source(str(inbox), labelled=False))
first_s = time.perf_counter() - start
agains = []
for _ in range(3):  # a second is noisy here: the median of three reruns
    again_start = time.perf_counter()
    again = ingest_images(store, iter_source(str(inbox), labelled=False))
    agains.append(time.perf_counter() - again_start)
again_s = sorted(agains)[1]
result = {{"files": {count}, "first_new": first.new, "again_unchanged": again.unchanged,
          "again_new": again.new, "first_s": round(first_s, 2), "again_s": round(again_s, 2),
          "agains_s": [round(a, 2) for a in agains], "again_over_first": round(again_s / first_s, 4)}}
"""


def measure(root: Path, what: str, body: str | None = None) -> dict[str, object]:
    code = _CHILD.format(body=body or MEASURE[what])
    out = subprocess.run([sys.executable, "-c", code, str(root)], capture_output=True, text=True)
    if out.returncode:  # the child's own error, not only its exit status
        sys.exit(f"measuring {what} failed (exit {out.returncode}):\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100000,1000000")
    parser.add_argument("--embeddings-up-to", type=int, default=1_000_000)
    parser.add_argument("--nightly", action="store_true", help="also measure a night with 1 %% new")
    parser.add_argument("--nights", type=int, default=5, help="nights measured (medians reported)")
    parser.add_argument("--reingest", type=int, default=0, help="files for the re-ingest measurement")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/scale.json"))
    args = parser.parse_args()
    rows = []
    if args.reingest:
        with tempfile.TemporaryDirectory() as folder:
            row = {"reingest": measure(Path(folder) / "store", "reingest", REINGEST.format(count=args.reingest))}
            rows.append(row)
            print(json.dumps(row), flush=True)
    for size in (int(s) for s in args.sizes.split(",") if int(s)):
        with tempfile.TemporaryDirectory() as folder:
            store = LocalStore(Path(folder) / "store")
            start = time.perf_counter()
            taken = synthesise(store, size)
            embeddings = size <= args.embeddings_up_to
            synthesise_scores(store, size, taken, embeddings)
            row = {"samples": size, "synthesise_seconds": round(time.perf_counter() - start, 1)}
            for what in MEASURE:
                if what in ("export-coreset", "export-badge") and not embeddings:
                    continue
                row[what] = measure(store.root, what)
                print(what, row[what], flush=True)
            if args.nightly:
                body = NIGHTLY.format(classes=CLASSES, new=max(1, size // 100), nights=args.nights)
                row["nightly"] = measure(store.root, "nightly", body)
                print("nightly", row["nightly"], flush=True)
            rows.append(row)
            print(json.dumps(row), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"benchmark": "scale", "results": rows}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
