"""Predict with a bundle: class, confidence, whether the policy abstains (the prediction set
for set policies, the answering stage for a cascade), and a value per regression task (gene);
the summary names the policy and the guarantee that holds.

    python scripts/predict.py --bundle results/runs/<run_id>/bundle --split val_test
    python scripts/predict.py --bundle DIR --input image1.png image2.png [--output out.csv]
    python scripts/predict.py --bundle DIR --split val_test --stage-b OTHER_RUN/bundle

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
    parser.add_argument("--output", type=Path, help="CSV to write (default: <bundle>/../predict/)")
    parser.add_argument(
        "--stage-b",
        type=Path,
        help="the bundle of the second run a cascade policy sends rejected samples to",
    )
    add_common_flags(parser, env=False)
    args = parser.parse_args(argv)
    from rigor.export.predict import predict_screen, predict_with_bundle

    path, summary = predict_with_bundle(
        args.bundle, args.input, args.split, args.output, args.stage_b
    )
    print(predict_screen(path, summary), file=sys.stderr)
    print(f"{path}\n{json.dumps(summary)}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main, defer_gc=True))
