"""Stage B of the cascade: the gated task's auxiliary head, or a second run's model named by
its manifest (``calibration.stage_b``).

A second run must be finished, intact (its prediction files match its manifest) and share
this run's splits: the same val_calib and val_test ids in the same order, and the task with
the same classes. Anything else is exit 3 naming the difference.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from rigor.errors import ManifestError

AUX = {"source": "aux"}
SPLITS = ("val_calib", "val_test")


def _predictions(run_dir: Path, split: str) -> dict[str, np.ndarray]:
    with np.load(run_dir / "predictions" / f"{split}.npz", allow_pickle=False) as data:
        return {key: data[key] for key in data.files}


def resolve_stage_b(
    manifest_path: str | None, run_dir: Path, task: str, spec: dict[str, Any]
) -> dict[str, Any]:
    """The ``stage_b`` record of platt.json: ``{"source": "aux"}``, or the second run's id,
    manifest path and the sha256 of its val_calib and val_test predictions, after checking
    that it shares this run's splits and task.

    Raises:
        ManifestError: the manifest is invalid or its predictions changed, or the splits,
            task or classes differ (named).
    """
    from rigor.manifest import load_manifest, verify_manifest

    if manifest_path is None:
        return dict(AUX)
    path = Path(manifest_path).expanduser().resolve()
    other = load_manifest(path)
    rels = [f"predictions/{split}.npz" for split in SPLITS]
    missing = [rel for rel in rels if rel not in other["sha256"]]
    if missing:
        raise ManifestError(f"calibration.stage_b {path}: the run has no {', '.join(missing)}")
    verify_manifest(other, path.parent, only=rels)
    theirs = other["dataset"]["tasks"].get(task)
    if theirs is None or theirs.get("num_classes") != spec.get("num_classes"):
        raise ManifestError(
            f"calibration.stage_b {path}: task {task!r} with {spec.get('num_classes')} classes "
            f"is not a task of that run (its tasks: {sorted(other['dataset']['tasks'])})"
        )
    for split in SPLITS:
        mine, yours = _predictions(run_dir, split)["ids"], _predictions(path.parent, split)["ids"]
        if mine.shape != yours.shape or not np.array_equal(mine, yours):
            raise ManifestError(
                f"calibration.stage_b {path}: its {split} samples differ from this run's "
                f"({len(yours)} against {len(mine)} ids); Stage B must share the splits"
            )
    return {
        "source": "run",
        "run_id": other["run_id"],
        "manifest": str(path),
        "sha256": {rel: other["sha256"][rel] for rel in rels},
    }
