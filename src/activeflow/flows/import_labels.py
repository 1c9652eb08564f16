from __future__ import annotations

from prefect import flow, tags

from activeflow.label_import import ImportReport
from activeflow.settings import Settings, load_settings
from activeflow.tasks.labels import import_label_file


@flow(name="import-labels", flow_run_name="import labels of {batch_id}")
def import_labels_flow(
    batch_id: str, labels_uri: str, settings: Settings | None = None
) -> ImportReport:
    """Import a completed label export (Label Studio JSON / JSON-MIN, or CSV id,label)."""
    with tags(f"batch:{batch_id}"):
        return import_label_file(settings or load_settings(), batch_id, labels_uri)
