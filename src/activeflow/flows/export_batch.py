from __future__ import annotations

from prefect import flow

from activeflow.core.label import label_studio
from activeflow.core.label.batches import ExportResult
from activeflow.settings import Settings, load_settings
from activeflow.tasks.batches import export_batch, open_batches, report_batch
from activeflow.tasks.label_studio import push_batch


def export_and_publish(settings: Settings, model_version: str | None = None) -> ExportResult:
    """Export the batch, report it in the UI, push it to Label Studio when configured.
    Call inside a flow.

    A batch is committed before it is pushed, so a push that failed (server down) is made
    by the next export: every open batch is pushed, the new one first; a batch the project
    already holds is not pushed twice. ``model_version``: rank by the scores that model
    made (the run's own scoring) rather than the champion's."""
    result = export_batch(settings, model_version)
    report_batch(settings, result)
    if label_studio.is_configured(settings.label_studio):
        pushed = {b: push_batch(settings, b) for b in reversed(open_batches(settings))}  # newest first
        result.label_studio = pushed.get(result.batch_id)
    return result


@flow(name="export-batch")
def export_batch_flow(settings: Settings | None = None) -> ExportResult:
    """The next labelling batch: strategy-ranked, within the per-run and total budget."""
    return export_and_publish(settings or load_settings())
