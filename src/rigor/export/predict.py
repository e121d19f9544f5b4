"""Predict with a bundle: class, calibrated confidence and abstention, without pickle."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rigor.calibration.policy import policy_confidence
from rigor.config.models import Config
from rigor.errors import UsageError
from rigor.export.bundle import Bundle, load_bundle
from rigor.io import atomic_write_text
from rigor.models.registry import GATE


def _model(bundle: Bundle, config: Config) -> torch.nn.Module:
    from rigor.models.registry import build_model
    from rigor.training.restore import architecture, task_specs

    c, h, w = bundle.record["input_shape"]
    model = build_model(
        architecture(config.model),
        task_specs({"dataset": {"tasks": bundle.record["tasks"]}}),
        (c, h, w),
    )
    model.load_state_dict(bundle.state)
    return model.eval()


def _split_inputs(
    bundle: Bundle, config: Config, split: str
) -> tuple[np.ndarray, list[str], np.ndarray]:
    from rigor.data.registry import build_dataset

    ids = json.loads((bundle.root / bundle.record["splits"]).read_text())["splits"].get(split)
    if ids is None:
        raise UsageError(f"--split: unknown split {split!r}")
    dataset = build_dataset(config.data, None)
    index = {sample_id: row for row, sample_id in enumerate(dataset.ids)}
    rows = [index[i] for i in ids]
    labels = dataset.targets[bundle.record["task"]][rows].numpy()
    return dataset.inputs[rows].numpy(), ids, labels


def _file_inputs(bundle: Bundle, config: Config, paths: list[Path]) -> tuple[np.ndarray, list[str]]:
    from rigor.data.files import ImageRef, decode_images

    c, h, w = bundle.record["input_shape"]
    refs = [ImageRef(path, f"--input {path}") for path in paths]
    for ref in refs:
        if not ref.path.is_file():
            raise UsageError(f"--input: file not found: {ref.path}")
    images = decode_images(refs, (h, w), c, config.data.transforms.version)
    return images, [str(p) for p in paths]


def predict_with_bundle(
    root: Path,
    inputs: list[Path] | None = None,
    split: str | None = None,
    output: Path | None = None,
) -> tuple[Path, dict[str, Any]]:
    """Predict ``inputs`` (image files) or a ``split``; write a CSV and return it with a summary."""
    bundle = load_bundle(root)
    config = Config.model_validate(json.loads((root / bundle.record["config"]).read_text()))
    labels = None
    if split is not None:
        images, ids, labels = _split_inputs(bundle, config, split)
    elif inputs:
        images, ids = _file_inputs(bundle, config, inputs)
    else:
        raise UsageError("give --input PATH... or --split NAME")
    x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
    transforms = bundle.record["transforms"]
    if transforms["normalize"]:
        mean = torch.tensor(transforms["mean"]).view(1, -1, 1, 1)
        std = torch.tensor(transforms["std"]).view(1, -1, 1, 1)
        x = (x - mean) / std
    task, policy = bundle.record["task"], bundle.policy
    with torch.no_grad():
        outputs = _model(bundle, config)(x)
    logits = outputs[task].numpy()
    gate = outputs[GATE + task].numpy() if GATE + task in outputs else None
    confidence = policy_confidence(logits, gate, policy)
    predicted = logits.argmax(axis=1)
    abstained = confidence < policy["threshold"]
    classes = bundle.record["tasks"][task].get("classes") or [
        str(k) for k in range(logits.shape[1])
    ]
    target = output or root.parent / "predict" / f"{split or 'inputs'}.csv"
    atomic_write_text(target, _table(ids, predicted, confidence, abstained, classes, labels))
    summary: dict[str, Any] = {
        "n": len(ids),
        "accepted": int((~abstained).sum()),
        "coverage": float((~abstained).mean()),
    }
    if labels is not None and (~abstained).any():
        summary["selective_risk"] = float((predicted[~abstained] != labels[~abstained]).mean())
    return target, summary


def _table(
    ids: list[str],
    predicted: np.ndarray,
    confidence: np.ndarray,
    abstained: np.ndarray,
    classes: list[str],
    labels: np.ndarray | None,
) -> str:
    buffer = io.StringIO()
    columns = ["id", "class", "confidence", "abstained"] + (["label"] if labels is not None else [])
    writer = csv.writer(buffer)
    writer.writerow(columns)
    for row, sample_id in enumerate(ids):
        cells = [
            sample_id,
            classes[predicted[row]],
            f"{confidence[row]:.6f}",
            "yes" if abstained[row] else "no",
        ]
        if labels is not None:
            cells.append(classes[int(labels[row])])
        writer.writerow(cells)
    return buffer.getvalue()
