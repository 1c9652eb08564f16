from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from activeflow.core.storage.pool import load_state
from activeflow.core.storage.store import open_store
from activeflow.settings import Settings
from activeflow.tasks.retry import STORE_RETRIES


@task(name="pool-status", task_run_name="pool status", cache_policy=NO_CACHE, **STORE_RETRIES)
def pool_status(settings: Settings) -> dict[str, object]:
    return load_state(open_store(settings.storage)).summary(settings.budget.total)
