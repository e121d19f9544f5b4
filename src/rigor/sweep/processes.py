"""The processes a sweep starts: each point in its own session (process group), and a stop
signal to the sweep carried to every running point.

A point runs as ``python -m rigor.sweep.job`` (under torchrun for several processes), which
may start DataLoader workers or DDP ranks of its own; starting it in a new session makes it
the leader of a process group that holds all of them. SIGINT (Ctrl-C reaches only the
sweep, the foreground group) or SIGTERM (``kill``, Slurm's scancel) to the sweep is sent on
to each running point's group; the sweep waits for them (``GRACE_S``, then SIGKILL), so no
point is left training behind a sweep that has ended, then stops itself: exit 130 for
SIGINT, 143 for SIGTERM.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from types import FrameType
from typing import IO, Any

from rigor.errors import RigorError
from rigor.io import atomic_write_json

GRACE_S = 30.0
_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class SweepStopped(RigorError):
    """The sweep was told to stop (SIGTERM) and stopped its running points (exit 143)."""

    exit_code = 128 + signal.SIGTERM


class _Stop(BaseException):
    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def start_point(command: Sequence[str], log: IO[bytes]) -> subprocess.Popen[bytes]:
    """Start a point's process in its own session, its output to ``log``."""
    return subprocess.Popen(
        [sys.executable, *command], stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )


def _raise_stop(signum: int, frame: FrameType | None) -> None:
    raise _Stop(signum)


@contextmanager
def stopping_points(running: Callable[[], list[subprocess.Popen[bytes]]]) -> Iterator[None]:
    """While inside, SIGINT or SIGTERM to this process stops ``running()`` points (their
    whole process groups) before the sweep ends with KeyboardInterrupt or SweepStopped."""
    from threading import current_thread, main_thread

    if current_thread() is not main_thread():  # signals reach the main thread only
        yield
        return
    previous = {sig: signal.signal(sig, _raise_stop) for sig in _SIGNALS}
    try:
        yield
    except _Stop as stop:
        for sig in _SIGNALS:  # a second signal must not interrupt the clean-up
            signal.signal(sig, signal.SIG_IGN)
        name = signal.Signals(stop.signum).name
        procs = running()
        print(f"sweep: {name}: stopping {len(procs)} running point(s)", file=sys.stderr)
        stop_groups(procs, stop.signum)
        if stop.signum == signal.SIGINT:
            raise KeyboardInterrupt from None
        raise SweepStopped(f"stopped by {name}; {len(procs)} running point(s) stopped") from None
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def stop_groups(procs: list[subprocess.Popen[bytes]], signum: int) -> None:
    """Send ``signum`` to each process's group, wait up to GRACE_S, then SIGKILL the rest."""
    for proc in procs:
        _killpg(proc, signum)
    deadline = time.monotonic() + GRACE_S
    for proc in procs:
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            _killpg(proc, signal.SIGKILL)
            proc.wait()
        _killpg(proc, signal.SIGKILL)  # anything of its group still alive (workers)


def _killpg(proc: subprocess.Popen[bytes], signum: int) -> None:
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signum)


@contextmanager
def point_lock(status_path: Path, index: int) -> Iterator[bool]:
    """Hold ``points/<i>.lock`` while point ``index`` runs: yields True at once, or False
    after waiting for an earlier process of the same point (an orphan of a killed sweep)
    to finish, so that a rerun never trains a duplicate beside it. The kernel drops the
    lock when its holder dies."""
    import fcntl

    fd = os.open(status_path.with_suffix(".lock"), os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            waited = False
        except BlockingIOError:
            print(
                f"sweep point {index}: an earlier process of this point is still running "
                "(left by a stopped sweep); waiting for it to finish",
                file=sys.stderr,
            )
            fcntl.flock(fd, fcntl.LOCK_EX)
            waited = True
        yield not waited
    finally:
        os.close(fd)


def finished(status: dict[str, Any], config_hash: str) -> bool:
    """Whether a point's status says ok and its run's manifest holds ``config_hash``."""
    manifest = Path(status.get("manifest") or "")
    if status["status"] != "ok" or not manifest.is_file():
        return False
    return bool(json.loads(manifest.read_text())["config_hash"] == config_hash)


def run_local(folder: Path, specs: list[dict[str, Any]], max_parallel: int) -> None:
    """Each point in its own ``python -m rigor.sweep.job`` process (its own process group),
    ``max_parallel`` at once; a stop signal to the sweep stops them (sweep.processes)."""
    (folder / "logs").mkdir(exist_ok=True)
    pending = list(specs)
    running: list[tuple[subprocess.Popen[bytes], Any, dict[str, Any]]] = []
    with stopping_points(lambda: [proc for proc, _, _ in running]):
        while pending or running:
            while pending and len(running) < max(1, max_parallel):
                spec = pending.pop(0)
                if orphan_finished(spec):
                    continue
                log = open(folder / "logs" / f"{spec['index']}.log", "wb")  # noqa: SIM115
                spec_path = folder / "points" / f"{spec['index']}.spec.json"
                job = ["-m", "rigor.sweep.job", str(spec_path)]
                if spec["nproc_per_node"] > 1:  # each point under torchrun, on a free port
                    run = ["-m", "torch.distributed.run", "--standalone"]
                    job = [*run, "--nproc_per_node", str(spec["nproc_per_node"]), *job]
                running.append((start_point(job, log), log, spec))
                print(f"point {spec['index']} {spec['overrides']}: started", file=sys.stderr)
            time.sleep(0.2)
            for proc, log, spec in list(running):
                if proc.poll() is not None:
                    log.close()
                    running.remove((proc, log, spec))
                    print(f"point {spec['index']}: {point_outcome(spec)}", file=sys.stderr)


def orphan_finished(spec: dict[str, Any]) -> bool:
    """Wait for an earlier process of this point that is still running (an orphan of a
    stopped sweep holds its lock); True when it finished the point, which then is not
    started again."""
    status = Path(spec["status"])
    with point_lock(status, spec["index"]) as first:
        pass  # holding it only proves that no earlier process of the point still runs
    if first or not status.is_file():
        return False
    if finished(json.loads(status.read_text()), spec["config_hash"]):
        print(f"point {spec['index']}: finished by its earlier process", file=sys.stderr)
        return True
    return False


def point_outcome(spec: dict[str, Any]) -> str:
    """One line on how a finished point ended (its status file), for the sweep's log."""
    path = Path(spec["status"])
    if not path.is_file():
        return "ended without a status (killed?)"
    status = json.loads(path.read_text())
    if status["status"] != "ok":
        return f"{status['status']}: {status.get('error')}"
    return f"ok ({status['manifest']})"


def write_specs(
    folder: Path, points: list[dict[str, Any]], common: dict[str, Any], options: Any
) -> list[dict[str, Any]]:
    """One ``points/<i>.spec.json`` per point: what its job process needs to run it (a point
    resumes the newest unfinished run of its config, if one was left by a killed sweep)."""
    specs = []
    for point in points:
        index = point["index"]
        spec = {
            "index": index,
            **common,
            "overrides": point["overrides"],
            "config_hash": point["config_hash"],
            "resume": "auto",
            "launcher": options.launcher,
            "nproc_per_node": options.nproc_per_node,
            "cwd": os.getcwd(),
            "status": str((folder / "points" / f"{index}.json").resolve()),
        }
        atomic_write_json(folder / "points" / f"{index}.spec.json", spec)
        specs.append(spec)
    return specs
