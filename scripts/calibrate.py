"""Fit temperature scaling and the selective threshold policy on val_calib only.

    python scripts/calibrate.py --from-manifest results/runs/<run_id>/manifest.json

Writes calibration/{thresholds.json,sweep.csv,reliability.png} and a stage entry.
Exit codes: 0 ok, 2 no feasible threshold / no finite temperature / bad usage, 3 invalid
manifest, 4 env mismatch (strict), 5 artifact missing or changed.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from rigor.cli import add_common_flags, run_main


def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments and calibrate."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--from-manifest", required=True, type=Path, help="the run's manifest.json")
    parser.add_argument("--target-risk", type=float, help="override calibration.target_risk")
    parser.add_argument("--min-coverage", type=float, help="override calibration.min_coverage")
    parser.add_argument("--fnr-target", type=float, help="override calibration.fnr_target (binary)")
    parser.add_argument("--task", help="override calibration.task")
    parser.add_argument(
        "--score",
        choices=("msp", "gate"),
        help="override calibration.score: threshold the calibrated MSP or the SelectiveNet gate",
    )
    add_common_flags(parser)
    args = parser.parse_args(argv)
    overrides = {
        key: value
        for key, value in {
            "target_risk": args.target_risk,
            "min_coverage": args.min_coverage,
            "fnr_target": args.fnr_target,
            "task": args.task,
            "score": args.score,
        }.items()
        if value is not None
    }
    from rigor.calibration.stage import calibrate

    print(calibrate(args.from_manifest, args.env_policy, args.force, overrides))
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
