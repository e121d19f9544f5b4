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

from rigor.cli import run_main


def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments, then launch a sweep or summarise one."""
    from rigor.sweep.cli import add_sweep_flags, run_sweep_command

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_sweep_flags(parser)
    return run_sweep_command(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(run_main(main))
