"""Built-in backbones (cnn_small and torchvision models built without downloading) and heads."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from rigor.config.models import ModelConfig
from rigor.data.registry import TaskSpec
from rigor.errors import ConfigError
from rigor.models.registry import IMAGENET, InputShape, register_backbone, register_head


@register_backbone("cnn_small", layer="conv_last")
def cnn_small(cfg: ModelConfig, shape: InputShape) -> tuple[nn.Module, int]:
    """Conv-BN-ReLU blocks (a 2x2 max-pool after every block but the last), global average pool."""
    layers: dict[str, nn.Module] = {}
    width = shape[0]
    for index, channels in enumerate(cfg.channels):
        last = index == len(cfg.channels) - 1
        name = "conv_last" if last else f"conv{index}"
        layers[name] = nn.Conv2d(width, channels, kernel_size=3, padding=1, bias=False)
        layers[f"bn{index}"] = nn.BatchNorm2d(channels)
        layers[f"relu{index}"] = nn.ReLU()
        if not last:
            layers[f"pool{index}"] = nn.MaxPool2d(2, ceil_mode=True)
        width = channels
    layers["gap"] = nn.AdaptiveAvgPool2d(1)
    layers["flatten"] = nn.Flatten()
    return nn.Sequential(OrderedDict(layers)), width


class TorchvisionBackbone(nn.Module):
    """A torchvision model without its classifier; grey inputs are repeated to RGB.

    Layer names are ``net.<torchvision name>`` whatever the input channels.
    """

    def __init__(self, net: nn.Module, grey: bool) -> None:
        super().__init__()
        self.net = net
        self.grey = grey

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """Features of shape (N, dim)."""
        if self.grey:
            inputs = inputs.expand(-1, 3, -1, -1)
        return self.net(inputs)


def _torchvision(
    name: str, strip: Callable[[Any], int]
) -> Callable[[ModelConfig, InputShape], tuple[nn.Module, int]]:
    def build(cfg: ModelConfig, shape: InputShape) -> tuple[nn.Module, int]:
        import torchvision

        if shape[0] not in (1, 3):
            raise ConfigError(f"model.backbone {name} takes 1 or 3 channels, data has {shape[0]}")
        kwargs = {"image_size": shape[1]} if name == "vit_b_16" else {}
        model = getattr(torchvision.models, name)(weights=None, **kwargs)
        dim = strip(model)
        return TorchvisionBackbone(model, grey=shape[0] == 1), dim

    return build


def _strip_fc(model: Any) -> int:
    dim = int(model.fc.in_features)
    model.fc = nn.Identity()
    return dim


def _strip_convnext(model: Any) -> int:
    dim = int(model.classifier[2].in_features)
    model.classifier[2] = nn.Identity()
    return dim


def _strip_vit(model: Any) -> int:
    dim = int(model.hidden_dim)
    model.heads = nn.Identity()
    return dim


def _check_vit(cfg: ModelConfig, shape: InputShape) -> tuple[nn.Module, int]:
    if shape[1] != shape[2] or shape[1] % 16:
        raise ConfigError(
            f"model.backbone vit_b_16 needs square images with a side divisible by 16, got "
            f"{shape[1]}x{shape[2]}; set data.transforms.image_size"
        )
    return _torchvision("vit_b_16", _strip_vit)(cfg, shape)


class TruncatedResNet(TorchvisionBackbone):
    """A torchvision ResNet up to ``layer3``, average-pooled: HEST-Benchmark's ResNet-50
    baseline (1024 features). The weights file is a full ResNet's state dict; its ``layer4``
    and ``fc`` keys are reported and skipped."""

    dropped_prefixes = ("layer4.", "fc.")

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """Features of shape (N, 1024)."""
        if self.grey:
            inputs = inputs.expand(-1, 3, -1, -1)
        net: Any = self.net
        x = net.maxpool(net.relu(net.bn1(net.conv1(inputs))))
        x = net.layer3(net.layer2(net.layer1(x)))
        return torch.flatten(net.avgpool(x), 1)


@register_backbone("resnet50_trunc", IMAGENET, "net.layer3")
def resnet50_trunc(cfg: ModelConfig, shape: InputShape) -> tuple[nn.Module, int]:
    """torchvision ResNet-50 truncated after ``layer3``, with average pooling."""
    import torchvision

    if shape[0] not in (1, 3):
        raise ConfigError(
            f"model.backbone resnet50_trunc takes 1 or 3 channels, data has {shape[0]}"
        )
    net = torchvision.models.resnet50(weights=None)
    del net.layer4, net.fc  # never run: no parameters to train, save or load
    return TruncatedResNet(net, grey=shape[0] == 1), 1024


register_backbone("resnet18", IMAGENET, "net.layer4")(_torchvision("resnet18", _strip_fc))
register_backbone("resnet50", IMAGENET, "net.layer4")(_torchvision("resnet50", _strip_fc))
register_backbone("convnext_tiny", IMAGENET, "net.features.7")(
    _torchvision("convnext_tiny", _strip_convnext)
)
register_backbone("vit_b_16", IMAGENET, "net.encoder.layers.encoder_layer_11.ln_1")(_check_vit)


@register_head("classification")
def linear_classifier(cfg: ModelConfig, spec: TaskSpec, dim: int) -> nn.Module:
    """Dropout then a linear layer to ``num_classes`` logits."""
    assert spec.num_classes is not None
    return nn.Sequential(nn.Dropout(cfg.dropout), nn.Linear(dim, spec.num_classes))


@register_head("regression")
def linear_regressor(cfg: ModelConfig, spec: TaskSpec, dim: int) -> nn.Module:
    """Dropout then a linear layer to one value, returned without the trailing dim."""
    return nn.Sequential(nn.Dropout(cfg.dropout), nn.Linear(dim, 1), nn.Flatten(0))
