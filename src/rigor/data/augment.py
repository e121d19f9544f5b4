"""Train-only augmentation of whole batches, through torchvision.transforms.v2.functional.

Every random parameter is drawn per sample from a ``torch.Generator`` that the caller
seeds from (run seed, rank, optimizer step), never from the global RNG, so a resumed run
augments bitwise as the uninterrupted one did. The order is fixed: random resized crop,
horizontal flip, vertical flip, rotation by a multiple of 90 degrees, colour jitter
(brightness, contrast, saturation, hue), H&E stain jitter. Inputs are float in [0, 1].
"""

from __future__ import annotations

import math
from typing import Any

import torch

from rigor.config.models import AugmentConfig, CropConfig

# Ruifrok and Johnston's stain vectors (rows: hematoxylin, eosin, DAB), as in scikit-image.
RGB_FROM_HED = torch.tensor(
    [[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]], dtype=torch.float64
)
HED_FROM_RGB = torch.linalg.inv(RGB_FROM_HED)
_LOG_FLOOR = math.log(1e-6)


def _v2() -> Any:
    from torchvision.transforms.v2 import functional

    return functional


def _uniform(n: int, low: float, high: float, generator: torch.Generator) -> torch.Tensor:
    return torch.empty(n, dtype=torch.float64).uniform_(low, high, generator=generator)


def crop_box(
    height: int, width: int, crop: CropConfig, generator: torch.Generator
) -> tuple[int, int, int, int]:
    """(top, left, h, w) of one RandomResizedCrop, by torchvision's rule: up to 10 draws of
    area share and log-uniform aspect ratio, else the central crop within the ratio range."""
    area = height * width
    log_low, log_high = math.log(crop.ratio[0]), math.log(crop.ratio[1])
    for _ in range(10):
        target = area * float(_uniform(1, crop.scale[0], crop.scale[1], generator))
        aspect = math.exp(float(_uniform(1, log_low, log_high, generator)))
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, (1,), generator=generator))
            left = int(torch.randint(0, width - w + 1, (1,), generator=generator))
            return top, left, h, w
    ratio = width / height
    if ratio < crop.ratio[0]:
        w, h = width, round(width / crop.ratio[0])
    elif ratio > crop.ratio[1]:
        h, w = height, round(height * crop.ratio[1])
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def hed_jitter(x: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """Scale and shift each sample's stain concentrations in HED space (Tellez et al. 2018).

    Args:
        x: (B, 3, H, W) RGB in [0, 1].
        alpha, beta: (B, 3) per-sample factors and offsets for H, E and D.
    """
    to_hed = HED_FROM_RGB.to(x.device, x.dtype)
    to_rgb = RGB_FROM_HED.to(x.device, x.dtype)
    optical = torch.log(x.clamp_min(1e-6)) / _LOG_FLOOR
    stains = torch.einsum("bchw,cd->bdhw", optical, to_hed)  # unclamped: exact round trip
    a = alpha.to(x.device, x.dtype).view(-1, 3, 1, 1)
    b = beta.to(x.device, x.dtype).view(-1, 3, 1, 1)
    stains = stains * a + b
    rgb = torch.exp(torch.einsum("bdhw,dc->bchw", stains * _LOG_FLOOR, to_rgb))
    return rgb.clamp(0.0, 1.0)


class BatchAugment:
    """The configured augmentation as a function of (batch, generator)."""

    def __init__(self, cfg: AugmentConfig) -> None:
        self.cfg = cfg

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Augment each sample of ``x`` (B, C, H, W) with its own drawn parameters."""
        cfg, n = self.cfg, len(x)
        if cfg.random_resized_crop is not None:
            x = self._crop(x, cfg.random_resized_crop, generator)
        F = _v2()
        for probability, flip in ((cfg.hflip, F.horizontal_flip), (cfg.vflip, F.vertical_flip)):
            if probability > 0:
                chosen = (_uniform(n, 0.0, 1.0, generator) < probability).to(x.device)
                x = torch.where(chosen.view(-1, 1, 1, 1), flip(x), x)
        if cfg.rot90:
            turns = torch.randint(0, 4, (n,), generator=generator).tolist()
            x = torch.stack(
                [torch.rot90(image, k, dims=(-2, -1)) for image, k in zip(x, turns, strict=True)]
            )
        if cfg.color_jitter is not None:
            x = self._jitter(x, generator)
        if cfg.hed is not None:
            sigma, bias = cfg.hed.sigma, cfg.hed.bias
            alpha = _uniform(n * 3, 1 - sigma, 1 + sigma, generator).view(n, 3)
            beta = _uniform(n * 3, -bias, bias, generator).view(n, 3)
            x = hed_jitter(x, alpha, beta)
        return x

    def _crop(self, x: torch.Tensor, crop: CropConfig, generator: torch.Generator) -> torch.Tensor:
        height, width = int(x.shape[-2]), int(x.shape[-1])
        F = _v2()
        out = []
        for image in x:
            top, left, h, w = crop_box(height, width, crop, generator)
            out.append(F.resized_crop(image, top, left, h, w, [height, width], antialias=True))
        return torch.stack(out)

    def _jitter(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        jitter, n, F = self.cfg.color_jitter, len(x), _v2()
        assert jitter is not None
        factors = {
            "brightness": _uniform(n, 1 - jitter.brightness, 1 + jitter.brightness, generator),
            "contrast": _uniform(n, 1 - jitter.contrast, 1 + jitter.contrast, generator),
            "saturation": _uniform(n, 1 - jitter.saturation, 1 + jitter.saturation, generator),
            "hue": _uniform(n, -jitter.hue, jitter.hue, generator),
        }
        out = []
        for i, image in enumerate(x):
            if jitter.brightness:
                image = F.adjust_brightness(image, float(factors["brightness"][i]))
            if jitter.contrast:
                image = F.adjust_contrast(image, float(factors["contrast"][i]))
            if jitter.saturation:
                image = F.adjust_saturation(image, float(factors["saturation"][i]))
            if jitter.hue:
                image = F.adjust_hue(image, float(factors["hue"][i]))
            out.append(image)
        return torch.stack(out)


def augment_record(cfg: AugmentConfig) -> dict[str, Any] | None:
    """The manifest's record of the augmentation (null when none is on)."""
    if not cfg.active():
        return None
    return {
        "config": cfg.model_dump(),
        "order": ["random_resized_crop", "hflip", "vflip", "rot90", "color_jitter", "hed"],
        "applied_to": "train batches only, on the device, before normalisation",
        "seeding": "torch.Generator per optimizer step, seeded by sha256(seed, rank, step)",
    }
