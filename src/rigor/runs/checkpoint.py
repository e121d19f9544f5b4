"""Checkpoints: atomic writes, ``weights_only`` loads, RNG states, config-hash checks."""

from __future__ import annotations

import copy
import queue
import random
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch

from rigor.errors import ArtifactError, UsageError
from rigor.io import atomic_link, atomic_write_hashed, atomic_write_with

REQUIRED_KEYS = (
    "model",
    "optimizer",
    "scheduler",
    "scaler",
    "ema",
    "epoch",
    "position",
    "epoch_step",
    "step",
    "best_metric",
    "early_stopping",
    "rng",
    "micro_batch",
    "top_k",
    "epoch_sums",
    "config_hash",
)


def rng_state() -> dict[str, Any]:
    """Python, numpy, torch and CUDA generator states, as tensors and plain types only."""
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    return {
        "python": {
            "version": version,
            "state": torch.from_numpy(np.array(internal, dtype=np.int64)),  # 3x tensor()
            "gauss": gauss,
        },
        "numpy": {
            "name": name,
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    python = state["python"]
    random.setstate((python["version"], tuple(python["state"].tolist()), python["gauss"]))
    numpy = state["numpy"]
    keys = numpy["keys"].numpy().astype(np.uint32)
    np.random.set_state((numpy["name"], keys, numpy["pos"], numpy["has_gauss"], numpy["cached"]))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# Checkpoints holding at least this many bytes of tensors are hashed while they are written;
# smaller ones when a manifest records them (a re-read of about 1 ms per MB, done for the
# two or three files a run keeps instead of for every epoch's).
HASH_WHILE_WRITING = 64 << 20

# The zip writer hands its file a header, a body and padding per tensor: through the default
# 8 KiB buffer a digits checkpoint (56 tensors, 1.1 MB) took about 30 write() calls, each a
# release and a re-take of the interpreter lock by the writing thread; through 1 MiB, two
# (larger tensors still go straight to the file).
WRITE_BUFFER = 1 << 20


def save_checkpoint(path: Path, state: dict[str, Any], kept: bool = True) -> None:
    """Write ``state`` with ``torch.save``, atomically: a kill leaves the old file or the new
    one, never a torn one. A large state's sha256 is taken on the way (the manifest does
    not read the file again).

    ``kept=False`` says this process's manifest will not record the file (a ``last.pt``
    that the next epoch replaces, a mid-epoch one): it is then never hashed on the way
    (ResNet-18: 100 of the 155 ms of CPU a checkpoint costs). A resumed run hashes what
    it records by reading it, whatever was hashed before."""
    hashed = kept and tensor_bytes(state) >= HASH_WHILE_WRITING
    _write_atomically(path, lambda handle: torch.save(state, handle), hashed)


def _write_atomically(path: Path, fill: Callable[[IO[bytes]], object], hashed: bool) -> None:
    if hashed:
        atomic_write_hashed(path, fill, WRITE_BUFFER)
    else:
        atomic_write_with(path, fill, WRITE_BUFFER)


def tensor_bytes(value: Any) -> int:
    """The bytes of the tensors in a (nested) state."""
    if isinstance(value, torch.Tensor):
        return value.nbytes
    if isinstance(value, dict):
        return sum(tensor_bytes(item) for item in value.values())
    if isinstance(value, list | tuple):
        return sum(tensor_bytes(item) for item in value)
    return 0


def snapshot(value: Any, reuse: Any = None) -> Any:
    """A copy of a state dict that training can no longer change: every tensor copied
    (detached), containers rebuilt, plain values kept. Cloning costs a third of serialising
    (ResNet-18 with AdamW: 52 against 146 ms), so the rest can happen in the background.
    ``reuse``, an earlier snapshot of a state of the same shape that nothing reads any more,
    lends its tensors: each one with the same shape, stride, dtype and device is overwritten
    instead of allocating a new one (ResNet-18 with AdamW: 10 ms against 37-62 ms, most of
    it the page faults of 134 MB of fresh memory)."""
    if isinstance(value, int | float | str | bool | None):  # immutable: nothing to copy
        return value
    if isinstance(value, torch.Tensor):
        if isinstance(reuse, torch.Tensor) and _same_layout(reuse, value):
            return reuse.copy_(value.detach())
        return value.detach().clone()
    if isinstance(value, dict):
        earlier = reuse if isinstance(reuse, dict) else {}
        return {key: snapshot(item, earlier.get(key)) for key, item in value.items()}
    if isinstance(value, list | tuple):
        same = isinstance(reuse, list | tuple) and len(reuse) == len(value)
        return type(value)(
            snapshot(item, reuse[index] if same else None) for index, item in enumerate(value)
        )
    return copy.deepcopy(value)


def _same_layout(buffer: torch.Tensor, value: torch.Tensor) -> bool:
    return (
        buffer.shape == value.shape
        and buffer.stride() == value.stride()
        and buffer.dtype == value.dtype
        and buffer.device == value.device
    )


class BackgroundWriter:
    """One thread that writes a training session's checkpoints in order while training goes
    on: each epoch's state serialised once, written and fsynced under its first name, and
    published under the others as hard links.

    A checkpoint holds a copy of the state (:func:`snapshot`: plain dicts, a storage per
    tensor), written with ``torch.save`` on the writer's thread, where it overlaps the next
    epoch.

    Jobs run first in, first out, so files appear in the order they were submitted. The
    first job that raises stops the rest (they are dropped), and :meth:`submit`,
    :meth:`checkpoint` and :meth:`wait` re-raise its error in the training thread (a full
    disk stops the run). At most one checkpoint is queued beside the one being made:
    :meth:`checkpoint` waits for the previous checkpoint (not for other jobs queued since)
    before it queues its own, so the bytes held in memory stay bounded on a slow disk, and
    once it returns every earlier checkpoint's files are on disk (the run's predictions read
    an earlier best.pt back). The state is copied after that wait, into the previous
    copy's tensors, which that write no longer reads."""

    def __init__(self) -> None:
        self._jobs: queue.Queue[tuple[Callable[[], None], threading.Event | None] | None]
        self._jobs = queue.Queue()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._last_checkpoint: threading.Event | None = None
        self._snapshot: Any = None  # the last copied state the writer serialises

    def submit(self, job: Callable[[], None], done: threading.Event | None = None) -> None:
        """Run ``job`` after every job submitted before it, then set ``done`` (also when the
        job is dropped after an earlier failure); raise an earlier job's error."""
        self._raise()
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="run-writer", daemon=True)
            self._thread.start()
        self._jobs.put((job, done))

    def checkpoint(
        self,
        run_dir: Path,
        state: dict[str, Any],
        names: list[str],
        remove: Sequence[str] = (),
        kept: bool = True,
    ) -> None:
        """Copy ``state`` (training may change it once this returns) and publish the copy
        under ``names`` (relative to ``run_dir``), in that order, then delete ``remove``
        (top-k files that fell out: only once their successor exists). ``kept``: as in
        :func:`save_checkpoint`."""
        self._raise()
        self._wait_previous()
        copied = self._snapshot = snapshot(state, self._snapshot)

        def save(path: Path) -> None:
            save_checkpoint(path, copied, kept)

        def write() -> None:
            first = run_dir / names[0]
            save(first)
            for name in names[1:]:
                atomic_link(first, run_dir / name)
            for name in remove:
                (run_dir / name).unlink(missing_ok=True)

        self._last_checkpoint = threading.Event()
        self.submit(write, self._last_checkpoint)

    def _wait_previous(self) -> None:
        if self._last_checkpoint is not None:
            self._last_checkpoint.wait()
        self._raise()

    def wait(self) -> None:
        """Block until every submitted job has run; re-raise the first error."""
        if self._thread is not None:
            self._jobs.join()
        self._raise()

    def close(self) -> None:
        """Run what is queued, then end the thread; re-raise the first error."""
        if self._thread is not None:
            self._jobs.put(None)
            self._thread.join()
            self._thread = None
        self._snapshot = None
        self._raise()

    def _raise(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def _work(self) -> None:
        while True:
            item = self._jobs.get()
            if item is None:
                self._jobs.task_done()
                return
            job, done = item
            try:
                if self._error is None:  # after a failure the rest is dropped
                    job()
            except BaseException as err:  # noqa: BLE001 - re-raised in the training thread
                self._error = err
            finally:
                if done is not None:
                    done.set()
                self._jobs.task_done()


def load_checkpoint(
    path: Path,
    config_hash: str | None = None,
    force: bool = False,
    required: tuple[str, ...] | None = None,
) -> dict[str, Any]:
    """Load with ``weights_only=True``; refuse missing keys (``required``, by default those of
    a training checkpoint) and a different config hash."""
    if not path.is_file():
        raise ArtifactError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch raises many types for a bad file
        raise ArtifactError(f"checkpoint {path} cannot be read safely: {err}") from None
    if not isinstance(state, dict):
        raise ArtifactError(f"checkpoint {path} does not hold a dict")
    missing = [key for key in (REQUIRED_KEYS if required is None else required) if key not in state]
    if missing:
        raise ArtifactError(f"checkpoint {path} lacks key(s): {', '.join(missing)}")
    if config_hash is not None and state["config_hash"] != config_hash and not force:
        raise UsageError(
            f"checkpoint {path} was written for config {state['config_hash'][:12]}, "
            f"this run's config is {config_hash[:12]}; pass --force to load it anyway"
        )
    return state
