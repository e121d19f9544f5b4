"""Run folders: one output root, one run id made once, every path derived from it."""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import socket
from datetime import UTC, datetime
from pathlib import Path

from rigor.errors import RunBusyError, UsageError

LOCK = ".run.lock"


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
    try:
        runs.mkdir(parents=True, exist_ok=True)
    except OSError as err:  # unwritable, or a file where a folder should be
        raise UsageError(
            f"run.output_root {output_root}: cannot create {runs} ({err.strerror or err})"
        ) from None
    base = run_id_base(name, config_hash, utc_now())
    for attempt in range(10_000):
        run_id = base if attempt == 0 else f"{base}-{attempt}"
        try:
            (runs / run_id).mkdir()
        except FileExistsError:
            continue
        return run_id, runs / run_id
    raise RuntimeError(f"could not create a fresh run folder under {runs}")


_HELD_LOCKS: set[int] = set()  # fds of the run locks this process holds


def _drop_inherited_locks() -> None:
    """In a forked child (a DataLoader worker), close the run-lock fds it inherited: a flock
    lives as long as any fd of its open file lives, so a worker outliving a killed trainer
    by the seconds it takes to notice would otherwise keep the run folder locked, and a
    resume started at once would open a new folder instead of continuing this one."""
    for fd in list(_HELD_LOCKS):
        with contextlib.suppress(OSError):
            os.close(fd)
    _HELD_LOCKS.clear()


os.register_at_fork(after_in_child=_drop_inherited_locks)


class RunLock:
    """One writer per run folder: an exclusive, non-blocking ``flock`` on ``<run>/.run.lock``
    held for the writer's whole life, with the holder's pid and host written in the file.

    The kernel releases it when the holder exits or is killed, so a folder whose writer died
    can be taken over; a live holder is never joined.
    """

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / LOCK
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock, or raise RunBusyError (exit 4) naming the live holder."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RunBusyError(
                f"run folder {self.path.parent} is being written by {self.holder()}; "
                "wait for it to finish, or stop it first"
            ) from None
        if (self.path.parent / "manifest.json").exists():  # it finished while we looked
            os.close(fd)
            raise UsageError(f"run {self.path.parent.name} already completed")
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on host {socket.gethostname()}\n".encode())
        self._fd = fd
        _HELD_LOCKS.add(fd)

    def release(self, completed: bool = False) -> None:
        """Give the lock up (closing the file releases it). A completed run (its manifest
        written) also removes the file; a failed one keeps it for whoever takes over, so two
        takers never lock two different files."""
        if self._fd is not None:
            if completed:
                self.path.unlink(missing_ok=True)
            _HELD_LOCKS.discard(self._fd)
            os.close(self._fd)
            self._fd = None

    def holder(self) -> str:
        """Who holds the lock, as its holder wrote it."""
        try:
            return self.path.read_text().strip() or "another process"
        except OSError:
            return "another process"

    @staticmethod
    def is_held(run_dir: Path) -> bool:
        """Whether a live process holds the folder's lock (probed without taking it over)."""
        try:
            fd = os.open(run_dir / LOCK, os.O_RDONLY)
        except FileNotFoundError:  # never locked, or its run completed and removed it
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
        return False
