"""One HEST sample's files, read and checked: the patches' ``.h5`` index (barcodes and patch
size, without the pixels) and the ``.h5ad`` expression of a gene panel joined on the
barcodes. Shared by the HEST-1k reader (``hest``) and HEST-Benchmark task folders
(``hest_bench``); every problem is a UsageError naming the file (and the row)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rigor.config.models import DataConfig, HestConfig
from rigor.data.readers import ImageRef
from rigor.errors import UsageError


@dataclass
class SampleTable:
    """What the samples' files hold, gathered without reading a pixel: each patch's file and
    row, id (``sample:barcode``) and split group, the panel's expression, the files to
    fingerprint, the genes each sample lacks, the patches' native size and each patch's pixel
    coordinates on its slide (NaN where the ``.h5`` has none)."""

    files: list[Path] = field(default_factory=list)
    rows: list[tuple[int, int]] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)
    groups: list[str] = field(default_factory=list)
    blocks: list[np.ndarray] = field(default_factory=list)
    refs: list[ImageRef] = field(default_factory=list)
    coords: list[np.ndarray] = field(default_factory=list)
    missing: dict[str, list[str]] = field(default_factory=dict)
    native: tuple[int, int] | None = None

    def add(
        self,
        sample: str,
        h5: Path,
        h5ad: Path,
        group: str,
        genes: list[str],
        cfg: DataConfig,
        extra: tuple[Path, ...] = (),
    ) -> list[str]:
        """Read one sample's patch index and expression; returns the genes it lacks."""
        assert cfg.hest is not None
        barcodes, size, coords = read_patch_index(h5)
        if self.native is not None and size != self.native and not cfg.transforms.image_size:
            raise UsageError(
                f"{h5}: patches are {size}, earlier samples' {self.native}; "
                "set data.transforms.image_size"
            )
        self.native = self.native or size
        expression, lacking = read_expression(h5ad, barcodes, genes, cfg.hest)
        for gene in lacking:
            self.missing.setdefault(gene, []).append(sample)
        self.rows += [(len(self.files), r) for r in range(len(barcodes))]
        self.files.append(h5)
        self.ids += [f"{sample}:{barcode}" for barcode in barcodes]
        self.groups += [group] * len(barcodes)
        self.coords.append(coords)
        self.blocks.append(expression)
        self.refs += [ImageRef(path, f"sample {sample}") for path in (h5, h5ad, *extra)]
        return lacking


def read_patch_index(path: Path) -> tuple[list[str], tuple[int, int], np.ndarray]:
    """Barcodes (decoded), the (H, W) of the patches and their (x, y) pixel coordinates on
    the slide (``coords``; NaN when the file has none) of one ``.h5``, without the pixels."""
    import h5py

    if not path.is_file():
        raise UsageError(f"{path}: patches file not found")
    try:
        with h5py.File(path, "r") as handle:
            missing = [name for name in ("img", "barcode") if name not in handle]
            if missing:
                raise UsageError(f"{path}: no dataset {missing} (HEST patches need img, barcode)")
            img, raw = handle["img"], handle["barcode"][:]
            if img.ndim != 4 or img.shape[3] != 3 or img.dtype != np.uint8:
                raise UsageError(
                    f"{path}: img is {img.shape} {img.dtype}; expected (N, H, W, 3) uint8"
                )
            size = (int(img.shape[1]), int(img.shape[2]))
            count = int(img.shape[0])
            coords = handle["coords"][:] if "coords" in handle else None
    except OSError as err:
        raise UsageError(f"{path}: not a readable HDF5 file ({err})") from None
    if not count:
        raise UsageError(f"{path}: the sample has no patches (img holds 0)")
    barcodes = [decode_text(value) for value in np.asarray(raw).reshape(len(raw), -1)[:, 0]]
    if len(barcodes) != count:
        raise UsageError(f"{path}: {count} patches but {len(barcodes)} barcodes")
    _check_unique(barcodes, f"{path}: barcode")
    return barcodes, size, _coords(coords, count, path)


def _coords(raw: np.ndarray | None, count: int, path: Path) -> np.ndarray:
    """(count, 2) float64 pixel coordinates; NaN when absent; exit 2 when malformed."""
    if raw is None:
        return np.full((count, 2), np.nan)
    values = np.asarray(raw)
    if values.shape != (count, 2) or not np.issubdtype(values.dtype, np.number):
        raise UsageError(f"{path}: coords is {values.shape} {values.dtype}; expected ({count}, 2)")
    values = values.astype(np.float64)
    if not np.isfinite(values).all():
        row = int(np.flatnonzero(~np.isfinite(values).all(axis=1))[0])
        raise UsageError(f"{path}: coords row {row} is not finite")
    return values


def _check_unique(names: list[str], where: str) -> None:
    """UsageError naming the first repeated names and their rows (a join on them would
    silently drop or duplicate spots)."""
    seen: dict[str, int] = {}
    repeated = []
    for row, name in enumerate(names):
        if name in seen:
            repeated.append(f"{name!r} (rows {seen[name]} and {row})")
        seen.setdefault(name, row)
    if repeated:
        raise UsageError(f"{where}: {len(repeated)} duplicate(s), first {repeated[:3]}")


def decode_text(value: Any) -> str:
    """An HDF5 string (bytes or str) as str."""
    return value.decode() if isinstance(value, bytes) else str(value)


def read_expression(
    path: Path, barcodes: list[str], genes: list[str], hest: HestConfig
) -> tuple[np.ndarray, list[str]]:
    """(spots of ``barcodes`` x ``genes``) float32 after the configured transform, and the
    genes the sample lacks. Patches whose barcode has no spot are an error."""
    import anndata

    if not path.is_file():
        raise UsageError(f"{path}: expression file not found (HEST layout: st/<sample_id>.h5ad)")
    try:
        adata = anndata.read_h5ad(path)
    except (OSError, KeyError, ValueError) as err:
        raise UsageError(f"{path}: not a readable .h5ad file ({err})") from None
    _check_unique(list(adata.obs_names.astype(str)), f"{path}: obs_names (spot barcodes)")
    wanted = set(genes)
    panel_names = [g for g in adata.var_names.astype(str) if g in wanted]
    _check_unique(panel_names, f"{path}: var_names (genes of the panel)")
    spots = {barcode: i for i, barcode in enumerate(adata.obs_names.astype(str))}
    unmatched = [(row, b) for row, b in enumerate(barcodes) if b not in spots]
    if unmatched:
        first = ", ".join(f"{b!r} (patch row {row})" for row, b in unmatched[:3])
        raise UsageError(
            f"{path}: {len(unmatched)} of {len(barcodes)} patch barcodes have no spot in the "
            f"expression (first: {first}); patches and spots must share barcodes"
        )
    rows = np.array([spots[b] for b in barcodes], dtype=np.int64)
    names = {gene: j for j, gene in enumerate(adata.var_names.astype(str))}
    present = [g for g in genes if g in names]
    matrix = adata.X[rows]
    counts = _dense(matrix[:, [names[g] for g in present]])
    negative = np.argwhere(counts < 0)
    if len(negative):  # log1p would make them NaN, far from where they came from
        spot, gene = (int(v) for v in negative[0])
        raise UsageError(
            f"{path}: {len(negative)} negative count(s), first {counts[spot, gene]:g} for gene "
            f"{present[gene]} at spot {barcodes[spot]!r}; expression must be raw counts"
        )
    if hest.expression == "log1p_normalized":
        totals = np.asarray(matrix.sum(axis=1), dtype=np.float64).reshape(-1, 1)
        counts = counts / np.maximum(totals, 1e-12) * hest.target_sum
    if hest.expression != "raw":
        counts = np.log1p(counts)
    out = np.full((len(rows), len(genes)), np.nan, dtype=np.float32)
    out[:, [genes.index(g) for g in present]] = counts
    return out, [g for g in genes if g not in names]


def _dense(matrix: Any) -> np.ndarray:
    dense = matrix.toarray() if hasattr(matrix, "toarray") else np.asarray(matrix)
    return np.asarray(dense, dtype=np.float64)
