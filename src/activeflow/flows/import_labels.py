from __future__ import annotations

from prefect import flow

from activeflow.core.label import label_studio
from activeflow.core.label.label_import import ImportReport
from activeflow.settings import Settings, load_settings
from activeflow.tasks.label_studio import pull_batch
from activeflow.tasks.labels import import_label_bytes, import_label_file


@flow(name="import-labels", flow_run_name="import labels of {batch_id}")
def import_labels_flow(
    batch_id: str, labels_uri: str, settings: Settings | None = None
) -> ImportReport:
    """Import a completed label export (Label Studio JSON / JSON-MIN, or CSV id,label) from
    a path or s3:// URI, or with ``labels_uri="label-studio"`` straight from the configured
    Label Studio project."""
    settings = settings or load_settings()
    if labels_uri == label_studio.LABEL_STUDIO_SOURCE:
        content = pull_batch(settings, batch_id)
        return import_label_bytes(settings, batch_id, f"label-studio-{batch_id}.json", content)
    return import_label_file(settings, batch_id, labels_uri)
