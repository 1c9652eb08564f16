"""What each command prints for a person (``--json`` prints the result as JSON instead):
a few lines that say what happened and what to look at next."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # annotations only: printing must not import what the command did not
    from activeflow.core.ingest.ingest import IngestReport
    from activeflow.core.label.batches import ExportResult
    from activeflow.core.label.label_import import ImportReport
    from activeflow.core.storage.migrate import MigrationReport

_SHOWN = 5  # items of a list shown before "and N more"


def human_view(command: str, result: Any) -> str | None:
    """The lines ``command`` prints for ``result``; None where JSON is the only view."""
    view = _VIEWS.get(command)
    return view(result) if view is not None else None


def _count(n: int, thing: str, plural: str | None = None) -> str:
    return f"{n:,} {thing if n == 1 else plural or thing + 's'}"


def _listed(title: str, items: Sequence[str]) -> list[str]:
    if not items:
        return []
    more = f" (and {len(items) - _SHOWN} more)" if len(items) > _SHOWN else ""
    return [f"  {title}{more}:", *(f"    {item}" for item in items[:_SHOWN])]


def _status(summary: Mapping[str, Any]) -> str:
    remaining = summary["budget_remaining"]
    budget = f"{summary['budget_spent']:,} labels spent" + (
        f", {remaining:,} remaining" if remaining is not None else " (no budget.total set)"
    )
    return "\n".join([
        f"pool      {summary['unlabelled']:,} unlabelled, {summary['queued']:,} queued in batches, "
        f"{summary['labelled']:,} labelled",
        f"test set  {summary['test']:,} images",
        f"budget    {budget}",
        f"champion  {summary['champion'] or 'none yet (run `activeflow retrain` on labelled images)'}",
        *([f"quarantine  {_count(summary['quarantined'], 'input')} could not be read "
           "(see quarantine/ in the store)"] if summary["quarantined"] else []),
    ])


def _ingest(report: IngestReport) -> str:
    where = "the pool" if report.split == "pool" else f"the {report.split} split"
    parts = [f"{report.duplicate:,} already in the store"]
    if report.unchanged:
        parts.append(f"{report.unchanged:,} unchanged since an earlier ingest, not read")
    if report.quarantined:
        parts.append(f"{report.quarantined:,} quarantined")
    return "\n".join([
        f"ingested {_count(report.new, 'new image')} into {where} ({', '.join(parts)})",
        *_listed("quarantined", report.quarantine_reasons),
    ])


def _score(result: Mapping[str, Any]) -> str:
    return (f"scored {_count(result['scored'], 'sample')} with {result['model_version']} "
            f"({result['reused']:,} scored by it before)")


def _export(result: ExportResult) -> str:
    if result.batch_id is None:
        return f"no batch exported: {result.reason}"
    lines = [f"batch {result.batch_id}: {_count(result.size, 'sample')} ({result.reason})"]
    lines += [f"  {name:<12} {path}" for name, path in result.files.items()]
    if result.label_studio is not None:
        lines.append(f"  Label Studio: {_count(result.label_studio['pushed'], 'task')} pushed to "
                     f"project {result.label_studio['project_id']}")
    lines.append(f"next: label it, then `activeflow import-labels {result.batch_id} <export>`")
    return "\n".join(lines)


def _import(report: ImportReport) -> str:
    lines = [f"batch {report.batch_id}: imported {_count(report.imported, 'new label')} from "
             f"{report.file} ({report.already_imported:,} imported before); "
             f"{report.still_queued:,} still waiting for a label"]
    lines += _listed("not labelled yet", report.unlabelled)
    lines += _listed("only skipped or cancelled", report.skipped)
    lines += _listed("annotators disagree", [f"{d.sample_id} {d.votes}" for d in report.disagreements])
    lines += _listed("queued again in another batch, not imported", report.requeued_elsewhere)
    return "\n".join(lines)


def _retrain(decision: Any) -> str:
    verdict = "promoted: it is the champion now" if decision.promoted else "not promoted"
    return (f"model {decision.version}: test accuracy {decision.accuracy:.1%} from "
            f"{_count(decision.labels_used, 'label')}; {verdict}\n  {decision.reason}")


def _migrate(report: MigrationReport) -> str:
    return (f"migrated {_count(report.samples, 'sample')}, {_count(report.batches, 'batch', 'batches')}, "
            f"{_count(report.labels, 'label')} and {_count(report.releases, 'release')} into the catalog")


def _cycle(rounds: Sequence[Any]) -> str:
    lines = []
    for round_ in rounds:
        line = f"round {round_.round}: " + _export(round_.batch).splitlines()[0]
        if round_.retrain is not None:
            line += "; " + _retrain(round_.retrain).splitlines()[0]
        lines.append(line)
    return "\n".join(lines) or "no rounds run"


def _files(files: Mapping[str, str]) -> str:
    """What a demo wrote, after its table."""
    return "\n".join(f"{name.replace('_', ' '):<15} {path}" for name, path in files.items())


_VIEWS: dict[str, Callable[[Any], str]] = {
    "demo": _files,
    "status": _status,
    "ingest": _ingest,
    "score": _score,
    "export-batch": _export,
    "import-labels": _import,
    "retrain": _retrain,
    "migrate": _migrate,
    "cycle": _cycle,
}
