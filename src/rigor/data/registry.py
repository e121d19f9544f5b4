"""Dataset registry: a name maps to a class; no if/else chains over names."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
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

    def as_dict(self) -> dict[str, Any]:
        """JSON form recorded in the manifest."""
        return {"kind": self.kind, "num_classes": self.num_classes}


class DatasetSource(Dataset[dict[str, Any]]):
    """An in-memory dataset: inputs (N, C, H, W) float32, targets per task, ids and groups.

    Items are dicts ``{"input", "targets": {task: value}, "id", "group"}``.
    """

    name: str = ""
    offered_tasks: dict[str, TaskSpec] = {}

    def __init__(
        self,
        inputs: np.ndarray,
        targets: dict[str, np.ndarray],
        ids: list[str],
        groups: list[str],
        version: str,
        tasks: list[str],
    ) -> None:
        unknown = [task for task in tasks if task not in self.offered_tasks]
        if unknown:
            raise ConfigError(
                f"data.tasks: {unknown} not offered by dataset {self.name!r} "
                f"(it offers {sorted(self.offered_tasks)})"
            )
        self.inputs = torch.as_tensor(inputs, dtype=torch.float32)
        self.targets = {task: torch.as_tensor(targets[task]) for task in tasks}
        self.ids = ids
        self.groups = groups
        self.version = version
        self.tasks = {task: self.offered_tasks[task] for task in tasks}
        self.transform: Callable[[torch.Tensor], torch.Tensor] | None = None

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

    @property
    def content_hash(self) -> str:
        """sha256 over inputs, targets and ids: changes whenever the data changes."""
        digest = hashlib.sha256()
        digest.update(self.inputs.numpy().tobytes())
        for task in sorted(self.targets):
            digest.update(task.encode())
            digest.update(self.targets[task].numpy().tobytes())
        digest.update("\n".join(self.ids).encode())
        return digest.hexdigest()


DATASETS: dict[str, Callable[[DataConfig], DatasetSource]] = {}


def register_dataset(
    name: str,
) -> Callable[[Callable[[DataConfig], DatasetSource]], Callable[[DataConfig], DatasetSource]]:
    """Register a dataset builder under ``name``."""

    def decorate(
        builder: Callable[[DataConfig], DatasetSource],
    ) -> Callable[[DataConfig], DatasetSource]:
        DATASETS[name] = builder
        return builder

    return decorate


def build_dataset(cfg: DataConfig) -> DatasetSource:
    """Build the dataset the config names."""
    import rigor.data.digits  # noqa: F401  (registers the embedded datasets)

    if cfg.name not in DATASETS:
        raise ConfigError(
            f"data.name: unknown dataset {cfg.name!r} (registered: {sorted(DATASETS)})"
        )
    return DATASETS[cfg.name](cfg)
