"""Pydantic v2 models of a run's config.

Every hyperparameter is a required field here: its default value lives in
``configs/default.yaml`` and nowhere else, so there is one place to read it.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from rigor.config.base import NAME_PATTERN, Section
from rigor.config.data import (  # re-exported: every section is importable from here
    AugmentConfig as AugmentConfig,
)
from rigor.config.data import (
    CropConfig as CropConfig,
)
from rigor.config.data import (
    CsvConfig as CsvConfig,
)
from rigor.config.data import (
    CsvTarget as CsvTarget,
)
from rigor.config.data import (
    DataConfig as DataConfig,
)
from rigor.config.data import (
    HestConfig as HestConfig,
)
from rigor.config.data import (
    JitterConfig as JitterConfig,
)
from rigor.config.data import (
    SplitFractions as SplitFractions,
)
from rigor.config.data import (
    StainConfig as StainConfig,
)
from rigor.config.data import (
    TopVariableConfig as TopVariableConfig,
)
from rigor.config.data import (
    TransformConfig as TransformConfig,
)
from rigor.config.encoder import GateConfig as GateConfig
from rigor.config.encoder import HFConfig as HFConfig
from rigor.config.encoder import InferenceConfig as InferenceConfig
from rigor.config.encoder import PeftConfig as PeftConfig
from rigor.config.encoder import TimmConfig as TimmConfig
from rigor.config.stages import (
    CalibrationConfig as CalibrationConfig,
)
from rigor.config.stages import (  # re-exported
    EvaluationConfig as EvaluationConfig,
)
from rigor.config.stages import (
    PretrainConfig as PretrainConfig,
)
from rigor.config.stages import (
    ProbeConfig as ProbeConfig,
)
from rigor.config.stages import (
    XaiConfig as XaiConfig,
)
from rigor.config.stages import (
    XaiWorkerConfig as XaiWorkerConfig,
)


class RunConfig(Section):
    """Identity of the run and where it writes."""

    name: str = Field(
        description="Experiment name; part of the run id, so letters, digits, _ . - only.",
        pattern=NAME_PATTERN,
        max_length=64,
    )
    output_root: str = Field(
        description="Root of every output path; runs go to <output_root>/runs/<run_id>/."
    )
    seed: int = Field(ge=0, description="Seed for python, numpy, torch and the data splits.")
    determinism: bool = Field(
        description="Use deterministic algorithms only (torch.use_deterministic_algorithms)."
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        description="Where to train: auto picks cuda when available, else cpu."
    )


class ModelConfig(Section):
    """Backbone and heads."""

    backbone: str = Field(
        description="Registered backbone: cnn_small, resnet18, resnet50, resnet50_trunc "
        "(HEST's baseline), convnext_tiny, vit_b_16, dinov3_vit, hf_auto, timm."
    )
    channels: list[Annotated[int, Field(ge=1)]] = Field(
        min_length=1, description="Conv channel widths of cnn_small, one entry per block."
    )
    dropout: float = Field(ge=0, lt=1, description="Dropout before each head.")
    weights_path: str | None = Field(
        description="Local backbone weights (.safetensors, or a .pth/.bin/.pt state dict read "
        "with weights_only); every key must match; null: from scratch."
    )
    weights_key_map: dict[str, str | None] = Field(
        description="Rename key prefixes of the weights file before loading (old: new, e.g. "
        "'visual.trunk.': ''); a prefix mapped to null drops those keys."
    )
    init_from: str | None = Field(
        description="A pretrain run's manifest.json: the encoder starts from the weights that "
        "run saved, checked against their sha256 first. null: model.hf.path or from scratch."
    )
    freeze_backbone: bool = Field(description="Train the heads only.")
    hf: HFConfig = Field(description="Sizes or local folder of a Hugging Face backbone.")
    timm: TimmConfig = Field(description="Architecture of a timm backbone.")
    inference: InferenceConfig = Field(
        description="The encoder's evaluation transform and precision for frozen features."
    )
    peft: PeftConfig = Field(description="LoRA/DoRA adapters on the backbone.")
    gate: GateConfig = Field(description="SelectiveNet gate head on a classification task.")

    @model_validator(mode="after")
    def _peft_or_freeze(self) -> ModelConfig:
        if self.freeze_backbone and self.peft.method != "none":
            raise ValueError(
                f"model.freeze_backbone and model.peft.method={self.peft.method} conflict: "
                "PEFT already freezes the base weights and trains the adapters"
            )
        if self.init_from is not None and self.hf.path is not None:
            raise ValueError(
                "model.init_from and model.hf.path both name the encoder's weights; set one"
            )
        if self.init_from is not None and self.backbone != "dinov3_vit":
            raise ValueError(
                f"model.init_from loads a pretrain run's dinov3_vit encoder; model.backbone is "
                f"{self.backbone!r}"
            )
        if (self.backbone == "timm") != (self.timm.arch is not None):
            raise ValueError(
                "model.timm.arch names the architecture of model.backbone: timm (and only then); "
                f"backbone is {self.backbone!r}, timm.arch is {self.timm.arch!r}"
            )
        if self.backbone == "hf_auto" and self.hf.path is None:
            raise ValueError("model.backbone hf_auto loads model.hf.path; set it to the folder")
        unfreezing = self.peft.unfreeze_last_blocks or self.peft.unfreeze_norms
        if unfreezing and self.peft.method == "none":
            raise ValueError(
                "model.peft.unfreeze_last_blocks / unfreeze_norms go with adapters; with "
                "peft.method: none the whole backbone trains already"
            )
        return self


class TrainingConfig(Section):
    """The training loop."""

    epochs: int = Field(ge=1, le=10_000, description="Passes over the train split.")
    batch_size: int = Field(ge=1, description="Training batch size.")
    eval_batch_size: int = Field(ge=1, description="Batch size for evaluation and prediction.")
    lr: float = Field(gt=0, le=10, description="Peak learning rate of the heads.")
    backbone_lr_scale: float = Field(
        ge=0, le=100, description="Backbone learning rate as a multiple of lr (0 freezes it)."
    )
    accumulate_steps: int = Field(
        ge=1, description="Batches whose gradients add up to one optimizer step."
    )
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        description="Autocast dtype; fp16 also uses a GradScaler."
    )
    tf32: bool = Field(description="Allow TF32 matmuls and convolutions on CUDA.")
    min_batch_size: int = Field(
        ge=1, description="Floor when halving the batch after a CUDA out-of-memory error."
    )
    ema_decay: float | None = Field(
        gt=0,
        lt=1,
        description="Keep an exponential moving average of the weights with this decay and "
        "evaluate with it; null disables.",
    )
    patience: int | None = Field(
        ge=1, description="Stop after this many epochs without monitor improvement; null: never."
    )
    min_delta: float = Field(ge=0, description="Smallest monitor change that counts as better.")
    checkpoint_every_n_steps: int | None = Field(
        ge=1, description="Also write checkpoints/last.pt every N optimizer steps (mid-epoch)."
    )
    keep_top_k: int = Field(
        ge=1, description="Keep the k best epochs' checkpoints under checkpoints/top/."
    )
    grad_clip: float | None = Field(
        gt=0, description="Clip the global gradient norm to this value; null disables."
    )
    max_steps_per_epoch: int | None = Field(
        ge=1, description="Stop each epoch after this many steps (for smoke runs); null: all."
    )
    monitor: str = Field(
        pattern=r"^val_select/[a-z0-9_]+$",
        description="Metric that picks the best checkpoint; must be on val_select.",
    )
    monitor_mode: Literal["max", "min"] = Field(description="Whether the monitor should rise.")
    task_weighting: Literal["equal", "uncertainty"] = Field(
        description="How task losses add up: equal (a plain sum) or uncertainty (learned "
        "homoscedastic-uncertainty weights, Kendall et al. 2018)."
    )


class OptimizerConfig(Section):
    """Optimizer and its hyperparameters."""

    name: Literal["adamw", "sgd"] = Field(description="Optimizer.")
    weight_decay: float = Field(ge=0, description="Decoupled weight decay (AdamW) or L2 (SGD).")
    betas: tuple[Annotated[float, Field(ge=0, lt=1)], Annotated[float, Field(ge=0, lt=1)]] = Field(
        description="AdamW betas, each in [0, 1)."
    )
    momentum: float = Field(ge=0, lt=1, description="SGD momentum.")


class SchedulerConfig(Section):
    """Learning-rate schedule, stepped once per optimizer step."""

    name: Literal["none", "cosine", "step"] = Field(description="Schedule shape.")
    warmup_epochs: float = Field(ge=0, description="Linear warmup length in epochs (cosine).")
    min_lr_ratio: float = Field(ge=0, le=1, description="Final lr as a share of the peak (cosine).")
    step_epochs: int = Field(ge=1, description="Epochs between decays (step).")
    gamma: float = Field(gt=0, le=1, description="Decay factor (step).")


class MlflowConfig(Section):
    """Where a run is mirrored to MLflow (the manifest stays the source of truth)."""

    tracking_uri: str | None = Field(
        description=(
            "MLflow tracking URI (sqlite:///results/mlflow.db, http://127.0.0.1:5000); "
            "null: no mirror. Left out of the config hash."
        )
    )
    experiment: str | None = Field(
        min_length=1, description="MLflow experiment; null: run.name (a sweep's points share it)."
    )


class LoggingConfig(Section):
    """What the tracking helper writes."""

    log_every_n_steps: int = Field(ge=1, description="Write a steps.jsonl row every N steps.")
    tensorboard: bool = Field(description="Also write TensorBoard event files under logs/tb/.")
    progress: Literal["auto", "always", "never"] = Field(
        description="Progress bars: auto shows them only on an interactive terminal outside CI."
    )
    mlflow: MlflowConfig = Field(description="An MLflow mirror of the run and its later stages.")


class EnvConfig(Section):
    """Environment policy: how installed packages are compared with the lock."""

    policy: Literal["strict", "warn", "ignore"] = Field(
        description="strict fails (exit 4) on a mismatch, warn records it, ignore skips the check."
    )
    lockfile: str = Field(
        description="Lock to compare with: a pip lock (name==version) or a conda-lock YAML."
    )


class Config(Section):
    """A whole run's config, as validated after composition and overrides."""

    run: RunConfig = Field(description="Run identity and output root.")
    data: DataConfig = Field(description="Dataset, tasks and splits.")
    model: ModelConfig = Field(description="Backbone and heads.")
    training: TrainingConfig = Field(description="Training loop.")
    optimizer: OptimizerConfig = Field(description="Optimizer.")
    scheduler: SchedulerConfig = Field(description="Learning-rate schedule.")
    logging: LoggingConfig = Field(description="Logs, TensorBoard and progress bars.")
    env: EnvConfig = Field(description="Environment policy and lockfile.")
    evaluation: EvaluationConfig = Field(description="Metrics and bootstrap of scripts/eval.py.")
    calibration: CalibrationConfig = Field(description="Calibration of scripts/calibrate.py.")
    xai: XaiConfig = Field(description="Explanations of scripts/xai.py.")
    pretrain: PretrainConfig = Field(description="MAE pretraining of scripts/pretrain.py.")
    probe: ProbeConfig = Field(description="Frozen-encoder probe of scripts/probe.py.")

    @property
    def split_seed(self) -> int:
        """The seed that assigns samples to splits: ``data.split_seed``, else ``run.seed``."""
        return self.run.seed if self.data.split_seed is None else self.data.split_seed

    @model_validator(mode="after")
    def _cross_field(self) -> Config:
        if self.data.name == "csv" and self.data.csv is None:
            raise ValueError("data.csv must be set when data.name is csv")
        if self.data.name == "imagefolder" and self.data.root is None:
            raise ValueError("data.root must be set when data.name is imagefolder")
        if self.training.min_batch_size > self.training.batch_size:
            raise ValueError(
                f"training.min_batch_size ({self.training.min_batch_size}) exceeds "
                f"training.batch_size ({self.training.batch_size})"
            )
        if self.scheduler.name == "cosine" and self.scheduler.warmup_epochs >= self.training.epochs:
            raise ValueError(
                f"scheduler.warmup_epochs ({self.scheduler.warmup_epochs}) must be shorter than "
                f"training.epochs ({self.training.epochs}); for a shortened run add --set "
                f"scheduler.warmup_epochs={self.training.epochs / 2:g} (or 0 for none)"
            )
        gate = self.model.gate.task
        if gate is not None and self.training.min_batch_size < 2:
            raise ValueError(
                "training.min_batch_size must be at least 2 with model.gate.task set (the gate's "
                "BatchNorm needs two samples)"
            )
        if gate is not None and gate not in self.data.tasks:
            raise ValueError(f"model.gate.task {gate!r} is not in data.tasks {self.data.tasks}")
        if self.calibration.score == "gate" and gate is None:
            raise ValueError("calibration.score is gate, but model.gate.task is null")
        if self.calibration.risk_control.scrc_score == "gate" and gate is None:
            raise ValueError(
                "calibration.risk_control.scrc_score is gate, but model.gate.task is null"
            )
        if self.calibration.policy in ("gate", "cascade") and gate is None:
            raise ValueError(
                f"calibration.policy {self.calibration.policy} needs a gate, but model.gate.task "
                "is null"
            )
        if self.probe.protocol == "hest_bench" and self.data.name != "hest_bench":
            raise ValueError(
                f"probe.protocol hest_bench reads a HEST-Benchmark task folder: set data.name: "
                f"hest_bench (data.name is {self.data.name!r})"
            )
        if len(set(self.data.tasks)) != len(self.data.tasks):
            raise ValueError(f"data.tasks has duplicates: {self.data.tasks}")
        return self
