"""The run manifest: schema validation, artifact hashing, atomic writes and stage entries.

This package imports no torch, so ``scripts/manifest.py`` answers in well under a second.
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator, FormatChecker

from rigor.errors import ArtifactError, ManifestError
from rigor.io import (
    atomic_write_json,
    exclusive_lock,
    finite_json,
    parse_json,
    record_hash,
    sha256_file,
)
from rigor.manifest.schema import MANIFEST_SCHEMA, MANIFEST_VERSION, UNSEALED_VERSIONS

__all__ = [
    "MANIFEST_VERSION",
    "load_manifest",
    "validate_manifest",
    "verify_manifest",
    "write_manifest",
    "hash_files",
    "append_stage",
    "referenced_paths",
    "check_schema",
    "check_seal",
    "seal_problem",
]

_VALIDATOR = Draft202012Validator(MANIFEST_SCHEMA, format_checker=FormatChecker())
# sha256 of the manifest texts this process has validated: a stage reads its manifest two or
# three times (open, then again under the lock to append), and validation is the costly part
_VALIDATED: set[str] = set()


def load_manifest(path: str | Path) -> dict[str, Any]:
    """Read and validate a manifest; raises ManifestError (exit 3) on any violation. The same
    bytes are validated once per process."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"manifest not found: {path}")
    raw = path.read_bytes()
    manifest = parse_json(raw, path, non_finite="null")  # older runs may hold a NaN summary
    key = hashlib.sha256(raw).hexdigest()
    if key not in _VALIDATED:
        validate_manifest(manifest, label=str(path))
        _VALIDATED.add(key)
    return manifest


def check_schema(validator: Draft202012Validator, document: Any, label: str) -> None:
    """Raise ManifestError (exit 3) naming the JSON path of the first schema violation."""
    errors = sorted(validator.iter_errors(document), key=lambda e: e.json_path)
    if errors:
        first = errors[0]
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise ManifestError(
            f"{label}: schema violation at {first.json_path}: {first.message}{more}"
        )


def validate_manifest(manifest: Any, label: str = "manifest") -> None:
    """Check the schema, then that every referenced path has a recorded sha256."""
    check_schema(_VALIDATOR, manifest, label)
    hashed = manifest["sha256"]
    for json_path, rel in referenced_paths(manifest):
        if rel not in hashed:
            raise ManifestError(
                f"{label}: {json_path} lists {rel!r}, which has no entry in $.sha256"
            )


def referenced_paths(manifest: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """Yield (JSON path, relative path) for every artifact a manifest refers to."""
    for key in ("config_path", "config_raw_path", "config_resolved_path", "best_checkpoint"):
        if key in manifest:  # a probe run has no checkpoints
            yield f"$.{key}", manifest[key]
    yield "$.dataset.split.path", manifest["dataset"]["split"]["path"]
    for index, rel in enumerate(manifest.get("checkpoints", [])):
        yield f"$.checkpoints[{index}]", rel
    for kind, paths in manifest["artifacts"].items():
        for index, rel in enumerate(paths):
            yield f"$.artifacts.{kind}[{index}]", rel
    for s_index, stage in enumerate(manifest["stages"]):
        for index, rel in enumerate(stage["outputs"]):
            yield f"$.stages[{s_index}].outputs[{index}]", rel


def resolve_inside(run_dir: Path, rel: str) -> Path:
    """Resolve ``rel`` under ``run_dir``; a path (or symlink) that leaves it is refused."""
    root = run_dir.resolve()
    target = (root / rel).resolve()
    if not target.is_relative_to(root):
        raise ArtifactError(f"{rel}: resolves to {target}, outside the run folder {root}")
    return target


def verify_manifest(
    manifest: dict[str, Any], run_dir: Path, only: Iterable[str] | None = None
) -> None:
    """Re-hash listed artifacts (all, or ``only`` these); ArtifactError names every bad one."""
    wanted = manifest["sha256"] if only is None else {rel: manifest["sha256"][rel] for rel in only}
    problems = []
    seal = seal_problem(manifest, "manifest.json", manifest["manifest_version"], UNSEALED_VERSIONS)
    if seal is not None:
        problems.append(seal)
    for rel, expected in sorted(wanted.items()):
        try:
            target = resolve_inside(run_dir, rel)
        except ArtifactError as err:
            problems.append(str(err))
            continue
        if not target.is_file():
            problems.append(f"{rel}: missing")
        elif sha256_file(target) != expected:
            problems.append(f"{rel}: sha256 changed since the manifest was written")
    if problems:
        listing = "\n  - ".join(problems)
        raise ArtifactError(
            f"{len(problems)} artifact(s) failed verification in {run_dir}:\n  - {listing}"
        )


_NOTED: set[str] = set()


def seal_problem(
    record: dict[str, Any], label: str, version: object, unsealed: Iterable[object]
) -> str | None:
    """What is wrong with a record's seal (``record_sha256``), or None when it holds.

    A record of a sealing version must carry the seal and match it; a record of an older,
    pre-seal version (its version field in ``unsealed``) opens without one, with a note.
    """
    if "record_sha256" not in record:
        if version in tuple(unsealed):
            if label not in _NOTED:
                _NOTED.add(label)
                print(
                    f"note: {label} is a pre-seal record (version {version}): its fields are "
                    "not sealed, only its files are hashed",
                    file=sys.stderr,
                )
            return None
        return (
            f"{label}: record_sha256 is missing, but a version {version} record is always "
            "sealed: its fields were edited (or the seal removed) after it was written"
        )
    if record["record_sha256"] != record_hash(record):
        return f"{label}: its fields changed since it was written (record_sha256)"
    return None


def check_seal(manifest: dict[str, Any], label: str) -> None:
    """Raise ArtifactError (exit 5) when the manifest's seal is missing or broken."""
    problem = seal_problem(manifest, label, manifest["manifest_version"], UNSEALED_VERSIONS)
    if problem is not None:
        raise ArtifactError(problem)


def hash_files(run_dir: Path, rels: Iterable[str]) -> dict[str, str]:
    """sha256 of each relative path under ``run_dir`` (files this process just wrote with
    ``atomic_write_hashed`` are not re-read: their hash was taken on the way to the file)."""
    from rigor.io import sha256_recorded

    return {rel: sha256_recorded(resolve_inside(run_dir, rel)) for rel in rels}


def write_manifest(run_dir: Path, manifest: dict[str, Any], seal: bool = True) -> Path:
    """Validate, then write ``manifest.json`` atomically; never writes an invalid manifest.

    ``seal`` (the rule) writes the current version with ``record_sha256``; only a stage
    appended to a pre-seal record keeps it unsealed, since nobody verified its fields.
    """
    manifest = finite_json(manifest)  # a NaN summary value is written as null
    manifest.pop("record_sha256", None)
    if seal:
        manifest["manifest_version"] = MANIFEST_VERSION
        manifest["record_sha256"] = record_hash(manifest)
    validate_manifest(manifest, label="manifest about to be written")
    path = run_dir / "manifest.json"
    atomic_write_json(path, manifest)
    return path


def manifest_lock(manifest_path: Path) -> AbstractContextManager[None]:
    """The exclusive lock every manifest update holds (``.manifest.json.lock`` beside it)."""
    return exclusive_lock(manifest_path.parent / f".{manifest_path.name}.lock")


def append_stage(manifest_path: Path, stage: dict[str, Any], outputs: list[str]) -> dict[str, Any]:
    """Record a finished stage and the hashes of its outputs, replacing the manifest atomically.

    The manifest is re-read under its lock, so stages finishing at the same moment on one
    run (in any number of processes) all land their records.
    """
    run_dir = manifest_path.parent
    hashes = hash_files(run_dir, outputs)
    with manifest_lock(manifest_path):
        for stale in run_dir.glob(f".{manifest_path.name}.*.tmp"):  # left by a killed writer:
            stale.unlink(missing_ok=True)  # every writer holds this lock, so none is live
        manifest = load_manifest(manifest_path)
        check_seal(manifest, str(manifest_path))  # never seal fields nobody verified
        sealed = "record_sha256" in manifest
        manifest["sha256"].update(hashes)
        manifest["stages"].append({**stage, "outputs": sorted(outputs)})
        write_manifest(run_dir, manifest, seal=sealed)
    return manifest
