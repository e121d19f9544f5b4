"""Build the one active policy of a bundle from what calibrate fitted (calibration/*.json).

``calibration.policy`` (or ``export.py --policy``) names the kind; calibrate refuses a kind
whose fit is infeasible (exit 2, with the best value that was achievable) and export builds
the policy record that predict applies (schema/policy.schema.json).
"""

from __future__ import annotations

from typing import Any

from rigor.calibration.guarantee_schema import validate_record
from rigor.errors import UsageError
from rigor.metrics.sets import variant_name
from rigor.policies.apply import GUARANTEES

THRESHOLDS = "calibration/thresholds.json"
PLATT = "calibration/platt.json"
CONFORMAL = "calibration/conformal.json"
SCRC = "calibration/scrcparams.json"
SOURCES = {
    "threshold": [THRESHOLDS],
    "gate": [THRESHOLDS, PLATT],
    "cascade": [THRESHOLDS, PLATT],
    "sets": [THRESHOLDS, CONFORMAL],
    "crc": [THRESHOLDS, CONFORMAL],
    "scrc": [THRESHOLDS, SCRC],
}


def _common(kind: str, thresholds: dict[str, Any], fitted_on: dict[str, Any]) -> dict[str, Any]:
    return {
        "schema_version": 2,
        "kind": kind,
        "task": thresholds["task"],
        "temperature": thresholds["temperature"],
        "guarantee": GUARANTEES[kind],
        "fitted_on": {"split": "val_calib", "n": int(fitted_on["n"])},
    }


def _platt_policy(kind: str, thresholds: dict[str, Any], platt: dict[str, Any]) -> dict[str, Any]:
    if platt["threshold"] is None:
        raise UsageError(f"policy {kind}: {platt['infeasible']}")
    policy = _common(kind, thresholds, platt["fitted_on"]) | {
        "platt": {"a": platt["a"], "b": platt["b"]},
        "threshold": platt["threshold"],
        "target_risk": platt["target_risk"],
    }
    if kind != "cascade":
        return policy
    stage_b = platt.get("stage_b", {"source": "aux"})
    return policy | {
        "stage_b": "aux" if stage_b["source"] == "aux" else {"run_id": stage_b["run_id"]}
    }


def _sets_policy(thresholds: dict[str, Any], conformal: dict[str, Any]) -> dict[str, Any]:
    fitted = conformal["sets"][variant_name(conformal["method"], conformal["randomized"])]
    if fitted["q_hat"] is None:
        n = fitted["n"]
        raise UsageError(
            f"policy sets: alpha {fitted['alpha']:g} is out of reach with {n} val_calib samples "
            f"(ceil((n + 1)(1 - alpha)) > n); the smallest achievable alpha is "
            f"1/(n + 1) = {1 / (n + 1):.4g}. Raise calibration.conformal.alpha or calibrate on "
            "more samples"
        )
    return (
        _common("sets", thresholds, conformal["fitted_on"])
        | {key: fitted[key] for key in ("method", "randomized", "k_reg", "lam", "seed", "alpha")}
        | {"q_hat": fitted["q_hat"]}
    )


def _infeasible(kind: str, alpha: float, best: float, hint: str) -> UsageError:
    return UsageError(
        f"policy {kind}: no lambda on the grid bounds the false-negative rate at alpha "
        f"{alpha:g}; the best achievable corrected risk is {best:.4g}. {hint}"
    )


def build_policy(kind: str, records: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The policy record of ``kind`` from calibration records keyed by their path.

    Raises:
        UsageError (exit 2): the kind needs a record calibrate did not write (no gate), or
            its fit was infeasible (named, with the best achievable value).
    """
    missing = [rel for rel in SOURCES[kind] if rel not in records]
    if missing:
        raise UsageError(
            f"policy {kind} needs {', '.join(missing)}, which calibrate did not write"
            + (" (the run has no gate: train with model.gate.task)" if PLATT in missing else "")
        )
    thresholds = records[THRESHOLDS]
    if kind == "threshold":
        return thresholds
    if kind in ("gate", "cascade"):
        policy = _platt_policy(kind, thresholds, records[PLATT])
    elif kind == "sets":
        policy = _sets_policy(thresholds, records[CONFORMAL])
    elif kind == "crc":
        crc = records[CONFORMAL]["crc"]
        if crc["lambda"] is None:
            raise _infeasible(
                "crc",
                crc["alpha"],
                crc["best_corrected_risk"],
                "Raise calibration.risk_control.alpha",
            )
        policy = _common("crc", thresholds, records[CONFORMAL]["fitted_on"]) | {
            "method": "lac",
            "alpha": crc["alpha"],
            "lambda": crc["lambda"],
        }
    else:
        policy = _scrc_policy(thresholds, records[SCRC])
    validate_record("policy", policy, f"policy {kind}")
    return policy


def _scrc_policy(thresholds: dict[str, Any], scrc: dict[str, Any]) -> dict[str, Any]:
    if scrc["lambda"] is None:
        raise _infeasible(
            "scrc",
            scrc["alpha"],
            scrc["best_corrected_risk"],
            f"Stage 1 kept {scrc['n_selected']} val_calib samples; raise "
            "calibration.risk_control.scrc_alpha or scrc_coverage",
        )
    return _common("scrc", thresholds, scrc["fitted_on"]) | {
        "method": "lac",
        "alpha": scrc["alpha"],
        "lambda": scrc["lambda"],
        "selection_score": scrc["selection_score"],
        "selection_threshold": scrc["selection_threshold"],
        "coverage": scrc["coverage"],
    }
