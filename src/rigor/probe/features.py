"""Frozen-encoder features: one batched, no-grad, streamed pass over the dataset, cached
under the output root by what determines them and copied into the probe's run folder.

The cache key is the sha256 of the encoder's weights, the dataset's content hash, the
normalisation record and the precision: the same encoder on the same data is read once,
whatever folds, penalty or panel later probes choose.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from rigor.data.dataset import ImageDataset
from rigor.data.loader import InputPipeline, make_loader
from rigor.io import atomic_write_json, atomic_write_with, sha256_file, sha256_json

FEATURES, INDEX = "features.npy", "features.json"


def weights_hash(module: nn.Module) -> str:
    """sha256 over every tensor of ``module``'s state dict, by name, in order."""
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        digest.update(name.encode())
        digest.update(str(tensor.dtype).encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


@dataclass(frozen=True)
class EncoderInput:
    """A raw uint8 batch -> the encoder's input, on the device: its published evaluation
    geometry (resize of the shorter side, centre crop), then the run's normalisation, in
    the encoder's memory format."""

    pipeline: InputPipeline
    resize: int | None = None
    crop: int | None = None
    interpolation: str = "bilinear"
    channels_last: bool = False

    def __call__(self, images: torch.Tensor, device: torch.device) -> torch.Tensor:
        """The encoder's input for ``images`` (N, C, H, W)."""
        x = images.to(device, non_blocking=True)
        if self.resize is not None or self.crop is not None:
            from torchvision.transforms.v2 import InterpolationMode
            from torchvision.transforms.v2 import functional as F

            if self.resize is not None:
                mode = InterpolationMode(self.interpolation)
                x = F.resize(x, [self.resize], interpolation=mode, antialias=True)
            if self.crop is not None:
                x = F.center_crop(x, [self.crop, self.crop])
        x = self.pipeline(x, device)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def record(self) -> dict[str, Any]:
        """What the features depend on besides the normalisation."""
        return {"resize": self.resize, "crop": self.crop, "interpolation": self.interpolation}


def ready_encoder(encoder: nn.Module, channels_last: bool, compile: bool) -> nn.Module:
    """The frozen encoder as extraction runs it: in eval mode, in the channels_last memory
    format when asked (1.5x for ResNet-50's convolutions on a CPU, measured), compiled when
    asked."""
    encoder = encoder.eval()
    if channels_last:
        encoder = encoder.to(memory_format=torch.channels_last)
    if compile:
        encoder = torch.compile(encoder)  # type: ignore[assignment]
    return encoder


@torch.inference_mode()
def extract(
    encoder: nn.Module,
    loader: torch.utils.data.DataLoader[Any],
    device: torch.device,
    encoder_input: Callable[[torch.Tensor, torch.device], torch.Tensor],
    autocast: Callable[[], Any],
    progress: Callable[[int], None] | None = None,
) -> tuple[np.ndarray, list[int], dict[int, str]]:
    """Features (float32, one row per readable sample in loader order), their dataset rows,
    and the rows that could not be read (left out) with their errors."""
    from rigor.allocator import fix_extraction_threshold

    fix_extraction_threshold()  # after the loader's streaming threshold: see its docstring
    encoder.eval()
    parts: list[np.ndarray] = []
    rows: list[int] = []
    skipped: dict[int, str] = {}
    for batch in loader:
        skipped |= dict(batch.skipped)
        if not len(batch):
            continue
        with autocast():
            features = encoder(encoder_input(batch.input, device))
        parts.append(features.float().cpu().numpy().reshape(len(batch), -1))
        rows.extend(batch.index.tolist())
        if progress is not None:
            progress(len(rows))
    return np.concatenate(parts).astype(np.float32, copy=False), rows, skipped


def cache_key(
    weights: str,
    dataset: ImageDataset,
    transforms: dict[str, Any],
    precision: str,
    geometry: dict[str, Any] | None = None,
) -> str:
    """What the features depend on, hashed."""
    key = {
        "weights": weights,
        "dataset": dataset.content_hash,
        "transforms": {k: v for k, v in transforms.items() if k != "augment"},
        "precision": precision,
    }
    if geometry and any(v is not None for k, v in geometry.items() if k != "interpolation"):
        key["geometry"] = geometry  # absent when off: earlier caches stay valid
    return sha256_json(key)


def cached_features(
    cache_dir: Path,
    key: str,
    compute: Callable[[], tuple[np.ndarray, list[int], dict[int, str]]],
) -> tuple[Path, dict[str, Any]]:
    """The cached feature file for ``key`` (computed and written atomically when missing or
    when its hash no longer matches) and its index: rows, skipped rows, sha256, timing."""
    folder = cache_dir / key[:16]
    index_path, array_path = folder / INDEX, folder / FEATURES
    if index_path.is_file() and array_path.is_file():
        index = json.loads(index_path.read_text())
        if sha256_file(array_path) == index["sha256"]:
            return array_path, index | {"reused": True}
        print(f"feature cache {folder}: hash mismatch, extracting again", file=sys.stderr)
    started = time.perf_counter()
    features, rows, skipped = compute()
    seconds = time.perf_counter() - started
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_with(array_path, lambda handle: np.save(handle, features, allow_pickle=False))
    index = {
        "key": key,
        "shape": list(features.shape),
        "rows": rows,
        "skipped": {str(row): error for row, error in skipped.items()},
        "sha256": sha256_file(array_path),
        "seconds": round(seconds, 3),
        "samples_per_s": round(len(rows) / max(seconds, 1e-9), 1),
    }
    atomic_write_json(index_path, index)
    return array_path, index | {"reused": False}


def copy_into(run_dir: Path, source: Path, index: dict[str, Any]) -> list[str]:
    """The cached features as run artifacts (``probe/features.npy`` and its index); a hard
    link when the cache shares the file system, a copy otherwise."""
    target = run_dir / "probe" / FEATURES
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        target.hardlink_to(source)
    except OSError:
        shutil.copyfile(source, target)
    stored = {k: v for k, v in index.items() if k != "reused"}
    atomic_write_json(run_dir / "probe" / INDEX, stored)
    return [f"probe/{FEATURES}", f"probe/{INDEX}"]


def load_features(path: Path) -> np.ndarray:
    """A feature file, read without unpickling."""
    return np.load(path, allow_pickle=False)


def feature_loader(
    dataset: ImageDataset, batch_size: int, num_workers: int, prefetch_factor: int
) -> torch.utils.data.DataLoader[Any]:
    """Every row of the dataset in order, streamed."""
    return make_loader(
        dataset,
        list(range(len(dataset))),
        batch_size=batch_size,
        num_workers=num_workers,
        prefetch_factor=prefetch_factor,
    )
