"""calibrate's one screen on stderr: the temperature and what it did to ECE, the threshold
and its val_calib coverage and risk, the policy export will ship with the guarantee it
states, the regression intervals, every warning, and where the files went."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rigor.policies.base import CONFORMAL, interval
from rigor.policies.caveats import calib_size_caveats, temperature_caveats
from rigor.policies.registry import POLICIES


def classifier_warnings(record: dict[str, Any], records: dict[str, Any]) -> list[str]:
    """Temperature scaling that hurt on val_calib, and a val_calib too small for the
    conformal alpha or the target risk."""
    conformal = records.get(CONFORMAL)
    alpha = conformal["alpha"] if conformal else None
    return temperature_caveats(record) + calib_size_caveats(
        record["fitted_on"]["n"], alpha, record["target_risk"]
    )


def calibrate_screen(
    policy: str,
    record: dict[str, Any] | None,
    intervals: dict[str, Any] | None,
    warnings: list[str],
    folder: Path,
) -> str:
    """The summary lines of one calibrate run (``record``: thresholds.json, or None for a
    regression-only run)."""
    lines = ["calibrate on val_calib:"]
    if record is not None:
        fitted, ece = record["fitted_on"], record["ece"]
        lines += [
            f"  {record['task']}: temperature {record['temperature']:.3g} "
            f"({record['temperature_fit']['status']}), ECE {interval(ece['before'])} -> "
            f"{interval(ece['after'])}  (n = {fitted['n']})",
            f"  threshold {record['threshold']:.4g}: answers {fitted['coverage']:.3f} of "
            f"val_calib at selective risk {fitted['selective_risk']:.4f} (target "
            f"{record['target_risk']:g})",
            f"  policy for export: {policy}: {POLICIES[policy].guarantee}",
        ]
    if intervals is not None:
        for task, fitted in list(intervals["tasks"].items())[:8]:
            width = "unbounded" if fitted["q_hat"] is None else f"+/-{fitted['q_hat']:.4g}"
            lines.append(f"  {task}: interval {width} at alpha {intervals['alpha']:g}")
        if len(intervals["tasks"]) > 8:
            lines.append(f"  ... and {len(intervals['tasks']) - 8} more (intervals.json)")
    lines += [f"  warning: {w}" for w in warnings]
    lines.append(f"  files: {folder}/")
    return "\n".join(lines)


def interval_warnings(intervals: dict[str, Any]) -> list[str]:
    """Spot-level intervals fitted on spots of few patients (their guarantee is for spots,
    not for a new patient), and intervals left unbounded by too few samples."""
    from rigor.calibration.intervals import METHODS, patients_needed

    out = []
    fitted, alpha = intervals["fitted_on"], intervals["alpha"]
    groups = fitted.get("groups")
    if intervals["method"] == METHODS["spot"] and groups is not None and groups < fitted["n"]:
        enough = groups >= patients_needed(alpha)
        out.append(
            f"spot-level intervals treat val_calib's {fitted['n']} spots as exchangeable, but "
            f"they come from {groups} patients (split groups): on a new patient the coverage "
            "can fall short of 1 - alpha; "
            + (
                "calibration.interval_method: patient gives the guarantee for a new patient"
                if enough
                else f"patient-level intervals at alpha {alpha:g} need at least "
                f"{patients_needed(alpha)} patients in val_calib (give it more groups)"
            )
        )
    unbounded = [task for task, node in intervals["tasks"].items() if node["q_hat"] is None]
    if unbounded:
        out.append(
            f"{len(unbounded)} interval(s) unbounded at alpha {alpha:g} (too few val_calib "
            f"samples): {', '.join(unbounded[:5])}; raise calibration.interval_alpha"
        )
    return out
