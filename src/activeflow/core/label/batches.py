"""Labelling batches: how many labels a run may ask for, which samples, and the files
labellers get. A batch exists once its manifest does; the manifest is written last with
a conditional create, so a crash before it leaves no half-made batch behind."""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path, PurePosixPath
from urllib.parse import quote

import numpy as np
import pyarrow as pa
from pydantic import BaseModel

from activeflow.core.label import labelling
from activeflow.core.score import selection, strategies
from activeflow.core.score.scoring import ScoringError, has_scores, stored_columns
from activeflow.core.storage.catalog import retry_on_conflict
from activeflow.core.storage.pool import (
    BATCH_FILES,
    BatchItemRecord,
    BatchManifest,
    BatchRelease,
    PoolState,
    batch_file_key,
    load_state,
    manifest_rows,
    new_id,
    utc_now,
)
from activeflow.core.storage.store import LocalStore, ObjectStore
from activeflow.settings import Settings, SettingsError, required_classes

LABEL_STUDIO_FILE = BATCH_FILES["label_studio"]
CSV_FILE = BATCH_FILES["csv"]
CONFIG_FILE = BATCH_FILES["label_config"]


class ExportResult(BaseModel):
    batch_id: str | None
    size: int
    files: dict[str, str]
    reason: str
    label_studio: dict[str, int] | None = None  # project id and tasks pushed, when configured


def batch_size(state: PoolState, settings: Settings) -> int:
    """Never above the per-run budget, what remains of the total, or the pool."""
    remaining = state.budget_remaining(settings.budget.total)
    limits = [settings.budget.per_run, state.unlabelled_count]
    if remaining is not None:
        limits.append(remaining)
    return max(min(limits), 0)


def select_batch(
    store: ObjectStore, state: PoolState, settings: Settings, model_version: str | None
) -> list[BatchItemRecord]:
    """Pick up to the budget from the unlabelled pool with the configured strategy, ranked
    by ``model_version``'s scores; with no model (no champion yet) a seeded random cold start.
    """
    k = batch_size(state, settings)
    if k == 0:
        return []
    # A different seed per batch, so random batches do not repeat one another's order.
    rng = np.random.default_rng([settings.strategy.seed, len(state.batches)])
    if model_version is None:
        candidates = state.unlabelled
        chosen = strategies.select_top(rng.random(len(candidates)), k)
        return [BatchItemRecord(sample_id=sid, score=0.0) for sid in candidates.take(chosen).to_pylist()]

    found = selection.stream_candidates(store, model_version, settings, state.taken, k, rng)
    if found is None:
        raise _no_scores(store, model_version, settings.strategy.name)
    # The strategy's picks plus a random slice of strategy.random_fraction (see selection.py).
    return selection.select_from_scores(store, state, settings, found.top, k, rng, found.sample)


def _no_scores(store: ObjectStore, version: str, strategy: str) -> ScoringError:
    if stored_columns(strategy) and has_scores(store, version):
        needs = sorted(strategies.REQUIREMENTS[strategy] & {"embeddings", "mc_probs"})
        return ScoringError(
            f"strategy {strategy} needs {', '.join(needs)}, but no complete scoring run of "
            f"champion {version} stored them: run `activeflow score` with strategy.name = {strategy}"
        )
    return ScoringError(f"no complete scoring run for champion {version}: run `activeflow score` first")


def _strategy_named(state: PoolState, settings: Settings, model_version: str | None) -> str:
    if model_version is None:
        return "random-cold-start"
    return "random-warm-start" if selection.warming_up(state, settings) else settings.strategy.name


def write_batch(
    store: ObjectStore,
    state: PoolState,
    settings: Settings,
    items: list[BatchItemRecord],
    request_id: str | None,
    model_version: str | None,
) -> BatchManifest:
    """Write the labellers' files, then commit the batch: one serial catalog commit that
    is its selection and its budget spend. Files of a batch whose commit lost a race are
    unreachable (no catalog row names them) and are removed."""
    manifest = BatchManifest(
        batch_id=new_id("b"),
        created_at=utc_now(),
        strategy=_strategy_named(state, settings, model_version),
        model_version=model_version,
        budget_per_run=settings.budget.per_run,
        budget_total=settings.budget.total,
        items=items,
        request_id=request_id,
    )
    files = _labellers_files(store, settings, manifest, *state.keys_and_sources(manifest.sample_ids))
    for name, content in files.items():  # all made before any is written
        store.put(batch_file_key(manifest.batch_id, name), content)
    try:
        if settings.budget.total is not None:  # late labels spend too: see Catalog.advance
            state.catalog.advance("labels", after=state.sequences["labels"])
        state.catalog.append("batch_items", manifest_rows(manifest), after=state.sequences["batch_items"])
    except BaseException:
        for name in files:
            store.delete(batch_file_key(manifest.batch_id, name))
        raise
    return manifest


def _labellers_files(
    store: ObjectStore, settings: Settings, manifest: BatchManifest, keys: list[str], sources: list[str]
) -> dict[str, bytes]:
    expiry = settings.labelling.url_expiry_hours * 3600

    def export_items(link: Callable[[str], str]) -> list[labelling.BatchItem]:
        return [
            labelling.BatchItem(
                sample_id=item.sample_id,
                image_url=link(key),
                predicted=item.predicted,
                score=item.score,
                confidence=item.confidence,
                source=source,
            )
            for item, key, source in zip(manifest.items, keys, sources, strict=True)
        ]

    return {
        LABEL_STUDIO_FILE: labelling.label_studio_tasks(
            export_items(lambda key: label_studio_image_url(store, key, settings)),
            batch_id=manifest.batch_id,
            model_version=manifest.model_version,
        ),
        CSV_FILE: labelling.batch_csv(
            export_items(lambda key: store.presigned_url(key, expires_s=expiry))
        ),
        CONFIG_FILE: labelling.label_studio_config(required_classes(settings)).encode(),
    }


def label_studio_image_url(store: ObjectStore, key: str, settings: Settings) -> str:
    """A link Label Studio can open: a presigned URL for S3, or a local-files serving path
    (``/data/local-files/?d=...``, relative to LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT)."""
    if not isinstance(store, LocalStore):
        return store.presigned_url(key, expires_s=settings.labelling.url_expiry_hours * 3600)
    root = Path(settings.labelling.local_files_root or store.root)
    relative = os.path.relpath(store.url(key), root.expanduser().resolve())
    if relative.startswith(".."):
        raise SettingsError(
            f"labelling.local_files_root {str(root)!r} does not contain the store {store.uri!r}"
        )
    return "/data/local-files/?d=" + quote(PurePosixPath(relative).as_posix())


def release_stale_batches(
    store: ObjectStore, state: PoolState, settings: Settings, now: datetime | None = None
) -> list[BatchRelease]:
    """Send the unlabelled samples of batches open longer than
    ``labelling.release_after_hours`` back to the pool, in one serial catalog commit."""
    hours = settings.labelling.release_after_hours
    if hours is None:
        return []
    now = now or datetime.now(UTC)
    releases = []
    for batch_id in state.open_batches:
        age = now - datetime.fromisoformat(state.batches[batch_id].created_at)
        if age < timedelta(hours=hours):
            continue
        releases.append(
            BatchRelease(
                batch_id=batch_id,
                released_at=now.isoformat(),
                reason=f"open {age.total_seconds() / 3600:.1f} h, longer than {hours:g} h",
                returned=state.waiting(batch_id),
            )
        )
    if releases:
        rows = pa.Table.from_pylist([release.model_dump() for release in releases])
        state.catalog.append("releases", rows, after=state.sequences["releases"])
    return releases


def export_result(store: ObjectStore, manifest: BatchManifest | None, reason: str) -> ExportResult:
    if manifest is None:
        return ExportResult(batch_id=None, size=0, files={}, reason=reason)
    files = {k: v for k, v in manifest.files(store).items() if k in ("label_studio", "csv")}
    return ExportResult(batch_id=manifest.batch_id, size=len(manifest.items), files=files, reason=reason)


def empty_batch_reason(state: PoolState, settings: Settings) -> str:
    if state.budget_remaining(settings.budget.total) == 0:
        return f"total budget of {settings.budget.total} labels is spent"
    return "no unlabelled samples left in the pool"


def export_batch(
    store: ObjectStore,
    settings: Settings,
    request_id: str | None = None,
    *,
    model_version: str | None = None,
) -> ExportResult:
    """Select the next batch within budget and commit it; an empty selection writes nothing.

    Concurrent exports are serialised by the catalog: one that lost the race reselects on
    the new state, so batches never overlap and never overspend. ``request_id`` makes a
    retry idempotent: an export of the same request returns the batch it already made.
    ``model_version`` ranks by that model's scores instead of the champion's: a run that
    scored with the champion keeps its scores when a retrain is promoted meanwhile."""
    required_classes(settings)  # labellers need the class list: refuse before any work

    def attempt() -> ExportResult:
        state = load_state(store)
        done = _batch_of_request(state, request_id)
        if done is not None:
            return export_result(store, done, f"{done.strategy}: already exported by this request")
        if release_stale_batches(store, state, settings):  # their samples are back in the pool
            state = load_state(store)
        ranking = model_version or (state.champion.version if state.champion else None)
        items = select_batch(store, state, settings, ranking)
        if not items:
            return export_result(store, None, empty_batch_reason(state, settings))
        manifest = write_batch(store, state, settings, items, request_id, ranking)
        return export_result(
            store, manifest, f"{manifest.strategy}: {len(items)} of budget {settings.budget.per_run}"
        )

    return retry_on_conflict(attempt)


def _batch_of_request(state: PoolState, request_id: str | None) -> BatchManifest | None:
    if request_id is None:
        return None
    return next((m for m in state.batches.values() if m.request_id == request_id), None)
