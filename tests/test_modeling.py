"""The classifier: backbones, two-phase training, .keras round trip, evaluation, promotion gate."""

from __future__ import annotations

import numpy as np
import pytest

from activeflow import modeling
from activeflow.pool import current_champion, promotions
from activeflow.settings import ModelSettings
from activeflow.store import LocalStore
from activeflow.training import ModelMetrics, promote_if_not_worse

TINY = {"image_size": 8, "head_epochs": 1, "finetune_epochs": 1, "batch_size": 8}


def toy_data(n=24, size=8, classes=2, seed=0):
    """Class c is a bright square in quadrant c: learnable in a few epochs."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    x = rng.uniform(0, 40, (n, size, size, 3)).astype(np.float32)
    half = size // 2
    for i, c in enumerate(y):
        x[i, (c // 2) * half : (c // 2 + 1) * half, (c % 2) * half : (c % 2 + 1) * half] += 200
    return x, y


@pytest.mark.parametrize(("backbone", "size"), [("mobilenet_v2", 32), ("inception_v3", 75)])
def test_keras_applications_backbones_build_without_downloading(backbone, size):
    model = modeling.build_classifier(ModelSettings(backbone=backbone, image_size=size), 5)
    assert model.output_shape == (None, 5)
    assert model.get_layer("backbone").count_params() > 1_000_000
    probs = modeling.predict_proba(model, np.zeros((2, size, size, 3), np.float32), 2)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0)


def test_backbone_below_its_minimum_size_is_refused():
    with pytest.raises(ValueError, match="image_size=16 is below inception_v3's minimum of 75"):
        modeling.build_classifier(ModelSettings(backbone="inception_v3", image_size=16), 3)


def test_local_weights_file_is_loaded(tmp_path):
    settings = ModelSettings(**TINY)
    donor = modeling.build_classifier(settings, 2).get_layer("backbone")
    donor.set_weights([np.full_like(w, 0.5) for w in donor.get_weights()])
    weights = tmp_path / "backbone.weights.h5"
    donor.save_weights(weights)

    model = modeling.build_classifier(ModelSettings(**TINY, weights=str(weights)), 2)

    assert all(np.all(w == 0.5) for w in model.get_layer("backbone").get_weights())


def test_missing_weights_file_is_named():
    with pytest.raises(ValueError, match="model.weights: '/no/such.h5' is neither"):
        modeling.build_classifier(ModelSettings(**TINY, weights="/no/such.h5"), 2)


def test_pretrained_backbone_stays_frozen_in_the_head_phase(tmp_path):
    settings = ModelSettings(**{**TINY, "finetune_epochs": 0})
    donor = modeling.build_classifier(settings, 2)
    weights = tmp_path / "backbone.weights.h5"
    donor.get_layer("backbone").save_weights(weights)
    pretrained = ModelSettings(**{**TINY, "finetune_epochs": 0}, weights=str(weights))
    model = modeling.build_classifier(pretrained, 2)
    before_backbone = [w.copy() for w in model.get_layer("backbone").get_weights()]
    before_head = [w.copy() for w in model.get_layer("head").get_weights()]

    modeling.train_two_phase(model, *toy_data(), pretrained)

    after_backbone = model.get_layer("backbone").get_weights()
    assert all(np.array_equal(a, b) for a, b in zip(before_backbone, after_backbone, strict=True))
    assert not np.array_equal(before_head[0], model.get_layer("head").get_weights()[0])


def test_finetune_phase_updates_the_backbone():
    settings = ModelSettings(**TINY)
    model = modeling.build_classifier(settings, 2)
    before = [w.copy() for w in model.get_layer("backbone").get_weights()]
    history = modeling.train_two_phase(model, *toy_data(), settings)
    assert len(history.head_loss) == 1 and len(history.finetune_loss) == 1
    after = model.get_layer("backbone").get_weights()
    assert not all(np.array_equal(a, b) for a, b in zip(before, after, strict=True))


def test_two_phase_training_learns_and_survives_the_keras_round_trip():
    settings = ModelSettings(image_size=8, head_epochs=15, finetune_epochs=5, batch_size=8,
                             head_learning_rate=5e-3)
    x, y = toy_data(n=40, classes=4)
    model = modeling.build_classifier(settings, 4)
    modeling.train_two_phase(model, x, y, settings)
    probs = modeling.predict_proba(model, x, 16)
    assert modeling.evaluate(probs, y, list("abcd")).accuracy >= 0.9

    restored = modeling.model_from_bytes(modeling.model_to_bytes(model))

    np.testing.assert_allclose(modeling.predict_proba(restored, x, 16), probs, atol=1e-6)


def test_evaluation_counts_by_hand():
    probs = np.array([[0.9, 0.1, 0.0], [0.2, 0.7, 0.1], [0.6, 0.3, 0.1], [0.1, 0.1, 0.8]])
    y = np.array([0, 1, 1, 2])
    evaluation = modeling.evaluate(probs, y, ["a", "b", "c"])
    assert evaluation.accuracy == 0.75
    assert evaluation.per_class_accuracy == {"a": 1.0, "b": 0.5, "c": 1.0}
    assert evaluation.confusion_matrix == [[1, 0, 0], [1, 1, 0], [0, 0, 1]]


def test_decode_images_resizes_to_rgb_squares(tmp_path):
    from images import write_image

    blob = write_image(tmp_path / "a.png", 1, size=12).read_bytes()
    pixels = modeling.decode_images([blob, blob], 8)
    assert pixels.shape == (2, 8, 8, 3) and pixels.dtype == np.float32
    assert 0 <= pixels.min() and pixels.max() <= 255


def metrics(version, accuracy):
    return ModelMetrics(
        version=version, created_at="t", classes=["a", "b"], accuracy=accuracy,
        per_class_accuracy={}, confusion_matrix=[], labels_used=10, test_size=10,
        history=modeling.TrainingHistory(head_loss=[], finetune_loss=[]), model_settings={},
    )


def test_promotion_gate(tmp_path):
    store = LocalStore(tmp_path)
    first = promote_if_not_worse(store, metrics("m1", 0.80))
    assert first.promoted and first.reason == "first model: promoted"

    worse = promote_if_not_worse(store, metrics("m2", 0.79))
    assert not worse.promoted
    assert worse.reason == "test accuracy 0.7900 < champion's 0.8000"
    assert current_champion(store).version == "m1"

    equal = promote_if_not_worse(store, metrics("m3", 0.80))
    assert equal.promoted  # not worse is enough
    assert current_champion(store).version == "m3"
    assert [(p.sequence, p.version, p.previous) for p in promotions(store)] == [
        (1, "m1", None), (2, "m3", "m1"),
    ]
