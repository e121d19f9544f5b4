"""The train task function: config in, run folder with a validated manifest out."""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
import yaml
from torch.utils.data import DataLoader, Subset

from rigor.config import ResolvedConfig
from rigor.data.registry import DatasetSource, build_dataset
from rigor.data.splits import SPLITS, make_splits, splits_record
from rigor.data.transforms import build_transform, channel_stats, transforms_record
from rigor.errors import ConfigError
from rigor.io import atomic_write_json, atomic_write_text, atomic_write_with
from rigor.manifest import MANIFEST_VERSION, hash_files, write_manifest
from rigor.manifest.env import Lock, check_lock
from rigor.manifest.provenance import git_info, provenance, runtime_info
from rigor.manifest.rundir import create_run_dir, iso, utc_now
from rigor.models.registry import RigorModel, build_model
from rigor.tracking import Tracker, monitor_to_key
from rigor.training.checkpoint import save_checkpoint
from rigor.training.loop import StepState, available_monitors, predict, split_metrics, train_epoch
from rigor.training.policy import (
    EpochSampler,
    build_optimizer,
    build_scheduler,
    pick_device,
    seed_everything,
)

EVAL_SPLITS = ("val_select", "val_calib", "val_test")


@dataclass
class Prepared:
    """Everything built from the config before any file is written."""

    resolved: ResolvedConfig
    dataset: DatasetSource
    splits: dict[str, list[int]]
    model: RigorModel
    device: torch.device
    transforms: dict[str, Any]
    lock: Lock | None
    environment: dict[str, Any]
    started: Any = field(default_factory=utc_now)


def prepare(resolved: ResolvedConfig, env_policy: str | None, force: bool) -> Prepared:
    """Check the environment, build data, splits and model; raise before writing anything."""
    cfg = resolved.config
    lock, environment = check_lock(cfg.env.lockfile, env_policy or cfg.env.policy, force)
    seed_everything(cfg.run.seed, cfg.run.determinism)
    dataset = build_dataset(cfg.data)
    monitor_metric = cfg.training.monitor.split("/", 1)[1]
    if monitor_metric not in available_monitors(dataset.tasks):
        raise ConfigError(
            f"training.monitor: {cfg.training.monitor!r} is not produced for tasks "
            f"{sorted(dataset.tasks)} (choose among {sorted(available_monitors(dataset.tasks))})"
        )
    splits = make_splits(dataset.groups, cfg.data.splits, cfg.run.seed)
    mean, std = channel_stats(dataset.inputs[splits["train"]])
    dataset.transform = build_transform(cfg.data.transforms, mean, std)
    model = build_model(cfg.model, dataset.tasks, in_channels=int(dataset.inputs.shape[1]))
    device = pick_device(cfg.run.device)
    return Prepared(
        resolved=resolved,
        dataset=dataset,
        splits=splits,
        model=model.to(device),
        device=device,
        transforms=transforms_record(cfg.data.transforms, mean, std),
        lock=lock,
        environment=environment,
    )


def train(resolved: ResolvedConfig, env_policy: str | None = None, force: bool = False) -> Path:
    """Train the configured model and return the path of the run's ``manifest.json``."""
    prepared = prepare(resolved, env_policy, force)
    cfg = resolved.config
    run_id, run_dir = create_run_dir(Path(cfg.run.output_root), cfg.run.name, resolved.hash)
    print(f"run {run_id}: writing to {run_dir}", file=sys.stderr)
    write_run_inputs(run_dir, prepared)
    summary = fit(run_dir, prepared)
    outputs = write_predictions(run_dir, prepared)
    metrics = {**summary["final"], **outputs.pop("metrics")}
    atomic_write_json(
        run_dir / "metrics.json", {"metrics": metrics, "training": summary["training"]}
    )
    manifest = build_manifest(run_id, run_dir, prepared, metrics, summary["training"], outputs)
    return write_manifest(run_dir, manifest)


def write_run_inputs(run_dir: Path, prepared: Prepared) -> None:
    """The configs as composed and as resolved, and the splits."""
    resolved = prepared.resolved
    atomic_write_json(run_dir / "config_raw.json", resolved.raw)
    atomic_write_json(run_dir / "config_resolved.json", resolved.resolved)
    atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(resolved.resolved, sort_keys=False))
    record = splits_record(
        prepared.splits,
        prepared.dataset.ids,
        resolved.config.data.splits,
        resolved.config.run.seed,
        prepared.dataset.name,
    )
    atomic_write_json(run_dir / "splits.json", record)


def loader(prepared: Prepared, rows: list[int], train: bool) -> DataLoader[Any]:
    """A DataLoader over ``rows``: seeded epoch-wise shuffling for train, fixed order otherwise."""
    cfg = prepared.resolved.config
    subset = Subset(prepared.dataset, rows)
    sampler = EpochSampler(list(range(len(rows))), cfg.run.seed) if train else None
    return DataLoader(
        subset,
        batch_size=cfg.training.batch_size if train else cfg.training.eval_batch_size,
        sampler=sampler,
        num_workers=cfg.data.num_workers,
    )


def fit(run_dir: Path, prepared: Prepared) -> dict[str, Any]:
    """Run the epochs, evaluating on val_select and checkpointing last and best."""
    cfg = prepared.resolved.config
    model, device, tasks = prepared.model, prepared.device, prepared.dataset.tasks
    train_loader = loader(prepared, prepared.splits["train"], train=True)
    select_loader = loader(prepared, prepared.splits["val_select"], train=False)
    steps = len(train_loader)
    if cfg.training.max_steps_per_epoch is not None:
        steps = min(steps, cfg.training.max_steps_per_epoch)
    optimizer = build_optimizer(model, cfg.training, cfg.optimizer)
    scheduler = build_scheduler(optimizer, cfg.scheduler, cfg.training.epochs, steps)
    tracker = Tracker(run_dir, cfg.logging)
    monitor, sign = monitor_to_key(cfg.training.monitor), (
        1 if cfg.training.monitor_mode == "max" else -1
    )
    state, best, best_epoch, started = StepState(), -float("inf"), -1, time.perf_counter()
    for epoch in range(cfg.training.epochs):
        state.epoch = epoch
        assert isinstance(train_loader.sampler, EpochSampler)
        train_loader.sampler.set_epoch(epoch)
        train_values = train_epoch(
            model,
            train_loader,
            optimizer,
            scheduler,
            tasks,
            cfg.training.grad_clip,
            cfg.training.max_steps_per_epoch,
            device,
            tracker,
            state,
        )
        values = {
            **train_values,
            **split_metrics(predict(model, select_loader, device), tasks, "val_select"),
        }
        values["lr"] = float(scheduler.get_last_lr()[0])
        tracker.log_epoch(epoch, state.step, values)
        improved = sign * values[monitor] > best
        if improved:
            best, best_epoch = sign * values[monitor], epoch
        checkpoint = {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "epoch": epoch,
            "step": state.step,
            "best_metric": sign * best,
            "config_hash": prepared.resolved.hash,
        }
        save_checkpoint(run_dir / "checkpoints" / "last.pt", checkpoint)
        if improved:
            save_checkpoint(run_dir / "checkpoints" / "best.pt", checkpoint)
        print(
            f"epoch {epoch}: {monitor}={values[monitor]:.4f} loss/train={values['loss/train']:.4f}",
            file=sys.stderr,
        )
    tracker.close()
    wall = time.perf_counter() - started
    return {
        "final": {f"best/{monitor}": sign * best},
        "training": {
            "epochs": cfg.training.epochs,
            "steps": state.step,
            "best_epoch": best_epoch,
            "wall_time_s": round(wall, 3),
            "samples_per_s": round(state.samples / wall, 1),
        },
    }


def write_predictions(run_dir: Path, prepared: Prepared) -> dict[str, Any]:
    """Predictions of the best checkpoint on val_select, val_calib and val_test."""
    best = torch.load(run_dir / "checkpoints" / "best.pt", map_location="cpu", weights_only=True)
    prepared.model.load_state_dict(best["model"])
    metrics: dict[str, float] = {}
    paths = []
    for split in EVAL_SPLITS:
        preds = predict(
            prepared.model, loader(prepared, prepared.splits[split], False), prepared.device
        )
        metrics.update(split_metrics(preds, prepared.dataset.tasks, split))
        arrays = {"ids": preds["ids"], "tasks": np.asarray(sorted(preds["outputs"]))}
        for task in preds["outputs"]:
            arrays[f"logits_{task}"] = preds["outputs"][task]
            arrays[f"targets_{task}"] = preds["targets"][task]
        rel = f"predictions/{split}.npz"
        save_npz(run_dir / rel, arrays)
        paths.append(rel)
    return {"metrics": metrics, "predictions": paths}


def save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write arrays to an ``.npz`` atomically (no pickled objects: plain dtypes only)."""

    def write(handle: IO[bytes]) -> None:
        np.savez(handle, **arrays)  # type: ignore[arg-type]

    atomic_write_with(path, write)


def build_manifest(
    run_id: str,
    run_dir: Path,
    prepared: Prepared,
    metrics: dict[str, float],
    training: dict[str, Any],
    outputs: dict[str, Any],
) -> dict[str, Any]:
    """Assemble manifest v1 for a finished run, with the sha256 of every artifact."""
    cfg = prepared.resolved.config
    dataset, lock = prepared.dataset, prepared.lock
    split_json = json.loads((run_dir / "splits.json").read_text())
    logs = sorted(
        str(path.relative_to(run_dir)) for path in (run_dir / "logs").rglob("*") if path.is_file()
    )
    checkpoints = ["checkpoints/best.pt", "checkpoints/last.pt"]
    artifacts = {
        "metrics": ["metrics.json"],
        "figures": [],
        "plots": [],
        "predictions": outputs["predictions"],
        "logs": logs,
        "splits": ["splits.json"],
    }
    configs = ["config.yaml", "config_raw.json", "config_resolved.json"]
    every = sorted({*checkpoints, *configs, *(p for paths in artifacts.values() for p in paths)})
    finished = utc_now()
    runtime = runtime_info()
    return {
        "manifest_version": MANIFEST_VERSION,
        "run_id": run_id,
        "created_at": iso(finished),
        "git": git_info(),
        "python": runtime["python"],
        "torch": runtime["torch"],
        "cuda": runtime["cuda"],
        "provenance": provenance(cfg.run.seed, cfg.run.determinism, str(prepared.device)),
        "env_lock": (
            None if lock is None else {"name": lock.name, "hash": lock.sha256, "kind": lock.kind}
        ),
        "environment": prepared.environment,
        "dataset": {
            "name": dataset.name,
            "version": dataset.version,
            "content_hash": dataset.content_hash,
            "tasks": {name: spec.as_dict() for name, spec in dataset.tasks.items()},
            "split": {
                "path": "splits.json",
                "seed": cfg.run.seed,
                "fractions": cfg.data.splits.model_dump(),
                "sizes": {name: len(prepared.splits[name]) for name in SPLITS},
            },
            "hashes": split_json["sha256"],
        },
        "encoder": {
            "arch": cfg.model.backbone,
            "dim": prepared.model.feature_dim,
            "weights": cfg.model.weights_path,
        },
        "transforms": prepared.transforms,
        "checkpoints": checkpoints,
        "best_checkpoint": "checkpoints/best.pt",
        "config_path": "config.yaml",
        "config_raw_path": "config_raw.json",
        "config_resolved_path": "config_resolved.json",
        "config_hash": prepared.resolved.hash,
        "artifacts": artifacts,
        "metrics": metrics,
        "sha256": hash_files(run_dir, every),
        "stages": [
            {
                "name": "train",
                "status": "complete",
                "started_at": iso(prepared.started),
                "finished_at": iso(finished),
                "duration_s": round((finished - prepared.started).total_seconds(), 3),
                "command": list(sys.argv),
                "options": {
                    "config": prepared.resolved.config_file,
                    "sources": prepared.resolved.sources,
                },
                "outputs": every,
                "summary": training,
                "environment": prepared.environment,
            }
        ],
    }
