"""Masked-autoencoder (MAE, He et al. 2022) pretraining of a DINOv3 ViT encoder.

The encoder is the backbone's own ``DINOv3ViTModel``: its patch embedding, blocks and final
norm run on the visible patches only (with their RoPE angles gathered per sample), and a
light Transformer decoder reconstructs the pixels of the hidden patches. The loss is the
mean squared error over hidden patches only, optionally on per-patch normalised pixels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from rigor.config.models import PretrainConfig


def patchify(images: torch.Tensor, patch: int) -> torch.Tensor:
    """(N, C, H, W) -> (N, L, patch*patch*C) in row-major patch order (the ViT's order)."""
    n, c, h, w = images.shape
    grid = images.reshape(n, c, h // patch, patch, w // patch, patch)
    return grid.permute(0, 2, 4, 3, 5, 1).reshape(n, (h // patch) * (w // patch), patch * patch * c)


def unpatchify(patches: torch.Tensor, patch: int, channels: int, height: int) -> torch.Tensor:
    """The inverse of :func:`patchify` for images of ``height`` rows."""
    n, length, _ = patches.shape
    rows = height // patch
    cols = length // rows
    grid = patches.reshape(n, rows, cols, patch, patch, channels)
    return grid.permute(0, 5, 1, 3, 2, 4).reshape(n, channels, rows * patch, cols * patch)


@dataclass
class MAEOutput:
    """Loss, per-patch predictions (in target space) and the mask (1 = hidden)."""

    loss: torch.Tensor
    pred: torch.Tensor
    mask: torch.Tensor


class MAE(nn.Module):
    """A DINOv3 encoder over visible patches and a light decoder over all of them."""

    def __init__(self, encoder: Any, channels: int, num_patches: int, cfg: PretrainConfig) -> None:
        super().__init__()
        self.encoder = encoder
        self.cfg = cfg
        self.channels = channels
        self.patch = int(encoder.config.patch_size)
        self.prefix = 1 + int(encoder.config.num_register_tokens)
        width, dim = int(encoder.config.hidden_size), cfg.decoder_dim
        self.decoder_embed = nn.Linear(width, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.decoder_pos = nn.Parameter(torch.zeros(1, num_patches, dim))
        layer = nn.TransformerEncoderLayer(
            dim,
            cfg.decoder_heads,
            4 * dim,
            dropout=0.0,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        self.decoder = nn.TransformerEncoder(layer, cfg.decoder_layers, enable_nested_tensor=False)
        self.decoder_norm = nn.LayerNorm(dim)
        self.decoder_pred = nn.Linear(dim, self.patch * self.patch * channels)
        nn.init.normal_(self.mask_token, std=0.02)
        nn.init.trunc_normal_(self.decoder_pos, std=0.02)

    def forward(self, images: torch.Tensor, generator: torch.Generator | None = None) -> MAEOutput:
        """Hide ``mask_ratio`` of the patches at random (from ``generator``) and reconstruct."""
        rgb = images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images
        enc = self.encoder
        tokens = enc.embeddings(rgb.to(enc.embeddings.patch_embeddings.weight.dtype))
        cos, sin = enc.rope_embeddings(rgb)
        n, total, _ = tokens.shape
        length = total - self.prefix
        keep = max(1, int(round(length * (1 - self.cfg.mask_ratio))))
        noise = torch.rand(n, length, generator=generator, device="cpu").to(images.device)
        shuffle = noise.argsort(dim=1)
        restore = shuffle.argsort(dim=1)
        kept = shuffle[:, :keep]
        patches = tokens[:, self.prefix :]
        visible = patches.gather(1, kept[..., None].expand(-1, -1, patches.shape[-1]))
        hidden = torch.cat([tokens[:, : self.prefix], visible], dim=1)
        angles = (cos[kept][:, None], sin[kept][:, None])  # (N, 1, keep, head_dim): per sample
        for block in enc.model.layer:
            hidden = block(hidden, position_embeddings=angles)
        hidden = enc.norm(hidden)

        decoded = self.decoder_embed(hidden)
        masked = self.mask_token.expand(n, length - keep, -1)
        full = torch.cat([decoded[:, self.prefix :], masked], dim=1)
        full = full.gather(1, restore[..., None].expand(-1, -1, full.shape[-1]))
        full = torch.cat([decoded[:, : self.prefix], full + self.decoder_pos], dim=1)
        pred = self.decoder_pred(self.decoder_norm(self.decoder(full)))[:, self.prefix :]

        target = self.target(images)
        mask = torch.ones(n, length, device=images.device)
        mask[:, :keep] = 0
        mask = mask.gather(1, restore)
        per_patch = ((pred.float() - target) ** 2).mean(dim=-1)
        loss = (per_patch * mask).sum() / mask.sum()
        return MAEOutput(loss, pred, mask)

    def target(self, images: torch.Tensor) -> torch.Tensor:
        """Pixels per patch, normalised per patch when ``norm_pix_loss``."""
        target = patchify(images.float(), self.patch)
        if self.cfg.norm_pix_loss:
            mean = target.mean(dim=-1, keepdim=True)
            var = target.var(dim=-1, keepdim=True)
            target = (target - mean) / (var + 1e-6) ** 0.5
        return target

    def reconstruct(self, images: torch.Tensor, out: MAEOutput) -> torch.Tensor:
        """Images with the hidden patches replaced by the prediction (in pixel space)."""
        pred = out.pred.float()
        if self.cfg.norm_pix_loss:
            raw = patchify(images.float(), self.patch)
            mean = raw.mean(dim=-1, keepdim=True)
            std = (raw.var(dim=-1, keepdim=True) + 1e-6) ** 0.5
            pred = pred * std + mean
        mixed = torch.where(out.mask[..., None].bool(), pred, patchify(images.float(), self.patch))
        return unpatchify(mixed, self.patch, self.channels, images.shape[2])
