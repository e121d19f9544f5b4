"""Backbone and head registries and the multi-head model."""

from rigor.models.build import build_model
from rigor.models.registry import BACKBONES, HEADS, RigorModel, register_backbone, register_head

__all__ = ["BACKBONES", "HEADS", "RigorModel", "build_model", "register_backbone", "register_head"]
