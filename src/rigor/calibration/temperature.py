"""Temperature scaling: the T > 0 that minimises the NLL of softmax(logits / T).

Plain numpy (calibrate never imports torch): the NLL is convex in beta = 1/T, with
gradient mean(E_p[z] - z_y) and curvature mean(Var_p[z]) under p = softmax(beta * z), so a
safeguarded Newton iteration on beta converges to machine precision in a few steps.
"""

from __future__ import annotations

import math
import sys
from typing import Any

import numpy as np

from rigor.errors import RigorError

# Past this, the optimiser is running off to T -> 0 or T -> infinity.
LOG_T_BOUND = math.log(1e4)


class NoFiniteOptimum(RigorError):
    """The calibration set admits no finite temperature (exit 2: a data problem, not a bug)."""

    exit_code = 2


def _log_softmax(z: np.ndarray) -> np.ndarray:
    shifted = z - z.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def scaled_nll(logits: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    """NLL of softmax(logits / temperature) at the labels (float64)."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    y = np.asarray(labels, dtype=np.int64)
    return float(-_log_softmax(z)[np.arange(len(y)), y].mean())


def _derivatives(z: np.ndarray, z_label: np.ndarray, beta: float) -> tuple[float, float, float]:
    """NLL at beta = 1/T and its first two derivatives in beta."""
    scaled = beta * z
    top = scaled.max(axis=1, keepdims=True)
    weights = np.exp(scaled - top)
    total = weights.sum(axis=1)
    p = weights / total[:, None]
    mean_z = (p * z).sum(axis=1)
    value = float((np.log(total) + top[:, 0] - beta * z_label).mean())
    grad = float((mean_z - z_label).mean())
    curvature = float(((p * z * z).sum(axis=1) - mean_z**2).mean())
    return value, grad, max(curvature, 0.0)


def _newton(z: np.ndarray, z_label: np.ndarray) -> float:
    """The minimising beta: Newton steps, halved until the NLL does not rise, and kept
    positive; stops when the step no longer changes beta or beta leaves [1e-4, 1e4]."""
    beta = 1.0
    value, grad, curvature = _derivatives(z, z_label, beta)
    for _ in range(200):
        step = -grad / curvature if curvature > 1e-300 else -grad
        if beta + step <= 0:
            step = -beta / 2
        for _ in range(60):
            trial = _derivatives(z, z_label, beta + step)
            if trial[0] <= value:
                break
            step /= 2
        if abs(step) <= 1e-15 * beta:
            break
        beta += step
        value, grad, curvature = trial
        if not 1e-4 <= beta <= 1e4:
            break
    return beta


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """Minimise the NLL over beta = 1/T by safeguarded Newton steps to convergence.

    Raises:
        NoFiniteOptimum: when every sample is classified correctly (its label logit strictly
            largest: the NLL keeps falling as T -> 0) or every sample is wrong (the minimiser
            runs off towards T -> infinity), or when T leaves [1e-4, 1e4].
    """
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    if z.ndim != 2 or len(z) != len(y) or len(y) == 0:
        raise ValueError("logits must be (n, K) and labels (n,), n > 0")
    rows = np.arange(len(y))
    label_logit = z[rows, y]
    others = z.copy()
    others[rows, y] = -np.inf
    if bool((label_logit > others.max(axis=1)).all()):
        raise NoFiniteOptimum(
            f"all {len(y)} calibration samples are classified correctly: the NLL keeps falling "
            "as T -> 0, so there is no finite temperature"
        )
    if bool((label_logit < others.max(axis=1)).all()):
        raise NoFiniteOptimum(
            f"all {len(y)} calibration samples are classified wrongly: temperature scaling "
            "cannot calibrate a model that is never right"
        )
    beta = _newton(z, label_logit)
    if not math.isfinite(beta) or beta <= 0 or abs(math.log(beta)) > LOG_T_BOUND:
        raise NoFiniteOptimum(
            f"temperature scaling diverged (T = {1 / beta if beta > 0 else math.inf:.3g}): the "
            "calibration set has no finite optimum"
        )
    return 1.0 / beta


def choose_temperature(
    logits: np.ndarray, labels: np.ndarray, method: str
) -> tuple[float, dict[str, Any]]:
    """The temperature calibrate uses and the record of how it was reached.

    ``method`` "fit" minimises the NLL; when val_calib admits no finite optimum (every sample
    right, or every sample wrong) T = 1 is used, the record says why and a warning is printed,
    so that the policies (most need no temperature at all) are still fitted. "none" skips
    the fit deliberately (T = 1).
    """
    if method == "none":
        return 1.0, {"method": "none", "status": "skipped", "reason": None}
    try:
        return fit_temperature(logits, labels), {
            "method": "fit",
            "status": "fitted",
            "reason": None,
        }
    except NoFiniteOptimum as exc:
        print(f"warning: temperature scaling: {exc}; using T = 1", file=sys.stderr)
        return 1.0, {"method": "fit", "status": "no_finite_optimum", "reason": str(exc)}
