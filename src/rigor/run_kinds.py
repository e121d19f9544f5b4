"""The kinds of run a manifest can describe, in one place: which task function makes each,
how a sweep ranks it, and which metrics describe it. Sweep, summary, reproduce and
experiments consult this registry instead of testing the stage name themselves."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class RunKind:
    """One kind of run.

    ``task`` is ``module:function`` (imported on use, so the registry costs no import time);
    ``ranking`` is a fixed (metric key, mode) for sweeps, or None for the config's monitor;
    ``result_marker`` picks the manifest metrics that summarise the run.
    """

    name: str
    task: str
    ranking: tuple[str, str] | None
    result_marker: str
    resumable: bool = False  # the task function takes resume= (a killed run continues)

    def task_function(self) -> Callable[..., Path]:
        """The task function that makes a run of this kind."""
        module, function = self.task.split(":")
        task: Callable[..., Path] = getattr(importlib.import_module(module), function)
        return task


RUN_KINDS = {
    "train": RunKind("train", "rigor.training.run:train", None, "/val_test", resumable=True),
    "pretrain": RunKind(
        "pretrain",
        "rigor.pretraining.run:pretrain",
        ("best/loss/mae/val_select", "min"),
        "best/",
        resumable=True,
    ),
    "probe": RunKind("probe", "rigor.probe.run:probe", ("probe/pearson_mean", "max"), "probe/"),
}


def kind_of(manifest: dict[str, Any]) -> RunKind:
    """The kind of the run a manifest describes (its first stage)."""
    return RUN_KINDS[manifest["stages"][0]["name"]]
