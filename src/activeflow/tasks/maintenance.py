from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from activeflow.core.storage import maintenance
from activeflow.core.storage.store import open_store
from activeflow.settings import Settings
from activeflow.tasks.retry import STORE_RETRIES


@task(name="remove-orphans", cache_policy=NO_CACHE, **STORE_RETRIES)
def remove_orphans(settings: Settings) -> dict[str, int]:
    """What processes killed midway left behind, older than an hour."""
    return maintenance.remove_orphans(open_store(settings.storage))
