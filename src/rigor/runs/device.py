"""Which device a run uses, and how much memory it took."""

from __future__ import annotations

import sys
from typing import Any

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


def peak_memory(device: torch.device) -> dict[str, Any]:
    """The peak memory of this process: CUDA's ``max_memory_allocated`` on a GPU, the peak
    resident set size (``ru_maxrss``) on a CPU; in MiB, with which of the two it is."""
    if device.type == "cuda":
        used = torch.cuda.max_memory_allocated(device) / 2**20
        return {"mb": round(used, 1), "measure": "cuda max_memory_allocated"}
    import resource

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    used = rss / 2**20 if sys.platform == "darwin" else rss / 2**10
    return {"mb": round(used, 1), "measure": "process peak RSS"}
