"""Seeding and the epoch scaffolding that training and MAE pretraining share: the global
seeds, the epoch-seeded sampler that makes any epoch's batch order rebuildable, steps per
epoch, and the optimizer, schedule, precision and early stopping a run is built with."""

from __future__ import annotations

import math
import os
import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from rigor.config.models import Config
from rigor.training.optim import Precision, build_optimizer, build_scheduler
from rigor.training.regularizers import EarlyStopping


@dataclass(kw_only=True)
class EpochPlan:
    """How a run's epochs are stepped, and the objects that step them."""

    steps_per_epoch: int
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    precision: Precision
    early: EarlyStopping


def plan_epochs(
    cfg: Config,
    *,
    model: nn.Module,
    train_loader: DataLoader[Any],
    device: torch.device,
    monitor_mode: str,
    extra: nn.Module | None = None,
) -> EpochPlan:
    """Steps per epoch (accumulation groups, capped by ``max_steps_per_epoch``) and the
    optimizer (with ``extra``'s parameters, e.g. learned task weights), schedule, precision
    and early stopping of a run."""
    training = cfg.training
    per_epoch = math.ceil(len(train_loader) / training.accumulate_steps)
    steps = min(per_epoch, training.max_steps_per_epoch or per_epoch)
    optimizer = build_optimizer(model, training, cfg.optimizer, extra)
    return EpochPlan(
        steps_per_epoch=steps,
        optimizer=optimizer,
        scheduler=build_scheduler(optimizer, cfg.scheduler, training.epochs, steps),
        precision=Precision(training.precision, device),
        early=EarlyStopping(monitor_mode, training.patience, training.min_delta),
    )


def start_epoch(loader: DataLoader[Any], seed: int, epoch: int, position: int = 0) -> None:
    """Point the train sampler at ``epoch`` (from sample ``position`` on) and reseed the
    loader's generator, so the epoch's order depends on (seed, epoch) only."""
    sampler = loader.sampler
    assert isinstance(sampler, EpochSampler) and loader.generator is not None
    sampler.set_epoch(epoch, position)
    loader.generator.manual_seed(seed * 1_000_003 + epoch)


def seed_everything(seed: int, determinism: bool) -> None:
    """Seed python, numpy and torch (CUDA included); optionally force deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)
    if determinism:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    if determinism or torch.are_deterministic_algorithms_enabled():
        # The call imports torch._inductor (1.3 s); off is the default, so skip it then.
        torch.use_deterministic_algorithms(determinism)
    torch.backends.cudnn.deterministic = determinism
    torch.backends.cudnn.benchmark = not determinism


class EpochSampler(torch.utils.data.Sampler[int]):
    """Shuffles with a generator seeded by (seed, epoch): any epoch's order can be rebuilt.

    ``start`` skips the first samples of an epoch, which is how a resumed run continues
    mid-epoch from the recorded sampler position.
    """

    def __init__(self, size: int, seed: int, rank: int = 0, world: int = 1) -> None:
        self.size = size
        self.seed = seed
        self.rank, self.world = rank, world
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Choose the epoch whose order to yield, from position ``start`` on."""
        self.epoch, self.start = epoch, start

    def order(self) -> list[int]:
        """This rank's order of the current epoch (the whole order in a single process).

        Under torchrun the epoch's permutation is padded by wrapping to a multiple of the
        world size and rank r takes positions r, r + world, ...: batch i of every rank together
        is batch i of a single process with a world-times-larger batch.
        """
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        order = torch.randperm(self.size, generator=generator).tolist()
        if self.world == 1:
            return order
        padded = order + order[: -self.size % self.world or 0]
        return padded[self.rank :: self.world]

    def __iter__(self) -> Iterator[int]:
        return iter(self.order()[self.start :])

    def __len__(self) -> int:
        return -(-self.size // self.world) - self.start
