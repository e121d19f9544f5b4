"""Backbone and head registries: shapes, local weights, freezing, size accounting."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import SMOKE

from rigor.config import load_config
from rigor.data.registry import TaskSpec
from rigor.errors import ArtifactError, ConfigError
from rigor.models.build import backbone_spec, build_model
from rigor.models.registry import BACKBONES, model_size

TASKS = {"digit": TaskSpec("digit", "classification", 10), "score": TaskSpec("score", "regression")}
EXPECTED_DIM = {
    "cnn_small": 16,
    "resnet18": 512,
    "resnet50": 2048,
    "convnext_tiny": 768,
    "vit_b_16": 768,
    "dinov3_vit": 384,
    "resnet50_trunc": 1024,
    "timm": 192,
}
EXTRA_SETS = {  # what a backbone needs besides its name; hf_auto (a folder): test_encoders.py
    "timm": [
        "model.timm.arch=vit_tiny_patch16_224",
        "model.timm.kwargs={img_size: 32, patch_size: 8, dynamic_img_size: true}",
    ]
}
TESTED_ELSEWHERE = {"hf_auto"}


def model_cfg(*sets: str):  # type: ignore[no-untyped-def]
    return load_config(SMOKE, sets=list(sets), environ={}).config.model


def test_every_built_in_backbone_is_tested() -> None:
    backbone_spec("cnn_small")  # imports the built-in registrations
    built_in = {
        name for name, spec in BACKBONES.items() if spec.build.__module__.startswith("rigor.")
    }
    assert built_in == set(EXPECTED_DIM) | TESTED_ELSEWHERE


@pytest.mark.parametrize("name", sorted(EXPECTED_DIM))
@pytest.mark.parametrize("channels", [1, 3])
def test_forward_shapes_with_heads(name: str, channels: int) -> None:
    torch.manual_seed(0)
    sets = [f"model.backbone={name}", *EXTRA_SETS.get(name, [])]
    model = build_model(model_cfg(*sets), TASKS, (channels, 32, 32)).eval()
    assert model.feature_dim == EXPECTED_DIM[name]
    assert isinstance(model.heads, torch.nn.ModuleDict) and set(model.heads) == set(TASKS)
    with torch.no_grad():
        out = model(torch.randn(2, channels, 32, 32))
    assert out["digit"].shape == (2, 10) and out["score"].shape == (2,)
    assert torch.isfinite(out["digit"]).all()


def test_default_explanation_layers_exist() -> None:
    for name in EXPECTED_DIM:
        sets = [f"model.backbone={name}", *EXTRA_SETS.get(name, [])]
        model = build_model(model_cfg(*sets), TASKS, (3, 32, 32))
        layers = dict(model.backbone.named_modules())
        assert backbone_spec(name).layer in layers, name


def test_vit_needs_a_patch_multiple() -> None:
    with pytest.raises(ConfigError, match="divisible by 16"):
        build_model(model_cfg("model.backbone=vit_b_16"), TASKS, (3, 20, 20))


def test_unknown_backbone_names_the_field() -> None:
    with pytest.raises(ConfigError, match="model.backbone: unknown backbone 'resnet9000'"):
        build_model(model_cfg("model.backbone=resnet9000"), TASKS, (3, 32, 32))


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_local_torchvision_weights_load_including_original_classifier(
    tmp_path: Path, suffix: str
) -> None:
    import torchvision
    from safetensors.torch import save_file

    source = torchvision.models.resnet18(weights=None)
    state = {key: value.contiguous() for key, value in source.state_dict().items()}
    path = tmp_path / f"resnet18{suffix}"
    if suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save(state, path)
    model = build_model(
        model_cfg("model.backbone=resnet18", f"model.weights_path={path}"), TASKS, (3, 32, 32)
    )
    loaded = model.backbone.net.state_dict()
    assert torch.equal(loaded["conv1.weight"], state["conv1.weight"])
    assert torch.equal(loaded["layer4.1.bn2.running_var"], state["layer4.1.bn2.running_var"])


def test_mismatched_weights_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "w.pt"
    torch.save({"conv1.weight": torch.zeros(1)}, path)
    with pytest.raises(ConfigError, match="keys do not match"):
        build_model(
            model_cfg("model.backbone=resnet18", f"model.weights_path={path}"), TASKS, (3, 32, 32)
        )
    with pytest.raises(ArtifactError, match="file not found"):
        build_model(model_cfg(f"model.weights_path={tmp_path / 'nope.pt'}"), TASKS, (1, 8, 8))


def test_freeze_backbone_and_size() -> None:
    model = build_model(model_cfg("model.freeze_backbone=true"), TASKS, (1, 8, 8))
    info = model_size(model)
    head_params = sum(p.numel() for p in model.heads.parameters())
    assert info["params_trainable"] == head_params == (16 * 10 + 10) + (16 + 1)
    assert info["params_total"] > info["params_trainable"]
    assert info["size_mb"] == pytest.approx(
        sum(
            t.numel() * 4
            for t in [*model.parameters(), *model.buffers()]
            if t.dtype == torch.float32
        )
        / 2**20
        + sum(t.numel() * 8 for t in model.buffers() if t.dtype == torch.int64) / 2**20,
        abs=1e-3,
    )
