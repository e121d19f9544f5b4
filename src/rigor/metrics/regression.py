"""Regression metrics shared by training (per epoch) and the eval stage (with CIs)."""

from __future__ import annotations

import numpy as np


def pearson(predicted: np.ndarray, target: np.ndarray) -> float:
    """Pearson's r of two vectors, in float64; NaN when either is constant."""
    a = np.asarray(predicted, dtype=np.float64)
    b = np.asarray(target, dtype=np.float64)
    a, b = a - a.mean(), b - b.mean()
    denominator = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / denominator) if denominator > 0 else float("nan")
