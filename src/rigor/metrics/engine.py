"""Prepared inputs for the compiled metric kernels, shared by point estimates and bootstrap.

Samples are sorted once by the selective confidence (ties grouped); calibration quantities
are laid out in the same order. :meth:`MetricEngine.run` takes draws (B, d) of sample
indices: the point estimate is the single draw 0..n-1, a bootstrap resample is a row of n
indices drawn with replacement. Small inputs run the numpy twin of the kernels
(:mod:`rigor.metrics.kernels_numpy`, equal bit for bit) and never import numba.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

PROB_FLOOR = 1e-12
SUM_TOLERANCE = 1e-4  # float32 softmax rows sum to 1 within ~1e-6
CALIBRATION = ("ece", "adaptive_ece", "nll", "brier", "accuracy")
# Draws up to this many cells (resamples x n) run in numpy: point estimates of any size and
# bootstrap chunks of 40 resamples of up to 2,500 samples. Larger chunks run the kernels,
# which need no (resamples, n) temporaries.
NUMPY_CELLS = 100_000


def bin_index(confidence: np.ndarray, n_bins: int) -> np.ndarray:
    """Equal-width bin of each confidence: (k/B, (k+1)/B], with 0 in the first bin."""
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    return np.clip(np.searchsorted(edges[1:-1], confidence, side="left"), 0, n_bins - 1)


def check_probs(probs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validate (n, K) probabilities and (n,) integer labels."""
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels).astype(np.int64).ravel()
    if probs.ndim != 2 or len(probs) != len(labels) or len(labels) == 0:
        raise ValueError("probs must be (n, K) and labels (n,), n > 0")
    if labels.min() < 0 or labels.max() >= probs.shape[1]:
        raise ValueError(f"labels must lie in [0, {probs.shape[1] - 1}]")
    if not np.isfinite(probs).all():
        raise ValueError("probs has NaN or infinite values")
    if probs.min() < 0 or probs.max() > 1:
        raise ValueError("probs must lie in [0, 1]")
    sums = probs.sum(axis=1)
    off = np.flatnonzero(np.abs(sums - 1.0) > SUM_TOLERANCE)
    if len(off):
        raise ValueError(
            f"probs rows must sum to 1 (within {SUM_TOLERANCE:g}); {len(off)} do not, first "
            f"row {off[0]} sums to {sums[off[0]]:.6g} (pass softmax outputs, not logits)"
        )
    return probs, labels


def check_correct(correct: np.ndarray) -> np.ndarray:
    """Correctness labels as booleans; NaN or values other than 0/1 (True/False) are refused
    (a NaN would otherwise count as correct)."""
    values = np.asarray(correct).ravel()
    if values.dtype == bool:
        return values
    if not np.issubdtype(values.dtype, np.number):
        raise ValueError(f"correct must be boolean or 0/1, got dtype {values.dtype}")
    bad = np.flatnonzero(~np.isin(values, (0, 1)))
    if len(bad):
        raise ValueError(
            f"correct must be 0/1 (or boolean); {len(bad)} values are not, first at index "
            f"{bad[0]}: {values[bad[0]].item()!r}"
        )
    return values.astype(bool)


def tie_groups(
    confidence: np.ndarray, correct: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Checked (confidence, correct), the stable ascending order of the confidence, and the
    start of each tie group in that order (int64)."""
    confidence = np.asarray(confidence, dtype=np.float64).ravel()
    correct = check_correct(correct)
    if confidence.shape != correct.shape or confidence.size == 0:
        raise ValueError("confidence and correct must be non-empty and of equal length")
    if not np.isfinite(confidence).all():
        raise ValueError("confidence has NaN or infinite values")
    order = np.argsort(confidence, kind="stable")
    ranked = confidence[order]
    starts = np.flatnonzero(np.r_[True, ranked[1:] != ranked[:-1]]).astype(np.int64)
    return confidence, correct, order, starts


@dataclass(frozen=True)
class MetricEngine:
    """Everything the kernels need, in confidence order."""

    position: np.ndarray
    errors: np.ndarray
    starts: np.ndarray
    coverages: np.ndarray
    risks: np.ndarray
    calib: tuple[np.ndarray, ...] | None
    n_bins: int

    @classmethod
    def build(
        cls,
        confidence: np.ndarray | None,
        correct: np.ndarray | None = None,
        probs: np.ndarray | None = None,
        labels: np.ndarray | None = None,
        coverages: Sequence[float] = (),
        risks: Sequence[float] = (),
        n_bins: int = 15,
    ) -> MetricEngine:
        """Prepare selective inputs (confidence, correct), calibration inputs (probs, labels),
        or both; with probs and no confidence, the confidence is the top-label probability."""
        calib_parts = None
        if probs is not None and labels is not None:
            probs, labels = check_probs(probs, labels)
            top = probs.max(axis=1)
            hit = (probs.argmax(axis=1) == labels).astype(np.float64)
            if confidence is None:
                confidence, correct = top, hit
            picked = probs[np.arange(len(labels)), labels]
            calib_parts = (
                bin_index(top, n_bins),
                hit - top,
                -np.log(np.clip(picked, PROB_FLOOR, 1.0)),
                (probs**2).sum(axis=1) - 2 * picked + 1,
                hit,
                top,
            )
        if confidence is None or correct is None:
            raise ValueError("give confidence and correct, or probs and labels")
        confidence, correct, order, starts = tie_groups(confidence, correct)
        position = np.empty(len(order), dtype=np.int64)
        position[order] = np.arange(len(order))
        calib = None
        if calib_parts is not None:
            bins, gap, nll, brier, hit, top = (np.asarray(part)[order] for part in calib_parts)
            conf_order = np.argsort(top, kind="stable").astype(np.int64)
            calib = (bins.astype(np.int64), gap, nll, brier, hit, conf_order)
        return cls(
            position=position,
            errors=(~correct[order]).astype(np.float64),
            starts=starts,
            coverages=np.asarray(coverages, dtype=np.float64),
            risks=np.asarray(risks, dtype=np.float64),
            calib=calib,
            n_bins=n_bins,
        )

    @property
    def n(self) -> int:
        """Number of samples."""
        return len(self.position)

    @property
    def names(self) -> list[str]:
        """Column names of :meth:`run`."""
        names = ["aurc", "augrc"]
        names += [f"risk@{c:g}" for c in self.coverages]
        names += [f"coverage@{r:g}" for r in self.risks]
        return names + (list(CALIBRATION) if self.calib is not None else [])

    def run(self, draws: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Every statistic per row of ``draws`` (default: the whole sample once)."""
        if draws is None:
            draws = np.arange(self.n, dtype=np.int64)[None]
        calib: tuple[np.ndarray, ...]
        if self.calib is None:
            empty_i, empty_f = np.zeros(self.n, np.int64), np.zeros(self.n)
            calib = (empty_i, empty_f, empty_f, empty_f, empty_f, np.arange(self.n, dtype=np.int64))
        else:
            calib = self.calib
        kernel: Any  # a numba dispatcher (typed by its arguments) or its numpy twin
        if draws.shape[0] == 1 or draws.size <= NUMPY_CELLS:
            from rigor.metrics import kernels_numpy as _exact

            kernel = _exact.resample_stats
        else:
            from rigor.metrics import kernels_numba as _kernels

            kernel = _kernels.resample_stats
        out = kernel(
            np.ascontiguousarray(draws),
            self.position,
            self.errors,
            self.starts,
            self.coverages,
            self.risks,
            *calib,
            self.n_bins,
            self.calib is not None,
        )
        return {name: out[:, j] for j, name in enumerate(self.names)}
