"""Fit the policies beyond the plain threshold on val_calib: the Platt-calibrated gate (and
its cascade), split-conformal sets (LAC, APS, RAPS), CRC and SCRC.

Every record here is computed before anything is written, so a failure leaves no file.
Set scores use the model's own softmax (T = 1), never the temperature fitted on the same
val_calib: a conformal score must not depend on the calibration samples.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from rigor.calibration.conformal import conformal_quantile, fit_set_policy
from rigor.calibration.platt import fit_platt
from rigor.calibration.policy import choose, sweep
from rigor.calibration.risk_control import (
    best_corrected_risk,
    crc_lambda,
    fnr_losses,
    scrc_fit,
)
from rigor.errors import UsageError
from rigor.metrics.scores import sigmoid, softmax
from rigor.metrics.sets import SET_METHODS, SET_VARIANTS, label_scores, true_label_scores
from rigor.policies.apply import selection_score

ALPHA_CURVE = [round(a, 3) for a in np.linspace(0.01, 0.3, 30)]
COVERAGE_CURVE = [round(c, 3) for c in np.linspace(0.5, 1.0, 26)]


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def fit_platt_gate(
    task: str,
    logits: np.ndarray,
    labels: np.ndarray,
    gate: np.ndarray,
    options: Any,
    stage_b: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """calibration/platt.json: (a, b) fitted against is_correct of Stage A, and the
    threshold on the calibrated gate chosen by the selective-risk rule of thresholds.json
    (null with the reason when infeasible)."""
    predicted = np.asarray(logits).argmax(axis=1)
    correct = predicted == labels
    a, b = fit_platt(gate, correct)
    calibrated = sigmoid(a * np.asarray(gate, np.float64) + b)
    table = sweep(calibrated, predicted, labels, False)
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
        chosen = choose(table, options.target_risk, options.min_coverage, None)
    except Exception as err:  # UsageError: no feasible threshold; kept as the reason
        record["infeasible"] = str(err)
        return record
    record["threshold"] = float(table.threshold[chosen])
    record["fitted_on"] |= {k: v for k, v in table.row(chosen).items() if k != "threshold"}
    return record


def fit_conformal(
    task: str, logits: np.ndarray, labels: np.ndarray, conformal: Any, risk: Any
) -> dict[str, Any]:
    """calibration/conformal.json: q_hat of LAC, APS and RAPS (each non-randomised and
    randomised) at ``conformal.alpha``, of the non-randomised ones on an alpha grid (for
    eval's curves), and the CRC lambda of the LAC set's FNR."""
    probs = softmax(logits)
    sets = {}
    for name, (method, randomized) in SET_VARIANTS.items():
        fitted = fit_set_policy(
            probs,
            labels,
            method,
            conformal.alpha,
            k_reg=conformal.k_reg,
            lam=conformal.lam,
            randomized=randomized,
            seed=conformal.seed,
        )
        sets[name] = fitted | {"seed": conformal.seed}
    curve = []
    for alpha in ALPHA_CURVE:
        row: dict[str, Any] = {"alpha": alpha}
        for method in SET_METHODS:
            scores = label_scores(probs, method, k_reg=conformal.k_reg, lam=conformal.lam)
            row[method] = _finite(conformal_quantile(true_label_scores(scores, labels), alpha))
        curve.append(row)
    grid = np.linspace(0.0, 1.0, risk.grid)
    losses = fnr_losses(true_label_scores(label_scores(probs, "lac"), labels), grid)
    lam = crc_lambda(losses, grid, risk.alpha)
    return {
        "schema_version": 1,
        "task": task,
        "scores_from": "softmax of the logits (T = 1)",
        "fitted_on": {"split": "val_calib", "n": int(len(labels))},
        "alpha": conformal.alpha,
        "method": conformal.method,
        "randomized": conformal.randomized,
        "sets": sets,
        "alpha_curve": curve,
        "crc": {
            "loss": "fnr",
            "method": "lac",
            "alpha": risk.alpha,
            "grid": {"start": 0.0, "stop": 1.0, "points": risk.grid},
            "lambda": _finite(lam),
            "best_corrected_risk": best_corrected_risk(losses),
        },
    }


def fit_scrc(
    task: str, logits: np.ndarray, labels: np.ndarray, gate: np.ndarray | None, risk: Any
) -> dict[str, Any]:
    """calibration/scrcparams.json: SCRC-I at the configured coverage and alpha, and on a
    grid of coverages (for eval's FNR-against-coverage plot)."""
    probs = softmax(logits)
    selection = selection_score(risk.scrc_score, probs, gate)
    true_scores = true_label_scores(label_scores(probs, "lac"), labels)
    grid = np.linspace(0.0, 1.0, risk.grid)
    fitted = scrc_fit(selection, true_scores, grid, risk.scrc_alpha, risk.scrc_coverage)
    curve = []
    for coverage in COVERAGE_CURVE:
        point = scrc_fit(selection, true_scores, grid, risk.scrc_alpha, coverage)
        curve.append(
            {
                "coverage": coverage,
                "selection_threshold": _finite(point["selection_threshold"]),
                "lambda": _finite(point["lambda"]),
            }
        )
    return {
        "schema_version": 1,
        "variant": "SCRC-I",
        "task": task,
        "loss": "fnr",
        "method": "lac",
        "selection_score": risk.scrc_score,
        "coverage": risk.scrc_coverage,
        "alpha": risk.scrc_alpha,
        "grid": {"start": 0.0, "stop": 1.0, "points": risk.grid},
        "fitted_on": {"split": "val_calib", "n": int(len(labels))},
        "selection_threshold": _finite(fitted["selection_threshold"]),
        "n_selected": fitted["n_selected"],
        "lambda": _finite(fitted["lambda"]),
        "best_corrected_risk": fitted["best_corrected_risk"],
        "assumptions": "val_calib and new samples exchangeable; lambda_1 estimated on the same "
        "samples as lambda_2, so the risk bound is approximate in finite samples (SCRC-I)",
        "coverage_curve": curve,
    }


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
    from rigor.calibration.bundle_policy import CONFORMAL, PLATT, SCRC
    from rigor.calibration.guarantee_schema import validate_record

    risk = options.risk_control
    if risk.scrc_score == "gate" and gate is None:
        raise UsageError(
            f"calibration.risk_control.scrc_score: gate needs a gated task; {task!r} has no gate"
        )
    records: dict[str, dict[str, Any]] = {}
    if gate is not None:
        records[PLATT] = fit_platt_gate(task, logits, labels, gate, options, stage_b)
    records[CONFORMAL] = fit_conformal(task, logits, labels, options.conformal, risk)
    records[SCRC] = fit_scrc(task, logits, labels, gate, risk)
    for rel, record in records.items():
        validate_record(rel.split("/")[1].removesuffix(".json"), record, rel)
    return records
