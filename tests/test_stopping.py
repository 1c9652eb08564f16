"""The stopping signal: agreement of the last two models and the learning-curve slope, on
hand-made curves and predictions where the right answer is known."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from activeflow.core.storage.store import LocalStore, put_json_if_absent
from activeflow.core.train import stopping


def test_slope_is_in_points_per_100_labels():
    # +5 points per 20 labels is +25 points per 100 labels.
    assert stopping.learning_curve_slope([20, 40, 60, 80], [0.80, 0.85, 0.90, 0.95]) == pytest.approx(25.0)
    assert stopping.learning_curve_slope([20, 40], [0.9, 0.9]) == pytest.approx(0.0)


def test_slope_uses_the_last_window_only():
    labels = [20, 40, 60, 80, 100, 120]
    accuracy = [0.10, 0.50, 0.90, 0.95, 0.95, 0.95]  # steep early, flat over the last three
    assert stopping.learning_curve_slope(labels, accuracy, window=3) == pytest.approx(0.0)
    assert stopping.learning_curve_slope(labels, accuracy, window=6) > 10


def test_slope_keeps_the_last_accuracy_of_a_repeated_label_count():
    # A retrain without new labels replaces the point rather than adding a vertical step.
    assert stopping.curve_window([20, 40, 40, 60], [0.8, 0.85, 0.86, 0.9]) == [
        (20, 0.8), (40, 0.86), (60, 0.9)
    ]
    assert stopping.learning_curve_slope([20, 20], [0.5, 0.6]) is None


def test_slope_refuses_mismatched_inputs():
    with pytest.raises(ValueError, match="3 label counts for 2 accuracies"):
        stopping.learning_curve_slope([1, 2, 3], [0.1, 0.2])
    with pytest.raises(ValueError, match="window must be >= 2"):
        stopping.learning_curve_slope([1, 2], [0.1, 0.2], window=1)


def test_agreement():
    assert stopping.prediction_agreement([0, 1, 2, 3], [0, 1, 2, 0]) == 0.75
    with pytest.raises(ValueError, match="one length"):
        stopping.prediction_agreement([0, 1], [0])
    with pytest.raises(ValueError, match="no predictions"):
        stopping.prediction_agreement([], [])


@pytest.mark.parametrize(
    ("agreement", "slope", "stop", "says"),
    [
        (0.99, 0.2, True, "Further labels are unlikely to pay off"),
        (0.98, -1.0, True, "Further labels are unlikely to pay off"),  # agreement: >= 0.98
        (0.99, 0.5, False, "accuracy is still rising"),  # slope: < 0.5
        (0.90, 0.1, False, "predictions are still changing"),
        (0.90, 3.0, False, "still changing and accuracy rising"),
        (None, 0.1, False, "needs two trained models"),
        (0.99, None, False, "needs two label counts"),
    ],
)
def test_advice(agreement, slope, stop, says):
    signal = stopping.stopping_signal(agreement, slope, agreement_sample=500, slope_labels=[1, 2, 3, 4])
    assert signal.stop is stop
    assert says in signal.summary


def _metrics(store, version, created_at, labels, accuracy):
    put_json_if_absent(
        store,
        f"models/{version}/metrics.json",
        {"version": version, "created_at": created_at, "labels_used": labels, "accuracy": accuracy},
    )


def test_store_signal_compares_the_last_two_models_on_the_first_unlabelled_ids(tmp_path):
    store = LocalStore(tmp_path)
    for n, (labels, accuracy) in enumerate([(20, 0.70), (40, 0.90), (60, 0.951), (80, 0.952), (100, 0.953)]):
        _metrics(store, f"m{n}", f"2026-01-0{n + 1}", labels, accuracy)
    asked = []

    def predict(version, ids):
        asked.append((version, list(ids)))
        base = np.zeros(len(ids), dtype=int)
        if version == "m4":
            base[0] = 1  # one disagreement in 100
        return base

    unlabelled = [f"id{i:03d}" for i in range(150, 0, -1)]
    signal = stopping.store_stopping_signal(store, unlabelled, predict, sample_size=100)

    assert [v for v, _ in asked] == ["m3", "m4"]
    assert asked[0][1] == sorted(unlabelled)[:100]
    assert signal.models == ["m3", "m4"] and signal.agreement == pytest.approx(0.99)
    assert signal.slope_labels == [40, 60, 80, 100]
    # Least squares over the last four: rising 6.1 points then 0.1 twice: still > 0.5 per 100.
    assert signal.slope == pytest.approx(np.polyfit([40, 60, 80, 100], [0.90, 0.951, 0.952, 0.953], 1)[0] * 1e4)
    assert signal.stop is False


def test_store_signal_with_one_model_is_too_early(tmp_path):
    store = LocalStore(tmp_path)
    _metrics(store, "m0", "2026-01-01", 20, 0.7)
    signal = stopping.store_stopping_signal(store, ["a"], lambda v, ids: np.zeros(len(ids)))
    assert signal.agreement is None and signal.slope is None and not signal.stop
    assert signal.summary.startswith("Too early to tell")


def test_stopping_pure_part_imports_no_tensorflow_or_prefect():
    code = (
        "import sys, activeflow.core.train.stopping; "
        "print('tensorflow' in sys.modules, 'prefect' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
