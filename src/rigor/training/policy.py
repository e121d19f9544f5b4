"""Training policy in one module: seeding, device, precision, optimizer groups, schedules,
EMA, early stopping and the epoch-seeded sampler."""

from __future__ import annotations

import contextlib
import copy
import math
import os
import random
from collections.abc import Iterator
from typing import Any

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
    if determinism or torch.are_deterministic_algorithms_enabled():
        # The call imports torch._inductor (1.3 s); off is the default, so skip it then.
        torch.use_deterministic_algorithms(determinism)
    torch.backends.cudnn.deterministic = determinism
    torch.backends.cudnn.benchmark = not determinism


def param_groups(
    model: nn.Module,
    lr: float,
    backbone_scale: float,
    weight_decay: float,
    unfrozen_scale: float = 1.0,
) -> list[dict[str, Any]]:
    """Backbone and heads at their own learning rates; no weight decay on norms and biases.

    Blocks trained in full next to adapters (``model.unfrozen`` name prefixes) form their own
    groups at ``lr * backbone_scale * unfrozen_scale``; the heads' groups come last.
    """
    unfrozen = tuple(getattr(model, "unfrozen", ()))
    groups: dict[tuple[str, bool], list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            part = "backbone" if name.startswith("backbone.") else "heads"
            part = "backbone_unfrozen" if unfrozen and name.startswith(unfrozen) else part
            groups.setdefault((part, param.ndim > 1), []).append(param)
    scales = {"backbone": backbone_scale, "backbone_unfrozen": backbone_scale * unfrozen_scale}
    return [
        {
            "name": f"{part}/{'decay' if decay else 'no_decay'}",
            "params": params,
            "lr": lr * scales.get(part, 1.0),
            "weight_decay": weight_decay if decay else 0.0,
        }
        for (part, decay), params in sorted(groups.items())
    ]


def build_optimizer(
    model: nn.Module,
    training: TrainingConfig,
    cfg: OptimizerConfig,
    loss_weights: nn.Module | None = None,
) -> torch.optim.Optimizer:
    """AdamW or SGD over the parameter groups; learned loss weights (if any) come first, at
    the heads' rate and without weight decay, so the heads' group stays the last one."""
    unfrozen_scale = float(getattr(model, "unfrozen_lr_scale", 1.0))
    groups = param_groups(
        model, training.lr, training.backbone_lr_scale, cfg.weight_decay, unfrozen_scale
    )
    if loss_weights is not None:
        extra = {"name": "loss_weights", "lr": training.lr, "weight_decay": 0.0}
        groups.insert(0, {**extra, "params": list(loss_weights.parameters())})
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


class Precision:
    """Autocast in the configured dtype; a GradScaler for fp16 (a no-op scaler otherwise)."""

    DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}

    def __init__(self, name: str, device: torch.device) -> None:
        self.name = name
        self.device = device
        self.scaler = torch.amp.GradScaler(device.type, enabled=name == "fp16")

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """The autocast context for forward passes (nothing for fp32)."""
        if self.name == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.DTYPES[self.name])


class EMA:
    """Exponential moving average of a model's weights; buffers are copied as they are."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """ema = decay * ema + (1 - decay) * current, for every floating-point parameter."""
        for ema_p, p in zip(self.model.parameters(), model.parameters(), strict=True):
            ema_p.lerp_(p.detach(), 1.0 - self.decay)
        for ema_b, b in zip(self.model.buffers(), model.buffers(), strict=True):
            ema_b.copy_(b)

    def state_dict(self) -> dict[str, Any]:
        """The averaged weights."""
        return self.model.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the averaged weights."""
        self.model.load_state_dict(state)


class EarlyStopping:
    """Tracks the best monitor value and epochs without improvement."""

    def __init__(self, mode: str, patience: int | None, min_delta: float) -> None:
        self.sign = 1.0 if mode == "max" else -1.0
        self.patience = patience
        self.min_delta = min_delta
        self.best = -math.inf
        self.bad_epochs = 0

    def update(self, value: float) -> bool:
        """Record one epoch's monitor value; True when it is an improvement."""
        if self.sign * value > self.best + self.min_delta:
            self.best, self.bad_epochs = self.sign * value, 0
            return True
        self.bad_epochs += 1
        return False

    @property
    def best_value(self) -> float:
        """The best monitor value in its own sign."""
        return self.sign * self.best

    @property
    def should_stop(self) -> bool:
        """True once ``patience`` epochs passed without improvement."""
        return self.patience is not None and self.bad_epochs >= self.patience

    def state_dict(self) -> dict[str, float]:
        """Best value (signed for maximisation) and the patience counter."""
        return {"best": self.best, "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state: dict[str, float]) -> None:
        """Restore from :meth:`state_dict`."""
        self.best, self.bad_epochs = float(state["best"]), int(state["bad_epochs"])


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
