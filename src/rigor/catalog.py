"""The runs under an output root as a table: ``scripts/runs.py ls``.

One row per ``<root>/runs/<run_id>/manifest.json``; a column is a manifest field
(``run_id``, ``config_hash``, ``created_at``), the stages a run went through (``stages``),
a metric the manifest records (``acc/val_test``), a stage summary value
(``eval:digit/accuracy``, ``calibrate:threshold``), an eval metric with its CI from
``eval/metrics.json`` (``ci:digit/accuracy``) or a resolved config key (``training.lr``).
Filters compare a column with a value (``training.lr=1e-3``, ``acc/val_test>0.9``); rows
sort on any column. Only JSON is read, no torch and no config validation, so a thousand
runs list in well under a second.
"""

from __future__ import annotations

import csv
import io
import json
import operator
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rigor.errors import UsageError
from rigor.manifest.report import flatten

DEFAULT_COLUMNS = ("run_id", "stages", "created_at")
_FILTER = re.compile(r"^(?P<key>[^<>=!]+?)\s*(?P<op>>=|<=|!=|=|>|<)\s*(?P<value>.*)$")
_OPS: dict[str, Callable[[Any, Any], bool]] = {
    "=": operator.eq,
    "!=": operator.ne,
    ">": operator.gt,
    "<": operator.lt,
    ">=": operator.ge,
    "<=": operator.le,
}


@dataclass
class Run:
    """One run folder, read lazily: its manifest, and its config and eval report on demand."""

    folder: Path
    manifest: dict[str, Any]
    _config: dict[str, Any] | None = field(default=None, repr=False)
    _eval: dict[str, Any] | None = field(default=None, repr=False)

    def config(self) -> dict[str, Any]:
        """The resolved config, flattened to dotted keys."""
        if self._config is None:
            path = self.folder / "config_resolved.json"
            self._config = flatten(_read(path)) if path.is_file() else {}
        return self._config

    def eval_report(self) -> dict[str, Any]:
        """``eval/metrics.json``'s tasks (empty before eval)."""
        if self._eval is None:
            path = self.folder / "eval" / "metrics.json"
            self._eval = _read(path).get("tasks", {}) if path.is_file() else {}
        return self._eval

    def value(self, column: str) -> Any:
        """The value of ``column`` for this run (None when the run has none)."""
        manifest = self.manifest
        if column == "stages":
            return ",".join(stage["name"] for stage in manifest.get("stages", []))
        if column in manifest and not isinstance(manifest[column], dict | list):
            return manifest[column]
        if column.startswith("ci:"):
            return _cell(_path(self.eval_report(), column[3:].split("/")))
        stage, _, key = column.partition(":")
        if key:
            found = [s for s in manifest.get("stages", []) if s["name"] == stage]
            return found[-1].get("summary", {}).get(key) if found else None
        metrics = manifest.get("metrics") or {}
        if column in metrics:
            return metrics[column]
        return self.config().get(column)


def _read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise UsageError(f"{path}: cannot be read as JSON ({err})") from None
    return data if isinstance(data, dict) else {}


def _path(node: Any, parts: list[str]) -> Any:
    for part in parts:
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _cell(node: Any) -> Any:
    if isinstance(node, dict) and "estimate" in node:
        low, high = node.get("ci_lower"), node.get("ci_upper")
        if low is None or high is None:
            return f"{node['estimate']:.4g}"
        return f"{node['estimate']:.4g} [{low:.4g}, {high:.4g}]"
    return node


def find_runs(root: Path) -> list[Run]:
    """Every run under ``root`` (an output root holding ``runs/``, or ``runs/`` itself)."""
    folder = root / "runs" if (root / "runs").is_dir() else root
    if not folder.is_dir():
        raise UsageError(f"{root}: no runs/ folder (give run.output_root, e.g. results)")
    runs = []
    for manifest in sorted(folder.glob("*/manifest.json")):
        try:
            runs.append(Run(manifest.parent, json.loads(manifest.read_text())))
        except (OSError, ValueError):
            continue  # a run being written, or a broken one: manifest.py verify says which
    return runs


@dataclass(frozen=True)
class Filter:
    """``key op value``: the run's value of ``key`` compared with ``value`` (as a number
    when both are numbers, else as text)."""

    key: str
    op: str
    value: str

    @classmethod
    def parse(cls, text: str) -> Filter:
        """``training.lr=1e-3``, ``acc/val_test>0.9``, ``stages!=train``."""
        match = _FILTER.match(text.strip())
        if match is None or not match["value"]:
            raise UsageError(
                f"--where {text!r}: expected KEY OP VALUE with OP one of = != > < >= <= "
                "(e.g. training.lr=1e-3, acc/val_test>0.9)"
            )
        return cls(match["key"].strip(), match["op"], match["value"].strip())

    def keeps(self, run: Run) -> bool:
        """Whether ``run`` passes (a run without the key never does)."""
        have = run.value(self.key)
        if have is None:
            return False
        want: Any = self.value
        number = _number(have)
        if number is not None and _number(want) is not None:
            have, want = number, _number(want)
        elif self.op not in ("=", "!="):
            return False
        else:
            have = _text(have)
        return bool(_OPS[self.op](have, want))


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    try:
        return float(str(value))
    except ValueError:
        return None


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list | dict):
        return json.dumps(value)
    return str(value)


def table(
    runs: Iterable[Run],
    columns: list[str],
    filters: list[Filter],
    sort: str | None = None,
) -> list[list[Any]]:
    """The rows (values of ``columns``) of the runs every filter keeps, sorted on ``sort``
    (``-key``: descending; runs without the key last)."""
    kept = [run for run in runs if all(f.keeps(run) for f in filters)]
    if sort:
        key, descending = sort.removeprefix("-"), sort.startswith("-")
        present = [run for run in kept if run.value(key) is not None]
        absent = [run for run in kept if run.value(key) is None]

        def order(run: Run) -> tuple[int, Any]:
            value = run.value(key)
            number = _number(value)
            return (0, number) if number is not None else (1, _text(value))

        kept = sorted(present, key=order, reverse=descending) + absent
    return [[run.value(column) for column in columns] for run in kept]


def render(columns: list[str], rows: list[list[Any]], as_csv: bool = False) -> str:
    """CSV, or columns aligned for a terminal."""
    shown = [["" if v is None else _format(v) for v in row] for row in rows]
    if as_csv:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows(shown)
        return buffer.getvalue()
    widths = [max([len(c), *(len(r[i]) for r in shown)]) for i, c in enumerate(columns)]
    lines = [columns, *shown]
    return "".join(
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        + "\n"
        for line in lines
    )


def _format(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return _text(value)
