"""Env policy: pip and conda-lock locks, strict/warn/ignore, --force, manifest comparison."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import ROOT, SMOKE

from rigor.errors import EnvMismatchError
from rigor.manifest.env import (
    check_lock,
    check_manifest_env,
    compare,
    installed_packages,
    read_lock,
)

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture
def bad_lock(tmp_path: Path) -> Path:
    """A pip lock that pins numpy to a version that is not installed, plus one correct pin."""
    numpy = installed_packages()["numpy"]
    path = tmp_path / "bad.lock"
    path.write_text(
        f"# comment\nnumpy==0.0.1\npyyaml=={installed_packages()['pyyaml']}\n"
        "-e .\nzzz-absent==1.0\n"
    )
    assert numpy != "0.0.1"
    return path


def test_installed_packages_match_the_full_metadata_parse() -> None:
    """The header-only scan gives what importlib's e-mail parse of every METADATA gives."""
    from importlib import metadata

    from rigor.manifest.env import normalize

    reference = {}
    for dist in metadata.distributions():
        name = dist.metadata["Name"]
        if name:
            reference[normalize(name)] = dist.version
    assert installed_packages() == reference and len(reference) > 50


def test_project_lock_matches_this_environment() -> None:
    lock = read_lock(ROOT / "locks" / "requirements.lock")
    assert (
        lock.kind == "pip"
        and lock.pins["torch"] == "2.14.1"
        and lock.pins["torchvision"] == "0.29.2"
    )
    assert compare(lock.pins, installed_packages()) == []


def test_pip_lock_mismatches_are_listed(bad_lock: Path) -> None:
    lock = read_lock(bad_lock)
    assert set(lock.pins) == {"numpy", "pyyaml", "zzz-absent"}
    mismatches = compare(lock.pins, installed_packages())
    assert [(m.name, m.locked) for m in mismatches] == [("numpy", "0.0.1"), ("zzz-absent", "1.0")]
    assert mismatches[1].installed is None


def test_local_version_labels_compare_equal() -> None:
    assert compare({"torch": "2.14.1"}, {"torch": "2.14.1+cu130"}) == []


def test_conda_lock_fixture() -> None:
    lock = read_lock(FIXTURES / "conda-lock.yml")
    assert lock.kind == "conda-lock"
    assert lock.pins["numpy"] == "0.0.2" and "libzlib" in lock.pins and "osxonly" not in lock.pins
    names = [m.name for m in compare(lock.pins, installed_packages(), lock.optional)]
    # numpy (conda, installed, wrong version) and a pip-managed absent package are reported;
    # a conda C library with no Python distribution is not.
    assert names == ["numpy", "pip-only-absent"]


def test_strict_fails_with_remediation_unless_forced(bad_lock: Path) -> None:
    with pytest.raises(EnvMismatchError) as info:
        check_lock(str(bad_lock), "strict", force=False)
    message = str(info.value)
    assert (
        "numpy: locked 0.0.1, installed" in message
        and "make setup" in message
        and "--force" in message
    )
    lock, record = check_lock(str(bad_lock), "strict", force=True)
    assert lock is not None and record["forced"] is True
    assert [m["name"] for m in record["mismatches"]] == ["numpy", "zzz-absent"]


def test_warn_prints_and_records(bad_lock: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, record = check_lock(str(bad_lock), "warn", force=False)
    assert "warning: 2 package(s) differ" in capsys.readouterr().err
    assert record["policy"] == "warn" and len(record["mismatches"]) == 2


def test_ignore_skips_the_comparison(bad_lock: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, record = check_lock(str(bad_lock), "ignore", force=False)
    assert record["mismatches"] == [] and capsys.readouterr().err == ""


def test_manifest_environment_comparison(smoke_manifest: Path) -> None:
    import json

    manifest = json.loads(smoke_manifest.read_text())
    assert check_manifest_env(manifest, "strict", False)["mismatches"] == []
    manifest["environment"]["packages"]["numpy"] = "0.0.1"
    with pytest.raises(EnvMismatchError, match=f"environment of run {manifest['run_id']}"):
        check_manifest_env(manifest, "strict", False)
    assert check_manifest_env(manifest, "strict", True)["mismatches"][0]["name"] == "numpy"


def test_train_strict_exits_4_and_writes_nothing(
    bad_lock: Path,
    tmp_path: Path,
    run_script: Callable[..., int],
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "out"
    args = [
        "--config",
        str(SMOKE),
        "--set",
        f"run.output_root={out}",
        "--set",
        f"env.lockfile={bad_lock}",
    ]
    assert run_script("train", *args, "--env-policy", "strict") == 4
    assert "make setup" in capsys.readouterr().err
    assert not out.exists()


def test_train_strict_forced_records_mismatches(
    bad_lock: Path, tmp_path: Path, run_script: Callable[..., int]
) -> None:
    import json

    out = tmp_path / "out"
    args = [
        "--config",
        str(SMOKE),
        "--set",
        f"run.output_root={out}",
        "--set",
        f"env.lockfile={bad_lock}",
        "--set",
        "training.epochs=1",
        "--set",
        "scheduler.warmup_epochs=0",
    ]
    assert run_script("train", *args, "--env-policy", "strict", "--force") == 0
    manifest = json.loads(next(out.glob("runs/*/manifest.json")).read_text())
    assert manifest["environment"]["forced"] is True
    assert {m["name"] for m in manifest["environment"]["mismatches"]} == {"numpy", "zzz-absent"}
    assert manifest["env_lock"]["name"] == str(bad_lock)
