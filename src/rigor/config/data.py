"""Config models of the data section: splits, transforms and augmentation, CSV columns."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from rigor.config.base import Section


class SplitFractions(Section):
    """Fractions of the four splits; they must sum to 1."""

    train: float = Field(gt=0, lt=1, description="Share of groups that fit weights.")
    val_select: float = Field(
        gt=0, lt=1, description="Share that picks checkpoints and early-stops."
    )
    val_calib: float = Field(
        gt=0, lt=1, description="Share that fits temperature, thresholds and conformal sets."
    )
    val_test: float = Field(gt=0, lt=1, description="Share that is only ever reported.")

    @model_validator(mode="after")
    def _sum_to_one(self) -> SplitFractions:
        total = self.train + self.val_select + self.val_calib + self.val_test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"split fractions must sum to 1, got {total:.6g}")
        return self


class CropConfig(Section):
    """RandomResizedCrop: a random area share and aspect ratio, resized back to the input size."""

    scale: list[float] = Field(
        min_length=2, max_length=2, description="Range of the crop's share of the image area."
    )
    ratio: list[float] = Field(
        min_length=2, max_length=2, description="Range of the crop's aspect ratio (width/height)."
    )

    @model_validator(mode="after")
    def _ranges(self) -> CropConfig:
        low, high = self.scale
        if not 0 < low <= high <= 1:
            raise ValueError(f"scale must satisfy 0 < low <= high <= 1, got {self.scale}")
        if not 0 < self.ratio[0] <= self.ratio[1]:
            raise ValueError(f"ratio must satisfy 0 < low <= high, got {self.ratio}")
        return self


class JitterConfig(Section):
    """Colour jitter (torchvision's ColorJitter ranges: factor in [1-x, 1+x], hue in [-h, h])."""

    brightness: float = Field(ge=0, le=1, description="Brightness factor spread x.")
    contrast: float = Field(ge=0, le=1, description="Contrast factor spread x.")
    saturation: float = Field(ge=0, le=1, description="Saturation factor spread x.")
    hue: float = Field(ge=0, le=0.5, description="Hue shift spread h, in turns.")


class StainConfig(Section):
    """H&E stain augmentation in the HED colour space (Tellez et al., 2018)."""

    sigma: float = Field(
        ge=0, le=1, description="Each stain channel is scaled by a factor in [1-sigma, 1+sigma]."
    )
    bias: float = Field(ge=0, le=1, description="... and shifted by a value in [-bias, bias].")


class AugmentConfig(Section):
    """Train-only augmentation, applied to whole batches in a fixed order: crop, flips,
    rotation, colour jitter, stain. Eval, calibrate, xai and predict never augment."""

    random_resized_crop: CropConfig | None = Field(
        description="RandomResizedCrop back to the input size; null: off."
    )
    hflip: float = Field(ge=0, le=1, description="Probability of a horizontal flip.")
    vflip: float = Field(ge=0, le=1, description="Probability of a vertical flip.")
    rot90: bool = Field(
        description="Rotate by a uniformly drawn multiple of 90 degrees (square inputs only); "
        "histology has no up."
    )
    color_jitter: JitterConfig | None = Field(description="Colour jitter (RGB); null: off.")
    hed: StainConfig | None = Field(description="H&E stain augmentation (RGB); null: off.")

    def active(self) -> bool:
        """Whether any augmentation is switched on."""
        return bool(
            self.random_resized_crop
            or self.hflip
            or self.vflip
            or self.rot90
            or self.color_jitter
            or self.hed
        )


class TransformConfig(Section):
    """Input transforms: one API over torchvision's v1 and v2 transforms."""

    version: Literal["v1", "v2"] = Field(
        description="v1: torchvision.transforms; v2: torchvision.transforms.v2."
    )
    normalize: bool = Field(description="Normalize inputs with per-channel mean and std.")
    stats: Literal["train", "preset"] = Field(
        description="Where mean/std come from: the train split, or the encoder's own "
        "(model.inference.mean/std, else the backbone's preset)."
    )
    image_size: list[Annotated[int, Field(ge=1)]] | None = Field(
        min_length=2,
        max_length=2,
        description="Resize every image to [height, width]; null keeps the native size.",
    )
    augment: AugmentConfig = Field(description="Train-only batch augmentation.")


class CsvTarget(Section):
    """One target column of a CSV dataset and the kind of task it defines."""

    column: str = Field(description="Column holding the target.")
    kind: Literal["classification", "regression"] = Field(
        description="classification: labels (any strings); regression: numbers."
    )


class CsvConfig(Section):
    """Where a CSV dataset keeps its image paths, targets and groups."""

    path: str = Field(description="CSV file; image paths in it are relative to its folder.")
    image_column: str = Field(description="Column with the image path of each row.")
    group_column: str | None = Field(
        description="Column with a group (e.g. patient) kept within one split; null: per row."
    )
    id_column: str | None = Field(description="Column with a unique sample id; null: row number.")
    targets: dict[str, CsvTarget] = Field(
        min_length=1, description="Tasks the CSV offers: task name -> target column and kind."
    )


class TopVariableConfig(Section):
    """A gene panel picked from the data: the K most variable genes on the train split."""

    top_variable: int = Field(
        ge=1,
        description="How many genes: the highest variance of the transformed expression "
        "over the train split's spots (never val_select, val_calib or val_test).",
    )


class HestConfig(Section):
    """The samples of a HEST-layout folder (patches/*.h5, st/*.h5ad) and how expression is read."""

    samples: list[str] | None = Field(
        description="Sample ids (file stems under patches/ and st/); null: every patches/*.h5."
    )
    group_by: Literal["auto", "patient", "sample"] = Field(
        description="Split groups: auto is the patient named in metadata/<id>.json, else the "
        "sample; patient requires the metadata; sample ignores it."
    )
    expression: Literal["raw", "log1p", "log1p_normalized"] = Field(
        description="Targets: raw counts, log1p(counts), or log1p of counts scaled per spot "
        "(over all genes) to target_sum."
    )
    target_sum: float = Field(gt=0, description="Per-spot total for log1p_normalized.")


class DataConfig(Section):
    """Which dataset, which of its tasks, and how it is split and loaded."""

    name: str = Field(description="Registered dataset name (digits, imagefolder, csv, ...).")
    root: str | None = Field(
        description="Folder of an imagefolder dataset (one sub-folder per class); null otherwise."
    )
    csv: CsvConfig | None = Field(description="Columns of a csv dataset; null for other datasets.")
    hest: HestConfig | None = Field(
        description="Samples and expression of a hest dataset (HEST layout under data.root)."
    )
    genes: list[str] | str | TopVariableConfig | None = Field(
        description="Gene panel of a hest dataset: a list of gene names, a text file with one "
        "name per line, or {top_variable: K} (picked on the train split, written to the run's "
        "genes.json); every gene is its own regression task. For hest_bench: a gene list of "
        'the task folder by name (var_50genes.json, {"genes": [...]}), or a list.'
    )
    missing_genes: Literal["error", "drop"] = Field(
        description="A panel gene absent from some samples: error names the samples; drop "
        "leaves it out and lists it in the manifest."
    )
    channels: Literal[1, 3] = Field(description="Decode images as grey (1) or RGB (3).")
    cache: bool = Field(
        description="Keep decoded, resized inputs under <output_root>/cache/, keyed by content."
    )
    tasks: list[str] = Field(
        min_length=1,
        description='Tasks to train, chosen among those the dataset offers; ["*"] is every '
        "task it offers (every gene of a hest panel).",
    )
    splits: SplitFractions = Field(description="Fractions of train/val_select/val_calib/val_test.")
    split_seed: int | None = Field(
        ge=0,
        description="Seed of the split assignment; null: run.seed. Fix it to train several "
        "seeds of one variant on the same val_test (scripts/compare.py needs that).",
    )
    transforms: TransformConfig = Field(description="Input transforms.")
    num_workers: int = Field(
        ge=0, le=64, description="DataLoader worker processes that read and decode samples."
    )
    prefetch_factor: int = Field(
        ge=1, le=64, description="Batches each worker prepares ahead (with num_workers > 0)."
    )
    worker_timeout_s: float | None = Field(
        gt=0,
        description="With num_workers > 0: seconds without a batch from the workers before "
        "the run stops (exit 1) saying a worker is stuck (stopped, swapped out, hung in I/O); "
        "null waits forever.",
    )
    group_pattern: str | None = Field(
        description="imagefolder and csv: a regular expression over each image's path "
        "relative to data.root (or the CSV's folder) whose first group, or whole match, is "
        "the sample's group, e.g. '(slide\\d+)_tile' keeps one slide's tiles in one split; "
        "null: each image is its own group (csv: data.csv.group_column)."
    )
    on_bad_sample: Literal["error", "skip"] = Field(
        description="An unreadable or truncated image: error stops the run (exit 2) naming the "
        "file; skip leaves it out, counts it and lists it in the manifest."
    )

    @model_validator(mode="after")
    def _hest_needs_its_settings(self) -> DataConfig:
        hest_like = self.name in ("hest", "hest_bench")
        if hest_like and (self.hest is None or self.genes is None or not self.root):
            raise ValueError(f"data.name {self.name} needs data.root, data.hest and data.genes")
        return self

    @model_validator(mode="after")
    def _group_pattern_compiles(self) -> DataConfig:
        if self.group_pattern is None:
            return self
        import re

        try:
            re.compile(self.group_pattern)
        except re.error as err:
            raise ValueError(f"data.group_pattern {self.group_pattern!r}: {err}") from None
        if self.name not in ("imagefolder", "csv"):
            raise ValueError("data.group_pattern applies to imagefolder and csv data only")
        if self.name == "csv" and self.csv is not None and self.csv.group_column:
            raise ValueError("data.group_pattern and data.csv.group_column exclude each other")
        return self
