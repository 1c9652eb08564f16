"""How long `activeflow demo` takes, from the command to the report, and where a round's
time goes.

By default runs ``activeflow demo`` as a user would (a fresh process, Prefect's temporary
server, nothing configured), notes when each round's line appears on stderr, and records
the wall time and the final table. ``--core-split`` also runs one strategy's rounds through
the core functions (the ones the Prefect tasks call, without orchestration) and splits
each round into ingest / score / select / import / train. Writes
benchmarks/results/demo_rounds.json.

    python benchmarks/demo_rounds.py [--rounds 4] [--budget 40] [--load N] [--core-split [--strategy margin]]

``--load N`` keeps N other processes spinning on the CPU while the demo runs: a loaded machine.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from activeflow.core.ingest.ingest import ingest_images
from activeflow.core.ingest.sources import iter_source
from activeflow.core.label import batches, label_import
from activeflow.core.score import scoring
from activeflow.core.storage.pool import load_state
from activeflow.core.storage.store import open_store
from activeflow.core.train import training
from activeflow.evaluation import simulation
from activeflow.evaluation.demo_data import at_digit_size, demo_settings, write_digits
from activeflow.settings import load_settings

ROUND_LINE = re.compile(r"^(\S+)\s+round (\d+):\s+(\d+) labels, test accuracy ([\d.]+) %")


def demo_command(rounds: int, budget: int) -> dict[str, object]:
    """Wall seconds of ``activeflow demo`` and, per round line, when it appeared."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "ACTIVEFLOW_"))}
    with tempfile.TemporaryDirectory() as folder:
        command = [str(Path(sys.executable).parent / "activeflow"), "demo", "--out", str(Path(folder) / "demo"),
                   "--rounds", str(rounds), "--budget", str(budget)]
        start = time.perf_counter()
        process = subprocess.Popen(command, env=env, cwd=folder, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True)
        lines = []
        for line in process.stderr:
            match = ROUND_LINE.match(line)
            if match:
                lines.append({"strategy": match[1], "round": int(match[2]), "labels": int(match[3]),
                              "accuracy_percent": float(match[4]),
                              "seconds": round(time.perf_counter() - start, 2)})
                print(f"{lines[-1]['seconds']:7.1f} s  {line.rstrip()}", flush=True)
        stdout = process.stdout.read()
        if process.wait() != 0:
            raise RuntimeError(f"activeflow demo exited {process.returncode}")
        seconds = time.perf_counter() - start
    print(stdout)
    print(f"activeflow demo: {seconds:.1f} s from the command to the report")
    return {"command": " ".join(["activeflow", *command[1:]]), "wall_seconds": round(seconds, 1),
            "rounds": lines, "table": stdout.splitlines()}


@contextlib.contextmanager
def busy_processes(count: int) -> Iterator[None]:
    """``count`` processes spinning on the CPU until the block ends."""
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]
    try:
        yield
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()


def timed(timings: dict[str, float], step: str, fn, *args, **kwargs):
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    timings[step] = timings.get(step, 0.0) + time.perf_counter() - start
    return result


def core_split(strategy: str, rounds: int, budget: int) -> dict[str, object]:
    """One strategy's demo rounds through the core functions, each split by step."""
    with tempfile.TemporaryDirectory() as folder:
        data = write_digits(Path(folder) / "data", arrivals=rounds)
        settings = at_digit_size(demo_settings(
            load_settings(
                storage={"uri": str(Path(folder) / "store")},
                data={"classes": data.classes},
                strategy={"name": strategy},
            ),
            per_run=budget,
        ))
        store = open_store(settings.storage)
        truth = simulation.ground_truth(data.truth)
        ingest_images(store, iter_source(str(data.test), labelled=True), split="test")
        ingest_images(store, iter_source(str(data.seed), labelled=True), split="train")
        seed_timings: dict[str, float] = {}
        seed = timed(seed_timings, "train", training.retrain, store, settings)
        points = [{"round": 0, "labels": seed.labels_used, "accuracy": seed.accuracy, "seconds": seed_timings}]
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
            points.append({"round": number, "labels": decision.labels_used,
                           "accuracy": decision.accuracy, "seconds": t})

    steps = ["ingest", "score", "select", "import", "train"]
    print(f"{'round':>5} {'labels':>6} {'acc':>6} " + " ".join(f"{s:>7}" for s in steps))
    for r in points:
        print(f"{r['round']:>5} {r['labels']:>6} {r['accuracy']:>6.3f} "
              + " ".join(f"{r['seconds'].get(s, 0.0):>7.2f}" for s in steps))
    totals = {s: sum(r["seconds"].get(s, 0.0) for r in points) for s in steps}
    print("total  " + " ".join(f"{s}={v:.1f}s" for s, v in totals.items()))
    return {"strategy": strategy, "image_size": settings.model.image_size, "rounds": points,
            "totals_seconds": totals}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--budget", type=int, default=40)
    parser.add_argument("--load", type=int, default=0, help="busy processes beside the demo")
    parser.add_argument("--core-split", action="store_true", help="also split one strategy's rounds by step")
    parser.add_argument("--strategy", default="margin", help="the strategy of --core-split")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "demo_rounds.json"))
    args = parser.parse_args()

    with busy_processes(args.load):
        result: dict[str, object] = {"demo": demo_command(args.rounds, args.budget), "load": args.load}
    if args.core_split:
        result["core_split"] = core_split(args.strategy, args.rounds, args.budget)
    result.update(python=platform.python_version(), cpu_count=os.cpu_count(),
                  load_average_at_end=os.getloadavg())
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
