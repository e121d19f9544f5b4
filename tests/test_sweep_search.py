"""Sweeps that survive and search: continue after a kill, random points from ranges, Optuna."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, SMOKE

from rigor.errors import ConfigError
from rigor.sweep.space import parse_range, sample_points


def test_ranges_parse_with_log_scale_for_learning_rates() -> None:
    assert parse_range("training.lr=1e-4:1e-2").scale == "log"
    assert parse_range("optimizer.weight_decay=1e-5:1e-1").scale == "log"
    assert parse_range("model.dropout=0:0.3").scale == "linear"
    assert parse_range("model.peft.r=4:16:int").scale == "int"
    for bad in ("training.lr=1e-2:1e-4", "training.lr=0:1:log", "x=1", "model.peft.r=1.5:3:int"):
        with pytest.raises(ConfigError):
            parse_range(bad)


def test_random_points_are_seeded_and_log_uniform() -> None:
    ranges = [parse_range("training.lr=1e-4:1e-2"), parse_range("model.peft.r=4:16:int")]
    grid = {"model.peft.method": ["lora", "dora"]}
    points = sample_points(grid, ranges, 3000, seed=7)
    assert points[:5] == sample_points(grid, ranges, 5, seed=7)
    assert points[:5] != sample_points(grid, ranges, 5, seed=8)
    lrs = np.array([p["training.lr"] for p in points])
    assert lrs.min() >= 1e-4 and lrs.max() <= 1e-2
    logs = np.log10(lrs)  # log-uniform: each decade holds half of the points
    assert abs(float(np.mean(logs < -3)) - 0.5) < 0.04
    ranks = {p["model.peft.r"] for p in points}
    assert ranks == set(range(4, 17))
    methods = [p["model.peft.method"] for p in points]
    assert abs(methods.count("lora") / len(methods) - 0.5) < 0.04


def _sweep_cmd(out: Path, *extra: str) -> list[str]:
    args = [sys.executable, "scripts/sweep.py", "--config", str(SMOKE), "--env-policy", "ignore"]
    args += ["--set", f"run.output_root={out}", "--set", "training.max_steps_per_epoch=null"]
    args += ["--set", "training.epochs=3", "--set", "logging.tensorboard=false"]
    return [*args, *extra]


def test_pruning_reads_only_the_epoch_rows_written_whole(tmp_path: Path) -> None:
    """Optuna is told each epoch's monitor from epochs.csv while the run appends to it; a
    row caught half-written is read at the next poll, not as a cut-off number."""
    from rigor.sweep.search import _epoch_values

    logs = tmp_path / "logs"
    logs.mkdir()
    path = logs / "epochs.csv"
    assert _epoch_values(tmp_path, "acc/val_select") == []  # no file yet
    path.write_text("epoch,step,acc/val_select\n0,5,0.5\n1,10,0.9")  # row 1 still arriving
    assert _epoch_values(tmp_path, "acc/val_select") == [0.5]
    path.write_text("epoch,step,acc/val_select\n0,5,0.5\n1,10,0.95\n")
    assert _epoch_values(tmp_path, "acc/val_select") == [0.5, 0.95]
    path.write_text("epoch,step,acc")  # the header itself half-written
    assert _epoch_values(tmp_path, "acc/val_select") == []


@pytest.mark.slow
def test_a_killed_sweep_continues_without_redoing_finished_points(tmp_path: Path) -> None:
    cmd = _sweep_cmd(tmp_path, "--grid", "training.lr=1e-3,3e-3,1e-2")
    proc = subprocess.Popen(
        cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    deadline = time.monotonic() + 300
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            done = list(tmp_path.glob("sweeps/*/points/0.json"))
            running = list(tmp_path.glob("runs/*/checkpoints/last.pt"))
            if done and len(running) >= 2:  # point 0 finished, point 1 has a checkpoint
                points = _point_processes(next((tmp_path / "sweeps").iterdir()).resolve())
                os.killpg(proc.pid, signal.SIGKILL)  # the sweep and its point (each point
                for pid in points:  # has a process group of its own): a machine that died
                    os.killpg(pid, signal.SIGKILL)
                proc.wait()
                break
            time.sleep(0.01)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    folder = next((tmp_path / "sweeps").iterdir())
    assert not (folder / "summary.json").exists()
    first_run = json.loads((folder / "points" / "0.json").read_text())["manifest"]
    runs_before = {p.name for p in (tmp_path / "runs").iterdir()}

    again = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert f"sweep {folder.name}: continuing; 1 of 3 points finished, 2 to run" in again.stderr
    assert [p.name for p in (tmp_path / "sweeps").iterdir()] == [folder.name]  # same sweep
    summary = json.loads((folder / "summary.json").read_text())
    assert [p["status"] for p in summary["points"]] == ["ok", "ok", "ok"]
    assert summary["points"][0]["manifest"] == first_run  # not trained again
    new_runs = {p.name for p in (tmp_path / "runs").iterdir()} - runs_before
    assert len(new_runs) == 1  # point 1 continued its own run folder; only point 2 is new
    assert "resuming from" in (folder / "logs" / "1.log").read_text()

    third = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert third.returncode == 0 and "3 of 3 points finished, 0 to run" in third.stderr


@pytest.mark.slow
def test_optuna_search_stores_its_study_and_continues_it(tmp_path: Path) -> None:
    import optuna

    cmd = _sweep_cmd(tmp_path, "--range", "training.lr=1e-3:1e-1", "--optuna", "3", "--seed", "2")
    cmd += ["--grid", "model.dropout=0.0,0.2"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr
    folder = next((tmp_path / "sweeps").iterdir())
    study = optuna.load_study(study_name="sweep", storage=f"sqlite:///{folder / 'optuna.db'}")
    finished = [t for t in study.trials if t.state.name in ("COMPLETE", "PRUNED")]
    assert len(finished) == 3
    summary = json.loads((folder / "summary.json").read_text())
    assert len(summary["points"]) == 3 and (folder / "summary.png").is_file()
    for point, trial in zip(summary["points"], study.trials, strict=True):
        assert math.isclose(point["overrides"]["training.lr"], trial.params["training.lr"])
        if point["status"] == "ok":  # Optuna saw the run's best val_select value
            assert trial.value == pytest.approx(point["metrics"]["best/acc/val_select"])
    best = study.best_trial
    assert summary["optuna"]["best_trial"] == best.number
    assert best.value == max(
        p["metrics"]["best/acc/val_select"] for p in summary["points"] if p["status"] == "ok"
    )
    again = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0
    assert (
        len(
            optuna.load_study(
                study_name="sweep", storage=f"sqlite:///{folder / 'optuna.db'}"
            ).trials
        )
        == 3
    )


def _point_processes(folder: Path) -> list[int]:
    """Pids of processes still running a point of the sweep in ``folder``."""
    import psutil

    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if "rigor.sweep.job" in cmdline and str(folder) in cmdline:
            found.append(proc.info["pid"])
    return found


def _wait_for(predicate, seconds: float = 240) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


@pytest.mark.slow
@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_stop_signal_to_the_sweep_stops_its_running_points(
    tmp_path: Path, signum: int, code: int
) -> None:
    cmd = _sweep_cmd(tmp_path, "--grid", "training.lr=1e-3,3e-3", "--max-parallel", "2")
    cmd += ["--set", "training.epochs=50"]
    proc = subprocess.Popen(
        cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
    )
    try:
        assert _wait_for(lambda: len(list(tmp_path.glob("runs/*/logs/epochs.csv"))) == 2)
        folder = next((tmp_path / "sweeps").iterdir()).resolve()
        assert len(_point_processes(folder)) == 2
        os.kill(proc.pid, signum)  # the sweep alone, as kill or Slurm would
        assert proc.wait(timeout=60) == code
        err = proc.stderr.read().decode()  # type: ignore[union-attr]
        assert "stopping 2 running point(s)" in err
        assert _wait_for(lambda: not _point_processes(folder), 10)  # no orphan left training
        assert not list(tmp_path.glob("runs/*/manifest.json"))
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


@pytest.mark.slow
def test_a_rerun_waits_for_an_orphaned_point_instead_of_training_a_duplicate(
    tmp_path: Path,
) -> None:
    cmd = _sweep_cmd(tmp_path, "--grid", "training.lr=1e-3")
    cmd += ["--set", "training.epochs=6"]
    first = subprocess.Popen(
        cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    folder: Path | None = None
    try:
        assert _wait_for(lambda: bool(list(tmp_path.glob("runs/*/logs/epochs.csv"))))
        folder = next((tmp_path / "sweeps").iterdir()).resolve()
        first.send_signal(signal.SIGKILL)  # the sweep dies; its point, an orphan, trains on
        first.wait()
        assert len(_point_processes(folder)) == 1
        again = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert again.returncode == 0, again.stderr
        assert "an earlier process of this point is still running" in again.stderr
        assert "point 0: finished by its earlier process" in again.stderr
        assert len(list(tmp_path.glob("runs/*"))) == 1  # one run: no duplicate was trained
        summary = json.loads((folder / "summary.json").read_text())
        assert [p["status"] for p in summary["points"]] == ["ok"]
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
        for pid in _point_processes(folder) if folder else []:
            os.kill(pid, signal.SIGKILL)


@pytest.mark.slow
def test_optuna_never_trains_a_config_twice(tmp_path: Path) -> None:
    import optuna

    cmd = _sweep_cmd(tmp_path, "--grid", "model.dropout=0.0,0.2", "--optuna", "4")
    cmd += ["--set", "training.epochs=1"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr
    assert len(list(tmp_path.glob("runs/*"))) == 2  # two configs, each trained once
    assert "its outcome (complete) is reused, nothing is trained again" in done.stderr
    folder = next((tmp_path / "sweeps").iterdir())
    study = optuna.load_study(study_name="sweep", storage=f"sqlite:///{folder / 'optuna.db'}")
    values = {t.params["model.dropout"]: t.value for t in study.trials if t.value is not None}
    repeats = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert len(repeats) == 4 and all(t.value == values[t.params["model.dropout"]] for t in repeats)


def test_optuna_zero_is_exit_2_before_any_folder(tmp_path: Path, run_script) -> None:  # type: ignore[no-untyped-def]
    flags = ["--config", str(SMOKE), "--set", f"run.output_root={tmp_path}"]
    assert run_script("sweep", *flags, "--grid", "training.lr=1e-3", "--optuna", "0") == 2
    assert run_script("sweep", *flags, "--grid", "training.lr=1e-3", "--random", "-1") == 2
    assert not list(tmp_path.iterdir())
