from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from activeflow.core.storage.pool import load_state
from activeflow.core.storage.store import open_store
from activeflow.evaluation import simulation
from activeflow.settings import Settings


@task(name="load-ground-truth", task_run_name="ground truth from {folder}", cache_policy=NO_CACHE)
def load_ground_truth(folder: str) -> dict[str, str]:
    return simulation.ground_truth(folder)


@task(name="oracle-answers", task_run_name="oracle answers {batch_id}", cache_policy=NO_CACHE)
def oracle_answers(settings: Settings, batch_id: str, truth: dict[str, str]) -> bytes:
    manifest = load_state(open_store(settings.storage)).batches[batch_id]
    return simulation.oracle_answers(manifest, truth)
