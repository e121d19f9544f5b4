"""Platt scaling of the SelectiveNet gate: P(Stage A is correct | g) = sigmoid(a * g + b).

Fitted on val_calib against the external label ``is_correct = (Stage A prediction ==
label)``, never against the gate's own output. The fit is the maximum likelihood of the
one-feature logistic model (Platt 1999), with a ridge of 1e-4 on the slope of the
standardised gate that keeps (a, b) finite when the gate separates correct from wrong
samples perfectly. Platt's smoothed targets are not used: on a gate that separates almost
perfectly they flatten the curve (on digits_gate they doubled its Brier score).
"""

from __future__ import annotations

import numpy as np

RIDGE = 1e-4


def check_correct_labels(is_correct: np.ndarray) -> np.ndarray:
    """``is_correct`` as a bool array; ValueError unless every value is 0 or 1."""
    values = np.asarray(is_correct)
    if values.dtype == bool:
        return values
    numeric = values.astype(np.float64)
    if not np.isin(numeric, (0.0, 1.0)).all():
        bad = numeric[~np.isin(numeric, (0.0, 1.0))][0]
        raise ValueError(f"correctness labels must be 0 or 1; found {bad!r}")
    return numeric == 1.0


def fit_platt(gate_logits: np.ndarray, is_correct: np.ndarray) -> tuple[float, float]:
    """(a, b) of sigmoid(a * g + b): L-BFGS on the NLL (g standardised, slope ridge 1e-4).

    Raises:
        ValueError: NaN or infinite gate logits, lengths that differ, labels other than 0/1,
            or fewer than two samples.
    """
    from scipy.optimize import minimize

    g = np.asarray(gate_logits, dtype=np.float64).ravel()
    y = check_correct_labels(is_correct).ravel()
    if g.shape != y.shape or g.size < 2:
        raise ValueError("gate logits and correctness labels need the same length, at least 2")
    if not np.isfinite(g).all():
        raise ValueError("gate logits must be finite (a NaN or infinite value was found)")
    positives, negatives = int(y.sum()), int((~y).sum())
    target = y.astype(np.float64)
    scale = g.std() or 1.0

    def loss(theta: np.ndarray) -> tuple[float, np.ndarray]:
        z = theta[0] * g / scale + theta[1]
        log_p, log_q = -np.logaddexp(0, -z), -np.logaddexp(0, z)
        value = -(target * log_p + (1 - target) * log_q).sum() + 0.5 * RIDGE * theta[0] ** 2
        residual = 1 / (1 + np.exp(-z)) - target
        slope = (residual * g / scale).sum() + RIDGE * theta[0]
        return float(value), np.array([slope, residual.sum()])

    start = np.array([0.0, np.log((positives + 1) / (negatives + 1))])
    result = minimize(loss, start, jac=True, method="L-BFGS-B", options={"gtol": 1e-10})
    return float(result.x[0] / scale), float(result.x[1])
