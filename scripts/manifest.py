"""Validate, show, verify or diff run manifests. Imports no torch: answers in well under 1 s.

Exit codes: 0 ok, 2 bad usage, 3 schema violation (with its JSON path), 5 missing or
changed artifact.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from rigor.cli import add_common_flags, run_main
from rigor.manifest import load_manifest, verify_manifest
from rigor.manifest.report import diff, render_diff, show


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the subcommand and run it."""
    parser = argparse.ArgumentParser(description=__doc__)
    add_common_flags(parser, env=False)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in [
        ("validate", "check a manifest against schema/manifest.v1.json (exit 3 on violation)"),
        ("show", "print a readable summary"),
        ("verify", "re-hash every listed artifact (exit 5 on a missing or changed file)"),
    ]:
        sub.add_parser(name, help=text).add_argument("path", type=Path)
    diff_parser = sub.add_parser("diff", help="what differs between two runs, side by side")
    diff_parser.add_argument("a", type=Path)
    diff_parser.add_argument("b", type=Path)
    args = parser.parse_args(argv)
    if args.command == "diff":
        rows = diff(args.a, load_manifest(args.a), args.b, load_manifest(args.b))
        print(render_diff(rows, args.a.parent.name, args.b.parent.name))
        return 0
    manifest = load_manifest(args.path)
    if args.command == "verify":
        verify_manifest(manifest, args.path.parent)
        print(f"ok: {len(manifest['sha256'])} artifacts match their sha256")
    elif args.command == "show":
        print(show(manifest))
    else:
        print(f"ok: {args.path} is a valid manifest v{manifest['manifest_version']}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
