"""Scoring: the champion's class probabilities over the pool, in shards.

A scoring run writes ``scores/<model-version>/<run>/part-NNNNN.parquet``, one per
shard, and then ``_SUCCESS.json``; only runs with that marker are read, so a run that
died half-way is simply ignored. A shard's images are fetched and decoded by
``storage.max_concurrency`` threads, that many images ahead of the model
(``modeling.decoded_chunks``), so memory per shard is a chunk of pixels and the shard's
outputs; a flow's shards run on ``schedule.max_workers`` threads, so one shard's reads go
on while another's forward pass holds the model.
Runs are incremental: a run scores only the unlabelled samples its model has not scored
in an earlier complete run (that stored what the strategy needs), and the model's scores
are the union of its runs. A new champion starts from nothing, so it scores everything.

Besides the per-sample criteria, every part holds the class probabilities (``probs``, one
fixed-size list of C per row), so any strategy can select from them. What a strategy needs
beyond that (``strategies.REQUIREMENTS``) is stored only when ``strategy.name`` asks for it, so
the plain criteria cost no extra forward passes: ``embedding`` (the penultimate features, d
float32) for coreset / badge / margin-diverse, and ``mc_probs`` (T x C float32, pass-major) with
its ``bald`` score for bald. Columns in one row always describe the same sample, so filtering
and sorting a table keeps them aligned.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import PurePosixPath
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import BaseModel

from activeflow.core.score import (
    strategies,  # modeling (TensorFlow, seconds to import) only where a model runs
)
from activeflow.core.storage.pool import PoolState, ids_not_in, load_state, model_key, new_id, sort_ids
from activeflow.core.storage.store import ObjectStore, get_json, put_json_if_absent
from activeflow.settings import Settings

SCORE_SCHEMA = pa.schema(
    [("id", pa.string()), ("predicted", pa.string()), ("confidence", pa.float64())]
    + [(criterion, pa.float64()) for criterion in strategies.CRITERIA]
)
# Optional columns beyond SCORE_SCHEMA (their list sizes depend on the model).
PROBS_COLUMN = "probs"  # fixed_size_list<float64>[C]
EMBEDDING_COLUMN = "embedding"  # fixed_size_list<float32>[d]
MC_COLUMN = "mc_probs"  # fixed_size_list<float32>[T * C], pass t at [t * C, (t + 1) * C)
BALD_COLUMN = "bald"  # float64


class ScoringError(ValueError):
    """Scoring cannot run (no champion) or its results cannot be used."""


class ScoringPlan(BaseModel):
    run_id: str
    model_version: str
    shards: list[list[str]]  # sample keys, so a shard needs nothing else to find its images
    reused: int = 0  # unlabelled samples the model scored in an earlier run
    columns: list[str] = []  # the optional columns this run stores (see stored_columns)

    @property
    def total(self) -> int:
        return sum(len(shard) for shard in self.shards)


def stored_columns(strategy_name: str) -> list[str]:
    """The optional columns a scoring run stores for ``strategy_name``."""
    needs = strategies.REQUIREMENTS[strategy_name]
    return ([EMBEDDING_COLUMN] if "embeddings" in needs else []) + (
        [MC_COLUMN, BALD_COLUMN] if "mc_probs" in needs else []
    )


def plan_scoring(state: PoolState, settings: Settings) -> ScoringPlan:
    """Shards of the unlabelled, unqueued samples the champion has not scored yet."""
    if state.champion is None:
        raise ScoringError("no champion model yet: run `activeflow retrain` on a labelled seed set")
    version = state.champion.version
    columns = stored_columns(settings.strategy.name)
    unlabelled = state.unlabelled_unordered
    done = scored_ids(state.catalog.store, version, columns)
    todo = sort_ids(ids_not_in(unlabelled, done))
    candidates = state.sample_keys(todo.to_pylist())
    size = settings.scoring.shard_size
    shards = [candidates[i : i + size] for i in range(0, len(candidates), size)]
    return ScoringPlan(
        run_id=new_id("s"), model_version=version, shards=shards,
        reused=len(unlabelled) - len(todo), columns=columns,
    )


def run_prefix(model_version: str, run_id: str) -> str:
    return f"scores/{model_version}/{run_id}/"


_MODELS: dict[tuple[str, str], tuple[object, threading.Lock]] = {}
_MODELS_LOCK = threading.Lock()


def _loaded_model(store: ObjectStore, version: str) -> tuple[object, threading.Lock]:
    """Load each model version once per process, however many shards it scores."""
    from activeflow.core.score import modeling

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
    """Score one shard of sample keys and write its parquet part; returns how many.

    Images are fetched and decoded by ``store.max_concurrency`` threads, which keep that many
    reads in flight while the model works on a chunk; the forward passes of concurrent
    shards take turns on the model, their reads do not."""
    from activeflow.core.score import modeling

    model, lock = _loaded_model(store, model_version)
    needs = strategies.REQUIREMENTS[settings.strategy.name]
    passes = settings.strategy.mc_passes if "mc_probs" in needs else 0
    parts = []
    for chunk_index, pixels in enumerate(modeling.decoded_chunks(store, keys, settings.model.image_size)):
        with lock:  # one forward pass at a time per model: it already uses every core
            parts.append(modeling.forward_pool(
                model,
                pixels,
                settings.model.batch_size,
                embeddings="embeddings" in needs,
                mc_passes=passes,
                # Dropout masks differ per chunk and scoring run, yet a rerun repeats them.
                seed=[settings.strategy.seed, shard_index, chunk_index, *run_id.encode()],
            ))
    out = modeling.ForwardOutputs.concatenate(parts)
    sample_ids = [PurePosixPath(key).stem for key in keys]
    table = scores_table(
        sample_ids, out.probs, settings.data.classes, embeddings=out.embeddings, mc_probs=out.mc_probs
    )
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    store.put(f"{run_prefix(model_version, run_id)}part-{shard_index:05d}.parquet", buffer.getvalue())
    return len(sample_ids)


def scores_table(
    sample_ids: Sequence[str],
    probs: np.ndarray,
    classes: Sequence[str],
    *,
    embeddings: np.ndarray | None = None,
    mc_probs: np.ndarray | None = None,
) -> pa.Table:
    """The scores of one shard: SCORE_SCHEMA's columns, ``probs``, and ``embedding`` [n, d] /
    ``mc_probs`` [T, n, C] + ``bald`` when given."""
    outputs = strategies.PoolOutputs(probs=probs, embeddings=embeddings, mc_probs=mc_probs)
    probs = outputs.probs  # [n, C], validated
    if len(sample_ids) != outputs.n:
        raise ScoringError(f"{len(sample_ids)} sample ids for {outputs.n} rows of probabilities")
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
    table = pa.table(columns, schema=SCORE_SCHEMA)
    table = table.append_column(PROBS_COLUMN, _fixed_size_lists(probs, pa.float64()))
    if outputs.embeddings is not None:
        table = table.append_column(EMBEDDING_COLUMN, _fixed_size_lists(outputs.embeddings, pa.float32()))
    if outputs.mc_probs is not None:
        per_sample = outputs.mc_probs.transpose(1, 0, 2).reshape(outputs.n, -1)  # [n, T * C]
        table = table.append_column(MC_COLUMN, _fixed_size_lists(per_sample, pa.float32()))
        table = table.append_column(BALD_COLUMN, pa.array(strategies.bald(outputs.mc_probs)))
    return table


def _fixed_size_lists(rows: np.ndarray, value_type: pa.DataType) -> pa.FixedSizeListArray:
    rows = np.ascontiguousarray(rows, dtype=value_type.to_pandas_dtype())  # [n, w]
    return pa.FixedSizeListArray.from_arrays(pa.array(rows.reshape(-1), value_type), rows.shape[1])


def _matrix(table: pa.Table, column: str) -> np.ndarray | None:
    """A fixed-size list column as a [rows, w] array (no copy where Arrow allows), or None."""
    if column not in table.column_names:
        return None
    chunks = table.column(column).combine_chunks()  # fixed_size_list<...>[w]
    width = chunks.type.list_size
    return chunks.flatten().to_numpy(zero_copy_only=False).reshape(len(chunks), width)


def probs_of(table: pa.Table) -> np.ndarray | None:
    """Class probabilities [n, C] (float64) of a scores table, or None if not stored."""
    return _matrix(table, PROBS_COLUMN)


def embeddings_of(table: pa.Table) -> np.ndarray | None:
    """Penultimate-layer embeddings [n, d] (float32) of a scores table, or None if not stored."""
    return _matrix(table, EMBEDDING_COLUMN)


def mc_probs_of(table: pa.Table, num_classes: int) -> np.ndarray | None:
    """Monte-Carlo dropout passes [T, n, C] (float64, rows renormalised after float32 storage)
    of a scores table, or None if not stored."""
    flat = _matrix(table, MC_COLUMN)  # [n, T * C]
    if flat is None:
        return None
    passes = flat.shape[1] // num_classes
    mc = flat.reshape(flat.shape[0], passes, num_classes).transpose(1, 0, 2).astype(np.float64)
    return mc / mc.sum(axis=2, keepdims=True)  # [T, n, C]


def predict_classes(
    store: ObjectStore, settings: Settings, model_version: str, keys: Sequence[str]
) -> np.ndarray:
    """Predicted class indices [len(keys)] of the samples at ``keys`` under a model."""
    from activeflow.core.score import modeling

    def classes(model: Any, pixels: np.ndarray) -> np.ndarray:
        return modeling.predict_proba(model, pixels, settings.model.batch_size).argmax(axis=1)

    return _under_model(store, settings, model_version, keys, classes)


def embed_samples(
    store: ObjectStore, settings: Settings, model_version: str, keys: Sequence[str]
) -> np.ndarray:
    """Penultimate-layer embeddings [len(keys), d] of the samples at ``keys`` under a model."""
    from activeflow.core.score import modeling

    def embeddings(model: Any, pixels: np.ndarray) -> np.ndarray:
        return modeling.forward_pool(model, pixels, settings.model.batch_size, embeddings=True).embeddings

    return _under_model(store, settings, model_version, keys, embeddings)


def _under_model(
    store: ObjectStore,
    settings: Settings,
    model_version: str,
    keys: Sequence[str],
    forward: Callable[[Any, np.ndarray], np.ndarray],
) -> np.ndarray:
    """``forward(model, pixels)`` of the samples at ``keys``, one pass at a time per model."""
    from activeflow.core.score import modeling

    model, lock = _loaded_model(store, model_version)
    pixels = modeling.load_pixels(store, keys, settings.model.image_size)
    with lock:
        return forward(model, pixels)


def worth_scoring(status: Mapping[str, object]) -> bool:
    """Whether an export is worth scoring the pool for (``status`` as ``activeflow status``
    gives it): only with a champion and labels left in the total budget."""
    return status["champion"] is not None and status["budget_remaining"] != 0


def score_pool(store: ObjectStore, settings: Settings) -> ScoringPlan:
    """Plan a scoring run with the champion, score its shards one after another and commit
    it: the whole run without an orchestrator (flows/score.py runs the shards as tasks)."""
    plan = plan_scoring(load_state(store), settings)
    scored = sum(
        score_shard(store, settings, plan.model_version, plan.run_id, index, keys)
        for index, keys in enumerate(plan.shards)
    )
    commit_scores(store, plan, scored)
    return plan


def commit_scores(store: ObjectStore, plan: ScoringPlan, scored: int) -> None:
    if scored != plan.total:
        raise ScoringError(f"scored {scored} of {plan.total} samples; run {plan.run_id} is incomplete")
    put_json_if_absent(
        store,
        f"{run_prefix(plan.model_version, plan.run_id)}_SUCCESS.json",
        {"run_id": plan.run_id, "model_version": plan.model_version, "scored": scored,
         "columns": plan.columns},
    )


def _complete_runs(store: ObjectStore, model_version: str, columns: Sequence[str]) -> list[str]:
    """Prefixes of the complete runs of ``model_version`` that stored ``columns``, oldest
    first. (Runs from before incremental scoring do not say what they stored: they count as
    storing no optional column.)"""
    runs = []
    for marker in (k for k in store.list(f"scores/{model_version}/") if k.endswith("/_SUCCESS.json")):
        run = get_json(store, marker)
        if set(columns) <= set(run.get("columns", [])):
            runs.append(run_prefix(model_version, run["run_id"]))
    return runs


def has_scores(store: ObjectStore, model_version: str, columns: Sequence[str] = ()) -> bool:
    """Whether the model has a complete run that stored ``columns`` (its markers only)."""
    return bool(_complete_runs(store, model_version, columns))


def score_parts(store: ObjectStore, model_version: str, columns: Sequence[str] = ()) -> list[str]:
    """The parts of every complete run of ``model_version`` that stored ``columns``."""
    return [
        key
        for prefix in _complete_runs(store, model_version, columns)
        for key in store.list(prefix)
        if key.endswith(".parquet")
    ]


def read_part(store: ObjectStore, key: str, columns: Sequence[str] | None = None) -> pa.Table:
    """A score part: all its columns, or those of ``columns`` it has (optional ones such as
    ``probs`` are absent from older runs; callers that need them say so by name)."""
    with store.open(key) as file:
        part = pq.ParquetFile(file)
        names = None if columns is None else [c for c in columns if c in part.schema_arrow.names]
        return part.read(columns=names)


def strategy_columns(strategy_name: str) -> list[str]:
    """The score columns ``strategy_name`` selects from: never an embedding it does not use
    (128 floats a sample, most of a part's bytes)."""
    return [*SCORE_SCHEMA.names, PROBS_COLUMN, *stored_columns(strategy_name)]


def scored_ids(store: ObjectStore, model_version: str, columns: Sequence[str] = ()) -> pa.ChunkedArray:
    """Ids the model has scores for (with ``columns``), from the id column alone."""
    parts = [read_part(store, key, ["id"]).column("id") for key in score_parts(store, model_version, columns)]
    return pa.chunked_array([chunk for ids in parts for chunk in ids.chunks], pa.string())


def model_scores(store: ObjectStore, model_version: str, columns: Sequence[str] = ()) -> pa.Table | None:
    """The model's scores over its complete runs that stored ``columns`` (a sample scored
    twice keeps its newest score), or None if it has no such run."""
    if not has_scores(store, model_version, columns):
        return None
    tables = [read_part(store, key) for key in reversed(score_parts(store, model_version, columns))]
    if not tables:
        return SCORE_SCHEMA.empty_table()
    common = [name for name in tables[0].column_names if all(name in t.column_names for t in tables)]
    table = pa.concat_tables([t.select(common) for t in tables])
    rows = pa.table({"id": table.column("id"), "row": pa.array(np.arange(table.num_rows))})
    first = rows.group_by("id").aggregate([("row", "min")]).column("row_min")
    return table if len(first) == table.num_rows else table.take(first.take(pc.sort_indices(first)))
