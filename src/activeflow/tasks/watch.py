from __future__ import annotations

from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.events import emit_event
from prefect.runtime import flow_run

from activeflow.core.label import label_drops
from activeflow.core.storage.store import open_store
from activeflow.core.train import monitoring
from activeflow.settings import Settings
from activeflow.tasks.retry import STORE_RETRIES

# What import-and-retrain's trigger listens for; a labelling tool's hook may emit it too:
# resource id "activeflow.batch.<batch-id>", payload {"batch_id": ..., "labels_uri": ...}.
LABELS_READY_EVENT = "activeflow.labels.ready"


@task(name="scan-label-drops", task_run_name="scan {prefix}", cache_policy=NO_CACHE, **STORE_RETRIES)
def scan_label_drops(settings: Settings, prefix: str) -> label_drops.DropScan:
    claimer = f"flow run {flow_run.name or flow_run.id}"
    return label_drops.scan_drops(open_store(settings.storage), prefix, claimer)


@task(name="announce-labels", task_run_name="announce labels of {drop.batch_id}", cache_policy=NO_CACHE)
def announce_labels(settings: Settings, drop: label_drops.LabelDrop) -> None:
    try:
        _emit(settings, drop)
    except BaseException:
        label_drops.unclaim(open_store(settings.storage), drop)  # the next poll tries again
        raise


def _emit(settings: Settings, drop: label_drops.LabelDrop) -> None:
    event = emit_event(
        event=LABELS_READY_EVENT,
        resource={
            "prefect.resource.id": f"activeflow.batch.{drop.batch_id}",
            "prefect.resource.name": f"batch {drop.batch_id}",
            "activeflow.store": settings.storage.uri,
        },
        payload={"batch_id": drop.batch_id, "labels_uri": drop.uri, "sha256": drop.sha256},
    )
    if event is None:
        raise RuntimeError(
            f"could not emit {LABELS_READY_EVENT} for {drop.key}: no Prefect events client; "
            "is PREFECT_API_URL set?"
        )


@task(name="report-label-drops", task_run_name="report drops under {scan.prefix}", cache_policy=NO_CACHE)
def report_label_drops(scan: label_drops.DropScan) -> None:
    create_markdown_artifact(
        monitoring.drop_scan_summary(scan, LABELS_READY_EVENT),
        key="label-drops",
        description=f"{len(scan.claimed)} new label exports under {scan.prefix}",
    )
