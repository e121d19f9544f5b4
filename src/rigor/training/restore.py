"""Rebuild a finished run's model and data from its manifest alone (no globbing)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rigor.config.models import Config, ModelConfig
from rigor.data.registry import DatasetSource, TaskSpec, build_dataset
from rigor.data.transforms import build_transform
from rigor.models.registry import RigorModel, build_model
from rigor.training.checkpoint import load_checkpoint
from rigor.training.loop import predict
from rigor.training.policy import pick_device


def task_specs(manifest: dict[str, Any]) -> dict[str, TaskSpec]:
    """The run's tasks as recorded in the manifest (or a bundle: ``{"dataset": {"tasks"}}``)."""
    specs = {}
    for name, spec in manifest["dataset"]["tasks"].items():
        classes = tuple(spec["classes"]) if spec.get("classes") else None
        specs[name] = TaskSpec(name, spec["kind"], spec.get("num_classes"), classes)
    return specs


def architecture(model: ModelConfig) -> ModelConfig:
    """``model`` without its initial weights (``weights_path``, ``hf.path``): a checkpoint or
    a bundle supplies the weights, so rebuilding never reads the original weight files."""
    hf = model.hf.model_copy(update={"path": None})
    return model.model_copy(update={"weights_path": None, "hf": hf})


def empty_model(
    config: Config, manifest: dict[str, Any], input_shape: tuple[int, int, int]
) -> RigorModel:
    """The run's architecture with fresh weights."""
    return build_model(architecture(config.model), task_specs(manifest), input_shape)


def best_state(
    run_dir: Path, manifest: dict[str, Any], force: bool = False
) -> dict[str, torch.Tensor]:
    """Weights of the best checkpoint (EMA weights when the run kept an EMA)."""
    state = load_checkpoint(run_dir / manifest["best_checkpoint"], manifest["config_hash"], force)
    return state["ema"] if state["ema"] is not None else state["model"]


def run_dataset(run_dir: Path, config: Config, manifest: dict[str, Any]) -> DatasetSource:
    """The run's dataset with its recorded normalisation (cache under the run's output root)."""
    dataset = build_dataset(config.data, run_dir.parents[1] / "cache")
    transforms = manifest["transforms"]
    if transforms["normalize"]:
        dataset.transform = build_transform(
            config.data.transforms, transforms["mean"], transforms["std"]
        )
    return dataset


def split_rows(run_dir: Path, dataset: DatasetSource, split: str) -> list[int]:
    """Rows of ``split`` by the ids in the run's splits.json."""
    ids = json.loads((run_dir / "splits.json").read_text())["splits"][split]
    index = {sample_id: row for row, sample_id in enumerate(dataset.ids)}
    return [index[sample_id] for sample_id in ids]


def predict_split(ctx: Any, split: str) -> dict[str, np.ndarray]:
    """Run the best checkpoint on ``split``; arrays shaped like predictions/<split>.npz."""
    from torch.utils.data import DataLoader, Subset

    config, manifest, run_dir = ctx.config, ctx.manifest, ctx.run_dir
    dataset = run_dataset(run_dir, config, manifest)
    shape = tuple(int(s) for s in dataset.inputs.shape[1:])
    model = empty_model(config, manifest, (shape[0], shape[1], shape[2]))
    model.load_state_dict(best_state(run_dir, manifest))
    device = pick_device(config.run.device, config.training.tf32)
    rows = split_rows(run_dir, dataset, split)
    loader = DataLoader(Subset(dataset, rows), batch_size=config.training.eval_batch_size)
    preds = predict(model.to(device), loader, device)
    from rigor.training.run import prediction_arrays

    arrays = {"ids": preds["ids"], "groups": np.asarray([dataset.groups[r] for r in rows])}
    return arrays | prediction_arrays(preds)
