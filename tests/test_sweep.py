"""Sweeps: grid parsing and expansion, validation before launch, local and submitit launchers,
summaries ranked on val_select."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import SMOKE

from rigor.errors import ConfigError
from rigor.sweep.grid import build_grid, expand, parse_grid_item, split_values


def test_grid_items_parse_values_as_yaml() -> None:
    assert split_values("1,[32,64],{a: 1, b: 2}") == ["1", "[32,64]", "{a: 1, b: 2}"]
    assert parse_grid_item("training.lr=1e-3,3e-4") == ("training.lr", [1e-3, 3e-4])
    assert parse_grid_item("model.channels=[8,16],[16,32]") == (
        "model.channels",
        [[8, 16], [16, 32]],
    )
    for bad in ("training.lr", "Training.lr=1", "training.lr="):
        with pytest.raises(ConfigError, match="malformed --grid"):
            parse_grid_item(bad)


def test_expand_is_the_product_with_the_last_key_fastest(tmp_path: Path) -> None:
    grid_file = tmp_path / "grid.yaml"
    grid_file.write_text("grid:\n  training.lr: [0.1, 0.2]\n  model.dropout: [0.0]\n")
    grid = build_grid(["model.dropout=0.0,0.5"], grid_file)
    assert expand(grid) == [
        {"training.lr": 0.1, "model.dropout": 0.0},
        {"training.lr": 0.1, "model.dropout": 0.5},
        {"training.lr": 0.2, "model.dropout": 0.0},
        {"training.lr": 0.2, "model.dropout": 0.5},
    ]
    with pytest.raises(ConfigError, match="repeats the point"):
        expand({"training.lr": [0.1, 0.1]})
    with pytest.raises(ConfigError, match="no grid"):
        build_grid([], None)


def smoke_sweep(run_script, out: Path, *args: str) -> int:  # type: ignore[no-untyped-def]
    """Run ``sweep.py`` on the smoke config with its runs under ``out``; the exit code."""
    return int(
        run_script("sweep", "--config", str(SMOKE), "--set", f"run.output_root={out}", *args)
    )


@pytest.mark.slow
def test_an_invalid_point_stops_the_sweep_before_anything_runs(
    tmp_path: Path, run_script, capsys: pytest.CaptureFixture[str]  # type: ignore[no-untyped-def]
) -> None:
    code = smoke_sweep(
        run_script,
        tmp_path,
        "--grid",
        "training.lr=1e-3,-1",
    )
    err = capsys.readouterr().err
    assert code == 2
    assert "point 1 {'training.lr': -1}" in err and "training.lr" in err
    assert not (tmp_path / "sweeps").exists() and not (tmp_path / "runs").exists()
    code = smoke_sweep(
        run_script,
        tmp_path,
        "--grid",
        "run.output_root=a,b",
    )
    assert code == 2 and "may not vary" in capsys.readouterr().err


def _summary(tmp_path: Path) -> tuple[Path, dict]:  # type: ignore[type-arg]
    (folder,) = (tmp_path / "sweeps").iterdir()
    return folder, json.loads((folder / "summary.json").read_text())


@pytest.mark.slow
def test_local_sweep_runs_every_point_and_ranks_on_val_select(
    tmp_path: Path, run_script, capsys: pytest.CaptureFixture[str]  # type: ignore[no-untyped-def]
) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"  # the points share one MLflow experiment
    code = smoke_sweep(
        run_script,
        tmp_path,
        "--set",
        f"logging.mlflow.tracking_uri={uri}",
        "--grid",
        "training.lr=1e-3,1e-2",
        "--grid",
        "model.weights_path=null,missing.pt",
        "--max-parallel",
        "2",
        "--env-policy",
        "ignore",
    )
    err = capsys.readouterr().err
    assert code == 1  # the two points with missing weights fail; the others complete
    assert "2 of 4 sweep points failed" in err and "missing.pt" in err
    folder, summary = _summary(tmp_path)
    statuses = [p["status"] for p in summary["points"]]
    assert statuses == ["ok", "failed", "ok", "failed"]
    failed = json.loads((folder / "points" / "1.json").read_text())
    assert failed["exit_code"] == 5 and failed["manifest"] is None
    assert summary["monitor"] == "best/acc/val_select" and summary["chosen_on"] == "val_select"
    ok = [p for p in summary["points"] if p["status"] == "ok"]
    for point in ok:  # the summary's numbers are the run manifests' numbers
        manifest = json.loads(Path(point["manifest"]).read_text())
        assert point["metrics"] == manifest["metrics"]
        assert (
            json.loads((Path(point["manifest"]).parent / "config_resolved.json").read_text())[
                "training"
            ]["lr"]
            == point["overrides"]["training.lr"]
        )
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("smoke").experiment_id])
    assert {run.data.tags["rigor.sweep"] for run in runs} == {folder.name}
    assert {run.data.tags["rigor.run_id"] for run in runs} == {
        Path(point["manifest"]).parent.name for point in ok
    }  # the failed points stopped before a run folder (and an MLflow run) existed
    assert sorted(run.data.params["training.lr"] for run in runs) == ["0.001", "0.01"]
    assert {run.info.status for run in runs} == {"FINISHED"}
    values = [p["metrics"]["best/acc/val_select"] for p in ok]
    best = summary["best"]
    assert best["metrics"]["best/acc/val_select"] == max(values) and best["rank"] == 1
    rows = (folder / "summary.csv").read_text().splitlines()
    assert rows[0].startswith("rank,index,training.lr,model.weights_path,status,run_id")
    assert rows[1].startswith(f"1,{best['index']},") and len(rows) == 5
    # summarising again from the folder gives the same ranking
    assert run_script("sweep", "--summarize", str(folder)) == 0
    assert json.loads((folder / "summary.json").read_text())["best"]["index"] == best["index"]


@pytest.mark.slow
@pytest.mark.parametrize("cluster", ["local", "debug"])
def test_submitit_sweep(tmp_path: Path, run_script, cluster: str) -> None:  # type: ignore[no-untyped-def]
    code = smoke_sweep(
        run_script,
        tmp_path,
        "--grid",
        "training.lr=1e-3,1e-2",
        "--launcher",
        "submitit",
        "--cluster",
        cluster,
        "--env-policy",
        "ignore",
    )
    assert code == 0
    folder, summary = _summary(tmp_path)
    assert [p["status"] for p in summary["points"]] == ["ok", "ok"]
    record = json.loads((folder / "sweep.json").read_text())
    assert [job["cluster"] for job in record["jobs"]] == [cluster, cluster]
    assert sorted(p["rank"] for p in summary["points"]) == [1, 2]


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["local", "submitit"])
def test_points_can_train_with_two_processes(tmp_path: Path, run_script, launcher: str) -> None:  # type: ignore[no-untyped-def]
    extra = ["--cluster", "local"] if launcher == "submitit" else []
    code = smoke_sweep(
        run_script,
        tmp_path,
        "--grid",
        "training.lr=3e-3",
        "--launcher",
        launcher,
        "--nproc-per-node",
        "2",
        "--env-policy",
        "ignore",
        *extra,
    )
    assert code == 0
    _, summary = _summary(tmp_path)
    (point,) = summary["points"]
    manifest = json.loads(Path(point["manifest"]).read_text())
    assert manifest["stages"][0]["summary"]["distributed"] == {"world_size": 2, "backend": "gloo"}
    assert len(list((tmp_path / "runs").iterdir())) == 1  # one run, written by rank 0
