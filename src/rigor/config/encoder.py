"""The encoder's sections of a run's config: a Hugging Face encoder's sizes, PEFT adapters
and the SelectiveNet gate (re-exported by ``rigor.config.models``)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from rigor.config.base import Section


class HFConfig(Section):
    """A Hugging Face encoder (DINOv3 ViT): built from these sizes, or loaded from ``path``."""

    path: str | None = Field(
        description="Local folder for from_pretrained (config.json + model.safetensors); its "
        "sizes must equal those below. null: build from the sizes, randomly initialised. "
        "model.backbone: hf_auto loads any AutoModel folder here (the sizes are not used)."
    )
    hidden_size: int = Field(ge=8, description="Token width (384 for ViT-S, 768 for ViT-B).")
    num_layers: int = Field(ge=1, description="Transformer blocks.")
    num_heads: int = Field(ge=1, description="Attention heads; must divide hidden_size.")
    intermediate_size: int = Field(ge=8, description="Width of the MLP in each block.")
    patch_size: int = Field(ge=1, description="Side of the square patches, in pixels.")
    num_register_tokens: int = Field(ge=0, description="Register tokens after the CLS token.")
    pooling: Literal["cls", "mean"] = Field(
        description="Image feature: the normalised CLS token, or the mean of the patch tokens "
        "(after the CLS and register tokens). Also for model.backbone: hf_auto."
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
    unfreeze_last_blocks: int = Field(
        ge=0,
        description="Train the last N encoder blocks in full next to the adapters (they get "
        "no adapters themselves); 0: adapters only.",
    )
    unfreeze_norms: bool = Field(
        description="Also train every LayerNorm of the encoder (ExPLoRA unfreezes them)."
    )
    unfrozen_lr_scale: float = Field(
        gt=0,
        le=100,
        description="Learning rate of the unfrozen blocks and norms as a multiple of the "
        "backbone's (training.lr x training.backbone_lr_scale).",
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


class TimmConfig(Section):
    """A timm architecture (model.backbone: timm), built offline and loaded from local weights."""

    arch: str | None = Field(
        description="timm architecture name, e.g. vit_large_patch16_224 (UNI) or "
        "vit_giant_patch14_reg4_dinov2 (H-optimus-0); null unless model.backbone is timm."
    )
    kwargs: dict[str, Any] = Field(
        description="Keyword arguments of timm.create_model (e.g. init_values: 1.0e-5, "
        "dynamic_img_size: true, num_classes: 0). A string naming a class of timm.layers or "
        'torch.nn ("timm.layers.SwiGLUPacked", "torch.nn.SiLU") is that class.'
    )
    pooling: Literal["model", "cls", "mean", "cls_mean"] = Field(
        description="Image feature: model (timm's own pooled output), cls (the class token), "
        "mean (the mean of the patch tokens), cls_mean (both, concatenated, as Virchow)."
    )


class InferenceConfig(Section):
    """How the frozen encoder reads patches for features (the probe): its evaluation
    transform, as the encoder's authors published it, and its precision."""

    resize: int | None = Field(
        ge=1, description="Resize the shorter side to this many pixels; null: keep the size."
    )
    crop: int | None = Field(ge=1, description="Centre crop to this square side; null: none.")
    interpolation: Literal["bilinear", "bicubic"] = Field(
        description="Interpolation of the resize (antialiased)."
    )
    mean: list[Annotated[float, Field(allow_inf_nan=False)]] | None = Field(
        min_length=3,
        max_length=3,
        description="Per-channel mean of the encoder's normalisation; null: the backbone's "
        "preset (ImageNet for torchvision models), or the data's statistics without one.",
    )
    std: list[Annotated[float, Field(gt=0, allow_inf_nan=False)]] | None = Field(
        min_length=3, max_length=3, description="Per-channel std, with mean."
    )
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        description="Autocast dtype of feature extraction on a GPU; a CPU extracts in fp32."
    )
    channels_last: bool = Field(
        description="Feed the encoder channels_last batches (faster convolutions on a GPU)."
    )
    compile: bool = Field(description="torch.compile the encoder before extracting.")

    @model_validator(mode="after")
    def _mean_with_std(self) -> InferenceConfig:
        if (self.mean is None) != (self.std is None):
            raise ValueError("model.inference.mean and model.inference.std go together")
        return self
