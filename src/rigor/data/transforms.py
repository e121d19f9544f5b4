"""The input pipeline a run records: normalisation statistics and augmentation.

Samples are decoded and resized once by their reader; conversion to float,
augmentation and normalisation happen on the batch (:class:`rigor.data.loader.InputPipeline`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from rigor.config.models import TransformConfig
from rigor.data.augment import BatchAugment, augment_record
from rigor.data.loader import InputPipeline


def build_pipeline(
    cfg: TransformConfig, mean: list[float] | None, std: list[float] | None, train: bool = False
) -> InputPipeline:
    """The batch pipeline: normalisation with the given statistics (when ``normalize``) and,
    for training only, the configured augmentation."""
    augment = BatchAugment(cfg.augment) if train and cfg.augment.active() else None
    if not cfg.normalize:
        return InputPipeline(None, None, augment)
    return InputPipeline(mean, std, augment)


def preset_stats(
    preset: tuple[tuple[float, ...], tuple[float, ...]], channels: int
) -> tuple[list[float], list[float]]:
    """A backbone's preset statistics; a grey image (repeated to RGB later) gets their mean."""
    mean, std = list(preset[0]), list(preset[1])
    if channels == 1:
        return [float(np.mean(mean))], [float(np.mean(std))]
    return mean, std


def transforms_record(cfg: TransformConfig, mean: list[float], std: list[float]) -> dict[str, Any]:
    """The manifest's ``transforms`` block."""
    return {
        "version": cfg.version,
        "normalize": cfg.normalize,
        "mean": mean if cfg.normalize else None,
        "std": std if cfg.normalize else None,
        "augment": augment_record(cfg.augment),
    }


def pipeline_from_record(cfg: TransformConfig, record: dict[str, Any]) -> InputPipeline:
    """The evaluation pipeline of a finished run (its recorded statistics, no augmentation)."""
    return build_pipeline(cfg, record.get("mean"), record.get("std"), train=False)
