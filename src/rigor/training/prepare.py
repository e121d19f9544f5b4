"""Everything a training or pretraining run builds from its config before any file is
written: environment check, data, splits, statistics, batch pipelines, model, device."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
import yaml
from torch.utils.data import DataLoader

from rigor.config import ResolvedConfig
from rigor.config.models import AugmentConfig, Config
from rigor.data.build import build_dataset
from rigor.data.dataset import ImageDataset
from rigor.data.hest.panels import resolve_panel
from rigor.data.loader import InputPipeline, channel_stats
from rigor.data.loader import make_loader as make_data_loader
from rigor.data.splits import fraction_warning, make_splits, splits_record
from rigor.data.transforms import build_pipeline, preset_stats, transforms_record
from rigor.errors import ConfigError
from rigor.io import atomic_write_json, atomic_write_text
from rigor.manifest.env import Lock, check_lock
from rigor.manifest.rundir import utc_now
from rigor.models.build import backbone_spec, build_model
from rigor.models.lineage import resolve_init_from
from rigor.models.registry import BackboneSpec, RigorModel, model_size
from rigor.runs.device import pick_device
from rigor.training.distributed import DistInfo
from rigor.training.loop import available_monitors
from rigor.training.seeding import EpochSampler, seed_everything

PANEL = "genes.json"


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
    panel: dict[str, Any] | None = None  # how a data-picked gene panel was chosen (genes.json)
    lineage: dict[str, Any] | None = None  # the pretrain run model.init_from named


def prepare(
    resolved: ResolvedConfig,
    env_policy: str | None,
    force: bool,
    dist_info: DistInfo | None = None,
    probe: bool = False,
) -> Prepared:
    """Check the environment, build data, splits and model; raise before writing anything.
    ``probe``: for scripts/probe.py, the only reader of HEST-Benchmark task folders."""
    dist_info = dist_info or DistInfo()
    cfg = resolved.config
    lock, environment = check_lock(cfg.env.lockfile, env_policy or cfg.env.policy, force)
    seed_everything(cfg.run.seed, cfg.run.determinism)
    spec = backbone_spec(cfg.model.backbone)
    _check_stats(cfg, spec)
    data_cfg, panel = resolve_panel(cfg.data, cfg.split_seed)  # {top_variable: K} on train
    dataset = build_dataset(data_cfg, Path(cfg.run.output_root) / "cache")
    dataset.raw.content_hash()  # fingerprinted before anything reads it, cache or not
    _check_monitor(cfg, dataset)
    if dataset.name == "hest_bench":
        from rigor.data.hest.bench import first_split_rows

        if not probe:
            raise ConfigError(
                "data.name hest_bench: a HEST-Benchmark task folder is scored by the probe "
                "(scripts/probe.py); to train on its samples, read them with data.name: hest"
            )
        splits = first_split_rows(dataset.raw)
    else:
        splits = make_splits(dataset.groups, cfg.data.splits, cfg.split_seed)
    warning = None if dataset.name == "hest_bench" else fraction_warning(splits, cfg.data.splits)
    if warning and dist_info.main:
        print(warning, file=sys.stderr)
    _check_augment(cfg.data.transforms.augment, dataset.input_shape)
    mean, std = _statistics(cfg, spec, dataset, splits["train"])
    model_cfg, lineage = resolve_init_from(cfg.model)  # hash-checked before it loads
    model = build_model(model_cfg, dataset.tasks, dataset.input_shape)
    info = {**model_size(model), **model.peft_info}
    if dist_info.main:
        _describe(cfg, model, info)
    device = _device(cfg, dist_info)
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
        panel=panel,
        lineage=lineage,
    )


def _check_stats(cfg: Config, spec: BackboneSpec) -> None:
    transforms, given = cfg.data.transforms, cfg.model.inference.mean is not None
    if transforms.normalize and transforms.stats == "preset" and not (spec.preset or given):
        raise ConfigError(
            f"data.transforms.stats: backbone {cfg.model.backbone!r} has no preset statistics; "
            "use stats: train"
        )


def _check_monitor(cfg: Config, dataset: ImageDataset) -> None:
    offered = available_monitors(dataset.tasks)
    if cfg.training.monitor.split("/", 1)[1] not in offered:
        raise ConfigError(
            f"training.monitor: {cfg.training.monitor!r} is not produced for tasks "
            f"{sorted(dataset.tasks)} (choose among {sorted(offered)})"
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


def _statistics(
    cfg: Config, spec: BackboneSpec, dataset: ImageDataset, train_rows: list[int]
) -> tuple[list[float], list[float]]:
    """Normalisation statistics: the encoder's own (``model.inference``), the backbone's
    preset, or one streamed pass over train (stored in the preprocessing cache, when the data
    come through it, so that a cache hit does not pass over train again)."""
    if cfg.data.transforms.stats == "preset":
        inference = cfg.model.inference
        if inference.mean is not None and inference.std is not None:
            return preset_stats(
                (tuple(inference.mean), tuple(inference.std)), dataset.input_shape[0]
            )
        if spec.preset is not None:
            return preset_stats(spec.preset, dataset.input_shape[0])
    from rigor.data.cache import CachedReader

    def compute() -> tuple[list[float], list[float]]:
        return channel_stats(dataset, train_rows, cfg.data.num_workers)

    if isinstance(dataset.reader, CachedReader):  # stored beside the shards, per train split
        return dataset.reader.train_stats([dataset.ids[row] for row in train_rows], compute)
    return compute()


def _describe(cfg: Config, model: RigorModel, info: dict[str, Any]) -> None:
    adapters = ""
    if model.peft_info:
        adapters = f", {cfg.model.peft.method} on {info['adapted_layers']} layers"
        if info.get("unfrozen_params"):
            adapters += f", {info['unfrozen_params']:,} in unfrozen blocks/norms"
    share = info["params_trainable"] / max(info["params_total"], 1)
    print(
        f"model: {cfg.model.backbone}, {info['params_total']:,} parameters "
        f"({info['params_trainable']:,} trainable = {share:.2%}{adapters}), {info['size_mb']} MB",
        file=sys.stderr,
    )


def _device(cfg: Config, dist_info: DistInfo) -> torch.device:
    device = pick_device(cfg.run.device, cfg.training.tf32)
    if not dist_info.enabled:
        return device
    if cfg.training.batch_size % dist_info.world_size:
        raise ConfigError(
            f"training.batch_size ({cfg.training.batch_size}) must be a multiple of the "
            f"number of processes ({dist_info.world_size}): it is the global batch"
        )
    return torch.device("cuda", dist_info.local_rank) if device.type == "cuda" else device


def splits_json(prepared: Prepared) -> dict[str, Any]:
    """The content of the run's ``splits.json``."""
    cfg = prepared.resolved.config
    return splits_record(
        prepared.splits,
        prepared.dataset.ids,
        cfg.data.splits,
        cfg.split_seed,
        prepared.dataset.name,
    )


def write_run_inputs(run_dir: Path, prepared: Prepared) -> None:
    """The configs as composed and as resolved, and the splits."""
    resolved = prepared.resolved
    atomic_write_json(run_dir / "config_raw.json", resolved.raw)
    atomic_write_json(run_dir / "config_resolved.json", resolved.resolved)
    atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(resolved.resolved, sort_keys=False))
    atomic_write_json(run_dir / "splits.json", splits_json(prepared))
    if prepared.panel is not None:
        atomic_write_json(run_dir / PANEL, prepared.panel)


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
        timeout_s=cfg.data.worker_timeout_s,
    )
