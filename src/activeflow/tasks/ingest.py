from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from activeflow.core.ingest.ingest import IngestReport, ingest_images
from activeflow.core.ingest.sources import iter_source
from activeflow.core.storage.pool import Split
from activeflow.core.storage.store import open_store
from activeflow.settings import Settings
from activeflow.tasks.retry import STORE_RETRIES


@task(
    name="ingest-source", task_run_name="ingest {source}", cache_policy=NO_CACHE, **STORE_RETRIES
)
def ingest_source(source: str, split: Split, settings: Settings) -> IngestReport:
    images = iter_source(source, labelled=split != "pool", storage=settings.storage)
    return ingest_images(
        open_store(settings.storage), images, split=split, classes=settings.data.classes,
        max_pixels=settings.ingest.max_pixels,
    )
