"""Plots drawn by forked worker processes while a stage goes on computing.

Importing matplotlib (about 0.5 s on two cores) and drawing a figure (about 0.1 s each) cost
more than the metrics of a few hundred samples. Inside ``with PlotPool():`` every
:func:`draw` call (a figure job of :mod:`rigor.plotting.figures` and its arguments) is sent
to plot workers: one process forked when the pool opens imports matplotlib while the stage
computes, then forks the other workers from itself (they share that import), and all of them
take figure jobs from one queue, compute each figure's curves and draw it beside the stage.
Leaving the block waits for every figure and re-raises the first error, so a stage hashes its
outputs only once they are all written (each figure is written atomically by
:func:`rigor.plotting.plots.save`). A stage that fails first takes back the figures not
started yet; a worker that dies is an error, not a wait.

Outside a pool, on a single core, where ``fork`` is not available, or with
``RIGOR_PLOT_WORKERS=0``, :func:`draw` draws in the calling process.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
from collections.abc import Callable
from types import TracebackType
from typing import Any

_ACTIVE: list[PlotPool] = []
POLL_S = 0.005


def _workers(most: int) -> int:
    """Up to ``most`` where ``fork`` exists and there are cores to spare, or at most
    ``RIGOR_PLOT_WORKERS`` (0: draw in the stage's process)."""
    if "fork" not in multiprocessing.get_all_start_methods():
        return 0
    configured = os.environ.get("RIGOR_PLOT_WORKERS")
    if configured is not None:
        return min(most, max(0, int(configured)))
    cores = os.cpu_count() or 1
    return min(most, cores) if cores > 1 else 0


class _Channel:
    """One-way pipe for the answers: a send is done when it returns (a worker may exit right
    after), several processes may send, and a receive never blocks longer than ``POLL_S``."""

    def __init__(self, context: Any) -> None:
        self._reader, self._writer = context.Pipe(duplex=False)
        self._read_lock, self._write_lock = context.Lock(), context.Lock()

    def send(self, item: Any) -> None:
        with self._write_lock:
            self._writer.send(item)

    def receive(self) -> tuple[bool, Any]:
        """(True, item), or (False, None) when nothing came within ``POLL_S``."""
        with self._read_lock:
            if self._reader.poll(POLL_S):
                return True, self._reader.recv()
        return False, None


def _serve(
    jobs: Any,
    results: _Channel,
    cancel: Any,
    parent: int,
    watch: Callable[[], None] | None = None,
) -> None:
    """Take (key, job, args) until the sentinel None; answer (key, error or None). After
    ``cancel`` is set, jobs are answered without being run. ``watch`` runs while idle."""
    while True:
        try:
            item = jobs.get(timeout=POLL_S)
        except queue.Empty:
            if os.getppid() != parent:  # the process that forked this one is gone
                return
            if watch is not None:
                watch()
            continue
        if item is None:
            return
        key, job, args = item
        try:
            if not cancel.is_set():
                job(*args)
            results.send((key, None))
        except BaseException as err:  # noqa: BLE001 - sent back and raised in the stage
            try:
                results.send((key, err))
            except Exception:  # noqa: BLE001 - an error that does not pickle
                results.send((key, RuntimeError(f"{type(err).__name__}: {err}")))


def _first_worker(jobs: Any, results: _Channel, cancel: Any, workers: int) -> None:
    """Import matplotlib and the figure jobs once, fork the other workers, serve. A worker
    of its own that dies is reported as key -1 (its figure will never be answered)."""
    import rigor.plotting.figures  # noqa: F401
    import rigor.plotting.plots  # noqa: F401

    parent, me, children = os.getppid(), os.getpid(), set()
    for _ in range(workers - 1):
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                _serve(jobs, results, cancel, me)
            except BaseException:  # noqa: BLE001 - a forked copy must never return
                code = 1
            os._exit(code)
        children.add(pid)

    def reap(block: bool) -> None:
        for pid in list(children):
            done, status = os.waitpid(pid, 0 if block else os.WNOHANG)
            if done:
                children.discard(pid)
                if status != 0:
                    results.send((-1, RuntimeError(f"a plot worker died (wait status {status})")))

    _serve(jobs, results, cancel, parent, watch=lambda: reap(False))
    reap(True)


class PlotPool:
    """Plot workers for :func:`draw` (none: draw in this process).

    A pool opened inside another one uses the outer pool's workers: a script opens one
    before its heavy imports, and the stage's own ``with PlotPool():`` waits for its figures
    only.
    """

    def __init__(self, most: int = 2) -> None:
        self.workers = _workers(most)
        self._owner: PlotPool | None = None
        self._process: Any = None
        self._jobs: Any = None  # a multiprocessing Queue: put returns at once (a feeder thread)
        self._results: _Channel | None = None
        self._cancel: Any = None
        self._done: dict[int, BaseException | None] = {}
        self._sent = 0
        self._pending: list[int] = []

    def __enter__(self) -> PlotPool:
        if _ACTIVE:
            self._owner = _ACTIVE[-1]._owner or _ACTIVE[-1]
        elif self.workers > 0:
            context = multiprocessing.get_context("fork")
            self._jobs, self._results = context.Queue(), _Channel(context)
            self._jobs.cancel_join_thread()  # exit never waits on jobs no worker will read
            self._cancel = context.Event()
            self._process = context.Process(
                target=_first_worker,
                args=(self._jobs, self._results, self._cancel, self.workers),
                name="rigor-plots",
                daemon=True,
            )
            self._process.start()
        _ACTIVE.append(self)
        return self

    def submit(self, job: Callable[..., None], *args: Any) -> None:
        """Run ``job(*args)`` in a worker (or here)."""
        root = self._owner or self
        if root._jobs is None:
            job(*args)
            return
        key = root._sent
        root._sent += 1
        root._jobs.put((key, job, args))
        self._pending.append(key)

    def _wait(self, keys: list[int]) -> None:
        """Every answer for ``keys``; the first error among them is raised."""
        assert self._results is not None
        while any(key not in self._done for key in keys):
            got, answer = self._results.receive()
            if not got:
                if not self._process.is_alive():
                    got, answer = self._results.receive()  # one sent just before exiting
                    if not got:
                        raise RuntimeError(
                            "a plot worker died before drawing every figure (killed, or out "
                            "of memory?)"
                        )
                else:
                    continue
            key, error = answer
            if key == -1:
                raise error
            self._done[key] = error
        for key in keys:
            error = self._done.pop(key)
            if error is not None:
                raise error

    def _close(self, failed: bool) -> None:
        """Stop the workers: after the figures asked for, or (``failed``) skipping the ones
        not started."""
        assert self._jobs is not None and self._results is not None
        if failed:
            self._cancel.set()
        for _ in range(self.workers):
            self._jobs.put(None)
        while self._process.is_alive():  # keep reading answers: a full pipe would block them
            self._results.receive()
            self._process.join(0)
        self._process.join()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        _ACTIVE.remove(self)
        root = self._owner or self
        if root._jobs is None:
            return
        try:
            if error is None:
                root._wait(self._pending)
        finally:
            if self._owner is None:
                self._close(failed=error is not None or any(self._done.values()))


def draw(job: Callable[..., None], *args: Any) -> None:
    """Run a figure job (a module-level function of :mod:`rigor.plotting.figures`): in the
    open pool's workers, else here."""
    if _ACTIVE:
        _ACTIVE[-1].submit(job, *args)
    else:
        job(*args)
