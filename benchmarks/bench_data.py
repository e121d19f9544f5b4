"""Benchmark: rigor's streaming input pipeline against torchvision's ImageFolder + DataLoader.

It generates its own data (an imagefolder of 224x224 JPEGs, 10 classes; reused between
runs) and reports, per size:

* fingerprint time, first run (no hash index) and second run (index warm);
* images/s through the training input pipeline (decode in workers, uint8 batches,
  float + normalise on the batch), side by side with ImageFolder + DataLoader doing the
  same work (PIL decode, to tensor, float, Normalize) with the same workers and batch
  size, in alternating rounds; peak PSS of each (whole process tree);
* peak memory (PSS of the process tree, and the main process's RSS) of a real
  ``scripts/train.py`` run on the folder, with ``data.cache`` off and on (the cache is
  filled by that run).

    make bench                                    # sizes 2,000 and 20,000
    python benchmarks/bench_data.py --sizes 500   # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from multiprocessing import Pool
from pathlib import Path
from typing import Any

import numpy as np
import psutil

ROOT = Path(__file__).resolve().parents[1]
SIDE, CLASSES, BATCH = 224, 10, 64


def _make_image(args: tuple[Path, int]) -> None:
    from PIL import Image

    path, seed = args
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, size=(14, 14, 3), dtype=np.uint8)
    image = Image.fromarray(coarse).resize((SIDE, SIDE), Image.Resampling.BICUBIC)
    noisy = np.asarray(image, dtype=np.int16) + rng.integers(-12, 13, size=(SIDE, SIDE, 3))
    Image.fromarray(noisy.clip(0, 255).astype(np.uint8)).save(path, quality=90)


def make_folder(root: Path, n: int) -> Path:
    """``root/imagefolder-<n>/class_k/<i>.jpg``, generated once (a marker says it is whole)."""
    folder = root / f"imagefolder-{n}"
    if (folder / ".complete").is_file():
        return folder
    jobs = []
    for i in range(n):
        target = folder / f"class_{i % CLASSES}" / f"{i:06d}.jpg"
        target.parent.mkdir(parents=True, exist_ok=True)
        jobs.append((target, i))
    with Pool(os.cpu_count() or 1) as pool:
        pool.map(_make_image, jobs, chunksize=64)
    (folder / ".complete").write_text(str(n))
    return folder


@contextmanager
def peak_memory(pid: int | None = None) -> Iterator[dict[str, float]]:
    """Peak memory (MB), sampled every 100 ms: the main process's RSS, and the PSS of it and
    all its children (forked DataLoader workers share most pages with their parent, so a
    sum of RSS counts those pages once per worker; PSS splits each shared page between the
    processes that map it, so the tree's PSS is the memory it really uses)."""
    result = {"main_rss_mb": 0.0, "tree_pss_mb": 0.0}
    done = threading.Event()
    root = psutil.Process(pid or os.getpid())

    def sample() -> None:
        while not done.is_set():
            try:
                result["main_rss_mb"] = max(result["main_rss_mb"], root.memory_info().rss / 2**20)
                total = 0
                for proc in [root, *root.children(recursive=True)]:
                    try:
                        total += proc.memory_full_info().pss
                    except psutil.Error:
                        continue
                result["tree_pss_mb"] = max(result["tree_pss_mb"], total / 2**20)
            except psutil.Error:
                pass
            done.wait(0.1)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield result
    finally:
        done.set()
        thread.join()


def data_sets(folder: Path, workers: int, cache: bool) -> list[str]:
    """The ``--set`` values that point the smoke config at the generated folder."""
    return [
        "data.name=imagefolder",
        f"data.root={folder}",
        "data.tasks=[label]",
        "data.channels=3",
        f"data.transforms.image_size=[{SIDE}, {SIDE}]",
        f"data.num_workers={workers}",
        f"data.cache={str(cache).lower()}",
    ]


def data_config(folder: Path, workers: int, cache: bool) -> Any:
    from rigor.config import load_config

    smoke = ROOT / "configs" / "experiment" / "smoke.yaml"
    sets = data_sets(folder, workers, cache)
    return load_config(smoke, sets=sets, environ={}).config.data


def fingerprint_times(folder: Path, cache_root: Path, workers: int) -> tuple[float, float]:
    """Seconds to fingerprint the folder with a cold, then a warm, hash index."""
    from rigor.data.build import build_dataset

    cfg = data_config(folder, workers, cache=False)
    times = []
    for index in ("cold", "warm"):
        if index == "cold":
            for old in (cache_root / "fingerprints").glob("*.json"):
                old.unlink()
        raw = build_dataset(cfg, cache_root).raw
        started = time.perf_counter()
        raw.content_hash()
        times.append(time.perf_counter() - started)
    return times[0], times[1]


def rigor_pass(folder: Path, workers: int, limit: int) -> Callable[[], int]:
    """One pass of rigor's training input pipeline; returns the images it produced."""
    import torch

    from rigor.data.build import build_dataset
    from rigor.data.loader import make_loader
    from rigor.data.transforms import build_pipeline
    from rigor.training.seeding import EpochSampler

    cfg = data_config(folder, workers, cache=False)
    dataset = build_dataset(cfg, None)
    rows = list(range(len(dataset)))
    pipeline = build_pipeline(cfg.transforms, [0.5] * 3, [0.25] * 3)
    cpu = torch.device("cpu")

    def run() -> int:
        loader = make_loader(
            dataset, rows, batch_size=BATCH, num_workers=workers, sampler=EpochSampler(len(rows), 0)
        )
        seen = 0
        for batch in loader:
            seen += len(pipeline(batch.input, cpu))
            if seen >= limit:
                break
        return seen

    return run


def torchvision_pass(folder: Path, workers: int, limit: int) -> Callable[[], int]:
    """The same work with torchvision's ImageFolder + DataLoader."""
    import torch
    from torch.utils.data import DataLoader
    from torchvision import datasets
    from torchvision.transforms import v2

    transform = v2.Compose(
        [
            v2.PILToTensor(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize([0.5] * 3, [0.25] * 3),
        ]
    )
    dataset = datasets.ImageFolder(str(folder), transform=transform)

    def run() -> int:
        loader = DataLoader(dataset, batch_size=BATCH, shuffle=True, num_workers=workers)
        seen = 0
        for images, _ in loader:
            seen += len(images)
            if seen >= limit:
                break
        return seen

    return run


def throughput(folder: Path, workers: int, limit: int, rounds: int) -> dict[str, dict[str, float]]:
    """Images/s and peak RSS of both pipelines, in alternating rounds."""
    passes = {
        "rigor": rigor_pass(folder, workers, limit),
        "torchvision": torchvision_pass(folder, workers, limit),
    }
    return alternate(passes, rounds)


def alternate(passes: dict[str, Callable[[], int]], rounds: int) -> dict[str, dict[str, float]]:
    """Run each pass once per round, in turn; median images/s, spread and peak PSS of each."""
    speeds: dict[str, list[float]] = {name: [] for name in passes}
    peaks: dict[str, float] = dict.fromkeys(passes, 0.0)
    for _ in range(rounds):
        for name, run in passes.items():
            with peak_memory() as memory:
                started = time.perf_counter()
                seen = run()
                speeds[name].append(seen / (time.perf_counter() - started))
            peaks[name] = max(peaks[name], memory["tree_pss_mb"])
    return {
        name: {
            "images_per_s": statistics.median(values),
            "spread": max(values) - min(values),
            "peak_pss_mb": peaks[name],
        }
        for name, values in speeds.items()
    }


def train_peak(folder: Path, workers: int, cache: bool, out: Path) -> dict[str, float]:
    """Peak memory and wall time of a short real training run on the folder."""
    command = [sys.executable, "scripts/train.py", "--config", "configs/experiment/smoke.yaml"]
    command += ["--env-policy", "ignore"]
    for value in (
        f"run.output_root={out}",
        *data_sets(folder, workers, cache),
        "model.channels=[8, 16]",
        "training.epochs=1",
        "training.max_steps_per_epoch=5",
        "training.eval_batch_size=64",
        "logging.tensorboard=false",
    ):
        command += ["--set", value]
    started = time.perf_counter()
    proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    with peak_memory(proc.pid) as memory:
        _, stderr = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"training failed: {stderr.decode()[-2000:]}")
    return {**memory, "wall_s": time.perf_counter() - started}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2000, 20000])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--limit", type=int, default=6000, help="images per throughput pass")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--root", type=Path, default=ROOT / "results" / "bench" / "data")
    args = parser.parse_args(argv)
    report: dict[str, Any] = {"workers": args.workers, "batch_size": BATCH, "sizes": {}}
    for n in args.sizes:
        folder = make_folder(args.root, n)
        work = args.root / f"work-{n}"
        cold, warm = fingerprint_times(folder, work / "cache", args.workers)
        speed = throughput(folder, args.workers, min(n, args.limit), args.rounds)
        runs = {}
        for cache in (False, True):
            for old in (work / "runs").glob("*"):
                subprocess.run(["rm", "-rf", str(old)], check=True)
            runs["cache_on" if cache else "cache_off"] = train_peak(
                folder, args.workers, cache, work
            )
        report["sizes"][n] = {
            "fingerprint_s": {"first": cold, "second": warm},
            "throughput": speed,
            "train": runs,
        }
        print(json.dumps({n: report["sizes"][n]}, indent=1), file=sys.stderr)
    print(render(report))
    (args.root / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def render(report: dict[str, Any]) -> str:
    """The benchmark table (markdown)."""
    lines = [
        f"workers {report['workers']}, batch {report['batch_size']}, {SIDE}x{SIDE} JPEGs",
        "",
        "| images | rigor img/s | torchvision img/s | ratio | pass PSS MB rigor / tv | "
        "train PSS MB cache off / on | train main RSS MB off / on | train wall s off / on "
        "| fingerprint s 1st / 2nd |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for n, row in report["sizes"].items():
        r, t = row["throughput"]["rigor"], row["throughput"]["torchvision"]
        off, on = row["train"]["cache_off"], row["train"]["cache_on"]
        fp = row["fingerprint_s"]
        lines.append(
            f"| {n:,} | {r['images_per_s']:.0f} (±{r['spread'] / 2:.0f}) "
            f"| {t['images_per_s']:.0f} (±{t['spread'] / 2:.0f}) "
            f"| {r['images_per_s'] / t['images_per_s']:.2f} "
            f"| {r['peak_pss_mb']:.0f} / {t['peak_pss_mb']:.0f} "
            f"| {off['tree_pss_mb']:.0f} / {on['tree_pss_mb']:.0f} "
            f"| {off['main_rss_mb']:.0f} / {on['main_rss_mb']:.0f} "
            f"| {off['wall_s']:.1f} / {on['wall_s']:.1f} "
            f"| {fp['first']:.2f} / {fp['second']:.2f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
