"""The optional parallel XAI service: a FastAPI app in front of worker processes.

Jobs are ``{"manifest": path, "options": {xai overrides}, "ids": [...]}``. The service:

- admits at most ``xai.worker.queue_size`` waiting jobs; beyond that it answers 429 with a
  Retry-After header;
- runs jobs in ``xai.worker.workers`` separate processes, each calling the same
  :func:`rigor.xai.stage.explain` as the CLI, so results land in the run folder exactly as
  the CLI writes them;
- retries a job whose process died, or that failed with a transient error, after
  ``backoff_s * 2**(attempt - 1)`` seconds, up to ``max_retries`` times, then marks it failed
  with the error; bad input (exit codes 2, 3, 5) fails at once;
- records the job id in the stage entry and skips a job whose id is already recorded, so a
  job interrupted after writing is never applied twice; jobs on the same run take a file lock;
- requires ``Authorization: Bearer <token>`` (token from ``xai.worker.token_env`` or
  ``token_file``, compared in constant time; 401 otherwise) and accepts only manifests that
  resolve, symlinks followed, inside ``xai.worker.results_root`` (400 otherwise).
"""

from __future__ import annotations

import fcntl
import hmac
import math
import multiprocessing as mp
import os
import queue
import threading
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict

from rigor.config import apply_overrides
from rigor.config.models import XaiConfig, XaiWorkerConfig
from rigor.errors import ConfigError, RigorError, UsageError

PERMANENT_EXIT_CODES = {2, 3, 5}


def read_token(cfg: XaiWorkerConfig) -> str:
    """The bearer token from the environment variable, else the file; UsageError if neither."""
    token = os.environ.get(cfg.token_env, "").strip()
    if not token and cfg.token_file:
        path = Path(cfg.token_file)
        if not path.is_file():
            raise UsageError(f"xai.worker.token_file: not found: {path}")
        token = path.read_text().strip()
    if not token:
        raise UsageError(
            f"no token: set the environment variable {cfg.token_env} or xai.worker.token_file; "
            "the worker never runs without authentication"
        )
    return token


def inside_root(manifest: str, root: Path) -> Path:
    """The manifest's real path if it lies under ``root`` (symlinks followed); else UsageError."""
    real = Path(manifest).resolve()
    if not real.is_relative_to(root.resolve()):
        raise UsageError(
            f"manifest {manifest} resolves to {real}, outside the results root {root.resolve()}"
        )
    if not real.is_file() or real.name != "manifest.json":
        raise UsageError(f"manifest {manifest} is not an existing manifest.json")
    return real


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

    def public(self) -> dict[str, Any]:
        """The JSON of GET /jobs/{id}."""
        return {
            k: getattr(self, k)
            for k in (
                "id",
                "manifest",
                "status",
                "attempts",
                "worker_pid",
                "error",
                "result",
                "history",
            )
        }


def run_job(job_id: str, manifest: str, options: dict[str, Any], ids: list[str] | None) -> str:
    """Run one job in a worker process, once: skip it if its stage entry already exists."""
    from rigor.manifest import load_manifest
    from rigor.xai.stage import explain

    path = Path(manifest)
    lock_path = path.parent / ".xai.lock"
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        done = [s for s in load_manifest(path)["stages"] if s["options"].get("job_id") == job_id]
        if done:
            return str(path.parent / "xai" / "summary.json")
        return str(explain(path, "warn", False, options, ids, job_id=job_id))


def worker_main(tasks: Any, events: Any) -> None:
    """A worker process: take jobs, report start, success or error (with its exit code)."""
    while True:
        item = tasks.get()
        if item is None:
            return
        job_id, manifest, options, ids = item
        events.put(("started", job_id, os.getpid(), None))
        try:
            events.put(("done", job_id, os.getpid(), run_job(job_id, manifest, options, ids)))
        except RigorError as err:
            events.put(
                ("error", job_id, os.getpid(), (err.exit_code, f"{type(err).__name__}: {err}"))
            )
        except Exception as err:  # noqa: BLE001 - reported back to the service, retried there
            events.put(("error", job_id, os.getpid(), (1, f"{type(err).__name__}: {err}")))


class Service:
    """Job store, bounded admission, worker processes and their supervisor."""

    def __init__(self, cfg: XaiWorkerConfig) -> None:
        self.cfg = cfg
        self.root = Path(cfg.results_root)
        self.jobs: dict[str, Job] = {}
        self.lock = threading.Lock()
        context = mp.get_context("spawn")
        self.context = context
        self.tasks: Any = context.Queue()
        self.events: Any = context.Queue()
        self.processes: list[Any] = []
        self.running: dict[int, str] = {}  # pid -> job id
        self.stopping = threading.Event()

    def start(self) -> None:
        """Start the worker processes and the supervisor thread."""
        for _ in range(self.cfg.workers):
            self._spawn()
        threading.Thread(target=self._supervise, daemon=True, name="xai-supervisor").start()

    def stop(self) -> None:
        """Ask workers to finish and stop supervising."""
        self.stopping.set()
        for _ in self.processes:
            self.tasks.put(None)
        for process in self.processes:
            process.join(timeout=5)
            if process.is_alive():
                process.kill()

    def _spawn(self) -> None:
        process = self.context.Process(
            target=worker_main, args=(self.tasks, self.events), daemon=True
        )
        process.start()
        self.processes.append(process)

    def submit(self, manifest: str, options: dict[str, Any], ids: list[str] | None) -> Job | None:
        """Admit a job, or None when the queue is full."""
        with self.lock:
            waiting = sum(job.status == "queued" for job in self.jobs.values())
            if waiting >= self.cfg.queue_size:
                return None
            job = Job(uuid.uuid4().hex, manifest, options, ids)
            self.jobs[job.id] = job
            self._enqueue(job)
        return job

    def _enqueue(self, job: Job) -> None:
        job.status = "queued"
        self.tasks.put((job.id, job.manifest, job.options, job.ids))

    def _retry_or_fail(self, job: Job, reason: str, permanent: bool) -> None:
        job.history.append(reason)
        job.worker_pid = None
        if permanent or job.attempts > self.cfg.max_retries:
            job.status, job.error = "failed", reason
            return
        job.status = "queued"
        delay = self.cfg.backoff_s * 2 ** (job.attempts - 1)
        threading.Timer(
            delay, lambda: self.tasks.put((job.id, job.manifest, job.options, job.ids))
        ).start()

    def _supervise(self) -> None:
        while not self.stopping.is_set():
            try:
                kind, job_id, pid, payload = self.events.get(timeout=0.2)
            except queue.Empty:
                self._reap()
                continue
            with self.lock:
                job = self.jobs[job_id]
                if kind == "started":
                    job.status, job.worker_pid = "running", pid
                    job.attempts += 1
                    self.running[pid] = job_id
                elif kind == "done":
                    job.status, job.result, job.worker_pid = "done", payload, None
                    self.running.pop(pid, None)
                else:
                    code, message = payload
                    self.running.pop(pid, None)
                    self._retry_or_fail(job, message, permanent=code in PERMANENT_EXIT_CODES)

    def _reap(self) -> None:
        """Replace dead workers; requeue (or fail) the job a dead worker was running."""
        with self.lock:
            for process in list(self.processes):
                if process.is_alive():
                    continue
                self.processes.remove(process)
                job_id = self.running.pop(process.pid, None)
                if job_id is not None and self.jobs[job_id].status == "running":
                    reason = f"worker process {process.pid} died (exit code {process.exitcode})"
                    self._retry_or_fail(self.jobs[job_id], reason, permanent=False)
                if not self.stopping.is_set():
                    self._spawn()


class Submission(BaseModel):
    """The body of POST /jobs."""

    model_config = ConfigDict(extra="forbid")
    manifest: str
    options: dict[str, Any] = {}
    ids: list[str] | None = None


def create_app(cfg: XaiWorkerConfig) -> Any:
    """The FastAPI application (workers start with the app and stop with it)."""
    token = read_token(cfg)
    service = Service(cfg)

    @asynccontextmanager
    async def lifespan(app: Any):  # type: ignore[no-untyped-def]
        service.start()
        yield
        service.stop()

    app = FastAPI(title="rigor xai worker", lifespan=lifespan)
    app.state.service = service

    def authorized(request: Request) -> None:
        header = request.headers.get("authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.encode(), token.encode()):
            raise HTTPException(
                401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"}
            )

    @app.post("/jobs", status_code=202, dependencies=[Depends(authorized)])
    def submit(body: Submission) -> Any:
        try:
            manifest = inside_root(body.manifest, service.root)
            allowed = set(XaiConfig.model_fields) - {"worker"}
            unknown = sorted(set(body.options) - allowed)
            if unknown:
                raise UsageError(f"unknown xai options {unknown} (allowed: {sorted(allowed)})")
            apply_overrides(XaiConfig.model_validate(_defaults()), body.options, "xai", "request")
        except (UsageError, ConfigError, ValueError) as err:
            raise HTTPException(400, str(err)) from None
        job = service.submit(str(manifest), body.options, body.ids)
        if job is None:
            retry = max(1, math.ceil(cfg.backoff_s))
            return JSONResponse(
                {"detail": "queue full"}, status_code=429, headers={"Retry-After": str(retry)}
            )
        return job.public()

    @app.get("/jobs/{job_id}", dependencies=[Depends(authorized)])
    def status(job_id: str) -> Any:
        with service.lock:
            job = service.jobs.get(job_id)
            if job is None:
                raise HTTPException(404, f"no job {job_id}")
            return job.public()

    @app.get("/health")
    def health() -> Any:
        return {"workers": sum(p.is_alive() for p in service.processes), "jobs": len(service.jobs)}

    return app


def _defaults() -> dict[str, Any]:
    """The xai defaults of configs/default.yaml (options in a job override them)."""
    from rigor.config import load_config
    from rigor.manifest.env import PROJECT_ROOT

    resolved = load_config(PROJECT_ROOT / "configs" / "default.yaml", environ={})
    return resolved.config.xai.model_dump()


__all__ = ["create_app", "Service", "run_job", "inside_root", "read_token"]
