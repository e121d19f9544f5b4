"""The HEST reader on generated tiles written in the HEST layout: what it reads, how it
streams, how it groups, and how a malformed folder is named."""

from __future__ import annotations

import json
import pickle
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import CONFIGS

from rigor.config import load_config
from rigor.data.build import build_dataset
from rigor.data.sources.tiles import GENES, iter_tiles
from rigor.errors import UsageError

EXPERIMENT = CONFIGS / "experiment" / "tiles_hest.yaml"
PATIENTS, TILES = 5, 8


@pytest.fixture(scope="module")
def hest_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from rigor.data.hest.write import write_tiles_hest

    root = tmp_path_factory.mktemp("hest")
    assert write_tiles_hest(root, PATIENTS, TILES, 32) == [f"TILES-P{p:02d}" for p in range(5)]
    return root


def hest_cfg(root: Path, *sets: str):  # type: ignore[no-untyped-def]
    overrides = [f"data.root={root}", "data.cache=false", *sets]
    return load_config(EXPERIMENT, sets=overrides, environ={}).config.data


def copy_of(root: Path, tmp_path: Path) -> Path:
    target = tmp_path / "hest"
    shutil.copytree(root, target)
    return target


def test_reader_returns_the_generated_tiles_and_counts(hest_root: Path) -> None:
    dataset = build_dataset(hest_cfg(hest_root), None)
    assert len(dataset) == PATIENTS * TILES and list(dataset.tasks) == list(GENES)
    assert dataset.ids[TILES + 3] == "TILES-P01:P01-tile03"
    assert dataset.groups[TILES + 3] == "P01"  # the patient named in the metadata
    side = int(np.ceil(np.sqrt(TILES)))  # the generator lays each sample's tiles on a grid
    assert dataset.raw.coords[TILES + 3].tolist() == [3 % side * 32, 3 // side * 32]
    tiles = list(iter_tiles(PATIENTS, TILES, 32))
    for row in (0, TILES + 3, len(dataset) - 1):
        _, image, error = dataset[row]
        expected = np.clip(np.rint(tiles[row][2] * 255), 0, 255).astype(np.uint8)
        assert error is None and image is not None and image.dtype == torch.uint8
        assert np.array_equal(image.numpy(), expected)
        for j, gene in enumerate(GENES):
            assert float(dataset.targets[gene][row]) == pytest.approx(np.log1p(tiles[row][3][j]))


def test_expression_transforms_and_groups(hest_root: Path) -> None:
    counts = np.array([tile[3] for tile in iter_tiles(PATIENTS, TILES, 32)], dtype=np.float64)
    raw = build_dataset(hest_cfg(hest_root, "data.hest.expression=raw"), None)
    assert np.allclose(raw.targets["EPCAM"].numpy(), counts[:, 0])
    normalised = build_dataset(hest_cfg(hest_root, "data.hest.expression=log1p_normalized"), None)
    expected = np.log1p(counts[:, 1] / counts.sum(axis=1) * 1e4)
    assert np.allclose(normalised.targets["KRT8"].numpy(), expected, rtol=1e-5)
    by_sample = build_dataset(hest_cfg(hest_root, "data.hest.group_by=sample"), None)
    assert by_sample.groups[0] == "TILES-P00"
    chosen = build_dataset(hest_cfg(hest_root, "data.hest.samples=[TILES-P03, TILES-P01]"), None)
    assert len(chosen) == 2 * TILES and chosen.ids[0].startswith("TILES-P03:")


def test_patches_stream_from_one_handle_per_process(hest_root: Path) -> None:
    from rigor.data.loader import make_loader

    dataset = build_dataset(hest_cfg(hest_root, "data.transforms.image_size=[16, 16]"), None)
    assert len(pickle.dumps(dataset.reader)) < 10_000  # paths and row numbers, no pixels
    loader = make_loader(dataset, range(len(dataset)), batch_size=7, num_workers=2)
    batches = list(loader)
    assert sum(len(b) for b in batches) == len(dataset)
    assert batches[0].input.shape == (7, 3, 16, 16) and batches[0].input.dtype == torch.uint8
    assert dataset.reader._handles == {}  # the main process opened nothing


def test_gene_panels_from_a_file_and_missing_genes(hest_root: Path, tmp_path: Path) -> None:
    panel = tmp_path / "genes.txt"
    panel.write_text("VIM\nEPCAM\n")
    dataset = build_dataset(hest_cfg(hest_root, f"data.genes={panel}"), None)
    assert list(dataset.tasks) == ["VIM", "EPCAM"]
    with pytest.raises(UsageError, match=r"NOTAGENE \(missing in TILES-P00, TILES-P01"):
        build_dataset(hest_cfg(hest_root, "data.genes=[EPCAM, NOTAGENE]"), None)
    dropped = build_dataset(
        hest_cfg(hest_root, "data.genes=[EPCAM, NOTAGENE]", "data.missing_genes=drop"), None
    )
    assert list(dropped.tasks) == ["EPCAM"]
    assert set(dropped.raw.extra_record["dropped_genes"]["NOTAGENE"]) >= {"TILES-P00"}


@pytest.mark.parametrize(
    "breakage, message",
    [
        ("no_h5ad", r"st/TILES-P02.h5ad: expression file not found"),
        ("barcodes", r"TILES-P02.h5ad: 8 of 8 patch barcodes have no spot"),
        ("truncated", r"patches/TILES-P02.h5: not a readable HDF5 file"),
        ("no_patient", r"metadata/TILES-P02.json: no 'patient'"),
        ("negative", r"TILES-P02.h5ad: 1 negative count\(s\), first -3 for gene EPCAM at spot"),
        ("duplicate_obs", r"TILES-P02.h5ad: obs_names \(spot barcodes\): 1 duplicate"),
        ("duplicate_gene", r"TILES-P02.h5ad: var_names \(genes of the panel\): 1 duplicate"),
        ("coords_shape", r"patches/TILES-P02.h5: coords is \(8, 3\) int64; expected \(8, 2\)"),
        ("coords_nan", r"patches/TILES-P02.h5: coords row 5 is not finite"),
    ],
)
def test_malformed_folders_exit_2_naming_the_file(
    hest_root: Path,
    tmp_path: Path,
    run_script: Callable[..., int],
    capsys: pytest.CaptureFixture[str],
    breakage: str,
    message: str,
) -> None:
    import anndata

    root = copy_of(hest_root, tmp_path)
    sets = []
    if breakage == "no_h5ad":
        (root / "st" / "TILES-P02.h5ad").unlink()
    elif breakage == "barcodes":
        table = anndata.read_h5ad(root / "st" / "TILES-P02.h5ad")
        table.obs_names = [f"other-{i}" for i in range(table.n_obs)]
        table.write_h5ad(root / "st" / "TILES-P02.h5ad")
    elif breakage in ("negative", "duplicate_obs", "duplicate_gene"):
        path = root / "st" / "TILES-P02.h5ad"
        table = anndata.read_h5ad(path)
        if breakage == "negative":
            table.X[4, list(table.var_names).index("EPCAM")] = -3.0
        elif breakage == "duplicate_obs":
            table.obs_names = [*table.obs_names[:-1], table.obs_names[0]]
        else:
            table.var_names = [*table.var_names[:-1], "EPCAM"]
        table.write_h5ad(path)
    elif breakage.startswith("coords"):
        import h5py

        with h5py.File(root / "patches" / "TILES-P02.h5", "a") as handle:
            del handle["coords"]
            bad = (
                np.zeros((8, 3), dtype=np.int64) if breakage == "coords_shape" else np.zeros((8, 2))
            )
            if breakage == "coords_nan":
                bad[5, 1] = np.nan
            handle.create_dataset("coords", data=bad)
    elif breakage == "truncated":
        data = (root / "patches" / "TILES-P02.h5").read_bytes()
        (root / "patches" / "TILES-P02.h5").write_bytes(data[: len(data) // 3])
    else:
        (root / "metadata" / "TILES-P02.json").write_text(json.dumps({"organ": "bowel"}))
        sets = ["--set", "data.hest.group_by=patient"]
    args = ["--config", str(EXPERIMENT), "--env-policy", "ignore", "--set", f"data.root={root}"]
    code = run_script("train", *args, "--set", f"run.output_root={tmp_path / 'out'}", *sets)
    assert code == 2
    assert pytest.importorskip("re").search(message, capsys.readouterr().err)
    assert not (tmp_path / "out" / "runs").exists()  # found before the run folder exists


def test_list_of_samples_must_exist(hest_root: Path) -> None:
    with pytest.raises(UsageError, match="TILES-P99.h5: patches file not found"):
        build_dataset(hest_cfg(hest_root, "data.hest.samples=[TILES-P99]"), None)


def test_list_tasks_prints_the_panel_and_exits(
    hest_root: Path, run_script: Callable[..., int], capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--config", str(EXPERIMENT), "--set", f"data.root={hest_root}", "--list-tasks"]
    assert run_script("train", *args) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == [f"* {gene}\tregression" for gene in sorted(GENES)]
    panel = ["--set", "data.genes=[VIM]"]
    assert run_script("train", *args, *panel) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "* VIM\tregression" in lines and "  EPCAM\tregression" in lines


def test_list_tasks_names_the_samples_that_lack_a_gene(hest_root: Path, tmp_path: Path) -> None:
    import anndata

    from rigor.data.build import describe_tasks

    root = copy_of(hest_root, tmp_path)
    table = anndata.read_h5ad(root / "st" / "TILES-P01.h5ad")
    table[:, [g for g in GENES if g != "VIM"]].copy().write_h5ad(root / "st" / "TILES-P01.h5ad")
    lines = describe_tasks(hest_cfg(root, "data.genes=[EPCAM]"))
    assert "* EPCAM\tregression" in lines
    assert "  VIM\tregression (missing in TILES-P01)" in lines


@pytest.mark.slow  # trains, then eval, export and predict
def test_top_variable_panel_is_picked_on_train_and_followed_by_every_stage(
    hest_root: Path, tmp_path: Path, run_script: Callable[..., int]
) -> None:
    from conftest import short_run

    from rigor.training.run import train

    sets = [f"data.root={hest_root}", "data.genes={top_variable: 3}", *short_run(tmp_path)]
    sets.append("data.splits={train: 0.4, val_select: 0.2, val_calib: 0.2, val_test: 0.2}")
    manifest_path = train(load_config(EXPERIMENT, sets=sets, environ={}), env_policy="ignore")
    run = manifest_path.parent
    panel = json.loads((run / "genes.json").read_text())
    manifest = json.loads(manifest_path.read_text())
    assert manifest["artifacts"]["panel"] == ["genes.json"] and "genes.json" in manifest["sha256"]
    assert list(manifest["dataset"]["tasks"]) == panel["genes"] and panel["k"] == 3
    # the same ranking recomputed by hand from the train spots alone
    train_ids = set(json.loads((run / "splits.json").read_text())["splits"]["train"])
    rows = [
        (f"TILES-{patient}:{patient}-tile{t:02d}", np.log1p(counts))
        for patient, t, _, counts in iter_tiles(PATIENTS, TILES, 32)
    ]
    train_values = np.array([values for i, values in rows if i in train_ids])
    variance = train_values.var(axis=0)
    expected = sorted(GENES, key=lambda g: (-variance[GENES.index(g)], g))[:3]
    assert panel["genes"] == expected and panel["computed_on"]["spots"] == len(train_ids)
    flags = ["--from-manifest", str(manifest_path), "--env-policy", "ignore"]
    assert run_script("eval", *flags, "--recompute", "--n-resamples", "20") == 0
    _check_histology_outputs(run, panel["genes"])
    assert run_script("export", *flags) == 0
    code = run_script("predict", "--bundle", str(run / "bundle"), "--split", "val_test")
    assert code == 0
    header = (run / "predict" / "val_test.csv").read_text().splitlines()[0].split(",")
    assert [c for c in header if c in GENES] == panel["genes"]
    _check_spots(run)
    _check_new_sample(run, hest_root, panel["genes"], run_script)


def _check_histology_outputs(run: Path, genes: list[str]) -> None:
    """eval's per-gene table (Pearson with its CI as in metrics.json), a scatter per gene
    and a map per val_test sample and gene."""
    report = json.loads((run / "eval" / "metrics.json").read_text())["tasks"]
    table = (run / "eval" / "genes.md").read_text()
    for gene in genes:
        pearson = report[gene]["per_target"][0]["pearson"]
        assert f"| {gene} | {pearson['estimate']:.3f} [{pearson['ci_lower']:.3f}, " in table
        assert (run / "eval" / f"{gene}_scatter.png").stat().st_size > 5000
    with np.load(run / "predictions" / "val_test.npz") as data:
        samples = sorted(set(data["sample"].tolist()))
        sample_of = data["sample"]
        first = (data[f"logits_{genes[0]}"].reshape(-1), data[f"targets_{genes[0]}"])
    per_sample = report[genes[0]]["per_sample"]  # beside the pooled numbers
    assert sorted(per_sample) == samples and sum(n["n"] for n in per_sample.values()) == len(
        sample_of
    )
    rows = sample_of == samples[0]
    by_hand = np.abs(first[0][rows] - first[1][rows]).mean()
    assert per_sample[samples[0]]["mae"] == pytest.approx(by_hand, rel=1e-6)
    assert set(report[genes[0]]["per_group"]) <= {s.removeprefix("TILES-") for s in samples}
    maps = sorted(p.name for p in (run / "eval" / "maps").iterdir())
    assert maps == sorted(f"{s}_{g}.png" for s in samples for g in genes)
    manifest = json.loads((run / "manifest.json").read_text())
    assert f"eval/maps/{maps[0]}" in manifest["sha256"]  # recorded like every output


def _check_new_sample(  # type: ignore[no-untyped-def]
    run: Path, root: Path, genes: list[str], run_script
) -> None:
    """predict --hest-sample on a val_test sample's .h5 (with and without its expression):
    a row per spot with barcode and coordinates, the .h5ad with obsm["spatial"], maps, and
    with the expression Pearson per gene as computed by hand from the CSV."""
    import csv
    import io
    from contextlib import redirect_stdout

    import anndata

    from rigor.metrics.regression import pearson

    with np.load(run / "predictions" / "val_test.npz") as data:
        sample = str(data["sample"][0])
    h5, h5ad = root / "patches" / f"{sample}.h5", root / "st" / f"{sample}.h5ad"
    out = io.StringIO()
    bundle = ["--bundle", str(run / "bundle"), "--hest-sample", str(h5)]
    with redirect_stdout(out):
        assert run_script("predict", *bundle, "--expression", str(h5ad)) == 0
    path, summary = out.getvalue().strip().splitlines()
    rows = list(csv.DictReader(io.StringIO(Path(path).read_text())))
    assert len(rows) == TILES and {"sample", "barcode", "x", "y"} <= set(rows[0])
    for gene in genes:
        predicted = np.array([float(r[gene]) for r in rows])
        measured = np.array([float(r[f"{gene}_true"]) for r in rows])
        expected = pearson(predicted, measured)
        found = json.loads(summary)["genes"][gene]["pearson"]["estimate"]
        assert found == pytest.approx(expected, abs=1e-5)  # the CSV holds 6 decimals
    table = anndata.read_h5ad(Path(path).with_suffix(".h5ad"))
    assert list(table.obs_names) == [r["barcode"] for r in rows] and list(table.var_names) == genes
    spatial = np.array([[float(r["x"]), float(r["y"])] for r in rows])
    assert np.array_equal(table.obsm["spatial"], spatial) and "measured" in table.layers
    assert len(json.loads(summary)["maps"]) == min(4, len(genes))
    assert run_script("predict", *bundle) == 0  # no expression: predictions and maps only
    plain = list(csv.DictReader(io.StringIO(Path(path).read_text())))
    assert len(plain) == TILES and not any(k.endswith("_true") for k in plain[0])
    assert run_script("predict", "--bundle", str(run / "bundle"), "--split", "val_test",
                      "--expression", str(h5ad)) == 2  # fmt: skip


def _check_spots(run: Path) -> None:
    """Predictions (the run's, and predict's CSV) carry each spot's sample, barcode and
    pixel coordinates: the generator's grid position of the tile."""
    import csv

    side = int(np.ceil(np.sqrt(TILES)))
    with np.load(run / "predictions" / "val_test.npz") as data:
        ids, samples, barcodes, coords = (data[k] for k in ("ids", "sample", "barcode", "coords"))
    assert len(ids) > 0
    for sample_id, sample, barcode, (x, y) in zip(ids, samples, barcodes, coords, strict=True):
        assert sample_id == f"{sample}:{barcode}"
        tile = int(barcode.rsplit("tile", 1)[1])
        assert (x, y) == (tile % side * 32, tile // side * 32)
    with open(run / "predict" / "val_test.csv", newline="") as handle:
        rows = {row["id"]: row for row in csv.DictReader(handle)}
    assert set(rows) == set(ids.tolist())
    for sample_id, (x, y) in zip(ids, coords, strict=True):
        row = rows[str(sample_id)]
        assert (float(row["x"]), float(row["y"])) == (x, y) and row["sample"] in sample_id


@pytest.mark.slow  # trains with uncertainty weighting, then eval, export and predict
def test_a_gene_name_with_a_dot_trains_and_predicts_end_to_end(
    hest_root: Path, tmp_path: Path, run_script: Callable[..., int]
) -> None:
    """Real gene names have dots (AC009501.4); a ModuleDict refuses them as keys, so the
    heads and the uncertainty weights are keyed reversibly, and every stage sees the name."""
    import anndata
    import torch
    from conftest import short_run

    from rigor.models.registry import module_key, task_name
    from rigor.training.run import train

    assert task_name(module_key("AC009501.4")) == "AC009501.4" and "." not in module_key("a.b")
    assert task_name(module_key("50%.x")) == "50%.x"
    root = copy_of(hest_root, tmp_path)
    for path in (root / "st").glob("*.h5ad"):
        table = anndata.read_h5ad(path)
        table.var_names = ["AC009501.4" if g == "VIM" else g for g in table.var_names]
        table.write_h5ad(path)
    sets = [f"data.root={root}", "data.genes=[EPCAM, AC009501.4]", *short_run(tmp_path)]
    sets += ["training.task_weighting=uncertainty", "training.monitor=val_select/pearson"]
    sets.append("data.splits={train: 0.4, val_select: 0.2, val_calib: 0.2, val_test: 0.2}")
    manifest_path = train(load_config(EXPERIMENT, sets=sets, environ={}), env_policy="ignore")
    run = manifest_path.parent
    manifest = json.loads(manifest_path.read_text())
    assert set(manifest["dataset"]["tasks"]) == {"EPCAM", "AC009501.4"}
    state = torch.load(run / "checkpoints" / "best.pt", weights_only=True)["model"]
    assert any(key.startswith("heads.AC009501%2E4.") for key in state)
    assert "loss/AC009501.4/train" in (run / "logs" / "epochs.csv").read_text()
    flags = ["--from-manifest", str(manifest_path), "--env-policy", "ignore"]
    assert run_script("eval", *flags, "--recompute", "--n-resamples", "20") == 0
    assert run_script("export", *flags) == 0
    assert run_script("predict", "--bundle", str(run / "bundle"), "--split", "val_test") == 0
    header = (run / "predict" / "val_test.csv").read_text().splitlines()[0].split(",")
    assert "AC009501.4" in header


def test_figure_genes_are_the_named_ones_or_the_best_by_pearson() -> None:
    from rigor.evaluation.report_histology import figure_genes

    scores = {"A": 0.2, "B": float("nan"), "C": 0.7, "D": 0.5}
    report = {
        "tasks": {g: {"per_target": [{"pearson": {"estimate": v}}]} for g, v in scores.items()}
    }
    genes = list(scores)
    assert figure_genes(report, genes, 2) == ["C", "D"]
    assert figure_genes(report, genes, 9) == ["C", "D", "A", "B"]  # NaN last
    assert figure_genes(report, genes, ["B", "A"]) == ["B", "A"]
    with pytest.raises(UsageError, match=r"evaluation.figure_genes: \['Z'\] are not"):
        figure_genes(report, genes, ["A", "Z"])
