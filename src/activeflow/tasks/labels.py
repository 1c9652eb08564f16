from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from activeflow.label_import import ImportReport, import_labels
from activeflow.pool import load_state
from activeflow.settings import Settings
from activeflow.sources import read_location
from activeflow.store import open_store


@task(name="import-labels", task_run_name="import labels of {batch_id}", cache_policy=NO_CACHE)
def import_label_file(settings: Settings, batch_id: str, labels_uri: str) -> ImportReport:
    content = read_location(labels_uri, storage=settings.storage)
    store = open_store(settings.storage)
    return import_labels(store, load_state(store), settings, batch_id, labels_uri, content)


@task(name="import-label-bytes", task_run_name="import answers for {batch_id}", cache_policy=NO_CACHE)
def import_label_bytes(
    settings: Settings, batch_id: str, file_name: str, content: bytes
) -> ImportReport:
    store = open_store(settings.storage)
    return import_labels(store, load_state(store), settings, batch_id, file_name, content)
