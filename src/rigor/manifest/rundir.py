"""Run folders: one output root, one run id made once, every path derived from it."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path


def utc_now() -> datetime:
    """The current time in UTC."""
    return datetime.now(UTC)


def iso(moment: datetime) -> str:
    """RFC 3339 timestamp with a Z suffix."""
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def run_id_base(name: str, config_hash: str, moment: datetime) -> str:
    """``<UTC timestamp>-<experiment name>-<8 hex of the config hash>``."""
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", name)
    return f"{moment.strftime('%Y%m%dT%H%M%SZ')}-{safe}-{config_hash[:8]}"


def create_run_dir(
    output_root: Path, name: str, config_hash: str, folder: str = "runs"
) -> tuple[str, Path]:
    """Create ``<output_root>/<folder>/<run_id>/`` exclusively; a taken id gets a suffix.

    ``mkdir`` without ``exist_ok`` is atomic, so two runs started in the same second
    (even in two processes) never share a folder. Sweeps use ``folder="sweeps"``.
    """
    runs = output_root / folder
    runs.mkdir(parents=True, exist_ok=True)
    base = run_id_base(name, config_hash, utc_now())
    for attempt in range(10_000):
        run_id = base if attempt == 0 else f"{base}-{attempt}"
        try:
            (runs / run_id).mkdir()
        except FileExistsError:
            continue
        return run_id, runs / run_id
    raise RuntimeError(f"could not create a fresh run folder under {runs}")
