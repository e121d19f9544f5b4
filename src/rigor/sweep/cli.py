"""The sweep command's options and what it does with them (``scripts/sweep.py`` only parses)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rigor.cli import add_common_flags, add_set_flag
from rigor.errors import UsageError
from rigor.run_kinds import RUN_KINDS


def add_sweep_flags(parser: argparse.ArgumentParser) -> None:
    """Every flag of ``scripts/sweep.py``."""
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
    _add_search_flags(parser)
    add_set_flag(parser, "training.epochs=5; every point gets it")
    parser.add_argument("--task", choices=sorted(RUN_KINDS), default="train")
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


def _add_search_flags(parser: argparse.ArgumentParser) -> None:
    """Random and Optuna search over ranges, and continuing a sweep (or not)."""
    parser.add_argument(
        "--range",
        action="append",
        default=[],
        dest="ranges",
        metavar="KEY=LOW:HIGH[:log|:linear|:int]",
        help="a sampled interval (with --random or --optuna); *lr and weight_decay keys are "
        "log-uniform unless a scale is given",
    )
    parser.add_argument(
        "--random", type=int, metavar="N", help="N points drawn from the grid values and ranges"
    )
    parser.add_argument(
        "--optuna",
        type=int,
        metavar="N",
        help="an Optuna TPE search of N trials over the grid values and ranges, pruned on "
        "val_select (study in <sweep>/optuna.db)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of --random and --optuna")
    parser.add_argument(
        "--fresh", action="store_true", help="start a new sweep instead of continuing this one"
    )


def run_sweep_command(args: argparse.Namespace) -> int:
    """Summarise a sweep folder, or launch the sweep the arguments describe; prints the path
    of its summary (or of sweep.json when the jobs were only submitted)."""
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
    from rigor.sweep.launch import LaunchOptions, Space, sweep
    from rigor.sweep.space import parse_range

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
    if args.random is not None and args.optuna is not None:
        raise UsageError("--random and --optuna exclude each other")
    for flag, count in (("--random", args.random), ("--optuna", args.optuna)):
        if count is not None and count < 1:
            raise UsageError(f"{flag} {count}: the number of points must be at least 1")
    ranges = [parse_range(item) for item in args.ranges]
    grid = build_grid(args.grid, args.grid_file, allow_empty=bool(ranges))
    space = Space(grid, ranges, args.random, args.optuna, args.seed)
    folder = sweep(args.config, space, args.sets, options, args.task, args.env_policy, args.fresh)
    if not (folder / "summary.json").is_file():
        print(folder / "sweep.json")
        return 0
    print_table(summarize(folder), out=sys.stderr)
    print(folder / "summary.json")
    return 0
