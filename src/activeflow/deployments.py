"""The deployments ``activeflow serve`` serves: schedules, a manual trigger, an event trigger.

- ``ingest-score-export/activeflow``: on the cron schedule ``schedule.cron`` (default
  nightly), ingest new images from ``schedule.source``, score the pool with the champion
  and export the next labelling batch within the budget.
- ``import-and-retrain/activeflow``: no schedule. Run by hand once labelling is done
  (``prefect deployment run 'import-and-retrain/activeflow' --param batch_id=...
  --param labels_uri=...`` or the UI's Run form), or by its trigger on the event
  ``activeflow.labels.ready`` — which ``watch-labels`` emits, and so may a labelling
  tool's hook.
- ``watch-labels/activeflow``: every ``schedule.watch_interval_seconds``, announces each
  label export dropped under ``schedule.labels_drop_prefix`` exactly once.

``serve`` needs a Prefect server (``PREFECT_API_URL``); stopping it leaves the schedules
active (``pause_on_shutdown=False``), so the next ``serve`` picks them up where they were.
"""

from __future__ import annotations

import asyncio
import faulthandler
import json
import os
import signal
from datetime import timedelta
from typing import Any

from prefect import Flow
from prefect.deployments.runner import RunnerDeployment
from prefect.events import DeploymentEventTrigger
from prefect.exceptions import TerminationSignal
from prefect.runner import Runner
from prefect.schedules import Cron, Interval
from prefect.settings import get_current_settings
from pydantic import SecretStr

from activeflow.flows.import_and_retrain import import_and_retrain_flow
from activeflow.flows.ingest_score_export import ingest_score_export_flow
from activeflow.flows.score import shard_runner
from activeflow.flows.watch_labels import watch_labels_flow
from activeflow.parameters import ExportOptions
from activeflow.settings import Settings, SettingsError
from activeflow.tasks.watch import LABELS_READY_EVENT

DEPLOYMENT_NAME = "activeflow"
TAGS = ["activeflow"]


def labels_ready_trigger() -> DeploymentEventTrigger:
    """Run import-and-retrain for each ``activeflow.labels.ready`` event, with the batch
    and the export's location taken from the event's payload."""
    return DeploymentEventTrigger(
        name="import labels when they are ready",
        description=f"Each {LABELS_READY_EVENT} event (from watch-labels or a labelling "
        "tool's hook) starts one import-and-retrain run.",
        expect={LABELS_READY_EVENT},
        match={"prefect.resource.id": "activeflow.batch.*"},
        parameters={
            "batch_id": "{{ event.payload.batch_id }}",
            "labels_uri": "{{ event.payload.labels_uri }}",
            "sha256": "{{ event.payload.sha256 }}",
        },
    )


def deployment_specs(settings: Settings) -> list[tuple[Flow[..., Any], dict[str, Any]]]:
    """Each served flow, configured from ``settings``, with its deployment's options."""
    schedule = settings.schedule
    runner = shard_runner(settings)
    nightly = Cron(
        schedule.cron,
        timezone=schedule.timezone,
        parameters={"options": ExportOptions.from_settings(settings).model_dump(mode="json")},
    )
    return [
        (
            ingest_score_export_flow.with_options(task_runner=runner),
            {
                "schedules": [nightly],
                "tags": [*TAGS, "scheduled"],
                "description": "Ingest new images, score the pool, export the next labelling batch.",
            },
        ),
        (
            import_and_retrain_flow.with_options(task_runner=runner),
            {
                "triggers": [labels_ready_trigger()],
                "tags": [*TAGS, "labels"],
                "description": "Import a batch's completed labels, retrain, promote if not worse.",
            },
        ),
        (
            watch_labels_flow.with_options(task_runner=runner),
            {
                "schedules": [Interval(timedelta(seconds=schedule.watch_interval_seconds))],
                "tags": [*TAGS, "labels"],
                "description": f"Announce label exports dropped under {schedule.labels_drop_prefix}.",
            },
        ),
    ]


def build_deployments(settings: Settings) -> list[RunnerDeployment]:
    """The three deployments as ``serve`` registers them (nothing is sent anywhere)."""
    return [flow.to_deployment(name=DEPLOYMENT_NAME, **options) for flow, options in deployment_specs(settings)]


def settings_environment(settings: Settings) -> dict[str, str]:
    """``ACTIVEFLOW_<GROUP>__<FIELD>`` for every set value, so that the runs ``serve``
    starts (child processes) use exactly the settings it was started with."""
    environment = {}
    for group_name in type(settings).model_fields:
        group = getattr(settings, group_name)
        dumped = group.model_dump(mode="json")
        for field_name in type(group).model_fields:
            value = getattr(group, field_name)
            if value is None:
                continue
            if isinstance(value, SecretStr):
                text = value.get_secret_value()
            elif isinstance(value, str):
                text = value
            else:
                text = json.dumps(dumped[field_name])
            environment[f"ACTIVEFLOW_{group_name.upper()}__{field_name.upper()}"] = text
    return environment


def serve_deployments(settings: Settings) -> None:
    """Register the deployments with the Prefect server and run their flow runs here
    until interrupted (Ctrl-C or SIGTERM). The settings are resolved once, now: restart
    after changing them.

    This is ``prefect.serve`` with one difference: the runner is given the configured
    flow objects (``Runner.add_flow``, as ``Flow.serve`` does), so each run executes the
    flow with the task runner bounded by ``schedule.max_workers``; ``serve(*deployments)``
    would re-import each flow from its file and lose that.
    """
    api_url = get_current_settings().api.url
    if not api_url:
        raise SettingsError(
            "PREFECT_API_URL is not set: serving needs a running Prefect server. Start one with "
            "`prefect server start` and set PREFECT_API_URL=http://127.0.0.1:4200/api "
            "(or `prefect config set PREFECT_API_URL=...`)"
        )
    os.environ.update(settings_environment(settings))
    # Any flow a run starts with Prefect's default thread pool is bounded the same way.
    os.environ.setdefault(
        "PREFECT_TASKS_RUNNER_THREAD_POOL_MAX_WORKERS", str(settings.schedule.max_workers)
    )
    # pause_on_shutdown=False: stopping serve must not pause the schedules.
    runner = Runner(name=DEPLOYMENT_NAME, pause_on_shutdown=False)
    specs = deployment_specs(settings)
    for flow, options in specs:
        runner.add_flow(flow, name=DEPLOYMENT_NAME, **options)
    names = ", ".join(f"{flow.name}/{DEPLOYMENT_NAME}" for flow, _ in specs)
    # A service that will not stop or answer must say where it is stuck: SIGUSR1 prints
    # every thread's stack to stderr, even while the main thread is blocked in C code.
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    print(f"Serving {names} from {api_url}; Ctrl-C stops (the schedules stay active); "
          f"`kill -USR1 {os.getpid()}` prints where each thread is.", flush=True)
    try:
        asyncio.run(_serve_until_interrupted(runner))
    except (KeyboardInterrupt, TerminationSignal, asyncio.CancelledError):
        pass


async def _serve_until_interrupted(runner: Runner) -> None:
    """``runner.start()``, stopped on Ctrl-C through the runner's own ``astop``.

    asyncio's default turns the first Ctrl-C into a cancellation of the main task, which the
    runner's polling loops sometimes absorbed: in full test runs on a loaded 2-core machine
    serve went on polling for over 20 s after SIGINT (its stacks showed an idle event loop). ``astop`` ends the
    polling through the runner's cancel scope and lets in-flight runs finish; a second
    Ctrl-C stops waiting for them."""
    loop = asyncio.get_running_loop()
    serving = asyncio.current_task()

    def interrupted() -> None:
        if runner.started and not runner.stopping:
            loop.create_task(runner.astop())
        elif serving is not None:
            serving.cancel()

    loop.add_signal_handler(signal.SIGINT, interrupted)
    await runner.start()
