"""scikit-learn's bundled digits: 1,797 real 8x8 images, 10 classes, no download."""

from __future__ import annotations

import gzip
import hashlib
import importlib.metadata
import importlib.util
from pathlib import Path

import numpy as np

from rigor.config.models import DataConfig
from rigor.data.readers import ArrayReader
from rigor.data.registry import RawData, TaskSpec, register_dataset
from rigor.errors import ConfigError


def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """(images (1797, 8, 8) float64 in 0..16, labels) read from scikit-learn's bundled
    ``digits.csv.gz`` as ``sklearn.datasets.load_digits`` reads it, without importing
    scikit-learn (over a second of start-up, for one small file)."""
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("data.name digits needs scikit-learn installed (its bundled digits)")
    path = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data"
    with gzip.open(path / "digits.csv.gz", mode="rt", encoding="utf-8") as handle:
        data = np.loadtxt(handle, delimiter=",")
    return data[:, :-1].reshape(-1, 8, 8), data[:, -1].astype(int, copy=False)


SKLEARN_VERSION = importlib.metadata.version("scikit-learn")
DIGIT = TaskSpec("digit", "classification", 10, tuple(str(d) for d in range(10)))
# Derived tasks for multi-task runs: functions of the image and its label, so the same
# fingerprint covers them.
PARITY = TaskSpec("parity", "classification", 2, ("even", "odd"))
INK = TaskSpec("ink", "regression")


def derived_targets(images: np.ndarray, digits: np.ndarray) -> dict[str, np.ndarray]:
    """``digit``; ``parity`` (0 even, 1 odd); ``ink``: mean intensity in [0, 1], times 10."""
    return {
        "digit": digits,
        "parity": (digits % 2).astype(np.int64),
        "ink": (images.reshape(len(images), -1).mean(axis=1) * 10).astype(np.float32),
    }


@register_dataset("digits")
def build_digits(cfg: DataConfig) -> RawData:
    """Grey 8x8 digits scaled to [0, 1]; every image is its own group."""
    raw_images, labels = load_digits()
    images = (raw_images / 16.0).astype(np.float32)[:, None, :, :]
    targets = labels.astype(np.int64)
    ids = [f"digits-{index:04d}" for index in range(len(images))]
    digest = hashlib.sha256(images.tobytes() + targets.tobytes()).hexdigest()
    return RawData(
        name="digits",
        version=f"sklearn-{SKLEARN_VERSION}",
        offered={"digit": DIGIT, "parity": PARITY, "ink": INK},
        targets=derived_targets(images, targets),
        ids=ids,
        groups=ids,
        fingerprint=digest,
        reader=grey_reader(images, "digits", cfg),
    )


def grey_reader(images: np.ndarray, name: str, cfg: DataConfig) -> ArrayReader:
    """The reader of an in-memory grey dataset: resized on request; RGB is refused."""
    if cfg.channels != 1:
        raise ConfigError(f"data.channels: {name} images are grey; set data.channels: 1")
    size = cfg.transforms.image_size
    return ArrayReader(images, (size[0], size[1]) if size else None, cfg.transforms.version)


# The canvas variant's definition (part of the dataset, like CIFAR's 32x32, not a knob):
# digits pasted at a seeded random position on a 24x24 canvas of uniform noise.
CANVAS = 24
NOISE = 0.3
CANVAS_SEED = 20241


@register_dataset("digits_canvas")
def build_digits_canvas(cfg: DataConfig) -> RawData:
    """Digits on a larger noisy canvas with the paste box as ground-truth relevance mask."""
    raw_images, labels = load_digits()
    digits = (raw_images / 16.0).astype(np.float32)
    rng = np.random.default_rng(CANVAS_SEED)
    n = len(digits)
    images = rng.uniform(0.0, NOISE, size=(n, 1, CANVAS, CANVAS)).astype(np.float32)
    masks = np.zeros((n, CANVAS, CANVAS), dtype=bool)
    corners = rng.integers(0, CANVAS - 8 + 1, size=(n, 2))
    for i, (top, left) in enumerate(corners):
        patch = images[i, 0, top : top + 8, left : left + 8]
        images[i, 0, top : top + 8, left : left + 8] = np.maximum(patch, digits[i])
        masks[i, top : top + 8, left : left + 8] = True
    targets = labels.astype(np.int64)
    ids = [f"canvas-{index:04d}" for index in range(n)]
    digest = hashlib.sha256(images.tobytes() + targets.tobytes() + masks.tobytes()).hexdigest()

    return RawData(
        name="digits_canvas",
        version=f"sklearn-{SKLEARN_VERSION}-canvas{CANVAS}-noise{NOISE}-seed{CANVAS_SEED}",
        offered={"digit": DIGIT},
        targets={"digit": targets},
        ids=ids,
        groups=ids,
        fingerprint=digest,
        reader=grey_reader(images, "digits_canvas", cfg),
        masks=masks,
    )
