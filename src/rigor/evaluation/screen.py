"""The one screen a stage prints on stderr when it is done: headline metrics with their CIs,
the policy and the guarantee it states, the warnings, and where the files went (stdout
keeps the single path scripts capture)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rigor.policies.base import interval
from rigor.policies.registry import POLICIES


def _classification(task: str, result: dict[str, Any]) -> list[str]:
    lines = [
        f"{task}: accuracy {interval(result['accuracy'])}, AUGRC (MSP) "
        f"{interval(result['scores']['msp']['augrc'])}, ECE "
        f"{interval(result['calibration']['ece'])}  (n = {result['n']})"
    ]
    plain = result.get("policy")
    if plain is not None:
        holds = "meets" if plain["meets_target"] else "does not meet"
        lines.append(
            f"  threshold policy: answers {interval(plain['coverage'])}, selective risk "
            f"{interval(plain['selective_risk'])}; its CI {holds} the target "
            f"{plain['target_risk']:g} ({POLICIES['threshold'].guarantee})"
        )
    return lines


def _regression(task: str, result: dict[str, Any]) -> list[str]:
    line = (
        f"{task}: Pearson {result['pearson_mean']:.3f} (mean over targets; median "
        f"{result['pearson_median']:.3f}), MAE {result['mae_mean']:.4g}  (n = {result['n']})"
    )
    lines = [line]
    fitted = result.get("interval")
    if fitted is not None:
        head = f"  interval at alpha {fitted['alpha']:g}:"
        if fitted["width"] is None:
            lines.append(f"{head} unbounded (too few val_calib samples)")
        else:
            coverage = interval(fitted["coverage"])
            lines.append(f"{head} coverage {coverage}, width {fitted['width']:.4g}")
    return lines


def eval_screen(
    report: dict[str, Any], folder: Path, most_tasks: int = 8, most_warnings: int = 12
) -> str:
    """eval's summary: per task the headline metrics with CIs, the threshold policy, every
    warning; then where the files are (at most ``most_tasks`` tasks are listed: a per-gene
    run has hundreds)."""
    lines = [f"eval on {report['split']}:"]
    tasks = list(report["tasks"].items())
    for task, result in tasks[:most_tasks]:
        show = _classification if result["kind"] == "classification" else _regression
        lines += ["  " + line for line in show(task, result)]
    if len(tasks) > most_tasks:
        lines.append(f"  ... and {len(tasks) - most_tasks} more tasks (eval/metrics.csv)")
    warnings = [w for _, result in tasks for w in result.get("warnings", [])]
    lines += [f"  warning: {w}" for w in warnings[:most_warnings]]
    if len(warnings) > most_warnings:
        lines.append(f"  ... and {len(warnings) - most_warnings} more warnings (eval/metrics.json)")
    lines.append(f"  files: {folder}/ (metrics.json, metrics.csv, figures, policy tables)")
    return "\n".join(lines)
