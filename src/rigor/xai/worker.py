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
  ``token_file``, at least 16 characters, compared in constant time before any of the body
  is read; 401 otherwise), refuses bodies over ``xai.worker.max_body_bytes`` (413), and
  accepts only manifests that resolve, symlinks followed, inside
  ``xai.worker.results_root`` (400 otherwise).

The job store and the worker processes are :mod:`rigor.xai.service`.
"""

from __future__ import annotations

import hmac
import math
import os
from collections.abc import Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict

from rigor.config import apply_overrides
from rigor.config.models import XaiConfig, XaiWorkerConfig
from rigor.errors import ConfigError, UsageError
from rigor.xai.service import Service

MIN_TOKEN = 16
Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


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
    if len(token) < MIN_TOKEN:
        raise UsageError(
            f"the token is {len(token)} characters long; the worker needs at least {MIN_TOKEN} "
            "(e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))')"
        )
    return token


class _TooLarge(HTTPException):
    """Raised while a body streams in past the limit (FastAPI passes HTTPExceptions on)."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"body over {limit} bytes", headers={"Connection": "close"})


class Guard:
    """ASGI middleware in front of every route but /health: the bearer token is checked
    from the headers before a byte of the body is read (401), and a body over
    ``max_body_bytes`` is refused (413): by its Content-Length before reading, or as soon
    as a chunked body passes the limit."""

    def __init__(self, app: Any, token: str, max_body: int) -> None:
        self.app, self.token, self.max_body = app, token.encode(), max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] == "/health":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        scheme, _, given = headers.get(b"authorization", b"").partition(b" ")
        if scheme.lower() != b"bearer" or not hmac.compare_digest(given, self.token):
            await self._refuse(401, "missing or wrong bearer token", scope, receive, send)
            return
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body):
            await self._refuse(413, f"body over {self.max_body} bytes", scope, receive, send)
            return
        seen = 0

        async def counted() -> MutableMapping[str, Any]:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_body:
                raise _TooLarge(self.max_body)
            return message

        await self.app(scope, counted, send)

    @staticmethod
    async def _refuse(code: int, detail: str, scope: Scope, receive: Receive, send: Send) -> None:
        extra = {"WWW-Authenticate": "Bearer"} if code == 401 else {"Connection": "close"}
        await JSONResponse({"detail": detail}, status_code=code, headers=extra)(
            scope, receive, send
        )


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

    @app.post("/jobs", status_code=202)
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

    @app.get("/jobs/{job_id}")
    def status(job_id: str) -> Any:
        with service.lock:
            job = service.jobs.get(job_id)
            if job is None:
                raise HTTPException(404, f"no job {job_id}")
            return job.public()

    @app.get("/health")
    def health() -> Any:
        pids = service.live_workers()
        return {"workers": len(pids), "pids": pids, "jobs": len(service.jobs)}

    app.add_middleware(Guard, token=token, max_body=cfg.max_body_bytes)
    return app


def _defaults() -> dict[str, Any]:
    """The xai defaults of configs/default.yaml (options in a job override them)."""
    from rigor.config import load_config
    from rigor.manifest.env import PROJECT_ROOT

    resolved = load_config(PROJECT_ROOT / "configs" / "default.yaml", environ={})
    return resolved.config.xai.model_dump()


__all__ = ["create_app", "Service", "Guard", "inside_root", "read_token"]
