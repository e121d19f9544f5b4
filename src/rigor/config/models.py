"""Pydantic v2 models of a run's config.

Every hyperparameter is a required field here: its default value lives in
``configs/default.yaml`` and nowhere else, so there is one place to read it.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, values are re-validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)


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
        description="Where mean/std come from: the train split, or the backbone's preset."
    )
    image_size: list[int] | None = Field(
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


class DataConfig(Section):
    """Which dataset, which of its tasks, and how it is split and loaded."""

    name: str = Field(description="Registered dataset name (digits, imagefolder, csv, ...).")
    root: str | None = Field(
        description="Folder of an imagefolder dataset (one sub-folder per class); null otherwise."
    )
    csv: CsvConfig | None = Field(description="Columns of a csv dataset; null for other datasets.")
    channels: Literal[1, 3] = Field(description="Decode images as grey (1) or RGB (3).")
    cache: bool = Field(
        description="Keep decoded, resized inputs under <output_root>/cache/, keyed by content."
    )
    tasks: list[str] = Field(
        min_length=1, description="Tasks to train, chosen among those the dataset offers."
    )
    splits: SplitFractions = Field(description="Fractions of train/val_select/val_calib/val_test.")
    transforms: TransformConfig = Field(description="Input transforms.")
    num_workers: int = Field(
        ge=0, le=64, description="DataLoader worker processes that read and decode samples."
    )
    prefetch_factor: int = Field(
        ge=1, le=64, description="Batches each worker prepares ahead (with num_workers > 0)."
    )
    on_bad_sample: Literal["error", "skip"] = Field(
        description="An unreadable or truncated image: error stops the run (exit 2) naming the "
        "file; skip leaves it out, counts it and lists it in the manifest."
    )


class HFConfig(Section):
    """A Hugging Face encoder (DINOv3 ViT): built from these sizes, or loaded from ``path``."""

    path: str | None = Field(
        description="Local folder for from_pretrained (config.json + model.safetensors); its "
        "sizes must equal those below. null: build from the sizes, randomly initialised."
    )
    hidden_size: int = Field(ge=8, description="Token width (384 for ViT-S, 768 for ViT-B).")
    num_layers: int = Field(ge=1, description="Transformer blocks.")
    num_heads: int = Field(ge=1, description="Attention heads; must divide hidden_size.")
    intermediate_size: int = Field(ge=8, description="Width of the MLP in each block.")
    patch_size: int = Field(ge=1, description="Side of the square patches, in pixels.")
    num_register_tokens: int = Field(ge=0, description="Register tokens after the CLS token.")
    pooling: Literal["cls", "mean"] = Field(
        description="Image feature: the normalised CLS token, or the mean of the patch tokens."
    )

    @model_validator(mode="after")
    def _heads_divide(self) -> HFConfig:
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"model.hf.num_heads ({self.num_heads}) must divide model.hf.hidden_size "
                f"({self.hidden_size})"
            )
        return self


class PeftConfig(Section):
    """Parameter-efficient fine-tuning of the backbone with the peft library."""

    method: Literal["none", "lora", "dora"] = Field(
        description="none: train the backbone as configured; lora: low-rank adapters on "
        "target_modules with the base weights frozen; dora: weight-decomposed LoRA."
    )
    r: int = Field(ge=1, description="Rank of the adapters.")
    alpha: int = Field(ge=1, description="Scale numerator: the update is (alpha / r) B A.")
    dropout: float = Field(ge=0, lt=1, description="Dropout on the adapters' input.")
    target_modules: list[str] = Field(
        min_length=1,
        description="Names (suffixes) of the backbone's Linear/Conv layers that get adapters, "
        "e.g. q_proj, v_proj for DINOv3.",
    )


class GateConfig(Section):
    """A SelectiveNet gate (Geifman and El-Yaniv, 2019) on one classification task."""

    task: str | None = Field(
        description="Classification task that gets a selection head g(x) and an auxiliary "
        "head, trained with the SelectiveNet loss; null: no gate."
    )
    target_coverage: float = Field(
        gt=0, le=1, description="Coverage c the selection head is trained towards."
    )
    lam: float = Field(ge=0, description="Weight lambda of the coverage penalty (32 in the paper).")
    alpha: float = Field(
        ge=0,
        le=1,
        description="Weight of the selective loss; 1 - alpha goes to the auxiliary head.",
    )
    hidden: int = Field(ge=1, description="Width of the selection head's hidden layer.")


class ModelConfig(Section):
    """Backbone and heads."""

    backbone: str = Field(
        description="Registered backbone: cnn_small, resnet18, resnet50, convnext_tiny, "
        "vit_b_16, dinov3_vit."
    )
    channels: list[int] = Field(
        min_length=1, description="Conv channel widths of cnn_small, one entry per block."
    )
    dropout: float = Field(ge=0, lt=1, description="Dropout before each head.")
    weights_path: str | None = Field(
        description="Local backbone weights (.safetensors or .pt state dict); null: from scratch."
    )
    freeze_backbone: bool = Field(description="Train the heads only.")
    hf: HFConfig = Field(description="Sizes or local folder of a Hugging Face backbone.")
    peft: PeftConfig = Field(description="LoRA/DoRA adapters on the backbone.")
    gate: GateConfig = Field(description="SelectiveNet gate head on a classification task.")

    @model_validator(mode="after")
    def _peft_or_freeze(self) -> ModelConfig:
        if self.freeze_backbone and self.peft.method != "none":
            raise ValueError(
                f"model.freeze_backbone and model.peft.method={self.peft.method} conflict: "
                "PEFT already freezes the base weights and trains the adapters"
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
    betas: tuple[float, float] = Field(description="AdamW betas.")
    momentum: float = Field(ge=0, lt=1, description="SGD momentum.")


class SchedulerConfig(Section):
    """Learning-rate schedule, stepped once per optimizer step."""

    name: Literal["none", "cosine", "step"] = Field(description="Schedule shape.")
    warmup_epochs: float = Field(ge=0, description="Linear warmup length in epochs (cosine).")
    min_lr_ratio: float = Field(ge=0, le=1, description="Final lr as a share of the peak (cosine).")
    step_epochs: int = Field(ge=1, description="Epochs between decays (step).")
    gamma: float = Field(gt=0, le=1, description="Decay factor (step).")


class LoggingConfig(Section):
    """What the tracking helper writes."""

    log_every_n_steps: int = Field(ge=1, description="Write a steps.jsonl row every N steps.")
    tensorboard: bool = Field(description="Also write TensorBoard event files under logs/tb/.")
    progress: Literal["auto", "always", "never"] = Field(
        description="Progress bars: auto shows them only on an interactive terminal outside CI."
    )


class EnvConfig(Section):
    """Environment policy: how installed packages are compared with the lock."""

    policy: Literal["strict", "warn", "ignore"] = Field(
        description="strict fails (exit 4) on a mismatch, warn records it, ignore skips the check."
    )
    lockfile: str = Field(
        description="Lock to compare with: a pip lock (name==version) or a conda-lock YAML."
    )


class EvaluationConfig(Section):
    """What scripts/eval.py reports and how its bootstrap CIs are drawn."""

    n_resamples: int = Field(ge=10, le=100_000, description="Bootstrap resamples per CI.")
    level: float = Field(gt=0, lt=1, description="Confidence level of the percentile CIs.")
    seed: int = Field(ge=0, description="Seed of the bootstrap resamples.")
    coverages: list[float] = Field(description="Coverages c of Risk@Coverage(c).")
    risks: list[float] = Field(description="Risks r of Coverage@Risk(r).")
    n_bins: int = Field(
        ge=2, le=100, description="Bins of ECE, adaptive ECE and reliability plots."
    )


class CalibrationConfig(Section):
    """Temperature scaling and the selective threshold policy (fitted on val_calib only)."""

    task: str | None = Field(
        description="Classification task to calibrate; null: the first classification task."
    )
    target_risk: float = Field(
        gt=0, lt=1, description="Largest selective risk the threshold may accept."
    )
    min_coverage: float = Field(ge=0, le=1, description="Smallest coverage the threshold may give.")
    score: Literal["msp", "gate"] = Field(
        description="Confidence the threshold applies to: msp (temperature-scaled max softmax "
        "probability) or gate (the SelectiveNet selection head; needs model.gate.task)."
    )
    fnr_target: float | None = Field(
        gt=0,
        lt=1,
        description="Binary tasks only: largest false-negative rate among accepted samples.",
    )


class XaiWorkerConfig(Section):
    """The optional XAI worker service (scripts/xai_worker.py)."""

    host: str = Field(description="Address to bind; keep 127.0.0.1 unless behind a proxy.")
    port: int = Field(ge=1, le=65535, description="Port to listen on.")
    queue_size: int = Field(
        ge=1, description="Pending jobs accepted; beyond it: 429 + Retry-After."
    )
    workers: int = Field(ge=1, le=64, description="Worker processes running jobs.")
    max_retries: int = Field(
        ge=0, description="Retries of a failed job before it is marked failed."
    )
    backoff_s: float = Field(gt=0, description="First retry delay; doubles with every retry.")
    token_env: str = Field(description="Environment variable holding the bearer token.")
    token_file: str | None = Field(description="File holding the bearer token (if no env var).")
    results_root: str = Field(description="Only manifests under this folder are accepted.")


class XaiConfig(Section):
    """What scripts/xai.py explains and how."""

    method: Literal["integrated_gradients", "saliency", "input_x_gradient", "grad_cam"] = Field(
        description="Captum method; grad_cam is LayerGradCam on xai.layer."
    )
    split: Literal["val_select", "val_calib", "val_test"] = Field(description="Split to explain.")
    n_samples: int = Field(
        ge=1, description="How many samples of the split (first in split order)."
    )
    target: str = Field(
        description="predicted, true, a class index, a task name (regression heads), or all."
    )
    baseline: Literal["zeros", "blurred", "mean"] = Field(
        description="Integrated Gradients baseline: black image, blurred input, or train mean."
    )
    ig_steps: int = Field(ge=2, description="Integrated Gradients interpolation steps.")
    internal_batch_size: int = Field(ge=1, description="Integrated Gradients internal batch size.")
    layer: str | None = Field(
        description="Backbone layer for grad_cam (e.g. net.layer4); null: the backbone default."
    )
    randomization: bool = Field(
        description="Run the model-parameter randomization test (Adebayo et al. 2018)."
    )
    seed: int = Field(ge=0, description="Seed of the randomised weights.")
    worker: XaiWorkerConfig = Field(description="The worker service.")


class PretrainConfig(Section):
    """Masked-autoencoder pretraining of a ViT backbone (scripts/pretrain.py)."""

    mask_ratio: float = Field(gt=0, lt=1, description="Share of patches hidden from the encoder.")
    decoder_dim: int = Field(ge=8, description="Token width of the light decoder.")
    decoder_layers: int = Field(ge=1, description="Transformer blocks of the decoder.")
    decoder_heads: int = Field(ge=1, description="Attention heads of the decoder.")
    norm_pix_loss: bool = Field(
        description="Reconstruct each patch's pixels normalised by the patch's own mean and std."
    )

    @model_validator(mode="after")
    def _heads_divide(self) -> PretrainConfig:
        if self.decoder_dim % self.decoder_heads:
            raise ValueError(
                f"pretrain.decoder_heads ({self.decoder_heads}) must divide pretrain.decoder_dim "
                f"({self.decoder_dim})"
            )
        return self


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
                f"training.epochs ({self.training.epochs})"
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
        if len(set(self.data.tasks)) != len(self.data.tasks):
            raise ValueError(f"data.tasks has duplicates: {self.data.tasks}")
        return self
