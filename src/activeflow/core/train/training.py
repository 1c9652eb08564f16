"""Retraining: train a candidate on every training label, evaluate it on the held-out
test set beside a pixel baseline trained on the same labels, store it with its metrics, and
promote it only if it is above chance, not far below the baseline, and not worse than the
champion."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence

import numpy as np
from pydantic import BaseModel

from activeflow.core.storage.pool import (
    PoolState,
    Promotion,
    current_champion,
    load_state,
    metrics_key,
    model_key,
    new_id,
    promotion_key,
    utc_now,
)
from activeflow.core.storage.store import ObjectStore, get_json, put_json_if_absent
from activeflow.core.train.training_history import TrainingHistory
from activeflow.settings import Settings, required_classes

# modeling (TensorFlow, seconds to import) only in the functions that train: reading a
# model's metrics must not pay for it.


class TrainingError(ValueError):
    """Retraining cannot start: no classes, no labels, or no test set."""


class BaselineReport(BaseModel):
    """A simple, fast model on the same labels: what the candidate must not fall far below."""

    name: str
    accuracy: float


class ChampionScore(BaseModel):
    """The champion re-evaluated on the candidate's test set (when its record is of another)."""

    version: str
    accuracy: float


class ModelMetrics(BaseModel):
    version: str
    created_at: str
    classes: list[str]
    accuracy: float
    per_class_accuracy: dict[str, float | None]
    confusion_matrix: list[list[int]]
    labels_used: int
    test_size: int
    history: TrainingHistory
    model_settings: dict[str, object]
    # Older metrics files have neither: their gate compared with the champion only.
    chance_accuracy: float | None = None  # share of the most common class in the test set
    baseline: BaselineReport | None = None
    test_set: str | None = None  # fingerprint of the test set (ids and labels) evaluated on
    champion_rescored: ChampionScore | None = None


class PromotionDecision(BaseModel):
    version: str
    promoted: bool
    accuracy: float
    labels_used: int
    champion_version: str | None
    champion_accuracy: float | None
    reason: str
    baseline_accuracy: float | None = None
    chance_accuracy: float | None = None


def load_examples(
    store: ObjectStore,
    state: PoolState,
    labels: Mapping[str, str],
    classes: Sequence[str],
    image_size: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Pixels [n, size, size, 3] and class indices [n] for labelled sample ids."""
    from activeflow.core.score import modeling

    index = {name: i for i, name in enumerate(classes)}
    unknown = sorted({label for label in labels.values() if label not in index})
    if unknown:
        raise TrainingError(f"labels {unknown} are not in data.classes {list(classes)}")
    ids = sorted(labels)
    x = modeling.load_pixels(store, state.sample_keys(ids), image_size)
    y = np.array([index[labels[sid]] for sid in ids], dtype=np.int64)
    return x, y


def train_candidate(store: ObjectStore, state: PoolState, settings: Settings) -> ModelMetrics:
    """Train on all training labels, evaluate on the test set, store model and metrics."""
    from activeflow.core.score import modeling

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
    history = modeling.train(model, x_train, y_train, settings.model)
    probs = modeling.predict_proba(model, x_test, settings.model.batch_size)
    evaluation = modeling.evaluate(probs, y_test, classes)
    baseline = pixel_baseline(x_train, y_train, x_test, y_test, settings.model.seed)
    test_set = test_set_fingerprint(state.test)
    champion = state.champion
    rescored = None
    if champion is not None and champion.test_set != test_set:
        # Its recorded accuracy is of another test set: compare on this one.
        old = modeling.model_from_bytes(store.get(model_key(champion.version)))
        old_probs = modeling.predict_proba(old, x_test, settings.model.batch_size)
        accuracy = modeling.evaluate(old_probs, y_test, classes).accuracy
        rescored = ChampionScore(version=champion.version, accuracy=accuracy)

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
        chance_accuracy=chance_accuracy(y_test, len(classes)),
        baseline=baseline,
        test_set=test_set,
        champion_rescored=rescored,
    )
    # Metrics last: a version without metrics.json was never finished.
    put_json_if_absent(store, metrics_key(version), metrics.model_dump())
    return metrics


def test_set_fingerprint(test: Mapping[str, str]) -> str:
    """sha256 of the test set's sample ids and labels: accuracies compare only within one."""
    lines = "".join(f"{sample_id}\t{test[sample_id]}\n" for sample_id in sorted(test))
    return hashlib.sha256(lines.encode()).hexdigest()


def chance_accuracy(y: np.ndarray, num_classes: int) -> float:
    """What always answering the most common test class scores."""
    return float(np.bincount(y, minlength=num_classes).max() / max(len(y), 1))


PIXEL_BASELINE = "logistic regression on 16x16 pixels"
_BASELINE_SIDE = 16
_BASELINE_MAX_TRAIN = 5000  # bounds its cost on large label sets; it is a sanity check


def pixel_baseline(
    x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray, seed: int = 0
) -> BaselineReport:
    """Test accuracy of a standardised, L2-regularised logistic regression on downsampled
    pixels: seconds to fit, and far above chance wherever the labels carry signal."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if len(np.unique(y_train)) < 2:
        # One class: nothing to fit; it answers that class, which is chance or below.
        return BaselineReport(name=PIXEL_BASELINE, accuracy=float(np.mean(y_test == y_train[0])))
    if len(y_train) > _BASELINE_MAX_TRAIN:
        keep = np.random.default_rng(seed).choice(len(y_train), _BASELINE_MAX_TRAIN, replace=False)
        x_train, y_train = x_train[keep], y_train[keep]
    classifier = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000))
    classifier.fit(_pixel_features(x_train), y_train)
    accuracy = float(np.mean(classifier.predict(_pixel_features(x_test)) == y_test))
    return BaselineReport(name=PIXEL_BASELINE, accuracy=accuracy)


def _pixel_features(x: np.ndarray) -> np.ndarray:
    """[n, 16 * 16 * 3] block means in 0..1 (nearest blocks when the side is not a multiple)."""
    n, size = x.shape[0], x.shape[1]
    edges = np.linspace(0, size, _BASELINE_SIDE + 1).round().astype(int)
    if size >= _BASELINE_SIDE:
        rows = np.add.reduceat(x, edges[:-1], axis=1) / np.diff(edges)[None, :, None, None]
        blocks = np.add.reduceat(rows, edges[:-1], axis=2) / np.diff(edges)[None, None, :, None]
    else:  # upsample small images by repeating pixels
        pick = np.minimum((np.arange(_BASELINE_SIDE) * size) // _BASELINE_SIDE, size - 1)
        blocks = x[:, pick][:, :, pick]
    return (blocks / 255.0).reshape(n, -1)


def load_metrics(store: ObjectStore, version: str) -> ModelMetrics:
    return ModelMetrics.model_validate(get_json(store, metrics_key(version)))


def sanity_refusal(metrics: ModelMetrics, tolerance: float) -> str | None:
    """Why a candidate must not serve whatever the champion, or None."""
    chance, baseline = metrics.chance_accuracy, metrics.baseline
    if chance is not None and metrics.accuracy <= chance:
        return (
            f"test accuracy {metrics.accuracy:.4f} is at or below chance ({chance:.4f}, always "
            "answering the most common test class): the model learnt nothing usable"
        )
    if baseline is not None and metrics.accuracy < baseline.accuracy - tolerance:
        return (
            f"test accuracy {metrics.accuracy:.4f} is more than {tolerance:.2f} below the "
            f"baseline's {baseline.accuracy:.4f} ({baseline.name}, same labels)"
        )
    return None


def retrain(store: ObjectStore, settings: Settings) -> PromotionDecision:
    """Train a candidate on every label and gate its promotion: a retrain without an
    orchestrator (flows/retrain.py runs the two steps as tasks and reports them)."""
    metrics = train_candidate(store, load_state(store), settings)
    return promote_if_not_worse(store, metrics, settings.model.baseline_tolerance)


def promote_if_not_worse(
    store: ObjectStore, metrics: ModelMetrics, tolerance: float = 0.1
) -> PromotionDecision:
    """Make ``metrics.version`` the champion unless it is at chance, far below the pixel
    baseline (``tolerance``), or its test accuracy is lower than the champion's.

    Each promotion is a conditional create of the next sequence number, so two
    concurrent promotions cannot both win against the same champion.
    """
    refusal = sanity_refusal(metrics, tolerance)
    if refusal is not None:
        return _decision(metrics, current_champion(store), promoted=False, reason=refusal)
    while True:
        champion = current_champion(store)
        bar = _champion_bar(metrics, champion)
        if isinstance(bar, str):
            return _decision(metrics, champion, promoted=False, reason=bar)
        if bar is not None and metrics.accuracy < bar:
            return _decision(metrics, champion, promoted=False, champion_accuracy=bar)
        sequence = champion.sequence + 1 if champion else 1
        promotion = Promotion(
            sequence=sequence,
            version=metrics.version,
            accuracy=metrics.accuracy,
            previous=champion.version if champion else None,
            promoted_at=utc_now(),
            test_set=metrics.test_set,
        )
        if put_json_if_absent(store, promotion_key(sequence), promotion.model_dump()):
            return _decision(metrics, champion, promoted=True, champion_accuracy=bar)
        # Another promotion took this sequence number: re-check against the new champion.


def _champion_bar(metrics: ModelMetrics, champion: Promotion | None) -> float | str | None:
    """The champion's accuracy on the candidate's test set; None without a champion; a
    refusal when it is not known (the champion changed, and was measured on another set)."""
    if champion is None:
        return None
    if metrics.test_set is None or champion.test_set == metrics.test_set:
        return champion.accuracy
    rescored = metrics.champion_rescored
    if rescored is not None and rescored.version == champion.version:
        return rescored.accuracy
    return (
        f"champion {champion.version} was measured on another test set and changed while "
        "this candidate trained: retrain to compare the two on one test set"
    )


def _champion_comparison(
    metrics: ModelMetrics, champion: Promotion | None, promoted: bool, bar: float | None
) -> str:
    if champion is None or bar is None:
        return "first model: promoted"
    sign = ">=" if promoted else "<"
    rescored = metrics.test_set is not None and champion.test_set != metrics.test_set
    again = " (re-evaluated on this test set)" if rescored else ""
    return f"test accuracy {metrics.accuracy:.4f} {sign} champion's {bar:.4f}{again}"


def _decision(
    metrics: ModelMetrics,
    champion: Promotion | None,
    *,
    promoted: bool,
    reason: str | None = None,
    champion_accuracy: float | None = None,
) -> PromotionDecision:
    if champion_accuracy is None and champion is not None:
        champion_accuracy = champion.accuracy
    reason = reason or _champion_comparison(metrics, champion, promoted, champion_accuracy)
    return PromotionDecision(
        version=metrics.version,
        promoted=promoted,
        accuracy=metrics.accuracy,
        labels_used=metrics.labels_used,
        champion_version=champion.version if champion else None,
        champion_accuracy=champion_accuracy,
        reason=reason,
        baseline_accuracy=metrics.baseline.accuracy if metrics.baseline else None,
        chance_accuracy=metrics.chance_accuracy,
    )
