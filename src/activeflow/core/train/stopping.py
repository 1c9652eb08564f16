"""When more labels stop paying off: stabilising predictions and a flat learning curve.

Two signals, both cheap and both read from the store:

* agreement: the share of a fixed unlabelled sample (the first ``AGREEMENT_SAMPLE`` unlabelled
  ids in sorted order: ids are content hashes, so that is a seeded uniform sample) on which the
  last two trained models predict the same class. Bloodgood & Vijay-Shanker ("A method for
  stopping active learning based on stabilizing predictions", CoNLL 2009) stop when agreement
  between successive models on such a "stop set" stays high; they used Cohen's kappa >= 0.99.
* slope: the least-squares slope of test accuracy against training labels over the last
  ``SLOPE_WINDOW`` trained models, in accuracy points per 100 labels.

The advice is "stop" when agreement >= ``AGREEMENT_THRESHOLD`` (0.98) and slope <
``SLOPE_THRESHOLD`` (0.5 points per 100 labels). Why those numbers: if two successive models
disagree on under 2 % of the pool, the labels between them changed under 2 % of predictions,
which bounds how much pool accuracy can still have moved (raw agreement rather than kappa, and
0.98 rather than 0.99, because the sample here is a few hundred, where one sample is 0.2 %). At
0.5 points per 100 labels, a round of 20 labels buys 0.1 points, below the resolution of a test
set of a few hundred (one test sample is ~0.3 points), so further rounds cannot even be shown
to help. Requiring both guards against each one's failure: the slope over a few noisy points
can dip below zero by chance, and agreement can be high while the model is still improving on
the rare hard cases.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from pydantic import BaseModel

from activeflow.core.storage.pool import load_state, trained_models
from activeflow.core.storage.store import ObjectStore
from activeflow.settings import Settings

AGREEMENT_THRESHOLD = 0.98
SLOPE_THRESHOLD = 0.5  # accuracy points per 100 labels
AGREEMENT_SAMPLE = 500
SLOPE_WINDOW = 4  # trained models, i.e. the last three rounds

# predict(model version, sample ids) -> predicted class index per id [n]
PredictFn = Callable[[str, Sequence[str]], np.ndarray]


class StoppingSignal(BaseModel):
    models: list[str]  # the two model versions compared (older first); fewer if not yet two
    agreement: float | None  # share of the sample both predict alike
    agreement_sample: int  # unlabelled samples compared
    slope: float | None  # accuracy points per 100 labels over the last models
    slope_labels: list[int]  # the label counts the slope was fitted on
    stop: bool  # both signals say further labels are unlikely to pay off
    summary: str


def prediction_agreement(first: Sequence[int] | np.ndarray, second: Sequence[int] | np.ndarray) -> float:
    """Share of positions where two predicted-class arrays [n] agree; ValueError if n differs or is 0."""
    a, b = np.asarray(first), np.asarray(second)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"predictions must be two 1-D arrays of one length, got {a.shape} and {b.shape}")
    if a.shape[0] == 0:
        raise ValueError("no predictions to compare")
    return float(np.mean(a == b))


def curve_window(
    labels: Sequence[float], accuracy: Sequence[float], window: int = SLOPE_WINDOW
) -> list[tuple[float, float]]:
    """The last ``window`` (labels, accuracy) points, oldest first, one per label count (for a
    count that repeats, a retrain without new labels, its last accuracy)."""
    if len(labels) != len(accuracy):
        raise ValueError(f"{len(labels)} label counts for {len(accuracy)} accuracies")
    if window < 2:
        raise ValueError(f"window must be >= 2, got {window}")
    latest: dict[float, float] = {}
    for x, y in zip(labels, accuracy, strict=True):
        latest.pop(x, None)  # re-inserted, so the order is that of each count's last occurrence
        latest[x] = y
    return list(latest.items())[-window:]


def learning_curve_slope(
    labels: Sequence[float], accuracy: Sequence[float], window: int = SLOPE_WINDOW
) -> float | None:
    """Least-squares slope of accuracy (0..1) against labels over the last ``window`` points, in
    accuracy points per 100 labels; None with fewer than two distinct label counts there.

    Points are taken in the order given (oldest first); for a label count that repeats (a
    retrain without new labels) only its last accuracy is kept."""
    points = curve_window(labels, accuracy, window)
    if len(points) < 2:
        return None
    x = np.array([p[0] for p in points], dtype=np.float64)
    y = np.array([p[1] for p in points], dtype=np.float64)
    slope = np.polyfit(x, y, 1)[0]  # accuracy per label
    return float(slope * 100 * 100)  # points (x100) per 100 labels (x100)


def stopping_signal(
    agreement: float | None,
    slope: float | None,
    *,
    models: Sequence[str] = (),
    agreement_sample: int = 0,
    slope_labels: Sequence[int] = (),
    agreement_threshold: float = AGREEMENT_THRESHOLD,
    slope_threshold: float = SLOPE_THRESHOLD,
) -> StoppingSignal:
    """The advice and its one-sentence summary from the two signals (None: not measurable yet)."""
    if agreement is None or slope is None:
        missing = "two trained models" if agreement is None else "two label counts on the curve"
        summary = f"Too early to tell whether more labels pay off: needs {missing}."
        stop = False
    else:
        stable = agreement >= agreement_threshold
        flat = slope < slope_threshold
        stop = stable and flat
        facts = (
            f"the last two models agree on {agreement:.1%} of {agreement_sample} unlabelled samples "
            f"and accuracy moved {slope:+.2f} points per 100 labels over the last "
            f"{len(slope_labels)} models"
        )
        if stop:
            summary = f"Further labels are unlikely to pay off: {facts}."
        elif stable:
            summary = f"Keep labelling: accuracy is still rising ({facts})."
        elif flat:
            summary = f"Keep labelling: predictions are still changing ({facts})."
        else:
            summary = f"Keep labelling: predictions are still changing and accuracy rising ({facts})."
    return StoppingSignal(
        models=list(models),
        agreement=agreement,
        agreement_sample=agreement_sample,
        slope=slope,
        slope_labels=list(slope_labels),
        stop=stop,
        summary=summary,
    )


def store_stopping_signal(
    store: ObjectStore,
    unlabelled: Sequence[str],
    predict: PredictFn,
    *,
    sample_size: int = AGREEMENT_SAMPLE,
    window: int = SLOPE_WINDOW,
) -> StoppingSignal:
    """The stopping signal for the models in ``store``.

    ``unlabelled`` are the pool's unlabelled ids (the first ``sample_size`` in sorted order are
    the agreement sample); ``predict(version, ids)`` returns a model's predicted class indices
    for those ids (the caller loads models and images, so this module needs no TensorFlow)."""
    models = trained_models(store)
    labels = [int(m["labels_used"]) for m in models]
    accuracy = [float(m["accuracy"]) for m in models]
    slope = learning_curve_slope(labels, accuracy, window)
    used = [int(x) for x, _ in curve_window(labels, accuracy, window)] if slope is not None else []
    versions = [str(m["version"]) for m in models[-2:]]
    sample = sorted(unlabelled)[:sample_size]
    agreement = None
    if len(versions) == 2 and sample:
        agreement = prediction_agreement(predict(versions[0], sample), predict(versions[1], sample))
    return stopping_signal(
        agreement, slope, models=versions, agreement_sample=len(sample), slope_labels=used
    )


def stopping_signal_for_store(
    store: ObjectStore,
    settings: Settings,
    *,
    sample_size: int = AGREEMENT_SAMPLE,
    window: int = SLOPE_WINDOW,
) -> StoppingSignal:
    """``store_stopping_signal`` with the store's own models predicting its own images."""
    from activeflow.core.score import scoring  # TensorFlow: imported only when models are run

    state = load_state(store)

    def predict(version: str, ids: Sequence[str]) -> np.ndarray:
        keys = state.sample_keys(ids)
        return scoring.predict_classes(store, settings, version, keys)

    return store_stopping_signal(
        store, state.unlabelled[:sample_size].to_pylist(), predict, sample_size=sample_size,
        window=window,
    )
