"""Evaluate a run on val_test from its manifest: selective, calibration and classification
metrics with bootstrap CIs, plots, and the calibrated policy when there is one.

    python scripts/eval.py --from-manifest results/runs/<run_id>/manifest.json [--recompute]

Reads predictions/val_test.npz only (--recompute runs the best checkpoint instead); fits
nothing. Writes eval/{metrics.json,metrics.csv,*.png} and a stage entry.
Exit codes: 0 ok, 2 bad usage, 3 invalid manifest, 4 env mismatch (strict), 5 artifact.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from rigor.cli import add_common_flags, run_main


def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments and evaluate."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--from-manifest", required=True, type=Path, help="the run's manifest.json")
    parser.add_argument(
        "--recompute", action="store_true", help="run the best checkpoint on val_test"
    )
    parser.add_argument("--n-resamples", type=int, help="override evaluation.n_resamples")
    parser.add_argument("--seed", type=int, help="override evaluation.seed")
    add_common_flags(parser)
    args = parser.parse_args(argv)
    overrides = {
        k: v
        for k, v in {"n_resamples": args.n_resamples, "seed": args.seed}.items()
        if v is not None
    }
    from rigor.plotting.pool import PlotPool

    with PlotPool():  # plot workers import matplotlib while this process imports the stage
        from rigor.evaluation.stage import evaluate

        print(evaluate(args.from_manifest, args.env_policy, args.force, args.recompute, overrides))
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
