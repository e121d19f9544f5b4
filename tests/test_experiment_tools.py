"""experiments.py drafts log entries from manifests; reproduce.py re-runs and compares."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from rigor.errors import ArtifactError
from rigor.experiments import draft_entry, next_number
from rigor.reproduce import compare, reproduce

pytestmark = pytest.mark.smoke


def test_next_number() -> None:
    assert next_number("# Experiments\n") == 1
    assert next_number("## Experiment 001: a\n## Experiment 007: b\n") == 8


def test_draft_entry_from_a_manifest(
    smoke_manifest: Path, tmp_path: Path, run_script: Callable[..., int]
) -> None:
    log = tmp_path / "EXPERIMENTS.md"
    log.write_text("# Experiments\n\n## Experiment 041: earlier\n")
    entry = draft_entry(smoke_manifest, "smoke check", log)
    manifest = json.loads(smoke_manifest.read_text())
    assert entry.startswith("\n## Experiment 042: smoke check\n")
    assert manifest["run_id"] in entry and manifest["config_hash"][:8] in entry
    assert "`training.epochs=2`" in entry and "`model.channels=[8, 16]`" in entry
    assert f"| acc/val_test | {manifest['metrics']['acc/val_test']:.4g} |" in entry
    for field in ("Date", "Goal", "Config", "Changes", "Results", "Observations", "Next step"):
        assert f"- **{field}:**" in entry
    args = ["add", "--from-manifest", str(smoke_manifest), "--write", "--experiments", str(log)]
    assert run_script("experiments", *args) == 0
    assert log.read_text().count("## Experiment 042") == 1


def test_reproduce_is_bitwise_and_reports_differences(smoke_manifest: Path, tmp_path: Path) -> None:
    report = reproduce(smoke_manifest, tmp_path / "again", env_policy="ignore")
    again = tmp_path / "again" / "runs" / report["reproduction"] / "manifest.json"
    assert report["bitwise"] and report["data_identical"] and report["differences"] == []
    assert all(report["weights_identical"].values()) and report["artifact_differences"] == []
    assert set(report["weights_identical"]) == {"checkpoints/best.pt", "checkpoints/last.pt"}
    copy = tmp_path / "copy" / smoke_manifest.parent.name
    shutil.copytree(smoke_manifest.parent, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["metrics"]["acc/val_test"] = 0.5
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="manifest.json: its fields changed"):
        reproduce(copy / "manifest.json", tmp_path / "third", env_policy="ignore")
    report = compare(copy / "manifest.json", again)  # what a comparison of the two says
    assert not report["bitwise"] and report["weights_identical"]["checkpoints/best.pt"]
    assert [d["metric"] for d in report["differences"]] == ["acc/val_test"]
    assert report["differences"][0]["original"] == 0.5


def test_reproduce_refuses_a_changed_artifact_and_names_each_difference(
    smoke_manifest: Path, tmp_path: Path
) -> None:
    import torch

    copy = tmp_path / "copy" / smoke_manifest.parent.name
    shutil.copytree(smoke_manifest.parent, copy)
    state = torch.load(copy / "checkpoints" / "best.pt", weights_only=True)
    first = next(iter(state["optimizer"]["state"].values()))
    moment = next(v for v in first.values() if isinstance(v, torch.Tensor) and v.numel() > 1)
    moment.add_(1.0)  # only the optimizer state moves: the weights stay equal
    torch.save(state, copy / "checkpoints" / "best.pt")
    with pytest.raises(ArtifactError, match="best.pt: sha256 changed"):
        reproduce(copy / "manifest.json", tmp_path / "again", env_policy="ignore")
    report = compare(smoke_manifest, copy / "manifest.json")  # what a comparison then names
    assert not report["bitwise"] and not report["weights_identical"]["checkpoints/best.pt"]
    assert any(".optimizer.state." in d for d in report["artifact_differences"])
    assert report["weights_identical"]["checkpoints/last.pt"]


def test_reproduce_writes_beside_the_original_run_by_default(
    smoke_manifest: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Run from another folder, the re-run still lands in <output root>/reproduce/runs/."""
    root = tmp_path / "out"
    shutil.copytree(smoke_manifest.parent, root / "runs" / smoke_manifest.parent.name)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    manifest = root / "runs" / smoke_manifest.parent.name / "manifest.json"
    report = reproduce(manifest, env_policy="ignore")
    assert report["bitwise"] is True
    assert [p.parent.parent for p in (root / "reproduce" / "runs").glob("*/manifest.json")] == [
        root / "reproduce" / "runs"
    ]
    assert not any(elsewhere.iterdir())
