"""Backbone and head registries and the multi-head model."""

from rigor.models.registry import (
    BACKBONES,
    HEADS,
    RigorModel,
    build_model,
    register_backbone,
    register_head,
)

__all__ = ["BACKBONES", "HEADS", "RigorModel", "build_model", "register_backbone", "register_head"]
