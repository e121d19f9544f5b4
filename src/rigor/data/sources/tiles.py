"""Generated H&E-like tiles with spot-level gene expression: the histology smoke dataset.

Real spatial-transcriptomics data (HEST and the like) cannot be downloaded here, so this
dataset generates the same *shape* of problem from a fixed seed, with known ground truth:

* 24 patients, 40 tiles each (960 RGB tiles of 32x32 pixels); the patient is the group, so
  no patient is in two splits.
* Every tile holds three cell populations drawn from per-patient and per-tile densities:
  epithelial (large pale nuclei with pink cytoplasm; some of them mitotic: bigger and
  darker), lymphocytes (small dark round nuclei) and stromal cells (thin elongated nuclei
  in eosin-rich matrix).
* Images are rendered with the Beer-Lambert stain model, ``RGB = exp(-(c_H h + c_E e))``,
  where the hematoxylin and eosin vectors ``h, e`` and the stain strength vary per patient
  (the batch effect that histology models have to survive).
* Eight genes, one regression task each (so one head per gene), are Poisson counts whose
  rate is a linear function of the tile's cell counts, times a per-patient library size
  the image cannot show; the target is ``log1p(count)``. ``EPCAM``/``KRT8`` follow the
  epithelium, ``CD3E``/``PTPRC`` the lymphocytes, ``COL1A1``/``VIM`` the stroma,
  ``MKI67`` the mitoses (few, so noisy) and ``ACTB`` is a housekeeping gene dominated by
  a constant and the invisible library size (hard to predict from the image, by design).

The generator is part of the dataset's definition (like CIFAR's 32x32), not a knob; its
constants are in the dataset version so a change shows up in every manifest.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import numpy as np

from rigor.config.models import DataConfig
from rigor.data.readers import ArrayReader
from rigor.data.registry import RawData, TaskSpec, register_dataset

TILE = 32
PATIENTS = 24
TILES_PER_PATIENT = 40
TILES_SEED = 20251
GENES = ("EPCAM", "KRT8", "CD3E", "PTPRC", "COL1A1", "VIM", "MKI67", "ACTB")
# Optical density per unit stain (R, G, B) of hematoxylin and eosin (Ruifrok & Johnston).
HEMATOXYLIN = np.array([0.65, 0.70, 0.29])
EOSIN = np.array([0.07, 0.99, 0.11])
# Expression rate of each gene per cell: columns epithelial, mitotic, lymphocyte, stromal;
# then a constant. One row per gene in GENES order.
RATES = np.array(
    [
        [3.0, 0.0, 0.0, 0.0, 0.5],  # EPCAM
        [4.0, 0.0, 0.0, 0.0, 1.0],  # KRT8
        [0.0, 0.0, 2.5, 0.0, 0.3],  # CD3E
        [0.0, 0.0, 3.0, 0.1, 0.5],  # PTPRC
        [0.0, 0.0, 0.0, 5.0, 1.0],  # COL1A1
        [0.0, 0.0, 1.5, 3.0, 1.0],  # VIM
        [0.0, 2.0, 0.0, 0.0, 0.2],  # MKI67
        [2.0, 2.0, 2.0, 2.0, 60.0],  # ACTB
    ]
)


_GRIDS: dict[int, np.ndarray] = {}  # pixel (row, column) coordinates per tile size


def _grid(size: int) -> np.ndarray:
    if size not in _GRIDS:
        _GRIDS[size] = np.mgrid[0:size, 0:size].astype(np.float64)
    return _GRIDS[size]


def _unit(vector: np.ndarray) -> np.ndarray:
    return np.asarray(vector / np.linalg.norm(vector))


def _discs(
    grid: tuple[np.ndarray, np.ndarray],
    centres: np.ndarray,
    axes: np.ndarray,
    angles: np.ndarray,
) -> np.ndarray:
    """Soft-edged ellipses (one per row of centres), summed into one (H, W) map."""
    if len(centres) == 0:
        return np.zeros(grid[0].shape)
    yy, xx = grid
    dy = yy[None] - centres[:, 0, None, None]
    dx = xx[None] - centres[:, 1, None, None]
    cos, sin = np.cos(angles)[:, None, None], np.sin(angles)[:, None, None]
    u = (dx * cos + dy * sin) / axes[:, 0, None, None]
    v = (-dx * sin + dy * cos) / axes[:, 1, None, None]
    radius = np.sqrt(u**2 + v**2)
    return np.asarray(np.clip(1.5 - radius, 0.0, 1.0).sum(axis=0))


def _render(
    rng: np.random.Generator,
    counts: dict[str, int],
    stroma: float,
    stain: dict[str, np.ndarray],
    size: int = TILE,
) -> np.ndarray:
    """One (3, size, size) RGB tile in [0, 1] with the given cells; a larger tile is the same
    scene magnified (every length times size / TILE), so the draws do not depend on size."""
    grid = _grid(size)
    grid_pair = (grid[0], grid[1])
    zoom = size / TILE

    def place(n: int) -> np.ndarray:
        return rng.uniform(1.0, size - 1.0, size=(n, 2))

    def angles(n: int) -> np.ndarray:
        return rng.uniform(0.0, np.pi, size=n)

    epi, mit = place(counts["epithelial"]), place(counts["mitotic"])
    lym, stro = place(counts["lymphocyte"]), place(counts["stromal"])
    epi_axes = rng.uniform(1.8, 2.6, (len(epi), 2)) * zoom
    hema = 0.55 * _discs(grid_pair, epi, epi_axes, angles(len(epi)))
    hema = hema + 1.3 * _discs(grid_pair, mit, np.full((len(mit), 2), 2.4 * zoom), angles(len(mit)))
    lym_axes = rng.uniform(1.0, 1.4, (len(lym), 2)) * zoom
    hema = hema + 1.2 * _discs(grid_pair, lym, lym_axes, angles(len(lym)))
    stro_axes = np.stack([rng.uniform(2.5, 3.5, len(stro)), rng.uniform(0.6, 0.9, len(stro))], 1)
    hema = hema + 0.9 * _discs(grid_pair, stro, stro_axes * zoom, angles(len(stro)))
    cytoplasm = _discs(grid_pair, epi, np.full((len(epi), 2), 4.0 * zoom), np.zeros(len(epi)))
    texture = rng.normal(0.0, 0.08, size=(size, size))
    eosin = 0.15 + 0.5 * stroma + 0.25 * np.clip(cytoplasm, 0.0, 1.0) + texture
    density = stain["strength"] * (
        np.clip(hema, 0.0, 2.0)[..., None] * stain["h"]
        + np.clip(eosin, 0.0, 1.5)[..., None] * stain["e"]
    )
    rgb = np.exp(-density) + rng.normal(0.0, 0.015, size=(size, size, 3))
    return np.asarray(np.clip(rgb, 0.0, 1.0).transpose(2, 0, 1), dtype=np.float32)


def iter_tiles(
    patients: int = PATIENTS, tiles_per_patient: int = TILES_PER_PATIENT, size: int = TILE
) -> Iterator[tuple[str, int, np.ndarray, np.ndarray]]:
    """(patient, tile index, RGB image (3, size, size) in [0, 1], raw counts per gene) for
    every tile, one at a time, from the fixed seed."""
    rng = np.random.default_rng(TILES_SEED)
    for p in range(patients):
        tumour = rng.beta(2.0, 2.0)
        immune = rng.gamma(2.0, 0.5)
        proliferation = rng.uniform(0.05, 0.35)
        library = rng.lognormal(0.0, 0.3)
        stain = {
            "h": _unit(HEMATOXYLIN + rng.normal(0.0, 0.06, 3)),
            "e": _unit(EOSIN + rng.normal(0.0, 0.06, 3)),
            "strength": np.array(rng.uniform(0.8, 1.25)),
        }
        for t in range(tiles_per_patient):
            local = float(np.clip(tumour + rng.normal(0.0, 0.25), 0.0, 1.0))
            stroma = 1.0 - 0.8 * local
            epithelial = int(rng.poisson(14.0 * local))
            counts = {
                "epithelial": epithelial,
                "mitotic": int(rng.binomial(epithelial, proliferation)),
                "lymphocyte": int(rng.poisson(2.0 + 6.0 * immune * rng.uniform(0.2, 1.8))),
                "stromal": int(rng.poisson(8.0 * stroma)),
            }
            image = _render(rng, counts, stroma, stain, size)
            cells = np.array(
                [counts["epithelial"] - counts["mitotic"], counts["mitotic"]]
                + [counts["lymphocyte"], counts["stromal"], 1],
                dtype=np.float64,
            )
            yield f"P{p:02d}", t, image, rng.poisson(library * RATES @ cells)


def generate() -> tuple[np.ndarray, np.ndarray, list[str], list[str]]:
    """(images (N, 3, H, W), log1p expression (N, genes), ids, patient of each tile)."""
    images, expression, ids, patients = [], [], [], []
    for patient, t, image, counts in iter_tiles():
        images.append(image)
        expression.append(np.log1p(counts))
        ids.append(f"{patient}-tile{t:02d}")
        patients.append(patient)
    return np.stack(images), np.stack(expression).astype(np.float32), ids, patients


def rgb_reader(images: np.ndarray, cfg: DataConfig) -> ArrayReader:
    """The reader of an in-memory RGB dataset; grey is ITU-R 601 luma."""
    luma = np.array([0.299, 0.587, 0.114], dtype=np.float32)
    if cfg.channels != 3:
        images = np.einsum("nchw,c->nhw", images, luma)[:, None]
    size = cfg.transforms.image_size
    return ArrayReader(
        np.ascontiguousarray(images, dtype=np.float32),
        (size[0], size[1]) if size else None,
        cfg.transforms.version,
    )


@register_dataset("tiles")
def build_tiles(cfg: DataConfig) -> RawData:
    """Generated H&E tiles of 24 patients; one regression task per gene; patients are groups."""
    images, expression, ids, patients = generate()
    digest = hashlib.sha256(images.tobytes() + expression.tobytes()).hexdigest()
    return RawData(
        name="tiles",
        version=f"generated-tiles{TILE}-p{PATIENTS}x{TILES_PER_PATIENT}-seed{TILES_SEED}",
        offered={gene: TaskSpec(gene, "regression") for gene in GENES},
        targets={gene: expression[:, j] for j, gene in enumerate(GENES)},
        ids=ids,
        groups=patients,
        fingerprint=digest,
        reader=rgb_reader(images, cfg),
    )
