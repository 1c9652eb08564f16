"""``activeflow migrate``: build the catalog of a store written before it existed.

That layout kept every fact as an immutable object (``ingests/*.jsonl``,
``batches/<id>/manifest.json`` and ``released.json``, ``labels/<batch>/*.jsonl``); the
catalog now holds them (see catalog.py). Migration copies each fact into its table once:
rerunning it adds nothing, and a run cut short is finished by the next. The samples
table is written last, because its existence is what marks a store as migrated. The old
objects stay where they are, unread.
"""

from __future__ import annotations

import pyarrow as pa
from pydantic import BaseModel

from activeflow.core.storage.catalog import Catalog
from activeflow.core.storage.pool import (
    LEGACY_INGESTS,
    BatchManifest,
    BatchRelease,
    ImportedLabel,
    IngestRecord,
    manifest_rows,
)
from activeflow.core.storage.store import ObjectStore, StoreError, get_json, get_jsonl


class MigrationReport(BaseModel):
    samples: int = 0
    batches: int = 0
    labels: int = 0
    releases: int = 0


def migrate(store: ObjectStore) -> MigrationReport:
    """Copy the facts of the pre-catalog layout into the catalog; counts what was added."""
    if not store.list(LEGACY_INGESTS):
        raise StoreError(
            f"nothing to migrate in {store.uri}: it has no {LEGACY_INGESTS}*.jsonl (the layout "
            "before the catalog); check --store or storage.uri"
        )
    catalog = Catalog(store)
    report = MigrationReport()
    manifests, releases = _legacy_batches(store)
    known, sequence = catalog.read("batch_items", ["batch_id"])
    done = set(known.column("batch_id").to_pylist())
    new = [m for m in manifests if m.batch_id not in done]
    if new:
        rows = pa.concat_tables([manifest_rows(m) for m in new])
        catalog.append("batch_items", rows, after=sequence)
    report.batches = len(new)
    report.labels = _copy_new(catalog, "labels", _legacy_labels(store), ("batch_id", "sample_id"))
    report.releases = _copy_new(catalog, "releases", releases, ("batch_id",))
    report.samples = _migrate_samples(store, catalog)
    return report


def _legacy_batches(store: ObjectStore) -> tuple[list[BatchManifest], list[BatchRelease]]:
    manifests, releases = [], []
    for key in store.list("batches/"):
        if key.endswith("/manifest.json"):
            manifests.append(BatchManifest.model_validate(get_json(store, key)))
        elif key.endswith("/released.json"):
            releases.append(BatchRelease.model_validate(get_json(store, key)))
    return manifests, releases


def _legacy_labels(store: ObjectStore) -> list[ImportedLabel]:
    return [
        ImportedLabel.model_validate(row)
        for key in store.list("labels/")
        if key.endswith(".jsonl")
        for row in get_jsonl(store, key)
    ]


def _copy_new(catalog: Catalog, name: str, records: list[BaseModel], key: tuple[str, ...]) -> int:
    existing, sequence = catalog.read(name, list(key))
    have = set(zip(*(existing.column(k).to_pylist() for k in key), strict=True))
    new = [r for r in records if tuple(getattr(r, k) for k in key) not in have]
    if new:
        catalog.append(name, pa.Table.from_pylist([r.model_dump() for r in new]), after=sequence)
    return len(new)


def _migrate_samples(store: ObjectStore, catalog: Catalog) -> int:
    first: dict[str, IngestRecord] = {}
    for key in store.list(LEGACY_INGESTS):  # ingest ids sort by time: the first ingest wins
        for row in get_jsonl(store, key):
            record = IngestRecord.model_validate(row)
            first.setdefault(record.id, record)
    rows = pa.Table.from_pylist([r.model_dump() for r in first.values()])
    if not first:
        return 0
    return catalog.insert_new("samples", rows, key="id")[0]
