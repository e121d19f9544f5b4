"""The one logging helper every stage uses: metric keys, JSONL/CSV/TensorBoard writers."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any, TypeVar

from rigor.config.models import Config, LoggingConfig
from rigor.io import atomic_write_bytes, atomic_write_text
from rigor.tracking.mirror import Mirror, mirror_stage
from rigor.tracking.tensorboard import Events, last_step, log_stage

T = TypeVar("T")


def metric_key(metric: str, split: str, task: str | None = None) -> str:
    """``metric/split`` or ``metric/task/split``, e.g. ``loss/train``, ``acc/digit/val_select``."""
    return f"{metric}/{task}/{split}" if task else f"{metric}/{split}"


def epoch_line(
    epoch: int, epochs: int, values: dict[str, float], monitor: str, seconds: float
) -> str:
    """The line an epoch prints (the same on a terminal and in a piped Slurm log): the train
    loss, the monitored metric, the epoch's time and the time the remaining epochs take at
    this pace, e.g. ``epoch 3/12: train loss 0.4123, acc/val_select 0.9333, 1.80 s, ETA 16 s``."""
    parts = [f"epoch {epoch + 1}/{epochs}:"]
    if "loss/train" in values:
        parts.append(f"train loss {values['loss/train']:.4f},")
    parts.append(f"{monitor} {values[monitor]:.4f}, {seconds:.2f} s,")
    left = max(epochs - epoch - 1, 0) * seconds
    minutes, secs = divmod(round(left), 60)
    parts.append(f"ETA {minutes} min {secs:02d} s" if minutes else f"ETA {secs} s")
    return " ".join(parts)


def monitor_to_key(monitor: str) -> str:
    """Turn a monitor ``val_select/acc`` into its metric key ``acc/val_select``."""
    split, metric = monitor.split("/", 1)
    return metric_key(metric, split)


def progress_enabled(mode: str) -> bool:
    """Bars on an interactive terminal only (never in CI or when output is piped)."""
    if mode != "auto":
        return mode == "always"
    return sys.stderr.isatty() and not os.environ.get("CI")


class Progress:
    """A line on stderr every ``every`` seconds of a long loop (the same on a terminal and
    in a piped Slurm log): ``eval: 120/500 tasks, 4/s, 31 s, about 98 s left``."""

    def __init__(self, total: int, stage: str, unit: str, every: float = 5.0) -> None:
        self.total, self.stage, self.unit, self.every = total, stage, unit, every
        self.done = 0
        self.started = self.last = time.perf_counter()

    def reached(self, done: int) -> None:
        """``done`` items are finished; print when ``every`` seconds have passed."""
        self.done = done
        now = time.perf_counter()
        if now - self.last >= self.every and 0 < done < self.total:
            took = now - self.started
            rate = done / max(took, 1e-9)
            left = (self.total - done) / rate
            print(
                f"{self.stage}: {done}/{self.total} {self.unit}, {rate:.0f}/s, {took:.0f} s, "
                f"about {left:.0f} s left",
                file=sys.stderr,
            )
            self.last = now

    def tick(self) -> None:
        """One more item starts (the ones before it are finished)."""
        self.reached(self.done)
        self.done += 1


def report_stage(
    config: Config,
    manifest_path: Path,
    manifest: dict[str, Any],
    stage: str,
    values: dict[str, Any],
    outputs: list[str],
) -> dict[str, Any] | None:
    """A later stage's numbers and figures beside the training's: in TensorBoard (when on)
    and on the run's MLflow mirror (when set); returns what the stage's summary keeps of the
    mirror (None without one)."""
    run_dir = manifest_path.parent
    if config.logging.tensorboard:
        log_stage(run_dir, stage, last_step(manifest), values, outputs)
    return mirror_stage(config, manifest, manifest_path, stage, values, outputs)


class Tracker:
    """Writes ``logs/steps.jsonl``, ``logs/epochs.csv`` and TensorBoard events under a run,
    and each epoch's row to the run's MLflow ``mirror`` (when one is open)."""

    def __init__(
        self,
        run_dir: Path,
        cfg: LoggingConfig,
        start_step: int = 0,
        folder: str = "logs",
        mirror: Mirror | None = None,
    ) -> None:
        self.cfg, self.mirror = cfg, mirror or Mirror.off()
        self.logs = run_dir / folder
        self.logs.mkdir(parents=True, exist_ok=True)
        self.steps_path = self.logs / "steps.jsonl"
        self.epochs_path = self.logs / "epochs.csv"
        for path in (self.steps_path, self.epochs_path):
            _drop_cut_row(path)  # rows are appended after it: never to a cut-off one
        self.epoch_rows: list[dict[str, Any]] = read_epoch_rows(self.epochs_path)  # the file's rows
        # The file's columns and its last epoch, kept so that an epoch's row does not walk
        # every earlier one (quadratic over a long run).
        self._columns = dict.fromkeys(key for line in self.epoch_rows for key in line)
        self._last_epoch = max((int(line["epoch"]) for line in self.epoch_rows), default=-1)
        # Append handles, opened once: a row is one write() (opening, seeking and closing
        # the file for each row took six system calls).
        self._appending: dict[Path, IO[str]] = {}
        # A resumed run logs from start_step + 1 on: the killed run's rows up to start_step
        # (the checkpoint's step, with its epoch's validation row) stay, later ones go.
        restart = start_step + 1 if start_step else 0
        self.events = Events(self.logs / "tb", purge_step=restart) if cfg.tensorboard else None

    def should_log_step(self, step: int) -> bool:
        """True every ``log_every_n_steps`` optimizer steps."""
        return step % self.cfg.log_every_n_steps == 0

    def log_step(self, step: int, values: dict[str, float]) -> None:
        """Append one per-step row (JSONL) and write the scalars to TensorBoard."""
        row = {"step": step, **{key: _clean(value) for key, value in values.items()}}
        self._append(self.steps_path, json.dumps(row) + "\n")
        self._scalars(step, values)

    def log_epoch(self, epoch: int, step: int, values: dict[str, float]) -> None:
        """Record one per-epoch row in ``epochs.csv`` and TensorBoard, then flush TensorBoard
        (every row logged so far is on disk). The row is appended when it continues the file
        with the same columns; otherwise (a resumed run replaying an epoch, a new column) the
        file is rewritten atomically."""
        row = {"epoch": epoch, "step": step, **values}
        buffer = io.StringIO()
        if self.epoch_rows and epoch > self._last_epoch and self._columns.keys() >= row.keys():
            csv.DictWriter(buffer, fieldnames=list(self._columns)).writerow(row)
            self.epoch_rows.append(row)
            self._append(self.epochs_path, buffer.getvalue())
        else:
            kept = [line for line in self.epoch_rows if int(line["epoch"]) < epoch]
            self.epoch_rows = [*kept, row]
            self._columns = dict.fromkeys(key for line in self.epoch_rows for key in line)
            writer = csv.DictWriter(buffer, fieldnames=list(self._columns))
            writer.writeheader()
            writer.writerows(self.epoch_rows)
            self._replace(self.epochs_path, buffer.getvalue())
        self._last_epoch = epoch
        self._scalars(step, values)
        self.mirror.metrics(step, {"epoch": epoch, **values})
        self.flush()

    def truncate_steps(self, last_step: int) -> None:
        """Drop step rows after ``last_step`` (a resumed run replays them)."""
        if not self.steps_path.exists():
            return
        kept = [
            line
            for line in self.steps_path.read_text().splitlines()
            if line and json.loads(line)["step"] <= last_step
        ]
        self._replace(self.steps_path, "".join(line + "\n" for line in kept))

    def _append(self, path: Path, text: str) -> None:
        """Append ``text`` to ``path`` and hand it to the kernel (a kill loses no row)."""
        handle = self._appending.get(path)
        if handle is None:
            # newline="": csv writes its own line ends, JSON lines hold none to translate.
            handle = self._appending[path] = open(path, "a", newline="")  # noqa: SIM115
        handle.write(text)
        handle.flush()

    def _replace(self, path: Path, text: str) -> None:
        """Replace ``path`` atomically; a later row is appended to the new file."""
        handle = self._appending.pop(path, None)
        if handle is not None:
            handle.close()
        atomic_write_text(path, text)

    def progress(self, items: Iterable[T], total: int, desc: str) -> Iterator[T]:
        """Wrap ``items`` in a tqdm bar when bars are enabled."""
        if not progress_enabled(self.cfg.progress):
            yield from items
            return
        from tqdm import tqdm

        yield from tqdm(items, total=total, desc=desc, leave=False, dynamic_ncols=True)

    def _scalars(self, step: int, values: dict[str, float]) -> None:
        if self.events is not None:
            self.events.scalars(step, values)

    def flush(self) -> None:
        """Every TensorBoard event logged so far, on disk."""
        if self.events is not None:
            self.events.flush()

    def close(self) -> None:
        """Close the log files and TensorBoard's."""
        for handle in self._appending.values():
            handle.close()
        self._appending.clear()
        if self.events is not None:
            self.events.close()


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _drop_cut_row(path: Path) -> None:
    """Rewrite ``path`` without a last row that a crash cut off (no line end after it)."""
    if not path.exists():
        return
    with open(path, "rb") as handle:
        handle.seek(0, io.SEEK_END)
        if handle.tell() == 0:
            return
        handle.seek(-1, io.SEEK_END)
        if handle.read(1) == b"\n":
            return
    data = path.read_bytes()
    atomic_write_bytes(path, data[: data.rfind(b"\n") + 1])


def read_epoch_rows(path: Path) -> list[dict[str, Any]]:
    """The whole rows of an ``epochs.csv``: a row still being appended (or cut off by a
    crash) has no line end yet and is left out, never read as a cut-off number."""
    if not path.exists():
        return []
    with open(path, newline="") as handle:
        text = handle.read()
    return list(csv.DictReader(io.StringIO(text[: text.rfind("\n") + 1], newline="")))


class NullTracker:
    """A tracker that writes nothing: what ranks other than 0 use under torchrun."""

    def should_log_step(self, step: int) -> bool:
        """Never."""
        return False

    def log_step(self, step: int, values: dict[str, float]) -> None:
        """Nothing."""

    def log_epoch(self, epoch: int, step: int, values: dict[str, float]) -> None:
        """Nothing."""

    def truncate_steps(self, last_step: int) -> None:
        """Nothing."""

    def flush(self) -> None:
        """Nothing."""

    def progress(self, items: Iterable[T], total: int, desc: str) -> Iterator[T]:
        """The items, without a bar."""
        return iter(items)

    def close(self) -> None:
        """Nothing."""
