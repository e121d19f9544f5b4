"""Check the conformal guarantees on a finished run: pool its val_calib and val_test
predictions, re-split them at random into calibration and test halves many times, refit
every set policy, CRC and SCRC on each calibration half with the run's calibration config,
and report the mean coverage and risks on the test halves.

    .venv/bin/python benchmarks/resplit_guarantees.py --from-manifest M [--splits 200]

A single val_test split can land on either side of 1 - alpha; the guarantees are about the
mean over calibration sets, which this estimates.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from rigor.config import run_config
from rigor.policies import scrc as scrc_policy
from rigor.policies import sets as sets_policy
from rigor.policies.registry import apply_policy


def _pooled(run: Path, task: str) -> tuple[np.ndarray, np.ndarray]:
    parts = [np.load(run / "predictions" / f"{s}.npz") for s in ("val_calib", "val_test")]
    logits = np.concatenate([p[f"logits_{task}"] for p in parts])
    labels = np.concatenate([p[f"targets_{task}"] for p in parts]).astype(np.int64)
    return logits, labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--from-manifest", type=Path, required=True)
    parser.add_argument("--splits", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    run = args.from_manifest.parent
    config = run_config(json.loads((run / "config_resolved.json").read_text()))[0]
    calibration = config.calibration
    tasks = json.loads(args.from_manifest.read_text())["dataset"]["tasks"]
    task = calibration.task or next(t for t, s in tasks.items() if s["kind"] == "classification")
    logits, labels = _pooled(run, task)
    rng = np.random.default_rng(args.seed)
    found: dict[str, list[float]] = {}
    half = len(labels) // 2
    for _ in range(args.splits):
        order = rng.permutation(len(labels))
        cal, test = order[:half], order[half:]
        rows = np.arange(len(test))
        conformal = sets_policy.fit(task, logits[cal], labels[cal], None, calibration)
        for name, fitted in conformal["sets"].items():
            policy = {"kind": "sets", "task": task, **fitted}
            policy["q_hat"] = np.inf if policy["q_hat"] is None else policy["q_hat"]
            sets = apply_policy(policy, logits[test]).sets
            found.setdefault(f"coverage/{name}", []).append(sets[rows, labels[test]].mean())
        crc = {"kind": "crc", "task": task, **conformal["crc"]}
        sets = apply_policy(crc, logits[test]).sets
        found.setdefault("risk/crc", []).append(1 - sets[rows, labels[test]].mean())
        scrc = scrc_policy.fit(task, logits[cal], labels[cal], None, calibration)
        decided = apply_policy({"kind": "scrc", **scrc}, logits[test])
        kept = decided.accepted
        missed = ~decided.sets[rows, labels[test]]
        found.setdefault("accepted/scrc", []).append(kept.mean())
        found.setdefault("risk/scrc", []).append(missed[kept].mean() if kept.any() else 0.0)
    report = {
        "run": run.name,
        "task": task,
        "splits": args.splits,
        "n_calibration": half,
        "alpha_sets": calibration.conformal.alpha,
        "alpha_crc": calibration.risk_control.alpha,
        "alpha_scrc": calibration.risk_control.scrc_alpha,
        "scrc_coverage": calibration.risk_control.scrc_coverage,
        "mean": {k: float(np.mean(v)) for k, v in found.items()},
        "std": {k: float(np.std(v)) for k, v in found.items()},
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
