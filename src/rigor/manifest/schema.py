"""The manifest v1 JSON Schema (Draft 2020-12), defined once here and emitted to schema/."""

from __future__ import annotations

import json
from typing import Any

MANIFEST_VERSION = "1.1"
# Version "1" records were written before every manifest carried record_sha256; from "1.1"
# on the seal is required (manifest.check_seal), and a record without it is exit 5.
UNSEALED_VERSIONS = ("1",)

# A path relative to the run folder: no leading slash, no backslash, no '..' segment.
RELPATH: dict[str, Any] = {
    "type": "string",
    "minLength": 1,
    "pattern": r"^(?![/~])(?!.*(^|/)\.\.(/|$))[^\\\u0000]+$",
    "description": "A path relative to the run folder that cannot escape it.",
}
SHA256 = {"type": "string", "pattern": "^[0-9a-f]{64}$"}
TIMESTAMP = {"type": "string", "format": "date-time"}
NULLABLE_STR = {"type": ["string", "null"]}


def _obj(properties: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": properties,
        "required": list(properties) if required is None else required,
        "additionalProperties": False,
    }


MISMATCH = _obj(
    {
        "name": {"type": "string"},
        "locked": NULLABLE_STR,
        "installed": NULLABLE_STR,
    }
)

ENVIRONMENT = _obj(
    {
        "policy": {"enum": ["strict", "warn", "ignore"]},
        "forced": {"type": "boolean"},
        "python": {"type": "string"},
        "torch": NULLABLE_STR,
        "packages": {"type": "object", "additionalProperties": {"type": "string"}},
        "mismatches": {"type": "array", "items": MISMATCH},
        "compared_with": {"type": "string"},
    }
)

STAGE = _obj(
    {
        "name": {"type": "string", "pattern": "^[a-z][a-z0-9_]*$"},
        "status": {"const": "complete"},
        "started_at": TIMESTAMP,
        "finished_at": TIMESTAMP,
        "duration_s": {"type": "number", "minimum": 0},
        "command": {"type": "array", "items": {"type": "string"}},
        "options": {"type": "object"},
        "outputs": {"type": "array", "items": RELPATH},
        "summary": {"type": "object"},
        "environment": ENVIRONMENT,
    }
)

WEIGHTS = ("checkpoints", "best_checkpoint")  # required unless the run is a probe

MANIFEST_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": "https://rigor.local/schema/manifest.v1.json",
    "title": "rigor run manifest v1",
    "description": (
        "The contract between a training run and every later stage. Written last and "
        "atomically: its existence means the run completed."
    ),
    **_obj(
        {
            "manifest_version": {"enum": [*UNSEALED_VERSIONS, MANIFEST_VERSION]},
            "run_id": {"type": "string", "pattern": r"^[0-9]{8}T[0-9]{6}Z-[A-Za-z0-9_.-]+$"},
            "created_at": TIMESTAMP,
            "git": _obj(
                {
                    "commit": {"type": ["string", "null"], "pattern": "^[0-9a-f]{40,64}$"},
                    "is_dirty": {"type": ["boolean", "null"]},
                    "remote": NULLABLE_STR,
                }
            ),
            "python": {"type": "string"},
            "torch": NULLABLE_STR,
            "cuda": NULLABLE_STR,
            "provenance": _obj(
                {
                    "platform": {"type": "string"},
                    "hostname": {"type": "string"},
                    "command": {"type": "array", "items": {"type": "string"}},
                    "cudnn": {"type": ["integer", "null"]},
                    "cuda_available": {"type": "boolean"},
                    "device": {"type": "string"},
                    "seed": {"type": "integer"},
                    "determinism": {"type": "boolean"},
                    "rigor_version": {"type": "string"},
                }
            ),
            "env_lock": {
                "oneOf": [
                    {"type": "null"},
                    _obj(
                        {
                            "name": {"type": "string"},
                            "hash": SHA256,
                            "kind": {"enum": ["pip", "conda-lock"]},
                        }
                    ),
                ]
            },
            "environment": ENVIRONMENT,
            "dataset": _obj(
                {
                    "name": {"type": "string"},
                    "version": {"type": "string"},
                    "content_hash": SHA256,
                    "fingerprint": {"type": "object"},
                    "details": {"type": "object"},
                    "skipped": {
                        "type": "array",
                        "items": _obj(
                            {
                                "id": {"type": "string"},
                                "source": {"type": "string"},
                                "error": {"type": "string"},
                            }
                        ),
                    },
                    "tasks": {"type": "object"},
                    "split": _obj(
                        {
                            "path": RELPATH,
                            "seed": {"type": "integer"},
                            "fractions": {
                                "type": "object",
                                "additionalProperties": {"type": "number"},
                            },
                            "sizes": {
                                "type": "object",
                                "additionalProperties": {"type": "integer"},
                            },
                            "achieved": {
                                "type": "object",
                                "additionalProperties": {"type": "number"},
                            },
                        },
                        required=["path", "seed", "fractions", "sizes"],
                    ),
                    "hashes": _obj(
                        {name: SHA256 for name in ("train", "val_select", "val_calib", "val_test")}
                    ),
                },
                required=["name", "version", "content_hash", "tasks", "split", "hashes"],
            ),
            "encoder": _obj(
                {
                    "arch": {"type": "string"},
                    "dim": {"type": "integer", "minimum": 1},
                    "weights": NULLABLE_STR,
                    "architecture": NULLABLE_STR,
                    "weights_sha256": {"type": ["string", "null"], "pattern": "^[0-9a-f]{64}$"},
                    "state_sha256": {"type": ["string", "null"], "pattern": "^[0-9a-f]{64}$"},
                },
                required=["arch", "dim", "weights"],
            ),
            "transforms": _obj(
                {
                    "version": {"enum": ["v1", "v2"]},
                    "normalize": {"type": "boolean"},
                    "mean": {"type": ["array", "null"], "items": {"type": "number"}},
                    "std": {"type": ["array", "null"], "items": {"type": "number"}},
                    "augment": {"type": ["object", "null"]},
                },
                required=["version", "normalize", "mean", "std"],
            ),
            "checkpoints": {"type": "array", "items": RELPATH, "minItems": 1},
            "best_checkpoint": RELPATH,
            "config_path": RELPATH,
            "config_raw_path": RELPATH,
            "config_resolved_path": RELPATH,
            "config_hash": SHA256,
            "artifacts": {
                "type": "object",
                "properties": {
                    key: {"type": "array", "items": RELPATH}
                    for key in ("metrics", "figures", "plots", "predictions", "logs", "splits")
                },
                "required": ["metrics", "figures", "plots"],
                "additionalProperties": {"type": "array", "items": RELPATH},
            },
            "metrics": {"type": "object", "additionalProperties": {"type": ["number", "null"]}},
            "sha256": {
                "type": "object",
                "propertyNames": RELPATH,
                "additionalProperties": SHA256,
                "minProperties": 1,
            },
            "stages": {"type": "array", "items": STAGE, "minItems": 1},
            "lineage": _obj(
                {
                    "parent": {"type": "string", "minLength": 1},
                    "manifest": {"type": "string", "minLength": 1},
                    "stage": {"type": "string"},
                    "weights": {
                        "type": "object",
                        "propertyNames": RELPATH,
                        "additionalProperties": SHA256,
                    },
                }
            ),
            "record_sha256": {
                **SHA256,
                "description": "sha256 of this record without this field (io.record_hash).",
            },
        }
    ),
    # Runs that train weights list their checkpoints; a probe (frozen features) has none.
    "if": {
        "properties": {"stages": {"prefixItems": [{"properties": {"name": {"const": "probe"}}}]}}
    },
    "else": {"required": list(WEIGHTS)},
}

MANIFEST_SCHEMA["required"] = [
    k for k in MANIFEST_SCHEMA["required"] if k not in (*WEIGHTS, "record_sha256", "lineage")
]


def render_manifest_schema() -> str:
    """The committed text of ``schema/manifest.v1.json``."""
    return json.dumps(MANIFEST_SCHEMA, indent=2, sort_keys=True) + "\n"
