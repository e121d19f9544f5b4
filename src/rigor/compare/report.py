"""compare.py's outputs: ``report.md``, ``report.csv``, ``compare.json`` and ``forest.png``."""

from __future__ import annotations

import csv
import io
import sys
from pathlib import Path
from typing import Any

from rigor.compare.paired import compare
from rigor.compare.runs import check_same_test_set, group_variants, load_run
from rigor.errors import UsageError
from rigor.io import atomic_write_json, atomic_write_text, atomic_write_with

FILES = ("report.md", "report.csv", "compare.json", "forest.png")


def run_compare(
    manifests: list[Path], output: Path, n_resamples: int = 1000, seed: int = 0, level: float = 0.95
) -> Path:
    """Load and check the runs, compare every pair of variants, write the four files into
    ``output`` (each atomically) and return the path of ``report.md``."""
    if len(manifests) < 2:
        raise UsageError("compare.py: give at least two run manifests")
    if n_resamples < 100 or not 0.5 <= level < 1:
        raise UsageError("compare.py: --n-resamples must be at least 100 and --level in [0.5, 1)")
    runs = [load_run(Path(path)) for path in manifests]
    check_same_test_set(runs)
    variants = group_variants(runs)
    result = compare(variants, n_resamples, seed, level)
    result["manifests"] = [str(path) for path in manifests]
    output.mkdir(parents=True, exist_ok=True)
    atomic_write_json(output / "compare.json", result)
    atomic_write_text(output / "report.csv", _csv(result))
    _forest(result, output / "forest.png")
    atomic_write_text(output / "report.md", _markdown(result))
    print(_screen(result, output), file=sys.stderr)
    return output / "report.md"


def _screen(result: dict[str, Any], output: Path, most: int = 12) -> str:
    """The summary on stderr: each pair's differences with their CIs (and McNemar's p)."""
    rows = _rows(result)
    lines = [f"compare: {len(result['manifests'])} runs, {len(rows)} paired differences (b - a)"]
    for row in rows[:most]:
        p = f", McNemar p {row['mcnemar_p']}" if row["mcnemar_p"] else ""
        lines.append(
            f"  {row['b']} - {row['a']}: {row['metric']} {row['difference']:+.4f} "
            f"[{row['ci_lower']:+.4f}, {row['ci_upper']:+.4f}]{p}"
        )
    if len(rows) > most:
        lines.append(f"  ... and {len(rows) - most} more (report.csv)")
    lines.append(f"  files: {output}/ (report.md, report.csv, compare.json, forest.png)")
    return "\n".join(lines)


def _rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for pair in result["pairs"]:
        for metric, diff in pair["differences"].items():
            task = metric.split("/")[0]
            tests = pair["mcnemar"].get(task, []) if metric.endswith("/accuracy") else []
            rows.append(
                {
                    "a": pair["a"],
                    "b": pair["b"],
                    "metric": metric,
                    "a_value": _estimate(result, pair["a"], metric),
                    "b_value": _estimate(result, pair["b"], metric),
                    "difference": diff["estimate"],
                    "ci_lower": diff["ci_lower"],
                    "ci_upper": diff["ci_upper"],
                    "mcnemar_p": ";".join(f"{t['p']:.4g}" for t in tests),
                }
            )
    return rows


def _estimate(result: dict[str, Any], label: str, metric: str) -> float:
    return float(next(v for v in result["variants"] if v["label"] == label)["estimates"][metric])


def _csv(result: dict[str, Any]) -> str:
    rows = _rows(result)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def _fmt(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}g}"


def _markdown(result: dict[str, Any]) -> str:
    level = int(round(100 * result["level"]))
    lines = [
        "# Paired comparison on val_test",
        "",
        f"{result['n_samples']} test samples; {result['n_resamples']} bootstrap replicates "
        f"(seed {result['seed']}), {level}% percentile intervals. Each replicate resamples the "
        "test samples once for every run (paired) and each variant's seeds with replacement, "
        "so the intervals cover test-sample and seed variation. McNemar: exact two-sided test "
        "per seed both variants share.",
        "",
        "## Variants",
        "",
        "| variant | seeds | trainable params | peak memory MiB | s / epoch |",
        "|---|---|---|---|---|",
    ]
    for v in result["variants"]:
        cost = v["cost"]
        lines.append(
            f"| {v['label']} | {', '.join(map(str, v['seeds']))} | "
            f"{_fmt(cost['params_trainable'], 6)} | {_fmt(cost['peak_memory_mb'])} | "
            f"{_fmt(cost['epoch_time_s'], 3)} |"
        )
    lines += [
        "",
        "## Differences (B - A)",
        "",
        f"| A | B | metric | A | B | B - A [{level}% CI] | McNemar p |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in _rows(result):
        lines.append(
            f"| {row['a']} | {row['b']} | {row['metric']} | {row['a_value']:.4f} | "
            f"{row['b_value']:.4f} | {row['difference']:+.4f} [{row['ci_lower']:+.4f}, "
            f"{row['ci_upper']:+.4f}] | {row['mcnemar_p'] or '-'} |"
        )
    lines += ["", "Lower AUGRC is better; higher is better for every other metric.", ""]
    return "\n".join(lines)


def _forest(result: dict[str, Any], path: Path) -> None:
    """One panel per metric: each pair's difference with its CI, and a line at zero."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = _rows(result)
    metrics = list(dict.fromkeys(row["metric"] for row in rows))
    pairs = list(dict.fromkeys(f"{row['b']}\nvs {row['a']}" for row in rows))
    fig, axes = plt.subplots(
        1, len(metrics), figsize=(3.2 * len(metrics), 0.9 + 0.6 * len(pairs)), squeeze=False
    )
    for ax, metric in zip(axes[0], metrics, strict=True):
        chosen = [row for row in rows if row["metric"] == metric]
        ys = list(range(len(chosen)))[::-1]
        centre = [row["difference"] for row in chosen]
        low = [row["difference"] - row["ci_lower"] for row in chosen]
        high = [row["ci_upper"] - row["difference"] for row in chosen]
        ax.errorbar(centre, ys, xerr=[low, high], fmt="o", color="black", capsize=3)
        ax.axvline(0.0, color="grey", linestyle="--", linewidth=1)
        ax.set_title(metric, fontsize=9)
        ax.set_yticks(ys)
        ax.set_yticklabels(pairs if ax is axes[0][0] else [""] * len(ys), fontsize=6)
        ax.tick_params(axis="x", labelsize=7)
    fig.suptitle("difference B - A with bootstrap CI", fontsize=9)
    fig.tight_layout()
    atomic_write_with(path, lambda handle: fig.savefig(handle, format="png", dpi=110))
    plt.close(fig)
