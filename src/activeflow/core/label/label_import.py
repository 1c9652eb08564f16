"""Importing a batch's completed labels: exactly once, nothing lost, nothing overwritten.

The whole file is validated before anything is written; a refused file writes nothing.
Only labels that are new are written, in one serial commit to the catalog's ``labels``
table: importing the same export again, or a later export that is a superset of an
earlier one, adds only what is new. A label that differs from one already imported is
reported as a conflict, never written; of two concurrent imports that disagree, one
commits first and the other, rerun on the new state, reports the conflict.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Collection, Iterator
from pathlib import PurePosixPath

import pyarrow as pa
from pydantic import BaseModel

from activeflow.core.label.labelling import Disagreement, LabelFileError, LabelRecord, parse_label_file
from activeflow.core.storage.catalog import retry_on_conflict
from activeflow.core.storage.pool import ImportedLabel, PoolState, load_state, utc_now
from activeflow.core.storage.store import ObjectStore
from activeflow.settings import Settings


class LabelConflict(BaseModel):
    sample_id: str
    imported: str  # the label already in the store, which stays
    offered: str  # what this file says


class ImportReport(BaseModel):
    batch_id: str
    file: str
    imported: int  # new labels written by this import
    already_imported: int = 0  # labels in the file the store already had
    conflicts: list[LabelConflict] = []
    unlabelled: list[str] = []  # tasks not labelled yet: they stay queued
    skipped: list[str] = []  # only cancelled/skipped annotations: they stay queued
    disagreements: list[Disagreement] = []  # below the minimum agreement: stay queued
    requeued_elsewhere: list[str] = []  # of a released batch, now in another batch
    over_budget: list[str] = []  # late labels of a released batch beyond budget.total: not written
    still_queued: int = 0  # samples of the batch still waiting for a label


def import_labels(
    store: ObjectStore,
    state: PoolState,
    settings: Settings,
    batch_id: str,
    file_name: str,
    content: bytes,
) -> ImportReport:
    """Validate ``content`` (Label Studio JSON / JSON-MIN / CSV export, or CSV id,label) for
    the batch and record its new labels. Raises ``LabelFileError`` naming file, record and
    problem; nothing is written then."""
    first = [state]

    def attempt() -> ImportReport:
        current = first.pop() if first else load_state(store)
        return _import_once(current, settings, batch_id, file_name, content)

    return retry_on_conflict(attempt)


def retrain_refusal(report: ImportReport) -> str | None:
    """Why an import gives a retrain nothing to learn from (None when it does)."""
    if report.imported == 0 and report.already_imported == 0:
        return "no labels in the file: not retrained"
    return None


def check_announced(file_name: str, content: bytes, sha256: str | None) -> None:
    """Refuse ``content`` unless it is the file that was announced with ``sha256`` (the
    watcher's event names the bytes it claimed; None or "" when nothing was announced)."""
    if not sha256:
        return
    found = hashlib.sha256(content).hexdigest()
    if found != sha256:
        raise LabelFileError(
            file_name,
            None,
            f"changed since it was announced (sha256 {found[:12]}..., announced {sha256[:12]}...); "
            "nothing imported: the watcher announces the new content on its next poll",
        )


_PLAIN_ID = re.compile(r"[A-Za-z0-9_.:-]+")  # anything else is no sample id of ours


class _KnownIds(Collection[str]):
    """Ids in the catalog, checked only for ids outside the batch (a refusal either way)."""

    def __init__(self, batch_ids: set[str], state: PoolState) -> None:
        self.batch_ids, self.state = batch_ids, state

    def __contains__(self, sample_id: object) -> bool:
        if sample_id in self.batch_ids:
            return True
        return isinstance(sample_id, str) and _PLAIN_ID.fullmatch(sample_id) is not None and (
            self.state.is_catalogued(sample_id)
        )

    def __iter__(self) -> Iterator[str]:
        return iter(self.state.samples.table.column("id").to_pylist())

    def __len__(self) -> int:
        return len(self.state.samples)


def _import_once(
    state: PoolState, settings: Settings, batch_id: str, file_name: str, content: bytes
) -> ImportReport:
    if batch_id not in state.batches:
        raise LabelFileError(file_name, None, f"batch {batch_id!r} does not exist in the store")
    parsed = parse_label_file(
        file_name,
        content,
        batch_ids=set(state.batches[batch_id].sample_ids),
        known_ids=_KnownIds(set(state.batches[batch_id].sample_ids), state),
        classes=settings.data.classes,
        batch_id=batch_id,
        min_agreement=settings.labelling.min_agreement,
    )
    report = ImportReport(
        batch_id=batch_id,
        file=file_name,
        imported=0,
        unlabelled=parsed.unlabelled,
        skipped=parsed.skipped,
        disagreements=parsed.disagreements,
    )
    new = _sort_records(state, batch_id, parsed.records, report)
    spends = batch_id in state.released and settings.budget.total is not None
    if spends:
        new = _within_budget(state, batch_id, new, settings.budget.total, report)
    if new:
        if spends:  # against what exports spend meanwhile: see Catalog.advance
            state.catalog.advance("batch_items", after=state.sequences["batch_items"])
        _commit(state, batch_id, file_name, new)
    report.imported = len(new)
    labelled_now = set(state.labelled) | {record.sample_id for record in new}
    report.still_queued = sum(1 for sid in state.waiting(batch_id) if sid not in labelled_now)
    return report


def _sort_records(
    state: PoolState, batch_id: str, records: list[LabelRecord], report: ImportReport
) -> list[LabelRecord]:
    """The records worth writing; the rest go into the report."""
    labelled = state.labelled
    queued_elsewhere = set().union(
        *(state.waiting(b) for b in state.open_batches if b != batch_id)
    )
    new: list[LabelRecord] = []
    for record in records:
        existing = labelled.get(record.sample_id)
        if existing == record.label:
            report.already_imported += 1
        elif existing is not None:
            report.conflicts.append(
                LabelConflict(sample_id=record.sample_id, imported=existing, offered=record.label)
            )
        elif batch_id in state.released and record.sample_id in queued_elsewhere:
            report.requeued_elsewhere.append(record.sample_id)
        else:
            new.append(record)
    return new


def _within_budget(
    state: PoolState, batch_id: str, new: list[LabelRecord], total: int | None, report: ImportReport
) -> list[LabelRecord]:
    """A released batch's samples went back to the pool unspent: labels for them now are new
    spending, taken in file order while ``budget.total`` allows; the rest stay in the pool."""
    remaining = state.budget_remaining(total)
    returned = set(state.released[batch_id].returned)
    kept: list[LabelRecord] = []
    for record in new:
        if record.sample_id in returned:
            if remaining == 0:
                report.over_budget.append(record.sample_id)
                continue
            remaining = None if remaining is None else remaining - 1
        kept.append(record)
    return kept


def _commit(state: PoolState, batch_id: str, file_name: str, new: list[LabelRecord]) -> None:
    now = utc_now()
    rows = [
        ImportedLabel(
            sample_id=r.sample_id,
            label=r.label,
            batch_id=batch_id,
            source_file=PurePosixPath(file_name).name,
            imported_at=now,
        ).model_dump()
        for r in new
    ]
    state.catalog.append("labels", pa.Table.from_pylist(rows), after=state.sequences["labels"])
