from __future__ import annotations

from prefect import flow, tags

from activeflow import label_studio
from activeflow.batches import ExportResult
from activeflow.settings import Settings, load_settings
from activeflow.tasks.batches import export_batch, report_batch
from activeflow.tasks.label_studio import push_batch


def export_and_publish(settings: Settings) -> ExportResult:
    """Export the batch, report it in the UI, push it to Label Studio when configured.
    Call inside a flow."""
    result = export_batch(settings)
    with tags(f"batch:{result.batch_id}") if result.batch_id else tags():
        report_batch(settings, result)
    if result.batch_id is not None and label_studio.is_configured(settings.label_studio):
        result.label_studio = push_batch(settings, result.batch_id)
    return result


@flow(name="export-batch")
def export_batch_flow(settings: Settings | None = None) -> ExportResult:
    """The next labelling batch: strategy-ranked, within the per-run and total budget."""
    return export_and_publish(settings or load_settings())
