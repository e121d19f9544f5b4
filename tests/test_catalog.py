"""scripts/runs.py ls: runs under an output root as a table, filtered and sorted on config
keys, metrics and stage summaries, as text or CSV, without importing torch."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT

from rigor.catalog import Filter, find_runs, render, table
from rigor.errors import UsageError


def _fake_run(root: Path, run_id: str, lr: float, acc: float, stages: list[str]) -> None:
    folder = root / "runs" / run_id
    folder.mkdir(parents=True)
    manifest = {
        "run_id": run_id,
        "config_hash": run_id[-4:],
        "created_at": f"2026-12-06T10:{len(run_id):02d}:00Z",
        "metrics": {"acc/val_test": acc, "loss/val_test": 1 - acc},
        "stages": [{"name": s, "summary": {"threshold": lr * 100}} for s in stages],
    }
    (folder / "manifest.json").write_text(json.dumps(manifest))
    config = {"training": {"lr": lr, "epochs": 12}, "model": {"backbone": "cnn_small"}}
    (folder / "config_resolved.json").write_text(json.dumps(config))
    if "eval" in stages:
        node = {"estimate": acc, "ci_lower": acc - 0.02, "ci_upper": min(acc + 0.02, 1.0)}
        (folder / "eval").mkdir()
        (folder / "eval" / "metrics.json").write_text(
            json.dumps({"tasks": {"digit": {"accuracy": node}}})
        )


@pytest.fixture
def root(tmp_path: Path) -> Path:
    _fake_run(tmp_path, "run-a", 1e-3, 0.95, ["train", "calibrate", "eval"])
    _fake_run(tmp_path, "run-bb", 3e-4, 0.91, ["train"])
    _fake_run(tmp_path, "run-ccc", 1e-3, 0.88, ["train", "eval"])
    (tmp_path / "runs" / "half").mkdir()  # a run still being written: no manifest yet
    return tmp_path


def test_filters_compare_numbers_as_numbers_and_text_as_text(root: Path) -> None:
    runs = find_runs(root)
    assert [r.manifest["run_id"] for r in runs] == ["run-a", "run-bb", "run-ccc"]
    columns = ["run_id", "training.lr", "acc/val_test", "stages"]
    rows = table(runs, columns, [Filter.parse("training.lr=1e-3")])
    assert [row[0] for row in rows] == ["run-a", "run-ccc"]
    rows = table(runs, columns, [Filter.parse("acc/val_test>0.9")], sort="-acc/val_test")
    assert [row[0] for row in rows] == ["run-a", "run-bb"]
    filters = [Filter.parse("stages!=train"), Filter.parse("acc/val_test <= 0.9")]
    rows = table(runs, columns, filters)
    assert [row[0] for row in rows] == ["run-ccc"]
    cnn = table(runs, columns, [Filter.parse("model.backbone=cnn_small")], sort="training.lr")
    assert cnn[0][0] == "run-bb"
    assert table(runs, ["run_id"], [Filter.parse("no.such.key=1")]) == []
    with pytest.raises(UsageError, match="expected KEY OP VALUE"):
        Filter.parse("training.lr")


def test_columns_read_stage_summaries_and_eval_cis(root: Path) -> None:
    columns = ["run_id", "calibrate:threshold", "ci:digit/accuracy"]
    rows = table(find_runs(root), columns, [], sort="-ci:digit/accuracy")
    assert rows[0] == ["run-a", pytest.approx(0.1), "0.95 [0.93, 0.97]"]
    assert rows[1] == ["run-ccc", None, "0.88 [0.86, 0.9]"]
    assert rows[2][0] == "run-bb" and rows[2][2] is None  # no eval: sorted last
    text = render(columns, rows)
    assert text.splitlines()[0].split() == columns
    parsed = list(csv.reader(io.StringIO(render(columns, rows, as_csv=True))))
    assert parsed[0] == columns and parsed[3] == ["run-bb", "", ""]


def test_runs_ls_lists_a_thousand_runs_fast_without_torch(tmp_path: Path) -> None:
    for index in range(1000):
        lr = 1e-3 if index % 2 else 3e-4
        _fake_run(tmp_path, f"run-{index:04d}", lr, index / 1000, ["train"])
    probe = """
import runpy, sys, time
started = time.perf_counter()
sys.argv = ["scripts/runs.py", "ls", "--root", sys.argv[1], "--columns",
            "run_id,training.lr,acc/val_test", "--where", "training.lr=1e-3",
            "--sort", "acc/val_test", "--desc", "--csv"]
try:
    runpy.run_path("scripts/runs.py", run_name="__main__")
except SystemExit as stop:
    code = stop.code
print("torch" in sys.modules, time.perf_counter() - started, file=sys.stderr)
sys.exit(code)
"""
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", probe, str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    wall = time.perf_counter() - started
    assert done.returncode == 0, done.stderr
    imported_torch, seconds = done.stderr.split()[-2:]
    assert imported_torch == "False"
    rows = list(csv.reader(io.StringIO(done.stdout)))
    assert len(rows) == 501 and rows[1] == ["run-0999", "0.001", "0.999"]
    print(f"1,000 runs listed in {float(seconds):.2f} s ({wall:.2f} s with start-up)")
