# No `from __future__ import annotations`: a served run unpickles this flow in a fresh
# process, where string annotations could not be resolved to the parameter models.
from prefect import flow
from pydantic import BaseModel

from activeflow.core.label.label_import import ImportReport, retrain_refusal
from activeflow.core.train.training import PromotionDecision
from activeflow.flows.retrain import retrain_model
from activeflow.parameters import RetrainOptions
from activeflow.settings import load_settings
from activeflow.tasks.labels import import_label_file


class ImportAndRetrainResult(BaseModel):
    labels: ImportReport
    retrain: PromotionDecision | None = None
    note: str


@flow(name="import-and-retrain", flow_run_name="import {batch_id} and retrain")
def import_and_retrain_flow(
    batch_id: str,
    labels_uri: str,
    options: RetrainOptions = RetrainOptions(),  # noqa: B008
    sha256: str | None = None,
) -> ImportAndRetrainResult:
    """Import a batch's completed labels, then retrain and promote if not worse.

    Args:
        batch_id: The id of the batch the labels answer (the batch summary artifact names
            it; its files are under batches/ in the store).
        labels_uri: The labelling tool's export, a local path or s3://bucket/key:
            Label Studio JSON or JSON-MIN, or CSV with columns id,label.
        options: Overrides of the settings for this run; empty fields follow the settings.
        sha256: The export's sha256 when an event announced it: other bytes are refused.
    """
    settings = load_settings(**options.overrides())
    # Anyone who can start a run or send an event names the file: only the store and the
    # roots the settings allow are read, with the worker's credentials.
    roots = [settings.storage.uri, *settings.labelling.allowed_label_roots]
    report = import_label_file(settings, batch_id, labels_uri, allowed_roots=roots, sha256=sha256)
    if (refusal := retrain_refusal(report)) is not None:
        return ImportAndRetrainResult(labels=report, note=refusal)
    if not options.retrain:
        return ImportAndRetrainResult(labels=report, note="retrain switched off for this run")
    decision = retrain_model(settings)
    return ImportAndRetrainResult(labels=report, retrain=decision, note=decision.reason)
