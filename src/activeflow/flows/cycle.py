from __future__ import annotations

from prefect import flow
from prefect.task_runners import ThreadPoolTaskRunner
from pydantic import BaseModel

from activeflow.core.label.batches import ExportResult
from activeflow.core.score.selection import PoolAccuracyEstimate
from activeflow.core.train.stopping import StoppingSignal
from activeflow.core.train.training import PromotionDecision
from activeflow.flows.retrain import retrain_model
from activeflow.flows.score import SCORING_WORKERS, score_if_worth_it
from activeflow.settings import Settings, load_settings
from activeflow.tasks.batches import export_batch, report_batch
from activeflow.tasks.labels import import_label_bytes
from activeflow.tasks.signals import pool_estimate, stopping_signal
from activeflow.tasks.simulation import load_ground_truth, oracle_answers
from activeflow.tasks.status import pool_status


class RoundResult(BaseModel):
    round: int
    batch: ExportResult
    retrain: PromotionDecision | None = None
    # After a retrain: the batch's random slice against its labels, and whether to stop.
    pool_estimate: PoolAccuracyEstimate | None = None
    stopping: StoppingSignal | None = None


def run_round(settings: Settings, number: int, truth: dict[str, str] | None) -> RoundResult:
    """score -> export-batch, then with ground truth: oracle answers -> import -> retrain.

    Composes tasks (a subflow per step would cost a second each); call inside a flow."""
    scored_by = score_if_worth_it(settings, pool_status(settings))
    result = RoundResult(round=number, batch=export_batch(settings, scored_by))
    report_batch(settings, result.batch)
    if truth is not None and result.batch.batch_id is not None:
        batch_id = result.batch.batch_id
        answers = oracle_answers(settings, batch_id, truth)
        import_label_bytes(settings, batch_id, f"oracle-{batch_id}.csv", answers)
        result.retrain = retrain_model(settings)
        result.pool_estimate = pool_estimate(settings, batch_id)
        result.stopping = stopping_signal(settings)
    return result


@flow(name="cycle", task_runner=ThreadPoolTaskRunner(max_workers=SCORING_WORKERS))
def cycle_flow(
    settings: Settings | None = None,
    simulate: bool = False,
    oracle: str | None = None,
    rounds: int = 1,
) -> list[RoundResult]:
    """score -> export-batch; with ``simulate``, an oracle answers each batch from the
    labelled folder ``oracle`` and the model is retrained, for ``rounds`` rounds."""
    settings = settings or load_settings()
    if simulate and not oracle:
        raise ValueError("simulate needs oracle: a folder laid out as <class>/<image>")
    truth = load_ground_truth(oracle) if simulate else None
    results: list[RoundResult] = []
    for number in range(1, rounds + 1):
        results.append(run_round(settings, number, truth))
        if results[-1].batch.batch_id is None:
            break  # budget spent or pool empty
    return results
