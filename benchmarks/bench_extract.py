"""Benchmark: frozen-feature extraction, rigor's against a plain h5py + DataLoader loop.

The same encoder (random weights, 224x224 patches) extracts features of the same HEST
patches two ways, in alternating rounds:

* rigor: the probe's path (``rigor.probe.features``): the ``hest`` reader streaming uint8
  patches from the ``.h5`` files in DataLoader workers, batches converted and normalised on
  the device in one pass (``EncoderInput``), the encoder under ``torch.inference_mode``, in
  the memory format its config asks for (``channels_last`` for the ResNet, as
  configs/model/hest_resnet50_trunc.yaml sets);
* plain: a hand-written h5py ``Dataset`` (each worker opens the files itself and returns a
  float tensor per patch, ToTensor + Normalize as torchvision's transforms would), a torch
  ``DataLoader`` with the same workers and batch size, and ``model(x)`` under ``no_grad``.

Both encoders: a timm ViT-S/16 (``vit_small_patch16_224``) and HEST's ResNet-50 baseline
(torchvision's ResNet-50 up to ``layer3``, average-pooled). The features of both paths must
agree (to 1e-3), so the work is the same. Each pass runs in a process of its own, as a
user's job would (glibc's malloc settings are per process), after an uncounted warm-up
batch; reports patches/s (median of the alternating rounds and the spread) and the peak
PSS of the pass's process tree (workers included).

    python benchmarks/bench_extract.py                  # 384 patches, 3 rounds
    python benchmarks/bench_extract.py --patches 2000 --rounds 5
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from bench_data import peak_memory
from bench_hest import PlainH5, hest_sets, make_set

ROOT = Path(__file__).resolve().parents[1]
BATCH = 64
CONFIG = ROOT / "configs" / "experiment" / "tiles_hest.yaml"
ENCODERS = {
    "vit_s16": [
        "model.backbone=timm",
        "model.timm.arch=vit_small_patch16_224",
        "model.timm.kwargs={img_size: 224}",
    ],
    "resnet50_trunc": ["model.backbone=resnet50_trunc", "model.inference.channels_last=true"],
}
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class PlainFloat(PlainH5):
    """The plain Dataset: each patch as a normalised float tensor, made in the worker."""

    def __getitem__(self, i: int) -> Any:
        import torch

        pixels = super().__getitem__(i).float().div_(255)
        mean = torch.tensor(MEAN).view(3, 1, 1)
        std = torch.tensor(STD).view(3, 1, 1)
        return (pixels - mean) / std


def build(folder: Path, encoder: str, workers: int) -> tuple[Any, Any, Any]:
    """rigor's dataset and encoder for the set, and the plain model (the same weights)."""
    import torch
    from torch import nn

    from rigor.config import load_config
    from rigor.data.build import build_dataset
    from rigor.models.build import build_model

    sets = [*hest_sets(folder, workers), *ENCODERS[encoder], "data.transforms.stats=preset"]
    cfg = load_config(CONFIG, sets=sets, environ={}).config
    dataset = build_dataset(cfg.data, None)
    torch.manual_seed(0)
    model = build_model(cfg.model, dataset.tasks, dataset.input_shape).backbone.eval()
    net = copy.deepcopy(model.net)  # its own weights: rigor's may change memory format
    channels_last = cfg.model.inference.channels_last
    if encoder == "vit_s16":
        plain: nn.Module = net  # timm's own forward
    else:  # torchvision's modules, written out as a plain user would
        parts = [net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2, net.layer3]
        plain = nn.Sequential(*parts, nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()
    return dataset, (model, channels_last), plain


def rigor_pass(
    dataset: Any, encoder: tuple[Any, bool], workers: int, limit: int, out: list[Any]
) -> Any:
    """The probe's extraction over the first ``limit`` patches; returns the patches seen."""
    import torch

    from rigor.data.loader import InputPipeline, make_loader
    from rigor.probe.features import EncoderInput, extract, ready_encoder

    model, channels_last = encoder
    model = ready_encoder(model, channels_last, compile=False)  # as the probe does
    pipeline = InputPipeline(list(MEAN), list(STD))
    encoder_input = EncoderInput(pipeline, channels_last=channels_last)
    rows = list(range(min(limit, len(dataset))))

    def run() -> int:
        loader = make_loader(
            dataset, rows, batch_size=BATCH, num_workers=workers, prefetch_factor=2
        )
        features, seen, _ = extract(model, loader, torch.device("cpu"), encoder_input, _no_autocast)
        out[:] = [features]
        return len(seen)

    return run


def plain_pass(folder: Path, plain: Any, workers: int, limit: int, out: list[Any]) -> Any:
    """The hand-written loop over the same patches; returns the patches seen."""
    import torch
    from torch.utils.data import DataLoader, Subset

    dataset = PlainFloat(folder)
    rows = list(range(min(limit, len(dataset))))

    def run() -> int:
        loader = DataLoader(Subset(dataset, rows), batch_size=BATCH, num_workers=workers)
        parts = []
        with torch.no_grad():
            for images in loader:
                parts.append(plain(images).numpy())
        out[:] = [np.concatenate(parts)]
        return sum(len(p) for p in parts)

    return run


def _no_autocast() -> Any:
    import contextlib

    return contextlib.nullcontext()


def one_pass(folder: Path, encoder: str, path: str, workers: int, limit: int, out: Path) -> None:
    """One path in this process (as a user's job would run it): a warm-up batch, then the
    timed pass; saves the features to ``out`` and prints the rate as JSON."""
    dataset, model, plain = build(folder, encoder, workers)
    features: list[Any] = []
    if path == "rigor":
        warm, run = (rigor_pass(dataset, model, workers, n, features) for n in (BATCH, limit))
    else:
        warm, run = (plain_pass(folder, plain, workers, n, features) for n in (BATCH, limit))
    warm()
    started = time.perf_counter()
    seen = run()
    rate = seen / (time.perf_counter() - started)
    np.save(out, features[0])
    print(json.dumps({"images_per_s": rate}))


def alternate_processes(
    folder: Path, encoder: str, workers: int, limit: int, rounds: int, scratch: Path
) -> dict[str, Any]:
    """Each path in a process of its own (glibc's malloc settings and torch's state are
    per process), alternating over ``rounds``; median patches/s, spread, peak PSS."""
    speeds: dict[str, list[float]] = {"rigor": [], "plain": []}
    peaks = {"rigor": 0.0, "plain": 0.0}
    for _ in range(rounds):
        for path in speeds:
            command = [sys.executable, __file__, "--one", path, "--encoders", encoder]
            command += ["--patches", str(limit), "--workers", str(workers)]
            command += ["--root", str(folder.parent), "--out", str(scratch / f"{path}.npy")]
            proc = subprocess.Popen(command, stdout=subprocess.PIPE, cwd=Path(__file__).parent)
            with peak_memory(proc.pid) as memory:
                stdout, _ = proc.communicate()
            if proc.returncode:
                raise SystemExit(f"{encoder} {path}: the pass failed ({proc.returncode})")
            speeds[path].append(
                json.loads(stdout.decode().strip().splitlines()[-1])["images_per_s"]
            )
            peaks[path] = max(peaks[path], memory["tree_pss_mb"])
    return {
        path: {
            "images_per_s": statistics.median(values),
            "spread": max(values) - min(values),
            "peak_pss_mb": peaks[path],
        }
        for path, values in speeds.items()
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Write the set (once), then time both paths for each encoder."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patches", type=int, default=384)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--root", type=Path, default=ROOT / "results" / "bench")
    parser.add_argument("--encoders", nargs="+", default=list(ENCODERS), choices=list(ENCODERS))
    parser.add_argument("--one", choices=["rigor", "plain"], help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    folder = make_set(args.root, 4000, 4)  # 4 samples of 1,000 patches at 224x224
    if args.one is not None:
        one_pass(folder, args.encoders[0], args.one, args.workers, args.patches, args.out)
        return {}
    report: dict[str, Any] = {"patches": args.patches, "rounds": args.rounds}
    report["encoders"] = args.encoders
    scratch = args.root / "extract"
    scratch.mkdir(parents=True, exist_ok=True)
    for encoder in args.encoders:
        result = alternate_processes(
            folder, encoder, args.workers, args.patches, args.rounds, scratch
        )
        gap = float(np.abs(np.load(scratch / "rigor.npy") - np.load(scratch / "plain.npy")).max())
        if gap > 1e-3:
            raise SystemExit(f"{encoder}: the two paths' features differ by {gap}")
        ratio = result["rigor"]["images_per_s"] / result["plain"]["images_per_s"]
        report[encoder] = result | {"ratio": round(ratio, 3), "max_feature_gap": gap}
        print(json.dumps({encoder: report[encoder]}), file=sys.stderr)
    print(render(report))
    return report


def render(report: dict[str, Any]) -> str:
    """The markdown table of the closing note."""
    lines = [
        f"Feature extraction, {report['patches']} patches of 224x224, {report['rounds']} rounds",
        "",
        "| encoder | rigor patches/s | plain patches/s | ratio "
        "| rigor peak PSS MB | plain peak PSS MB |",
        "|---|---|---|---|---|---|",
    ]
    for encoder in report["encoders"]:
        ours, theirs = report[encoder]["rigor"], report[encoder]["plain"]
        lines.append(
            f"| {encoder} | {ours['images_per_s']:.1f} (±{ours['spread'] / 2:.1f}) "
            f"| {theirs['images_per_s']:.1f} (±{theirs['spread'] / 2:.1f}) "
            f"| {report[encoder]['ratio']:.2f} | {ours['peak_pss_mb']:.0f} "
            f"| {theirs['peak_pss_mb']:.0f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
