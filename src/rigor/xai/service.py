"""The job side of the XAI worker service: the job store, the worker processes and their
supervisor (the HTTP side is :mod:`rigor.xai.worker`).

Each worker process has a pipe of its own: the supervisor hands a job to an idle worker
through it and reads that worker's events from it. No lock is shared between processes,
so a worker that dies at any moment (idle, busy, or halfway through a message) only closes
its own pipe: the supervisor sees its sentinel, requeues the job it held (with backoff) and
starts a replacement. Workers watch their parent and exit when it is gone, so a server
killed with SIGKILL leaves no orphans. Finished jobs are evicted after
``xai.worker.finished_ttl_s`` or beyond ``xai.worker.max_finished``.
"""

from __future__ import annotations

import collections
import contextlib
import multiprocessing as mp
import os
import threading
import time
import uuid
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

from rigor.config.models import XaiWorkerConfig
from rigor.errors import RigorError
from rigor.io import exclusive_lock

PERMANENT_EXIT_CODES = {2, 3, 5}
PARENT_CHECK_S = 1.0


@dataclass
class Job:
    """One job and what happened to it."""

    id: str
    manifest: str
    options: dict[str, Any]
    ids: list[str] | None
    status: str = "queued"  # queued, running, done, failed
    attempts: int = 0
    worker_pid: int | None = None
    error: str | None = None
    result: str | None = None
    history: list[str] = field(default_factory=list)
    finished_at: float | None = None

    def public(self) -> dict[str, Any]:
        """The JSON of GET /jobs/{id}."""
        keys = ("id", "manifest", "status", "attempts", "worker_pid", "error", "result")
        return {k: getattr(self, k) for k in keys} | {"history": list(self.history)}


def run_job(job_id: str, manifest: str, options: dict[str, Any], ids: list[str] | None) -> str:
    """Run one job in a worker process, once: skip it if its stage entry already exists."""
    from rigor.manifest import load_manifest
    from rigor.xai.stage import explain

    path = Path(manifest)
    with exclusive_lock(path.parent / ".xai.lock"):
        done = [s for s in load_manifest(path)["stages"] if s["options"].get("job_id") == job_id]
        if done:
            return str(path.parent / "xai" / "summary.json")
        return str(explain(path, "warn", False, options, ids, job_id=job_id))


def worker_main(conn: Connection, parent: int) -> None:
    """A worker process: take jobs from its pipe, report start, success or error (with its
    exit code); exit when told to, when the pipe closes, or when the parent is gone."""
    while True:
        if not conn.poll(PARENT_CHECK_S):
            if os.getppid() != parent:
                return  # the server died: no orphan keeps running
            continue
        try:
            item = conn.recv()
        except EOFError:
            return
        if item is None:
            return
        job_id, manifest, options, ids = item
        conn.send(("started", job_id, None))
        try:
            conn.send(("done", job_id, run_job(job_id, manifest, options, ids)))
        except RigorError as err:
            conn.send(("error", job_id, (err.exit_code, f"{type(err).__name__}: {err}")))
        except Exception as err:  # noqa: BLE001 - reported back to the service, retried there
            conn.send(("error", job_id, (1, f"{type(err).__name__}: {err}")))


@dataclass
class Worker:
    """A worker process, the service's end of its pipe, and the job it holds."""

    process: Any
    conn: Connection
    job_id: str | None = None


class Service:
    """Job store, bounded admission, worker processes and their supervisor."""

    def __init__(self, cfg: XaiWorkerConfig) -> None:
        self.cfg = cfg
        self.root = Path(cfg.results_root)
        self.jobs: dict[str, Job] = {}
        self.lock = threading.Lock()
        self.context = mp.get_context("spawn")
        self.pending: collections.deque[str] = collections.deque()
        self.workers: list[Worker] = []
        self.stopping = threading.Event()

    def start(self) -> None:
        """Start the worker processes and the supervisor thread."""
        for _ in range(self.cfg.workers):
            self._spawn()
        threading.Thread(target=self._supervise, daemon=True, name="xai-supervisor").start()

    def stop(self) -> None:
        """Ask workers to finish and stop supervising."""
        self.stopping.set()
        for worker in self.workers:
            with contextlib.suppress(OSError):
                worker.conn.send(None)
        for worker in self.workers:
            worker.process.join(timeout=5)
            if worker.process.is_alive():
                worker.process.kill()

    def live_workers(self) -> list[int]:
        """Pids of the worker processes alive now."""
        return [w.process.pid for w in self.workers if w.process.is_alive()]

    def _spawn(self) -> None:
        ours, theirs = self.context.Pipe()
        process = self.context.Process(target=worker_main, args=(theirs, os.getpid()), daemon=True)
        process.start()
        theirs.close()
        self.workers.append(Worker(process, ours))

    def submit(self, manifest: str, options: dict[str, Any], ids: list[str] | None) -> Job | None:
        """Admit a job, or None when the queue is full."""
        with self.lock:
            waiting = sum(job.status == "queued" for job in self.jobs.values())
            if waiting >= self.cfg.queue_size:
                return None
            job = Job(uuid.uuid4().hex, manifest, options, ids)
            self.jobs[job.id] = job
            self.pending.append(job.id)
        return job

    def _retry_or_fail(self, job: Job, reason: str, permanent: bool) -> None:
        job.history.append(reason)
        job.worker_pid = None
        if permanent or job.attempts > self.cfg.max_retries:
            job.status, job.error, job.finished_at = "failed", reason, time.monotonic()
            return
        job.status = "queued"
        delay = self.cfg.backoff_s * 2 ** (job.attempts - 1)

        def requeue() -> None:
            with self.lock:
                self.pending.append(job.id)

        threading.Timer(delay, requeue).start()

    def _supervise(self) -> None:
        while not self.stopping.is_set():
            handles: list[Any] = [w.conn for w in self.workers]
            handles += [w.process.sentinel for w in self.workers]
            ready = wait(handles, timeout=0.2)
            with self.lock:
                for worker in list(self.workers):
                    if worker.conn in ready:
                        self._receive(worker)
                for worker in list(self.workers):
                    if not worker.process.is_alive():
                        self._replace(worker)
                self._dispatch()
                self._evict()

    def _receive(self, worker: Worker) -> None:
        """Every event waiting on a worker's pipe (none if the worker is gone)."""
        try:
            while worker.conn.poll():
                kind, job_id, payload = worker.conn.recv()
                self._event(worker, kind, self.jobs[job_id], payload)
        except Exception:  # noqa: BLE001 - EOF, or a message torn by a worker's death
            return  # its sentinel says so, and _replace requeues its job

    def _event(self, worker: Worker, kind: str, job: Job, payload: Any) -> None:
        if kind == "started":
            job.status, job.worker_pid = "running", worker.process.pid
            job.attempts += 1
        elif kind == "done":
            job.status, job.result, job.worker_pid = "done", payload, None
            job.finished_at, worker.job_id = time.monotonic(), None
        else:
            code, message = payload
            worker.job_id = None
            self._retry_or_fail(job, message, permanent=code in PERMANENT_EXIT_CODES)

    def _replace(self, worker: Worker) -> None:
        """A dead worker: requeue (or fail) the job it held, close its pipe, start another."""
        self._receive(worker)  # what it sent before dying
        self.workers.remove(worker)
        worker.conn.close()
        job = self.jobs.get(worker.job_id) if worker.job_id else None
        if job is not None and job.status in ("queued", "running"):
            if job.status == "queued":  # dispatched, died before it started
                job.attempts += 1
            code = worker.process.exitcode
            reason = f"worker process {worker.process.pid} died (exit code {code})"
            self._retry_or_fail(job, reason, permanent=False)
        if not self.stopping.is_set():
            self._spawn()

    def _dispatch(self) -> None:
        """Hand pending jobs to idle live workers."""
        for worker in self.workers:
            if not self.pending:
                return
            if worker.job_id is not None or not worker.process.is_alive():
                continue
            job = self.jobs.get(self.pending.popleft())
            if job is None or job.status != "queued":
                continue
            try:
                worker.conn.send((job.id, job.manifest, job.options, job.ids))
            except OSError:
                self.pending.appendleft(job.id)  # it just died; the next round replaces it
                continue
            worker.job_id = job.id

    def _evict(self, now: float | None = None) -> None:
        """Forget finished jobs older than finished_ttl_s, and the oldest beyond
        max_finished."""
        now = time.monotonic() if now is None else now
        finished = sorted(
            (job.finished_at, job.id) for job in self.jobs.values() if job.finished_at is not None
        )
        expired = [i for at, i in finished if now - at > self.cfg.finished_ttl_s]
        beyond = [i for _, i in finished[: max(0, len(finished) - self.cfg.max_finished)]]
        for job_id in {*expired, *beyond}:
            del self.jobs[job_id]
