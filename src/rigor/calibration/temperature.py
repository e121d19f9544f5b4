"""Temperature scaling: the T > 0 that minimises the NLL of softmax(logits / T)."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from rigor.errors import RigorError

# Past this, the optimiser is running off to T -> 0 or T -> infinity.
LOG_T_BOUND = math.log(1e4)


class NoFiniteOptimum(RigorError):
    """The calibration set admits no finite temperature (exit 2: a data problem, not a bug)."""

    exit_code = 2


def scaled_nll(logits: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    """NLL of softmax(logits / temperature) at the labels (float64)."""
    z = torch.as_tensor(np.asarray(logits), dtype=torch.float64) / temperature
    return float(F.cross_entropy(z, torch.as_tensor(np.asarray(labels), dtype=torch.long)))


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """Minimise the NLL over log T with L-BFGS (strong Wolfe line search) to convergence.

    Raises:
        NoFiniteOptimum: when every sample is classified correctly (its label logit strictly
            largest: the NLL keeps falling as T -> 0) or every sample is wrong (the minimiser
            runs off towards T -> infinity), or when the optimiser leaves [1e-4, 1e4].
    """
    z = torch.as_tensor(np.asarray(logits), dtype=torch.float64)
    y = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    if z.ndim != 2 or len(z) != len(y) or len(y) == 0:
        raise ValueError("logits must be (n, K) and labels (n,), n > 0")
    label_logit = z.gather(1, y[:, None])[:, 0]
    others = z.scatter(1, y[:, None], -math.inf).max(dim=1).values
    if bool((label_logit > others).all()):
        raise NoFiniteOptimum(
            f"all {len(y)} calibration samples are classified correctly: the NLL keeps falling "
            "as T -> 0, so there is no finite temperature"
        )
    if bool((label_logit < others).all()):
        raise NoFiniteOptimum(
            f"all {len(y)} calibration samples are classified wrongly: temperature scaling "
            "cannot calibrate a model that is never right"
        )
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS(
        [log_t],
        lr=1.0,
        max_iter=100,
        tolerance_grad=1e-12,
        tolerance_change=1e-15,
        line_search_fn="strong_wolfe",
    )

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(z / log_t.exp(), y)
        loss.backward()
        return loss

    for _ in range(20):
        optimizer.step(closure)
        assert log_t.grad is not None
        value, grad = float(log_t.detach()), float(log_t.grad.detach())
        if abs(grad) < 1e-10 or abs(value) > LOG_T_BOUND:
            break
    if abs(value) > LOG_T_BOUND:
        raise NoFiniteOptimum(
            f"temperature scaling diverged (T = {math.exp(value):.3g}): the calibration "
            "set has no finite optimum"
        )
    return math.exp(value)
