"""Hugging Face encoders (DINOv3 ViT) and PEFT adapters (LoRA, DoRA) through the peft library.

The DINOv3 backbone is the real ``transformers.DINOv3ViTModel``: built from ``model.hf`` sizes
with random weights (no download), or read with ``from_pretrained`` from a local folder.
Adapters are injected in place with ``peft.inject_adapter_in_model``, so the backbone's layer
names (used by XAI and by checkpoints) stay those of the plain model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from rigor.config.models import HFConfig, ModelConfig, PeftConfig
from rigor.errors import ArtifactError, ConfigError
from rigor.models.registry import IMAGENET, InputShape, register_backbone


class HFBackbone(nn.Module):
    """A Hugging Face vision encoder returning (N, dim) features; grey inputs become RGB.

    Layer names are ``net.<transformers name>`` (``net.model.layer.0.attention.q_proj``).
    """

    def __init__(self, net: nn.Module, grey: bool, pooling: str, prefix_tokens: int) -> None:
        super().__init__()
        self.net = net
        self.grey = grey
        self.pooling = pooling
        self.prefix_tokens = prefix_tokens

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """The normalised CLS token, or the mean of the normalised patch tokens."""
        if self.grey:
            inputs = inputs.expand(-1, 3, -1, -1)
        tokens = self.net(pixel_values=inputs).last_hidden_state
        if self.pooling == "cls":  # DINOv3's pooler output is this same normalised token
            return tokens[:, 0]
        return tokens[:, self.prefix_tokens :].mean(dim=1)


def dinov3_config(cfg: HFConfig, image_size: int) -> Any:
    """The ``DINOv3ViTConfig`` of ``model.hf`` (3 input channels, like the released weights)."""
    from transformers import DINOv3ViTConfig

    return DINOv3ViTConfig(
        hidden_size=cfg.hidden_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        intermediate_size=cfg.intermediate_size,
        patch_size=cfg.patch_size,
        num_register_tokens=cfg.num_register_tokens,
        image_size=image_size,
        num_channels=3,
    )


def load_dinov3(cfg: HFConfig, image_size: int) -> Any:
    """``DINOv3ViTModel`` from the local folder ``cfg.path``, or built from the sizes."""
    from transformers import DINOv3ViTModel

    if cfg.path is None:
        return DINOv3ViTModel(dinov3_config(cfg, image_size))
    folder = Path(cfg.path)
    if not (folder / "config.json").is_file():
        raise ArtifactError(
            f"model.hf.path: {folder} has no config.json (expected a folder written by "
            "save_pretrained, e.g. a pretrain run's pretrain/hf/)"
        )
    try:
        net = DINOv3ViTModel.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError) as err:
        raise ArtifactError(f"model.hf.path: cannot load {folder}: {err}") from None
    check_same_architecture(cfg, net.config, folder)
    return net


# Fields that fix the architecture (not init-only values such as layerscale_value): a
# checkpoint's model is rebuilt from model.hf alone (export, predict, xai), so a pretrained
# folder must agree with model.hf on all of them.
_ARCH_FIELDS = (
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "patch_size",
    "num_register_tokens",
    "use_gated_mlp",
    "hidden_act",
    "layer_norm_eps",
    "rope_theta",
    "query_bias",
    "key_bias",
    "value_bias",
    "proj_bias",
    "mlp_bias",
)
_CONFIG_NAMES = {"num_hidden_layers": "num_layers", "num_attention_heads": "num_heads"}


def check_same_architecture(cfg: HFConfig, loaded: Any, folder: Path) -> None:
    """ConfigError listing every architecture field where ``folder``'s config.json differs."""
    expected = dinov3_config(cfg, int(loaded.image_size))
    diffs = [
        f"{_CONFIG_NAMES.get(name, name)}: model.hf gives {getattr(expected, name)!r}, "
        f"config.json has {getattr(loaded, name)!r}"
        for name in _ARCH_FIELDS
        if getattr(expected, name) != getattr(loaded, name)
    ]
    if diffs:
        raise ConfigError(
            f"model.hf.path {folder}: its architecture differs from model.hf (set the sizes in "
            f"model.hf to match; other fields are not configurable yet): " + "; ".join(diffs)
        )


@register_backbone("dinov3_vit", IMAGENET, "net.embeddings.patch_embeddings")
def dinov3_vit(cfg: ModelConfig, shape: InputShape) -> tuple[nn.Module, int]:
    """DINOv3 ViT; the image sides must be multiples of the patch size."""
    if shape[0] not in (1, 3):
        raise ConfigError(f"model.backbone dinov3_vit takes 1 or 3 channels, data has {shape[0]}")
    net = load_dinov3(cfg.hf, shape[1])
    patch = int(net.config.patch_size)
    if shape[1] % patch or shape[2] % patch:
        raise ConfigError(
            f"model.hf.patch_size {patch} does not divide the {shape[1]}x{shape[2]} images; "
            "set data.transforms.image_size or the patch size"
        )
    prefix = 1 + int(net.config.num_register_tokens)
    return HFBackbone(net, shape[0] == 1, cfg.hf.pooling, prefix), int(net.config.hidden_size)


def load_auto_model(folder: Path) -> Any:
    """``transformers.AutoModel`` from a local folder, every weight of it from the files: a
    folder whose weights lack a key of the architecture is a config error naming the keys."""
    from transformers import AutoModel

    if not (folder / "config.json").is_file():
        raise ArtifactError(
            f"model.hf.path: {folder} has no config.json (a folder written by save_pretrained, "
            "e.g. a download of owkin/phikon or facebook/dinov2-base)"
        )
    try:
        net, info = AutoModel.from_pretrained(
            str(folder), local_files_only=True, output_loading_info=True
        )
    except (OSError, ValueError) as err:
        raise ArtifactError(f"model.hf.path: cannot load {folder}: {err}") from None
    # the pooler is never used (rigor pools last_hidden_state itself); HEST loads Phikon
    # without it (add_pooling_layer=False), so a folder may lack its weights
    missing = sorted(k for k in info.get("missing_keys", []) if not k.startswith("pooler."))
    if missing:
        raise ConfigError(
            f"model.hf.path {folder}: the weights lack {len(missing)} key(s) of "
            f"{type(net).__name__} (first: {missing[:5]}); they would start random"
        )
    return net


@register_backbone("hf_auto", IMAGENET)
def hf_auto(cfg: ModelConfig, shape: InputShape) -> tuple[nn.Module, int]:
    """Any Hugging Face vision encoder folder (DINOv2, DINOv3, Phikon's ViT) through
    ``AutoModel``, pooled as ``model.hf.pooling`` says."""
    if shape[0] not in (1, 3):
        raise ConfigError(f"model.backbone hf_auto takes 1 or 3 channels, data has {shape[0]}")
    assert cfg.hf.path is not None  # the config model requires it
    net = load_auto_model(Path(cfg.hf.path))
    config = net.config
    prefix = 1 + int(getattr(config, "num_register_tokens", 0) or 0)
    width = int(getattr(config, "hidden_size", 0))
    if not width:
        raise ConfigError(f"model.hf.path {cfg.hf.path}: its config has no hidden_size")
    return HFBackbone(net, shape[0] == 1, cfg.hf.pooling, prefix), width


def apply_peft(backbone: nn.Module, cfg: PeftConfig) -> dict[str, int]:
    """Inject LoRA/DoRA adapters into ``backbone`` in place and freeze the rest of it, except
    the last ``unfreeze_last_blocks`` blocks (trained in full, without adapters) and, with
    ``unfreeze_norms``, every LayerNorm.

    Returns the adapted layers, adapter parameters and unfrozen parameters. Raises ConfigError
    when no layer matches ``target_modules`` or the encoder has fewer blocks than asked.
    """
    from peft import LoraConfig, inject_adapter_in_model

    blocks = _blocks(backbone)
    keep = cfg.unfreeze_last_blocks
    if keep > len(blocks):
        raise ConfigError(
            f"model.peft.unfreeze_last_blocks is {keep}, but the encoder has {len(blocks)} blocks"
        )
    adapted = [p + "." for p in blocks[: len(blocks) - keep]]
    names = [name for name, _ in backbone.named_modules()]
    matched = [
        n
        for n in names
        if any(n == t or n.endswith("." + t) for t in cfg.target_modules)
        and (not blocks or any(n.startswith(prefix) for prefix in adapted))
    ]
    if not matched:
        leaves = sorted(
            {n.rsplit(".", 1)[-1] for n, m in backbone.named_modules() if not list(m.children())}
        )
        raise ConfigError(
            f"model.peft.target_modules {cfg.target_modules} match no layer of the adapted "
            f"blocks (leaf layer names: {leaves[:20]})"
        )
    config = LoraConfig(
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=matched,  # full names: the unfrozen blocks get no adapters
        use_dora=cfg.method == "dora",
        bias="none",
    )
    inject_adapter_in_model(config, backbone)
    unfrozen = unfrozen_prefixes(backbone, cfg)
    adapter = trained = 0
    for name, param in backbone.named_parameters():
        is_adapter = "lora_" in name
        full = name.startswith(unfrozen)
        param.requires_grad_(is_adapter or full)
        adapter += param.numel() if is_adapter else 0
        trained += param.numel() if full and not is_adapter else 0
    return {"adapted_layers": len(matched), "adapter_params": adapter, "unfrozen_params": trained}


def _blocks(backbone: nn.Module) -> list[str]:
    """Names of the encoder's transformer blocks in order (``net.model.layer.<i>``); empty for
    a backbone without a ``layer`` ModuleList."""
    for name, module in backbone.named_modules():
        if name.endswith(".layer") and isinstance(module, nn.ModuleList):
            return [f"{name}.{i}" for i in range(len(module))]
    return []


def unfrozen_prefixes(backbone: nn.Module, cfg: PeftConfig) -> tuple[str, ...]:
    """Parameter-name prefixes (within the backbone) trained in full next to the adapters."""
    blocks = _blocks(backbone)
    prefixes = [p + "." for p in blocks[len(blocks) - cfg.unfreeze_last_blocks :]]
    if cfg.unfreeze_last_blocks == 0:
        prefixes = []
    if cfg.unfreeze_norms:
        prefixes += [n + "." for n, m in backbone.named_modules() if isinstance(m, nn.LayerNorm)]
    return tuple(prefixes)
