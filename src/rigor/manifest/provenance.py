"""Provenance: git state, versions, platform, command line. Never imports torch itself."""

from __future__ import annotations

import platform
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import rigor
from rigor.manifest.env import PROJECT_ROOT, installed_packages


def _git(args: list[str], cwd: Path) -> str | None:
    try:
        result = subprocess.run(
            ["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() if result.returncode == 0 else None


def git_info(cwd: Path = PROJECT_ROOT) -> dict[str, Any]:
    """Commit, dirty flag and origin remote of the checkout at ``cwd``; nulls outside git."""
    commit = _git(["rev-parse", "HEAD"], cwd)
    if commit is None:
        return {"commit": None, "is_dirty": None, "remote": None}
    status = _git(["status", "--porcelain"], cwd)
    return {
        "commit": commit,
        "is_dirty": None if status is None else bool(status),
        "remote": _git(["remote", "get-url", "origin"], cwd) or None,
    }


def runtime_info() -> dict[str, Any]:
    """Python/torch/CUDA/cuDNN versions; CUDA details only if torch is already imported."""
    torch_mod = sys.modules.get("torch")
    cuda = cudnn = None
    available = False
    device = "cpu"
    if torch_mod is not None:
        cuda = torch_mod.version.cuda
        cudnn = (
            torch_mod.backends.cudnn.version() if torch_mod.backends.cudnn.is_available() else None
        )
        available = bool(torch_mod.cuda.is_available())
        if available:
            device = torch_mod.cuda.get_device_name(0)
    return {
        "python": platform.python_version(),
        "torch": installed_packages().get("torch"),
        "cuda": cuda,
        "cudnn": cudnn,
        "cuda_available": available,
        "device": device,
    }


def provenance(seed: int, determinism: bool, device: str) -> dict[str, Any]:
    """The ``provenance`` block of a manifest."""
    runtime = runtime_info()
    return {
        "platform": platform.platform(),
        "hostname": socket.gethostname(),
        "command": [sys.executable, *sys.argv],
        "cudnn": runtime["cudnn"],
        "cuda_available": runtime["cuda_available"],
        "device": device,
        "seed": seed,
        "determinism": determinism,
        "rigor_version": rigor.__version__,
    }
