"""Draft an EXPERIMENTS.md entry from a run's manifest (config, metrics with CIs, run id).

    python scripts/experiments.py add --from-manifest results/runs/<id>/manifest.json \
        [--title T] [--write]

Prints the draft; --write appends it to EXPERIMENTS.md. Fill in Goal, Changes,
Observations and Next step: the manifest cannot know them.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from rigor.cli import add_common_flags, run_main


def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments and draft (or append) the entry."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    add = sub.add_parser("add", help="draft an entry from a manifest")
    add.add_argument("--from-manifest", required=True, type=Path)
    add.add_argument("--title", help="entry title (default: the experiment name)")
    add.add_argument("--write", action="store_true", help="append to EXPERIMENTS.md")
    add.add_argument("--experiments", type=Path, help="the log to number against and append to")
    add_common_flags(add, env=False)
    args = parser.parse_args(argv)
    from rigor.experiments import append_entry, draft_entry
    from rigor.manifest.env import PROJECT_ROOT

    log = args.experiments or PROJECT_ROOT / "EXPERIMENTS.md"
    entry = draft_entry(args.from_manifest, args.title, log)
    if args.write:
        append_entry(entry, log)
        print(f"appended to {log}")
    print(entry)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
