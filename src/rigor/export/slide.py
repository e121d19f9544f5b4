"""Predict a new slide: one sample's HEST patches (``.h5``: img, barcode, coords) streamed
through a bundled model, one row per spot with its barcode, coordinates, each gene's
prediction and interval; beside the CSV an ``.h5ad`` of the predictions with
``obsm["spatial"]`` (for scanpy and squidpy) and maps. With the sample's measured expression
(``.h5ad``) Pearson's r and MAE per gene, with bootstrap CIs over the spots, and the maps
show measured, predicted and residual expression."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from rigor.config.models import Config
from rigor.data.dataset import ImageDataset
from rigor.errors import UsageError
from rigor.export.load import Bundle

MAPS = 4  # genes drawn: the best by Pearson with measured expression, else the first


def sample_dataset(
    bundle: Bundle, config: Config, h5: Path, expression: Path | None
) -> tuple[ImageDataset, list[str]]:
    """One sample's spots as a dataset at the bundle's input size, with the panel's
    measured expression (the run's transform) when ``expression`` is given; its genes."""
    from rigor.data.hest.files import SampleTable, read_patch_index
    from rigor.data.hest.reader import HestReader
    from rigor.data.registry import RawData, TaskSpec

    tasks = bundle.record["tasks"]
    genes = [task for task, spec in tasks.items() if spec["kind"] != "classification"]
    if not genes or config.data.hest is None:
        raise UsageError("--hest-sample: this bundle's run has no HEST gene heads")
    sample = h5.stem
    barcodes, native, coords = read_patch_index(h5)
    table = SampleTable()
    if expression is not None:
        lacking = table.add(sample, h5, expression, sample, genes, config.data)
        if lacking:
            raise UsageError(f"{expression}: lacks the bundle's genes {lacking}")
        targets = np.concatenate(table.blocks)
    files, rows = [h5], [(0, r) for r in range(len(barcodes))]
    ids = [f"{sample}:{barcode}" for barcode in barcodes]
    c, h, w = bundle.record["input_shape"]
    reader = HestReader(files, np.asarray(rows, np.int64), (c, h, w), native,
                        config.data.transforms.version)  # fmt: skip
    offered = {gene: TaskSpec(gene, "regression") for gene in genes}
    values = {g: targets[:, j] for j, g in enumerate(genes)} if expression is not None else {}
    raw = RawData(
        "hest_sample", str(h5), offered if values else {}, values, ids, [sample] * len(ids),
        reader, fingerprint="", coords=coords,
    )  # fmt: skip
    return ImageDataset(raw, reader, genes if values else []), genes


def gene_scores(
    predicted: dict[str, np.ndarray], measured: dict[str, np.ndarray], seed: int = 0
) -> dict[str, dict[str, Any]]:
    """Per gene: Pearson's r and MAE with percentile bootstrap CIs over the spots (one
    sample: the spots are the resampled unit, so the CIs say nothing about other slides)."""
    from rigor.metrics.bootstrap import bootstrap_ci
    from rigor.metrics.regression import pearson

    def mae(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.abs(a - b).mean())

    out = {}
    for gene, values in predicted.items():
        truth = measured[gene].astype(np.float64)
        out[gene] = {
            "pearson": _short(bootstrap_ci(pearson, values, truth, n_resamples=1000, seed=seed)),
            "mae": _short(bootstrap_ci(mae, values, truth, n_resamples=1000, seed=seed)),
        }
    return out


def _short(node: dict[str, Any]) -> dict[str, Any]:
    return {key: node[key] for key in ("estimate", "ci_lower", "ci_upper")}


def write_spot_table(
    path: Path,
    ids: list[str],
    coords: np.ndarray,
    predicted: dict[str, np.ndarray],
    measured: dict[str, np.ndarray] | None,
) -> None:
    """An ``.h5ad`` of the predictions: spots (barcodes) x genes, ``obsm["spatial"]`` the
    (x, y) pixel coordinates, ``obs["sample"]``, and the measured values as a layer."""
    import os

    import anndata
    import pandas as pd

    genes = list(predicted)
    matrix = np.stack([predicted[g] for g in genes], axis=1).astype(np.float32)
    obs = pd.DataFrame(
        {"sample": [i.split(":", 1)[0] for i in ids]},
        index=[i.split(":", 1)[-1] for i in ids],
    )
    table = anndata.AnnData(X=matrix, obs=obs, var=pd.DataFrame(index=genes))
    table.obsm["spatial"] = np.asarray(coords, dtype=np.float64)
    if measured is not None:
        table.layers["measured"] = np.stack([measured[g] for g in genes], axis=1).astype(np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        table.write_h5ad(partial)
        os.replace(partial, path)  # whole or not at all
    finally:
        partial.unlink(missing_ok=True)


def draw_maps(
    folder: Path,
    sample: str,
    coords: np.ndarray,
    predicted: dict[str, np.ndarray],
    measured: dict[str, np.ndarray] | None,
    scores: dict[str, dict[str, Any]] | None,
    unit: str,
) -> list[Path]:
    """Maps of the best genes (by Pearson when measured, else the first ``MAPS``)."""
    from rigor.plotting import spatial

    genes = list(predicted)
    if scores:
        best = {g: float(np.nan_to_num(scores[g]["pearson"]["estimate"], nan=-2.0)) for g in genes}
        genes = sorted(genes, key=lambda g: -best[g])
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for gene in genes[:MAPS]:
        paths.append(folder / f"{gene}.png")
        if measured is None:
            spatial.predicted_map(coords, predicted[gene], gene, sample, unit, paths[-1])
        else:
            spatial.spatial_maps(coords, measured[gene], predicted[gene], gene, sample,
                                 "new sample", unit, paths[-1])  # fmt: skip
    return paths


def slide_outputs(
    csv_path: Path,
    bundle: Bundle,
    config: Config,
    dataset: ImageDataset,
    ids: list[str],
    outputs: dict[str, np.ndarray],
    labels: dict[str, np.ndarray] | None,
) -> dict[str, Any]:
    """Beside the CSV: the ``.h5ad`` and the maps; the summary's part (with measured
    expression, Pearson and MAE per gene with CIs)."""
    from rigor.plotting.spatial import unit_of
    from rigor.runs.predict import spot_arrays

    tasks = bundle.record["tasks"]
    genes = [task for task, spec in tasks.items() if spec["kind"] == "regression"]
    predicted = {g: outputs[g].reshape(len(ids), -1)[:, 0] for g in genes}
    measured = {g: labels[g] for g in genes} if labels is not None else None
    unit = unit_of(config.data.hest.expression if config.data.hest else None)

    spots = spot_arrays(dataset, ids)
    scores = gene_scores(predicted, measured) if measured is not None else None
    table = csv_path.with_suffix(".h5ad")
    write_spot_table(table, ids, spots["coords"], predicted, measured)
    sample = str(spots["sample"][0]) if len(ids) else csv_path.stem
    folder = csv_path.with_name(f"{csv_path.stem}_maps")
    maps = draw_maps(folder, sample, spots["coords"], predicted, measured, scores, unit)
    out: dict[str, Any] = {"spot_table": str(table), "maps": [str(p) for p in maps]}
    if scores is not None:
        out["genes"] = scores
    return out
