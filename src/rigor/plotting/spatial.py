"""Histology figures a pathologist reads: predicted against measured expression of one gene
(a point per spot, coloured by patient, with the identity line), and maps of measured,
predicted and residual expression at the spots' coordinates on one sample's slide.
matplotlib is imported when a figure is drawn (in the plot workers), not with the module."""

from __future__ import annotations

from pathlib import Path

import numpy as np

UNITS = {"log1p": "log1p counts", "raw": "counts", "log1p_normalized": "log1p normalized"}


def unit_of(expression: object) -> str:
    """The axis label of a HEST expression transform (``data.hest.expression``)."""
    return UNITS.get(str(expression), "target units")


def gene_scatter(
    predicted: np.ndarray,
    measured: np.ndarray,
    groups: np.ndarray,
    gene: str,
    title: str,
    unit: str,
    path: Path,
) -> None:
    """Predicted against measured values of ``gene``, one colour per patient (group), with
    the identity line and Pearson's r in the title."""
    from rigor.metrics.regression import pearson
    from rigor.plotting.plots import plt, save

    fig, ax = plt.subplots(figsize=(5.2, 4.6))
    names = sorted(set(groups.tolist()))
    colours = plt.get_cmap("tab20" if len(names) > 10 else "tab10")
    for index, name in enumerate(names):
        chosen = groups == name
        ax.scatter(
            measured[chosen], predicted[chosen], s=8, alpha=0.7,
            color=colours(index % colours.N), label=name,
        )  # fmt: skip
    low = float(min(measured.min(), predicted.min()))
    high = float(max(measured.max(), predicted.max()))
    ax.plot([low, high], [low, high], color="black", linewidth=1, label="identity")
    ax.set_xlabel(f"measured {gene} ({unit})")
    ax.set_ylabel(f"predicted {gene} ({unit})")
    ax.set_title(f"{gene}: {title} (r = {pearson(predicted, measured):.3f}, n = {len(measured)})")
    if len(names) <= 12:
        ax.legend(fontsize=7, title="patient", title_fontsize=7, loc="upper left")
    save(fig, path)


def predicted_map(
    coords: np.ndarray, predicted: np.ndarray, gene: str, sample: str, unit: str, path: Path
) -> None:
    """Predicted ``gene`` at each spot's (x, y) on a new sample's slide (no measurement)."""
    from rigor.plotting.plots import plt, save

    fig, ax = plt.subplots(figsize=(5.6, 4.6))
    size = max(4.0, 4000.0 / max(len(coords), 1))
    shown = ax.scatter(coords[:, 0], coords[:, 1], c=predicted, cmap="viridis", s=size, marker="s")
    fig.colorbar(shown, ax=ax, shrink=0.8, label=unit)
    ax.set_title(f"{sample}: {gene} predicted, {len(coords)} spots", fontsize=10)
    ax.set_xlabel("x (pixels)")
    ax.set_ylabel("y (pixels)")
    ax.set_aspect("equal")
    ax.invert_yaxis()
    save(fig, path)


def spatial_maps(
    coords: np.ndarray,
    measured: np.ndarray,
    predicted: np.ndarray,
    gene: str,
    sample: str,
    split: str,
    unit: str,
    path: Path,
) -> None:
    """Measured, predicted and residual (predicted - measured) ``gene`` at each spot's
    (x, y) on the slide: measured and predicted share one colour scale, the residual a
    diverging one centred on 0; image coordinates (y down)."""
    from rigor.plotting.plots import plt, save

    fig, axes = plt.subplots(1, 3, figsize=(13.5, 4.4), sharex=True, sharey=True)
    low = float(min(measured.min(), predicted.min()))
    high = float(max(measured.max(), predicted.max()))
    residual = predicted - measured
    reach = float(np.abs(residual).max()) or 1.0
    size = max(4.0, 4000.0 / max(len(coords), 1))
    panels = (
        ("measured", measured, "viridis", low, high),
        ("predicted", predicted, "viridis", low, high),
        ("residual (pred. - meas.)", residual, "RdBu_r", -reach, reach),
    )
    for ax, (name, values, cmap, vmin, vmax) in zip(axes, panels, strict=True):
        shown = ax.scatter(
            coords[:, 0], coords[:, 1], c=values, cmap=cmap, vmin=vmin, vmax=vmax,
            s=size, marker="s",
        )  # fmt: skip
        ax.set_title(f"{gene} {name}", fontsize=10)
        ax.set_xlabel("x (pixels)")
        ax.set_aspect("equal")
        fig.colorbar(shown, ax=ax, shrink=0.8, label=unit)
    axes[0].set_ylabel("y (pixels)")
    axes[0].invert_yaxis()
    fig.suptitle(f"{sample} ({split}): {gene}, {len(coords)} spots")
    save(fig, path)
