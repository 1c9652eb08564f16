"""Retraining: train a candidate on every training label, evaluate it on the held-out
test set, store it with its metrics, and promote it only if it is not worse."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from pydantic import BaseModel

from activeflow import modeling
from activeflow.pool import (
    PoolState,
    Promotion,
    current_champion,
    metrics_key,
    model_key,
    new_id,
    promotion_key,
    sample_key,
    utc_now,
)
from activeflow.settings import Settings, required_classes
from activeflow.store import ObjectStore, get_json, put_json_if_absent


class TrainingError(ValueError):
    """Retraining cannot start: no classes, no labels, or no test set."""


class ModelMetrics(BaseModel):
    version: str
    created_at: str
    classes: list[str]
    accuracy: float
    per_class_accuracy: dict[str, float | None]
    confusion_matrix: list[list[int]]
    labels_used: int
    test_size: int
    history: modeling.TrainingHistory
    model_settings: dict[str, object]


class PromotionDecision(BaseModel):
    version: str
    promoted: bool
    accuracy: float
    labels_used: int
    champion_version: str | None
    champion_accuracy: float | None
    reason: str


def load_examples(
    store: ObjectStore,
    state: PoolState,
    labels: Mapping[str, str],
    classes: Sequence[str],
    image_size: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Pixels [n, size, size, 3] and class indices [n] for labelled sample ids."""
    index = {name: i for i, name in enumerate(classes)}
    unknown = sorted({label for label in labels.values() if label not in index})
    if unknown:
        raise TrainingError(f"labels {unknown} are not in data.classes {list(classes)}")
    ids = sorted(labels)
    blobs = [store.get(sample_key(sid, state.samples[sid].ext)) for sid in ids]
    x = modeling.decode_images(blobs, image_size)
    y = np.array([index[labels[sid]] for sid in ids], dtype=np.int64)
    return x, y


def train_candidate(store: ObjectStore, state: PoolState, settings: Settings) -> ModelMetrics:
    """Train on all training labels, evaluate on the test set, store model and metrics."""
    classes = required_classes(settings)
    if not state.labelled:
        raise TrainingError("no training labels yet: ingest a labelled seed set or import labels")
    if not state.test:
        raise TrainingError(
            "no held-out test set: ingest one with `activeflow ingest DIR --labelled --split test`"
        )
    size = settings.model.image_size
    x_train, y_train = load_examples(store, state, state.labelled, classes, size)
    x_test, y_test = load_examples(store, state, state.test, classes, size)

    model = modeling.build_classifier(settings.model, len(classes))
    history = modeling.train_two_phase(model, x_train, y_train, settings.model)
    probs = modeling.predict_proba(model, x_test, settings.model.batch_size)
    evaluation = modeling.evaluate(probs, y_test, classes)

    version = new_id("m")
    store.put(model_key(version), modeling.model_to_bytes(model))
    metrics = ModelMetrics(
        version=version,
        created_at=utc_now(),
        classes=classes,
        accuracy=evaluation.accuracy,
        per_class_accuracy=evaluation.per_class_accuracy,
        confusion_matrix=evaluation.confusion_matrix,
        labels_used=len(y_train),
        test_size=evaluation.test_size,
        history=history,
        model_settings=settings.model.model_dump(),
    )
    # Metrics last: a version without metrics.json was never finished.
    put_json_if_absent(store, metrics_key(version), metrics.model_dump())
    return metrics


def load_metrics(store: ObjectStore, version: str) -> ModelMetrics:
    return ModelMetrics.model_validate(get_json(store, metrics_key(version)))


def promote_if_not_worse(store: ObjectStore, metrics: ModelMetrics) -> PromotionDecision:
    """Make ``metrics.version`` the champion unless its test accuracy is lower.

    Each promotion is a conditional create of the next sequence number, so two
    concurrent promotions cannot both win against the same champion.
    """
    while True:
        champion = current_champion(store)
        if champion is not None and metrics.accuracy < champion.accuracy:
            return _decision(metrics, champion, promoted=False)
        sequence = champion.sequence + 1 if champion else 1
        promotion = Promotion(
            sequence=sequence,
            version=metrics.version,
            accuracy=metrics.accuracy,
            previous=champion.version if champion else None,
            promoted_at=utc_now(),
        )
        if put_json_if_absent(store, promotion_key(sequence), promotion.model_dump()):
            return _decision(metrics, champion, promoted=True)
        # Another promotion took this sequence number: re-check against the new champion.


def _decision(
    metrics: ModelMetrics, champion: Promotion | None, *, promoted: bool
) -> PromotionDecision:
    if champion is None:
        reason = "first model: promoted"
    elif promoted:
        reason = f"test accuracy {metrics.accuracy:.4f} >= champion's {champion.accuracy:.4f}"
    else:
        reason = f"test accuracy {metrics.accuracy:.4f} < champion's {champion.accuracy:.4f}"
    return PromotionDecision(
        version=metrics.version,
        promoted=promoted,
        accuracy=metrics.accuracy,
        labels_used=metrics.labels_used,
        champion_version=champion.version if champion else None,
        champion_accuracy=champion.accuracy if champion else None,
        reason=reason,
    )
