"""Tasks over what a batch and the models say about the run: the random slice's unbiased
estimate of pool accuracy, and the stopping signal."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from activeflow.core.score import selection
from activeflow.core.storage.pool import load_state
from activeflow.core.storage.store import open_store
from activeflow.core.train import stopping
from activeflow.settings import Settings


@task(name="pool-estimate", task_run_name="pool estimate from {batch_id}", cache_policy=NO_CACHE)
def pool_estimate(settings: Settings, batch_id: str) -> selection.PoolAccuracyEstimate:
    store = open_store(settings.storage)
    return selection.batch_pool_estimate(store, load_state(store), batch_id)


@task(name="stopping-signal", cache_policy=NO_CACHE)
def stopping_signal(settings: Settings) -> stopping.StoppingSignal:
    return stopping.stopping_signal_for_store(open_store(settings.storage), settings)
