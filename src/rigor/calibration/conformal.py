"""Split conformal prediction: the finite-sample quantile, classification prediction sets
(LAC, APS, RAPS; scores in :mod:`rigor.metrics.sets`) and per-task regression intervals.

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

from rigor.metrics.sets import (
    check_probs,
    label_scores,
    prediction_sets,
    randomization,
    true_label_scores,
)

__all__ = [
    "check_probs",
    "conformal_quantile",
    "fit_set_policy",
    "label_scores",
    "prediction_sets",
    "regression_intervals",
]


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


def fit_set_policy(
    probs: np.ndarray,
    labels: np.ndarray,
    method: str,
    alpha: float,
    *,
    k_reg: int = 1,
    lam: float = 0.0,
    randomized: bool = False,
    seed: int = 0,
) -> dict[str, Any]:
    """q_hat of one set method on calibration ``probs`` and ``labels``.

    Guarantee: for a new sample exchangeable with the calibration samples,
    P(true label in its set) >= 1 - alpha (marginal over calibration sets and the sample).
    The set of a new sample holds every label whose score is at most q_hat. ``q_hat`` is
    None (every label) when k = ceil((n + 1)(1 - alpha)) > n.
    """
    p = check_probs(probs, "calibration probabilities")
    y = np.asarray(labels, dtype=np.int64)
    u = randomization(len(y), seed) if randomized and method != "lac" else None
    scores = label_scores(p, method, k_reg=k_reg, lam=lam, u=u)
    q_hat = conformal_quantile(true_label_scores(scores, y), alpha)
    return {
        "method": method,
        "randomized": bool(randomized and method != "lac"),
        "k_reg": k_reg,
        "lam": lam,
        "alpha": alpha,
        "q_hat": q_hat if math.isfinite(q_hat) else None,
        "n": int(len(y)),
    }
