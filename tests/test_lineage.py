"""Fine-tuning lineage: unfrozen blocks, adapter files, merged export, ExPLoRA pretraining,
hash-checked ``model.init_from`` and its chain, and a bundle that predicts without peft."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import CONFIGS, ROOT

from rigor.config import load_config
from rigor.data.registry import TaskSpec
from rigor.models.build import build_model

LORA = CONFIGS / "experiment" / "digits_dinov3_lora.yaml"
MAE_CONFIG = CONFIGS / "experiment" / "digits_mae.yaml"
EXPLORA = CONFIGS / "experiment" / "digits_explora.yaml"
TASKS = {"digit": TaskSpec("digit", "classification", 10)}
SHORT = ["training.max_steps_per_epoch=4", "scheduler.warmup_epochs=1", "logging.tensorboard=false"]


def model_cfg(*sets: str):  # type: ignore[no-untyped-def]
    return load_config(LORA, sets=list(sets), environ={}).config.model


def test_unfrozen_last_block_trains_in_full_without_adapters_at_its_own_rate() -> None:
    from rigor.training.optim import build_optimizer

    resolved = load_config(
        LORA,
        sets=["model.peft.unfreeze_last_blocks=1", "model.peft.unfrozen_lr_scale=0.25"],
        environ={},
    )
    model = build_model(resolved.config.model, TASKS, (1, 8, 8))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    last = "backbone.net.model.layer.1."
    block = {n for n, _ in model.named_parameters() if n.startswith(last)}
    assert block and block <= trainable  # every parameter of the last block trains
    assert not any("lora_" in n for n in block)  # and it has no adapters
    assert any("lora_" in n and n.startswith("backbone.net.model.layer.0.") for n in trainable)
    frozen_first = "backbone.net.model.layer.0.attention.q_proj.base_layer.weight"
    assert frozen_first not in trainable
    block_params = sum(p.numel() for n, p in model.named_parameters() if n.startswith(last))
    assert model.peft_info["unfrozen_params"] == block_params
    optimizer = build_optimizer(model, resolved.config.training, resolved.config.optimizer)
    rates = {g["name"]: g["lr"] for g in optimizer.param_groups}
    lr = resolved.config.training.lr
    assert rates["backbone_unfrozen/decay"] == pytest.approx(lr * 0.25)
    assert rates["backbone/decay"] == pytest.approx(lr) and rates["heads/decay"] == lr
    assert optimizer.param_groups[-1]["name"].startswith("heads/")
    with pytest.raises(Exception, match="has 2 blocks"):
        build_model(model_cfg("model.peft.unfreeze_last_blocks=3"), TASKS, (1, 8, 8))
    with pytest.raises(Exception, match="go with adapters"):
        model_cfg("model.peft.method=none", "model.peft.unfreeze_last_blocks=1")


@pytest.mark.parametrize("method", ["lora", "dora"])
def test_merging_with_peft_keeps_the_outputs_and_leaves_a_plain_model(method: str) -> None:
    from rigor.models.adapters import merge_adapters

    torch.manual_seed(0)
    adapted = build_model(model_cfg(f"model.peft.method={method}"), TASKS, (1, 8, 8)).eval()
    with torch.no_grad():  # move the adapters away from their identity start
        for name, param in adapted.named_parameters():
            if "lora_" in name:
                param.add_(0.05 * torch.randn_like(param))
    x = torch.randn(16, 1, 8, 8)
    with torch.no_grad():
        before = adapted(x)["digit"]
        assert merge_adapters(adapted) == 12
        after = adapted(x)["digit"]
    assert torch.allclose(before, after, atol=1e-5)
    plain = build_model(model_cfg("model.peft.method=none"), TASKS, (1, 8, 8))
    assert set(adapted.state_dict()) == set(plain.state_dict())  # plain keys, no peft modules
    plain.load_state_dict(adapted.state_dict())
    with torch.no_grad():
        assert torch.allclose(plain.eval()(x)["digit"], before, atol=1e-5)


def _pretrain(out: Path, config: Path, *sets: str) -> Path:
    from rigor.pretraining.run import pretrain

    resolved = load_config(
        config, sets=[f"run.output_root={out}", "training.epochs=2", *SHORT, *sets], environ={}
    )
    return pretrain(resolved, env_policy="ignore")


def _val_test_outputs(model: torch.nn.Module, run_dir: Path) -> torch.Tensor:
    from rigor.manifest import load_manifest
    from rigor.runs.restore import run_dataset, split_rows

    manifest = load_manifest(run_dir / "manifest.json")
    config = load_config(run_dir / "config.yaml", environ={}).config
    dataset, pipeline = run_dataset(run_dir, config, manifest)
    rows = split_rows(run_dir, dataset, "val_test")
    with torch.no_grad():
        return model.eval()(pipeline(dataset.stack(rows), torch.device("cpu")))["digit"]


@pytest.mark.slow
def test_explora_chain_init_from_adapter_file_merged_bundle_without_peft(
    tmp_path: Path, run_script, capsys: pytest.CaptureFixture[str]  # type: ignore[no-untyped-def]
) -> None:
    from safetensors.torch import load_file

    from rigor.manifest import load_manifest
    from rigor.models.adapters import load_adapter
    from rigor.training.run import train

    mae = _pretrain(tmp_path, MAE_CONFIG)
    explora = _pretrain(tmp_path, EXPLORA, f"model.init_from={mae}")
    record = load_manifest(explora)
    summary = record["stages"][0]["summary"]
    assert record["lineage"]["parent"] == load_manifest(mae)["run_id"]
    assert summary["merged_layers"] == 2  # q and v of block 0; block 1 trains in full
    assert summary["model"]["unfrozen_params"] > 0
    saved = load_file(str(explora.parent / "pretrain" / "hf" / "model.safetensors"))
    assert not any("lora_" in key or "base_layer" in key for key in saved)  # plain DINOv3

    sets = [f"run.output_root={tmp_path}", "training.epochs=3", *SHORT]
    fine = train(
        load_config(
            LORA,
            sets=[*sets, f"model.init_from={explora}", "model.peft.unfreeze_last_blocks=1"],
            environ={},
        ),
        env_policy="ignore",
    )
    manifest = load_manifest(fine)
    assert manifest["lineage"]["parent"] == record["run_id"]
    assert manifest["lineage"]["weights"] == {
        rel: record["sha256"][rel] for rel in record["artifacts"]["weights"]
    }
    assert manifest["artifacts"]["adapter"] == ["adapter/adapter.safetensors"]
    adapter = manifest["stages"][0]["summary"]["adapter"]
    assert adapter["size_bytes"] == (fine.parent / adapter["path"]).stat().st_size
    assert adapter["size_bytes"] < adapter["full_size_bytes"]
    assert run_script("manifest", "show", str(fine)) == 0
    shown = capsys.readouterr().out
    chain = [manifest["run_id"], record["run_id"], load_manifest(mae)["run_id"]]
    assert all(run_id in shown for run_id in chain)
    assert shown.index(chain[0]) < shown.index(chain[1]) < shown.index(chain[2])

    # base (the ExPLoRA encoder, through init_from) + adapter file = the trained model
    from rigor.models.lineage import resolve_init_from

    config = load_config(fine.parent / "config.yaml", environ={}).config
    base_cfg, _ = resolve_init_from(config.model)
    rebuilt = build_model(base_cfg, TASKS, (1, 8, 8))
    load_adapter(rebuilt, fine.parent / adapter["path"])
    with np.load(fine.parent / "predictions" / "val_test.npz") as stored:
        logits = torch.from_numpy(stored["logits_digit"])
    assert torch.allclose(_val_test_outputs(rebuilt, fine.parent), logits, atol=1e-5)

    # export merges with peft: the bundle is a plain model equal to the unmerged one on val_test
    loose = ["--set", "calibration.target_risk=0.99", "--set", "calibration.min_coverage=0.01"]
    assert run_script("calibrate", "--from-manifest", str(fine), *loose) == 0
    assert run_script("export", "--from-manifest", str(fine), "--env-policy", "ignore") == 0
    bundle = json.loads((fine.parent / "bundle" / "bundle.json").read_text())
    assert bundle["adapters"] == {"method": "lora", "merged": True, "layers": 6, "file": None}
    weights = load_file(str(fine.parent / "bundle" / "model.safetensors"))
    assert not any("lora_" in key or "base_layer" in key for key in weights)
    plain = build_model(model_cfg("model.peft.method=none"), TASKS, (1, 8, 8))
    plain.load_state_dict(weights)
    assert torch.allclose(_val_test_outputs(plain, fine.parent), logits, atol=1e-4)

    # ... and predicts in a process where peft cannot be imported
    hide = (
        "import sys, runpy\n"
        "class Hide:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'peft' or name.startswith('peft.'):\n"
        "            raise ModuleNotFoundError(f'No module named {name!r} (hidden)')\n"
        "sys.meta_path.insert(0, Hide())\n"
    )
    run = "sys.argv = sys.argv[1:]\nrunpy.run_path(sys.argv[0], run_name='__main__')\n"
    out_csv = tmp_path / "merged.csv"
    cmd = [sys.executable, "-c", hide + run, "scripts/predict.py", "--bundle"]
    cmd += [str(fine.parent / "bundle"), "--split", "val_test", "--output", str(out_csv)]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "import peft" not in done.stderr
    needs_peft = subprocess.run(
        [sys.executable, "-c", hide + "import peft\n"], cwd=ROOT, capture_output=True, text=True
    )
    assert needs_peft.returncode == 1 and "hidden" in needs_peft.stderr  # the hiding works

    # --no-merge keeps the adapters apart; predictions agree with the merged bundle
    assert run_script("export", "--from-manifest", str(fine), "--no-merge") == 0
    bundle = json.loads((fine.parent / "bundle" / "bundle.json").read_text())
    assert bundle["adapters"]["file"] == "adapter.safetensors" and not bundle["adapters"]["merged"]
    out_sep = tmp_path / "separate.csv"
    assert run_script(
        "predict", "--bundle", str(fine.parent / "bundle"), "--split", "val_test",
        "--output", str(out_sep),
    ) == 0  # fmt: skip
    merged_rows = out_csv.read_text().splitlines()
    separate_rows = out_sep.read_text().splitlines()
    assert [r.split(",")[1] for r in merged_rows] == [r.split(",")[1] for r in separate_rows]
    conf_m = np.array([float(r.split(",")[2]) for r in merged_rows[1:]])
    conf_s = np.array([float(r.split(",")[2]) for r in separate_rows[1:]])
    assert np.abs(conf_m - conf_s).max() <= 2e-6


@pytest.mark.slow
def test_init_from_refuses_a_changed_or_missing_encoder_file(
    tmp_path: Path, run_script, capsys: pytest.CaptureFixture[str]  # type: ignore[no-untyped-def]
) -> None:
    mae = _pretrain(tmp_path, MAE_CONFIG)
    weights = mae.parent / "pretrain" / "hf" / "model.safetensors"
    args = ["--config", str(LORA), "--env-policy", "ignore"]
    args += ["--set", f"run.output_root={tmp_path / 'fine'}", "--set", f"model.init_from={mae}"]
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    assert run_script("train", *args) == 5
    err = capsys.readouterr().err
    assert "pretrain/hf/model.safetensors: sha256 changed" in err and "Traceback" not in err
    weights.unlink()
    assert run_script("train", *args) == 5
    assert "pretrain/hf/model.safetensors: missing" in capsys.readouterr().err
    assert not (tmp_path / "fine" / "runs").exists() or not any(
        (tmp_path / "fine" / "runs").iterdir()
    )
    train_run = tmp_path / "not-a-pretrain.json"
    train_run.write_text("{}")
    assert run_script("train", *args[:-1], f"model.init_from={train_run}") == 3


def _pretrain_cmd(out: Path, *extra: str) -> list[str]:
    sets = [f"run.output_root={out}", "training.epochs=3", "training.max_steps_per_epoch=6"]
    sets += ["scheduler.warmup_epochs=1", "logging.tensorboard=false"]
    args = [sys.executable, "scripts/pretrain.py", "--config", str(EXPLORA)]
    args += ["--env-policy", "ignore", *extra]
    for item in sets:
        args += ["--set", item]
    return args


@pytest.mark.slow
def test_explora_pretraining_killed_then_resumed_is_bitwise_identical(tmp_path: Path) -> None:
    straight = subprocess.run(_pretrain_cmd(tmp_path / "a"), cwd=ROOT, capture_output=True)
    assert straight.returncode == 0, straight.stderr.decode()
    proc = subprocess.Popen(
        _pretrain_cmd(tmp_path / "b"),
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 240
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            if list((tmp_path / "b").glob("runs/*/checkpoints/last.pt")):  # epoch 0 saved
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
                break
            time.sleep(0.005)
    finally:
        if proc.poll() is None:
            proc.kill()
    run_b = next((tmp_path / "b" / "runs").iterdir())
    assert not (run_b / "manifest.json").exists()
    resumed = subprocess.run(
        _pretrain_cmd(tmp_path / "b", "--resume", "auto"), cwd=ROOT, capture_output=True
    )
    assert resumed.returncode == 0, resumed.stderr.decode()
    assert "resuming MAE pretraining" in resumed.stderr.decode()
    assert [p.name for p in (tmp_path / "b" / "runs").iterdir()] == [run_b.name]  # in place
    run_a = next((tmp_path / "a" / "runs").iterdir())
    assert_same_checkpoints_mae(run_a, run_b)
    a = (run_a / "pretrain" / "hf" / "model.safetensors").read_bytes()
    assert a == (run_b / "pretrain" / "hf" / "model.safetensors").read_bytes()
    assert (run_a / "logs" / "epochs.csv").read_text().count("\n") == 4


def assert_same_checkpoints_mae(run_a: Path, run_b: Path) -> None:
    """last.pt and best.pt of two MAE runs hold bitwise-equal weights and optimizer state."""
    for name in ("last.pt", "best.pt"):
        a = torch.load(run_a / "checkpoints" / name, weights_only=True)
        b = torch.load(run_b / "checkpoints" / name, weights_only=True)
        assert a["step"] == b["step"] and a["epoch"] == b["epoch"]
        assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"]), name
        assert torch.equal(a["masks"], b["masks"]), name
