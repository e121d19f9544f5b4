"""User data on disk: ``imagefolder`` (one sub-folder per class) and ``csv`` (a table)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from rigor.config.models import CsvConfig, DataConfig
from rigor.data.readers import FileReader, ImageRef
from rigor.data.registry import FileList, RawData, TaskSpec, register_dataset
from rigor.errors import UsageError

if TYPE_CHECKING:  # pandas costs 0.2 s of import: only the csv dataset loads it
    import pandas as pd

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


def file_reader(refs: list[ImageRef], cfg: DataConfig) -> FileReader:
    """The reader of a file dataset with the config's decode settings."""
    size = cfg.transforms.image_size
    return FileReader(
        refs, (size[0], size[1]) if size else None, cfg.channels, cfg.transforms.version
    )


def _classes(values: pd.Series) -> tuple[np.ndarray, tuple[str, ...]]:
    names = tuple(sorted(values.astype(str).unique()))
    lookup = {name: index for index, name in enumerate(names)}
    return values.astype(str).map(lookup).to_numpy(np.int64), names


def pattern_groups(pattern: str | None, paths: list[str], where: str) -> list[str] | None:
    """Each path's group under ``data.group_pattern`` (its first capture group, or the whole
    match), or None without a pattern. A path it does not match is exit 2, naming it."""
    if pattern is None:
        return None
    import re

    compiled, groups = re.compile(pattern), []
    for path in paths:
        found = compiled.search(path)
        if found is None:
            raise UsageError(
                f"{where}: data.group_pattern {pattern!r} does not match {path!r}; every image "
                "needs a group"
            )
        groups.append(found.group(1) if compiled.groups else found.group(0))
    return groups


@register_dataset("imagefolder")
def build_imagefolder(cfg: DataConfig) -> RawData:
    """``root/<class>/<image>``: one classification task, ``label``; each file its own group."""
    root = Path(cfg.root or "")
    if not root.is_dir():
        raise UsageError(f"data.root: folder not found: {root}")
    refs, labels, empty = [], [], []
    real_root, seen, skipped = root.resolve(), set(), []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        if folder.is_symlink() and folder.resolve().is_relative_to(real_root):
            skipped.append(f"class folder {folder.name} (a link into the root)")
            continue
        found = [p for p in sorted(folder.rglob("*")) if p.suffix.lower() in IMAGE_EXTENSIONS]
        if not found and not folder.name.startswith("."):
            empty.append(folder.name)
        for path in found:
            real = path.resolve()
            if real in seen:  # the same file reached by a second way: read it once
                skipped.append(str(path.relative_to(root)))
                continue
            seen.add(real)
            refs.append(ImageRef(path, f"data.root {root}: file {path.relative_to(root)}"))
            labels.append(folder.name)
    if skipped:
        shown = ", ".join(skipped[:5]) + (
            f" and {len(skipped) - 5} more" if len(skipped) > 5 else ""
        )
        print(
            f"warning: data.root {root}: {len(skipped)} path(s) lead to images already listed "
            f"and are skipped: {shown}",
            file=sys.stderr,
        )
    if empty and refs:  # as torchvision's ImageFolder: a class needs at least one image
        raise UsageError(
            f"data.root {root}: class folder(s) {empty} hold no images; add images or remove "
            "the folder(s)"
        )
    if not refs:
        raise UsageError(f"data.root: no images under {root} (expected root/<class>/<image>)")
    import pandas as pd

    targets, classes = _classes(pd.Series(labels))
    ids = [str(ref.path.relative_to(root)) for ref in refs]
    spec = TaskSpec("label", "classification", len(classes), classes)
    return RawData(
        name="imagefolder",
        version=f"imagefolder:{root.resolve()}",
        offered={"label": spec},
        targets={"label": targets},
        ids=ids,
        groups=pattern_groups(cfg.group_pattern, ids, f"data.root {root}") or ids,
        reader=file_reader(refs, cfg),
        files=FileList(refs, "\n".join(ids) + "\n" + "\n".join(labels)),
    )


def _read_csv(csv: CsvConfig) -> pd.DataFrame:
    import pandas as pd

    path = Path(csv.path)
    if not path.is_file():
        raise UsageError(f"data.csv.path: file not found: {path}")
    try:
        # only an empty cell is missing: text such as "nan" or "NA" stays what it says
        frame = pd.read_csv(path, keep_default_na=False, na_values=[""])
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as err:
        raise UsageError(f"{path}: not a readable CSV: {err}") from None
    wanted = {"data.csv.image_column": csv.image_column}
    wanted |= {f"data.csv.targets.{task}.column": t.column for task, t in csv.targets.items()}
    if csv.group_column:
        wanted["data.csv.group_column"] = csv.group_column
    if csv.id_column:
        wanted["data.csv.id_column"] = csv.id_column
    for field, column in wanted.items():
        if column not in frame.columns:
            raise UsageError(
                f"{path}: no column {column!r} (named by {field}); has {list(frame.columns)}"
            )
    return frame


def _csv_targets(
    frame: pd.DataFrame, csv: CsvConfig
) -> tuple[dict[str, np.ndarray], dict[str, TaskSpec]]:
    targets, offered = {}, {}
    for task, target in csv.targets.items():
        column = frame[target.column]
        missing = column.isna().to_numpy().nonzero()[0]
        if len(missing):
            raise UsageError(
                f"{csv.path}: row {missing[0] + 2}: empty value in column {target.column!r}"
            )
        if target.kind == "classification":
            targets[task], classes = _classes(column)
            offered[task] = TaskSpec(task, "classification", len(classes), classes)
        else:
            import pandas as pd

            numbers = pd.to_numeric(column, errors="coerce")
            bad = (~np.isfinite(numbers.to_numpy(np.float64))).nonzero()[0]
            if len(bad):
                raise UsageError(
                    f"{csv.path}: row {bad[0] + 2}: column {target.column!r} value "
                    f"{str(column.iloc[bad[0]])!r} is not a finite number (task {task} is "
                    "regression)"
                )
            targets[task] = numbers.to_numpy(np.float32)
            offered[task] = TaskSpec(task, "regression")
    return targets, offered


@register_dataset("csv")
def build_csv(cfg: DataConfig) -> RawData:
    """A CSV of image paths (relative to the CSV's folder), target columns and optional groups."""
    assert cfg.csv is not None  # the config model requires it for name: csv
    csv = cfg.csv
    frame = _read_csv(csv)
    base = Path(csv.path).parent
    refs = []
    for row, value in enumerate(frame[csv.image_column].astype(str), start=2):
        path = base / value
        if not path.is_file():
            raise UsageError(f"{csv.path}: row {row}: image not found: {path}")
        refs.append(ImageRef(path, f"{csv.path}: row {row}"))
    targets, offered = _csv_targets(frame, csv)
    ids = (
        frame[csv.id_column].astype(str).tolist()
        if csv.id_column
        else [f"row{r}" for r in range(2, len(frame) + 2)]
    )
    if len(set(ids)) != len(ids):
        raise UsageError(f"{csv.path}: column {csv.id_column!r} has duplicate ids")
    if csv.group_column and frame[csv.group_column].isna().any():
        row = int(frame[csv.group_column].isna().to_numpy().nonzero()[0][0]) + 2
        raise UsageError(
            f"{csv.path}: row {row}: empty value in column {csv.group_column!r} (named by "
            "data.csv.group_column): every sample needs its group"
        )
    paths = frame[csv.image_column].astype(str).tolist()
    groups = (
        frame[csv.group_column].astype(str).tolist()
        if csv.group_column
        else pattern_groups(cfg.group_pattern, paths, str(csv.path)) or ids
    )
    return RawData(
        name="csv",
        version=f"csv:{Path(csv.path).resolve()}",
        offered=offered,
        targets=targets,
        ids=ids,
        groups=groups,
        reader=file_reader(refs, cfg),
        files=FileList(refs, frame.to_csv(index=False)),
    )
