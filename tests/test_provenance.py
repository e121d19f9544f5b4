"""Provenance outside and inside a git checkout, runtime versions, run ids."""

from __future__ import annotations

import subprocess
from pathlib import Path

from rigor.manifest.provenance import git_info, provenance, runtime_info
from rigor.manifest.rundir import create_run_dir


def test_outside_git_gives_nulls(tmp_path: Path) -> None:
    assert git_info(tmp_path) == {"commit": None, "is_dirty": None, "remote": None}


def test_inside_git_reports_commit_dirty_and_remote(tmp_path: Path) -> None:
    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=tmp_path, check=True, capture_output=True, text=True
        ).stdout

    git("init", "-q")
    git("-c", "user.email=a@b", "-c", "user.name=a", "commit", "-q", "--allow-empty", "-m", "x")
    info = git_info(tmp_path)
    assert info["commit"] == git("rev-parse", "HEAD").strip() and info["is_dirty"] is False
    assert info["remote"] is None
    (tmp_path / "new.py").write_text("x = 1\n")
    git("remote", "add", "origin", "https://example.invalid/rigor.git")
    info = git_info(tmp_path)
    assert info["is_dirty"] is True and info["remote"] == "https://example.invalid/rigor.git"


def test_runtime_and_provenance_fields() -> None:
    import torch

    runtime = runtime_info()
    assert runtime["torch"] == "2.14.1" and runtime["python"].startswith("3.")
    assert runtime["cuda"] == torch.version.cuda
    record = provenance(seed=7, determinism=True, device="cpu")
    assert record["seed"] == 7 and record["determinism"] is True and record["hostname"]
    assert record["command"][0].endswith("python") or "python" in record["command"][0]


def test_run_ids_never_reused_in_the_same_second(tmp_path: Path) -> None:
    ids = [create_run_dir(tmp_path, "exp", "ab" * 32)[0] for _ in range(5)]
    assert len(set(ids)) == 5
    assert all(run_id.split("-")[1:3] == ["exp", "abababab"] for run_id in ids)
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == sorted(ids)
