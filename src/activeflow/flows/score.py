from __future__ import annotations

from prefect import flow, unmapped
from prefect.task_runners import ThreadPoolTaskRunner

from activeflow.scoring import ScoringPlan
from activeflow.settings import Settings, load_settings
from activeflow.tasks.scoring import commit_scores, plan_scoring, score_shard

# Bounded: Prefect's default thread pool is not, and every shard in flight holds its images.
SCORING_WORKERS = 2


def score_pool(settings: Settings) -> ScoringPlan:
    """Plan shards, score them concurrently, commit the run. Call inside a flow."""
    plan = plan_scoring(settings)
    counts = score_shard.map(
        unmapped(settings),
        unmapped(plan.model_version),
        unmapped(plan.run_id),
        range(len(plan.shards)),
        plan.shards,
    ).result()
    commit_scores(settings, plan, sum(counts))
    return plan


@flow(name="score", task_runner=ThreadPoolTaskRunner(max_workers=SCORING_WORKERS))
def score_flow(settings: Settings | None = None) -> ScoringPlan:
    """Score every unlabelled, unqueued sample with the champion, shard by shard."""
    return score_pool(settings or load_settings())
