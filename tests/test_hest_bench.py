"""HEST-Benchmark task folders: read as published, malformed ones refused naming the file and
row, the score recomputed independently with sklearn as the published protocol does, and
the leaderboard command end to end."""

from __future__ import annotations

import csv
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import CONFIGS

from rigor.config import load_config
from rigor.errors import UsageError

EXPERIMENT = CONFIGS / "experiment" / "hest_bench.yaml"
VIT_TINY = [
    "model.backbone=timm",
    "model.timm.arch=vit_tiny_patch16_224",
    "model.timm.kwargs={img_size: 32, patch_size: 8}",
]


@pytest.fixture(scope="module")
def bench_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two generated task folders of 6 patients (20 tiles of 32 px each), 3 splits."""
    from rigor.data.hest.write import write_hest_bench

    root = tmp_path_factory.mktemp("hest_bench")
    write_hest_bench(root, ["TILES_A", "TILES_B"], 6, 3, tiles_per_patient=20, size=32)
    return root


def _raw(task: Path, *sets: str):  # type: ignore[no-untyped-def]
    from rigor.data.build import raw_dataset

    cfg = load_config(EXPERIMENT, sets=[f"data.root={task}", *sets], environ={}).config
    return raw_dataset(cfg.data)


def test_a_task_folder_is_read_as_published(bench_root: Path) -> None:
    raw = _raw(bench_root / "TILES_A")
    record = raw.extra_record
    assert record["task"] == "TILES_A" and len(record["bench_splits"]) == 3
    assert (
        record["genes"]
        == json.loads((bench_root / "TILES_A" / "var_50genes.json").read_text())["genes"]
    )
    for k, split in enumerate(record["bench_splits"]):
        with (bench_root / "TILES_A" / "splits" / f"test_{k}.csv").open() as handle:
            assert split["test"] == [row["sample_id"] for row in csv.DictReader(handle)]
        assert not set(split["train"]) & set(split["test"])
        assert split["n_train"] + split["n_test"] == 120 and split["n_test"] == 40
    # the targets are log1p of the raw counts of the gene list, joined on the barcode
    import anndata

    sample = record["samples"][0]
    adata = anndata.read_h5ad(bench_root / "TILES_A" / "adata" / f"{sample}.h5ad")
    first = raw.ids.index(f"{sample}:{adata.obs_names[3]}")
    assert raw.targets["VIM"][first] == pytest.approx(np.log1p(adata[3, "VIM"].X[0, 0]))


def _copy(bench_root: Path, tmp_path: Path) -> Path:
    task = tmp_path / "TASK"
    shutil.copytree(bench_root / "TILES_A", task)
    return task


def _rewrite_h5(path: Path, **datasets: np.ndarray) -> None:
    import h5py

    with h5py.File(path, "a") as handle:
        for name, data in datasets.items():
            del handle[name]
            handle.create_dataset(name, data=data)


def _break_row(task: Path) -> str:
    lines = (task / "splits" / "train_1.csv").read_text().splitlines()
    lines[2] = lines[2].replace(".h5,", "_gone.h5,")
    (task / "splits" / "train_1.csv").write_text("\n".join(lines) + "\n")
    return r"train_1.csv row 3: patches_path .*_gone.h5 does not exist"


def _drop_gene(task: Path) -> str:
    import anndata

    path = task / "adata" / "TILES-P02.h5ad"
    adata = anndata.read_h5ad(path)
    adata[:, [g for g in adata.var_names if g != "MKI67"]].copy().write_h5ad(path)
    return r"TILES-P02.h5ad: genes \['MKI67'\] of .*var_50genes.json are absent"


def _orphan_barcode(task: Path) -> str:
    import h5py

    path = task / "patches" / "TILES-P01.h5"
    with h5py.File(path, "r") as handle:
        barcodes = handle["barcode"][:]
    barcodes[5, 0] = b"NO-SPOT-05"
    _rewrite_h5(path, barcode=barcodes)
    return r"TILES-P01.h5ad: 1 of 20 patch barcodes have no spot .*'NO-SPOT-05' \(patch row 5\)"


def _duplicate_barcode(task: Path) -> str:
    import h5py

    path = task / "patches" / "TILES-P04.h5"
    with h5py.File(path, "r") as handle:
        barcodes = handle["barcode"][:]
    barcodes[6] = barcodes[1]
    _rewrite_h5(path, barcode=barcodes)
    return r"TILES-P04.h5: barcode: 1 duplicate\(s\), first \[\"'P04-tile01' \(rows 1 and 6\)\"\]"


def _duplicate_gene(task: Path) -> str:
    path = task / "var_50genes.json"
    genes = json.loads(path.read_text())["genes"]
    path.write_text(json.dumps({"genes": [*genes, genes[0]]}))
    return r"var_50genes.json: duplicate gene names \['EPCAM'\]"


def _no_patches(task: Path) -> str:
    _rewrite_h5(
        task / "patches" / "TILES-P03.h5",
        img=np.zeros((0, 32, 32, 3), np.uint8),
        barcode=np.zeros((0, 1), "S8"),
    )
    return r"TILES-P03.h5: the sample has no patches"


def _odd_splits(task: Path) -> str:
    (task / "splits" / "test_2.csv").unlink()
    return r"splits: split 2 lacks test_2.csv"


@pytest.mark.parametrize(
    "damage",
    [_break_row, _drop_gene, _orphan_barcode, _duplicate_barcode, _duplicate_gene, _no_patches],
)
def test_a_malformed_task_folder_names_the_file_and_row(
    bench_root: Path, tmp_path: Path, damage: Callable[[Path], str]
) -> None:
    task = _copy(bench_root, tmp_path)
    expected = damage(task)
    with pytest.raises(UsageError, match=expected):
        _raw(task)


def test_an_odd_split_count_is_exit_2_without_a_run(
    bench_root: Path,
    tmp_path: Path,
    run_script: Callable[..., int],
    capsys: pytest.CaptureFixture[str],
) -> None:
    task = _copy(bench_root, tmp_path)
    expected = _odd_splits(task)
    sets = [f"data.root={task}", f"run.output_root={tmp_path / 'out'}"]
    args = [a for s in sets for a in ("--set", s)]
    assert run_script("probe", "--config", str(EXPERIMENT), *args, "--env-policy", "ignore") == 2
    err = capsys.readouterr().err
    assert "split 2 lacks test_2.csv" in err and "Traceback" not in err and expected
    assert not (tmp_path / "out" / "runs").exists()


def test_crossing_samples_warn_and_training_on_a_task_folder_is_refused(
    bench_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from rigor.errors import ConfigError
    from rigor.training.prepare import prepare

    task = _copy(bench_root, tmp_path)
    train = (task / "splits" / "train_0.csv").read_text()
    test_row = (task / "splits" / "test_0.csv").read_text().splitlines()[1]
    (task / "splits" / "train_0.csv").write_text(train + test_row + "\n")
    raw = _raw(task)
    assert "split 0: samples ['TILES-P00'] are in train and test" in capsys.readouterr().err
    assert "TILES-P00" in raw.extra_record["bench_splits"][0]["train"]  # used as listed
    resolved = load_config(EXPERIMENT, sets=[f"data.root={task}"], environ={})
    with pytest.raises(ConfigError, match="scored by the probe"):
        prepare(resolved, "ignore", False)


def _published_protocol(
    task: Path, features: dict[str, np.ndarray], seed: int, latent_dim: int
) -> list[float]:
    """HEST-Benchmark's split scores, step by step as its benchmark.py and trainer.py do:
    rows of each CSV's samples in order, log1p counts of adata[barcodes, genes], float32
    PCA output (a torch.Tensor), Ridge(lsqr, alpha = 100 / (dims * genes), no intercept),
    scipy's pearsonr per gene, the mean over genes. ``latent_dim`` is HEST's --latent_dim
    (256 by default; its PCA(256) would raise on features this small)."""
    import anndata
    from scipy.stats import pearsonr
    from sklearn.decomposition import PCA
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    genes = json.loads((task / "var_50genes.json").read_text())["genes"]

    def split(name: str) -> tuple[np.ndarray, np.ndarray]:
        xs, ys = [], []
        with (task / "splits" / name).open() as handle:
            for row in csv.DictReader(handle):
                barcodes, embedding = features[row["sample_id"]]
                adata = anndata.read_h5ad(task / row["expr_path"])[list(barcodes), genes]
                xs.append(embedding)
                ys.append(np.log1p(np.asarray(adata.X, dtype=np.float64)))
        return np.concatenate(xs), np.concatenate(ys)

    scores = []
    for k in range(len(list((task / "splits").glob("train_*.csv")))):
        x_train, y_train = split(f"train_{k}.csv")
        x_test, y_test = split(f"test_{k}.csv")
        pca = PCA(n_components=latent_dim, random_state=seed)
        pipe = Pipeline([("scaler", StandardScaler()), ("PCA", pca)])
        x_train = torch.Tensor(pipe.fit_transform(x_train)).numpy()
        x_test = torch.Tensor(pipe.transform(x_test)).numpy()
        alpha = 100 / (x_train.shape[1] * y_train.shape[1])
        reg = Ridge(solver="lsqr", alpha=alpha, random_state=seed, fit_intercept=False)
        reg.set_params(max_iter=1000).fit(x_train, y_train)
        predicted = reg.predict(x_test)
        scores.append(np.mean([pearsonr(y_test[:, j], predicted[:, j])[0] for j in range(8)]))
    return scores


def _timm_features(task: Path, weights: Path) -> dict[str, np.ndarray]:
    """Each sample's (barcodes, embeddings): h5py patches, /255, ImageNet normalisation,
    timm's own forward, as HEST's embed_tiles does."""
    import h5py
    import timm
    from safetensors.torch import load_file

    model = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, num_classes=0, img_size=32, patch_size=8
    )
    model.load_state_dict(load_file(str(weights)))
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    out = {}
    for path in sorted((task / "patches").glob("*.h5")):
        with h5py.File(path, "r") as handle:
            img, barcodes = handle["img"][:], handle["barcode"][:, 0].astype(str)
        x = (torch.from_numpy(img).permute(0, 3, 1, 2).float() / 255 - mean) / std
        with torch.inference_mode():
            out[path.stem] = (barcodes, model.eval()(x).numpy())
    return out


def test_the_score_is_the_published_protocols_recomputed_independently(
    bench_root: Path, tmp_path: Path
) -> None:
    from rigor.models.random_weights import write_random_weights
    from rigor.probe.run import probe

    weights = tmp_path / "vit_tiny.safetensors"
    kwargs = {"num_classes": 0, "img_size": 32, "patch_size": 8}
    write_random_weights(weights, "timm", "vit_tiny_patch16_224", 3, kwargs)
    for task in ("TILES_A", "TILES_B"):
        folder = bench_root / task
        sets = [*VIT_TINY, f"model.weights_path={weights}", f"data.root={folder}"]
        sets += [f"run.output_root={tmp_path}", "evaluation.n_resamples=50"]
        sets += ["probe.pca_components=24"]
        manifest = probe(load_config(EXPERIMENT, sets=sets, environ={}), env_policy="ignore")
        report = json.loads((manifest.parent / "probe" / "report.json").read_text())
        features = _timm_features(folder, weights)
        expected = _published_protocol(folder, features, seed=1, latent_dim=24)
        assert report["pca_seed"] == 1 and report["protocol"] == "hest_bench"
        assert np.abs(np.array(report["split_scores"]) - expected).max() < 1e-3
        assert abs(report["split_mean"] - np.mean(expected)) < 1e-3
        assert abs(report["split_std"] - np.std(expected)) < 1e-3
        # the manifest records the encoder: architecture, weights' sha256, width
        encoder = json.loads(manifest.read_text())["encoder"]
        assert encoder["architecture"] == "vit_tiny_patch16_224" and encoder["dim"] == 192
        from rigor.io import sha256_file

        assert encoder["weights_sha256"] == sha256_file(weights)
        assert [s["test"] for s in report["splits"]] == [f["test_groups"] for f in report["folds"]]
        with np.load(manifest.parent / "probe" / "predictions.npz") as data:  # spots located
            ids, samples, barcodes, coords = (
                data[k] for k in ("ids", "sample", "barcode", "coords")
            )
        assert [f"{s}:{b}" for s, b in zip(samples, barcodes, strict=True)] == ids.tolist()
        assert coords.shape == (len(ids), 2) and np.isfinite(coords).all()


@pytest.mark.slow  # four probe runs in subprocesses, then a rerun that reuses them all
def test_the_leaderboard_command_end_to_end(
    bench_root: Path, tmp_path: Path, run_script: Callable[..., int]
) -> None:
    import yaml

    from rigor.models.random_weights import write_random_weights

    weights = tmp_path / "vit_tiny.safetensors"
    kwargs = {"num_classes": 0, "img_size": 32, "patch_size": 8}
    write_random_weights(weights, "timm", "vit_tiny_patch16_224", 0, kwargs)
    model = tmp_path / "vit_tiny.yaml"
    model.write_text(
        yaml.safe_dump(
            {
                "backbone": "timm",
                "timm": {"arch": "vit_tiny_patch16_224", "kwargs": kwargs, "pooling": "model"},
            }
        )
    )
    bench = {
        "name": "test",
        "experiment": str(EXPERIMENT),
        "tasks": {t: str(bench_root / t) for t in ("TILES_A", "TILES_B")},
        "encoders": {
            "resnet50_trunc": {
                "model": str(CONFIGS / "model" / "hest_resnet50_trunc.yaml"),
                "set": ["model.weights_path=null"],  # a cell's own sets beat the bench's
            },
            "vit_tiny": {"model": str(model), "set": [f"model.weights_path={weights}"]},
        },
        "set": [
            f"run.output_root={tmp_path / 'out'}",
            "evaluation.n_resamples=100",
        ],
        "launch": {"launcher": "local", "max_parallel": 2},
    }
    path = tmp_path / "bench.yaml"
    path.write_text(yaml.safe_dump(bench))
    assert run_script("probe", "--bench", str(path), "--env-policy", "ignore") == 0
    board = tmp_path / "out" / "leaderboards" / "test"
    record = json.loads((board / "leaderboard.json").read_text())
    assert len(record["cells"]) == 4 and len(list((tmp_path / "out" / "runs").iterdir())) == 4
    for cell in record["cells"]:
        report = json.loads((Path(cell["manifest"]).parent / "probe" / "report.json").read_text())
        assert cell["hest_mean"] == report["split_mean"] and report["task"] == cell["task"]
    for encoder in ("resnet50_trunc", "vit_tiny"):
        means = [c["hest_mean"] for c in record["cells"] if c["encoder"] == encoder]
        assert record["average"][encoder] == pytest.approx(np.mean(means))
    pair = record["paired_per_task"]["TILES_A"]["resnet50_trunc - vit_tiny"]
    a, b = (
        next(c for c in record["cells"] if c["task"] == "TILES_A" and c["encoder"] == e)
        for e in ("resnet50_trunc", "vit_tiny")
    )
    assert pair["estimate"] == pytest.approx(a["pearson_mean"] - b["pearson_mean"])
    assert pair["ci_lower"] <= pair["estimate"] <= pair["ci_upper"] and pair["n_patients"] == 6
    assert record["paired_across_tasks"]["resnet50_trunc - vit_tiny"]["n_tasks"] == 2
    assert (board / "leaderboard.png").read_bytes()[:4] == b"\x89PNG"
    table = (board / "leaderboard.md").read_text()
    assert "| TILES_A |" in table and "Wilcoxon" in table
    assert (board / "leaderboard.csv").read_text().count("\n") == 1 + 4 + 2
    # the same command again reuses every finished cell: no new run
    assert run_script("probe", "--bench", str(path), "--env-policy", "ignore") == 0
    assert len(list((tmp_path / "out" / "runs").iterdir())) == 4


def test_compare_reads_probe_runs(
    bench_root: Path, tmp_path: Path, run_script: Callable[..., int]
) -> None:
    """Two encoders probed on one task folder compare on their pooled out-of-fold spots:
    each variant's estimate is the mean over genes of Pearson's r over those spots."""
    from scipy.stats import pearsonr

    from rigor.probe.run import probe

    manifests = []
    for backbone in (VIT_TINY, ["model.backbone=resnet50_trunc"]):
        sets = [*backbone, f"data.root={bench_root / 'TILES_B'}", f"run.output_root={tmp_path}"]
        sets += ["evaluation.n_resamples=20", "probe.pca_components=16"]
        manifests.append(probe(load_config(EXPERIMENT, sets=sets, environ={}), "ignore"))
    out = tmp_path / "compare"
    args = [str(m) for m in manifests] + ["--output", str(out), "--n-resamples", "200"]
    assert run_script("compare", *args) == 0
    result = json.loads((out / "compare.json").read_text())
    assert result["n_samples"] == 120  # every spot is tested once over the three splits
    for manifest, variant in zip(manifests, result["variants"], strict=True):
        with np.load(manifest.parent / "probe" / "predictions.npz") as stored:
            pred, target = stored["predicted"], stored["targets"]
        pooled = np.mean([pearsonr(pred[:, j], target[:, j])[0] for j in range(8)])
        assert variant["estimates"]["pearson_mean"] == pytest.approx(pooled)
    (pair,) = result["pairs"]
    difference = pair["differences"]["pearson_mean"]
    assert difference["ci_lower"] <= difference["estimate"] <= difference["ci_upper"]


def test_a_bootstrap_off_its_estimate_is_flagged() -> None:
    from rigor.probe.leaderboard import skewed

    assert skewed({"estimate": 0.13, "mean": 0.03, "std": 0.08})  # off by 1.25 s.d.
    assert not skewed({"estimate": 0.13, "mean": 0.11, "std": 0.08})
    assert not skewed({"estimate": 0.13, "mean": None, "std": None})  # one patient: no CI


def test_a_patient_column_makes_patients_the_groups(
    bench_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two samples of one patient: the patient is their split group (and the CI's cluster),
    and a split that trains on one and tests the other is named in a warning."""
    task = _copy(bench_root, tmp_path)
    for path in (task / "splits").glob("*.csv"):
        with path.open() as handle:
            rows = list(csv.DictReader(handle))
        with path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, [*rows[0], "patient"])
            writer.writeheader()
            for row in rows:
                shared = row["sample_id"] in ("TILES-P00", "TILES-P01")
                writer.writerow(row | {"patient": "PA" if shared else row["sample_id"]})
    raw = _raw(task)
    groups = dict(zip([i.split(":")[0] for i in raw.ids], raw.groups, strict=True))
    assert groups["TILES-P00"] == groups["TILES-P01"] == "PA" and groups["TILES-P02"] == "TILES-P02"
    assert "split 0: patients ['PA'] are in train and test" in capsys.readouterr().err
    by_sample = _raw(task, "data.hest.group_by=sample")
    assert set(by_sample.groups) == {f"TILES-P0{i}" for i in range(6)}


def test_the_leaderboard_runs_its_cells_through_submitit(
    bench_root: Path, tmp_path: Path, run_script: Callable[..., int]
) -> None:
    """The cells go through the sweep's submitit launcher (its debug executor here: the same
    job function a Slurm array runs), and the sweep records the jobs."""
    import yaml

    bench = {
        "name": "submitit",
        "experiment": str(EXPERIMENT),
        "tasks": {"TILES_A": str(bench_root / "TILES_A")},
        "encoders": {
            "resnet50_trunc": {
                "model": str(CONFIGS / "model" / "hest_resnet50_trunc.yaml"),
                "set": ["model.weights_path=null"],
            },
        },
        "set": [f"run.output_root={tmp_path / 'out'}", "evaluation.n_resamples=50"],
        "launch": {"launcher": "submitit", "cluster": "debug"},
    }
    path = tmp_path / "bench.yaml"
    path.write_text(yaml.safe_dump(bench))
    assert run_script("probe", "--bench", str(path), "--env-policy", "ignore") == 0
    (sweep,) = (tmp_path / "out" / "sweeps").iterdir()
    jobs = json.loads((sweep / "sweep.json").read_text())["jobs"]
    assert [job["cluster"] for job in jobs] == ["debug"]
    record = json.loads(
        (tmp_path / "out" / "leaderboards" / "submitit" / "leaderboard.json").read_text()
    )
    (cell,) = record["cells"]
    assert cell["run_id"] in {p.name for p in (tmp_path / "out" / "runs").iterdir()}
    assert record["paired_per_task"] == {"TILES_A": {}}  # one encoder: nothing to pair
