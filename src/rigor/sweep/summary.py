"""Summarise a sweep from its points' status files and run manifests.

Points are ranked by the config's monitor on ``val_select`` (the split that picks models);
``val_test`` numbers are reported next to it and never used to choose.
"""

from __future__ import annotations

import csv
import io
import json
import math
import sys
from pathlib import Path
from typing import Any

from rigor.errors import UsageError
from rigor.io import atomic_write_json, atomic_write_text
from rigor.manifest import load_manifest
from rigor.run_kinds import kind_of
from rigor.tracking import monitor_to_key


def _monitor(manifest: dict[str, Any], manifest_path: Path) -> tuple[str, str]:
    """The ranking metric key (``best/…``) and its mode from the run's resolved config."""
    config = json.loads((manifest_path.parent / "config_resolved.json").read_text())
    ranking = kind_of(manifest).ranking
    if ranking is not None:
        return ranking
    training = config["training"]
    return f"best/{monitor_to_key(training['monitor'])}", training["monitor_mode"]


def summarize(folder: Path) -> dict[str, Any]:
    """Write ``summary.json`` and ``summary.csv`` for the sweep in ``folder``; return it."""
    record_path = folder / "sweep.json"
    if not record_path.is_file():
        raise UsageError(f"--summarize: {folder} is not a sweep folder (no sweep.json)")
    record = json.loads(record_path.read_text())
    rows: list[dict[str, Any]] = []
    monitor, mode = None, "max"
    for point in record["points"]:
        status_path = folder / "points" / f"{point['index']}.json"
        row: dict[str, Any] = {"index": point["index"], "overrides": point["overrides"]}
        if not status_path.is_file():
            row |= {"status": "pending", "error": "no status yet (running, or lost: see logs)"}
            rows.append(row)
            continue
        status = json.loads(status_path.read_text())
        row |= {"status": status["status"], "error": status["error"]}
        if status["status"] == "ok":
            manifest_path = Path(status["manifest"])
            if not manifest_path.is_absolute():
                manifest_path = Path(record.get("cwd", ".")) / manifest_path
            manifest = load_manifest(manifest_path)
            monitor, mode = _monitor(manifest, manifest_path)
            row |= {
                "run_id": manifest["run_id"],
                "manifest": str(manifest_path),
                "metrics": manifest["metrics"],
            }
        rows.append(row)
    done = [r for r in rows if r["status"] == "ok" and monitor in r["metrics"]]
    sign = -1.0 if mode == "max" else 1.0
    ranked = sorted(done, key=lambda r: (_key(sign * r["metrics"][monitor]), r["index"]))
    for rank, row in enumerate(ranked, start=1):
        row["rank"] = rank
    summary = {
        "sweep_id": record["sweep_id"],
        "monitor": monitor,
        "mode": mode,
        "chosen_on": "val_select",
        "best": ranked[0] if ranked else None,
        "points": rows,
    }
    if record.get("optuna") is not None:  # which Optuna trial each point was
        trials = {p["index"]: p.get("trial") for p in record["points"]}
        best_trial = trials.get(ranked[0]["index"]) if ranked else None
        summary["optuna"] = {"study": "optuna.db", "trials": record["optuna"]}
        summary["optuna"]["best_trial"] = best_trial
    atomic_write_json(folder / "summary.json", summary)
    keys = [entry["key"] for entry in record["grid"]]
    keys += [entry["key"] for entry in record.get("ranges", [])]
    keys += _varying_keys(record.get("explicit") or [])
    atomic_write_text(folder / "summary.csv", _csv(rows, keys))
    if not keys:
        return summary
    if ranked and monitor is not None:
        log_keys = {e["key"] for e in record.get("ranges", []) if e["scale"] == "log"}
        plot_against_values(folder / "summary.png", ranked, keys, monitor, log_keys)
    return summary


def _varying_keys(points: list[dict[str, Any]]) -> list[str]:
    """Keys that every given point sets and that take more than one value among them."""
    common = set.intersection(*(set(p) for p in points)) if points else set()
    return sorted(k for k in common if len({json.dumps(p[k]) for p in points}) > 1)


def plot_against_values(
    path: Path, rows: list[dict[str, Any]], keys: list[str], monitor: str, log_keys: set[str]
) -> None:
    """One panel per swept key: the monitor of every finished point against its value
    (numbers on a linear or log axis, other values as categories)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from rigor.io import atomic_write_with

    fig, axes = plt.subplots(1, len(keys), figsize=(3.2 * len(keys), 3.0), squeeze=False)
    ys = [row["metrics"][monitor] for row in rows]
    for ax, key in zip(axes[0], keys, strict=True):
        values = [row["overrides"][key] for row in rows]
        numeric = all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)
        if numeric:
            ax.scatter(values, ys, s=18, color="black")
            if key in log_keys:
                ax.set_xscale("log")
        else:
            labels = list(dict.fromkeys(json.dumps(v) for v in values))
            xs = [labels.index(json.dumps(v)) for v in values]
            ax.scatter(xs, ys, s=18, color="black")
            ax.set_xticks(range(len(labels)))
            ax.set_xticklabels(labels, fontsize=7, rotation=20)
        ax.set_xlabel(key, fontsize=8)
        ax.set_ylabel(monitor, fontsize=8)
        ax.tick_params(labelsize=7)
    fig.tight_layout()
    atomic_write_with(path, lambda handle: fig.savefig(handle, format="png", dpi=100))
    plt.close(fig)


def _key(value: float) -> float:
    return math.inf if value is None or math.isnan(value) else value


def _csv(rows: list[dict[str, Any]], grid: list[str]) -> str:
    metric_names = sorted(
        {
            key
            for row in rows
            for key in row.get("metrics", {})
            if key.startswith("best/") or key.endswith(("/val_select", "/val_test"))
        }
    )
    header = ["rank", "index", *grid, "status", "run_id", *metric_names]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    ordered = sorted(rows, key=lambda r: (r.get("rank", math.inf), r["index"]))
    for row in ordered:
        metrics = row.get("metrics", {})
        writer.writerow(
            [
                row.get("rank", ""),
                row["index"],
                *(json.dumps(row["overrides"][key]) for key in grid),
                row["status"],
                row.get("run_id", ""),
                *(metrics.get(name, "") for name in metric_names),
            ]
        )
    return buffer.getvalue()


def print_table(summary: dict[str, Any], out: Any = None) -> None:
    """A short ranked table: rank, overrides, monitor value, status (to stdout by default)."""
    out = sys.stdout if out is None else out
    monitor = summary["monitor"]
    print(f"ranked by {monitor} ({summary['mode']}, chosen on val_select)", file=out)
    rows = sorted(summary["points"], key=lambda r: (r.get("rank", math.inf), r["index"]))
    for row in rows:
        value = row.get("metrics", {}).get(monitor) if monitor else None
        shown = f"{value:.4f}" if isinstance(value, float) else "-"
        rank = row.get("rank", "-")
        print(f"{rank!s:>4}  {shown:>8}  {row['status']:<7} {row['overrides']}", file=out)
