"""Honest warnings: each names the number behind it and what to do, in eval/metrics.json,
calibrate's and eval's summaries on stderr; quiet when nothing is wrong."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from rigor.evaluation.caveats import interval_caveats, task_caveats, unpredicted_classes
from rigor.policies.caveats import calib_size_caveats, conformal_samples_needed


def _ci(estimate: float, low: float, high: float) -> dict[str, float]:
    return {"estimate": estimate, "ci_lower": low, "ci_upper": high}


def _result(coverage: dict[str, float], empty: dict[str, float], accuracy: float) -> dict:
    sets = {"alpha": 0.1, "coverage": coverage, "empty": empty, "set_size": _ci(1, 1, 1)}
    return {"accuracy": _ci(accuracy, accuracy, accuracy), "guarantees": {"sets": {"lac": sets}}}


def test_sets_below_nominal_and_empty_sets_are_flagged_with_their_numbers() -> None:
    logits = np.eye(3)[[0, 1, 2, 0]]
    labels = np.array([0, 1, 2, 0])
    result = _result(_ci(0.856, 0.811, 0.893), _ci(0.144, 0.107, 0.189), 0.95)
    found = task_caveats("digit", result, logits, labels, None, {})
    assert any("0.856 [0.811, 0.893] lies below the nominal 0.9" in w for w in found)
    empty = next(w for w in found if "empty" in w)
    assert "sets at alpha 0.1: empty for LAC 14.4% of val_test samples" in empty
    assert "alpha 0.1 exceeds the model's val_test error rate 0.050" in empty
    fine = _result(_ci(0.91, 0.88, 0.94), _ci(0.0, 0.0, 0.0), 0.8)
    assert task_caveats("digit", fine, logits, labels, None, {}) == []


def test_a_class_never_predicted_is_named_with_its_count() -> None:
    logits = np.array([[0.0, 2.0, 1.0], [0.0, 1.0, 2.0], [0.0, 3.0, 1.0]])
    labels = np.array([0, 2, 1])
    (warning,) = unpredicted_classes("digit", logits, labels)
    assert "head digit never predicts class 0 (1 in val_test)" in warning
    assert unpredicted_classes("digit", np.eye(3), np.arange(3)) == []


def test_a_small_val_calib_and_a_temperature_that_hurt_are_flagged() -> None:
    assert conformal_samples_needed(0.1) == 142  # 16 (1 - alpha) / alpha - 2
    small = calib_size_caveats(100, 0.1, 0.05)
    assert "at alpha 0.1" in small[0] and "142 samples" in small[0]
    assert "about 5.0 errors; 200 samples" in small[1]
    assert calib_size_caveats(300, 0.1, 0.05) == []
    thresholds = {
        "temperature": 1.7,
        "fitted_on": {"n": 500},
        "target_risk": 0.1,
        "nll": {"before": 0.30, "after": 0.29},
        "ece": {"before": _ci(0.067, 0.05, 0.08), "after": _ci(0.088, 0.07, 0.1)},
    }
    result = {"accuracy": _ci(0.9, 0.88, 0.92)}
    (warning,) = task_caveats("digit", result, np.eye(2), np.arange(2), thresholds, {})
    assert "raised ECE on val_calib from 0.067 to 0.088" in warning
    assert "calibration.temperature: none" in warning


def test_an_interval_below_its_coverage_is_flagged() -> None:
    node = {"alpha": 0.1, "target_coverage": 0.9, "coverage": _ci(0.53, 0.31, 0.75)}
    (warning,) = interval_caveats("PTPRC", node)
    assert "0.530 [0.310, 0.750] lies below the nominal 0.9" in warning
    assert interval_caveats("PTPRC", node | {"coverage": _ci(0.88, 0.8, 0.95)}) == []


@pytest.mark.smoke
def test_eval_and_calibrate_print_one_screen_and_keep_stdout_to_the_path(
    smoke_manifest: Path, tmp_path: Path, run_script, capsys: pytest.CaptureFixture[str]
) -> None:  # type: ignore[no-untyped-def]
    import shutil

    run = tmp_path / "run"
    shutil.copytree(smoke_manifest.parent, run)
    manifest = str(run / "manifest.json")
    capsys.readouterr()
    flags = ["--target-risk", "0.95", "--set", "calibration.min_coverage=0.05"]
    assert run_script("calibrate", "--from-manifest", manifest, *flags) == 0
    out, err = capsys.readouterr()
    assert out.strip() == str(run / "calibration" / "thresholds.json")
    assert "calibrate on val_calib:" in err and "policy for export: threshold" in err
    stage = json.loads((run / "manifest.json").read_text())["stages"][-1]
    assert stage["summary"]["warnings"] == [
        line.removeprefix("  warning: ") for line in err.splitlines() if "warning:" in line
    ]
    assert run_script("eval", "--from-manifest", manifest) == 0
    out, err = capsys.readouterr()
    assert out.strip() == str(run / "eval" / "metrics.json")
    report = json.loads((run / "eval" / "metrics.json").read_text())["tasks"]["digit"]
    accuracy = report["accuracy"]
    assert f"accuracy {accuracy['estimate']:.3f} [{accuracy['ci_lower']:.3f}," in err
    assert "threshold policy: answers" in err
    assert any("never predicts class" in warning for warning in report["warnings"])
    for warning in report["warnings"]:  # the smoke model answers few classes after 2 epochs
        assert f"warning: {warning}" in err
    assert f"files: {run / 'eval'}/" in err


def test_tensorboard_gets_hyperparameters_eval_metrics_and_figures(
    smoke_manifest: Path, tmp_path: Path, run_script
) -> None:  # type: ignore[no-untyped-def]
    """The run's resolved config with its final metrics as TensorBoard hparams (the HPARAMS
    view compares runs), and eval's and calibrate's numbers and figures beside the training
    scalars, at the run's last step."""
    import shutil

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    run = tmp_path / "run"
    shutil.copytree(smoke_manifest.parent, run)
    manifest = str(run / "manifest.json")
    flags = ["--target-risk", "0.95", "--set", "calibration.min_coverage=0.05"]
    assert run_script("calibrate", "--from-manifest", manifest, *flags) == 0
    assert run_script("eval", "--from-manifest", manifest) == 0
    steps = json.loads((run / "manifest.json").read_text())["stages"][0]["summary"]["steps"]

    hparams = EventAccumulator(str(run / "logs" / "tb" / "hparams")).Reload()
    content = hparams.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    start = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info
    assert start.hparams["training.lr"].number_value == pytest.approx(3e-3)
    assert start.hparams["model.backbone"].string_value == "cnn_small"
    metrics = json.loads((run / "metrics.json").read_text())["metrics"]
    final = hparams.Scalars("acc/val_test")[0].value
    assert final == pytest.approx(metrics["acc/val_test"], rel=1e-6)

    evaluated = EventAccumulator(str(run / "logs" / "tb" / "eval")).Reload()
    report = json.loads((run / "eval" / "metrics.json").read_text())["tasks"]["digit"]
    (accuracy,) = evaluated.Scalars("eval/digit/accuracy")
    assert accuracy.step == steps
    assert accuracy.value == pytest.approx(report["accuracy"]["estimate"], rel=1e-6)
    images = evaluated.Tags()["images"]
    assert "eval/digit_confusion_matrix.png" in images
    (image,) = evaluated.Images("eval/digit_confusion_matrix.png")
    assert image.encoded_image_string == (run / "eval" / "digit_confusion_matrix.png").read_bytes()
    calibrated = EventAccumulator(str(run / "logs" / "tb" / "calibrate")).Reload()
    assert "calibration/reliability.png" in calibrated.Tags()["images"]
    assert "calibrate/temperature" in calibrated.Tags()["scalars"]


def test_a_long_loop_prints_progress_lines_when_piped(capsys: pytest.CaptureFixture[str]) -> None:
    from rigor.tracking import Progress

    loud = Progress(4, "eval", "tasks", every=0.0)
    for _ in range(4):
        loud.tick()
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(",")[0] for line in lines] == [
        "eval: 1/4 tasks",
        "eval: 2/4 tasks",
        "eval: 3/4 tasks",
    ]
    assert all("s left" in line for line in lines)
    quiet = Progress(4, "eval", "tasks", every=3600.0)
    for _ in range(4):
        quiet.tick()
    assert capsys.readouterr().err == ""


def test_the_policy_table_counts_empty_sets_as_abstentions() -> None:
    """The demo's LAC row: 14.4% of sets empty, so 85.6% answered, and none of the
    non-empty sets misses its label."""
    from rigor.evaluation.report_guarantees import policy_table

    lac = {
        "alpha": 0.1,
        "coverage": _ci(0.856, 0.811, 0.893),
        "empty": _ci(0.144, 0.107, 0.189),
        "miss_answered": _ci(0.0, 0.0, 0.0),
        "set_size": _ci(0.856, 0.811, 0.893),
    }
    table = policy_table({"guarantees": {"sets": {"lac": lac}}})
    row = "| sets: lac, alpha 0.1 | 0.856 [0.811, 0.893] | 0.000 [0.000, 0.000] | 0.856"
    assert row in table
