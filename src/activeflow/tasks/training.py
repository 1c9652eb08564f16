from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from activeflow import training
from activeflow.pool import load_state
from activeflow.settings import Settings
from activeflow.store import open_store


@task(name="train-candidate", cache_policy=NO_CACHE)
def train_candidate(settings: Settings) -> training.ModelMetrics:
    store = open_store(settings.storage)
    return training.train_candidate(store, load_state(store), settings)


@task(name="promote-if-not-worse", task_run_name="gate {metrics.version}", cache_policy=NO_CACHE)
def promote_if_not_worse(settings: Settings, metrics: training.ModelMetrics) -> training.PromotionDecision:
    return training.promote_if_not_worse(open_store(settings.storage), metrics)
