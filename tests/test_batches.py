"""Export: budget caps, strategy ranking over stored scores, queued samples, the files."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime, timedelta
from urllib.parse import quote

import numpy as np
import pytest
from images import write_image

from activeflow.core.ingest.ingest import ingest_images
from activeflow.core.ingest.sources import iter_source
from activeflow.core.label.batches import export_batch
from activeflow.core.score import scoring
from activeflow.core.score.scoring import ScoringError
from activeflow.core.storage.pool import Promotion, load_state, promotion_key
from activeflow.core.storage.store import LocalStore, put_json_if_absent
from activeflow.settings import load_settings

CLASSES = ["cat", "dog", "bird"]


@pytest.fixture
def store(tmp_path):
    for n in range(10):
        write_image(tmp_path / "in" / f"{n}.png", n)
    store = LocalStore(tmp_path / "store")
    ingest_images(store, iter_source(str(tmp_path / "in"), labelled=False))
    return store


def settings_for(store, **budget):
    return load_settings(
        storage={"uri": store.uri}, data={"classes": CLASSES}, budget={"per_run": 4, **budget}
    )


def test_cold_start_is_a_seeded_random_batch_within_the_per_run_budget(store):
    result = export_batch(store, settings_for(store))
    assert result.size == 4
    manifest = load_state(store).batches[result.batch_id]
    assert manifest.strategy == "random-cold-start" and manifest.model_version is None
    # The same seed on an identical store picks the same samples.
    twin = LocalStore(store.root.parent / "twin")
    for key in store.list("catalog/samples/"):
        twin.put(key, store.get(key))
    twin_result = export_batch(twin, settings_for(twin))
    assert load_state(twin).batches[twin_result.batch_id].sample_ids == manifest.sample_ids


def test_exported_samples_are_queued_and_never_selected_again(store):
    settings = settings_for(store)
    batches = [export_batch(store, settings) for _ in range(3)]
    assert [b.size for b in batches] == [4, 4, 2]  # the pool has 10
    state = load_state(store)
    chosen = [sid for b in batches for sid in state.batches[b.batch_id].sample_ids]
    assert len(chosen) == len(set(chosen)) == 10
    assert state.unlabelled.to_pylist() == [] and len(state.queued) == 10
    empty = export_batch(store, settings)
    assert (empty.batch_id, empty.size, empty.reason) == (None, 0, "no unlabelled samples left in the pool")


def test_total_budget_caps_what_remains(store):
    settings = settings_for(store, total=6)
    assert [export_batch(store, settings).size for _ in range(3)] == [4, 2, 0]
    state = load_state(store)
    assert state.budget_spent == 6 and state.budget_remaining(6) == 0
    assert export_batch(store, settings).reason == "total budget of 6 labels is spent"
    assert len(state.batches) == 2  # the empty exports wrote nothing


def _champion_with_scores(store, probs_by_rank):
    """A champion and one complete scoring run whose probabilities the test chooses."""
    state = load_state(store)
    version = "m-test"
    put_json_if_absent(
        store,
        promotion_key(1),
        Promotion(sequence=1, version=version, accuracy=0.5, previous=None, promoted_at="now").model_dump(),
    )
    ids = state.unlabelled.to_pylist()
    table = scoring.scores_table(ids, np.array(probs_by_rank(len(ids))), CLASSES)
    import pyarrow.parquet as pq

    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    store.put(f"scores/{version}/s1/part-00000.parquet", buffer.getvalue())
    plan = scoring.ScoringPlan(run_id="s1", model_version=version, shards=[ids])
    scoring.commit_scores(store, plan, len(ids))
    return ids


def gapped(n):
    """Probabilities whose top-2 gap is 0.9 - 0.09 i for sample i: later ones more confused."""
    rows = []
    for i in range(n):
        gap = 0.9 - 0.09 * i
        top = (1 + gap) / 2 - 0.005
        rows.append([top, top - gap, 1 - (2 * top - gap)])
    return rows


def test_margin_picks_the_most_confused_samples_in_order(store):
    ids = _champion_with_scores(store, gapped)
    result = export_batch(store, load_settings(
        storage={"uri": store.uri}, data={"classes": CLASSES},
        budget={"per_run": 3}, strategy={"name": "margin", "random_fraction": 0}))
    manifest = load_state(store).batches[result.batch_id]
    assert manifest.sample_ids == [ids[9], ids[8], ids[7]]
    assert manifest.strategy == "margin" and manifest.model_version == "m-test"
    assert manifest.items[0].predicted == "cat"
    assert manifest.items[0].score == pytest.approx(1 - (0.9 - 0.09 * 9))


def test_a_warm_start_draws_whole_batches_at_random_until_each_class_has_its_labels(store, tmp_path):
    ids = _champion_with_scores(store, gapped)
    settings = load_settings(
        storage={"uri": store.uri}, data={"classes": CLASSES}, budget={"per_run": 3},
        strategy={"name": "margin", "random_fraction": 0, "warm_start_per_class": 1})
    warm_id = export_batch(store, settings).batch_id
    warm = load_state(store).batches[warm_id]
    # No training labels yet, fewer than 1 a class: the whole batch is a uniform draw.
    assert warm.strategy == "random-warm-start" and warm.model_version == "m-test"
    assert len(warm.items) == 3 and all(item.random_slice for item in warm.items)
    assert warm.sample_ids != [ids[9], ids[8], ids[7]]  # not margin's picks (seeded draw)

    for index, label in enumerate(CLASSES):  # now one training label a class
        write_image(tmp_path / "train" / label / f"{index}.png", 100 + index)
    ingest_images(store, iter_source(str(tmp_path / "train"), labelled=True), split="train", classes=CLASSES)
    chosen_id = export_batch(store, settings).batch_id
    chosen = load_state(store).batches[chosen_id]
    assert chosen.strategy == "margin" and not any(item.random_slice for item in chosen.items)
    left = [sid for sid in ids if sid not in warm.sample_ids]
    assert chosen.sample_ids == left[::-1][:3]  # the most confused of what the warm start left


def test_export_without_a_scoring_run_for_the_champion_says_what_to_do(store):
    put_json_if_absent(store, promotion_key(1), Promotion(
        sequence=1, version="m-x", accuracy=0.5, previous=None, promoted_at="now").model_dump())
    before = store.list()
    with pytest.raises(ScoringError, match="no complete scoring run for champion m-x: run `activeflow score`"):
        export_batch(store, settings_for(store))
    assert store.list() == before


def test_batch_files_for_labellers(store):
    result = export_batch(store, settings_for(store))
    state = load_state(store)
    manifest = state.batches[result.batch_id]
    tasks = json.loads(store.get(f"batches/{result.batch_id}/tasks.json"))
    assert [t["data"]["sample_id"] for t in tasks] == manifest.sample_ids
    # Label Studio's local-files serving path, relative to the store root by default.
    assert tasks[0]["data"]["image"] == "/data/local-files/?d=" + quote(
        f"samples/{manifest.sample_ids[0][:2]}/{manifest.sample_ids[0]}.png")
    rows = list(csv.DictReader(io.StringIO(store.get(f"batches/{result.batch_id}/tasks.csv").decode())))
    assert [r["id"] for r in rows] == manifest.sample_ids
    assert list(rows[0]) == ["id", "image", "predicted", "score", "confidence", "source"]
    assert all(r["image"].startswith("file://") for r in rows)  # openable from a spreadsheet
    # Labellers and their tools know images by the names they had before ingest.
    keys, sources = state.keys_and_sources(manifest.sample_ids)
    assert [r["image"] for r in rows] == [store.presigned_url(key, expires_s=3600) for key in keys]
    assert [r["source"] for r in rows] == sources and all(sources)
    assert [t["data"]["source"] for t in tasks] == sources
    assert set(result.files) == {"label_studio", "csv"}
    assert result.files["csv"].endswith(f"batches/{result.batch_id}/tasks.csv")


def test_export_without_classes_is_refused_before_anything_is_written(store):
    from activeflow.settings import SettingsError

    before = store.list()
    with pytest.raises(SettingsError, match="data.classes must list at least 2 class names"):
        export_batch(store, load_settings(storage={"uri": store.uri}))
    assert store.list() == before


def test_local_files_root_must_contain_the_store(store, tmp_path):
    settings = load_settings(storage={"uri": store.uri}, data={"classes": CLASSES},
                             labelling={"local_files_root": str(tmp_path / "elsewhere")})
    from activeflow.settings import SettingsError

    with pytest.raises(SettingsError, match="does not contain the store"):
        export_batch(store, settings)
    assert not store.list("batches/")


def test_label_studio_links_relative_to_its_document_root(store, tmp_path):
    settings = load_settings(storage={"uri": store.uri}, data={"classes": CLASSES},
                             labelling={"local_files_root": str(tmp_path)})
    result = export_batch(store, settings)
    image = json.loads(store.get(f"batches/{result.batch_id}/tasks.json"))[0]["data"]["image"]
    assert image.startswith("/data/local-files/?d=store/samples/")


def test_stale_batches_are_released_back_to_the_pool(store):
    from activeflow.core.label.batches import release_stale_batches
    from activeflow.core.label.label_import import import_labels

    settings = load_settings(storage={"uri": store.uri}, data={"classes": CLASSES},
                             budget={"per_run": 4}, labelling={"release_after_hours": 24})
    first = export_batch(store, settings)
    batch = load_state(store).batches[first.batch_id].sample_ids
    import_labels(store, load_state(store), settings, first.batch_id, "a.csv",
                  f"id,label\n{batch[0]},cat\n".encode())
    assert release_stale_batches(store, load_state(store), settings) == []  # not stale yet

    later = datetime.now(UTC) + timedelta(hours=25)
    (release,) = release_stale_batches(store, load_state(store), settings, now=later)

    assert release.returned == batch[1:]
    state = load_state(store)
    assert state.queued == set() and set(batch[1:]) <= set(state.unlabelled.to_pylist())
    assert state.budget_spent == 1  # only the labelled one was spent
    assert release_stale_batches(store, state, settings, now=later) == []  # written once


def test_late_labels_of_a_released_batch_skip_samples_queued_again_elsewhere(store):
    from activeflow.core.label.batches import release_stale_batches
    from activeflow.core.label.label_import import import_labels

    settings = load_settings(storage={"uri": store.uri}, data={"classes": CLASSES},
                             budget={"per_run": 10}, labelling={"release_after_hours": 1})
    first = export_batch(store, settings).batch_id
    ids = load_state(store).batches[first].sample_ids
    release_stale_batches(store, load_state(store), settings, now=datetime.now(UTC) + timedelta(hours=2))
    second = export_batch(store, settings.model_copy(update={"budget": settings.budget.model_copy(
        update={"per_run": 4})})).batch_id
    requeued = set(load_state(store).batches[second].sample_ids)

    answers = "id,label\n" + "".join(f"{sid},cat\n" for sid in ids)
    report = import_labels(store, load_state(store), settings, first, "late.csv", answers.encode())

    assert set(report.requeued_elsewhere) == requeued and report.imported == len(ids) - len(requeued)
    state = load_state(store)
    assert requeued.isdisjoint(state.labelled) and state.queued == requeued


def test_late_labels_of_a_released_batch_never_take_spending_over_the_total(store):
    """Released samples were handed back unspent; labels arriving for them afterwards are
    spending too, and the total budget caps them like any batch."""
    from activeflow.core.label.batches import release_stale_batches
    from activeflow.core.label.label_import import import_labels

    settings = load_settings(storage={"uri": store.uri}, data={"classes": CLASSES},
                             budget={"per_run": 4, "total": 6}, labelling={"release_after_hours": 1})
    first = export_batch(store, settings).batch_id
    ids = load_state(store).batches[first].sample_ids
    release_stale_batches(store, load_state(store), settings, now=datetime.now(UTC) + timedelta(hours=2))
    second = export_batch(store, settings).batch_id
    assert load_state(store).budget_spent == 4
    late = [sid for sid in ids if sid not in load_state(store).batches[second].sample_ids]
    assert len(late) >= 3  # the stores's 10 images leave room for at least 3 late labels

    answers = "id,label\n" + "".join(f"{sid},cat\n" for sid in ids)
    report = import_labels(store, load_state(store), settings, first, "late.csv", answers.encode())

    assert report.imported == 2 and report.over_budget == late[2:]
    state = load_state(store)
    assert state.budget_spent == 6 and state.budget_remaining(6) == 0
    assert set(late[:2]) <= set(state.labelled) and set(late[2:]).isdisjoint(state.labelled)
    assert set(late[2:]) <= set(state.unlabelled.to_pylist())
    assert export_batch(store, settings).batch_id is None  # nothing left to spend


def _released_batch(store, total):
    """A store whose first batch (4 samples) was released back to the pool unlabelled."""
    from activeflow.core.label.batches import release_stale_batches

    settings = load_settings(storage={"uri": store.uri}, data={"classes": CLASSES},
                             budget={"per_run": 4, "total": total}, labelling={"release_after_hours": 1})
    first = export_batch(store, settings).batch_id
    release_stale_batches(store, load_state(store), settings, now=datetime.now(UTC) + timedelta(hours=2))
    return settings, first, load_state(store).batches[first].sample_ids


def test_late_labels_decided_before_a_concurrent_export_landed_are_decided_again(store):
    """An import that read the store before an export committed must not spend what the
    export spent: its commit is refused and it decides again on the new state."""
    from activeflow.core.label.label_import import import_labels

    settings, first, ids = _released_batch(store, total=6)
    read_before_export = load_state(store)
    second_id = export_batch(store, settings).batch_id
    second = set(load_state(store).batches[second_id].sample_ids)

    answers = "id,label\n" + "".join(f"{sid},cat\n" for sid in ids)
    report = import_labels(store, read_before_export, settings, first, "late.csv", answers.encode())

    state = load_state(store)
    assert state.budget_spent == 6 and len(report.over_budget) == len(ids) - len(second & set(ids)) - 2
    assert set(report.requeued_elsewhere) == second & set(ids)
    assert second.isdisjoint(state.labelled)


def test_an_export_decided_before_late_labels_landed_is_decided_again(store):
    """The other order: late labels commit while an export is deciding; the export's commit
    is refused and writes nothing, and export_batch's rerun spends only what is left."""
    from activeflow.core.label.batches import select_batch, write_batch
    from activeflow.core.label.label_import import import_labels
    from activeflow.core.storage.catalog import CatalogConflict

    settings, first, ids = _released_batch(store, total=6)
    read_before_import = load_state(store)
    items = select_batch(store, read_before_import, settings, None)
    assert len(items) == 4
    answers = "id,label\n" + "".join(f"{sid},cat\n" for sid in ids[:3])
    assert import_labels(store, load_state(store), settings, first, "late.csv", answers.encode()).imported == 3

    with pytest.raises(CatalogConflict):
        write_batch(store, read_before_import, settings, items, None, None)
    assert list(load_state(store).batches) == [first]
    assert [key for key in store.list("batches/") if not key.startswith(f"batches/{first}/")] == []

    again = export_batch(store, settings)
    assert again.size == 3 and load_state(store).budget_spent == 6


def test_by_default_an_unfinished_batch_goes_back_to_the_pool_after_a_week(store):
    from activeflow.core.label.batches import release_stale_batches

    settings = settings_for(store)
    batch = export_batch(store, settings).batch_id
    now = datetime.now(UTC)
    assert release_stale_batches(store, load_state(store), settings, now=now + timedelta(days=6)) == []
    (release,) = release_stale_batches(store, load_state(store), settings, now=now + timedelta(days=7, hours=1))
    assert release.batch_id == batch and load_state(store).queued == set()


def test_an_export_uses_the_scores_its_run_made_when_a_newer_champion_was_promoted_since(store):
    """The nightly run scores with the champion, then exports; a retrain promoted in between
    has no scores yet, and must not cost that night's batch."""
    ids = _champion_with_scores(store, lambda n: [[0.4, 0.3, 0.3]] * n)
    put_json_if_absent(store, promotion_key(2), Promotion(
        sequence=2, version="m-newer", accuracy=0.6, previous="m-test", promoted_at="now").model_dump())
    settings = settings_for(store)

    result = export_batch(store, settings, model_version="m-test")

    manifest = load_state(store).batches[result.batch_id]
    assert manifest.model_version == "m-test" and set(manifest.sample_ids) <= set(ids)
    with pytest.raises(ScoringError, match="no complete scoring run for champion m-newer"):
        export_batch(store, settings)
