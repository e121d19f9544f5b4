"""The train task function: config in, run folder with a validated manifest out."""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
import yaml
from torch.utils.data import DataLoader

from rigor.config import ResolvedConfig
from rigor.config.models import AugmentConfig
from rigor.data.dataset import Batch, ImageDataset, skipped_record
from rigor.data.loader import InputPipeline, augment_generator, channel_stats
from rigor.data.loader import make_loader as make_data_loader
from rigor.data.registry import build_dataset
from rigor.data.splits import make_splits, splits_record
from rigor.data.transforms import build_pipeline, preset_stats, transforms_record
from rigor.errors import ConfigError, UsageError
from rigor.io import atomic_write_json, atomic_write_text, atomic_write_with
from rigor.manifest import write_manifest
from rigor.manifest.env import Lock, check_lock
from rigor.manifest.rundir import create_run_dir, utc_now
from rigor.models.registry import GATE, RigorModel, backbone_spec, build_model, model_size
from rigor.tracking import NullTracker, Tracker, monitor_to_key
from rigor.training.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from rigor.training.distributed import (
    DistInfo,
    barrier,
    broadcast,
    init_distributed,
    sum_over_ranks,
)
from rigor.training.loop import (
    Stepper,
    UncertaintyWeights,
    available_monitors,
    predict,
    split_metrics,
)
from rigor.training.policy import (
    EMA,
    EarlyStopping,
    EpochSampler,
    Precision,
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
    dataset: ImageDataset
    splits: dict[str, list[int]]
    pipeline: InputPipeline  # train batches: augmentation (when on) and normalisation
    eval_pipeline: InputPipeline  # every other batch: normalisation only
    model: RigorModel
    device: torch.device
    transforms: dict[str, Any]
    lock: Lock | None
    environment: dict[str, Any]
    model_info: dict[str, float]
    dist: DistInfo = field(default_factory=DistInfo)
    started: datetime = field(default_factory=utc_now)


def prepare(
    resolved: ResolvedConfig,
    env_policy: str | None,
    force: bool,
    dist_info: DistInfo | None = None,
) -> Prepared:
    """Check the environment, build data, splits and model; raise before writing anything."""
    dist_info = dist_info or DistInfo()
    cfg = resolved.config
    lock, environment = check_lock(cfg.env.lockfile, env_policy or cfg.env.policy, force)
    seed_everything(cfg.run.seed, cfg.run.determinism)
    spec = backbone_spec(cfg.model.backbone)
    if (
        cfg.data.transforms.normalize
        and cfg.data.transforms.stats == "preset"
        and spec.preset is None
    ):
        raise ConfigError(
            f"data.transforms.stats: backbone {cfg.model.backbone!r} has no preset statistics; "
            "use stats: train"
        )
    dataset = build_dataset(cfg.data, Path(cfg.run.output_root) / "cache")
    monitor_metric = cfg.training.monitor.split("/", 1)[1]
    if monitor_metric not in available_monitors(dataset.tasks):
        raise ConfigError(
            f"training.monitor: {cfg.training.monitor!r} is not produced for tasks "
            f"{sorted(dataset.tasks)} (choose among {sorted(available_monitors(dataset.tasks))})"
        )
    splits = make_splits(dataset.groups, cfg.data.splits, cfg.run.seed)
    shape = dataset.input_shape
    _check_augment(cfg.data.transforms.augment, shape)
    if cfg.data.transforms.stats == "preset" and spec.preset is not None:
        mean, std = preset_stats(spec.preset, shape[0])
    else:
        mean, std = channel_stats(dataset, splits["train"], cfg.data.num_workers)
    model = build_model(cfg.model, dataset.tasks, shape)
    info = {**model_size(model), **model.peft_info}
    adapters = (
        f", {cfg.model.peft.method} on {info['adapted_layers']} layers" if model.peft_info else ""
    )
    if dist_info.main:
        print(
            f"model: {cfg.model.backbone}, {info['params_total']:,} parameters "
            f"({info['params_trainable']:,} trainable{adapters}), {info['size_mb']} MB",
            file=sys.stderr,
        )
    device = pick_device(cfg.run.device, cfg.training.tf32)
    if dist_info.enabled:
        if cfg.training.batch_size % dist_info.world_size:
            raise ConfigError(
                f"training.batch_size ({cfg.training.batch_size}) must be a multiple of the "
                f"number of processes ({dist_info.world_size}): it is the global batch"
            )
        if device.type == "cuda":
            device = torch.device("cuda", dist_info.local_rank)
    return Prepared(
        resolved=resolved,
        dataset=dataset,
        splits=splits,
        pipeline=build_pipeline(cfg.data.transforms, mean, std, train=True),
        eval_pipeline=build_pipeline(cfg.data.transforms, mean, std),
        model=model.to(device),
        device=device,
        transforms=transforms_record(cfg.data.transforms, mean, std),
        lock=lock,
        environment=environment,
        model_info=info,
        dist=dist_info,
    )


def _check_augment(augment: AugmentConfig, shape: tuple[int, int, int]) -> None:
    """Augmentations the input shape cannot take are config errors, found before any work."""
    if augment.rot90 and shape[1] != shape[2]:
        raise ConfigError(
            f"data.transforms.augment.rot90: inputs are {shape[1]}x{shape[2]}; rotation by 90 "
            "degrees needs square inputs (set data.transforms.image_size)"
        )
    if (augment.color_jitter is not None or augment.hed is not None) and shape[0] != 3:
        raise ConfigError(
            "data.transforms.augment.color_jitter / hed: colour augmentation needs RGB inputs "
            "(data.channels: 3)"
        )


def train(
    resolved: ResolvedConfig,
    env_policy: str | None = None,
    force: bool = False,
    resume: str | None = None,
) -> Path:
    """Train the configured model and return the path of the run's ``manifest.json``.

    Args:
        resume: a checkpoint file or run folder to continue, ``auto`` for the newest
            unfinished run of this experiment and config, or None for a fresh run.
    """
    cfg = resolved.config
    info = init_distributed(cfg.run.device)
    prepared = prepare(resolved, env_policy, force, info)
    checkpoint = broadcast(
        (
            find_resume(resume, Path(cfg.run.output_root), cfg.run.name, resolved.hash)
            if info.main
            else None
        ),
        info,
    )
    state = load_checkpoint(checkpoint, resolved.hash, force) if checkpoint else None
    if checkpoint is not None:
        run_dir = checkpoint.parent.parent
        _check_same_splits(run_dir, prepared, force)
        if info.main:
            print(f"run {run_dir.name}: resuming from {checkpoint}", file=sys.stderr)
    elif info.main:
        run_id, run_dir = create_run_dir(Path(cfg.run.output_root), cfg.run.name, resolved.hash)
        where = f" ({info.world_size} processes, {info.backend})" if info.enabled else ""
        print(f"run {run_id}: writing to {run_dir}{where}", file=sys.stderr)
    run_dir = broadcast(run_dir if info.main else None, info)
    if info.main:
        write_run_inputs(run_dir, prepared)
    session = Session(run_dir, prepared, state)
    summary = session.run()
    if not info.main:  # rank 0 writes predictions and the manifest
        barrier(info)
        return run_dir / "manifest.json"
    if checkpoint is not None:
        summary["resumed_from"] = {
            "checkpoint": str(checkpoint),
            "step": int(state["step"]) if state else 0,
        }
    outputs = write_predictions(run_dir, prepared, session)
    metrics = {**summary.pop("final"), **outputs["metrics"]}
    atomic_write_json(run_dir / "metrics.json", {"metrics": metrics, "training": summary})
    from rigor.training.record import build_manifest

    manifest = build_manifest(
        run_dir, prepared, metrics, summary, outputs["predictions"], skipped=outputs["skipped"]
    )
    path = write_manifest(run_dir, manifest)
    barrier(info)
    return path


def find_resume(resume: str | None, output_root: Path, name: str, config_hash: str) -> Path | None:
    """The checkpoint to resume from: an explicit path, or ``auto`` (newest unfinished run)."""
    if resume is None:
        return None
    if resume != "auto":
        path = Path(resume)
        checkpoint = path / "checkpoints" / "last.pt" if path.is_dir() else path
        if not checkpoint.is_file():
            raise UsageError(f"--resume: no checkpoint at {checkpoint}")
        if (checkpoint.parent.parent / "manifest.json").exists():
            raise UsageError(f"--resume: run {checkpoint.parent.parent.name} already completed")
        return checkpoint
    runs = output_root / "runs"
    marker = f"-{name}-{config_hash[:8]}"
    candidates = sorted(
        (p for p in runs.glob(f"*{marker}*") if (p / "checkpoints" / "last.pt").is_file()),
        key=lambda p: p.name,
    )
    unfinished = [p for p in candidates if not (p / "manifest.json").exists()]
    if not unfinished:
        print("--resume auto: no unfinished run of this config; starting fresh", file=sys.stderr)
        return None
    return unfinished[-1] / "checkpoints" / "last.pt"


def _check_same_splits(run_dir: Path, prepared: Prepared, force: bool) -> None:
    import json

    previous = json.loads((run_dir / "splits.json").read_text())["sha256"]
    if previous != _splits_json(prepared)["sha256"] and not force:
        raise UsageError(
            f"--resume: the data splits differ from those of {run_dir.name}; pass --force"
        )


def _splits_json(prepared: Prepared) -> dict[str, Any]:
    cfg = prepared.resolved.config
    return splits_record(
        prepared.splits, prepared.dataset.ids, cfg.data.splits, cfg.run.seed, prepared.dataset.name
    )


def write_run_inputs(run_dir: Path, prepared: Prepared) -> None:
    """The configs as composed and as resolved, and the splits."""
    resolved = prepared.resolved
    atomic_write_json(run_dir / "config_raw.json", resolved.raw)
    atomic_write_json(run_dir / "config_resolved.json", resolved.resolved)
    atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(resolved.resolved, sort_keys=False))
    atomic_write_json(run_dir / "splits.json", _splits_json(prepared))


def make_loader(prepared: Prepared, rows: list[int], train: bool) -> DataLoader[Any]:
    """The loader of a split: the train split in the seeded epoch order, others in order."""
    cfg, info = prepared.resolved.config, prepared.dist
    per_process = cfg.training.batch_size // info.world_size  # batch_size is the global batch
    return make_data_loader(
        prepared.dataset,
        rows,
        batch_size=per_process if train else cfg.training.eval_batch_size,
        sampler=(
            EpochSampler(len(rows), cfg.run.seed, info.rank, info.world_size) if train else None
        ),
        num_workers=cfg.data.num_workers,
        prefetch_factor=cfg.data.prefetch_factor,
        seed=cfg.run.seed,
        pin_memory=prepared.device.type == "cuda",
    )


class Session:
    """One training session: owns the loop state and writes logs and checkpoints."""

    def __init__(self, run_dir: Path, prepared: Prepared, state: dict[str, Any] | None) -> None:
        cfg = prepared.resolved.config
        self.run_dir, self.prepared, self.cfg = run_dir, prepared, cfg
        self.train_loader = make_loader(prepared, prepared.splits["train"], train=True)
        self.select_loader = make_loader(prepared, prepared.splits["val_select"], train=False)
        per_epoch = math.ceil(len(self.train_loader) / cfg.training.accumulate_steps)
        self.steps_per_epoch = min(per_epoch, cfg.training.max_steps_per_epoch or per_epoch)
        model = prepared.model
        self.weighting = (
            UncertaintyWeights(prepared.dataset.tasks).to(prepared.device)
            if cfg.training.task_weighting == "uncertainty"
            else None
        )
        self.optimizer = build_optimizer(model, cfg.training, cfg.optimizer, self.weighting)
        self.scheduler = build_scheduler(
            self.optimizer, cfg.scheduler, cfg.training.epochs, self.steps_per_epoch
        )
        self.precision = Precision(cfg.training.precision, prepared.device)
        self.ema = EMA(model, cfg.training.ema_decay) if cfg.training.ema_decay else None
        self.early = EarlyStopping(
            cfg.training.monitor_mode, cfg.training.patience, cfg.training.min_delta
        )
        self.stepper = Stepper(
            model,
            self.optimizer,
            self.scheduler,
            self.precision,
            prepared.dataset.tasks,
            cfg.training.grad_clip,
            cfg.training.batch_size,
            cfg.training.min_batch_size,
            prepared.device,
            self.ema,
            self.weighting,
            cfg.model.gate if cfg.model.gate.task is not None else None,
            self._ddp(model) if prepared.dist.enabled else None,
            prepared.dist.world_size,
        )
        self.monitor = monitor_to_key(cfg.training.monitor)
        self.epoch = self.position = self.epoch_step = self.step = 0
        self.best_epoch, self.stopped_early, self.samples = -1, False, 0
        self.top_k: list[dict[str, Any]] = []
        self.epoch_sums: dict[str, float] = {}  # sample-weighted train losses of this epoch
        self.skipped: dict[int, str] = {}  # unreadable samples left out (data.on_bad_sample)
        if state is not None:
            self._restore(state)
        self.main = prepared.dist.main
        self.tracker: Tracker | NullTracker = (
            Tracker(run_dir, cfg.logging, start_step=self.step) if self.main else NullTracker()
        )
        self.tracker.truncate_steps(self.step)

    def _ddp(self, model: torch.nn.Module) -> torch.nn.Module:
        from torch.nn.parallel import DistributedDataParallel

        device = self.prepared.device
        ids = [device.index] if device.type == "cuda" else None
        # Some parameters never reach the loss (DINOv3's mask token outside MAE), so DDP
        # must look for unused ones each step.
        return DistributedDataParallel(model, device_ids=ids, find_unused_parameters=True)

    def _save(self, rel: str, state: dict[str, Any]) -> None:
        if self.main:
            save_checkpoint(self.run_dir / rel, state)

    def eval_model(self) -> torch.nn.Module:
        """The weights that are evaluated and saved as predictions: EMA when enabled."""
        return self.ema.model if self.ema is not None else self.prepared.model

    def run(self) -> dict[str, Any]:
        """Train the remaining epochs; returns the training summary."""
        started = time.perf_counter()
        while self.epoch < self.cfg.training.epochs and not self.stopped_early:
            self._train_epoch()
            self._end_epoch()
        self.tracker.close()
        wall = max(time.perf_counter() - started, 1e-9)
        samples = self.samples * self.prepared.dist.world_size  # every rank sees as many
        return {
            "final": {f"best/{self.monitor}": self.early.best_value},
            "epochs": self.cfg.training.epochs,
            "epochs_run": self.epoch,
            "stopped_early": self.stopped_early,
            "steps": self.step,
            "best_epoch": self.best_epoch,
            "wall_time_s": round(wall, 3),
            "samples_per_s": round(samples / wall, 1),
            "distributed": self.prepared.dist.record(),
            "model": self.prepared.model_info,
            "oom_fallback": {
                "events": self.stepper.events,
                "final_micro_batch": self.stepper.micro,
            },
            "task_weighting": {
                "method": self.cfg.training.task_weighting,
                "tasks": self.weighting.record() if self.weighting is not None else None,
            },
        }

    def _train_epoch(self) -> None:
        cfg = self.cfg.training
        sampler = self.train_loader.sampler
        assert isinstance(sampler, EpochSampler)
        sampler.set_epoch(self.epoch, self.position)
        assert self.train_loader.generator is not None
        self.train_loader.generator.manual_seed(self.cfg.run.seed * 1_000_003 + self.epoch)
        self.prepared.model.train()
        batches = iter(self.train_loader)
        total = self.steps_per_epoch - self.epoch_step
        for _ in self.tracker.progress(range(total), total, f"epoch {self.epoch}"):
            loaded = [b for _, b in zip(range(cfg.accumulate_steps), batches, strict=False)]
            if not loaded:
                break
            started = time.perf_counter()
            group = self._inputs(loaded)
            if not group:  # every sample of the step was unreadable and skipped
                self.position += sum(batch.drawn for batch in loaded)
                self.epoch_step += 1
                continue
            result = self.stepper.step(group, self.step)
            self.step, self.epoch_step = self.step + 1, self.epoch_step + 1
            self.position += sum(batch.drawn for batch in loaded)
            self.samples += result.samples
            self.epoch_sums["samples"] = self.epoch_sums.get("samples", 0.0) + result.samples
            for key, value in result.losses.items():
                self.epoch_sums[key] = self.epoch_sums.get(key, 0.0) + value * result.samples
            if self.tracker.should_log_step(self.step):
                speed = result.samples / max(time.perf_counter() - started, 1e-9)
                extra = {"lr": result.lr, "grad_norm": result.grad_norm, "samples_per_s": speed}
                self.tracker.log_step(self.step, {**result.losses, **extra})
            every = cfg.checkpoint_every_n_steps
            if every and self.step % every == 0 and self.epoch_step < self.steps_per_epoch:
                self._save("checkpoints/last.pt", self._state())

    def _inputs(self, loaded: list[Batch]) -> list[Batch]:
        """Model inputs of one step's batches, augmented with the step's own generator."""
        prepared = self.prepared
        generator = None
        if prepared.pipeline.augment is not None:
            generator = augment_generator(self.cfg.run.seed, self.step, prepared.dist.rank)
        for batch in loaded:
            self.skipped |= dict(batch.skipped)
        group = [prepared.pipeline.batch(b, prepared.device, generator) for b in loaded]
        return [batch for batch in group if len(batch)]

    def _end_epoch(self) -> None:
        preds = predict(
            self.eval_model(),
            self.select_loader,
            self.prepared.device,
            self.prepared.eval_pipeline,
            self.precision.autocast,
        )
        self.skipped |= preds["skipped"]
        sums = sum_over_ranks(self.epoch_sums, self.prepared.dist)
        seen = sums.pop("samples", 0.0) or 1.0
        values = {key: total / seen for key, total in sums.items()}
        values |= split_metrics(preds, self.prepared.dataset.tasks, "val_select")
        values["lr"] = float(self.scheduler.get_last_lr()[-1])
        self.epoch_sums = {}
        improved = self.early.update(values[self.monitor])
        self.tracker.log_epoch(self.epoch, self.step, values)
        if self.main:
            print(f"epoch {self.epoch}: {self.monitor}={values[self.monitor]:.4f}", file=sys.stderr)
        finished = self.epoch
        if improved:
            self.best_epoch = finished
        self.epoch, self.position, self.epoch_step = self.epoch + 1, 0, 0
        self.stopped_early = self.early.should_stop
        state = self._state()
        self._keep_top_k(finished, values[self.monitor], state)
        if improved:
            self._save("checkpoints/best.pt", state)
        self._save("checkpoints/last.pt", state)

    def _keep_top_k(self, epoch: int, value: float, state: dict[str, Any]) -> None:
        k = self.cfg.training.keep_top_k
        if k < 2:
            return
        sign = self.early.sign
        entry: dict[str, Any] = {
            "epoch": epoch,
            "value": value,
            "path": f"checkpoints/top/epoch={epoch:04d}.pt",
        }
        ranked = sorted([*self.top_k, entry], key=lambda e: (-sign * e["value"], e["epoch"]))
        keep, drop = ranked[:k], ranked[k:]
        if entry in keep:
            self._save(entry["path"], state)
        for old in drop:
            if self.main:
                (self.run_dir / old["path"]).unlink(missing_ok=True)
        self.top_k = keep

    def _state(self) -> dict[str, Any]:
        return {
            "model": self.prepared.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.precision.scaler.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "epoch": self.epoch,
            "position": self.position,
            "epoch_step": self.epoch_step,
            "step": self.step,
            "best_epoch": self.best_epoch,
            "stopped_early": self.stopped_early,
            "best_metric": self.early.best_value,
            "early_stopping": self.early.state_dict(),
            "rng": rng_state(),
            "micro_batch": self.stepper.micro,
            "oom_events": self.stepper.events,
            "top_k": self.top_k,
            "epoch_sums": dict(self.epoch_sums),
            "config_hash": self.prepared.resolved.hash,
            "loss_weights": self.weighting.state_dict() if self.weighting is not None else None,
            "world_size": self.prepared.dist.world_size,
            "skipped": {str(row): error for row, error in sorted(self.skipped.items())},
        }

    def _restore(self, state: dict[str, Any]) -> None:
        world, now = int(state.get("world_size", 1)), self.prepared.dist.world_size
        if world != now and int(state["position"]) > 0:
            raise UsageError(
                f"--resume: the checkpoint was written mid-epoch by {world} process(es); resume "
                f"it with the same number of processes (this run has {now})"
            )
        self.prepared.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.precision.scaler.load_state_dict(state["scaler"])
        if self.ema is not None and state["ema"] is not None:
            self.ema.load_state_dict(state["ema"])
        if self.weighting is not None and state.get("loss_weights") is not None:
            self.weighting.load_state_dict(state["loss_weights"])
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self.epoch_step, self.step = int(state["epoch_step"]), int(state["step"])
        self.best_epoch, self.stopped_early = int(state["best_epoch"]), bool(state["stopped_early"])
        self.early.load_state_dict(state["early_stopping"])
        self.stepper.micro, self.stepper.events = int(state["micro_batch"]), list(
            state["oom_events"]
        )
        self.top_k = list(state["top_k"])
        self.epoch_sums = {key: float(value) for key, value in state["epoch_sums"].items()}
        self.skipped = {int(row): str(error) for row, error in state.get("skipped", {}).items()}
        set_rng_state(state["rng"])


def write_predictions(run_dir: Path, prepared: Prepared, session: Session) -> dict[str, Any]:
    """Predictions of the best checkpoint on val_select, val_calib and val_test."""
    best = load_checkpoint(run_dir / "checkpoints" / "best.pt", prepared.resolved.hash, force=True)
    model = session.eval_model()
    model.load_state_dict(best["ema"] if session.ema is not None else best["model"])
    metrics: dict[str, float] = {}
    paths = []
    skipped = dict(session.skipped)
    for split in EVAL_SPLITS:
        loader = make_loader(prepared, prepared.splits[split], train=False)
        preds = predict(
            model, loader, prepared.device, prepared.eval_pipeline, session.precision.autocast
        )
        skipped |= preds["skipped"]
        metrics.update(split_metrics(preds, prepared.dataset.tasks, split))
        arrays = {
            "ids": preds["ids"],
            "groups": preds["groups"],
            "tasks": np.asarray(sorted(preds["targets"])),
        }
        arrays |= prediction_arrays(preds)
        rel = f"predictions/{split}.npz"
        save_npz(run_dir / rel, arrays)
        paths.append(rel)
    skipped |= getattr(prepared.dataset.reader, "bad", {})
    return {
        "metrics": metrics,
        "predictions": paths,
        "skipped": skipped_record(prepared.dataset, skipped),
    }


def prediction_arrays(preds: dict[str, Any]) -> dict[str, np.ndarray]:
    """``logits_<task>`` and ``targets_<task>`` per task, and ``gate_<task>`` (selection
    logits) for a gated task; auxiliary-head logits are not kept."""
    arrays = {}
    for task, targets in preds["targets"].items():
        arrays[f"logits_{task}"] = preds["outputs"][task]
        arrays[f"targets_{task}"] = targets
        if GATE + task in preds["outputs"]:
            arrays[f"gate_{task}"] = preds["outputs"][GATE + task]
    return arrays


def save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write arrays to an ``.npz`` atomically (no pickled objects: plain dtypes only)."""

    def write(handle: IO[bytes]) -> None:
        np.savez(handle, **arrays)  # type: ignore[arg-type]

    atomic_write_with(path, write)
