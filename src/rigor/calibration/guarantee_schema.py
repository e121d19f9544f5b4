"""JSON Schemas of the calibration records the policies fit (platt.json, conformal.json,
scrcparams.json: each defined by its policy module), of a bundle's policy.json (each kind's
part from its module) and of the regression intervals (emitted under schema/)."""

from __future__ import annotations

import json
from typing import Any

from jsonschema import Draft202012Validator

from rigor.manifest import check_schema
from rigor.policies.base import ALPHA, FITTED, NUM_OR_NULL, record_name, record_schema
from rigor.policies.registry import POLICIES

_COMMON = ["schema_version", "kind", "task", "temperature", "guarantee", "fitted_on"]

POLICY_SCHEMA = record_schema(
    "policy.schema.json",
    "rigor bundle policy (bundle/policy.json): exactly one kind, ready to apply",
    {
        "required": _COMMON,
        "properties": {
            "schema_version": {"const": 2},
            "kind": {"enum": [kind for kind, policy in POLICIES.items() if policy.schema]},
            "task": {"type": "string"},
            "temperature": {"type": "number", "exclusiveMinimum": 0},
            "guarantee": {"type": "string"},
            "fitted_on": FITTED,
        },
        "allOf": [
            {
                "if": {"properties": {"kind": {"const": kind}}},
                "then": {key: policy.schema[key] for key in ("required", "properties")},
            }
            for kind, policy in POLICIES.items()
            if policy.schema
        ],
    },
)

INTERVALS_SCHEMA = record_schema(
    "intervals.schema.json",
    "rigor regression intervals (calibration/intervals.json, bundle/intervals.json)",
    {
        "additionalProperties": False,
        "required": ["schema_version", "method", "alpha", "fitted_on", "tasks"],
        "properties": {
            "schema_version": {"const": 1},
            "method": {"type": "string"},
            "alpha": ALPHA,
            "fitted_on": FITTED,
            "tasks": {
                "type": "object",
                "minProperties": 1,
                "additionalProperties": {
                    "type": "object",
                    "required": ["q_hat", "n"],
                    "properties": {
                        "q_hat": {
                            **NUM_OR_NULL,
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

# A fitted record's schema is named for its file (calibration/platt.json: "platt").
RECORD_SCHEMAS = {
    record_name(policy.record): policy.record_schema
    for policy in POLICIES.values()
    if policy.record is not None and policy.record_schema is not None
}
SCHEMAS = {**RECORD_SCHEMAS, "policy": POLICY_SCHEMA, "intervals": INTERVALS_SCHEMA}
_VALIDATORS = {name: Draft202012Validator(schema) for name, schema in SCHEMAS.items()}


def validate_record(name: str, record: Any, label: str) -> None:
    """Raise ManifestError (exit 3) with the JSON path of the first violation of schema
    ``name`` (platt, conformal, scrcparams, policy or intervals)."""
    check_schema(_VALIDATORS[name], record, label)


def render(name: str) -> str:
    """The committed text of schema/<name>.schema.json."""
    return json.dumps(SCHEMAS[name], indent=2, sort_keys=True) + "\n"
