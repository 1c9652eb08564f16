from __future__ import annotations

from prefect import flow
from pydantic import BaseModel

from activeflow.batches import ExportResult
from activeflow.flows.export_batch import export_batch_flow
from activeflow.flows.retrain import retrain_flow
from activeflow.flows.score import score_flow
from activeflow.settings import Settings, load_settings
from activeflow.tasks.labels import import_label_bytes
from activeflow.tasks.simulation import load_ground_truth, oracle_answers
from activeflow.tasks.status import pool_status
from activeflow.training import PromotionDecision


class RoundResult(BaseModel):
    round: int
    batch: ExportResult
    retrain: PromotionDecision | None = None


@flow(name="cycle")
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
    truth = load_ground_truth(oracle) if simulate else {}
    results: list[RoundResult] = []
    for number in range(1, rounds + 1):
        if pool_status(settings)["champion"] is not None:
            score_flow(settings)
        batch = export_batch_flow(settings)
        result = RoundResult(round=number, batch=batch)
        results.append(result)
        if batch.batch_id is None:
            break  # budget spent or pool empty
        if not simulate:
            continue
        answers = oracle_answers(settings, batch.batch_id, truth)
        import_label_bytes(settings, batch.batch_id, f"oracle-{batch.batch_id}.csv", answers)
        result.retrain = retrain_flow(settings)
    return results
