"""Benchmark: the HEST reader at scale, against a hand-written h5py Dataset + DataLoader.

It writes (once; reused between runs) a HEST-layout set of 100,000 patches at 224x224:
100 samples (one patient each) of 1,000 patches, uncompressed uint8 in ``patches/*.h5``
(about 15 GB), eight genes of raw counts in ``st/*.h5ad``, and the patient in
``metadata/*.json``. Rendering 100,000 tiles would take over an hour, so 256 distinct
generated tiles are rendered and each patch is one of them, rolled by a per-patch offset;
the reader's cost does not depend on what the pixels show. It then reports:

* images/s and peak PSS (whole process tree) of one pass through rigor's training input
  pipeline (``hest`` dataset, workers, uint8 batches, float + normalise on the batch) and,
  in alternating rounds, of the plain alternative: a Dataset that opens each ``.h5`` in
  its worker with h5py and returns uint8 tensors, in a torch DataLoader with the same
  workers and batch size, normalised the same way;
* peak memory (PSS of the process tree, the main process's RSS) and wall time of a real
  ``scripts/train.py`` run on all 100,000 patches (train statistics streamed over the train
  split, ``--train-steps`` steps, a full val_select pass) and of a real ``scripts/probe.py``
  run (features of every patch, 100 leave-one-patient-out folds), with the probe's
  feature-extraction rate. Both read the 224x224 patches and resize them to
  ``--model-size`` (64) in the workers for a small CNN (channels [8, 16]): on two CPU cores
  a CNN at 224x224 runs at about 70 images/s, and the benchmark is about streaming, not
  the encoder.

The files fit in this machine's page cache after writing, so the passes measure reads from
memory-speed storage, as on a warm NVMe disk.

    python benchmarks/bench_hest.py                     # 100,000 patches
    python benchmarks/bench_hest.py --patches 5000      # a quick look
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from bench_data import alternate, peak_memory

ROOT = Path(__file__).resolve().parents[1]
SIDE, BATCH, POOL, SAMPLES = 224, 64, 256, 100
CONFIG = ROOT / "configs" / "experiment" / "tiles_hest.yaml"


def make_set(root: Path, patches: int, samples: int) -> Path:
    """``root/hest-<patches>/`` in the HEST layout, written once (a marker says it is whole)."""
    import anndata
    import h5py

    from rigor.data.sources.tiles import GENES, iter_tiles

    folder = root / f"hest-{patches}"
    if (folder / ".complete").is_file():
        return folder
    pool_images, pool_counts = [], []
    for _, _, image, counts in iter_tiles(16, POOL // 16, SIDE):
        pool_images.append(np.clip(np.rint(image.transpose(1, 2, 0) * 255), 0, 255))
        pool_counts.append(counts)
    images = np.asarray(pool_images, dtype=np.uint8)
    for name in ("patches", "st", "metadata"):
        (folder / name).mkdir(parents=True, exist_ok=True)
    per_sample = patches // samples
    for s in range(samples):
        sample = f"BENCH-{s:03d}"
        picks = (np.arange(per_sample) * 7 + s * 13) % POOL
        barcodes = [f"{sample}-{i:05d}" for i in range(per_sample)]
        with h5py.File(folder / "patches" / f"{sample}.h5", "w") as handle:
            img = handle.create_dataset(
                "img", (per_sample, SIDE, SIDE, 3), dtype=np.uint8, chunks=(1, SIDE, SIDE, 3)
            )
            for start in range(0, per_sample, 100):
                block = images[picks[start : start + 100]]
                img[start : start + len(block)] = np.roll(block, s, axis=1)
            handle.create_dataset("coords", data=np.zeros((per_sample, 2), dtype=np.int64))
            handle.create_dataset("barcode", data=np.asarray(barcodes, dtype="S")[:, None])
        table = anndata.AnnData(X=np.asarray([pool_counts[p] for p in picks], dtype=np.float32))
        table.obs_names, table.var_names = barcodes, list(GENES)
        table.write_h5ad(folder / "st" / f"{sample}.h5ad")
        (folder / "metadata" / f"{sample}.json").write_text(json.dumps({"patient": f"P{s:03d}"}))
    (folder / ".complete").write_text(str(patches))
    return folder


def hest_sets(folder: Path, workers: int) -> list[str]:
    """``--set`` values pointing the tiles_hest experiment at the generated set."""
    return [f"data.root={folder}", "data.cache=false", f"data.num_workers={workers}"]


def rigor_pass(folder: Path, workers: int, limit: int) -> Any:
    """One pass of rigor's training input pipeline over shuffled rows; returns the images."""
    import torch

    from rigor.config import load_config
    from rigor.data.build import build_dataset
    from rigor.data.loader import make_loader
    from rigor.data.transforms import build_pipeline
    from rigor.training.seeding import EpochSampler

    cfg = load_config(CONFIG, sets=hest_sets(folder, workers), environ={}).config.data
    dataset = build_dataset(cfg, None)
    pipeline = build_pipeline(cfg.transforms, [0.5] * 3, [0.25] * 3)
    rows = list(range(len(dataset)))

    def run() -> int:
        loader = make_loader(
            dataset, rows, batch_size=BATCH, num_workers=workers, sampler=EpochSampler(len(rows), 0)
        )
        seen = 0
        for batch in loader:
            seen += len(pipeline(batch.input, torch.device("cpu")))
            if seen >= limit:
                break
        return seen

    return run


class PlainH5:
    """The hand-written alternative: h5py opened lazily in each worker, uint8 CHW tensors."""

    def __init__(self, folder: Path) -> None:
        import h5py

        self.index: list[tuple[Path, int]] = []
        for path in sorted((folder / "patches").glob("*.h5")):
            with h5py.File(path, "r") as handle:
                self.index += [(path, i) for i in range(len(handle["img"]))]
        self.handles: dict[Path, Any] = {}

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> Any:
        import h5py
        import torch

        path, row = self.index[i]
        if path not in self.handles:
            self.handles[path] = h5py.File(path, "r")
        return torch.from_numpy(self.handles[path]["img"][row]).permute(2, 0, 1)


def plain_pass(folder: Path, workers: int, limit: int) -> Any:
    """The same work with the hand-written Dataset and a shuffled torch DataLoader."""
    import torch
    from torch.utils.data import DataLoader

    dataset = PlainH5(folder)
    mean = torch.tensor([0.5] * 3).view(1, 3, 1, 1)
    std = torch.tensor([0.25] * 3).view(1, 3, 1, 1)

    def run() -> int:
        loader = DataLoader(dataset, batch_size=BATCH, shuffle=True, num_workers=workers)
        seen = 0
        for images in loader:
            seen += len((images.float() / 255 - mean) / std)
            if seen >= limit:
                break
        return seen

    return run


def throughput(folder: Path, workers: int, limit: int, rounds: int) -> dict[str, Any]:
    """Images/s and peak PSS of both pipelines, in alternating rounds."""
    passes = {
        "rigor": rigor_pass(folder, workers, limit),
        "plain": plain_pass(folder, workers, limit),
    }
    return alternate(passes, rounds)


def script_peak(script: str, sets: list[str], out: Path) -> dict[str, Any]:
    """Peak memory and wall time of a real script run; the manifest it printed."""
    command = [sys.executable, f"scripts/{script}.py", "--config", str(CONFIG)]
    command += ["--env-policy", "ignore"]
    for value in [f"run.output_root={out}", *sets]:
        command += ["--set", value]
    started = time.perf_counter()
    proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    with peak_memory(proc.pid) as memory:
        stdout, stderr = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"{script} failed: {stderr.decode()[-2000:]}")
    wall = time.perf_counter() - started
    return {**memory, "wall_s": wall, "manifest": stdout.decode().strip().splitlines()[-1]}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patches", type=int, default=100_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--limit", type=int, default=6000, help="images per throughput pass")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--train-steps", type=int, default=100)
    parser.add_argument("--model-size", type=int, default=64, help="input side of train/probe")
    parser.add_argument("--root", type=Path, default=ROOT / "results" / "bench" / "hest")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    folder = make_set(args.root, args.patches, SAMPLES)
    written = time.perf_counter() - started
    report: dict[str, Any] = {
        "patches": args.patches,
        "workers": args.workers,
        "batch_size": BATCH,
        "model_size": args.model_size,
        "bytes": sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()),
        "write_s": written,
        "throughput": throughput(folder, args.workers, args.limit, args.rounds),
    }
    small = [
        *hest_sets(folder, args.workers),
        f"data.transforms.image_size=[{args.model_size}, {args.model_size}]",
        "model.channels=[8, 16]",
        "logging.tensorboard=false",
    ]
    out = args.root / "work"
    subprocess.run(["rm", "-rf", str(out)], check=True)
    steps = [
        "training.epochs=1",
        "scheduler.warmup_epochs=0",
        f"training.max_steps_per_epoch={args.train_steps}",
    ]
    report["train"] = script_peak("train", [*small, *steps], out)
    report["probe"] = script_peak("probe", small, out)
    probe_dir = Path(report["probe"]["manifest"]).parent
    report["probe"]["features"] = json.loads((probe_dir / "probe" / "report.json").read_text())[
        "features"
    ]
    print(json.dumps(report, indent=1), file=sys.stderr)
    print(render(report))
    (args.root / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def render(report: dict[str, Any]) -> str:
    """The benchmark table (markdown)."""
    r, p = report["throughput"]["rigor"], report["throughput"]["plain"]
    train, probe = report["train"], report["probe"]
    features = probe["features"]
    return "\n".join(
        [
            f"{report['patches']:,} HEST patches {SIDE}x{SIDE} ({report['bytes'] / 1e9:.1f} GB), "
            f"workers {report['workers']}, batch {report['batch_size']}; train and probe "
            f"resize to {report['model_size']}x{report['model_size']}",
            "",
            "| measure | rigor | hand-written h5py + DataLoader |",
            "|---|---|---|",
            f"| shuffled pass, img/s | {r['images_per_s']:.0f} (±{r['spread'] / 2:.0f}) "
            f"| {p['images_per_s']:.0f} (±{p['spread'] / 2:.0f}) |",
            f"| shuffled pass, peak PSS MB | {r['peak_pss_mb']:.0f} | {p['peak_pss_mb']:.0f} |",
            f"| train.py: peak PSS / main RSS MB, wall s | {train['tree_pss_mb']:.0f} / "
            f"{train['main_rss_mb']:.0f}, {train['wall_s']:.0f} | |",
            f"| probe.py: peak PSS / main RSS MB, wall s | {probe['tree_pss_mb']:.0f} / "
            f"{probe['main_rss_mb']:.0f}, {probe['wall_s']:.0f} | |",
            f"| probe features: img/s ({features['shape'][0]:,} patches) "
            f"| {features['samples_per_s']:.0f} | |",
        ]
    )


if __name__ == "__main__":
    main()
