"""The pretrain task function: MAE on the train split's images, a run folder with a manifest.

Labels are never read. The train split fits the weights and val_select's reconstruction loss
(with masks fixed by the seed) picks the best epoch, so a later fine-tune on the same data and
seed has seen none of val_calib or val_test. The best encoder is saved with
``save_pretrained`` under ``pretrain/hf/``: a fine-tune loads it through ``model.hf.path``.
"""

from __future__ import annotations

import copy
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from rigor.cli import settle
from rigor.config import ResolvedConfig
from rigor.data.loader import augment_generator
from rigor.errors import ConfigError, UsageError
from rigor.io import atomic_write_json
from rigor.manifest import write_manifest
from rigor.manifest.rundir import RunLock, create_run_dir
from rigor.models.registry import model_size
from rigor.pretraining.figure import save_figure
from rigor.pretraining.mae import MAE
from rigor.runs.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from rigor.runs.device import peak_memory
from rigor.tracking import Tracker, epoch_line
from rigor.tracking.mirror import Mirror, ending, run_mirror
from rigor.training.optim import Precision
from rigor.training.prepare import Prepared, make_loader, prepare, write_run_inputs
from rigor.training.resume import check_same_splits, find_resume, remove_temporaries
from rigor.training.seeding import EpochPlan, plan_epochs, start_epoch

TRAIN_KEY, VAL_KEY = "loss/mae/train", "loss/mae/val_select"
HF_DIR = "pretrain/hf"
FIGURE = "pretrain/reconstructions.png"
MAE_KEYS: tuple[str, ...] = ("model", "optimizer", "scheduler", "epoch", "step", "samples")
MAE_KEYS += ("best_epoch", "early_stopping", "masks", "rng", "config_hash")


def check_pretrain_config(resolved: ResolvedConfig) -> None:
    """MAE needs a ViT backbone, trained in full or with adapters (ExPLoRA), not frozen."""
    model = resolved.config.model
    if model.backbone != "dinov3_vit":
        raise ConfigError(
            f"model.backbone: pretrain.py pretrains dinov3_vit encoders, not {model.backbone!r}"
        )
    if model.freeze_backbone:
        raise ConfigError(
            "model.freeze_backbone: MAE pretraining trains the encoder (in full, or through "
            "model.peft adapters and unfrozen blocks); set freeze_backbone: false"
        )


def pretrain(
    resolved: ResolvedConfig,
    env_policy: str | None = None,
    force: bool = False,
    resume: str | None = None,
) -> Path:
    """Pretrain the configured encoder with MAE and return the run's ``manifest.json`` path.

    ``resume``: a checkpoint or run folder, ``auto`` (the newest unfinished run of this
    experiment and config), or None for a fresh run; like training, a resumed run continues
    bitwise where its last.pt left it.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise UsageError("pretrain.py runs in one process; torchrun is supported by train.py only")
    check_pretrain_config(resolved)
    prepared = prepare(resolved, env_policy, force)
    cfg = resolved.config
    channels, height, width = prepared.dataset.input_shape
    encoder: Any = prepared.model.backbone.net
    patch = int(encoder.config.patch_size)
    mae = MAE(encoder, channels, (height // patch) * (width // patch), cfg.pretrain)
    mae.to(prepared.device)
    checkpoint = find_resume(resume, Path(cfg.run.output_root), cfg.run.name, resolved.hash)
    state = load_checkpoint(checkpoint, resolved.hash, force, MAE_KEYS) if checkpoint else None
    if checkpoint is not None:
        run_dir = checkpoint.parent.parent
        check_same_splits(run_dir, prepared, force)
        print(f"run {run_dir.name}: resuming MAE pretraining from {checkpoint}", file=sys.stderr)
    else:
        run_id, run_dir = create_run_dir(Path(cfg.run.output_root), cfg.run.name, resolved.hash)
        print(f"run {run_id}: MAE pretraining, writing to {run_dir}", file=sys.stderr)
    lock = RunLock(run_dir)  # one writer per run folder, until the manifest is written
    lock.acquire()
    try:
        if checkpoint is not None:
            remove_temporaries(run_dir)
        manifest = _pretrain_into(run_dir, prepared, mae, encoder, state)
    except BaseException:
        lock.release()  # the lock file stays for whoever takes the folder over
        raise
    lock.release(completed=True)
    return manifest


def _pretrain_into(
    run_dir: Path, prepared: Prepared, mae: MAE, encoder: Any, state: dict[str, Any] | None
) -> Path:
    """The epochs, the saved encoder, the figure, metrics and the manifest, in ``run_dir``.

    With adapters (ExPLoRA), they are merged into the encoder with peft before it is saved,
    so the saved encoder is a plain DINOv3 model that any fine-tune loads."""
    write_run_inputs(run_dir, prepared)
    with ending(run_mirror(run_dir, prepared.resolved)) as mirror:
        summary, best_value = _fit(run_dir, prepared, mae, state, mirror)
        from transformers.utils import logging as hf_logging

        if prepared.resolved.config.model.peft.method != "none":
            from rigor.models.adapters import merge_adapters

            summary["merged_layers"] = merge_adapters(encoder)
        hf_logging.disable_progress_bar()
        encoder.save_pretrained(str(run_dir / HF_DIR), safe_serialization=True)
        save_figure(run_dir / FIGURE, prepared, mae)
        metrics = {f"best/{VAL_KEY}": best_value}
        mirror.metrics(summary["steps"], metrics)
        mirror.note_in(summary)
        path = _write_record(run_dir, prepared, metrics, summary)
        mirror.artifacts(run_dir, ["manifest.json", "metrics.json", "config.yaml", FIGURE])
    return path


def _write_record(
    run_dir: Path, prepared: Prepared, metrics: dict[str, Any], summary: dict[str, Any]
) -> Path:
    """metrics.json, then the manifest, written last."""
    from rigor.training.run_record import RunOutputs, build_manifest

    atomic_write_json(run_dir / "metrics.json", {"metrics": metrics, "training": summary})
    weights = sorted(
        str(p.relative_to(run_dir)) for p in (run_dir / HF_DIR).rglob("*") if p.is_file()
    )
    outputs = RunOutputs(
        metrics=metrics,
        summary=summary,
        predictions=[],
        stage="pretrain",
        extra_artifacts={"weights": weights, "figures": [FIGURE]},
    )
    manifest = build_manifest(run_dir, prepared, outputs)
    return write_manifest(run_dir, manifest)


@dataclass(kw_only=True)
class _Loop:
    """The MAE loop's objects and its running counters."""

    mae: MAE
    plan: EpochPlan
    prepared: Prepared
    tracker: Tracker
    masks: torch.Generator
    step: int = 0
    samples: int = 0


def _fit(
    run_dir: Path, prepared: Prepared, mae: MAE, state: dict[str, Any] | None, mirror: Mirror
) -> tuple[dict[str, Any], float]:
    """The epochs (from ``state`` when resuming); keeps the best weights (lowest val_select
    loss) in ``mae`` at the end."""
    cfg = prepared.resolved.config
    train_loader = make_loader(prepared, prepared.splits["train"], train=True)
    val_loader = make_loader(prepared, prepared.splits["val_select"], train=False)
    plan = plan_epochs(
        cfg, model=mae, train_loader=train_loader, device=prepared.device, monitor_mode="min"
    )
    masks = torch.Generator().manual_seed(cfg.run.seed)
    first, step, samples, best_epoch, best_state = 0, 0, 0, 0, None
    if state is not None:
        first, step, samples, best_epoch = _restore(mae, plan, masks, state)
        best = load_checkpoint(run_dir / "checkpoints" / "best.pt", force=True, required=MAE_KEYS)
        best_state = best["model"]
    tracker = Tracker(run_dir, cfg.logging, start_step=step, mirror=mirror)
    tracker.truncate_steps(step)
    loop = _Loop(mae=mae, plan=plan, prepared=prepared, tracker=tracker, masks=masks, step=step)
    loop.samples = samples
    settle()  # set up: collection back on for the epochs
    epoch, last = first - 1, first if plan.early.should_stop else cfg.training.epochs
    started = time.perf_counter()
    for epoch in range(first, last):
        epoch_started = time.perf_counter()
        start_epoch(train_loader, cfg.run.seed, epoch)
        train_loss = _train_epoch(loop, train_loader, epoch)
        value = _validate(mae, val_loader, plan.precision, prepared, cfg.run.seed)
        lr = float(plan.scheduler.get_last_lr()[-1])
        loop.tracker.log_epoch(epoch, loop.step, {TRAIN_KEY: train_loss, VAL_KEY: value, "lr": lr})
        took = time.perf_counter() - epoch_started
        values = {"loss/train": train_loss, VAL_KEY: value}
        print(epoch_line(epoch, cfg.training.epochs, values, VAL_KEY, took), file=sys.stderr)
        if plan.early.update(value):
            best_epoch, best_state = epoch, copy.deepcopy(mae.state_dict())
        saved = _state(loop, epoch, best_epoch)
        if best_epoch == epoch:
            save_checkpoint(run_dir / "checkpoints" / "best.pt", saved)
        save_checkpoint(run_dir / "checkpoints" / "last.pt", saved)
        if plan.early.should_stop:
            break
    loop.tracker.close()
    assert best_state is not None
    mae.load_state_dict(best_state)
    wall = max(time.perf_counter() - started, 1e-9)
    summary = {
        "objective": "mae",
        "epochs": cfg.training.epochs,
        "epochs_run": epoch + 1,
        "stopped_early": plan.early.should_stop,
        "steps": loop.step,
        "best_epoch": best_epoch,
        "wall_time_s": round(wall, 3),
        "samples_per_s": round(loop.samples / wall, 1),
        "epoch_time_s": round(wall / max(epoch + 1 - first, 1), 3),
        "peak_memory": peak_memory(prepared.device),
        "model": prepared.model_info,
        "mae_params": model_size(mae),
        "mask_ratio": cfg.pretrain.mask_ratio,
    }
    return summary, float(plan.early.best_value)


def _state(loop: _Loop, epoch: int, best_epoch: int) -> dict[str, Any]:
    """What last.pt (and best.pt) hold after ``epoch``: enough to continue bitwise."""
    return {
        "model": loop.mae.state_dict(),
        "optimizer": loop.plan.optimizer.state_dict(),
        "scheduler": loop.plan.scheduler.state_dict(),
        "epoch": epoch + 1,
        "step": loop.step,
        "samples": loop.samples,
        "best_epoch": best_epoch,
        "early_stopping": loop.plan.early.state_dict(),
        "masks": loop.masks.get_state(),
        "rng": rng_state(),
        "config_hash": loop.prepared.resolved.hash,
    }


def _restore(
    mae: MAE, plan: EpochPlan, masks: torch.Generator, state: dict[str, Any]
) -> tuple[int, int, int, int]:
    """Put a last.pt back: weights, optimizer, schedule, mask and global generators; returns
    the next epoch, the step, the samples seen and the best epoch."""
    mae.load_state_dict(state["model"])
    plan.optimizer.load_state_dict(state["optimizer"])
    plan.scheduler.load_state_dict(state["scheduler"])
    plan.early.load_state_dict(state["early_stopping"])
    masks.set_state(state["masks"])
    set_rng_state(state["rng"])
    return int(state["epoch"]), int(state["step"]), int(state["samples"]), int(state["best_epoch"])


def _train_epoch(loop: _Loop, loader: DataLoader[Any], epoch: int) -> float:
    """One epoch of MAE steps (augmented when configured); the epoch's mean train loss."""
    cfg, pipeline = loop.prepared.resolved.config, loop.prepared.pipeline
    loop.mae.train()
    batches = iter(loader)
    seen, total_loss = 0, 0.0
    steps = loop.plan.steps_per_epoch
    for _ in loop.tracker.progress(range(steps), steps, f"epoch {epoch}"):
        loaded = [b for _, b in zip(range(cfg.training.accumulate_steps), batches, strict=False)]
        if not loaded:
            break
        generator = None
        if pipeline.augment is not None:
            generator = augment_generator(cfg.run.seed, loop.step)
        group = [pipeline(b.input, loop.prepared.device, generator) for b in loaded if len(b)]
        if not group:
            continue
        loss, norm, count = _step(
            loop.mae,
            group,
            loop.plan.optimizer,
            loop.plan.precision,
            loop.masks,
            cfg.training.grad_clip,
        )
        lr = float(loop.plan.optimizer.param_groups[-1]["lr"])
        loop.plan.scheduler.step()
        loop.step, seen, loop.samples = loop.step + 1, seen + count, loop.samples + count
        total_loss += loss * count
        if loop.tracker.should_log_step(loop.step):
            loop.tracker.log_step(loop.step, {TRAIN_KEY: loss, "lr": lr, "grad_norm": norm})
    return total_loss / max(seen, 1)


def _step(
    mae: MAE,
    group: list[torch.Tensor],
    optimizer: torch.optim.Optimizer,
    precision: Precision,
    masks: torch.Generator,
    clip: float | None,
) -> tuple[float, float, int]:
    """One optimizer step over the accumulation group; the loss is the group's sample mean."""
    optimizer.zero_grad(set_to_none=True)
    total = sum(len(images) for images in group)
    loss_sum = 0.0
    for images in group:
        with precision.autocast():
            out = mae(images, masks)
        weight = len(images) / total
        precision.scaler.scale(out.loss * weight).backward()
        loss_sum += out.loss.item() * weight
    precision.scaler.unscale_(optimizer)
    norm = torch.nn.utils.clip_grad_norm_(mae.parameters(), clip or float("inf"))
    precision.scaler.step(optimizer)
    precision.scaler.update()
    return loss_sum, float(norm), total


@torch.no_grad()
def _validate(
    mae: MAE,
    loader: DataLoader[Any],
    precision: Precision,
    prepared: Prepared,
    seed: int,
) -> float:
    """Mean reconstruction loss on val_select with the same masks every epoch."""
    mae.eval()
    masks = torch.Generator().manual_seed(seed + 1)
    total, count = 0.0, 0
    for batch in loader:
        if not len(batch):
            continue
        images = prepared.eval_pipeline(batch.input, prepared.device)
        with precision.autocast():
            out = mae(images, masks)
        total += out.loss.item() * len(images)
        count += len(images)
    return total / max(count, 1)
