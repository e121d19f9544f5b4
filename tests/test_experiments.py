"""Every shipped experiment runs, shrunk to a few steps, and writes a valid manifest."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import CONFIGS

from rigor.config import load_config
from rigor.manifest import load_manifest, verify_manifest
from rigor.pretraining.run import pretrain
from rigor.training.run import train

EXPERIMENTS = sorted((CONFIGS / "experiment").glob("*.yaml"))
PRETRAIN = {"digits_mae"}  # run with scripts/pretrain.py; the others with scripts/train.py
SHRINK = [
    "training.epochs=1",
    "training.max_steps_per_epoch=2",
    "scheduler.warmup_epochs=0",
    "logging.tensorboard=false",
]


@pytest.fixture(scope="module")
def hest_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small HEST-layout folder for experiments on the hest dataset."""
    from rigor.data.hest_write import write_tiles_hest

    root = tmp_path_factory.mktemp("hest")
    write_tiles_hest(root, patients=16, tiles_per_patient=10)
    return root


@pytest.mark.smoke
@pytest.mark.parametrize("path", EXPERIMENTS, ids=[p.stem for p in EXPERIMENTS])
def test_experiment_runs_shrunk(path: Path, tmp_path: Path, hest_root: Path) -> None:
    sets = [*SHRINK, f"run.output_root={tmp_path}"]
    if load_config(path, environ={}).config.data.name == "hest":
        sets.append(f"data.root={hest_root}")
    resolved = load_config(path, sets=sets, environ={})
    task = pretrain if path.stem in PRETRAIN else train
    manifest_path = task(resolved, env_policy="ignore")
    manifest = load_manifest(manifest_path)
    verify_manifest(manifest, manifest_path.parent)
    assert manifest["encoder"]["arch"] == resolved.config.model.backbone
    assert manifest["stages"][0]["summary"]["steps"] == 2
    resolved_json = json.loads((manifest_path.parent / "config_resolved.json").read_text())
    assert resolved_json["run"]["name"] == path.stem
    assert manifest["stages"][0]["name"] == ("pretrain" if path.stem in PRETRAIN else "train")
