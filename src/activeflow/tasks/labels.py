from __future__ import annotations

from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from activeflow.core.ingest.sources import SourceError, check_within_roots, read_location
from activeflow.core.label.label_import import ImportReport, check_announced, import_labels
from activeflow.core.label.labelling import LabelFileError
from activeflow.core.storage.pool import load_state
from activeflow.core.storage.store import open_store
from activeflow.core.train import monitoring
from activeflow.settings import Settings
from activeflow.tasks.retry import STORE_RETRIES


@task(
    name="import-labels",
    task_run_name="import labels of {batch_id}",
    cache_policy=NO_CACHE,
    **STORE_RETRIES,
)
def import_label_file(
    settings: Settings,
    batch_id: str,
    labels_uri: str,
    *,
    allowed_roots: list[str] | None = None,
    sha256: str | None = None,
) -> ImportReport:
    """Import the export at ``labels_uri``; with ``allowed_roots`` only from under them, and
    with ``sha256`` only the bytes that were announced."""
    try:
        if allowed_roots is not None:
            check_within_roots(labels_uri, allowed_roots)
        content = read_location(labels_uri, storage=settings.storage)
        check_announced(labels_uri, content, sha256)
        store = open_store(settings.storage)
        report = import_labels(store, load_state(store), settings, batch_id, labels_uri, content)
    except (LabelFileError, SourceError) as error:
        _publish_refusal(batch_id, labels_uri, error)
        raise
    _publish(report)
    return report


@task(
    name="import-label-bytes",
    task_run_name="import answers for {batch_id}",
    cache_policy=NO_CACHE,
    **STORE_RETRIES,
)
def import_label_bytes(
    settings: Settings, batch_id: str, file_name: str, content: bytes
) -> ImportReport:
    store = open_store(settings.storage)
    try:
        report = import_labels(store, load_state(store), settings, batch_id, file_name, content)
    except LabelFileError as error:
        _publish_refusal(batch_id, file_name, error)
        raise
    _publish(report)
    return report


def _publish(report: ImportReport) -> None:
    create_markdown_artifact(
        monitoring.import_summary(report),
        key="label-import",
        description=f"Labels of batch {report.batch_id}: {report.imported} imported",
    )


def _publish_refusal(batch_id: str, file: str, error: Exception) -> None:
    create_markdown_artifact(
        monitoring.import_refused(batch_id, file, error),
        key="label-import",
        description=f"Labels of batch {batch_id}: refused",
    )
