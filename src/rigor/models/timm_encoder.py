"""timm encoders (``model.backbone: timm``): any timm architecture by name, built offline with
``pretrained=False`` and loaded from a local weights file by rigor's strict loader.

This is how the field's pathology encoders are published (UNI, Virchow, H-optimus, GigaPath
are timm ViTs with their own keyword arguments), so a config names the architecture and its
``timm.create_model`` arguments, and the weights stay a local file.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from rigor.config.models import ModelConfig
from rigor.errors import ConfigError
from rigor.models.registry import IMAGENET, InputShape, register_backbone

# Only classes of these modules may be named in model.timm.kwargs (no arbitrary imports).
_CLASS_MODULES = ("timm.layers.", "torch.nn.")


def resolve_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """``model.timm.kwargs`` with "timm.layers.X" / "torch.nn.X" strings made the layers
    they name (classes, or timm's partials such as SwiGLUPacked)."""
    import timm.layers

    modules = {"timm.layers.": timm.layers, "torch.nn.": torch.nn}
    resolved = {}
    for key, value in kwargs.items():
        prefix = next(
            (p for p in _CLASS_MODULES if isinstance(value, str) and value.startswith(p)), None
        )
        if prefix is None:
            resolved[key] = value
            continue
        found = getattr(modules[prefix], value[len(prefix) :], None)
        if found is None or not callable(found):  # a class, or a partial (SwiGLUPacked)
            raise ConfigError(f"model.timm.kwargs.{key}: {value!r} is not a layer of {prefix[:-1]}")
        resolved[key] = found
    return resolved


class TimmBackbone(nn.Module):
    """A headless timm model returning (N, dim) features; grey inputs are repeated to RGB.

    Layer names are ``net.<timm name>``; the weights file's keys are timm's own.
    """

    def __init__(self, net: nn.Module, grey: bool, pooling: str, classifier: str) -> None:
        super().__init__()
        self.net = net
        self.grey = grey
        self.pooling = pooling
        self.prefix_tokens = int(getattr(net, "num_prefix_tokens", 0))
        # a classifier checkpoint's head keys, reported and skipped when loading
        self.dropped_prefixes = (classifier + ".",) if classifier else ()

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """Pooled features: timm's own (``model``), the class token, the patch-token mean, or
        both concatenated."""
        if self.grey:
            inputs = inputs.expand(-1, 3, -1, -1)
        net: Any = self.net
        if self.pooling == "model":
            return net(inputs)
        tokens = net.forward_features(inputs)
        cls, patches = tokens[:, 0], tokens[:, self.prefix_tokens :].mean(dim=1)
        if self.pooling == "cls":
            return cls
        if self.pooling == "mean":
            return patches
        return torch.cat([cls, patches], dim=-1)


def build_timm(cfg: ModelConfig, channels: int) -> Any:
    """``timm.create_model(arch, pretrained=False, num_classes=0, **kwargs)``."""
    import timm

    arch = cfg.timm.arch
    if arch is None or not timm.is_model(arch):
        raise ConfigError(
            f"model.timm.arch: {arch!r} is not a timm architecture (timm {timm.__version__}; "
            "list them with timm.list_models())"
        )
    kwargs = resolve_kwargs(cfg.timm.kwargs)
    if kwargs.pop("pretrained", False):
        raise ConfigError(
            "model.timm.kwargs.pretrained: rigor never downloads weights; give the local file "
            "in model.weights_path"
        )
    if kwargs.setdefault("num_classes", 0) != 0:
        raise ConfigError("model.timm.kwargs.num_classes: a backbone has no classifier; use 0")
    try:
        return timm.create_model(arch, pretrained=False, **kwargs)
    except (TypeError, ValueError, AssertionError) as err:
        raise ConfigError(
            f"model.timm: timm cannot build {arch} with {cfg.timm.kwargs}: {err}"
        ) from None


@register_backbone("timm", IMAGENET)
def timm_backbone(cfg: ModelConfig, shape: InputShape) -> tuple[nn.Module, int]:
    """The timm architecture of ``model.timm``; the feature width from the model itself."""
    if shape[0] not in (1, 3):
        raise ConfigError(f"model.backbone timm takes 1 or 3 channels, data has {shape[0]}")
    net = build_timm(cfg, shape[0])
    pooling = cfg.timm.pooling
    if pooling != "model" and not hasattr(net, "num_prefix_tokens"):
        raise ConfigError(
            f"model.timm.pooling {pooling}: {cfg.timm.arch} has no tokens; use pooling: model"
        )
    width = int(getattr(net, "head_hidden_size", None) or net.num_features)
    if pooling != "model":
        width = int(net.num_features) * (2 if pooling == "cls_mean" else 1)
    classifier = str(getattr(net, "pretrained_cfg", {}).get("classifier") or "")
    return TimmBackbone(net, shape[0] == 1, pooling, classifier), width
