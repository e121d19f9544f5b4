"""JSON Schema of calibration/thresholds.json (emitted to schema/thresholds.schema.json)."""

from __future__ import annotations

import json
from typing import Any

from jsonschema import Draft202012Validator

from rigor.manifest import check_schema

_NUM = {"type": "number"}
_CI = {
    "type": "object",
    "required": ["estimate", "mean", "std", "ci_lower", "ci_upper", "level", "n_resamples"],
}

THRESHOLDS_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": "https://rigor.local/schema/thresholds.schema.json",
    "title": "rigor selective threshold policy",
    "type": "object",
    "additionalProperties": False,
    "required": [
        "schema_version",
        "task",
        "score",
        "temperature",
        "threshold",
        "target_risk",
        "min_coverage",
        "fnr_target",
        "fitted_on",
        "nll",
        "ece",
        "sweep",
    ],
    "properties": {
        "schema_version": {"const": 1},
        "task": {"type": "string"},
        "score": {"enum": ["msp_temperature", "gate"]},
        "temperature": {"type": "number", "exclusiveMinimum": 0},
        "temperature_fit": {
            "type": "object",
            "additionalProperties": False,
            "required": ["method", "status", "reason"],
            "properties": {
                "method": {"enum": ["fit", "none"]},
                "status": {"enum": ["fitted", "no_finite_optimum", "skipped"]},
                "reason": {"type": ["string", "null"]},
            },
        },
        "threshold": {"type": "number", "minimum": 0, "maximum": 1},
        "target_risk": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
        "min_coverage": {"type": "number", "minimum": 0, "maximum": 1},
        "fnr_target": {"type": ["number", "null"]},
        "fitted_on": {
            "type": "object",
            "required": ["split", "n", "threshold", "coverage", "selective_risk"],
            "properties": {"split": {"const": "val_calib"}, "n": {"type": "integer", "minimum": 1}},
        },
        "nll": {
            "type": "object",
            "required": ["before", "after"],
            "properties": {"before": _NUM, "after": _NUM},
        },
        "ece": {
            "type": "object",
            "required": ["before", "after"],
            "properties": {"before": _CI, "after": _CI},
        },
        "sweep": {"type": "string"},
    },
}

_VALIDATOR = Draft202012Validator(THRESHOLDS_SCHEMA)


def validate_thresholds(record: Any, label: str = "thresholds") -> None:
    """Raise ManifestError (exit 3) with the JSON path of the first violation."""
    check_schema(_VALIDATOR, record, label)


def render_thresholds_schema() -> str:
    """The committed text of schema/thresholds.schema.json."""
    return json.dumps(THRESHOLDS_SCHEMA, indent=2, sort_keys=True) + "\n"
