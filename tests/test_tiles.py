"""The generated histology tiles: one regression head per gene, patients as split groups."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import CONFIGS

from rigor.config import load_config
from rigor.data.build import raw_dataset
from rigor.data.registry import DATASETS
from rigor.data.sources.tiles import GENES, PATIENTS, TILES_PER_PATIENT, generate
from rigor.data.splits import make_splits
from rigor.metrics.regression import pearson

TILES = CONFIGS / "experiment" / "tiles_genes.yaml"


@pytest.fixture(scope="module")
def raw():  # type: ignore[no-untyped-def]
    cfg = load_config(TILES, environ={}).config
    return raw_dataset(cfg.data)


def decode(*sets: str) -> np.ndarray:
    """Every tile through the dataset's reader, with the given config overrides."""
    reader = raw_dataset(load_config(TILES, sets=list(sets), environ={}).config.data).reader
    return np.stack([reader.load(i) for i in range(len(reader))])


def test_tiles_are_deterministic_rgb_with_one_regression_task_per_gene(raw) -> None:  # type: ignore[no-untyped-def]
    assert "tiles" in DATASETS
    images = decode()
    assert images.shape == (PATIENTS * TILES_PER_PATIENT, 3, 32, 32)
    assert images.dtype == np.float32 and images.min() >= 0.0 and images.max() <= 1.0
    assert list(raw.offered) == list(GENES)
    assert all(spec.kind == "regression" for spec in raw.offered.values())
    again, expression, _, _ = generate()
    assert np.array_equal(again, images)
    assert np.array_equal(expression[:, GENES.index("MKI67")], raw.targets["MKI67"])
    # grey is the ITU-R 601 luma of the RGB tile
    grey = decode("data.channels=1")
    luma = 0.299 * images[:, 0] + 0.587 * images[:, 1] + 0.114 * images[:, 2]
    np.testing.assert_allclose(grey[:, 0], luma, rtol=1e-5)
    assert raw_dataset(
        load_config(TILES, sets=["data.transforms.image_size=[16, 16]"], environ={}).config.data
    ).reader.load(0).shape == (3, 16, 16)


def test_expression_follows_the_cell_populations_it_was_built_from(raw) -> None:  # type: ignore[no-untyped-def]
    t = raw.targets
    # markers of the same population move together; different populations barely do
    assert pearson(t["EPCAM"], t["KRT8"]) > 0.85
    assert pearson(t["CD3E"], t["PTPRC"]) > 0.85
    assert abs(pearson(t["EPCAM"], t["CD3E"])) < 0.3
    # tumour-rich tiles have less stroma: epithelial and stromal markers anticorrelate
    assert pearson(t["EPCAM"], t["COL1A1"]) < -0.1
    # the image shows the nuclei: within a patient (same stain), the red channel's optical
    # density (hematoxylin absorbs red, eosin hardly) tracks the nucleus-rich genes
    images = decode().astype(np.float64)
    red = -np.log(np.clip(images[:, 0], 1e-3, 1.0)).mean(axis=(1, 2))
    groups = np.asarray(raw.groups)

    def within(x: np.ndarray) -> np.ndarray:
        return x - np.array([x[groups == g].mean() for g in groups])

    assert pearson(within(red), within(t["EPCAM"] + t["CD3E"])) > 0.4
    assert pearson(within(red), within(t["MKI67"])) > 0.5


def test_splits_keep_every_patient_whole(raw) -> None:  # type: ignore[no-untyped-def]
    cfg = load_config(TILES, environ={}).config
    splits = make_splits(raw.groups, cfg.data.splits, seed=0)
    patients = {name: {raw.groups[i] for i in rows} for name, rows in splits.items()}
    names = list(patients)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert not patients[a] & patients[b], (a, b)
    assert sum(len(p) for p in patients.values()) == PATIENTS
    assert all(len(rows) % TILES_PER_PATIENT == 0 for rows in splits.values())


def test_pearson_matches_numpy_and_is_nan_for_a_constant() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=50), rng.normal(size=50)
    assert pearson(a, b) == pytest.approx(np.corrcoef(a, b)[0, 1], rel=1e-12)
    assert np.isnan(pearson(np.ones(5), b[:5]))


@pytest.mark.smoke
def test_per_gene_heads_learn_report_per_gene_and_patient_and_export_without_policy(
    tmp_path: Path, run_script
) -> None:  # type: ignore[no-untyped-def]
    from rigor.training.run import train

    sets = [f"run.output_root={tmp_path}", "training.epochs=6", "logging.tensorboard=false"]
    path = train(load_config(TILES, sets=sets, environ={}), env_policy="ignore")
    manifest = json.loads(path.read_text())
    assert set(manifest["dataset"]["tasks"]) == set(GENES)
    metrics = manifest["metrics"]
    # golden range for the fixed seed: the epithelial marker is learnt from the pixels
    assert metrics["pearson/EPCAM/val_test"] > 0.4
    assert metrics["pearson/val_test"] > 0.15
    assert metrics["best/pearson/val_select"] == pytest.approx(
        max(float(r["pearson/val_select"]) for r in _epochs(path))
    )
    rows = _epochs(path)
    assert {f"pearson/{gene}/val_select" for gene in GENES} <= set(rows[0])
    assert float(rows[-1]["pearson/val_select"]) > float(rows[0]["pearson/val_select"])

    assert run_script("eval", "--from-manifest", str(path), "--env-policy", "ignore") == 0
    report = json.loads((path.parent / "eval" / "metrics.json").read_text())
    splits = json.loads((path.parent / "splits.json").read_text())["splits"]
    test_patients = {tile_id.split("-")[0] for tile_id in splits["val_test"]}
    epcam = report["tasks"]["EPCAM"]
    assert set(epcam["mae_per_group"]) == test_patients
    ci = epcam["per_target"][0]["pearson"]
    assert ci["ci_lower"] <= ci["estimate"] <= ci["ci_upper"]
    assert ci["estimate"] == pytest.approx(metrics["pearson/EPCAM/val_test"], abs=1e-5)

    # the experiment log's draft reports each gene's r and MAE with their CIs
    from rigor.experiments import draft_entry

    draft = draft_entry(path, experiments=tmp_path / "EXPERIMENTS.md")
    estimate = ci["estimate"]
    assert (
        f"| EPCAM Pearson r | {estimate:.4g} [{ci['ci_lower']:.4g}, {ci['ci_upper']:.4g}] |"
        in draft
    )
    assert "| ACTB MAE |" in draft

    # a regression-only run exports without a calibration policy and predicts every gene
    assert run_script("export", "--from-manifest", str(path), "--env-policy", "ignore") == 0
    bundle = path.parent / "bundle"
    record = json.loads((bundle / "bundle.json").read_text())
    assert record["task"] is None and record["policies"] == []
    out = tmp_path / "pred.csv"
    args = ["--bundle", str(bundle), "--split", "val_test", "--output", str(out)]
    assert run_script("predict", *args) == 0
    with open(out, newline="") as handle:
        table = list(csv.DictReader(handle))
    assert list(table[0]) == ["id"] + [c for g in sorted(GENES) for c in (g, f"{g}_true")]
    assert [row["id"] for row in table] == splits["val_test"]
    predicted = np.array([float(row["EPCAM"]) for row in table])
    truth = np.array([float(row["EPCAM_true"]) for row in table])
    # the bundle's weights are the best checkpoint's: the same numbers as eval
    assert pearson(predicted, truth) == pytest.approx(ci["estimate"], abs=1e-4)
    assert np.abs(predicted - truth).mean() == pytest.approx(
        epcam["per_target"][0]["mae"]["estimate"], abs=1e-4
    )

    # a policy smuggled into a regression-only bundle is refused (exit 3)
    record["policies"] = [{"path": "splits.json", "active": True}]
    (bundle / "bundle.json").write_text(json.dumps(record))
    assert run_script("predict", *args) == 3


def _epochs(path: Path) -> list[dict[str, str]]:
    with open(path.parent / "logs" / "epochs.csv", newline="") as handle:
        return list(csv.DictReader(handle))
