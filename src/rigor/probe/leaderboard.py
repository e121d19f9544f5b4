"""The encoder x task leaderboard of a benchmark, with the statistics HEST-Benchmark lacks.

Each cell shows HEST-Benchmark's score (the mean over splits of each split's mean Pearson r
over genes, ± the s.d. over splits) and rigor's patient-cluster bootstrap CI of the mean r.
Encoders are compared pairwise per task by a paired cluster bootstrap over the test
patients (both encoders' predictions of the same spots, the same patients drawn for both)
and over tasks by the Wilcoxon signed-rank test and the sign test on the per-task scores.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from rigor.io import atomic_write_json, atomic_write_text, finite_json
from rigor.metrics.bootstrap import replicates, summarize
from rigor.probe.ridge import FoldPredictions, UnitMoments, nanmean_rows

if TYPE_CHECKING:
    from rigor.probe.bench import BenchConfig

Cell = tuple[str, str]  # (task, encoder)


def cell_result(manifest: Path) -> dict[str, Any]:
    """What the leaderboard shows of one probe run."""
    report = json.loads((manifest.parent / "probe" / "report.json").read_text())
    mean = report["pearson_mean"]
    return {
        "run_id": manifest.parent.name,
        "manifest": str(manifest),
        "hest_mean": report["split_mean"],
        "hest_std": report["split_std"],
        "split_scores": report["split_scores"],
        "pearson_mean": mean["estimate"],
        "ci_lower": mean["ci_lower"],
        "ci_upper": mean["ci_upper"],
        "skewed": skewed(mean),
        "n_patients": report["n_groups_tested"],
        "n_genes": len(report["genes"]),
        "encoder_record": report["encoder"],
    }


def skewed(summary: dict[str, Any]) -> bool:
    """Whether a bootstrap's mean lies more than half its s.d. from the estimate: with few
    patients per split, a resample that draws one patient twice scores within-patient r,
    and the percentile interval sits off the estimate (read it with care)."""
    mean, std = summary.get("mean"), summary.get("std")
    if mean is None or std is None or not np.isfinite(mean) or not std > 0:
        return False
    return bool(abs(mean - summary["estimate"]) > 0.5 * std)


def _moments(manifest: Path) -> tuple[np.ndarray, UnitMoments]:
    """The test spots' ids (fold by fold) and the unit moments of a probe run."""
    with np.load(manifest.parent / "probe" / "predictions.npz", allow_pickle=False) as data:
        fold, ids, groups = data["fold"], data["ids"].astype(str), data["groups"].astype(str)
        predicted, targets = data["predicted"], data["targets"]
    rows = [np.flatnonzero(fold == k) for k in range(int(fold.max()) + 1)]
    folds = FoldPredictions(rows, [predicted[r] for r in rows])
    return np.char.add(fold.astype(str), np.char.add("/", ids)), UnitMoments.of(
        folds, targets, groups
    )


def paired_difference(a: Path, b: Path, ci: dict[str, Any]) -> dict[str, Any]:
    """Mean r of ``a`` minus that of ``b`` on the same test spots, with a paired cluster
    bootstrap over the test patients (each draw scores both encoders on the same patients)
    and its two-sided bootstrap p-value."""
    ids_a, first = _moments(a)
    ids_b, second = _moments(b)
    if not np.array_equal(ids_a, ids_b) or first.clusters != second.clusters:
        return {"difference": None, "note": "the two runs tested different spots or patients"}

    def batched(draws: np.ndarray) -> dict[str, np.ndarray]:
        mean_a = nanmean_rows(first.resampled_mean(draws).T)
        mean_b = nanmean_rows(second.resampled_mean(draws).T)
        return {"difference": mean_a - mean_b}

    estimate = float(
        np.nanmean(nanmean_rows(first.pearson())) - np.nanmean(nanmean_rows(second.pearson()))
    )
    values = replicates(batched, len(first.clusters), ci["n_resamples"], ci["seed"])["difference"]
    finite = values[np.isfinite(values)]
    p_value = min(1.0, 2 * min(np.mean(finite <= 0), np.mean(finite >= 0))) if len(finite) else None
    result = summarize(values, estimate, ci["level"]) | {"p_value": p_value}
    result["skewed"] = skewed(result)
    if len(first.clusters) < 2:
        result |= {"ci_lower": None, "ci_upper": None, "p_value": None, "note": "one patient"}
    return result | {"n_patients": len(first.clusters)}


def across_tasks(scores_a: list[float], scores_b: list[float]) -> dict[str, Any]:
    """Wilcoxon signed-rank and sign tests of per-task score differences (two-sided)."""
    from scipy.stats import binomtest, wilcoxon

    diff = np.asarray(scores_a) - np.asarray(scores_b)
    nonzero = diff[diff != 0]
    out: dict[str, Any] = {"n_tasks": len(diff), "wins": int((diff > 0).sum())}
    out["losses"] = int((diff < 0).sum())
    out["mean_difference"] = float(diff.mean())
    if len(nonzero):
        test = wilcoxon(nonzero)
        out |= {"wilcoxon_statistic": float(test.statistic), "wilcoxon_p": float(test.pvalue)}
        out["sign_p"] = float(binomtest(out["wins"], len(nonzero)).pvalue)
    else:
        out |= {"wilcoxon_statistic": None, "wilcoxon_p": None, "sign_p": None}
    return out


def write_leaderboard(folder: Path, bench: BenchConfig, runs: dict[Cell, Path]) -> Path:
    """``leaderboard.{md,csv,json}``, ``leaderboard.png`` and the paired comparisons."""
    tasks, encoders = list(bench.tasks), list(bench.encoders)
    results = {cell: cell_result(path) for cell, path in runs.items()}
    average = {e: float(np.mean([results[(t, e)]["hest_mean"] for t in tasks])) for e in encoders}
    ci = _ci_options(runs[(tasks[0], encoders[0])])
    per_task = {
        t: {
            f"{a} - {b}": paired_difference(runs[(t, a)], runs[(t, b)], ci)
            for a, b in itertools.combinations(encoders, 2)
        }
        for t in tasks
    }
    overall = {
        f"{a} - {b}": across_tasks(
            [results[(t, a)]["hest_mean"] for t in tasks],
            [results[(t, b)]["hest_mean"] for t in tasks],
        )
        for a, b in itertools.combinations(encoders, 2)
    }
    folder.mkdir(parents=True, exist_ok=True)
    record = {
        "name": bench.name,
        "tasks": bench.tasks,
        "encoders": {e: bench.encoders[e].model_dump() for e in encoders},
        "cells": [{"task": t, "encoder": e, **results[(t, e)]} for t in tasks for e in encoders],
        "average": average,
        "paired_per_task": per_task,
        "paired_across_tasks": overall,
    }
    atomic_write_json(folder / "leaderboard.json", finite_json(record))
    atomic_write_text(folder / "leaderboard.csv", _csv(tasks, encoders, results, average))
    atomic_write_text(folder / "leaderboard.md", _markdown(record, tasks, encoders, results))
    _figure(folder / "leaderboard.png", tasks, encoders, results)
    return folder


def _ci_options(manifest: Path) -> dict[str, Any]:
    config = json.loads((manifest.parent / "config_resolved.json").read_text())["evaluation"]
    return {"n_resamples": config["n_resamples"], "level": config["level"], "seed": config["seed"]}


def _fmt(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


SKEW_NOTE = (
    "† the patient bootstrap's mean lies more than half its s.d. from the estimate: with few "
    "patients per split the percentile interval sits off the estimate; read it with care."
)


def _cell_text(result: dict[str, Any]) -> str:
    ci = f"[{_fmt(result['ci_lower'])}, {_fmt(result['ci_upper'])}]"
    mark = " †" if result.get("skewed") else ""
    return f"{_fmt(result['hest_mean'])} ± {_fmt(result['hest_std'])} {ci}{mark}"


def _csv(
    tasks: list[str],
    encoders: list[str],
    results: dict[Cell, dict[str, Any]],
    average: dict[str, float],
) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    columns = ["hest_mean", "hest_std", "pearson_mean", "ci_lower", "ci_upper", "n_patients"]
    writer.writerow(["task", "encoder", *columns, "run_id"])
    for t in tasks:
        for e in encoders:
            result = results[(t, e)]
            writer.writerow([t, e, *(result[c] for c in columns), result["run_id"]])
    for e in encoders:
        writer.writerow(["average", e, average[e], "", "", "", "", "", ""])
    return buffer.getvalue()


def _markdown(
    record: dict[str, Any],
    tasks: list[str],
    encoders: list[str],
    results: dict[Cell, dict[str, Any]],
) -> str:
    lines = [
        f"# Leaderboard {record['name']}",
        "",
        "Mean Pearson r over genes: HEST-Benchmark's mean ± s.d. over the task's splits, "
        "then rigor's 95% patient-cluster bootstrap CI.",
        "",
        "| task | " + " | ".join(encoders) + " |",
        "|---|" + "---|" * len(encoders),
    ]
    for t in tasks:
        lines.append(f"| {t} | " + " | ".join(_cell_text(results[(t, e)]) for e in encoders) + " |")
    average = record["average"]
    lines.append("| average | " + " | ".join(_fmt(average[e]) for e in encoders) + " |")
    lines += ["", "## Paired comparisons per task (cluster bootstrap over test patients)", ""]
    lines += ["| task | pair | difference | 95% CI | p |", "|---|---|---|---|---|"]
    for t, pairs in record["paired_per_task"].items():
        for pair, d in pairs.items():
            ci = f"[{_fmt(d.get('ci_lower'))}, {_fmt(d.get('ci_upper'))}]"
            ci += " †" if d.get("skewed") else ""
            p_value = d.get("p_value")
            shown = _fmt(p_value) if p_value != 0 else f"< {1 / d['n_resamples']:.3f}"
            lines.append(f"| {t} | {pair} | {_fmt(d.get('estimate'))} | {ci} | {shown} |")
    flagged = any(r.get("skewed") for r in results.values()) or any(
        d.get("skewed") for pairs in record["paired_per_task"].values() for d in pairs.values()
    )
    if flagged:
        lines += ["", SKEW_NOTE]
    lines += ["", "## Across tasks (per-task scores)", ""]
    lines += ["| pair | wins / losses | mean difference | Wilcoxon p | sign test p |"]
    lines += ["|---|---|---|---|---|"]
    for pair, d in record["paired_across_tasks"].items():
        lines.append(
            f"| {pair} | {d['wins']} / {d['losses']} of {d['n_tasks']} | "
            f"{_fmt(d['mean_difference'])} | {_fmt(d['wilcoxon_p'])} | {_fmt(d['sign_p'])} |"
        )
    return "\n".join(lines) + "\n"


def _figure(
    path: Path, tasks: list[str], encoders: list[str], results: dict[Cell, dict[str, Any]]
) -> None:
    """One panel per task: each encoder's mean r with its CI."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(
        1, len(tasks), figsize=(3.2 * len(tasks) + 1, 0.5 * len(encoders) + 1.8)
    )
    for ax, t in zip(np.atleast_1d(axes), tasks, strict=True):
        for y, e in enumerate(encoders):
            r = results[(t, e)]
            low = r["ci_lower"] if r["ci_lower"] is not None else r["pearson_mean"]
            high = r["ci_upper"] if r["ci_upper"] is not None else r["pearson_mean"]
            ax.errorbar(
                r["pearson_mean"],
                y,
                xerr=[[r["pearson_mean"] - low], [high - r["pearson_mean"]]],
                fmt="o",
                capsize=3,
            )
        ax.set_yticks(range(len(encoders)), encoders if t == tasks[0] else [""] * len(encoders))
        ax.set_ylim(-0.6, len(encoders) - 0.4)
        ax.set_title(t)
        ax.set_xlabel("mean Pearson r")
        ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    from rigor.io import atomic_write_with

    atomic_write_with(path, lambda handle: fig.savefig(handle, format="png", dpi=120))
    plt.close(fig)
