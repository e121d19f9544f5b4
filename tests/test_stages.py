"""calibrate, eval, export and predict from a manifest; split discipline; bundle checks."""

from __future__ import annotations

import csv
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, SMOKE

from rigor.config import load_config
from rigor.metrics.scores import softmax
from rigor.training.run import train

pytestmark = pytest.mark.smoke
FAST = ["--env-policy", "ignore"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small run good enough to calibrate (~90% accuracy), shared read-only."""
    out = tmp_path_factory.mktemp("stages")
    sets = [
        f"run.output_root={out}",
        "training.max_steps_per_epoch=null",
        "training.epochs=3",
        "model.channels=[16, 32]",
        "logging.tensorboard=false",
        "evaluation.n_resamples=200",
    ]
    return train(load_config(SMOKE, sets=sets, environ={}), env_policy="ignore")


@pytest.fixture
def run(trained: Path, tmp_path: Path) -> Path:
    """A private copy of the trained run; returns its manifest."""
    target = tmp_path / trained.parent.name
    shutil.copytree(trained.parent, target)
    return target / "manifest.json"


def calibrate_args(manifest: Path) -> list[str]:
    return [
        "--from-manifest",
        str(manifest),
        "--target-risk",
        "0.05",
        "--min-coverage",
        "0.3",
        *FAST,
    ]


def test_schemas_under_schema_are_fresh() -> None:
    from rigor.schema import stale

    assert stale(ROOT / "schema") == []


def test_calibrate_uses_val_calib_only_and_picks_the_best_feasible(
    run: Path, run_script: Callable[..., int]
) -> None:
    for split in ("val_test", "val_select"):  # calibrate must not need them
        (run.parent / "predictions" / f"{split}.npz").unlink()
    assert run_script("calibrate", *calibrate_args(run)) == 0
    record = json.loads((run.parent / "calibration" / "thresholds.json").read_text())
    with np.load(run.parent / "predictions" / "val_calib.npz") as data:
        logits, labels = data["logits_digit"], data["targets_digit"]
    probs = softmax(logits, record["temperature"])
    conf, correct = probs.max(axis=1), probs.argmax(axis=1) == labels
    assert record["threshold"] in set(conf.tolist())  # a real calibrated confidence, not a grid
    accepted = conf >= record["threshold"]
    assert record["fitted_on"]["coverage"] == pytest.approx(accepted.mean())
    assert record["fitted_on"]["selective_risk"] == pytest.approx((~correct[accepted]).mean())
    with open(run.parent / "calibration" / "sweep.csv") as handle:
        rows = [{k: float(v) for k, v in r.items()} for r in csv.DictReader(handle)]
    assert len(rows) == len(np.unique(conf))
    feasible = [r for r in rows if r["selective_risk"] <= 0.05 and r["coverage"] >= 0.3]
    assert record["fitted_on"]["coverage"] == max(r["coverage"] for r in feasible)
    assert record["nll"]["after"] <= record["nll"]["before"]
    stages = json.loads(run.read_text())["stages"]
    assert stages[-1]["name"] == "calibrate" and stages[-1]["options"]["reads"] == [
        "predictions/val_calib.npz"
    ]


def test_no_feasible_threshold_exits_2_and_writes_nothing(
    run: Path, run_script: Callable[..., int], capsys: pytest.CaptureFixture[str]
) -> None:
    before = run.read_bytes()
    args = ["--from-manifest", str(run), "--target-risk", "0.0001", "--min-coverage", "0.99", *FAST]
    assert run_script("calibrate", *args) == 2
    assert "no threshold on val_calib meets selective risk <= 0.0001" in capsys.readouterr().err
    assert not (run.parent / "calibration").exists() and run.read_bytes() == before


def test_eval_fits_nothing_and_applies_the_policy(
    run: Path, run_script: Callable[..., int]
) -> None:
    assert run_script("calibrate", *calibrate_args(run)) == 0
    policy_bytes = (run.parent / "calibration" / "thresholds.json").read_bytes()
    (run.parent / "predictions" / "val_calib.npz").unlink()  # eval must not need it
    assert run_script("eval", "--from-manifest", str(run), *FAST) == 0
    assert (run.parent / "calibration" / "thresholds.json").read_bytes() == policy_bytes
    report = json.loads((run.parent / "eval" / "metrics.json").read_text())["tasks"]["digit"]
    policy = json.loads(policy_bytes)
    with np.load(run.parent / "predictions" / "val_test.npz") as data:
        probs = softmax(data["logits_digit"], policy["temperature"])
        labels = data["targets_digit"]
    accepted = probs.max(axis=1) >= policy["threshold"]
    assert report["policy"]["coverage"]["estimate"] == pytest.approx(accepted.mean())
    risk = (probs.argmax(axis=1) != labels)[accepted].mean()
    assert report["policy"]["selective_risk"]["estimate"] == pytest.approx(risk)
    assert report["policy"]["meets_target"] == (
        report["policy"]["selective_risk"]["ci_upper"] <= 0.05
    )
    assert set(report["scores"]) == {"msp", "max_logit", "neg_entropy", "msp_calibrated"}
    for name in (
        "rc_curve",
        "generalized_rc_curve",
        "reliability",
        "augrc_bootstrap",
        "confusion_matrix",
    ):
        assert (run.parent / "eval" / f"digit_{name}.png").stat().st_size > 10_000
    with open(run.parent / "eval" / "metrics.csv") as handle:
        names = {row["metric"] for row in csv.DictReader(handle)}
    assert {
        "digit/scores/msp/augrc",
        "digit/calibration/ece",
        "digit/policy/selective_risk",
    } <= names


def test_eval_recompute_matches_saved_predictions(
    run: Path, run_script: Callable[..., int]
) -> None:
    assert run_script("eval", "--from-manifest", str(run), *FAST) == 0
    saved = json.loads((run.parent / "eval" / "metrics.json").read_text())["tasks"]["digit"]
    assert run_script("eval", "--from-manifest", str(run), "--recompute", *FAST) == 0
    again = json.loads((run.parent / "eval" / "metrics.json").read_text())["tasks"]["digit"]
    assert again["scores"]["msp"]["augrc"]["estimate"] == pytest.approx(
        saved["scores"]["msp"]["augrc"]["estimate"], abs=1e-9
    )
    assert again["calibration"]["accuracy"] == saved["calibration"]["accuracy"]


def test_training_never_loads_val_calib_or_val_test(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import rigor.training.predictions as predictions_module
    import rigor.training.run as run_module
    import rigor.training.session as session_module

    loaded: list[set[int]] = []
    original = session_module.make_loader

    def spy(prepared, rows, train):  # type: ignore[no-untyped-def]
        loaded.append(set(rows))
        return original(prepared, rows, train)

    monkeypatch.setattr(session_module, "make_loader", spy)
    monkeypatch.setattr(predictions_module, "make_loader", spy)
    original_fit = run_module.Session.run
    fitted: list[int] = []

    def run_and_mark(self):  # type: ignore[no-untyped-def]
        result = original_fit(self)
        fitted.append(len(loaded))
        return result

    monkeypatch.setattr(run_module.Session, "run", run_and_mark)
    sets = [
        f"run.output_root={tmp_path}",
        "training.monitor=val_select/augrc",
        "training.monitor_mode=min",
    ]
    manifest = train(load_config(SMOKE, sets=sets, environ={}), env_policy="ignore")
    splits = json.loads((manifest.parent / "splits.json").read_text())["splits"]
    ids = json.loads((manifest.parent / "splits.json").read_text())
    assert ids and fitted == [2]
    during_training = loaded[: fitted[0]]
    sizes = {name: len(rows) for name, rows in splits.items()}
    assert [len(rows) for rows in during_training] == [sizes["train"], sizes["val_select"]]
    assert "best/augrc/val_select" in json.loads(manifest.read_text())["metrics"]


def test_export_and_predict(
    run: Path, run_script: Callable[..., int], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_script("export", "--from-manifest", str(run), *FAST) == 2  # no policy yet
    assert "run scripts/calibrate.py first" in capsys.readouterr().err
    assert run_script("calibrate", *calibrate_args(run)) == 0
    assert run_script("eval", "--from-manifest", str(run), *FAST) == 0
    assert run_script("export", "--from-manifest", str(run), *FAST) == 0
    bundle = run.parent / "bundle"
    record = json.loads((bundle / "bundle.json").read_text())
    assert set(record["sha256"]) == {
        "model.safetensors",
        "config_resolved.json",
        "splits.json",
        "policy.json",
        "metrics/train.json",
        "metrics/eval.json",
    }
    assert run_script("predict", "--bundle", str(bundle), "--split", "val_test") == 0
    with open(run.parent / "predict" / "val_test.csv") as handle:
        rows = list(csv.DictReader(handle))
    report = json.loads((run.parent / "eval" / "metrics.json").read_text())["tasks"]["digit"]
    coverage = sum(row["abstained"] == "no" for row in rows) / len(rows)
    assert coverage == pytest.approx(report["policy"]["coverage"]["estimate"])
    from PIL import Image
    from sklearn.datasets import load_digits

    images = load_digits().images
    paths = []
    for index in (0, 1):
        path = tmp_path / f"digit{index}.png"
        Image.fromarray((images[index] * 255 / 16).astype(np.uint8)).save(path)
        paths.append(str(path))
    out = tmp_path / "pred.csv"
    assert (
        run_script("predict", "--bundle", str(bundle), "--input", *paths, "--output", str(out)) == 0
    )
    with open(out) as handle:
        assert [row["id"] for row in csv.DictReader(handle)] == paths


@pytest.mark.parametrize(
    "breakage, code, message",
    [
        ("two_active", 3, "2 active policies"),
        ("none_active", 3, "0 active policies"),
        ("changed_weights", 5, "model.safetensors: sha256 changed"),
        ("missing_policy", 5, "policy.json: missing"),
        ("nan_threshold", 3, "NaN is not a JSON number"),  # rehashed: only the value is bad
        ("inf_temperature", 3, "Infinity is not a JSON number"),
        ("overflow_threshold", 3, "policy.json: $.threshold: 1e999 overflows to infinity"),
        ("threshold_above_one", 3, "$.threshold: 1.5 is greater than the maximum of 1"),
        ("edited_transforms", 5, "bundle.json: its fields changed since it was written"),
        ("removed_seal", 5, "record_sha256 is missing, but a version 2 record is always sealed"),
        ("pre_seal_bundle", 0, "is a pre-seal record (version 1): its fields are not sealed"),
    ],
)
def test_bundle_refusals(
    run: Path,
    run_script: Callable[..., int],
    capsys: pytest.CaptureFixture[str],
    breakage: str,
    code: int,
    message: str,
) -> None:
    assert run_script("calibrate", *calibrate_args(run)) == 0
    assert run_script("export", "--from-manifest", str(run), *FAST) == 0
    bundle = run.parent / "bundle"
    record_path = bundle / "bundle.json"
    record = json.loads(record_path.read_text())
    if breakage == "two_active":
        shutil.copy(bundle / "policy.json", bundle / "policy2.json")
        record["policies"].append({"path": "policy2.json", "active": True})
        record["sha256"]["policy2.json"] = record["sha256"]["policy.json"]
    elif breakage == "none_active":
        record["policies"][0]["active"] = False
    elif breakage in (
        "nan_threshold",
        "inf_temperature",
        "overflow_threshold",
        "threshold_above_one",
    ):
        from rigor.io import record_hash, sha256_file

        policy = json.loads((bundle / "policy.json").read_text())
        key = "temperature" if breakage == "inf_temperature" else "threshold"
        forged = {"nan": float("nan"), "inf": float("inf"), "ove": 7.25, "thr": 1.5}[breakage[:3]]
        policy[key] = forged
        text = json.dumps(policy).replace("7.25", "1e999")
        (bundle / "policy.json").write_text(text)
        record["sha256"]["policy.json"] = sha256_file(bundle / "policy.json")
        record["record_sha256"] = record_hash(record)  # as if export had written it
    elif breakage == "edited_transforms":
        record["transforms"]["mean"] = [m + 0.1 for m in record["transforms"]["mean"]]
    elif breakage in ("removed_seal", "pre_seal_bundle"):
        del record["record_sha256"]
        record["bundle_version"] = 1 if breakage == "pre_seal_bundle" else 2
    elif breakage == "changed_weights":
        with open(bundle / "model.safetensors", "r+b") as handle:
            handle.seek(-4, 2)
            handle.write(b"\x00\x01\x02\x03")
    else:
        (bundle / "policy.json").unlink()
    record_path.write_text(json.dumps(record))
    capsys.readouterr()
    assert run_script("predict", "--bundle", str(bundle), "--split", "val_test") == code
    assert message in capsys.readouterr().err


def test_a_failed_export_leaves_the_previous_bundle_whole(
    run: Path, run_script: Callable[..., int], monkeypatch: pytest.MonkeyPatch
) -> None:
    import rigor.export.bundle as bundle_module

    assert run_script("calibrate", *calibrate_args(run)) == 0
    assert run_script("export", "--from-manifest", str(run), *FAST) == 0
    bundle = run.parent / "bundle"
    before = {p.name: p.read_bytes() for p in bundle.rglob("*") if p.is_file()}

    def fail(building: Path, *args: object) -> None:
        (building / "model.safetensors").write_bytes(b"half")
        raise RuntimeError("killed while writing")

    monkeypatch.setattr(bundle_module, "_fill", fail)
    assert run_script("export", "--from-manifest", str(run), *FAST) == 1
    assert {p.name: p.read_bytes() for p in bundle.rglob("*") if p.is_file()} == before
    assert not list(run.parent.glob(".bundle.*"))  # nothing half-built left behind
    assert run_script("predict", "--bundle", str(bundle), "--split", "val_test") == 0


@pytest.mark.slow  # three export processes at once
def test_concurrent_exports_of_one_run_all_succeed_and_verify(
    run: Path, run_script: Callable[..., int]
) -> None:
    import subprocess
    import sys

    assert run_script("calibrate", *calibrate_args(run)) == 0
    live = run.parent / f".bundle.{os.getpid()}.tmp"  # another export, alive, mid-build
    live.mkdir()
    dead = run.parent / f".bundle.{2**22 + 4321}.tmp"  # one killed long ago
    dead.mkdir()
    command = [sys.executable, str(ROOT / "scripts" / "export.py"), "--from-manifest", str(run)]
    exports = [
        subprocess.Popen([*command, *FAST], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for _ in range(3)
    ]
    results = [(p.wait(timeout=300), p.stderr.read().decode()) for p in exports]  # type: ignore[union-attr]
    assert [code for code, _ in results] == [0, 0, 0], results
    assert live.is_dir() and not dead.exists()  # only a dead process's folder is removed
    assert not [p for p in run.parent.glob(".bundle.*") if p != live and p.is_dir()]
    assert run_script("manifest", "verify", str(run)) == 0  # the last stage is the bundle
    stages = json.loads(run.read_text())["stages"]
    assert [s["name"] for s in stages].count("export") == 3
    live.rmdir()


def test_a_kill_between_bundle_swap_and_manifest_is_repaired_by_the_next_export(
    run: Path, run_script: Callable[..., int], monkeypatch: pytest.MonkeyPatch
) -> None:
    import rigor.export.bundle as bundle_module

    assert run_script("calibrate", *calibrate_args(run)) == 0
    assert run_script("export", "--from-manifest", str(run), *FAST) == 0
    original = bundle_module.finish_stage

    def killed(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt  # the bundle is swapped in, the manifest not yet updated

    monkeypatch.setattr(bundle_module, "finish_stage", killed)
    assert run_script("export", "--from-manifest", str(run), "--policy", "sets", *FAST) == 130
    monkeypatch.setattr(bundle_module, "finish_stage", original)
    (run.parent / ".manifest.json.0badc0de.tmp").write_text("{half a manifest")
    assert run_script("export", "--from-manifest", str(run), "--policy", "sets", *FAST) == 0
    assert run_script("manifest", "verify", str(run)) == 0
    assert not list(run.parent.glob(".manifest.json.*.tmp"))  # a killed writer's temporary
    assert run_script("predict", "--bundle", str(run.parent / "bundle"), "--split", "val_test") == 0
