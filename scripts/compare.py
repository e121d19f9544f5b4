"""Compare finished runs on the same test samples: paired differences with bootstrap CIs.

    python scripts/compare.py RUN_A/manifest.json RUN_B/manifest.json [...] --output DIR

Runs whose configs differ only in run.seed form one variant (its seeds); every pair of
variants gets the difference B - A of accuracy, MCC, macro-F1 and AUGRC per classification
task (mean Pearson's r over regression tasks) on val_test, with a paired bootstrap CI that
also resamples each variant's seeds, McNemar's exact test for accuracy per shared seed, and
trainable parameters, peak memory and time per epoch. Writes DIR/report.md, report.csv,
compare.json and forest.png. Probe runs (scripts/probe.py) compare too: the mean Pearson's r
over genes of their out-of-fold predictions, bootstrapped over the test spots (the
leaderboard of probe.py --bench resamples patients instead).

Exit codes: 0 ok, 2 bad usage (fewer than two variants, a repeated seed), 3 invalid
manifest or runs that do not share val_test (the difference is named), 5 missing or
changed predictions.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from rigor.cli import add_common_flags, run_main


def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments and compare."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "manifests", nargs="+", type=Path, help="finished train or probe runs' manifests"
    )
    parser.add_argument("--output", required=True, type=Path, help="folder for the report")
    parser.add_argument("--n-resamples", type=int, default=1000, help="bootstrap replicates")
    parser.add_argument("--seed", type=int, default=0, help="seed of the bootstrap draws")
    parser.add_argument("--level", type=float, default=0.95, help="confidence level of the CIs")
    add_common_flags(parser, env=False)
    args = parser.parse_args(argv)
    from rigor.compare.report import run_compare
    from rigor.errors import UsageError

    if args.output.exists() and not args.output.is_dir():
        raise UsageError(f"--output {args.output}: is a file; give a folder for the report")

    print(run_compare(args.manifests, args.output, args.n_resamples, args.seed, args.level))
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
