"""Re-run a training run from its manifest and compare: bitwise equality, or the differences."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from rigor.config import ResolvedConfig
from rigor.errors import UsageError
from rigor.io import atomic_write_json
from rigor.stages import open_run


def reproduce(
    manifest_path: Path, output_root: Path, env_policy: str | None = None, force: bool = False
) -> dict[str, Any]:
    """Train (or pretrain) again with the recorded config and seed under ``output_root``
    and compare."""
    from rigor.run_kinds import kind_of

    ctx = open_run(
        manifest_path, ["config_raw.json", "splits.json"], env_policy, force, allow_pretrain=True
    )
    original = ctx.manifest
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


def _weights_equal(a: Path, b: Path) -> bool:
    left = torch.load(a, map_location="cpu", weights_only=True)["model"]
    right = torch.load(b, map_location="cpu", weights_only=True)["model"]
    return left.keys() == right.keys() and all(torch.equal(left[k], right[k]) for k in left)


def compare(original_path: Path, new_path: Path) -> dict[str, Any]:
    """Data hashes, best/last weights and final metrics of two runs of the same config."""
    a, b = (json.loads(p.read_text()) for p in (original_path, new_path))
    data_same = (a["dataset"]["content_hash"], a["dataset"]["hashes"]) == (
        b["dataset"]["content_hash"],
        b["dataset"]["hashes"],
    )
    weights = {
        name: _weights_equal(original_path.parent / name, new_path.parent / name)
        for name in ("checkpoints/best.pt", "checkpoints/last.pt")
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
        "metrics_identical": not differences,
        "differences": differences,
        "bitwise": data_same and all(weights.values()) and not differences,
    }
