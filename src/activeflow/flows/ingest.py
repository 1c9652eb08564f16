from __future__ import annotations

from prefect import flow

from activeflow.core.ingest.ingest import IngestReport
from activeflow.core.storage.pool import Split
from activeflow.settings import Settings, load_settings
from activeflow.tasks.ingest import ingest_source


@flow(name="ingest", flow_run_name="ingest {source}")
def ingest_flow(source: str, split: Split = "pool", settings: Settings | None = None) -> IngestReport:
    """New images from a folder, an S3 prefix or ``tfds:NAME[/SPLIT]`` into the store.

    ``split`` "pool" ingests unlabelled images; "train" / "test" read SOURCE as
    ``<class>/<image>`` and keep the labels (test = the held-out set)."""
    return ingest_source(source, split, settings or load_settings())
