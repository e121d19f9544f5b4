"""Fit temperature scaling, the selective threshold policy and the policies with
guarantees (Platt gate, conformal sets, CRC, SCRC) on val_calib only.

    python scripts/calibrate.py --from-manifest results/runs/<run_id>/manifest.json
    python scripts/calibrate.py --from-manifest M --policy sets \
        --set calibration.conformal.alpha=0.05

Writes calibration/{thresholds.json,sweep.csv,reliability.png,conformal.json,
scrcparams.json} (and platt.json for a gated task) and a stage entry.
When val_calib admits no finite temperature (every sample right, or every one wrong) T = 1
is used with a warning and every other policy is still fitted; --temperature none skips it.
Exit codes: 0 ok, 2 no feasible threshold / chosen policy infeasible (the message gives the
best achievable value) / NaN predictions / bad usage, 3 invalid
manifest, 4 env mismatch (strict), 5 artifact missing or changed.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rigor.cli import add_common_flags, add_set_flag, run_main
from rigor.policies.registry import KINDS as POLICY_KINDS


def _nested(overrides: dict[str, Any], item: str) -> dict[str, Any]:
    """``--set calibration.a.b=v`` laid into the overrides as {"a": {"b": v}}."""
    from rigor.config import parse_set
    from rigor.errors import UsageError

    key, value = parse_set(item)
    if key[0] != "calibration" or len(key) < 2:
        raise UsageError(f"--set {item}: calibrate.py only takes calibration.* keys")
    node = overrides
    for part in key[1:-1]:
        node = node.setdefault(part, {})
    node[key[-1]] = value
    return overrides


def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments and calibrate."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--from-manifest", required=True, type=Path, help="the run's manifest.json")
    parser.add_argument("--target-risk", type=float, help="override calibration.target_risk")
    parser.add_argument("--min-coverage", type=float, help="override calibration.min_coverage")
    parser.add_argument("--fnr-target", type=float, help="override calibration.fnr_target (binary)")
    parser.add_argument("--task", help="override calibration.task")
    parser.add_argument(
        "--temperature",
        choices=("fit", "none"),
        help="override calibration.temperature: fit it (T = 1 with a warning when val_calib "
        "has no finite optimum) or skip it",
    )
    parser.add_argument(
        "--score",
        choices=("msp", "gate"),
        help="override calibration.score: threshold the calibrated MSP or the SelectiveNet gate",
    )
    parser.add_argument(
        "--policy",
        choices=POLICY_KINDS,
        help="override calibration.policy: the kind export puts in the bundle (must be feasible)",
    )
    add_set_flag(parser, "calibration.conformal.alpha=0.05")
    add_common_flags(parser)
    args = parser.parse_args(argv)
    overrides = {
        key: value
        for key, value in {
            "target_risk": args.target_risk,
            "min_coverage": args.min_coverage,
            "fnr_target": args.fnr_target,
            "task": args.task,
            "score": args.score,
            "policy": args.policy,
            "temperature": args.temperature,
        }.items()
        if value is not None
    }
    for item in args.sets:
        overrides = _nested(overrides, item)
    from rigor.plotting.pool import PlotPool

    with PlotPool(most=1):  # one figure: one plot worker imports matplotlib meanwhile
        from rigor.calibration.stage import calibrate

        print(calibrate(args.from_manifest, args.env_policy, args.force, overrides))
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
