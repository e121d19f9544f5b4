"""What regularises a run beyond its loss: the EMA of the weights and early stopping."""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import nn


class EMA:
    """Exponential moving average of a model's weights; buffers are copied as they are."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """ema = decay * ema + (1 - decay) * current, for every floating-point parameter."""
        for ema_p, p in zip(self.model.parameters(), model.parameters(), strict=True):
            ema_p.lerp_(p.detach(), 1.0 - self.decay)
        for ema_b, b in zip(self.model.buffers(), model.buffers(), strict=True):
            ema_b.copy_(b)

    def state_dict(self) -> dict[str, Any]:
        """The averaged weights."""
        return self.model.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the averaged weights."""
        self.model.load_state_dict(state)


class EarlyStopping:
    """Tracks the best monitor value and epochs without improvement."""

    def __init__(self, mode: str, patience: int | None, min_delta: float) -> None:
        self.sign = 1.0 if mode == "max" else -1.0
        self.patience = patience
        self.min_delta = min_delta
        self.best = -math.inf
        self.bad_epochs = 0

    def update(self, value: float) -> bool:
        """Record one epoch's monitor value; True when it is an improvement."""
        if self.sign * value > self.best + self.min_delta:
            self.best, self.bad_epochs = self.sign * value, 0
            return True
        self.bad_epochs += 1
        return False

    @property
    def best_value(self) -> float:
        """The best monitor value in its own sign."""
        return self.sign * self.best

    @property
    def should_stop(self) -> bool:
        """True once ``patience`` epochs passed without improvement."""
        return self.patience is not None and self.bad_epochs >= self.patience

    def state_dict(self) -> dict[str, float]:
        """Best value (signed for maximisation) and the patience counter."""
        return {"best": self.best, "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state: dict[str, float]) -> None:
        """Restore from :meth:`state_dict`."""
        self.best, self.bad_epochs = float(state["best"]), int(state["bad_epochs"])
