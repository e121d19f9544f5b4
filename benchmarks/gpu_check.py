"""What a GPU gives rigor: frozen-feature extraction throughput (fp32 and bf16, compiled or
not) for a timm ViT-S/16 and HEST's ResNet-50 baseline, and the step rate of DINOv3 ViT-S/16
LoRA fine-tuning. Run by ``benchmarks/gpu_check.sh``; prints a markdown table (and writes it
with the raw numbers as JSON under ``--out``).

Extraction runs the probe's own path (``rigor.probe.features``: the ``hest`` reader in
DataLoader workers, uint8 batches normalised on the device, ``inference_mode``, autocast in
the given precision) over generated 224x224 patches, after a warm-up pass that also pays
for compilation. The LoRA step is forward, loss, backward and AdamW step of the real model
(``transformers.DINOv3ViTModel`` with peft adapters on q_proj and v_proj, bf16 autocast).

    python benchmarks/gpu_check.py [--patches 8192 --batch 256 --workers 8]
    python benchmarks/gpu_check.py --quick      # a CPU smoke run of the script itself
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path
from typing import Any

from bench_extract import CONFIG, ENCODERS, MEAN, STD
from bench_hest import hest_sets, make_set

ROOT = Path(__file__).resolve().parents[1]


def extraction(
    folder: Path, encoder: str, precision: str, compile: bool, args: argparse.Namespace
) -> dict[str, Any]:
    """Patches/s of the probe's extraction path for one setting, after a warm-up pass."""
    import torch

    from rigor.config import load_config
    from rigor.data.build import build_dataset
    from rigor.data.loader import InputPipeline, make_loader
    from rigor.models.build import build_model
    from rigor.probe.features import EncoderInput, extract, ready_encoder
    from rigor.training.optim import Precision

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    sets = [*hest_sets(folder, args.workers), *ENCODERS[encoder]]
    cfg = load_config(CONFIG, sets=[*sets, "data.transforms.stats=preset"], environ={}).config
    dataset = build_dataset(cfg.data, None)
    model = build_model(cfg.model, dataset.tasks, dataset.input_shape).backbone.to(device)
    channels_last = cfg.model.inference.channels_last
    model = ready_encoder(model, channels_last, compile)
    pipeline = InputPipeline(list(MEAN), list(STD))
    encoder_input = EncoderInput(pipeline, channels_last=channels_last)
    autocast = Precision(precision, device).autocast
    rows = list(range(min(args.patches, len(dataset))))

    def run(limit: int) -> tuple[int, float]:
        loader = make_loader(
            dataset,
            rows[:limit],
            batch_size=args.batch,
            num_workers=args.workers,
            prefetch_factor=4,
            pin_memory=device.type == "cuda",
        )
        started = time.perf_counter()
        _, seen, _ = extract(model, loader, device, encoder_input, autocast)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return len(seen), time.perf_counter() - started

    run(2 * args.batch)  # warm-up (and compilation)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    seen, seconds = run(len(rows))
    peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None
    return {"patches_per_s": seen / seconds, "patches": seen, "gpu_peak_mb": peak}


def lora_steps(args: argparse.Namespace) -> dict[str, Any]:
    """Steps/s of DINOv3 ViT-S/16 LoRA fine-tuning at 224x224, bf16 autocast on a GPU."""
    import torch

    from rigor.config import load_config
    from rigor.data.registry import TaskSpec
    from rigor.models.build import build_model

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    sets = [
        "model.backbone=dinov3_vit",
        "model.peft.method=lora",
        "model.peft.r=8",
        "model.hf.hidden_size=384",
        "model.hf.num_layers=12",
        "model.hf.num_heads=6",
        "model.hf.intermediate_size=1536",
        "model.hf.patch_size=16",
    ]
    if args.quick:
        sets += ["model.hf.num_layers=2"]
    cfg = load_config(CONFIG, sets=sets, environ={}).config
    side = 224 if not args.quick else 32
    tasks = {"label": TaskSpec("label", "classification", 10)}
    model = build_model(cfg.model, tasks, (3, side, side)).to(device).train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    x = torch.randn(args.train_batch, 3, side, side, device=device)
    y = torch.randint(0, 10, (args.train_batch,), device=device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    autocast = torch.autocast(device.type, dtype=dtype) if device.type == "cuda" else None

    def step() -> None:
        with autocast or contextlib.nullcontext():
            loss = torch.nn.functional.cross_entropy(model(x)["label"].float(), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(3):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(args.steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    return {
        "steps_per_s": args.steps / seconds,
        "images_per_s": args.steps * args.train_batch / seconds,
        "batch": args.train_batch,
        "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run every measurement and print the table."""
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patches", type=int, default=8192)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--train-batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--root", type=Path, default=ROOT / "results" / "bench")
    parser.add_argument("--out", type=Path, default=None, help="folder for the table and JSON")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a CPU smoke run")
    args = parser.parse_args(argv)
    if args.quick:
        args.patches, args.batch, args.workers, args.train_batch, args.steps = 64, 32, 2, 4, 2
    folder = make_set(args.root, 4000 if args.quick else 10000, 4 if args.quick else 10)
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "none (CPU)"
    report: dict[str, Any] = {"device": gpu, "torch": torch.__version__, "extraction": []}
    settings = [("fp32", False), ("bf16", False), ("fp32", True), ("bf16", True)]
    if args.quick:
        settings = [("fp32", False)]
    for encoder in ENCODERS:
        for precision, compiled in settings:
            result = extraction(folder, encoder, precision, compiled, args)
            row = {"encoder": encoder, "precision": precision, "compile": compiled, **result}
            report["extraction"].append(row)
            print(json.dumps(row), file=sys.stderr)
    report["lora"] = lora_steps(args)
    table = render(report)
    print(table)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "gpu_check.md").write_text(table + "\n")
        (args.out / "gpu_check.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def render(report: dict[str, Any]) -> str:
    """The markdown table of the closing note."""
    lines = [
        f"GPU check on {report['device']} (torch {report['torch']})",
        "",
        "| encoder | precision | compile | patches/s | GPU peak MB |",
        "|---|---|---|---|---|",
    ]
    for row in report["extraction"]:
        peak = "-" if row["gpu_peak_mb"] is None else f"{row['gpu_peak_mb']:.0f}"
        lines.append(
            f"| {row['encoder']} | {row['precision']} | {'on' if row['compile'] else 'off'} "
            f"| {row['patches_per_s']:.0f} | {peak} |"
        )
    lora = report["lora"]
    lines += [
        "",
        "| DINOv3 ViT-S/16 LoRA (r 8), batch | steps/s | images/s | trainable parameters |",
        "|---|---|---|---|",
        f"| {lora['batch']} | {lora['steps_per_s']:.2f} | {lora['images_per_s']:.0f} "
        f"| {lora['trainable']:,} |",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
