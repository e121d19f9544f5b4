"""Datasets read lazily per sample, task specs, splits, batch transforms and the cache."""

from rigor.data.build import build_dataset
from rigor.data.dataset import Batch, ImageDataset
from rigor.data.registry import DATASETS, TaskSpec, register_dataset

__all__ = ["DATASETS", "Batch", "ImageDataset", "TaskSpec", "build_dataset", "register_dataset"]
