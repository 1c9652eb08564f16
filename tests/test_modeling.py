"""The classifier: backbones, the adaptive training recipe, .keras round trip, evaluation,
the pixel baseline and the promotion gate."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from activeflow.core.score import modeling
from activeflow.core.storage.pool import current_champion, promotions
from activeflow.core.storage.store import LocalStore
from activeflow.core.train.training import BaselineReport, ModelMetrics, pixel_baseline, promote_if_not_worse
from activeflow.settings import AugmentSettings, ModelSettings

TINY = {"image_size": 8, "head_epochs": 1, "finetune_epochs": 1, "batch_size": 8, "min_steps": 0}


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


def test_missing_weights_file_is_named(tmp_path):
    with pytest.raises(ValueError, match="'/no/such.h5' is neither 'none', 'imagenet' nor an existing"):
        ModelSettings(**TINY, weights="/no/such.h5")
    weights = tmp_path / "gone.h5"
    weights.write_bytes(b"x")
    settings = ModelSettings(**TINY, weights=str(weights))
    weights.unlink()  # deleted after the settings were read
    with pytest.raises(ValueError, match=f"model.weights: '{weights}' is neither"):
        modeling.build_classifier(settings, 2)


def test_pretrained_backbone_stays_frozen_in_the_head_phase(tmp_path):
    settings = ModelSettings(**{**TINY, "finetune_epochs": 0})
    donor = modeling.build_classifier(settings, 2)
    weights = tmp_path / "backbone.weights.h5"
    donor.get_layer("backbone").save_weights(weights)
    pretrained = ModelSettings(**{**TINY, "finetune_epochs": 0}, weights=str(weights))
    model = modeling.build_classifier(pretrained, 2)
    before_backbone = [w.copy() for w in model.get_layer("backbone").get_weights()]
    before_head = [w.copy() for w in model.get_layer("head").get_weights()]

    history = modeling.train(model, *toy_data(), pretrained)

    after_backbone = model.get_layer("backbone").get_weights()
    assert all(np.array_equal(a, b) for a, b in zip(before_backbone, after_backbone, strict=True))
    assert not np.array_equal(before_head[0], model.get_layer("head").get_weights()[0])
    assert [p.name for p in history.phases] == ["head"]


def test_finetune_phase_updates_a_pretrained_backbone(tmp_path):
    weights = tmp_path / "backbone.weights.h5"
    modeling.build_classifier(ModelSettings(**TINY), 2).get_layer("backbone").save_weights(weights)
    settings = ModelSettings(**TINY, weights=str(weights))
    model = modeling.build_classifier(settings, 2)
    before = [w.copy() for w in model.get_layer("backbone").get_weights()]
    history = modeling.train(model, *toy_data(), settings)
    assert [(p.name, p.backbone_trainable) for p in history.phases] == [("head", False), ("finetune", True)]
    after = model.get_layer("backbone").get_weights()
    assert not all(np.array_equal(a, b) for a, b in zip(before, after, strict=True))


def test_a_backbone_without_pretrained_weights_trains_whole_in_one_phase():
    settings = ModelSettings(**TINY)
    model = modeling.build_classifier(settings, 2)
    before = [w.copy() for w in model.get_layer("backbone").get_weights()]
    history = modeling.train(model, *toy_data(), settings)
    assert [(p.name, p.backbone_trainable, p.learning_rate) for p in history.phases] == [
        ("whole", True, settings.head_learning_rate)
    ]
    after = model.get_layer("backbone").get_weights()
    assert not all(np.array_equal(a, b) for a, b in zip(before, after, strict=True))


def test_tiny_label_sets_get_the_minimum_number_of_updates():
    # 20 labels in batches of 32 are one step an epoch: 15 epochs would be 15 updates.
    plan = modeling.plan_training([2] * 10, ModelSettings(head_epochs=10, finetune_epochs=5, min_steps=400))
    assert [(p.name, p.steps) for p in plan.phases] == [("whole", 400)]
    assert (plan.train_size, plan.validation_size, plan.batch_size) == (20, 0, 20)
    assert "no validation split: the smallest class has 2 labels (< 50)" in plan.validation_note


def test_the_minimum_is_split_between_pretrained_phases_by_their_epochs():
    settings = ModelSettings(weights="imagenet", backbone="mobilenet_v2", head_epochs=10,
                             finetune_epochs=5, min_steps=300)
    plan = modeling.plan_training([3, 3, 4], settings)
    assert [(p.name, p.steps, p.backbone_trainable) for p in plan.phases] == [
        ("head", 200, False), ("finetune", 100, True),
    ]
    assert [p.learning_rate for p in plan.phases] == [settings.head_learning_rate, settings.finetune_learning_rate]


def test_large_label_sets_are_counted_in_epochs_with_a_validation_split():
    settings = ModelSettings(head_epochs=10, finetune_epochs=5, min_steps=400, batch_size=32,
                             validation_fraction=0.2, validation_min_per_class=20)
    plan = modeling.plan_training([1000, 600, 400], settings)
    assert plan.validation_size == 200 + 120 + 80 and plan.train_size == 1600
    assert [(p.name, p.steps) for p in plan.phases] == [("whole", 15 * 50)]  # 1600 / 32 = 50 an epoch
    assert plan.validation_note == "400 labels held out for model selection and early stopping"
    # One class short of the minimum: nothing is held out.
    assert modeling.plan_training([1000, 600, 19], settings).validation_size == 0


def test_validation_split_keeps_the_best_weights_and_reports_them():
    settings = ModelSettings(**{**TINY, "min_steps": 40, "validation_min_per_class": 5})
    x, y = toy_data(n=40, classes=2)
    history = modeling.train(modeling.build_classifier(settings, 2), x, y, settings)
    assert (history.train_size, history.validation_size) == (32, 8)
    assert history.validation_accuracy is not None and 1 <= history.best_step <= 40


def test_early_stopping_never_cuts_a_retrain_below_the_minimum_updates():
    # Labels that cannot be learnt: validation never improves, yet a network trained from
    # scratch may sit on a plateau for hundreds of steps before it learns (synthetic shapes
    # did at 180 labels), so the floor of min_steps is run whole.
    settings = ModelSettings(**{**TINY, "min_steps": 60, "validation_min_per_class": 5, "patience": 1})
    x, _ = toy_data(n=40, classes=2)
    y = np.random.default_rng(1).permutation(np.repeat([0, 1], 20))
    history = modeling.train(modeling.build_classifier(settings, 2), x, y, settings)
    assert history.validation_size == 8
    assert [(p.steps_planned, p.steps_run) for p in history.phases] == [(60, 60)]
    assert not history.stopped_early


def test_steps_compiled_together_train_as_one_call_a_step(monkeypatch):
    # Updates run many to a compiled call, fewer where the augmented pixels would be large:
    # how many go to a call must not change what is learnt.
    settings = ModelSettings(**{**TINY, "min_steps": 50, "validation_min_per_class": 5})
    x, y = toy_data(n=40, classes=4)

    def trained():
        model = modeling.build_classifier(settings, 4)
        history = modeling.train(model, x, y, settings)
        return model.get_weights(), history

    many_weights, many = trained()
    monkeypatch.setattr(modeling, "_CHUNK_BYTES", 1)  # one update a call
    one_weights, one = trained()
    assert [(p.steps_planned, p.steps_run) for p in one.phases] == [(50, 50)]
    assert len(one.head_loss) == 10 and one.best_step == many.best_step
    np.testing.assert_allclose(one.head_loss, many.head_loss, rtol=1e-5)
    for a, b in zip(one_weights, many_weights, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_weight_decay_shrinks_the_weights_and_zero_is_plain_adam():
    x, y = toy_data(n=40, classes=4)

    def head_kernel_norm(weight_decay):
        settings = ModelSettings(**{**TINY, "min_steps": 60, "weight_decay": weight_decay})
        model = modeling.build_classifier(settings, 4)
        modeling.train(model, x, y, settings)
        return float(np.linalg.norm(model.get_layer("head").get_weights()[0]))

    plain = head_kernel_norm(0.0)
    assert head_kernel_norm(0.0) == plain  # seeded: the same run twice
    assert head_kernel_norm(5.0) < 0.9 * plain


def test_fine_tuning_does_not_decay_the_pretrained_weights(tmp_path):
    weights = tmp_path / "backbone.weights.h5"
    modeling.build_classifier(ModelSettings(**TINY), 2).get_layer("backbone").save_weights(weights)
    x, y = toy_data()

    def norms(weight_decay):
        settings = ModelSettings(**{**TINY, "head_epochs": 1, "finetune_epochs": 3},
                                 weights=str(weights), weight_decay=weight_decay)
        model = modeling.build_classifier(settings, 2)
        modeling.train(model, x, y, settings)
        backbone = [w for w in model.get_layer("backbone").trainable_weights if "kernel" in w.path]
        head = model.get_layer("head").get_weights()[0]
        return float(np.sqrt(sum(np.sum(np.square(w)) for w in backbone))), float(np.linalg.norm(head))

    (plain_backbone, plain_head), (decayed_backbone, decayed_head) = norms(0.0), norms(50.0)
    assert decayed_head < 0.9 * plain_head  # the head, trained from scratch, is decayed
    assert decayed_backbone == pytest.approx(plain_backbone, rel=0.02)


def test_the_small_cnn_sees_each_image_standardised():
    # Shapes, digits and photographs come in any colour and exposure: the small CNN
    # standardises each image first, so a darker, lower-contrast copy looks the same to it.
    settings = ModelSettings(**TINY)
    model = modeling.build_classifier(settings, 3)
    x, _ = toy_data(n=8, classes=2)
    np.testing.assert_allclose(
        modeling.predict_proba(model, 0.5 * x + 40, 8), modeling.predict_proba(model, x, 8), atol=1e-4
    )


def test_balanced_class_weights_only_when_labels_are_imbalanced():
    assert modeling.class_weights(np.array([0, 0, 1, 1, 2, 2]), 3) is None
    weights = modeling.class_weights(np.array([0, 0, 0, 0, 0, 0, 1, 1]), 3)
    np.testing.assert_allclose(weights, [8 / 12, 8 / 4, 0.0])  # n / (classes present * count)


def test_augmentation_keeps_pixels_in_range_and_flips_only_when_asked():
    rng = np.random.default_rng(0)
    x = np.zeros((64, 8, 8, 3), np.float32)
    x[:, :, :4] = 255  # bright left half
    still = modeling.augment(x, AugmentSettings(shift=0, intensity=0, invert=0), rng)
    np.testing.assert_array_equal(still, x)  # horizontal_flip is off by default
    flipped = modeling.augment(x, AugmentSettings(shift=0, intensity=0, invert=0, horizontal_flip=True), rng)
    mirrored = flipped[:, :, 4:].mean(axis=(1, 2, 3)) == 255
    assert 10 < mirrored.sum() < 54  # about half, at random
    jittered = modeling.augment(x, AugmentSettings(shift=0.25, intensity=0.3, invert=0), rng)
    assert jittered.shape == x.shape and jittered.dtype == np.float32
    assert 0 <= jittered.min() and jittered.max() <= 255 and not np.array_equal(jittered, x)


def test_grayscale_and_invert_change_the_chosen_share_of_images():
    rng = np.random.default_rng(0)
    red = np.zeros((200, 4, 4, 3), np.float32)
    red[..., 0] = 200
    still = dict(shift=0, intensity=0)
    greyed = modeling.augment(red, AugmentSettings(**still, grayscale=0.5, invert=0), rng)
    grey = np.all(greyed == np.float32(200 * 0.299), axis=(1, 2, 3))
    assert 70 < grey.sum() < 130  # about half, at random
    np.testing.assert_array_equal(greyed[~grey], red[~grey])  # the others keep their colour
    flat = np.full((20, 4, 4, 3), 90, np.float32)
    np.testing.assert_allclose(modeling.augment(flat, AugmentSettings(**still, grayscale=1, invert=0), rng), flat, rtol=1e-6)
    inverted = modeling.augment(flat, AugmentSettings(**still, grayscale=0, invert=1), rng)
    np.testing.assert_array_equal(inverted, 255 - flat)
    with pytest.raises(ValueError, match="inversion_share resolves 'auto'"):
        modeling.augment(flat, AugmentSettings(**still), rng)


def squares(polarities, size=16):
    """A bright square on a dark ground (+1) or a dark one on a bright ground (-1) each."""
    x = np.empty((len(polarities), size, size, 3), np.float32)
    for i, polarity in enumerate(polarities):
        ground, square = (30, 220) if polarity > 0 else (220, 30)
        x[i] = ground
        x[i, size // 4 : -size // 4, size // 4 : -size // 4] = square
    return x


def test_auto_inversion_follows_the_polarity_of_the_labelled_images():
    share = modeling.inversion_share
    assert share(squares([1] * 20), ModelSettings()) == 0  # fixed polarity: digits, scans
    assert share(squares([1] * 19 + [-1]), ModelSettings()) == 0  # one stray image is not a mix
    assert share(squares([1] * 10 + [-1] * 10), ModelSettings()) == 0.5  # shapes in random colours
    assert share(squares([1, -1] * 10), ModelSettings(weights="imagenet")) == 0  # pretrained: never
    assert share(squares([1] * 20), ModelSettings(augment={"invert": 0.3})) == 0.3  # a number is kept
    assert share(np.full((4, 16, 16, 3), 90, np.float32), ModelSettings()) == 0  # flat: no polarity


def test_a_retrain_reports_the_share_it_inverted():
    x = squares([1, -1] * 12, size=8)
    y = np.arange(24) % 2
    mixed = modeling.train(modeling.build_classifier(ModelSettings(**TINY), 2), x, y, ModelSettings(**TINY))
    fixed = modeling.train(modeling.build_classifier(ModelSettings(**TINY), 2), x[::2], y[::2], ModelSettings(**TINY))
    assert (mixed.invert, fixed.invert) == (0.5, 0.0)


def test_a_seed_gives_the_same_model_while_other_threads_draw_random_numbers():
    """Keras seeds unseeded layers from Python's global ``random``; Prefect's services and
    HTTP clients draw from it in their own threads, which made initial weights depend on
    timing (a flaky failure in CI)."""
    import random
    import threading

    def initial_weights():
        return modeling.build_classifier(ModelSettings(**{**TINY, "seed": 0}), 4).get_weights()

    alone = initial_weights()
    stop = threading.Event()

    def draw_random_numbers():
        while not stop.is_set():
            random.random()

    drawer = threading.Thread(target=draw_random_numbers)
    drawer.start()
    try:
        built = [initial_weights() for _ in range(3)]
    finally:
        stop.set()
        drawer.join()
    for weights in built:
        assert all(np.array_equal(a, b) for a, b in zip(weights, alone, strict=True))


def test_a_seed_gives_the_same_model_while_another_thread_loads_models():
    """Loading a saved model creates layers that draw their seeds the way a build does: a
    strategy scoring in one thread while another retrains (the demo, the benchmark's
    threads) made the retrain's initial weights depend on timing."""
    import threading

    settings = ModelSettings(**{**TINY, "seed": 0})
    alone = modeling.build_classifier(settings, 4).get_weights()
    saved = modeling.model_to_bytes(modeling.build_classifier(settings, 4))
    stop = threading.Event()

    def load_models():
        while not stop.is_set():
            modeling.model_from_bytes(saved)

    loader = threading.Thread(target=load_models)
    loader.start()
    try:
        built = [modeling.build_classifier(settings, 4).get_weights() for _ in range(3)]
    finally:
        stop.set()
        loader.join()
    for weights in built:
        assert all(np.array_equal(a, b) for a, b in zip(weights, alone, strict=True))


def test_seeds_are_honoured_by_runs_in_parallel_threads():
    """Each run's model comes from its own seed even when runs start together in threads
    (Keras seeds from process-global generators), and a seed's training is reproducible."""
    from concurrent.futures import ThreadPoolExecutor

    def initial_weights(seed):
        return modeling.build_classifier(ModelSettings(**{**TINY, "seed": seed}), 4).get_weights()

    alone = [initial_weights(0), initial_weights(1)]
    for _ in range(3):
        with ThreadPoolExecutor(4) as pool:
            together = list(pool.map(initial_weights, [0, 1, 0, 1]))
        for seed, weights in zip([0, 1, 0, 1], together, strict=True):
            assert all(np.array_equal(a, b) for a, b in zip(weights, alone[seed], strict=True))
    assert not np.array_equal(alone[0][0], alone[1][0])

    x, y = toy_data(n=32, classes=4)

    def trained(seed):
        settings = ModelSettings(**{**TINY, "min_steps": 30, "seed": seed})
        model = modeling.build_classifier(settings, 4)
        modeling.train(model, x, y, settings)
        return modeling.predict_proba(model, x, 32)

    # Batches, augmentation and the split come from the run's own generator. (Bit-identical
    # results while other threads train at the same time are not promised: TensorFlow's CPU
    # kernels may split their reductions differently under load; the benchmark script runs
    # its runs in processes.)
    np.testing.assert_array_equal(trained(0), trained(0))
    assert not np.allclose(trained(0), trained(1))


def test_training_learns_and_survives_the_keras_round_trip():
    settings = ModelSettings(image_size=8, batch_size=8, min_steps=150)
    x, y = toy_data(n=40, classes=4)
    model = modeling.build_classifier(settings, 4)
    modeling.train(model, x, y, settings)
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


def metrics(version, accuracy, chance=None, baseline=None):
    return ModelMetrics(
        version=version, created_at="t", classes=["a", "b"], accuracy=accuracy,
        per_class_accuracy={}, confusion_matrix=[], labels_used=10, test_size=10,
        history=modeling.TrainingHistory(head_loss=[], finetune_loss=[]), model_settings={},
        chance_accuracy=chance,
        baseline=BaselineReport(name="pixels", accuracy=baseline) if baseline is not None else None,
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


def test_a_candidate_at_chance_is_not_promoted_even_without_a_champion(tmp_path):
    store = LocalStore(tmp_path)
    decision = promote_if_not_worse(store, metrics("m1", 0.3333, chance=0.3333, baseline=0.3))
    assert not decision.promoted
    assert decision.reason == (
        "test accuracy 0.3333 is at or below chance (0.3333, always answering the most common "
        "test class): the model learnt nothing usable"
    )
    assert (decision.chance_accuracy, decision.baseline_accuracy) == (0.3333, 0.3)
    assert current_champion(store) is None and promotions(store) == []


def test_a_candidate_far_below_the_baseline_is_not_promoted(tmp_path):
    store = LocalStore(tmp_path)
    assert promote_if_not_worse(store, metrics("m1", 0.5, chance=0.1, baseline=0.55), 0.1).promoted
    refused = promote_if_not_worse(store, metrics("m2", 0.6, chance=0.1, baseline=0.75), 0.1)
    assert not refused.promoted  # better than the champion, yet far below what pixels give
    assert refused.reason == (
        "test accuracy 0.6000 is more than 0.10 below the baseline's 0.7500 (pixels, same labels)"
    )
    assert current_champion(store).version == "m1"
    assert promote_if_not_worse(store, metrics("m3", 0.66, chance=0.1, baseline=0.75), 0.1).promoted


def test_pixel_baseline_learns_a_learnable_set_and_not_noise():
    x, y = toy_data(n=80, size=8, classes=4)
    x_test, y_test = toy_data(n=40, size=8, classes=4, seed=1)
    assert pixel_baseline(x, y, x_test, y_test).accuracy >= 0.9
    noise = np.random.default_rng(2).uniform(0, 255, x.shape).astype(np.float32)
    assert pixel_baseline(noise, y, x_test, y_test).accuracy <= 0.5
    big = np.repeat(np.repeat(x, 5, axis=1), 5, axis=2)  # 40 px: block means
    assert pixel_baseline(big, y, np.repeat(np.repeat(x_test, 5, 1), 5, 2), y_test).accuracy >= 0.9


def test_fine_tuning_a_pretrained_backbone_keeps_its_batch_norm_statistics(tmp_path):
    base = {"backbone": "mobilenet_v2", "image_size": 32, "head_epochs": 1, "finetune_epochs": 1,
            "batch_size": 8, "min_steps": 0}
    weights = tmp_path / "backbone.weights.h5"
    modeling.build_classifier(ModelSettings(**base), 2).get_layer("backbone").save_weights(weights)
    settings = ModelSettings(**base, weights=str(weights))
    model = modeling.build_classifier(settings, 2)
    backbone = model.get_layer("backbone")
    norms = [layer for layer in backbone.layers if isinstance(layer, keras.layers.BatchNormalization)]
    statistics = [(np.array(layer.moving_mean), np.array(layer.moving_variance)) for layer in norms]
    kernel = backbone.get_layer("Conv1").get_weights()[0].copy()

    history = modeling.train(model, *toy_data(n=16, size=32), settings)

    assert [p.name for p in history.phases] == ["head", "finetune"]
    assert not np.array_equal(kernel, backbone.get_layer("Conv1").get_weights()[0])  # it fine-tuned
    for layer, (mean, variance) in zip(norms, statistics, strict=True):
        np.testing.assert_array_equal(np.array(layer.moving_mean), mean)
        np.testing.assert_array_equal(np.array(layer.moving_variance), variance)


def test_the_gate_compares_with_the_champion_on_the_candidates_test_set(tmp_path):
    """A test set that grew since the champion was promoted: the champion's recorded
    accuracy is of the old set, so it is re-evaluated on the new one before comparing."""
    from activeflow.core.ingest.ingest import ingest_images
    from activeflow.core.ingest.sources import iter_source
    from activeflow.core.storage.pool import load_state
    from activeflow.core.train import training
    from activeflow.evaluation.demo_data import write_digits
    from activeflow.settings import load_settings

    digits = write_digits(tmp_path / "digits", arrivals=2, test_size=80)
    store = LocalStore(tmp_path / "store")
    settings = load_settings(
        storage={"uri": store.uri}, data={"classes": digits.classes},
        model={**TINY, "min_steps": 40, "baseline_tolerance": 1.0},
    )
    test_images = list(iter_source(str(digits.test), labelled=True))
    ingest_images(store, test_images[:40], split="test")
    ingest_images(store, iter_source(str(digits.seed), labelled=True), split="train")
    first = training.train_candidate(store, load_state(store), settings)
    assert training.promote_if_not_worse(store, first, 1.0).promoted
    assert current_champion(store).test_set == first.test_set

    ingest_images(store, test_images[40:], split="test")  # the held-out set grows
    second = training.train_candidate(store, load_state(store), settings)
    decision = training.promote_if_not_worse(store, second, 1.0)

    assert second.test_set != first.test_set
    x, y = training.load_examples(store, load_state(store), load_state(store).test, digits.classes, 8)
    champion = modeling.model_from_bytes(store.get(f"models/{first.version}/model.keras"))
    on_new_set = modeling.evaluate(modeling.predict_proba(champion, x, 64), y, digits.classes).accuracy
    assert second.champion_rescored.version == first.version
    assert second.champion_rescored.accuracy == pytest.approx(on_new_set)
    assert decision.champion_accuracy == pytest.approx(on_new_set)
    assert "(re-evaluated on this test set)" in decision.reason
