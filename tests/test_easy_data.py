"""An easy dataset: a model perfect on val_calib still calibrates, evaluates, exports and
predicts (issue 30, item 8), and a run without any policy exports with --policy none."""

from __future__ import annotations

import csv
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from conftest import CONFIGS

from rigor.calibration.temperature import NoFiniteOptimum, choose_temperature, fit_temperature
from rigor.config import load_config
from rigor.data.sources.shapes import write_shapes
from rigor.export.load import load_bundle
from rigor.manifest import load_manifest

SHAPES = CONFIGS / "experiment" / "shapes.yaml"


def separated(n: int = 40, classes: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Logits whose label logit is always the largest: no error at all."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, classes, n)
    logits = rng.normal(size=(n, classes))
    logits[np.arange(n), labels] += 6.0
    return logits, labels


def test_perfect_calibration_set_falls_back_to_t1_with_the_reason(
    capsys: pytest.CaptureFixture[str],
) -> None:
    logits, labels = separated()
    with pytest.raises(NoFiniteOptimum):
        fit_temperature(logits, labels)
    temperature, record = choose_temperature(logits, labels, "fit")
    assert temperature == 1.0
    assert record["status"] == "no_finite_optimum" and "classified correctly" in record["reason"]
    assert "warning: temperature scaling" in capsys.readouterr().err
    assert choose_temperature(logits, labels, "none") == (
        1.0,
        {"method": "none", "status": "skipped", "reason": None},
    )
    logits[0] = logits[0, ::-1]  # one mistake: a finite optimum exists again
    labels[0] = int(np.argmin(logits[0]))
    temperature, record = choose_temperature(logits, labels, "fit")
    assert record["status"] == "fitted" and temperature != 1.0


@pytest.fixture(scope="module")
def shapes_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The shipped shapes experiment on 150 generated images (perfect on val_calib), and an
    untouched copy of the run for the tests that need it uncalibrated."""
    from rigor.training.run import train

    root = tmp_path_factory.mktemp("shapes")
    write_shapes(root / "images", classes=3, images=150, size=32, seed=0)
    sets = [f"data.root={root / 'images'}", f"run.output_root={root}", "logging.tensorboard=false"]
    sets += ["evaluation.n_resamples=50"]
    manifest = train(load_config(SHAPES, sets=sets, environ={}), env_policy="ignore")
    shutil.copytree(manifest.parent, root / "pristine")
    return manifest, root / "pristine" / "manifest.json"


def test_perfect_val_calib_chain_completes(
    shapes_runs: tuple[Path, Path],
    run_script: Callable[..., int],
    capsys: pytest.CaptureFixture[str],
) -> None:
    shapes_run = shapes_runs[0]
    run_dir = shapes_run.parent
    with np.load(run_dir / "predictions" / "val_calib.npz") as data:
        assert (data["logits_label"].argmax(axis=1) == data["targets_label"]).all()
    assert run_script("calibrate", "--from-manifest", str(shapes_run)) == 0
    assert "no finite temperature; using T = 1" in capsys.readouterr().err
    thresholds = json.loads((run_dir / "calibration" / "thresholds.json").read_text())
    assert thresholds["temperature"] == 1.0
    assert thresholds["temperature_fit"]["status"] == "no_finite_optimum"
    assert (run_dir / "calibration" / "conformal.json").is_file()
    assert run_script("eval", "--from-manifest", str(shapes_run)) == 0
    for policy in ("threshold", "sets", "crc", "scrc"):  # every policy without a gate
        assert run_script("export", "--from-manifest", str(shapes_run), "--policy", policy) == 0
        bundle = run_dir / "bundle"
        assert load_bundle(bundle).policy["task"] == "label"  # type: ignore[index]
        assert run_script("predict", "--bundle", str(bundle), "--split", "val_test") == 0
        rows = list(csv.DictReader((run_dir / "predict" / "val_test.csv").open()))
        answered = [row for row in rows if row["abstained"] == "no"]
        assert answered and all(row["class"] == row["label"] for row in answered)
    assert run_script("export", "--from-manifest", str(shapes_run), "--policy", "gate") == 2
    stages = [stage["name"] for stage in load_manifest(shapes_run)["stages"]]
    assert stages[:3] == ["train", "calibrate", "eval"] and stages.count("export") == 4


def test_policy_none_exports_an_uncalibrated_run_without_abstention(
    shapes_runs: tuple[Path, Path], run_script: Callable[..., int]
) -> None:
    manifest = shapes_runs[1]
    run_dir = manifest.parent
    assert not (run_dir / "calibration").exists()
    assert run_script("export", "--from-manifest", str(manifest)) == 2  # no policy fitted
    assert run_script("export", "--from-manifest", str(manifest), "--policy", "none") == 0
    bundle = load_bundle(run_dir / "bundle")
    assert bundle.record["task"] == "label" and bundle.record["policies"] == []
    assert "no guarantee" in bundle.record["no_policy"]
    assert run_script("predict", "--bundle", str(run_dir / "bundle"), "--split", "val_test") == 0
    rows = list(csv.DictReader((run_dir / "predict" / "val_test.csv").open()))
    assert len(rows) == 23 and {row["abstained"] for row in rows} == {"no"}
    # the seal covers no_policy: dropping it turns the bundle into a classification bundle
    # with no policy, which is refused
    record = json.loads((run_dir / "bundle" / "bundle.json").read_text())
    record["no_policy"] = None
    (run_dir / "bundle" / "bundle.json").write_text(json.dumps(record))
    refused = run_script("predict", "--bundle", str(run_dir / "bundle"), "--split", "val_test")
    assert refused in (3, 5)
