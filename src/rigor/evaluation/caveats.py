"""What eval and calibrate say when a result should not be trusted as it stands: each
warning names the number behind it and what to do. Written to ``eval/metrics.json``
(``tasks.<task>.warnings``), the stages' summaries on stderr and their manifest entries."""

from __future__ import annotations

from typing import Any

import numpy as np

from rigor.policies.base import interval as ci_text
from rigor.policies.caveats import calib_size_caveats, temperature_caveats
from rigor.policies.registry import POLICIES


def unpredicted_classes(task: str, logits: np.ndarray, labels: np.ndarray) -> list[str]:
    """A head that never predicts some class on val_test."""
    predicted = np.bincount(np.asarray(logits).argmax(axis=1), minlength=logits.shape[1])
    present = np.bincount(labels, minlength=logits.shape[1])
    missing = np.flatnonzero(predicted == 0)
    if missing.size == 0:
        return []
    named = ", ".join(f"{k} ({present[k]} in val_test)" for k in missing[:10].tolist())
    more = f" and {missing.size - 10} more" if missing.size > 10 else ""
    return [
        f"head {task} never predicts class {named}{more} on val_test ({len(labels)} samples): "
        "check the class balance of train and the loss, or train longer"
    ]


def task_caveats(
    task: str,
    result: dict[str, Any],
    logits: np.ndarray,
    labels: np.ndarray,
    thresholds: dict[str, Any] | None,
    records: dict[str, Any],
) -> list[str]:
    """Every warning of one classification task's eval result: the policies' own (a CI
    beyond its nominal value, empty sets), a class never predicted, temperature scaling
    that hurt, and a val_calib too small for what was asked of it."""
    out = unpredicted_classes(task, logits, labels)
    for policy in POLICIES.values():
        out += policy.caveats(result) if policy.caveats else []
    if thresholds is not None and "ece" in thresholds:
        out += temperature_caveats(thresholds)
        conformal = records.get("conformal")
        alpha = conformal["alpha"] if conformal else None
        out += calib_size_caveats(thresholds["fitted_on"]["n"], alpha, thresholds["target_risk"])
    return out


def interval_caveats(task: str, interval: dict[str, Any]) -> list[str]:
    """A regression interval whose val_test coverage lies below 1 - alpha (its whole CI)."""
    coverage, nominal = interval["coverage"], interval["target_coverage"]
    if coverage["ci_upper"] >= nominal:
        return []
    return [
        f"{task} interval at alpha {interval['alpha']:g}: val_test coverage "
        f"{ci_text(coverage)} lies below the nominal {nominal:g} (the whole CI): samples of "
        "one group (patient, slide) are not exchangeable with another's; calibrate on more "
        "groups"
    ]
