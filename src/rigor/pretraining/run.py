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

from rigor.config import ResolvedConfig
from rigor.data.loader import augment_generator
from rigor.errors import ConfigError, UsageError
from rigor.io import atomic_write_json
from rigor.manifest import write_manifest
from rigor.manifest.rundir import RunLock, create_run_dir
from rigor.pretraining.mae import MAE
from rigor.runs.checkpoint import rng_state, save_checkpoint
from rigor.tracking import Tracker
from rigor.training.epochs import EpochPlan, plan_epochs, start_epoch
from rigor.training.policy import Precision
from rigor.training.prepare import Prepared, make_loader, prepare, write_run_inputs

TRAIN_KEY, VAL_KEY = "loss/mae/train", "loss/mae/val_select"
HF_DIR = "pretrain/hf"
FIGURE = "pretrain/reconstructions.png"


def check_pretrain_config(resolved: ResolvedConfig) -> None:
    """MAE needs a ViT backbone trained in full (no adapters, not frozen)."""
    model = resolved.config.model
    if model.backbone != "dinov3_vit":
        raise ConfigError(
            f"model.backbone: pretrain.py pretrains dinov3_vit encoders, not {model.backbone!r}"
        )
    if model.peft.method != "none" or model.freeze_backbone:
        raise ConfigError(
            "model.peft.method / model.freeze_backbone: MAE pretraining trains the whole "
            "encoder; set peft.method: none and freeze_backbone: false"
        )


def pretrain(resolved: ResolvedConfig, env_policy: str | None = None, force: bool = False) -> Path:
    """Pretrain the configured encoder with MAE and return the run's ``manifest.json`` path."""
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
    run_id, run_dir = create_run_dir(Path(cfg.run.output_root), cfg.run.name, resolved.hash)
    print(f"run {run_id}: MAE pretraining, writing to {run_dir}", file=sys.stderr)
    lock = RunLock(run_dir)  # one writer per run folder, until the manifest is written
    lock.acquire()
    try:
        manifest = _pretrain_into(run_dir, prepared, mae, encoder)
    except BaseException:
        lock.release()  # the lock file stays for whoever takes the folder over
        raise
    lock.release(completed=True)
    return manifest


def _pretrain_into(run_dir: Path, prepared: Prepared, mae: MAE, encoder: Any) -> Path:
    """The epochs, the saved encoder, the figure, metrics and the manifest, in ``run_dir``."""
    write_run_inputs(run_dir, prepared)
    summary, best_value = _fit(run_dir, prepared, mae)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    encoder.save_pretrained(str(run_dir / HF_DIR), safe_serialization=True)
    _figure(run_dir, prepared, mae)
    metrics = {f"best/{VAL_KEY}": best_value}
    atomic_write_json(run_dir / "metrics.json", {"metrics": metrics, "training": summary})
    from rigor.training.record import RunOutputs, build_manifest

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


def _fit(run_dir: Path, prepared: Prepared, mae: MAE) -> tuple[dict[str, Any], float]:
    """The epochs; keeps the best weights (lowest val_select loss) in ``mae`` at the end."""
    cfg = prepared.resolved.config
    train_loader = make_loader(prepared, prepared.splits["train"], train=True)
    val_loader = make_loader(prepared, prepared.splits["val_select"], train=False)
    plan = plan_epochs(
        cfg, model=mae, train_loader=train_loader, device=prepared.device, monitor_mode="min"
    )
    loop = _Loop(
        mae=mae,
        plan=plan,
        prepared=prepared,
        tracker=Tracker(run_dir, cfg.logging),
        masks=torch.Generator().manual_seed(cfg.run.seed),
    )
    best_state: dict[str, torch.Tensor] | None = None
    best_epoch = epoch = 0
    started = time.perf_counter()
    for epoch in range(cfg.training.epochs):
        start_epoch(train_loader, cfg.run.seed, epoch)
        train_loss = _train_epoch(loop, train_loader, epoch)
        value = _validate(mae, val_loader, plan.precision, prepared, cfg.run.seed)
        lr = float(plan.scheduler.get_last_lr()[-1])
        loop.tracker.log_epoch(epoch, loop.step, {TRAIN_KEY: train_loss, VAL_KEY: value, "lr": lr})
        print(f"epoch {epoch}: {VAL_KEY}={value:.4f}", file=sys.stderr)
        state = {
            "model": mae.state_dict(),
            "optimizer": plan.optimizer.state_dict(),
            "scheduler": plan.scheduler.state_dict(),
            "epoch": epoch + 1,
            "step": loop.step,
            "rng": rng_state(),
            "config_hash": prepared.resolved.hash,
        }
        if plan.early.update(value):
            best_epoch, best_state = epoch, copy.deepcopy(mae.state_dict())
            save_checkpoint(run_dir / "checkpoints" / "best.pt", state)
        save_checkpoint(run_dir / "checkpoints" / "last.pt", state)
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
        "model": prepared.model_info,
        "mask_ratio": cfg.pretrain.mask_ratio,
    }
    return summary, float(plan.early.best_value)


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


@torch.no_grad()
def _figure(run_dir: Path, prepared: Prepared, mae: MAE, n: int = 8) -> None:
    """Originals, masked inputs and reconstructions of the first val_select images."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from rigor.io import atomic_write_with
    from rigor.pretraining.mae import patchify, unpatchify

    mae.eval()
    rows = prepared.splits["val_select"][:n]
    images = prepared.eval_pipeline(prepared.dataset.stack(rows), prepared.device)
    out = mae(images, torch.Generator().manual_seed(prepared.resolved.config.run.seed + 1))
    recon = mae.reconstruct(images, out).cpu()
    patches = patchify(images.float().cpu(), mae.patch)
    masked = unpatchify(
        patches * (1 - out.mask.cpu())[..., None], mae.patch, mae.channels, images.shape[2]
    )
    fig, axes = plt.subplots(3, len(rows), figsize=(1.4 * len(rows), 4.4), squeeze=False)
    for col in range(len(rows)):
        for row, (title, batch) in enumerate(
            (("input", images.cpu()), ("visible", masked), ("reconstruction", recon))
        ):
            picture = batch[col].float().permute(1, 2, 0).numpy()
            low, high = float(images[col].min()), float(images[col].max())
            picture = ((picture - low) / max(high - low, 1e-6)).clip(0, 1)  # the input's range
            ax = axes[row][col]
            ax.imshow(picture[..., 0] if picture.shape[-1] == 1 else picture, cmap="gray")
            ax.set_xticks([])
            ax.set_yticks([])
            if col == 0:
                ax.set_ylabel(title, fontsize=8)
    fig.tight_layout()
    atomic_write_with(run_dir / FIGURE, lambda handle: fig.savefig(handle, format="png", dpi=100))
    plt.close(fig)
