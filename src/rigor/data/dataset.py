"""The one dataset class: samples read lazily through a reader, batches of tensors.

``__getitem__`` decodes a single sample (in a DataLoader worker when ``num_workers > 0``);
nothing holds the whole dataset's pixels. An in-memory reader (digits, generated tiles) is
read a batch at a time instead (``__getitems__``: one gather, no per-sample items). Items
are ``(index, image, error)``; the collate function stacks images into a uint8 (files) or
float32 (embedded) tensor, gathers targets by index, and lists the samples it skipped.
Conversion to float and normalisation happen later, on the batch, on the device
(:mod:`rigor.data.loader`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
import torch
from torch.utils.data import Dataset

from rigor.data.readers import BadSample, SampleReader
from rigor.data.registry import RawData, TaskSpec
from rigor.errors import ConfigError

Item = tuple[int, torch.Tensor | None, str | None]


@dataclass
class Batch:
    """A batch: raw inputs, targets per task, dataset rows, and what was skipped.

    ``drawn`` counts the rows the sampler handed out, skipped ones included, so a resumed
    run continues from the same sampler position.
    """

    input: torch.Tensor
    targets: dict[str, torch.Tensor]
    index: torch.Tensor
    drawn: int
    skipped: list[tuple[int, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.input.shape[0])

    def pin_memory(self) -> Batch:
        """Page-locked copies (DataLoader calls this with ``pin_memory=True``)."""
        targets = {task: value.pin_memory() for task, value in self.targets.items()}
        return Batch(self.input.pin_memory(), targets, self.index, self.drawn, self.skipped)


@dataclass
class Gathered:
    """A batch read in one gather (:meth:`ImageDataset.__getitems__`): rows and images."""

    rows: torch.Tensor  # int64, the dataset rows of ``images`` in order
    images: torch.Tensor


class ImageDataset(Dataset[Item]):
    """Samples of a :class:`RawData` through its reader; targets, ids and groups in memory."""

    def __init__(
        self, raw: RawData, reader: SampleReader, tasks: list[str], skip_bad: bool = False
    ) -> None:
        if tasks == ["*"]:  # every task the dataset offers (e.g. each gene of a panel)
            tasks = list(raw.offered)
        unknown = [task for task in tasks if task not in raw.offered]
        if unknown:
            raise ConfigError(
                f"data.tasks: {unknown} not offered by dataset {raw.name!r} "
                f"(it offers {sorted(raw.offered)})"
            )
        self.raw = raw
        self.name, self.version = raw.name, raw.version
        self.reader = reader
        self.skip_bad = skip_bad
        self.targets = {task: torch.tensor(raw.targets[task]) for task in tasks}
        self.ids, self.groups = raw.ids, raw.groups
        self.tasks: dict[str, TaskSpec] = {task: raw.offered[task] for task in tasks}
        self.masks = _resize_masks(raw.masks, reader.shape[1:]) if raw.masks is not None else None

    @property
    def content_hash(self) -> str:
        """The content fingerprint (files are hashed on first use, through the hash index)."""
        return self.raw.content_hash()

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(channels, height, width) of every sample."""
        return self.reader.shape

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> Item:
        try:
            return index, torch.from_numpy(self.reader.load(index)), None
        except BadSample as err:
            if not self.skip_bad:
                raise
            return index, None, str(err)

    def __getitems__(self, indices: list[int]) -> list[Item] | list[Gathered]:
        """A whole batch (the DataLoader asks for one this way): one gather from an in-memory
        reader that offers ``load_many``, else sample by sample."""
        load_many = getattr(self.reader, "load_many", None)
        if load_many is None:
            return [self[index] for index in indices]
        rows = torch.from_numpy(np.asarray(indices, dtype=np.int64))
        stacked = load_many(rows)
        if stacked is None:
            return [self[index] for index in indices]
        return [Gathered(rows, stacked)]

    def collate(self, items: list[Item] | list[Gathered]) -> Batch:
        """Stack the readable samples; targets by index; skipped rows with their errors."""
        if len(items) == 1 and isinstance(items[0], Gathered):
            rows, images = items[0].rows, items[0].images
            targets = {task: values.index_select(0, rows) for task, values in self.targets.items()}
            return Batch(images, targets, rows, len(rows), [])
        samples = cast(list[Item], items)
        kept = [(index, image) for index, image, _ in samples if image is not None]
        skipped = [(index, error) for index, image, error in samples if image is None and error]
        rows = torch.tensor([index for index, _ in kept], dtype=torch.long)
        if kept:
            inputs = torch.stack([image for _, image in kept])
        else:
            dtype = torch.uint8 if self.reader.dtype == "uint8" else torch.float32
            inputs = torch.empty((0, *self.input_shape), dtype=dtype)
        targets = {task: values[rows] for task, values in self.targets.items()}
        return Batch(inputs, targets, rows, len(samples), skipped)

    def stack(self, rows: list[int]) -> torch.Tensor:
        """Raw inputs of ``rows`` (a few samples, e.g. for XAI); a bad sample is an error."""
        return torch.stack([torch.from_numpy(np.array(self.reader.load(r))) for r in rows])

    def describe(self, index: int) -> str:
        """Where a sample comes from (its file), for messages and the manifest."""
        return self.raw.describe(index)


def _resize_masks(masks: np.ndarray, size: tuple[int, ...]) -> np.ndarray:
    """Nearest-neighbour resize of (N, H, W) masks to the inputs' size."""
    if masks.shape[1:] == tuple(size):
        return masks
    tensor = torch.from_numpy(masks[:, None].astype(np.float32))
    resized = torch.nn.functional.interpolate(tensor, size=tuple(size), mode="nearest")
    return np.asarray(resized[:, 0].numpy() > 0.5)


def skipped_record(dataset: ImageDataset, skipped: dict[int, str]) -> list[dict[str, Any]]:
    """The manifest's list of skipped samples: id, file and error, in row order."""
    return [
        {"id": dataset.ids[row], "source": dataset.describe(row), "error": skipped[row]}
        for row in sorted(skipped)
    ]
