"""Score a frozen encoder on gene expression with the HEST-Benchmark protocol.

    python scripts/probe.py --config configs/experiment/tiles_hest.yaml
    python scripts/probe.py --from-manifest results/runs/<run_id>/manifest.json \
        --set probe.test_groups=val_test
    python scripts/probe.py --bench configs/bench/tiles.yaml

The encoder is the config's model (random init, model.weights_path, or a DINOv3 folder in
model.hf.path) or a finished run's (--from-manifest: a train run's best checkpoint, or a
pretrain run's encoder; the run's own config and gene panel). Features are extracted once
per encoder and dataset (cached under <output_root>/cache/features) and copied into a run
folder of their own, with PCA (probe.pca_components, fitted on each train fold), ridge
regression per gene, patient-level folds, and Pearson r per gene with patient-cluster
bootstrap CIs in probe/report.json and the manifest's metrics.

--bench runs every encoder x task cell of a benchmark file (HEST-Benchmark task folders,
probe.protocol: hest_bench) as its own probe run through the sweep launchers, reusing
finished cells, and prints the leaderboard folder (<output_root>/leaderboards/<name>/:
leaderboard.md, .csv, .json, .png, paired encoder comparisons).

Exit codes: 0 ok, 1 unexpected, 2 invalid config or data, 3 invalid manifest,
4 env mismatch (strict), 5 artifact.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from rigor.cli import add_common_flags, add_set_flag, run_main


def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments, build the probe's config, and probe."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--config", help="experiment YAML: its model is the encoder")
    source.add_argument(
        "--from-manifest", type=Path, help="a train or pretrain run whose encoder is probed"
    )
    source.add_argument("--bench", type=Path, help="a benchmark file: encoders x task folders")
    add_set_flag(parser, "probe.folds=4")
    add_common_flags(parser)
    args = parser.parse_args(argv)

    if args.bench is not None:
        from rigor.probe.bench import run_bench

        if args.sets:
            from rigor.errors import UsageError

            raise UsageError("--bench: put overrides in the benchmark file's set: list")
        print(run_bench(args.bench, env_policy=args.env_policy))
        return 0
    from rigor.probe.run import open_source, probe

    if args.config is not None:
        from rigor.config import load_config

        resolved, found = load_config(args.config, sets=args.sets), None
    else:
        resolved, found = open_source(args.from_manifest, args.sets, args.env_policy, args.force)
    print(probe(resolved, env_policy=args.env_policy, force=args.force, source=found))
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
