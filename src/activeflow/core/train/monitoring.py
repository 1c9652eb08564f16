"""What a person reads about a run: markdown and table rows for the Prefect UI's
artifacts, and the learning curve derived from the models in the store.

Plain Python, no Prefect: the tasks publish what these functions build.
"""

from __future__ import annotations

import base64
from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from pydantic import BaseModel

from activeflow.core.score.strategies import CRITERIA
from activeflow.core.storage.pool import BatchManifest, PoolState, promotions, trained_models
from activeflow.core.storage.store import ObjectStore
from activeflow.core.train.reporting import CurvePoint

if TYPE_CHECKING:  # only annotations here
    import pyarrow as pa

    from activeflow.core.label.label_drops import DropScan
    from activeflow.core.label.label_import import ImportReport
    from activeflow.core.train.training import ModelMetrics, PromotionDecision
    from activeflow.core.train.training_history import TrainingHistory


# Batches ------------------------------------------------------------------------------


def batch_summary(
    manifest: BatchManifest,
    state: PoolState,
    scores: pa.Table | None,
    *,
    drop_prefix: str,
) -> str:
    """Markdown: strategy, budget used and remaining, model, score distribution and the
    class mix of predictions, then where the files are and what to do when labelled.

    ``state`` is the pool after the batch was written; ``scores`` the champion's newest
    scoring run (the whole pool's distribution, for comparison), if any."""
    size = len(manifest.items)
    remaining = state.budget_remaining(manifest.budget_total)
    total = "no total cap" if manifest.budget_total is None else (
        f"{state.budget_spent} of {manifest.budget_total} spent over all batches, "
        f"**{remaining} remaining**"
    )
    lines = [
        f"# Batch `{manifest.batch_id}`",
        "",
        "| | |",
        "|---|---|",
        f"| strategy | `{manifest.strategy}` |",
        f"| model | {_model(manifest.model_version)} |",
        f"| labels asked | **{size}** of the per-run budget {manifest.budget_per_run} |",
        f"| total budget | {total} |",
        f"| pool | {state.unlabelled_count} unlabelled, {len(state.queued)} queued in "
        f"{len(state.open_batches)} open batches, {len(state.labelled)} labelled |",
        f"| created | {manifest.created_at} |",
        "",
        "## Scores (higher = more informative)",
        "",
        _distribution_table(manifest, scores),
        "",
        "## Predicted classes",
        "",
        _class_mix_table(manifest, scores),
        "",
        "## Files for the labellers",
        "",
        *[f"- {name}: `{location}`" for name, location in sorted(manifest.files(state.catalog.store).items())],
        "",
        "## When the labels are done",
        "",
        f"Drop the export at `{drop_prefix}{manifest.batch_id}.json` (or `.csv`) in the store "
        "for `watch-labels` to pick up, or run",
        "",
        "```",
        f"prefect deployment run 'import-and-retrain/activeflow' --param batch_id={manifest.batch_id} "
        "--param labels_uri=<export file>",
        "```",
    ]
    return "\n".join(lines)


def _model(version: str | None) -> str:
    return f"`{version}`" if version else "none yet (random cold start)"


def _distribution_table(manifest: BatchManifest, scores: pa.Table | None) -> str:
    rows = [("this batch", np.array([item.score for item in manifest.items], dtype=float))]
    if scores is not None and manifest.strategy in CRITERIA and scores.num_rows:
        rows.append(("whole pool at scoring", scores.column(manifest.strategy).to_numpy()))
    if manifest.model_version is None:
        return "No model yet: a seeded random cold start, so no scores to show."
    table = ["| | n | min | 25% | median | 75% | max |", "|---|---|---|---|---|---|---|"]
    for name, values in rows:
        if values.size == 0:
            table.append(f"| {name} | 0 | | | | | |")
            continue
        q = np.quantile(values, [0.0, 0.25, 0.5, 0.75, 1.0])
        table.append(f"| {name} | {values.size} | " + " | ".join(f"{v:.4f}" for v in q) + " |")
    return "\n".join(table)


def _class_mix_table(manifest: BatchManifest, scores: pa.Table | None) -> str:
    batch = Counter(item.predicted for item in manifest.items if item.predicted is not None)
    if not batch:
        return "No predictions: the batch was chosen before any model existed."
    pool = Counter(scores.column("predicted").to_pylist()) if scores is not None else Counter()
    n_batch, n_pool = sum(batch.values()), sum(pool.values())
    table = ["| predicted | this batch | share | whole pool | share |", "|---|---|---|---|---|"]
    for name in sorted(batch.keys() | pool.keys()):
        pool_cells = f"{pool[name]} | {pool[name] / n_pool:.0%}" if n_pool else "– | –"
        table.append(f"| {name} | {batch[name]} | {batch[name] / n_batch:.0%} | {pool_cells} |")
    return "\n".join(table)


def batch_rows(store: ObjectStore, manifest: BatchManifest, state: PoolState) -> list[dict[str, object]]:
    """One row per selected sample, best first, naming where its image is. A name, not a
    presigned link: everyone with access to the Prefect UI reads the artifact, and a link
    would carry the access key id and a working signature (labellers get their links in
    the batch's export files, for ``labelling.url_expiry_hours``)."""
    rows = []
    keys, sources = state.keys_and_sources(manifest.sample_ids)
    for rank, item in enumerate(manifest.items, start=1):
        rows.append(
            {
                "rank": rank,
                "sample": item.sample_id[:12],
                "score": round(item.score, 4),
                "predicted": item.predicted or "",
                "confidence": "" if item.confidence is None else round(item.confidence, 4),
                "source": sources[rank - 1],
                "image": store.url(keys[rank - 1]),
            }
        )
    return rows


def empty_batch_summary(reason: str, state: PoolState, budget_total: int | None) -> str:
    remaining = state.budget_remaining(budget_total)
    return "\n".join(
        [
            "# No batch this run",
            "",
            f"Reason: **{reason}**.",
            "",
            f"Budget spent so far: {state.budget_spent}"
            + ("" if remaining is None else f", remaining: {remaining}")
            + f". Pool: {state.unlabelled_count} unlabelled, {len(state.queued)} queued.",
        ]
    )


# Label imports ------------------------------------------------------------------------


def import_summary(report: ImportReport) -> str:
    """Accepted, already there, refused (conflicts) and still waiting, with reasons."""
    lines = [
        f"# Label import for batch `{report.batch_id}`",
        "",
        f"File: `{report.file}`",
        "",
        "| | |",
        "|---|---|",
        f"| accepted (new labels written) | **{report.imported}** |",
        f"| already in the store, unchanged | {report.already_imported} |",
        f"| refused: differ from an imported label | {len(report.conflicts)} |",
        f"| no annotation yet | {len(report.unlabelled)} |",
        f"| only cancelled or skipped annotations | {len(report.skipped)} |",
        f"| annotators disagreed | {len(report.disagreements)} |",
        f"| in another batch since this one was released | {len(report.requeued_elsewhere)} |",
        f"| samples of the batch still waiting for a label | {report.still_queued} |",
    ]
    if report.conflicts:
        lines += [
            "",
            "## Refused: labels are never overwritten",
            "",
            "| sample | imported label (kept) | label in this file |",
            "|---|---|---|",
            *[f"| `{c.sample_id[:12]}` | {c.imported} | {c.offered} |" for c in report.conflicts[:50]],
        ]
    if report.disagreements:
        lines += [
            "",
            "## Disagreements (below labelling.min_agreement; they stay queued)",
            "",
            "| sample | votes |",
            "|---|---|",
            *[
                f"| `{d.sample_id[:12]}` | "
                + ", ".join(f"{label}: {n}" for label, n in sorted(d.votes.items()))
                + " |"
                for d in report.disagreements[:50]
            ],
        ]
    waiting = [("no annotation yet", report.unlabelled), ("cancelled or skipped", report.skipped)]
    for title, ids in waiting:
        if ids:
            shown = ", ".join(f"`{sid[:12]}`" for sid in ids[:20])
            more = f" and {len(ids) - 20} more" if len(ids) > 20 else ""
            lines += ["", f"Still queued ({title}): {shown}{more}."]
    return "\n".join(lines)


def import_refused(batch_id: str, file: str, error: Exception) -> str:
    return "\n".join(
        [
            f"# Label import for batch `{batch_id}`: refused",
            "",
            f"File: `{file}`",
            "",
            f"The whole file was refused and **nothing was written**: {error}",
            "",
            "Fix the export (or pick the right batch) and import it again.",
        ]
    )


# Training and the learning curve ------------------------------------------------------


class CurveRow(BaseModel):
    round: int  # 1 is the first model trained
    version: str
    created_at: str
    labels: int
    accuracy: float
    promoted: bool


def learning_curve(store: ObjectStore) -> list[CurveRow]:
    """Every finished model (one with metrics.json), oldest first: accuracy against the
    training labels it used, and whether it was ever promoted."""
    promoted = {promotion.version for promotion in promotions(store)}
    return [
        CurveRow(
            round=number,
            version=m["version"],
            created_at=m["created_at"],
            labels=int(m["labels_used"]),
            accuracy=float(m["accuracy"]),
            promoted=m["version"] in promoted,
        )
        for number, m in enumerate(trained_models(store), start=1)
    ]


def curve_points(rows: Sequence[CurveRow]) -> list[CurvePoint]:
    """Two series for the plot: every model trained, and the champions among them."""
    points = [CurvePoint(strategy="every model", round=r.round, labels=r.labels, accuracy=r.accuracy) for r in rows]
    points += [
        CurvePoint(strategy="promoted", round=r.round, labels=r.labels, accuracy=r.accuracy)
        for r in rows
        if r.promoted
    ]
    return points


def curve_table(rows: Sequence[CurveRow]) -> list[dict[str, object]]:
    return [
        {
            "round": r.round,
            "labels": r.labels,
            "accuracy": round(r.accuracy, 4),
            "promoted": "yes" if r.promoted else "no",
            "model": r.version,
            "trained": r.created_at,
        }
        for r in rows
    ]


def png_data_uri(png: bytes) -> str:
    """An image URL that needs no server: the UI shows it whatever the store is."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def training_summary(metrics: ModelMetrics, decision: PromotionDecision) -> str:
    verdict = "**promoted**: it now serves" if decision.promoted else "**not promoted**"
    lines = [
        f"# Model `{metrics.version}`",
        "",
        f"{verdict} ({decision.reason}).",
        "",
        "| | |",
        "|---|---|",
        f"| test accuracy | **{metrics.accuracy:.4f}** on {metrics.test_size} held-out images |",
        f"| champion before | {_champion(decision)} |",
        f"| training labels | {metrics.labels_used} |",
        f"| backbone | `{metrics.model_settings.get('backbone')}` at "
        f"{metrics.model_settings.get('image_size')} px |",
        f"| baseline | {_baseline(metrics)} |",
        f"| chance | {_optional(metrics.chance_accuracy)} (the most common test class) |",
        f"| training | {_phases(metrics.history)} |",
        f"| validation | {metrics.history.validation_note or '–'} |",
        f"| inverted | {metrics.history.invert:.0%} of training images (`model.augment.invert`) |",
        f"| final loss | {_last(metrics.history.head_loss)} first phase, "
        f"{_last(metrics.history.finetune_loss)} fine-tune |",
        "",
        "## Test accuracy per class",
        "",
        "| class | accuracy |",
        "|---|---|",
        *[
            f"| {name} | {'–' if acc is None else f'{acc:.4f}'} |"
            for name, acc in metrics.per_class_accuracy.items()
        ],
    ]
    return "\n".join(lines)


def _champion(decision: PromotionDecision) -> str:
    if decision.champion_version is None:
        return "none"
    return f"`{decision.champion_version}` ({decision.champion_accuracy:.4f})"


def _baseline(metrics: ModelMetrics) -> str:
    if metrics.baseline is None:
        return "–"
    return f"{metrics.baseline.accuracy:.4f} ({metrics.baseline.name}, same labels)"


def _optional(value: float | None) -> str:
    return "–" if value is None else f"{value:.4f}"


def _phases(history: TrainingHistory) -> str:
    if not history.phases:  # metrics of a version before the step-based recipe
        return f"{len(history.head_loss)} head + {len(history.finetune_loss)} fine-tune epochs"
    parts = [
        f"{p.name}: {p.steps_run} of {p.steps_planned} steps at {p.learning_rate:g}"
        for p in history.phases
    ]
    early = ", stopped early" if history.stopped_early else ""
    return "; ".join(parts) + early + f" on {history.train_size} labels"


def _last(values: Sequence[float]) -> str:
    return f"{values[-1]:.4f}" if values else "–"


# Watching for label drops -------------------------------------------------------------


def drop_scan_summary(scan: DropScan, event: str) -> str:
    lines = [f"# Label drops under `{scan.prefix}`", ""]
    if scan.claimed:
        lines.append(f"Announced now (event `{event}`, which starts import-and-retrain):")
        lines += [f"- `{d.key}` for batch `{d.batch_id}`" for d in scan.claimed]
    else:
        lines.append("Nothing new.")
    if scan.already_claimed:
        lines += ["", f"Announced by an earlier poll (same bytes): {len(scan.already_claimed)} files."]
    if scan.ignored:
        lines += ["", "Ignored:"]
        lines += [f"- `{key}`: {why}" for key, why in sorted(scan.ignored.items())]
    if scan.already_ignored:
        lines += ["", f"Not label exports, reported by an earlier poll: {scan.already_ignored} files."]
    return "\n".join(lines)
