"""The predictions a finished training run writes: the best checkpoint on val_select,
val_calib and val_test, with the metrics of each split and the samples left out."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from rigor.data.dataset import skipped_record
from rigor.runs.checkpoint import load_checkpoint
from rigor.runs.predict import predict, prediction_arrays, save_npz, spot_arrays
from rigor.training.loop import split_metrics
from rigor.training.prepare import Prepared, make_loader
from rigor.training.session import Session

EVAL_SPLITS = ("val_select", "val_calib", "val_test")


def write_predictions(run_dir: Path, prepared: Prepared, session: Session) -> dict[str, Any]:
    """Predictions of the best checkpoint on val_select, val_calib and val_test. When the
    last epoch was the best, the weights in memory are best.pt's, and the predictions run
    while that checkpoint is still being written; otherwise best.pt is read back (an earlier
    epoch's, on disk since the last checkpoint was queued: ``BackgroundWriter.checkpoint``
    waits for the one before it)."""
    model = session.eval_model()
    if not session.holds_best():
        path = run_dir / "checkpoints" / "best.pt"
        best = load_checkpoint(path, prepared.resolved.hash, force=True)
        model.load_state_dict(best["ema"] if session.ema is not None else best["model"])
    metrics: dict[str, float] = {}
    paths = []
    skipped = dict(session.skipped)
    for split in EVAL_SPLITS:
        loader = make_loader(prepared, prepared.splits[split], train=False)
        preds = predict(
            model, loader, prepared.device, prepared.eval_pipeline, session.precision.autocast
        )
        skipped |= preds["skipped"]
        metrics.update(split_metrics(preds, prepared.dataset.tasks, split))
        arrays = {
            "ids": preds["ids"],
            "groups": preds["groups"],
            "tasks": np.asarray(sorted(preds["targets"])),
        }
        arrays |= spot_arrays(prepared.dataset, preds["ids"]) | prediction_arrays(preds)
        rel = f"predictions/{split}.npz"
        save_npz(run_dir / rel, arrays)
        paths.append(rel)
    skipped |= getattr(prepared.dataset.reader, "bad", {})
    return {
        "metrics": metrics,
        "predictions": paths,
        "skipped": skipped_record(prepared.dataset, skipped),
    }
