"""HEST-Benchmark task folders (``data.name: hest_bench``), read as they are published.

A task folder (IDC, PRAD, PAAD, SKCM, COAD, READ, ccRCC, HCC, LUNG, LYMPH_IDC) holds::

    splits/train_<k>.csv, splits/test_<k>.csv   sample_id, patches_path, expr_path
                                                (paths relative to the task folder)
    var_50genes.json                            {"genes": [...]} (other gene lists by name)
    patches/<sample>.h5                         img (N, H, W, 3) uint8, coords (N, 2),
                                                barcode (N, 1) bytes
    adata/<sample>.h5ad                         spots x genes, raw counts; obs_names barcodes

HEST-Benchmark's own code (``hest/bench/benchmark.py``) counts the files under ``splits/``,
halves the count, and for each k trains on ``train_k`` and tests on ``test_k``; it joins
patches to spots on the barcode (``adata[barcodes]``), keeps the gene list's columns and
takes ``log1p`` of the counts. Every sample listed in any split is read here once; the
probe (``probe.protocol: hest_bench``) takes the splits from ``extra_record["bench_splits"]``.
Anything the benchmark code would silently accept or crash on is an error naming the file
and row: a missing file, a gene absent from a sample, duplicate barcodes or gene names, a
sample with no patches, a split without its partner.
"""

from __future__ import annotations

import csv
import json
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np

from rigor.config.models import DataConfig, TopVariableConfig
from rigor.data.hest.files import SampleTable
from rigor.data.hest.reader import hest_reader
from rigor.data.registry import FileList, RawData, TaskSpec, register_dataset
from rigor.errors import UsageError

COLUMNS = ("sample_id", "patches_path", "expr_path")
SPLIT_FILE = re.compile(r"^(train|test)_(\d+)\.csv$")


def gene_list(root: Path, genes: Any) -> tuple[list[str], str]:
    """The task's gene list: ``data.genes`` names a JSON file of the folder (or a path) with
    ``{"genes": [...]}``, or is the list itself; returns it and where it came from."""
    if isinstance(genes, TopVariableConfig) or genes is None:
        raise UsageError(
            "data.genes: a HEST-Benchmark task names its gene list (var_50genes.json) or a list"
        )
    if isinstance(genes, list):
        names, where = list(genes), "data.genes"
    else:
        path = root / genes if (root / genes).is_file() else Path(genes)
        if not path.is_file():
            raise UsageError(f"data.genes: gene list {genes!r} not found in {root} or as a path")
        try:
            names = json.loads(path.read_text())["genes"]
        except (ValueError, KeyError, TypeError):
            raise UsageError(f"{path}: not a JSON object with a 'genes' list") from None
        where = str(path)
    if not isinstance(names, list) or not names or not all(isinstance(g, str) for g in names):
        raise UsageError(f"{where}: the gene list must be a non-empty list of names")
    repeated = sorted({g for g in names if names.count(g) > 1})
    if repeated:
        raise UsageError(f"{where}: duplicate gene names {repeated}")
    return names, where


def split_files(root: Path) -> list[tuple[Path, Path]]:
    """``(train_k.csv, test_k.csv)`` for k = 0, 1, ...; every file under ``splits/`` must be
    one of a complete pair."""
    folder = root / "splits"
    if not folder.is_dir():
        raise UsageError(f"data.root: {root} has no splits/ folder (HEST-Benchmark task layout)")
    found: dict[int, dict[str, Path]] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith("."):
            continue
        match = SPLIT_FILE.match(path.name)
        if match is None:
            raise UsageError(
                f"{path}: not a split file (splits/ holds train_<k>.csv and test_<k>.csv only; "
                "HEST-Benchmark counts every file there)"
            )
        found.setdefault(int(match.group(2)), {})[match.group(1)] = path
    if not found:
        raise UsageError(f"{folder}: no train_<k>.csv / test_<k>.csv")
    pairs = []
    for k in range(max(found) + 1):
        got = found.get(k, {})
        lacking = [f"{side}_{k}.csv" for side in ("train", "test") if side not in got]
        if lacking:
            raise UsageError(
                f"{folder}: split {k} lacks {', '.join(lacking)} (an odd or gapped split "
                f"count: {len([p for s in found.values() for p in s.values()])} files)"
            )
        pairs.append((got["train"], got["test"]))
    return pairs


def read_split(path: Path, root: Path, paths: dict[str, tuple[Path, Path]]) -> list[str]:
    """The sample ids of one split CSV, each row's files checked (and recorded in ``paths``)."""
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise UsageError(f"{path}: no column {missing} (expected {list(COLUMNS)})")
        samples = []
        for line, row in enumerate(reader, start=2):
            sample = (row["sample_id"] or "").strip()
            if not sample:
                raise UsageError(f"{path} row {line}: empty sample_id")
            files = (root / row["patches_path"].strip(), root / row["expr_path"].strip())
            for file, column in zip(files, COLUMNS[1:], strict=True):
                if not file.is_file():
                    raise UsageError(f"{path} row {line}: {column} {file} does not exist")
            if paths.setdefault(sample, files) != files:
                raise UsageError(
                    f"{path} row {line}: sample {sample} names {files[0].name}, "
                    f"{files[1].name}; another row named {paths[sample][0].name}, "
                    f"{paths[sample][1].name}"
                )
            if sample in samples:
                raise UsageError(f"{path} row {line}: sample {sample} is listed twice")
            samples.append(sample)
    if not samples:
        raise UsageError(f"{path}: lists no sample")
    return samples


def patients_of(root: Path, pairs: list[tuple[Path, Path]]) -> dict[str, str]:
    """The patient of each sample where a split CSV has a ``patient`` column; else none."""
    patients: dict[str, str] = {}
    for pair in pairs:
        for path in pair:
            with path.open(newline="") as handle:
                for row in csv.DictReader(handle):
                    if row.get("patient"):
                        patients[row["sample_id"].strip()] = row["patient"].strip()
    return patients


def check_crossing(splits: list[dict[str, Any]], patients: dict[str, str]) -> list[str]:
    """Warnings for samples (or patients) that a split both trains and tests on: the task's
    own CSVs say so, so the splits are used as they are."""
    warnings = []
    for split in splits:
        both = sorted(set(split["train"]) & set(split["test"]))
        if both:
            warnings.append(f"split {split['k']}: samples {both} are in train and test")
        train_p = {patients.get(s, s) for s in split["train"]}
        crossed = sorted({patients.get(s, s) for s in split["test"]} & train_p - set(both))
        if crossed and patients:
            warnings.append(f"split {split['k']}: patients {crossed} are in train and test")
    return warnings


def _group(sample: str, patients: dict[str, str], group_by: str, csv_path: Path) -> str:
    """The split group of a sample: its patient (``auto`` when the CSVs name one,
    ``patient`` always), or the sample itself."""
    if group_by == "patient" and sample not in patients:
        raise UsageError(
            f"{csv_path.parent}: no patient column value for sample {sample} "
            "(data.hest.group_by: patient needs one)"
        )
    return sample if group_by == "sample" else patients.get(sample, sample)


@register_dataset("hest_bench")
def build_hest_bench(cfg: DataConfig) -> RawData:
    """Every sample a task folder's splits list, one regression task per gene of its list;
    the split group is the patient (a ``patient`` column) or the sample."""
    root = Path(cfg.root or "")
    assert cfg.hest is not None  # the config model requires it
    genes, gene_source = gene_list(root, cfg.genes)
    pairs = split_files(root)
    paths: dict[str, tuple[Path, Path]] = {}
    splits: list[dict[str, Any]] = [
        {"k": k, "train": read_split(train, root, paths), "test": read_split(test, root, paths)}
        for k, (train, test) in enumerate(pairs)
    ]
    patients = patients_of(root, pairs)
    for warning in check_crossing(splits, patients):
        print(f"warning: {root}: {warning} (as the task's CSVs say)", file=sys.stderr)
    found = SampleTable()
    for sample, (h5, h5ad) in paths.items():
        group = _group(sample, patients, cfg.hest.group_by, pairs[0][0])
        lacking = found.add(sample, h5, h5ad, group, genes, cfg)
        if lacking and cfg.missing_genes == "error":
            raise UsageError(
                f"{h5ad}: genes {lacking} of {gene_source} are absent from sample {sample}"
            )
    keep = [g for g in genes if g not in found.missing]
    if not keep:
        raise UsageError(f"{gene_source}: no gene of the list is present in every sample")
    matrix = np.concatenate(found.blocks)[:, [genes.index(g) for g in keep]]
    ids = found.ids
    row_sample = np.asarray([i.split(":", 1)[0] for i in ids])
    for split in splits:
        split["n_train"] = int(np.isin(row_sample, split["train"]).sum())
        split["n_test"] = int(np.isin(row_sample, split["test"]).sum())
    transform = {"expression": cfg.hest.expression, "target_sum": cfg.hest.target_sum}
    record = {
        "task": root.resolve().name,
        "samples": list(paths),
        "genes": keep,
        "gene_list": gene_source,
        "dropped_genes": sorted(set(genes) - set(keep)),
        "bench_splits": splits,
        "patients": patients or None,
        **transform,
    }
    return RawData(
        name="hest_bench",
        version=f"hest_bench:{root.resolve()}",
        offered={gene: TaskSpec(gene, "regression") for gene in keep},
        targets={gene: matrix[:, j] for j, gene in enumerate(keep)},
        ids=ids,
        groups=found.groups,
        reader=hest_reader(found, cfg),
        files=FileList(
            found.refs, json.dumps({"ids": ids, "genes": keep, "splits": splits, **transform})
        ),
        extra_record=record,
        coords=np.concatenate(found.coords),
    )


def first_split_rows(raw: RawData) -> dict[str, list[int]]:
    """The run's four-way ``splits.json`` for a task folder: split 0's train samples as
    ``train`` and its test samples as ``val_test`` (the probe reports every split; the
    task has no val_select or val_calib)."""
    first = raw.extra_record["bench_splits"][0]
    sample = [i.split(":", 1)[0] for i in raw.ids]
    train, test = set(first["train"]), set(first["test"])
    return {
        "train": [r for r, s in enumerate(sample) if s in train],
        "val_select": [],
        "val_calib": [],
        "val_test": [r for r, s in enumerate(sample) if s in test],
    }
