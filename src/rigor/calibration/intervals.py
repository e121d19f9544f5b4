"""Split-conformal intervals for regression tasks: a half-width per task from val_calib's
absolute residuals (the quantile of :func:`rigor.policies.sets.conformal_quantile`)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from rigor.policies.sets import conformal_quantile


def regression_intervals(
    predictions: dict[str, np.ndarray], targets: dict[str, np.ndarray], alpha: float
) -> dict[str, dict[str, Any]]:
    """Per task: the split-conformal half-width q_hat of the absolute residual |y - y_hat| on
    the calibration split; the interval of a new prediction is [y_hat - q_hat, y_hat + q_hat]."""
    intervals = {}
    for task, predicted in predictions.items():
        residuals = np.abs(np.asarray(targets[task], np.float64) - predicted.reshape(-1))
        q_hat = conformal_quantile(residuals, alpha)
        intervals[task] = {"q_hat": q_hat if math.isfinite(q_hat) else None, "n": residuals.size}
    return intervals
