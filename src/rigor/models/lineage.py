"""``model.init_from``: start an encoder from a pretrain run, checked by hash, and remember it.

The fine-tune names the pretrain run's ``manifest.json``. Before anything loads, every file of
the saved encoder (``pretrain/hf/``) is re-hashed against that manifest: a changed or missing
file is exit 5 naming it. The parent's run id goes into the new run's manifest
(``lineage``), so ``scripts/manifest.py show`` can walk the chain back to the first run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rigor.config.models import ModelConfig
from rigor.errors import ArtifactError, ConfigError

HF_DIR = "pretrain/hf"  # where pretrain.py saves the encoder (save_pretrained)


def resolve_init_from(model: ModelConfig) -> tuple[ModelConfig, dict[str, Any] | None]:
    """``model`` with ``hf.path`` set to the verified encoder folder of ``model.init_from``,
    and the lineage record for the manifest; unchanged (and None) without ``init_from``."""
    if model.init_from is None:
        return model, None
    from rigor.manifest import load_manifest, verify_manifest

    path = Path(model.init_from)
    if not path.is_file():
        raise ArtifactError(f"model.init_from: manifest not found: {path}")
    manifest = load_manifest(path)
    stage = manifest["stages"][0]["name"]
    if stage != "pretrain":
        raise ConfigError(
            f"model.init_from: {path} is a {stage} run; it must name a pretrain run's manifest "
            "(scripts/pretrain.py)"
        )
    weights = sorted(manifest["artifacts"].get("weights", []))
    if not any(rel.startswith(HF_DIR + "/") for rel in weights):
        raise ArtifactError(f"model.init_from: {path} lists no encoder under {HF_DIR}/")
    try:
        verify_manifest(manifest, path.parent, only=weights)
    except ArtifactError as err:
        raise ArtifactError(f"model.init_from {path}: {err}") from None
    hf = model.hf.model_copy(update={"path": str(path.parent / HF_DIR)})
    record = {
        "parent": manifest["run_id"],
        "manifest": str(path.resolve()),
        "stage": stage,
        "weights": {rel: manifest["sha256"][rel] for rel in weights},
    }
    return model.model_copy(update={"hf": hf}), record
