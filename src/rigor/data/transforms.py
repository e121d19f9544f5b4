"""One transform API over torchvision v1 and v2; statistics from the train split or a preset."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from rigor.config.models import TransformConfig


def _functional(version: str) -> Any:
    if version == "v2":
        from torchvision.transforms.v2 import functional
    else:
        from torchvision.transforms import functional
    return functional


def resize(images: np.ndarray, size: tuple[int, int], version: str) -> np.ndarray:
    """Resize (N, C, H, W) float images with antialiasing (bilinear)."""
    out = _functional(version).resize(torch.from_numpy(images), list(size), antialias=True)
    return np.ascontiguousarray(out.numpy(), dtype=np.float32)


def channel_stats(inputs: torch.Tensor) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of (N, C, H, W) inputs."""
    flat = inputs.transpose(0, 1).reshape(inputs.shape[1], -1).double()
    return flat.mean(dim=1).tolist(), flat.std(dim=1).clamp_min(1e-8).tolist()


def build_transform(
    cfg: TransformConfig, mean: list[float], std: list[float]
) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """The per-item transform: normalisation with the given statistics, or nothing."""
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
