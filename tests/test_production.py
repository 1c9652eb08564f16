"""Production end to end: a real ``prefect server start``, ``activeflow serve`` in its own
process, runs started through the CLI, the API and an event trigger, and what they leave
behind read back through the API. The model is tiny; the data are real digits."""

from __future__ import annotations

import csv
import json
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
from prefect_server import BIN, PrefectServer, spawn, start_prefect_server, wait_for

from activeflow.core.ingest.ingest import ingest_images
from activeflow.core.ingest.sources import iter_source
from activeflow.core.label.batches import export_batch
from activeflow.core.storage.pool import current_champion, load_state
from activeflow.core.storage.store import LocalStore, open_store
from activeflow.evaluation.demo_data import DemoData, write_digits
from activeflow.evaluation.simulation import ground_truth
from activeflow.settings import Settings, load_settings

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
CRON, TIMEZONE = "15 3 * * 1-5", "Europe/Berlin"


class Production:
    """The server, the served deployments and the store they work on."""

    def __init__(self, server: PrefectServer, serve, settings: Settings, digits: DemoData, batches):
        self.server = server
        self.serve = serve
        self.settings = settings
        self.digits = digits
        self.batches = batches  # two cold-start batches exported before serving
        self.store = open_store(settings.storage)
        self.exports = Path(settings.storage.uri).parent / "exports"

    def run_deployment(self, flow_name: str, parameters: dict | None = None) -> dict:
        deployment = self.server.deployment(flow_name, "activeflow")
        run = self.server.post(
            f"/deployments/{deployment['id']}/create_flow_run", {"parameters": parameters or {}}
        )
        return self.finished(run["id"])

    def finished(self, flow_run_id: str) -> dict:
        try:
            return self.server.wait_for_run(flow_run_id)
        except TimeoutError as error:
            raise AssertionError(f"{error}\nserve log:\n{self.serve.log_tail(80)}") from None

    def answers(self, batch_id: str, path: Path) -> Path:
        """The labellers' CSV export for a batch, answered from ground truth."""
        truth = ground_truth(self.digits.truth)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["id", "label"])
            writer.writerows([sid, truth[sid]] for sid in load_state(self.store).batches[batch_id].sample_ids)
        return path


@pytest.fixture(scope="module")
def production(tmp_path_factory) -> Production:
    root = tmp_path_factory.mktemp("production")
    digits = write_digits(root / "digits", arrivals=2, test_size=60)
    environment = {
        "ACTIVEFLOW_STORAGE__URI": str(root / "store"),
        "ACTIVEFLOW_DATA__CLASSES": json.dumps(digits.classes),
        "ACTIVEFLOW_MODEL__IMAGE_SIZE": "8",
        "ACTIVEFLOW_MODEL__HEAD_EPOCHS": "2",
        "ACTIVEFLOW_MODEL__FINETUNE_EPOCHS": "1",
        "ACTIVEFLOW_MODEL__BATCH_SIZE": "64",
        "ACTIVEFLOW_MODEL__MIN_STEPS": "60",
        "ACTIVEFLOW_MODEL__BASELINE_TOLERANCE": "1.0",
        "ACTIVEFLOW_BUDGET__PER_RUN": "10",
        "ACTIVEFLOW_BUDGET__TOTAL": "100",
        "ACTIVEFLOW_SCORING__SHARD_SIZE": "300",
        "ACTIVEFLOW_SCHEDULE__CRON": CRON,
        "ACTIVEFLOW_SCHEDULE__TIMEZONE": TIMEZONE,
        "ACTIVEFLOW_SCHEDULE__SOURCE": str(digits.arrivals[1]),
        "ACTIVEFLOW_SCHEDULE__WATCH_INTERVAL_SECONDS": "3600",
        "ACTIVEFLOW_SCHEDULE__MAX_WORKERS": "2",
        "ACTIVEFLOW_LABELLING__ALLOWED_LABEL_ROOTS": json.dumps([str(root / "exports")]),
    }
    settings = load_settings(
        storage={"uri": str(root / "store")}, data={"classes": digits.classes}, budget={"per_run": 10}
    )
    store = LocalStore(root / "store")
    ingest_images(store, iter_source(str(digits.test), labelled=True), split="test", classes=digits.classes)
    ingest_images(store, iter_source(str(digits.arrivals[0]), labelled=False), split="pool")
    batches = [export_batch(store, settings).batch_id for _ in range(2)]  # random cold starts

    server = start_prefect_server(root / "prefect-home")
    (root / "work").mkdir()
    serve = spawn(
        [str(BIN / "activeflow"), "serve"],
        server.env(**environment, PREFECT_RUNNER_POLL_FREQUENCY="1"),
        root / "serve.log",
        cwd=root / "work",  # no activeflow.toml or .env of the repository's applies
    )
    try:
        wait_for(
            lambda: serve.process.poll() is None and len(
                server.post("/deployments/filter", {"deployments": {"name": {"any_": ["activeflow"]}}})
            ) == 3,
            120, "activeflow serve to register its deployments",
        )
    except BaseException:
        print(serve.log_tail(80))
        serve.stop()
        server.stop()
        raise
    yield Production(server, serve, load_settings(
        storage={"uri": str(root / "store")}, data={"classes": digits.classes},
    ), digits, batches)
    serve.stop()
    server.stop()


def test_serve_registers_the_cron_schedule_trigger_and_run_form(production):
    server = production.server

    export = server.deployment("ingest-score-export", "activeflow")
    [schedule] = export["schedules"]
    assert schedule["schedule"]["cron"] == CRON and schedule["schedule"]["timezone"] == TIMEZONE
    assert schedule["active"] is True
    assert schedule["parameters"] == {
        "options": {"source": str(production.digits.arrivals[1]), "budget_per_run": 10,
                    "budget_total": 100, "strategy": "margin"}
    }
    assert export["paused"] is False and set(export["tags"]) == {"activeflow", "scheduled"}

    retrain = server.deployment("import-and-retrain", "activeflow")
    assert retrain["schedules"] == []
    form = retrain["parameter_openapi_schema"]
    assert form["required"] == ["batch_id", "labels_uri"]
    assert "Label Studio JSON" in form["properties"]["labels_uri"]["description"]
    assert "Retrain (and promote if not worse)" in form["definitions"]["RetrainOptions"]["properties"]["retrain"]["description"]

    watch = server.deployment("watch-labels", "activeflow")
    assert watch["schedules"][0]["schedule"]["interval"] == 3600

    automations = server.post("/automations/filter")
    [trigger] = [a for a in automations if a["actions"][0].get("deployment_id") == retrain["id"]]
    assert trigger["trigger"]["expect"] == ["activeflow.labels.ready"]
    assert trigger["trigger"]["match"] == {"prefect.resource.id": "activeflow.batch.*"}
    assert trigger["enabled"] is True


def test_import_and_retrain_started_by_hand_through_the_cli(production):
    server, batch_id = production.server, production.batches[0]
    answers = production.answers(batch_id, production.exports / "export.csv")  # an allowed root

    cli = subprocess.run(
        [str(BIN / "prefect"), "deployment", "run", "import-and-retrain/activeflow",
         "--param", f"batch_id={batch_id}", "--param", f"labels_uri={answers}"],
        env=server.env(), capture_output=True, text=True, timeout=120, check=True,
    )
    flow_run_id = re.search(r"UUID:\s*([0-9a-f-]{36})", cli.stdout).group(1)
    run = production.finished(flow_run_id)

    assert run["state_type"] == "COMPLETED", production.serve.log_tail(80)
    assert run["name"] == f"import {batch_id} and retrain"
    assert run["parameters"]["batch_id"] == batch_id
    champion = current_champion(production.store)
    assert champion is not None
    # Task runs are found by the batch or model their names carry (not by tags: see
    # test_batches_and_models_leave_no_threads_behind).
    task_names = {task_run["name"] for task_run in server.task_runs(flow_run_id)}
    assert {f"import labels of {batch_id}", f"gate {champion.version}"} <= task_names

    artifacts = server.artifacts(flow_run_id)
    assert {"label-import", "model-metrics", "learning-curve", "learning-curve-plot"} <= artifacts.keys()
    assert "| accepted (new labels written) | **10** |" in artifacts["label-import"]["data"]
    assert f"# Model `{champion.version}`" in artifacts["model-metrics"]["data"]
    assert "**promoted**" in artifacts["model-metrics"]["data"]
    curve = json.loads(artifacts["learning-curve"]["data"])
    assert [(row["labels"], row["promoted"]) for row in curve] == [(10, "yes")]
    assert artifacts["learning-curve-plot"]["type"] == "image"
    assert artifacts["learning-curve-plot"]["data"].startswith("data:image/png;base64,")


def test_the_scheduled_flow_ingests_scores_and_exports_within_budget(production):
    before = load_state(production.store)

    run = production.run_deployment("ingest-score-export")

    assert run["state_type"] == "COMPLETED", production.serve.log_tail(80)
    assert run["name"].startswith("ingest-score-export ")
    state = load_state(production.store)
    [batch_id] = state.batches.keys() - before.batches.keys()
    manifest = state.batches[batch_id]
    assert len(manifest.items) == 10 and manifest.strategy == "margin"
    assert len(state.samples) > len(before.samples)  # schedule.source was ingested
    assert set(manifest.sample_ids).isdisjoint(before.queued | set(before.labelled))

    artifacts = production.server.artifacts(run["id"])
    assert {"batch-summary", "batch-samples", "scoring-progress"} <= artifacts.keys()
    summary = artifacts["batch-summary"]["data"]
    assert f"# Batch `{batch_id}`" in summary and "| strategy | `margin` |" in summary
    assert f"| model | `{manifest.model_version}` |" in summary
    assert "30 of 100 spent over all batches, **70 remaining**" in summary
    assert "## Predicted classes" in summary
    rows = json.loads(artifacts["batch-samples"]["data"])
    assert len(rows) == 10 and all(row["image"].startswith(production.store.url("samples")) for row in rows)
    assert artifacts["scoring-progress"]["data"] == 100.0


def test_watch_labels_imports_a_dropped_export_exactly_once(production, tmp_path):
    server, batch_id = production.server, production.batches[1]
    answers = production.answers(batch_id, tmp_path / "export.csv")
    production.store.put(f"incoming-labels/{batch_id}.csv", answers.read_bytes())
    retrain = server.deployment("import-and-retrain", "activeflow")

    polls = [production.run_deployment("watch-labels") for _ in range(2)]

    assert [poll["state_type"] for poll in polls] == ["COMPLETED", "COMPLETED"]
    first, second = (server.artifacts(poll["id"])["label-drops"]["data"] for poll in polls)
    assert f"- `incoming-labels/{batch_id}.csv` for batch `{batch_id}`" in first
    assert "Nothing new." in second and "Announced by an earlier poll (same bytes): 1 files." in second

    def triggered() -> list[dict]:
        return [r for r in server.flow_runs(retrain["id"]) if r["parameters"].get("batch_id") == batch_id]

    [run] = wait_for(triggered, 120, f"the trigger to start import-and-retrain for {batch_id}")
    run = production.finished(run["id"])
    assert run["state_type"] == "COMPLETED", production.serve.log_tail(80)
    assert run["parameters"]["labels_uri"] == production.store.url(f"incoming-labels/{batch_id}.csv")
    time.sleep(3)  # a second event would have started a second run by now
    assert len(triggered()) == 1
    state = load_state(production.store)
    assert len(state.batch_labels[batch_id]) == 10 and batch_id not in state.open_batches


def test_serve_says_where_each_thread_is_on_sigusr1(production):
    production.serve.process.send_signal(signal.SIGUSR1)
    wait_for(lambda: b"(most recent call first)" in production.serve.log.read_bytes(), 30,
             "serve to print its threads' stacks")
    assert production.serve.process.poll() is None  # and it keeps serving


def test_stopping_serve_leaves_the_schedules_active(production):
    assert production.serve.stop() == 0, production.serve.log_tail(150)
    assert b"stopped serving" in production.serve.log.read_bytes()
    for flow_name in ("ingest-score-export", "watch-labels"):
        deployment = production.server.deployment(flow_name, "activeflow")
        assert deployment["paused"] is False
        assert [schedule["active"] for schedule in deployment["schedules"]] == [True]


def test_prefect_yaml_deploys_the_same_deployments_to_a_work_pool(production, tmp_path):
    server = production.server
    env = server.env()
    subprocess.run(
        [str(BIN / "prefect"), "work-pool", "create", "activeflow", "--type", "process"],
        env=env, capture_output=True, text=True, timeout=120, check=True,
    )
    deploy = subprocess.run(
        [str(BIN / "prefect"), "--no-prompt", "deploy", "--all"],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert deploy.returncode == 0, deploy.stdout + deploy.stderr

    export = server.deployment("ingest-score-export", "activeflow")
    assert export["work_pool_name"] == "activeflow"
    assert [(s["schedule"]["cron"], s["schedule"]["timezone"]) for s in export["schedules"]] == [("0 2 * * *", "UTC")]
    assert export["pull_steps"] == [
        {"prefect.deployments.steps.set_working_directory": {"directory": str(REPO)}}
    ]
    watch = server.deployment("watch-labels", "activeflow")
    assert [s["schedule"]["interval"] for s in watch["schedules"]] == [300]
    retrain = server.deployment("import-and-retrain", "activeflow")
    triggers = [a["trigger"] for a in server.post("/automations/filter")
                if a["actions"][0].get("deployment_id") == retrain["id"]]
    assert [t["expect"] for t in triggers] == [["activeflow.labels.ready"]]
