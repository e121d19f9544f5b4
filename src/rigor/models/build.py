"""Building a model from its config: the registered backbone (built-ins imported here, so
that the registry itself only registers), local weights, adapters and a head per task."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from rigor.config.models import ModelConfig
from rigor.data.registry import TaskSpec
from rigor.errors import ConfigError
from rigor.models.registry import (
    BACKBONES,
    HEADS,
    BackboneSpec,
    GateHead,
    InputShape,
    RigorModel,
    load_weights,
    module_key,
)


def backbone_spec(name: str) -> BackboneSpec:
    """The registered spec of ``name``; ConfigError naming the field otherwise."""
    import rigor.models.backbones  # noqa: F401  (registers the built-in backbones and heads)
    import rigor.models.hf  # noqa: F401  (registers the Hugging Face backbones)
    import rigor.models.timm_encoder  # noqa: F401  (registers timm)

    if name not in BACKBONES:
        raise ConfigError(
            f"model.backbone: unknown backbone {name!r} (registered: {sorted(BACKBONES)})"
        )
    return BACKBONES[name]


def build_model(
    cfg: ModelConfig, tasks: dict[str, TaskSpec], input_shape: InputShape
) -> RigorModel:
    """Build the backbone the config names (loading local weights if given) and a head per task."""
    spec = backbone_spec(cfg.backbone)
    backbone, dim = spec.build(cfg, input_shape)
    if cfg.weights_path:
        load_weights(backbone, Path(cfg.weights_path), cfg.weights_key_map)
    peft: dict[str, int] = {}
    unfrozen: tuple[str, ...] = ()
    if cfg.peft.method != "none":
        from rigor.models.hf import apply_peft, unfrozen_prefixes

        peft = apply_peft(backbone, cfg.peft)
        unfrozen = tuple("backbone." + p for p in unfrozen_prefixes(backbone, cfg.peft))
    heads = nn.ModuleDict(
        {module_key(name): HEADS[task.kind](cfg, task, dim) for name, task in tasks.items()}
    )
    gates = nn.ModuleDict()
    if cfg.gate.task is not None:
        gated = tasks.get(cfg.gate.task)
        if gated is None or gated.kind != "classification" or gated.num_classes is None:
            kinds = {name: task.kind for name, task in tasks.items()}
            raise ConfigError(
                f"model.gate.task: {cfg.gate.task!r} is not a classification task of this run "
                f"(tasks: {kinds})"
            )
        gate = GateHead(dim, gated.num_classes, cfg.gate.hidden, cfg.dropout)
        gates[module_key(cfg.gate.task)] = gate
    if cfg.freeze_backbone:
        backbone.requires_grad_(False)
    model = RigorModel(backbone, heads, dim, cfg.backbone, gates)
    model.peft_info = peft
    model.unfrozen, model.unfrozen_lr_scale = unfrozen, cfg.peft.unfrozen_lr_scale
    return model
