"""MAE pretraining: patch maths, the masked loss, a run whose encoder a fine-tune loads."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import CONFIGS

from rigor.config import load_config
from rigor.errors import ConfigError
from rigor.pretraining.mae import MAE, patchify, unpatchify

MAE_CONFIG = CONFIGS / "experiment" / "digits_mae.yaml"
LORA = CONFIGS / "experiment" / "digits_dinov3_lora.yaml"


def test_patchify_is_row_major_and_inverts() -> None:
    images = torch.arange(2 * 3 * 4 * 6, dtype=torch.float32).reshape(2, 3, 4, 6)
    patches = patchify(images, 2)
    assert patches.shape == (2, 6, 12)
    # patch 1 is rows 0-1, columns 2-3; its first pixel's channels come first
    assert patches[0, 1, :3].tolist() == images[0, :, 0, 2].tolist()
    assert torch.equal(unpatchify(patches, 2, 3, 4), images)


def _mae(mask_ratio: float, norm_pix: bool) -> MAE:
    from rigor.models.build import build_model

    sets = [f"pretrain.mask_ratio={mask_ratio}", f"pretrain.norm_pix_loss={str(norm_pix).lower()}"]
    cfg = load_config(MAE_CONFIG, sets=sets, environ={}).config
    torch.manual_seed(0)
    from rigor.data.registry import TaskSpec

    model = build_model(cfg.model, {"digit": TaskSpec("digit", "classification", 10)}, (1, 8, 8))
    return MAE(model.backbone.net, 1, 16, cfg.pretrain)


@pytest.mark.parametrize("norm_pix", [False, True])
def test_loss_is_the_mse_of_the_hidden_patches_only(norm_pix: bool) -> None:
    mae = _mae(0.75, norm_pix).eval()
    images = torch.randn(5, 1, 8, 8)
    out = mae(images, torch.Generator().manual_seed(3))
    assert out.mask.shape == (5, 16)
    assert out.mask.sum(dim=1).tolist() == [12.0] * 5  # 16 patches, 4 kept
    target = patchify(images, 2)
    if norm_pix:
        target = (target - target.mean(-1, keepdim=True)) / (
            target.var(-1, keepdim=True) + 1e-6
        ) ** 0.5
    per_patch = ((out.pred - target) ** 2).mean(-1)
    expected = per_patch[out.mask.bool()].mean()
    assert torch.allclose(out.loss, expected, rtol=1e-6)
    # the same generator seed hides the same patches
    again = mae(images, torch.Generator().manual_seed(3))
    assert torch.equal(again.mask, out.mask) and torch.equal(again.loss, out.loss)
    # the reconstruction keeps visible patches exactly
    recon = patchify(mae.reconstruct(images, out), 2)
    visible = ~out.mask.bool()
    assert torch.allclose(recon[visible], patchify(images, 2)[visible])


def test_pretrain_refuses_non_vit_and_frozen_encoders() -> None:
    from rigor.pretraining.run import check_pretrain_config

    with pytest.raises(ConfigError, match="pretrains dinov3_vit"):
        check_pretrain_config(
            load_config(MAE_CONFIG, sets=["model.backbone=cnn_small"], environ={})
        )
    with pytest.raises(ConfigError, match="freeze_backbone: false"):
        check_pretrain_config(
            load_config(MAE_CONFIG, sets=["model.freeze_backbone=true"], environ={})
        )
    # adapters are welcome (ExPLoRA): no error
    check_pretrain_config(load_config(MAE_CONFIG, sets=["model.peft.method=lora"], environ={}))


def test_pretrain_run_writes_an_encoder_that_a_fine_tune_loads(
    tmp_path: Path, run_script, capsys: pytest.CaptureFixture[str]  # type: ignore[no-untyped-def]
) -> None:
    from safetensors.torch import load_file

    from rigor.manifest import load_manifest, verify_manifest
    from rigor.pretraining.run import pretrain
    from rigor.training.run import train

    sets = [
        f"run.output_root={tmp_path}",
        "training.epochs=3",
        "training.max_steps_per_epoch=4",
        "scheduler.warmup_epochs=1",
        f"logging.mlflow.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}",
    ]
    path = pretrain(load_config(MAE_CONFIG, sets=sets, environ={}), env_policy="ignore")
    manifest = load_manifest(path)
    verify_manifest(manifest, path.parent)
    assert manifest["stages"][0]["name"] == "pretrain"
    assert "pretrain/hf/model.safetensors" in manifest["artifacts"]["weights"]
    assert manifest["artifacts"]["figures"] == ["pretrain/reconstructions.png"]
    epochs = (path.parent / "logs" / "epochs.csv").read_text().splitlines()
    assert (
        epochs[0].startswith("epoch,step,loss/mae/train,loss/mae/val_select") and len(epochs) == 4
    )
    summary = manifest["stages"][0]["summary"]
    assert summary["steps"] == 12 and summary["objective"] == "mae"
    best = min(float(row.split(",")[3]) for row in epochs[1:])
    assert manifest["metrics"]["best/loss/mae/val_select"] == pytest.approx(best)
    # its MLflow mirror: each epoch's row at its step, the best value, the figure
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("digits_mae").experiment_id])
    assert run.info.status == "FINISHED" and run.data.tags["rigor.run_id"] == path.parent.name
    history = client.get_metric_history(run.info.run_id, "loss/mae/val_select")
    assert [h.step for h in history] == [int(row.split(",")[1]) for row in epochs[1:]]
    assert run.data.metrics["best/loss/mae/val_select"] == pytest.approx(best)
    listed = [entry.path for entry in client.list_artifacts(run.info.run_id, "pretrain")]
    assert listed == ["pretrain/reconstructions.png"]

    # the saved encoder (read back with from_pretrained) is the best checkpoint's encoder
    from transformers import DINOv3ViTModel

    hf = path.parent / "pretrain" / "hf"
    saved = DINOv3ViTModel.from_pretrained(str(hf), local_files_only=True).state_dict()
    ckpt = torch.load(path.parent / "checkpoints" / "best.pt", weights_only=True)["model"]
    assert len(load_file(str(hf / "model.safetensors"))) == len(saved)
    for key, value in saved.items():
        assert torch.equal(ckpt[f"encoder.{key}"], value), key

    # a LoRA fine-tune starts from exactly those weights and records where they came from
    fine = load_config(
        LORA,
        sets=[
            f"run.output_root={tmp_path}",
            f"model.hf.path={hf}",
            "training.epochs=2",
            "training.max_steps_per_epoch=2",
            "scheduler.warmup_epochs=0.5",
        ],
        environ={},
    )
    fine_path = train(fine, env_policy="ignore")
    fine_manifest = load_manifest(fine_path)
    assert fine_manifest["encoder"]["weights"] == str(hf)
    state = torch.load(fine_path.parent / "checkpoints" / "last.pt", weights_only=True)["model"]
    base = "backbone.net.model.layer.0.attention.q_proj.base_layer.weight"
    assert torch.equal(state[base], saved["model.layer.0.attention.q_proj.weight"])

    # the experiment log drafts a pretrain run with its reconstruction loss
    from rigor.experiments import draft_entry

    log = tmp_path / "EXPERIMENTS.md"
    log.write_text("# Experiments\n")
    entry = draft_entry(path, "mae check", log)
    assert f"| best/loss/mae/val_select | {best:.4g} |" in entry

    # later stages refuse the pretrain manifest with a clear message
    code = run_script("eval", "--from-manifest", str(path))
    assert code == 5
    assert "is a pretrain run" in capsys.readouterr().err
