"""Find and compare runs: list the runs under an output root as a table.

    python scripts/runs.py ls --root results
    python scripts/runs.py ls --root results --columns run_id,training.lr,acc/val_test \
        --where training.lr=1e-3 --where "acc/val_test>0.9" --sort acc/val_test --desc
    python scripts/runs.py ls --root results --columns run_id,ci:digit/accuracy --csv

A column is a manifest field (run_id, config_hash, created_at), ``stages`` (the stages a run
went through), a metric the manifest records (acc/val_test), a stage summary value
(eval:digit/accuracy, calibrate:threshold), an eval metric with its CI (ci:digit/accuracy,
from eval/metrics.json) or a resolved config key (training.lr). Reads JSON only.
Exit codes: 0 ok, 2 bad usage.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from rigor.cli import run_main


def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments and list the runs."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    ls = commands.add_parser("ls", help="list runs as a table")
    ls.add_argument("--root", type=Path, default=Path("results"), help="run.output_root")
    ls.add_argument("--columns", help="comma-separated columns (default: run_id,stages,created_at)")
    ls.add_argument("--where", action="append", default=[], help="KEY OP VALUE (repeatable)")
    ls.add_argument("--sort", help="column to sort on (runs without it last)")
    ls.add_argument("--desc", action="store_true", help="sort descending")
    ls.add_argument("--csv", action="store_true", help="CSV instead of aligned columns")
    args = parser.parse_args(argv)
    from rigor.catalog import DEFAULT_COLUMNS, Filter, find_runs, render, table

    columns = args.columns.split(",") if args.columns else list(DEFAULT_COLUMNS)
    filters = [Filter.parse(text) for text in args.where]
    sort = f"-{args.sort}" if args.sort and args.desc else args.sort
    rows = table(find_runs(args.root), columns, filters, sort)
    sys.stdout.write(render(columns, rows, args.csv))
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
