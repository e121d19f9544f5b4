"""Write seeded random weights of a timm or torchvision architecture as safetensors.

    python scripts/random_weights.py --source timm --arch vit_small_patch16_224 \
        --out results/weights/vit_small_patch16_224.safetensors [--seed 0]

A stand-in for a downloaded encoder (the generated HEST-Benchmark demo and the extraction
benchmark), read by rigor's strict loader like real weights. Prints the file's path and
its sha256 on stderr. Exit codes: 0 ok, 2 bad arguments.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from rigor.cli import add_common_flags, run_main


def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments and write the file."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--source", choices=["timm", "torchvision"], required=True)
    parser.add_argument("--arch", required=True, help="architecture name")
    parser.add_argument("--out", type=Path, required=True, help="the .safetensors file")
    parser.add_argument("--seed", type=int, default=0)
    add_common_flags(parser, env=False)
    args = parser.parse_args(argv)
    from rigor.models.random_weights import write_random_weights

    kwargs = {"num_classes": 0} if args.source == "timm" else {}
    digest = write_random_weights(args.out, args.source, args.arch, args.seed, kwargs)
    print(f"sha256 {digest}", file=sys.stderr)
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
