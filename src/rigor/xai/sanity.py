"""Quantitative sanity checks of attribution maps (after Adebayo et al. 2018)."""

from __future__ import annotations

import copy
from collections.abc import Callable

import numpy as np
import torch
from scipy.stats import rankdata
from torch import nn


def spearman_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman rank correlation of each row pair of (N, P) arrays (NaN for constant rows)."""
    ra = rankdata(a.reshape(len(a), -1), axis=1)
    rb = rankdata(b.reshape(len(b), -1), axis=1)
    ra -= ra.mean(axis=1, keepdims=True)
    rb -= rb.mean(axis=1, keepdims=True)
    denom = np.sqrt((ra**2).sum(axis=1) * (rb**2).sum(axis=1))
    return np.divide((ra * rb).sum(axis=1), denom, out=np.full(len(a), np.nan), where=denom > 0)


def reinitialised(model: nn.Module, part: nn.Module | None, seed: int) -> nn.Module:
    """A copy of ``model`` whose ``part`` (or every module, when None) has fresh weights."""
    clone = copy.deepcopy(model)
    target = clone if part is None else _matching(clone, model, part)
    torch.manual_seed(seed)
    for module in target.modules():
        reset = getattr(module, "reset_parameters", None)
        if callable(reset):
            reset()
    return clone.eval()


def _matching(clone: nn.Module, model: nn.Module, part: nn.Module) -> nn.Module:
    names = {id(module): name for name, module in model.named_modules()}
    return dict(clone.named_modules())[names[id(part)]]


def randomization_test(
    explain: Callable[[nn.Module], np.ndarray], model: nn.Module, head: nn.Module, seed: int
) -> dict[str, float]:
    """Mean Spearman correlation of |maps| between the trained model and: itself run again,
    the model with its head re-initialised, and the model re-initialised entirely.

    A method that depends on the learned weights gives high ``repeat`` and low randomised
    correlations.
    """
    trained = np.abs(explain(model))
    again = np.abs(explain(model))
    head_random = np.abs(explain(reinitialised(model, head, seed)))
    full_random = np.abs(explain(reinitialised(model, None, seed)))
    return {
        "spearman_repeat": float(np.nanmean(spearman_rows(trained, again))),
        "spearman_head_randomized": float(np.nanmean(spearman_rows(trained, head_random))),
        "spearman_full_randomized": float(np.nanmean(spearman_rows(trained, full_random))),
    }


def mask_mass(maps: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Share of each sample's |attribution| that falls inside its relevance mask."""
    weights = np.abs(maps).reshape(len(maps), -1)
    inside = (weights * masks.reshape(len(masks), -1)).sum(axis=1)
    total = weights.sum(axis=1)
    return np.divide(inside, total, out=np.full(len(maps), np.nan), where=total > 0)


def pointing_game(maps: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """1 where the pixel of largest |attribution| lies inside the mask."""
    flat = np.abs(maps).reshape(len(maps), -1).argmax(axis=1)
    return masks.reshape(len(masks), -1)[np.arange(len(masks)), flat].astype(np.float64)
