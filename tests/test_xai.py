"""XAI: method shapes, IG completeness, sanity checks on a trained model, the xai stage."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import CONFIGS, SMOKE
from torch import nn

from rigor.config import load_config
from rigor.data.registry import TaskSpec
from rigor.errors import ConfigError
from rigor.models.build import backbone_spec, build_model
from rigor.training.run import train
from rigor.xai.attributions import METHODS, attribute, find_layer
from rigor.xai.sanity import mask_mass, pointing_game, spearman_rows

TASKS = {"digit": TaskSpec("digit", "classification", 10)}


def options(model: nn.Module, backbone: str, inputs: torch.Tensor) -> dict:
    layer = backbone_spec(backbone).layer
    return {
        "baselines": torch.zeros_like(inputs),
        "ig_steps": 8,
        "internal_batch_size": 8,
        "layer_name": layer,
        "layer": find_layer(model, layer),
    }


@pytest.mark.parametrize("backbone", ["cnn_small", "resnet18", "convnext_tiny"])
@pytest.mark.parametrize("method", sorted(METHODS))
def test_attribution_shapes(backbone: str, method: str) -> None:
    torch.manual_seed(0)
    cfg = load_config(SMOKE, sets=[f"model.backbone={backbone}"], environ={}).config.model
    model = build_model(cfg, TASKS, (3, 32, 32)).eval()
    inputs = torch.randn(2, 3, 32, 32)
    result = attribute(
        method, model, "digit", inputs, torch.tensor([1, 2]), options(model, backbone, inputs)
    )
    channels = 1 if method == "grad_cam" else 3
    assert result.maps.shape == (2, channels, 32, 32) and np.isfinite(result.maps).all()
    assert (result.delta is not None) == (method == "integrated_gradients")


def test_grad_cam_refuses_a_transformer_layer() -> None:
    cfg = load_config(SMOKE, sets=["model.backbone=vit_b_16"], environ={}).config.model
    model = build_model(cfg, TASKS, (3, 32, 32)).eval()
    inputs = torch.randn(1, 3, 32, 32)
    with pytest.raises(ConfigError, match="needs a convolutional layer"):
        attribute(
            "grad_cam",
            model,
            "digit",
            inputs,
            torch.tensor([0]),
            options(model, "vit_b_16", inputs),
        )


class Linear(nn.Module):
    """f(x) = W x + b over flattened inputs, returned as a one-task dict."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(12, 3)

    def forward(self, inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"t": self.linear(inputs.flatten(1))}


def test_integrated_gradients_is_exact_and_complete_on_a_linear_model() -> None:
    torch.manual_seed(1)
    model = Linear().double()
    x = torch.randn(4, 1, 3, 4, dtype=torch.float64)
    baseline = torch.randn(4, 1, 3, 4, dtype=torch.float64)
    target = torch.tensor([0, 2, 1, 2])
    result = attribute(
        "integrated_gradients",
        model,
        "t",
        x,
        target,
        {"baselines": baseline, "ig_steps": 16, "internal_batch_size": 4},
    )
    weights = model.linear.weight.detach().numpy()[target.numpy()].reshape(4, 1, 3, 4)
    assert np.allclose(result.maps, (x - baseline).numpy() * weights, atol=1e-6)
    with torch.no_grad():
        gap = model(x)["t"][range(4), target] - model(baseline)["t"][range(4), target]
    assert np.allclose(
        result.maps.reshape(4, -1).sum(axis=1), gap.numpy(), atol=1e-6
    )  # completeness
    assert np.abs(result.delta).max() < 1e-6


def test_sanity_metric_definitions() -> None:
    maps = np.zeros((2, 4, 4))
    maps[0, 0, 0], maps[0, 3, 3] = 3.0, 1.0
    maps[1, 2, 2] = -5.0
    masks = np.zeros((2, 4, 4), bool)
    masks[:, :2, :2] = True
    assert mask_mass(maps, masks).tolist() == [0.75, 0.0]
    assert pointing_game(maps, masks).tolist() == [1.0, 0.0]
    a = np.arange(10.0)[None]
    assert spearman_rows(a, a**3)[0] == pytest.approx(1.0)
    assert spearman_rows(a, -a)[0] == pytest.approx(-1.0)


@pytest.fixture(scope="module")
def canvas_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """digits_canvas trained briefly (about 90% accurate), enough for attributions to mean much."""
    out = tmp_path_factory.mktemp("canvas")
    sets = [
        f"run.output_root={out}",
        "training.epochs=6",
        "model.channels=[16, 32, 64]",
        "logging.tensorboard=false",
    ]
    resolved = load_config(CONFIGS / "experiment" / "digits_canvas.yaml", sets=sets, environ={})
    return train(resolved, env_policy="ignore")


@pytest.mark.smoke
def test_xai_stage_on_a_trained_canvas_model(
    canvas_run: Path, run_script: Callable[..., int]
) -> None:
    from rigor.manifest import load_manifest, verify_manifest

    assert (
        run_script("xai", "--from-manifest", str(canvas_run), "--n", "8", "--env-policy", "ignore")
        == 0
    )
    xai = canvas_run.parent / "xai"
    summary = json.loads((xai / "summary.json").read_text())["tasks"]["digit"]
    assert (
        summary["mask_mass"] > 2.5 * summary["mask_mass_uniform_baseline"] == pytest.approx(2.5 / 9)
    )
    assert summary["pointing_game"] >= 0.75
    random = summary["randomization"]
    assert random["spearman_repeat"] == pytest.approx(1.0)
    assert random["spearman_full_randomized"] < random["spearman_repeat"] - 0.2
    assert random["spearman_head_randomized"] < random["spearman_repeat"]
    assert summary["ig_convergence_delta"]["mean_abs"] < 0.1
    with np.load(xai / "attributions.npz") as data:
        assert data["maps_digit"].dtype == np.float16 and data["maps_digit"].shape == (8, 24, 24)
        assert len(data["ids"]) == 8 and data["predictions_digit"].shape == (8,)
    assert (
        len(list((xai / "overlays").glob("digit_*.png"))) == 8 and (xai / "grid_digit.png").exists()
    )
    manifest = load_manifest(canvas_run)
    assert manifest["stages"][-1]["name"] == "xai"
    assert "xai/summary.json" in manifest["stages"][-1]["outputs"]
    verify_manifest(manifest, canvas_run.parent)
    steps = (xai / "logs" / "steps.jsonl").read_text()
    assert '"xai/digit/mask_mass"' in steps


@pytest.mark.smoke
def test_xai_options_and_errors(
    canvas_run: Path, run_script: Callable[..., int], capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["--from-manifest", str(canvas_run), "--env-policy", "ignore"]
    assert run_script("xai", *base, "--method", "grad_cam", "--n", "2", "--target", "true") == 0
    summary = json.loads((canvas_run.parent / "xai" / "summary.json").read_text())
    assert summary["method"] == "grad_cam" and summary["tasks"]["digit"]["target"] == "true class"
    assert (
        run_script(
            "xai",
            *base,
            "--method",
            "saliency",
            "--target",
            "3",
            "--n",
            "2",
            "--baseline",
            "blurred",
        )
        == 0
    )
    assert run_script("xai", *base, "--target", "42", "--n", "2") == 2
    assert "xai.target: '42'" in capsys.readouterr().err
    assert run_script("xai", *base, "--ids", "no-such-id") == 2
    assert run_script("xai", *base, "--method", "grad_cam", "--layer", "nope", "--n", "2") == 2
