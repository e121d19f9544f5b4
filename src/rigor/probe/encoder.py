"""What a probe run's manifest records of its encoder: the architecture, the sha256 of the
weights file or folder it was loaded from and of its weights as loaded, the feature width."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rigor.config.models import Config
from rigor.io import sha256_file, sha256_json


def encoder_record(cfg: Config, state: str, dim: int) -> dict[str, Any]:
    """The manifest's account of the encoder: its architecture, the sha256 of the weights
    file (or folder) it was loaded from, of its weights as loaded, and the feature width."""
    model = cfg.model
    architecture = model.timm.arch if model.backbone == "timm" else None
    weights = model.weights_path
    if model.backbone in ("hf_auto", "dinov3_vit"):
        weights = weights or model.hf.path
    if model.backbone in ("hf_auto", "dinov3_vit") and model.hf.path:
        config = json.loads((Path(model.hf.path) / "config.json").read_text())
        architecture = ",".join(config.get("architectures") or [config.get("model_type", "")])
    digest = None
    if weights:
        digest = (
            sha256_file(Path(weights)) if Path(weights).is_file() else folder_sha256(Path(weights))
        )
    return {
        "architecture": architecture,
        "weights_sha256": digest,
        "state_sha256": state,
        "dim": dim,
    }


def folder_sha256(folder: Path) -> str:
    """sha256 over a folder's files: each relative name and its sha256, in sorted order."""
    listed = sorted(p for p in folder.rglob("*") if p.is_file())
    return sha256_json([[str(p.relative_to(folder)), sha256_file(p)] for p in listed])
