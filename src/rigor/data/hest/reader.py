"""HEST-format spatial transcriptomics: image patches in ``.h5``, expression in ``.h5ad``.

The layout HEST-1k is distributed in (Jaume et al., 2024)::

    <root>/patches/<sample_id>.h5      img (N, H, W, 3) uint8, coords (N, 2), barcode (N, 1) bytes
    <root>/st/<sample_id>.h5ad         AnnData, spots x genes (obs_names are the barcodes)
    <root>/metadata/<sample_id>.json   optional; "patient" names the donor

Patches and spots are joined on the barcode. Patches stream from the ``.h5`` files: each
DataLoader worker opens its own read-only handle per file on first use, and no process
holds more than one patch at a time. Only the chosen gene panel's expression is kept in
memory (spots x genes, float32). One regression task per gene.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from rigor.config.models import DataConfig, HestConfig, TopVariableConfig
from rigor.data.hest.files import SampleTable, decode_text
from rigor.data.readers import BadSample, resize_tensor
from rigor.data.registry import (
    FileList,
    RawData,
    TaskSpec,
    register_dataset,
    register_task_lister,
)
from rigor.errors import UsageError

LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


class HestReader:
    """Patches read one at a time from the samples' ``.h5`` files (uint8)."""

    dtype = "uint8"

    def __init__(
        self,
        files: list[Path],
        rows: np.ndarray,
        shape: tuple[int, int, int],
        native: tuple[int, int],
        version: str,
    ) -> None:
        self.files = files
        self.rows = rows  # (N, 2): file index, row in that file's img dataset
        self.shape = shape
        self.native = native
        self.version = version
        self._handles: dict[int, Any] = {}
        self._pid = -1

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_handles"], state["_pid"] = {}, -1  # h5py handles are per process
        return state

    def __len__(self) -> int:
        return len(self.rows)

    def _handle(self, file: int) -> Any:
        import h5py

        if self._pid != os.getpid():
            self._handles, self._pid = {}, os.getpid()
        if file not in self._handles:
            self._handles[file] = h5py.File(self.files[file], "r")
        return self._handles[file]

    def load(self, index: int) -> np.ndarray:
        """Patch ``index`` as (C, H, W) uint8, resized when a size was configured."""
        file, row = (int(v) for v in self.rows[index])
        try:
            patch = np.asarray(self._handle(file)["img"][row], dtype=np.uint8)
        except (OSError, KeyError, ValueError) as err:
            raise BadSample(
                f"{self.files[file]}: cannot read patch {row} of dataset 'img': {err}"
            ) from None
        image = np.ascontiguousarray(patch.transpose(2, 0, 1))
        if self.shape[0] == 1:
            grey = np.einsum("chw,c->hw", image.astype(np.float32), LUMA)
            image = np.clip(np.rint(grey), 0, 255).astype(np.uint8)[None]
        if image.shape[1:] == self.shape[1:]:
            return image
        import torch

        return np.asarray(resize_tensor(torch.from_numpy(image), self.shape[1:], self.version))

    def describe(self, index: int) -> str:
        """The file and row of patch ``index``."""
        file, row = (int(v) for v in self.rows[index])
        return f"{self.files[file]} img[{row}]"


def sample_ids(root: Path, hest: HestConfig) -> list[str]:
    """The configured samples, or every ``patches/*.h5`` under the root (sorted)."""
    if hest.samples:
        return list(hest.samples)
    found = sorted(p.stem for p in (root / "patches").glob("*.h5"))
    if not found:
        raise UsageError(f"data.root: no patches/<sample_id>.h5 under {root} (HEST layout)")
    return found


def gene_panel(cfg: DataConfig) -> list[str]:
    """``data.genes``: a list, or a text file with one gene per line."""
    if isinstance(cfg.genes, list):
        return list(cfg.genes)
    if isinstance(cfg.genes, TopVariableConfig):
        raise UsageError(
            "data.genes: {top_variable: K} is picked on the train split when training "
            "(rigor.data.hest.panels); a finished run's panel is in its genes.json"
        )
    if cfg.genes is None:
        raise UsageError("data.genes: the hest dataset needs a gene panel (a list or a file)")
    path = Path(cfg.genes)
    if not path.is_file():
        raise UsageError(f"data.genes: gene file not found: {path}")
    genes = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not genes:
        raise UsageError(f"data.genes: {path} lists no genes")
    return genes


def available_genes(cfg: DataConfig) -> dict[str, list[str]]:
    """Every gene of the chosen samples' ``.h5ad`` files -> the samples that lack it (empty:
    present everywhere). Reads the gene names only, not the expression."""
    import h5py

    assert cfg.hest is not None
    root = Path(cfg.root or "")
    per_sample: dict[str, set[str]] = {}
    for sample in sample_ids(root, cfg.hest):
        path = root / "st" / f"{sample}.h5ad"
        if not path.is_file():
            raise UsageError(
                f"{path}: expression file not found (HEST layout: st/<sample_id>.h5ad)"
            )
        with h5py.File(path, "r") as handle:
            var = handle["var"]
            index = var.attrs.get("_index", "_index")
            per_sample[sample] = {decode_text(v) for v in var[index][:]}
    genes = sorted(set().union(*per_sample.values()))
    return {g: [s for s, names in per_sample.items() if g not in names] for g in genes}


@register_task_lister("hest")
def list_hest_tasks(cfg: DataConfig) -> list[str]:
    """Every gene of the samples' ``.h5ad`` files, one regression task each, with the samples
    that lack it; the panel (a list or a file in ``data.genes``) is marked with ``*``."""
    panel = set(gene_panel(cfg)) if isinstance(cfg.genes, list | str) else set()
    return [
        f"{'*' if gene in panel else ' '} {gene}\tregression"
        + (f" (missing in {', '.join(lacking)})" if lacking else "")
        for gene, lacking in available_genes(cfg).items()
    ]


def sample_group(root: Path, sample: str, hest: HestConfig) -> str:
    """The split group of a sample's spots: its patient (metadata) or the sample itself."""
    meta_path = root / "metadata" / f"{sample}.json"
    patient = None
    if meta_path.is_file():
        try:
            patient = json.loads(meta_path.read_text()).get("patient")
        except (ValueError, AttributeError):
            raise UsageError(f"{meta_path}: not a JSON object") from None
    if hest.group_by == "patient" and not patient:
        raise UsageError(f"{meta_path}: no 'patient' (data.hest.group_by: patient needs it)")
    return str(patient) if hest.group_by != "sample" and patient else sample


def _read_samples(root: Path, cfg: DataConfig, genes: list[str]) -> SampleTable:
    assert cfg.hest is not None
    found = SampleTable()
    for sample in sample_ids(root, cfg.hest):
        h5, h5ad = root / "patches" / f"{sample}.h5", root / "st" / f"{sample}.h5ad"
        meta = root / "metadata" / f"{sample}.json"
        group = sample_group(root, sample, cfg.hest)
        found.add(sample, h5, h5ad, group, genes, cfg, (meta,) if meta.is_file() else ())
    return found


def hest_reader(found: SampleTable, cfg: DataConfig) -> HestReader:
    """The streaming reader of the samples' patches, resized to ``data.transforms.image_size``
    when it is set."""
    assert found.native is not None
    given = cfg.transforms.image_size
    height, width = (given[0], given[1]) if given else found.native
    return HestReader(
        found.files,
        np.asarray(found.rows, dtype=np.int64),
        (cfg.channels, int(height), int(width)),
        found.native,
        cfg.transforms.version,
    )


@register_dataset("hest")
def build_hest(cfg: DataConfig) -> RawData:
    """Patches of the chosen HEST samples, one regression task per gene of the panel; the
    split group is the patient (from the metadata) or the sample."""
    assert cfg.hest is not None  # the config model requires it for name: hest
    root = Path(cfg.root or "")
    if not (root / "patches").is_dir():
        raise UsageError(f"data.root: {root} has no patches/ folder (HEST layout)")
    genes = gene_panel(cfg)
    found = _read_samples(root, cfg, genes)
    keep = _panel(genes, found.missing, cfg)
    matrix = np.concatenate(found.blocks)[:, [genes.index(g) for g in keep]]
    reader = hest_reader(found, cfg)
    transform = {"expression": cfg.hest.expression, "target_sum": cfg.hest.target_sum}
    dropped = {gene: found.missing[gene] for gene in sorted(set(genes) - set(keep))}
    samples = sorted({i.split(":", 1)[0] for i in found.ids})
    return RawData(
        name="hest",
        version=f"hest:{root.resolve()}",
        offered={gene: TaskSpec(gene, "regression") for gene in keep},
        targets={gene: matrix[:, j] for j, gene in enumerate(keep)},
        ids=found.ids,
        groups=found.groups,
        reader=reader,
        files=FileList(found.refs, json.dumps({"ids": found.ids, "genes": keep, **transform})),
        coords=np.concatenate(found.coords),
        extra_record={"samples": samples, "genes": keep, "dropped_genes": dropped, **transform},
    )


def _panel(genes: list[str], missing: dict[str, list[str]], cfg: DataConfig) -> list[str]:
    """The panel after ``data.missing_genes``: an error naming the samples, or dropped."""
    if missing and cfg.missing_genes == "error":
        listed = "; ".join(f"{g} (missing in {', '.join(s)})" for g, s in sorted(missing.items()))
        raise UsageError(
            f"data.genes: {len(missing)} gene(s) absent from some samples: {listed}; set "
            "data.missing_genes: drop to leave them out"
        )
    keep = [g for g in genes if g not in missing]
    if not keep:
        raise UsageError("data.genes: no gene of the panel is present in every sample")
    return keep
