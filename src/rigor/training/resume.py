"""Which checkpoint a training run resumes from, and whether it may."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from rigor.errors import UsageError
from rigor.manifest.rundir import RunLock
from rigor.training.prepare import Prepared, splits_json


def find_resume(resume: str | None, output_root: Path, name: str, config_hash: str) -> Path | None:
    """The checkpoint to resume from: an explicit path, or ``auto`` (the newest unfinished run
    that no live process is writing: a run still training is skipped, never joined)."""
    if resume is None:
        return None
    if resume != "auto":
        path = Path(resume)
        checkpoint = path / "checkpoints" / "last.pt" if path.is_dir() else path
        if not checkpoint.is_file():
            raise UsageError(f"--resume: no checkpoint at {checkpoint}")
        if (checkpoint.parent.parent / "manifest.json").exists():
            raise UsageError(f"--resume: run {checkpoint.parent.parent.name} already completed")
        return checkpoint
    runs = output_root / "runs"
    marker = f"-{name}-{config_hash[:8]}"
    candidates = sorted(
        (p for p in runs.glob(f"*{marker}*") if (p / "checkpoints" / "last.pt").is_file()),
        key=lambda p: p.name,
    )
    unfinished = [p for p in candidates if not (p / "manifest.json").exists()]
    busy = [p for p in unfinished if RunLock.is_held(p)]
    for run in busy:
        print(f"--resume auto: {run.name} is still being written; skipping it", file=sys.stderr)
    unfinished = [p for p in unfinished if p not in busy]
    if not unfinished:
        print("--resume auto: no unfinished run of this config; starting fresh", file=sys.stderr)
        return None
    return unfinished[-1] / "checkpoints" / "last.pt"


def check_same_splits(run_dir: Path, prepared: Prepared, force: bool) -> None:
    previous = json.loads((run_dir / "splits.json").read_text())["sha256"]
    if previous != splits_json(prepared)["sha256"] and not force:
        raise UsageError(
            f"--resume: the data splits differ from those of {run_dir.name}; pass --force"
        )


def remove_temporaries(run_dir: Path) -> list[Path]:
    """Delete what killed atomic writes left in a run folder being resumed (``.<name>.*.tmp``;
    the lock is held, so no live writer owns them); returns what was removed."""
    stale = sorted(p for p in run_dir.rglob(".*.tmp") if p.is_file())
    for path in stale:
        path.unlink(missing_ok=True)
    if stale:
        print(f"removed {len(stale)} stale temporary file(s) in {run_dir.name}", file=sys.stderr)
    return stale
