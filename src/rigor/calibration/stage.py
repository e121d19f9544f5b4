"""The calibrate stage: temperature and threshold policy from val_calib, and nothing else."""

from __future__ import annotations

import csv
import io
import sys
from pathlib import Path
from typing import Any

import numpy as np

from rigor.calibration.bundle_policy import THRESHOLDS, build_policy
from rigor.calibration.cascade_run import resolve_stage_b
from rigor.calibration.guarantee_schema import validate_record
from rigor.calibration.guarantees import guarantee_records
from rigor.calibration.intervals import METHODS, patients_needed, regression_intervals
from rigor.calibration.schema import validate_thresholds
from rigor.calibration.screen import calibrate_screen, classifier_warnings, interval_warnings
from rigor.calibration.temperature import choose_temperature
from rigor.config import apply_overrides
from rigor.errors import UsageError
from rigor.io import atomic_write_json, atomic_write_text, finite_json
from rigor.metrics.bootstrap import bootstrap_ci
from rigor.metrics.calibration import ece, nll
from rigor.metrics.scores import sigmoid, softmax
from rigor.plotting import figures
from rigor.plotting.pool import PlotPool, draw
from rigor.policies.threshold import choose, sweep
from rigor.stages import RunContext, finish_stage, open_run
from rigor.tracking import report_stage
from rigor.tracking.mirror import note_mirror

READS = "predictions/val_calib.npz"
INTERVALS = "calibration/intervals.json"


def classification_task(ctx: RunContext, wanted: str | None) -> str:
    """The task to calibrate: the named one, or the first classification task."""
    tasks = ctx.manifest["dataset"]["tasks"]
    names = [name for name, spec in tasks.items() if spec["kind"] == "classification"]
    if wanted is not None and wanted not in names:
        raise UsageError(
            f"calibration.task: {wanted!r} is not a classification task of this run {names}"
        )
    if not names:
        raise UsageError("this run has no classification task to calibrate")
    return wanted or names[0]


def calibrate(
    manifest_path: Path,
    env_policy: str | None = None,
    force: bool = False,
    overrides: dict[str, Any] | None = None,
) -> Path:
    """Fit on val_calib only: temperature, threshold policy and the policies with guarantees
    (Platt gate, conformal sets, CRC, SCRC) for a classification task, split-conformal
    intervals for every regression task; write calibration/ and a stage entry. Everything is
    fitted before anything is written: a failure leaves no file. Returns thresholds.json, or
    intervals.json for a regression-only run."""
    ctx = open_run(manifest_path, [READS], env_policy, force)
    options = apply_overrides(ctx.config.calibration, overrides, "calibration")
    _require_rows(ctx)
    kinds = {spec["kind"] for spec in ctx.manifest["dataset"]["tasks"].values()}
    writes: list[tuple[str, Any]] = []
    summary: dict[str, Any] = {}
    record, intervals, warnings = None, None, []
    with PlotPool(most=1):  # the reliability diagram is drawn beside the fitting
        if "classification" in kinds or options.task is not None:
            record, writes = _calibrate_classifier(ctx, options)
            warnings = classifier_warnings(record, dict(writes))
            summary |= _summary(record)
        if "regression" in kinds:
            intervals = _intervals(ctx, options.interval_alpha, options.interval_method)
            warnings += interval_warnings(intervals)
            writes.append((INTERVALS, intervals))
            summary["interval_alpha"] = intervals["alpha"]
        summary["warnings"] = warnings
        (ctx.run_dir / "calibration").mkdir(exist_ok=True)
        outputs = []
        for rel, content in writes:
            if callable(content):
                content(ctx.path(rel))
            else:
                atomic_write_json(ctx.path(rel), content)
            outputs.append(rel)
    values = {k: v for k, v in summary.items() if k != "warnings"}
    reported = report_stage(
        ctx.config, ctx.manifest_path, ctx.manifest, "calibrate", values, outputs
    )
    note_mirror(summary, reported)
    finish_stage(ctx, "calibrate", {"reads": [READS], **options.model_dump()}, outputs, summary)
    folder = ctx.run_dir / "calibration"
    print(calibrate_screen(options.policy, record, intervals, warnings, folder), file=sys.stderr)
    return ctx.path(outputs[0])


def _require_rows(ctx: RunContext) -> None:
    """An empty val_calib (every sample skipped, or none assigned) fits nothing: exit 2."""
    with np.load(ctx.path(READS), allow_pickle=False) as data:
        rows = {len(data[name]) for name in data.files if name.startswith("targets_")}
    if rows <= {0}:
        raise UsageError(
            f"{ctx.path(READS)}: val_calib has no samples, so nothing can be calibrated "
            "(give val_calib more groups in data.splits, or check the skipped samples)"
        )


def _intervals(ctx: RunContext, alpha: float, method: str) -> dict[str, Any]:
    """calibration/intervals.json: q_hat per regression task from val_calib residuals (over
    the spots, or over the split groups: exit 2 when these are too few for alpha)."""
    tasks = [
        t
        for t, spec in ctx.manifest["dataset"]["tasks"].items()
        if spec["kind"] != "classification"
    ]
    with np.load(ctx.path(READS), allow_pickle=False) as data:
        predictions = {t: data[f"logits_{t}"].astype(np.float64) for t in tasks}
        targets = {t: data[f"targets_{t}"].astype(np.float64) for t in tasks}
        groups = data["groups"] if "groups" in data.files else None
    count = len(np.unique(groups)) if groups is not None else None
    if method == "patient" and (count is None or count < patients_needed(alpha)):
        raise UsageError(
            f"calibration.interval_method: patient at alpha {alpha:g} needs val_calib to hold "
            f"at least {patients_needed(alpha)} patients (split groups); it holds {count}: give "
            "val_calib more groups in data.splits, raise calibration.interval_alpha, or use "
            "interval_method: spot (whose guarantee holds for spots, not a new patient)"
        )
    fitted_on = {"split": "val_calib", "n": int(len(next(iter(targets.values()))))}
    record = {
        "schema_version": 1,
        "method": METHODS[method],
        "alpha": alpha,
        "fitted_on": fitted_on | ({"groups": count} if count is not None else {}),
        "tasks": regression_intervals(predictions, targets, alpha, groups, method),
    }
    validate_record("intervals", record, INTERVALS)
    return record


def _load_calib(ctx: RunContext, task: str) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Logits, labels and gate logits (or None) of ``task`` on val_calib, checked: a NaN or
    infinite output or a label outside the classes is exit 2, naming the file and row."""
    with np.load(ctx.path(READS), allow_pickle=False) as data:
        logits, labels = data[f"logits_{task}"], data[f"targets_{task}"].astype(np.int64)
        gate = data[f"gate_{task}"] if f"gate_{task}" in data.files else None
    for name, values in (("logits", logits), ("gate", gate)):
        if values is None:
            continue
        bad = ~np.isfinite(np.asarray(values, np.float64).reshape(len(values), -1)).all(axis=1)
        if bad.any():
            raise UsageError(
                f"{ctx.path(READS)}: {name}_{task} row {int(np.flatnonzero(bad)[0])} is NaN or "
                f"infinite ({int(bad.sum())} rows); nothing was calibrated"
            )
    if ((labels < 0) | (labels >= logits.shape[1])).any():
        raise UsageError(f"{ctx.path(READS)}: targets_{task} has labels outside the classes")
    return logits, labels, gate


def _calibrate_classifier(
    ctx: RunContext, options: Any
) -> tuple[dict[str, Any], list[tuple[str, Any]]]:
    """Temperature and threshold policy of the classification task (thresholds.json), then
    the policies with guarantees; returns the thresholds record and what to write."""
    task = classification_task(ctx, options.task)
    logits, labels, gate = _load_calib(ctx, task)
    if options.score == "gate" and gate is None:
        raise UsageError(
            f"calibration.score: gate needs a gated task, but task {task!r} of this run has no "
            "gate (train with model.gate.task set to it)"
        )
    temperature, temperature_fit = choose_temperature(logits, labels, options.temperature)
    before, after = softmax(logits), softmax(logits, temperature)
    evaluation = ctx.config.evaluation
    ci: dict[str, Any] = {
        "n_resamples": evaluation.n_resamples,
        "level": evaluation.level,
        "seed": evaluation.seed,
    }
    binary = logits.shape[1] == 2
    confidence = (
        sigmoid(gate) if options.score == "gate" and gate is not None else after.max(axis=1)
    )
    table = sweep(confidence, after.argmax(axis=1), labels, binary)
    chosen = choose(table, options.target_risk, options.min_coverage, options.fnr_target)
    record = {
        "schema_version": 1,
        "task": task,
        "score": "gate" if options.score == "gate" else "msp_temperature",
        "temperature": temperature,
        "temperature_fit": temperature_fit,
        "threshold": float(table.threshold[chosen]),
        "target_risk": options.target_risk,
        "min_coverage": options.min_coverage,
        "fnr_target": options.fnr_target,
        "fitted_on": {"split": "val_calib", "n": int(len(labels)), **table.row(chosen)},
        "nll": {"before": nll(before, labels), "after": nll(after, labels)},
        "ece": {
            "before": bootstrap_ci(ece, before, labels, **ci),
            "after": bootstrap_ci(ece, after, labels, **ci),
        },
        "sweep": "calibration/sweep.csv",
    }
    record = finite_json(record)  # JSON has no NaN: an undefined value is null, and a null
    validate_thresholds(record)  # threshold or temperature fails the schema here (exit 3)
    if options.stage_b is not None and gate is None:
        raise UsageError(
            f"calibration.stage_b: the cascade routes with the gate, but task {task!r} has none"
        )
    spec = ctx.manifest["dataset"]["tasks"][task]
    stage_b = (
        resolve_stage_b(options.stage_b, ctx.run_dir, task, spec) if gate is not None else None
    )
    records = {THRESHOLDS: record} | guarantee_records(task, logits, labels, gate, options, stage_b)
    if options.policy != "none":  # the chosen policy must be feasible (exit 2)
        build_policy(options.policy, records)
    writes = _threshold_writes(record, table.table(), before, after, labels)
    return record, writes + [(rel, rec) for rel, rec in records.items() if rel != THRESHOLDS]


def _summary(record: dict[str, Any]) -> dict[str, Any]:
    return {
        "temperature": record["temperature"],
        "threshold": record["threshold"],
        "val_calib_coverage": record["fitted_on"]["coverage"],
        "val_calib_selective_risk": record["fitted_on"]["selective_risk"],
        "ece_before": record["ece"]["before"]["estimate"],
        "ece_after": record["ece"]["after"]["estimate"],
    }


def _threshold_writes(
    record: dict[str, Any],
    rows: list[dict[str, Any]],
    before: np.ndarray,
    after: np.ndarray,
    labels: np.ndarray,
) -> list[tuple[str, Any]]:
    """thresholds.json, the sweep table and a before/after reliability diagram."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    text = buffer.getvalue()
    return [
        (THRESHOLDS, record),
        ("calibration/sweep.csv", lambda path: atomic_write_text(path, text)),
        (
            "calibration/reliability.png",
            lambda path: draw(
                figures.reliability_before_after, before, after, labels, record, path
            ),
        ),
    ]
