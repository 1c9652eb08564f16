"""The classifier: a backbone plus a dense softmax head, trained in two phases.

Phase 1 trains the head with the backbone frozen; phase 2 unfreezes everything and
fine-tunes at a lower learning rate (Keras' transfer-learning recipe). A backbone
without pretrained weights has nothing worth freezing, so phase 1 then trains it too.
Models travel as native ``.keras`` bytes and load with ``safe_mode=True``.
"""

from __future__ import annotations

import io
import os
import tempfile
import threading
import weakref
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image
from pydantic import BaseModel

from activeflow.settings import ModelSettings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's C++ chatter out of logs

import keras  # noqa: E402  (after the log level is set)

# Smallest input each keras.applications backbone accepts.
_MIN_SIZE = {"small_cnn": 8, "mobilenet_v2": 32, "inception_v3": 75}


class TrainingHistory(BaseModel):
    head_loss: list[float]
    finetune_loss: list[float]


class Evaluation(BaseModel):
    accuracy: float
    per_class_accuracy: dict[str, float | None]
    confusion_matrix: list[list[int]]  # [true class, predicted class]
    test_size: int


def decode_images(blobs: Sequence[bytes], image_size: int) -> np.ndarray:
    """RGB pixels in 0..255, resized to a square: float32 [n, size, size, 3]."""
    batch = np.empty((len(blobs), image_size, image_size, 3), dtype=np.float32)
    for index, data in enumerate(blobs):
        with Image.open(io.BytesIO(data)) as image:
            resized = image.convert("RGB").resize((image_size, image_size), Image.BILINEAR)
            batch[index] = np.asarray(resized, dtype=np.float32)
    return batch


def build_classifier(settings: ModelSettings, num_classes: int) -> keras.Model:
    """Backbone + dropout + softmax head; input is raw RGB in 0..255."""
    if num_classes < 2:
        raise ValueError(f"a classifier needs at least 2 classes, got {num_classes}")
    if settings.image_size < _MIN_SIZE[settings.backbone]:
        raise ValueError(
            f"model.image_size={settings.image_size} is below {settings.backbone}'s minimum "
            f"of {_MIN_SIZE[settings.backbone]}"
        )
    keras.utils.set_random_seed(settings.seed)
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
    # training=False asks for inference-mode BatchNorm; note that in Keras 3 fit() calls the
    # outer model with training=True and that flag reaches the backbone's BatchNorm layers
    # (seen on MobileNetV2), so fine-tuning a pretrained backbone updates their statistics.
    features = backbone(x, training=False)
    x = keras.layers.Dropout(settings.dropout, name="dropout")(features)
    outputs = keras.layers.Dense(num_classes, activation="softmax", name="head")(x)
    return keras.Model(inputs, outputs, name=f"activeflow_{settings.backbone}")


def _small_cnn(size: int) -> keras.Model:
    layers = keras.layers
    return keras.Sequential(
        [
            keras.Input((size, size, 3)),
            layers.Conv2D(32, 3, padding="same", activation="relu"),
            layers.MaxPooling2D(),
            layers.Conv2D(64, 3, padding="same", activation="relu"),
            layers.MaxPooling2D(),
            layers.Conv2D(128, 3, padding="same", activation="relu"),
            layers.GlobalAveragePooling2D(),
        ],
        name="backbone",
    )


def _weights_file(path: str) -> str:
    if not Path(path).is_file():
        raise ValueError(f"model.weights: {path!r} is neither None, 'imagenet' nor a file")
    return path


def train_two_phase(
    model: keras.Model, x: np.ndarray, y: np.ndarray, settings: ModelSettings
) -> TrainingHistory:
    """Phase 1: head (backbone frozen when pretrained); phase 2: everything, lower rate."""
    keras.utils.set_random_seed(settings.seed)
    backbone = model.get_layer("backbone")
    backbone.trainable = settings.weights is None
    head_loss = _fit(model, x, y, settings.head_epochs, settings.head_learning_rate, settings)
    backbone.trainable = True
    finetune_loss = _fit(
        model, x, y, settings.finetune_epochs, settings.finetune_learning_rate, settings
    )
    return TrainingHistory(head_loss=head_loss, finetune_loss=finetune_loss)


def _fit(
    model: keras.Model,
    x: np.ndarray,
    y: np.ndarray,
    epochs: int,
    learning_rate: float,
    settings: ModelSettings,
) -> list[float]:
    if epochs == 0:
        return []
    # Recompiling after changing `trainable` is what makes the change take effect.
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    history = model.fit(x, y, epochs=epochs, batch_size=settings.batch_size, verbose=0)
    return [float(v) for v in history.history["loss"]]


def predict_proba(model: keras.Model, x: np.ndarray, batch_size: int) -> np.ndarray:
    """Class probabilities [n, C] as float64 (rows renormalised against float32 rounding)."""
    if len(x) == 0:
        return np.zeros((0, model.output_shape[-1]))
    probs = np.asarray(model.predict(x, batch_size=batch_size, verbose=0), dtype=np.float64)
    return probs / probs.sum(axis=1, keepdims=True)


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
    features, probs = _with_features(model).predict(x, batch_size=batch_size, verbose=0)
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
