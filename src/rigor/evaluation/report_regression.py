"""The regression part of the eval stage: Pearson r, MAE and RMSE per task (per gene) and
MAE per group (patient), with row or cluster bootstrap CIs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from rigor.config.models import EvaluationConfig
from rigor.metrics.bootstrap import bootstrap_ci, ci_options, cluster_ci
from rigor.metrics.regression import pearson


def regression_report(
    task: str,
    predicted: np.ndarray,
    targets: np.ndarray,
    groups: np.ndarray | None,
    options: EvaluationConfig,
) -> dict[str, Any]:
    """MAE, RMSE and Pearson per target (mean and median across targets), MAE per group.

    When a group (patient) holds several samples, the CIs resample groups, not samples
    (``ci_unit: group``); otherwise samples (``ci_unit: sample``).
    """
    predicted = np.asarray(predicted, dtype=np.float64).reshape(len(targets), -1)
    targets = np.asarray(targets, dtype=np.float64).reshape(len(targets), -1)
    clustered = groups is not None and len(np.unique(groups)) < len(groups)

    def ci(
        metric: Callable[[np.ndarray, np.ndarray], float], p: np.ndarray, t: np.ndarray
    ) -> dict[str, Any]:
        if clustered:
            return cluster_ci(metric, p, t, groups=groups, **ci_options(options))
        return bootstrap_ci(metric, p, t, **ci_options(options))

    per_target = [
        {
            "mae": ci(_mae, predicted[:, j], targets[:, j]),
            "rmse": ci(_rmse, predicted[:, j], targets[:, j]),
            "pearson": ci(pearson, predicted[:, j], targets[:, j]),
        }
        for j in range(targets.shape[1])
    ]
    result: dict[str, Any] = {
        "kind": "regression",
        "n": int(len(targets)),
        "ci_unit": "group" if clustered else "sample",
        "per_target": per_target,
    }
    for metric in ("mae", "rmse", "pearson"):
        values = np.array([row[metric]["estimate"] for row in per_target])
        result[f"{metric}_mean"], result[f"{metric}_median"] = float(np.nanmean(values)), float(
            np.nanmedian(values)
        )
    if groups is not None:
        errors = np.abs(predicted - targets).mean(axis=1)
        result["mae_per_group"] = {
            str(g): float(errors[groups == g].mean()) for g in np.unique(groups)
        }
    return result


def interval_report(
    predicted: np.ndarray,
    targets: np.ndarray,
    groups: np.ndarray | None,
    intervals: dict[str, Any],
    task: str,
    options: EvaluationConfig,
) -> dict[str, Any]:
    """The split-conformal interval fitted on val_calib (calibration/intervals.json), on
    val_test: its width (2 q_hat) and empirical coverage with a CI (by group when groups
    hold several samples). An infinite q_hat (too few calibration samples for alpha) is
    reported as such, with coverage 1."""
    fitted = intervals["tasks"][task]
    q_hat = np.inf if fitted["q_hat"] is None else float(fitted["q_hat"])
    residual = np.abs(np.asarray(targets, np.float64) - np.asarray(predicted).reshape(-1))
    inside = (residual <= q_hat).astype(np.float64)
    clustered = groups is not None and len(np.unique(groups)) < len(groups)
    ci = (
        cluster_ci(_mean, inside, groups=groups, **ci_options(options))
        if clustered
        else bootstrap_ci(_mean, inside, **ci_options(options))
    )
    return {
        "alpha": intervals["alpha"],
        "target_coverage": 1 - intervals["alpha"],
        "q_hat": fitted["q_hat"],
        "width": None if not np.isfinite(q_hat) else 2 * q_hat,
        "coverage": ci,
        "n_calib": fitted["n"],
    }


def _mean(values: np.ndarray) -> float:
    return float(np.mean(values))


def _mae(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).mean())


def _rmse(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.sqrt(((a - b) ** 2).mean()))


def split_scores(
    predicted: np.ndarray, targets: np.ndarray, labels: np.ndarray
) -> dict[str, dict[str, float | int | None]]:
    """Per sample (slide) or per patient: its spots' count, Pearson's r (null when constant)
    and MAE of the first output, beside the pooled numbers."""
    values = np.asarray(predicted, np.float64).reshape(len(targets), -1)[:, 0]
    truth = np.asarray(targets, np.float64).reshape(len(targets), -1)[:, 0]
    out: dict[str, dict[str, float | int | None]] = {}
    for name in sorted(set(labels.tolist())):
        rows = labels == name
        r = pearson(values[rows], truth[rows]) if rows.sum() > 1 else float("nan")
        out[name] = {
            "n": int(rows.sum()),
            "pearson": r if np.isfinite(r) else None,
            "mae": float(np.abs(values[rows] - truth[rows]).mean()),
        }
    return out
