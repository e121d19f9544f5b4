"""The plain-PyTorch loop: losses, optimizer steps with accumulation and OOM fallback,
prediction, and a split's losses with its metrics."""

from __future__ import annotations

import math
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rigor.config.models import GateConfig
from rigor.data.dataset import Batch
from rigor.data.registry import TaskSpec
from rigor.errors import RigorError
from rigor.metrics.summary import task_metrics
from rigor.models.registry import AUX, GATE, module_key, task_name
from rigor.tracking import metric_key
from rigor.training.optim import Precision
from rigor.training.regularizers import EMA


def task_loss(output: torch.Tensor, target: torch.Tensor, spec: TaskSpec) -> torch.Tensor:
    """Cross-entropy for classification, mean squared error for regression (in fp32)."""
    if spec.kind == "classification":
        return F.cross_entropy(output.float(), target.long())
    return F.mse_loss(output.float(), target.float())


class UncertaintyWeights(nn.Module):
    """Learned task weights from homoscedastic uncertainty (Kendall, Gal and Cipolla, 2018).

    Each task has a log-variance :math:`s_t = \\log\\sigma_t^2` (initialised at 0). The
    total loss is :math:`\\sum_t c_t e^{-s_t} L_t + s_t / 2` with :math:`c_t = 1` for
    classification and :math:`1/2` for regression.
    """

    def __init__(self, tasks: dict[str, TaskSpec]) -> None:
        super().__init__()
        self.kinds = {name: spec.kind for name, spec in tasks.items()}
        zeros = {module_key(name): nn.Parameter(torch.zeros(())) for name in tasks}
        self.log_vars = nn.ParameterDict(zeros)

    def by_task(self) -> dict[str, nn.Parameter]:
        """Each task's log-variance, by task name."""
        return {task_name(key): s for key, s in self.log_vars.items()}

    def forward(self, per_task: dict[str, torch.Tensor]) -> torch.Tensor:
        """The weighted total of the per-task losses."""
        terms = []
        for name, loss in per_task.items():
            s = self.log_vars[module_key(name)]
            scale = 1.0 if self.kinds[name] == "classification" else 0.5
            terms.append(scale * torch.exp(-s) * loss + 0.5 * s)
        return torch.stack(terms).sum()

    def record(self) -> dict[str, dict[str, float]]:
        """Each task's log-variance and effective weight :math:`c_t e^{-s_t}`."""
        out: dict[str, dict[str, float]] = {}
        for name, s in self.by_task().items():
            scale = 1.0 if self.kinds[name] == "classification" else 0.5
            value = float(s.detach())
            out[name] = {"log_variance": value, "weight": scale * math.exp(-value)}
        return out


def selectivenet_loss(
    logits: torch.Tensor,
    gate_logits: torch.Tensor,
    aux_logits: torch.Tensor,
    target: torch.Tensor,
    gate: GateConfig,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The SelectiveNet objective (Geifman and El-Yaniv, 2019) for one batch.

    With per-sample cross-entropy l_i, selection g_i = sigmoid(gate logit) and empirical
    coverage phi = mean(g): selective risk r = mean(l * g) / phi, and

        L = alpha * (r + lam * max(0, c - phi)^2) + (1 - alpha) * CE(aux logits, y).

    Returns the objective, phi and r (phi and r detached).
    """
    target = target.long()
    per_sample = F.cross_entropy(logits.float(), target, reduction="none")
    selection = torch.sigmoid(gate_logits.float())
    coverage = selection.mean()
    risk = (per_sample * selection).mean() / coverage.clamp_min(1e-12)
    penalty = gate.lam * torch.clamp(gate.target_coverage - coverage, min=0) ** 2
    aux = F.cross_entropy(aux_logits.float(), target)
    loss = gate.alpha * (risk + penalty) + (1 - gate.alpha) * aux
    return loss, coverage.detach(), risk.detach()


def total_loss(
    outputs: dict[str, torch.Tensor],
    targets: dict[str, torch.Tensor],
    tasks: dict[str, TaskSpec],
    weighting: UncertaintyWeights | None = None,
    gate: GateConfig | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The objective (the plain sum, or the uncertainty-weighted one), and each task's loss.

    The gated task's loss is its SelectiveNet objective; every other task's is
    :func:`task_loss`.
    """
    per_task = {}
    for name, spec in tasks.items():
        if gate is not None and name == gate.task:
            per_task[name] = selectivenet_loss(
                outputs[name], outputs[GATE + name], outputs[AUX + name], targets[name], gate
            )[0]
        else:
            per_task[name] = task_loss(outputs[name], targets[name], spec)
    if weighting is not None:
        return weighting(per_task), per_task
    if len(per_task) == 1:  # the sum of one term is the term: no stack, no extra graph node
        return next(iter(per_task.values())), per_task
    return torch.stack(list(per_task.values())).sum(), per_task


class OutOfMemoryFloor(RigorError):
    """CUDA ran out of memory even at the smallest allowed micro-batch."""

    exit_code = 1


class NonFiniteLoss(RigorError):
    """The training loss became NaN or infinite: the run stops before the optimizer step."""

    exit_code = 1


@dataclass
class StepResult:
    """What one optimizer step did."""

    losses: dict[str, float]
    grad_norm: float
    lr: float
    samples: int


@dataclass(kw_only=True)
class Stepper:
    """Runs optimizer steps over groups of batches, in micro-batches of ``micro`` samples.

    Gradients of all micro-batches are weighted by their share of the step's samples, so a
    step computes the mean gradient of the whole effective batch whatever ``micro`` is. On
    ``torch.OutOfMemoryError`` the step is redone from zeroed gradients with ``micro`` halved,
    down to ``floor``; every halving is recorded in ``events``.
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    precision: Precision
    tasks: dict[str, TaskSpec]
    grad_clip: float | None
    micro: int
    floor: int
    device: torch.device
    ema: EMA | None = None
    weighting: UncertaintyWeights | None = None
    gate: GateConfig | None = None
    forward_model: nn.Module | None = None  # the DDP wrapper under torchrun
    world_size: int = 1
    events: list[dict[str, int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        # What is clipped, listed once: walking the module tree for it took about 0.2 ms a
        # step on digits (profiled).
        self._params = [*self.model.parameters()]
        if self.weighting is not None:
            self._params += list(self.weighting.parameters())

    def step(self, batches: list[Batch], step_index: int) -> StepResult:
        """One optimizer step over ``batches`` (the accumulation group)."""
        while True:
            try:
                losses, samples = self._accumulate(batches)
                break
            except torch.OutOfMemoryError:
                if self.world_size > 1:
                    raise OutOfMemoryFloor(
                        "out of memory under torchrun: halving the micro-batch would desync the "
                        "processes; lower training.batch_size or use more processes"
                    ) from None
                self._halve(step_index)
        loss = losses[metric_key("loss", "train")]
        if not self._all_finite(loss):  # stop before the optimizer moves a weight
            rows = sorted(int(r) for batch in batches for r in batch.index.tolist())
            shown = ", ".join(map(str, rows[:20])) + (" ..." if len(rows) > 20 else "")
            raise NonFiniteLoss(
                f"non-finite training loss (here: {loss}) at step {step_index}; the batch held "
                f"dataset rows {shown}. The last checkpoint is intact; look for extreme inputs "
                "or targets, or lower training.lr (fp16: try bf16)"
            )
        if self.weighting is not None and self.world_size > 1:
            import torch.distributed as dist

            for param in self.weighting.parameters():  # DDP averages only the model's grads
                if param.grad is not None:
                    dist.all_reduce(param.grad)
                    param.grad /= self.world_size
        scaler = self.precision.scaler
        scaler.unscale_(self.optimizer)
        norm = nn.utils.clip_grad_norm_(self._params, self.grad_clip or float("inf"))
        lr = float(self.optimizer.param_groups[-1]["lr"])  # the heads' rate, used by this step
        scaler.step(self.optimizer)
        scaler.update()
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update(self.model)
        return StepResult(losses, float(norm), lr, samples)

    def _all_finite(self, loss: float) -> bool:
        """Whether the loss is finite in every process (all stop together, none hangs)."""
        bad = 0.0 if math.isfinite(loss) else 1.0
        if self.world_size > 1:
            import torch.distributed as dist

            flag = torch.tensor([bad], device=next(self.model.parameters()).device)
            dist.all_reduce(flag)
            bad = float(flag.item())
        return bad == 0.0

    def _accumulate(self, batches: list[Batch]) -> tuple[dict[str, float], int]:
        self.optimizer.zero_grad(set_to_none=True)
        total = sum(len(batch) for batch in batches)
        sums: dict[str, float] = {}
        for inputs, targets in self._chunks(batches):
            with self.precision.autocast():
                outputs = (self.forward_model or self.model)(inputs)
            loss, per_task = total_loss(outputs, targets, self.tasks, self.weighting, self.gate)
            weight = len(inputs) / total  # 1 when the step is one micro-batch: x * 1 is x
            self.precision.scaler.scale(loss * weight if weight != 1.0 else loss).backward()
            named = {metric_key("loss", "train"): loss}
            named |= {metric_key("loss", "train", name): value for name, value in per_task.items()}
            if self.weighting is not None:
                named |= {f"log_variance/{n}": s for n, s in self.weighting.by_task().items()}
            if self.gate is not None and self.gate.task is not None:
                task = self.gate.task
                selection = torch.sigmoid(outputs[GATE + task].detach().float())
                named[metric_key("gate_coverage", "train", task)] = selection.mean()
            # One .item() per tensor: a single task's loss is also the total.
            numbers = {id(value): value.item() for value in named.values()}
            for key, value in named.items():
                sums[key] = sums.get(key, 0.0) + numbers[id(value)] * weight
        return sums, total

    def _chunks(
        self, batches: list[Batch]
    ) -> Iterator[tuple[torch.Tensor, dict[str, torch.Tensor]]]:
        for batch in batches:
            for start in range(0, len(batch), self.micro):
                end = start + self.micro
                inputs = batch.input[start:end].to(self.device, non_blocking=True)
                targets = {k: v[start:end].to(self.device) for k, v in batch.targets.items()}
                yield inputs, targets

    def _halve(self, step_index: int) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        if self.micro // 2 < self.floor:
            raise OutOfMemoryFloor(
                f"out of memory at micro-batch {self.micro}, and halving it would go below "
                f"training.min_batch_size={self.floor}"
            )
        self.events.append({"step": step_index, "from": self.micro, "to": self.micro // 2})
        print(f"out of memory: micro-batch {self.micro} -> {self.micro // 2}", file=sys.stderr)
        self.micro //= 2


def split_metrics(
    preds: dict[str, Any], tasks: dict[str, TaskSpec], split: str
) -> dict[str, float]:
    """Loss per task and in total, each task's metrics
    (:func:`rigor.metrics.summary.task_metrics`), and their means over tasks; per split."""
    metrics: dict[str, float] = {}
    per_kind: dict[str, list[dict[str, float]]] = {"classification": [], "regression": []}
    total = 0.0
    for name, spec in tasks.items():
        output, target = preds["outputs"][name], preds["targets"][name]
        loss = task_loss(torch.from_numpy(output), torch.from_numpy(target), spec).item()
        metrics[metric_key("loss", split, name)] = loss
        total += loss
        kind = "classification" if spec.kind == "classification" else "regression"
        values = task_metrics(kind, output, target, preds["outputs"].get(GATE + name))
        metrics |= {metric_key(key, split, name): value for key, value in values.items()}
        per_kind[kind].append(values)
    metrics[metric_key("loss", split)] = total
    means = (("acc", "classification"), ("augrc", "classification"), ("mae", "regression"))
    for key, kind in means:
        if per_kind[kind]:
            metrics[metric_key(key, split)] = float(np.mean([v[key] for v in per_kind[kind]]))
    if per_kind["regression"]:
        # A constant prediction has no correlation; it counts as 0 in the mean, not NaN.
        rs = [v.get("pearson", 0.0) for v in per_kind["regression"]]
        metrics[metric_key("pearson", split)] = float(np.mean(rs))
    return metrics


def available_monitors(tasks: dict[str, TaskSpec]) -> set[str]:
    """Metric names that :func:`split_metrics` produces for these tasks."""
    kinds = {spec.kind for spec in tasks.values()}
    names = {"loss"}
    if "classification" in kinds:
        names |= {"acc", "augrc"}
    if "regression" in kinds:
        names |= {"mae", "pearson"}
    return names
