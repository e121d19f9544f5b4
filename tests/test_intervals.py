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


def _forge(bundle: Path, rel: str, text: str) -> None:
    """Rewrite a bundle file and update its hash and the record's seal to match."""
    from rigor.io import record_hash, sha256_file

    (bundle / rel).write_text(text)
    record = json.loads((bundle / "bundle.json").read_text())
    record["sha256"][rel] = sha256_file(bundle / rel)
    record["record_sha256"] = record_hash(record)
    (bundle / "bundle.json").write_text(json.dumps(record))
