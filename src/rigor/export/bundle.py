"""Write a bundle from a run's manifest (loading it back: :mod:`rigor.export.load`)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import torch

from rigor.calibration.bundle_policy import build_policy, sources
from rigor.errors import UsageError
from rigor.export.load import has_classification
from rigor.io import (
    atomic_write_json,
    atomic_write_with,
    exclusive_lock,
    read_json,
    record_hash,
)
from rigor.manifest import verify_manifest
from rigor.manifest.rundir import iso, utc_now
from rigor.stages import RunContext, finish_stage, open_run

POLICY = "calibration/thresholds.json"
BUNDLE_VERSION = 2  # sealed: record_sha256 required (version 1 bundles predate the rule)
NO_POLICY = (
    "exported with --policy none: every sample gets the argmax class of the softmax at T = 1; "
    "nothing abstains and no guarantee holds"
)
INTERVALS = "calibration/intervals.json"


def export(
    manifest_path: Path,
    env_policy: str | None = None,
    force: bool = False,
    policy: str | None = None,
    merge: bool = True,
) -> Path:
    """Write ``bundle/`` in the run folder: weights, config, ONE active policy, splits, metrics.

    ``policy`` (default ``calibration.policy`` of the run's config) picks the kind: threshold,
    gate, cascade, sets, crc or scrc; it is built from what calibrate fitted (exit 2 when that
    fit is missing or infeasible). LoRA/DoRA adapters are merged into the weights with peft
    (``merge``), or kept as ``adapter.safetensors`` beside the base weights. The bundle is
    built in a hidden folder beside it and swapped in when complete.
    """
    ctx = open_run(manifest_path, [], env_policy, force)
    manifest = ctx.manifest
    kind = policy or ctx.config.calibration.policy
    calibrated = POLICY in manifest["sha256"] and kind != "none"
    if has_classification(manifest["dataset"]["tasks"]) and not calibrated and kind != "none":
        raise UsageError(
            "this run has a classification task but no calibration policy: run "
            "scripts/calibrate.py first (a bundle carries exactly one active policy), or "
            "export with --policy none for predictions without abstention"
        )
    needed = [rel for rel in sources(kind) if rel in manifest["sha256"]] if calibrated else []
    reads = [manifest["best_checkpoint"], *needed]
    reads += [INTERVALS] if INTERVALS in manifest["sha256"] else []
    reads += ["splits.json", "metrics.json"]
    reads += ["eval/metrics.json"] if "eval/metrics.json" in manifest["sha256"] else []
    verify_manifest(manifest, ctx.run_dir, only=reads)
    built = (
        build_policy(kind, {rel: read_json(ctx.path(rel)) for rel in needed})
        if calibrated
        else None
    )
    building = _fresh_build_folder(ctx.run_dir)
    try:
        task = _fill(building, ctx, reads, built, force, merge)
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise
    record = read_json(building / "bundle.json")
    outputs = [f"bundle/{rel}" for rel in [*record["sha256"], "bundle.json"]]
    summary = {"task": task, "files": len(outputs), "policy": kind if calibrated else None}
    summary["policy"] = "none" if kind == "none" else summary["policy"]
    summary["adapters"] = record.get("adapters")
    options = {"reads": reads, "policy": kind, "merge": merge}
    # Concurrent exports of one run swap and record one at a time, so the last export stage
    # always describes the bundle on disk. A kill between the two leaves a bundle newer than
    # the manifest's hashes, which the next export replaces and records.
    with exclusive_lock(ctx.run_dir / ".export.lock"):
        bundle = _swap_in(building, ctx.run_dir / "bundle")
        finish_stage(ctx, "export", options, outputs, summary)
    return bundle


def _fresh_build_folder(run_dir: Path) -> Path:
    """An empty folder to build the bundle in. What killed exports left (``.bundle.<pid>.*``
    of a process that is gone) is removed first; a live export's folders are left alone."""
    for stale in run_dir.glob(".bundle.*"):
        if stale.is_dir() and not _alive(stale.name.split(".")[2]):
            shutil.rmtree(stale, ignore_errors=True)
    building = run_dir / f".bundle.{os.getpid()}.tmp"
    shutil.rmtree(building, ignore_errors=True)  # this process's own leftover
    building.mkdir()
    return building


def _alive(pid_text: str) -> bool:
    """Whether the process whose id is ``pid_text`` still runs (not a number: no)."""
    if not pid_text.isdigit():
        return False
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _swap_in(building: Path, bundle: Path) -> Path:
    """Replace ``bundle`` by the complete ``building`` folder: the old bundle stays whole
    until the new one is, and no reader ever sees a half-written one."""
    old = bundle.parent / f".bundle.{os.getpid()}.old"
    if bundle.exists():
        bundle.rename(old)
    building.rename(bundle)
    shutil.rmtree(old, ignore_errors=True)
    return bundle


def _fill(
    bundle: Path,
    ctx: RunContext,
    reads: list[str],
    policy: dict[str, Any] | None,
    force: bool,
    merge: bool,
) -> str | None:
    """Weights, copies of the run's files, and bundle.json in ``bundle``; the policy's task."""
    from safetensors.torch import save

    from rigor.runs.restore import best_state

    manifest = ctx.manifest
    shape = _input_shape(ctx)
    state = {k: v.contiguous() for k, v in best_state(ctx.run_dir, manifest, force).items()}
    adapters = None
    if ctx.config.model.peft.method != "none":
        state, adapters = _adapted_weights(bundle, ctx, state, shape, merge)
    payload = save(state)
    atomic_write_with(bundle / "model.safetensors", lambda handle: _write(handle, payload))
    copies = {
        "config_resolved.json": "config_resolved.json",
        "splits.json": "splits.json",
        "metrics.json": "metrics/train.json",
    }
    if "eval/metrics.json" in reads:
        copies["eval/metrics.json"] = "metrics/eval.json"
    if INTERVALS in reads:
        copies[INTERVALS] = "intervals.json"
    for source, target in copies.items():
        (bundle / target).parent.mkdir(exist_ok=True)
        shutil.copyfile(ctx.path(source), bundle / target)
    hashed = ["model.safetensors", *copies.values()]
    hashed += [adapters["file"]] if adapters is not None and adapters["file"] else []
    if policy is not None and "kind" not in policy:  # the threshold policy: thresholds.json
        shutil.copyfile(ctx.path(POLICY), bundle / "policy.json")
    elif policy is not None:
        atomic_write_json(bundle / "policy.json", policy)
    hashed += ["policy.json"] if policy is not None else []
    task = policy["task"] if policy is not None else None
    if policy is None and has_classification(manifest["dataset"]["tasks"]):  # --policy none
        task = _classification_task(ctx)
    record = _record(ctx, task, [p for p in copies.values() if p.startswith("metrics/")], shape)
    if policy is None and task is not None:
        record["policies"], record["no_policy"] = [], NO_POLICY
    record["intervals"] = "intervals.json" if INTERVALS in reads else None
    record["adapters"] = adapters
    record["sha256"] = {rel: _sha(bundle / rel) for rel in hashed}
    record["record_sha256"] = record_hash(record)
    atomic_write_json(bundle / "bundle.json", record)
    return task


def _classification_task(ctx: RunContext) -> str:
    """The task a --policy none bundle answers: calibration.task, or the first
    classification task."""
    tasks = ctx.manifest["dataset"]["tasks"]
    wanted = ctx.config.calibration.task
    names = [name for name, spec in tasks.items() if spec["kind"] == "classification"]
    return wanted if wanted is not None and wanted in names else str(names[0])


def _write(handle: Any, payload: bytes) -> None:
    handle.write(payload)


def _sha(path: Path) -> str:
    from rigor.io import sha256_file

    return sha256_file(path)


def _input_shape(ctx: RunContext) -> list[int]:
    """(C, H, W) of the model's inputs: the configured size, or the data's native one."""
    sizes = ctx.config.data.transforms.image_size
    if sizes is None:  # the native size: read it back from the data the run trained on
        from rigor.runs.restore import run_dataset

        return [int(s) for s in run_dataset(ctx.run_dir, ctx.config, ctx.manifest)[0].input_shape]
    return [int(ctx.config.data.channels), *(int(s) for s in sizes)]


def _adapted_weights(
    bundle: Path, ctx: RunContext, state: dict[str, torch.Tensor], shape: list[int], merge: bool
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """A PEFT run's weights for the bundle: the adapters merged into the base weights with
    peft (a plain model's state), or the base weights with the trained part written to
    ``adapter.safetensors`` beside them."""
    from rigor.io import atomic_write_bytes
    from rigor.models.adapters import adapter_keys, adapter_payload, merge_adapters
    from rigor.runs.restore import empty_model

    c, h, w = shape
    model = empty_model(ctx.config, ctx.manifest, (c, h, w))
    model.load_state_dict(state)
    method = ctx.config.model.peft.method
    if merge:
        layers = merge_adapters(model.eval())
        merged = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
        return merged, {"method": method, "merged": True, "layers": layers, "file": None}
    payload, record = adapter_payload(model, state)
    atomic_write_bytes(bundle / "adapter.safetensors", payload)
    trained = set(adapter_keys(model))
    base = {k: v for k, v in state.items() if k not in trained}
    return base, {"method": method, "merged": False, "file": "adapter.safetensors"}


def _record(
    ctx: RunContext, task: str | None, metrics: list[str], shape: list[int]
) -> dict[str, Any]:
    manifest = ctx.manifest
    return {
        "bundle_version": BUNDLE_VERSION,
        "run_id": manifest["run_id"],
        "created_at": iso(utc_now()),
        "task": task,
        "tasks": manifest["dataset"]["tasks"],
        "input_shape": shape,
        "encoder": manifest["encoder"],
        "transforms": manifest["transforms"],
        "weights": "model.safetensors",
        "config": "config_resolved.json",
        "splits": "splits.json",
        "metrics": metrics,
        "policies": [{"path": "policy.json", "active": True}] if task is not None else [],
    }
