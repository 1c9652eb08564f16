"""Labelling batches: how many labels a run may ask for, which samples, and the files
labellers get. A batch exists once its manifest does; the manifest is written last with
a conditional create, so a crash before it leaves no half-made batch behind."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel

from activeflow import labelling, strategies
from activeflow.pool import (
    BatchItemRecord,
    BatchManifest,
    PoolState,
    load_state,
    manifest_key,
    new_id,
    sample_key,
    utc_now,
)
from activeflow.scoring import ScoringError, latest_scores
from activeflow.settings import Settings, required_classes
from activeflow.store import ObjectStore, put_json_if_absent

LABEL_STUDIO_FILE = "tasks.json"
CSV_FILE = "tasks.csv"
CONFIG_FILE = "label_config.xml"


class ExportResult(BaseModel):
    batch_id: str | None
    size: int
    files: dict[str, str]
    reason: str


def batch_size(state: PoolState, settings: Settings) -> int:
    """Never above the per-run budget, what remains of the total, or the pool."""
    remaining = state.budget_remaining(settings.budget.total)
    limits = [settings.budget.per_run, len(state.unlabelled)]
    if remaining is not None:
        limits.append(remaining)
    return max(min(limits), 0)


def select_batch(store: ObjectStore, state: PoolState, settings: Settings) -> list[BatchItemRecord]:
    """Pick up to the budget from the unlabelled pool with the configured strategy.

    With no champion yet the batch is a seeded random cold start.
    """
    k = batch_size(state, settings)
    if k == 0:
        return []
    candidates = state.unlabelled
    # A different seed per batch, so random batches do not repeat one another's order.
    rng = np.random.default_rng([settings.strategy.seed, len(state.batches)])
    if state.champion is None:
        chosen = strategies.select_top(rng.random(len(candidates)), k)
        return [BatchItemRecord(sample_id=candidates[i], score=0.0) for i in chosen]

    table = _scores_of(store, state.champion.version, candidates)
    name = settings.strategy.name
    if name == "random":
        scores = rng.random(table.num_rows)
    else:
        scores = table.column(name).to_numpy()
    chosen = strategies.select_top(scores, k)
    ids = table.column("id").to_pylist()
    predicted = table.column("predicted").to_pylist()
    confidence = table.column("confidence").to_numpy()
    return [
        BatchItemRecord(
            sample_id=ids[i],
            score=float(scores[i]),
            predicted=predicted[i],
            confidence=float(confidence[i]),
        )
        for i in chosen
    ]


def _scores_of(store: ObjectStore, version: str, candidates: list[str]) -> pa.Table:
    table = latest_scores(store, version)
    if table is None:
        raise ScoringError(
            f"no complete scoring run for champion {version}: run `activeflow score` first"
        )
    keep = pa.array(sorted(set(candidates)), pa.string())
    # Scores for samples queued or labelled since the scoring run are stale: drop them.
    table = table.filter(pc.is_in(table.column("id"), value_set=keep))
    return table.sort_by("id")


def write_batch(
    store: ObjectStore, state: PoolState, settings: Settings, items: list[BatchItemRecord]
) -> BatchManifest:
    """Write the labellers' files, then the manifest that makes the batch exist."""
    batch_id = new_id("b")
    model_version = state.champion.version if state.champion else None
    export_items = [
        labelling.BatchItem(
            sample_id=item.sample_id,
            image_url=store.presigned_url(
                sample_key(item.sample_id, state.samples[item.sample_id].ext),
                expires_s=7 * 24 * 3600,  # S3's longest presign; labelling takes days
            ),
            predicted=item.predicted,
            score=item.score,
            confidence=item.confidence,
        )
        for item in items
    ]
    files = {
        LABEL_STUDIO_FILE: labelling.label_studio_tasks(
            export_items, batch_id=batch_id, model_version=model_version
        ),
        CSV_FILE: labelling.batch_csv(export_items),
        CONFIG_FILE: labelling.label_studio_config(required_classes(settings)).encode(),
    }
    prefix = f"batches/{batch_id}/"
    for name, content in files.items():  # all made before any is written
        store.put(prefix + name, content)
    manifest = BatchManifest(
        batch_id=batch_id,
        created_at=utc_now(),
        strategy=settings.strategy.name if state.champion else "random-cold-start",
        model_version=model_version,
        budget_per_run=settings.budget.per_run,
        budget_total=settings.budget.total,
        items=items,
        files={
            "label_studio": store.url(prefix + LABEL_STUDIO_FILE),
            "csv": store.url(prefix + CSV_FILE),
            "label_config": store.url(prefix + CONFIG_FILE),
        },
    )
    put_json_if_absent(store, manifest_key(batch_id), manifest.model_dump())
    return manifest


def export_result(manifest: BatchManifest | None, reason: str) -> ExportResult:
    if manifest is None:
        return ExportResult(batch_id=None, size=0, files={}, reason=reason)
    files = {k: v for k, v in manifest.files.items() if k in ("label_studio", "csv")}
    return ExportResult(batch_id=manifest.batch_id, size=len(manifest.items), files=files, reason=reason)


def empty_batch_reason(state: PoolState, settings: Settings) -> str:
    if state.budget_remaining(settings.budget.total) == 0:
        return f"total budget of {settings.budget.total} labels is spent"
    return "no unlabelled samples left in the pool"


def export_batch(store: ObjectStore, settings: Settings) -> ExportResult:
    """Select the next batch within budget and write it; an empty selection writes nothing."""
    required_classes(settings)  # labellers need the class list: refuse before any work
    state = load_state(store)
    items = select_batch(store, state, settings)
    if not items:
        return export_result(None, empty_batch_reason(state, settings))
    manifest = write_batch(store, state, settings, items)
    return export_result(manifest, f"{manifest.strategy}: {len(items)} of budget {settings.budget.per_run}")
