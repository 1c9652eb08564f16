from __future__ import annotations

import os
from collections.abc import Mapping

from prefect import flow, unmapped
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.futures import as_completed
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from activeflow.core.score.scoring import ScoringPlan, worth_scoring
from activeflow.settings import ScheduleSettings, Settings, load_settings
from activeflow.tasks.scoring import commit_scores, plan_scoring, score_shard

# Bounded: Prefect's default thread pool is not, and every shard in flight holds its images.
# The flows' default; a run given settings uses schedule.max_workers (shard_runner).
SCORING_WORKERS: int = ScheduleSettings.model_fields["max_workers"].default


def shard_runner(settings: Settings) -> ThreadPoolTaskRunner:
    """The thread pool a flow runs its shards on: ``schedule.max_workers`` threads."""
    return ThreadPoolTaskRunner(max_workers=settings.schedule.max_workers)


def score_pool(settings: Settings) -> ScoringPlan:
    """Plan shards, score them concurrently, commit the run. Call inside a flow.

    With ``scoring.runner = "dask"`` the shards run as a subflow on the Dask cluster; else
    as tasks of the calling flow, on its thread pool. A progress artifact (key
    ``scoring-progress``) follows the shards as they finish."""
    if settings.scoring.runner == "dask":
        return run_score_flow(settings)
    return _score_shards(settings)


def score_if_worth_it(settings: Settings, status: Mapping[str, object]) -> str | None:
    """Score the pool when an export is worth it (``worth_scoring``); the model version that
    scored, for the export to rank by (a retrain promoted meanwhile has no scores yet)."""
    return score_pool(settings).model_version if worth_scoring(status) else None


def _score_shards(settings: Settings) -> ScoringPlan:
    plan = plan_scoring(settings)
    shards = len(plan.shards)
    futures = score_shard.map(
        unmapped(settings),
        unmapped(plan.model_version),
        unmapped(plan.run_id),
        range(shards),
        plan.shards,
    )
    # After the shards are submitted: the API call overlaps their work.
    progress = create_progress_artifact(
        0.0 if shards else 100.0,
        key="scoring-progress",
        description=f"Scoring {plan.total} samples in {shards} shards with {plan.model_version}",
    )
    scored = 0
    for done, future in enumerate(as_completed(futures), start=1):
        scored += future.result()
        update_progress_artifact(progress, 100.0 * done / shards)
    commit_scores(settings, plan, scored)
    return plan


def scoring_task_runner(settings: Settings) -> TaskRunner:
    """The task runner ``scoring.runner`` names: the bounded thread pool (shard_runner), or
    prefect-dask's DaskTaskRunner on the cluster at ``dask_address`` (or on a local cluster
    of ``dask_workers`` single-threaded processes: TensorFlow uses every core of a worker)."""
    scoring = settings.scoring
    if scoring.runner == "threads":
        return shard_runner(settings)
    from prefect_dask import DaskTaskRunner  # imports dask: only when asked for

    if scoring.dask_address:
        return DaskTaskRunner(address=scoring.dask_address)
    _share_api_with_local_workers()
    return DaskTaskRunner(
        cluster_class="distributed.LocalCluster",
        cluster_kwargs={"n_workers": scoring.dask_workers, "threads_per_worker": 1,
                        "processes": True, "dashboard_address": None},
    )


def _share_api_with_local_workers() -> None:
    """Point the local cluster's worker processes (which inherit the environment) at the
    Prefect API this process uses. Without it each worker starts a temporary server of its
    own: the shards' task runs never reach the flow's server, and those servers outlive
    the workers (seen here)."""
    from prefect.settings import PREFECT_API_URL

    if os.environ.get("PREFECT_API_URL"):
        return
    api = PREFECT_API_URL.value()
    if not api:  # this process runs on a temporary server: start it now (once) to name it
        from prefect.server.api.server import SubprocessASGIServer

        server = SubprocessASGIServer()
        server.start()
        api = server.api_url
    os.environ["PREFECT_API_URL"] = api


@flow(name="score", task_runner=ThreadPoolTaskRunner(max_workers=SCORING_WORKERS))
def score_flow(settings: Settings | None = None) -> ScoringPlan:
    """Score every unlabelled, unqueued sample with the champion, shard by shard (on the
    task runner ``scoring.runner`` names: see ``run_score_flow``)."""
    return _score_shards(settings or load_settings())


def run_score_flow(settings: Settings) -> ScoringPlan:
    """The score flow on the runner the settings name."""
    return score_flow.with_options(task_runner=scoring_task_runner(settings))(settings)
