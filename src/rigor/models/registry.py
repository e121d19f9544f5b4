"""Registries: ``@register_backbone("name")`` and ``@register_head("kind")``, no if/else."""

from __future__ import annotations

import pickle
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from rigor.config.models import ModelConfig
from rigor.data.registry import TaskSpec
from rigor.errors import ArtifactError, ConfigError

InputShape = tuple[int, int, int]
BackboneBuilder = Callable[[ModelConfig, InputShape], tuple[nn.Module, int]]
HeadBuilder = Callable[[ModelConfig, TaskSpec, int], nn.Module]
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


@dataclass(frozen=True)
class BackboneSpec:
    """A registered backbone: its builder, normalisation preset and default explanation layer."""

    build: BackboneBuilder
    preset: tuple[tuple[float, ...], tuple[float, ...]] | None
    layer: str


BACKBONES: dict[str, BackboneSpec] = {}
HEADS: dict[str, HeadBuilder] = {}


def register_backbone(
    name: str,
    preset: tuple[tuple[float, ...], tuple[float, ...]] | None = None,
    layer: str = "",
) -> Callable[[BackboneBuilder], BackboneBuilder]:
    """Register ``builder(cfg, (C, H, W)) -> (module, feature_dim)`` under ``name``."""

    def decorate(builder: BackboneBuilder) -> BackboneBuilder:
        BACKBONES[name] = BackboneSpec(builder, preset, layer)
        return builder

    return decorate


def register_head(kind: str) -> Callable[[HeadBuilder], HeadBuilder]:
    """Register a head builder for a task kind (classification, regression)."""

    def decorate(builder: HeadBuilder) -> HeadBuilder:
        HEADS[kind] = builder
        return builder

    return decorate


GATE, AUX = "gate:", "aux:"  # output keys of a gated task: gate:<task>, aux:<task>


def module_key(task: str) -> str:
    """A task's key in a ModuleDict or ParameterDict, which refuse ``.``: real gene names
    have one (``AC009501.4``), so ``%`` and ``.`` are percent-encoded (reversibly)."""
    return task.replace("%", "%25").replace(".", "%2E")


def task_name(key: str) -> str:
    """The task a :func:`module_key` stands for."""
    return key.replace("%2E", ".").replace("%25", "%")


class GateHead(nn.Module):
    """SelectiveNet's selection head g (one logit per sample) and auxiliary head h.

    g: Linear -> ReLU -> BatchNorm -> Linear(1), as in Geifman and El-Yaniv (2019); h: dropout
    and a linear layer to the task's classes, trained with plain cross-entropy.
    """

    def __init__(self, dim: int, num_classes: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.selector = nn.Sequential(
            nn.Linear(dim, hidden),
            nn.ReLU(),
            nn.BatchNorm1d(hidden),
            nn.Linear(hidden, 1),
            nn.Flatten(0),
        )
        self.aux = nn.Sequential(nn.Dropout(dropout), nn.Linear(dim, num_classes))

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The selection logit (N,) and the auxiliary logits (N, K)."""
        return self.selector(features), self.aux(features)


class RigorModel(nn.Module):
    """A backbone and one head per task in an ``nn.ModuleDict``; forward returns a dict.

    A gated task also returns ``gate:<task>`` (selection logits) and ``aux:<task>``.
    """

    def __init__(
        self,
        backbone: nn.Module,
        heads: nn.ModuleDict,
        feature_dim: int,
        arch: str,
        gates: nn.ModuleDict | None = None,
    ):
        super().__init__()
        self.backbone = backbone
        self.heads = heads
        self.gates = gates if gates is not None else nn.ModuleDict()
        self.feature_dim = feature_dim
        self.arch = arch
        self.peft_info: dict[str, int] = {}  # adapted layers and adapter parameters, if any
        self.unfrozen: tuple[str, ...] = ()  # parameter prefixes trained in full beside adapters
        self.unfrozen_lr_scale = 1.0

    def forward(self, inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        """Logits (classification) or predictions (regression) per task, and gate outputs."""
        features = self.backbone(inputs)
        outputs = {task_name(key): head(features) for key, head in self.heads.items()}
        for key, gate in self.gates.items():
            task = task_name(key)
            outputs[GATE + task], outputs[AUX + task] = gate(features)
        return outputs

    def head(self, task: str) -> nn.Module:
        """The head of ``task``."""
        return self.heads[module_key(task)]


# Keys of the classifiers that backbones drop; a full torchvision checkpoint still loads.
_DROPPED_HEADS = ("fc.", "classifier.2.", "heads.")


def read_state(path: Path) -> dict[str, torch.Tensor]:
    """A local state dict, never unpickled: safetensors, or a torch file (.pth, .bin, .pt)
    read with ``weights_only``; a checkpoint's ``model`` or ``state_dict`` entry is used."""
    if not path.is_file():
        raise ArtifactError(f"model.weights_path: file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, OSError, ValueError, EOFError) as err:
        first = " ".join(str(err).split())[:300]
        raise ConfigError(
            f"model.weights_path {path}: not a tensors-only torch file ({first})"
        ) from None
    if isinstance(loaded, dict):
        for key in ("model", "state_dict"):
            if isinstance(loaded.get(key), dict):
                loaded = loaded[key]
    if not isinstance(loaded, dict) or not all(torch.is_tensor(v) for v in loaded.values()):
        raise ConfigError(
            f"model.weights_path {path}: holds a {type(loaded).__name__} that is not a state "
            "dict of tensors"
        )
    return loaded


def map_keys(
    state: dict[str, torch.Tensor], key_map: dict[str, str | None]
) -> dict[str, torch.Tensor]:
    """``state`` with the first matching prefix of ``key_map`` replaced (None drops the key)."""
    if not key_map:
        return state
    mapped = {}
    for key, value in state.items():
        prefix = next((p for p in key_map if key.startswith(p)), None)
        if prefix is None:
            mapped[key] = value
        elif key_map[prefix] is not None:
            mapped[str(key_map[prefix]) + key[len(prefix) :]] = value
    return mapped


def load_weights(
    module: nn.Module, path: Path, key_map: dict[str, str | None] | None = None
) -> None:
    """Load a local state dict into a backbone, every key checked.

    Backbones take the original model's keys (``conv1.weight`` for torchvision, timm's own
    names for timm); the keys of the classifier a backbone drops are reported and skipped;
    any other missing or unexpected key is a config error (exit 2) naming it.
    """
    state = map_keys(read_state(path), key_map or {})
    target = getattr(module, "net", module)
    dropped_prefixes = getattr(module, "dropped_prefixes", _DROPPED_HEADS)
    expected = target.state_dict()
    dropped = [k for k in state if k not in expected and k.startswith(dropped_prefixes)]
    state = {k: v for k, v in state.items() if k not in dropped}
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"{k}: file {tuple(v.shape)}, model {tuple(expected[k].shape)}"
        for k, v in state.items()
        if k in expected and tuple(v.shape) != tuple(expected[k].shape)
    ]
    if missing or unexpected or shapes:
        parts = [
            f"{label} {len(keys)}: {keys[:5]}"
            for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape", shapes))
            if keys
        ]
        raise ConfigError(
            f"model.weights_path {path}: keys do not match the backbone ({'; '.join(parts)}); "
            "model.weights_key_map renames or drops key prefixes"
        )
    if dropped:
        print(f"weights: skipped {len(dropped)} key(s) of the dropped classifier", file=sys.stderr)
    target.load_state_dict(state, strict=True)


def model_size(model: nn.Module) -> dict[str, float]:
    """Total and trainable parameter counts, and the size of parameters and buffers in MB."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    size = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    return {"params_total": total, "params_trainable": trainable, "size_mb": round(size / 2**20, 3)}
