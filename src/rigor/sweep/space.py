"""Search spaces beyond the grid: ``--range key=low:high[:log|:linear|:int]`` items, sampled
at random (``--random N``, seeded) or suggested by Optuna (``--optuna N``).

A range samples log-uniformly with ``:log``, uniformly with ``:linear``, integers with
``:int``; without a suffix, keys whose last part names a learning rate or a weight decay
(``lr``, ``*_lr``, ``weight_decay``) are log-uniform and every other key is uniform.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import yaml

from rigor.config.compose import KEY_PATTERN
from rigor.errors import ConfigError

_LOG_BY_DEFAULT = ("lr", "weight_decay")


@dataclass(frozen=True)
class Range:
    """A continuous (or integer) interval of one dotted key."""

    key: str
    low: float
    high: float
    scale: str  # log | linear | int

    def record(self) -> dict[str, Any]:
        """How sweep.json lists it."""
        return {"key": self.key, "low": self.low, "high": self.high, "scale": self.scale}


def _default_scale(key: str) -> str:
    last = key.rsplit(".", 1)[-1]
    return "log" if last in _LOG_BY_DEFAULT or last.endswith("_lr") else "linear"


def parse_range(item: str) -> Range:
    """One ``--range section.key=low:high[:scale]``."""
    key, sep, text = item.partition("=")
    key, parts = key.strip(), text.strip().split(":")
    bad = f"malformed --range {item!r}: expected section.key=low:high[:log|:linear|:int]"
    if not sep or not KEY_PATTERN.match(key) or len(parts) not in (2, 3):
        raise ConfigError(bad)
    try:
        low, high = (float(yaml.safe_load(p)) for p in parts[:2])
    except (TypeError, ValueError, yaml.YAMLError):
        raise ConfigError(bad) from None
    scale = parts[2] if len(parts) == 3 else _default_scale(key)
    if scale not in ("log", "linear", "int"):
        raise ConfigError(bad)
    if not low < high or not (math.isfinite(low) and math.isfinite(high)):
        raise ConfigError(f"--range {key}: need finite low < high, got {low} and {high}")
    if scale == "log" and low <= 0:
        raise ConfigError(f"--range {key}: a log-uniform range needs low > 0, got {low}")
    if scale == "int" and (low != int(low) or high != int(high)):
        raise ConfigError(f"--range {key}: an integer range needs integer bounds")
    return Range(key, low, high, scale)


def _draw(rng: np.random.Generator, item: Range) -> float | int:
    if item.scale == "int":
        return int(rng.integers(int(item.low), int(item.high) + 1))
    if item.scale == "log":
        value = math.exp(rng.uniform(math.log(item.low), math.log(item.high)))
    else:
        value = rng.uniform(item.low, item.high)
    return float(f"{value:.6g}")  # readable configs; 6 digits are far below any noise


def sample_points(
    grid: dict[str, list[Any]], ranges: list[Range], n: int, seed: int
) -> list[dict[str, Any]]:
    """``n`` points: each grid key picks one of its values, each range draws a value; the
    same seed gives the same points."""
    if n < 1:
        raise ConfigError("--random: the number of points must be at least 1")
    rng = np.random.default_rng(seed)
    points = []
    for _ in range(n):
        point: dict[str, Any] = {
            key: values[int(rng.integers(len(values)))] for key, values in grid.items()
        }
        point |= {item.key: _draw(rng, item) for item in ranges}
        points.append(point)
    return points


def suggest(trial: Any, grid: dict[str, list[Any]], ranges: list[Range]) -> dict[str, Any]:
    """An Optuna trial's point: categorical grid keys, float (log or linear) and int ranges."""
    point: dict[str, Any] = {}
    for key, values in grid.items():
        index = trial.suggest_categorical(key, list(range(len(values))))
        point[key] = values[index]  # by index: any YAML value (a list, say) can be a choice
    for item in ranges:
        if item.scale == "int":
            point[item.key] = trial.suggest_int(item.key, int(item.low), int(item.high))
        else:
            value = trial.suggest_float(item.key, item.low, item.high, log=item.scale == "log")
            point[item.key] = float(value)
    return point
