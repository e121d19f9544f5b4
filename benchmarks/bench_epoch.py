"""Benchmark: rigor's epochs against hand-written epochs, alternating in one process.

Process-level pairs (``bench_overhead.py``) cannot resolve a few percent on a noisy machine:
two runs of the same script differ by more than that. Here one process builds a rigor
training session (``rigor.training.prepare`` and ``Session``, as ``train()`` does) and the
twin's tensors (``twin_train.py``'s code: the same rows, normalised once), then alternates
blocks of rigor epochs (``Session._train_epoch`` and ``_end_epoch``: steps, validation on
val_select and its metrics, log rows, and checkpoints handed to the run writer, which writes
each epoch's checkpoint while the next one trains) with blocks of twin epochs (steps and
validation accuracy) on the twin's copy of the model. The run writer finishes a block's last
files outside both timings; its CPU time per epoch (Linux) is reported beside them.
``--no-checkpoints`` drops rigor's checkpoints (log rows stay) and ``--no-writes`` both,
which shows their shares. Both sides
share one process, so what a process's own state costs its loop (the page faults of its
heap's layout, see ``rigor.allocator``) shows only in ``bench_overhead.py``.

    python benchmarks/bench_epoch.py                       # digits_baseline, 15 pairs
    python benchmarks/bench_epoch.py --pairs 30 --profile  # and where the time differs
    python benchmarks/bench_epoch.py --no-checkpoints      # the checkpoints' share
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import math
import pstats
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import twin_train  # noqa: E402  (the twin's own data and schedule code)

from rigor.tracking import NullTracker  # noqa: E402


class TwinEpoch:
    """The twin's epoch (``twin_train.main``'s loop body) on its own copy of the model."""

    def __init__(self, run_dir: Path, weights: dict[str, torch.Tensor]) -> None:
        cfg = json.loads((run_dir / "config_resolved.json").read_text())
        splits = json.loads((run_dir / "splits.json").read_text())["splits"]
        self.training, self.seed = cfg["training"], cfg["run"]["seed"]
        self.net = net = twin_train.build(cfg["model"])
        net.load_state_dict(weights)  # the same architecture, parameter for parameter
        images, labels = twin_train.load_digits()
        rows = {name: [int(i.rsplit("-", 1)[1]) for i in ids] for name, ids in splits.items()}
        size = cfg["data"]["transforms"]["image_size"]
        train_x = twin_train.images_of(rows["train"], images, size)
        mean, std = twin_train.channel_stats(train_x)
        self.train_x = (train_x - mean) / std
        self.train_y = torch.from_numpy(labels[rows["train"]])
        self.val_x = (twin_train.images_of(rows["val_select"], images, size) - mean) / std
        self.val_y = torch.from_numpy(labels[rows["val_select"]])
        self.optimizer = twin_train.optimizer_for(net, self.training, cfg["optimizer"])  # type: ignore[arg-type]
        per_epoch = math.ceil(len(self.train_y) / self.training["batch_size"])
        self.schedule = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer,
            twin_train.warmup_cosine(cfg["scheduler"], self.training["epochs"], per_epoch),
        )
        self.epoch = 0

    def __call__(self) -> float:
        net, batch = self.net, self.training["batch_size"]
        order = torch.randperm(
            len(self.train_y),
            generator=torch.Generator().manual_seed(self.seed * 100_003 + self.epoch),
        )
        net.train()
        for start in range(0, len(order), batch):
            index = order[start : start + batch]
            self.optimizer.zero_grad(set_to_none=True)
            loss = F.cross_entropy(net(self.train_x[index]), self.train_y[index])
            loss.backward()
            nn.utils.clip_grad_norm_(net.parameters(), self.training["grad_clip"])
            self.optimizer.step()
            self.schedule.step()
        net.eval()
        with torch.no_grad():
            step = self.training["eval_batch_size"]
            logits = torch.cat(
                [net(self.val_x[i : i + step]) for i in range(0, len(self.val_y), step)]
            )
        self.epoch += 1
        return float((logits.argmax(dim=1) == self.val_y).float().mean())


def _session(config: str, sets: list[str], root: Path) -> Any:
    """A rigor training session on a fresh run folder, as ``rigor.training.run.train``
    builds it (without the resume, lock and distributed parts)."""
    from rigor.cli import settle
    from rigor.config import load_config
    from rigor.manifest.rundir import create_run_dir
    from rigor.training.prepare import prepare, write_run_inputs
    from rigor.training.session import Session

    resolved = load_config(config, sets=[f"run.output_root={root}", *sets])
    prepared = prepare(resolved, "warn", False)
    _, run_dir = create_run_dir(root, resolved.config.run.name, resolved.hash)
    write_run_inputs(run_dir, prepared)
    session = Session(run_dir, prepared, None)
    settle()
    return session


def measure(
    config: str, sets: list[str], pairs: int, block: int, profile: bool, writes: str = "all"
) -> dict[str, Any]:
    """``pairs`` alternating blocks of ``block`` rigor epochs and ``block`` twin epochs (after
    one warm-up epoch each). Within a rigor block each epoch's files are written while the
    next one trains, as in a run; the last epoch's are finished after the block's timing (in
    a run, the last checkpoint overlaps the predictions). ``writes``: ``all`` as in a run,
    ``logs`` (log rows but no checkpoints) or ``none``."""
    with tempfile.TemporaryDirectory() as scratch:
        session = _session(config, sets, Path(scratch))
        session.cfg.training.epochs = (pairs + 1) * block  # not the loop's bound here
        if writes == "none":
            session.tracker = NullTracker()
            session.main = False  # rank 0's checkpoints, as on other ranks: none
        elif writes == "logs":
            session._publish = lambda *args: None  # the epoch's state is built, not written
        twin = TwinEpoch(session.run_dir, session.prepared.model.state_dict())
        profilers = [cProfile.Profile(), cProfile.Profile()] if profile else [None, None]
        writer_cpu: list[float] = []
        cpu_before = [0.0]

        def rigor_epochs() -> None:
            cpu_before[0] = _thread_cpu(session.writer)
            for _ in range(block):
                session._train_epoch()
                session._end_epoch()

        def twin_epochs() -> None:
            for _ in range(block):
                twin()

        def written() -> None:
            session.writer.wait()
            writer_cpu.append((_thread_cpu(session.writer) - cpu_before[0]) / block)

        rigor_epochs(), written(), twin_epochs()  # warm-up
        rows = []
        for index in range(pairs):
            if index % 2 == 0:
                mine = _timed(rigor_epochs, profilers[0])
                written()
                theirs = _timed(twin_epochs, profilers[1])
            else:
                theirs = _timed(twin_epochs, profilers[1])
                mine = _timed(rigor_epochs, profilers[0])
                written()
            rows.append((mine / block, theirs / block))
        session.flush()
        report = {
            "config": config,
            "sets": sets,
            "pairs": pairs,
            "epochs_per_block": block,
            "writes": writes,
            "rigor_epoch_s": statistics.median(r[0] for r in rows),
            "twin_epoch_s": statistics.median(r[1] for r in rows),
            "ratio": _spread([r[0] / r[1] for r in rows]),
            "writer_cpu_s_per_epoch": statistics.median(writer_cpu),
        }
        if profilers[0] is not None and profilers[1] is not None:
            print(_difference(profilers[0], profilers[1], pairs * block), file=sys.stderr)
        return report


def _difference(mine: cProfile.Profile, theirs: cProfile.Profile, epochs: int) -> str:
    """The functions whose own time (ms per epoch) differs most between the two profiles."""

    def own(profiler: cProfile.Profile) -> dict[str, tuple[float, int]]:
        stats = pstats.Stats(profiler, stream=io.StringIO()).stats  # type: ignore[attr-defined]
        return {
            f"{Path(file).name}:{line}({name})": (total, calls)
            for (file, line, name), (_, calls, total, _, _) in stats.items()
        }

    a, b = own(mine), own(theirs)
    rows = []
    for key in a.keys() | b.keys():
        (ta, ca), (tb, cb) = a.get(key, (0.0, 0)), b.get(key, (0.0, 0))
        rows.append(((ta - tb) * 1000 / epochs, ca // epochs, cb // epochs, key))
    rows.sort(key=lambda row: -abs(row[0]))
    lines = [f"{'ms/epoch':>9} {'calls':>6} {'twin':>6}  function (rigor - twin, own time)"]
    lines += [f"{d:9.2f} {ca:6d} {cb:6d}  {key}" for d, ca, cb, key in rows[:40]]
    lines.append(f"{sum(r[0] for r in rows):9.2f} in all")
    return "\n".join(lines)


def _thread_cpu(writer: Any) -> float:
    """CPU seconds of the run writer's thread so far (Linux: /proc schedstat; 0 elsewhere)."""
    thread = getattr(writer, "_thread", None)  # private: a benchmark may look inside
    native = getattr(thread, "native_id", None)
    try:
        return int(Path(f"/proc/self/task/{native}/schedstat").read_text().split()[0]) / 1e9
    except (OSError, IndexError, ValueError):
        return 0.0


def _timed(function: Any, profiler: cProfile.Profile | None = None) -> float:
    if profiler is not None:
        profiler.enable()
    started = time.perf_counter()
    function()
    took = time.perf_counter() - started
    if profiler is not None:
        profiler.disable()
    return took


def _spread(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    quarter = max(len(ordered) // 4, 0)
    return {
        "median": statistics.median(ordered),
        "q1": ordered[quarter],
        "q3": ordered[-1 - quarter],
        "min": ordered[0],
        "max": ordered[-1],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default="configs/experiment/digits_baseline.yaml")
    parser.add_argument("--set", dest="sets", action="append", default=[])
    parser.add_argument("--pairs", type=int, default=15)
    parser.add_argument("--block", type=int, default=3, help="epochs per side and pair")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument(
        "--no-checkpoints", dest="writes", action="store_const", const="logs", default="all"
    )
    parser.add_argument("--no-writes", dest="writes", action="store_const", const="none")
    parser.add_argument("--report", type=Path, default=ROOT / "results/bench/epoch.json")
    args = parser.parse_args()
    report = measure(args.config, args.sets, args.pairs, args.block, args.profile, args.writes)
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
