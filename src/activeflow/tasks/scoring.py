from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from activeflow.core.score import scoring
from activeflow.core.storage.pool import load_state
from activeflow.core.storage.store import open_store
from activeflow.settings import Settings
from activeflow.tasks.retry import STORE_RETRIES


@task(name="plan-scoring", task_run_name="plan scoring", cache_policy=NO_CACHE, **STORE_RETRIES)
def plan_scoring(settings: Settings) -> scoring.ScoringPlan:
    state = load_state(open_store(settings.storage))
    return scoring.plan_scoring(state, settings)


@task(
    name="score-shard",
    task_run_name="score shard {shard_index} with {model_version}",
    cache_policy=NO_CACHE,
    **STORE_RETRIES,
)
def score_shard(
    settings: Settings, model_version: str, run_id: str, shard_index: int, keys: list[str]
) -> int:
    store = open_store(settings.storage)
    return scoring.score_shard(store, settings, model_version, run_id, shard_index, keys)


@task(
    name="commit-scores",
    task_run_name="commit scores of {plan.model_version}",
    cache_policy=NO_CACHE,
    **STORE_RETRIES,
)
def commit_scores(settings: Settings, plan: scoring.ScoringPlan, scored: int) -> None:
    scoring.commit_scores(open_store(settings.storage), plan, scored)
