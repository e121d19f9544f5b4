"""Spot-level against patient-level regression intervals on new patients: pool a finished
run's val_select, val_calib and val_test predictions (patients the model never trained
on), then many times draw ``--calib`` patients at random to calibrate on and test on the
others. Per gene: the mean coverage of the test patients' spots over the draws, its spread
(the standard deviation over draws, and the 5th percentile), and the mean width; a draw
whose patient-level interval is infinite (too few patients for alpha) counts as covering
everything, and how often that happens is reported.

    .venv/bin/python benchmarks/resplit_intervals.py --from-manifest M --calib 9 12 [--splits 200]

Writes a markdown table per calibration size to stdout and the numbers as JSON
(``--report``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from rigor.calibration.intervals import group_quantile
from rigor.policies.sets import conformal_quantile

SPLITS = ("val_select", "val_calib", "val_test")


def pooled(run: Path) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Absolute residuals per gene and each spot's patient, over the held-out splits."""
    parts = [np.load(run / "predictions" / f"{split}.npz") for split in SPLITS]
    genes = [str(name) for name in parts[0]["tasks"]]
    residuals = {
        gene: np.concatenate(
            [np.abs(p[f"targets_{gene}"] - p[f"logits_{gene}"].reshape(-1)) for p in parts]
        ).astype(np.float64)
        for gene in genes
    }
    return residuals, np.concatenate([p["groups"] for p in parts]).astype(str)


def resplit(
    residuals: dict[str, np.ndarray],
    groups: np.ndarray,
    calib: int,
    splits: int,
    alpha: float,
    seed: int,
) -> dict[str, dict[str, Any]]:
    """Per gene and method: coverage of the test spots and width, over ``splits`` draws."""
    rng = np.random.default_rng(seed)
    patients = np.unique(groups)
    found: dict[str, dict[str, list[float]]] = {}
    for _ in range(splits):
        chosen = rng.choice(patients, size=calib, replace=False)
        in_calib = np.isin(groups, chosen)
        for gene, values in residuals.items():
            fitted = {
                "spot": conformal_quantile(values[in_calib], alpha),
                "patient": group_quantile(values[in_calib], groups[in_calib], alpha),
            }
            for method, q_hat in fitted.items():
                node = found.setdefault(f"{gene}/{method}", {"coverage": [], "width": []})
                node["coverage"].append(float((values[~in_calib] <= q_hat).mean()))
                node["width"].append(2 * q_hat)
    out = {}
    for key, node in found.items():
        coverage, width = np.asarray(node["coverage"]), np.asarray(node["width"])
        finite = np.isfinite(width)
        out[key] = {
            "mean_coverage": float(coverage.mean()),
            "sd_coverage": float(coverage.std()),
            "p05_coverage": float(np.quantile(coverage, 0.05)),
            "mean_width": float(width[finite].mean()) if finite.any() else None,
            "infinite": float(1 - finite.mean()),
        }
    return out


def table(result: dict[str, dict[str, Any]], genes: list[str], alpha: float) -> str:
    """Markdown: per gene, both methods side by side."""
    lines = [
        "| gene | spot: mean coverage (sd) [5th pct] | spot: width | patient: mean coverage "
        "(sd) [5th pct] | patient: width | patient: infinite |",
        "|---|---|---|---|---|---|",
    ]

    def cell(node: dict[str, Any]) -> str:
        return (
            f"{node['mean_coverage']:.3f} ({node['sd_coverage']:.3f}) "
            f"[{node['p05_coverage']:.3f}]"
        )

    for gene in genes:
        spot, patient = result[f"{gene}/spot"], result[f"{gene}/patient"]
        width = patient["mean_width"]
        lines.append(
            f"| {gene} | {cell(spot)} | {spot['mean_width']:.3f} | {cell(patient)} | "
            f"{'inf' if width is None else f'{width:.3f}'} | {patient['infinite']:.0%} |"
        )
    return "\n".join(lines) + f"\n\nnominal coverage {1 - alpha:g}\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--from-manifest", type=Path, required=True)
    parser.add_argument("--calib", type=int, nargs="+", default=[9, 12])
    parser.add_argument("--splits", type=int, default=200)
    parser.add_argument("--alpha", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--report", type=Path)
    args = parser.parse_args()
    residuals, groups = pooled(args.from_manifest.parent)
    patients = len(np.unique(groups))
    report: dict[str, Any] = {"patients": patients, "alpha": args.alpha, "splits": args.splits}
    for calib in args.calib:
        if not 0 < calib < patients:
            raise SystemExit(f"--calib {calib}: the run holds {patients} held-out patients")
        result = resplit(residuals, groups, calib, args.splits, args.alpha, args.seed)
        report[f"calib_{calib}"] = result
        print(f"## {calib} calibration patients, {patients - calib} test patients per draw\n")
        print(table(result, list(residuals), args.alpha))
    if args.report:
        args.report.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
