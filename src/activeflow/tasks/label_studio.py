from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from activeflow.core.label import label_studio
from activeflow.core.label.batches import LABEL_STUDIO_FILE
from activeflow.core.storage.store import open_store
from activeflow.settings import Settings, required_classes


@task(name="push-to-label-studio", task_run_name="push {batch_id} to Label Studio", cache_policy=NO_CACHE)
def push_batch(settings: Settings, batch_id: str) -> dict[str, int]:
    tasks_json = open_store(settings.storage).get(f"batches/{batch_id}/{LABEL_STUDIO_FILE}")
    project_id, pushed = label_studio.push_batch(
        settings.label_studio, required_classes(settings), tasks_json
    )
    return {"project_id": project_id, "pushed": pushed}


@task(name="pull-from-label-studio", task_run_name="pull {batch_id} from Label Studio", cache_policy=NO_CACHE)
def pull_batch(settings: Settings, batch_id: str) -> bytes:
    return label_studio.pull_batch(settings.label_studio, required_classes(settings), batch_id)
