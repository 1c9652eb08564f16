from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from activeflow.core.train.reporting import CurvePoint, write_report
from activeflow.evaluation import prepare_output_folder
from activeflow.evaluation.demo_data import DemoData, write_digits


@task(name="write-demo-data", cache_policy=NO_CACHE)
def write_demo_data(out: str, rounds: int, seed: int) -> DemoData:
    prepare_output_folder(Path(out), "demo")
    return write_digits(Path(out) / "data", arrivals=rounds, seed=seed)


@task(name="write-report", cache_policy=NO_CACHE)
def write_demo_report(out: str, points: list[CurvePoint]) -> dict[str, str]:
    return {name: str(path) for name, path in write_report(Path(out), points).items()}
