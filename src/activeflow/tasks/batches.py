from __future__ import annotations

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from activeflow import batches, locks, monitoring
from activeflow.pool import load_state
from activeflow.scoring import latest_scores
from activeflow.settings import Settings
from activeflow.store import open_store
from activeflow.tasks.retry import STORE_RETRIES

# One export at a time per store: each reads the pool and the budget, then writes a batch.
EXPORT_LOCK = "export"


@task(
    name="export-batch",
    task_run_name="export batch ({settings.strategy.name}, budget {settings.budget.per_run})",
    cache_policy=NO_CACHE,
    **STORE_RETRIES,
)
def export_batch(settings: Settings) -> batches.ExportResult:
    store = open_store(settings.storage)
    owner = locks.new_owner(f"flow run {flow_run.name}" if flow_run.name else None)
    with locks.hold(store, EXPORT_LOCK, owner=owner, lease_s=settings.schedule.export_lock_seconds):
        return batches.export_batch(store, settings)


@task(name="report-batch", task_run_name="report batch {result.batch_id}", cache_policy=NO_CACHE)
def report_batch(settings: Settings, result: batches.ExportResult) -> None:
    """The batch summary (markdown) and its samples (table) for the UI."""
    store = open_store(settings.storage)
    state = load_state(store)
    if result.batch_id is None:
        summary = monitoring.empty_batch_summary(result.reason, state, settings.budget.total)
        create_markdown_artifact(summary, key="batch-summary", description="No batch: " + result.reason)
        return
    manifest = state.batches[result.batch_id]
    scores = latest_scores(store, manifest.model_version) if manifest.model_version else None
    summary = monitoring.batch_summary(
        manifest, state, scores, drop_prefix=settings.schedule.labels_drop_prefix
    )
    create_markdown_artifact(summary, key="batch-summary", description=f"Batch {result.batch_id}")
    create_table_artifact(
        monitoring.batch_rows(store, manifest, state),
        key="batch-samples",
        description=f"The {result.size} samples of batch {result.batch_id}, most informative first",
    )
