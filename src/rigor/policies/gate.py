"""The gate policy: accept when the Platt-calibrated SelectiveNet gate, an estimate of
P(Stage A is correct), is at least a threshold chosen on val_calib by the threshold
policy's selective-risk rule (an empirical target, like ``threshold``).

Platt scaling of the gate: P(Stage A is correct | g) = sigmoid(a * g + b).

Fitted on val_calib against the external label ``is_correct = (Stage A prediction ==
label)``, never against the gate's own output. The fit is the maximum likelihood of the
one-feature logistic model (Platt 1999), with a ridge of 1e-4 on the slope of the
standardised gate that keeps (a, b) finite when the gate separates correct from wrong
samples perfectly. Platt's smoothed targets are not used: on a gate that separates almost
perfectly they flatten the curve (on digits_gate they doubled its Brier score).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from rigor.errors import UsageError
from rigor.metrics.scores import sigmoid, softmax
from rigor.policies import threshold
from rigor.policies.base import (
    ALPHA,
    FITTED,
    NUM,
    PLATT,
    PLATT_PARAMS,
    PROB,
    THRESHOLDS,
    Decisions,
    Policy,
    cell,
    common,
    guarantees_of,
    mean_ci,
    platt_gate,
    ratio_ci,
    record_schema,
    risk_above,
)

STAGE_B_RECORD = {
    "type": "object",
    "required": ["source"],
    "properties": {
        "source": {"enum": ["aux", "run"]},
        "run_id": {"type": "string"},
        "manifest": {"type": "string"},
        "sha256": {"type": "object"},
    },
}

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


RECORD_SCHEMA = record_schema(
    "platt.schema.json",
    "rigor Platt-calibrated gate (calibration/platt.json)",
    {
        "additionalProperties": False,
        "required": [
            "schema_version",
            "task",
            "a",
            "b",
            "label",
            "fitted_on",
            "brier",
            "target_risk",
            "min_coverage",
            "threshold",
            "infeasible",
        ],
        "properties": {
            "schema_version": {"const": 1},
            "task": {"type": "string"},
            "a": NUM,
            "b": NUM,
            "label": {"type": "string"},
            "fitted_on": FITTED,
            "brier": {"type": "object", "required": ["raw_gate", "platt"]},
            "target_risk": ALPHA,
            "min_coverage": PROB,
            "threshold": {"type": ["number", "null"], "minimum": 0, "maximum": 1},
            "infeasible": {"type": ["string", "null"]},
            "stage_b": STAGE_B_RECORD,
        },
    },
)


def fit(
    task: str,
    logits: np.ndarray,
    labels: np.ndarray,
    gate: np.ndarray | None,
    options: Any,
    stage_b: dict[str, Any] | None = None,
) -> dict[str, Any] | None:
    """calibration/platt.json (gated tasks only): (a, b) fitted against is_correct of Stage
    A, and the threshold on the calibrated gate chosen by the selective-risk rule of
    thresholds.json (null with the reason when infeasible)."""
    if gate is None:
        return None
    predicted = np.asarray(logits).argmax(axis=1)
    correct = predicted == labels
    a, b = fit_platt(gate, correct)
    calibrated = sigmoid(a * np.asarray(gate, np.float64) + b)
    table = threshold.sweep(calibrated, predicted, labels, False)
    record: dict[str, Any] = {
        "schema_version": 1,
        "task": task,
        "a": a,
        "b": b,
        "label": "is_correct = (Stage A prediction == label)",
        "fitted_on": {"split": "val_calib", "n": int(len(labels)), "n_correct": int(correct.sum())},
        "brier": {
            "raw_gate": float(((sigmoid(gate) - correct) ** 2).mean()),
            "platt": float(((calibrated - correct) ** 2).mean()),
        },
        "target_risk": options.target_risk,
        "min_coverage": options.min_coverage,
        "threshold": None,
        "infeasible": None,
        "stage_b": stage_b or {"source": "aux"},
    }
    try:
        chosen = threshold.choose(table, options.target_risk, options.min_coverage, None)
    except UsageError as err:  # no feasible threshold: kept as the reason
        record["infeasible"] = str(err)
        return record
    record["threshold"] = float(table.threshold[chosen])
    record["fitted_on"] |= {k: v for k, v in table.row(chosen).items() if k != "threshold"}
    return record


def build_record(kind: str, guarantee: str, records: dict[str, Any]) -> dict[str, Any]:
    """The gate's (or cascade's) policy record from thresholds.json and platt.json."""
    platt = records[PLATT]
    if platt["threshold"] is None:
        raise UsageError(f"policy {kind}: {platt['infeasible']}")
    return common(kind, guarantee, records[THRESHOLDS], platt["fitted_on"]) | {
        "platt": {"a": platt["a"], "b": platt["b"]},
        "threshold": platt["threshold"],
        "target_risk": platt["target_risk"],
    }


def apply(
    policy: dict[str, Any], logits: np.ndarray, gate: np.ndarray | None, aux: np.ndarray | None
) -> Decisions:
    """The argmax class, accepted when the calibrated gate is at least the threshold."""
    confidence = platt_gate(gate, policy)
    predicted = softmax(logits).argmax(axis=1)
    return Decisions(predicted, confidence, confidence >= policy["threshold"])


def report(
    task: str, records: dict[str, Any], outputs: dict[str, Any], labels: np.ndarray, options: Any
) -> dict[str, Any] | None:
    """Platt's (a, b), the Brier scores of the raw and calibrated gate, and the share
    accepted with the selective risk among them on val_test."""
    platt, gate = records.get("platt"), outputs.get("gate")
    if platt is None or gate is None:
        return None
    correct = softmax(outputs["logits"]).argmax(axis=1) == labels
    calibrated = platt_gate(gate, {"task": platt["task"], "platt": platt})
    node: dict[str, Any] = {
        "a": platt["a"],
        "b": platt["b"],
        "threshold": platt["threshold"],
        "brier": {
            "raw_gate": float(((sigmoid(gate) - correct) ** 2).mean()),
            "platt": float(((calibrated - correct) ** 2).mean()),
        },
    }
    if platt["threshold"] is None:
        return node | {"infeasible": platt["infeasible"]}
    accepted = calibrated >= platt["threshold"]
    return node | {
        "coverage": mean_ci(accepted, options),
        "selective_risk": ratio_ci(accepted & ~correct, accepted, options),
        "target_risk": platt["target_risk"],
    }


def rows(result: dict[str, Any]) -> list[tuple[str, ...]]:
    """The gate's row, when its threshold was feasible."""
    gate = guarantees_of(result).get("platt_gate", {})
    if "coverage" not in gate:
        return []
    return [("Platt gate", cell(gate["coverage"]), cell(gate["selective_risk"]), "1")]


def caveats(result: dict[str, Any]) -> list[str]:
    """The gate's selective risk on val_test above its target (its whole CI)."""
    gate = guarantees_of(result).get("platt_gate", {})
    if "selective_risk" not in gate:
        return []
    fix = "raise calibration.target_risk or calibrate on more data"
    risk, target = gate["selective_risk"], gate["target_risk"]
    return risk_above("Platt gate", risk, target, "selective risk", fix)


GUARANTEE = (
    "empirical: Platt-calibrated gate; selective risk <= target_risk on val_calib; no "
    "finite-sample guarantee on new data"
)
POLICY = Policy(
    kind="gate",
    guarantee=GUARANTEE,
    sources=(THRESHOLDS, PLATT),
    schema={
        "required": ["platt", "threshold", "target_risk"],
        "properties": {"platt": PLATT_PARAMS, "threshold": PROB, "target_risk": ALPHA},
    },
    build=lambda records: build_record("gate", GUARANTEE, records),
    apply=apply,
    rows=rows,
    fit=fit,
    record=PLATT,
    record_schema=RECORD_SCHEMA,
    report=report,
    report_key="platt_gate",
    caveats=caveats,
)
