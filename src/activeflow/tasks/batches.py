from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from activeflow import batches
from activeflow.settings import Settings
from activeflow.store import open_store


@task(name="export-batch", cache_policy=NO_CACHE)
def export_batch(settings: Settings) -> batches.ExportResult:
    return batches.export_batch(open_store(settings.storage), settings)
