"""The preprocessing cache: decoded, resized inputs keyed by a content hash.

The key covers the dataset's content fingerprint, the decode settings (size, channels) and
the transform version, so any change to data or preprocessing is a miss, never a stale hit.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rigor.config.models import DataConfig
from rigor.data.registry import RawData
from rigor.io import atomic_write_with, sha256_json

CACHE_FORMAT = 1


def cache_key(raw: RawData, cfg: DataConfig) -> str:
    """sha256 of (dataset, content, decode settings, transform version, cache format)."""
    size = cfg.transforms.image_size
    return sha256_json(
        {
            "dataset": raw.name,
            "version": raw.version,
            "content": raw.fingerprint,
            "size": size,
            "channels": cfg.channels,
            "transforms": cfg.transforms.version,
            "format": CACHE_FORMAT,
        }
    )


def materialize(raw: RawData, cfg: DataConfig, cache_root: Path | None) -> tuple[np.ndarray, str]:
    """Decoded inputs and a status for the log: ``hit <key>``, ``miss <key>`` or ``off``."""
    given = cfg.transforms.image_size
    size = (given[0], given[1]) if given else None
    decode = lambda: raw.decode(size, cfg.channels, cfg.transforms.version)  # noqa: E731
    if cache_root is None:
        return decode(), "off"
    key = cache_key(raw, cfg)
    path = cache_root / f"{raw.name}-{key[:16]}.npy"
    if path.is_file():
        return np.load(path, allow_pickle=False), f"hit {path.name}"
    inputs = decode()
    atomic_write_with(path, lambda handle: np.save(handle, inputs, allow_pickle=False))
    return inputs, f"miss {path.name} (written)"
