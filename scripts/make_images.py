"""Write a generated imagefolder of coloured shapes (one class per shape) for trying the
imagefolder path end to end.

    python scripts/make_images.py --out data/shapes [--classes 3 --images 200 --size 32]

Writes <out>/<shape>/<index>.png. The classes are easy: a small CNN becomes perfect on them,
which is the case docs/datasets.md ("An easy dataset") walks through. Prints the folder.
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
    parser.add_argument("--classes", type=int, default=3, help="2 to 6 shapes")
    parser.add_argument("--images", type=int, default=200, help="images in all")
    parser.add_argument("--size", type=int, default=32, help="image side in pixels (>= 16)")
    parser.add_argument("--seed", type=int, default=0)
    add_common_flags(parser, env=False)
    args = parser.parse_args(argv)
    from rigor.data.sources.shapes import write_shapes
    from rigor.errors import UsageError

    try:
        count = write_shapes(args.out, args.classes, args.images, args.size, args.seed)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    print(f"wrote {count} images in {args.classes} classes", file=sys.stderr)
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
