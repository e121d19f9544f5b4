"""The runs a comparison reads: each run's val_test predictions, checked to share one test set,
grouped into variants (runs whose configs differ only in ``run.seed``)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rigor.errors import ManifestError, UsageError
from rigor.io import read_json, sha256_json
from rigor.manifest import load_manifest, verify_manifest
from rigor.manifest.report import flatten

PREDICTIONS = "predictions/val_test.npz"
PROBE_PREDICTIONS = "probe/predictions.npz"
_IGNORED = ("run.seed", "run.name", "run.output_root")


@dataclass
class Run:
    """One finished training run: its identity, config, cost and val_test predictions."""

    manifest_path: Path
    run_id: str
    seed: int
    config: dict[str, Any]
    tasks: dict[str, Any]
    ids: np.ndarray
    split_hash: str  # sha256 of the val_test split (manifest dataset.hashes)
    arrays: dict[str, np.ndarray]
    cost: dict[str, float | None]


@dataclass
class Variant:
    """Runs whose configs are equal but for the seed: one variant with several seeds."""

    label: str
    runs: list[Run] = field(default_factory=list)


def _cost(manifest: dict[str, Any]) -> dict[str, float | None]:
    """Trainable parameters, peak memory (MiB) and seconds per epoch from the train stage."""
    summary = manifest["stages"][0]["summary"]
    epochs = max(int(summary.get("epochs_run") or 1), 1)
    per_epoch = summary.get("epoch_time_s")
    if per_epoch is None and summary.get("wall_time_s") is not None:
        per_epoch = float(summary["wall_time_s"]) / epochs
    return {
        "params_trainable": summary.get("model", {}).get("params_trainable"),
        "peak_memory_mb": (summary.get("peak_memory") or {}).get("mb"),
        "epoch_time_s": per_epoch,
    }


def load_run(path: Path) -> Run:
    """A finished train run's manifest, config and verified val_test predictions, or a probe
    run's out-of-fold predictions (exit 3/5)."""
    manifest = load_manifest(path)
    stage = manifest["stages"][0]["name"]
    if stage == "probe":
        return _load_probe(path, manifest)
    if stage != "train":
        raise ManifestError(f"{path}: a {stage} run has no predictions to compare")
    if PREDICTIONS not in manifest["sha256"]:
        raise ManifestError(f"{path}: lists no {PREDICTIONS}")
    verify_manifest(manifest, path.parent, only=[PREDICTIONS])
    config = read_json(path.parent / "config_resolved.json")
    with np.load(path.parent / PREDICTIONS, allow_pickle=False) as stored:
        arrays = {name: stored[name] for name in stored.files}
    return Run(
        manifest_path=path,
        run_id=manifest["run_id"],
        seed=int(config["run"]["seed"]),
        config=config,
        tasks=manifest["dataset"]["tasks"],
        ids=arrays.pop("ids"),
        split_hash=manifest["dataset"]["hashes"]["val_test"],
        arrays=arrays,
        cost=_cost(manifest),
    )


def _load_probe(path: Path, manifest: dict[str, Any]) -> Run:
    """A probe run as a comparison reads it: every fold's test spots (fold/id), one
    regression task per gene with the ridge predictions in place of a head's outputs."""
    if PROBE_PREDICTIONS not in manifest["sha256"]:
        raise ManifestError(f"{path}: lists no {PROBE_PREDICTIONS}")
    verify_manifest(manifest, path.parent, only=[PROBE_PREDICTIONS])
    config = read_json(path.parent / "config_resolved.json")
    with np.load(path.parent / PROBE_PREDICTIONS, allow_pickle=False) as stored:
        fold, ids = stored["fold"], stored["ids"].astype(str)
        genes = [str(g) for g in stored["genes"]]
        predicted, targets = stored["predicted"], stored["targets"]
    tested = np.char.add(np.char.add(fold.astype(str), "/"), ids)
    arrays = {f"logits_{g}": predicted[:, j] for j, g in enumerate(genes)}
    arrays |= {f"targets_{g}": targets[:, j] for j, g in enumerate(genes)}
    return Run(
        manifest_path=path,
        run_id=manifest["run_id"],
        seed=int(config["run"]["seed"]),
        config=config,
        tasks={g: {"kind": "regression", "num_classes": None, "classes": None} for g in genes},
        ids=tested,
        split_hash=sha256_json(sorted(tested.tolist())),
        arrays=arrays,
        cost={"params_trainable": None, "peak_memory_mb": None, "epoch_time_s": None},
    )


def check_same_test_set(runs: list[Run]) -> None:
    """Every run must have the first run's val_test: same split hash, same ids in the same
    order, same tasks; ManifestError (exit 3) naming the first difference otherwise."""
    first = runs[0]
    for run in runs[1:]:
        where = f"{run.manifest_path} against {first.manifest_path}"
        if run.split_hash != first.split_hash:
            raise ManifestError(
                f"{where}: val_test differs (split sha256 {run.split_hash[:12]} vs "
                f"{first.split_hash[:12]}); compare runs of the same data and splits"
            )
        if len(run.ids) != len(first.ids) or not np.array_equal(run.ids, first.ids):
            same_length = len(run.ids) == len(first.ids)
            differ = np.flatnonzero(run.ids != first.ids) if same_length else np.array([])
            at = f" (first at row {int(differ[0])})" if len(differ) else f" ({len(run.ids)} ids)"
            raise ManifestError(f"{where}: the val_test ids differ{at}")
        if run.tasks != first.tasks:
            raise ManifestError(f"{where}: the tasks differ ({sorted(run.tasks)})")


def group_variants(runs: list[Run]) -> list[Variant]:
    """Runs grouped by their config without seed, name and output root, in first-seen order;
    each variant is labelled by the settings that tell it apart from the others."""
    keys, flats = [], []
    for run in runs:
        flat = {k: v for k, v in flatten(run.config).items() if k not in _IGNORED}
        flats.append(flat)
        keys.append(hashlib.sha256(json.dumps(flat, sort_keys=True).encode()).hexdigest())
    order = list(dict.fromkeys(keys))
    if len(order) < 2:
        raise UsageError(
            "compare.py: every run has the same config (seeds of one variant); give runs of at "
            "least two variants"
        )
    representative = {key: flats[keys.index(key)] for key in order}
    varying = sorted(
        name
        for name in set().union(*representative.values())
        if len({json.dumps(flat.get(name), sort_keys=True) for flat in representative.values()}) > 1
    )
    variants = {}
    for key in order:
        flat = representative[key]
        parts = [f"{name}={json.dumps(flat.get(name))}" for name in varying]
        label = ", ".join(parts) if parts else key[:8]
        variants[key] = Variant(label)
    for key, run in zip(keys, runs, strict=True):
        seeds = [r.seed for r in variants[key].runs]
        if run.seed in seeds:
            raise UsageError(
                f"compare.py: {run.run_id} repeats seed {run.seed} of variant "
                f"{variants[key].label!r}; give each seed once"
            )
        variants[key].runs.append(run)
    return list(variants.values())
