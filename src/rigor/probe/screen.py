"""The probe's one screen on stderr: the headline Pearson with its patient-cluster CI, the
best and worst genes, where the files went."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def _cell(node: dict[str, Any]) -> str:
    if node.get("ci_lower") is None:
        return f"{node['estimate']:.3f} ({node.get('note', 'no CI')})"
    return f"{node['estimate']:.3f} [{node['ci_lower']:.3f}, {node['ci_upper']:.3f}]"


def probe_screen(report: dict[str, Any], run_dir: Path, most: int = 5) -> str:
    """The probe's summary on stderr: mean Pearson with its patient-cluster CI, the
    spread over folds, the best and worst genes, where the files went."""
    genes = sorted(report["per_gene"].items(), key=lambda item: -np.nan_to_num(item[1]["estimate"]))
    lines = [
        f"probe: Pearson {_cell(report['pearson_mean'])} (mean over {len(genes)} genes; "
        f"median {report['pearson_median']:.3f}; over folds {report['split_mean']:.3f} +/- "
        f"{report['split_std']:.3f})"
    ]
    if len(genes) > 1:
        shown = genes if len(genes) <= 2 * most else genes[:most] + genes[-most:]
        lines += [f"  {gene}: {_cell(node)}" for gene, node in shown]
    lines.append(f"  files: {run_dir}/ (probe/report.json, probe/predictions.npz, metrics.json)")
    return "\n".join(lines)
