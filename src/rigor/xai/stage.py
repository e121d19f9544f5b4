"""The xai stage: explain a run found through its manifest, and check the explanations."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rigor.config import apply_overrides
from rigor.config.models import XaiConfig
from rigor.errors import UsageError
from rigor.io import atomic_write_json, atomic_write_with
from rigor.models.build import backbone_spec
from rigor.stages import BEST, RunContext, finish_stage, open_run
from rigor.tracking import Tracker
from rigor.tracking.mirror import mirror_stage, note_mirror
from rigor.xai import render, sanity
from rigor.xai.attributions import attribute, find_layer, gaussian_blur


def explain(
    manifest_path: Path,
    env_policy: str | None = None,
    force: bool = False,
    overrides: dict[str, Any] | None = None,
    ids: list[str] | None = None,
    job_id: str | None = None,
) -> Path:
    """Write xai/ (attributions.npz, overlays, grid.png, summary.json) and a stage entry.

    ``job_id`` (set by the worker service) is recorded in the stage's options.
    """
    from rigor.manifest import load_manifest

    manifest = load_manifest(manifest_path)
    ctx = open_run(
        manifest_path, [manifest.get("best_checkpoint", BEST), "splits.json"], env_policy, force
    )
    options = apply_overrides(ctx.config.xai, overrides, "xai")
    samples = _samples(ctx, options, ids)
    jobs = _targets(ctx, options, samples)
    out = ctx.run_dir / "xai"
    (out / "overlays").mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {
        "method": options.method,
        "split": options.split,
        "n": len(samples["ids"]),
        "tasks": {},
    }
    arrays: dict[str, np.ndarray] = {"ids": np.asarray(samples["ids"])}
    files: list[str] = []
    started = time.perf_counter()
    for index, (task, target, described) in enumerate(jobs):
        print(
            f"xai: {task} ({index + 1}/{len(jobs)}): {options.method} on {summary['n']} "
            f"{options.split} samples"
            + (", then the randomization test" if options.randomization else "")
            + f" ({time.perf_counter() - started:.0f} s so far)",
            file=sys.stderr,
        )
        result, maps = _explain_task(ctx, options, samples, task, target)
        summary["tasks"][task] = {"target": described, **result}
        arrays[f"maps_{task}"] = maps.astype(np.float16)
        arrays[f"targets_{task}"] = samples["labels"][task]
        arrays[f"predictions_{task}"] = samples["predicted"][task]
        files += _render(ctx, samples, task, maps, described)
    _save_npz(out / "attributions.npz", arrays)
    atomic_write_json(out / "summary.json", summary)
    _log(ctx, summary)
    logs = sorted(str(p.relative_to(ctx.run_dir)) for p in (out / "logs").rglob("*") if p.is_file())
    outputs = ["xai/attributions.npz", "xai/summary.json", *files, *logs]
    stage_options = {"ids": ids, "job_id": job_id, **options.model_dump(exclude={"worker"})}
    flat = _flat(summary)
    shown = [rel for rel in outputs if rel.endswith((".png", ".json")) and "/logs/" not in rel]
    values = {key.removeprefix("xai/"): value for key, value in flat.items()}
    note_mirror(
        flat, mirror_stage(ctx.config, ctx.manifest, ctx.manifest_path, "xai", values, shown)
    )
    finish_stage(ctx, "xai", stage_options, outputs, flat)
    print(f"xai: done in {time.perf_counter() - started:.0f} s: {out}/", file=sys.stderr)
    return out / "summary.json"


def _samples(ctx: RunContext, options: XaiConfig, ids: list[str] | None) -> dict[str, Any]:
    """The model, the chosen samples (normalised and raw), labels, predictions, masks."""
    from rigor.data.loader import to_unit
    from rigor.runs.restore import best_state, empty_model, run_dataset, split_rows

    dataset, pipeline = run_dataset(ctx.run_dir, ctx.config, ctx.manifest)
    rows = split_rows(ctx.run_dir, dataset, options.split)
    if ids:
        known = {dataset.ids[r]: r for r in rows}
        missing = [i for i in ids if i not in known]
        if missing:
            raise UsageError(f"--ids: not in split {options.split}: {missing[:5]}")
        rows = [known[i] for i in ids]
    else:
        rows = rows[: options.n_samples]
    model = empty_model(ctx.config, ctx.manifest, dataset.input_shape)
    model.load_state_dict(best_state(ctx.run_dir, ctx.manifest))
    model.eval()
    raw = dataset.stack(rows)
    inputs = pipeline(raw, torch.device("cpu"))
    with torch.no_grad():
        outputs = model(inputs)
    return {
        "model": model,
        "inputs": inputs,
        "raw": to_unit(raw).numpy(),
        "ids": [dataset.ids[r] for r in rows],
        "labels": {t: dataset.targets[t][rows].numpy() for t in dataset.tasks},
        "outputs": {t: v.numpy() for t, v in outputs.items()},
        "predicted": {
            t: (v.argmax(dim=1).numpy() if dataset.tasks[t].kind == "classification" else v.numpy())
            for t, v in outputs.items()
        },
        "masks": None if dataset.masks is None else dataset.masks[rows],
        "tasks": dataset.tasks,
        "train_mean": ctx.manifest["transforms"]["mean"],
    }


def _targets(
    ctx: RunContext, options: XaiConfig, samples: dict[str, Any]
) -> list[tuple[str, torch.Tensor | None, str]]:
    """(task, Captum target, description) for every head to explain."""
    tasks = samples["tasks"]
    chosen = options.target
    if chosen == "all":
        names = list(tasks)
    elif chosen in tasks:
        names = [chosen]
    else:
        names = [next(iter(tasks))]
    jobs: list[tuple[str, torch.Tensor | None, str]] = []
    for task in names:
        spec = tasks[task]
        if spec.kind == "regression":
            jobs.append((task, None, f"{task} (regression output)"))
        elif chosen in ("predicted", "all") or chosen in tasks:
            jobs.append((task, torch.as_tensor(samples["predicted"][task]), "predicted class"))
        elif chosen == "true":
            jobs.append((task, torch.as_tensor(samples["labels"][task]), "true class"))
        elif chosen.isdigit() and int(chosen) < int(spec.num_classes or 0):
            index = int(chosen)
            jobs.append((task, torch.full((len(samples["ids"]),), index), f"class {index}"))
        else:
            raise UsageError(
                f"xai.target: {chosen!r} is not predicted, true, all, a class index below "
                f"{spec.num_classes}, or a task name {sorted(tasks)}"
            )
    return jobs


def _method_options(ctx: RunContext, options: XaiConfig, samples: dict[str, Any]) -> dict[str, Any]:
    from rigor.data.transforms import pipeline_from_record

    raw = torch.from_numpy(samples["raw"])
    base_raw = {
        "zeros": torch.zeros_like(raw),
        "blurred": gaussian_blur(raw),
        "mean": torch.tensor(samples["train_mean"] or [0.0]).view(1, -1, 1, 1).expand_as(raw),
    }[options.baseline]
    pipeline = pipeline_from_record(ctx.config.data.transforms, ctx.manifest["transforms"])
    baselines = pipeline(base_raw.contiguous(), torch.device("cpu"))
    layer_name = options.layer or backbone_spec(ctx.config.model.backbone).layer
    return {
        "baselines": baselines,
        "ig_steps": options.ig_steps,
        "internal_batch_size": options.internal_batch_size,
        "layer_name": layer_name,
        "layer": find_layer(samples["model"], layer_name) if options.method == "grad_cam" else None,
    }


def _explain_task(
    ctx: RunContext,
    options: XaiConfig,
    samples: dict[str, Any],
    task: str,
    target: torch.Tensor | None,
) -> tuple[dict[str, Any], np.ndarray]:
    method_options = _method_options(ctx, options, samples)
    model, inputs = samples["model"], samples["inputs"]

    def run(candidate: torch.nn.Module) -> np.ndarray:
        if options.method == "grad_cam":
            method_options["layer"] = find_layer(candidate, method_options["layer_name"])
        return attribute(options.method, candidate, task, inputs, target, method_options).maps.sum(
            axis=1
        )

    result = attribute(options.method, model, task, inputs, target, method_options)
    maps = result.maps.sum(axis=1)  # (N, H, W): channels summed
    report: dict[str, Any] = {}
    if result.delta is not None:
        delta = np.abs(result.delta)
        report["ig_convergence_delta"] = {
            "mean_abs": float(delta.mean()),
            "max_abs": float(delta.max()),
        }
    if options.randomization:
        report["randomization"] = sanity.randomization_test(
            run, model, model.head(task), options.seed
        )
    if samples["masks"] is not None:
        masks = samples["masks"]
        report["mask_mass"] = float(np.nanmean(sanity.mask_mass(maps, masks)))
        report["mask_mass_uniform_baseline"] = float(masks.reshape(len(masks), -1).mean())
        report["pointing_game"] = float(sanity.pointing_game(maps, masks).mean())
    return report, maps


def _render(
    ctx: RunContext, samples: dict[str, Any], task: str, maps: np.ndarray, described: str
) -> list[str]:
    spec = samples["tasks"][task]
    titles, files = [], []
    for i, sample_id in enumerate(samples["ids"]):
        if spec.kind == "classification":
            probs = torch.softmax(torch.from_numpy(samples["outputs"][task][i]).double(), dim=0)
            k = int(samples["predicted"][task][i])
            name = spec.classes[k] if spec.classes else str(k)
            confidence = float(probs[k])
            title = (
                f"{sample_id}: {task} = {name} (confidence {confidence:.3f}); explains {described}"
            )
            titles.append(f"{name} ({float(probs[k]):.2f})")
        else:
            value = float(samples["predicted"][task][i])
            title = f"{sample_id}: {task} = {value:.3g}; explains {described}"
            titles.append(f"{task} {value:.2g}")
        rel = f"xai/overlays/{task}_{_safe(sample_id)}.png"
        mask = None if samples["masks"] is None else samples["masks"][i]
        render.overlay(samples["raw"][i], maps[i], title, mask, ctx.path(rel))
        files.append(rel)
    rel = f"xai/grid_{task}.png"
    render.grid(samples["raw"], maps, titles, samples["masks"], ctx.path(rel))
    return [*files, rel]


def _safe(name: str) -> str:
    """A file-name form of a sample id, distinct for distinct ids: an id that had to be
    changed (characters outside ``[A-Za-z0-9-_.]``, or over 100 of them) gets ``~`` and 10
    hex of its sha256, and ``~`` never survives unchanged."""
    import hashlib

    safe = "".join(ch if (ch.isascii() and ch.isalnum()) or ch in "-_." else "_" for ch in name)
    if safe == name and len(name) <= 100:
        return name
    return f"{safe[:100]}~{hashlib.sha256(name.encode()).hexdigest()[:10]}"


def _save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    atomic_write_with(path, lambda handle: np.savez(handle, **arrays))  # type: ignore[arg-type]


def _flat(summary: dict[str, Any]) -> dict[str, Any]:
    """xai/... scalars, the same keys the log gets."""
    flat: dict[str, Any] = {}
    for task, result in summary["tasks"].items():
        for key, value in result.items():
            if isinstance(value, dict):
                flat |= {
                    f"xai/{task}/{key}/{k}": v for k, v in value.items() if isinstance(v, float)
                }
            elif isinstance(value, float):
                flat[f"xai/{task}/{key}"] = value
    return flat


def _log(ctx: RunContext, summary: dict[str, Any]) -> None:
    tracker = Tracker(ctx.run_dir, ctx.config.logging, folder="xai/logs")
    tracker.log_step(0, _flat(summary))
    tracker.close()


__all__ = ["explain"]
