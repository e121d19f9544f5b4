"""MCC and macro-F1 from confusion matrices, with batched forms for the bootstrap."""

from __future__ import annotations

import numpy as np

from rigor.metrics.bootstrap import with_batched


def confusions(
    draws: np.ndarray | None, predicted: np.ndarray, labels: np.ndarray, k: int
) -> np.ndarray:
    """(B, k, k) confusion counts (rows: true class) of each row of draws (None: all once)."""
    codes = np.asarray(labels).astype(np.int64) * k + np.asarray(predicted).astype(np.int64)
    if draws is None:
        return np.bincount(codes, minlength=k * k).reshape(1, k, k)
    return np.stack([np.bincount(codes[row], minlength=k * k) for row in draws]).reshape(-1, k, k)


def _classes(predicted: np.ndarray, labels: np.ndarray) -> int:
    return int(max(np.max(predicted), np.max(labels))) + 1


def mcc_from(c: np.ndarray) -> np.ndarray:
    """Multi-class Matthews correlation (Gorodkin's R_K) of (B, k, k) confusions.

    0 when undefined (a constant prediction or label), as scikit-learn does.
    """
    c = c.astype(np.float64)
    true, pred = c.sum(axis=2), c.sum(axis=1)
    s = c.sum(axis=(1, 2))
    hits = np.trace(c, axis1=1, axis2=2)
    cov = hits * s - (pred * true).sum(axis=1)
    denom = np.sqrt((s**2 - (pred**2).sum(axis=1)) * (s**2 - (true**2).sum(axis=1)))
    return np.divide(cov, denom, out=np.zeros_like(cov), where=denom > 0)


def macro_f1_from(c: np.ndarray) -> np.ndarray:
    """Mean F1 over the classes present in the labels or predictions of each row."""
    c = c.astype(np.float64)
    tp = np.diagonal(c, axis1=1, axis2=2)
    support = c.sum(axis=2) + c.sum(axis=1)
    f1 = np.divide(2 * tp, support, out=np.zeros_like(tp), where=support > 0)
    present = support > 0
    return (f1 * present).sum(axis=1) / np.maximum(present.sum(axis=1), 1)


def _mcc_b(draws: np.ndarray, predicted: np.ndarray, labels: np.ndarray) -> np.ndarray:
    return mcc_from(confusions(draws, predicted, labels, _classes(predicted, labels)))


def _f1_b(draws: np.ndarray, predicted: np.ndarray, labels: np.ndarray) -> np.ndarray:
    return macro_f1_from(confusions(draws, predicted, labels, _classes(predicted, labels)))


@with_batched(_mcc_b)
def mcc(predicted: np.ndarray, labels: np.ndarray) -> float:
    """Matthews correlation coefficient (multi-class)."""
    return float(_mcc_b(None, predicted, labels)[0])  # type: ignore[arg-type]


@with_batched(_f1_b)
def macro_f1(predicted: np.ndarray, labels: np.ndarray) -> float:
    """Unweighted mean of per-class F1."""
    return float(_f1_b(None, predicted, labels)[0])  # type: ignore[arg-type]
