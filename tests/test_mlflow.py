"""The MLflow mirror (``logging.mlflow``): a real SQLite store read through MLflow's client,
a real ``mlflow server`` on 127.0.0.1 read over its REST API, a probe run, and an
unreachable server that only warns. A sweep's points sharing one experiment are checked in
tests/test_sweep.py, MAE pretraining's mirror in tests/test_pretrain.py."""

from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import SMOKE

from rigor.manifest.report import flatten

CALIBRATE = ["--target-risk", "0.95", "--set", "calibration.min_coverage=0.05"]


def _train(run_script, capsys, out: Path, uri: str, *sets: str) -> tuple[Path, str]:  # type: ignore[no-untyped-def]
    """Train the smoke config mirrored to ``uri``; the manifest's path (stdout's one line)
    and stderr."""
    flags = ["--set", f"run.output_root={out}", "--set", f"logging.mlflow.tracking_uri={uri}"]
    for item in sets:
        flags += ["--set", item]
    capsys.readouterr()
    assert run_script("train", "--config", str(SMOKE), *flags, "--env-policy", "ignore") == 0
    printed = capsys.readouterr()
    lines = printed.out.strip().splitlines()
    assert len(lines) == 1, lines  # MLflow printed nothing on stdout
    return Path(lines[0]), printed.err


def _later_stages(run_script, manifest: Path) -> None:  # type: ignore[no-untyped-def]
    assert run_script("calibrate", "--from-manifest", str(manifest), *CALIBRATE) == 0
    assert run_script("eval", "--from-manifest", str(manifest), "--n-resamples", "100") == 0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_names_and_params_are_what_mlflow_accepts() -> None:
    from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH, validate_param_and_metric_name

    from rigor.tracking.mirror import config_params, finite_metrics, metric_name

    for key in ("acc/val_test", "eval/digit/coverage@0.9", "a//b/", "/x", "..", "ρ=1"):
        name = metric_name(key)
        assert validate_param_and_metric_name(name) and Path(name).as_posix() == name, name
    assert metric_name("eval/digit/coverage@0.9") == "eval/digit/coverage_0.9"
    assert finite_metrics({"a": 1, "b": float("inf"), "c": True, "d": "x", "e": 0.5}) == {
        "a": 1.0,
        "e": 0.5,
    }
    params = config_params({"t": {"lr": 0.001, "tags": ["a", "b"], "s": "x" * 7000, "n": None}})
    assert params["t.lr"] == "0.001" and params["t.tags"] == '["a", "b"]'
    assert params["t.n"] == "null" and len(params["t.s"]) == MAX_PARAM_VAL_LENGTH


def test_a_mirror_logs_to_a_sqlite_store_and_reopens_its_run(tmp_path: Path) -> None:
    """The mirror itself against a real SQLite store: one MLflow run per rigor run id
    (opening it again finds it), params once, metrics at their steps, files in their
    folders, and the status it is given."""
    from mlflow import MlflowClient

    from rigor.config.models import MlflowConfig
    from rigor.tracking.mirror import Mirror

    settings = MlflowConfig(tracking_uri=f"sqlite:///{tmp_path / 'db' / 'm.db'}", experiment=None)
    tags = {"rigor.run_id": "R1", "rigor.config_hash": "abc"}
    resolved = {"training": {"lr": 0.01}, "run": {"name": "demo"}}
    mirror = Mirror.open(settings, "demo", "R1", tags, resolved)
    assert mirror.error is None and mirror.record()["experiment"] == "demo"
    mirror.metrics(3, {"loss/train": 0.5, "acc@top1": 0.9, "bad": float("nan")})
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "m.json").write_text("{}")
    mirror.artifacts(tmp_path, ["eval/m.json", "eval/missing.png"])
    mirror.end("FAILED")
    again = Mirror.open(settings, "demo", "R1", tags, resolved)
    assert again.run_id == mirror.run_id
    again.metrics(4, {"loss/train": 0.25})
    again.end("FINISHED")

    client = MlflowClient(settings.tracking_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("demo").experiment_id])
    assert run.info.status == "FINISHED" and run.data.params == {
        "training.lr": "0.01",
        "run.name": "demo",
    }
    history = client.get_metric_history(run.info.run_id, "loss/train")
    assert [(h.step, h.value) for h in history] == [(3, 0.5), (4, 0.25)]
    assert set(run.data.metrics) == {"loss/train", "acc_top1"}
    assert [a.path for a in client.list_artifacts(run.info.run_id, "eval")] == ["eval/m.json"]
    assert Mirror.off().record() is None


def _epoch_rows(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "logs" / "epochs.csv", newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.slow
def test_a_run_and_its_later_stages_land_on_one_mlflow_run(
    tmp_path: Path, run_script, capsys: pytest.CaptureFixture[str]  # type: ignore[no-untyped-def]
) -> None:
    from mlflow import MlflowClient
    from mlflow.artifacts import download_artifacts

    uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    manifest_path, _ = _train(run_script, capsys, tmp_path, uri, "logging.mlflow.experiment=digits")
    _later_stages(run_script, manifest_path)
    run_dir = manifest_path.parent
    manifest = json.loads(manifest_path.read_text())
    resolved = json.loads((run_dir / "config_resolved.json").read_text())

    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("digits")
    assert experiment.artifact_location == (tmp_path / "store" / "mlartifacts").as_uri()
    (run,) = client.search_runs([experiment.experiment_id])
    run_id = run.info.run_id
    assert run.info.status == "FINISHED" and run.info.run_name == run_dir.name
    tags = run.data.tags
    assert tags["rigor.run_id"] == run_dir.name
    assert tags["rigor.config_hash"] == manifest["config_hash"]
    assert tags["rigor.git_commit"] == (manifest["git"]["commit"] or "none")
    assert tags["rigor.manifest"] == str(manifest_path.resolve())
    # every resolved config key, as the run ran it
    params = run.data.params
    assert len(params) == len(flatten(resolved))
    assert params["training.lr"] == json.dumps(resolved["training"]["lr"])
    assert params["model.channels"] == "[8, 16]" and params["run.name"] == "smoke"
    # one point per epoch, at the epoch's last step, equal to epochs.csv
    rows = _epoch_rows(run_dir)
    history = client.get_metric_history(run_id, "acc/val_select")
    assert [h.step for h in history] == [int(row["step"]) for row in rows]
    assert [h.value for h in history] == pytest.approx(
        [float(row["acc/val_select"]) for row in rows], rel=1e-6
    )
    assert [h.value for h in client.get_metric_history(run_id, "epoch")] == [0, 1]
    metrics = json.loads((run_dir / "metrics.json").read_text())["metrics"]
    assert run.data.metrics["acc/val_test"] == pytest.approx(metrics["acc/val_test"], rel=1e-6)
    # eval's and calibrate's numbers, at the training's last step
    report = json.loads((run_dir / "eval" / "metrics.json").read_text())["tasks"]["digit"]
    (accuracy,) = client.get_metric_history(run_id, "eval/digit/accuracy")
    assert accuracy.value == pytest.approx(report["accuracy"]["estimate"], rel=1e-6)
    assert accuracy.step == manifest["stages"][0]["summary"]["steps"]
    stages = json.loads(manifest_path.read_text())["stages"]
    after = client.get_run(run_id).data.metrics
    assert after["calibrate/temperature"] == pytest.approx(stages[1]["summary"]["temperature"])
    # the files, byte for byte, in the run folder's layout
    for rel in ("eval/metrics.json", "calibration/reliability.png", "manifest.json"):
        got = download_artifacts(
            run_id=run_id, artifact_path=rel, dst_path=str(tmp_path / "got"), tracking_uri=uri
        )
        if rel != "manifest.json":  # the manifest gained the later stages since
            assert Path(got).read_bytes() == (run_dir / rel).read_bytes(), rel
    # the manifest says where its mirror is, for training and for each later stage
    assert [stage["summary"]["mlflow"]["run_id"] for stage in stages] == [run_id] * 3
    assert stages[0]["summary"]["mlflow"]["error"] is None


@pytest.mark.slow
def test_an_unreachable_mlflow_is_a_warning_and_a_later_stage_makes_the_run(
    tmp_path: Path, run_script, capsys: pytest.CaptureFixture[str]  # type: ignore[no-untyped-def]
) -> None:
    """Nothing listens on the port: training and eval warn and complete (the manifest
    valid, the error recorded). When the store works again, the next stage that finds no
    MLflow run for the rigor run makes it, with its tags and params."""
    from mlflow import MlflowClient

    from rigor.config.models import Config
    from rigor.tracking.mirror import mirror_stage

    down = f"http://127.0.0.1:{_free_port()}"
    started = time.perf_counter()
    manifest_path, err = _train(run_script, capsys, tmp_path, down)
    took = time.perf_counter() - started
    assert "warning: MLflow at " + down in err
    record = json.loads(manifest_path.read_text())["stages"][0]["summary"]["mlflow"]
    assert record["run_id"] is None and "could not open the run" in record["error"]
    assert record["tracking_uri"] == down and record["experiment"] == "smoke"
    assert took < 60, took  # bounded retries, not MLflow's minutes of backoff
    assert run_script("eval", "--from-manifest", str(manifest_path)) == 0
    assert "warning: MLflow at " + down in capsys.readouterr().err
    manifest = json.loads(manifest_path.read_text())
    assert "could not open the run" in manifest["stages"][1]["summary"]["mlflow"]["error"]
    assert run_script("manifest", "verify", str(manifest_path)) == 0

    resolved = json.loads((manifest_path.parent / "config_resolved.json").read_text())
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    resolved["logging"]["mlflow"]["tracking_uri"] = uri
    values = {"digit/accuracy": 0.5, "digit/n": 270, "digit/bad": float("nan")}
    got = mirror_stage(
        Config.model_validate(resolved),
        manifest,
        manifest_path,
        "eval",
        values,
        ["eval/metrics.json"],
    )
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("smoke").experiment_id])
    assert got is not None and got["run_id"] == run.info.run_id and got["error"] is None
    assert run.data.tags["rigor.run_id"] == manifest_path.parent.name
    assert run.data.params["run.name"] == "smoke"
    assert run.info.status == "FINISHED"
    assert run.data.metrics == {"eval/digit/accuracy": 0.5, "eval/digit/n": 270.0}
    (listed,) = client.list_artifacts(run.info.run_id, "eval")
    assert listed.path == "eval/metrics.json"


@pytest.fixture
def mlflow_server(tmp_path: Path) -> Iterator[str]:
    """``mlflow server`` on a free port of 127.0.0.1 with a SQLite store and served
    artifacts; its whole process group is stopped after the test."""
    import httpx

    port = _free_port()
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    command = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
        "--backend-store-uri",
        f"sqlite:///{tmp_path / 'server.db'}",
        "--artifacts-destination",
        str(tmp_path / "served"),
    ]
    log = open(tmp_path / "server.log", "wb")  # noqa: SIM115 - closed below
    server = subprocess.Popen(command, stdout=log, stderr=log, env=env, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert server.poll() is None, (tmp_path / "server.log").read_text()
            assert time.monotonic() < deadline, "mlflow server did not start"
            time.sleep(0.5)
        yield base
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
        log.close()


def _rest(base: str, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
    import httpx

    response = httpx.request(method, f"{base}/api/2.0/mlflow/{path}", timeout=30, **kwargs)
    assert response.status_code == 200, response.text
    return dict(response.json())


@pytest.mark.slow
def test_a_local_mlflow_server_holds_the_run_over_rest(
    tmp_path: Path, run_script, capsys, mlflow_server: str  # type: ignore[no-untyped-def]
) -> None:
    import httpx

    base = mlflow_server
    manifest_path, err = _train(
        run_script, capsys, tmp_path, base, "logging.mlflow.experiment=served"
    )
    assert f"mlflow: {base}/#/experiments/" in err
    _later_stages(run_script, manifest_path)
    run_dir = manifest_path.parent

    found = _rest(base, "GET", "experiments/get-by-name", params={"experiment_name": "served"})
    experiment_id = found["experiment"]["experiment_id"]
    query = {"experiment_ids": [experiment_id], "filter": f"tags.`rigor.run_id` = '{run_dir.name}'"}
    (run,) = _rest(base, "POST", "runs/search", json=query)["runs"]
    run_id = run["info"]["run_id"]
    assert run["info"]["status"] == "FINISHED"
    tags = {tag["key"]: tag["value"] for tag in run["data"]["tags"]}
    assert tags["rigor.manifest"] == str(manifest_path.resolve())
    params = {param["key"]: param["value"] for param in run["data"]["params"]}
    assert params["training.epochs"] == "2"
    history = _rest(
        base, "GET", "metrics/get-history", params={"run_id": run_id, "metric_key": "loss/train"}
    )["metrics"]
    rows = _epoch_rows(run_dir)
    assert [m["value"] for m in history] == pytest.approx(
        [float(row["loss/train"]) for row in rows], rel=1e-6
    )
    listed = _rest(base, "GET", "artifacts/list", params={"run_id": run_id, "path": "eval"})
    assert "eval/metrics.json" in {entry["path"] for entry in listed["files"]}
    served = httpx.get(
        f"{base}/get-artifact", params={"path": "eval/metrics.json", "run_uuid": run_id}
    )
    assert served.content == (run_dir / "eval" / "metrics.json").read_bytes()
    # xai adds its numbers and figures too
    assert run_script("xai", "--from-manifest", str(manifest_path), "--env-policy", "ignore") == 0
    xai = json.loads((run_dir / "xai" / "summary.json").read_text())["tasks"]["digit"]
    (run,) = _rest(base, "POST", "runs/search", json=query)["runs"]
    metrics = {metric["key"]: metric["value"] for metric in run["data"]["metrics"]}
    expected = xai["randomization"]["spearman_full_randomized"]
    assert metrics["xai/digit/randomization/spearman_full_randomized"] == pytest.approx(expected)
    listed = _rest(base, "GET", "artifacts/list", params={"run_id": run_id, "path": "xai"})
    assert {"xai/summary.json", "xai/grid_digit.png"} <= {e["path"] for e in listed["files"]}


@pytest.mark.slow
def test_a_probe_run_is_mirrored_with_its_pearson(tmp_path: Path, run_script) -> None:  # type: ignore[no-untyped-def]
    from mlflow import MlflowClient

    from rigor.data.hest.write import write_tiles_hest

    write_tiles_hest(tmp_path / "hest", 10, 8, 32)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    sets = [
        f"data.root={tmp_path / 'hest'}",
        f"run.output_root={tmp_path}",
        "evaluation.n_resamples=50",
        f"logging.mlflow.tracking_uri={uri}",
    ]
    args = [a for item in sets for a in ("--set", item)]
    config = str(Path(SMOKE).parent / "tiles_hest.yaml")
    assert run_script("probe", "--config", config, *args, "--env-policy", "ignore") == 0
    (run_dir,) = (tmp_path / "runs").iterdir()
    report = json.loads((run_dir / "probe" / "report.json").read_text())
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("tiles_hest").experiment_id])
    assert run.info.status == "FINISHED" and run.data.tags["rigor.run_id"] == run_dir.name
    expected = report["pearson_mean"]["estimate"]
    assert run.data.metrics["probe/pearson_mean"] == pytest.approx(expected, rel=1e-6)
    listed = {entry.path for entry in client.list_artifacts(run.info.run_id, "probe")}
    assert listed == {"probe/report.json"}
    summary = json.loads((run_dir / "manifest.json").read_text())["stages"][0]["summary"]
    assert summary["mlflow"]["run_id"] == run.info.run_id
