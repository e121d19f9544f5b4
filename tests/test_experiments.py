"""Every shipped experiment runs, shrunk to a few steps, and writes a valid manifest."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import CONFIGS

from rigor.config import load_config
from rigor.manifest import load_manifest, verify_manifest
from rigor.run_kinds import RUN_KINDS

EXPERIMENTS = sorted((CONFIGS / "experiment").glob("*.yaml"))
# the kind of run each experiment makes; every other one is a train run (scripts/train.py)
KINDS = {"digits_mae": "pretrain", "hest_bench": "probe"}
SHRINK = [
    "training.epochs=1",
    "training.max_steps_per_epoch=2",
    "scheduler.warmup_epochs=0",
    "logging.tensorboard=false",
]


@pytest.fixture(scope="module")
def hest_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small HEST-layout folder for experiments on the hest dataset."""
    from rigor.data.hest.write import write_tiles_hest

    root = tmp_path_factory.mktemp("hest")
    write_tiles_hest(root, patients=16, tiles_per_patient=10)
    return root


@pytest.fixture(scope="module")
def bench_task(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small HEST-Benchmark task folder for experiments on hest_bench."""
    from rigor.data.hest.write import write_hest_bench

    root = tmp_path_factory.mktemp("hest_bench")
    (task,) = write_hest_bench(root, ["TASK"], 4, 2, tiles_per_patient=6, size=32)
    return task


@pytest.fixture(scope="module")
def shapes_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small generated imagefolder for experiments on imagefolder data."""
    from rigor.data.sources.shapes import write_shapes

    root = tmp_path_factory.mktemp("shapes")
    write_shapes(root, classes=3, images=120, size=16, seed=0)
    return root


@pytest.mark.smoke
@pytest.mark.parametrize("path", EXPERIMENTS, ids=[p.stem for p in EXPERIMENTS])
def test_experiment_runs_shrunk(
    path: Path, tmp_path: Path, hest_root: Path, bench_task: Path, shapes_root: Path
) -> None:
    sets = [*SHRINK, f"run.output_root={tmp_path}", "evaluation.n_resamples=20"]
    data = load_config(path, environ={}).config.data.name
    roots = {"hest": hest_root, "hest_bench": bench_task, "imagefolder": shapes_root}
    if data in roots:
        sets.append(f"data.root={roots[data]}")
    resolved = load_config(path, sets=sets, environ={})
    kind = KINDS.get(path.stem, "train")
    manifest_path = RUN_KINDS[kind].task_function()(resolved, env_policy="ignore")
    manifest = load_manifest(manifest_path)
    verify_manifest(manifest, manifest_path.parent)
    assert manifest["encoder"]["arch"] == resolved.config.model.backbone
    assert manifest["stages"][0]["name"] == kind
    if kind != "probe":  # a probe takes no training steps
        assert manifest["stages"][0]["summary"]["steps"] == 2
    resolved_json = json.loads((manifest_path.parent / "config_resolved.json").read_text())
    assert resolved_json["run"]["name"] == path.stem
