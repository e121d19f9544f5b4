"""scikit-learn's bundled digits: 1,797 real 8x8 images, 10 classes, no download."""

from __future__ import annotations

import hashlib

import numpy as np
import sklearn
from sklearn.datasets import load_digits

from rigor.config.models import DataConfig
from rigor.data.registry import RawData, TaskSpec, register_dataset
from rigor.data.transforms import resize
from rigor.errors import ConfigError

DIGIT = TaskSpec("digit", "classification", 10, tuple(str(d) for d in range(10)))


@register_dataset("digits")
def build_digits(cfg: DataConfig) -> RawData:
    """Grey 8x8 digits scaled to [0, 1]; every image is its own group."""
    bunch = load_digits()
    images = (bunch.images / 16.0).astype(np.float32)[:, None, :, :]
    targets = bunch.target.astype(np.int64)
    ids = [f"digits-{index:04d}" for index in range(len(images))]
    digest = hashlib.sha256(images.tobytes() + targets.tobytes()).hexdigest()

    def decode(size: tuple[int, int] | None, channels: int, version: str) -> np.ndarray:
        if channels != 1:
            raise ConfigError("data.channels: digits are grey images; set data.channels: 1")
        return images if size is None else resize(images, size, version)

    return RawData(
        name="digits",
        version=f"sklearn-{sklearn.__version__}",
        offered={"digit": DIGIT},
        targets={"digit": targets},
        ids=ids,
        groups=ids,
        fingerprint=digest,
        decode=decode,
    )
