"""Importing a batch's completed labels, exactly once.

The whole file is validated before anything is written; a refused file writes
nothing. The labels land in ``labels/<batch-id>.jsonl`` with a conditional create, so
importing the same file again changes nothing and a different file is refused.
"""

from __future__ import annotations

from pathlib import PurePosixPath

from pydantic import BaseModel

from activeflow.labelling import LabelFileError, parse_label_file
from activeflow.pool import ImportedLabel, PoolState, labels_key, utc_now
from activeflow.settings import Settings
from activeflow.store import ObjectStore, put_jsonl_if_absent


class ImportReport(BaseModel):
    batch_id: str
    file: str
    imported: int
    unlabelled: list[str]
    already_imported: bool = False


def import_labels(
    store: ObjectStore,
    state: PoolState,
    settings: Settings,
    batch_id: str,
    file_name: str,
    content: bytes,
) -> ImportReport:
    """Validate ``content`` (Label Studio JSON / JSON-MIN export or CSV id,label) for the
    batch and record its labels once. Raises ``LabelFileError`` naming file, record and
    problem; nothing is written then."""
    if batch_id not in state.batches:
        raise LabelFileError(file_name, None, f"batch {batch_id!r} does not exist in the store")
    parsed = parse_label_file(
        file_name,
        content,
        batch_ids=set(state.batches[batch_id].sample_ids),
        known_ids=set(state.samples),
        classes=settings.data.classes,
    )
    now = utc_now()
    source = PurePosixPath(file_name).name
    records = [
        ImportedLabel(
            sample_id=r.sample_id, label=r.label, batch_id=batch_id, source_file=source,
            imported_at=now,
        )
        for r in parsed.records
    ]
    report = ImportReport(
        batch_id=batch_id, file=file_name, imported=len(records), unlabelled=parsed.unlabelled
    )
    existing = state.batch_labels.get(batch_id)
    if existing is not None:
        return _compare_with_existing(report, existing, records, file_name)
    if not records:
        return report  # nothing labelled yet: the batch stays open
    rows = [r.model_dump() for r in records]
    if not put_jsonl_if_absent(store, labels_key(batch_id), rows):
        # A concurrent import won the race; it is now the one to compare with.
        raise LabelFileError(file_name, None, f"batch {batch_id} was imported concurrently; retry")
    return report


def _compare_with_existing(
    report: ImportReport,
    existing: list[ImportedLabel],
    records: list[ImportedLabel],
    file_name: str,
) -> ImportReport:
    before = {r.sample_id: r.label for r in existing}
    now = {r.sample_id: r.label for r in records}
    if before == now:
        return report.model_copy(update={"imported": 0, "already_imported": True})
    changed = sorted(sid for sid in before.keys() & now.keys() if before[sid] != now[sid])
    detail = (
        f"label of {changed[0]} would change from {before[changed[0]]!r} to {now[changed[0]]!r}"
        if changed
        else f"it holds {len(before)} labels, this file {len(now)}"
    )
    raise LabelFileError(
        file_name,
        None,
        f"batch {report.batch_id} already has imported labels and this file differs ({detail});"
        " labels are never overwritten",
    )

