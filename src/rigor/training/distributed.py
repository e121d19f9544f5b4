"""Multi-process training under torchrun: process-group setup and the few collectives used.

``torchrun --nproc_per_node N scripts/train.py --config …`` starts N processes with
``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK`` set. Each process trains a DDP replica on its
shard of every global batch. Rank 0 alone writes the run folder (logs, checkpoints,
predictions, manifest). Without ``WORLD_SIZE`` (or with 1), nothing here changes anything.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the job (a single process: world 1, rank 0)."""

    world_size: int = 1
    rank: int = 0
    local_rank: int = 0
    backend: str | None = None

    @property
    def enabled(self) -> bool:
        """True under torchrun with more than one process."""
        return self.world_size > 1

    @property
    def main(self) -> bool:
        """Rank 0: the process that writes files."""
        return self.rank == 0

    def record(self) -> dict[str, Any]:
        """What the manifest records."""
        return {"world_size": self.world_size, "backend": self.backend}


def init_distributed(device: str) -> DistInfo:
    """Join the process group torchrun describes (gloo on CPU, nccl on CUDA), once."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if cuda:
        torch.cuda.set_device(local)
    backend = "nccl" if cuda else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend)
    return DistInfo(world, rank, local, backend)


def broadcast(value: Any, info: DistInfo) -> Any:
    """Rank 0's ``value`` on every rank."""
    if not info.enabled:
        return value
    box = [value if info.main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def sum_over_ranks(values: dict[str, float], info: DistInfo) -> dict[str, float]:
    """Each value summed over the ranks (every rank must pass the same keys)."""
    if not info.enabled or not values:
        return values
    keys = sorted(values)
    tensor = torch.tensor([values[key] for key in keys], dtype=torch.float64)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return dict(zip(keys, tensor.tolist(), strict=True))


def barrier(info: DistInfo) -> None:
    """Wait for every rank."""
    if info.enabled:
        dist.barrier()


def shutdown(info: DistInfo) -> None:
    """Leave the process group."""
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()
