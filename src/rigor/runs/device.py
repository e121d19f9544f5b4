"""Which device a run uses."""

from __future__ import annotations

import torch


def pick_device(name: str, tf32: bool) -> torch.device:
    """``auto`` is cuda when available, else cpu; sets the TF32 flags on CUDA."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32
    return device
