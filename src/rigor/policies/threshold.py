"""The threshold policy: accept when the calibrated confidence (temperature-scaled max
softmax probability, or the gate's sigmoid) is at least a threshold chosen on val_calib.

Candidates are all distinct calibrated confidences (never a fixed grid). The chosen threshold
gives the largest coverage whose selective risk is <= the target and whose coverage is >= the
minimum (and, for binary tasks when asked, whose false-negative rate among accepted samples is
<= its target). Ties at that coverage go to the lower risk.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from rigor.errors import UsageError
from rigor.metrics.scores import policy_confidence, softmax
from rigor.policies.base import ALPHA, PROB, THRESHOLDS, Decisions, Policy, cell, risk_above

POSITIVE = 1  # binary tasks: class 1 is the positive class


@dataclass(frozen=True)
class Sweep:
    """One row per candidate threshold (ascending), as arrays."""

    threshold: np.ndarray
    coverage: np.ndarray
    risk: np.ndarray
    accepted: np.ndarray
    errors: np.ndarray
    fnr: np.ndarray | None

    def row(self, index: int) -> dict[str, Any]:
        """One candidate as plain numbers."""
        out = {
            "threshold": float(self.threshold[index]),
            "coverage": float(self.coverage[index]),
            "selective_risk": float(self.risk[index]),
            "accepted": int(self.accepted[index]),
            "errors": int(self.errors[index]),
        }
        if self.fnr is not None:
            out["fnr"] = float(self.fnr[index])
        return out

    def table(self) -> list[dict[str, Any]]:
        """Every candidate."""
        return [self.row(i) for i in range(len(self.threshold))]


def _suffix(values: np.ndarray, starts: np.ndarray) -> np.ndarray:
    grouped = np.add.reduceat(values.astype(np.float64), starts)
    return np.cumsum(grouped[::-1])[::-1]


def sweep(confidence: np.ndarray, predicted: np.ndarray, labels: np.ndarray, binary: bool) -> Sweep:
    """Coverage, selective risk (and FNR among accepted for binary tasks) per distinct threshold."""
    order = np.argsort(confidence, kind="stable")
    ranked = confidence[order]
    starts = np.flatnonzero(np.r_[True, ranked[1:] != ranked[:-1]])
    wrong = (predicted != labels)[order]
    accepted = _suffix(np.ones(len(order)), starts)
    errors = _suffix(wrong, starts)
    fnr = None
    if binary:
        positives = _suffix((labels == POSITIVE)[order], starts)
        missed = _suffix(((labels == POSITIVE) & (predicted != POSITIVE))[order], starts)
        fnr = np.divide(missed, positives, out=np.zeros_like(missed), where=positives > 0)
    return Sweep(ranked[starts], accepted / len(order), errors / accepted, accepted, errors, fnr)


def choose(s: Sweep, target_risk: float, min_coverage: float, fnr_target: float | None) -> int:
    """Index of the chosen threshold; UsageError (exit 2) when no candidate is feasible."""
    feasible = (s.risk <= target_risk) & (s.coverage >= min_coverage)
    if fnr_target is not None:
        if s.fnr is None:
            raise UsageError("calibration.fnr_target applies to binary tasks only")
        feasible &= s.fnr <= fnr_target
    if not feasible.any():
        at_min = s.coverage >= min_coverage
        best = float(s.risk[at_min].min()) if at_min.any() else float("nan")
        raise UsageError(
            f"no threshold on val_calib meets selective risk <= {target_risk:g} with coverage >= "
            f"{min_coverage:g}"
            + (f" and FNR <= {fnr_target:g}" if fnr_target is not None else "")
            + f"; the lowest risk at that coverage is {best:.4g}. Raise calibration.target_risk "
            "or lower calibration.min_coverage; no default threshold is used"
        )
    candidates = np.flatnonzero(feasible)
    best_coverage = s.coverage[candidates].max()
    top = candidates[s.coverage[candidates] == best_coverage]
    return int(top[np.argmin(s.risk[top])])


def apply(
    policy: dict[str, Any], logits: np.ndarray, gate: np.ndarray | None, aux: np.ndarray | None
) -> Decisions:
    """The argmax class, accepted when the policy's confidence is at least its threshold."""
    predicted = softmax(logits).argmax(axis=1)
    confidence = policy_confidence(logits, gate, policy)
    return Decisions(predicted, confidence, confidence >= policy["threshold"])


def rows(result: dict[str, Any]) -> list[tuple[str, ...]]:
    """The plain threshold's row: eval's ``policy`` section."""
    if "policy" not in result:
        return []
    plain = result["policy"]
    return [("threshold", cell(plain["coverage"]), cell(plain["selective_risk"]), "1")]


def caveats(result: dict[str, Any]) -> list[str]:
    """The selective risk on val_test above the target (its whole CI)."""
    if "policy" not in result:
        return []
    plain = result["policy"]
    fix = (
        "the target holds on val_calib only; raise calibration.target_risk or calibrate on "
        "more data"
    )
    risk, target = plain["selective_risk"], plain["target_risk"]
    return risk_above("threshold", risk, target, "selective risk", fix)


POLICY = Policy(
    kind="threshold",
    guarantee="empirical: selective risk <= target_risk on val_calib; no finite-sample "
    "guarantee on new data",
    sources=(THRESHOLDS,),
    schema={
        "required": ["score", "threshold", "target_risk"],
        "properties": {
            "score": {"enum": ["msp_temperature", "gate"]},
            "threshold": PROB,
            "target_risk": ALPHA,
        },
    },
    build=lambda records: records[THRESHOLDS],  # thresholds.json is the policy record
    apply=apply,
    rows=rows,
    caveats=caveats,
)
