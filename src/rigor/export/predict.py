"""Predict with a bundle: class, calibrated confidence and abstention, without pickle."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rigor.cli import settle
from rigor.config import apply_overrides, run_config
from rigor.config.models import Config, TopVariableConfig
from rigor.data.dataset import ImageDataset
from rigor.errors import UsageError
from rigor.export.load import Bundle, load_bundle
from rigor.export.slide import sample_dataset, slide_outputs
from rigor.io import atomic_write_text
from rigor.models.registry import AUX, GATE
from rigor.policies.base import kind_of
from rigor.policies.registry import POLICIES, apply_policy
from rigor.runs.predict import spot_arrays


def _model(bundle: Bundle, config: Config) -> torch.nn.Module:
    from rigor.models.build import build_model
    from rigor.runs.restore import architecture, task_specs

    c, h, w = bundle.record["input_shape"]
    model_cfg = architecture(config.model)
    if (bundle.record.get("adapters") or {}).get("merged"):  # a plain model: no peft needed
        peft = model_cfg.peft.model_copy(update={"method": "none"})
        model_cfg = model_cfg.model_copy(update={"peft": peft})
    model = build_model(
        model_cfg,
        task_specs({"dataset": {"tasks": bundle.record["tasks"]}}),
        (c, h, w),
    )
    model.load_state_dict(bundle.state)
    return model.eval()


def _split_rows(bundle: Bundle, config: Config, split: str) -> tuple[ImageDataset, list[int]]:
    from rigor.data.build import build_dataset

    ids = json.loads((bundle.root / bundle.record["splits"]).read_text())["splits"].get(split)
    if ids is None:
        raise UsageError(f"--split: unknown split {split!r}")
    data = config.data
    if isinstance(data.genes, TopVariableConfig):  # the panel the run picked: its tasks
        data = apply_overrides(data, {"genes": list(bundle.record["tasks"])}, "data", "bundle")
    dataset = build_dataset(data, None)
    index = {sample_id: row for row, sample_id in enumerate(dataset.ids)}
    return dataset, [index[i] for i in ids]


def _file_rows(bundle: Bundle, config: Config, paths: list[Path]) -> tuple[ImageDataset, list[int]]:
    """Image files as a dataset with the bundle's input size and channels (no targets)."""
    from rigor.data.readers import FileReader, ImageRef
    from rigor.data.registry import RawData

    c, h, w = bundle.record["input_shape"]
    refs = [ImageRef(path, f"--input {path}") for path in paths]
    for ref in refs:
        if not ref.path.is_file():
            raise UsageError(f"--input: file not found: {ref.path}")
    names = [str(p) for p in paths]
    reader = FileReader(refs, (h, w), c, config.data.transforms.version)
    raw = RawData("inputs", "files", {}, {}, names, names, reader, fingerprint="")
    return ImageDataset(raw, reader, []), list(range(len(refs)))


@torch.no_grad()
def _outputs(
    bundle: Bundle, config: Config, dataset: ImageDataset, rows: list[int]
) -> tuple[dict[str, np.ndarray], list[str], dict[str, np.ndarray]]:
    """Model outputs, ids and targets of ``rows``, streamed batch by batch (never augmented;
    unreadable samples are an error, or left out under ``data.on_bad_sample: skip``)."""
    from rigor.data.loader import make_loader
    from rigor.data.transforms import pipeline_from_record

    model = _model(bundle, config)
    pipeline = pipeline_from_record(config.data.transforms, bundle.record["transforms"])
    loader = make_loader(
        dataset,
        rows,
        batch_size=config.training.eval_batch_size,
        num_workers=config.data.num_workers,
        prefetch_factor=config.data.prefetch_factor,
    )
    outputs: dict[str, list[np.ndarray]] = {}
    labels: dict[str, list[np.ndarray]] = {}
    ids: list[str] = []
    for batch in loader:
        if not len(batch):
            continue
        for task, value in model(pipeline(batch.input, torch.device("cpu"))).items():
            outputs.setdefault(task, []).append(value.numpy())
        for task, value in batch.targets.items():
            labels.setdefault(task, []).append(value.numpy())
        ids += [dataset.ids[row] for row in batch.index.tolist()]
    joined = {task: np.concatenate(parts) for task, parts in outputs.items()}
    return joined, ids, {task: np.concatenate(parts) for task, parts in labels.items()}


def predict_with_bundle(
    root: Path,
    inputs: list[Path] | None = None,
    split: str | None = None,
    output: Path | None = None,
    stage_b: Path | None = None,
    sample: tuple[Path, Path | None] | None = None,
) -> tuple[Path, dict[str, Any]]:
    """Predict ``inputs`` (image files), a ``split``, or a new HEST ``sample`` (its patches'
    ``.h5`` and, optionally, its measured expression); write a CSV and return it with a
    summary.

    Columns: ``id`` (with ``sample``, ``barcode``, ``x``, ``y`` for spots); for the policy's
    task ``class``, ``confidence``, ``abstained`` (``stage`` for a cascade, ``set`` and
    ``set_size`` for set policies, and ``label`` for a split); for every regression task
    ``<task>`` (and ``<task>_true``). A sample also gets an ``.h5ad`` and maps beside the CSV.
    """
    bundle = load_bundle(root)
    config = run_config(json.loads((root / bundle.record["config"]).read_text()))[0]
    if split is not None:
        dataset, rows = _split_rows(bundle, config, split)
    elif sample is not None:
        dataset, _ = sample_dataset(bundle, config, *sample)
        rows = list(range(len(dataset)))
    elif inputs:
        dataset, rows = _file_rows(bundle, config, inputs)
    else:
        raise UsageError("give --input PATH..., --split NAME or --hest-sample PATCHES.h5")
    settle()  # set up: collection back on for the batches
    outputs, ids, truth = _outputs(bundle, config, dataset, rows)
    measured = sample is not None and sample[1] is not None
    labels = truth if split is not None or measured else None
    columns: dict[str, list[str]] = {"id": list(ids)} | _spot_columns(dataset, ids)
    summary: dict[str, Any] = {"n": len(ids)}
    if bundle.policy is not None:
        second = _stage_b(bundle, stage_b, dataset, rows, ids)
        columns |= _selective(bundle, outputs, labels, summary, second)
    elif stage_b is not None:
        raise UsageError("--stage-b: this bundle has no policy (regression only)")
    for task, spec in bundle.record["tasks"].items():
        if spec["kind"] != "regression":
            continue
        values = outputs[task].reshape(len(ids), -1)[:, 0]
        columns[task] = [f"{v:.6f}" for v in values]
        columns |= _interval_columns(bundle, task, values)
        if labels is not None:
            truth_values = labels[task].astype(np.float64)
            columns[f"{task}_true"] = [f"{v:.6f}" for v in truth_values]
            summary.setdefault("mae", {})[task] = float(np.abs(values - truth_values).mean())
    name = split or (sample[0].stem if sample is not None else "inputs")
    target = output or root.parent / "predict" / f"{name}.csv"
    atomic_write_text(target, _table(columns))
    if sample is not None:
        summary |= slide_outputs(target, bundle, config, dataset, ids, outputs, labels)
    return target, summary


def _spot_columns(dataset: ImageDataset, ids: list[str]) -> dict[str, list[str]]:
    """``sample``, ``barcode``, ``x`` and ``y`` (pixels on the slide) of spot data (HEST),
    so predictions can be put back on the tissue; nothing for other data."""
    spots = spot_arrays(dataset, ids)
    if not spots:
        return {}
    x, y = spots["coords"][:, 0], spots["coords"][:, 1]
    return {
        "sample": spots["sample"].tolist(),
        "barcode": spots["barcode"].tolist(),
        "x": [f"{v:g}" for v in x],
        "y": [f"{v:g}" for v in y],
    }


def _interval_columns(bundle: Bundle, task: str, values: np.ndarray) -> dict[str, list[str]]:
    """``<task>_lo`` and ``<task>_hi``: the split-conformal interval fitted on val_calib
    (covers the true value with probability >= 1 - alpha under exchangeability)."""
    fitted = (bundle.intervals or {}).get("tasks", {}).get(task)
    if fitted is None:
        return {}
    q_hat = np.inf if fitted["q_hat"] is None else float(fitted["q_hat"])
    return {
        f"{task}_lo": [f"{v - q_hat:.6f}" for v in values],
        f"{task}_hi": [f"{v + q_hat:.6f}" for v in values],
    }


def _stage_b(
    bundle: Bundle, path: Path | None, dataset: ImageDataset, rows: list[int], ids: list[str]
) -> np.ndarray | None:
    """Stage B's logits from a second run's bundle, when the cascade names one: the bundle
    must pass every check, be that run's, and take the same input size."""
    policy = bundle.policy or {}
    wanted = policy.get("stage_b") if kind_of(policy) == "cascade" else None
    if not isinstance(wanted, dict):
        if path is not None:
            raise UsageError("--stage-b: the bundle's policy is not a cascade with a second run")
        return None
    if path is None:
        raise UsageError(
            f"this cascade's Stage B is run {wanted['run_id']}: give its bundle with --stage-b"
        )
    second = load_bundle(path)
    if second.record["run_id"] != wanted["run_id"]:
        raise UsageError(
            f"--stage-b {path}: bundle of run {second.record['run_id']}, but the cascade was "
            f"calibrated with run {wanted['run_id']}"
        )
    if second.record["input_shape"] != bundle.record["input_shape"]:
        raise UsageError(f"--stage-b {path}: its input shape differs from this bundle's")
    config = run_config(json.loads((path / second.record["config"]).read_text()))[0]
    outputs, second_ids, _ = _outputs(second, config, dataset, rows)
    if second_ids != ids:
        raise UsageError(f"--stage-b {path}: it read different samples (skipped rows differ)")
    return outputs[bundle.record["task"]]


def _selective(
    bundle: Bundle,
    outputs: dict[str, np.ndarray],
    labels: dict[str, np.ndarray] | None,
    summary: dict[str, Any],
    stage_b: np.ndarray | None = None,
) -> dict[str, list[str]]:
    """The policy task's columns (class, confidence, abstained; ``stage`` for a cascade;
    ``set`` and ``set_size`` for set policies) and the summary: the policy, the guarantee
    that holds, coverage, and with labels the selective risk (and set coverage)."""
    task, policy = bundle.record["task"], bundle.policy
    assert policy is not None
    second = stage_b if stage_b is not None else outputs.get(AUX + task)
    decisions = apply_policy(policy, outputs[task], outputs.get(GATE + task), second)
    kind = kind_of(policy)
    classes = bundle.record["tasks"][task].get("classes") or [
        str(k) for k in range(outputs[task].shape[1])
    ]
    accepted = decisions.accepted
    columns = {
        "class": [classes[k] for k in decisions.predicted],
        "confidence": [f"{c:.6f}" for c in decisions.confidence],
        "abstained": ["no" if a else "yes" for a in accepted],
    }
    if decisions.stage is not None:
        columns["stage"] = list(decisions.stage)
    if decisions.sets is not None:
        columns["set"] = [
            "|".join(classes[k] for k in np.flatnonzero(row)) for row in decisions.sets
        ]
        columns["set_size"] = [str(int(n)) for n in decisions.sets.sum(axis=1)]
    summary |= {
        "policy": kind,
        "guarantee": policy.get("guarantee", POLICIES["threshold"].guarantee),
        "accepted": int(accepted.sum()),
        "coverage": float(accepted.mean()),
    }
    if labels is not None:
        truth = labels[task].astype(np.int64)
        columns["label"] = [classes[k] for k in truth]
        if accepted.any():
            wrong = decisions.predicted[accepted] != truth[accepted]
            summary["selective_risk"] = float(wrong.mean())
        if decisions.sets is not None and accepted.any():
            held = decisions.sets[np.arange(len(truth)), truth][accepted]
            summary["set_coverage"] = float(held.mean())
            summary["mean_set_size"] = float(decisions.sets.sum(axis=1)[accepted].mean())
    return columns


def _table(columns: dict[str, list[str]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(list(columns))
    writer.writerows(zip(*columns.values(), strict=True))
    return buffer.getvalue()


def predict_screen(path: Path, summary: dict[str, Any]) -> str:
    """predict's summary on stderr: what was answered under which policy and guarantee,
    the selective risk and set coverage when labels were known, the regression errors."""
    lines = [f"predict: {summary['n']} rows -> {path}"]
    if "policy" in summary:
        lines.append(f"  policy {summary['policy']}: {summary['guarantee']}")
        lines.append(
            f"  answered {summary['accepted']} of {summary['n']} ({summary['coverage']:.3f})"
            + (
                f", selective risk {summary['selective_risk']:.4f}"
                if "selective_risk" in summary
                else ""
            )
            + (
                f", set coverage {summary['set_coverage']:.3f}, mean set size "
                f"{summary['mean_set_size']:.2f}"
                if "set_coverage" in summary
                else ""
            )
        )
    scored = summary.get("genes")
    if scored:  # a new sample with its measured expression
        rows = [
            f"  {gene}: Pearson {_ci(node['pearson'])}, MAE {_ci(node['mae'])}"
            for gene, node in scored.items()
        ]
    else:
        rows = [f"  {task}: MAE {value:.4g}" for task, value in summary.get("mae", {}).items()]
    lines += rows[:8]
    if len(rows) > 8:
        lines.append(f"  ... and {len(rows) - 8} more tasks (the summary JSON on stdout)")
    if "spot_table" in summary:
        table, maps = summary["spot_table"], len(summary["maps"])
        lines.append(f"  spots with coordinates: {table}; {maps} maps beside it")
    return "\n".join(lines)


def _ci(node: dict[str, Any]) -> str:
    return f"{node['estimate']:.3f} [{node['ci_lower']:.3f}, {node['ci_upper']:.3f}]"
