from __future__ import annotations

from prefect import flow

from activeflow.batches import ExportResult
from activeflow.settings import Settings, load_settings
from activeflow.tasks.batches import export_batch, report_batch


@flow(name="export-batch")
def export_batch_flow(settings: Settings | None = None) -> ExportResult:
    """The next labelling batch: strategy-ranked, within the per-run and total budget."""
    settings = settings or load_settings()
    result = export_batch(settings)
    report_batch(settings, result)
    return result
