"""House rules: every stage override is validated, metric inputs are checked, each list of
names has one source, and the smoke run's losses are pinned."""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from rigor.metrics.calibration import ece
from rigor.metrics.selective import augrc, auroc

# Per-epoch train and val_select losses of configs/experiment/smoke.yaml on CPU (torch
# 2.14.1, seed 0). A deterministic change to the data path, the model or the loss math moves
# them; update them only with an explanation in EXPERIMENTS.md.
SMOKE_LOSSES = [
    {"loss/train": 2.3427426338195803, "loss/val_select": 2.319335699081421},
    {"loss/train": 2.314464807510376, "loss/val_select": 2.3071601390838623},
]


def test_smoke_losses_are_pinned(smoke_manifest: Path) -> None:
    with open(smoke_manifest.parent / "logs" / "epochs.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == len(SMOKE_LOSSES)
    for row, pinned in zip(rows, SMOKE_LOSSES, strict=True):
        for key, value in pinned.items():
            assert float(row[key]) == pytest.approx(value, abs=1e-6), key


@pytest.mark.parametrize(
    "script, flags, field",
    [
        ("eval", ["--n-resamples", "3"], "evaluation.n_resamples"),
        ("calibrate", ["--target-risk", "1.5"], "calibration.target_risk"),
        ("xai", ["--n", "0"], "xai.n_samples"),
    ],
)
def test_invalid_stage_overrides_exit_2_naming_the_field(
    smoke_manifest: Path,
    run_script: Callable[..., int],
    capsys: pytest.CaptureFixture[str],
    script: str,
    flags: list[str],
    field: str,
) -> None:
    before = smoke_manifest.read_bytes()
    code = run_script(
        script, "--from-manifest", str(smoke_manifest), "--env-policy", "ignore", *flags
    )
    assert code == 2
    assert f"{field}:" in capsys.readouterr().err
    assert smoke_manifest.read_bytes() == before  # nothing recorded


@pytest.mark.parametrize("value", ["1e999", "-.inf", ".nan", "nan"])
@pytest.mark.parametrize("key", ["optimizer.weight_decay", "training.lr", "data.splits.train"])
def test_every_config_float_must_be_finite_before_any_folder(
    tmp_path: Path,
    run_script: Callable[..., int],
    capsys: pytest.CaptureFixture[str],
    key: str,
    value: str,
) -> None:
    out = tmp_path / "out"
    flags = ["--config", "configs/experiment/smoke.yaml", "--set", f"run.output_root={out}"]
    assert run_script("train", *flags, "--set", f"{key}={value}") == 2
    assert f"{key}: Input should be a finite number" in capsys.readouterr().err
    assert not out.exists()


def test_json_numbers_that_overflow_are_refused_naming_file_and_field() -> None:
    from rigor.errors import ManifestError
    from rigor.io import parse_json

    with pytest.raises(ManifestError, match=r"p.json: \$.a.b\[1\]: 1e999 overflows to infinity"):
        parse_json(b'{"a": {"b": [0.5, 1e999]}}', "p.json")
    with pytest.raises(ManifestError, match=r"\$.t: -2E\+400 overflows"):
        parse_json(b'{"t": -2E+400}', "p.json", non_finite="null")  # even where NaN is null
    with pytest.raises(ManifestError, match=r"\$.t: NaN is not a JSON number"):
        parse_json(b'{"t": NaN}', "p.json")
    assert parse_json(b'{"t": 1e308, "n": NaN}', "p.json", non_finite="null") == {
        "t": 1e308,
        "n": None,
    }


def test_apply_overrides_validates_like_the_config() -> None:
    from rigor.config import apply_overrides, load_config
    from rigor.errors import ConfigError

    evaluation = load_config(Path("configs/experiment/smoke.yaml"), environ={}).config.evaluation
    assert apply_overrides(evaluation, {"n_resamples": 50}, "evaluation").n_resamples == 50
    with pytest.raises(ConfigError, match=r"evaluation.level: .*\(got 7.0\)"):
        apply_overrides(evaluation, {"level": 7.0}, "evaluation")
    with pytest.raises(ConfigError, match="evaluation.typo: unknown key"):
        apply_overrides(evaluation, {"typo": 1}, "evaluation")


def test_metrics_refuse_nan_or_non_binary_correctness() -> None:
    confidence = np.array([0.9, 0.8, 0.7, 0.6])
    assert augrc(confidence, np.array([1, 0, 1, 1])) == augrc(
        confidence, np.array([True, False, True, True])
    )
    with pytest.raises(ValueError, match="correct must be 0/1"):
        augrc(confidence, np.array([1.0, np.nan, 1.0, 0.0]))
    with pytest.raises(ValueError, match="first at index 2: 2"):
        auroc(confidence, np.array([1, 0, 2, 1]))


def test_calibration_metrics_refuse_rows_that_are_not_probabilities() -> None:
    probs = np.array([[0.7, 0.3], [0.2, 0.8]])
    labels = np.array([0, 1])
    assert ece(probs, labels) == pytest.approx(0.25)
    with pytest.raises(ValueError, match="first row 1 sums to 1.5"):
        ece(np.array([[0.7, 0.3], [0.7, 0.8]]), labels)
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\]"):
        ece(np.array([[2.0, -1.0], [0.2, 0.8]]), labels)  # logits, not probabilities


def test_xai_methods_have_one_source() -> None:
    from conftest import load_script

    from rigor.config.stages import XAI_METHODS
    from rigor.xai.attributions import METHODS

    assert set(METHODS) == set(XAI_METHODS)
    parser_choices = None
    import argparse

    original = argparse.ArgumentParser.parse_args

    def capture(self: argparse.ArgumentParser, *args: object, **kwargs: object) -> object:
        nonlocal parser_choices
        parser_choices = next(a.choices for a in self._actions if a.dest == "method")
        raise SystemExit(0)

    argparse.ArgumentParser.parse_args = capture  # type: ignore[method-assign]
    try:
        with pytest.raises(SystemExit):
            load_script("xai").main([])
    finally:
        argparse.ArgumentParser.parse_args = original  # type: ignore[method-assign]
    assert tuple(parser_choices or ()) == XAI_METHODS


def test_run_kinds_are_one_registry() -> None:
    from rigor.run_kinds import RUN_KINDS, kind_of

    assert set(RUN_KINDS) == {"train", "pretrain", "probe"}
    assert kind_of({"stages": [{"name": "pretrain"}]}).ranking == (
        "best/loss/mae/val_select",
        "min",
    )
    assert RUN_KINDS["train"].task_function().__name__ == "train"
    assert kind_of({"stages": [{"name": "probe"}]}).task_function().__name__ == "probe"


def test_a_run_older_than_a_config_key_still_opens(smoke_manifest: Path) -> None:
    import json

    from rigor.config import run_config

    resolved = json.loads((smoke_manifest.parent / "config_resolved.json").read_text())
    del resolved["calibration"]["interval_alpha"]
    del resolved["data"]["transforms"]["augment"]
    config, added = run_config(resolved)
    assert added == ["data.transforms.augment", "calibration.interval_alpha"]
    assert config.calibration.interval_alpha == 0.1 and not config.data.transforms.augment.active()
    resolved["training"]["lr"] = -1.0  # a real error is still an error
    with pytest.raises(ValueError, match="lr"):
        run_config(resolved)
