"""Label efficiency of every strategy against random, on the bundled digits by default.

The same core functions as the `benchmark` flow (activeflow.evaluation.label_efficiency), without Prefect:
the (strategy, seed) runs go to a pool of worker processes (TensorFlow trains tiny models with
Python overhead that threads would serialise on the GIL). Seed-major order, and every finished
run is appended to runs.jsonl at once, so a run cut short still has whole seeds to report on
(--report-only re-summarises them; --resume adds strategies or seeds to a finished benchmark
and runs only what runs.jsonl lacks). Writes benchmark.json, learning_curve.png and table.md.

    python benchmarks/label_efficiency.py [--seeds 5] [--rounds 8] [--budget 20] [--workers 2]
        [--strategies margin,entropy,...] [--dataset digits|shapes[-rotated][:N]|FOLDER|tfds:NAME]
        [--seed-per-class 2] [--set model.min_steps=800 ...] [--out DIR] [--report-only | --resume]

The model is the default one (what a user gets); --set changes one setting, for hand-tuned
comparisons. Results go to benchmarks/results/label_efficiency/<dataset>/ unless --out.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import tempfile
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path

RESULTS = Path(__file__).parent / "results" / "label_efficiency"


def _worker_init() -> None:
    # One TensorFlow thread per worker: the workers are the parallelism.
    os.environ["TF_NUM_INTRAOP_THREADS"] = "1"
    os.environ["TF_NUM_INTEROP_THREADS"] = "1"
    _die_with_parent()


def _die_with_parent() -> None:
    """A worker outlived a benchmark stopped with SIGTERM (`kill`, `timeout`) and trained on
    for 20 minutes, orphaned: on Linux, ask the kernel to end it with its parent."""
    if sys.platform != "linux":
        return
    import ctypes
    import signal

    pr_set_pdeathsig = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
    if os.getppid() == 1:  # the parent died before the request
        os._exit(1)


def _stop_on_sigterm() -> None:
    """SIGTERM (`kill`, `timeout`) ended the script without unwinding, leaving its scratch
    folder of data and stores (up to a GB) in the temp dir: end the workers, then exit the
    way Ctrl-C does, through every ``with`` block."""
    import signal

    def stop(signum: int, frame: object) -> None:
        for worker in multiprocessing.active_children():
            worker.kill()
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)


def _run(spec_json: str) -> list[dict]:
    from activeflow.evaluation import label_efficiency as le

    spec = le.RunSpec.model_validate_json(spec_json)
    return [r.model_dump() for r in le.run_strategy_seed(spec)]


def _overrides(pairs: list[str]) -> dict[str, dict]:
    """``group.field=value`` (value parsed as JSON when it is JSON) into nested settings."""
    nested: dict[str, dict] = {}
    for pair in pairs:
        path, _, raw = pair.partition("=")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        *groups, field = path.split(".")
        target = nested
        for group in groups:
            target = target.setdefault(group, {})
        target[field] = value
    return nested


def _comparable(config, settings) -> dict[str, object]:
    """What runs of one benchmark must share to be compared: all but the strategies and seeds."""
    return {
        "run_setup": config.model_dump(mode="json", exclude={"strategies", "seeds"}),
        "model": settings.model.model_dump(mode="json"),
        "random_fraction": settings.strategy.random_fraction,
    }


def _finished_runs(previous: Path, runs_file: Path, setup: dict[str, object]) -> set[tuple[str, int]]:
    """The (strategy, seed) runs in runs_file, once benchmark.json shows they were made alike.

    runs_file is not committed (benchmark.json is): in a fresh clone it is rebuilt from
    benchmark.json's records, which are the runs of every seed it reported."""
    if not previous.is_file():
        sys.exit(f"nothing to resume: {previous} is missing (--report-only writes it from "
                 f"{runs_file.name} of a benchmark cut short)")
    document = json.loads(previous.read_text())
    earlier = {
        "run_setup": {k: v for k, v in document["config"].items() if k not in ("strategies", "seeds")},
        "model": document.get("model"),
        "random_fraction": document.get("random_fraction"),
    }
    differing = [key for key in setup if json.dumps(setup[key], sort_keys=True) != json.dumps(earlier[key], sort_keys=True)]
    if differing:
        sys.exit(f"cannot resume {previous.parent}: it was made with other settings "
                 f"({', '.join(differing)}); use another --out")
    if not runs_file.is_file():
        runs_file.write_text("".join(json.dumps(r) + "\n" for r in document["records"]))
        print(f"{runs_file.name} was missing: rebuilt from {previous.name}'s "
              f"{len(document['records'])} records", file=sys.stderr)
    runs = (json.loads(line) for line in runs_file.read_text().splitlines() if line)
    return {(run["strategy"], run["seed"]) for run in runs}


def main() -> None:
    from activeflow.evaluation import label_efficiency as le
    from activeflow.evaluation.demo_data import demo_settings
    from activeflow.settings import load_settings

    parser = argparse.ArgumentParser()
    parser.add_argument("--strategies", default=",".join(le.DEFAULT_STRATEGIES))
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--budget", type=int, default=20)
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--seed-per-class", type=int, default=2)
    parser.add_argument("--set", action="append", default=[], help="group.field=value, e.g. model.min_steps=800")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--report-only", action="store_true", help="summarise out/runs.jsonl again")
    mode.add_argument(
        "--resume", action="store_true",
        help="keep out/runs.jsonl and run only the (strategy, seed) runs it lacks; refused unless "
        "out/benchmark.json was made with the same dataset, rounds, budget and model settings",
    )
    args = parser.parse_args()

    config = le.BenchmarkConfig(
        strategies=args.strategies.split(","), seeds=args.seeds, rounds=args.rounds,
        budget=args.budget, dataset=args.dataset, seed_per_class=args.seed_per_class,
    )
    settings = demo_settings(load_settings(**_overrides(args.set)), per_run=args.budget)
    args.out = args.out or RESULTS / args.dataset.replace(":", "-").replace("/", "_")
    runs_file = args.out / "runs.jsonl"
    previous = args.out / "benchmark.json"
    finished: set[tuple[str, int]] = set()
    if args.resume:  # before anything is written
        finished = _finished_runs(previous, runs_file, _comparable(config, settings))
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    _stop_on_sigterm()
    if not args.report_only:
        if not args.resume:
            runs_file.write_text("")
        with tempfile.TemporaryDirectory(prefix="activeflow-benchmark-") as folder:
            data = le.prepare_dataset(Path(folder) / "data", config.dataset, config.test_size)
            specs = [
                spec for spec in le.run_specs(config, data, settings, Path(folder))
                if (spec.strategy, spec.seed) not in finished
            ]
            context = multiprocessing.get_context("spawn")  # TensorFlow is not fork-safe
            with ProcessPoolExecutor(args.workers, mp_context=context, initializer=_worker_init) as pool:
                pending = {pool.submit(_run, spec.model_dump_json()): spec for spec in specs}
                while pending:
                    done, _ = wait(pending, return_when=FIRST_COMPLETED)
                    for future in done:
                        spec = pending.pop(future)
                        records = future.result()
                        with runs_file.open("a") as handle:
                            handle.writelines(json.dumps(r) + "\n" for r in records)
                        last = records[-1]
                        print(f"[{time.time() - started:7.0f}s] {spec.strategy:>16} seed {spec.seed}: "
                              f"{last['labels']} labels, accuracy {last['accuracy']:.3f}", flush=True)

    records = [le.RoundRecord.model_validate_json(line) for line in runs_file.read_text().splitlines() if line]
    # Only seeds every strategy finished, so the comparison stays paired.
    names = set(config.all_strategies)
    complete = {
        seed for seed in {r.seed for r in records}
        if {r.strategy for r in records if r.seed == seed} >= names
    }
    kept = [r for r in records if r.seed in complete and r.strategy in names]
    if len(complete) < config.seeds:
        print(f"only seeds {sorted(complete)} are complete for every strategy; reporting those", file=sys.stderr)
    earlier_wall = json.loads(previous.read_text()).get("wall_seconds") if previous.is_file() else None
    if args.report_only:  # the wall time is that of the run that made runs.jsonl
        wall = earlier_wall
    else:  # a resumed benchmark's wall time is the sum of its runs'
        wall = time.time() - started + ((earlier_wall or 0) if args.resume else 0)
    files = le.write_benchmark_report(
        args.out, config, kept, settings=settings,
        extra={"seeds_reported": sorted(complete), "workers": args.workers, "wall_seconds": wall,
               "overrides": args.set},
    )
    print(files["table"].read_text())
    print(f"wrote {', '.join(str(p) for p in files.values())}")


if __name__ == "__main__":
    main()
