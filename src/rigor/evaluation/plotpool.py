"""Plots drawn by forked worker processes while a stage goes on computing.

Importing matplotlib (about 0.45 s on two cores) and drawing a figure (about 0.1 s each) cost
more than the metrics of a few hundred samples. Inside ``with PlotPool():`` every
:func:`draw` call (a figure job of :mod:`rigor.evaluation.figures` and its arguments) is sent
to worker processes forked when the pool opens: they import matplotlib while the stage
computes, then compute each figure's curves and draw it beside the stage. Leaving the block
waits for every figure and re-raises the first error, so a stage hashes its outputs only once
they are all written (each figure is written atomically by :func:`rigor.evaluation.plots.save`).

Outside a pool, on a single core, where ``fork`` is not available, or with
``RIGOR_PLOT_WORKERS=0``, :func:`draw` draws in the calling process.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from types import TracebackType
from typing import Any

_ACTIVE: list[PlotPool] = []


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


def _warm() -> None:
    """Worker start-up: import matplotlib and the figure jobs before the first figure."""
    import rigor.evaluation.figures  # noqa: F401
    import rigor.evaluation.plots  # noqa: F401


class PlotPool:
    """Worker processes for :func:`draw` (none: draw in this process).

    A pool opened inside another one uses the outer pool's workers: a script opens one
    before its heavy imports (the workers fork from a small process and import matplotlib
    beside them), and the stage's own ``with PlotPool():`` waits for its figures only.
    """

    def __init__(self, most: int = 2) -> None:
        self.workers = _workers(most)
        self._pool: ProcessPoolExecutor | None = None
        self._owner = False
        self._pending: list[Future[None]] = []

    def __enter__(self) -> PlotPool:
        if _ACTIVE:
            self._pool = _ACTIVE[-1]._pool
        elif self.workers > 0:
            self._pool = ProcessPoolExecutor(
                self.workers, mp_context=multiprocessing.get_context("fork"), initializer=_warm
            )
            self._owner = True
            self._pool.submit(_warm)  # forks every worker now, not at the first figure
        _ACTIVE.append(self)
        return self

    def submit(self, job: Callable[..., None], *args: Any) -> None:
        """Run ``job(*args)`` in a worker (or here)."""
        if self._pool is None:
            job(*args)
        else:
            self._pending.append(self._pool.submit(job, *args))

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        _ACTIVE.remove(self)
        try:
            if error is None:
                for future in self._pending:
                    future.result()  # the first failure is raised here
        finally:
            for future in self._pending:
                future.cancel()
            if self._owner and self._pool is not None:
                self._pool.shutdown(wait=True, cancel_futures=True)


def draw(job: Callable[..., None], *args: Any) -> None:
    """Run a figure job (a module-level function of :mod:`rigor.evaluation.figures`): in the
    open pool's workers, else here."""
    if _ACTIVE:
        _ACTIVE[-1].submit(job, *args)
    else:
        job(*args)
