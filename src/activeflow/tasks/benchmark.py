"""Tasks of the label-efficiency benchmark: thin adapters over activeflow.evaluation.label_efficiency."""

from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from activeflow.evaluation import label_efficiency as le
from activeflow.evaluation import prepare_output_folder
from activeflow.settings import Settings


@task(name="prepare-benchmark-data", task_run_name="split {dataset}", cache_policy=NO_CACHE)
def prepare_benchmark_data(out: str, dataset: str | None, test_size: float) -> le.BenchmarkData:
    prepare_output_folder(Path(out), "benchmark")
    return le.prepare_dataset(Path(out) / "data", dataset, test_size)


@task(
    name="benchmark-run",
    task_run_name="{spec.strategy} seed {spec.seed}",
    cache_policy=NO_CACHE,
)
def run_strategy_seed(spec: le.RunSpec) -> list[le.RoundRecord]:
    return le.run_strategy_seed(spec)


@task(name="write-benchmark-report", cache_policy=NO_CACHE)
def write_benchmark_report(
    out: str, config: le.BenchmarkConfig, records: list[le.RoundRecord], settings: Settings
) -> dict[str, str]:
    files = le.write_benchmark_report(Path(out), config, records, settings=settings)
    return {name: str(path) for name, path in files.items()}
