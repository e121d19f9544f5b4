"""Attribution methods through Captum (a dependency, not re-implemented)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from rigor.config.stages import XAI_METHODS
from rigor.errors import ConfigError


class TaskOutput(nn.Module):
    """One head of a multi-head model as a plain module (what Captum explains)."""

    def __init__(self, model: nn.Module, task: str) -> None:
        super().__init__()
        self.model = model
        self.task = task

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """Logits (classification) or predictions (regression) of this task."""
        outputs: dict[str, torch.Tensor] = self.model(inputs)
        return outputs[self.task]


@dataclass(frozen=True)
class Attribution:
    """Per-sample maps (N, C, H, W) and, for Integrated Gradients, the convergence delta."""

    maps: np.ndarray
    delta: np.ndarray | None


Method = Callable[[TaskOutput, torch.Tensor, torch.Tensor | None, dict[str, Any]], Attribution]
METHODS: dict[str, Method] = {}


def register_method(name: str) -> Callable[[Method], Method]:
    """Register an attribution method under ``name``."""

    def decorate(method: Method) -> Method:
        if name not in XAI_METHODS:
            raise ValueError(f"xai method {name!r} is not in rigor.config.stages.XaiMethod")
        METHODS[name] = method
        return method

    return decorate


def _np(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().float().cpu().numpy()


@register_method("integrated_gradients")
def integrated_gradients(
    forward: TaskOutput, inputs: torch.Tensor, target: torch.Tensor | None, options: dict[str, Any]
) -> Attribution:
    """Integrated Gradients from ``options['baselines']`` with its completeness delta."""
    from captum.attr import IntegratedGradients

    maps, delta = IntegratedGradients(forward).attribute(
        inputs,
        baselines=options["baselines"],
        target=target,
        n_steps=options["ig_steps"],
        internal_batch_size=options["internal_batch_size"],
        return_convergence_delta=True,
    )
    return Attribution(_np(maps), _np(delta))


@register_method("saliency")
def saliency(
    forward: TaskOutput, inputs: torch.Tensor, target: torch.Tensor | None, options: dict[str, Any]
) -> Attribution:
    """Absolute input gradient."""
    from captum.attr import Saliency

    return Attribution(_np(Saliency(forward).attribute(inputs, target=target, abs=True)), None)


@register_method("input_x_gradient")
def input_x_gradient(
    forward: TaskOutput, inputs: torch.Tensor, target: torch.Tensor | None, options: dict[str, Any]
) -> Attribution:
    """Input times gradient."""
    from captum.attr import InputXGradient

    return Attribution(_np(InputXGradient(forward).attribute(inputs, target=target)), None)


@register_method("grad_cam")
def grad_cam(
    forward: TaskOutput, inputs: torch.Tensor, target: torch.Tensor | None, options: dict[str, Any]
) -> Attribution:
    """LayerGradCam on ``options['layer']``, ReLU-ed and upsampled to the input size."""
    from captum.attr import LayerAttribution, LayerGradCam

    layer = options["layer"]
    maps = LayerGradCam(forward, layer).attribute(inputs, target=target, relu_attributions=True)
    if maps.ndim != 4:
        raise ConfigError(
            f"xai.layer {options['layer_name']!r} gives {maps.ndim}-D activations; grad_cam needs "
            "a convolutional layer (N, C, H, W)"
        )
    upsampled = LayerAttribution.interpolate(
        maps, tuple(inputs.shape[2:]), interpolate_mode="bilinear"
    )
    return Attribution(_np(upsampled), None)


def attribute(
    method: str,
    model: nn.Module,
    task: str,
    inputs: torch.Tensor,
    target: torch.Tensor | None,
    options: dict[str, Any],
) -> Attribution:
    """Run a registered method on one head of ``model``."""
    if method not in METHODS:
        raise ConfigError(f"xai.method: unknown method {method!r} (registered: {sorted(METHODS)})")
    forward = TaskOutput(model, task).eval()
    return METHODS[method](forward, inputs.clone().requires_grad_(True), target, options)


def find_layer(model: nn.Module, name: str) -> nn.Module:
    """A backbone layer by its dotted name; ConfigError listing candidates otherwise."""
    backbone: Any = model.backbone
    layers: dict[str, nn.Module] = dict(backbone.named_modules())
    if name not in layers:
        convs = [n for n, m in layers.items() if isinstance(m, nn.Conv2d)][-5:]
        raise ConfigError(
            f"xai.layer: no layer {name!r} in the backbone (last conv layers: {convs})"
        )
    return layers[name]


def gaussian_blur(images: torch.Tensor, sigma: float = 2.0) -> torch.Tensor:
    """Blurred copies of (N, C, H, W) images (the 'blurred' IG baseline)."""
    from torchvision.transforms.functional import gaussian_blur as blur

    kernel = int(2 * round(3 * sigma) + 1)
    return blur(images, [kernel, kernel], [sigma, sigma])
