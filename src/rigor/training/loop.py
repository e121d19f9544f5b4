"""The plain-PyTorch loop: losses, one training epoch, prediction, split metrics."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from rigor.data.registry import TaskSpec
from rigor.tracking import Tracker, metric_key


def task_loss(output: torch.Tensor, target: torch.Tensor, spec: TaskSpec) -> torch.Tensor:
    """Cross-entropy for classification, mean squared error for regression."""
    if spec.kind == "classification":
        return F.cross_entropy(output, target.long())
    return F.mse_loss(output, target.float())


def total_loss(
    outputs: dict[str, torch.Tensor], targets: dict[str, torch.Tensor], tasks: dict[str, TaskSpec]
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Sum of the per-task losses, and each task's loss."""
    per_task = {name: task_loss(outputs[name], targets[name], spec) for name, spec in tasks.items()}
    return torch.stack(list(per_task.values())).sum(), per_task


@dataclass
class StepState:
    """Where the loop is: epoch, optimizer step, and samples seen in this process."""

    epoch: int = 0
    step: int = 0
    samples: int = 0


def train_epoch(
    model: nn.Module,
    loader: DataLoader[Any],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    tasks: dict[str, TaskSpec],
    grad_clip: float | None,
    max_steps: int | None,
    device: torch.device,
    tracker: Tracker,
    state: StepState,
) -> dict[str, float]:
    """One pass over the train loader; returns the epoch's mean losses."""
    model.train()
    sums: dict[str, float] = {}
    count = 0
    started = time.perf_counter()
    total = len(loader) if max_steps is None else min(max_steps, len(loader))
    for index, batch in enumerate(tracker.progress(loader, total, f"epoch {state.epoch}")):
        if max_steps is not None and index >= max_steps:
            break
        inputs = batch["input"].to(device)
        targets = {name: value.to(device) for name, value in batch["targets"].items()}
        loss, per_task = total_loss(model(inputs), targets, tasks)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        norm = nn.utils.clip_grad_norm_(model.parameters(), grad_clip or float("inf"))
        lr = optimizer.param_groups[0]["lr"]  # the rate this step uses, before the schedule moves
        optimizer.step()
        scheduler.step()
        state.step += 1
        state.samples += len(inputs)
        count += len(inputs)
        values = {metric_key("loss", "train"): loss.item()}
        values.update({metric_key("loss", "train", name): v.item() for name, v in per_task.items()})
        for key, value in values.items():
            sums[key] = sums.get(key, 0.0) + value * len(inputs)
        if tracker.should_log_step(state.step):
            elapsed = max(time.perf_counter() - started, 1e-9)
            values.update({"lr": lr, "grad_norm": float(norm), "samples_per_s": count / elapsed})
            tracker.log_step(state.step, values)
    return {key: value / max(count, 1) for key, value in sums.items()}


@torch.no_grad()
def predict(model: nn.Module, loader: DataLoader[Any], device: torch.device) -> dict[str, Any]:
    """Outputs and targets per task, and ids, over a whole loader (eval mode)."""
    model.eval()
    outputs: dict[str, list[np.ndarray]] = {}
    targets: dict[str, list[np.ndarray]] = {}
    ids: list[str] = []
    for batch in loader:
        for name, value in model(batch["input"].to(device)).items():
            outputs.setdefault(name, []).append(value.float().cpu().numpy())
        for name, value in batch["targets"].items():
            targets.setdefault(name, []).append(value.numpy())
        ids.extend(batch["id"])
    return {
        "outputs": {name: np.concatenate(parts) for name, parts in outputs.items()},
        "targets": {name: np.concatenate(parts) for name, parts in targets.items()},
        "ids": np.asarray(ids),
    }


def split_metrics(
    preds: dict[str, Any], tasks: dict[str, TaskSpec], split: str
) -> dict[str, float]:
    """Loss per task and in total, accuracy (classification) or MAE (regression), per split."""
    metrics: dict[str, float] = {}
    accs, maes = [], []
    total = 0.0
    for name, spec in tasks.items():
        output = torch.from_numpy(preds["outputs"][name])
        target = torch.from_numpy(preds["targets"][name])
        loss = task_loss(output, target, spec).item()
        metrics[metric_key("loss", split, name)] = loss
        total += loss
        if spec.kind == "classification":
            acc = float((output.argmax(dim=1) == target).float().mean())
            metrics[metric_key("acc", split, name)] = acc
            accs.append(acc)
        else:
            mae = float((output - target.float()).abs().mean())
            metrics[metric_key("mae", split, name)] = mae
            maes.append(mae)
    metrics[metric_key("loss", split)] = total
    if accs:
        metrics[metric_key("acc", split)] = float(np.mean(accs))
    if maes:
        metrics[metric_key("mae", split)] = float(np.mean(maes))
    return metrics


def available_monitors(tasks: dict[str, TaskSpec]) -> set[str]:
    """Metric names that :func:`split_metrics` produces for these tasks."""
    kinds = {spec.kind for spec in tasks.values()}
    names = {"loss"}
    if "classification" in kinds:
        names.add("acc")
    if "regression" in kinds:
        names.add("mae")
    return names
