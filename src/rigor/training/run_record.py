"""Assemble manifest v1 for a finished training (or pretraining) run."""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rigor.data.splits import SPLITS, achieved_fractions
from rigor.io import is_temporary
from rigor.manifest import MANIFEST_VERSION, hash_files
from rigor.manifest.provenance import git_info, provenance, runtime_info
from rigor.manifest.rundir import iso, utc_now

if TYPE_CHECKING:
    from datetime import datetime

    from rigor.training.prepare import Prepared

CONFIGS = ["config.yaml", "config_raw.json", "config_resolved.json"]


@dataclass(kw_only=True)
class RunOutputs:
    """What a finished run produced, beside its checkpoints.

    ``stage`` names the first stage (``train``; ``pretrain`` for an MAE run, which has no
    predictions; ``probe`` for a frozen-encoder probe, which has no checkpoints);
    ``extra_artifacts`` adds artifact lists (e.g. ``weights``, ``figures``); ``skipped`` lists
    the unreadable samples left out under ``data.on_bad_sample: skip``; ``weights`` names
    where the encoder's weights came from when the config does not (a probed run).
    """

    metrics: Mapping[str, float | None]
    summary: dict[str, Any]
    predictions: list[str]
    stage: str = "train"
    extra_artifacts: dict[str, list[str]] = field(default_factory=dict)
    skipped: list[dict[str, Any]] = field(default_factory=list)
    weights: str | None = None
    encoder: dict[str, Any] = field(default_factory=dict)  # more of the manifest's encoder block


def _files(run_dir: Path, folder: str) -> list[str]:
    """Files under ``folder``, without temporaries a killed atomic write left behind."""
    return sorted(
        str(p.relative_to(run_dir))
        for p in (run_dir / folder).rglob("*")
        if p.is_file() and not is_temporary(p.name)
    )


def _artifacts(run_dir: Path, outputs: RunOutputs, prepared: Prepared) -> dict[str, list[str]]:
    artifacts = {
        "metrics": ["metrics.json"],
        "figures": [],
        "plots": [],
        "predictions": outputs.predictions,
        "logs": _files(run_dir, "logs"),
        "splits": ["splits.json"],
    }
    if prepared.panel is not None:
        artifacts["panel"] = ["genes.json"]
    for key, paths in outputs.extra_artifacts.items():
        artifacts[key] = sorted({*artifacts.get(key, []), *paths})
    return artifacts


def _dataset(run_dir: Path, prepared: Prepared, outputs: RunOutputs) -> dict[str, Any]:
    cfg, dataset = prepared.resolved.config, prepared.dataset
    dataset.raw.check_unchanged()  # the fingerprint still describes what the run read
    return {
        "name": dataset.name,
        "version": dataset.version,
        "content_hash": dataset.content_hash,
        "fingerprint": dataset.raw.fingerprint_record,
        "skipped": outputs.skipped,
        "details": dataset.raw.extra_record,
        "tasks": {name: spec.as_dict() for name, spec in dataset.tasks.items()},
        "split": {
            "path": "splits.json",
            "seed": cfg.split_seed,
            "fractions": cfg.data.splits.model_dump(),
            "sizes": {name: len(prepared.splits[name]) for name in SPLITS},
            "achieved": achieved_fractions(prepared.splits),
        },
        "hashes": json.loads((run_dir / "splits.json").read_text())["sha256"],
    }


def _stage(prepared: Prepared, outputs: RunOutputs, every: list[str], finished: datetime) -> Any:
    return {
        "name": outputs.stage,
        "status": "complete",
        "started_at": iso(prepared.started),
        "finished_at": iso(finished),
        "duration_s": round((finished - prepared.started).total_seconds(), 3),
        "command": list(sys.argv),
        "options": {"config": prepared.resolved.config_file, "sources": prepared.resolved.sources},
        "outputs": every,
        "summary": outputs.summary,
        "environment": prepared.environment,
    }


def build_manifest(run_dir: Path, prepared: Prepared, outputs: RunOutputs) -> dict[str, Any]:
    """Manifest v1 for a finished run, with the sha256 of every artifact."""
    cfg, lock = prepared.resolved.config, prepared.lock
    checkpoints = _files(run_dir, "checkpoints")
    artifacts = _artifacts(run_dir, outputs, prepared)
    every = sorted({*checkpoints, *CONFIGS, *(p for paths in artifacts.values() for p in paths)})
    finished = utc_now()
    runtime = runtime_info()
    manifest: dict[str, Any] = {
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
        "dataset": _dataset(run_dir, prepared, outputs),
        "encoder": {
            "arch": cfg.model.backbone,
            "dim": prepared.model.feature_dim,
            "weights": outputs.weights
            or cfg.model.weights_path
            or cfg.model.hf.path
            or (prepared.lineage and prepared.lineage["manifest"]),
            **outputs.encoder,
        },
        "transforms": prepared.transforms,
        "checkpoints": checkpoints,
        "best_checkpoint": "checkpoints/best.pt",
        "config_path": "config.yaml",
        "config_raw_path": "config_raw.json",
        "config_resolved_path": "config_resolved.json",
        "config_hash": prepared.resolved.hash,
        "artifacts": artifacts,
        "metrics": outputs.metrics,
        "sha256": hash_files(run_dir, every),
        "stages": [_stage(prepared, outputs, every, finished)],
    }
    if prepared.lineage is not None:
        manifest["lineage"] = prepared.lineage
    if not checkpoints:  # a probe keeps no weights of its own
        del manifest["checkpoints"], manifest["best_checkpoint"]
    return manifest
