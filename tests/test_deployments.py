"""The deployments as built from settings, prefect.yaml, and the new flows run in-process."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml
from images import write_image
from prefect_server import BIN

from activeflow.core.ingest.sources import SourceError
from activeflow.core.label.labelling import LabelFileError
from activeflow.core.storage.catalog import Catalog
from activeflow.core.storage.pool import load_state
from activeflow.core.storage.store import open_store
from activeflow.deployments import (
    DEPLOYMENT_NAME,
    build_deployments,
    deployment_specs,
    labels_ready_trigger,
    settings_environment,
)
from activeflow.parameters import ExportOptions, RetrainOptions
from activeflow.settings import ScheduleSettings, load_settings

REPO = Path(__file__).resolve().parents[1]


def test_deployments_follow_the_settings():
    settings = load_settings(
        budget={"per_run": 25, "total": 400},
        strategy={"name": "entropy"},
        schedule={"cron": "30 1 * * *", "timezone": "Asia/Tokyo", "watch_interval_seconds": 90,
                  "source": "s3://bucket/new", "max_workers": 3},
    )
    export, retrain, watch = build_deployments(settings)

    assert [d.flow_name for d in (export, retrain, watch)] == ["ingest-score-export", "import-and-retrain", "watch-labels"]
    assert {d.name for d in (export, retrain, watch)} == {DEPLOYMENT_NAME}
    [cron] = export.schedules
    assert (cron.schedule.cron, cron.schedule.timezone, cron.active) == ("30 1 * * *", "Asia/Tokyo", True)
    assert cron.parameters == {"options": {"source": "s3://bucket/new", "budget_per_run": 25, "budget_total": 400, "strategy": "entropy"}}
    assert retrain.schedules == [] and watch.schedules[0].schedule.interval.total_seconds() == 90
    [trigger] = retrain.triggers
    assert trigger.expect == {"activeflow.labels.ready"}
    assert trigger.parameters == {
        "batch_id": "{{ event.payload.batch_id }}", "labels_uri": "{{ event.payload.labels_uri }}",
        "sha256": "{{ event.payload.sha256 }}",
    }
    # The flows served run with a thread pool bounded by schedule.max_workers.
    assert [flow.task_runner._max_workers for flow, _ in deployment_specs(settings)] == [3, 3, 3]
    form = export._parameter_openapi_schema.model_dump()
    assert "Most labels this run's batch may ask for" in form["definitions"]["ExportOptions"]["properties"]["budget_per_run"]["description"]


def test_flows_run_by_the_cli_score_on_schedule_max_workers_threads_too():
    from activeflow.flows.score import SCORING_WORKERS, scoring_task_runner

    assert scoring_task_runner(load_settings(schedule={"max_workers": 5}))._max_workers == 5
    assert SCORING_WORKERS == ScheduleSettings().max_workers  # the flows' default is the setting's


def test_served_runs_get_the_settings_serve_started_with(monkeypatch, tmp_path):
    settings = load_settings(
        storage={"uri": "s3://bucket/prefix", "endpoint_url": "http://localhost:8333"},
        data={"classes": ["cat", "dog"]},
        budget={"total": 70},
        label_studio={"api_key": "secret-token"},
        schedule={"cron": "0 4 * * 1"},
    )
    environment = settings_environment(settings)
    assert environment["ACTIVEFLOW_DATA__CLASSES"] == '["cat", "dog"]'
    assert environment["ACTIVEFLOW_LABEL_STUDIO__API_KEY"] == "secret-token"
    assert "ACTIVEFLOW_STORAGE__REGION" not in environment  # None: left to its default
    monkeypatch.chdir(tmp_path)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    assert load_settings() == settings


def test_prefect_yaml_matches_the_served_deployments():
    config = yaml.safe_load((REPO / "prefect.yaml").read_text())
    defaults = ScheduleSettings()
    by_entrypoint = {d["entrypoint"]: d for d in config["deployments"]}
    served = {d.flow_name: d for d in build_deployments(load_settings())}

    from prefect.flows import load_flow_from_entrypoint

    for entrypoint, deployment in by_entrypoint.items():
        flow = load_flow_from_entrypoint(str(REPO / entrypoint))
        assert deployment["name"] == DEPLOYMENT_NAME
        assert set(deployment["tags"]) == set(served[flow.name].tags)
        assert deployment["work_pool"]["name"] == "activeflow"
    export, retrain, watch = config["deployments"]
    assert export["schedules"] == [{"cron": defaults.cron, "timezone": defaults.timezone, "active": True}]
    assert watch["schedules"] == [{"interval": defaults.watch_interval_seconds, "active": True}]
    [trigger] = retrain["triggers"]
    expected = labels_ready_trigger()
    assert trigger["expect"] == sorted(expected.expect)
    assert trigger["match"] == expected.match.model_dump()
    assert trigger["parameters"] == expected.parameters


def test_serve_without_a_prefect_server_says_how_to_start_one(tmp_path):
    env = {"PATH": str(BIN), "HOME": str(tmp_path), "PREFECT_HOME": str(tmp_path / "prefect")}
    done = subprocess.run(
        [str(BIN / "activeflow"), "serve"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 2
    assert "activeflow serve: error: PREFECT_API_URL is not set" in done.stderr
    assert "prefect server start" in done.stderr
    assert not (tmp_path / "activeflow-store").exists()


# The new flows, in-process on the session's temporary Prefect server -------------------


@pytest.fixture
def served_env(tmp_path, monkeypatch):
    """The environment a served run sees: a store, classes and a folder of new images."""
    for n in range(12):
        write_image(tmp_path / "new" / f"{n}.png", seed=500 + n, size=8)
    monkeypatch.chdir(tmp_path)
    values = {
        "ACTIVEFLOW_STORAGE__URI": str(tmp_path / "store"),
        "ACTIVEFLOW_DATA__CLASSES": '["cat", "dog"]',
        "ACTIVEFLOW_BUDGET__PER_RUN": "50",
        "ACTIVEFLOW_SCHEDULE__SOURCE": str(tmp_path / "new"),
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    return tmp_path


@pytest.mark.usefixtures("prefect_harness")
def test_a_run_overrides_the_budget_and_never_exceeds_the_total(served_env):
    from activeflow.flows.ingest_score_export import ingest_score_export_flow

    options = ExportOptions(budget_per_run=4, budget_total=6)
    sizes = [ingest_score_export_flow(options).size for _ in range(3)]

    assert sizes == [4, 2, 0]
    state = load_state(open_store(load_settings().storage))
    assert len(state.samples) == 12 and state.budget_spent == 6
    assert ingest_score_export_flow(options).reason == "total budget of 6 labels is spent"


@pytest.mark.usefixtures("prefect_harness")
def test_watch_labels_announces_a_drop_once_and_import_refuses_a_bad_file_whole(served_env, monkeypatch):
    from prefect.artifacts import Artifact

    from activeflow.flows.import_and_retrain import import_and_retrain_flow
    from activeflow.flows.ingest_score_export import ingest_score_export_flow
    from activeflow.flows.watch_labels import watch_labels_flow

    batch = ingest_score_export_flow(ExportOptions(budget_per_run=3))
    store = open_store(load_settings().storage)
    store.put(f"incoming-labels/{batch.batch_id}.csv", b"id,label\nnot-a-sample,cat\n")

    first, second = watch_labels_flow(), watch_labels_flow()

    assert [d.batch_id for d in first.claimed] == [batch.batch_id]
    assert second.claimed == [] and second.already_claimed == [f"incoming-labels/{batch.batch_id}.csv"]
    # What the event would start, run here directly: the file is refused whole.
    uri = first.claimed[0].uri
    with pytest.raises(LabelFileError, match="unknown sample id"):
        import_and_retrain_flow(batch.batch_id, uri, RetrainOptions(retrain=False))
    assert Catalog(store).read("labels")[0].num_rows == 0
    report = Artifact.get("label-import")
    # The event names the bytes it announced: a file changed since is refused whole.
    with pytest.raises(LabelFileError, match="changed since it was announced"):
        import_and_retrain_flow(batch.batch_id, uri, RetrainOptions(retrain=False), sha256="0" * 64)
    assert "refused" in report.data and "**nothing was written**" in report.data and uri in report.data

    answers = "id,label\n" + "".join(f"{sid},cat\n" for sid in load_state(store).batches[batch.batch_id].sample_ids)
    (served_env / "exports").mkdir()
    (served_env / "exports" / "answers.csv").write_text(answers)
    # Whoever can start a run names the file: outside the store and the allowed roots,
    # nothing is read, and the refusal does not echo what is there.
    for outside in (str(served_env / "exports" / "answers.csv"), f"{store.url('incoming-labels')}/../../exports/answers.csv"):
        with pytest.raises(SourceError, match="outside the store and labelling.allowed_label_roots"):
            import_and_retrain_flow(batch.batch_id, outside, RetrainOptions(retrain=False))
        assert "sample_id" not in Artifact.get("label-import").data
    assert Catalog(store).read("labels")[0].num_rows == 0

    monkeypatch.setenv("ACTIVEFLOW_LABELLING__ALLOWED_LABEL_ROOTS", json.dumps([str(served_env / "exports")]))
    result = import_and_retrain_flow(batch.batch_id, str(served_env / "exports" / "answers.csv"), RetrainOptions(retrain=False))
    assert result.labels.imported == 3 and result.retrain is None
    assert result.note == "retrain switched off for this run"
    assert "| accepted (new labels written) | **3** |" in Artifact.get("label-import").data
    summary = json.loads(json.dumps(Artifact.get("batch-summary").data))
    assert f"# Batch `{batch.batch_id}`" in summary


@pytest.mark.usefixtures("prefect_harness")
def test_store_errors_are_retried_and_other_errors_are_not():
    from prefect import flow, task

    from activeflow.core.storage.store import StoreError
    from activeflow.tasks.retry import STORE_RETRIES

    calls = {"store": 0, "label": 0}

    @task(**{**STORE_RETRIES, "retry_delay_seconds": 0})
    def flaky(kind: str) -> int:
        calls[kind] += 1
        if calls[kind] == 1:
            raise StoreError("cannot reach S3 endpoint") if kind == "store" else LabelFileError("x.csv", None, "bad")
        return calls[kind]

    @flow
    def run(kind: str) -> int:
        return flaky(kind)

    assert run("store") == 2
    with pytest.raises(LabelFileError):
        run("label")
    assert calls == {"store": 2, "label": 1}
