from __future__ import annotations

from pathlib import Path

from prefect import flow
from prefect.task_runners import ThreadPoolTaskRunner
from pydantic import BaseModel

from activeflow.evaluation import label_efficiency as le
from activeflow.settings import SelectorName, Settings, load_settings
from activeflow.tasks.benchmark import prepare_benchmark_data, run_strategy_seed, write_benchmark_report

# (strategy, seed) runs in flight at once. Each trains a model; more than the cores is no faster.
BENCHMARK_WORKERS = 2


class BenchmarkResult(BaseModel):
    summary: le.BenchmarkSummary
    table: str  # markdown
    files: dict[str, str]  # json, learning_curve, table


@flow(name="benchmark", task_runner=ThreadPoolTaskRunner(max_workers=BENCHMARK_WORKERS))
def benchmark_flow(
    settings: Settings | None = None,
    out: str = "activeflow-benchmark",
    strategies: list[SelectorName] = list(le.DEFAULT_STRATEGIES),  # noqa: B006, B008 (the UI form shows it)
    seeds: int = 5,
    rounds: int = 8,
    budget: int = 20,
    dataset: str | None = None,
    test_size: float = 0.2,
    seed_per_class: int = 2,
    pool_size: int | None = None,
) -> BenchmarkResult:
    """Label efficiency of each strategy against random: ``seeds`` runs per strategy of
    ``rounds`` rounds of ``budget`` labels from the same seed sets, one task per run.

    ``settings`` gives the model (and scoring / strategy options); ``dataset`` is None for the
    bundled digits, a folder laid out as <class>/<image>, or tfds:NAME[/SPLIT]. Data, one store
    per run and the report (benchmark.json, learning_curve.png, table.md) go under ``out``.
    Runs in parallel up to the task runner's workers (``BENCHMARK_WORKERS``; choose another
    with ``benchmark_flow.with_options(task_runner=ThreadPoolTaskRunner(max_workers=N))``)."""
    settings = settings or load_settings()
    config = le.BenchmarkConfig(
        strategies=strategies, seeds=seeds, rounds=rounds, budget=budget, dataset=dataset,
        test_size=test_size, seed_per_class=seed_per_class, pool_size=pool_size,
    )
    data = prepare_benchmark_data(out, dataset, test_size)
    futures = [run_strategy_seed.submit(spec) for spec in le.run_specs(config, data, settings, Path(out))]
    records = [record for future in futures for record in future.result()]
    files = write_benchmark_report(out, config, records, settings)
    summary = le.summarise(records)
    return BenchmarkResult(summary=summary, table=le.markdown_table(summary), files=files)
