"""JSON Schema of bundle/bundle.json (emitted to schema/bundle.schema.json)."""

from __future__ import annotations

import json
from typing import Any

from rigor.manifest.schema import RELPATH, SHA256

BUNDLE_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": "https://rigor.local/schema/bundle.schema.json",
    "title": "rigor deployable bundle",
    "type": "object",
    "additionalProperties": False,
    "required": [
        "bundle_version",
        "run_id",
        "created_at",
        "task",
        "tasks",
        "input_shape",
        "encoder",
        "transforms",
        "weights",
        "config",
        "splits",
        "metrics",
        "policies",
        "sha256",
    ],
    "properties": {
        "bundle_version": {
            "enum": [1, 2],
            "description": "2: record_sha256 is required (exit 5 without it); 1: written "
            "before every bundle was sealed, opened with a note.",
        },
        "run_id": {"type": "string"},
        "created_at": {"type": "string", "format": "date-time"},
        "task": {
            "type": ["string", "null"],
            "description": "The task whose policy is active; null in a regression-only bundle.",
        },
        "tasks": {"type": "object"},
        "input_shape": {
            "type": "array",
            "items": {"type": "integer", "minimum": 1},
            "minItems": 3,
            "maxItems": 3,
        },
        "encoder": {"type": "object"},
        "transforms": {"type": "object", "required": ["version", "normalize", "mean", "std"]},
        "weights": RELPATH,
        "config": RELPATH,
        "splits": RELPATH,
        "metrics": {"type": "array", "items": RELPATH},
        "policies": {
            "type": "array",
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["path", "active"],
                "properties": {"path": RELPATH, "active": {"type": "boolean"}},
            },
        },
        "sha256": {"type": "object", "propertyNames": RELPATH, "additionalProperties": SHA256},
        "intervals": {
            "type": ["string", "null"],
            "description": "Split-conformal intervals of the regression tasks (from calibrate), "
            "hashed like every other file; null or absent: none.",
        },
        "adapters": {
            "type": ["object", "null"],
            "additionalProperties": False,
            "required": ["method", "merged", "file"],
            "properties": {
                "method": {"enum": ["lora", "dora"]},
                "merged": {"type": "boolean"},
                "layers": {"type": "integer", "minimum": 0},
                "file": {
                    "type": ["string", "null"],
                    "description": "The adapter file beside the base weights (--no-merge); "
                    "null when merged into the weights.",
                },
            },
            "description": "How a LoRA/DoRA run's adapters ship: merged into the weights with "
            "peft's merge (a plain model; predict needs no peft), or as their own file. Null or "
            "absent: the run had no adapters.",
        },
        "no_policy": {
            "type": ["string", "null"],
            "description": "Set when exported with --policy none: a classification bundle with "
            "no active policy, whose task is answered without abstention (the text says so).",
        },
        "record_sha256": {
            "type": "string",
            "pattern": "^[0-9a-f]{64}$",
            "description": "sha256 of this record without this field: seals the transforms, "
            "class names and every other field no file hash covers.",
        },
    },
}


def render_bundle_schema() -> str:
    """The committed text of schema/bundle.schema.json."""
    return json.dumps(BUNDLE_SCHEMA, indent=2, sort_keys=True) + "\n"
