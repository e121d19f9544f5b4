"""Emit the committed JSON Schemas under ``schema/`` from their single definitions.

python -m rigor.schema --write   # regenerate
python -m rigor.schema --check   # exit 1 when a committed file is stale
"""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Callable
from pathlib import Path

from rigor.calibration.guarantee_schema import SCHEMAS as GUARANTEE_SCHEMAS
from rigor.calibration.guarantee_schema import render as render_guarantee
from rigor.calibration.schema import render_thresholds_schema
from rigor.config import render_config_schema
from rigor.export.schema import render_bundle_schema
from rigor.manifest.env import PROJECT_ROOT
from rigor.manifest.schema import render_manifest_schema

SCHEMAS: dict[str, Callable[[], str]] = {
    "config.schema.json": render_config_schema,
    "manifest.v1.json": render_manifest_schema,
    "thresholds.schema.json": render_thresholds_schema,
    "bundle.schema.json": render_bundle_schema,
    **{
        f"{name}.schema.json": functools.partial(render_guarantee, name)
        for name in GUARANTEE_SCHEMAS
    },
}


def stale(directory: Path) -> list[str]:
    """Names of schema files that are missing or differ from what the code emits."""
    return [
        name
        for name, render in SCHEMAS.items()
        if not (directory / name).is_file() or (directory / name).read_text() != render()
    ]


def write(directory: Path) -> None:
    """Write every schema file."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, render in SCHEMAS.items():
        (directory / name).write_text(render())


def main() -> int:
    """Write or check the schema files."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--write", action="store_true", help="regenerate schema/*.json")
    parser.add_argument("--check", action="store_true", help="fail if a schema file is stale")
    parser.add_argument("--dir", type=Path, default=PROJECT_ROOT / "schema")
    args = parser.parse_args()
    if args.write:
        write(args.dir)
    names = stale(args.dir)
    if names:
        print(f"stale schema file(s) in {args.dir}: {', '.join(names)} (run: make schema)")
        return 1
    print(f"schemas in {args.dir} are up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
