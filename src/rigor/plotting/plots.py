"""PNG plots of evaluation and calibration results (matplotlib, Agg backend, atomic writes).

Evaluation and calibration figures use fixed margins in inches (:func:`margins`) instead of
``bbox_inches="tight"``, which draws every figure twice: a stage draws each of its plots once
(about 0.1 s each instead of 0.18 s on two cores).
"""

from __future__ import annotations

from pathlib import Path
from typing import IO, Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from rigor.io import atomic_write_with  # noqa: E402
from rigor.metrics.calibration import reliability  # noqa: E402


def save(fig: Any, path: Path, tight: bool = True) -> None:
    """Write a figure atomically and close it; ``tight`` crops to the drawn content (one
    more draw of the figure), else the figure's own margins are kept. PNG compression level
    3 instead of Pillow's 6: zlib took a third of a figure's time; the files are about a
    fifth larger."""

    def write(handle: IO[bytes]) -> None:
        fig.savefig(
            handle,
            format="png",
            dpi=120,
            bbox_inches="tight" if tight else None,
            pil_kwargs={"compress_level": 3},
        )

    atomic_write_with(path, write)
    plt.close(fig)


def margins(
    fig: Any,
    left: float = 0.95,
    right: float = 0.3,
    bottom: float = 0.6,
    top: float = 0.4,
    wspace: float = 0.25,
) -> None:
    """Place the axes with fixed margins in inches (room for tick labels, axis labels and a
    one-line title), so saving needs no measuring draw."""
    width, height = fig.get_size_inches()
    fig.subplots_adjust(
        left=left / width,
        right=1 - right / width,
        bottom=bottom / height,
        top=1 - top / height,
        wspace=wspace,
    )


def _fixed(fig: Any, path: Path, **inches: float) -> None:
    margins(fig, **inches)
    save(fig, path, tight=False)


def _reliability_axes(
    ax: Any, probs: np.ndarray, labels: np.ndarray, title: str, n_bins: int
) -> None:
    table = reliability(probs, labels, n_bins)
    edges = table["edges"]
    centers = (edges[:-1] + edges[1:]) / 2
    filled = table["count"] > 0
    ax.bar(
        centers[filled],
        table["accuracy"][filled],
        width=1 / n_bins,
        edgecolor="black",
        alpha=0.7,
        label="accuracy in bin",
    )
    ax.plot(
        centers[filled],
        table["confidence"][filled],
        "_",
        color="tab:red",
        markersize=14,
        markeredgewidth=2,
        label="mean confidence in bin",
    )
    for x, y, count in zip(
        centers[filled], table["accuracy"][filled], table["count"][filled], strict=True
    ):
        ax.text(x, min(y + 0.02, 0.96), f"{int(count)}", ha="center", fontsize=7)
    ax.plot([0, 1], [0, 1], "--", color="grey", label="perfect calibration")
    ax.set(
        xlim=(0, 1), ylim=(0, 1), xlabel="confidence (top label)", ylabel="accuracy", title=title
    )
    ax.legend(loc="upper left", fontsize=8)


def reliability_before_after(
    before: np.ndarray, after: np.ndarray, labels: np.ndarray, record: dict[str, Any], path: Path
) -> None:
    """Side-by-side reliability diagrams before and after temperature scaling."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.5))
    ece = record["ece"]
    _reliability_axes(
        axes[0], before, labels, f"val_calib, T=1 (ECE {ece['before']['estimate']:.4f})", 15
    )
    _reliability_axes(
        axes[1],
        after,
        labels,
        f"val_calib, T={record['temperature']:.3f} (ECE {ece['after']['estimate']:.4f})",
        15,
    )
    _fixed(fig, path)


def reliability_diagram(
    probs: np.ndarray, labels: np.ndarray, title: str, n_bins: int, path: Path
) -> None:
    """One reliability diagram."""
    fig, ax = plt.subplots(figsize=(5, 4.5))
    _reliability_axes(ax, probs, labels, title, n_bins)
    _fixed(fig, path)


def curve_with_band(
    grid: np.ndarray,
    curves: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]],
    ylabel: str,
    title: str,
    path: Path,
) -> None:
    """Curves over coverage, each with its bootstrap band: name -> (estimate, lower, upper)."""
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for name, (estimate, lower, upper) in curves.items():
        (line,) = ax.plot(grid, estimate, label=name)
        ax.fill_between(grid, lower, upper, color=line.get_color(), alpha=0.2)
    ax.set(xlim=(0, 1), ylim=(0, None), xlabel="coverage", ylabel=ylabel, title=title)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    _fixed(fig, path)


def histogram(
    values: np.ndarray, estimate: float, ci: tuple[float, float], title: str, path: Path
) -> None:
    """Bootstrap distribution with the estimate and the CI marked."""
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.hist(
        values[np.isfinite(values)], bins=40, histtype="stepfilled", color="tab:blue", alpha=0.7
    )
    ax.axvline(estimate, color="black", label=f"estimate {estimate:.4g}")
    for bound in ci:
        ax.axvline(bound, color="tab:red", linestyle="--")
    ax.set(title=title, xlabel="AUGRC", ylabel="resamples")
    ax.legend(fontsize=8)
    _fixed(fig, path)


def confusion(matrix: np.ndarray, classes: list[str], title: str, path: Path) -> None:
    """Confusion matrix with counts in the cells (rows: true class); cells with no sample are
    left blank, so the errors stand out (and a figure of k classes draws far fewer than k^2
    texts)."""
    size = max(4.0, 0.45 * len(classes) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(matrix, cmap="Blues")
    ticks = np.arange(len(classes))
    ax.set(
        xticks=ticks,
        yticks=ticks,
        xticklabels=classes,
        yticklabels=classes,
        xlabel="predicted",
        ylabel="true",
        title=title,
    )
    threshold = matrix.max() / 2 if matrix.size else 0
    for (i, j), count in np.ndenumerate(matrix):
        if count == 0:
            continue
        ax.text(
            j,
            i,
            str(int(count)),
            ha="center",
            va="center",
            fontsize=8,
            color="white" if count > threshold else "black",
        )
    longest = max((len(name) for name in classes), default=1)
    _fixed(fig, path, left=0.6 + 0.08 * longest)


def sets_against_alpha(
    curves: dict[str, list[tuple[float, float, float]]], title: str, path: Path
) -> None:
    """Coverage and mean set size of each set method against alpha (q_hat from val_calib)."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for method, points in curves.items():
        alpha, coverage, size = (np.asarray(v) for v in zip(*points, strict=True))
        left.plot(alpha, coverage, marker=".", label=method)
        right.plot(alpha, size, marker=".", label=method)
    grid = np.asarray([p[0] for p in next(iter(curves.values()))])
    left.plot(grid, 1 - grid, "--", color="grey", label="1 - alpha (guaranteed)")
    left.set(xlabel="alpha", ylabel="coverage", title=f"{title}: coverage")
    right.set(xlabel="alpha", ylabel="mean set size", title=f"{title}: set size")
    left.legend(fontsize=8)
    right.legend(fontsize=8)
    _fixed(fig, path)


def fnr_against_coverage(
    points: list[tuple[float, float, float]], alpha: float, title: str, path: Path
) -> None:
    """SCRC: false-negative rate among accepted samples against the share accepted."""
    fig, ax = plt.subplots(figsize=(5, 4))
    if points:
        _, coverage, fnr = (np.asarray(v) for v in zip(*points, strict=True))
        ax.plot(coverage, fnr, marker=".", label="SCRC-I (lambda from val_calib)")
    ax.axhline(alpha, linestyle="--", color="grey", label=f"alpha = {alpha:g}")
    ax.set(xlabel="coverage (share accepted)", ylabel="FNR among accepted", title=title)
    ax.legend(fontsize=8)
    _fixed(fig, path)
