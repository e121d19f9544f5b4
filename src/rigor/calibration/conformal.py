"""Split conformal prediction: the finite-sample quantile and per-task regression intervals.

Guarantee (split conformal, Vovk et al. 2005; Lei et al. 2018): if the calibration scores and
a new sample's score are exchangeable (e.g. val_calib and val_test drawn from the same
distribution, with no sample reused), the new score is at most the quantile below with
probability at least 1 - alpha, averaged over calibration sets (marginal, not conditional
on the sample). With continuous scores the coverage is also at most
1 - alpha + 1/(n + 1).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def conformal_quantile(scores: np.ndarray, alpha: float) -> float:
    """The k-th smallest of the n calibration ``scores`` with k = ceil((n + 1)(1 - alpha)),
    or ``math.inf`` when k > n (too few scores for that alpha).

    Raises:
        ValueError: alpha outside (0, 1), no scores, or a NaN/infinite score.
    """
    values = np.asarray(scores, dtype=np.float64).ravel()
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha}")
    if values.size == 0 or not np.isfinite(values).all():
        raise ValueError("conformal scores must be a non-empty array of finite numbers")
    n = values.size
    # (n + 1)(1 - alpha) in exact rational arithmetic where alpha is a short decimal, so an
    # integer product is not pushed up by floating-point noise (e.g. n = 19, alpha = 0.05).
    k = math.ceil(round((n + 1) * (1 - alpha), 9))
    if k > n:
        return math.inf
    return float(np.partition(values, k - 1)[k - 1])


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
