"""Benchmark: wall time of every stage after training, on the demo run.

Trains ``configs/experiment/digits_baseline.yaml`` once, then, for each round, copies the
trained run folder and runs the demo's later stages on the copy as separate processes, as
``make demo`` does: ``manifest.py validate``, ``calibrate.py``, ``eval.py``, ``export.py``,
``predict.py`` (val_test). Each copy starts from the same trained run, so no round reads a
manifest that earlier rounds made longer. Reported: the median wall time of each stage over
the rounds, with its range, against the targets of issue 16.

    make bench
    python benchmarks/bench_stages.py --rounds 7
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG = "configs/experiment/digits_baseline.yaml"
TARGETS = {"validate": 0.3, "calibrate": 1.5, "eval": 1.5, "predict": 2.5}


def _timed(command: list[str]) -> float:
    started = time.perf_counter()
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    return wall


def stage_commands(run: Path) -> dict[str, list[str]]:
    """The demo's commands after training, on the run folder ``run``."""
    manifest = str(run / "manifest.json")
    py = sys.executable
    return {
        "validate": [py, "scripts/manifest.py", "validate", manifest],
        "calibrate": [py, "scripts/calibrate.py", "--from-manifest", manifest],
        "eval": [py, "scripts/eval.py", "--from-manifest", manifest],
        "export": [py, "scripts/export.py", "--from-manifest", manifest],
        "predict": [
            py,
            "scripts/predict.py",
            "--bundle",
            str(run / "bundle"),
            "--split",
            "val_test",
            "--output",
            str(run / "predict" / "val_test.csv"),
        ],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="rigor-bench-stages-") as tmp:
        out = Path(tmp)
        result = subprocess.run(
            [sys.executable, "scripts/train.py", "--config", CONFIG]
            + ["--set", f"run.output_root={out / 'trained'}"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        )
        trained = Path(result.stdout.strip().splitlines()[-1]).parent
        times: dict[str, list[float]] = {}
        for round_index in range(args.rounds):
            run = out / f"round{round_index}" / trained.name
            shutil.copytree(trained, run)
            for stage, command in stage_commands(run).items():
                times.setdefault(stage, []).append(_timed(command))
            shutil.rmtree(run.parent)
    report = {
        stage: {
            "median_s": round(statistics.median(values), 3),
            "min_s": round(min(values), 3),
            "max_s": round(max(values), 3),
            "target_s": TARGETS.get(stage),
        }
        for stage, values in times.items()
    }
    print("| stage | median s | range s | target s |")
    print("|---|---|---|---|")
    for stage, row in report.items():
        target = "" if row["target_s"] is None else f"{row['target_s']:g}"
        spread = f"{row['min_s']:.2f}-{row['max_s']:.2f}"
        print(f"| {stage} | {row['median_s']:.2f} | {spread} | {target} |")
    results = ROOT / "results" / "bench"
    results.mkdir(parents=True, exist_ok=True)
    (results / "stages.json").write_text(json.dumps({"rounds": args.rounds, **report}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
