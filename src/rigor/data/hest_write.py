"""Write the generated H&E tiles in the HEST layout, so the real reader is what tests and
demos exercise (``scripts/make_tiles.py``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from rigor.data.tiles import GENES, TILE, TILES_PER_PATIENT, TILES_SEED, iter_tiles
from rigor.io import atomic_write_text


def write_tiles_hest(
    out: Path, patients: int, tiles_per_patient: int = TILES_PER_PATIENT, size: int = TILE
) -> list[str]:
    """One HEST sample per patient under ``out``: ``patches/<id>.h5`` (img, coords, barcode),
    ``st/<id>.h5ad`` (raw counts, spots x genes) and ``metadata/<id>.json`` (the patient).
    Tiles are written one at a time; returns the sample ids."""
    import anndata
    import h5py

    for folder in ("patches", "st", "metadata"):
        (out / folder).mkdir(parents=True, exist_ok=True)
    samples: list[str] = []
    tiles = iter_tiles(patients, tiles_per_patient, size)
    for _ in range(patients):
        counts, barcodes = [], []
        sample, handle, img = "", None, None
        for t in range(tiles_per_patient):
            patient, index, image, expression = next(tiles)
            if t == 0:
                sample = f"TILES-{patient}"
                handle = h5py.File(out / "patches" / f".{sample}.h5.tmp", "w")
                img = handle.create_dataset(
                    "img",
                    (tiles_per_patient, size, size, 3),
                    dtype=np.uint8,
                    chunks=(1, size, size, 3),
                )
            assert handle is not None and img is not None
            img[t] = np.clip(np.rint(image.transpose(1, 2, 0) * 255), 0, 255).astype(np.uint8)
            barcodes.append(f"{patient}-tile{index:02d}")
            counts.append(expression)
        assert handle is not None
        side = int(np.ceil(np.sqrt(tiles_per_patient)))
        coords = [((i % side) * size, (i // side) * size) for i in range(tiles_per_patient)]
        handle.create_dataset("coords", data=np.asarray(coords, dtype=np.int64))
        handle.create_dataset("barcode", data=np.asarray(barcodes, dtype="S")[:, None])
        handle.close()
        (out / "patches" / f".{sample}.h5.tmp").replace(out / "patches" / f"{sample}.h5")
        table = anndata.AnnData(X=np.asarray(counts, dtype=np.float32))
        table.obs_names = barcodes
        table.var_names = list(GENES)
        table.write_h5ad(out / "st" / f"{sample}.h5ad")
        meta = {"patient": patient, "source": "rigor generated tiles", "seed": TILES_SEED}
        atomic_write_text(out / "metadata" / f"{sample}.json", json.dumps(meta, indent=2) + "\n")
        samples.append(sample)
    return samples
