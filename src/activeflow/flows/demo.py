from __future__ import annotations

import contextvars
import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from prefect import flow
from prefect.task_runners import ThreadPoolTaskRunner
from pydantic import BaseModel

from activeflow.core.train.reporting import CurvePoint, round_table
from activeflow.core.train.training import PromotionDecision
from activeflow.evaluation.demo_data import DemoData
from activeflow.flows.cycle import run_round
from activeflow.flows.retrain import retrain_model
from activeflow.flows.score import SCORING_WORKERS
from activeflow.settings import SelectorName, Settings
from activeflow.tasks.demo import write_demo_data, write_demo_report
from activeflow.tasks.ingest import ingest_source
from activeflow.tasks.simulation import load_ground_truth

# Each round's result as it completes; the CLI shows this logger on the terminal.
progress = logging.getLogger("activeflow.progress")


class DemoResult(BaseModel):
    points: list[CurvePoint]
    table: str
    files: dict[str, str]


def _point(strategy: str, number: int, decision: PromotionDecision) -> CurvePoint:
    point = CurvePoint(
        strategy=strategy, round=number, labels=decision.labels_used, accuracy=decision.accuracy
    )
    progress.info("%-8s round %d: %3d labels, test accuracy %.1f %%", strategy, number, point.labels,
                  100 * point.accuracy)
    return point


@flow(name="demo", task_runner=ThreadPoolTaskRunner(max_workers=SCORING_WORKERS))
def demo_flow(
    settings: Settings,
    out: str = "activeflow-demo",
    strategies: list[SelectorName] = ["margin", "random"],  # noqa: B006 (Prefect shows it in the form)
    rounds: int = 4,
) -> DemoResult:
    """The whole loop on scikit-learn's digits, once per strategy, into one report.

    ``settings`` gives model and budget; each strategy gets its own store under ``out``.
    The strategies run side by side: a retrain of the small CNN on a few labels keeps about
    one core busy (small graph ops run one after another), so two of them share two cores."""
    data = write_demo_data(out, rounds, settings.strategy.seed)
    truth = load_ground_truth(str(data.truth))
    with ThreadPoolExecutor(max_workers=len(strategies), thread_name_prefix="demo") as pool:
        # Each thread runs in a copy of this flow run's context, so its tasks belong to it.
        curves = [
            pool.submit(contextvars.copy_context().run, _strategy_curve, settings, data, truth, strategy, out)
            for strategy in strategies
        ]
        points = [point for curve in curves for point in curve.result()]
    files = write_demo_report(out, points)
    return DemoResult(points=points, table=round_table(points), files=files)


def _strategy_curve(
    settings: Settings, data: DemoData, truth: dict[str, str], strategy: SelectorName, out: str
) -> list[CurvePoint]:
    """One strategy's rounds in its own store: seed set, then one arrival per round."""
    run = settings.model_copy(
        update={
            "storage": settings.storage.model_copy(update={"uri": str(Path(out) / "stores" / strategy)}),
            "strategy": settings.strategy.model_copy(update={"name": strategy}),
            "data": settings.data.model_copy(update={"classes": data.classes}),
        }
    )
    ingest_source(str(data.test), "test", run)
    ingest_source(str(data.seed), "train", run)
    points = [_point(strategy, 0, retrain_model(run))]
    for number, arrival in enumerate(data.arrivals, start=1):
        ingest_source(str(arrival), "pool", run)
        result = run_round(run, number, truth)
        if result.retrain is None:
            break  # budget spent or pool empty
        points.append(_point(strategy, number, result.retrain))
    return points
