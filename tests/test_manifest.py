"""Manifest v1: schema, round trip, validate/verify failures, the manifest script."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import ROOT

from rigor.errors import ArtifactError, ManifestError
from rigor.manifest import load_manifest, validate_manifest, verify_manifest, write_manifest
from rigor.manifest.schema import render_manifest_schema


@pytest.fixture
def run_copy(smoke_manifest: Path, tmp_path: Path) -> Path:
    """A private copy of the smoke run folder to break; returns its manifest path."""
    target = tmp_path / smoke_manifest.parent.name
    shutil.copytree(smoke_manifest.parent, target)
    return target / "manifest.json"


def edit(path: Path, change: Callable[[dict], None]) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def test_committed_manifest_schema_is_fresh() -> None:
    committed = (ROOT / "schema" / "manifest.v1.json").read_text()
    assert committed == render_manifest_schema(), "schema/manifest.v1.json is stale: make schema"


def test_round_trip(run_copy: Path) -> None:
    manifest = load_manifest(run_copy)
    write_manifest(run_copy.parent, manifest)
    assert load_manifest(run_copy) == manifest
    verify_manifest(manifest, run_copy.parent)
    assert not list(run_copy.parent.glob(".manifest.json.*"))  # no temp file left behind


@pytest.mark.parametrize(
    "change, json_path",
    [
        (lambda m: m.pop("run_id"), "$"),
        (lambda m: m.__setitem__("manifest_version", "2"), "$.manifest_version"),
        (lambda m: m["git"].__setitem__("is_dirty", "no"), "$.git.is_dirty"),
        (lambda m: m["checkpoints"].append("../../etc/passwd"), "$.checkpoints[2]"),
        (lambda m: m.__setitem__("best_checkpoint", "/abs/best.pt"), "$.best_checkpoint"),
        (lambda m: m["sha256"].__setitem__("x/../../y", "0" * 64), "$.sha256"),
        (lambda m: m["stages"][0].__setitem__("status", "failed"), "$.stages[0].status"),
        (lambda m: m.__setitem__("surprise", 1), "$"),
    ],
)
def test_validate_reports_json_path(
    run_copy: Path, change: Callable[[dict], None], json_path: str
) -> None:
    edit(run_copy, change)
    with pytest.raises(ManifestError) as info:
        load_manifest(run_copy)
    assert f"schema violation at {json_path}:" in str(info.value)


def test_listed_path_without_hash_is_invalid(run_copy: Path) -> None:
    edit(run_copy, lambda m: m["artifacts"]["figures"].append("figures/x.png"))
    with pytest.raises(ManifestError, match=r"\$\.artifacts\.figures\[0\] lists 'figures/x.png'"):
        load_manifest(run_copy)


def test_not_json_and_missing(tmp_path: Path) -> None:
    bad = tmp_path / "manifest.json"
    bad.write_text("{not json")
    with pytest.raises(ManifestError, match="not valid JSON"):
        load_manifest(bad)
    with pytest.raises(ManifestError, match="not found"):
        load_manifest(tmp_path / "absent.json")


def test_write_refuses_an_invalid_manifest(run_copy: Path) -> None:
    manifest = load_manifest(run_copy)
    before = run_copy.read_bytes()
    manifest["run_id"] = "not a run id"
    with pytest.raises(ManifestError):
        write_manifest(run_copy.parent, manifest)
    assert run_copy.read_bytes() == before


def test_verify_names_each_missing_or_changed_file(run_copy: Path) -> None:
    run = run_copy.parent
    (run / "checkpoints" / "last.pt").unlink()
    with open(run / "metrics.json", "a") as handle:
        handle.write(" ")
    with pytest.raises(ArtifactError) as info:
        verify_manifest(load_manifest(run_copy), run)
    message = str(info.value)
    assert "2 artifact(s) failed" in message
    assert "checkpoints/last.pt: missing" in message
    assert "metrics.json: sha256 changed" in message


def test_verify_refuses_a_symlink_out_of_the_run(run_copy: Path, tmp_path: Path) -> None:
    run = run_copy.parent
    outside = tmp_path / "outside.json"
    shutil.copy(run / "metrics.json", outside)
    (run / "metrics.json").unlink()
    (run / "metrics.json").symlink_to(outside)
    with pytest.raises(ArtifactError, match="outside the run folder"):
        verify_manifest(load_manifest(run_copy), run)


def test_validate_manifest_accepts_only_dicts() -> None:
    with pytest.raises(ManifestError):
        validate_manifest([], label="list")


def test_script_exit_codes(
    run_copy: Path, run_script: Callable[..., int], capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_script("manifest", "validate", str(run_copy)) == 0
    assert run_script("manifest", "verify", str(run_copy)) == 0
    assert run_script("manifest", "show", str(run_copy)) == 0
    assert "acc/val_test" in capsys.readouterr().out
    edit(run_copy, lambda m: m["git"].__setitem__("commit", 42))
    assert run_script("manifest", "validate", str(run_copy)) == 3
    assert "$.git.commit" in capsys.readouterr().err


def test_script_verify_exit_5(
    run_copy: Path, run_script: Callable[..., int], capsys: pytest.CaptureFixture[str]
) -> None:
    (run_copy.parent / "predictions" / "val_test.npz").unlink()
    assert run_script("manifest", "verify", str(run_copy)) == 5
    err = capsys.readouterr().err
    assert "predictions/val_test.npz: missing" in err and "Traceback" not in err


def test_diff_shows_config_and_metric_changes(
    smoke_manifest: Path,
    run_copy: Path,
    run_script: Callable[..., int],
    capsys: pytest.CaptureFixture[str],
) -> None:
    edit(run_copy, lambda m: m["metrics"].__setitem__("acc/val_test", 0.123))
    config = run_copy.parent / "config_resolved.json"
    data = json.loads(config.read_text())
    data["training"]["lr"] = 0.5
    config.write_text(json.dumps(data))
    assert run_script("manifest", "diff", str(smoke_manifest), str(run_copy)) == 0
    out = capsys.readouterr().out
    assert "config.training.lr" in out and "0.5" in out
    assert "metrics.acc/val_test" in out and "0.123" in out
    assert "config.training.epochs" not in out


def test_manifest_script_imports_no_torch(smoke_manifest: Path, python: str) -> None:
    code = (
        "import runpy, sys; sys.argv = ['manifest.py', 'validate', sys.argv[1]];\n"
        "try:\n    runpy.run_path('scripts/manifest.py', run_name='__main__')\n"
        "except SystemExit as e:\n    assert e.code == 0, e.code\n"
        "assert 'torch' not in sys.modules, 'manifest.py imported torch'"
    )
    result = subprocess.run(
        [python, "-c", code, str(smoke_manifest)], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
