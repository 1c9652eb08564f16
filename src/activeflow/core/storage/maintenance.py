"""Removing what a process killed midway left behind.

Every fact is committed last (a catalog row, a ``_SUCCESS`` marker, a model's metrics), so
what a killed process wrote before its commit is unreachable, never wrong: temp files, the
files of a batch never committed, the parts of a scoring run never completed, a model
never given its metrics. They are removed once older than any write still in flight can
be; their ids carry their creation time (``pool.new_id``)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from activeflow.core.storage.pool import load_state
from activeflow.core.storage.store import ObjectStore

_STAMP = re.compile(r"(\d{8}T\d{12}Z)")


def created_at(object_id: str) -> datetime | None:
    """When an id made by ``pool.new_id`` was made; None for any other name."""
    found = _STAMP.search(object_id)
    if found is None:
        return None
    return datetime.strptime(found.group(1), "%Y%m%dT%H%M%S%fZ").replace(tzinfo=UTC)


def remove_orphans(store: ObjectStore, max_age_s: float = 3600, now: datetime | None = None) -> dict[str, int]:
    """Remove unreachable leftovers older than ``max_age_s``; how many of each kind."""
    cutoff = (now or datetime.now(UTC)) - timedelta(seconds=max_age_s)

    def stale(object_id: str) -> bool:
        made = created_at(object_id)
        return made is not None and made <= cutoff

    committed = set(load_state(store).batches)
    batch_keys = store.list("batches/")
    orphan_batches = {k.split("/")[1] for k in batch_keys} - committed
    removed_batches = {b for b in orphan_batches if stale(b)}

    model_keys = [k for k in store.list("models/") if not k.startswith("models/champion/")]
    finished = {k.split("/")[1] for k in model_keys if k.endswith("/metrics.json")}
    unfinished = {k.split("/")[1] for k in model_keys} - finished
    removed_models = {v for v in unfinished if stale(v)}

    score_keys = store.list("scores/")
    runs = {tuple(k.split("/")[1:3]) for k in score_keys if k.count("/") >= 3}
    complete = {tuple(k.split("/")[1:3]) for k in score_keys if k.endswith("/_SUCCESS.json")}
    removed_runs = {run for run in runs - complete if stale(run[1])}

    doomed = (
        [k for k in batch_keys if k.split("/")[1] in removed_batches]
        + [k for k in model_keys if k.split("/")[1] in removed_models]
        + [k for k in score_keys if tuple(k.split("/")[1:3]) in removed_runs]
    )
    for key in doomed:
        store.delete(key)
    return {
        "temp_files": store.remove_stale_temp_files(max_age_s),
        "batches": len(removed_batches),
        "models": len(removed_models),
        "scoring_runs": len(removed_runs),
    }
