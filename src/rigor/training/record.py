"""Assemble manifest v1 for a finished training run."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rigor.data.splits import SPLITS
from rigor.manifest import MANIFEST_VERSION, hash_files
from rigor.manifest.provenance import git_info, provenance, runtime_info
from rigor.manifest.rundir import iso, utc_now

if TYPE_CHECKING:
    from rigor.training.run import Prepared


def _files(run_dir: Path, folder: str) -> list[str]:
    return sorted(str(p.relative_to(run_dir)) for p in (run_dir / folder).rglob("*") if p.is_file())


def build_manifest(
    run_dir: Path,
    prepared: Prepared,
    metrics: dict[str, float],
    summary: dict[str, Any],
    predictions: list[str],
    stage: str = "train",
    extra_artifacts: dict[str, list[str]] | None = None,
    skipped: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Manifest v1 for a finished run, with the sha256 of every artifact.

    ``stage`` names the first stage (``train``, or ``pretrain`` for an MAE run, which has no
    predictions); ``extra_artifacts`` adds artifact lists (e.g. ``weights``, ``figures``);
    ``skipped`` lists the unreadable samples left out under ``data.on_bad_sample: skip``.
    """
    cfg = prepared.resolved.config
    dataset, lock = prepared.dataset, prepared.lock
    checkpoints = _files(run_dir, "checkpoints")
    artifacts = {
        "metrics": ["metrics.json"],
        "figures": [],
        "plots": [],
        "predictions": predictions,
        "logs": _files(run_dir, "logs"),
        "splits": ["splits.json"],
    }
    for key, paths in (extra_artifacts or {}).items():
        artifacts[key] = sorted({*artifacts.get(key, []), *paths})
    configs = ["config.yaml", "config_raw.json", "config_resolved.json"]
    every = sorted({*checkpoints, *configs, *(p for paths in artifacts.values() for p in paths)})
    finished = utc_now()
    runtime = runtime_info()
    split_hashes = json.loads((run_dir / "splits.json").read_text())["sha256"]
    return {
        "manifest_version": MANIFEST_VERSION,
        "run_id": run_dir.name,
        "created_at": iso(finished),
        "git": git_info(),
        "python": runtime["python"],
        "torch": runtime["torch"],
        "cuda": runtime["cuda"],
        "provenance": provenance(cfg.run.seed, cfg.run.determinism, str(prepared.device)),
        "env_lock": (
            None if lock is None else {"name": lock.name, "hash": lock.sha256, "kind": lock.kind}
        ),
        "environment": prepared.environment,
        "dataset": {
            "name": dataset.name,
            "version": dataset.version,
            "content_hash": dataset.content_hash,
            "fingerprint": dataset.raw.fingerprint_record,
            "skipped": skipped or [],
            "tasks": {name: spec.as_dict() for name, spec in dataset.tasks.items()},
            "split": {
                "path": "splits.json",
                "seed": cfg.run.seed,
                "fractions": cfg.data.splits.model_dump(),
                "sizes": {name: len(prepared.splits[name]) for name in SPLITS},
            },
            "hashes": split_hashes,
        },
        "encoder": {
            "arch": cfg.model.backbone,
            "dim": prepared.model.feature_dim,
            "weights": cfg.model.weights_path or cfg.model.hf.path,
        },
        "transforms": prepared.transforms,
        "checkpoints": checkpoints,
        "best_checkpoint": "checkpoints/best.pt",
        "config_path": "config.yaml",
        "config_raw_path": "config_raw.json",
        "config_resolved_path": "config_resolved.json",
        "config_hash": prepared.resolved.hash,
        "artifacts": artifacts,
        "metrics": metrics,
        "sha256": hash_files(run_dir, every),
        "stages": [
            {
                "name": stage,
                "status": "complete",
                "started_at": iso(prepared.started),
                "finished_at": iso(finished),
                "duration_s": round((finished - prepared.started).total_seconds(), 3),
                "command": list(sys.argv),
                "options": {
                    "config": prepared.resolved.config_file,
                    "sources": prepared.resolved.sources,
                },
                "outputs": every,
                "summary": summary,
                "environment": prepared.environment,
            }
        ],
    }
