"""Train a model from a composed YAML config; writes a run folder with a manifest.

    python scripts/train.py --config configs/experiment/digits_baseline.yaml [--set k=v ...]
    python scripts/train.py --config ... --list-tasks     # the tasks (genes, labels) offered
    python scripts/train.py --config ... --print-config   # every value and its layer

Exit codes: 0 ok, 1 unexpected, 2 invalid config, 4 env mismatch (strict), 5 artifact.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from rigor.cli import add_common_flags, add_set_flag, run_main


def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments, load the config, and train."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", required=True, help="experiment YAML (composes via defaults:)")
    add_set_flag(parser, "training.lr=3e-4")
    parser.add_argument(
        "--resume",
        metavar="PATH|auto",
        default=None,
        help="continue a killed run: its checkpoint or run folder, or auto for the newest "
        "unfinished run of this experiment and config",
    )
    parser.add_argument(
        "--list-tasks", action="store_true", help="print the tasks the dataset offers, then exit"
    )
    parser.add_argument(
        "--print-config",
        action="store_true",
        help="print the resolved config, each value with the layer it came from, then exit",
    )
    add_common_flags(parser)
    args = parser.parse_args(argv)

    from rigor.config import load_config

    resolved = load_config(args.config, sets=args.sets)
    if args.print_config:
        from rigor.config import config_lines

        print("\n".join(config_lines(resolved)))
        return 0
    if args.list_tasks:
        from rigor.data.build import describe_tasks

        print("\n".join(describe_tasks(resolved.config.data)))
        return 0
    from rigor.training.run import train

    manifest = train(resolved, env_policy=args.env_policy, force=args.force, resume=args.resume)
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun, one line from rank 0
        print(manifest)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main, defer_gc=True))
