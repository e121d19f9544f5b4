"""What eval adds for a regression run (per-gene heads): a markdown table per gene and the
figures a pathologist reads: predicted against measured per gene (patients coloured), and
for spot data (HEST, with coordinates) maps of measured, predicted and residual expression
on each val_test sample's slide, for the best genes or those named in
``evaluation.figure_genes``."""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from rigor.errors import UsageError
from rigor.io import atomic_write_text
from rigor.plotting import spatial
from rigor.plotting.pool import draw
from rigor.policies.base import cell
from rigor.stages import RunContext


def gene_table(report: dict[str, Any], genes: list[str]) -> str:
    """Markdown: per gene, Pearson, MAE and the interval's coverage (each with its CI) and
    width, on val_test."""
    rows = [
        ("gene", "Pearson r", "MAE", "interval coverage", "interval width"),
        ("---",) * 5,
    ]
    for gene in genes:
        result = report["tasks"][gene]
        target = result["per_target"][0]
        fitted = result.get("interval") or {}
        width = fitted.get("width")
        rows.append(
            (
                gene,
                cell(target["pearson"]),
                cell(target["mae"]),
                cell(fitted.get("coverage")),
                "" if not fitted else ("unbounded" if width is None else f"{width:.3f}"),
            )
        )
    return "".join("| " + " | ".join(row) + " |\n" for row in rows)


def figure_genes(report: dict[str, Any], genes: list[str], wanted: int | list[str]) -> list[str]:
    """The genes to draw: those named (exit 2 naming any the run does not have), or the
    ``wanted`` best by Pearson's r on val_test."""
    if isinstance(wanted, list):
        unknown = [gene for gene in wanted if gene not in genes]
        if unknown:
            raise UsageError(
                f"evaluation.figure_genes: {unknown} are not regression tasks of this run "
                f"(it has {len(genes)}, e.g. {genes[:5]})"
            )
        return list(wanted)

    def score(gene: str) -> float:
        value = report["tasks"][gene]["per_target"][0]["pearson"]["estimate"]
        return float(value) if np.isfinite(value) else -np.inf

    return sorted(genes, key=lambda gene: (-score(gene), gene))[:wanted]


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)


def histology_outputs(
    ctx: RunContext, report: dict[str, Any], predictions: dict[str, np.ndarray], wanted: Any
) -> list[str]:
    """eval/genes.md and the figures (sent to the plot workers); their paths."""
    genes = [task for task, result in report["tasks"].items() if result["kind"] == "regression"]
    if not genes:
        return []
    atomic_write_text(ctx.path("eval/genes.md"), gene_table(report, genes))
    files = ["eval/genes.md"]
    details = ctx.manifest["dataset"].get("details", {})
    unit = spatial.unit_of(details.get("expression"))
    groups = predictions.get("groups")
    groups = np.asarray(groups).astype(str) if groups is not None else np.full(1, "all")
    chosen = figure_genes(report, genes, wanted)
    values = {
        gene: (
            np.asarray(predictions[f"logits_{gene}"], np.float64).reshape(-1),
            np.asarray(predictions[f"targets_{gene}"], np.float64).reshape(-1),
        )
        for gene in chosen
    }
    for gene, (predicted, measured) in values.items():
        files.append(f"eval/{_safe(gene)}_scatter.png")
        spread = groups if len(groups) == len(measured) else np.full(len(measured), "all")
        draw(
            spatial.gene_scatter, predicted, measured, spread, gene, "val_test", unit,
            ctx.path(files[-1]),
        )  # fmt: skip
    return files + _maps(ctx, predictions, values, unit)


def _maps(
    ctx: RunContext,
    predictions: dict[str, np.ndarray],
    values: dict[str, tuple[np.ndarray, np.ndarray]],
    unit: str,
) -> list[str]:
    """One figure per val_test sample and drawn gene, where the spots have coordinates."""
    if "coords" not in predictions or "sample" not in predictions:
        return []
    coords, samples = np.asarray(predictions["coords"]), np.asarray(predictions["sample"])
    files = []
    (ctx.run_dir / "eval" / "maps").mkdir(exist_ok=True)
    for sample in sorted(set(samples.tolist())):
        rows = (samples == sample) & np.isfinite(coords).all(axis=1)
        if not rows.any():
            continue
        for gene, (predicted, measured) in values.items():
            files.append(f"eval/maps/{_safe(sample)}_{_safe(gene)}.png")
            draw(
                spatial.spatial_maps, coords[rows], measured[rows], predicted[rows], gene,
                sample, "val_test", unit, ctx.path(files[-1]),
            )  # fmt: skip
    return files
