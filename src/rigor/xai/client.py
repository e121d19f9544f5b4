"""Submit an xai job to a running worker and wait for it (``scripts/xai.py --worker URL``)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from rigor.errors import RigorError, UsageError

TOKEN_ENV = "RIGOR_XAI_TOKEN"


def submit_and_wait(
    url: str,
    manifest: Path,
    options: dict[str, Any],
    ids: list[str] | None,
    timeout_s: float = 3600,
) -> str:
    """POST the job (honouring 429 Retry-After), poll GET /jobs/{id}; return the summary path."""
    import httpx

    token = os.environ.get(TOKEN_ENV, "")
    if not token:
        raise UsageError(f"set {TOKEN_ENV} to the worker's bearer token")
    headers = {"Authorization": f"Bearer {token}"}
    body = {"manifest": str(manifest.resolve()), "options": options, "ids": ids}
    deadline = time.monotonic() + timeout_s
    with httpx.Client(base_url=url, headers=headers, timeout=30) as client:
        while True:
            response = client.post("/jobs", json=body)
            if response.status_code != 429:
                break
            time.sleep(float(response.headers.get("Retry-After", "1")))
        if response.status_code != 202:
            raise UsageError(f"worker refused the job ({response.status_code}): {response.text}")
        job_id = response.json()["id"]
        while time.monotonic() < deadline:
            job = client.get(f"/jobs/{job_id}").json()
            if job["status"] == "done":
                return str(job["result"])
            if job["status"] == "failed":
                raise RigorError(
                    f"xai job {job_id} failed after {job['attempts']} attempt(s): {job['error']}"
                )
            time.sleep(0.5)
    raise RigorError(f"xai job {job_id} did not finish within {timeout_s:.0f} s")
