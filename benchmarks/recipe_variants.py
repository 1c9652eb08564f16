"""Test accuracy of one retrain on a few random labels, at the default recipe and at variants.

A quick probe, minutes not an hour: each (variant, label count, seed) draws that many labels
(an equal share of each class, from the benchmark's pool split), trains the default model
with the variant's settings and scores it on the benchmark's held-out test set. No active
learning: what it measures is how much a recipe change helps a model learn from few labels
(the label-efficiency benchmark then tells whether the curves follow).

    python benchmarks/recipe_variants.py [--dataset shapes] [--labels 20,60] [--seeds 2]
        [--variant NAME=group.field=value[;group.field=value]] ... [--set group.field=value]
        [--out FILE]

--set changes every variant's settings, the defaults' too (e.g. a tiny model for a smoke run).

Writes benchmarks/results/recipe_variants/<dataset>.json unless --out.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).parent / "results" / "recipe_variants"


def _variant(text: str) -> tuple[str, list[str]]:
    name, _, pairs = text.partition("=")
    return name, [p for p in pairs.split(";") if p]


def _labelled_pixels(folder: str, classes: list[str], size: int) -> tuple[np.ndarray, np.ndarray]:
    from activeflow.core.ingest.sources import iter_source
    from activeflow.core.score.modeling import decode_images

    images = list(iter_source(folder, labelled=True))
    y = np.array([classes.index(image.label) for image in images])
    return decode_images([image.data for image in images], size), y


def _retrain_accuracy(settings, train: tuple, test: tuple, count: int) -> tuple[float, int]:
    """(test accuracy, labels used) of one retrain on ``count`` labels drawn evenly per class
    with ``settings.seed``."""
    from activeflow.core.score import modeling

    (x, y), (x_test, y_test) = train, test
    classes = int(y.max()) + 1
    rng = np.random.default_rng(settings.seed)
    chosen = np.concatenate(
        [rng.choice(np.flatnonzero(y == c), count // classes, replace=False) for c in range(classes)]
    )
    model = modeling.build_classifier(settings, classes)
    modeling.train(model, x[chosen], y[chosen], settings)
    predicted = modeling.predict_proba(model, x_test, 256).argmax(axis=1)
    return float(np.mean(predicted == y_test)), len(chosen)


def main() -> None:
    from label_efficiency import _overrides

    from activeflow.evaluation import label_efficiency as le
    from activeflow.settings import load_settings

    parser = argparse.ArgumentParser()
    parser.add_argument("--dataset", default="shapes")
    parser.add_argument("--labels", default="20,60")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--variant", action="append", default=[],
                        help="NAME=group.field=value[;...], e.g. grey=model.augment.grayscale=1")
    parser.add_argument("--set", action="append", default=[], help="group.field=value, for every variant")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    variants = dict([("defaults", []), *(_variant(v) for v in args.variant)])
    label_counts = [int(n) for n in args.labels.split(",")]

    results = []
    with tempfile.TemporaryDirectory(prefix="activeflow-recipe-") as folder:
        data = le.prepare_dataset(Path(folder), args.dataset)
        pixels: dict[int, tuple] = {}  # decoded once per image size
        for name, overrides in variants.items():
            variant = load_settings(**_overrides(args.set + overrides)).model
            size = variant.image_size
            if size not in pixels:
                pixels[size] = (_labelled_pixels(data.rest, data.classes, size),
                                _labelled_pixels(data.test, data.classes, size))
            for count in label_counts:
                for seed in range(args.seeds):
                    settings = variant.model_copy(update={"seed": seed})
                    started = time.perf_counter()
                    accuracy, labels = _retrain_accuracy(settings, *pixels[size], count)
                    row = {"variant": name, "labels": labels, "seed": seed, "accuracy": round(accuracy, 4),
                           "seconds": round(time.perf_counter() - started, 1)}
                    results.append(row)
                    print(json.dumps(row), flush=True)

    means = {
        name: {
            str(n): round(float(np.mean([r["accuracy"] for r in results
                                         if r["variant"] == name and r["labels"] == n])), 4)
            for n in sorted({r["labels"] for r in results})
        }
        for name in variants
    }
    out = args.out or RESULTS / f"{args.dataset.replace(':', '-').replace('/', '_')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "benchmark": "recipe_variants", "dataset": args.dataset, "seeds": args.seeds,
        "variants": variants, "set_for_all": args.set, "mean_accuracy": means, "runs": results,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
    }, indent=2) + "\n")
    print(json.dumps(means, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
