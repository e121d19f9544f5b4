"""DataLoaders over the lazy dataset, and what happens to a batch once it is loaded.

Workers read and decode samples; the main process receives compact batches (uint8 for
image files) and :class:`InputPipeline` turns them into model inputs on the device:
float in [0, 1], train-only augmentation, then normalisation, all on the whole batch.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.data import DataLoader, Sampler, Subset

from rigor.allocator import fix_mmap_threshold
from rigor.data.augment import BatchAugment
from rigor.data.dataset import Batch, ImageDataset
from rigor.errors import WORKER_DIED, RigorError, worker_death


class WorkerDied(RigorError):
    """A DataLoader worker process died (killed, out of memory, crashed in native code)."""

    exit_code = 1


class WorkerStalled(RigorError):
    """No batch came from the DataLoader workers within data.worker_timeout_s."""

    exit_code = 1


class SafeLoader(DataLoader[Any]):
    """A DataLoader whose dead workers end the run with a clear message, not a traceback."""

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        iterator = None
        while True:
            try:  # starting an epoch waits on the persistent workers too
                if iterator is None:
                    iterator = super().__iter__()
                batch = next(iterator)
            except StopIteration:
                return
            except (RuntimeError, ConnectionError, EOFError) as err:
                raise self._failed(err, iterator) from None
            yield batch

    def _failed(self, err: BaseException, iterator: Any) -> BaseException:
        """What a failed batch fetch means: a dead worker (WorkerDied), a stuck one
        (WorkerStalled), or another error, raised as it is."""
        # A worker that dies mid-transfer breaks the tensor's file-descriptor handoff
        # (ConnectionResetError, EOFError) before PyTorch's own check can say so.
        lost = isinstance(err, ConnectionError | EOFError) and self.num_workers > 0
        stalled = "DataLoader timed out" in str(err)
        if not (lost or stalled or "DataLoader worker" in str(err)):
            return err
        if stalled:  # a stopped worker would ignore the shutdown's SIGTERM: continue it
            for worker in getattr(iterator, "_workers", []):
                with contextlib.suppress(ProcessLookupError, TypeError):
                    os.kill(worker.pid, signal.SIGCONT)
        # Unregister the pool, or its SIGCHLD handler raises again later.
        shutdown = getattr(iterator, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()
        self._iterator = None
        if stalled:
            return WorkerStalled(
                f"data loading stalled: no batch from the {self.num_workers} DataLoader "
                f"worker(s) for {self.timeout:g} s (data.worker_timeout_s): a worker is "
                "stopped (SIGSTOP), swapped out or hung reading a file; raise "
                "data.worker_timeout_s for very slow storage"
            )
        lost_text = f"data loading failed: {type(err).__name__}: {err} ({WORKER_DIED})"
        return WorkerDied(worker_death(err) or lost_text)


def seed_worker(worker_id: int) -> None:
    """Seed python and numpy in a worker from the seed torch gave it; one thread each."""
    import random

    import numpy as np

    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)
    torch.set_num_threads(1)  # decoding is per sample: threads would only contend


def make_loader(
    dataset: ImageDataset,
    rows: Sequence[int],
    *,
    batch_size: int,
    num_workers: int,
    prefetch_factor: int = 2,
    sampler: Sampler[int] | None = None,
    seed: int = 0,
    pin_memory: bool = False,
    timeout_s: float | None = None,
) -> SafeLoader:
    """A loader over ``rows`` of ``dataset`` with its own generator (the global RNG is never
    drawn from); workers persist across epochs and prefetch ``prefetch_factor`` batches,
    and a batch that takes longer than ``timeout_s`` (workers only) is WorkerStalled.

    A loader that streams files (uint8 samples: image folders, CSV, HEST) fixes glibc's mmap
    threshold (:func:`rigor.allocator.fix_mmap_threshold`); one over an in-memory dataset
    (digits, tiles) does not: every large tensor would then be a fresh mmap, which slowed
    ResNet-18 training on digits by 40% (benchmarks/bench_overhead.py) and saves nothing
    there (a settled loop keeps freed memory instead: :mod:`rigor.allocator`)."""
    if getattr(dataset.reader, "dtype", "uint8") == "uint8":
        fix_mmap_threshold()
    workers = num_workers if len(rows) > 0 else 0
    return SafeLoader(
        Subset(dataset, list(rows)),
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        collate_fn=dataset.collate,
        worker_init_fn=seed_worker if workers else None,
        generator=torch.Generator().manual_seed(seed),
        pin_memory=pin_memory,
        persistent_workers=workers > 0,
        prefetch_factor=prefetch_factor if workers else None,
        timeout=timeout_s if workers and timeout_s else 0,
    )


def base_dataset(loader: DataLoader[Any]) -> ImageDataset:
    """The :class:`ImageDataset` under a loader made by :func:`make_loader`."""
    source = loader.dataset
    dataset = source.dataset if isinstance(source, Subset) else source
    assert isinstance(dataset, ImageDataset)
    return dataset


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """uint8 pixels to float32 in [0, 1]; float inputs are already there."""
    if images.dtype == torch.uint8:
        return images.to(torch.float32).div_(255.0)
    return images.to(torch.float32)


def augment_generator(seed: int, step: int, rank: int = 0) -> torch.Generator:
    """The generator of one optimizer step's augmentation: a function of (seed, rank, step)
    only, so a resumed run draws exactly the same augmentations."""
    digest = hashlib.sha256(f"augment:{seed}:{rank}:{step}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)


@dataclass
class InputPipeline:
    """Raw batch -> model input: to the device, to float, augment (train only), normalise."""

    mean: list[float] | None
    std: list[float] | None
    augment: BatchAugment | None = None
    _cache: dict[Any, tuple[torch.Tensor, ...]] = field(default_factory=dict, repr=False)

    def __call__(
        self,
        images: torch.Tensor,
        device: torch.device,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Model inputs for ``images``; augments only when a generator is given."""
        x = images.to(device, non_blocking=True)
        augmenting = generator is not None and self.augment is not None
        if x.dtype == torch.uint8 and not augmenting:
            return self._fused(x)
        x = to_unit(x)
        if augmenting:
            assert self.augment is not None and generator is not None
            x = self.augment(x, generator)
        if self.mean is None or self.std is None:
            return x
        mean, std = self._stats(x.dtype, device)
        return (x - mean) / std  # out of place: x may share memory with the batch

    def _stats(self, dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, ...]:
        """Mean and std as (1, C, 1, 1) tensors, built once per dtype and device."""
        key = (dtype, device)
        if key not in self._cache:
            shape = (1, -1, 1, 1)
            self._cache[key] = tuple(
                torch.as_tensor(v, dtype=dtype, device=device).view(shape)
                for v in (self.mean, self.std)
            )
        return self._cache[key]

    def _fused(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 -> normalised float in one conversion and one multiply-add, in place:
        ``x * 1/(255 std) - mean/std`` (equal to ``(x/255 - mean)/std`` up to rounding), a
        third of the unfused cost on the main process."""
        x = pixels.to(torch.float32)
        if self.mean is None or self.std is None:
            return x.mul_(1.0 / 255.0)
        mean = torch.as_tensor(self.mean, dtype=torch.float64)
        std = torch.as_tensor(self.std, dtype=torch.float64)
        shape = (1, -1, 1, 1)
        scale = (1.0 / (255.0 * std)).to(x.device, torch.float32).view(shape)
        shift = (-mean / std).to(x.device, torch.float32).view(shape)
        return x.mul_(scale).add_(shift)

    def batch(
        self, batch: Batch, device: torch.device, generator: torch.Generator | None = None
    ) -> Batch:
        """``batch`` with model inputs and targets on ``device``."""
        targets = {task: value.to(device) for task, value in batch.targets.items()}
        inputs = self(batch.input, device, generator)
        return Batch(inputs, targets, batch.index, batch.drawn, batch.skipped)


def channel_stats(
    dataset: ImageDataset, rows: Sequence[int], num_workers: int
) -> tuple[list[float], list[float]]:
    """Per-channel mean and (unbiased) std of ``rows`` in [0, 1], streamed batch by batch.

    Sums are float64; for uint8 pixels they are exact integers, so the result does not
    depend on how the rows are batched.
    """
    channels, height, width = dataset.input_shape
    per_batch = max(1, (64 << 20) // (8 * channels * height * width))  # ~64 MB of float64
    loader = make_loader(dataset, rows, batch_size=per_batch, num_workers=num_workers)
    total = torch.zeros(channels, dtype=torch.float64)
    squares = torch.zeros(channels, dtype=torch.float64)
    count = 0
    scale = 1.0
    for batch in loader:
        if batch.input.dtype == torch.uint8:
            scale = 255.0
        x = batch.input.to(torch.float64)
        total += x.sum(dim=(0, 2, 3))
        squares += (x * x).sum(dim=(0, 2, 3))
        count += len(batch) * height * width
    mean = total / count
    var = (squares - total * mean) / max(count - 1, 1)
    std = var.clamp_min(0).sqrt().div(scale).clamp_min(1e-8)
    return (mean / scale).tolist(), std.tolist()
