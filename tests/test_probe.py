"""The frozen-encoder probe: the HEST-Benchmark protocol's pieces checked against independent
computations, and probe.py end to end on generated tiles in the HEST layout."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from conftest import CONFIGS, short_run
from scipy.stats import pearsonr

from rigor.probe.ridge import (
    FoldPredictions,
    Folds,
    UnitMoments,
    cross_validate,
    fit_predict,
    hest_alpha,
    make_folds,
    pearson_report,
)

EXPERIMENT = CONFIGS / "experiment" / "tiles_hest.yaml"


def _linear(seed: int, patients: int = 6, spots: int = 30, dim: int = 40, genes: int = 3):
    """Features with a latent signal the targets follow, plus patient offsets and noise."""
    rng = np.random.default_rng(seed)
    n = patients * spots
    groups = np.repeat([f"P{p}" for p in range(patients)], spots)
    latent = rng.normal(size=(n, genes))
    mixing = rng.normal(size=(genes, dim))
    features = latent @ mixing + 0.3 * rng.normal(size=(n, dim))
    offsets = np.repeat(rng.normal(size=(patients, genes)), spots, axis=0)
    targets = 2.0 + latent + offsets + 0.2 * rng.normal(size=(n, genes))
    return features, targets, groups


def test_folds_leave_one_group_out_or_group_k_fold() -> None:
    groups = np.repeat(["a", "b", "c", "d", "e"], [3, 5, 2, 4, 6])
    one_out = make_folds(groups, ["e", "a", "c"], None)
    assert one_out.tests == [["a"], ["c"], ["e"]]
    assert [int(one_out.test_mask(k).sum()) for k in range(3)] == [3, 2, 6]
    assert not (one_out.train_mask(0) & one_out.test_mask(0)).any()
    k_fold = make_folds(groups, list("abcde"), 2)
    tested = [g for fold in k_fold.tests for g in fold]
    assert sorted(tested) == list("abcde") and len(tested) == 5  # each group once
    sizes = [int(k_fold.test_mask(k).sum()) for k in range(2)]
    assert sum(sizes) == 20 and max(sizes) - min(sizes) <= 2  # GroupKFold balances rows
    assert make_folds(groups, list("abc"), 3).tests == [["a"], ["b"], ["c"]]  # k == groups


def test_more_folds_than_patients_is_a_config_error() -> None:
    """probe.folds: 5 over 3 patients used to run 3 folds without a word."""
    from rigor.errors import ConfigError

    groups = np.repeat(["a", "b", "c"], 4)
    with pytest.raises(ConfigError, match=r"probe.folds: 5 folds .* there are 3"):
        make_folds(groups, list("abc"), 5)


def test_hest_penalty_and_fit_follow_the_protocol() -> None:
    assert hest_alpha(256, 50) == pytest.approx(100 / 12800)
    features, targets, groups = _linear(0)
    train = groups != "P0"
    predicted, record = fit_predict(
        features[train], targets[train], features[~train], 256, None, seed=0
    )
    # 40 features < 256 components: PCA keeps every direction of the standardised features
    assert record["components"] == 40 and record["alpha"] == pytest.approx(100 / (40 * 3))
    assert record["explained_variance"] == pytest.approx(1.0)
    # no intercept (HEST's fit_intercept=False): centred predictions, correlated targets
    assert abs(predicted.mean()) < 0.5 < targets[~train].mean()
    for j in range(3):
        assert pearsonr(predicted[:, j], targets[~train, j])[0] > 0.75


def _first_fold_prediction(folds_pred: FoldPredictions, row: int) -> np.ndarray:
    (where,) = np.flatnonzero(folds_pred.rows[0] == row)
    return folds_pred.predicted[0][where]


def test_pca_and_ridge_see_no_test_rows() -> None:
    """A test row's prediction depends on the train rows and its own features only: changing
    another test row's features, or any test row's target, changes nothing."""
    features, targets, groups = _linear(1)
    folds = make_folds(groups, sorted(set(groups)), None)
    base, _ = cross_validate(features, targets, folds, 8, None, seed=0)
    altered_x, altered_y = features.copy(), targets.copy()
    test = folds.test_mask(0)
    first, others = np.flatnonzero(test)[0], np.flatnonzero(test)[1:]
    altered_x[others] *= 50.0  # a transductive PCA would move every test prediction
    altered_y[test] = -altered_y[test]
    again, _ = cross_validate(altered_x, altered_y, folds, 8, None, seed=0)
    kept = _first_fold_prediction(base, first)
    assert np.allclose(_first_fold_prediction(again, first), kept)
    shuffled = targets.copy()
    shuffled[~test] = np.random.default_rng(0).permutation(shuffled[~test])
    moved, _ = cross_validate(features, shuffled, folds, 8, None, seed=0)
    assert not np.allclose(_first_fold_prediction(moved, first), kept)  # train rows move it


def _fold_predictions(folds: Folds, predicted: np.ndarray) -> FoldPredictions:
    rows = [np.flatnonzero(folds.test_mask(k)) for k in range(len(folds.tests))]
    return FoldPredictions(rows, [predicted[r] for r in rows])


def test_fold_pearson_and_cluster_weights_match_direct_computation() -> None:
    rng = np.random.default_rng(2)
    groups = np.repeat(["a", "b", "c", "d"], [5, 7, 6, 4])
    predicted, targets = rng.normal(size=(22, 2)), rng.normal(size=(22, 2))
    folds = Folds(groups, [["a", "c"], ["b"], ["d"]])
    moments = UnitMoments.of(_fold_predictions(folds, predicted), targets, groups)
    r = moments.pearson()
    for k, tested in enumerate(folds.tests):
        rows = np.isin(groups, tested)
        for j in range(2):
            assert r[k, j] == pytest.approx(pearsonr(predicted[rows, j], targets[rows, j])[0])
    # cluster weights follow the sorted cluster names (a, b, c, d): c twice, a left out
    weighted = moments.pearson(np.array([0.0, 1.0, 2.0, 1.0]))
    rows = np.concatenate([np.flatnonzero(groups == "c")] * 2)
    assert weighted[0, 1] == pytest.approx(pearsonr(predicted[rows, 1], targets[rows, 1])[0])
    assert weighted[1, 0] == pytest.approx(r[1, 0])


def test_pearson_keeps_its_digits_on_a_float32_gene_with_a_large_mean() -> None:
    """A gene with mean 10 and s.d. 0.005 in float32: one-pass sums in float32 lost 3e-3 of
    r; unit moments about their own means in float64 match scipy to 1e-9."""
    rng = np.random.default_rng(5)
    groups = np.repeat(["a", "b"], 200)
    signal = rng.normal(size=400)
    targets = (10.0 + 0.005 * (signal + 0.5 * rng.normal(size=400))).astype(np.float32)[:, None]
    predicted = (signal + 0.3 * rng.normal(size=400))[:, None]
    folds = Folds(groups, [["a", "b"]])
    r = UnitMoments.of(_fold_predictions(folds, predicted), targets, groups).pearson()
    expected = pearsonr(predicted[:, 0], targets[:, 0].astype(np.float64))[0]
    assert abs(r[0, 0] - expected) < 1e-9


def test_a_constant_target_in_a_fold_is_undefined_not_a_tiny_r() -> None:
    """A gene that is constant (10.3) over a fold's test spots has no Pearson r; rounding in
    one-pass sums gave a value of about 1e-8 (or anything) depending on the data."""
    rng = np.random.default_rng(6)
    groups = np.repeat(["a", "b", "c"], 30)
    targets = rng.normal(size=(90, 2)).astype(np.float32) + 10.3
    targets[:30, 0] = np.float32(10.3)
    predicted = rng.normal(size=(90, 2))
    folds = Folds(groups, [["a"], ["b"], ["c"]])
    fold_pred = _fold_predictions(folds, predicted)
    r = UnitMoments.of(fold_pred, targets, groups).pearson()
    assert np.isnan(r[0, 0]) and np.isfinite(r[1:, 0]).all() and np.isfinite(r[:, 1]).all()
    options = {"n_resamples": 50, "level": 0.95, "seed": 0}
    report = pearson_report(fold_pred, targets, groups, ["g0", "g1"], options)
    assert report["undefined"] == 1
    assert report["per_gene"]["g0"]["estimate"] == pytest.approx(np.nanmean(r[1:, 0]))


def test_one_tested_patient_gives_no_ci_and_says_why() -> None:
    """A patient-cluster bootstrap of one patient draws that patient every time: the CI was
    reported with zero width; it is null with the reason."""
    features, targets, groups = _linear(7, patients=4)
    folds = make_folds(groups, ["P3"], None)
    fold_pred, _ = cross_validate(features, targets, folds, 8, None, seed=0)
    options = {"n_resamples": 50, "level": 0.95, "seed": 0}
    report = pearson_report(fold_pred, targets, groups, ["a", "b", "c"], options)
    mean = report["pearson_mean"]
    assert mean["ci_lower"] is None and mean["ci_upper"] is None
    assert "one tested patient (P3)" in mean["note"] and report["ci_note"] == mean["note"]
    assert np.isfinite(mean["estimate"]) and report["per_gene"]["a"]["ci_lower"] is None


def test_report_averages_folds_and_its_cluster_ci_covers_the_estimate() -> None:
    features, targets, groups = _linear(3, patients=8)
    folds = make_folds(groups, sorted(set(groups)), None)
    fold_pred, _ = cross_validate(features, targets, folds, 16, None, seed=0)
    options = {"n_resamples": 200, "level": 0.95, "seed": 0}
    report = pearson_report(fold_pred, targets, groups, ["g0", "g1", "g2"], options)
    per_fold = np.array(report["per_fold"], dtype=float)
    assert per_fold.shape == (8, 3)
    for j, gene in enumerate(["g0", "g1", "g2"]):
        gene_r = report["per_gene"][gene]
        assert gene_r["estimate"] == pytest.approx(per_fold[:, j].mean())
        assert gene_r["ci_lower"] <= gene_r["estimate"] <= gene_r["ci_upper"]
    mean = report["pearson_mean"]
    assert mean["estimate"] == pytest.approx(per_fold.mean()) and mean["estimate"] > 0.8
    assert report["split_scores"] == pytest.approx(per_fold.mean(axis=1).tolist())
    assert report["split_std"] == pytest.approx(float(np.std(per_fold.mean(axis=1))))
    assert report["n_groups_tested"] == 8 and report["ci_unit"] == "group"


def test_cluster_ci_of_an_unrelated_predictor_covers_zero_at_its_level() -> None:
    """Predictions that are noise have a true score of 0: over 100 draws the patient-cluster
    95% CI of the mean r holds 0 in 92 of 100 draws with 12 patients (a percentile bootstrap
    over few clusters is slightly narrow; counting a fold once however often its patient is
    drawn, as a first version did, made it far too narrow)."""
    _, targets, groups = _linear(4, patients=12, spots=10)
    folds = make_folds(groups, sorted(set(groups)), None)
    options = {"n_resamples": 200, "level": 0.95, "seed": 0}
    held, rng = [], np.random.default_rng(0)
    for _ in range(100):
        noise = _fold_predictions(folds, rng.normal(size=targets.shape))
        mean = pearson_report(noise, targets, groups, ["a", "b", "c"], options)["pearson_mean"]
        held.append(mean["ci_lower"] < 0 < mean["ci_upper"])
    assert 0.85 <= np.mean(held) <= 0.99


@pytest.fixture(scope="module")
def hest_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from rigor.data.hest.write import write_tiles_hest

    root = tmp_path_factory.mktemp("hest")
    write_tiles_hest(root, 10, 8, 32)
    return root


@pytest.mark.slow  # trains a short run, then three probes and a refused eval
def test_probe_end_to_end_random_and_fine_tuned(
    hest_root: Path, tmp_path: Path, run_script: Callable[..., int]
) -> None:
    from rigor.config import load_config
    from rigor.errors import ManifestError
    from rigor.manifest import load_manifest, validate_manifest
    from rigor.training.run import train

    sets = [f"data.root={hest_root}", *short_run(tmp_path), "evaluation.n_resamples=50"]
    flags = ["--env-policy", "ignore"]
    args = [a for s in sets for a in ("--set", s)]
    assert run_script("probe", "--config", str(EXPERIMENT), *args, *flags) == 0
    (first,) = (tmp_path / "runs").iterdir()
    manifest = load_manifest(first / "manifest.json")  # schema-checked: no checkpoints
    assert "checkpoints" not in manifest and manifest["stages"][0]["name"] == "probe"
    manifest["stages"][0]["name"] = "train"  # any other kind must list its checkpoints
    with pytest.raises(ManifestError, match="checkpoints"):
        validate_manifest(manifest)
    report = json.loads((first / "probe" / "report.json").read_text())
    assert len(report["folds"]) == 10 and report["features"]["shape"] == [80, 128]
    assert manifest["metrics"]["probe/pearson_mean"] == report["pearson_mean"]["estimate"]
    assert not report["features"]["reused"]
    # eval refuses a probe run, naming what it is
    assert run_script("eval", "--from-manifest", str(first / "manifest.json"), *flags) == 5

    trained = train(load_config(EXPERIMENT, sets=sets, environ={}), env_policy="ignore")
    # an encoder trained on these images may not be tested on the patients it saw
    assert run_script("probe", "--from-manifest", str(trained), *flags) == 2
    val_test = ["--set", "probe.test_groups=val_test"]
    assert run_script("probe", "--from-manifest", str(trained), *val_test, *flags) == 0
    assert run_script("probe", "--config", str(EXPERIMENT), *args, *val_test, *flags) == 0
    reports = [
        json.loads((r / "probe" / "report.json").read_text())
        for r in (tmp_path / "runs").glob("*-probe-*")
        if r != first
    ]  # told apart by their source: two runs started in one second sort by config hash
    (tuned,) = [r for r in reports if r["source"] is not None]
    (random,) = [r for r in reports if r["source"] is None]
    assert tuned["source"]["run_id"] == trained.parent.name
    splits = json.loads((trained.parent / "splits.json").read_text())["splits"]
    patients = sorted({i.split(":")[1].split("-")[0] for i in splits["val_test"]})
    assert [f["test_groups"][0] for f in tuned["folds"]] == patients
    assert [f["test_groups"] for f in random["folds"]] == [f["test_groups"] for f in tuned["folds"]]
    assert random["features"]["reused"]  # the same random init and data: read from the cache
    assert tuned["features"]["sha256"] != random["features"]["sha256"]


TINY_VIT = [
    "model.backbone=dinov3_vit",
    "model.hf.hidden_size=32",
    "model.hf.num_layers=2",
    "model.hf.num_heads=2",
    "model.hf.intermediate_size=64",
    "model.hf.patch_size=8",
    "model.hf.num_register_tokens=0",
    "pretrain.decoder_dim=16",
    "pretrain.decoder_heads=2",
    "pretrain.decoder_layers=1",
]


@pytest.mark.slow  # MAE-pretrains a tiny DINOv3 on the tiles, then probes it and a random one
def test_probe_of_a_pretrain_run_reads_its_saved_encoder(
    hest_root: Path, tmp_path: Path, run_script: Callable[..., int]
) -> None:
    from rigor.manifest import load_manifest

    sets = [f"data.root={hest_root}", *short_run(tmp_path), *TINY_VIT]
    sets += ["evaluation.n_resamples=50", "probe.test_groups=val_test"]
    args = [a for s in sets for a in ("--set", s)]
    flags = ["--env-policy", "ignore"]
    assert run_script("pretrain", "--config", str(EXPERIMENT), *args, *flags) == 0
    (pretrained,) = (tmp_path / "runs").iterdir()
    flag = ["--set", "probe.test_groups=val_test"]
    assert run_script("probe", "--from-manifest", str(pretrained / "manifest.json"), *flag) == 0
    assert run_script("probe", "--config", str(EXPERIMENT), *args, *flags) == 0
    runs = {
        load_manifest(r / "manifest.json")["encoder"]["weights"]: r
        for r in (tmp_path / "runs").glob("*-probe-*")
    }
    assert set(runs) == {f"run:{pretrained.name}/pretrain/hf", None}
    probed, random = runs[f"run:{pretrained.name}/pretrain/hf"], runs[None]
    manifest = load_manifest(probed / "manifest.json")
    assert manifest["encoder"]["weights"] == f"run:{pretrained.name}/pretrain/hf"
    keys = [
        json.loads((r / "probe" / "features.json").read_text())["key"] for r in (probed, random)
    ]
    assert keys[0] != keys[1]  # the saved encoder, not the config's random init
