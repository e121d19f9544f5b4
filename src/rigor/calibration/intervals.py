"""Split-conformal intervals for regression tasks: a half-width q_hat per task from
val_calib's absolute residuals |y - y_hat|; a new prediction's interval is
[y_hat - q_hat, y_hat + q_hat]. Two ways to take the quantile (``calibration.
interval_method``):

- ``spot``: over the spots, each counted once (:func:`rigor.policies.sets.
  conformal_quantile`). Guarantee: P(y in interval) >= 1 - alpha for a new spot
  exchangeable with val_calib's spots. Spots of one patient are not exchangeable with
  another patient's, so on a new patient it can fall well short.
- ``patient``: over the patients (val_calib's split groups), each weighing the same and
  its spots equally within it, with the new patient's share 1/(G + 1) put at +inf
  (hierarchical conformal prediction: Lee, Barber and Willett, "Distribution-free inference
  with hierarchical data", 2023; Dunn, Wasserman and Ramdas 2022 call the pooled form CDF
  pooling): q_hat is the smallest q with sum_g F_g(q) / (G + 1) >= 1 - alpha, F_g patient
  g's empirical CDF of the residuals. Guarantee: P(y in interval) >= 1 - alpha for a spot
  drawn from a new patient, when patients are exchangeable (drawn from one population)
  and spots within a patient are too. It needs G >= (1 - alpha) / alpha patients (9 at
  alpha 0.1); with fewer, q_hat is infinite.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from rigor.policies.base import finite_or_none
from rigor.policies.sets import conformal_quantile

METHODS = {
    "spot": "split conformal over spots, absolute residual |y - y_hat|",
    "patient": "hierarchical split conformal over patients (each patient weighs the same), "
    "absolute residual |y - y_hat|",
}


def patients_needed(alpha: float) -> int:
    """The fewest calibration patients for which the patient-level q_hat is finite."""
    return math.ceil(round((1 - alpha) / alpha, 9))


def group_quantile(residuals: np.ndarray, groups: np.ndarray, alpha: float) -> float:
    """The patient-level q_hat (module docstring) of ``residuals`` grouped by ``groups``;
    ``math.inf`` when the groups are too few for ``alpha``."""
    values = np.asarray(residuals, dtype=np.float64).ravel()
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha}")
    if values.size == 0 or not np.isfinite(values).all():
        raise ValueError("residuals must be a non-empty array of finite numbers")
    _, inverse, counts = np.unique(np.asarray(groups), return_inverse=True, return_counts=True)
    weights = 1.0 / (counts[inverse] * (len(counts) + 1.0))
    order = np.argsort(values, kind="stable")
    reached = np.cumsum(weights[order]) >= (1 - alpha) - 1e-12
    return float(values[order][np.argmax(reached)]) if reached.any() else math.inf


def regression_intervals(
    predictions: dict[str, np.ndarray],
    targets: dict[str, np.ndarray],
    alpha: float,
    groups: np.ndarray | None = None,
    method: str = "spot",
) -> dict[str, dict[str, Any]]:
    """Per task: q_hat (None when infinite: too few calibration spots or patients for
    alpha) and the number of calibration spots, by ``method`` (``patient`` needs the
    spots' ``groups``)."""
    if method == "patient" and groups is None:
        raise ValueError("patient-level intervals need the calibration spots' groups")
    intervals = {}
    for task, predicted in predictions.items():
        residuals = np.abs(np.asarray(targets[task], np.float64) - predicted.reshape(-1))
        if method == "patient":
            assert groups is not None
            q_hat = group_quantile(residuals, groups, alpha)
        else:
            q_hat = conformal_quantile(residuals, alpha)
        intervals[task] = {"q_hat": finite_or_none(q_hat), "n": residuals.size}
    return intervals
