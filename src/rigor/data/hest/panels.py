"""Gene panels picked from the data without leakage: the K most variable genes of the train
split, computed before any model sees a pixel and written to the run folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from rigor.config.models import DataConfig, HestConfig, TopVariableConfig
from rigor.data.hest.files import read_patch_index
from rigor.data.hest.reader import sample_group, sample_ids
from rigor.errors import UsageError


def spot_index(cfg: DataConfig) -> tuple[list[str], list[str]]:
    """Ids (``sample:barcode``) and split groups of every patch, in the order the dataset
    uses, from the patch indexes and metadata alone (no pixels, no expression)."""
    assert cfg.hest is not None
    root = Path(cfg.root or "")
    ids: list[str] = []
    groups: list[str] = []
    for sample in sample_ids(root, cfg.hest):
        barcodes, _, _ = read_patch_index(root / "patches" / f"{sample}.h5")
        ids += [f"{sample}:{barcode}" for barcode in barcodes]
        groups += [sample_group(root, sample, cfg.hest)] * len(barcodes)
    return ids, groups


def _transformed(matrix: Any, hest: HestConfig) -> Any:
    """The configured expression transform, kept sparse when the matrix is."""
    import scipy.sparse as sp

    if hest.expression == "log1p_normalized":
        totals = np.asarray(matrix.sum(axis=1), dtype=np.float64).reshape(-1)
        scale = hest.target_sum / np.maximum(totals, 1e-12)
        matrix = sp.diags(scale) @ matrix if sp.issparse(matrix) else matrix * scale[:, None]
    if hest.expression == "raw":
        return matrix
    return matrix.log1p() if sp.issparse(matrix) else np.log1p(matrix)


def top_variable_genes(
    cfg: DataConfig, train_ids: set[str], k: int
) -> tuple[list[str], list[float]]:
    """The ``k`` genes (present in every sample) with the largest variance of the transformed
    expression over the train spots, and their variances; ties go to the name. One sample's
    expression is in memory at a time (sparse when the file is)."""
    import anndata
    import scipy.sparse as sp

    assert cfg.hest is not None
    root = Path(cfg.root or "")
    sums: dict[str, float] = {}
    squares: dict[str, float] = {}
    common: set[str] | None = None
    count = 0
    for sample in sample_ids(root, cfg.hest):
        table = anndata.read_h5ad(root / "st" / f"{sample}.h5ad")
        barcodes = [str(b) for b in table.obs_names]
        rows = [i for i, b in enumerate(barcodes) if f"{sample}:{b}" in train_ids]
        names = [str(g) for g in table.var_names]
        common = set(names) if common is None else common & set(names)
        if not rows:
            continue
        matrix = _transformed(table.X[rows].astype(np.float64), cfg.hest)
        total = np.asarray(matrix.sum(axis=0)).reshape(-1)
        squared = matrix.multiply(matrix) if sp.issparse(matrix) else matrix * matrix
        square = np.asarray(squared.sum(axis=0)).reshape(-1)
        for j, gene in enumerate(names):
            sums[gene] = sums.get(gene, 0.0) + float(total[j])
            squares[gene] = squares.get(gene, 0.0) + float(square[j])
        count += len(rows)
    if count < 2 or not common:
        raise UsageError(
            "data.genes: top_variable needs train spots and genes shared by every sample"
        )
    variance = {g: squares[g] / count - (sums[g] / count) ** 2 for g in common}
    ranked = sorted(variance, key=lambda g: (-variance[g], g))[:k]
    return ranked, [variance[g] for g in ranked]


def resolve_panel(cfg: DataConfig, seed: int) -> tuple[DataConfig, dict[str, Any] | None]:
    """``cfg`` with a list panel, and the record of how it was picked (None: it was given).
    The train split is the one training will use (same groups, fractions and seed)."""
    if not isinstance(cfg.genes, TopVariableConfig):
        return cfg, None
    from rigor.config import apply_overrides
    from rigor.data.splits import make_splits

    ids, groups = spot_index(cfg)
    train = make_splits(groups, cfg.splits, seed)["train"]
    genes, variances = top_variable_genes(cfg, {ids[i] for i in train}, cfg.genes.top_variable)
    record = {
        "method": "top_variable",
        "k": cfg.genes.top_variable,
        "computed_on": {"split": "train", "spots": len(train)},
        "expression": cfg.hest.expression if cfg.hest else None,
        "genes": genes,
        "variance": variances,
    }
    return apply_overrides(cfg, {"genes": genes}, "data", "the train split"), record
