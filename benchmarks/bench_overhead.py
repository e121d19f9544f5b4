"""Benchmark: rigor's training against a hand-written PyTorch twin doing the same work.

For each workload, ``scripts/train.py`` and ``benchmarks/twin_train.py`` (plain PyTorch, no
rigor code; it reads the run's config_resolved.json and splits.json) run as separate
processes in alternating pairs. Every twin's final weights must equal the paired rigor
run's ``last.pt`` bitwise, or the benchmark stops: the two did exactly the same work.
Reported per workload: whole-process wall time (start to exit) and loop time (rigor's
``training.wall_time_s``: epochs with their validation, logging and checkpoints; the
twin's epochs with their validation), each as the median of the paired ratios rigor/twin
with their range and a 95% bootstrap interval of that median (one run's median can lie
that far from the machine's).

    make bench               # digits_baseline (41 pairs), digits_resnet18 (3 epochs, 7 pairs)
    python benchmarks/bench_overhead.py --pairs 3 --workloads digits_baseline
    python benchmarks/bench_overhead.py --without gc   # rigor with one fast path turned off

``--without`` runs scripts/train.py with one of rigor's process-level fast paths turned off
(:data:`ABLATIONS`), to show what it is worth against the same twin.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
WORKLOADS: dict[str, tuple[str, list[str]]] = {
    "digits_baseline": ("configs/experiment/digits_baseline.yaml", []),
    "digits_resnet18": ("configs/experiment/digits_resnet18.yaml", ["training.epochs=3"]),
}
# Pairs per workload by default: the digits loop is short (about 1.5 s), so its pair ratios
# scatter more (0.8-1.3 for the twin against itself); its pairs are cheap, so there are more.
PAIRS = {"digits_baseline": 41, "digits_resnet18": 7}
# Fast paths that --without turns off, as code run before scripts/train.py in its process.
ABLATIONS = {
    # rigor.cli.run_main: the collector off during set-up, objects frozen at exit
    "gc": "import gc; gc.freeze = lambda: None; gc.disable = lambda: None",
    # rigor.allocator.keep_freed_memory, which rigor.cli.settle calls
    "allocator": "import rigor.cli; rigor.cli.keep_freed_memory = lambda: False",
}


def _run(command: list[str]) -> tuple[float, str]:
    started = time.perf_counter()
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    return wall, result.stdout


def rigor_run(
    config: str, sets: list[str], out: Path, without: str | None = None
) -> tuple[float, float, Path]:
    """Whole-process wall time, loop time and the run folder of one scripts/train.py run
    (with the fast path ``without`` turned off)."""
    flags = [arg for item in [f"run.output_root={out}", *sets] for arg in ("--set", item)]
    script = ["scripts/train.py"]
    if without is not None:
        prelude = f"{ABLATIONS[without]}; import runpy, sys; sys.argv = sys.argv[1:]; "
        script = ["-c", prelude + "runpy.run_path(sys.argv[0], run_name='__main__')", *script]
    wall, stdout = _run([sys.executable, *script, "--config", config, *flags])
    run = Path(stdout.strip().splitlines()[-1]).parent
    loop = json.loads((run / "metrics.json").read_text())["training"]["wall_time_s"]
    return wall, float(loop), run


def twin_run(run: Path, out: Path) -> tuple[float, float]:
    """Whole-process wall time and loop time of the twin of ``run``."""
    wall, stdout = _run(
        [sys.executable, "benchmarks/twin_train.py", "--run", str(run), "--out", str(out)]
    )
    return wall, float(json.loads(stdout.strip().splitlines()[-1])["loop_s"])


def same_weights(twin: Path, run: Path) -> bool:
    """Whether the twin's weights equal rigor's last.pt model bitwise, key by key."""
    import torch

    mine = torch.load(twin, map_location="cpu", weights_only=True)
    theirs = torch.load(run / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)
    theirs = theirs["model"]
    return sorted(mine) == sorted(theirs) and all(torch.equal(mine[k], theirs[k]) for k in mine)


def _spread(values: list[float]) -> dict[str, float]:
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
    }


def _ratio(values: list[float], draws: int = 4000) -> dict[str, float]:
    """:func:`_spread` of paired ratios, with a 95% bootstrap interval of their median (pairs
    drawn with replacement, seeded): how far one run's median can be from the machine's."""
    rng = random.Random(0)
    medians = sorted(statistics.median(rng.choices(values, k=len(values))) for _ in range(draws))
    return {
        **_spread(values),
        "median_ci95_low": medians[int(0.025 * draws)],
        "median_ci95_high": medians[int(0.975 * draws) - 1],
    }


def measure(name: str, pairs: int, scratch: Path, without: str | None = None) -> dict[str, Any]:
    """``pairs`` alternating rigor/twin pairs of one workload (after one warm-up run each)."""
    config, sets = WORKLOADS[name]
    rows: list[dict[str, float]] = []
    _, _, warm = rigor_run(config, sets, scratch / "warmup")
    twin_run(warm, scratch / "warmup.pt")
    for index in range(pairs):
        out, weights = scratch / f"pair{index}", scratch / f"twin{index}.pt"
        if index % 2 == 0:  # alternate who goes first; the twin reads the warm-up run's
            rigor_wall, rigor_loop, run = rigor_run(config, sets, out, without)  # config and
            twin_wall, twin_loop = twin_run(warm, weights)  # splits, as every run's
        else:
            twin_wall, twin_loop = twin_run(warm, weights)
            rigor_wall, rigor_loop, run = rigor_run(config, sets, out, without)
        if not same_weights(weights, run):
            raise SystemExit(f"{name}: the twin's weights differ from {run}/checkpoints/last.pt")
        rows.append(
            {
                "rigor_wall_s": rigor_wall,
                "twin_wall_s": twin_wall,
                "rigor_loop_s": rigor_loop,
                "twin_loop_s": twin_loop,
            }
        )
        print(f"{name} pair {index}: " + json.dumps({k: round(v, 3) for k, v in rows[-1].items()}))
    return {
        "workload": name + (f" without {without}" if without else ""),
        "config": config,
        "sets": sets,
        "pairs": rows,
        "weights_bitwise_equal": True,
        "whole_ratio": _ratio([r["rigor_wall_s"] / r["twin_wall_s"] for r in rows]),
        "loop_ratio": _ratio([r["rigor_loop_s"] / r["twin_loop_s"] for r in rows]),
        "rigor_wall_s": _spread([r["rigor_wall_s"] for r in rows]),
        "twin_wall_s": _spread([r["twin_wall_s"] for r in rows]),
        "rigor_loop_s": _spread([r["rigor_loop_s"] for r in rows]),
        "twin_loop_s": _spread([r["twin_loop_s"] for r in rows]),
    }


def table(reports: list[dict[str, Any]]) -> str:
    """Markdown: medians (range) of times and paired ratios per workload, and the 95%
    bootstrap interval of each median ratio."""

    def cell(node: dict[str, float], digits: int = 2) -> str:
        return f"{node['median']:.{digits}f} ({node['min']:.{digits}f}-{node['max']:.{digits}f})"

    def interval(node: dict[str, float]) -> str:
        return f"{node['median_ci95_low']:.2f}-{node['median_ci95_high']:.2f}"

    lines = [
        "| workload | rigor whole s | twin whole s | whole ratio | its 95% CI | rigor loop s "
        "| twin loop s | loop ratio | its 95% CI | weights |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in reports:
        lines.append(
            f"| {r['workload']} | {cell(r['rigor_wall_s'])} | {cell(r['twin_wall_s'])} | "
            f"{cell(r['whole_ratio'])} | {interval(r['whole_ratio'])} | "
            f"{cell(r['rigor_loop_s'])} | {cell(r['twin_loop_s'])} | "
            f"{cell(r['loop_ratio'])} | {interval(r['loop_ratio'])} | bitwise equal |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pairs", type=int, default=None, help="for every workload")
    parser.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=WORKLOADS)
    parser.add_argument("--without", choices=ABLATIONS, help="turn off one fast path in rigor")
    parser.add_argument("--report", type=Path, default=ROOT / "results/bench/overhead.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="rigor-overhead-") as scratch:
        reports = [
            measure(name, args.pairs or PAIRS[name], Path(scratch), args.without)
            for name in args.workloads
        ]
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text(json.dumps(reports, indent=2) + "\n")
    print(table(reports))


if __name__ == "__main__":
    main()
