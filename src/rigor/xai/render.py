"""Overlay PNGs: input, heat map and overlay side by side; and a grid of all samples."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from rigor.plotting.plots import plt, save


def _image(raw: np.ndarray) -> np.ndarray:
    """(C, H, W) in [0, 1] -> displayable (H, W) or (H, W, 3)."""
    return raw[0] if raw.shape[0] == 1 else np.clip(raw.transpose(1, 2, 0), 0, 1)


def _heat(attribution: np.ndarray) -> np.ndarray:
    heat = np.abs(attribution)
    top = heat.max()
    return heat / top if top > 0 else heat


def _box(ax: Any, mask: np.ndarray | None) -> None:
    if mask is None or not mask.any():
        return
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    from matplotlib.patches import Rectangle

    ax.add_patch(
        Rectangle(
            (cols[0] - 0.5, rows[0] - 0.5),
            cols[-1] - cols[0] + 1,
            rows[-1] - rows[0] + 1,
            fill=False,
            edgecolor="lime",
            linewidth=1.5,
        )
    )


def overlay(
    raw: np.ndarray, attribution: np.ndarray, title: str, mask: np.ndarray | None, path: Path
) -> None:
    """Input | heat map | overlay, with the class or gene and confidence in the title."""
    fig, axes = plt.subplots(1, 3, figsize=(9, 3.4))
    image, heat = _image(raw), _heat(attribution)
    axes[0].imshow(image, cmap="gray", vmin=0, vmax=1)
    axes[0].set_title("input")
    axes[1].imshow(heat, cmap="inferno", vmin=0, vmax=1)
    axes[1].set_title("|attribution|")
    axes[2].imshow(image, cmap="gray", vmin=0, vmax=1)
    axes[2].imshow(heat, cmap="inferno", alpha=0.55, vmin=0, vmax=1)
    axes[2].set_title("overlay")
    for ax in axes:
        ax.axis("off")
        _box(ax, mask)
    fig.suptitle(title, fontsize=10)
    save(fig, path)


def grid(
    raws: np.ndarray, maps: np.ndarray, titles: list[str], masks: np.ndarray | None, path: Path
) -> None:
    """All samples: input above overlay, up to 8 per row."""
    n = len(raws)
    columns = min(n, 8)
    rows = 2 * int(np.ceil(n / columns))
    fig, axes = plt.subplots(rows, columns, figsize=(1.6 * columns, 1.7 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for i in range(n):
        r, c = 2 * (i // columns), i % columns
        image = _image(raws[i])
        axes[r, c].imshow(image, cmap="gray", vmin=0, vmax=1)
        axes[r, c].set_title(titles[i], fontsize=7)
        axes[r + 1, c].imshow(image, cmap="gray", vmin=0, vmax=1)
        axes[r + 1, c].imshow(_heat(maps[i]), cmap="inferno", alpha=0.55, vmin=0, vmax=1)
        _box(axes[r + 1, c], None if masks is None else masks[i])
    save(fig, path)
