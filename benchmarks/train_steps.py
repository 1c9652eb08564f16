"""What one optimizer update of a retrain costs: ``modeling.train`` against a step-by-step
``train_on_batch`` loop over the same model, batches and augmentation.

For each image size, one retrain of the default small CNN on ``--labels`` random images
(``--steps`` updates), alone and as two at once in threads (the demo runs its two strategies
side by side). The reference loop is what ``modeling.train`` did before its steps were
compiled together: one Keras ``train_on_batch`` call per update. Medians of ``--repeats``.
Writes benchmarks/results/train_steps.json unless --out.

    python benchmarks/train_steps.py [--sizes 8,32] [--steps 1200] [--labels 60] [--repeats 3]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).parent / "results" / "train_steps.json"


def _data(size: int, labels: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.uniform(0, 255, (labels, size, size, 3)).astype(np.float32), np.arange(labels) % 10


def _compiled(settings, x: np.ndarray, y: np.ndarray) -> None:
    from activeflow.core.score import modeling

    modeling.train(modeling.build_classifier(settings, 10), x, y, settings)


def _step_by_step(settings, x: np.ndarray, y: np.ndarray) -> None:
    """The reference: the same plan, batches and augmentation, one train_on_batch a step."""
    import keras

    from activeflow.core.score import modeling

    model = modeling.build_classifier(settings, 10)
    rng = np.random.default_rng(settings.seed)
    plan = modeling.plan_training(np.bincount(y, minlength=10).tolist(), settings)
    augment = settings.augment.model_copy(update={"invert": 0.0})
    for phase in plan.phases:
        schedule = keras.optimizers.schedules.CosineDecay(phase.learning_rate, phase.steps)
        model.compile(optimizer=keras.optimizers.Adam(schedule), loss="sparse_categorical_crossentropy")
        model.optimizer.build(model.trainable_variables)
        batches = modeling._training_batches(x, np.arange(len(y)), plan.batch_size, augment, rng)
        for batch, pixels in itertools.islice(batches, phase.steps):
            model.train_on_batch(pixels, y[batch], sample_weight=np.ones(len(batch), np.float32))


def _seconds(run: Callable[[], None], parallel: int) -> float:
    threads = [threading.Thread(target=run) for _ in range(parallel)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - start


def measure(size: int, steps: int, labels: int, repeats: int) -> dict[str, object]:
    from activeflow.settings import ModelSettings

    settings = ModelSettings(image_size=size, min_steps=steps)
    x, y = _data(size, labels)
    result: dict[str, object] = {"image_size": size, "steps": steps, "labels": labels}
    for name, loop in (("compiled", _compiled), ("train_on_batch", _step_by_step)):
        loop(settings.model_copy(update={"min_steps": 20}), x, y)  # warm-up: imports, kernels
        for parallel in (1, 2):
            runs = [_seconds(lambda: loop(settings, x, y), parallel) for _ in range(repeats)]
            seconds = statistics.median(runs)
            result[f"{name}_x{parallel}"] = {
                "seconds": round(seconds, 3),
                # Per update of one retrain, and per update of the machine (both retrains).
                "ms_per_update": round(1000 * seconds / steps, 3),
                "ms_per_update_of_all": round(1000 * seconds / (steps * parallel), 3),
            }
    for parallel in (1, 2):
        result[f"speedup_x{parallel}"] = round(
            result[f"train_on_batch_x{parallel}"]["seconds"] / result[f"compiled_x{parallel}"]["seconds"], 2
        )
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="8,32")
    parser.add_argument("--steps", type=int, default=1200)
    parser.add_argument("--labels", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    results = [measure(int(s), args.steps, args.labels, args.repeats) for s in args.sizes.split(",")]
    for r in results:
        print(f"{r['image_size']:>3} px: compiled {r['compiled_x1']['ms_per_update']:.2f} ms an update "
              f"(train_on_batch {r['train_on_batch_x1']['ms_per_update']:.2f}); two at once: "
              f"{r['compiled_x2']['ms_per_update']:.2f} ms (train_on_batch {r['train_on_batch_x2']['ms_per_update']:.2f})")
    report = {
        "command": "python benchmarks/train_steps.py " + " ".join(
            f"--{k} {v}" for k, v in (("sizes", args.sizes), ("steps", args.steps), ("labels", args.labels),
                                      ("repeats", args.repeats))),
        "environment": {"cpus": os.cpu_count(), "python": platform.python_version(), "machine": platform.machine()},
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
