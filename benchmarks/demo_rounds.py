"""Time per demo round, split into ingest / score / select / import / train.

Runs the demo's loop on the bundled digits through the core functions (the same ones the
Prefect tasks call, without the orchestration overhead), for one strategy, and writes
benchmarks/results/demo_rounds.json.

    python benchmarks/demo_rounds.py [--strategy margin] [--rounds 8] [--budget 20]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

from activeflow.core.ingest.ingest import ingest_images
from activeflow.core.ingest.sources import iter_source
from activeflow.core.label import batches, label_import
from activeflow.core.score import scoring
from activeflow.core.storage.pool import load_state
from activeflow.core.storage.store import open_store
from activeflow.core.train import training
from activeflow.evaluation import simulation
from activeflow.evaluation.demo_data import demo_settings, write_digits
from activeflow.settings import load_settings


def timed(timings: dict[str, float], step: str, fn, *args, **kwargs):
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    timings[step] = timings.get(step, 0.0) + time.perf_counter() - start
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--strategy", default="margin")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--budget", type=int, default=20)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "demo_rounds.json"))
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as folder:
        data = write_digits(Path(folder) / "data", arrivals=args.rounds)
        settings = demo_settings(
            load_settings(
                storage={"uri": str(Path(folder) / "store")},
                data={"classes": data.classes},
                strategy={"name": args.strategy},
            ),
            per_run=args.budget,
        )
        store = open_store(settings.storage)
        truth = simulation.ground_truth(data.truth)
        ingest_images(store, iter_source(str(data.test), labelled=True), split="test")
        ingest_images(store, iter_source(str(data.seed), labelled=True), split="train")
        seed_timings: dict[str, float] = {}
        seed = timed(seed_timings, "train", training.retrain, store, settings)
        rounds = [{"round": 0, "labels": seed.labels_used, "accuracy": seed.accuracy, "seconds": seed_timings}]
        for number, arrival in enumerate(data.arrivals, start=1):
            t: dict[str, float] = {}
            timed(t, "ingest", ingest_images, store, iter_source(str(arrival), labelled=False))
            timed(t, "score", scoring.score_pool, store, settings)
            exported = timed(t, "select", batches.export_batch, store, settings)
            manifest = load_state(store).batches[exported.batch_id]
            answers = simulation.oracle_answers(manifest, truth)
            timed(t, "import", label_import.import_labels, store, load_state(store), settings,
                  exported.batch_id, "oracle.csv", answers)
            decision = timed(t, "train", training.retrain, store, settings)
            rounds.append({"round": number, "labels": decision.labels_used,
                           "accuracy": decision.accuracy, "seconds": t})

    steps = ["ingest", "score", "select", "import", "train"]
    print(f"{'round':>5} {'labels':>6} {'acc':>6} " + " ".join(f"{s:>7}" for s in steps))
    for r in rounds:
        print(f"{r['round']:>5} {r['labels']:>6} {r['accuracy']:>6.3f} "
              + " ".join(f"{r['seconds'].get(s, 0.0):>7.2f}" for s in steps))
    totals = {s: sum(r["seconds"].get(s, 0.0) for r in rounds) for s in steps}
    print("total  " + " ".join(f"{s}={v:.1f}s" for s, v in totals.items()))
    result = {
        "strategy": args.strategy, "rounds": rounds, "totals_seconds": totals,
        "python": platform.python_version(), "cpu_count": os.cpu_count(),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
