"""Config composition, overrides, validation errors and schema emission."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from conftest import CONFIGS, ROOT, SMOKE

from rigor.config import config_hash, load_config, render_config_schema
from rigor.configcheck import problems, section_schema
from rigor.errors import ConfigError


def write(path: Path, data: dict | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A copy of the shipped configs to break in place."""
    root = tmp_path / "configs"
    for src in CONFIGS.rglob("*.yaml"):
        write(root / src.relative_to(CONFIGS), src.read_text())
    return root


def test_each_layer_overrides_the_one_before(tree: Path) -> None:
    write(tree / "data" / "digits.yaml", {"name": "digits", "tasks": ["digit"], "num_workers": 1})
    write(
        tree / "model" / "cnn_small.yaml",
        {"backbone": "cnn_small", "channels": [4], "dropout": 0.2},
    )
    exp = write(
        tree / "experiment" / "e.yaml",
        {
            "defaults": ["/default"],
            "run": {"name": "e"},
            "model": {"dropout": 0.3},
            "training": {"lr": 0.5},
        },
    )
    env = {"RIGOR__TRAINING__LR": "0.25", "RIGOR__TRAINING__EPOCHS": "3"}
    cfg = load_config(
        exp,
        sets=["training.epochs=4", "training.epochs=5"],
        environ=env,
        sweep={"training.batch_size": 7},
    ).config
    assert cfg.run.seed == 0  # default.yaml
    assert cfg.data.num_workers == 1  # data/ overrides default.yaml (which says 0)
    assert cfg.model.channels == [4]  # model/ layer
    assert cfg.model.dropout == 0.3  # experiment overrides model/ (0.2) and default (0.1)
    assert cfg.training.lr == 0.25  # env overrides experiment
    assert cfg.training.epochs == 5  # --set overrides env; later --set wins
    assert cfg.training.batch_size == 7  # sweep is last


def test_set_beats_env_for_the_same_key(tree: Path) -> None:
    exp = tree / "experiment" / "smoke.yaml"
    cfg = load_config(exp, sets=["training.lr=3e-4"], environ={"RIGOR__TRAINING__LR": "0.1"})
    assert cfg.config.training.lr == pytest.approx(3e-4)
    sweep = load_config(exp, sets=["training.lr=3e-4"], environ={}, sweep={"training.lr": 0.02})
    assert sweep.config.training.lr == 0.02


def test_group_selected_again_replaces_the_earlier_choice(tree: Path) -> None:
    write(tree / "model" / "other.yaml", {"backbone": "cnn_small", "channels": [3, 3]})
    exp = write(
        tree / "experiment" / "e.yaml",
        {"defaults": ["/default", {"model": "other"}], "run": {"name": "e"}},
    )
    assert load_config(exp, environ={}).config.model.channels == [3, 3]


def test_raw_config_is_before_overrides(tree: Path) -> None:
    resolved = load_config(tree / "experiment" / "smoke.yaml", sets=["training.lr=0.5"], environ={})
    assert resolved.raw["training"]["lr"] == 0.003
    assert resolved.resolved["training"]["lr"] == 0.5
    assert "defaults" not in resolved.raw


def test_config_hash_ignores_output_root_only(tree: Path) -> None:
    exp = tree / "experiment" / "smoke.yaml"
    a = load_config(exp, sets=["run.output_root=/a"], environ={})
    b = load_config(exp, sets=["run.output_root=/b"], environ={})
    c = load_config(exp, sets=["training.lr=0.5"], environ={})
    assert a.hash == b.hash != c.hash
    assert config_hash(a.resolved) == a.hash


def _error(exp: Path, **kwargs: object) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(exp, environ=kwargs.pop("environ", {}), **kwargs)  # type: ignore[arg-type]
    return str(info.value)


def test_unknown_key_names_key_and_file(tree: Path) -> None:
    exp = write(
        tree / "experiment" / "typo.yaml", {"defaults": ["/default"], "training": {"lrr": 0.1}}
    )
    message = _error(exp)
    assert "training.lrr: unknown key" in message
    assert "experiment/typo.yaml" in message


def test_wrong_type_and_out_of_range_reported_together(tree: Path) -> None:
    exp = write(
        tree / "experiment" / "bad.yaml",
        {"defaults": ["/default"], "training": {"epochs": "many", "lr": -1.0}},
    )
    message = _error(exp)
    assert "(2 errors)" in message
    assert "training.epochs" in message and "'many'" in message
    assert "training.lr: Input should be greater than 0" in message
    assert message.count("experiment/bad.yaml") >= 3


def test_error_in_a_default_layer_names_that_layer(tree: Path) -> None:
    write(
        tree / "model" / "cnn_small.yaml", {"backbone": "cnn_small", "channels": [], "dropout": 0.1}
    )
    message = _error(tree / "experiment" / "smoke.yaml", sets=["model.channels=[]"])
    assert "model.channels" in message and "--set model.channels=[]" in message
    write(
        tree / "model" / "cnn_small.yaml", {"backbone": "cnn_small", "channels": [8], "dropout": 2}
    )
    assert "model/cnn_small.yaml" in _error(tree / "experiment" / "digits_baseline.yaml")


def test_cross_field_rule(tree: Path) -> None:
    message = _error(tree / "experiment" / "smoke.yaml", sets=["scheduler.warmup_epochs=5"])
    assert "warmup_epochs (5.0) must be shorter than training.epochs (2)" in message
    assert "add --set scheduler.warmup_epochs=1 (or 0 for none)" in message
    # the provenance names each field's real layer, not "not set by any config layer"
    assert "scheduler.warmup_epochs from override --set scheduler.warmup_epochs=5" in message
    assert "training.epochs from " in message and "not set by any" not in message


def test_missing_file(tree: Path) -> None:
    assert "config file not found" in _error(tree / "experiment" / "nope.yaml")
    exp = write(tree / "experiment" / "e.yaml", {"defaults": [{"model": "resnet9000"}]})
    assert "model/resnet9000.yaml" in _error(exp)


def test_cycle_in_defaults(tree: Path) -> None:
    write(tree / "a.yaml", {"defaults": ["b.yaml"]})
    write(tree / "b.yaml", {"defaults": ["/a"]})
    message = _error(tree / "a.yaml")
    assert "cycle in defaults" in message and "a.yaml -> " in message and "b.yaml" in message


def test_invalid_yaml_names_line(tree: Path) -> None:
    exp = write(tree / "experiment" / "broken.yaml", "run:\n  name: [x\n")
    assert "experiment/broken.yaml: line" in _error(exp)


@pytest.mark.parametrize(
    "item, expected",
    [
        ("training.lr", "malformed override --set 'training.lr'"),
        ("=3", "malformed override --set '=3'"),
        ("Training.LR=1", "malformed override"),
        ("training.lr=[1", "value is not valid YAML"),
        ("training.lr.x=1", "training.lr is not a section"),
        (
            "training.lrr=1",
            "training.lrr: unknown key; did you mean training.lr? "
            "[from override --set training.lrr=1]",
        ),
    ],
)
def test_malformed_set(item: str, expected: str) -> None:
    assert expected in _error(SMOKE, sets=[item])


@pytest.mark.parametrize(
    "name, value, expected",
    [
        ("RIGOR__TRAINING__EPOCHS", "abc", "[from environment variable RIGOR__TRAINING__EPOCHS]"),
        (
            "RIGOR__TRAINING__LRR",
            "1",
            "training.lrr: unknown key; did you mean training.lr? [from environment variable",
        ),
        ("RIGOR____X", "1", "malformed environment override RIGOR____X"),
        ("RIGOR__TRAINING__LR", "[1", "malformed environment override RIGOR__TRAINING__LR"),
    ],
)
def test_malformed_env(name: str, value: str, expected: str) -> None:
    assert expected in _error(SMOKE, environ={name: value})


def test_env_values_parse_like_yaml() -> None:
    env = {
        "RIGOR__TRAINING__LR": "3e-4",
        "RIGOR__MODEL__CHANNELS": "[4, 8]",
        "RIGOR__RUN__DETERMINISM": "true",
    }
    cfg = load_config(SMOKE, environ=env).config
    assert cfg.training.lr == pytest.approx(3e-4)
    assert cfg.model.channels == [4, 8]
    assert cfg.run.determinism is True


def test_every_shipped_experiment_composes_and_validates() -> None:
    experiments = sorted((CONFIGS / "experiment").glob("*.yaml"))
    assert {p.stem for p in experiments} >= {"digits_baseline", "smoke"}
    for path in experiments:
        assert load_config(path, environ={}).config.run.name == path.stem


def test_every_yaml_under_configs_validates_against_the_schema() -> None:
    """Group files validate against their section's schema; every other file once composed."""
    from jsonschema import Draft202012Validator

    schema = json.loads((ROOT / "schema" / "config.schema.json").read_text())
    checked = 0
    for path in sorted(CONFIGS.rglob("*.yaml")):
        group = path.parent.name
        if group in ("data", "model"):
            body = yaml.safe_load(path.read_text())
            errors = list(Draft202012Validator(section_schema(schema, group)).iter_errors(body))
        elif group == "sweep":  # grid files: every point overrides the defaults validly
            from rigor.sweep.grid import expand, read_grid_file

            default = CONFIGS / "default.yaml"
            points = expand(read_grid_file(path))
            configs = [load_config(default, environ={}, sweep=p).resolved for p in points]
            errors = [e for c in configs for e in Draft202012Validator(schema).iter_errors(c)]
        elif group == "bench":  # benchmark files: every encoder x task cell composes
            from rigor.configcheck import bench_problems

            assert bench_problems(ROOT, path) == []
            errors = []
        else:
            resolved = load_config(path, environ={}).resolved
            errors = list(Draft202012Validator(schema).iter_errors(resolved))
        assert not errors, f"{path}: {errors[0].message}"
        checked += 1
    assert checked == len(list(CONFIGS.rglob("*.yaml"))) >= 5


def test_section_schema_rejects_a_typo_in_a_group_file() -> None:
    from jsonschema import Draft202012Validator

    schema = json.loads((ROOT / "schema" / "config.schema.json").read_text())
    errors = list(
        Draft202012Validator(section_schema(schema, "model")).iter_errors({"chanels": [1]})
    )
    assert errors and "chanels" in errors[0].message


def test_committed_config_schema_is_fresh() -> None:
    committed = (ROOT / "schema" / "config.schema.json").read_text()
    assert (
        committed == render_config_schema()
    ), "schema/config.schema.json is stale: run make schema"


def test_schema_describes_every_field() -> None:
    schema = json.loads(render_config_schema())
    for name, definition in schema["$defs"].items():
        for field, spec in definition["properties"].items():
            assert spec.get("description"), f"{name}.{field} has no description"


def test_configcheck_finds_nothing_in_the_shipped_tree_and_catches_a_typo(tmp_path: Path) -> None:
    assert problems() == []
    import shutil

    shutil.copytree(ROOT / "configs", tmp_path / "configs")
    shutil.copytree(ROOT / "schema", tmp_path / "schema")
    (tmp_path / "configs" / "model" / "cnn_small.yaml").write_text(
        "backbone: cnn_small\nchanels: [1]\n"
    )
    (tmp_path / "schema" / "manifest.v1.json").write_text('{"type": "nonsense"}')
    (tmp_path / "configs" / "sweep" / "bad.yaml").write_text(
        "grid:\n  model.peft.method: [lora, lorra]\n"
    )
    found = problems(tmp_path)
    assert any("configs/model/cnn_small.yaml" in line and "chanels" in line for line in found)
    assert any("schema/manifest.v1.json" in line for line in found)
    bad = [line for line in found if line.startswith("configs/sweep/bad.yaml")]
    assert any("point {'model.peft.method': 'lorra'}" in line for line in bad)  # named
    bench = yaml.safe_load((ROOT / "configs" / "bench" / "tiles.yaml").read_text())
    bench["encoders"]["vit_s16"]["set"] = ["model.timm.pooling=maxx"]
    (tmp_path / "configs" / "bench" / "tiles.yaml").write_text(yaml.safe_dump(bench))
    bad = [line for line in problems(tmp_path) if line.startswith("configs/bench/tiles.yaml")]
    assert len(bad) == 2 and all("x vit_s16" in line and "pooling" in line for line in bad)


def test_unknown_keys_get_a_did_you_mean_and_print_config_names_each_layer(
    run_script, capsys  # type: ignore[no-untyped-def]
) -> None:
    flags = ["--config", "configs/experiment/smoke.yaml"]
    assert run_script("train", *flags, "--set", "optimizer.weight_decy=0.1") == 2
    assert "optimizer.weight_decy: unknown key; did you mean optimizer.weight_decay?" in (
        capsys.readouterr().err
    )
    assert run_script("train", *flags, "--set", "training.lr=1e-3", "--print-config") == 0
    lines = capsys.readouterr().out.splitlines()
    assert "training.lr: 0.001  # override --set training.lr=1e-3" in lines
    assert "training.epochs: 2  # configs/experiment/smoke.yaml" in lines
    assert 'optimizer.name: "adamw"  # configs/default.yaml' in lines
    assert 'data.name: "digits"  # configs/data/digits.yaml' in lines
