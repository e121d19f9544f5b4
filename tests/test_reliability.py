"""Nothing lost, nothing joined, nothing left behind: manifest updates under a lock, one
writer per run folder, and what killed atomic writes leave."""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rigor.errors import ArtifactError, RunBusyError
from rigor.io import atomic_write_text
from rigor.manifest import append_stage, load_manifest, verify_manifest
from rigor.manifest.rundir import RunLock


def _append(args: tuple[str, int]) -> None:
    manifest_path, index = Path(args[0]), args[1]
    manifest = json.loads(manifest_path.read_text())
    note = manifest_path.parent / "notes" / f"n{index}.txt"
    note.parent.mkdir(exist_ok=True)
    note.write_text(str(index))
    stage = {**manifest["stages"][0], "name": f"note_{index}", "summary": {"i": index}}
    append_stage(manifest_path, stage, [f"notes/n{index}.txt"])


def test_parallel_stages_on_one_run_all_land(smoke_manifest: Path, tmp_path: Path) -> None:
    manifest_path = _copy_run(smoke_manifest, tmp_path)
    run = manifest_path.parent
    before = len(load_manifest(manifest_path)["stages"])
    with multiprocessing.get_context("fork").Pool(8) as pool:
        pool.map(_append, [(str(manifest_path), i) for i in range(48)], chunksize=1)
    manifest = load_manifest(manifest_path)
    names = [stage["name"] for stage in manifest["stages"][before:]]
    assert sorted(names) == sorted(f"note_{i}" for i in range(48))  # no record lost
    assert all(f"notes/n{i}.txt" in manifest["sha256"] for i in range(48))
    verify_manifest(manifest, run)


HOLD = """
import sys, time
from pathlib import Path
from rigor.manifest.rundir import RunLock
RunLock(Path(sys.argv[1])).acquire()
print("held", flush=True)
time.sleep(60)
"""


def test_a_live_writer_is_never_joined_and_a_dead_one_is_taken_over(tmp_path: Path) -> None:
    from rigor.training.resume import find_resume

    run = tmp_path / "runs" / "20260101T000000Z-exp-abcdef12"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.pt").write_bytes(b"x")
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(run)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        assert RunLock.is_held(run)
        assert find_resume("auto", tmp_path, "exp", "abcdef12" + "0" * 56) is None  # skipped
        with pytest.raises(RunBusyError, match=f"pid {holder.pid} on host"):
            RunLock(run).acquire()  # an explicit --resume of this folder: exit 4
        assert RunBusyError.exit_code == 4
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
    assert not RunLock.is_held(run)  # the kernel released it with the process
    found = find_resume("auto", tmp_path, "exp", "abcdef12" + "0" * 56)
    assert found == run / "checkpoints" / "last.pt"
    lock = RunLock(run)
    lock.acquire()
    assert RunLock.is_held(run)
    lock.release()


def test_temporaries_of_killed_writes_are_never_listed_and_are_cleaned(tmp_path: Path) -> None:
    from rigor.training.resume import remove_temporaries
    from rigor.training.run_record import _files

    checkpoints = tmp_path / "checkpoints"
    checkpoints.mkdir()
    (checkpoints / "best.pt").write_bytes(b"b")
    (checkpoints / "epoch_1.pt").write_bytes(b"e")
    (checkpoints / ".epoch_2.pt.k3j2.tmp").write_bytes(b"half")  # a write killed midway
    assert _files(tmp_path, "checkpoints") == ["checkpoints/best.pt", "checkpoints/epoch_1.pt"]
    assert remove_temporaries(tmp_path) == [checkpoints / ".epoch_2.pt.k3j2.tmp"]
    assert sorted(p.name for p in checkpoints.iterdir()) == ["best.pt", "epoch_1.pt"]


@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_atomic_writes_get_the_permissions_the_umask_gives(
    tmp_path: Path, mask: int, mode: int
) -> None:
    old = os.umask(mask)
    try:
        atomic_write_text(tmp_path / "f.txt", "x")
        with open(tmp_path / "plain.txt", "w") as handle:
            handle.write("x")
    finally:
        os.umask(old)
    assert (tmp_path / "f.txt").stat().st_mode & 0o777 == mode
    assert (tmp_path / "plain.txt").stat().st_mode & 0o777 == mode  # what open() gives


def test_a_lock_waits_for_its_holder(tmp_path: Path) -> None:
    """The manifest lock blocks a second updater until the first is done (then it goes on)."""
    from rigor.io import exclusive_lock

    log = tmp_path / "order.txt"  # written inside the locks: its order is the locks' order

    def note(line: str) -> None:
        with open(log, "a") as handle:
            handle.write(line + "\n")

    def hold() -> None:
        with exclusive_lock(tmp_path / ".m.lock"):
            note("first in")
            time.sleep(0.5)
            note("first out")

    child = multiprocessing.get_context("fork").Process(target=hold)
    child.start()
    deadline = time.monotonic() + 10
    while not (log.exists() and log.read_text()) and time.monotonic() < deadline:
        time.sleep(0.01)
    with exclusive_lock(tmp_path / ".m.lock"):
        note("second in")
    child.join()
    assert log.read_text().splitlines() == ["first in", "first out", "second in"]


@pytest.mark.parametrize(
    "content, message",
    [
        (b"\xff\xfe{}", "not UTF-8 text"),
        (b'{"metrics": {"acc": NaN}}', "NaN is not a JSON number"),
        (b'{"metrics": {"acc": -Infinity}}', "-Infinity is not a JSON number"),
        (b'{"metrics": ', "not valid JSON"),
    ],
)
def test_unreadable_or_non_finite_json_is_exit_3(
    tmp_path: Path, content: bytes, message: str
) -> None:
    from rigor.errors import ManifestError
    from rigor.io import read_json

    path = tmp_path / "policy.json"
    path.write_bytes(content)
    with pytest.raises(ManifestError, match=message) as caught:
        read_json(path)  # how policies, bundles and intervals are read
    assert caught.value.exit_code == 3 and str(path) in str(caught.value)
    if "JSON number" not in message:  # a manifest that is not UTF-8 or not JSON: exit 3
        with pytest.raises(ManifestError, match=message):
            load_manifest(path)
    else:  # an older manifest's NaN summary reads as null
        assert read_json(path, non_finite="null")["metrics"]["acc"] is None


def test_xai_overlay_names_are_distinct_for_distinct_ids() -> None:
    from rigor.xai.stage import _safe

    ids = ["a/b", "a?b", "a_b", "a b", "é", "e", "x" * 150, "x" * 151, "P01:tile-03.png"]
    names = [_safe(i) for i in ids]
    assert len(set(names)) == len(ids)
    assert _safe("a_b") == "a_b" and _safe("P01:tile-03.png").startswith("P01_tile-03.png~")
    assert all(len(n) <= 111 and "/" not in n for n in names)


@pytest.mark.parametrize(
    "setting, message",
    [
        ("optimizer.betas=[2, -1]", "optimizer.betas.0: Input should be less than 1"),
        ("model.channels=[0]", "model.channels.0: Input should be greater than or equal to 1"),
        ("data.transforms.image_size=[0, 0]", "data.transforms.image_size.0: Input should be"),
    ],
)
def test_settings_that_cannot_build_are_config_errors_before_any_folder(
    tmp_path: Path, run_script, capsys: pytest.CaptureFixture[str], setting: str, message: str
) -> None:
    from conftest import SMOKE

    args = ["--config", str(SMOKE), "--set", f"run.output_root={tmp_path}", "--set", setting]
    assert run_script("train", *args, "--env-policy", "ignore") == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_a_non_finite_target_is_exit_2_naming_the_sample(
    tmp_path: Path, run_script, capsys: pytest.CaptureFixture[str]
) -> None:
    import anndata
    import numpy as np
    from conftest import CONFIGS

    from rigor.data.hest.write import write_tiles_hest

    root = tmp_path / "hest"
    write_tiles_hest(root, 2, 4, 16)
    table = anndata.read_h5ad(root / "st" / "TILES-P01.h5ad")
    table.X = np.asarray(table.X)
    table.X[2, 0] = np.inf
    table.write_h5ad(root / "st" / "TILES-P01.h5ad")
    experiment = CONFIGS / "experiment" / "tiles_hest.yaml"
    sets = [f"data.root={root}", f"run.output_root={tmp_path / 'out'}", "data.cache=false"]
    args = [a for s in sets for a in ("--set", s)]
    assert run_script("train", "--config", str(experiment), *args, "--env-policy", "ignore") == 2
    err = capsys.readouterr().err
    assert "task 'EPCAM': non-finite target for TILES-P01:P01-tile02" in err
    assert not (tmp_path / "out" / "runs").exists()


def test_an_output_root_that_cannot_hold_runs_is_exit_2_naming_it(tmp_path: Path) -> None:
    from rigor.errors import UsageError
    from rigor.manifest.rundir import create_run_dir

    blocker = tmp_path / "results"
    blocker.write_text("a file where the output root should be")
    with pytest.raises(UsageError, match=f"run.output_root {blocker}: cannot create") as caught:
        create_run_dir(blocker, "exp", "0" * 64)
    assert caught.value.exit_code == 2


CHECK_NUMBA = """
import os
real = os.access
os.access = lambda p, m, *a, **k: (
    False if m == os.W_OK and str(p).endswith("metrics") else real(p, m, *a, **k)
)
import numba
from rigor.metrics import kernels_numba as _kernels
from rigor.metrics.classification import confusions
print(numba.config.CACHE_DIR)
"""


def test_a_read_only_install_caches_numba_kernels_in_the_user_cache(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}
    env["XDG_CACHE_HOME"] = str(tmp_path)
    out = subprocess.run(
        [sys.executable, "-c", CHECK_NUMBA], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == str(tmp_path / "rigor" / "numba")


def test_splits_that_cannot_honour_the_fractions_warn_with_what_they_achieved() -> None:
    from rigor.config.models import SplitFractions
    from rigor.data.splits import achieved_fractions, fraction_warning, make_splits

    fractions = SplitFractions(train=0.7, val_select=0.1, val_calib=0.1, val_test=0.1)
    even = make_splits([f"g{i}" for i in range(1000)], fractions, seed=0)
    assert fraction_warning(even, fractions) is None
    # six patients of 30 tiles among 120 single tiles: whole patients overfill val_select
    lumpy = [f"g{i}" for i in range(6) for _ in range(30)] + [f"s{i}" for i in range(120)]
    splits = make_splits(lumpy, fractions, seed=0)
    assert achieved_fractions(splits) == {
        "train": 0.7,
        "val_select": 0.1433,
        "val_calib": 0.0567,
        "val_test": 0.1,
    }
    warning = fraction_warning(splits, fractions)
    assert warning is not None
    assert "val_select 0.143 (asked 0.100), val_calib 0.057 (asked 0.100)" in warning
    assert "train" not in warning.split(":", 2)[2] and "val_test" not in warning


def test_a_completed_run_leaves_no_lock_and_is_never_taken_again(tmp_path: Path) -> None:
    from rigor.errors import UsageError

    run = tmp_path / "run"
    run.mkdir()
    lock = RunLock(run)
    lock.acquire()
    (run / "manifest.json").write_text("{}")  # the run finished
    lock.release(completed=True)
    assert not (run / ".run.lock").exists()
    with pytest.raises(UsageError, match="already completed"):  # a resumer that raced it
        RunLock(run).acquire()


def _copy_run(manifest: Path, tmp_path: Path) -> Path:
    """A private copy of the run of ``manifest``; returns the copy's manifest."""
    run = tmp_path / manifest.parent.name
    shutil.copytree(manifest.parent, run)
    return run / "manifest.json"


def test_an_edited_manifest_field_outside_the_hashed_files_is_caught(
    smoke_manifest: Path, tmp_path: Path, run_script, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest_path = _copy_run(smoke_manifest, tmp_path)
    assert run_script("manifest", "verify", str(manifest_path)) == 0
    manifest = json.loads(manifest_path.read_text())
    manifest["transforms"]["mean"] = [m + 0.1 for m in manifest["transforms"]["mean"]]
    manifest_path.write_text(json.dumps(manifest))  # still schema-valid; no file changed
    capsys.readouterr()
    assert run_script("manifest", "verify", str(manifest_path)) == 5
    assert "manifest.json: its fields changed since it was written" in capsys.readouterr().err
    flags = ["--from-manifest", str(manifest_path), "--env-policy", "ignore"]
    assert run_script("eval", *flags) == 5  # every stage reads through the same check


def test_a_removed_seal_is_exit_5_everywhere_and_never_resealed(
    smoke_manifest: Path, tmp_path: Path, run_script, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest_path = _copy_run(smoke_manifest, tmp_path)
    manifest = json.loads(manifest_path.read_text())
    assert manifest["manifest_version"] == "1.1" and "record_sha256" in manifest
    del manifest["record_sha256"]
    manifest["transforms"]["mean"] = [m + 0.1 for m in manifest["transforms"]["mean"]]
    manifest_path.write_text(json.dumps(manifest))
    tampered = manifest_path.read_bytes()
    capsys.readouterr()
    assert run_script("manifest", "verify", str(manifest_path)) == 5
    assert "record_sha256 is missing, but a version 1.1 record is always sealed" in (
        capsys.readouterr().err
    )
    flags = ["--from-manifest", str(manifest_path), "--env-policy", "ignore"]
    for stage in ("calibrate", "eval", "export", "xai"):
        assert run_script(stage, *flags) == 5, stage
    assert manifest_path.read_bytes() == tampered  # nobody sealed the edited fields
    # a pre-seal record (version "1") still opens, with a note, and stays unsealed
    manifest["manifest_version"] = "1"
    manifest["transforms"]["mean"] = [m - 0.1 for m in manifest["transforms"]["mean"]]
    manifest_path.write_text(json.dumps(manifest))
    assert run_script("manifest", "verify", str(manifest_path)) == 0
    assert "is a pre-seal record (version 1)" in capsys.readouterr().err
    assert run_script("calibrate", *flags, "--target-risk", "0.5", "--min-coverage", "0") == 0
    appended = json.loads(manifest_path.read_text())
    assert appended["manifest_version"] == "1" and "record_sha256" not in appended
    assert [stage["name"] for stage in appended["stages"]] == ["train", "calibrate"]


def test_a_sealed_record_appended_to_stays_sealed(smoke_manifest: Path, tmp_path: Path) -> None:
    manifest_path = _copy_run(smoke_manifest, tmp_path)
    run = manifest_path.parent
    stage = dict(load_manifest(manifest_path)["stages"][0], name="note")
    written = append_stage(manifest_path, stage, [])
    assert written["record_sha256"] and written["manifest_version"] == "1.1"
    verify_manifest(load_manifest(manifest_path), run)
    edited = json.loads(manifest_path.read_text())
    edited["run_id"] = edited["run_id"][:-1] + "0"
    manifest_path.write_text(json.dumps(edited))
    with pytest.raises(ArtifactError, match="its fields changed"):
        append_stage(manifest_path, stage, [])


def test_a_non_finite_loss_stops_the_run_at_once_with_exit_1(
    tmp_path: Path, run_script, capsys: pytest.CaptureFixture[str]
) -> None:
    import anndata
    import numpy as np
    from conftest import CONFIGS

    from rigor.data.hest.write import write_tiles_hest

    root = tmp_path / "hest"
    write_tiles_hest(root, 4, 4, 16)
    for sample in ("TILES-P00", "TILES-P01", "TILES-P02", "TILES-P03"):  # whoever trains
        table = anndata.read_h5ad(root / "st" / f"{sample}.h5ad")
        table.X = np.asarray(table.X)
        table.X[:, 0] = 1e30  # finite, but its squared error is not (float32)
        table.write_h5ad(root / "st" / f"{sample}.h5ad")
    experiment = CONFIGS / "experiment" / "tiles_hest.yaml"
    sets = [f"data.root={root}", f"run.output_root={tmp_path / 'out'}", "data.cache=false"]
    sets += ["data.hest.expression=raw", "logging.tensorboard=false"]
    sets += ["data.splits={train: 0.25, val_select: 0.25, val_calib: 0.25, val_test: 0.25}"]
    args = [a for s in sets for a in ("--set", s)]
    code = run_script("train", "--config", str(experiment), *args, "--env-policy", "ignore")
    err = capsys.readouterr().err
    assert code == 1, err[-2000:]
    assert "non-finite training loss" in err and "the batch held dataset rows" in err
    (run,) = (tmp_path / "out" / "runs").iterdir()
    assert not (run / "manifest.json").exists()  # nothing claims success


def test_a_nan_in_a_stage_summary_is_written_as_null_and_reads_back(
    smoke_manifest: Path, tmp_path: Path
) -> None:
    from rigor.manifest import write_manifest

    run = tmp_path / smoke_manifest.parent.name
    shutil.copytree(smoke_manifest.parent, run)
    manifest = load_manifest(run / "manifest.json")
    manifest["stages"][0]["summary"]["infeasible"] = float("nan")  # e.g. no Coverage@Risk
    manifest["stages"][0]["summary"]["unbounded"] = [1.0, float("inf")]
    write_manifest(run, manifest)
    again = load_manifest(run / "manifest.json")  # strict reader: would refuse NaN
    assert again["stages"][0]["summary"]["infeasible"] is None
    assert again["stages"][0]["summary"]["unbounded"] == [1.0, None]
    verify_manifest(again, run)


def test_a_forked_worker_does_not_keep_the_run_lock(tmp_path: Path) -> None:
    """DataLoader workers are forked while the trainer holds the lock; when the trainer dies
    first, the lock must go with it, not live on in a worker for the seconds it takes to
    notice (a resume would then open a new folder instead of continuing)."""
    from rigor.manifest.rundir import RunLock

    lock = RunLock(tmp_path)
    lock.acquire()
    worker = multiprocessing.get_context("fork").Process(target=time.sleep, args=(5,))
    worker.start()
    try:
        assert RunLock.is_held(tmp_path)
        lock.release()  # what the kernel does when the trainer is killed
        deadline = time.monotonic() + 2.0  # the worker lives 5 s: only its own fd could hold
        while RunLock.is_held(tmp_path) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not RunLock.is_held(tmp_path)
    finally:
        worker.kill()
        worker.join()
