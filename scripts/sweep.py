"""Run a grid of configs, one training run per point, and rank them on val_select.

    python scripts/sweep.py --config configs/experiment/digits_baseline.yaml \
        --grid training.lr=1e-3,3e-3 --grid model.dropout=0.0,0.1 [--launcher local|submitit]
    python scripts/sweep.py --summarize results/sweeps/<sweep_id>

Every point is validated before anything runs. Points run as separate processes (local) or
as a submitit job array (Slurm on a cluster; --cluster local runs submitit's local executor).

Exit codes: 0 ok, 1 some points failed (each point's error is listed), 2 invalid config or
grid, 4 env mismatch (strict).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from rigor.cli import add_common_flags, add_set_flag, run_main


def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments, then launch a sweep or summarise one."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", help="experiment YAML every point starts from")
    parser.add_argument(
        "--grid",
        action="append",
        default=[],
        metavar="KEY=V1,V2",
        help="a swept key and its values (repeatable; the product of all is run)",
    )
    parser.add_argument(
        "--grid-file", type=Path, help="YAML with a 'grid:' mapping of key: [values]"
    )
    add_set_flag(parser, "training.epochs=5; every point gets it")
    parser.add_argument("--task", choices=("train", "pretrain"), default="train")
    parser.add_argument("--launcher", choices=("local", "submitit"), default="local")
    parser.add_argument("--max-parallel", type=int, default=1, help="local: points at once")
    parser.add_argument(
        "--nproc-per-node",
        type=int,
        default=1,
        help="DDP processes per point: torchrun (local) or submitit tasks (cluster)",
    )
    parser.add_argument(
        "--cluster",
        choices=("slurm", "local", "debug"),
        default=None,
        help="submitit: force an executor (default: Slurm when available, else local)",
    )
    parser.add_argument("--partition", default=None, help="Slurm partition")
    parser.add_argument("--timeout-min", type=int, default=60, help="per-job time limit")
    parser.add_argument("--gpus-per-node", type=int, default=0)
    parser.add_argument("--cpus-per-task", type=int, default=2)
    parser.add_argument("--mem-gb", type=int, default=8)
    parser.add_argument("--array-parallelism", type=int, default=8, help="Slurm array limit")
    parser.add_argument(
        "--no-wait", action="store_true", help="submitit: submit and return without waiting"
    )
    parser.add_argument("--summarize", type=Path, metavar="SWEEP_DIR", help="summarise a sweep")
    add_common_flags(parser)
    args = parser.parse_args(argv)

    from rigor.errors import UsageError
    from rigor.sweep.summary import print_table, summarize

    if args.summarize is not None:
        print_table(summarize(args.summarize))
        print(args.summarize / "summary.json")
        return 0
    if args.config is None:
        raise UsageError("--config is required unless --summarize is given")
    if args.max_parallel < 1 or args.nproc_per_node < 1:
        raise UsageError("--max-parallel and --nproc-per-node must be at least 1")

    from rigor.sweep.grid import build_grid
    from rigor.sweep.launch import LaunchOptions, sweep

    options = LaunchOptions(
        launcher=args.launcher,
        max_parallel=args.max_parallel,
        nproc_per_node=args.nproc_per_node,
        cluster=args.cluster,
        timeout_min=args.timeout_min,
        slurm_partition=args.partition,
        gpus_per_node=args.gpus_per_node,
        cpus_per_task=args.cpus_per_task,
        mem_gb=args.mem_gb,
        slurm_array_parallelism=args.array_parallelism,
        wait=not args.no_wait,
    )
    grid = build_grid(args.grid, args.grid_file)
    folder = sweep(args.config, grid, args.sets, options, args.task, args.env_policy)
    if (folder / "summary.json").is_file():
        from rigor.sweep.summary import summarize as read

        print_table(read(folder), out=sys.stderr)
        print(folder / "summary.json")
    else:
        print(folder / "sweep.json")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
