"""SelectiveNet gate: the loss formula, the model outputs, and the gate through calibrate,
eval, export and predict."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import CONFIGS

from rigor.config import load_config
from rigor.config.models import GateConfig
from rigor.data.registry import TaskSpec
from rigor.errors import ConfigError
from rigor.models.build import build_model
from rigor.models.registry import AUX, GATE
from rigor.training.loop import selectivenet_loss, total_loss

GATED = CONFIGS / "experiment" / "digits_gate.yaml"
TASKS = {"digit": TaskSpec("digit", "classification", 10), "ink": TaskSpec("ink", "regression")}


def gate_cfg(**kw: float) -> GateConfig:
    values = {"task": "digit", "target_coverage": 0.8, "lam": 32.0, "alpha": 0.5, "hidden": 8}
    return GateConfig(**(values | kw))


def test_selectivenet_loss_matches_a_hand_computation() -> None:
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    aux = torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.0, 3.0]])
    target = torch.tensor([0, 0, 1])
    gate_logits = torch.tensor([2.0, -1.0, 0.0])
    g = torch.sigmoid(gate_logits)
    ce = torch.nn.functional.cross_entropy(logits, target, reduction="none")
    phi = g.mean()
    risk = (ce * g).mean() / phi
    aux_ce = torch.nn.functional.cross_entropy(aux, target)
    for c in (0.5, 0.9):  # coverage above the target: no penalty; below: lam (c - phi)^2
        cfg = gate_cfg(target_coverage=c, alpha=0.7)
        expected = 0.7 * (risk + 32.0 * max(0.0, c - float(phi)) ** 2) + 0.3 * aux_ce
        loss, coverage, selective_risk = selectivenet_loss(logits, gate_logits, aux, target, cfg)
        assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
        assert coverage.item() == pytest.approx(phi.item()) and not coverage.requires_grad
        assert selective_risk.item() == pytest.approx(risk.item())
    assert float(phi) < 0.9  # so the second case did pay the penalty


def test_gated_model_outputs_and_loss_routing() -> None:
    cfg = load_config(GATED, environ={}).config.model
    model = build_model(cfg, TASKS, (1, 8, 8)).train()
    out = model(torch.randn(6, 1, 8, 8))
    assert out[GATE + "digit"].shape == (6,) and out[AUX + "digit"].shape == (6, 10)
    assert GATE + "ink" not in out
    targets = {"digit": torch.arange(6) % 10, "ink": torch.randn(6)}
    _, per_task = total_loss(out, targets, TASKS, gate=cfg.gate)
    expected = selectivenet_loss(
        out["digit"], out[GATE + "digit"], out[AUX + "digit"], targets["digit"], cfg.gate
    )[0]
    assert per_task["digit"].item() == pytest.approx(expected.item())
    # the gate's gradient reaches the selection head
    per_task["digit"].backward()
    assert model.gates["digit"].selector[0].weight.grad.abs().sum() > 0
    with pytest.raises(ConfigError, match="not a classification task"):
        build_model(cfg.model_copy(update={"gate": gate_cfg(task="ink")}), TASKS, (1, 8, 8))


def test_gate_runs_through_calibrate_eval_export_and_predict(
    tmp_path: Path, run_script, capsys: pytest.CaptureFixture[str]  # type: ignore[no-untyped-def]
) -> None:
    from rigor.training.run import train

    sets = [
        f"run.output_root={tmp_path}",
        "training.epochs=3",
        "scheduler.warmup_epochs=0.5",
        "logging.tensorboard=false",
        "evaluation.n_resamples=50",
    ]
    path = train(load_config(GATED, sets=sets, environ={}), env_policy="ignore")
    run = path.parent
    with np.load(run / "predictions" / "val_calib.npz") as data:
        gate_logits, labels = data["gate_digit"], data["targets_digit"]
        predicted = data["logits_digit"].argmax(axis=1)
    manifest = json.loads(path.read_text())
    assert "gate_coverage/digit/val_test" in manifest["metrics"]
    m = str(path)
    assert run_script("calibrate", "--from-manifest", m, "--target-risk", "0.2") == 0
    policy = json.loads((run / "calibration" / "thresholds.json").read_text())
    assert policy["score"] == "gate"
    # the threshold is one of the val_calib gate scores and its recorded coverage is theirs
    scores = 1 / (1 + np.exp(-gate_logits.astype(np.float64)))
    accepted = scores >= policy["threshold"]
    assert policy["fitted_on"]["coverage"] == pytest.approx(accepted.mean())
    wrong = predicted[accepted] != labels[accepted]
    assert policy["fitted_on"]["selective_risk"] == pytest.approx(wrong.mean())
    assert run_script("eval", "--from-manifest", m) == 0
    report = json.loads((run / "eval" / "metrics.json").read_text())["tasks"]["digit"]
    assert "gate" in report["scores"] and report["policy"]["score"] == "gate"
    assert run_script("export", "--from-manifest", m) == 0
    capsys.readouterr()
    assert run_script("predict", "--bundle", str(run / "bundle"), "--split", "val_test") == 0
    rows = list(csv.DictReader((run / "predict" / "val_test.csv").open()))
    with np.load(run / "predictions" / "val_test.npz") as data:
        test_scores = 1 / (1 + np.exp(-data["gate_digit"].astype(np.float64)))
        ids = list(data["ids"])
    by_id = dict(zip(ids, test_scores, strict=True))
    for row in rows:  # predict.py uses the gate score and the calibrated threshold
        assert float(row["confidence"]) == pytest.approx(by_id[row["id"]], abs=2e-6)
        assert (row["abstained"] == "yes") == (by_id[row["id"]] < policy["threshold"])
    coverage = report["policy"]["coverage"]["estimate"]
    assert np.mean([row["abstained"] == "no" for row in rows]) == pytest.approx(coverage)


def test_gate_score_needs_a_gated_run(
    smoke_manifest: Path, run_script, capsys: pytest.CaptureFixture[str]  # type: ignore[no-untyped-def]
) -> None:
    code = run_script("calibrate", "--from-manifest", str(smoke_manifest), "--score", "gate")
    assert code == 2
    assert "task 'digit' of this run has no gate" in capsys.readouterr().err
    assert not (smoke_manifest.parent / "calibration" / "thresholds.json").exists()


def test_gate_settings_are_checked_across_sections() -> None:
    with pytest.raises(ConfigError, match="model.gate.task 'parity' is not in data.tasks"):
        load_config(GATED, sets=["model.gate.task=parity"], environ={})
    with pytest.raises(ConfigError, match="min_batch_size must be at least 2"):
        load_config(GATED, sets=["training.min_batch_size=1"], environ={})
    with pytest.raises(ConfigError, match="calibration.score is gate"):
        load_config(GATED, sets=["model.gate.task=null"], environ={})
