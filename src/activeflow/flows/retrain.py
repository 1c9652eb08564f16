from __future__ import annotations

from prefect import flow

from activeflow.settings import Settings, load_settings
from activeflow.tasks.training import promote_if_not_worse, train_candidate
from activeflow.training import PromotionDecision


@flow(name="retrain")
def retrain_flow(settings: Settings | None = None) -> PromotionDecision:
    """Train on all labels; promote only if not worse on the held-out test set."""
    settings = settings or load_settings()
    metrics = train_candidate(settings)
    return promote_if_not_worse(settings, metrics)
