"""TensorBoard records: a training run's scalars (:class:`Events`, through torch's
``SummaryWriter``), its hyperparameters with final metrics (:func:`write_hparams`), and a
later stage's scalars and figures (:class:`StageEvents`, through tensorboard's own event
file writer, without torch)."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any


class Events:
    """TensorBoard scalars through torch's ``SummaryWriter``: each finite value at its step.
    ``purge_step`` (a resumed run's first step) marks a restart there, so TensorBoard drops
    the earlier run's later events."""

    def __init__(self, logdir: Path, purge_step: int = 0) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(logdir), purge_step=purge_step or None)

    def scalars(self, step: int, values: dict[str, Any]) -> None:
        """The finite numbers among ``values`` at ``step``."""
        wall_time = time.time()
        for key, value in values.items():
            if isinstance(value, int | float) and math.isfinite(value):
                self.writer.add_scalar(key, value, step, walltime=wall_time)

    def flush(self) -> None:
        """Every event added so far, on disk."""
        self.writer.flush()

    def close(self) -> None:
        """Flush and close the file (again: nothing)."""
        self.writer.close()


def _finite_numbers(values: dict[str, Any]) -> dict[str, float]:
    return {
        key: float(value)
        for key, value in values.items()
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    }


def write_hparams(logdir: Path, config: dict[str, Any], metrics: dict[str, Any]) -> None:
    """The run's resolved config (flattened: ``training.lr``) as hyperparameters with its
    final metrics, in ``logdir/hparams``: TensorBoard's HPARAMS view, opened on a folder of
    runs, then compares the runs by them."""
    from torch.utils.tensorboard import SummaryWriter

    from rigor.manifest.report import flatten

    params = {
        key: value if isinstance(value, int | float | str | bool) else json.dumps(value)
        for key, value in flatten(config).items()
    }
    with SummaryWriter(str(logdir / "hparams")) as writer:  # its records, in this folder
        writer.add_hparams(params, _finite_numbers(metrics), run_name=".")


class StageEvents:
    """A later stage's TensorBoard records (eval, calibrate) in ``logs/tb/<stage>/`` of the
    run, through tensorboard's own event file writer (no torch: those stages never import
    it): scalars, and figures as images."""

    def __init__(self, logdir: Path) -> None:
        from tensorboard.compat.proto import event_pb2, summary_pb2
        from tensorboard.summary.writer.event_file_writer import EventFileWriter

        self._event, self._summary = event_pb2.Event, summary_pb2.Summary
        self.writer = EventFileWriter(str(logdir))

    def scalars(self, step: int, values: dict[str, Any]) -> None:
        """The finite numbers among ``values``, as one event at ``step``."""
        kept = [
            self._summary.Value(tag=key, simple_value=value)
            for key, value in _finite_numbers(values).items()
        ]
        if kept:
            summary = self._summary(value=kept)
            self.writer.add_event(self._event(wall_time=time.time(), step=step, summary=summary))

    def image(self, tag: str, png: Path, step: int) -> None:
        """A PNG file as an image at ``step`` (its size read from the PNG header)."""
        data = png.read_bytes()
        width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
        image = self._summary.Image(
            height=height, width=width, colorspace=4, encoded_image_string=data
        )
        summary = self._summary(value=[self._summary.Value(tag=tag, image=image)])
        self.writer.add_event(self._event(wall_time=time.time(), step=step, summary=summary))

    def close(self) -> None:
        """Flush and close the event file."""
        self.writer.close()


def estimates(node: Any, prefix: str = "") -> dict[str, float]:
    """Every ``estimate`` of a report (``{"accuracy": {"estimate": ...}}``) by its path
    (``accuracy``), and every other number by its own."""
    out: dict[str, float] = {}
    if isinstance(node, dict) and "estimate" in node:
        value = node["estimate"]
        return {prefix: value} if isinstance(value, int | float) else {}
    if isinstance(node, dict):
        for key, value in node.items():
            out |= estimates(value, f"{prefix}/{key}" if prefix else str(key))
    elif isinstance(node, int | float) and not isinstance(node, bool):
        out[prefix] = node
    return out


def log_stage(
    run_dir: Path, stage: str, step: int, values: dict[str, Any], figures: list[str]
) -> None:
    """A later stage's numbers (as ``<stage>/<path>`` scalars at ``step``, the run's last
    training step) and its PNG figures (paths in the run folder) in ``logs/tb/<stage>/``,
    beside the training's own events: TensorBoard shows them with the run."""
    events = StageEvents(run_dir / "logs" / "tb" / stage)
    try:
        events.scalars(step, {f"{stage}/{key}": value for key, value in values.items()})
        for rel in figures:
            if rel.endswith(".png") and (run_dir / rel).is_file():
                events.image(rel, run_dir / rel, step)
    finally:
        events.close()


def last_step(manifest: dict[str, Any]) -> int:
    """The training's last optimizer step, as its manifest records it (0 when absent)."""
    stages = manifest.get("stages") or [{}]
    return int(stages[0].get("summary", {}).get("steps", 0) or 0)
