"""The XAI worker service, started on 127.0.0.1 inside the test (real uvicorn, real processes)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import ROOT, SMOKE

from rigor.config import load_config
from rigor.training.run import train

pytestmark = pytest.mark.smoke
TOKEN = "test-token-0123456789"
CHEAP = {"method": "saliency", "n_samples": 2, "randomization": False}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("worker_results")
    train(
        load_config(
            SMOKE, sets=[f"run.output_root={out}", "logging.tensorboard=false"], environ={}
        ),
        "ignore",
    )
    return out


@pytest.fixture(scope="module")
def manifest(root: Path) -> Path:
    return next(root.glob("runs/*/manifest.json"))


def start_server(root: Path) -> tuple[subprocess.Popen[bytes], str]:
    """A worker service on a free port, once /health shows its two workers."""
    port = free_port()
    sets = [
        f"xai.worker.port={port}",
        f"xai.worker.results_root={root}",
        "xai.worker.queue_size=16",
        "xai.worker.workers=2",
        "xai.worker.backoff_s=0.2",
        "xai.worker.max_retries=2",
    ]
    cmd = [os.sys.executable, "scripts/xai_worker.py", *[a for s in sets for a in ("--set", s)]]  # type: ignore[attr-defined]
    env = {**os.environ, "RIGOR_XAI_TOKEN": TOKEN}
    proc = subprocess.Popen(
        cmd,
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/health", timeout=1).json()["workers"] == 2:
                break
        except httpx.HTTPError:
            time.sleep(0.2)
    else:
        proc.kill()
        pytest.fail(f"worker did not start: {proc.stderr.read().decode() if proc.stderr else ''}")
    return proc, url


@pytest.fixture(scope="module")
def server(root: Path) -> Iterator[str]:
    proc, url = start_server(root)
    yield url
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=20)


def auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKEN}"}


def wait(url: str, job_ids: list[str], timeout: float = 240) -> dict[str, dict]:
    deadline = time.monotonic() + timeout
    states: dict[str, dict] = {}
    with httpx.Client(base_url=url, headers=auth(), timeout=10) as client:
        while time.monotonic() < deadline:
            states = {j: client.get(f"/jobs/{j}").json() for j in job_ids}
            if all(s["status"] in ("done", "failed") for s in states.values()):
                return states
            time.sleep(0.3)
    pytest.fail(f"jobs unfinished: {[s['status'] for s in states.values()]}")


def xai_job_ids(manifest: Path) -> list[str]:
    stages = json.loads(manifest.read_text())["stages"]
    return [
        s["options"]["job_id"] for s in stages if s["name"] == "xai" and s["options"].get("job_id")
    ]


@pytest.mark.slow
def test_200_concurrent_submissions_against_a_queue_of_16(server: str, manifest: Path) -> None:
    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server, headers=auth(), timeout=60) as client:
            body = {"manifest": str(manifest), "options": CHEAP}
            return await asyncio.gather(*[client.post("/jobs", json=body) for _ in range(200)])

    before = set(xai_job_ids(manifest))
    responses = asyncio.run(burst())
    codes = [r.status_code for r in responses]
    assert set(codes) <= {202, 429} and codes.count(429) > 0 and codes.count(202) >= 16
    assert all(r.headers.get("Retry-After") for r in responses if r.status_code == 429)
    accepted = [r.json()["id"] for r in responses if r.status_code == 202]
    states = wait(server, accepted)
    assert all(s["status"] == "done" and s["attempts"] == 1 for s in states.values())
    recorded = [j for j in xai_job_ids(manifest) if j not in before]
    assert sorted(recorded) == sorted(accepted)  # every accepted job ran exactly once
    from rigor.manifest import load_manifest, verify_manifest

    verify_manifest(load_manifest(manifest), manifest.parent)


@pytest.mark.slow
def test_a_worker_killed_mid_job_is_retried_and_completes(server: str, manifest: Path) -> None:
    slow = {
        "method": "integrated_gradients",
        "n_samples": 100,
        "randomization": True,
        "ig_steps": 128,
    }
    with httpx.Client(base_url=server, headers=auth(), timeout=10) as client:
        job = client.post("/jobs", json={"manifest": str(manifest), "options": slow}).json()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            state = client.get(f"/jobs/{job['id']}").json()
            if state["status"] == "running" and state["worker_pid"]:
                break
            time.sleep(0.05)
        os.kill(state["worker_pid"], signal.SIGKILL)
    final = wait(server, [job["id"]])[job["id"]]
    assert final["status"] == "done" and final["attempts"] == 2
    assert "died" in final["history"][0]
    assert xai_job_ids(manifest).count(job["id"]) == 1
    assert httpx.get(f"{server}/health").json()["workers"] == 2  # the dead worker was replaced


def test_tokens(server: str, manifest: Path) -> None:
    body = {"manifest": str(manifest), "options": CHEAP}
    assert httpx.post(f"{server}/jobs", json=body).status_code == 401
    wrong = {"Authorization": "Bearer not-the-token"}
    assert httpx.post(f"{server}/jobs", json=body, headers=wrong).status_code == 401
    assert httpx.get(f"{server}/jobs/x", headers=wrong).status_code == 401
    assert httpx.get(f"{server}/jobs/unknown", headers=auth()).status_code == 404


def test_paths_outside_the_results_root(
    server: str, manifest: Path, root: Path, tmp_path: Path
) -> None:
    outside = tmp_path / "elsewhere" / "manifest.json"
    outside.parent.mkdir()
    outside.write_text(manifest.read_text())
    link = root / "runs" / "link"
    link.symlink_to(outside.parent)
    for path in (
        str(outside),
        f"{root}/runs/../../{outside.relative_to(tmp_path.parent)}",
        str(link / "manifest.json"),
    ):
        response = httpx.post(
            f"{server}/jobs", json={"manifest": path, "options": CHEAP}, headers=auth()
        )
        assert response.status_code == 400, path
        assert "outside the results root" in response.json()["detail"]
    bad_option = {"manifest": str(manifest), "options": {"method": "magic"}}
    assert httpx.post(f"{server}/jobs", json=bad_option, headers=auth()).status_code == 400


@pytest.mark.slow
def test_an_idle_worker_killed_is_replaced_and_the_queue_goes_on(
    server: str, manifest: Path
) -> None:
    victim = httpx.get(f"{server}/health").json()["pids"][0]
    os.kill(victim, signal.SIGKILL)  # idle: with a shared queue this stalled every job
    with httpx.Client(base_url=server, headers=auth(), timeout=10) as client:
        body = {"manifest": str(manifest), "options": CHEAP}
        jobs = [client.post("/jobs", json=body).json()["id"] for _ in range(3)]
    states = wait(server, jobs, timeout=120)
    assert all(s["status"] == "done" for s in states.values())
    health = httpx.get(f"{server}/health").json()
    assert health["workers"] == 2 and victim not in health["pids"]


def test_bodies_are_bounded_and_authentication_comes_first(server: str) -> None:
    import psutil

    port = int(server.rsplit(":", 1)[1])
    (pid,) = {c.pid for c in psutil.net_connections("tcp") if c.laddr.port == port and c.pid}
    before = psutil.Process(pid).memory_info().rss
    huge = b"x" * (64 * 2**20)
    response = httpx.post(f"{server}/jobs", content=huge, timeout=60)  # no token
    assert response.status_code == 401
    response = httpx.post(f"{server}/jobs", content=huge, headers=auth(), timeout=60)
    assert response.status_code == 413 and "body over 65536 bytes" in response.json()["detail"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it streams
        for _ in range(64):
            yield b"x" * 2**20

    response = httpx.post(f"{server}/jobs", content=chunks(), headers=auth(), timeout=60)
    assert response.status_code == 413
    assert psutil.Process(pid).memory_info().rss - before < 32 * 2**20  # nothing buffered


def test_short_tokens_are_refused_and_finished_jobs_are_evicted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from rigor.errors import UsageError
    from rigor.xai.service import Job, Service
    from rigor.xai.worker import _defaults, read_token

    cfg = load_config(SMOKE, environ={}).config.xai.worker
    monkeypatch.setenv(cfg.token_env, "short-token")
    with pytest.raises(UsageError, match="11 characters long; the worker needs at least 16"):
        read_token(cfg)
    assert _defaults()["worker"]["max_body_bytes"] == 65536
    small = cfg.model_copy(update={"finished_ttl_s": 10.0, "max_finished": 2})
    service = Service(small)
    for i, (status, at) in enumerate(
        [("done", 0.0), ("failed", 5.0), ("done", 6.0), ("done", 8.0), ("running", None)]
    ):
        service.jobs[f"j{i}"] = Job(f"j{i}", "m", {}, None, status=status, finished_at=at)
    service._evict(now=12.0)  # j0 expired; of j1, j2, j3 the oldest goes past max_finished
    assert sorted(service.jobs) == ["j2", "j3", "j4"]


@pytest.mark.slow
def test_a_server_killed_with_sigkill_leaves_no_orphans(root: Path) -> None:
    import psutil

    proc, url = start_server(root)
    pids = httpx.get(f"{url}/health").json()["pids"]
    assert len(pids) == 2
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and any(psutil.pid_exists(p) for p in pids):
        time.sleep(0.2)
    alive = [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"]
    assert alive == []
