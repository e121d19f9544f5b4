"""Crash-safe resume: a real training subprocess killed with SIGKILL mid-epoch, then resumed."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from conftest import ROOT, SMOKE, assert_same_checkpoints

# 8 epochs of 34 steps, checkpoints every 5 steps, dropout and EMA so RNG and EMA state matter.
DIGITS = [
    "--config",
    str(SMOKE),
    "--env-policy",
    "ignore",
    "--set",
    "training.max_steps_per_epoch=null",
    "--set",
    "training.epochs=8",
    "--set",
    "training.checkpoint_every_n_steps=5",
    "--set",
    "training.ema_decay=0.9",
    "--set",
    "model.dropout=0.3",
]
# Tiles (RGB) through 2 DataLoader workers with every augmentation on: 3 epochs of 18 steps.
AUGMENTED = [
    "--config",
    str(ROOT / "configs" / "experiment" / "tiles_genes.yaml"),
    "--env-policy",
    "ignore",
    "--set",
    "training.epochs=3",
    "--set",
    "training.batch_size=32",
    "--set",
    "training.checkpoint_every_n_steps=5",
    "--set",
    "model.channels=[8, 16]",
    "--set",
    "logging.log_every_n_steps=2",
    "--set",
    "data.num_workers=2",
    "--set",
    "data.transforms.augment.random_resized_crop={scale: [0.5, 1.0], ratio: [0.75, 1.333]}",
    "--set",
    "data.transforms.augment.hflip=0.5",
    "--set",
    "data.transforms.augment.vflip=0.5",
    "--set",
    "data.transforms.augment.rot90=true",
    "--set",
    "data.transforms.augment.color_jitter="
    "{brightness: 0.2, contrast: 0.2, saturation: 0.2, hue: 0.05}",
    "--set",
    "data.transforms.augment.hed={sigma: 0.05, bias: 0.02}",
]
VARIANTS = {
    "digits": (DIGITS, 50, list(range(2, 8 * 34 + 1, 2))),
    "tiles_augmented_2_workers": (AUGMENTED, 25, list(range(2, 3 * 18 + 1, 2))),
}


def train_cmd(python: str, out: Path, args: list[str], *extra: str) -> list[str]:
    return [python, "scripts/train.py", *args, "--set", f"run.output_root={out}", *extra]


def kill_mid_epoch(python: str, out: Path, at_step: int, args: list[str]) -> int:
    """Start a run, SIGKILL it once its step log reaches ``at_step``; return that step."""
    proc = subprocess.Popen(
        train_cmd(python, out, args), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 120
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            logs = list(out.glob("runs/*/logs/steps.jsonl"))
            lines = logs[0].read_text().splitlines() if logs else []
            if lines and lines[-1].endswith("}") and json.loads(lines[-1])["step"] >= at_step:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
                return int(json.loads(lines[-1])["step"])
            time.sleep(0.002)
    finally:
        if proc.poll() is None:
            proc.kill()
    pytest.fail("the run ended before it could be killed")


def read_epochs(run: Path) -> list[dict[str, str]]:
    with open(run / "logs" / "epochs.csv") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.slow
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_sigkill_mid_epoch_then_resume_is_bitwise_identical(
    tmp_path: Path, python: str, variant: str
) -> None:
    args, kill_at, logged_steps = VARIANTS[variant]
    straight = subprocess.run(
        train_cmd(python, tmp_path / "a", args), cwd=ROOT, capture_output=True, text=True
    )
    assert straight.returncode == 0, straight.stderr
    killed_at = kill_mid_epoch(python, tmp_path / "b", kill_at, args)
    run_b = next((tmp_path / "b" / "runs").iterdir())
    assert not (run_b / "manifest.json").exists()
    state = torch.load(run_b / "checkpoints" / "last.pt", weights_only=True)
    assert state["position"] > 0 and state["step"] <= killed_at  # a mid-epoch checkpoint
    resumed = subprocess.run(
        train_cmd(python, tmp_path / "b", args, "--resume", "auto"),
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert Path(resumed.stdout.strip()).parent == run_b  # the same run folder, continued

    run_a = Path(straight.stdout.strip()).parent
    assert_same_checkpoints(run_a, run_b)
    manifest_a = json.loads((run_a / "manifest.json").read_text())
    manifest_b = json.loads((run_b / "manifest.json").read_text())
    assert manifest_a["metrics"] == manifest_b["metrics"]
    assert manifest_b["stages"][0]["summary"]["resumed_from"]["step"] == state["step"]
    for split in ("val_select", "val_calib", "val_test"):
        assert (
            manifest_a["sha256"][f"predictions/{split}.npz"]
            == manifest_b["sha256"][f"predictions/{split}.npz"]
        )
    assert read_epochs(run_a) == read_epochs(run_b)
    steps = [
        json.loads(line)["step"]
        for line in (run_b / "logs" / "steps.jsonl").read_text().splitlines()
    ]
    assert steps == logged_steps  # no duplicated or missing rows after the replay


def test_resume_refuses_another_config_unless_forced(
    tmp_path: Path, run_script: Callable[..., int]
) -> None:
    out = tmp_path / "out"
    base = ["--config", str(SMOKE), "--env-policy", "ignore", "--set", f"run.output_root={out}"]
    assert run_script("train", *base) == 0
    run = next((out / "runs").iterdir())
    (run / "manifest.json").unlink()  # make it look unfinished
    assert run_script("train", *base, "--set", "training.lr=0.1", "--resume", str(run)) == 2
    assert (
        run_script("train", *base, "--set", "training.lr=0.1", "--resume", str(run), "--force") == 0
    )
    assert run_script("train", *base, "--resume", str(run)) == 2  # completed now: refused
    assert run_script("train", *base, "--resume", str(tmp_path / "nowhere.pt")) == 2


def test_resume_auto_without_unfinished_run_starts_fresh(
    tmp_path: Path, run_script: Callable[..., int], capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    assert (
        run_script(
            "train",
            "--config",
            str(SMOKE),
            "--env-policy",
            "ignore",
            "--set",
            f"run.output_root={out}",
            "--resume",
            "auto",
        )
        == 0
    )
    assert "starting fresh" in capsys.readouterr().err
    assert len(list((out / "runs").iterdir())) == 1
