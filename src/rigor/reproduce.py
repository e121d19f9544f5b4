"""Re-run a training run from its manifest and compare: bitwise equality, or the differences."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from rigor.config import ResolvedConfig
from rigor.errors import UsageError
from rigor.io import atomic_write_json
from rigor.manifest import verify_manifest
from rigor.stages import open_run


def reproduce(
    manifest_path: Path,
    output_root: Path | None = None,
    env_policy: str | None = None,
    force: bool = False,
) -> dict[str, Any]:
    """Train (or pretrain) again with the recorded config and seed under ``output_root``
    (by default ``reproduce/`` beside the original's ``runs/`` folder) and compare."""
    if output_root is None:
        output_root = Path(manifest_path).resolve().parent.parent.parent / "reproduce"
    from rigor.run_kinds import kind_of

    ctx = open_run(
        manifest_path,
        ["config_raw.json", "splits.json"],
        env_policy,
        force,
        kinds=("train", "pretrain"),
    )
    original = ctx.manifest
    verify_manifest(original, ctx.run_dir)  # a changed artifact is exit 5, not a comparison
    config = ctx.config.model_copy(deep=True)
    config.run.output_root = str(output_root)
    raw = json.loads(ctx.path("config_raw.json").read_text())
    resolved = ResolvedConfig(config, raw, [str(manifest_path)], str(manifest_path))
    if resolved.hash != original["config_hash"]:
        raise UsageError(
            f"{manifest_path}: the recorded config no longer validates to the same hash"
        )
    task = kind_of(original).task_function()
    new_path = task(resolved, env_policy=env_policy, force=force)
    report = compare(manifest_path, new_path)
    atomic_write_json(new_path.parent / "reproduction.json", report)
    return report


def _same(a: Any, b: Any, where: str, found: list[str]) -> None:
    """Append to ``found`` every place where two checkpoint states differ."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        same = isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)
        if not (same and a.shape == b.shape and a.dtype == b.dtype and torch.equal(a, b)):
            found.append(where)
    elif isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b), key=str):
            if key not in a or key not in b:
                found.append(f"{where}.{key} (only in one)")
            else:
                _same(a[key], b[key], f"{where}.{key}", found)
    elif isinstance(a, list | tuple) and isinstance(b, list | tuple) and len(a) == len(b):
        for index, (x, y) in enumerate(zip(a, b, strict=True)):
            _same(x, y, f"{where}[{index}]", found)
    elif a != b:
        found.append(where)


def _checkpoint_differences(a: Path, b: Path) -> list[str]:
    """Every differing entry of two checkpoints: weights, EMA, optimizer and scheduler
    state, counters and RNG states."""
    found: list[str] = []
    left = torch.load(a, map_location="cpu", weights_only=True)
    right = torch.load(b, map_location="cpu", weights_only=True)
    _same(left, right, a.name, found)
    return found


def _prediction_differences(a: Path, b: Path) -> list[str]:
    import numpy as np

    with np.load(a, allow_pickle=False) as left, np.load(b, allow_pickle=False) as right:
        names = sorted(set(left.files) | set(right.files))
        return [
            f"{a.name}:{name}"
            for name in names
            if name not in left.files
            or name not in right.files
            or not np.array_equal(left[name], right[name])
        ]


def _log_rows(path: Path) -> list[Any]:
    """A log's rows without wall-clock fields (throughput differs between any two runs)."""
    if path.suffix == ".jsonl":
        rows = [json.loads(line) for line in path.read_text().splitlines() if line]
        return [{k: v for k, v in row.items() if not k.endswith("per_s")} for row in rows]
    return path.read_text().splitlines()


def _artifact_differences(a_dir: Path, b_dir: Path, manifest: dict[str, Any]) -> list[str]:
    """Checkpoints, predictions and logs that should be equal, and where they are not."""
    found: list[str] = []
    for rel in manifest.get("checkpoints", []):
        if not (b_dir / rel).is_file():
            found.append(f"{rel} (missing in the reproduction)")
        else:
            found += _checkpoint_differences(a_dir / rel, b_dir / rel)
    for rel in manifest["artifacts"].get("predictions", []):
        if rel.endswith(".npz"):
            found += _prediction_differences(a_dir / rel, b_dir / rel)
    for rel in ("logs/epochs.csv", "logs/steps.jsonl"):
        if (a_dir / rel).is_file() and _log_rows(a_dir / rel) != _log_rows(b_dir / rel):
            found.append(rel)
    return found


def compare(original_path: Path, new_path: Path) -> dict[str, Any]:
    """Data hashes, every checkpoint (weights, EMA, optimizer, scheduler, RNG), predictions,
    logs and final metrics of two runs of the same config; each difference is named."""
    a, b = (json.loads(p.read_text()) for p in (original_path, new_path))
    data_same = (a["dataset"]["content_hash"], a["dataset"]["hashes"]) == (
        b["dataset"]["content_hash"],
        b["dataset"]["hashes"],
    )
    found = _artifact_differences(original_path.parent, new_path.parent, a)
    # Generator states left at the end are listed but decide nothing: a library imported
    # lazily during a process's first run may draw from Python's global generator, and
    # nothing a run computes depends on it afterwards.
    rng = [d for d in found if ".rng." in d]
    artifacts = [d for d in found if d not in rng]
    weights = {
        name: not any(d.startswith(Path(name).name) for d in artifacts)
        for name in a.get("checkpoints", [])
        if name.endswith(("best.pt", "last.pt"))
    }
    differences = [
        {"metric": key, "original": a["metrics"].get(key), "reproduced": b["metrics"].get(key)}
        for key in sorted(set(a["metrics"]) | set(b["metrics"]))
        if a["metrics"].get(key) != b["metrics"].get(key)
    ]
    return {
        "original": a["run_id"],
        "reproduction": b["run_id"],
        "data_identical": data_same,
        "weights_identical": weights,
        "artifacts_identical": not artifacts,
        "artifact_differences": artifacts,
        "rng_state_differences": rng,
        "metrics_identical": not differences,
        "differences": differences,
        "bitwise": data_same and not artifacts and not differences,
    }
