"""The eval stage: report on val_test only; fit nothing.

Reads ``predictions/val_test.npz`` (or, with ``recompute``, runs the best checkpoint on
val_test) and, when the manifest has a calibration stage, the fitted policy in
``calibration/thresholds.json``, whose temperature and threshold it applies unchanged.
"""

from __future__ import annotations

import csv
import io
import sys
from pathlib import Path
from typing import Any

import numpy as np

from rigor.config import apply_overrides
from rigor.evaluation.caveats import interval_caveats, task_caveats
from rigor.evaluation.report_classification import classification_report
from rigor.evaluation.report_guarantees import (
    guarantees_figures,
    guarantees_report,
    policy_table,
)
from rigor.evaluation.report_histology import histology_outputs
from rigor.evaluation.report_regression import interval_report, regression_report, split_scores
from rigor.evaluation.screen import eval_screen
from rigor.io import atomic_write_json, atomic_write_text, read_json
from rigor.plotting.pool import PlotPool
from rigor.policies.base import record_name
from rigor.policies.registry import POLICIES
from rigor.stages import BEST, RunContext, finish_stage, open_run
from rigor.tracking import Progress, report_stage
from rigor.tracking.mirror import note_mirror
from rigor.tracking.tensorboard import estimates

READS = "predictions/val_test.npz"
POLICY = "calibration/thresholds.json"
INTERVALS = "calibration/intervals.json"
# the records the policies fit, by name (calibration/platt.json: "platt")
GUARANTEES = {record_name(p.record): p.record for p in POLICIES.values() if p.record is not None}


def evaluate(
    manifest_path: Path,
    env_policy: str | None = None,
    force: bool = False,
    recompute: bool = False,
    overrides: dict[str, Any] | None = None,
) -> Path:
    """Write eval/ (metrics.json, metrics.csv, plots) and an eval stage entry."""
    from rigor.manifest import load_manifest

    manifest = load_manifest(manifest_path)
    calibrated = POLICY in manifest["sha256"]
    reads = [POLICY] if calibrated else []
    reads += [INTERVALS] if INTERVALS in manifest["sha256"] else []
    reads += [rel for rel in GUARANTEES.values() if rel in manifest["sha256"]]
    reads += [manifest.get("best_checkpoint", BEST), "splits.json"] if recompute else [READS]
    ctx = open_run(manifest_path, reads, env_policy, force)
    options = apply_overrides(ctx.config.evaluation, overrides, "evaluation")
    with PlotPool():  # figures are drawn in worker processes beside the metrics
        policy = read_json(ctx.path(POLICY)) if calibrated else None
        intervals = read_json(ctx.path(INTERVALS)) if INTERVALS in reads else None
        records = {
            name: read_json(ctx.path(rel)) for name, rel in GUARANTEES.items() if rel in reads
        }
        predictions = (
            _recomputed(ctx) if recompute else dict(np.load(ctx.path(READS), allow_pickle=False))
        )
        out = ctx.run_dir / "eval"
        out.mkdir(exist_ok=True)
        report: dict[str, Any] = {"split": "val_test", "recomputed": recompute, "tasks": {}}
        outputs: list[str] = []
        progress = Progress(len(ctx.manifest["dataset"]["tasks"]), "eval", "tasks")
        for task, spec in ctx.manifest["dataset"]["tasks"].items():
            progress.tick()
            if spec["kind"] == "classification":
                task_policy = policy if policy and policy["task"] == task else None
                result, files = _classification(
                    ctx, task, spec, predictions, task_policy, records, options
                )
            else:
                result, files = _regression(task, predictions, intervals, options), []
            report["tasks"][task] = result
            outputs += files
        outputs += histology_outputs(ctx, report, predictions, options.figure_genes)
    atomic_write_json(out / "metrics.json", report)
    atomic_write_text(out / "metrics.csv", _csv(report))
    outputs = ["eval/metrics.json", "eval/metrics.csv", *outputs]
    stage_options = {"reads": reads, "recompute": recompute, **options.model_dump()}
    summary = _summary(report)
    values = estimates(report["tasks"])  # the numbers and figures, beside training's
    note_mirror(
        summary, report_stage(ctx.config, ctx.manifest_path, ctx.manifest, "eval", values, outputs)
    )
    finish_stage(ctx, "eval", stage_options, outputs, summary)
    print(eval_screen(report, out), file=sys.stderr)
    return out / "metrics.json"


def _regression(
    task: str,
    predictions: dict[str, np.ndarray],
    intervals: dict[str, Any] | None,
    options: Any,
) -> dict[str, Any]:
    """The regression report of one task, with its interval on val_test when calibrate
    fitted one, and the warnings."""
    logits, targets = predictions[f"logits_{task}"], predictions[f"targets_{task}"]
    groups = predictions.get("groups")
    result = regression_report(task, logits, targets, groups, options)
    for key, labels in (("per_sample", predictions.get("sample")), ("per_group", groups)):
        if labels is not None:
            result[key] = split_scores(logits, targets, np.asarray(labels).astype(str))
    result["warnings"] = []
    if intervals is not None and task in intervals["tasks"]:
        result["interval"] = interval_report(logits, targets, groups, intervals, task, options)
        result["warnings"] = interval_caveats(task, result["interval"])
    return result


def _classification(
    ctx: RunContext,
    task: str,
    spec: dict[str, Any],
    predictions: dict[str, np.ndarray],
    policy: dict[str, Any] | None,
    records: dict[str, Any],
    options: Any,
) -> tuple[dict[str, Any], list[str]]:
    """The classification report of one task, and with a calibrated policy every policy of
    calibrate side by side (``guarantees``, and ``eval/<task>_policies.md``)."""
    logits, labels = predictions[f"logits_{task}"], predictions[f"targets_{task}"].astype(np.int64)
    gate = predictions.get(f"gate_{task}")
    guaranteed = policy is not None and bool(records)
    outputs_of = {
        "logits": logits,
        "gate": gate,
        "aux": predictions.get(f"aux_{task}"),
        "ids": predictions.get("ids"),
    }
    # these figures need no bootstrap: the plot workers draw them while the metrics run
    more = guarantees_figures(ctx, task, records, outputs_of, labels) if guaranteed else []
    result, files = classification_report(ctx, task, spec, logits, labels, gate, policy, options)
    if guaranteed:
        result["guarantees"] = guarantees_report(task, records, outputs_of, labels, options)
        atomic_write_text(ctx.path(f"eval/{task}_policies.md"), policy_table(result))
        files += [*more, f"eval/{task}_policies.md"]
    result["warnings"] = task_caveats(task, result, logits, labels, policy, records)
    return result, files


def _recomputed(ctx: RunContext) -> dict[str, np.ndarray]:
    from rigor.runs.restore import predict_split

    return predict_split(ctx, "val_test")


def _rows(prefix: str, node: Any) -> list[dict[str, Any]]:
    if isinstance(node, dict) and "ci_lower" in node:
        return [
            {
                "metric": prefix,
                **{k: node[k] for k in ("estimate", "mean", "std", "ci_lower", "ci_upper")},
            }
        ]
    if isinstance(node, dict):
        return [
            row
            for key, value in node.items()
            for row in _rows(f"{prefix}/{key}" if prefix else key, value)
        ]
    if isinstance(node, list):
        return [row for i, value in enumerate(node) for row in _rows(f"{prefix}/{i}", value)]
    return []


def _csv(report: dict[str, Any]) -> str:
    """One row per metric with a CI: metric, estimate, mean, std, ci_lower, ci_upper."""
    buffer = io.StringIO()
    writer = csv.DictWriter(
        buffer, fieldnames=["metric", "estimate", "mean", "std", "ci_lower", "ci_upper"]
    )
    writer.writeheader()
    writer.writerows(_rows("", report["tasks"]))
    return buffer.getvalue()


def _summary(report: dict[str, Any]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for task, result in report["tasks"].items():
        if result["kind"] == "classification":
            summary[f"{task}/augrc_msp"] = result["scores"]["msp"]["augrc"]["estimate"]
            if "gate" in result["scores"]:
                summary[f"{task}/augrc_gate"] = result["scores"]["gate"]["augrc"]["estimate"]
            summary[f"{task}/accuracy"] = result["calibration"]["accuracy"]["estimate"]
            if "policy" in result:
                summary[f"{task}/policy_coverage"] = result["policy"]["coverage"]["estimate"]
                summary[f"{task}/policy_risk"] = result["policy"]["selective_risk"]["estimate"]
                summary[f"{task}/policy_meets_target"] = result["policy"]["meets_target"]
                summary[f"{task}/policy_meets_target_exact"] = result["policy"][
                    "meets_target_exact"
                ]
        else:
            summary[f"{task}/mae_mean"] = result["mae_mean"]
    summary["warnings"] = sum(len(r.get("warnings", [])) for r in report["tasks"].values())
    return summary
