"""Export a calibrated run (or a run with regression tasks only) as a deployable bundle.

    python scripts/export.py --from-manifest results/runs/<run_id>/manifest.json

Writes bundle/{model.safetensors,config_resolved.json,policy.json,splits.json,metrics/,
bundle.json} (bundle.json lists the sha256 of every file) and a stage entry. policy.json is
the one active policy (--policy, default calibration.policy): threshold, gate (Platt),
cascade, sets (split conformal), crc or scrc; --policy none ships the classification task
without abstention (no policy.json, no calibration needed, stated in bundle.json's
no_policy). A run with regression tasks only has no policy.json and needs no calibration.
A LoRA/DoRA run's adapters are merged into the weights with peft's merge, so predict needs
no peft; --no-merge keeps them in adapter.safetensors.
Exit codes: 0 ok, 2 classification run not calibrated yet / policy not fitted or infeasible
/ bad usage, 3 invalid manifest,
4 env mismatch (strict), 5 artifact missing or changed.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from rigor.cli import add_common_flags, run_main
from rigor.policies.registry import KINDS as POLICY_KINDS


def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments and export."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--from-manifest", required=True, type=Path, help="the run's manifest.json")
    parser.add_argument(
        "--policy",
        choices=POLICY_KINDS,
        help="the one active policy of the bundle (default: calibration.policy of the run); "
        "none: no policy, the classification task answered without abstention (needs no "
        "calibration)",
    )
    parser.add_argument(
        "--no-merge",
        action="store_true",
        help="LoRA/DoRA runs: keep the adapters in bundle/adapter.safetensors beside the base "
        "weights instead of merging them (predict then needs peft)",
    )
    add_common_flags(parser)
    args = parser.parse_args(argv)
    from rigor.export.bundle import export

    print(export(args.from_manifest, args.env_policy, args.force, args.policy, not args.no_merge))
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main, defer_gc=True))
