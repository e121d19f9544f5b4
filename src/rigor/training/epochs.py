"""The epoch scaffolding that training and MAE pretraining share: steps per epoch, the
optimizer, schedule, precision and early stopping they are built with, and the per-epoch
reseeding that makes any epoch's batch order rebuildable."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from rigor.config.models import Config
from rigor.training.policy import (
    EarlyStopping,
    EpochSampler,
    Precision,
    build_optimizer,
    build_scheduler,
)


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
