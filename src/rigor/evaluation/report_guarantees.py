"""The abstention policies of calibrate applied unchanged to val_test, side by side: each
registered policy's report (:mod:`rigor.policies.registry`): the Platt gate, the Stage A/B
cascade, LAC/APS/RAPS sets, CRC and SCRC, each with bootstrap CIs (the plain threshold is
``policy`` in the classification report). Fits nothing: every q_hat, lambda and threshold
comes from calibration/."""

from __future__ import annotations

from typing import Any

import numpy as np

from rigor.config.models import EvaluationConfig
from rigor.metrics.scores import softmax
from rigor.plotting import figures
from rigor.plotting.pool import draw
from rigor.policies.base import heads
from rigor.policies.registry import POLICIES
from rigor.stages import RunContext


def guarantees_report(
    task: str,
    records: dict[str, Any],
    outputs: dict[str, Any],
    labels: np.ndarray,
    options: EvaluationConfig,
) -> dict[str, Any]:
    """Each fitted policy of ``records`` (platt, conformal, scrcparams) on val_test."""
    report: dict[str, Any] = {}
    for policy in POLICIES.values():
        node = policy.report(task, records, outputs, labels, options) if policy.report else None
        if node is not None:
            report[policy.report_key] = node
    return report


def guarantees_figures(
    ctx: RunContext, task: str, records: dict[str, Any], outputs: dict[str, Any], labels: np.ndarray
) -> list[str]:
    """Send the plots of set size and coverage against alpha, and of FNR against coverage,
    to the plot workers; returns their paths."""
    files = []
    conformal = records.get("conformal")
    if conformal is not None:
        files.append(f"eval/{task}_sets_vs_alpha.png")
        probs = softmax(outputs["logits"])
        path = ctx.path(files[-1])
        draw(figures.sets_against_alpha, conformal, probs, labels, f"{task}: val_test", path)
    scrc = records.get("scrcparams")
    if scrc is not None:
        files.append(f"eval/{task}_fnr_vs_coverage.png")
        path = ctx.path(files[-1])
        draw(figures.fnr_against_coverage, scrc, heads(outputs), labels, f"{task}: val_test", path)
    return files


def policy_table(result: dict[str, Any]) -> str:
    """Markdown: every policy of one task side by side on val_test (estimate [CI]): the
    share answered, the error (selective risk, FNR or miscoverage) and the set size."""
    rows: list[tuple[str, ...]] = [
        ("policy", "answered", "error among answered", "set size"),
        ("---",) * 4,
    ]
    for policy in POLICIES.values():
        rows += policy.rows(result)
    return "".join("| " + " | ".join(row) + " |\n" for row in rows)
