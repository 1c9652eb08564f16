from __future__ import annotations

from prefect import flow

from activeflow.settings import Settings, load_settings
from activeflow.tasks.training import promote_if_not_worse, train_candidate
from activeflow.training import PromotionDecision


def retrain_model(settings: Settings) -> PromotionDecision:
    """Train a candidate, then gate its promotion. Call inside a flow."""
    return promote_if_not_worse(settings, train_candidate(settings))


@flow(name="retrain")
def retrain_flow(settings: Settings | None = None) -> PromotionDecision:
    """Train on all labels; promote only if not worse on the held-out test set."""
    return retrain_model(settings or load_settings())
