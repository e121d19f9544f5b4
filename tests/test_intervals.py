"""Split-conformal intervals of the per-gene heads: the quantile rule on exact cases, the
coverage guarantee over random re-splits, and the chain calibrate -> eval -> export ->
predict on a tiles run."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from conftest import CONFIGS, short_run

from rigor.policies.sets import conformal_quantile


@pytest.mark.parametrize(
    "n, alpha, k",
    [
        (19, 0.1, 18),  # (n + 1)(1 - alpha) = 18 exactly: the 18th smallest
        (19, 0.05, 19),  # = 19 exactly: the largest
        (10, 0.1, 10),  # 9.9 rounds up to 10
        (100, 0.2, 81),  # 80.8 rounds up to 81
        (5, 0.1, None),  # 5.4 -> 6 > n: infinite
    ],
)
def test_quantile_rule_on_exact_cases(n: int, alpha: float, k: int | None) -> None:
    scores = np.random.default_rng(n).permutation(np.arange(1, n + 1, dtype=float))
    expected = math.inf if k is None else float(k)  # the k-th smallest of 1..n is k
    assert conformal_quantile(scores, alpha) == expected


def test_quantile_refuses_bad_inputs() -> None:
    with pytest.raises(ValueError, match="finite"):
        conformal_quantile(np.array([0.1, np.nan]), 0.1)
    with pytest.raises(ValueError, match="alpha"):
        conformal_quantile(np.array([0.1, 0.2]), 1.0)


def test_coverage_holds_over_random_resplits_per_gene() -> None:
    """Eight genes with different residual laws; 100 random halves each for calibration and
    test: the mean test coverage is within 1 - alpha +- 0.03 for every gene."""
    rng = np.random.default_rng(7)
    n, alpha = 400, 0.1
    laws = [
        rng.normal(0, 1, n),
        rng.standard_t(2, n),
        rng.exponential(1, n),
        rng.lognormal(0, 1, n),
        rng.uniform(-1, 1, n),
        rng.laplace(0, 2, n),
        rng.normal(0, 1, n) * rng.uniform(0.1, 3, n),
        rng.gamma(0.5, 1, n),
    ]
    for residuals in laws:
        scores = np.abs(residuals)
        covered = []
        for _ in range(100):
            order = rng.permutation(n)
            calib, test = scores[order[: n // 2]], scores[order[n // 2 :]]
            covered.append(float((test <= conformal_quantile(calib, alpha)).mean()))
        assert 1 - alpha - 0.03 <= float(np.mean(covered)) <= 1 - alpha + 0.03


def test_the_patient_quantile_weighs_patients_not_spots() -> None:
    """One spot per patient: the spot rule exactly. A patient with many spots does not
    outweigh eighteen with few. Too few patients for alpha: infinite."""
    from rigor.calibration.intervals import group_quantile, patients_needed

    rng = np.random.default_rng(3)
    scores = rng.exponential(1.0, 40)
    for alpha in (0.05, 0.1, 0.2):
        assert group_quantile(scores, np.arange(40), alpha) == conformal_quantile(scores, alpha)
    residuals = np.r_[np.full(1000, 100.0), np.full(18 * 10, 1.0)]
    groups = np.r_[np.zeros(1000, int), np.repeat(np.arange(1, 19), 10)]
    assert conformal_quantile(residuals, 0.1) == 100.0  # the big patient's spots decide
    assert group_quantile(residuals, groups, 0.1) == 1.0  # 18 of 19 (+1) patients: 0.9
    assert patients_needed(0.1) == 9 and patients_needed(0.2) == 4
    assert group_quantile(np.ones(80), np.repeat(np.arange(8), 10), 0.1) == math.inf
    assert group_quantile(np.ones(90), np.repeat(np.arange(9), 10), 0.1) == 1.0


def test_patient_intervals_hold_for_new_patients_where_spot_intervals_fall_short() -> None:
    """Patients of two kinds: many well-predicted spots, or few badly predicted ones. Over
    400 random draws of 19 calibration patients and a new patient, the patient-level
    interval covers a new patient's spot at least 1 - alpha of the time; the spot-level one,
    dominated by the well-predicted patients' many spots, falls far short."""
    from rigor.calibration.intervals import group_quantile

    rng = np.random.default_rng(11)
    alpha, covered = 0.1, {"spot": [], "patient": []}
    for _ in range(400):
        big = rng.random(20) < 0.5  # the 20th patient is the new one
        sizes = np.where(big, 200, 10)
        scales = np.where(big, 0.5, 2.0) * rng.uniform(0.8, 1.25, 20)
        spots = [np.abs(rng.normal(0, s, n)) for s, n in zip(scales, sizes, strict=True)]
        calib, groups = np.concatenate(spots[:19]), np.repeat(np.arange(19), sizes[:19])
        new = spots[19]
        covered["spot"].append((new <= conformal_quantile(calib, alpha)).mean())
        covered["patient"].append((new <= group_quantile(calib, groups, alpha)).mean())
    assert np.mean(covered["patient"]) >= 1 - alpha - 0.01
    assert np.mean(covered["spot"]) < 1 - alpha - 0.1


@pytest.mark.slow  # trains, then four stages
def test_tiles_chain_reports_and_writes_intervals(
    tmp_path: Path, run_script: Callable[..., int], capsys: pytest.CaptureFixture[str]
) -> None:
    from rigor.config import load_config
    from rigor.training.run import train

    config = CONFIGS / "experiment" / "tiles_genes.yaml"
    manifest = train(load_config(config, sets=short_run(tmp_path), environ={}), env_policy="ignore")
    flags = ["--from-manifest", str(manifest), "--env-policy", "ignore"]
    assert run_script("calibrate", *flags) == 0
    intervals = json.loads((manifest.parent / "calibration" / "intervals.json").read_text())
    assert intervals["alpha"] == 0.1 and intervals["fitted_on"]["split"] == "val_calib"
    calib = np.load(manifest.parent / "predictions" / "val_calib.npz")
    truth, predicted = calib["targets_EPCAM"].astype(float), calib["logits_EPCAM"].astype(float)
    residual = np.abs(truth - predicted.reshape(-1))
    assert intervals["tasks"]["EPCAM"]["q_hat"] == conformal_quantile(residual, 0.1)
    _check_patient_intervals(manifest, run_script, capsys, residual, calib["groups"])
    assert run_script("eval", *flags, "--n-resamples", "50") == 0
    report = json.loads((manifest.parent / "eval" / "metrics.json").read_text())
    epcam = report["tasks"]["EPCAM"]["interval"]
    test = np.load(manifest.parent / "predictions" / "val_test.npz")
    truth, predicted = test["targets_EPCAM"].astype(float), test["logits_EPCAM"].astype(float)
    inside = np.abs(truth - predicted.reshape(-1)) <= epcam["q_hat"]
    assert epcam["coverage"]["estimate"] == pytest.approx(inside.mean())
    assert epcam["width"] == pytest.approx(2 * epcam["q_hat"])
    assert run_script("export", *flags) == 0
    out = tmp_path / "pred.csv"
    bundle = manifest.parent / "bundle"
    assert (
        run_script("predict", "--bundle", str(bundle), "--split", "val_test", "--output", str(out))
        == 0
    )
    rows = list(csv.DictReader(out.open()))
    for row in rows[:5]:
        lo, value, hi = (float(row[k]) for k in ("EPCAM_lo", "EPCAM", "EPCAM_hi"))
        assert lo <= value <= hi and hi - lo == pytest.approx(2 * epcam["q_hat"], abs=1e-5)
    capsys.readouterr()
    # a bundle whose intervals were rewritten (and rehashed, and resealed, as a careful forger
    # would) with an overflowing or a negative half-width is refused, naming file and field
    original = (bundle / "intervals.json").read_text()
    q_hat = json.dumps(json.loads(original)["tasks"]["EPCAM"]["q_hat"])
    for forged, message in (("1e999", "overflows to infinity"), ("-0.5", "less than the minimum")):
        _forge(bundle, "intervals.json", original.replace(q_hat, forged, 1))
        assert run_script("predict", "--bundle", str(bundle), "--split", "val_test") == 3
        err = capsys.readouterr().err
        assert "intervals.json" in err and "$.tasks.EPCAM.q_hat" in err and message in err


def _check_patient_intervals(  # type: ignore[no-untyped-def]
    manifest: Path, run_script, capsys, residual: np.ndarray, groups: np.ndarray
) -> None:
    """interval_method: patient refuses a val_calib with too few patients for alpha
    (naming how many it needs), and otherwise fits the patient-level quantile."""
    from rigor.calibration.intervals import group_quantile, patients_needed

    flags = ["--from-manifest", str(manifest), "--env-policy", "ignore"]
    patient = ["--set", "calibration.interval_method=patient"]
    count = len(np.unique(groups))
    capsys.readouterr()
    code = run_script("calibrate", *flags, *patient, "--set", "calibration.interval_alpha=0.02")
    assert count < patients_needed(0.02) == 49 and code == 2
    assert f"needs val_calib to hold at least 49 patients (split groups); it holds {count}" in (
        capsys.readouterr().err
    )
    alpha = 0.5  # reachable with any number of patients
    sets = ["--set", f"calibration.interval_alpha={alpha}"]
    assert run_script("calibrate", *flags, *patient, *sets) == 0
    fitted = json.loads((manifest.parent / "calibration" / "intervals.json").read_text())
    assert fitted["method"].startswith("hierarchical") and fitted["fitted_on"]["groups"] == count
    assert fitted["tasks"]["EPCAM"]["q_hat"] == group_quantile(residual, groups, alpha)
    assert run_script("calibrate", *flags) == 0  # back to the spot-level fit for what follows


def _forge(bundle: Path, rel: str, text: str) -> None:
    """Rewrite a bundle file and update its hash and the record's seal to match."""
    from rigor.io import record_hash, sha256_file

    (bundle / rel).write_text(text)
    record = json.loads((bundle / "bundle.json").read_text())
    record["sha256"][rel] = sha256_file(bundle / rel)
    record["record_sha256"] = record_hash(record)
    (bundle / "bundle.json").write_text(json.dumps(record))


def test_the_resplit_benchmark_reports_both_methods_per_gene() -> None:
    """benchmarks/resplit_intervals.py on a simulated population: per gene and method, the
    mean coverage over draws, its spread and width; the patient-level mean holds nominal."""
    import importlib.util

    from conftest import ROOT

    spec = importlib.util.spec_from_file_location(
        "resplit_intervals", ROOT / "benchmarks" / "resplit_intervals.py"
    )
    assert spec and spec.loader
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    rng = np.random.default_rng(5)
    sizes = np.where(np.arange(24) % 2 == 0, 60, 6)
    scales = np.where(np.arange(24) % 2 == 0, 0.5, 2.0)
    groups = np.repeat([f"P{p:02d}" for p in range(24)], sizes)
    residuals = {"G1": np.abs(rng.normal(0, np.repeat(scales, sizes)))}
    result = bench.resplit(residuals, groups, calib=12, splits=100, alpha=0.1, seed=0)
    assert set(result) == {"G1/spot", "G1/patient"}
    assert result["G1/patient"]["mean_coverage"] >= 0.9 - 0.03
    assert result["G1/spot"]["mean_coverage"] < result["G1/patient"]["mean_coverage"]
    assert result["G1/patient"]["infinite"] == 0.0 and result["G1/spot"]["sd_coverage"] > 0
    assert "| G1 |" in bench.table(result, ["G1"], 0.1)
