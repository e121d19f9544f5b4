"""One transform API over torchvision v1 and v2; statistics come from the train split."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from rigor.config.models import TransformConfig


def channel_stats(inputs: torch.Tensor) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of (N, C, H, W) inputs."""
    flat = inputs.transpose(0, 1).reshape(inputs.shape[1], -1).double()
    return flat.mean(dim=1).tolist(), flat.std(dim=1).clamp_min(1e-8).tolist()


def build_transform(
    cfg: TransformConfig, mean: list[float], std: list[float]
) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """The eval-time transform: normalisation with the given statistics, or nothing."""
    if not cfg.normalize:
        return None
    if cfg.version == "v2":
        from torchvision.transforms import v2

        return v2.Normalize(mean=mean, std=std)
    from torchvision import transforms

    return transforms.Normalize(mean=mean, std=std)


def transforms_record(cfg: TransformConfig, mean: list[float], std: list[float]) -> dict[str, Any]:
    """The manifest's ``transforms`` block."""
    return {
        "version": cfg.version,
        "normalize": cfg.normalize,
        "mean": mean if cfg.normalize else None,
        "std": std if cfg.normalize else None,
    }
