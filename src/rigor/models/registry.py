"""Registries: ``@register_backbone("name")`` and ``@register_head("kind")``, no if/else."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from rigor.config.models import ModelConfig
from rigor.data.registry import TaskSpec
from rigor.errors import ConfigError

BackboneBuilder = Callable[[ModelConfig, int], tuple[nn.Module, int]]
HeadBuilder = Callable[[ModelConfig, TaskSpec, int], nn.Module]
BACKBONES: dict[str, BackboneBuilder] = {}
HEADS: dict[str, HeadBuilder] = {}


def register_backbone(name: str) -> Callable[[BackboneBuilder], BackboneBuilder]:
    """Register a builder ``(cfg, in_channels) -> (module, feature_dim)``."""

    def decorate(builder: BackboneBuilder) -> BackboneBuilder:
        BACKBONES[name] = builder
        return builder

    return decorate


def register_head(kind: str) -> Callable[[HeadBuilder], HeadBuilder]:
    """Register a head builder for a task kind (classification, regression)."""

    def decorate(builder: HeadBuilder) -> HeadBuilder:
        HEADS[kind] = builder
        return builder

    return decorate


class RigorModel(nn.Module):
    """A backbone and one head per task in an ``nn.ModuleDict``; forward returns a dict."""

    def __init__(self, backbone: nn.Module, heads: nn.ModuleDict, feature_dim: int, arch: str):
        super().__init__()
        self.backbone = backbone
        self.heads = heads
        self.feature_dim = feature_dim
        self.arch = arch

    def forward(self, inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        """Logits (classification) or predictions (regression) per task."""
        features = self.backbone(inputs)
        return {task: head(features) for task, head in self.heads.items()}


def build_model(cfg: ModelConfig, tasks: dict[str, TaskSpec], in_channels: int) -> RigorModel:
    """Build the backbone the config names and a head per task."""
    import rigor.models.backbones  # noqa: F401  (registers the built-in backbones and heads)

    if cfg.backbone not in BACKBONES:
        raise ConfigError(
            f"model.backbone: unknown backbone {cfg.backbone!r} (registered: {sorted(BACKBONES)})"
        )
    backbone, dim = BACKBONES[cfg.backbone](cfg, in_channels)
    heads = nn.ModuleDict({name: HEADS[spec.kind](cfg, spec, dim) for name, spec in tasks.items()})
    if cfg.freeze_backbone:
        backbone.requires_grad_(False)
    return RigorModel(backbone, heads, dim, cfg.backbone)
