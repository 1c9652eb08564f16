# No `from __future__ import annotations`: a served run unpickles this flow in a fresh
# process, where string annotations could not be resolved to the parameter models.
from prefect import flow
from prefect.runtime import flow_run
from prefect.task_runners import ThreadPoolTaskRunner

from activeflow.core.label.batches import ExportResult
from activeflow.flows.export_batch import export_and_publish
from activeflow.flows.score import SCORING_WORKERS, score_if_worth_it
from activeflow.parameters import ExportOptions
from activeflow.settings import load_settings
from activeflow.tasks.ingest import ingest_source
from activeflow.tasks.maintenance import remove_orphans
from activeflow.tasks.status import pool_status


def _run_name() -> str:
    when = flow_run.scheduled_start_time
    return f"ingest-score-export {when:%Y-%m-%d %H:%M %Z}" if when else "ingest-score-export"


@flow(
    name="ingest-score-export",
    flow_run_name=_run_name,
    task_runner=ThreadPoolTaskRunner(max_workers=SCORING_WORKERS),
)
def ingest_score_export_flow(options: ExportOptions = ExportOptions()) -> ExportResult:  # noqa: B008
    """Ingest new images, score the pool with the champion, and export the next
    labelling batch within the run's budget.

    Args:
        options: Overrides of the settings for this run; empty fields follow the settings.
    """
    settings = load_settings(**options.overrides())
    remove_orphans(settings)  # what a run killed midway (kill -9, power cut) left
    if settings.schedule.source:
        ingest_source(settings.schedule.source, "pool", settings)
    return export_and_publish(settings, score_if_worth_it(settings, pool_status(settings)))
