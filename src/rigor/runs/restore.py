"""Rebuild a finished run's model and data from its manifest alone (no globbing)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from rigor.config import apply_overrides
from rigor.config.models import Config, ModelConfig, TopVariableConfig
from rigor.data.build import build_dataset
from rigor.data.dataset import ImageDataset
from rigor.data.loader import InputPipeline, make_loader
from rigor.data.registry import TaskSpec
from rigor.data.transforms import pipeline_from_record
from rigor.models.build import build_model
from rigor.models.registry import RigorModel
from rigor.runs.checkpoint import load_checkpoint
from rigor.runs.device import pick_device
from rigor.runs.predict import predict, prediction_arrays, spot_arrays

if TYPE_CHECKING:
    from rigor.stages import RunContext


def task_specs(manifest: dict[str, Any]) -> dict[str, TaskSpec]:
    """The run's tasks as recorded in the manifest (or a bundle: ``{"dataset": {"tasks"}}``)."""
    specs = {}
    for name, spec in manifest["dataset"]["tasks"].items():
        classes = tuple(spec["classes"]) if spec.get("classes") else None
        specs[name] = TaskSpec(name, spec["kind"], spec.get("num_classes"), classes)
    return specs


def architecture(model: ModelConfig) -> ModelConfig:
    """``model`` without its initial weights (``weights_path``, ``hf.path``, ``init_from``): a
    checkpoint or a bundle supplies the weights, so rebuilding never reads the original
    weight files."""
    hf = model.hf.model_copy(update={"path": None})
    return model.model_copy(update={"weights_path": None, "init_from": None, "hf": hf})


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


def run_dataset(
    run_dir: Path, config: Config, manifest: dict[str, Any]
) -> tuple[ImageDataset, InputPipeline]:
    """The run's dataset (cache under the run's output root) and its evaluation pipeline:
    the recorded normalisation, never augmentation."""
    data = config.data
    if isinstance(data.genes, TopVariableConfig):  # the panel training picked on train
        panel = json.loads((run_dir / "genes.json").read_text())["genes"]
        data = apply_overrides(data, {"genes": panel}, "data", f"{run_dir.name}/genes.json")
    dataset = build_dataset(data, run_dir.parents[1] / "cache")
    return dataset, pipeline_from_record(config.data.transforms, manifest["transforms"])


def split_rows(run_dir: Path, dataset: ImageDataset, split: str) -> list[int]:
    """Rows of ``split`` by the ids in the run's splits.json."""
    ids = json.loads((run_dir / "splits.json").read_text())["splits"][split]
    index = {sample_id: row for row, sample_id in enumerate(dataset.ids)}
    return [index[sample_id] for sample_id in ids]


def predict_split(ctx: RunContext, split: str) -> dict[str, np.ndarray]:
    """Run the best checkpoint on ``split``; arrays shaped like predictions/<split>.npz."""
    config, manifest, run_dir = ctx.config, ctx.manifest, ctx.run_dir
    dataset, pipeline = run_dataset(run_dir, config, manifest)
    model = empty_model(config, manifest, dataset.input_shape)
    model.load_state_dict(best_state(run_dir, manifest))
    device = pick_device(config.run.device, config.training.tf32)
    loader = make_loader(
        dataset,
        split_rows(run_dir, dataset, split),
        batch_size=config.training.eval_batch_size,
        num_workers=config.data.num_workers,
        prefetch_factor=config.data.prefetch_factor,
    )
    preds = predict(model.to(device), loader, device, pipeline)
    arrays = {"ids": preds["ids"], "groups": preds["groups"]}
    return arrays | spot_arrays(dataset, preds["ids"]) | prediction_arrays(preds)
