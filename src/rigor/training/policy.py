"""Training policy in one module: seeding, device, optimizer groups and schedules."""

from __future__ import annotations

import math
import os
import random

import numpy as np
import torch
from torch import nn

from rigor.config.models import OptimizerConfig, SchedulerConfig, TrainingConfig


def seed_everything(seed: int, determinism: bool) -> None:
    """Seed python, numpy and torch (CUDA included); optionally force deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)
    if determinism:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(determinism)
    torch.backends.cudnn.deterministic = determinism
    torch.backends.cudnn.benchmark = not determinism


def pick_device(name: str) -> torch.device:
    """``auto`` is cuda when available, else cpu."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, object]]:
    """Two groups: decayed weights, and norms/biases (1-D parameters) with no weight decay."""
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for param in model.parameters():
        if param.requires_grad:
            (no_decay if param.ndim <= 1 else decay).append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_optimizer(
    model: nn.Module, training: TrainingConfig, cfg: OptimizerConfig
) -> torch.optim.Optimizer:
    """AdamW or SGD over the parameter groups."""
    groups = param_groups(model, cfg.weight_decay)
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=training.lr, momentum=cfg.momentum)
    return torch.optim.AdamW(groups, lr=training.lr, betas=cfg.betas)


def lr_factor(cfg: SchedulerConfig, step: int, epochs: int, steps_per_epoch: int) -> float:
    """Multiplier of the peak lr at optimizer step ``step`` (0-based)."""
    if cfg.name == "step":
        return float(cfg.gamma ** (step // (cfg.step_epochs * steps_per_epoch)))
    if cfg.name == "none":
        return 1.0
    warmup = round(cfg.warmup_epochs * steps_per_epoch)
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, epochs * steps_per_epoch - warmup))
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: SchedulerConfig, epochs: int, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-step LambdaLR following :func:`lr_factor`."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(cfg, step, epochs, steps_per_epoch)
    )


class EpochSampler(torch.utils.data.Sampler[int]):
    """Shuffles with a generator seeded by (seed, epoch): any epoch's order can be rebuilt.

    ``start`` skips the first samples of an epoch, which is how a resumed run continues
    mid-epoch from the recorded sampler position.
    """

    def __init__(self, indices: list[int], seed: int) -> None:
        self.indices = indices
        self.seed = seed
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Choose the epoch whose order to yield, from position ``start`` on."""
        self.epoch, self.start = epoch, start

    def order(self) -> list[int]:
        """The full order of the current epoch."""
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        perm = torch.randperm(len(self.indices), generator=generator).tolist()
        return [self.indices[i] for i in perm]

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self.order()[self.start :])

    def __len__(self) -> int:
        return len(self.indices) - self.start
