"""What the UI shows, label drops and per-run options: the core, without Prefect."""

from __future__ import annotations

import base64
import subprocess
import sys
import threading

import pyarrow as pa
import pytest

from activeflow.core.label import label_drops
from activeflow.core.label.label_import import ImportReport
from activeflow.core.label.labelling import LabelFileError
from activeflow.core.storage.catalog import Catalog
from activeflow.core.storage.pool import (
    BatchItemRecord,
    BatchManifest,
    IngestRecord,
    PoolState,
    Promotion,
    load_state,
    manifest_rows,
    metrics_key,
    promotion_key,
)
from activeflow.core.storage.store import LocalStore, open_store, put_json
from activeflow.core.train import monitoring
from activeflow.parameters import ExportOptions, RetrainOptions
from activeflow.settings import SettingsError, load_settings


def test_new_core_modules_import_without_prefect():
    modules = ["core.storage.catalog", "core.storage.migrate", "core.label.label_drops",
               "core.train.monitoring", "parameters"]
    code = "import sys\n" + "".join(f"import activeflow.{m}\n" for m in modules) + (
        "assert 'prefect' not in sys.modules\nassert 'tensorflow' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# Batch summary ------------------------------------------------------------------------


def _sample(sid: str, split: str = "pool") -> IngestRecord:
    return IngestRecord(id=sid, ext="png", source=f"/in/{sid}.png", size=10, ingested_at="t", split=split)


def _state_after_batch(root) -> tuple[BatchManifest, PoolState]:
    """A catalog with 6 pool samples and two batches (6 + 4 items), read back."""
    items = [
        BatchItemRecord(sample_id="s1", score=0.9, predicted="cat", confidence=0.55),
        BatchItemRecord(sample_id="s2", score=0.7, predicted="dog", confidence=0.6),
        BatchItemRecord(sample_id="s3", score=0.5, predicted="cat", confidence=0.7),
        BatchItemRecord(sample_id="s4", score=0.1, predicted="cat", confidence=0.9),
    ]
    manifest = BatchManifest(
        batch_id="b2", created_at="2025-01-02T00:00:00+00:00", strategy="margin", model_version="m1",
        budget_per_run=5, budget_total=20, items=items,
    )
    earlier = manifest.model_copy(update={"batch_id": "b1", "items": [BatchItemRecord(sample_id="s9", score=0)] * 6})
    catalog = Catalog(LocalStore(root))
    samples = [_sample(sid).model_dump() for sid in ["s1", "s2", "s3", "s4", "s5", "s9"]]
    catalog.insert_new("samples", pa.Table.from_pylist(samples), key="id")
    catalog.append("batch_items", pa.concat_tables([manifest_rows(earlier), manifest_rows(manifest)]))
    return manifest, load_state(catalog.store)


def test_batch_summary_states_strategy_budget_model_scores_and_class_mix(tmp_path):
    manifest, state = _state_after_batch(tmp_path)
    pool_scores = pa.table(
        {"id": ["s1", "s2", "s3", "s4", "s5"], "predicted": ["cat", "dog", "cat", "cat", "dog"],
         "margin": [0.9, 0.7, 0.5, 0.1, 0.3]}
    )

    text = monitoring.batch_summary(manifest, state, pool_scores, drop_prefix="incoming-labels/")

    assert "# Batch `b2`" in text
    assert "| strategy | `margin` |" in text
    assert "| model | `m1` |" in text
    assert "| labels asked | **4** of the per-run budget 5 |" in text
    assert "10 of 20 spent over all batches, **10 remaining**" in text  # 6 + 4
    # Quantiles of [0.1, 0.5, 0.7, 0.9]: 25% = 0.4, median = 0.6, 75% = 0.75.
    assert "| this batch | 4 | 0.1000 | 0.4000 | 0.6000 | 0.7500 | 0.9000 |" in text
    assert "| whole pool at scoring | 5 | 0.1000 | 0.3000 | 0.5000 | 0.7000 | 0.9000 |" in text
    assert "| cat | 3 | 75% | 3 | 60% |" in text
    assert "| dog | 1 | 25% | 2 | 40% |" in text
    assert "incoming-labels/b2.json" in text
    assert f"- csv: `{tmp_path / 'batches/b2/tasks.csv'}`" in text
    assert "--param batch_id=b2" in text


def test_cold_start_summary_says_there_is_no_model_yet(tmp_path):
    manifest, state = _state_after_batch(tmp_path)
    cold = manifest.model_copy(
        update={"model_version": None, "strategy": "random-cold-start", "budget_total": None,
                "items": [BatchItemRecord(sample_id="s1", score=0.0)]}
    )
    text = monitoring.batch_summary(cold, state, None, drop_prefix="drops/")
    assert "none yet (random cold start)" in text
    assert "no total cap" in text
    assert "No model yet" in text and "No predictions" in text


def test_batch_rows_name_each_image(tmp_path):
    store = LocalStore(tmp_path)
    manifest, state = _state_after_batch(tmp_path)
    rows = monitoring.batch_rows(store, manifest, state)
    assert [r["rank"] for r in rows] == [1, 2, 3, 4]
    assert rows[0] == {
        "rank": 1, "sample": "s1", "score": 0.9, "predicted": "cat", "confidence": 0.55,
        "source": "/in/s1.png", "image": str(tmp_path / "samples/s1/s1.png"),
    }


@pytest.mark.s3
def test_batch_rows_name_s3_images_without_signing_them(tmp_path, s3_storage):
    # Everyone who can open the Prefect UI sees the artifact: a presigned link there would
    # hand out the access key id and a working signature for days.
    manifest, state = _state_after_batch(tmp_path)
    rows = monitoring.batch_rows(open_store(s3_storage), manifest, state)
    bucket = s3_storage.uri.removeprefix("s3://").split("/")[0]
    assert rows[0]["image"] == f"s3://{bucket}/some/prefix/samples/s1/s1.png"
    assert not any("X-Amz" in str(row) or "Signature" in str(row) for row in rows)


def test_an_empty_run_says_why(tmp_path):
    _, state = _state_after_batch(tmp_path)
    text = monitoring.empty_batch_summary("total budget of 10 labels is spent", state, 10)
    assert "Reason: **total budget of 10 labels is spent**" in text
    assert "remaining: 0" in text


# Label imports ------------------------------------------------------------------------


def test_import_summary_counts_accepted_refused_and_waiting():
    from activeflow.core.label.label_import import LabelConflict
    from activeflow.core.label.labelling import Disagreement

    report = ImportReport(
        batch_id="b1", file="x.json", imported=3, already_imported=2,
        conflicts=[LabelConflict(sample_id="c" * 64, imported="cat", offered="dog")],
        unlabelled=["u" * 64], disagreements=[Disagreement(sample_id="d" * 64, votes={"cat": 1, "dog": 1})],
        still_queued=2,
    )
    text = monitoring.import_summary(report)
    assert "| accepted (new labels written) | **3** |" in text
    assert "| already in the store, unchanged | 2 |" in text
    assert "| refused: differ from an imported label | 1 |" in text
    assert "| `cccccccccccc` | cat | dog |" in text
    assert "| `dddddddddddd` | cat: 1, dog: 1 |" in text
    assert "Still queued (no annotation yet): `uuuuuuuuuuuu`." in text
    assert "| samples of the batch still waiting for a label | 2 |" in text


def test_a_refused_file_says_nothing_was_written():
    refused = monitoring.import_refused("b1", "x.csv", LabelFileError("x.csv", "line 3", "unknown sample id 'zz'"))
    assert "refused" in refused and "**nothing was written**: x.csv, line 3: unknown sample id 'zz'" in refused


# Learning curve -----------------------------------------------------------------------


def _metrics(version: str, created: str, labels: int, accuracy: float) -> dict:
    return {"version": version, "created_at": created, "labels_used": labels, "accuracy": accuracy}


def test_learning_curve_is_derived_from_the_models_in_the_store(tmp_path):
    store = LocalStore(tmp_path)
    put_json(store, metrics_key("m2"), _metrics("m2", "2025-01-02", 30, 0.6))
    put_json(store, metrics_key("m1"), _metrics("m1", "2025-01-01", 20, 0.7))
    put_json(store, metrics_key("m3"), _metrics("m3", "2025-01-03", 40, 0.8))
    store.put("models/m4/model.keras", b"unfinished: no metrics")
    for sequence, version in [(1, "m1"), (2, "m3")]:
        put_json(store, promotion_key(sequence), Promotion(
            sequence=sequence, version=version, accuracy=0.0, previous=None, promoted_at="t").model_dump())

    rows = monitoring.learning_curve(store)

    assert [(r.round, r.version, r.labels, r.accuracy, r.promoted) for r in rows] == [
        (1, "m1", 20, 0.7, True), (2, "m2", 30, 0.6, False), (3, "m3", 40, 0.8, True),
    ]
    points = monitoring.curve_points(rows)
    assert [(p.strategy, p.labels) for p in points] == [
        ("every model", 20), ("every model", 30), ("every model", 40), ("promoted", 20), ("promoted", 40),
    ]
    assert monitoring.curve_table(rows)[1] == {
        "round": 2, "labels": 30, "accuracy": 0.6, "promoted": "no", "model": "m2", "trained": "2025-01-02",
    }


def test_png_data_uri_round_trips():
    uri = monitoring.png_data_uri(b"\x89PNG...")
    assert uri.startswith("data:image/png;base64,")
    assert base64.b64decode(uri.split(",", 1)[1]) == b"\x89PNG..."


def test_training_summary_names_model_accuracy_and_decision():
    from activeflow.core.score.modeling import PhaseReport, TrainingHistory
    from activeflow.core.train.training import BaselineReport, ModelMetrics, PromotionDecision

    history = TrainingHistory(
        head_loss=[1.0, 0.5], finetune_loss=[],
        phases=[PhaseReport(name="whole", steps_planned=400, steps_run=400, learning_rate=0.003,
                            backbone_trainable=True)],
        train_size=30, validation_note="no validation split: the smallest class has 15 labels (< 20)",
        invert=0.5,
    )
    metrics = ModelMetrics(
        version="m2", created_at="t", classes=["a", "b"], accuracy=0.75,
        per_class_accuracy={"a": 1.0, "b": None}, confusion_matrix=[[1, 0], [0, 0]], labels_used=30,
        test_size=4, history=history, model_settings={"backbone": "small_cnn", "image_size": 8},
        chance_accuracy=0.5, baseline=BaselineReport(name="logistic regression on 16x16 pixels", accuracy=0.7),
    )
    decision = PromotionDecision(
        version="m2", promoted=True, accuracy=0.75, labels_used=30, champion_version="m1",
        champion_accuracy=0.5, reason="test accuracy 0.7500 >= champion's 0.5000",
    )
    text = monitoring.training_summary(metrics, decision)
    assert "**promoted**" in text and "0.7500 >= champion's 0.5000" in text
    assert "| test accuracy | **0.7500** on 4 held-out images |" in text
    assert "| champion before | `m1` (0.5000) |" in text
    assert "| training | whole: 400 of 400 steps at 0.003 on 30 labels |" in text
    assert "| baseline | 0.7000 (logistic regression on 16x16 pixels, same labels) |" in text
    assert "| chance | 0.5000 (the most common test class) |" in text
    assert "| validation | no validation split: the smallest class has 15 labels (< 20) |" in text
    assert "| inverted | 50% of training images (`model.augment.invert`) |" in text
    assert "| b | – |" in text


# Label drops --------------------------------------------------------------------------


def test_a_dropped_export_is_claimed_exactly_once_across_polls(tmp_path):
    store = LocalStore(tmp_path)
    store.put("incoming-labels/b1.json", b'[{"id": 1}]')
    store.put("incoming-labels/notes.txt", b"hello")
    store.put("incoming-labels/old/b0.csv", b"id,label\n")

    first = label_drops.scan_drops(store, "incoming-labels/", "poll 1")
    second = label_drops.scan_drops(store, "incoming-labels/", "poll 2")

    assert [(d.batch_id, d.key, d.uri) for d in first.claimed] == [
        ("b1", "incoming-labels/b1.json", str(tmp_path / "incoming-labels/b1.json"))
    ]
    assert second.claimed == [] and second.already_claimed == ["incoming-labels/b1.json"]
    assert sorted(first.ignored) == ["incoming-labels/notes.txt", "incoming-labels/old/b0.csv"]
    claim = store.list("watch/claims/b1/")
    assert len(claim) == 1 and claim[0].endswith(first.claimed[0].sha256 + ".json")

    # A corrected or extended export (new bytes) is a new drop, announced once too.
    store.put("incoming-labels/b1.json", b'[{"id": 1}, {"id": 2}]')
    assert len(label_drops.scan_drops(store, "incoming-labels/", "poll 3").claimed) == 1
    assert label_drops.scan_drops(store, "incoming-labels/", "poll 4").claimed == []


def test_badly_named_drops_are_reported_once_and_never_stop_the_valid_ones(tmp_path):
    store = LocalStore(tmp_path)
    folder = tmp_path / "incoming-labels"
    folder.mkdir()
    for name in ("..json", "a\\b.json", "-x.csv", "b 2.json"):
        (folder / name).write_bytes(b"id,label\n")  # written by hand: the store refuses such keys
    store.put("incoming-labels/b1.json", b'[{"id": 1}]')

    first = label_drops.scan_drops(store, "incoming-labels/", "poll 1")
    second = label_drops.scan_drops(store, "incoming-labels/", "poll 2")

    assert [d.batch_id for d in first.claimed] == ["b1"]
    assert sorted(first.ignored) == sorted(f"incoming-labels/{n}" for n in ("..json", "a\\b.json", "-x.csv", "b 2.json"))
    assert all("not a batch id" in why or "invalid key" in why for why in first.ignored.values())
    assert second.ignored == {} and second.already_ignored == 4  # reported once
    assert second.claimed == [] and second.already_claimed == ["incoming-labels/b1.json"]


def test_a_withdrawn_claim_is_announced_again(tmp_path):
    store = LocalStore(tmp_path)
    store.put("incoming-labels/b1.csv", b"id,label\n")
    [drop] = label_drops.scan_drops(store, "incoming-labels/", "poll 1").claimed
    label_drops.unclaim(store, drop)  # its announcement failed
    assert label_drops.scan_drops(store, "incoming-labels/", "poll 2").claimed == [drop]


def test_concurrent_polls_claim_each_drop_once(tmp_path):
    store = LocalStore(tmp_path)
    for n in range(5):
        store.put(f"incoming-labels/b{n}.csv", f"id,label\n{n},a\n".encode())
    start = threading.Barrier(4)
    claimed: list[str] = []

    def poll(name: str) -> None:
        start.wait()
        claimed.extend(d.batch_id for d in label_drops.scan_drops(store, "incoming-labels/", name).claimed)

    polls = [threading.Thread(target=poll, args=(f"poll {n}",)) for n in range(4)]
    for thread in polls:
        thread.start()
    for thread in polls:
        thread.join()
    assert sorted(claimed) == ["b0", "b1", "b2", "b3", "b4"]


def test_drop_scan_summary_lists_each_outcome(tmp_path):
    store = LocalStore(tmp_path)
    store.put("in/b1.csv", b"id,label\n")
    store.put("in/x.txt", b"")
    scan = label_drops.scan_drops(store, "in/", "poll")
    text = monitoring.drop_scan_summary(scan, "activeflow.labels.ready")
    assert "- `in/b1.csv` for batch `b1`" in text
    assert "`in/x.txt`: not a label export" in text
    again = monitoring.drop_scan_summary(label_drops.scan_drops(store, "in/", "poll 2"), "e")
    assert "`in/x.txt`" not in again and "reported by an earlier poll: 1 files" in again


# Per-run options and the schedule settings --------------------------------------------


def test_options_override_only_what_they_set(monkeypatch):
    monkeypatch.setenv("ACTIVEFLOW_BUDGET__TOTAL", "500")
    options = ExportOptions(budget_per_run=7, strategy="entropy")
    settings = load_settings(**options.overrides())
    assert (settings.budget.per_run, settings.budget.total, settings.strategy.name) == (7, 500, "entropy")
    assert ExportOptions.from_settings(settings) == ExportOptions(
        budget_per_run=7, budget_total=500, strategy="entropy"
    )
    retrain = load_settings(**RetrainOptions(head_epochs=0, finetune_epochs=2).overrides())
    assert (retrain.model.head_epochs, retrain.model.finetune_epochs) == (0, 2)
    assert RetrainOptions().overrides() == {} == ExportOptions().overrides()


def test_bad_options_are_refused_naming_the_field():
    with pytest.raises(ValueError, match="budget_per_run"):
        ExportOptions(budget_per_run=0)
    with pytest.raises(ValueError, match="strategy"):
        ExportOptions(strategy="most_fun")
    with pytest.raises(SettingsError, match="model: Value error, head_epochs \\+ finetune_epochs must be at least 1"):
        load_settings(**RetrainOptions(head_epochs=0, finetune_epochs=0).overrides())


def test_schedule_settings_defaults_and_errors(monkeypatch):
    schedule = load_settings().schedule
    assert (schedule.cron, schedule.timezone, schedule.labels_drop_prefix) == ("0 2 * * *", "UTC", "incoming-labels/")
    monkeypatch.setenv("ACTIVEFLOW_SCHEDULE__CRON", "0 2 * *")
    monkeypatch.setenv("ACTIVEFLOW_SCHEDULE__TIMEZONE", "Mars/Olympus")
    monkeypatch.setenv("ACTIVEFLOW_SCHEDULE__LABELS_DROP_PREFIX", "/abs")
    with pytest.raises(SettingsError) as error:
        load_settings()
    message = str(error.value)
    assert "schedule.cron: Value error, '0 2 * *' is not a 5-field cron expression" in message
    assert "schedule.timezone: Value error, 'Mars/Olympus' is not an IANA time zone" in message
    assert "schedule.labels_drop_prefix: Value error, '/abs' must be a relative folder" in message
