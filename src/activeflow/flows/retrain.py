from __future__ import annotations

from prefect import flow

from activeflow.core.train.training import PromotionDecision
from activeflow.settings import Settings, load_settings
from activeflow.tasks.training import promote_if_not_worse, report_training, train_candidate


def retrain_model(settings: Settings) -> PromotionDecision:
    """Train a candidate, gate its promotion, publish its metrics and the learning
    curve. Call inside a flow."""
    metrics = train_candidate(settings)
    decision = promote_if_not_worse(settings, metrics)
    report_training(settings, metrics, decision)
    return decision


@flow(name="retrain")
def retrain_flow(settings: Settings | None = None) -> PromotionDecision:
    """Train on all labels; promote only if not worse on the held-out test set."""
    return retrain_model(settings or load_settings())
