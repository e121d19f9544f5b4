"""A generated imagefolder: coloured shapes on noise, one class per shape.

The classes are separable at a glance (a disc, a square, a cross, ... each in its own
colour), so a small CNN is perfect on them after a few epochs. It is the dataset the
"easy data" chain in docs/datasets.md runs on: a model that makes no mistake on val_calib,
where temperature scaling has no finite optimum.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import IO

import numpy as np
from PIL import Image

from rigor.io import atomic_write_with

SHAPES = ("disc", "square", "cross", "ring", "bar", "triangle")
_COLOURS = (
    (220, 60, 60),
    (60, 180, 70),
    (70, 90, 220),
    (230, 190, 40),
    (170, 70, 200),
    (40, 190, 200),
)


def _mask(shape: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """A boolean mask of ``shape``, jittered in place and scale."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    cy, cx = size / 2 + rng.uniform(-size / 10, size / 10, 2)
    r = size * rng.uniform(0.25, 0.35)
    dy, dx = yy - cy, xx - cx
    if shape == "disc":
        return dy**2 + dx**2 <= r**2
    if shape == "square":
        return (abs(dy) <= r * 0.8) & (abs(dx) <= r * 0.8)
    if shape == "cross":
        return ((abs(dy) <= r / 4) & (abs(dx) <= r)) | ((abs(dx) <= r / 4) & (abs(dy) <= r))
    if shape == "ring":
        return (dy**2 + dx**2 <= r**2) & (dy**2 + dx**2 >= (r * 0.6) ** 2)
    if shape == "bar":
        return (abs(dy) <= r / 3) & (abs(dx) <= r)
    return (dy <= r * 0.7) & (dy >= -r * 0.7 + abs(dx) * 1.4 - r * 0.7)


def _png(image: Image.Image) -> Callable[[IO[bytes]], None]:
    def write(handle: IO[bytes]) -> None:
        image.save(handle, "PNG")

    return write


def write_shapes(root: Path, classes: int, images: int, size: int, seed: int) -> int:
    """Write ``images`` images as ``root/<shape>/<index>.png`` over the first ``classes``
    shapes (as evenly as the count allows); returns the count.

    Raises:
        ValueError: when ``classes`` is not in 2..6, ``images`` < ``classes`` or ``size`` < 16.
    """
    if not 2 <= classes <= len(SHAPES) or images < classes or size < 16:
        raise ValueError(
            f"--classes must be 2..{len(SHAPES)}, --images at least --classes and --size >= 16"
        )
    rng = np.random.default_rng(seed)
    for index, shape in enumerate(SHAPES[:classes]):
        folder = root / shape
        folder.mkdir(parents=True, exist_ok=True)
        for item in range(images // classes + (index < images % classes)):
            pixels = rng.integers(0, 70, size=(size, size, 3), dtype=np.uint8)
            pixels[_mask(shape, size, rng)] = _COLOURS[index]
            atomic_write_with(folder / f"{item:04d}.png", _png(Image.fromarray(pixels)))
    return images
