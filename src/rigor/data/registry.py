"""Dataset registry: a name maps to a builder; no if/else chains over names.

A builder returns :class:`RawData`: a reader that decodes one sample at a time, plus the
targets, ids, groups and how to fingerprint the content. :func:`rigor.data.build.build_dataset`
turns it into a lazily read :class:`~rigor.data.dataset.ImageDataset`, through the sharded
preprocessing cache when ``data.cache`` is on.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from rigor.config.models import DataConfig
from rigor.data.readers import ImageRef, SampleReader
from rigor.errors import UsageError

if TYPE_CHECKING:
    from rigor.data.fingerprint import FileState


@dataclass(frozen=True)
class TaskSpec:
    """What one task of a dataset is: classification with num_classes, or regression."""

    name: str
    kind: Literal["classification", "regression"]
    num_classes: int | None = None
    classes: tuple[str, ...] | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON form recorded in the manifest."""
        classes = list(self.classes) if self.classes is not None else None
        return {"kind": self.kind, "num_classes": self.num_classes, "classes": classes}


@dataclass
class FileList:
    """The files behind a dataset and the text (ids, targets) hashed with them."""

    refs: list[ImageRef]
    extra: str


@dataclass
class RawData:
    """What a builder found: a reader for the inputs and everything else about the samples.

    In-memory datasets give ``fingerprint`` directly; datasets on disk give ``files``, which
    are hashed on first use through the hash index under ``hash_index`` (see
    :mod:`rigor.data.fingerprint`). The fingerprint changes whenever inputs or targets do.
    """

    name: str
    version: str
    offered: dict[str, TaskSpec]
    targets: dict[str, np.ndarray]
    ids: list[str]
    groups: list[str]
    reader: SampleReader
    fingerprint: str | None = None
    files: FileList | None = None
    masks: np.ndarray | None = None  # (N, H, W) bool ground-truth relevance, native size
    coords: np.ndarray | None = None  # (N, 2) spots' (x, y) pixels on their slide (HEST)
    hash_index: Path | None = None
    fingerprint_record: dict[str, Any] = field(default_factory=dict)
    file_state: FileState | None = None  # per-file identities and digests behind fingerprint
    extra_record: dict[str, Any] = field(default_factory=dict)  # for the manifest (e.g. genes)

    def content_hash(self) -> str:
        """The content fingerprint, computed once (files: through the hash index)."""
        if self.fingerprint is None:
            from rigor.data.fingerprint import fingerprint_files

            assert self.files is not None, "a dataset needs a fingerprint or files"
            self.fingerprint, self.fingerprint_record, self.file_state = fingerprint_files(
                self.files.refs, self.files.extra, self.hash_index
            )
        elif not self.fingerprint_record:
            self.fingerprint_record = {"method": "sha256 of the embedded arrays and targets"}
        return self.fingerprint

    def check_unchanged(self) -> None:
        """Raise UsageError (exit 2) naming the files that changed since the fingerprint was
        taken (a run's data must be what its manifest says it trained on)."""
        if self.file_state is None or self.files is None:
            return
        from rigor.data.fingerprint import changed_files

        changed = changed_files(self.files.refs, self.file_state)
        if changed:
            shown = ", ".join(changed[:5]) + (
                f" and {len(changed) - 5} more" if len(changed) > 5 else ""
            )
            raise UsageError(
                f"dataset {self.name}: {len(changed)} file(s) changed while the run was using "
                f"them: {shown}; the fingerprint taken at the start no longer describes the "
                "data, so no manifest was written (rerun on data that stays still)"
            )

    def describe(self, index: int) -> str:
        """Where sample ``index`` comes from (its file, for datasets on disk)."""
        describe = getattr(self.reader, "describe", None)
        return str(describe(index)) if describe is not None else f"row {index}"


DATASETS: dict[str, Callable[[DataConfig], RawData]] = {}


def register_dataset(
    name: str,
) -> Callable[[Callable[[DataConfig], RawData]], Callable[[DataConfig], RawData]]:
    """Register a builder ``DataConfig -> RawData`` under ``name``."""

    def decorate(builder: Callable[[DataConfig], RawData]) -> Callable[[DataConfig], RawData]:
        DATASETS[name] = builder
        return builder

    return decorate


TASK_LISTERS: dict[str, Callable[[DataConfig], list[str]]] = {}


def register_task_lister(
    name: str,
) -> Callable[[Callable[[DataConfig], list[str]]], Callable[[DataConfig], list[str]]]:
    """Register how ``--list-tasks`` lists what dataset ``name`` could offer, for datasets
    whose builder needs a choice first (a hest gene panel); others list their builder's tasks."""

    def decorate(
        lister: Callable[[DataConfig], list[str]],
    ) -> Callable[[DataConfig], list[str]]:
        TASK_LISTERS[name] = lister
        return lister

    return decorate
