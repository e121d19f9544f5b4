"""Explain a trained run found through its manifest, with quantitative sanity checks.

    python scripts/xai.py --from-manifest results/runs/<run_id>/manifest.json
        [--split val_test] [--n 16 | --ids ID ...] [--method integrated_gradients]
        [--target predicted|true|<class index>|<task>|all] [--baseline zeros|blurred|mean]
        [--worker URL]   # submit to a running scripts/xai_worker.py and wait

Writes xai/{attributions.npz,summary.json,overlays/,grid_<task>.png,logs/} and a stage entry.
Exit codes: 0 ok, 1 unexpected, 2 bad usage, 3 invalid manifest, 4 env mismatch, 5 artifact.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from rigor.cli import add_common_flags, run_main
from rigor.config.stages import XAI_METHODS


def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments, then explain here or through a worker."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--from-manifest", required=True, type=Path, help="the run's manifest.json")
    parser.add_argument(
        "--split", choices=["val_select", "val_calib", "val_test"], help="xai.split"
    )
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--n", dest="n_samples", type=int, help="xai.n_samples")
    group.add_argument("--ids", nargs="+", help="explain these sample ids")
    parser.add_argument("--method", choices=XAI_METHODS)
    parser.add_argument("--target", help="predicted, true, a class index, a task name, or all")
    parser.add_argument("--baseline", choices=["zeros", "blurred", "mean"], help="IG baseline")
    parser.add_argument("--layer", help="backbone layer for grad_cam")
    parser.add_argument("--worker", metavar="URL", help="submit to an xai worker and poll")
    add_common_flags(parser)
    args = parser.parse_args(argv)
    names = ("split", "n_samples", "method", "target", "baseline", "layer")
    overrides = {name: getattr(args, name) for name in names if getattr(args, name) is not None}
    if args.worker:
        from rigor.xai.client import submit_and_wait

        print(submit_and_wait(args.worker, args.from_manifest, overrides, args.ids))
        return 0
    from rigor.xai.stage import explain

    print(explain(args.from_manifest, args.env_policy, args.force, overrides, args.ids))
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
