"""Built-in backbones and heads."""

from __future__ import annotations

from torch import nn

from rigor.config.models import ModelConfig
from rigor.data.registry import TaskSpec
from rigor.models.registry import register_backbone, register_head


@register_backbone("cnn_small")
def cnn_small(cfg: ModelConfig, in_channels: int) -> tuple[nn.Module, int]:
    """Conv-BN-ReLU blocks (a 2x2 max-pool after every block but the last), global average pool."""
    layers: list[nn.Module] = []
    width = in_channels
    for index, channels in enumerate(cfg.channels):
        layers += [
            nn.Conv2d(width, channels, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
        ]
        if index < len(cfg.channels) - 1:
            layers.append(nn.MaxPool2d(2, ceil_mode=True))
        width = channels
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    return nn.Sequential(*layers), width


@register_head("classification")
def linear_classifier(cfg: ModelConfig, spec: TaskSpec, dim: int) -> nn.Module:
    """Dropout then a linear layer to ``num_classes`` logits."""
    assert spec.num_classes is not None
    return nn.Sequential(nn.Dropout(cfg.dropout), nn.Linear(dim, spec.num_classes))


@register_head("regression")
def linear_regressor(cfg: ModelConfig, spec: TaskSpec, dim: int) -> nn.Module:
    """Dropout then a linear layer to one value, returned without the trailing dim."""
    return nn.Sequential(nn.Dropout(cfg.dropout), nn.Linear(dim, 1), nn.Flatten(0))
