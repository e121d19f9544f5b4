"""Config models of the stages after training: evaluation, calibration, xai (and its
worker service), MAE pretraining and the frozen-encoder probe."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Literal, get_args

from pydantic import Field, model_validator

from rigor.config.base import Section
from rigor.policies.registry import KINDS as POLICY_KINDS


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
    figure_genes: Annotated[int, Field(ge=0)] | list[str] = Field(
        description="Regression runs: the genes eval draws (predicted against measured, and "
        "maps per val_test sample for spot data): a list of names, or the K best by Pearson."
    )


class ConformalConfig(Section):
    """Split-conformal prediction sets of the calibrated classification task."""

    alpha: float = Field(
        gt=0,
        lt=1,
        description="Miscoverage: sets hold the true label with probability >= 1 - alpha.",
    )
    method: Literal["lac", "aps", "raps"] = Field(
        description="Score of the set policy: lac (1 - p_y), aps or raps; eval reports all three."
    )
    randomized: bool = Field(description="APS/RAPS: subtract u * p_y (u uniform, seeded).")
    k_reg: int = Field(ge=0, description="RAPS: labels ranked up to k_reg are not penalised.")
    lam: float = Field(ge=0, description="RAPS: penalty per label ranked beyond k_reg.")
    seed: int = Field(ge=0, description="Seed of the uniform draws of randomised sets.")


class RiskControlConfig(Section):
    """Conformal risk control (CRC) of the set's false-negative rate, and its selective
    variant SCRC (accept by a selection score first, then CRC on the accepted)."""

    alpha: float = Field(gt=0, lt=1, description="CRC: the false-negative rate it bounds.")
    grid: int = Field(ge=2, le=100_000, description="Grid points of lambda in [0, 1].")
    scrc_alpha: float = Field(
        gt=0, lt=1, description="SCRC: the false-negative rate it bounds among accepted samples."
    )
    scrc_coverage: float = Field(
        gt=0, le=1, description="SCRC: the share of samples stage 1 accepts (at least)."
    )
    scrc_score: Literal["msp", "gate"] = Field(
        description="SCRC stage 1 selection score: the model's max softmax probability, or "
        "the gate (needs model.gate.task)."
    )


if TYPE_CHECKING:
    PolicyKind = str
else:  # the registry's kinds, as a Literal: the config schema and its errors list them
    PolicyKind = Literal[POLICY_KINDS]


class CalibrationConfig(Section):
    """Temperature scaling and the selective threshold policy (fitted on val_calib only)."""

    task: str | None = Field(
        description="Classification task to calibrate; null: the first classification task."
    )
    temperature: Literal["fit", "none"] = Field(
        description="fit: the temperature minimising val_calib's NLL (T = 1 with a warning "
        "when val_calib has no finite optimum, e.g. no error at all); none: skip it (T = 1)."
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
    interval_alpha: float = Field(
        gt=0,
        lt=1,
        description="Regression tasks: miscoverage alpha of each task's split-conformal "
        "interval (absolute residual on val_calib); 1 - alpha is the coverage it guarantees.",
    )
    interval_method: Literal["spot", "patient"] = Field(
        description="Regression intervals: spot (the quantile over val_calib's spots: holds "
        "for spots exchangeable with them) or patient (over its split groups, each weighing "
        "the same: holds for a spot of a new patient; needs (1 - alpha) / alpha groups).",
    )
    policy: PolicyKind = Field(
        description="The one policy export.py puts in the bundle: threshold, gate (Platt), "
        "cascade, sets (conformal), crc or scrc, or none (no abstention; needs no "
        "calibration); export.py --policy overrides it."
    )
    stage_b: str | None = Field(
        description="Stage B of the cascade: null for the gated task's auxiliary head, or the "
        "manifest.json of a finished run with the same splits (predict then takes its bundle "
        "with --stage-b)."
    )
    conformal: ConformalConfig = Field(description="Split-conformal prediction sets.")
    risk_control: RiskControlConfig = Field(description="CRC and SCRC of the set's FNR.")


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
    max_body_bytes: int = Field(
        ge=1024, description="Largest request body; larger ones get 413 before being read."
    )
    finished_ttl_s: float = Field(gt=0, description="Seconds a finished job stays queryable.")
    max_finished: int = Field(ge=1, description="Finished jobs kept at most (oldest go first).")


# The one list of XAI method names: the config accepts these, scripts/xai.py offers them and
# the attribution registry (rigor.xai.attributions) registers exactly these.
XaiMethod = Literal["integrated_gradients", "saliency", "input_x_gradient", "grad_cam"]
XAI_METHODS: tuple[str, ...] = get_args(XaiMethod)


class XaiConfig(Section):
    """What scripts/xai.py explains and how."""

    method: XaiMethod = Field(description="Captum method; grad_cam is LayerGradCam on xai.layer.")
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


class ProbeConfig(Section):
    """The frozen-encoder probe of scripts/probe.py (HEST-Benchmark protocol)."""

    pca_components: int = Field(
        ge=1,
        description="Principal components kept (fitted on each train fold only); HEST: 256.",
    )
    folds: int | None = Field(
        ge=2,
        description="null: leave one split group (patient) out at a time; k: k folds of whole "
        "groups (GroupKFold).",
    )
    test_groups: Literal["all", "val_test"] = Field(
        description="Groups that folds test: all (every patient once; for encoders that never "
        "saw these images) or val_test (only the split's val_test patients; required for an "
        "encoder trained on this data). Ridge always trains on every other group.",
    )
    alpha: float | None = Field(
        gt=0,
        allow_inf_nan=False,
        description="Ridge penalty; null: HEST's 100 / (components * genes). The hest_bench "
        "protocol fixes it to HEST's rule (set protocol: rigor to choose one).",
    )
    protocol: Literal["rigor", "hest_bench"] = Field(
        description="rigor: folds of whole patients made here (probe.folds); hest_bench: the "
        "predefined splits of a HEST-Benchmark task folder (data.name: hest_bench), scored as "
        "HEST-Benchmark reports (mean over genes per split, mean and s.d. over splits)."
    )
    pca_seed: int = Field(
        ge=0,
        description="random_state of the PCA (HEST-Benchmark's default seed is 1); recorded.",
    )

    @model_validator(mode="after")
    def _published_protocol(self) -> ProbeConfig:
        if self.protocol == "hest_bench" and self.alpha is not None:
            raise ValueError(
                "probe.alpha: the hest_bench protocol fixes alpha = 100 / (components * genes) "
                "as HEST-Benchmark does; set probe.alpha: null, or probe.protocol: rigor"
            )
        if self.protocol == "hest_bench" and self.folds is not None:
            raise ValueError(
                "probe.folds: the hest_bench protocol uses the task folder's predefined "
                "splits; set probe.folds: null"
            )
        if self.protocol == "hest_bench" and self.test_groups != "all":
            raise ValueError(
                "probe.test_groups: the hest_bench protocol tests what each split's "
                "test_<k>.csv lists; set probe.test_groups: all"
            )
        return self
