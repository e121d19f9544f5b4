"""DINOv3 through transformers and LoRA/DoRA through peft: what trains, what stays, what loads."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import CONFIGS

from rigor.config import load_config
from rigor.data.registry import TaskSpec
from rigor.errors import ArtifactError, ConfigError
from rigor.models.build import build_model

LORA = CONFIGS / "experiment" / "digits_dinov3_lora.yaml"
TASKS = {"digit": TaskSpec("digit", "classification", 10)}
SHAPE = (1, 8, 8)


def cfg(*sets: str):  # type: ignore[no-untyped-def]
    return load_config(LORA, sets=list(sets), environ={}).config.model


def test_dinov3_is_the_transformers_class_with_the_configured_sizes() -> None:
    from transformers import DINOv3ViTModel

    model = build_model(cfg("model.peft.method=none"), TASKS, SHAPE)
    net = model.backbone.net
    assert isinstance(net, DINOv3ViTModel)
    assert (net.config.hidden_size, net.config.num_hidden_layers, net.config.patch_size) == (
        64,
        2,
        2,
    )
    assert model.feature_dim == 64
    out = model(torch.randn(3, 1, 8, 8))["digit"]
    assert out.shape == (3, 10)


def test_lora_trains_adapters_and_heads_only_with_the_expected_count() -> None:
    model = build_model(cfg(), TASKS, SHAPE)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or n.startswith("heads.") for n in trainable)
    # r * (in + out) per adapted Linear: 2 blocks x (4 attention 64x64 + up 64->128 + down 128->64)
    r = 8
    expected = 2 * (4 * r * (64 + 64) + 2 * r * (64 + 128))
    assert model.peft_info == {
        "adapted_layers": 12,
        "adapter_params": expected,
        "unfrozen_params": 0,
    }
    heads = sum(p.numel() for n, p in model.named_parameters() if n.startswith("heads."))
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == expected + heads


def test_lora_starts_as_the_identity_and_moves_only_adapters() -> None:
    torch.manual_seed(0)
    plain = build_model(cfg("model.peft.method=none"), TASKS, SHAPE)
    torch.manual_seed(0)
    adapted = build_model(cfg(), TASKS, SHAPE)
    x = torch.randn(4, 1, 8, 8)
    plain.eval(), adapted.eval()
    # B is zero at init, so the adapted encoder computes the base encoder's function
    # (the heads differ: LoRA's init draws from the RNG before they are built)
    assert torch.allclose(plain.backbone(x), adapted.backbone(x), atol=1e-6)
    base_before = {n: p.detach().clone() for n, p in adapted.named_parameters() if "lora_" not in n}
    optimizer = torch.optim.SGD([p for p in adapted.parameters() if p.requires_grad], lr=0.5)
    adapted.train()
    for _ in range(3):
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(adapted(x)["digit"], torch.arange(4))
        loss.backward()
        optimizer.step()
    for name, param in adapted.named_parameters():
        if name.startswith("backbone.") and "lora_" not in name:
            assert torch.equal(param, base_before[name]), name
    lora_b = [p for n, p in adapted.named_parameters() if "lora_B" in n]
    assert any(p.abs().sum() > 0 for p in lora_b)


def test_dora_adds_a_magnitude_vector_per_layer() -> None:
    lora = build_model(cfg(), TASKS, SHAPE)
    dora = build_model(cfg("model.peft.method=dora"), TASKS, SHAPE)
    magnitudes = [n for n, _ in dora.named_parameters() if "lora_magnitude_vector" in n]
    assert len(magnitudes) == 12
    # one magnitude per output feature: 2 blocks x (4 x 64 + 128 + 64)
    extra = dora.peft_info["adapter_params"] - lora.peft_info["adapter_params"]
    assert extra == 2 * (4 * 64 + 128 + 64)


def test_unknown_target_modules_and_freeze_conflict_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="match no layer"):
        build_model(cfg("model.peft.target_modules=[nope]"), TASKS, SHAPE)
    with pytest.raises(ConfigError, match="freeze_backbone"):
        cfg("model.freeze_backbone=true")
    with pytest.raises(ConfigError, match="must divide"):
        cfg("model.hf.num_heads=5")
    with pytest.raises(ConfigError, match="does not divide"):
        build_model(cfg("model.hf.patch_size=3"), TASKS, SHAPE)


def test_from_pretrained_reads_a_local_folder(tmp_path: Path) -> None:
    torch.manual_seed(1)
    source = build_model(cfg("model.peft.method=none"), TASKS, SHAPE).backbone.net
    source.save_pretrained(str(tmp_path / "hf"))
    loaded = build_model(cfg(f"model.hf.path={tmp_path / 'hf'}"), TASKS, SHAPE)
    for name, param in source.state_dict().items():
        adapted = name.replace("_proj.weight", "_proj.base_layer.weight").replace(
            "_proj.bias", "_proj.base_layer.bias"
        )
        state = loaded.backbone.net.state_dict()
        assert torch.equal(state.get(name, state.get(adapted)), param), name
    with pytest.raises(ArtifactError, match="no config.json"):
        build_model(cfg(f"model.hf.path={tmp_path}"), TASKS, SHAPE)


def test_a_pretrained_folder_must_match_the_configured_sizes(tmp_path: Path) -> None:
    source = build_model(cfg("model.peft.method=none"), TASKS, SHAPE).backbone.net
    source.save_pretrained(str(tmp_path / "hf"))
    with pytest.raises(ConfigError, match="hidden_size: model.hf gives 32, config.json has 64"):
        build_model(
            cfg(f"model.hf.path={tmp_path / 'hf'}", "model.hf.hidden_size=32"), TASKS, SHAPE
        )


def test_bundle_and_restore_rebuild_without_the_pretrained_folder(tmp_path: Path) -> None:
    from rigor.runs.restore import architecture

    model_cfg = cfg(f"model.hf.path={tmp_path / 'gone'}", "model.weights_path=gone.pt")
    rebuilt = architecture(model_cfg)
    assert rebuilt.hf.path is None and rebuilt.weights_path is None
    assert build_model(rebuilt, TASKS, SHAPE).feature_dim == 64


def test_the_hugging_face_example_in_docs_extending_runs() -> None:
    import re

    from conftest import ROOT

    from rigor.models.registry import BACKBONES

    text = (ROOT / "docs" / "extending.md").read_text()
    section = text.split("## A Hugging Face backbone", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, flags=re.S)
    assert code is not None
    try:
        exec(compile(code.group(1), "docs/extending.md", "exec"), {"__name__": "docs_example"})
        model = build_model(cfg("model.backbone=hf_vit"), TASKS, SHAPE)  # peft: lora r=8
        assert model(torch.randn(2, 1, 8, 8))["digit"].shape == (2, 10)
        small = build_model(
            cfg("model.backbone=hf_vit", "model.peft.target_modules=[q_proj,v_proj]"), TASKS, SHAPE
        )
        expected = {"adapted_layers": 4, "adapter_params": 4096, "unfrozen_params": 0}
        assert small.peft_info == expected  # as the doc says
    finally:
        BACKBONES.pop("hf_vit", None)


def test_a_config_json_with_a_gated_mlp_is_refused_by_name(tmp_path: Path) -> None:
    """The largest DINOv3 models use a gated MLP, which model.hf does not model: refused by
    the field's name, never loaded into the wrong architecture."""
    import json

    source = build_model(cfg("model.peft.method=none"), TASKS, SHAPE).backbone.net
    source.save_pretrained(str(tmp_path / "hf"))
    config_path = tmp_path / "hf" / "config.json"
    config = json.loads(config_path.read_text())
    config["use_gated_mlp"] = True
    config_path.write_text(json.dumps(config))
    with pytest.raises(
        ConfigError, match="use_gated_mlp: model.hf gives False, config.json has True"
    ):
        build_model(cfg(f"model.hf.path={tmp_path / 'hf'}"), TASKS, SHAPE)
