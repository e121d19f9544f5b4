"""Seeded random weights of a timm or torchvision architecture as a local safetensors file:
the stand-in for a downloaded encoder in demos and benchmarks (``scripts/random_weights.py``),
loaded through the same strict path as real weights."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from rigor.errors import UsageError
from rigor.io import atomic_write_bytes


def random_state(source: str, arch: str, seed: int, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The state dict of ``arch`` (timm, or a torchvision model name) initialised from ``seed``."""
    torch.manual_seed(seed)
    if source == "timm":
        import timm

        if not timm.is_model(arch):
            raise UsageError(f"--arch: {arch!r} is not a timm architecture")
        model = timm.create_model(arch, pretrained=False, **kwargs)
    else:
        import torchvision

        if arch not in torchvision.models.list_models():
            raise UsageError(f"--arch: {arch!r} is not a torchvision model")
        model = torchvision.models.get_model(arch, weights=None, **kwargs)
    return {k: v.detach().contiguous() for k, v in model.state_dict().items()}


def write_random_weights(
    path: Path, source: str, arch: str, seed: int, kwargs: dict[str, Any]
) -> str:
    """Write the seeded state dict as safetensors (atomically); returns its sha256."""
    from safetensors.torch import save

    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_bytes(path, save(random_state(source, arch, seed, kwargs)))
