"""Grid expansion: ``--grid key=v1,v2`` items and ``grid:`` files into override dicts."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import yaml

from rigor.config.compose import KEY_PATTERN, parse_value
from rigor.errors import ConfigError


def split_values(text: str) -> list[str]:
    """Split on commas outside brackets: ``1,[32,64],3`` -> ``['1', '[32,64]', '3']``."""
    parts, depth, current = [], 0, ""
    for char in text:
        if char in "[{":
            depth += 1
        elif char in "]}":
            depth -= 1
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    return [part.strip() for part in parts]


def parse_grid_item(item: str) -> tuple[str, list[Any]]:
    """One ``--grid section.key=v1,v2,...``: the dotted key and its values (parsed as YAML)."""
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not KEY_PATTERN.match(key) or not text.strip():
        raise ConfigError(
            f"malformed --grid {item!r}: expected section.key=value1,value2,... "
            "with a dotted lower-case key"
        )
    try:
        values = [parse_value(part) for part in split_values(text)]
    except yaml.YAMLError:
        raise ConfigError(f"malformed --grid {item!r}: a value is not valid YAML") from None
    return key, values


def read_grid_file(path: Path) -> dict[str, list[Any]]:
    """A YAML file with a ``grid:`` mapping of dotted keys to lists of values."""
    if not path.is_file():
        raise ConfigError(f"--grid-file: file not found: {path}")
    try:
        body = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"--grid-file {path}: not valid YAML ({err})") from None
    grid = body.get("grid") if isinstance(body, dict) else None
    if not isinstance(grid, dict) or not grid:
        raise ConfigError(f"--grid-file {path}: expected a non-empty 'grid:' mapping")
    out: dict[str, list[Any]] = {}
    for key, values in grid.items():
        if not isinstance(key, str) or not KEY_PATTERN.match(key):
            raise ConfigError(f"--grid-file {path}: grid key {key!r} is not a dotted key")
        if not isinstance(values, list) or not values:
            raise ConfigError(f"--grid-file {path}: grid.{key} must be a non-empty list")
        out[key] = values
    return out


def build_grid(
    items: list[str], grid_file: Path | None, allow_empty: bool = False
) -> dict[str, list[Any]]:
    """The grid from a file (first) and ``--grid`` items (later keys replace earlier ones);
    empty only with ``allow_empty`` (a space of ranges alone)."""
    grid = read_grid_file(grid_file) if grid_file is not None else {}
    for item in items:
        key, values = parse_grid_item(item)
        grid[key] = values
    if not grid and not allow_empty:
        raise ConfigError("sweep: no grid given (use --grid section.key=v1,v2 or --grid-file)")
    return grid


def expand(grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """Every combination, the last key varying fastest; duplicates are an error."""
    keys = list(grid)
    points = [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*grid.values())]
    seen = set()
    for point in points:
        marker = yaml.safe_dump(point, sort_keys=True)
        if marker in seen:
            raise ConfigError(f"sweep: the grid repeats the point {point}")
        seen.add(marker)
    return points
