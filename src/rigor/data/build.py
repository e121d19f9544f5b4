"""Building a dataset from its config: the registered builder (built-ins imported here, so
that the registry itself only registers), the checks on its targets, and the sharded cache.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from rigor.config.models import DataConfig
from rigor.data.registry import DATASETS, TASK_LISTERS, RawData
from rigor.errors import ConfigError, UsageError

if TYPE_CHECKING:
    from rigor.data.dataset import ImageDataset


def _builtins() -> None:
    import rigor.data.hest.bench  # noqa: F401
    import rigor.data.hest.reader  # noqa: F401
    import rigor.data.sources.digits  # noqa: F401  (registers the built-in datasets)
    import rigor.data.sources.files  # noqa: F401
    import rigor.data.sources.tiles  # noqa: F401


def raw_dataset(cfg: DataConfig) -> RawData:
    """Run the builder the config names."""
    _builtins()
    if cfg.name not in DATASETS:
        raise ConfigError(
            f"data.name: unknown dataset {cfg.name!r} (registered: {sorted(DATASETS)})"
        )
    return DATASETS[cfg.name](cfg)


def describe_tasks(cfg: DataConfig) -> list[str]:
    """One line per task the configured dataset offers: name, kind, classes; the chosen
    ones (``data.tasks``) are marked with ``*``. A registered task lister replaces this for
    its dataset (hest: every gene of the samples, the panel marked)."""
    _builtins()
    if cfg.name in TASK_LISTERS:
        return TASK_LISTERS[cfg.name](cfg)
    raw = raw_dataset(cfg)
    chosen = set(raw.offered) if cfg.tasks == ["*"] else set(cfg.tasks)
    lines = []
    for name, spec in raw.offered.items():
        mark = "*" if name in chosen else " "
        detail = (
            f" {spec.num_classes} classes: {', '.join(spec.classes or ())}" if spec.classes else ""
        )
        lines.append(f"{mark} {name}\t{spec.kind}{detail}")
    return lines


def check_finite_targets(raw: RawData) -> None:
    """A NaN or infinite target would train to NaN and fail only at the end: it is an error
    before anything is written, naming the task and the first samples (exit 2)."""
    problems = []
    for task, values in raw.targets.items():
        array = np.asarray(values)
        if not np.issubdtype(array.dtype, np.floating):
            continue
        bad = np.flatnonzero(~np.isfinite(array.reshape(len(array), -1)).all(axis=1))
        if len(bad):
            shown = ", ".join(str(raw.ids[i]) for i in bad[:5])
            more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
            problems.append(f"task {task!r}: non-finite target for {shown}{more}")
    if problems:
        raise UsageError(f"dataset {raw.name}: " + "; ".join(problems))


def build_dataset(cfg: DataConfig, cache_root: Path | None = None) -> ImageDataset:
    """The dataset the config names, read lazily; through the sharded cache when
    ``data.cache`` is on. ``cache_root`` also holds the fingerprints' hash index."""
    from rigor.data.cache import cached_reader
    from rigor.data.dataset import ImageDataset
    from rigor.io import sha256_json

    raw = raw_dataset(cfg)
    check_finite_targets(raw)
    if cache_root is not None:
        raw.hash_index = cache_root / "fingerprints" / f"{sha256_json(raw.version)[:16]}.json"
    reader, status = raw.reader, "off"
    if raw.files is None:
        status = "not used (in-memory dataset)"
    elif cfg.cache and cache_root is not None:
        reader, status = cached_reader(raw, cfg, cache_root)
    print(
        f"data: {raw.name} ({len(raw.ids)} samples), preprocessing cache {status}", file=sys.stderr
    )
    return ImageDataset(raw, reader, cfg.tasks, skip_bad=cfg.on_bad_sample == "skip")
