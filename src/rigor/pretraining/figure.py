"""The MAE run's figure: originals, visible patches and reconstructions of val_select."""

from __future__ import annotations

from pathlib import Path

import torch

from rigor.pretraining.mae import MAE
from rigor.training.prepare import Prepared


@torch.no_grad()
def save_figure(path: Path, prepared: Prepared, mae: MAE, n: int = 8) -> None:
    """Originals, masked inputs and reconstructions of the first val_select images."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from rigor.io import atomic_write_with
    from rigor.pretraining.mae import patchify, unpatchify

    mae.eval()
    rows = prepared.splits["val_select"][:n]
    images = prepared.eval_pipeline(prepared.dataset.stack(rows), prepared.device)
    out = mae(images, torch.Generator().manual_seed(prepared.resolved.config.run.seed + 1))
    recon = mae.reconstruct(images, out).cpu()
    patches = patchify(images.float().cpu(), mae.patch)
    masked = unpatchify(
        patches * (1 - out.mask.cpu())[..., None], mae.patch, mae.channels, images.shape[2]
    )
    fig, axes = plt.subplots(3, len(rows), figsize=(1.4 * len(rows), 4.4), squeeze=False)
    for col in range(len(rows)):
        for row, (title, batch) in enumerate(
            (("input", images.cpu()), ("visible", masked), ("reconstruction", recon))
        ):
            picture = batch[col].float().permute(1, 2, 0).numpy()
            low, high = float(images[col].min()), float(images[col].max())
            picture = ((picture - low) / max(high - low, 1e-6)).clip(0, 1)  # the input's range
            ax = axes[row][col]
            ax.imshow(picture[..., 0] if picture.shape[-1] == 1 else picture, cmap="gray")
            ax.set_xticks([])
            ax.set_yticks([])
            if col == 0:
                ax.set_ylabel(title, fontsize=8)
    fig.tight_layout()
    atomic_write_with(path, lambda handle: fig.savefig(handle, format="png", dpi=100))
    plt.close(fig)
