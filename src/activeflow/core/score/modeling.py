"""The classifier: a backbone plus a dense softmax head, and the recipe that trains it.

The recipe adapts to the label count (``plan_training``): a minimum number of optimizer
updates however few the labels, a cosine-decayed rate per phase, image augmentation, balanced
class weights when labels are imbalanced, and, once every class can spare some, a validation
split for model selection and early stopping. A pretrained backbone first stays frozen while
the head trains, then everything fine-tunes at a lower rate (Keras' transfer-learning recipe);
a backbone without pretrained weights trains whole in one phase.
Models travel as native ``.keras`` bytes and load with ``safe_mode=True``.
"""

from __future__ import annotations

import contextlib
import functools
import io
import itertools
import math
import os
import random
import sys
import tempfile
import threading
import weakref
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image
from pydantic import BaseModel

from activeflow.core.storage.store import ObjectStore, iter_many
from activeflow.core.train.training_history import PhaseReport, TrainingHistory
from activeflow.settings import AugmentSettings, ModelSettings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's C++ chatter out of logs
# With a GPU, TensorFlow takes all its memory by default; Dask workers sharing one GPU (and
# a trainer beside a scorer) would then fail to start. Grow as needed instead.
os.environ.setdefault("TF_FORCE_GPU_ALLOW_GROWTH", "true")


# TensorFlow's C++ libraries log a few INFO lines to stderr as they load, whatever
# TF_CPP_MIN_LOG_LEVEL says (abseil logs so before absl::InitializeLog: abseil-cpp#1718).
_LOAD_NOISE = ("All log messages before absl::InitializeLog() is called", "oneDNN custom operations are on",
               "cpu_feature_guard.cc")


@contextlib.contextmanager
def _without_load_noise() -> Iterator[None]:
    """Native stderr (fd 2) captured while TensorFlow loads, then passed on less the
    _LOAD_NOISE lines: a real error message still reaches the terminal."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            for line in captured.read().decode(errors="replace").splitlines(keepends=True):
                if not any(noise in line for noise in _LOAD_NOISE):
                    sys.stderr.write(line)


with _without_load_noise():
    import keras  # noqa: E402  (after the log level is set)
    import tensorflow as tf  # noqa: E402

# Where Keras draws unseeded layers' seeds (Python's global ``random``); see _seeded_keras.
from keras.src.random import seed_generator as _keras_seed_source  # noqa: E402

# Smallest input each keras.applications backbone accepts.
_MIN_SIZE = {"small_cnn": 8, "mobilenet_v2": 32, "inception_v3": 75}


class Evaluation(BaseModel):
    accuracy: float
    per_class_accuracy: dict[str, float | None]
    confusion_matrix: list[list[int]]  # [true class, predicted class]
    test_size: int


def decode_image(data: bytes, image_size: int) -> np.ndarray:
    """RGB pixels in 0..255, resized to a square: float32 [size, size, 3]."""
    with Image.open(io.BytesIO(data)) as image:
        resized = image.convert("RGB").resize((image_size, image_size), Image.BILINEAR)
        return np.asarray(resized, dtype=np.float32)


def decode_images(blobs: Sequence[bytes], image_size: int) -> np.ndarray:
    """``decode_image`` of each blob: float32 [n, size, size, 3]."""
    batch = np.empty((len(blobs), image_size, image_size, 3), dtype=np.float32)
    for index, data in enumerate(blobs):
        batch[index] = decode_image(data, image_size)
    return batch


FORWARD_CHUNK = 256  # images decoded ahead of the model and passed to it at a time


def decoded_chunks(store: ObjectStore, keys: Sequence[str], image_size: int) -> Iterator[np.ndarray]:
    """Pixels of ``keys`` in chunks of FORWARD_CHUNK, read and decoded ahead (one empty
    chunk for no keys, so a forward pass still gives the outputs' shapes)."""
    images = iter_many(store, keys, functools.partial(decode_image, image_size=image_size))
    while chunk := list(itertools.islice(images, FORWARD_CHUNK)):
        yield np.stack(chunk)
    if not keys:
        yield np.zeros((0, image_size, image_size, 3), np.float32)


def load_pixels(store: ObjectStore, keys: Sequence[str], image_size: int) -> np.ndarray:
    """Decoded pixels [len(keys), size, size, 3] of the images at ``keys``, read in parallel."""
    return np.concatenate(list(decoded_chunks(store, keys, image_size)))


def one_thread_per_op() -> None:
    """Run each TensorFlow op on one thread, for a process that trains small models side by
    side: a small CNN's ops are too small to gain from splitting across cores, and two such
    trainings then share two cores instead of contending for them (8 px, two at once: 1.7
    against 2.3 ms an update; the demo 92 against 120 s). Only before TensorFlow runs an op."""
    tf.config.threading.set_intra_op_parallelism_threads(1)


def build_classifier(settings: ModelSettings, num_classes: int) -> keras.Model:
    """Backbone + dropout + softmax head; input is raw RGB in 0..255."""
    if num_classes < 2:
        raise ValueError(f"a classifier needs at least 2 classes, got {num_classes}")
    if settings.image_size < _MIN_SIZE[settings.backbone]:
        raise ValueError(
            f"model.image_size={settings.image_size} is below {settings.backbone}'s minimum "
            f"of {_MIN_SIZE[settings.backbone]}"
        )
    with _seeded_keras(settings.seed):
        return _build(settings, num_classes)


_SEED_LOCK = threading.Lock()


@contextlib.contextmanager
def _seeded_keras(seed: int) -> Iterator[None]:
    """Keras seeds every unseeded initializer and dropout layer from Python's global
    ``random``, which any other thread (Prefect's services, HTTP clients) may draw from
    mid-build. Builds take turns under a lock (loads too: ``model_from_bytes``) and read their
    layer seeds from a private generator instead, so a seed gives the same model whatever else runs."""
    with _SEED_LOCK:
        keras.utils.set_random_seed(seed)
        shared = _keras_seed_source.python_random
        _keras_seed_source.python_random = random.Random(seed)
        try:
            yield
        finally:
            _keras_seed_source.python_random = shared


def _build(settings: ModelSettings, num_classes: int) -> keras.Model:
    size = settings.image_size
    inputs = keras.Input((size, size, 3), name="image")
    if settings.backbone == "small_cnn":
        x = keras.layers.Rescaling(1 / 255.0, name="preprocess")(inputs)
        backbone = _small_cnn(size)
        if settings.weights is not None:
            backbone.load_weights(_weights_file(settings.weights))
    else:
        # Both applications expect inputs scaled to [-1, 1].
        x = keras.layers.Rescaling(1 / 127.5, offset=-1.0, name="preprocess")(inputs)
        application = {
            "mobilenet_v2": keras.applications.MobileNetV2,
            "inception_v3": keras.applications.InceptionV3,
        }[settings.backbone]
        weights = settings.weights if settings.weights in (None, "imagenet") else _weights_file(
            settings.weights
        )
        backbone = application(
            input_shape=(size, size, 3), include_top=False, weights=weights, pooling="avg"
        )
        backbone.name = "backbone"
    # training=False is not enough for inference-mode BatchNorm: in Keras 3 a training step
    # calls the outer model with training=True and that flag reaches the backbone's layers
    # (seen on MobileNetV2). Fine-tuning makes them non-trainable instead (_freeze_batch_norm).
    features = backbone(x, training=False)
    x = keras.layers.Dropout(settings.dropout, name="dropout")(features)
    outputs = keras.layers.Dense(num_classes, activation="softmax", name="head")(x)
    return keras.Model(inputs, outputs, name=f"activeflow_{settings.backbone}")


def _small_cnn(size: int) -> keras.Model:
    """Four 3x3 conv blocks, halving the side between them: at the default 32 px the last
    block sees the whole image, and it costs about 8 MFLOPs an image, so a retrain's few
    hundred updates take seconds on two cores.

    Each image is standardised first (zero mean, unit variance over its pixels), so colour
    and exposure need not be learnt from few labels, and each conv is group-normalised:
    without it the network sat on a loss plateau for over 1,000 updates on synthetic shapes
    (180 labels: 24 % after 400 updates, 84 % with it). Group, not batch, normalisation:
    batches of a few labels made BatchNorm's statistics noisy (digits: 54 % against 71 % at
    20 labels)."""
    layers = keras.layers
    blocks: list[keras.Layer] = [
        layers.LayerNormalization(axis=(1, 2, 3), center=False, scale=False, epsilon=1e-3, name="standardise")
    ]
    for index, width in enumerate((16, 32, 64, 128)):
        if index:
            blocks.append(layers.MaxPooling2D())
        blocks += [
            layers.Conv2D(width, 3, padding="same", use_bias=False),
            layers.GroupNormalization(groups=4),
            layers.ReLU(),
        ]
    return keras.Sequential(
        [keras.Input((size, size, 3)), *blocks, layers.GlobalAveragePooling2D()], name="backbone"
    )


def _weights_file(path: str) -> str:
    if not Path(path).is_file():
        raise ValueError(f"model.weights: {path!r} is neither None, 'imagenet' nor a file")
    return path


class TrainingPhase(BaseModel):
    """One phase of a retrain: ``steps`` optimizer updates at a cosine-decayed rate."""

    name: Literal["head", "finetune", "whole"]
    steps: int
    min_steps: int  # the floor of model.min_steps this phase gets; early stopping stays above it
    learning_rate: float
    backbone_trainable: bool


class TrainingPlan(BaseModel):
    """How a retrain spends its updates, worked out from the label count alone."""

    phases: list[TrainingPhase]
    train_size: int
    validation_size: int
    batch_size: int
    validation_note: str  # why there is, or is not, a validation split


def plan_training(labels_per_class: Sequence[int], settings: ModelSettings) -> TrainingPlan:
    """Phases and step counts for ``labels_per_class`` (count of each class with labels).

    Epochs say how often the data is seen once it is large; ``min_steps`` keeps small sets
    from getting a handful of updates (20 labels in batches of 32 are one step an epoch), and
    is split between the phases by their epochs. A backbone without pretrained weights has
    nothing to protect, so it trains whole in one phase of all the epochs at the head's rate.
    """
    counts = [int(c) for c in labels_per_class if c > 0]
    total = sum(counts)
    if total == 0:
        raise ValueError("no labels to train on")
    validation = _validation_size(counts, settings)
    train_size = total - validation
    batch = min(settings.batch_size, train_size)
    per_epoch = math.ceil(train_size / batch)
    epochs = settings.head_epochs + settings.finetune_epochs

    def phase(name: str, phase_epochs: int, rate: float, trainable: bool) -> TrainingPhase:
        least = math.ceil(settings.min_steps * phase_epochs / epochs)
        return TrainingPhase(name=name, steps=max(phase_epochs * per_epoch, least), min_steps=least,
                             learning_rate=rate, backbone_trainable=trainable)

    if settings.weights is None:
        phases = [phase("whole", epochs, settings.head_learning_rate, True)]
    else:
        phases = [
            phase(name, phase_epochs, rate, trainable)
            for name, phase_epochs, rate, trainable in (
                ("head", settings.head_epochs, settings.head_learning_rate, False),
                ("finetune", settings.finetune_epochs, settings.finetune_learning_rate, True),
            )
            if phase_epochs > 0
        ]
    smallest, need = min(counts), settings.validation_min_per_class
    note = (
        f"{validation} labels held out for model selection and early stopping"
        if validation
        else f"no validation split: the smallest class has {smallest} labels (< {need}); "
        "every label trains, for the planned steps"
    )
    return TrainingPlan(phases=phases, train_size=train_size, validation_size=validation,
                        batch_size=batch, validation_note=note)


def _validation_size(counts: Sequence[int], settings: ModelSettings) -> int:
    # Only when every class can spare labels: a split of 2 images per class is noise.
    if settings.validation_fraction == 0 or min(counts) < settings.validation_min_per_class:
        return 0
    return sum(_held_out(c, settings.validation_fraction) for c in counts)


def _held_out(count: int, fraction: float) -> int:
    """Validation labels taken from a class of ``count`` labels (the plan and the split agree)."""
    return max(1, round(count * fraction))


def train(model: keras.Model, x: np.ndarray, y: np.ndarray, settings: ModelSettings) -> TrainingHistory:
    """Train ``model`` on pixels ``x`` and class indices ``y`` by the plan for their counts.

    Batches, augmentation and the validation split come from one generator seeded with
    ``settings.seed``, so a retrain is reproducible and independent of other threads' runs.
    With a validation split the weights of the best validation accuracy are kept, and a phase
    past its first half stops once that has not improved for ``patience`` evaluations.
    """
    num_classes = model.output_shape[-1]
    rng = np.random.default_rng(settings.seed)
    plan = plan_training(np.bincount(y, minlength=num_classes).tolist(), settings)
    fraction = settings.validation_fraction if plan.validation_size else 0.0
    train_idx, val_idx = _split(y, fraction, rng)
    weights = class_weights(y[train_idx], num_classes)
    invert = inversion_share(x[train_idx], settings)
    resolved = settings.model_copy(update={"augment": settings.augment.model_copy(update={"invert": invert})})
    sample_weight = (weights[y] if weights is not None else np.ones(len(y))).astype(np.float32)
    tracker = _BestWeights(model, x[val_idx], y[val_idx]) if len(val_idx) else None
    losses: list[list[float]] = []
    reports, step_offset, stopped = [], 0, False
    backbone = model.get_layer("backbone")
    for phase in plan.phases:
        backbone.trainable = phase.backbone_trainable
        if phase.name == "finetune":
            _freeze_batch_norm(backbone)
        # Adam with decoupled weight decay (AdamW's update); 0 is plain Adam, step for step.
        optimizer = keras.optimizers.Adam(
            keras.optimizers.schedules.CosineDecay(phase.learning_rate, phase.steps),
            weight_decay=settings.weight_decay or None,
        )
        if phase.name == "finetune" and settings.weight_decay:
            # Decay pulls weights towards zero: right for weights learnt from these labels,
            # wrong for pretrained ones behind frozen BatchNorm statistics (it would shrink
            # the features the statistics were measured on).
            optimizer.exclude_from_weight_decay(var_list=backbone.trainable_variables)
        # Built here, its variables exist before the first step: created inside the compiled
        # steps they would make tf.function trace twice.
        optimizer.build(model.trainable_variables)
        run_steps = _compiled_steps(model, optimizer)
        run, phase_losses, stopped = _run_phase(
            run_steps, phase, x, y, sample_weight, train_idx, plan.batch_size, rng, resolved, tracker, step_offset
        )
        losses.append(phase_losses)
        reports.append(PhaseReport(name=phase.name, steps_planned=phase.steps, steps_run=run,
                                   learning_rate=phase.learning_rate, backbone_trainable=phase.backbone_trainable))
        step_offset += run
    if tracker is not None:
        tracker.restore()
    backbone.trainable = True
    return TrainingHistory(
        head_loss=losses[0] if losses else [],
        finetune_loss=losses[1] if len(losses) > 1 else [],
        phases=reports,
        train_size=len(train_idx),
        validation_size=len(val_idx),
        validation_note=plan.validation_note,
        validation_accuracy=tracker.best_accuracy if tracker else None,
        best_step=tracker.best_step if tracker else None,
        stopped_early=stopped,
        class_weights=weights.tolist() if weights is not None else None,
        invert=invert,
    )


def _freeze_batch_norm(backbone: keras.Model) -> None:
    """Keep a pretrained backbone's BatchNorm layers in inference mode while it fine-tunes:
    a non-trainable BatchNormalization in Keras 3 uses, and keeps, its moving statistics,
    so a few small batches of labels cannot overwrite what pretraining learnt (Keras'
    transfer-learning guide)."""
    for layer in backbone.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False
        elif isinstance(layer, keras.Model):
            _freeze_batch_norm(layer)


def class_weights(y: np.ndarray, num_classes: int, *, imbalance: float = 1.5) -> np.ndarray | None:
    """Balanced weights (mean 1 over the samples) when the largest labelled class has more
    than ``imbalance`` times the labels of the smallest; None when they are about even."""
    counts = np.bincount(y, minlength=num_classes).astype(np.float64)
    present = counts > 0
    if counts[present].max() <= imbalance * counts[present].min():
        return None
    weights = np.zeros(num_classes)
    weights[present] = len(y) / (present.sum() * counts[present])
    return weights


def _split(y: np.ndarray, fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(train, validation) indices; ``fraction`` of each class is held out (0: none)."""
    if fraction == 0:
        return np.arange(len(y)), np.zeros(0, dtype=np.int64)
    held = [
        rng.choice(members, _held_out(len(members), fraction), replace=False)
        for members in (np.flatnonzero(y == c) for c in np.unique(y))
    ]
    val = np.sort(np.concatenate(held))
    return np.setdiff1d(np.arange(len(y)), val), val


def _compiled_steps(model: keras.Model, optimizer: keras.Optimizer) -> Callable[..., tf.Tensor]:
    """Consecutive training steps in one compiled call: ``(x [k, b, ...], y [k, b],
    weights [k, b]) -> summed loss``, each step Keras' custom-loop recipe (a tape over the
    weighted loss, then ``optimizer.apply``).

    One call per evaluation interval instead of one ``train_on_batch`` per step, whose
    per-call overhead was most of a small CNN's update (2 cores, a whole retrain: 3.6 against
    6.0 ms an update at 8 px, 14.4 against 22.4 at 32 px; ``benchmarks/train_steps.py``).
    Traced once a phase, when the phase's trainable weights are known."""
    weights = model.trainable_variables
    loss_fn = keras.losses.SparseCategoricalCrossentropy()  # what compile's string named

    @tf.function(reduce_retracing=True)
    def run_steps(xs: tf.Tensor, ys: tf.Tensor, ws: tf.Tensor) -> tf.Tensor:
        total = tf.constant(0.0)
        for k in tf.range(tf.shape(xs)[0]):
            with tf.GradientTape() as tape:
                loss = loss_fn(ys[k], model(xs[k], training=True), sample_weight=ws[k])
                if model.losses:
                    loss += tf.add_n(model.losses)
            optimizer.apply(tape.gradient(loss, weights), weights)
            total += loss
        return total

    return run_steps


_CHUNK_BYTES = 64 * 2**20  # augmented pixels handed to one compiled call, at most


def _training_batches(
    x: np.ndarray, train_idx: np.ndarray, batch_size: int, augment_settings: AugmentSettings,
    rng: np.random.Generator,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(indices, augmented pixels) of batches without end: every label once an epoch, an
    epoch's leftover opening the next. One generator draws both, in step order, so chunking
    the steps changes nothing."""
    order = np.zeros(0, dtype=np.int64)
    while True:
        if len(order) < batch_size:
            order = np.concatenate([order, rng.permutation(train_idx)])
        batch, order = order[:batch_size], order[batch_size:]
        yield batch, augment(x[batch], augment_settings, rng)


def _run_phase(  # noqa: PLR0913 (one phase's whole context)
    run_steps: Callable[..., tf.Tensor],
    phase: TrainingPhase,
    x: np.ndarray,
    y: np.ndarray,
    sample_weight: np.ndarray,
    train_idx: np.ndarray,
    batch_size: int,
    rng: np.random.Generator,
    settings: ModelSettings,
    tracker: _BestWeights | None,
    step_offset: int,
) -> tuple[int, list[float], bool]:
    """(steps run, mean loss per evaluation interval, stopped early)."""
    interval = max(1, phase.steps // 10)
    per_call = max(1, _CHUNK_BYTES // (batch_size * x[0].nbytes))
    batches = _training_batches(x, train_idx, batch_size, settings.augment, rng)
    losses, step = [], 0
    while step < phase.steps:
        start, checkpoint, total = step, min(step + interval, phase.steps), 0.0
        while step < checkpoint:
            indices, pixels = zip(*itertools.islice(batches, min(per_call, checkpoint - step)), strict=True)
            index = np.stack(indices)
            total += float(run_steps(np.stack(pixels), y[index], sample_weight[index]))
            step += len(index)
        losses.append(total / (step - start))
        stale = tracker.update(step_offset + step) if tracker is not None else 0
        # Never below the phase's floor of updates, nor in its first half: a network trained
        # from scratch can sit on a loss plateau for hundreds of steps before it learns (seen
        # on synthetic shapes), so early stopping only trims epochs beyond the minimum.
        if stale >= settings.patience and max(phase.min_steps, phase.steps // 2) <= step < phase.steps:
            return step, losses, True
    return phase.steps, losses, False


class _BestWeights:
    """Keeps the weights of the best validation accuracy seen, the lower loss breaking ties;
    counts evaluations since. Accuracy, not loss alone: a network trained from scratch on
    few labels grows confident as it learns, and the lowest loss was often the untrained
    plateau (synthetic shapes, 180 labels: 27 % kept by loss, 40 % by accuracy)."""

    def __init__(self, model: keras.Model, x: np.ndarray, y: np.ndarray) -> None:
        self.model, self.x, self.y = model, x, y
        self.best = (-math.inf, -math.inf)  # (accuracy, -loss): higher is better
        self.best_step: int | None = None
        self.weights: list[np.ndarray] | None = None
        self.since_best = 0

    @property
    def best_accuracy(self) -> float | None:
        return self.best[0] if self.best_step is not None else None

    def update(self, step: int) -> int:
        probs = np.clip(predict_proba(self.model, self.x, 256), 1e-12, 1.0)
        loss = float(-np.mean(np.log(probs[np.arange(len(self.y)), self.y])))
        accuracy = float(np.mean(probs.argmax(axis=1) == self.y))
        if (accuracy, -loss) > self.best:
            self.best, self.best_step, self.since_best = (accuracy, -loss), step, 0
            self.weights = [w.copy() for w in self.model.get_weights()]
        else:
            self.since_best += 1
        return self.since_best

    def restore(self) -> None:
        if self.weights is not None:
            self.model.set_weights(self.weights)


_LUMA = np.array([0.299, 0.587, 0.114], np.float32)  # ITU-R 601, as PIL's convert("L")


def inversion_share(x: np.ndarray, settings: ModelSettings) -> float:
    """The share of training images to invert: ``augment.invert``, or for ``"auto"`` 0.5 when
    the images ``x`` do not share one polarity, else 0.

    Polarity is whether an image's mean is brighter or darker than its border (the border is
    background for centred objects, a shape or a digit alike). Inverting teaches the model
    that polarity carries no class, true for drawings in random colours and false for scans
    of ink on paper. Pretrained weights get none: inverted photos are off their distribution.
    """
    if settings.augment.invert != "auto":
        return float(settings.augment.invert)
    if settings.weights is not None:
        return 0.0
    contrast = _object_contrast(x)
    clear = contrast[np.abs(contrast) > _CLEAR_CONTRAST]
    if not len(clear):
        return 0.0
    minority = min(np.mean(clear > 0), np.mean(clear < 0))
    return 0.5 if minority >= _MIXED_POLARITY else 0.0


_CLEAR_CONTRAST = 2.0  # grey levels: flatter images say nothing of polarity
_MIXED_POLARITY = 0.1  # share of the other polarity from which it counts as mixed


def _object_contrast(x: np.ndarray) -> np.ndarray:
    """Per image, mean luma minus the mean luma of its outer frame (1/16 of the side)."""
    luma = x.astype(np.float32, copy=False) @ _LUMA
    side = luma.shape[1]
    width = max(1, side // 16)
    frame = np.zeros((side, side), bool)
    frame[:width], frame[-width:], frame[:, :width], frame[:, -width:] = True, True, True, True
    return luma.mean(axis=(1, 2)) - luma[:, frame].mean(axis=1)


def augment(x: np.ndarray, settings: AugmentSettings, rng: np.random.Generator) -> np.ndarray:
    """Random shifts (edges repeated), optional horizontal flips, brightness and contrast
    jitter, grey images and inversions; pixels stay in 0..255. Returns a new array."""
    n, size = x.shape[0], x.shape[1]
    out = np.empty_like(x)
    reach = int(round(settings.shift * size))
    padded = np.pad(x, ((0, 0), (reach, reach), (reach, reach), (0, 0)), mode="edge") if reach else x
    offsets = rng.integers(0, 2 * reach + 1, (n, 2)) if reach else np.zeros((n, 2), dtype=np.int64)
    for i, (dy, dx) in enumerate(offsets):
        out[i] = padded[i, dy : dy + size, dx : dx + size]
    if settings.horizontal_flip:
        flip = rng.random(n) < 0.5
        out[flip] = out[flip, :, ::-1]
    if settings.intensity:
        mean = out.mean(axis=(1, 2, 3), keepdims=True)
        contrast = rng.uniform(1 - settings.intensity, 1 + settings.intensity, (n, 1, 1, 1))
        brightness = rng.uniform(-settings.intensity, settings.intensity, (n, 1, 1, 1)) * 255
        out = np.clip((out - mean) * contrast + mean + brightness, 0, 255)
    if settings.grayscale:
        chosen = rng.random(n) < settings.grayscale
        out[chosen] = (out[chosen] @ _LUMA)[..., None]
    if settings.invert == "auto":
        raise ValueError("augment needs a share to invert; inversion_share resolves 'auto'")
    if settings.invert:
        chosen = rng.random(n) < settings.invert
        out[chosen] = 255 - out[chosen]
    return out.astype(np.float32, copy=False)


def predict_proba(model: keras.Model, x: np.ndarray, batch_size: int) -> np.ndarray:
    """Class probabilities [n, C] as float64 (rows renormalised against float32 rounding)."""
    if len(x) == 0:
        return np.zeros((0, model.output_shape[-1]))
    probs = np.asarray(_predict(model, x, batch_size), dtype=np.float64)
    return probs / probs.sum(axis=1, keepdims=True)


def _predict(model: keras.Model, x: np.ndarray, batch_size: int) -> np.ndarray | list[np.ndarray]:
    """``model.predict`` without its per-call set-up (a data pipeline and callbacks, about
    half a second a call, paid by every scoring shard): batch by batch through the model's
    compiled predict function. Outputs as ``predict``'s: an array, or one per model output.

    A short last batch is padded to the full size: a new shape would trace the predict
    function again, about half a second for each new model (each retrain's test set, each
    scoring shard), and in inference mode each row's output depends on that row alone."""
    batches = [_predict_batch(model, x[i : i + batch_size], batch_size if len(x) > batch_size else 0)
               for i in range(0, len(x), batch_size)]
    if isinstance(batches[0], (list, tuple)):
        return [np.concatenate(parts) for parts in zip(*batches, strict=True)]
    return np.concatenate(batches)


def _predict_batch(model: keras.Model, batch: np.ndarray, pad_to: int) -> np.ndarray | list[np.ndarray]:
    rows = len(batch)
    if rows >= pad_to:
        return model.predict_on_batch(batch)
    padding = np.zeros((pad_to - rows, *batch.shape[1:]), batch.dtype)
    out = model.predict_on_batch(np.concatenate([batch, padding]))
    return [part[:rows] for part in out] if isinstance(out, (list, tuple)) else out[:rows]


def evaluate(probs: np.ndarray, y: np.ndarray, classes: Sequence[str]) -> Evaluation:
    predicted = probs.argmax(axis=1)
    matrix = np.zeros((len(classes), len(classes)), dtype=int)
    np.add.at(matrix, (y, predicted), 1)
    support = matrix.sum(axis=1)
    per_class = {
        name: (float(matrix[i, i] / support[i]) if support[i] else None)
        for i, name in enumerate(classes)
    }
    return Evaluation(
        accuracy=float(np.trace(matrix) / max(len(y), 1)),
        per_class_accuracy=per_class,
        confusion_matrix=matrix.tolist(),
        test_size=int(len(y)),
    )


def model_to_bytes(model: keras.Model) -> bytes:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.keras"
        model.save(path)
        return path.read_bytes()


def model_from_bytes(data: bytes) -> keras.Model:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.keras"
        path.write_bytes(data)
        # Its layers draw seeds as a build's do: never from a build's private generator
        # (one strategy scoring while another retrains took draws meant for the retrain).
        with _SEED_LOCK:
            return keras.models.load_model(path, safe_mode=True, compile=False)


# --- what the active-learning strategies need beyond probabilities ---------------------------


class ForwardOutputs(BaseModel):
    """One pass of a model over a batch of images, with what selection strategies need.

    probs: [n, C] float64, rows summing to 1 (as ``predict_proba``).
    embeddings: [n, d] float32 penultimate features (the input of the "dropout" layer), or None.
    mc_probs: [T, n, C] float64, T stochastic passes with dropout on, or None.
    """

    model_config = {"arbitrary_types_allowed": True}

    probs: np.ndarray
    embeddings: np.ndarray | None = None
    mc_probs: np.ndarray | None = None

    @classmethod
    def concatenate(cls, parts: Sequence[ForwardOutputs]) -> ForwardOutputs:
        """The outputs of consecutive batches as one (samples are axis 1 of ``mc_probs``)."""
        first = parts[0]
        return cls(
            probs=np.concatenate([p.probs for p in parts]),
            embeddings=None if first.embeddings is None else np.concatenate([p.embeddings for p in parts]),
            mc_probs=None if first.mc_probs is None else np.concatenate([p.mc_probs for p in parts], axis=1),
        )


def _layer(model: keras.Model, name: str) -> keras.Layer:
    try:
        return model.get_layer(name)
    except ValueError:
        raise ValueError(
            f"model {model.name!r} has no {name!r} layer; models from build_classifier have "
            "backbone -> dropout -> head: retrain to get one"
        ) from None


# One two-output view per model, so its predict function is traced once, not once per shard.
_FEATURE_VIEWS: weakref.WeakKeyDictionary[keras.Model, keras.Model] = weakref.WeakKeyDictionary()
_FEATURE_VIEWS_LOCK = threading.Lock()


def _with_features(model: keras.Model) -> keras.Model:
    """``model`` with a second output: the penultimate features (input of "dropout")."""
    with _FEATURE_VIEWS_LOCK:
        view = _FEATURE_VIEWS.get(model)
        if view is None:
            features = _layer(model, "dropout").input
            view = keras.Model(model.inputs, [features, model.output], name=f"{model.name}_features")
            _FEATURE_VIEWS[model] = view
        return view


def _normalised(probs: np.ndarray) -> np.ndarray:
    probs = np.asarray(probs, dtype=np.float64)
    return probs / probs.sum(axis=-1, keepdims=True)


def forward_pool(
    model: keras.Model,
    x: np.ndarray,
    batch_size: int,
    *,
    embeddings: bool = False,
    mc_passes: int = 0,
    seed: int | Sequence[int] = 0,
) -> ForwardOutputs:
    """Probabilities, and on request embeddings and Monte-Carlo-dropout passes, of ``x``.

    The backbone (the expensive part) runs once, in inference mode, over the whole batch; its
    pooled features are the embeddings. Each of the ``mc_passes`` stochastic passes then drops
    features with the model's own dropout rate (inverted dropout, exactly what the "dropout"
    layer does in training) and applies the "head" layer: T passes cost one backbone pass plus
    T small matrix products, and BatchNorm in the backbone stays in inference mode. (Calling
    the whole model with ``training=True`` would not do that: Keras 3 passes the outer
    ``training`` flag into the backbone and overrides the ``training=False`` it was built with,
    so BatchNorm would use, and update, batch statistics.) The dropout masks come from
    ``numpy.random.default_rng(seed)``, so a pass is reproducible.
    """
    if mc_passes < 0:
        raise ValueError(f"mc_passes must be >= 0, got {mc_passes}")
    num_classes = model.output_shape[-1]
    features_layer = _layer(model, "dropout")
    if len(x) == 0:
        return ForwardOutputs(
            probs=np.zeros((0, num_classes)),
            embeddings=np.zeros((0, features_layer.input.shape[-1]), np.float32) if embeddings else None,
            mc_probs=np.zeros((mc_passes, 0, num_classes)) if mc_passes else None,
        )
    if not embeddings and not mc_passes:
        return ForwardOutputs(probs=predict_proba(model, x, batch_size))
    features, probs = _predict(_with_features(model), x, batch_size)
    features = np.asarray(features, dtype=np.float32)  # [n, d]
    mc_probs = None
    if mc_passes:
        rate = float(features_layer.rate)
        if rate <= 0.0:
            raise ValueError(
                "Monte-Carlo dropout needs model.dropout > 0; this model was built with 0, so "
                "every pass would be the same (BALD would be 0 everywhere)"
            )
        head = _layer(model, "head")
        rng = np.random.default_rng(seed)
        passes = []
        for _ in range(mc_passes):
            keep = rng.random(features.shape, dtype=np.float32) >= rate  # [n, d]
            dropped = np.where(keep, features / (1.0 - rate), 0.0).astype(np.float32)
            passes.append(_normalised(keras.ops.convert_to_numpy(head(dropped))))  # [n, C]
        mc_probs = np.stack(passes)  # [T, n, C]
    return ForwardOutputs(
        probs=_normalised(probs),
        embeddings=features if embeddings else None,
        mc_probs=mc_probs,
    )
