"""A hand-written PyTorch twin of a rigor training run on digits: no rigor code at all.

    python benchmarks/twin_train.py --run RUN_DIR --out twin.pt

It reads the finished run's ``config_resolved.json`` and ``splits.json`` (plain JSON) and
does the same work as ``scripts/train.py`` would: the same seeding, data (scikit-learn's
bundled digits, resized when the config says so), normalisation statistics, model and
initialisation, batch order, AdamW groups, warmup-cosine schedule, gradient clipping and
per-epoch validation on val_select. It writes the final weights (to compare bitwise with
rigor's ``last.pt``) and prints one JSON line with its loop time. What a careful researcher
would write by hand, without rigor: tensors in memory, normalised once, no logging, no
checkpoints, no manifest.
"""

from __future__ import annotations

import argparse
import gzip
import importlib.util
import json
import math
import random
import time
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)


def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled digits CSV: (1797, 1, 8, 8) float32 in [0, 1], labels."""
    spec = importlib.util.find_spec("sklearn")
    assert spec is not None and spec.submodule_search_locations
    path = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data"
    with gzip.open(path / "digits.csv.gz", mode="rt", encoding="utf-8") as handle:
        data = np.loadtxt(handle, delimiter=",")
    images = (data[:, :-1].reshape(-1, 8, 8) / 16.0).astype(np.float32)[:, None]
    return images, data[:, -1].astype(np.int64)


def images_of(rows: list[int], images: np.ndarray, size: list[int] | None) -> torch.Tensor:
    """The rows' images as one float32 tensor, each resized (antialiased bilinear) if asked."""
    if size is None or list(size) == list(images.shape[2:]):
        # Standard strides: a size-1 channel axis from numpy keeps stride 1, and the CPU
        # convolution kernels then take another path (results differ in the last bits).
        return torch.from_numpy(images[rows]).clone(memory_format=torch.contiguous_format)
    from torchvision.transforms import functional

    return torch.stack(
        [functional.resize(torch.from_numpy(images[r]), list(size), antialias=True) for r in rows]
    )


def channel_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and unbiased std in float64, as float32 tensors for broadcasting."""
    wide = x.to(torch.float64)
    total = wide.sum(dim=(0, 2, 3))
    squares = (wide * wide).sum(dim=(0, 2, 3))
    count = x.shape[0] * x.shape[2] * x.shape[3]
    mean = total / count
    std = ((squares - total * mean) / max(count - 1, 1)).clamp_min(0).sqrt().clamp_min(1e-8)
    shape = (1, -1, 1, 1)
    return (
        torch.as_tensor(mean.tolist(), dtype=torch.float32).view(shape),
        torch.as_tensor(std.tolist(), dtype=torch.float32).view(shape),
    )


class Grey(nn.Module):
    """A torchvision network fed grey images repeated to three channels."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.expand(-1, 3, -1, -1))


class Net(nn.Module):
    """Backbone, then dropout and a linear layer for the digit."""

    def __init__(self, backbone: nn.Module, dim: int, dropout: float) -> None:
        super().__init__()
        self.backbone = backbone
        self.heads = nn.ModuleDict(
            {"digit": nn.Sequential(nn.Dropout(dropout), nn.Linear(dim, 10))}
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.heads["digit"](self.backbone(x))


def small_cnn(channels: list[int]) -> tuple[nn.Module, int]:
    layers: dict[str, nn.Module] = {}
    width = 1
    for index, out in enumerate(channels):
        last = index == len(channels) - 1
        layers["conv_last" if last else f"conv{index}"] = nn.Conv2d(
            width, out, kernel_size=3, padding=1, bias=False
        )
        layers[f"bn{index}"] = nn.BatchNorm2d(out)
        layers[f"relu{index}"] = nn.ReLU()
        if not last:
            layers[f"pool{index}"] = nn.MaxPool2d(2, ceil_mode=True)
        width = out
    layers["gap"] = nn.AdaptiveAvgPool2d(1)
    layers["flatten"] = nn.Flatten()
    return nn.Sequential(OrderedDict(layers)), width


def build(model: dict) -> Net:
    if model["backbone"] == "cnn_small":
        backbone, dim = small_cnn(model["channels"])
    else:
        import torchvision

        net = torchvision.models.resnet18(weights=None)
        dim = net.fc.in_features
        net.fc = nn.Identity()
        backbone = Grey(net)
    return Net(backbone, dim, model["dropout"])


def optimizer_for(net: Net, training: dict, optim: dict) -> torch.optim.Optimizer:
    groups: dict[tuple[str, bool], list[nn.Parameter]] = {}
    for name, param in net.named_parameters():
        part = "backbone" if name.startswith("backbone.") else "heads"
        groups.setdefault((part, param.ndim > 1), []).append(param)
    scale = {"backbone": training["backbone_lr_scale"], "heads": 1.0}
    return torch.optim.AdamW(
        [
            {
                "params": params,
                "lr": training["lr"] * scale[part],
                "weight_decay": optim["weight_decay"] if decay else 0.0,
            }
            for (part, decay), params in sorted(groups.items())
        ],
        lr=training["lr"],
        betas=tuple(optim["betas"]),
    )


def warmup_cosine(sched: dict, epochs: int, per_epoch: int):  # noqa: ANN201
    warmup = round(sched["warmup_epochs"] * per_epoch)
    floor = sched["min_lr_ratio"]

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, epochs * per_epoch - warmup))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    cfg = json.loads((args.run / "config_resolved.json").read_text())
    splits = json.loads((args.run / "splits.json").read_text())["splits"]
    training, seed = cfg["training"], cfg["run"]["seed"]
    seed_all(seed)
    images, labels = load_digits()
    rows = {name: [int(i.rsplit("-", 1)[1]) for i in ids] for name, ids in splits.items()}
    size = cfg["data"]["transforms"]["image_size"]
    train_x = images_of(rows["train"], images, size)
    mean, std = channel_stats(train_x)
    train_x = (train_x - mean) / std
    train_y = torch.from_numpy(labels[rows["train"]])
    val_x = (images_of(rows["val_select"], images, size) - mean) / std
    val_y = torch.from_numpy(labels[rows["val_select"]])
    net = build(cfg["model"])
    optimizer = optimizer_for(net, training, cfg["optimizer"])
    batch, epochs = training["batch_size"], training["epochs"]
    per_epoch = math.ceil(len(train_y) / batch)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_cosine(cfg["scheduler"], epochs, per_epoch)
    )
    started = time.perf_counter()
    accuracy = []
    for epoch in range(epochs):
        order = torch.randperm(
            len(train_y), generator=torch.Generator().manual_seed(seed * 100_003 + epoch)
        )
        net.train()
        for start in range(0, len(order), batch):
            index = order[start : start + batch]
            optimizer.zero_grad(set_to_none=True)
            loss = F.cross_entropy(net(train_x[index]), train_y[index])
            loss.backward()
            nn.utils.clip_grad_norm_(net.parameters(), training["grad_clip"])
            optimizer.step()
            schedule.step()
        net.eval()
        with torch.no_grad():
            step = training["eval_batch_size"]
            logits = torch.cat([net(val_x[i : i + step]) for i in range(0, len(val_y), step)])
        accuracy.append(float((logits.argmax(dim=1) == val_y).float().mean()))
    loop = time.perf_counter() - started
    torch.save(net.state_dict(), args.out)
    print(json.dumps({"loop_s": loop, "val_select_acc": accuracy}))


if __name__ == "__main__":
    main()
