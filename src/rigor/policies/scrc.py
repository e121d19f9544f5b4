"""The scrc policy: selective conformal risk control.

SCRC (Xu, Guo and Wei, "Selective Conformal Risk Control", arXiv 2512.12844): two stages.
Stage 1 accepts a sample when its selection score g(x) >= lambda_1; stage 2 runs CRC on the
accepted calibration samples only, so that the risk among accepted samples is at most
alpha. rigor implements the paper's calibration-only variant, SCRC-I (see :func:`scrc_fit`).

A sample is answered when its selection score (the max softmax probability, or the gate's
sigmoid) is at least lambda_1; an answered sample gets the CRC set of lambda_2, fitted on
the accepted val_calib samples; E[FNR | accepted] <= alpha (approximate in finite samples;
docs/selective.md).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from rigor.errors import UsageError
from rigor.metrics.scores import sigmoid, softmax
from rigor.metrics.sets import label_scores, true_label_scores
from rigor.policies.base import (
    ALPHA,
    FITTED,
    GRID,
    NUM,
    PROB,
    PROB_OR_NULL,
    SCRC,
    THRESHOLDS,
    Decisions,
    Policy,
    bound,
    cell,
    common,
    finite_or_none,
    guarantees_of,
    heads,
    infeasible_lambda,
    interval,
    mean_ci,
    ratio_ci,
    record_schema,
    risk_above,
)
from rigor.policies.crc import best_corrected_risk, crc_lambda, fnr_losses, lac_sets

COVERAGE_CURVE = [round(c, 3) for c in np.linspace(0.5, 1.0, 26)]
GUARANTEE = (
    "E[false-negative rate of the set | accepted] <= alpha and P(accepted) >= coverage "
    "for samples exchangeable with val_calib (SCRC-I: approximate in finite samples)"
)


RECORD_SCHEMA = record_schema(
    "scrcparams.schema.json",
    "rigor selective conformal risk control, SCRC-I (calibration/scrcparams.json)",
    {
        "additionalProperties": False,
        "required": [
            "schema_version",
            "variant",
            "task",
            "loss",
            "method",
            "selection_score",
            "coverage",
            "alpha",
            "grid",
            "fitted_on",
            "selection_threshold",
            "n_selected",
            "lambda",
            "best_corrected_risk",
            "assumptions",
            "coverage_curve",
        ],
        "properties": {
            "schema_version": {"const": 1},
            "variant": {"const": "SCRC-I"},
            "task": {"type": "string"},
            "loss": {"const": "fnr"},
            "method": {"const": "lac"},
            "selection_score": {"enum": ["msp", "gate"]},
            "coverage": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
            "alpha": ALPHA,
            "grid": GRID,
            "fitted_on": FITTED,
            "selection_threshold": {
                **PROB,
                "type": ["number", "null"],
                "description": "null: accept every sample",
            },
            "n_selected": {"type": "integer", "minimum": 0},
            "lambda": {**PROB, "type": ["number", "null"], "description": "null: infeasible"},
            "best_corrected_risk": NUM,
            "assumptions": {"type": "string"},
            "coverage_curve": {"type": "array", "items": {"type": "object"}},
        },
    },
)


def selection_threshold(selection: np.ndarray, coverage: float) -> float:
    """lambda_1 of SCRC stage 1: accept when g(x) >= lambda_1.

    With k = floor((n + 1)(1 - coverage)), lambda_1 is the k-th smallest calibration score
    (-inf when k = 0), so that a new exchangeable sample is accepted with probability at
    least ``coverage`` (its rank among n + 1 continuous scores is uniform; ties only add
    acceptances).
    """
    values = np.asarray(selection, dtype=np.float64).ravel()
    if not 0 < coverage <= 1:
        raise ValueError(f"selection coverage must lie in (0, 1], got {coverage}")
    if values.size == 0 or not np.isfinite(values).all():
        raise ValueError("selection scores must be a non-empty array of finite numbers")
    k = math.floor(round((values.size + 1) * (1 - coverage), 9))
    if k < 1:
        return -math.inf
    return float(np.partition(values, k - 1)[k - 1])


def scrc_fit(
    selection: np.ndarray,
    true_scores: np.ndarray,
    lambdas: np.ndarray,
    alpha: float,
    coverage: float,
) -> dict[str, Any]:
    """SCRC-I on calibration samples: lambda_1 from the selection scores, then CRC (FNR loss)
    on the accepted samples.

    Guarantee and assumptions: the calibration and new samples are exchangeable (i.i.d. from
    one distribution). Stage 1 then accepts a new sample with probability >= ``coverage``.
    Given lambda_1, the accepted calibration samples and an accepted new sample are
    exchangeable draws from the distribution conditioned on g(x) >= lambda_1, and CRC gives
    E[FNR | accepted] <= alpha. Because lambda_1 is itself estimated on the same calibration
    samples, this holds exactly in the limit and approximately in finite samples; the paper
    states it as a PAC-style guarantee for SCRC-I and gives SCRC-T (thresholds computed
    jointly with the test samples) for an exact one. rigor does not implement SCRC-T: it
    needs the test batch at calibration time.

    Returns:
        selection_threshold, n_selected, lambda (math.inf when infeasible) and
        best_corrected_risk (what the accepted calibration samples allow at best).
    """
    g = np.asarray(selection, dtype=np.float64).ravel()
    scores = np.asarray(true_scores, dtype=np.float64).ravel()
    if g.shape != scores.shape:
        raise ValueError("selection and true-label scores must have the same length")
    threshold = selection_threshold(g, coverage)
    accepted = g >= threshold
    losses = fnr_losses(scores[accepted], lambdas)
    return {
        "selection_threshold": threshold,
        "n_selected": int(accepted.sum()),
        "lambda": crc_lambda(losses, lambdas, alpha),
        "best_corrected_risk": best_corrected_risk(losses),
    }


def selection_score(name: str, probs: np.ndarray, gate: np.ndarray | None) -> np.ndarray:
    """SCRC stage 1 score: the max softmax probability, or the gate's sigmoid."""
    if name == "gate":
        if gate is None:
            raise UsageError("the SCRC selection score is the gate, but the task has no gate")
        return sigmoid(gate)
    return np.asarray(probs.max(axis=1))


def fit(
    task: str,
    logits: np.ndarray,
    labels: np.ndarray,
    gate: np.ndarray | None,
    options: Any,
    stage_b: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """calibration/scrcparams.json: SCRC-I at the configured coverage and alpha, and on a
    grid of coverages (for eval's FNR-against-coverage plot)."""
    risk = options.risk_control
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
                "selection_threshold": finite_or_none(point["selection_threshold"]),
                "lambda": finite_or_none(point["lambda"]),
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
        "selection_threshold": finite_or_none(fitted["selection_threshold"]),
        "n_selected": fitted["n_selected"],
        "lambda": finite_or_none(fitted["lambda"]),
        "best_corrected_risk": fitted["best_corrected_risk"],
        "assumptions": "val_calib and new samples exchangeable; lambda_1 estimated on the same "
        "samples as lambda_2, so the risk bound is approximate in finite samples (SCRC-I)",
        "coverage_curve": curve,
    }


def build(records: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """lambda_1 and lambda_2 from scrcparams.json (exit 2 when lambda_2 is infeasible)."""
    scrc = records[SCRC]
    if scrc["lambda"] is None:
        hint = (
            f"Stage 1 kept {scrc['n_selected']} val_calib samples; raise "
            "calibration.risk_control.scrc_alpha or scrc_coverage"
        )
        raise infeasible_lambda("scrc", scrc["alpha"], scrc["best_corrected_risk"], hint)
    return common("scrc", GUARANTEE, records[THRESHOLDS], scrc["fitted_on"]) | {
        "method": "lac",
        "alpha": scrc["alpha"],
        "lambda": scrc["lambda"],
        "selection_score": scrc["selection_score"],
        "selection_threshold": scrc["selection_threshold"],
        "coverage": scrc["coverage"],
    }


def apply(
    policy: dict[str, Any], logits: np.ndarray, gate: np.ndarray | None, aux: np.ndarray | None
) -> Decisions:
    """Abstain below the selection threshold; otherwise answer with the CRC set."""
    probs = softmax(logits)
    sets = lac_sets(probs, policy["lambda"])
    selection = selection_score(policy["selection_score"], probs, gate)
    accepted = selection >= bound(policy["selection_threshold"], -math.inf)
    return Decisions(probs.argmax(axis=1), selection, accepted, sets & accepted[:, None])


def report(
    task: str, records: dict[str, Any], outputs: dict[str, Any], labels: np.ndarray, options: Any
) -> dict[str, Any] | None:
    """The share accepted, and the FNR and set size among accepted samples, on val_test."""
    scrc = records.get("scrcparams")
    if scrc is None:
        return None
    decisions = apply({"kind": "scrc", **scrc}, *heads(outputs))
    sets, accepted = decisions.sets, decisions.accepted
    assert sets is not None
    missed = ~sets[np.arange(len(labels)), labels]
    return {
        "variant": scrc["variant"],
        "alpha": scrc["alpha"],
        "target_coverage": scrc["coverage"],
        "selection_threshold": scrc["selection_threshold"],
        "lambda": scrc["lambda"],
        "coverage": mean_ci(accepted, options),
        "fnr_accepted": ratio_ci(accepted & missed, accepted, options),
        "set_size_accepted": ratio_ci(sets.sum(axis=1), accepted, options),
    }


def rows(result: dict[str, Any]) -> list[tuple[str, ...]]:
    """SCRC's row: the share answered, the FNR and set size among them."""
    scrc = guarantees_of(result).get("scrc")
    if scrc is None:
        return []
    name = f"SCRC-I, alpha {scrc['alpha']:g}"
    coverage, fnr = cell(scrc["coverage"]), cell(scrc["fnr_accepted"])
    return [(name, coverage, fnr, cell(scrc["set_size_accepted"]))]


def caveats(result: dict[str, Any]) -> list[str]:
    """The FNR among accepted above alpha, or the share accepted below the target coverage
    (each on val_test, its whole CI)."""
    scrc = guarantees_of(result).get("scrc")
    if scrc is None:
        return []
    label = f"SCRC-I at alpha {scrc['alpha']:g}"
    fix = "SCRC-I is approximate in finite samples; calibrate on more data or lower scrc_alpha"
    out = risk_above(label, scrc["fnr_accepted"], scrc["alpha"], "FNR among accepted", fix)
    coverage, target = scrc["coverage"], scrc["target_coverage"]
    if coverage["ci_upper"] < target:
        out.append(
            f"{label}: val_test accepts {interval(coverage)} of samples, below the target "
            f"coverage {target:g} (the whole CI): check that val_test is exchangeable with "
            "val_calib"
        )
    return out


POLICY = Policy(
    kind="scrc",
    guarantee=GUARANTEE,
    sources=(THRESHOLDS, SCRC),
    schema={
        "required": [
            "method",
            "alpha",
            "lambda",
            "selection_score",
            "selection_threshold",
            "coverage",
        ],
        "properties": {
            "method": {"const": "lac"},
            "alpha": ALPHA,
            "coverage": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
            "lambda": PROB,
            "selection_score": {"enum": ["msp", "gate"]},
            "selection_threshold": PROB_OR_NULL,
        },
    },
    build=build,
    apply=apply,
    rows=rows,
    fit=fit,
    record=SCRC,
    record_schema=RECORD_SCHEMA,
    report=report,
    report_key="scrc",
    caveats=caveats,
)
