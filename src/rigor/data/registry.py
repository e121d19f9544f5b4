"""Dataset registry: a name maps to a builder; no if/else chains over names.

A builder returns :class:`RawData` (how to decode the inputs, plus targets, ids, groups and
a content fingerprint). :func:`build_dataset` turns it into an in-memory
:class:`DatasetSource`, decoding through the preprocessing cache.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import Dataset

from rigor.config.models import DataConfig
from rigor.errors import ConfigError


@dataclass(frozen=True)
class TaskSpec:
    """What one task of a dataset is: classification with num_classes, or regression."""

    name: str
    kind: Literal["classification", "regression"]
    num_classes: int | None = None
    classes: tuple[str, ...] | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON form recorded in the manifest."""
        classes = list(self.classes) if self.classes is not None else None
        return {"kind": self.kind, "num_classes": self.num_classes, "classes": classes}


@dataclass
class RawData:
    """What a builder found: a decoder for the inputs and everything else about the samples.

    ``decode(size, channels)`` returns float32 (N, C, H, W) in [0, 1], resized when ``size``
    is given. ``fingerprint`` changes whenever the inputs or targets change.
    """

    name: str
    version: str
    offered: dict[str, TaskSpec]
    targets: dict[str, np.ndarray]
    ids: list[str]
    groups: list[str]
    fingerprint: str
    decode: Callable[[tuple[int, int] | None, int, str], np.ndarray]
    masks: np.ndarray | None = None  # (N, H, W) bool ground-truth relevance, native size


class DatasetSource(Dataset[dict[str, Any]]):
    """An in-memory dataset.

    Items are dicts ``{"input", "targets": {task: value}, "id", "group"}``.
    """

    def __init__(self, raw: RawData, inputs: np.ndarray, tasks: list[str]) -> None:
        unknown = [task for task in tasks if task not in raw.offered]
        if unknown:
            raise ConfigError(
                f"data.tasks: {unknown} not offered by dataset {raw.name!r} "
                f"(it offers {sorted(raw.offered)})"
            )
        self.name = raw.name
        self.version = raw.version
        self.content_hash = raw.fingerprint
        self.inputs = torch.from_numpy(inputs)
        self.targets = {task: torch.tensor(raw.targets[task]) for task in tasks}
        self.ids = raw.ids
        self.groups = raw.groups
        self.tasks = {task: raw.offered[task] for task in tasks}
        self.transform: Callable[[torch.Tensor], torch.Tensor] | None = None
        self.masks = _resize_masks(raw.masks, inputs.shape[2:]) if raw.masks is not None else None

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> dict[str, Any]:
        image = self.inputs[index]
        if self.transform is not None:
            image = self.transform(image)
        return {
            "input": image,
            "targets": {task: values[index] for task, values in self.targets.items()},
            "id": self.ids[index],
            "group": self.groups[index],
        }


def _resize_masks(masks: np.ndarray, size: tuple[int, ...]) -> np.ndarray:
    """Nearest-neighbour resize of (N, H, W) masks to the inputs' size."""
    if masks.shape[1:] == tuple(size):
        return masks
    tensor = torch.from_numpy(masks[:, None].astype(np.float32))
    resized = torch.nn.functional.interpolate(tensor, size=tuple(size), mode="nearest")
    return resized[:, 0].numpy() > 0.5


DATASETS: dict[str, Callable[[DataConfig], RawData]] = {}


def register_dataset(
    name: str,
) -> Callable[[Callable[[DataConfig], RawData]], Callable[[DataConfig], RawData]]:
    """Register a builder ``DataConfig -> RawData`` under ``name``."""

    def decorate(builder: Callable[[DataConfig], RawData]) -> Callable[[DataConfig], RawData]:
        DATASETS[name] = builder
        return builder

    return decorate


def raw_dataset(cfg: DataConfig) -> RawData:
    """Run the builder the config names."""
    import rigor.data.digits  # noqa: F401  (registers the built-in datasets)
    import rigor.data.files  # noqa: F401
    import rigor.data.tiles  # noqa: F401

    if cfg.name not in DATASETS:
        raise ConfigError(
            f"data.name: unknown dataset {cfg.name!r} (registered: {sorted(DATASETS)})"
        )
    return DATASETS[cfg.name](cfg)


def build_dataset(cfg: DataConfig, cache_root: Path | None = None) -> DatasetSource:
    """Build the dataset the config names, decoding through the cache under ``cache_root``."""
    from rigor.data.cache import materialize

    raw = raw_dataset(cfg)
    inputs, status = materialize(raw, cfg, cache_root if cfg.cache else None)
    print(
        f"data: {raw.name} ({len(raw.ids)} samples), preprocessing cache {status}", file=sys.stderr
    )
    return DatasetSource(raw, inputs, cfg.tasks)
