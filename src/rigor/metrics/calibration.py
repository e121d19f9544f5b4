"""Calibration metrics of top-label confidence: ECE, adaptive ECE, NLL, Brier.

Conventions (docs/metrics.md): ``probs`` is (n, K); the confidence of a sample is its largest
probability and it is correct when that class (the first maximum, as ``argmax``) is the
label. ECE uses ``n_bins`` equal-width bins on [0, 1]; every confidence falls in exactly one
bin: the first bin includes 0 and each bin includes its upper edge. Adaptive ECE uses
equal-mass bins: samples sorted by confidence (stable) and cut at ranks floor(j * n / n_bins).
Both are the sum over bins of |sum(correct - confidence)| / n. NLL floors probabilities at
1e-12. Brier is the mean over samples of sum over classes of (p_k - 1[k = label])^2.
"""

from __future__ import annotations

import numpy as np

from rigor.metrics.bootstrap import with_batched
from rigor.metrics.engine import MetricEngine, bin_index, check_probs


def _calibration_b(name: str) -> object:
    def batched(
        draws: np.ndarray | None, probs: np.ndarray, labels: np.ndarray, n_bins: int = 15
    ) -> np.ndarray:
        return MetricEngine.build(None, probs=probs, labels=labels, n_bins=n_bins).run(draws)[name]

    return batched


_ece_b, _aece_b, _nll_b, _brier_b = (
    _calibration_b(n) for n in ("ece", "adaptive_ece", "nll", "brier")
)


@with_batched(_ece_b)  # type: ignore[arg-type]
def ece(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> float:
    """Expected calibration error with equal-width bins of top-label confidence."""
    return float(_ece_b(None, probs, labels, n_bins)[0])  # type: ignore[operator]


@with_batched(_aece_b)  # type: ignore[arg-type]
def adaptive_ece(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> float:
    """Expected calibration error with equal-mass bins of top-label confidence."""
    return float(_aece_b(None, probs, labels, n_bins)[0])  # type: ignore[operator]


@with_batched(_nll_b)  # type: ignore[arg-type]
def nll(probs: np.ndarray, labels: np.ndarray) -> float:
    """Mean negative log-likelihood of the labels (probabilities floored at 1e-12)."""
    return float(_nll_b(None, probs, labels)[0])  # type: ignore[operator]


@with_batched(_brier_b)  # type: ignore[arg-type]
def brier(probs: np.ndarray, labels: np.ndarray) -> float:
    """Mean over samples of the squared distance to the one-hot label, summed over classes."""
    return float(_brier_b(None, probs, labels)[0])  # type: ignore[operator]


def reliability(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> dict[str, np.ndarray]:
    """Per equal-width bin: count, mean confidence and accuracy (for reliability diagrams)."""
    probs, labels = check_probs(probs, labels)
    confidence = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == labels).astype(np.float64)
    bins = bin_index(confidence, n_bins)
    count = np.bincount(bins, minlength=n_bins).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        conf = np.bincount(bins, confidence, minlength=n_bins) / count
        acc = np.bincount(bins, correct, minlength=n_bins) / count
    return {
        "count": count,
        "confidence": conf,
        "accuracy": acc,
        "edges": np.linspace(0, 1, n_bins + 1),
    }
