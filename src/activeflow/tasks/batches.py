from __future__ import annotations

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import task_run

from activeflow.core.label import batches
from activeflow.core.score.scoring import model_scores
from activeflow.core.storage.pool import load_state
from activeflow.core.storage.store import open_store
from activeflow.core.train import monitoring
from activeflow.settings import Settings
from activeflow.tasks.retry import STORE_RETRIES


@task(
    name="export-batch",
    task_run_name="export batch ({settings.strategy.name}, budget {settings.budget.per_run})",
    cache_policy=NO_CACHE,
    **STORE_RETRIES,
)
def export_batch(settings: Settings, model_version: str | None = None) -> batches.ExportResult:
    # Exports are serialised by the catalog's commits; a retry of this task run returns
    # the batch its first try committed instead of making a second.
    request_id = f"task-run/{task_run.id}" if task_run.id else None
    return batches.export_batch(
        open_store(settings.storage), settings, request_id, model_version=model_version
    )


@task(name="open-batches", cache_policy=NO_CACHE, **STORE_RETRIES)
def open_batches(settings: Settings) -> list[str]:
    """Batches with samples still waiting for a label, oldest first."""
    return load_state(open_store(settings.storage)).open_batches


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
    scores = model_scores(store, manifest.model_version) if manifest.model_version else None
    summary = monitoring.batch_summary(
        manifest, state, scores, drop_prefix=settings.schedule.labels_drop_prefix
    )
    create_markdown_artifact(summary, key="batch-summary", description=f"Batch {result.batch_id}")
    create_table_artifact(
        monitoring.batch_rows(store, manifest, state),
        key="batch-samples",
        description=f"The {result.size} samples of batch {result.batch_id}, most informative first",
    )
