"""scikit-learn's bundled digits: 1,797 real 8x8 images, 10 classes, no download."""

from __future__ import annotations

import numpy as np
import sklearn
from sklearn.datasets import load_digits

from rigor.config.models import DataConfig
from rigor.data.registry import DatasetSource, TaskSpec, register_dataset


class Digits(DatasetSource):
    """Grey 8x8 digits scaled to [0, 1]; every image is its own group."""

    name = "digits"
    offered_tasks = {"digit": TaskSpec("digit", "classification", 10)}


@register_dataset("digits")
def build_digits(cfg: DataConfig) -> Digits:
    """Load the embedded digits."""
    bunch = load_digits()
    images = (bunch.images / 16.0).astype(np.float32)[:, None, :, :]
    ids = [f"digits-{index:04d}" for index in range(len(images))]
    return Digits(
        inputs=images,
        targets={"digit": bunch.target.astype(np.int64)},
        ids=ids,
        groups=ids,
        version=f"sklearn-{sklearn.__version__}",
        tasks=cfg.tasks,
    )
