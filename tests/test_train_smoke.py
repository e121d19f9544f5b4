"""End to end: train on smoke.yaml through the real CLI, then check what it wrote."""

from __future__ import annotations

import csv
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT, SMOKE

from rigor.manifest import load_manifest, verify_manifest

pytestmark = pytest.mark.smoke

EXPECTED_FILES = {
    "manifest.json",
    "config.yaml",
    "config_raw.json",
    "config_resolved.json",
    "splits.json",
    "metrics.json",
    "checkpoints/best.pt",
    "checkpoints/last.pt",
    "predictions/val_select.npz",
    "predictions/val_calib.npz",
    "predictions/val_test.npz",
    "logs/steps.jsonl",
    "logs/epochs.csv",
}


def test_cli_train_writes_a_valid_complete_run(tmp_path: Path, python: str) -> None:
    out = tmp_path / "results"
    cmd = [python, "scripts/train.py", "--config", str(SMOKE), "--set", f"run.output_root={out}"]
    result = subprocess.run(
        cmd, cwd=ROOT, capture_output=True, text=True, env={"PATH": "/usr/bin", "CI": "1"}
    )
    assert result.returncode == 0, result.stderr
    manifest_path = Path(result.stdout.strip())
    run = manifest_path.parent
    assert run.parent == out / "runs"
    files = {str(p.relative_to(run)) for p in run.rglob("*") if p.is_file()}
    assert files >= EXPECTED_FILES
    assert {f for f in files if not f.startswith("logs/tb/")} == EXPECTED_FILES
    assert any(f.startswith("logs/tb/events.out.tfevents") for f in files)

    manifest = load_manifest(manifest_path)
    verify_manifest(manifest, run)
    assert set(manifest["sha256"]) == files - {"manifest.json"}
    assert manifest["run_id"] == run.name and manifest["dataset"]["name"] == "digits"
    assert sum(manifest["dataset"]["split"]["sizes"].values()) == 1797
    assert manifest["encoder"] == {"arch": "cnn_small", "dim": 16, "weights": None}
    assert manifest["transforms"]["normalize"] is True and len(manifest["transforms"]["mean"]) == 1
    assert manifest["env_lock"]["name"].endswith("locks/requirements.lock")
    assert manifest["environment"]["mismatches"] == []
    assert [s["name"] for s in manifest["stages"]] == ["train"]

    resolved = json.loads((run / "config_resolved.json").read_text())
    assert resolved["run"]["output_root"] == str(out) and resolved["training"]["epochs"] == 2
    raw = json.loads((run / "config_raw.json").read_text())
    assert raw["run"]["output_root"] == "results"  # as composed, before --set


def test_logs_follow_the_schedule_and_metric_keys(smoke_manifest: Path) -> None:
    run = smoke_manifest.parent
    rows = [json.loads(line) for line in (run / "logs" / "steps.jsonl").read_text().splitlines()]
    # smoke: 2 epochs x 5 steps, a row every 2 steps and at each epoch's last step
    assert [row["step"] for row in rows] == [2, 4, 5, 6, 8, 10]
    assert {"loss/train", "loss/digit/train", "lr", "grad_norm", "samples_per_s"} <= set(rows[0])
    # cosine: 0.5 epoch = round(2.5) = 2 warmup steps, peak 3e-3, floor 1%; row s used step s-1
    cosine = [0.01 + 0.99 * 0.5 * (1 + np.cos(np.pi * k / 8)) for k in (1, 2, 3, 5, 7)]
    expected = [3e-3 * factor for factor in [1.0, *cosine]]
    assert [row["lr"] for row in rows] == pytest.approx(expected)
    with open(run / "logs" / "epochs.csv") as handle:
        epochs = list(csv.DictReader(handle))
    assert [int(row["epoch"]) for row in epochs] == [0, 1]
    assert {"acc/val_select", "loss/val_select", "acc/digit/val_select", "loss/train"} <= set(
        epochs[0]
    )
    assert all(0 < float(row["loss/train"]) < 10 for row in epochs)  # a per-epoch mean, not blank


def test_predictions_match_the_best_checkpoint(smoke_manifest: Path) -> None:
    run = smoke_manifest.parent
    manifest = json.loads(smoke_manifest.read_text())
    splits = json.loads((run / "splits.json").read_text())
    for split in ("val_select", "val_calib", "val_test"):
        data = np.load(run / "predictions" / f"{split}.npz")
        assert list(data["ids"]) == splits["splits"][split]
        assert data["logits_digit"].shape == (len(data["ids"]), 10)
        acc = float((data["logits_digit"].argmax(1) == data["targets_digit"]).mean())
        assert acc == pytest.approx(manifest["metrics"][f"acc/{split}"], abs=1e-6)
    best = torch.load(run / "checkpoints" / "best.pt", weights_only=True)
    assert manifest["metrics"]["best/acc/val_select"] == pytest.approx(best["best_metric"])


def test_typo_in_experiment_exits_2_and_writes_nothing(tmp_path: Path, python: str) -> None:
    exp = tmp_path / "configs" / "experiment" / "typo.yaml"
    exp.parent.mkdir(parents=True)
    default = os.path.relpath(ROOT / "configs" / "default.yaml", exp.parent)
    exp.write_text(f"defaults:\n  - {default}\ntraining:\n  lrr: 0.1\n")
    out = tmp_path / "results"
    cmd = [python, "scripts/train.py", "--config", str(exp), "--set", f"run.output_root={out}"]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 2
    assert "training.lrr: unknown key" in result.stderr and "typo.yaml" in result.stderr
    assert "Traceback" not in result.stderr
    assert not out.exists()
    debug = subprocess.run([*cmd, "--debug"], cwd=ROOT, capture_output=True, text=True)
    assert debug.returncode == 2 and "Traceback" in debug.stderr


def test_same_seed_gives_identical_weights(tmp_path: Path) -> None:
    from rigor.config import load_config
    from rigor.training.run import train

    states = []
    for name in ("a", "b"):
        resolved = load_config(SMOKE, sets=[f"run.output_root={tmp_path / name}"], environ={})
        manifest = train(resolved, env_policy="ignore")
        states.append(
            torch.load(manifest.parent / "checkpoints" / "last.pt", weights_only=True)["model"]
        )
    assert states[0].keys() == states[1].keys()
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
