"""Scoring: the champion's class probabilities over the pool, in shards.

A scoring run writes ``scores/<model-version>/<run>/part-NNNNN.parquet``, one per
shard, and then ``_SUCCESS.json``; only runs with that marker are read, so a run that
died half-way is simply ignored. Memory per shard is bounded by ``scoring.shard_size``.
"""

from __future__ import annotations

import io
import threading
from pathlib import PurePosixPath
from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel

from activeflow import modeling, strategies
from activeflow.pool import PoolState, model_key, new_id, sample_key
from activeflow.settings import Settings
from activeflow.store import ObjectStore, get_json, put_json_if_absent

SCORE_SCHEMA = pa.schema(
    [("id", pa.string()), ("predicted", pa.string()), ("confidence", pa.float64())]
    + [(criterion, pa.float64()) for criterion in strategies.CRITERIA]
)


class ScoringError(ValueError):
    """Scoring cannot run (no champion) or its results cannot be used."""


class ScoringPlan(BaseModel):
    run_id: str
    model_version: str
    shards: list[list[str]]  # sample keys, so a shard needs nothing else to find its images

    @property
    def total(self) -> int:
        return sum(len(shard) for shard in self.shards)


def plan_scoring(state: PoolState, shard_size: int) -> ScoringPlan:
    """Split every unlabelled, unqueued sample into shards for the champion to score."""
    if state.champion is None:
        raise ScoringError("no champion model yet: run `activeflow retrain` on a labelled seed set")
    candidates = [sample_key(sid, state.samples[sid].ext) for sid in state.unlabelled]
    shards = [candidates[i : i + shard_size] for i in range(0, len(candidates), shard_size)]
    return ScoringPlan(run_id=new_id("s"), model_version=state.champion.version, shards=shards)


def run_prefix(model_version: str, run_id: str) -> str:
    return f"scores/{model_version}/{run_id}/"


_MODELS: dict[tuple[str, str], tuple[object, threading.Lock]] = {}
_MODELS_LOCK = threading.Lock()


def _loaded_model(store: ObjectStore, version: str) -> tuple[object, threading.Lock]:
    """Load each model version once per process, however many shards it scores."""
    key = (store.uri, version)
    with _MODELS_LOCK:
        if key not in _MODELS:
            _MODELS.clear()  # only the champion being scored is worth keeping
            _MODELS[key] = (modeling.model_from_bytes(store.get(model_key(version))), threading.Lock())
        return _MODELS[key]


def score_shard(
    store: ObjectStore,
    settings: Settings,
    model_version: str,
    run_id: str,
    shard_index: int,
    keys: Sequence[str],
) -> int:
    """Score one shard of sample keys and write its parquet part; returns how many."""
    model, lock = _loaded_model(store, model_version)
    blobs = [store.get(key) for key in keys]
    sample_ids = [PurePosixPath(key).stem for key in keys]
    pixels = modeling.decode_images(blobs, settings.model.image_size)
    with lock:  # one predict at a time per model: Keras builds its predict function lazily
        probs = modeling.predict_proba(model, pixels, settings.model.batch_size)
    table = scores_table(sample_ids, probs, settings.data.classes)
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    store.put(f"{run_prefix(model_version, run_id)}part-{shard_index:05d}.parquet", buffer.getvalue())
    return len(sample_ids)


def scores_table(sample_ids: Sequence[str], probs: np.ndarray, classes: Sequence[str]) -> pa.Table:
    probs = strategies.validate_probabilities(probs)  # [n, C]
    if len(classes) != probs.shape[1]:
        raise ScoringError(
            f"the model has {probs.shape[1]} outputs but data.classes lists {len(classes)}"
        )
    top = probs.argmax(axis=1)
    columns = {
        "id": pa.array(list(sample_ids), pa.string()),
        "predicted": pa.array([classes[i] for i in top], pa.string()),
        "confidence": pa.array(probs[np.arange(len(top)), top]),
    }
    for criterion in strategies.CRITERIA:
        columns[criterion] = pa.array(strategies.score(criterion, probs))
    return pa.table(columns, schema=SCORE_SCHEMA)


def commit_scores(store: ObjectStore, plan: ScoringPlan, scored: int) -> None:
    if scored != plan.total:
        raise ScoringError(f"scored {scored} of {plan.total} samples; run {plan.run_id} is incomplete")
    put_json_if_absent(
        store,
        f"{run_prefix(plan.model_version, plan.run_id)}_SUCCESS.json",
        {"run_id": plan.run_id, "model_version": plan.model_version, "scored": scored},
    )


def latest_scores(store: ObjectStore, model_version: str) -> pa.Table | None:
    """The newest complete scoring run of ``model_version``, or None."""
    markers = [k for k in store.list(f"scores/{model_version}/") if k.endswith("/_SUCCESS.json")]
    if not markers:
        return None
    run_id = get_json(store, markers[-1])["run_id"]
    prefix = run_prefix(model_version, run_id)
    parts = [
        pq.read_table(io.BytesIO(store.get(key)))
        for key in store.list(prefix)
        if key.endswith(".parquet")
    ]
    if not parts:
        return SCORE_SCHEMA.empty_table()
    return pa.concat_tables(parts)
