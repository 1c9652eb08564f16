"""Contract tests of the catalog, on the local store and on SeaweedFS: what must happen
once happens once under concurrent writers, and a store in the old layout migrates."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow as pa
import pytest
from images import write_image

from activeflow.core.ingest.ingest import ingest_images
from activeflow.core.ingest.sources import iter_source
from activeflow.core.label.batches import export_batch
from activeflow.core.label.label_import import import_labels
from activeflow.core.storage.catalog import Catalog, CatalogConflict
from activeflow.core.storage.migrate import migrate
from activeflow.core.storage.pool import (
    BatchItemRecord,
    BatchManifest,
    BatchRelease,
    ImportedLabel,
    IngestRecord,
    load_state,
)
from activeflow.core.storage.store import ObjectStore, StoreError, jsonl_bytes, open_store, put_json
from activeflow.settings import load_settings

CLASSES = ["cat", "dog"]


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.s3)])
def storage(request, tmp_path):
    if request.param == "local":
        return load_settings(storage={"uri": str(tmp_path / "store")}).storage
    return request.getfixturevalue("s3_storage")


def _pool(storage, tmp_path: Path, count: int, **budget) -> tuple[ObjectStore, object]:
    for n in range(count):
        write_image(tmp_path / "in" / f"{n}.png", n)
    store = open_store(storage)
    ingest_images(store, iter_source(str(tmp_path / "in"), labelled=False))
    settings = load_settings(
        storage=storage.model_dump(), data={"classes": CLASSES}, budget={"per_run": 4, **budget}
    )
    return store, settings


def test_ten_concurrent_exports_are_disjoint_and_never_overspend(storage, tmp_path):
    store, settings = _pool(storage, tmp_path, 30, total=18)
    start = threading.Barrier(10)

    def export(_: int):
        start.wait()
        return export_batch(store, settings)

    with ThreadPoolExecutor(10) as pool:
        results = list(pool.map(export, range(10)))

    state = load_state(store)
    made = [r for r in results if r.batch_id is not None]
    assert sorted(r.size for r in made) == [2, 4, 4, 4, 4]  # 18 labels: four full batches and 2
    assert {r.reason for r in results if r.batch_id is None} == {"total budget of 18 labels is spent"}
    picked = [sid for manifest in state.batches.values() for sid in manifest.sample_ids]
    assert len(picked) == len(set(picked)) == state.budget_spent == 18
    assert set(state.batches) == {r.batch_id for r in made}


def test_a_retried_export_request_makes_one_batch(storage, tmp_path):
    store, settings = _pool(storage, tmp_path, 10)
    first = export_batch(store, settings, request_id="task-run/1")
    again = export_batch(store, settings, request_id="task-run/1")
    other = export_batch(store, settings, request_id="task-run/2")
    assert again.batch_id == first.batch_id and again.size == first.size == 4
    assert other.batch_id != first.batch_id
    assert len(load_state(store).batches) == 2


def test_ten_concurrent_conflicting_imports_land_exactly_once(storage, tmp_path):
    """Ten imports of the batch at once, each labelling every sample with one class (the
    classes alternate): one lands; those agreeing with it find it imported, the others
    are refused naming every conflict."""
    store, settings = _pool(storage, tmp_path, 6)
    batch = export_batch(store, settings)
    ids = load_state(store).batches[batch.batch_id].sample_ids
    files = {
        f"{n}-{CLASSES[n % len(CLASSES)]}.csv": (
            "\n".join(["id,label", *(f"{sid},{CLASSES[n % len(CLASSES)]}" for sid in ids)]) + "\n"
        ).encode()
        for n in range(10)
    }
    start = threading.Barrier(10)

    def run(name: str):
        start.wait()
        return import_labels(store, load_state(store), settings, batch.batch_id, name, files[name])

    with ThreadPoolExecutor(10) as pool:
        reports = list(pool.map(run, files))

    (landed,) = [r for r in reports if r.imported]
    winner = landed.file.removesuffix(".csv").split("-")[1]
    assert landed.imported == 4 and not landed.conflicts
    for report in reports:
        if report is landed:
            continue
        if report.file.endswith(f"-{winner}.csv"):
            assert (report.imported, report.already_imported, report.conflicts) == (0, 4, [])
        else:
            assert report.imported == 0 and len(report.conflicts) == 4
            assert {(c.imported, c.offered) for c in report.conflicts} == {
                (winner, report.file.removesuffix(".csv").split("-")[1])}
    assert set(load_state(store).labelled.values()) == {winner}
    assert Catalog(store).read("labels")[0].num_rows == 4


def test_late_labels_imported_during_concurrent_exports_never_overspend(storage, tmp_path):
    """Exports spend on batch_items, late labels of a released batch on labels: started
    together, they still spend the total exactly once between them."""
    from datetime import UTC, datetime, timedelta

    from activeflow.core.label.batches import release_stale_batches

    store, settings = _pool(storage, tmp_path, 30, total=6)
    settings = settings.model_copy(update={"labelling": settings.labelling.model_copy(
        update={"release_after_hours": 1})})
    first = export_batch(store, settings).batch_id
    late = load_state(store).batches[first].sample_ids
    release_stale_batches(store, load_state(store), settings, now=datetime.now(UTC) + timedelta(hours=2))
    answers = ("id,label\n" + "".join(f"{sid},cat\n" for sid in late)).encode()
    start = threading.Barrier(3)

    def run(n: int):
        start.wait()
        if n == 0:
            return import_labels(store, load_state(store), settings, first, "late.csv", answers)
        return export_batch(store, settings)

    with ThreadPoolExecutor(3) as pool:
        report, *exports = pool.map(run, range(3))

    state = load_state(store)
    assert state.budget_spent == 6
    assert report.imported + len(report.over_budget) + len(report.requeued_elsewhere) == len(late)
    assert sum(e.size for e in exports) + report.imported == 6
    assert state.queued.isdisjoint(state.labelled)


def test_concurrent_ingests_of_overlapping_folders_catalogue_each_image_once(storage, tmp_path, monkeypatch):
    """Six ingests at once, in chunks of 4, of folders that share most of their images:
    every image lands once, and the reports' new counts add up to the distinct images."""
    import activeflow.core.ingest.ingest as ingest_module

    monkeypatch.setattr(ingest_module, "INGEST_CHUNK", 4)
    folders = []
    for writer in range(6):
        folder = tmp_path / f"in-{writer}"
        for n in [*range(12), 100 + writer]:  # 12 shared, one of its own
            write_image(folder / f"{n}.png", n)
        folders.append(folder)
    store = open_store(storage)
    start = threading.Barrier(6)

    def ingest(folder: Path):
        start.wait()
        return ingest_images(store, iter_source(str(folder), labelled=False))

    with ThreadPoolExecutor(6) as pool:
        reports = list(pool.map(ingest, folders))

    ids = Catalog(store).read("samples", ["id"])[0].column("id").to_pylist()
    assert len(ids) == len(set(ids)) == 18
    assert sum(r.new for r in reports) == 18
    assert all(r.new + r.duplicate == 13 for r in reports)


def test_a_serial_commit_on_a_stale_read_is_refused(storage):
    catalog = Catalog(open_store(storage))
    row = pa.table({"batch_id": ["b1"], "released_at": ["t"], "reason": ["r"], "returned": [["x"]]})
    catalog.append("releases", row, after=0)
    with pytest.raises(CatalogConflict, match="sequence 1, this writer read 0"):
        catalog.append("releases", row, after=0)
    assert catalog.read("releases") [0].num_rows == 1


def test_compaction_rewrites_a_fragmented_table_and_keeps_every_row(storage):
    catalog = Catalog(open_store(storage))
    for n in range(6):  # six commits: six data files
        rows = pa.table({"name": [f"in/{n}.png"], "version": ["1:1"], "sample_id": [str(n)], "read_at": ["t"]})
        catalog.append("sources", rows)
    before = catalog.read("sources")[0].sort_by("name")

    assert catalog.compact(max_files=5) == {"sources": 6}

    assert catalog.read("sources")[0].sort_by("name").equals(before)
    assert catalog.compact(max_files=5) == {}  # now one file: nothing to do


def _legacy_store(store: ObjectStore) -> dict[str, list[str]]:
    """A store as activeflow wrote it before the catalog: facts as JSON objects."""
    ids = {name: [c * 64 for c in chars] for name, chars in (("pool", "abcd"), ("test", "ef"))}

    def record(sid: str, split: str, label: str | None = None) -> dict:
        return IngestRecord(
            id=sid, ext="png", source=f"/in/{sid[0]}.png", size=1, ingested_at="t", split=split,
            label=label,
        ).model_dump()

    pool = [record(sid, "pool") for sid in ids["pool"]]
    store.put("ingests/i1.jsonl", jsonl_bytes(pool[:3]))
    store.put("ingests/i2.jsonl", jsonl_bytes([pool[0], pool[3]]))  # a, again: first ingest wins
    store.put("ingests/i3.jsonl", jsonl_bytes([record(sid, "test", "cat") for sid in ids["test"]]))
    items = [BatchItemRecord(sample_id=sid, score=0.0) for sid in ids["pool"][:2]]
    for batch_id in ("b1", "b2"):
        manifest = BatchManifest(
            batch_id=batch_id, created_at="t", strategy="random-cold-start", model_version=None,
            budget_per_run=2, budget_total=None, items=items if batch_id == "b1" else items[1:],
        )
        put_json(store, f"batches/{batch_id}/manifest.json", manifest.model_dump())
    label = ImportedLabel(sample_id=ids["pool"][0], label="dog", batch_id="b1", source_file="x.csv", imported_at="t")
    store.put("labels/b1/0001.jsonl", jsonl_bytes([label.model_dump()]))
    release = BatchRelease(batch_id="b1", released_at="t", reason="old", returned=[ids["pool"][1]])
    put_json(store, "batches/b1/released.json", release.model_dump())
    return ids


def test_migrating_a_store_with_nothing_in_the_old_layout_says_so_and_writes_nothing(storage):
    store = open_store(storage)
    with pytest.raises(StoreError, match="nothing to migrate in .*no ingests/\\*.jsonl"):
        migrate(store)
    assert store.list() == []


def test_a_store_in_the_old_layout_is_refused_until_migrated_once(storage):
    store = open_store(storage)
    ids = _legacy_store(store)
    with pytest.raises(StoreError, match="run `activeflow migrate` once"):
        load_state(store)

    report = migrate(store)

    assert (report.samples, report.batches, report.labels, report.releases) == (6, 2, 1, 1)
    state = load_state(store)
    assert state.summary(None) == {
        "unlabelled": 2, "queued": 1, "labelled": 1, "test": 2, "quarantined": 0,
        "budget_spent": 2, "budget_remaining": None, "champion": None,
    }
    assert state.labelled == {ids["pool"][0]: "dog"} and state.open_batches == ["b2"]
    assert state.unlabelled.to_pylist() == ids["pool"][2:]
    assert migrate(store).model_dump() == {"samples": 0, "batches": 0, "labels": 0, "releases": 0}
