"""Fit the policies beyond the plain threshold on val_calib: each registered policy with a
``fit`` (:mod:`rigor.policies.registry`) writes its record: the Platt-calibrated gate (and
its cascade), split-conformal sets (LAC, APS, RAPS) with CRC, and SCRC.

Every record here is computed before anything is written, so a failure leaves no file.
Set scores use the model's own softmax (T = 1), never the temperature fitted on the same
val_calib: a conformal score must not depend on the calibration samples.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from rigor.calibration.guarantee_schema import validate_record
from rigor.errors import UsageError
from rigor.policies.base import record_name
from rigor.policies.registry import POLICIES


def guarantee_records(
    task: str,
    logits: np.ndarray,
    labels: np.ndarray,
    gate: np.ndarray | None,
    options: Any,
    stage_b: dict[str, Any] | None = None,
) -> dict[str, dict[str, Any]]:
    """platt.json (gated tasks), conformal.json and scrcparams.json, each checked against
    its schema (exit 3 on a violation), keyed by their path in the run folder."""
    risk = options.risk_control
    if risk.scrc_score == "gate" and gate is None:
        raise UsageError(
            f"calibration.risk_control.scrc_score: gate needs a gated task; {task!r} has no gate"
        )
    records: dict[str, dict[str, Any]] = {}
    for policy in POLICIES.values():
        if policy.fit is None or policy.record is None:
            continue
        record = policy.fit(task, logits, labels, gate, options, stage_b)
        if record is not None:
            validate_record(record_name(policy.record), record, policy.record)
            records[policy.record] = record
    return records
