# No `from __future__ import annotations`: a served run unpickles this flow in a fresh
# process, where string annotations could not be resolved to the parameter models.
from prefect import flow

from activeflow.core.label.label_drops import DropScan
from activeflow.settings import load_settings
from activeflow.tasks.watch import announce_labels, report_label_drops, scan_label_drops


@flow(name="watch-labels", flow_run_name="watch for label drops")
def watch_labels_flow(prefix: str | None = None) -> DropScan:
    """Find completed label exports dropped in the store and start import-and-retrain
    for each, exactly once, by emitting the event its trigger listens for.

    Args:
        prefix: The folder in the store where labellers drop exports, each named by its
            batch id plus .json or .csv. Empty: schedule.labels_drop_prefix from the settings.
    """
    settings = load_settings(**({"schedule": {"labels_drop_prefix": prefix}} if prefix else {}))
    scan = scan_label_drops(settings, settings.schedule.labels_drop_prefix)
    for drop in scan.claimed:
        announce_labels(settings, drop)
    report_label_drops(scan)
    return scan
