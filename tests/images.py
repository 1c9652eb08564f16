"""Small real images the tests make for themselves."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def write_image(path: Path, seed: int, *, size: int = 12, fmt: str = "PNG") -> Path:
    """A distinct RGB image per seed (so a distinct sample id per seed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, format=fmt)
    return path


def write_labelled_tree(root: Path, counts: dict[str, int], *, first_seed: int = 0) -> dict[str, int]:
    """``root/<class>/<n>.png``; returns how many images each class got."""
    seed = first_seed
    for label, count in counts.items():
        for n in range(count):
            write_image(root / label / f"{n}.png", seed)
            seed += 1
    return counts
