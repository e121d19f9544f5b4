"""Write the generated H&E tiles in the HEST layouts, so the real readers are what tests and
demos exercise (``scripts/make_tiles.py``): a HEST-1k sample folder, or HEST-Benchmark task
folders with their predefined splits."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from rigor.data.sources.tiles import GENES, TILE, TILES_PER_PATIENT, TILES_SEED, iter_tiles
from rigor.io import atomic_write_text


def _write_sample(
    tiles: Iterator[tuple[str, int, np.ndarray, np.ndarray]],
    patches: Path,
    expression: Path,
    tiles_per_patient: int,
    size: int,
) -> tuple[str, str]:
    """The next patient's tiles as ``patches/<id>.h5`` (img, coords, barcode, written one
    tile at a time) and its raw counts as ``<id>.h5ad``; returns (sample id, patient)."""
    import anndata
    import h5py

    counts, barcodes = [], []
    sample = patient = ""
    handle = img = None
    for t in range(tiles_per_patient):
        patient, index, image, expressed = next(tiles)
        if t == 0:
            sample = f"TILES-{patient}"
            handle = h5py.File(patches / f".{sample}.h5.tmp", "w")
            shape = (tiles_per_patient, size, size, 3)
            img = handle.create_dataset("img", shape, dtype=np.uint8, chunks=(1, size, size, 3))
        assert handle is not None and img is not None
        img[t] = np.clip(np.rint(image.transpose(1, 2, 0) * 255), 0, 255).astype(np.uint8)
        barcodes.append(f"{patient}-tile{index:02d}")
        counts.append(expressed)
    assert handle is not None
    side = int(np.ceil(np.sqrt(tiles_per_patient)))
    coords = [((i % side) * size, (i // side) * size) for i in range(tiles_per_patient)]
    handle.create_dataset("coords", data=np.asarray(coords, dtype=np.int64))
    handle.create_dataset("barcode", data=np.asarray(barcodes, dtype="S")[:, None])
    handle.close()
    (patches / f".{sample}.h5.tmp").replace(patches / f"{sample}.h5")
    table = anndata.AnnData(X=np.asarray(counts, dtype=np.float32))
    table.obs_names = barcodes
    table.var_names = list(GENES)
    table.write_h5ad(expression / f"{sample}.h5ad")
    return sample, patient


def write_tiles_hest(
    out: Path, patients: int, tiles_per_patient: int = TILES_PER_PATIENT, size: int = TILE
) -> list[str]:
    """One HEST sample per patient under ``out``: ``patches/<id>.h5`` (img, coords, barcode),
    ``st/<id>.h5ad`` (raw counts, spots x genes) and ``metadata/<id>.json`` (the patient).
    Tiles are written one at a time; returns the sample ids."""
    for folder in ("patches", "st", "metadata"):
        (out / folder).mkdir(parents=True, exist_ok=True)
    samples: list[str] = []
    tiles = iter_tiles(patients, tiles_per_patient, size)
    for _ in range(patients):
        sample, patient = _write_sample(tiles, out / "patches", out / "st", tiles_per_patient, size)
        meta = {"patient": patient, "source": "rigor generated tiles", "seed": TILES_SEED}
        atomic_write_text(out / "metadata" / f"{sample}.json", json.dumps(meta, indent=2) + "\n")
        samples.append(sample)
    return samples


def write_hest_bench(
    out: Path,
    tasks: list[str],
    patients_per_task: int,
    splits: int,
    tiles_per_patient: int = TILES_PER_PATIENT,
    size: int = TILE,
) -> list[Path]:
    """HEST-Benchmark task folders under ``out``, one per name in ``tasks``, each with its
    own patients (one sample each): ``patches/``, ``adata/``, ``var_50genes.json`` (the
    tiles' eight genes) and ``splits/train_<k>.csv`` / ``test_<k>.csv``, split k testing
    every ``splits``-th patient from k on (patient-level folds, as HEST-Benchmark's are)."""
    if not 2 <= splits <= patients_per_task:
        raise ValueError(f"splits must be in [2, patients_per_task], got {splits}")
    tiles = iter_tiles(len(tasks) * patients_per_task, tiles_per_patient, size)
    folders = []
    for task in tasks:
        root = out / task
        for folder in ("patches", "adata", "splits"):
            (root / folder).mkdir(parents=True, exist_ok=True)
        samples = [
            _write_sample(tiles, root / "patches", root / "adata", tiles_per_patient, size)[0]
            for _ in range(patients_per_task)
        ]
        genes = json.dumps({"genes": list(GENES)}, indent=2) + "\n"
        atomic_write_text(root / "var_50genes.json", genes)
        for k in range(splits):
            test = samples[k::splits]
            train = [s for s in samples if s not in test]
            for side, listed in (("train", train), ("test", test)):
                atomic_write_text(root / "splits" / f"{side}_{k}.csv", _split_csv(listed))
        folders.append(root)
    return folders


def _split_csv(samples: list[str]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["sample_id", "patches_path", "expr_path"])
    for sample in samples:
        writer.writerow([sample, f"patches/{sample}.h5", f"adata/{sample}.h5ad"])
    return buffer.getvalue()
