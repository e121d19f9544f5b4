"""Splits, transforms statistics, the LR schedule, and atomic writes."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from conftest import ROOT, SMOKE

from rigor.config import load_config
from rigor.config.models import SchedulerConfig, SplitFractions
from rigor.data.splits import SPLITS, make_splits
from rigor.errors import ConfigError
from rigor.io import atomic_write_text
from rigor.training.optim import lr_factor

FRACTIONS = SplitFractions(train=0.6, val_select=0.1, val_calib=0.15, val_test=0.15)


def test_splits_are_disjoint_complete_and_sized() -> None:
    groups = [f"g{i}" for i in range(1000)]
    splits = make_splits(groups, FRACTIONS, seed=0)
    rows = [row for name in SPLITS for row in splits[name]]
    assert sorted(rows) == list(range(1000))
    assert [len(splits[name]) for name in SPLITS] == [600, 100, 150, 150]


def test_splits_keep_groups_together_and_ignore_row_order() -> None:
    groups = [f"patient{i % 37}" for i in range(500)]
    splits = make_splits(groups, FRACTIONS, seed=3)
    seen = {}
    for name in SPLITS:
        for row in splits[name]:
            assert seen.setdefault(groups[row], name) == name
    shuffled = list(reversed(groups))
    again = make_splits(shuffled, FRACTIONS, seed=3)
    as_groups = {name: sorted({shuffled[r] for r in again[name]}) for name in SPLITS}
    assert as_groups == {name: sorted({groups[r] for r in splits[name]}) for name in SPLITS}
    assert make_splits(groups, FRACTIONS, seed=4) != splits


def test_too_few_groups_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="would be empty"):
        make_splits(["a", "b", "c"], FRACTIONS, seed=0)


def test_cosine_schedule_values() -> None:
    cfg = SchedulerConfig(
        name="cosine", warmup_epochs=1, min_lr_ratio=0.1, step_epochs=1, gamma=0.5
    )
    assert lr_factor(cfg, 0, epochs=3, steps_per_epoch=10) == pytest.approx(0.1)
    assert lr_factor(cfg, 9, 3, 10) == pytest.approx(1.0)
    assert lr_factor(cfg, 10, 3, 10) == pytest.approx(1.0)
    assert lr_factor(cfg, 20, 3, 10) == pytest.approx(0.1 + 0.9 * 0.5)
    assert lr_factor(cfg, 30, 3, 10) == pytest.approx(0.1)
    step = cfg.model_copy(update={"name": "step"})
    assert [lr_factor(step, s, 3, 10) for s in (0, 9, 10, 25)] == [1.0, 1.0, 0.5, 0.25]


def test_atomic_write_leaves_old_file_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    atomic_write_text(target, "old")

    class Boom(Exception):
        pass

    from rigor.io import atomic_open

    with pytest.raises(Boom), atomic_open(target) as handle:
        handle.write("partial new content")
        raise Boom
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["out.txt"]


def test_digits_tasks_and_monitor_checks(tmp_path: Path) -> None:
    from rigor.training.run import prepare

    bad_task = load_config(SMOKE, sets=["data.tasks=[colour]"], environ={})
    with pytest.raises(ConfigError, match=r"\['colour'\] not offered by dataset 'digits'"):
        prepare(bad_task, "ignore", False)
    bad_monitor = load_config(SMOKE, sets=["training.monitor=val_select/mae"], environ={})
    with pytest.raises(ConfigError, match="training.monitor"):
        prepare(bad_monitor, "ignore", False)


def test_bytes_written_once_are_hashed_from_memory_and_links_stay_independent(
    tmp_path: Path,
) -> None:
    import hashlib
    import os

    from rigor.io import atomic_link, atomic_write_bytes, sha256_file, sha256_recorded

    first = tmp_path / "best.pt"
    digest = atomic_write_bytes(first, b"epoch 3 state")
    assert digest == hashlib.sha256(b"epoch 3 state").hexdigest() == sha256_file(first)
    atomic_link(first, tmp_path / "last.pt")
    assert os.stat(first).st_ino == os.stat(tmp_path / "last.pt").st_ino
    assert sha256_recorded(tmp_path / "last.pt") == digest
    atomic_write_bytes(tmp_path / "last.pt", b"epoch 4 state")  # replaces its own name only
    assert first.read_bytes() == b"epoch 3 state"
    first.write_bytes(b"EPOCH 3 STATE")  # changed behind rigor's back: re-read, not trusted
    assert sha256_recorded(first) == hashlib.sha256(b"EPOCH 3 STATE").hexdigest()


def test_a_hashed_write_streams_the_bytes_it_hashes(tmp_path: Path) -> None:
    """torch.save straight into the file: the same bytes as through memory, hashed on the way
    (the digest is recorded, the file is never re-read), and a failed writer leaves nothing."""
    import hashlib
    import io

    import torch

    from rigor.io import _WRITTEN, _identity, atomic_write_hashed, sha256_file

    state = {"w": torch.arange(100_000, dtype=torch.float32), "epoch": 3}
    path = tmp_path / "last.pt"
    digest = atomic_write_hashed(path, lambda handle: torch.save(state, handle))
    buffer = io.BytesIO()
    torch.save(state, buffer)
    assert path.read_bytes() == buffer.getvalue()
    assert digest == hashlib.sha256(buffer.getvalue()).hexdigest() == sha256_file(path)
    assert _WRITTEN[_identity(path)] == digest

    def broken(handle) -> None:  # type: ignore[no-untyped-def]
        handle.write(b"half a checkpoint")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write_hashed(path, broken)
    assert path.read_bytes() == buffer.getvalue()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


def test_checkpoints_hash_on_the_way_when_large_and_are_torch_saves(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A checkpoint of HASH_WHILE_WRITING bytes of tensors or more is hashed while written;
    a smaller one is hashed when recorded. Either way the recorded digest is the file's, and
    the file is what ``torch.save`` writes, read back with weights_only."""
    import io

    import torch

    from rigor.io import _WRITTEN, _identity, sha256_file, sha256_recorded
    from rigor.runs import checkpoint

    state = {"model": {"w": torch.arange(1000, dtype=torch.float32)}, "epoch": 3, "top_k": []}
    assert checkpoint.tensor_bytes(state) == 4000
    small, large = tmp_path / "small.pt", tmp_path / "large.pt"
    checkpoint.save_checkpoint(small, state)
    assert _identity(small) not in _WRITTEN
    monkeypatch.setattr(checkpoint, "HASH_WHILE_WRITING", 4000)
    checkpoint.save_checkpoint(large, state)
    assert _WRITTEN[_identity(large)] == sha256_file(large)
    assert small.read_bytes() == large.read_bytes()
    assert sha256_recorded(small) == sha256_file(small)
    loaded = torch.load(small, weights_only=True)
    assert torch.equal(loaded["model"]["w"], state["model"]["w"]) and loaded["epoch"] == 3
    buffer = io.BytesIO()
    torch.save(state, buffer)
    assert small.read_bytes() == buffer.getvalue()


def test_the_run_writer_keeps_order_and_stops_at_the_first_error(tmp_path: Path) -> None:
    """Jobs run in submission order off the caller's thread; a checkpoint waits for the one
    before it only; the first failure drops the later jobs and is raised to the caller."""
    import threading

    import torch

    from rigor.runs.checkpoint import BackgroundWriter

    writer, order, caller = BackgroundWriter(), [], threading.get_ident()
    gate = threading.Event()
    writer.submit(lambda: (gate.wait(5), order.append(("slow", threading.get_ident()))))
    writer.submit(lambda: order.append(("fast", threading.get_ident())))
    assert order == []  # submit does not wait for the job
    gate.set()
    writer.checkpoint(tmp_path, {"w": torch.ones(3)}, ["checkpoints/last.pt", "best.pt"])
    writer.wait()
    assert [name for name, _ in order] == ["slow", "fast"]
    assert all(ident != caller for _, ident in order)
    last, best = tmp_path / "checkpoints" / "last.pt", tmp_path / "best.pt"
    assert last.stat().st_ino == best.stat().st_ino
    assert torch.equal(torch.load(last, weights_only=True)["w"], torch.ones(3))

    def fail() -> None:
        raise OSError("no space left on device")

    writer.submit(fail)
    writer.submit(lambda: order.append(("after", 0)))
    with pytest.raises(OSError, match="no space"):
        writer.wait()
    assert [name for name, _ in order] == ["slow", "fast"]  # the job after the failure: dropped
    writer.submit(lambda: order.append(("recovered", 0)))  # the error was reported once
    writer.close()
    assert order[-1][0] == "recovered"


def test_checkpoints_snapshot_into_the_previous_ones_tensors_only_once_it_is_written(
    tmp_path: Path,
) -> None:
    """A checkpoint's file holds the state as it was when :meth:`checkpoint` was called,
    whatever training does afterwards; the next checkpoint waits until that file is written,
    then copies its state into the same tensors (a tensor whose layout changed is copied
    anew)."""
    import threading

    import torch

    from rigor.runs.checkpoint import BackgroundWriter, snapshot

    state = {"w": torch.zeros(4), "epoch": 0, "rows": [torch.ones(2)]}
    writer = BackgroundWriter()
    gate = threading.Event()
    writer.submit(lambda: gate.wait(5))  # the writer is busy: this checkpoint is queued
    writer.checkpoint(tmp_path, state, ["a.pt"])
    copy = writer._snapshot["w"]
    state["w"] += 1  # training goes on
    state["epoch"] = 1
    later = threading.Thread(target=writer.checkpoint, args=(tmp_path, state, ["b.pt"]))
    later.start()
    later.join(0.3)
    assert later.is_alive()  # a.pt is not written yet, so its copy is still needed
    gate.set()
    later.join(5)
    writer.wait()
    first = torch.load(tmp_path / "a.pt", weights_only=True)
    second = torch.load(tmp_path / "b.pt", weights_only=True)
    assert torch.equal(first["w"], torch.zeros(4)) and first["epoch"] == 0
    assert torch.equal(second["w"], torch.ones(4)) and second["epoch"] == 1
    assert writer._snapshot["w"] is copy and writer._snapshot["w"] is not state["w"]
    writer.close()
    assert writer._snapshot is None  # nothing held once the session's writes are done

    earlier = snapshot(state)
    state["w"] = torch.zeros(2, 2).t()  # another shape and stride: a new copy
    again = snapshot(state, earlier)
    assert again["rows"][0] is earlier["rows"][0] and again["w"] is not earlier["w"]
    assert again["w"].stride() == (1, 2) and torch.equal(again["w"], state["w"])


def test_a_checkpoint_is_copied_at_the_call_and_written_in_order(tmp_path: Path) -> None:
    """The state is copied when :meth:`checkpoint` is called (it returns while the writer
    is still busy) and written as ``torch.save`` writes that copy; the next checkpoint
    waits until that one is on disk (so the run's predictions can read an earlier best.pt
    back, and a slow disk does not pile up states in memory); the files are written in the
    order they were submitted."""
    import threading

    import torch

    from rigor.runs.checkpoint import BackgroundWriter, save_checkpoint, snapshot

    model = torch.nn.Linear(3, 2)
    state = {"model": model.state_dict(), "epoch": 0, "rows": [torch.ones(2)]}
    save_checkpoint(tmp_path / "expected.pt", snapshot(state))
    writer, gate, order = BackgroundWriter(), threading.Event(), []
    writer.submit(lambda: (gate.wait(5), order.append("before")))
    writer.checkpoint(tmp_path, state, ["a.pt", "b.pt"])  # returns at once
    with torch.no_grad():
        model.weight += 1  # training goes on
    state["epoch"] = 1
    later = threading.Thread(target=writer.checkpoint, args=(tmp_path, state, ["c.pt"]))
    later.start()
    later.join(0.3)
    assert later.is_alive() and not (tmp_path / "a.pt").exists()  # waits for a.pt
    gate.set()
    later.join(5)
    assert (tmp_path / "a.pt").exists()  # on disk once the next checkpoint has returned
    writer.submit(lambda: order.append(sorted(p.name for p in tmp_path.glob("?.pt"))))
    writer.close()
    assert order == ["before", ["a.pt", "b.pt", "c.pt"]]
    expected = (tmp_path / "expected.pt").read_bytes()
    assert (tmp_path / "a.pt").read_bytes() == expected  # as it was at the call
    assert (tmp_path / "a.pt").stat().st_ino == (tmp_path / "b.pt").stat().st_ino
    later = torch.load(tmp_path / "c.pt", weights_only=True)
    assert later["epoch"] == 1 and torch.equal(later["model"]["weight"], model.weight)


def test_an_epoch_checkpoint_is_serialised_once_and_linked(smoke_manifest: Path) -> None:
    import json
    import os

    from rigor.io import sha256_file

    run = smoke_manifest.parent
    manifest = json.loads(smoke_manifest.read_text())
    best, last = run / "checkpoints" / "best.pt", run / "checkpoints" / "last.pt"
    from rigor.runs.checkpoint import load_checkpoint

    state = load_checkpoint(last)
    last_epoch_was_best = state["best_epoch"] == state["epoch"] - 1
    assert (os.stat(best).st_ino == os.stat(last).st_ino) == last_epoch_was_best
    for rel, expected in manifest["sha256"].items():
        if rel.startswith("checkpoints/"):
            assert sha256_file(run / rel) == expected, rel


def test_digits_read_as_scikit_learn_reads_them_without_importing_it() -> None:
    import subprocess
    import sys

    import numpy as np
    from sklearn.datasets import load_digits as reference

    from rigor.data.sources.digits import load_digits

    images, labels = load_digits()
    expected = reference()
    assert np.array_equal(images, expected.images) and images.dtype == expected.images.dtype
    assert np.array_equal(labels, expected.target)
    probe = (
        "import sys\n"
        "from rigor.config import load_config\n"
        "from rigor.data.build import build_dataset\n"
        "cfg = load_config('configs/experiment/digits_baseline.yaml', environ={}).config\n"
        "build_dataset(cfg.data, None)\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'sklearn')[:3])\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().endswith("[]")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_settled_loops_keep_freed_memory_and_streamed_passes_keep_their_threshold() -> None:
    """A loop that allocates, touches and frees three 900 KiB blocks 20 times (glibc's moving
    thresholds set by a 1 MiB block freed first) faults their pages in every round with
    glibc's defaults, once after keep_freed_memory() or a script's settle(), and every round
    again in a process that streams files: its fixed 1 MiB threshold wins over a later
    keep_freed_memory(), which then does nothing, and undoes an earlier one's trim."""
    import subprocess

    loop = (
        "import ctypes, resource, sys\n"
        "from rigor.allocator import fix_mmap_threshold, keep_freed_memory\n"
        "from rigor.cli import run_main, settle\n"
        "libc = ctypes.CDLL(None)\n"
        "libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]\n"
        "libc.free.argtypes = [ctypes.c_void_p]\n"
        "libc.memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]\n"
        "def faults():\n"
        "    libc.free(libc.malloc(1 << 20))\n"
        "    size, before = 900 << 10, resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
        "    for _ in range(20):\n"
        "        blocks = [libc.malloc(size) for _ in range(3)]\n"
        "        for block in blocks:\n"
        "            libc.memset(block, 1, size)\n"
        "        for block in reversed(blocks):\n"
        "            libc.free(block)\n"
        "    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before\n"
    )
    setups = {
        "default": "print(faults())\n",
        "kept": "assert keep_freed_memory()\nprint(faults())\n",
        "settled": (
            "def main(argv):\n"
            "    settle()\n"
            "    print(faults())\n"
            "    return 0\n"
            "sys.argv = ['probe']\n"
            "run_main(main, defer_gc=True)\n"
        ),
        "streamed": "assert fix_mmap_threshold() and not keep_freed_memory()\nprint(faults())\n",
        "kept, then streamed": (
            "assert keep_freed_memory() and fix_mmap_threshold()\nprint(faults())\n"
        ),
    }
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    faults = {
        name: int(
            subprocess.run(
                [sys.executable, "-c", loop + setup],
                capture_output=True,
                text=True,
                check=True,
                env=env,
            ).stdout
        )
        for name, setup in setups.items()
    }
    page_ins = 3 * (900 << 10) // 4096  # the three blocks' pages, faulted in once
    assert faults["kept"] < 2 * page_ins and faults["settled"] < 2 * page_ins, faults
    for name in ("default", "streamed", "kept, then streamed"):
        assert faults[name] > 10 * page_ins, faults
