"""Multi-task digits and uncertainty weighting of task losses (Kendall et al. 2018)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import CONFIGS, short_run

from rigor.config import load_config
from rigor.data.registry import TaskSpec
from rigor.training.loop import UncertaintyWeights, total_loss

MULTI = CONFIGS / "experiment" / "digits_multitask.yaml"
TASKS = {"digit": TaskSpec("digit", "classification", 10), "ink": TaskSpec("ink", "regression")}


def test_digits_offers_parity_and_ink_derived_from_image_and_label() -> None:
    from sklearn.datasets import load_digits

    from rigor.data.sources.digits import derived_targets

    bunch = load_digits()
    images = (bunch.images / 16.0).astype(np.float32)
    targets = derived_targets(images, bunch.target)
    assert np.array_equal(targets["parity"], bunch.target % 2)
    assert targets["ink"][5] == pytest.approx(images[5].mean() * 10, rel=1e-6)
    assert targets["digit"] is bunch.target


def test_uncertainty_weighted_loss_matches_the_formula() -> None:
    weights = UncertaintyWeights(TASKS)
    with torch.no_grad():
        weights.log_vars["digit"].fill_(0.4)
        weights.log_vars["ink"].fill_(-0.3)
    per_task = {"digit": torch.tensor(1.5), "ink": torch.tensor(2.0)}
    expected = math.exp(-0.4) * 1.5 + 0.2 + 0.5 * math.exp(0.3) * 2.0 - 0.15
    assert weights(per_task).item() == pytest.approx(expected, rel=1e-6)
    record = weights.record()
    assert record["ink"]["weight"] == pytest.approx(0.5 * math.exp(0.3), rel=1e-6)
    # with the weights at zero log-variance the objective is L_cls + L_reg / 2
    outputs = {"digit": torch.randn(4, 10), "ink": torch.randn(4)}
    targets = {"digit": torch.tensor([0, 1, 2, 3]), "ink": torch.randn(4)}
    plain, parts = total_loss(outputs, targets, TASKS)
    weighted, _ = total_loss(outputs, targets, TASKS, UncertaintyWeights(TASKS))
    assert float(plain) == pytest.approx(float(parts["digit"] + parts["ink"]))
    assert weighted.item() == pytest.approx((parts["digit"] + 0.5 * parts["ink"]).item())


def test_log_variance_converges_to_its_closed_form_optimum() -> None:
    # for a fixed loss L, c e^{-s} L + s / 2 is minimised at s* = log(2 c L)
    weights = UncertaintyWeights(TASKS)
    optimizer = torch.optim.SGD(weights.parameters(), lr=0.2)
    losses = {"digit": torch.tensor(0.3), "ink": torch.tensor(4.0)}
    for _ in range(500):
        optimizer.zero_grad()
        weights(losses).backward()
        optimizer.step()
    assert weights.log_vars["digit"].item() == pytest.approx(math.log(0.6), abs=1e-4)
    assert weights.log_vars["ink"].item() == pytest.approx(math.log(4.0), abs=1e-4)


def test_uncertainty_run_records_weights_and_checkpoints_them(tmp_path: Path) -> None:
    from rigor.training.run import train

    path = train(load_config(MULTI, sets=short_run(tmp_path), environ={}), env_policy="ignore")
    manifest = json.loads(path.read_text())
    assert set(manifest["dataset"]["tasks"]) == {"digit", "parity", "ink"}
    assert {"acc/parity/val_test", "mae/ink/val_test"} <= set(manifest["metrics"])
    record = manifest["stages"][0]["summary"]["task_weighting"]
    assert record["method"] == "uncertainty" and set(record["tasks"]) == {"digit", "parity", "ink"}
    state = torch.load(path.parent / "checkpoints" / "last.pt", weights_only=True)
    for task, values in record["tasks"].items():
        stored = float(state["loss_weights"][f"log_vars.{task}"])
        assert stored == pytest.approx(values["log_variance"])
        assert stored != 0.0  # the log-variances were trained
    header = (path.parent / "logs" / "epochs.csv").read_text().splitlines()[0].split(",")
    assert {"log_variance/digit", "log_variance/ink", "loss/ink/train"} <= set(header)
