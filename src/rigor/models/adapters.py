"""The trainable part of a PEFT run as its own small file, and merging adapters away.

A LoRA/DoRA run trains adapters, any unfrozen blocks and norms, and the heads; everything
else is the frozen base (a pretrain run's encoder through ``model.init_from``, or released
weights through ``model.hf.path``). ``adapter/adapter.safetensors`` holds exactly the
trained part, so base + adapter file rebuild the model. :func:`merge_adapters` folds the
adapters into the base weights with peft's own ``merge`` and leaves a plain model behind.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from rigor.errors import ArtifactError

ADAPTER_FILE = "adapter/adapter.safetensors"


def adapter_keys(model: nn.Module) -> list[str]:
    """State-dict keys of the trained part: every key outside the backbone (heads, gates and
    their buffers) and the backbone's trainable parameters (adapters, unfrozen blocks)."""
    trainable = {name for name, param in model.named_parameters() if param.requires_grad}
    return [
        key for key in model.state_dict() if not key.startswith("backbone.") or key in trainable
    ]


def _nbytes(state: dict[str, torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in state.values())


def adapter_payload(
    model: nn.Module, state: dict[str, torch.Tensor]
) -> tuple[bytes, dict[str, Any]]:
    """The safetensors bytes of ``state``'s trained part, and a record of sizes: the file's
    tensors against the full state's (bytes and parameter counts)."""
    from safetensors.torch import save

    keys = adapter_keys(model)
    part = {key: state[key].detach().cpu().contiguous() for key in keys}
    payload = save(part, metadata={"format": "pt", "rigor": "adapter"})
    full = _nbytes(state)
    record: dict[str, Any] = {
        "path": ADAPTER_FILE,
        "tensors": len(part),
        "params": int(sum(t.numel() for t in part.values())),
        "params_total": int(sum(t.numel() for t in state.values())),
        "size_bytes": len(payload),
        "full_size_bytes": full,
        "size_share": round(len(payload) / max(full, 1), 6),
    }
    return payload, record


def load_adapter(model: nn.Module, path: Path) -> None:
    """Load an adapter file into ``model`` (its base already in place); a key the model lacks,
    or a trained key the file lacks, is an ArtifactError naming it."""
    from safetensors.torch import load_file

    if not path.is_file():
        raise ArtifactError(f"{path}: adapter file not found")
    state = load_file(str(path))
    expected = set(adapter_keys(model))
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise ArtifactError(
            f"{path}: does not fit this model (missing {missing[:5]}, unexpected "
            f"{unexpected[:5]})"
        )
    model.load_state_dict(state, strict=False)


def merge_adapters(model: nn.Module) -> int:
    """Merge every LoRA/DoRA layer into its base layer with peft's ``merge`` and put the base
    layer back in its place; returns how many layers were merged. The model left behind is
    the plain architecture (no peft modules, plain state-dict keys)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    tuned = [(name, m) for name, m in model.named_modules() if isinstance(m, BaseTunerLayer)]
    for name, module in tuned:
        module.merge(safe_merge=True)
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, module.get_base_layer())
    return len(tuned)
