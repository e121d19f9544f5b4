"""torchrun: two real processes (gloo on CPU) train like one process with the same global batch."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import ROOT, SMOKE, assert_same_checkpoints

from rigor.config import load_config
from rigor.training.run import train
from rigor.training.seeding import EpochSampler

# A tiny DINOv3 with no dropout and no BatchNorm: with the same seed its updates do not depend
# on how the global batch is split across processes.
TINY = [
    "model.backbone=dinov3_vit",
    "model.hf.hidden_size=16",
    "model.hf.num_layers=1",
    "model.hf.num_heads=2",
    "model.hf.intermediate_size=32",
    "model.hf.patch_size=4",
    "model.hf.num_register_tokens=0",
    "model.dropout=0",
    "training.max_steps_per_epoch=8",
    "logging.tensorboard=false",
]


def torchrun_cmd(out: Path, *sets: str, extra: tuple[str, ...] = ()) -> list[str]:
    args = [a for s in sets for a in ("--set", s)]
    out.mkdir(parents=True, exist_ok=True)
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(ROOT / "scripts" / "train.py"),
        "--config",
        str(SMOKE),
        "--set",
        f"run.output_root={out}",
        "--env-policy",
        "ignore",
        *args,
        *extra,
    ]


def torchrun(out: Path, *sets: str) -> subprocess.CompletedProcess[str]:
    command = torchrun_cmd(out, *sets)
    return subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=out)


def test_sampler_shards_make_up_the_single_process_batches() -> None:
    single = EpochSampler(11, seed=3).order()
    shards = [EpochSampler(11, seed=3, rank=r, world=2).order() for r in range(2)]
    assert [len(s) for s in shards] == [6, 6]  # padded by wrapping to a multiple of 2
    per_rank = 2
    for i in range(3):  # batch i of both ranks together = batch i of one process (size 4)
        together = (
            shards[0][per_rank * i : per_rank * (i + 1)]
            + shards[1][per_rank * i : per_rank * (i + 1)]
        )
        assert sorted(together) == sorted((single + single[:1])[4 * i : 4 * (i + 1)])


@pytest.mark.slow
def test_two_processes_match_one_process(tmp_path: Path) -> None:
    result = torchrun(tmp_path / "ddp", *TINY)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1  # rank 0 alone prints the manifest path
    ddp_manifest = Path(lines[0])
    assert len(list((tmp_path / "ddp" / "runs").iterdir())) == 1
    single_manifest = train(
        load_config(SMOKE, sets=[f"run.output_root={tmp_path / 'one'}", *TINY], environ={}),
        env_policy="ignore",
    )
    a = torch.load(single_manifest.parent / "checkpoints" / "last.pt", weights_only=True)["model"]
    b = torch.load(ddp_manifest.parent / "checkpoints" / "last.pt", weights_only=True)["model"]
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-5, rtol=0), key
    one, two = (json.loads(p.read_text()) for p in (single_manifest, ddp_manifest))
    assert two["stages"][0]["summary"]["distributed"] == {"world_size": 2, "backend": "gloo"}
    assert one["stages"][0]["summary"]["distributed"] == {"world_size": 1, "backend": None}
    assert two["stages"][0]["summary"]["steps"] == one["stages"][0]["summary"]["steps"] == 16
    for key, value in one["metrics"].items():
        assert two["metrics"][key] == pytest.approx(value, abs=1e-4), key
    # each epoch logged once, with the train loss averaged over both processes
    rows = (ddp_manifest.parent / "logs" / "epochs.csv").read_text().splitlines()
    assert len(rows) == 3
    ref = (single_manifest.parent / "logs" / "epochs.csv").read_text().splitlines()
    loss_one = float(ref[1].split(",")[2])
    assert float(rows[1].split(",")[2]) == pytest.approx(loss_one, rel=1e-4)


@pytest.mark.slow
def test_global_batch_must_split_evenly(tmp_path: Path) -> None:
    result = torchrun(tmp_path / "out", "training.batch_size=31", "training.min_batch_size=1")
    assert result.returncode != 0
    assert "training.batch_size (31) must be a multiple of the number of processes (2)" in (
        result.stderr
    )
    assert not (tmp_path / "out" / "runs").exists()


# 4 epochs of 17 steps (global batch 64 = 2 x 32), a checkpoint every 5 steps, dropout and EMA.
RESUMABLE = (
    "training.max_steps_per_epoch=null",
    "training.epochs=4",
    "training.batch_size=64",
    "training.checkpoint_every_n_steps=5",
    "training.ema_decay=0.9",
    "model.dropout=0.3",
    "logging.tensorboard=false",
)


def kill_everything_writing_to(out: Path) -> None:
    """SIGKILL the launcher and every worker whose command line names ``out`` (torchrun puts
    its workers in their own sessions, so killing the launcher's group is not enough)."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if f"run.output_root={out}" in cmdline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(proc.name), signal.SIGKILL)


@pytest.mark.slow
def test_a_killed_torchrun_run_resumes_to_the_same_result(tmp_path: Path) -> None:
    straight = subprocess.run(
        torchrun_cmd(tmp_path / "a", *RESUMABLE), capture_output=True, text=True, timeout=300
    )
    assert straight.returncode == 0, straight.stderr[-2000:]
    # kill the whole torchrun job (launcher and both workers) mid-epoch
    job = subprocess.Popen(
        torchrun_cmd(tmp_path / "b", *RESUMABLE),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 180
    try:
        while job.poll() is None and time.monotonic() < deadline:
            logs = list((tmp_path / "b").glob("runs/*/logs/steps.jsonl"))
            lines = logs[0].read_text().splitlines() if logs else []
            if lines and lines[-1].endswith("}") and json.loads(lines[-1])["step"] >= 28:
                kill_everything_writing_to(tmp_path / "b")
                job.wait()
                break
            time.sleep(0.002)
        else:
            pytest.fail("the run ended before it could be killed")
    finally:
        kill_everything_writing_to(tmp_path / "b")
    run_b = next((tmp_path / "b" / "runs").iterdir())
    assert not (run_b / "manifest.json").exists()
    state = torch.load(run_b / "checkpoints" / "last.pt", weights_only=True)
    assert state["world_size"] == 2 and state["position"] > 0  # a mid-epoch checkpoint
    resumed = subprocess.run(
        torchrun_cmd(tmp_path / "b", *RESUMABLE, extra=("--resume", "auto")),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert Path(resumed.stdout.strip()).parent == run_b
    run_a = Path(straight.stdout.strip()).parent
    assert_same_checkpoints(run_a, run_b)
    one, two = (json.loads((r / "manifest.json").read_text()) for r in (run_a, run_b))
    assert one["metrics"] == two["metrics"]
    # a single process may not continue a two-process mid-epoch checkpoint
    (run_b / "manifest.json").unlink()
    torch.save(state, run_b / "checkpoints" / "last.pt")
    single = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "train.py"),
            "--config",
            str(SMOKE),
            "--env-policy",
            "ignore",
            "--set",
            f"run.output_root={tmp_path / 'b'}",
            *[a for x in RESUMABLE for a in ("--set", x)],
            "--resume",
            str(run_b),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert single.returncode == 2
    assert "resume it with the same number of processes" in single.stderr
