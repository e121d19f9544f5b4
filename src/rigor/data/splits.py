"""Four deterministic, group-aware splits: train / val_select / val_calib / val_test."""

from __future__ import annotations

from typing import Any

import numpy as np

from rigor.config.models import SplitFractions
from rigor.errors import ConfigError
from rigor.io import sha256_json

SPLITS = ("train", "val_select", "val_calib", "val_test")


def make_splits(groups: list[str], fractions: SplitFractions, seed: int) -> dict[str, list[int]]:
    """Assign whole groups to splits in a seeded order until each split's share is filled.

    The result depends only on the seed and the group labels (not on row order), and no
    group appears in two splits.
    """
    labels, inverse, counts = np.unique(np.asarray(groups), return_inverse=True, return_counts=True)
    order = np.random.default_rng(seed).permutation(len(labels))
    shares = np.array([getattr(fractions, name) for name in SPLITS])
    bounds = np.cumsum(shares)[:-1] * len(groups)
    split_of_group = np.empty(len(labels), dtype=np.int64)
    filled = 0
    for group in order:
        split_of_group[group] = np.searchsorted(bounds, filled + counts[group] / 2, side="right")
        filled += counts[group]
    assignment = split_of_group[inverse]
    splits = {name: np.flatnonzero(assignment == k).tolist() for k, name in enumerate(SPLITS)}
    empty = [name for name, rows in splits.items() if not rows]
    if empty:
        raise ConfigError(
            f"data.splits: split(s) {empty} would be empty with {len(labels)} groups; "
            "raise their fractions or use more data"
        )
    return splits


def achieved_fractions(splits: dict[str, list[int]]) -> dict[str, float]:
    """Each split's share of the rows, as assigned."""
    total = sum(len(rows) for rows in splits.values())
    return {name: round(len(rows) / total, 4) for name, rows in splits.items()}


def fraction_warning(splits: dict[str, list[int]], fractions: SplitFractions) -> str | None:
    """A warning when whole groups forced a split more than 20% (relative) off its fraction."""
    achieved = achieved_fractions(splits)
    off = {
        name: (getattr(fractions, name), share)
        for name, share in achieved.items()
        if abs(share - getattr(fractions, name)) > 0.2 * getattr(fractions, name)
    }
    if not off:
        return None
    listed = ", ".join(f"{name} {got:.3f} (asked {want:.3f})" for name, (want, got) in off.items())
    return (
        f"warning: data.splits: whole groups could not honour the fractions: {listed}; "
        "the manifest records the achieved fractions"
    )


def split_hash(ids: list[str]) -> str:
    """sha256 of a split's sorted member ids."""
    return sha256_json(sorted(ids))


def splits_record(
    splits: dict[str, list[int]], ids: list[str], fractions: SplitFractions, seed: int, dataset: str
) -> dict[str, Any]:
    """The content of ``splits.json``: member ids and a sha256 per split."""
    members = {name: [ids[row] for row in rows] for name, rows in splits.items()}
    return {
        "dataset": dataset,
        "seed": seed,
        "fractions": fractions.model_dump(),
        "splits": members,
        "sha256": {name: split_hash(rows) for name, rows in members.items()},
    }
