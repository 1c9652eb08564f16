"""Importing labels: every refused file writes nothing; the same file twice changes nothing."""

from __future__ import annotations

import json

import pytest
from images import write_image

from activeflow.core.ingest.ingest import ingest_images
from activeflow.core.ingest.sources import iter_source
from activeflow.core.label.batches import export_batch
from activeflow.core.label.label_import import import_labels
from activeflow.core.label.labelling import LabelFileError
from activeflow.core.storage.catalog import Catalog
from activeflow.core.storage.pool import load_state
from activeflow.core.storage.store import LocalStore
from activeflow.settings import load_settings

CLASSES = ["cat", "dog"]


@pytest.fixture
def batch(tmp_path):
    """A store with 6 pool samples, 3 of them in an exported batch."""
    for n in range(6):
        write_image(tmp_path / "in" / f"{n}.png", n)
    store = LocalStore(tmp_path / "store")
    ingest_images(store, iter_source(str(tmp_path / "in"), labelled=False))
    settings = load_settings(storage={"uri": store.uri}, data={"classes": CLASSES}, budget={"per_run": 3})
    result = export_batch(store, settings)
    state = load_state(store)
    in_batch = state.batches[result.batch_id].sample_ids
    outside = [sid for sid in state.samples.table.column("id").to_pylist() if sid not in in_batch]
    return store, settings, result.batch_id, in_batch, outside


def imports_committed(store):
    """Label imports committed to the catalog (each is one serial commit)."""
    return Catalog(store).read("labels")[1]


def run_import(store, settings, batch_id, name, text):
    return import_labels(store, load_state(store), settings, batch_id, name, text.encode())


def csv_of(rows):
    return "id,label\n" + "".join(f"{sid},{label}\n" for sid, label in rows)


def test_csv_import_labels_the_batch_and_closes_it(batch):
    store, settings, batch_id, ids, _ = batch
    report = run_import(store, settings, batch_id, "done.csv", csv_of(zip(ids, ["cat", "dog", "cat"])))
    assert (report.imported, report.unlabelled, report.already_imported) == (3, [], False)
    state = load_state(store)
    assert {sid: state.labelled[sid] for sid in ids} == dict(zip(ids, ["cat", "dog", "cat"]))
    assert state.queued == set() and batch_id not in state.open_batches
    assert len(state.unlabelled) == 3


def test_label_studio_json_export_is_accepted(batch):
    store, settings, batch_id, ids, _ = batch
    tasks = json.loads(store.get(f"batches/{batch_id}/tasks.json"))
    export = [
        {
            "id": n + 1,
            "data": task["data"],
            "annotations": [
                {"id": 10 + n, "was_cancelled": False, "ground_truth": False,
                 "result": [{"id": "r", "type": "choices", "from_name": "label", "to_name": "image",
                             "origin": "manual", "value": {"choices": ["dog"]}}]}
            ],
            "predictions": [],
        }
        for n, task in enumerate(tasks)
    ]
    report = run_import(store, settings, batch_id, "project-1.json", json.dumps(export))
    assert report.imported == 3
    assert [load_state(store).labelled[sid] for sid in ids] == ["dog"] * 3


def test_importing_the_same_file_again_changes_nothing(batch):
    store, settings, batch_id, ids, _ = batch
    text = csv_of(zip(ids, ["cat", "dog", "cat"]))
    run_import(store, settings, batch_id, "done.csv", text)
    keys = {k: store.get(k) for k in store.list()}

    again = run_import(store, settings, batch_id, "done.csv", text)

    assert (again.imported, again.already_imported) == (0, 3)
    assert {k: store.get(k) for k in store.list()} == keys


def test_a_changed_label_is_reported_as_a_conflict_and_never_written(batch):
    store, settings, batch_id, ids, _ = batch
    run_import(store, settings, batch_id, "done.csv", csv_of(zip(ids, ["cat", "dog", "cat"])))
    keys = {k: store.get(k) for k in store.list()}

    report = run_import(store, settings, batch_id, "redo.csv", csv_of(zip(ids, ["dog", "dog", "cat"])))

    assert report.imported == 0 and report.already_imported == 2
    assert [(c.sample_id, c.imported, c.offered) for c in report.conflicts] == [(ids[0], "cat", "dog")]
    assert {k: store.get(k) for k in store.list()} == keys
    assert load_state(store).labelled[ids[0]] == "cat"


def test_a_later_superset_export_adds_only_what_is_new(batch):
    store, settings, batch_id, ids, _ = batch
    first = run_import(store, settings, batch_id, "monday.csv", csv_of([(ids[0], "cat")]))
    assert (first.imported, first.still_queued) == (1, 2)
    assert load_state(store).queued == set(ids[1:])

    later = run_import(store, settings, batch_id, "tuesday.csv", csv_of(zip(ids, ["cat", "dog", "dog"])))

    assert (later.imported, later.already_imported, later.still_queued) == (2, 1, 0)
    state = load_state(store)
    assert [state.labelled[sid] for sid in ids] == ["cat", "dog", "dog"]
    assert imports_committed(store) == 2 and state.queued == set()


def test_unlabelled_skipped_and_disagreeing_tasks_stay_queued(batch):
    store, settings, batch_id, ids, _ = batch
    tasks = json.loads(store.get(f"batches/{batch_id}/tasks.json"))
    choice = lambda label, n, cancelled=False: {  # noqa: E731
        "id": n, "was_cancelled": cancelled,
        "result": [{"type": "choices", "from_name": "label", "to_name": "image",
                    "value": {"choices": [label]}}],
    }
    annotations = [
        [choice("cat", 1), choice("cat", 2), choice("dog", 3)],  # 2 of 3 agree: cat
        [choice("dog", 4, cancelled=True)],  # skipped
        [choice("cat", 5), choice("dog", 6)],  # tie
    ]
    export = [{"id": n, "data": t["data"], "annotations": a}
              for n, (t, a) in enumerate(zip(tasks, annotations, strict=True))]

    report = run_import(store, settings, batch_id, "export.json", json.dumps(export))

    assert report.imported == 1 and report.skipped == [ids[1]]
    assert [(d.sample_id, d.votes) for d in report.disagreements] == [(ids[2], {"cat": 1, "dog": 1})]
    assert load_state(store).queued == {ids[1], ids[2]} and report.still_queued == 2


def test_a_file_for_a_different_batch_is_refused(batch):
    store, settings, batch_id, ids, _ = batch
    tasks = json.loads(store.get(f"batches/{batch_id}/tasks.json"))
    tasks[0]["data"]["batch_id"] = "b-other"
    tasks[0]["annotations"] = [{"id": 1, "result": [{"type": "choices", "value": {"choices": ["cat"]}}]}]
    before = store.list()
    with pytest.raises(LabelFileError, match=f"task 1: task was exported for batch 'b-other', not '{batch_id}'"):
        run_import(store, settings, batch_id, "export.json", json.dumps(tasks))
    assert store.list() == before


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("unknown id", r"bad.csv, line 2: unknown sample id 'f{64}'"),
        ("not in batch", r"bad.csv, line 2: .*not in this batch"),
        ("unknown class", r"bad.csv, line 3: class 'horse' is not one of the configured classes"),
        ("conflict", r"bad.csv, line 3: conflicting labels .*'cat' \(line 2\) vs 'dog' \(line 3\)"),
        ("malformed", r"bad.csv.*(id|label)"),
        ("empty", r"bad.csv.*empty"),
    ],
)
def test_bad_label_files_are_refused_whole_and_write_nothing(batch, case, message):
    store, settings, batch_id, ids, outside = batch
    text = {
        "unknown id": csv_of([("f" * 64, "cat"), (ids[0], "cat")]),
        "not in batch": csv_of([(outside[0], "cat"), (ids[0], "cat")]),
        "unknown class": csv_of([(ids[0], "cat"), (ids[1], "horse")]),
        "conflict": csv_of([(ids[0], "cat"), (ids[0], "dog")]),
        "malformed": "sample,class\nx,y\n",
        "empty": "",
    }[case]
    keys_before = store.list()
    with pytest.raises(LabelFileError, match=message) as refused:
        run_import(store, settings, batch_id, "bad.csv", text)
    assert refused.value.file == "bad.csv"
    assert store.list() == keys_before
    assert batch_id in load_state(store).open_batches


def test_unknown_batch_is_refused(batch):
    store, settings, _, ids, _ = batch
    with pytest.raises(LabelFileError, match="batch 'b-nope' does not exist"):
        run_import(store, settings, "b-nope", "x.csv", csv_of([(ids[0], "cat")]))
    assert imports_committed(store) == 0


def test_tasks_without_labels_leave_the_batch_open(batch):
    store, settings, batch_id, ids, _ = batch
    report = run_import(store, settings, batch_id, "partial.csv", f"id,label\n{ids[0]},\n")
    assert (report.imported, report.unlabelled) == (0, [ids[0]])
    assert batch_id in load_state(store).open_batches
    assert imports_committed(store) == 0


def test_label_locations_outside_the_allowed_roots_are_refused(tmp_path):
    from activeflow.core.ingest.sources import SourceError, check_within_roots

    root = tmp_path / "exports"
    root.mkdir()
    (root / "b1.csv").write_text("id,label\n")
    (root / "escape.csv").symlink_to("/etc/passwd")
    check_within_roots(str(root / "b1.csv"), [str(root)])
    check_within_roots("s3://bucket/exports/b1.json", ["s3://bucket/exports"])
    for outside in (
        str(root / "escape.csv"),  # a symlink leads out
        str(root / ".." / "b1.csv"),
        "/etc/passwd",
        "s3://bucket/exports-other/b1.json",  # a prefix of the name is not the folder
        "s3://bucket/exports/../secrets/b1.json",
        "s3://other/exports/b1.json",
    ):
        with pytest.raises(SourceError, match="outside the store and labelling.allowed_label_roots"):
            check_within_roots(outside, [str(root), "s3://bucket/exports"])


def test_an_import_that_wrote_no_label_and_found_none_gives_no_retrain():
    from activeflow.core.label.label_import import ImportReport, retrain_refusal

    nothing = ImportReport(batch_id="b1", file="empty.csv", imported=0, unlabelled=["x"])
    assert retrain_refusal(nothing) == "no labels in the file: not retrained"
    # Labels imported before still warrant a retrain (a rerun after a failed retrain).
    assert retrain_refusal(nothing.model_copy(update={"already_imported": 3})) is None
    assert retrain_refusal(nothing.model_copy(update={"imported": 1})) is None
