"""JSON Schemas of calibration/platt.json, calibration/conformal.json,
calibration/scrcparams.json and of a bundle's policy.json (emitted under schema/)."""

from __future__ import annotations

import json
from typing import Any

from jsonschema import Draft202012Validator

from rigor.manifest import check_schema

_NUM = {"type": "number"}
_NUM_OR_NULL = {"type": ["number", "null"]}
_PROB = {"type": "number", "minimum": 0, "maximum": 1}
_ALPHA = {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1}
_FITTED = {
    "type": "object",
    "required": ["split", "n"],
    "properties": {"split": {"const": "val_calib"}, "n": {"type": "integer", "minimum": 1}},
}
_GRID = {
    "type": "object",
    "additionalProperties": False,
    "required": ["start", "stop", "points"],
    "properties": {"start": _NUM, "stop": _NUM, "points": {"type": "integer", "minimum": 2}},
}
_STAGE_B_RECORD = {
    "type": "object",
    "required": ["source"],
    "properties": {
        "source": {"enum": ["aux", "run"]},
        "run_id": {"type": "string"},
        "manifest": {"type": "string"},
        "sha256": {"type": "object"},
    },
}
_SET = {
    "type": "object",
    "additionalProperties": False,
    "required": ["method", "randomized", "k_reg", "lam", "alpha", "q_hat", "n", "seed"],
    "properties": {
        "method": {"enum": ["lac", "aps", "raps"]},
        "randomized": {"type": "boolean"},
        "k_reg": {"type": "integer", "minimum": 0},
        "lam": {"type": "number", "minimum": 0},
        "alpha": _ALPHA,
        "q_hat": {**_NUM_OR_NULL, "minimum": 0, "description": "null: +inf (k > n), every label"},
        "n": {"type": "integer", "minimum": 1},
        "seed": {"type": "integer", "minimum": 0},
    },
}


def _schema(name: str, title: str, body: dict[str, Any]) -> dict[str, Any]:
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"https://rigor.local/schema/{name}",
        "title": title,
        "type": "object",
        **body,
    }


PLATT_SCHEMA = _schema(
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
            "a": _NUM,
            "b": _NUM,
            "label": {"type": "string"},
            "fitted_on": _FITTED,
            "brier": {"type": "object", "required": ["raw_gate", "platt"]},
            "target_risk": _ALPHA,
            "min_coverage": _PROB,
            "threshold": {"type": ["number", "null"], "minimum": 0, "maximum": 1},
            "infeasible": {"type": ["string", "null"]},
            "stage_b": _STAGE_B_RECORD,
        },
    },
)

CONFORMAL_SCHEMA = _schema(
    "conformal.schema.json",
    "rigor split-conformal sets and CRC (calibration/conformal.json)",
    {
        "additionalProperties": False,
        "required": [
            "schema_version",
            "task",
            "scores_from",
            "fitted_on",
            "alpha",
            "method",
            "randomized",
            "sets",
            "alpha_curve",
            "crc",
        ],
        "properties": {
            "schema_version": {"const": 1},
            "task": {"type": "string"},
            "scores_from": {"type": "string"},
            "fitted_on": _FITTED,
            "alpha": _ALPHA,
            "method": {"enum": ["lac", "aps", "raps"]},
            "randomized": {"type": "boolean"},
            "sets": {
                "type": "object",
                "required": ["lac", "aps", "aps_randomized", "raps", "raps_randomized"],
                "additionalProperties": _SET,
            },
            "alpha_curve": {"type": "array", "items": {"type": "object", "required": ["alpha"]}},
            "crc": {
                "type": "object",
                "additionalProperties": False,
                "required": ["loss", "method", "alpha", "grid", "lambda", "best_corrected_risk"],
                "properties": {
                    "loss": {"const": "fnr"},
                    "method": {"const": "lac"},
                    "alpha": _ALPHA,
                    "grid": _GRID,
                    "lambda": {**_PROB, "type": ["number", "null"]},
                    "best_corrected_risk": _NUM,
                },
            },
        },
    },
)

SCRC_SCHEMA = _schema(
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
            "alpha": _ALPHA,
            "grid": _GRID,
            "fitted_on": _FITTED,
            "selection_threshold": {
                **_PROB,
                "type": ["number", "null"],
                "description": "null: accept every sample",
            },
            "n_selected": {"type": "integer", "minimum": 0},
            "lambda": {**_PROB, "type": ["number", "null"], "description": "null: infeasible"},
            "best_corrected_risk": _NUM,
            "assumptions": {"type": "string"},
            "coverage_curve": {"type": "array", "items": {"type": "object"}},
        },
    },
)

_STAGE_B_POLICY = {
    "description": "aux: the auxiliary head; otherwise the run whose bundle predict takes "
    "with --stage-b",
    "oneOf": [
        {"const": "aux"},
        {"type": "object", "required": ["run_id"], "properties": {"run_id": {"type": "string"}}},
    ],
}
_COMMON = ["schema_version", "kind", "task", "temperature", "guarantee", "fitted_on"]
_PLATT = {"type": "object", "required": ["a", "b"], "properties": {"a": _NUM, "b": _NUM}}
_PROB_OR_NULL = {**_PROB, "type": ["number", "null"]}
_KINDS: dict[str, dict[str, Any]] = {
    "threshold": {
        "required": ["score", "threshold", "target_risk"],
        "properties": {
            "score": {"enum": ["msp_temperature", "gate"]},
            "threshold": _PROB,
            "target_risk": _ALPHA,
        },
    },
    "gate": {
        "required": ["platt", "threshold", "target_risk"],
        "properties": {"platt": _PLATT, "threshold": _PROB, "target_risk": _ALPHA},
    },
    "cascade": {
        "required": ["platt", "threshold", "stage_b"],
        "properties": {"platt": _PLATT, "threshold": _PROB, "stage_b": _STAGE_B_POLICY},
    },
    "sets": {
        "required": ["method", "randomized", "k_reg", "lam", "seed", "alpha", "q_hat"],
        "properties": {
            "method": {"enum": ["lac", "aps", "raps"]},
            "alpha": _ALPHA,
            "q_hat": {"type": "number", "minimum": 0},
        },
    },
    "crc": {
        "required": ["method", "alpha", "lambda"],
        "properties": {"method": {"const": "lac"}, "alpha": _ALPHA, "lambda": _PROB},
    },
    "scrc": {
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
            "alpha": _ALPHA,
            "coverage": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
            "lambda": _PROB,
            "selection_score": {"enum": ["msp", "gate"]},
            "selection_threshold": _PROB_OR_NULL,
        },
    },
}

POLICY_SCHEMA = _schema(
    "policy.schema.json",
    "rigor bundle policy (bundle/policy.json): exactly one kind, ready to apply",
    {
        "required": _COMMON,
        "properties": {
            "schema_version": {"const": 2},
            "kind": {"enum": list(_KINDS)},
            "task": {"type": "string"},
            "temperature": {"type": "number", "exclusiveMinimum": 0},
            "guarantee": {"type": "string"},
            "fitted_on": _FITTED,
        },
        "allOf": [
            {
                "if": {"properties": {"kind": {"const": kind}}},
                "then": {"required": body["required"], "properties": body["properties"]},
            }
            for kind, body in _KINDS.items()
        ],
    },
)

INTERVALS_SCHEMA = _schema(
    "intervals.schema.json",
    "rigor regression intervals (calibration/intervals.json, bundle/intervals.json)",
    {
        "additionalProperties": False,
        "required": ["schema_version", "method", "alpha", "fitted_on", "tasks"],
        "properties": {
            "schema_version": {"const": 1},
            "method": {"type": "string"},
            "alpha": _ALPHA,
            "fitted_on": _FITTED,
            "tasks": {
                "type": "object",
                "minProperties": 1,
                "additionalProperties": {
                    "type": "object",
                    "required": ["q_hat", "n"],
                    "properties": {
                        "q_hat": {
                            **_NUM_OR_NULL,
                            "minimum": 0,
                            "description": "the interval's half-width; null: unbounded (too "
                            "few val_calib samples for alpha)",
                        },
                        "n": {"type": "integer", "minimum": 1},
                    },
                },
            },
        },
    },
)

SCHEMAS = {
    "platt": PLATT_SCHEMA,
    "conformal": CONFORMAL_SCHEMA,
    "scrcparams": SCRC_SCHEMA,
    "policy": POLICY_SCHEMA,
    "intervals": INTERVALS_SCHEMA,
}
_VALIDATORS = {name: Draft202012Validator(schema) for name, schema in SCHEMAS.items()}


def validate_record(name: str, record: Any, label: str) -> None:
    """Raise ManifestError (exit 3) with the JSON path of the first violation of schema
    ``name`` (platt, conformal, scrcparams, policy or intervals)."""
    check_schema(_VALIDATORS[name], record, label)


def render(name: str) -> str:
    """The committed text of schema/<name>.schema.json."""
    return json.dumps(SCHEMAS[name], indent=2, sort_keys=True) + "\n"
