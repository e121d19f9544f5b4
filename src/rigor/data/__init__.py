"""Datasets, task specs, splits and transforms."""

from rigor.data.registry import DATASETS, DatasetSource, TaskSpec, build_dataset, register_dataset

__all__ = ["DATASETS", "DatasetSource", "TaskSpec", "build_dataset", "register_dataset"]
