from __future__ import annotations

from prefect import flow, tags, unmapped
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.futures import as_completed
from prefect.task_runners import ThreadPoolTaskRunner

from activeflow.scoring import ScoringPlan
from activeflow.settings import Settings, load_settings
from activeflow.tasks.scoring import commit_scores, plan_scoring, score_shard

# Bounded: Prefect's default thread pool is not, and every shard in flight holds its images.
SCORING_WORKERS = 2


def score_pool(settings: Settings) -> ScoringPlan:
    """Plan shards, score them concurrently, commit the run. Call inside a flow.

    A progress artifact (key ``scoring-progress``) follows the shards as they finish."""
    plan = plan_scoring(settings)
    shards = len(plan.shards)
    progress = create_progress_artifact(
        0.0 if shards else 100.0,
        key="scoring-progress",
        description=f"Scoring {plan.total} samples in {shards} shards with {plan.model_version}",
    )
    with tags(f"model:{plan.model_version}"):
        futures = score_shard.map(
            unmapped(settings),
            unmapped(plan.model_version),
            unmapped(plan.run_id),
            range(shards),
            plan.shards,
        )
        scored = 0
        for done, future in enumerate(as_completed(futures), start=1):
            scored += future.result()
            update_progress_artifact(progress, 100.0 * done / shards)
        commit_scores(settings, plan, scored)
    return plan


@flow(name="score", task_runner=ThreadPoolTaskRunner(max_workers=SCORING_WORKERS))
def score_flow(settings: Settings | None = None) -> ScoringPlan:
    """Score every unlabelled, unqueued sample with the champion, shard by shard."""
    return score_pool(settings or load_settings())
