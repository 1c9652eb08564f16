"""A synthetic image set to prove training off the demo's digits: coloured shapes at random
positions and sizes on noisy backgrounds, written as ``<class>/<image>.png``.

Each class is a shape; what varies within a class (position, size, colours, the background's
gradient and noise, and with ``rotate`` the shape's angle) is what a classifier must learn to
ignore. Upright is the default: rotation is an invariance a network without pretrained weights
must learn from the labels themselves, which takes many more of them (see the README). The set
is deterministic for a seed, so benchmark runs on it are reproducible.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

SHAPES = ("circle", "square", "triangle", "star", "cross", "ring", "diamond", "hexagon", "arrow", "crescent")
DEFAULT_CLASSES = 5


def shape_names(classes: int) -> list[str]:
    if not 2 <= classes <= len(SHAPES):
        raise ValueError(f"synthetic shapes come in 2 to {len(SHAPES)} classes, not {classes}")
    return list(SHAPES[:classes])


def write_shapes(
    folder: Path,
    *,
    classes: int = DEFAULT_CLASSES,
    per_class: int = 300,
    size: int = 64,
    rotate: bool = False,
    seed: int = 0,
) -> list[str]:
    """``per_class`` PNGs of each of the first ``classes`` shapes under ``folder/<shape>/``."""
    names = shape_names(classes)
    rng = np.random.default_rng(seed)
    for name in names:
        (folder / name).mkdir(parents=True, exist_ok=True)
        for index in range(per_class):
            render_shape(name, size, rng, rotate=rotate).save(folder / name / f"{name}-{index:05d}.png")
    return names


def render_shape(name: str, size: int, rng: np.random.Generator, *, rotate: bool = False) -> Image.Image:
    """One image: a noisy gradient background and the shape in a contrasting colour, upright
    or at a random angle."""
    background = _background(size, rng)
    colour = _contrasting_colour(background.mean(axis=(0, 1)), rng)
    # Drawn at 4x and downsampled: smooth edges, as in photographs.
    scale = 4
    mask = Image.new("L", (size * scale, size * scale), 0)
    radius = rng.uniform(0.16, 0.34) * size * scale
    margin = radius * 1.05
    centre = rng.uniform(margin, size * scale - margin, 2)
    angle = rng.uniform(0, 2 * math.pi)  # drawn either way: a seed gives the same set otherwise
    _draw(ImageDraw.Draw(mask), name, centre, radius, angle if rotate else 0.0)
    alpha = np.asarray(mask.resize((size, size), Image.LANCZOS), dtype=np.float32)[..., None] / 255
    pixels = background * (1 - alpha) + colour * alpha
    pixels += rng.normal(0, 6, pixels.shape)  # sensor noise over the shape too
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
    return image.filter(ImageFilter.GaussianBlur(rng.uniform(0, 0.6)))


def _background(size: int, rng: np.random.Generator) -> np.ndarray:
    """A random colour with a mild gradient and pixel noise."""
    base = rng.uniform(0, 255, 3)
    angle = rng.uniform(0, 2 * math.pi)
    grid = np.linspace(-0.5, 0.5, size)
    ramp = (grid[None, :] * math.cos(angle) + grid[:, None] * math.sin(angle))[..., None]
    noise = rng.normal(0, rng.uniform(5, 20), (size, size, 3))
    return base + ramp * rng.uniform(-50, 50, 3) + noise


def _contrasting_colour(background_mean: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random colour whose brightness is at least 80 levels from the background's."""
    weights = np.array([0.299, 0.587, 0.114])  # luma
    for _ in range(100):
        colour = rng.uniform(0, 255, 3)
        if abs(float((colour - background_mean) @ weights)) >= 80:
            return colour
    return 255 - background_mean


def _polygon(centre: np.ndarray, radii: list[float], turn: float) -> list[tuple[float, float]]:
    count = len(radii)
    return [
        (
            centre[0] + r * math.cos(turn + 2 * math.pi * k / count),
            centre[1] + r * math.sin(turn + 2 * math.pi * k / count),
        )
        for k, r in enumerate(radii)
    ]


def _draw(draw: ImageDraw.ImageDraw, name: str, centre: np.ndarray, r: float, turn: float) -> None:
    x, y = centre
    box = (x - r, y - r, x + r, y + r)
    if name == "circle":
        draw.ellipse(box, fill=255)
    elif name == "ring":
        draw.ellipse(box, fill=255)
        inner = r * 0.55
        draw.ellipse((x - inner, y - inner, x + inner, y + inner), fill=0)
    elif name == "square":
        draw.polygon(_polygon(centre, [r] * 4, turn), fill=255)
    elif name == "diamond":  # a rhombus: long and short diagonals
        draw.polygon(_polygon(centre, [r, r * 0.55, r, r * 0.55], turn), fill=255)
    elif name == "triangle":
        draw.polygon(_polygon(centre, [r] * 3, turn), fill=255)
    elif name == "hexagon":
        draw.polygon(_polygon(centre, [r] * 6, turn), fill=255)
    elif name == "star":
        draw.polygon(_polygon(centre, [r, r * 0.42] * 5, turn), fill=255)
    elif name == "cross":
        width = r * 0.45
        for angle in (turn, turn + math.pi / 2):
            dx, dy = math.cos(angle) * r, math.sin(angle) * r
            draw.line((x - dx, y - dy, x + dx, y + dy), fill=255, width=int(width))
    elif name == "arrow":
        head = _polygon(centre, [r, r * 0.9, r * 0.9], turn)
        draw.polygon([head[0], head[1], centre.tolist(), head[2]], fill=255)
        tail = (x - math.cos(turn) * r, y - math.sin(turn) * r)
        draw.line((x, y, *tail), fill=255, width=int(r * 0.35))
    elif name == "crescent":
        draw.ellipse(box, fill=255)
        shift = r * 0.5
        cx, cy = x + math.cos(turn) * shift, y + math.sin(turn) * shift
        draw.ellipse((cx - r * 0.85, cy - r * 0.85, cx + r * 0.85, cy + r * 0.85), fill=0)
    else:
        raise ValueError(f"unknown shape {name!r}; known: {', '.join(SHAPES)}")
