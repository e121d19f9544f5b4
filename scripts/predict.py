"""Predict with a bundle: class, confidence, whether the policy abstains (the prediction set
for set policies, the answering stage for a cascade), and a value per regression task (gene);
the summary names the policy and the guarantee that holds.

    python scripts/predict.py --bundle results/runs/<run_id>/bundle --split val_test
    python scripts/predict.py --bundle DIR --input image1.png image2.png [--output out.csv]
    python scripts/predict.py --bundle DIR --split val_test --stage-b OTHER_RUN/bundle
    python scripts/predict.py --bundle DIR --hest-sample patches/S1.h5 [--expression st/S1.h5ad]

A new HEST sample gets one row per spot (barcode, x, y, each gene and its interval), an
.h5ad of the predictions with obsm["spatial"] beside the CSV (for scanpy/squidpy) and maps
in <csv stem>_maps/; with --expression, Pearson and MAE per gene with bootstrap CIs.

Loads nothing with pickle (safetensors weights, JSON policy). Refuses a classification bundle
with zero or two active policies, a regression-only bundle with any policy (exit 3), or a
changed file (exit 5).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from rigor.cli import add_common_flags, run_main


def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments and predict."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--bundle", required=True, type=Path, help="a bundle folder from export.py")
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--input", nargs="+", type=Path, help="image files to predict")
    group.add_argument("--split", help="a split of the bundle's splits.json (e.g. val_test)")
    group.add_argument(
        "--hest-sample",
        type=Path,
        help="a new sample's HEST patches (.h5: img, barcode, coords) to predict per spot",
    )
    parser.add_argument("--output", type=Path, help="CSV to write (default: <bundle>/../predict/)")
    parser.add_argument(
        "--expression",
        type=Path,
        help="with --hest-sample: its measured expression (.h5ad), for Pearson and MAE per gene",
    )
    parser.add_argument(
        "--stage-b",
        type=Path,
        help="the bundle of the second run a cascade policy sends rejected samples to",
    )
    add_common_flags(parser, env=False)
    args = parser.parse_args(argv)
    from rigor.export.predict import predict_screen, predict_with_bundle

    if args.expression is not None and args.hest_sample is None:
        from rigor.errors import UsageError

        raise UsageError("--expression goes with --hest-sample (the new sample it measures)")
    sample = (args.hest_sample, args.expression) if args.hest_sample is not None else None
    path, summary = predict_with_bundle(
        args.bundle, args.input, args.split, args.output, args.stage_b, sample
    )
    print(predict_screen(path, summary), file=sys.stderr)
    print(f"{path}\n{json.dumps(summary)}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main, defer_gc=True))
