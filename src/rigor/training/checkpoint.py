"""Checkpoints: atomic writes, ``weights_only`` loads, config-hash checks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from rigor.errors import ArtifactError, UsageError
from rigor.io import atomic_write_with

REQUIRED_KEYS = ("model", "optimizer", "scheduler", "epoch", "step", "best_metric", "config_hash")


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write ``state`` atomically: a kill leaves the old file or the new one, never a torn one."""
    atomic_write_with(path, lambda handle: torch.save(state, handle))


def load_checkpoint(
    path: Path, config_hash: str | None = None, force: bool = False
) -> dict[str, Any]:
    """Load with ``weights_only=True``; refuse missing keys and a different config hash."""
    if not path.is_file():
        raise ArtifactError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch raises many types for a bad file
        raise ArtifactError(f"checkpoint {path} cannot be read safely: {err}") from None
    if not isinstance(state, dict):
        raise ArtifactError(f"checkpoint {path} does not hold a dict")
    missing = [key for key in REQUIRED_KEYS if key not in state]
    if missing:
        raise ArtifactError(f"checkpoint {path} lacks key(s): {', '.join(missing)}")
    if config_hash is not None and state["config_hash"] != config_hash and not force:
        raise UsageError(
            f"checkpoint {path} was written for config {state['config_hash'][:12]}, "
            f"this run's config is {config_hash[:12]}; pass --force to load it anyway"
        )
    return state
