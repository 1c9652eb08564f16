"""One whole active-learning cycle through the Prefect flows, on a tiny model."""

from __future__ import annotations

import csv
import threading
from pathlib import Path

import pytest

from activeflow.core.score.scoring import model_scores
from activeflow.core.storage.pool import load_state
from activeflow.core.storage.store import open_store
from activeflow.evaluation.demo_data import write_digits
from activeflow.evaluation.simulation import ground_truth
from activeflow.flows.cycle import cycle_flow
from activeflow.flows.export_batch import export_batch_flow
from activeflow.flows.import_labels import import_labels_flow
from activeflow.flows.ingest import ingest_flow
from activeflow.flows.retrain import retrain_flow
from activeflow.flows.score import score_flow
from activeflow.settings import load_settings

pytestmark = pytest.mark.usefixtures("prefect_harness")

TINY_MODEL = {"image_size": 8, "head_epochs": 2, "finetune_epochs": 1, "batch_size": 64, "min_steps": 60, "baseline_tolerance": 1.0}


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    return write_digits(tmp_path_factory.mktemp("digits"), arrivals=2, test_size=100)


def settings_for(store_uri, classes, **extra):
    return load_settings(
        storage={"uri": str(store_uri)},
        data={"classes": classes},
        model=TINY_MODEL,
        scoring={"shard_size": 200},
        **extra,
    )


def test_one_full_cycle_through_the_flows(tmp_path, digits):
    settings = settings_for(tmp_path / "store", digits.classes, budget={"per_run": 15, "total": 40})
    store = open_store(settings.storage)

    assert ingest_flow(str(digits.test), split="test", settings=settings).new == 100
    assert ingest_flow(str(digits.seed), split="train", settings=settings).new == 20
    pool = ingest_flow(str(digits.arrivals[0]), settings=settings)
    assert pool.new > 500 and pool.quarantined == 0

    first = retrain_flow(settings)
    assert first.promoted and first.labels_used == 20

    plan = score_flow(settings)
    scores = model_scores(store, first.version)
    assert plan.model_version == first.version
    assert scores.num_rows == pool.new == plan.total  # every unlabelled sample, across shards
    assert len(plan.shards) == -(-pool.new // 200)

    batch = export_batch_flow(settings)
    assert batch.size == 15
    state = load_state(store)
    manifest = state.batches[batch.batch_id]
    assert manifest.strategy == "margin" and manifest.model_version == first.version
    assert len(state.queued) == 15 and state.budget_spent == 15

    # The labellers answer with a CSV export.
    truth = ground_truth(digits.truth)
    answer = tmp_path / "labels.csv"
    with answer.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "label"])
        writer.writerows([sid, truth[sid]] for sid in manifest.sample_ids)
    report = import_labels_flow(batch.batch_id, str(answer), settings=settings)
    assert report.imported == 15
    assert import_labels_flow(batch.batch_id, str(answer), settings=settings).already_imported

    second = retrain_flow(settings)
    assert second.labels_used == 35
    assert second.promoted == (second.accuracy >= first.accuracy)
    assert load_state(store).summary(40) == {
        "unlabelled": pool.new - 15,
        "queued": 0,
        "labelled": 35,
        "test": 100,
        "quarantined": 0,
        "budget_spent": 15,
        "budget_remaining": 25,
        "champion": second.version if second.promoted else first.version,
    }


def test_simulated_cycle_runs_rounds_until_the_total_budget_is_spent(tmp_path, digits):
    settings = settings_for(tmp_path / "store", digits.classes, budget={"per_run": 10, "total": 25})
    ingest_flow(str(digits.test), split="test", settings=settings)
    ingest_flow(str(digits.arrivals[1]), settings=settings)

    # No champion yet: the first round is a random cold start, then retraining needs labels.
    rounds = cycle_flow(settings, simulate=True, oracle=str(digits.truth), rounds=5)

    assert [r.batch.size for r in rounds] == [10, 10, 5, 0]
    assert rounds[0].retrain is not None and rounds[0].retrain.labels_used == 10
    assert [r.retrain.labels_used for r in rounds[:3]] == [10, 20, 25]
    assert rounds[-1].batch.reason == "total budget of 25 labels is spent"
    store = open_store(settings.storage)
    state = load_state(store)
    assert len(state.labelled) == 25 and state.queued == set()
    # Rounds 2 and 3 scored the pool; round 4, with the budget spent, did not.
    assert len([key for key in store.list("scores/") if key.endswith("/_SUCCESS.json")]) == 2


def test_batches_and_models_leave_no_threads_behind(tmp_path, digits):
    # Prefect starts a concurrency-slot service (a thread and an API connection, kept for
    # the life of the process) for each distinct set of tags a task run carries
    # (PrefectHQ/prefect#18615): a tag per batch or model grew a demo or benchmark process by
    # one of each per task, and cost each such task about 0.7 s.
    settings = settings_for(tmp_path / "store", digits.classes, budget={"per_run": 5},
                            strategy={"name": "random"})
    ingest_flow(str(digits.arrivals[0]), settings=settings)

    export_batch_flow(settings)  # Prefect's own services start with the first run
    threads = threading.active_count()
    exported = [export_batch_flow(settings).batch_id for _ in range(3)]

    assert len(set(exported)) == 3 and None not in exported
    assert threading.active_count() <= threads


def test_cycle_simulate_without_an_oracle_is_refused(tmp_path):
    settings = settings_for(tmp_path / "store", ["a", "b"])
    with pytest.raises(ValueError, match="simulate needs oracle"):
        cycle_flow(settings, simulate=True)
    assert not Path(tmp_path / "store").exists()


def test_flows_run_on_an_s3_store(s3_storage, digits, tmp_path):
    settings = load_settings(
        storage=s3_storage.model_dump(), data={"classes": digits.classes}, model=TINY_MODEL,
        budget={"per_run": 5},
    )
    ingest_flow(str(digits.test), split="test", settings=settings)
    ingest_flow(str(digits.seed), split="train", settings=settings)
    ingest_flow(str(digits.arrivals[1]), settings=settings)
    retrain_flow(settings)
    rounds = cycle_flow(settings, simulate=True, oracle=str(digits.truth), rounds=1)
    assert rounds[0].batch.size == 5 and rounds[0].retrain.labels_used == 25
    store = open_store(settings.storage)
    assert rounds[0].batch.files["csv"].startswith(s3_storage.uri)
    assert store.get(rounds[0].batch.files["csv"].removeprefix(s3_storage.uri + "/")).startswith(b"id,image")


def test_the_demo_flow_runs_each_strategy_and_writes_its_report(tmp_path):
    from activeflow.flows.demo import demo_flow

    settings = load_settings(model=TINY_MODEL, budget={"per_run": 10})
    out = tmp_path / "demo"
    state = demo_flow(settings, out=str(out), rounds=1, return_state=True)
    result = state.result()

    assert [(p.strategy, p.round, p.labels) for p in result.points] == [
        ("margin", 0, 20), ("margin", 1, 30), ("random", 0, 20), ("random", 1, 30)]
    assert set(result.files) == {"report", "learning_curve"}
    assert all(Path(path).is_file() for path in result.files.values())
    assert (out / ".activeflow-demo").is_file()
    assert result.table.splitlines()[0].split()[:3] == ["round", "margin", "labels"]
    # The strategies run in threads of their own; their tasks still belong to the demo's run.
    assert _task_run_names(state.state_details.flow_run_id).count("train a small_cnn on every label") == 4


def test_the_demo_trains_at_the_digits_own_size_unless_image_size_is_set():
    from activeflow.evaluation.demo_data import at_digit_size

    defaults = load_settings()
    assert at_digit_size(defaults).model.image_size == 8
    assert at_digit_size(defaults).model.model_dump(exclude={"image_size"}) == defaults.model.model_dump(
        exclude={"image_size"})
    assert at_digit_size(load_settings(model={"image_size": 32})).model.image_size == 32


def _task_run_names(flow_run_id) -> list[str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    return [run.name for run in runs]
