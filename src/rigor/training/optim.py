"""The optimizer and its schedule: parameter groups (backbone and head rates, no weight
decay on norms and biases), AdamW or SGD, the per-step learning-rate factor, and mixed
precision (autocast and the fp16 GradScaler)."""

from __future__ import annotations

import contextlib
import math
from typing import Any

import torch
from torch import nn

from rigor.config.models import OptimizerConfig, SchedulerConfig, TrainingConfig


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
