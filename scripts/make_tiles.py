"""Write the generated H&E tiles (docs/datasets.md) as a HEST-layout folder, or as
HEST-Benchmark task folders.

    python scripts/make_tiles.py --out data/tiles_hest \\
        [--patients 24 --tiles-per-patient 40 --size 32]
    python scripts/make_tiles.py --out data/hest_bench --bench-tasks TILES_A TILES_B \\
        [--patients 6 --splits 3 --size 224]

One sample per patient: patches/<id>.h5 (img, coords, barcode), st/<id>.h5ad (raw counts of
the eight genes) and metadata/<id>.json (the patient). Train on it with
configs/experiment/tiles_hest.yaml. With --bench-tasks, one task folder per name, each with
--patients patients of its own: patches/, adata/, var_50genes.json and
splits/{train,test}_<k>.csv (--splits patient-level folds), for configs/bench/tiles.yaml.
Exit codes: 0 ok, 2 bad arguments.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from rigor.cli import add_common_flags, run_main


def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments and write the folder; prints its path."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", required=True, type=Path, help="folder to write")
    parser.add_argument("--patients", type=int, default=24)
    parser.add_argument("--tiles-per-patient", type=int, default=40)
    parser.add_argument("--size", type=int, default=32, help="tile side in pixels")
    parser.add_argument(
        "--bench-tasks", nargs="+", default=None, help="write HEST-Benchmark task folders"
    )
    parser.add_argument("--splits", type=int, default=3, help="splits per task (--bench-tasks)")
    add_common_flags(parser, env=False)
    args = parser.parse_args(argv)
    from rigor.errors import UsageError

    if min(args.patients, args.tiles_per_patient) < 1 or args.size < 8:
        raise UsageError("--patients and --tiles-per-patient must be >= 1, --size >= 8")
    if args.bench_tasks is not None:
        from rigor.data.hest.write import write_hest_bench

        if not 2 <= args.splits <= args.patients:
            raise UsageError("--splits must be at least 2 and at most --patients")
        tasks = write_hest_bench(
            args.out,
            args.bench_tasks,
            args.patients,
            args.splits,
            args.tiles_per_patient,
            args.size,
        )
        print(f"wrote {len(tasks)} task folders", file=sys.stderr)
        print(args.out)
        return 0
    from rigor.data.hest.write import write_tiles_hest

    samples = write_tiles_hest(args.out, args.patients, args.tiles_per_patient, args.size)
    print(f"wrote {len(samples)} samples", file=sys.stderr)
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
