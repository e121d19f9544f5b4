"""The field's encoders from local weights: timm architectures, Hugging Face AutoModel
folders and HEST's truncated ResNet-50, each checked against the library's own forward;
strict keys; every shipped encoder config builds (on the meta device, without weights)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import yaml
from conftest import CONFIGS, SMOKE

from rigor.config import load_config
from rigor.data.registry import TaskSpec
from rigor.errors import ArtifactError, ConfigError
from rigor.models.build import backbone_spec, build_model

TASKS = {"gene": TaskSpec("gene", "regression")}
# a two-block ViT of 32-pixel images in 8-pixel patches, for the Hugging Face folders
TINY_HF = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "patch_size": 8,
    "image_size": 32,
}
VIT_TINY = [
    "model.backbone=timm",
    "model.timm.arch=vit_tiny_patch16_224",
    "model.timm.kwargs={img_size: 32, patch_size: 8, init_values: 1.0e-5}",
]


def model_cfg(*sets: str):  # type: ignore[no-untyped-def]
    return load_config(SMOKE, sets=list(sets), environ={}).config.model


def _timm_reference(**kwargs: object) -> torch.nn.Module:
    import timm

    torch.manual_seed(1)
    args = {"img_size": 32, "patch_size": 8, "init_values": 1e-5, "num_classes": 0} | kwargs
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, **args).eval()


@pytest.mark.parametrize("suffix", [".safetensors", ".pth", ".bin"])
def test_a_timm_model_from_a_local_file_gives_timms_own_features(
    tmp_path: Path, suffix: str
) -> None:
    from safetensors.torch import save_file

    reference = _timm_reference()
    state = {k: v.contiguous() for k, v in reference.state_dict().items()}
    path = tmp_path / f"vit{suffix}"
    if suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save(state, path)
    model = build_model(model_cfg(*VIT_TINY, f"model.weights_path={path}"), TASKS, (3, 32, 32))
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        ours, theirs = model.backbone.eval()(x), reference(x)
    assert model.feature_dim == 192 and ours.shape == (4, 192)
    assert torch.allclose(ours, theirs, atol=1e-5, rtol=0)


def test_timm_token_poolings_follow_the_tokens() -> None:
    """cls is token 0; mean averages the patch tokens after the prefix (class + registers);
    cls_mean concatenates both, as HEST-Benchmark takes Virchow's features."""
    reference = _timm_reference(reg_tokens=2, global_pool="")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        tokens = reference.forward_features(x)
    assert reference.num_prefix_tokens == 3
    expected = {
        "cls": tokens[:, 0],
        "mean": tokens[:, 3:].mean(1),
        "cls_mean": torch.cat([tokens[:, 0], tokens[:, 3:].mean(1)], dim=-1),
    }
    kwargs = "model.timm.kwargs={img_size: 32, patch_size: 8, init_values: 1.0e-5, reg_tokens: 2}"
    for pooling, want in expected.items():
        sets = [*VIT_TINY[:2], kwargs, f"model.timm.pooling={pooling}"]
        model = build_model(model_cfg(*sets), TASKS, (3, 32, 32)).eval()
        model.backbone.net.load_state_dict(reference.state_dict())
        with torch.no_grad():
            got = model.backbone(x)
        assert model.feature_dim == want.shape[1] and torch.allclose(got, want, atol=1e-6)


def test_a_missing_key_is_exit_2_naming_the_key(
    tmp_path: Path, run_script: Callable[..., int], capsys: pytest.CaptureFixture[str]
) -> None:
    from safetensors.torch import save_file

    state = {k: v.contiguous() for k, v in _timm_reference().state_dict().items()}
    del state["blocks.3.mlp.fc2.bias"]
    path = tmp_path / "partial.safetensors"
    save_file(state, str(path))
    with pytest.raises(ConfigError, match=r"missing 1: \['blocks.3.mlp.fc2.bias'\]"):
        build_model(model_cfg(*VIT_TINY, f"model.weights_path={path}"), TASKS, (3, 32, 32))
    root = tmp_path / "hest"
    from rigor.data.hest.write import write_tiles_hest

    write_tiles_hest(root, 10, 2, 32)
    sets = [*VIT_TINY, f"model.weights_path={path}", f"data.root={root}"]
    sets += [f"run.output_root={tmp_path / 'out'}", "data.cache=false"]
    args = [a for s in sets for a in ("--set", s)]
    experiment = str(CONFIGS / "experiment" / "tiles_hest.yaml")
    assert run_script("probe", "--config", experiment, *args, "--env-policy", "ignore") == 2
    err = capsys.readouterr().err
    assert "blocks.3.mlp.fc2.bias" in err and "Traceback" not in err
    assert not (tmp_path / "out" / "runs").exists()  # nothing written


def test_a_pickled_object_is_refused_not_run(tmp_path: Path) -> None:
    import argparse

    path = tmp_path / "evil.pth"
    torch.save({"weights": argparse.Namespace(a=1)}, path)  # unpickling would build it
    with pytest.raises(ConfigError, match="not a tensors-only torch file"):
        build_model(model_cfg(*VIT_TINY, f"model.weights_path={path}"), TASKS, (3, 32, 32))
    torch.save({"step": 3, "lr": [0.1]}, path)  # allowed types, but no tensors
    with pytest.raises(ConfigError, match="not a state dict of tensors"):
        build_model(model_cfg(*VIT_TINY, f"model.weights_path={path}"), TASKS, (3, 32, 32))
    with pytest.raises(ArtifactError, match="file not found"):
        build_model(model_cfg(*VIT_TINY, "model.weights_path=nope.pth"), TASKS, (3, 32, 32))


def test_key_map_renames_and_drops_prefixes(tmp_path: Path) -> None:
    """A CONCH-style file: the trunk under visual.trunk., a text tower to drop."""
    from safetensors.torch import save_file

    reference = _timm_reference()
    state = {f"visual.trunk.{k}": v.contiguous() for k, v in reference.state_dict().items()}
    state["text.token_embedding.weight"] = torch.zeros(3, 2)
    path = tmp_path / "clip.safetensors"
    save_file(state, str(path))
    with pytest.raises(ConfigError, match="unexpected"):
        build_model(model_cfg(*VIT_TINY, f"model.weights_path={path}"), TASKS, (3, 32, 32))
    key_map = 'model.weights_key_map={"visual.trunk.": "", "text.": null}'
    sets = [*VIT_TINY, f"model.weights_path={path}", key_map]
    model = build_model(model_cfg(*sets), TASKS, (3, 32, 32)).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model.backbone(x), reference(x), atol=1e-5)


def test_timm_kwargs_name_layers_of_timm_and_torch_only() -> None:
    from rigor.models.timm_encoder import resolve_kwargs

    resolved = resolve_kwargs({"mlp_layer": "timm.layers.SwiGLUPacked", "act": "torch.nn.SiLU"})
    assert resolved["act"] is torch.nn.SiLU and callable(resolved["mlp_layer"])
    with pytest.raises(ConfigError, match="not a layer of timm.layers"):
        resolve_kwargs({"mlp_layer": "timm.layers.NoSuchLayer"})
    assert resolve_kwargs({"x": "os.system"}) == {"x": "os.system"}  # only a plain string
    with pytest.raises(ConfigError, match="not a timm architecture"):
        build_model(model_cfg("model.backbone=timm", "model.timm.arch=vit_nope"), TASKS, (3, 8, 8))
    with pytest.raises(ConfigError, match="never downloads"):
        sets = [*VIT_TINY[:2], "model.timm.kwargs={pretrained: true}"]
        build_model(model_cfg(*sets), TASKS, (3, 32, 32))


def test_hest_resnet50_baseline_is_torchvision_resnet50_up_to_layer3(tmp_path: Path) -> None:
    import torchvision
    from safetensors.torch import save_file

    torch.manual_seed(0)
    full = torchvision.models.resnet50(weights=None).eval()
    path = tmp_path / "resnet50.safetensors"
    save_file({k: v.contiguous() for k, v in full.state_dict().items()}, str(path))
    sets = ["model.backbone=resnet50_trunc", f"model.weights_path={path}"]
    model = build_model(model_cfg(*sets), TASKS, (3, 64, 64)).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        stem = full.maxpool(full.relu(full.bn1(full.conv1(x))))
        expected = full.avgpool(full.layer3(full.layer2(full.layer1(stem)))).flatten(1)
        got = model.backbone(x)
    assert model.feature_dim == 1024 and torch.allclose(got, expected, atol=1e-5)
    assert not any(k.startswith(("net.layer4", "net.fc")) for k in model.backbone.state_dict())


@pytest.fixture(scope="module")
def dinov2_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    config = Dinov2Config(**TINY_HF)
    folder = tmp_path_factory.mktemp("dinov2")
    Dinov2Model(config).eval().save_pretrained(folder)
    return folder


def test_hf_auto_loads_a_folder_and_pools_as_configured(dinov2_folder: Path) -> None:
    from transformers import AutoModel

    reference = AutoModel.from_pretrained(dinov2_folder).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        tokens = reference(pixel_values=x).last_hidden_state
    for pooling, want in (("cls", tokens[:, 0]), ("mean", tokens[:, 1:].mean(1))):
        sets = ["model.backbone=hf_auto", f"model.hf.path={dinov2_folder}"]
        model = build_model(model_cfg(*sets, f"model.hf.pooling={pooling}"), TASKS, (3, 32, 32))
        with torch.no_grad():
            got = model.backbone.eval()(x)
        assert model.feature_dim == 32 and torch.allclose(got, want, atol=1e-5)


def test_hf_auto_refuses_a_folder_whose_weights_lack_keys(
    dinov2_folder: Path, tmp_path: Path
) -> None:
    import shutil

    from safetensors.torch import load_file, save_file

    broken = tmp_path / "broken"
    shutil.copytree(dinov2_folder, broken)
    state = load_file(str(broken / "model.safetensors"))
    del state["encoder.layer.1.mlp.fc2.weight"]
    save_file(state, str(broken / "model.safetensors"), metadata={"format": "pt"})
    sets = ["model.backbone=hf_auto", f"model.hf.path={broken}"]
    with pytest.raises(ConfigError, match="encoder.layer.1.mlp.fc2.weight"):
        build_model(model_cfg(*sets), TASKS, (3, 32, 32))
    with pytest.raises(ConfigError, match="hf_auto loads model.hf.path"):
        model_cfg("model.backbone=hf_auto")


# Parameters of the published encoders (millions, from their model cards), for the configs
# whose architecture is timm's or torchvision's: a config that builds another model fails.
PUBLISHED = {
    "uni_v1.yaml": (1024, 303.4),
    "virchow.yaml": (2560, 631.2),
    "virchow2.yaml": (2560, 631.2),
    "hoptimus0.yaml": (1536, 1134.8),
    "gigapath.yaml": (1536, 1134.8),
    "h0_mini.yaml": (768, 85.8),
    "conch_v1_vision.yaml": (768, 85.8),
    "hest_resnet50_trunc.yaml": (1024, 8.5),
    "timm_vit_small.yaml": (384, 21.7),
}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_every_shipped_encoder_config_builds_its_published_architecture(name: str) -> None:
    from rigor.probe.bench import flatten

    body = yaml.safe_load((CONFIGS / "model" / name).read_text())
    experiment = CONFIGS / "experiment" / "hest_bench.yaml"
    point = flatten(body, "model") | {"model.weights_path": None}
    cfg = load_config(experiment, sweep=point, environ={}).config
    assert cfg.model.inference.mean is not None  # each states its normalisation
    with torch.device("meta"):  # the architecture without memory or weights
        module, dim = backbone_spec(cfg.model.backbone).build(cfg.model, (3, 224, 224))
        out = module(torch.empty(2, 3, 224, 224))
    params = sum(p.numel() for p in module.parameters()) / 1e6
    want_dim, want_params = PUBLISHED[name]
    assert dim == want_dim and tuple(out.shape) == (2, want_dim)
    assert params == pytest.approx(want_params, rel=0.02), params


def test_every_encoder_config_is_tested() -> None:
    shipped = {p.name for p in (CONFIGS / "model").glob("*.yaml")}
    hf_folders = {"phikon.yaml", "phikon_v2.yaml", "dinov2_vitl14.yaml"}  # hf_auto: a folder
    others = {"cnn_small.yaml", "resnet18.yaml", "dinov3_tiny.yaml", "dinov3_vits16.yaml"}
    assert shipped == set(PUBLISHED) | hf_folders | others
    for name in hf_folders:
        body = yaml.safe_load((CONFIGS / "model" / name).read_text())
        assert body["backbone"] == "hf_auto" and body["hf"]["path"].startswith("weights/")


def test_hf_auto_loads_a_phikon_style_vit_saved_without_its_pooler(tmp_path: Path) -> None:
    """Phikon is a ViTModel that HEST loads with add_pooling_layer=False: a folder without
    the pooler's weights loads (rigor pools last_hidden_state itself), CLS as ViTModel's."""
    from transformers import ViTConfig, ViTModel

    torch.manual_seed(0)
    config = ViTConfig(**TINY_HF)
    reference = ViTModel(config, add_pooling_layer=False).eval()
    reference.save_pretrained(tmp_path / "phikon")
    sets = ["model.backbone=hf_auto", f"model.hf.path={tmp_path / 'phikon'}"]
    model = build_model(model_cfg(*sets), TASKS, (3, 32, 32))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        want = reference(pixel_values=x).last_hidden_state[:, 0]
        assert torch.allclose(model.backbone.eval()(x), want, atol=1e-5)
