"""Re-run a run from its manifest (same config, seed and data) and compare the results.

    python scripts/reproduce.py --from-manifest results/runs/<id>/manifest.json \
        [--output-root DIR]

Reports whether data hashes, weights and metrics are bitwise identical, or lists the
differences; writes reproduction.json in the new run folder. The re-run goes beside the
original: under <the original's output root>/reproduce/ (the folder holding its runs/),
wherever the command runs from, unless --output-root says otherwise.
Exit codes: 0 compared (see "bitwise"), 2 bad usage, 3 invalid manifest, 4 env mismatch, 5 artifact.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from rigor.cli import add_common_flags, run_main


def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments, reproduce, print the comparison."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--from-manifest", required=True, type=Path)
    parser.add_argument(
        "--output-root",
        type=Path,
        help="where the re-run goes (default: <original output root>/reproduce)",
    )
    add_common_flags(parser)
    args = parser.parse_args(argv)
    from rigor.reproduce import reproduce

    report = reproduce(args.from_manifest, args.output_root, args.env_policy, args.force)
    print(json.dumps(report, indent=2))
    print(
        "bitwise identical"
        if report["bitwise"]
        else f"{len(report['differences'])} metric(s) differ"
    )
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
