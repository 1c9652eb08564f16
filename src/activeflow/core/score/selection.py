"""Choosing a batch from the champion's scores, and what its random slice tells us.

``select_from_scores`` turns a scoring run into batch items: ``strategies.select`` picks the
strategy's part of the batch from ``PoolOutputs`` built out of the stored scores (plus, where
``strategies.REQUIREMENTS`` asks, the champion's per-class test errors or the embeddings of the
labelled samples), and a slice of ``strategy.random_fraction`` is drawn uniformly from the rest
of the pool and flagged ``random_slice``. Once those items are labelled,
``estimate_pool_accuracy`` compares the model's predictions with the labels: an unbiased
estimate of its accuracy on the pool, next to its accuracy on the held-out test set.

Core module: no Prefect. Everything random comes from the Generator the caller passes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel

from activeflow.core.score import scoring, strategies
from activeflow.core.storage.pool import BatchItemRecord, BatchManifest, ImportedLabel, PoolState
from activeflow.core.storage.store import ObjectNotFound, ObjectStore
from activeflow.core.train import training
from activeflow.settings import Settings

# Strategies whose own per-sample score is shown as a batch item's score; the others (random
# and the batch-aware ones, which choose by position in the batch) show the margin score.
_OWN_SCORE = ("least_confidence", "margin", "entropy", "ratio", "bald")


def class_errors(metrics: training.ModelMetrics) -> np.ndarray:
    """Error rate per class [C] (``1 - accuracy`` on the test set), in the model's class order.

    A class without test samples (accuracy None) gets the mean error of the others; if no class
    has test samples, every class gets 1, so quotas are even."""
    accuracy = [metrics.per_class_accuracy.get(name) for name in metrics.classes]
    known = [1.0 - a for a in accuracy if a is not None]
    fill = float(np.mean(known)) if known else 1.0
    return np.array([fill if a is None else 1.0 - a for a in accuracy])


def pool_outputs(
    store: ObjectStore, state: PoolState, settings: Settings, table: pa.Table
) -> strategies.PoolOutputs:
    """What ``settings.strategy.name`` needs, for the rows of ``table`` (the champion's scores
    of the candidates). Raises ScoringError naming what is missing and how to get it."""
    name = settings.strategy.name
    needs = strategies.REQUIREMENTS[name]
    version = state.champion.version if state.champion else None
    probs = scoring.probs_of(table)
    if probs is None:
        raise scoring.ScoringError(
            f"the scoring run of champion {version} has no class probabilities (it predates "
            "them): run `activeflow score` again"
        )
    fields: dict[str, np.ndarray | None] = {}
    if "embeddings" in needs:
        fields["embeddings"] = _stored(scoring.embeddings_of(table), "embeddings", name, version)
        if name == "coreset":  # k-center greedy starts from what the labelled samples cover
            fields["labelled_embeddings"] = _labelled_embeddings(store, state, settings, version)
    if "mc_probs" in needs:
        mc = scoring.mc_probs_of(table, probs.shape[1])
        fields["mc_probs"] = _stored(mc, "mc_probs", name, version)
    if "class_errors" in needs:
        fields["class_errors"] = _champion_class_errors(store, version, probs.shape[1])
    return strategies.PoolOutputs(probs=probs, **fields)


def _stored(value: np.ndarray | None, field: str, name: str, version: str | None) -> np.ndarray:
    if value is None:
        raise scoring.ScoringError(
            f"strategy {name} needs {field}, but the latest scoring run of champion {version} "
            f"did not store them: run `activeflow score` with strategy.name = {name}"
        )
    return value


def _labelled_embeddings(
    store: ObjectStore, state: PoolState, settings: Settings, version: str | None
) -> np.ndarray | None:
    """Embeddings [m, d] of the training samples under the model that scored the pool."""
    if version is None or not state.labelled:
        return None  # nothing covered yet: coreset starts from a seeded random centre
    keys = state.sample_keys(sorted(state.labelled))
    return scoring.embed_samples(store, settings, version, keys)


def _champion_class_errors(store: ObjectStore, version: str | None, num_classes: int) -> np.ndarray:
    try:
        metrics = training.load_metrics(store, version or "")
    except ObjectNotFound:
        raise scoring.ScoringError(
            f"class-balanced needs the champion's per-class test accuracy, but model {version} "
            "has no metrics.json: retrain to get a champion with metrics"
        ) from None
    errors = class_errors(metrics)
    if errors.shape[0] != num_classes:
        raise scoring.ScoringError(
            f"model {version} was evaluated on {errors.shape[0]} classes but scores {num_classes}"
        )
    return errors


def _display_scores(name: str, table: pa.Table, outputs: strategies.PoolOutputs) -> np.ndarray:
    if name in strategies.CRITERIA:
        return table.column(name).to_numpy()
    if name == "ratio":
        return strategies.ratio(outputs.probs)
    if name == "bald":
        return table.column(scoring.BALD_COLUMN).to_numpy()
    return table.column("margin").to_numpy()


class Candidates(NamedTuple):
    """What an export selects from: the ``top`` scored rows by the strategy's prefilter, and
    (when the pool is larger than that) a uniform ``sample`` of the pool for the random slice.
    Both are sorted by id; None for ``sample`` means "draw the slice from ``top``"."""

    top: pa.Table
    sample: pa.Table | None


def candidate_count(settings: Settings, k: int) -> int:
    """How many of the most uncertain samples a batch of ``k`` is chosen from."""
    return settings.strategy.candidates or max(CANDIDATES_FLOOR, CANDIDATES_PER_LABEL * k)


CANDIDATES_PER_LABEL, CANDIDATES_FLOOR = 20, 1000


def stream_candidates(
    store: ObjectStore,
    version: str,
    settings: Settings,
    taken: pa.Array,
    k: int,
    rng: np.random.Generator,
) -> Candidates | None:
    """Read the model's score parts one at a time, skipping ``taken`` samples (queued or
    labelled since they were scored), and keep the ``candidate_count`` rows ranked highest by
    the strategy's prefilter plus a uniform sample for the random slice. Memory is one part
    plus what is kept, whatever the pool's size. None when the model has no usable scores."""
    name = settings.strategy.name
    parts = scoring.score_parts(store, version, scoring.stored_columns(name))
    if not parts and not scoring.has_scores(store, version, scoring.stored_columns(name)):
        return None
    keep = candidate_count(settings, k)
    top, sample = _Keeper(keep), _Keeper(2 * k)
    rng = rng.spawn(1)[0]  # its own stream: the caller's draws stay what they were
    for key in parts:
        part = scoring.read_part(store, key, scoring.strategy_columns(name))
        part = part.filter(pc.invert(pc.is_in(part.column("id"), value_set=taken)))
        if part.num_rows:
            top.offer(part, _prefilter_key(name, part, rng))
            sample.offer(part, rng.random(part.num_rows))
    best = top.table()
    if best is None:
        return Candidates(top=scoring.SCORE_SCHEMA.empty_table(), sample=None)
    # Everything fitted in ``top``: the slice is drawn from all of it, as it always was.
    uniform = None if top.seen <= keep else sample.table()
    return Candidates(top=best, sample=uniform)


def _prefilter_key(name: str, part: pa.Table, rng: np.random.Generator) -> np.ndarray:
    """Higher = kept: the strategy's own score where it has one; random priorities for
    random; the margin score for the batch-aware strategies (diversity among the uncertain)."""
    if name in strategies.CRITERIA:
        return part.column(name).to_numpy()
    if name == "ratio":
        return strategies.ratio(scoring.probs_of(part))
    if name == "bald":
        return part.column(scoring.BALD_COLUMN).to_numpy()
    if name == "random":
        return rng.random(part.num_rows)
    return part.column("margin").to_numpy()


class _Keeper:
    """The ``size`` rows with the highest keys seen so far (ties: the earlier row)."""

    def __init__(self, size: int) -> None:
        self.size, self.seen = size, 0
        self._rows: pa.Table | None = None
        self._keys = np.empty(0)

    def offer(self, rows: pa.Table, keys: np.ndarray) -> None:
        self.seen += rows.num_rows
        if self._rows is not None:
            common = [c for c in self._rows.column_names if c in rows.column_names]
            rows = pa.concat_tables([self._rows.select(common), rows.select(common)])
            keys = np.concatenate([self._keys, keys])
        chosen = np.sort(strategies.select_top(keys, self.size))
        self._rows, self._keys = rows.take(chosen), keys[chosen]

    def table(self) -> pa.Table | None:
        return None if self._rows is None else self._rows.sort_by("id")


def select_from_scores(  # noqa: PLR0913 (the pool, its candidates and the draw)
    store: ObjectStore,
    state: PoolState,
    settings: Settings,
    table: pa.Table,
    k: int,
    rng: np.random.Generator,
    slice_from: pa.Table | None = None,
) -> list[BatchItemRecord]:
    """Up to ``k`` batch items from the scored candidates in ``table`` (one row each).

    ``split_budget`` divides ``k`` into the strategy's part, chosen by ``strategies.select``, and
    a random slice drawn uniformly from the rows the strategy did not choose (flagged
    ``random_slice``, listed after the strategy's picks): from ``slice_from`` when given (a
    uniform sample of a pool larger than ``table``), else from ``table``. ``rng`` drives
    both, so the same seed and scores give the same batch."""
    if table.num_rows == 0 or k <= 0:
        return []  # nothing scored is still unlabelled
    name = settings.strategy.name
    outputs = pool_outputs(store, state, settings, table)
    k = min(k, outputs.n)
    k_strategy, k_random = strategies.split_budget(k, settings.strategy.random_fraction)
    if warming_up(state, settings):
        k_strategy, k_random = 0, k
    picked = strategies.select(name, outputs, k_strategy, seed=rng)  # [k_strategy]
    items = _items(table, _display_scores(name, table, outputs), picked, random_slice=False)
    source = table if slice_from is None else slice_from
    chosen = pc.is_in(source.column("id"), value_set=table.column("id").take(pa.array(picked)))
    rest = np.flatnonzero(~chosen.to_numpy(zero_copy_only=False))  # ascending
    drawn = rng.choice(rest, size=min(k_random, len(rest)), replace=False) if k_random else rest[:0]
    if source is not table:
        outputs = strategies.PoolOutputs(probs=scoring.probs_of(source))
    return items + _items(source, _display_scores(name, source, outputs), drawn, random_slice=True)


def warming_up(state: PoolState, settings: Settings) -> bool:
    """Whether a batch is drawn wholly at random: fewer training labels than
    ``strategy.warm_start_per_class`` per class (the configured classes, else those labelled)."""
    per_class = settings.strategy.warm_start_per_class
    if per_class == 0:
        return False  # off: and the labels, a catalog read, are not needed
    classes = len(settings.data.classes) or len(set(state.labelled.values()))
    return len(state.labelled) < per_class * max(classes, 1)


def _items(
    table: pa.Table, scores: np.ndarray, positions: np.ndarray, *, random_slice: bool
) -> list[BatchItemRecord]:
    ids = table.column("id").to_pylist()
    predicted = table.column("predicted").to_pylist()
    confidence = table.column("confidence").to_numpy()
    return [
        BatchItemRecord(
            sample_id=ids[i],
            score=float(scores[i]),
            predicted=predicted[i],
            confidence=float(confidence[i]),
            random_slice=random_slice,
        )
        for i in positions.tolist()
    ]


# The unbiased estimate ----------------------------------------------------------------------


class PoolAccuracyEstimate(BaseModel):
    """The selecting model's accuracy on a batch's random slice, once it is labelled.

    The slice is a uniform sample of the pool minus the strategy's picks, so ``accuracy`` is an
    unbiased estimate of the model's accuracy there (the picks, at most a batch, are left out:
    on a large pool that barely matters). With a few items the interval is wide; read it."""

    batch_id: str
    model_version: str | None
    random_slice: int  # items of the batch drawn at random
    answered: int  # of those, labelled by the import
    correct: int  # answered items whose label is the model's prediction
    accuracy: float | None  # correct / answered; None when nothing was answered
    low: float | None  # Wilson 95 % interval
    high: float | None
    test_accuracy: float | None  # the same model on the held-out test set
    summary: str


def wilson_interval(correct: int, n: int, z: float = 1.96) -> tuple[float, float] | None:
    """Wilson score interval for a proportion ``correct / n`` (None for n == 0): unlike the
    normal approximation it stays inside [0, 1] and is sensible for a handful of items."""
    if n == 0:
        return None
    p = correct / n
    denominator = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def estimate_pool_accuracy(
    manifest: BatchManifest,
    labels: Sequence[ImportedLabel],
    test_accuracy: float | None = None,
) -> PoolAccuracyEstimate:
    """Accuracy of the model that selected ``manifest`` on its labelled random-slice items
    (its stored prediction against the imported label)."""
    label_of = {record.sample_id: record.label for record in labels}
    slice_items = [item for item in manifest.items if item.random_slice]
    answered = [item for item in slice_items if item.sample_id in label_of]
    correct = sum(item.predicted == label_of[item.sample_id] for item in answered)
    accuracy = correct / len(answered) if answered else None
    interval = wilson_interval(correct, len(answered))
    if accuracy is None:
        summary = (
            f"batch {manifest.batch_id}: no labelled random-slice items"
            + ("" if slice_items else " (strategy.random_fraction is 0 or the model was a cold start)")
            + ", so no unbiased pool estimate"
        )
    else:
        low, high = interval
        summary = (
            f"pool accuracy {accuracy:.1%} on {len(answered)} random-slice item(s) "
            f"(95 % interval {low:.0%}-{high:.0%})"
            + (f" vs test accuracy {test_accuracy:.1%}" if test_accuracy is not None else "")
            + f" for model {manifest.model_version}"
        )
    return PoolAccuracyEstimate(
        batch_id=manifest.batch_id,
        model_version=manifest.model_version,
        random_slice=len(slice_items),
        answered=len(answered),
        correct=correct,
        accuracy=accuracy,
        low=interval[0] if interval else None,
        high=interval[1] if interval else None,
        test_accuracy=test_accuracy,
        summary=summary,
    )


def batch_pool_estimate(store: ObjectStore, state: PoolState, batch_id: str) -> PoolAccuracyEstimate:
    """``estimate_pool_accuracy`` for a batch in the store, with its model's test accuracy."""
    if batch_id not in state.batches:
        raise ValueError(f"batch {batch_id!r} does not exist in the store")
    manifest = state.batches[batch_id]
    test_accuracy = None
    if manifest.model_version is not None:
        try:
            test_accuracy = training.load_metrics(store, manifest.model_version).accuracy
        except ObjectNotFound:
            test_accuracy = None  # a model without metrics: the estimate stands alone
    return estimate_pool_accuracy(manifest, state.batch_labels.get(batch_id, []), test_accuracy)
