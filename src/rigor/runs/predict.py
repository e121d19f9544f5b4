"""Predicting a split with a run's model: batches through the evaluation pipeline (never
augmented), outputs per task, and the arrays of ``predictions/<split>.npz``."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from torch import nn

from rigor.data.loader import InputPipeline, base_dataset
from rigor.io import atomic_write_with
from rigor.models.registry import AUX, GATE


def forward_chunked(
    model: nn.Module, inputs: torch.Tensor, limit: list[int]
) -> dict[str, torch.Tensor]:
    """Forward in chunks of ``limit[0]`` samples, halving it on out-of-memory (eval only:
    the outputs do not depend on the chunk size)."""
    while True:
        size = min(limit[0], len(inputs))
        try:
            parts = [model(inputs[i : i + size]) for i in range(0, len(inputs), size)]
            return {key: torch.cat([part[key] for part in parts]) for key in parts[0]}
        except torch.OutOfMemoryError:
            if size == 1:
                raise
            if inputs.is_cuda:
                torch.cuda.empty_cache()
            limit[0] = max(1, size // 2)
            print(f"out of memory in evaluation: chunks of {limit[0]}", file=sys.stderr)


@torch.no_grad()
def predict(
    model: nn.Module,
    loader: torch.utils.data.DataLoader[Any],
    device: torch.device,
    pipeline: InputPipeline,
    autocast: Callable[[], Any] | None = None,
    with_ids: bool = True,
) -> dict[str, Any]:
    """Outputs and targets per task, ids and groups (unless ``with_ids`` is false: the
    per-epoch validation needs neither), over a whole loader (eval mode, never augmented);
    ``skipped`` maps unreadable rows (left out) to their errors."""
    model.eval()
    dataset = base_dataset(loader)
    outputs: dict[str, list[np.ndarray]] = {}
    targets: dict[str, list[np.ndarray]] = {}
    rows: list[int] = []
    skipped: dict[int, str] = {}
    limit = [loader.batch_size or 1]
    for batch in loader:
        skipped |= dict(batch.skipped)
        if not len(batch):
            continue
        inputs = pipeline(batch.input, device)
        with autocast() if autocast is not None else contextlib.nullcontext():
            result = forward_chunked(model, inputs, limit)
        for name, value in result.items():
            outputs.setdefault(name, []).append(value.float().cpu().numpy())
        for name, value in batch.targets.items():
            targets.setdefault(name, []).append(value.numpy())
        if with_ids:
            rows.extend(batch.index.tolist())
    predicted: dict[str, Any] = {
        "outputs": {name: np.concatenate(parts) for name, parts in outputs.items()},
        "targets": {name: np.concatenate(parts) for name, parts in targets.items()},
        "skipped": skipped,
    }
    if with_ids:
        predicted["ids"] = np.asarray([dataset.ids[row] for row in rows])
        predicted["groups"] = np.asarray([dataset.groups[row] for row in rows])
    return predicted


def prediction_arrays(preds: dict[str, Any]) -> dict[str, np.ndarray]:
    """``logits_<task>`` and ``targets_<task>`` per task; for a gated task also
    ``gate_<task>`` (selection logits) and ``aux_<task>`` (the auxiliary head's logits: Stage
    B of the cascade)."""
    arrays = {}
    for task, targets in preds["targets"].items():
        arrays[f"logits_{task}"] = preds["outputs"][task]
        arrays[f"targets_{task}"] = targets
        if GATE + task in preds["outputs"]:
            arrays[f"gate_{task}"] = preds["outputs"][GATE + task]
        if AUX + task in preds["outputs"]:
            arrays[f"aux_{task}"] = preds["outputs"][AUX + task]
    return arrays


def save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write arrays to an ``.npz`` atomically (no pickled objects: plain dtypes only)."""

    def write(handle: IO[bytes]) -> None:
        np.savez(handle, **arrays)  # type: ignore[arg-type]

    atomic_write_with(path, write)


def spot_arrays(dataset: Any, ids: Any) -> dict[str, np.ndarray]:
    """Where each predicted row sits, for spot data (a reader with coordinates: HEST): its
    ``sample`` id, ``barcode`` and ``coords`` (x, y pixels on the slide; NaN when the
    patches file has none). Empty for other data."""
    coords = dataset.raw.coords
    if coords is None:
        return {}
    names = [str(sample_id) for sample_id in ids]
    row_of = {sample_id: row for row, sample_id in enumerate(dataset.ids)}
    rows = np.asarray([row_of[name] for name in names], dtype=np.int64)
    parts = [name.split(":", 1) for name in names]
    return {
        "sample": np.asarray([part[0] for part in parts], dtype=str),
        "barcode": np.asarray([part[-1] for part in parts], dtype=str),
        "coords": np.asarray(coords, dtype=np.float64)[rows].reshape(len(rows), 2),
    }
