"""Load a bundle back with every check: schema, its one active policy, the seal of
bundle.json and the sha256 of every file (nothing is unpickled)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from jsonschema import Draft202012Validator, FormatChecker

from rigor.calibration.guarantee_schema import validate_record
from rigor.calibration.schema import validate_thresholds
from rigor.errors import ArtifactError, ManifestError
from rigor.export.schema import BUNDLE_SCHEMA
from rigor.io import read_json
from rigor.manifest import check_schema, resolve_inside, seal_problem

_VALIDATOR = Draft202012Validator(BUNDLE_SCHEMA, format_checker=FormatChecker())


def has_classification(tasks: dict[str, Any]) -> bool:
    """Whether any task (manifest or bundle ``tasks`` block) is a classification task."""
    return any(spec["kind"] == "classification" for spec in tasks.values())


def _active_policies(record: dict[str, Any], path: Path) -> list[dict[str, Any]]:
    """Exactly one active policy with a classification task; none without (exit 3)."""
    active = [p for p in record["policies"] if p["active"]]
    if record.get("no_policy") is not None:
        task = record["task"]
        if active or task is None or record["tasks"].get(task, {}).get("kind") != "classification":
            raise ManifestError(
                f"{path}: $.no_policy needs no active policy and $.task naming a "
                "classification task"
            )
    elif has_classification(record["tasks"]):
        if len(active) != 1:
            raise ManifestError(
                f"{path}: $.policies has {len(active)} active policies; exactly one is required"
            )
        if record["task"] is None:
            raise ManifestError(f"{path}: $.task is null but the bundle has an active policy")
    elif record["policies"] or record["task"] is not None:
        raise ManifestError(
            f"{path}: a regression-only bundle has no policy; $.policies must be empty and "
            "$.task null"
        )
    return active


def _verify_files(root: Path, record: dict[str, Any]) -> None:
    """The seal of bundle.json and the sha256 of every file: exit 5 naming each problem."""
    from rigor.io import sha256_file

    problems = []
    seal = seal_problem(record, f"{root / 'bundle.json'}", record["bundle_version"], (1,))
    if seal is not None:
        problems.append(seal + " (transforms, classes, policy task, ...)")
    for rel, expected in sorted(record["sha256"].items()):
        target = resolve_inside(root, rel)
        if not target.is_file():
            problems.append(f"{rel}: missing")
        elif sha256_file(target) != expected:
            problems.append(f"{rel}: sha256 changed since export")
    if problems:
        raise ArtifactError(f"bundle {root} failed verification:\n  - " + "\n  - ".join(problems))


@dataclass(frozen=True)
class Bundle:
    """A checked bundle: its folder, record, active policy (None: regression only), weights."""

    root: Path
    record: dict[str, Any]
    policy: dict[str, Any] | None
    state: dict[str, torch.Tensor]
    intervals: dict[str, Any] | None = None  # per regression task: q_hat (split conformal)


def load_bundle(root: Path) -> Bundle:
    """Check schema (exit 3), the policy (exit 3) and every hash (exit 5).

    A bundle with a classification task has exactly one active policy, for the task named in
    ``task``; a regression-only bundle has none and ``task`` is null.
    """
    from safetensors.torch import load_file

    path = root / "bundle.json"
    if not path.is_file():
        raise ArtifactError(f"{root}: no bundle.json (not a bundle)")
    record = read_json(path)
    check_schema(_VALIDATOR, record, str(path))
    active = _active_policies(record, path)
    listed = {
        record["weights"],
        record["config"],
        record["splits"],
        *(p["path"] for p in active),
        *record["metrics"],
        *([record["intervals"]] if record.get("intervals") else []),
        *([record["adapters"]["file"]] if (record.get("adapters") or {}).get("file") else []),
    }
    unhashed = sorted(listed - set(record["sha256"]))
    if unhashed:
        raise ManifestError(f"{path}: $.sha256 has no entry for {', '.join(unhashed)}")
    _verify_files(root, record)
    policy = None
    if record.get("no_policy") is not None:
        policy = {"kind": "none", "task": record["task"], "guarantee": record["no_policy"]}
    if active:
        policy = read_json(root / active[0]["path"])
        if "kind" in policy:
            validate_record("policy", policy, f"{root / active[0]['path']}")
        else:  # a version-1 policy: thresholds.json as calibrate wrote it
            validate_thresholds(policy, label=f"{root / active[0]['path']}")
        if policy["task"] != record["task"]:
            raise ManifestError(
                f"{path}: $.task is {record['task']!r} but the active policy is for "
                f"{policy['task']!r}"
            )
    intervals = None
    if record.get("intervals"):
        intervals = read_json(root / record["intervals"])
        validate_record("intervals", intervals, f"{root / record['intervals']}")
    state = load_file(str(root / record["weights"]))
    if (record.get("adapters") or {}).get("file"):  # kept apart at export (--no-merge)
        state |= load_file(str(root / record["adapters"]["file"]))
    return Bundle(root, record, policy, state, intervals)
