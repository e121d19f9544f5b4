"""Streaming data: lazy reads, the sharded cache, fingerprints, batch augmentation, bad
samples and dead workers."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SMOKE, short_run
from test_data_files import data_cfg, make_images

from rigor.data.build import build_dataset
from rigor.data.readers import BadSample


def folder_cfg(root: Path, *sets: str):  # type: ignore[no-untyped-def]
    return data_cfg(
        "data.name=imagefolder", f"data.root={root}", "data.tasks=[label]", "data.channels=3", *sets
    )


def test_fingerprint_reuses_digests_and_sees_a_changed_file(tmp_path: Path) -> None:
    paths = make_images(tmp_path / "imgs", {"cat": 4, "dog": 4})
    cfg = folder_cfg(tmp_path / "imgs", "data.cache=false")
    first = build_dataset(cfg, tmp_path / "cache").raw
    assert first.content_hash() and first.fingerprint_record["hashed"] == 8
    second = build_dataset(cfg, tmp_path / "cache").raw
    assert second.content_hash() == first.content_hash()
    assert second.fingerprint_record["hashed"] == 0 and second.fingerprint_record["reused"] == 8
    no_index = build_dataset(cfg, None).raw
    assert no_index.content_hash() == first.content_hash()  # the index only saves time
    # Same size, new content and a new mtime: re-hashed, and the fingerprint changes.
    size = paths[2].stat().st_size
    data = bytearray(paths[2].read_bytes())
    data[-20] ^= 0xFF
    paths[2].write_bytes(bytes(data))
    stat = paths[2].stat()
    os.utime(paths[2], ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert paths[2].stat().st_size == size
    third = build_dataset(cfg, tmp_path / "cache").raw
    assert third.content_hash() != first.content_hash()
    assert third.fingerprint_record["hashed"] == 1 and third.fingerprint_record["reused"] == 7


def test_cache_is_sharded_npy_and_ignores_an_interrupted_shard(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import rigor.data.cache as cache

    make_images(tmp_path / "imgs", {"cat": 5, "dog": 5})
    monkeypatch.setattr(cache, "SHARD_BYTES", 4 * 3 * 12 * 12)  # four images per shard
    cfg = folder_cfg(tmp_path / "imgs")
    dataset = build_dataset(cfg, tmp_path / "cache")
    assert "wrote 3 of 3 shards" in capsys.readouterr().err
    folder = next((tmp_path / "cache").glob("imagefolder-*"))
    shards = sorted(folder.glob("shard-*.npy"))
    assert [np.load(s, mmap_mode="r").shape for s in shards] == [(4, 3, 12, 12)] * 2 + [
        (2, 3, 12, 12)
    ]
    decoded = build_dataset(folder_cfg(tmp_path / "imgs", "data.cache=false"), None)
    assert all(torch.equal(dataset[r][1], decoded[r][1]) for r in range(10))
    # A fill killed mid-shard leaves only a temporary file: never read, rewritten, cleaned.
    shards[1].unlink()
    dead_pid = 2**22 + 12345
    (folder / f".shard-00001.npy.tmp.{dead_pid}").write_bytes(b"half a shard")
    again = build_dataset(cfg, tmp_path / "cache")
    assert "wrote 1 of 3 shards" in capsys.readouterr().err
    assert not list(folder.glob(".shard-*"))
    assert all(torch.equal(again[r][1], decoded[r][1]) for r in range(10))


def test_augmentation_is_seeded_per_step_and_only_for_training() -> None:
    from rigor.data.loader import augment_generator
    from rigor.data.transforms import build_pipeline

    cfg = data_cfg(
        "data.transforms.augment.random_resized_crop={scale: [0.3, 1.0], ratio: [0.75, 1.333]}",
        "data.transforms.augment.hflip=0.5",
        "data.transforms.augment.rot90=true",
        "data.transforms.augment.color_jitter={brightness: 0.3, contrast: 0.3, saturation: 0.3, "
        "hue: 0.1}",
        "data.transforms.augment.hed={sigma: 0.1, bias: 0.05}",
    ).transforms
    images = torch.randint(0, 256, (6, 3, 16, 16), dtype=torch.uint8)
    cpu = torch.device("cpu")
    train = build_pipeline(cfg, [0.5] * 3, [0.2] * 3, train=True)
    a = train(images, cpu, augment_generator(0, step=7))
    b = train(images, cpu, augment_generator(0, step=7))
    c = train(images, cpu, augment_generator(0, step=8))
    assert torch.equal(a, b) and not torch.equal(a, c)
    plain = train(images, cpu)  # no generator: no augmentation
    assert not torch.equal(a, plain)
    evaluation = build_pipeline(cfg, [0.5] * 3, [0.2] * 3)
    assert evaluation.augment is None
    assert torch.equal(evaluation(images, cpu, augment_generator(0, 7)), plain)
    assert torch.allclose(plain, (images.float() / 255 - 0.5) / 0.2, atol=1e-5)


def test_flips_and_stain_jitter_do_what_they_say() -> None:
    from rigor.data.augment import BatchAugment, hed_jitter

    cfg = data_cfg("data.transforms.augment.hflip=1.0").transforms.augment
    x = torch.rand((3, 3, 5, 7))
    assert torch.equal(BatchAugment(cfg)(x, torch.Generator()), x.flip(-1))
    tissue = torch.rand((2, 3, 8, 8)) * 0.8 + 0.1
    same = hed_jitter(tissue, torch.ones(2, 3), torch.zeros(2, 3))
    assert torch.allclose(same, tissue, atol=1e-4)  # RGB -> HED -> RGB is the identity
    darker = hed_jitter(tissue, torch.tensor([[1.5, 1.0, 1.0]] * 2), torch.zeros(2, 3))
    assert float(darker.mean()) < float(tissue.mean())  # more hematoxylin absorbs more light


def test_augmented_run_never_augments_eval_and_records_it(tmp_path: Path) -> None:
    from rigor.config import load_config
    from rigor.runs.restore import predict_split
    from rigor.stages import open_run
    from rigor.training.run import train

    sets = [
        *short_run(tmp_path),
        "data.transforms.augment.hflip=0.5",
        "data.transforms.augment.vflip=0.5",
        "data.transforms.augment.rot90=true",
    ]
    path = train(load_config(SMOKE, sets=sets, environ={}), env_policy="ignore")
    manifest = json.loads(path.read_text())
    assert manifest["transforms"]["augment"]["config"]["rot90"] is True
    stored = np.load(path.parent / "predictions" / "val_test.npz")
    context = open_run(path, [], "ignore", False)
    recomputed = predict_split(context, "val_test")  # the path of eval --recompute
    assert np.array_equal(recomputed["logits_digit"], stored["logits_digit"])


def test_rot90_on_non_square_inputs_is_a_config_error(
    run_script: Callable[..., int], capsys: pytest.CaptureFixture[str]
) -> None:
    code = run_script(
        "train",
        "--config",
        str(SMOKE),
        "--env-policy",
        "ignore",
        "--set",
        "data.transforms.image_size=[8, 10]",
        "--set",
        "data.transforms.augment.rot90=true",
    )
    assert code == 2
    assert "data.transforms.augment.rot90: inputs are 8x10" in capsys.readouterr().err


def broken_folder(root: Path) -> Path:
    make_images(root, {"cat": 30, "dog": 30})
    bad = root / "dog" / "007.png"
    bad.write_bytes(bad.read_bytes()[:40])  # truncated
    return bad


def train_args(tmp_path: Path, root: Path, *extra: str) -> list[str]:
    args = ["--config", str(SMOKE), "--env-policy", "ignore"]
    for value in (
        *short_run(tmp_path / "out"),
        "data.name=imagefolder",
        f"data.root={root}",
        "data.tasks=[label]",
        "data.cache=false",
        "data.num_workers=2",
        *extra,
    ):
        args += ["--set", value]
    return args


def test_bad_sample_in_a_worker_stops_with_the_file_and_exit_2(
    tmp_path: Path, run_script: Callable[..., int], capsys: pytest.CaptureFixture[str]
) -> None:
    bad = broken_folder(tmp_path / "imgs")
    assert run_script("train", *train_args(tmp_path, tmp_path / "imgs")) == 2
    err = capsys.readouterr().err
    assert f"file dog/007.png: unreadable image {bad}" in err
    assert "Traceback" not in err and "Caught" not in err
    assert not list((tmp_path / "out").glob("runs/*/manifest.json"))


def test_bad_sample_skip_counts_and_lists_it(
    tmp_path: Path, run_script: Callable[..., int]
) -> None:
    bad = broken_folder(tmp_path / "imgs")
    args = train_args(tmp_path, tmp_path / "imgs", "data.on_bad_sample=skip")
    assert run_script("train", *args) == 0
    manifest = json.loads(next((tmp_path / "out").glob("runs/*/manifest.json")).read_text())
    skipped = manifest["dataset"]["skipped"]
    assert [entry["id"] for entry in skipped] == ["dog/007.png"]
    assert skipped[0]["source"] == str(bad) and "unreadable image" in skipped[0]["error"]


class _Dying:
    """A reader whose worker process dies on one sample (as under the OOM killer)."""

    shape = (1, 2, 2)
    dtype = "float32"

    def __len__(self) -> int:
        return 8

    def load(self, index: int) -> np.ndarray:
        if index == 5:
            os.kill(os.getpid(), signal.SIGKILL)
        return np.zeros(self.shape, dtype=np.float32)


def test_a_dead_worker_is_reported_not_a_hang() -> None:
    from rigor.data.dataset import ImageDataset
    from rigor.data.loader import WorkerDied, make_loader
    from rigor.data.registry import RawData

    ids = [str(i) for i in range(8)]
    raw = RawData("dying", "1", {}, {}, ids, ids, _Dying(), fingerprint="0")
    loader = make_loader(ImageDataset(raw, raw.reader, []), range(8), batch_size=2, num_workers=1)
    with pytest.raises(WorkerDied, match="worker process died"):
        list(loader)


def test_bad_sample_message_survives_the_worker_boundary(tmp_path: Path) -> None:
    from rigor.data.loader import make_loader

    broken_folder(tmp_path / "imgs")
    dataset = build_dataset(folder_cfg(tmp_path / "imgs", "data.cache=false"), None)
    loader = make_loader(dataset, range(len(dataset)), batch_size=8, num_workers=2)
    with pytest.raises(BadSample) as caught:
        list(loader)
    assert str(caught.value).startswith("data.root") and "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("size", "resident"), [(None, 256 << 20), ([12, 12], 256 << 20), ([12, 12], 0)]
)
def test_in_memory_batches_are_one_gather_equal_to_sample_by_sample(  # type: ignore[no-untyped-def]
    size, resident, monkeypatch
) -> None:
    """digits in memory: a loader batch is one gather (no per-sample items) with the same
    values, dtype and strides as stacking samples. Resized, it is resized once up front
    (the same values as a resize per read); beyond the resident budget, per read."""
    from rigor.config import load_config
    from rigor.data import readers
    from rigor.data.dataset import Gathered
    from rigor.data.loader import make_loader

    monkeypatch.setattr(readers, "RESIDENT_BYTES", resident)
    sets = [] if size is None else [f"data.transforms.image_size={size}"]
    cfg = load_config(SMOKE, sets=sets, environ={}).config
    dataset = build_dataset(cfg.data, None)
    rows = [5, 900, 3, 3, 1700, 42]
    items = dataset.__getitems__(rows)
    assert isinstance(items[0], Gathered) == (resident > 0)
    if size is not None:
        monkeypatch.setattr(readers, "RESIDENT_BYTES", 0)
        per_read = build_dataset(cfg.data, None)
        assert per_read.reader.size == (12, 12) and dataset.input_shape == (1, 12, 12)
        assert all(np.array_equal(dataset.reader.load(r), per_read.reader.load(r)) for r in rows)
    gathered, single = dataset.collate(items), dataset.collate([dataset[r] for r in rows])
    assert torch.equal(gathered.input, single.input) and gathered.input.dtype == torch.float32
    assert gathered.input.stride() == single.input.stride()  # conv kernels depend on it
    assert torch.equal(gathered.index, torch.tensor(rows)) and gathered.drawn == len(rows)
    assert all(torch.equal(gathered.targets[t], single.targets[t]) for t in single.targets)
    batch = next(iter(make_loader(dataset, rows, batch_size=4, num_workers=0)))
    assert torch.equal(batch.input, single.input[:4])


def test_a_loader_without_workers_yields_what_dataloader_yields() -> None:
    """The in-process path (no DataLoader iterator) gives the same batches, in the same
    order, as DataLoader's own single-process iterator, for the seeded train sampler too."""
    from torch.utils.data import DataLoader

    from rigor.config import load_config
    from rigor.data.loader import SafeLoader, make_loader
    from rigor.training.seeding import EpochSampler

    cfg = load_config(SMOKE, environ={}).config
    dataset = build_dataset(cfg.data, None)
    rows = list(range(0, 300, 3))
    sampler = EpochSampler(len(rows), 7, 0, 1)
    sampler.set_epoch(2)
    loader = make_loader(dataset, rows, batch_size=16, num_workers=0, sampler=sampler)
    assert isinstance(loader, SafeLoader)
    ours, theirs = list(loader), list(DataLoader.__iter__(loader))
    assert len(ours) == len(theirs) == 7
    for a, b in zip(ours, theirs, strict=True):
        assert torch.equal(a.index, b.index) and a.drawn == b.drawn
        assert torch.equal(a.input, b.input) and a.input.stride() == b.input.stride()
        assert all(torch.equal(a.targets[t], b.targets[t]) for t in a.targets)
    assert sorted(torch.cat([a.index for a in ours]).tolist()) == sorted(rows)
    assert torch.cat([a.index for a in ours]).tolist() != rows  # shuffled by the sampler


@pytest.mark.parametrize("mode", ["min", "max"])
def test_predictions_are_the_best_checkpoints_in_memory_or_read_back(
    tmp_path: Path, mode: str
) -> None:
    """The last epoch best (loss falling, mode min): predictions come from the weights in
    memory while best.pt is written; an earlier best (mode max): best.pt is read back.
    Either way they equal a fresh model loaded from best.pt (eval --recompute's path)."""
    from rigor.config import load_config
    from rigor.runs.restore import predict_split
    from rigor.stages import open_run
    from rigor.training.run import train

    sets = [
        *short_run(tmp_path),
        "training.monitor=val_select/loss",
        f"training.monitor_mode={mode}",
    ]
    path = train(load_config(SMOKE, sets=sets, environ={}), env_policy="ignore")
    summary = json.loads((path.parent / "metrics.json").read_text())["training"]
    assert summary["best_epoch"] == (1 if mode == "min" else 0)
    context = open_run(path, [], "ignore", False)
    for split in ("val_select", "val_test"):
        stored = np.load(path.parent / "predictions" / f"{split}.npz")
        assert np.array_equal(predict_split(context, split)["logits_digit"], stored["logits_digit"])


def _flip_byte(path: Path) -> None:
    """Flip one pixel byte in place and put the old mtime back (a silent corruption)."""
    info = path.stat()
    with open(path, "r+b") as handle:
        handle.seek(-3, 2)
        value = handle.read(1)
        handle.seek(-3, 2)
        handle.write(bytes([value[0] ^ 0xFF]))
    os.utime(path, ns=(info.st_atime_ns, info.st_mtime_ns))


def _wrong_header(path: Path) -> None:
    data = np.load(path)
    np.save(path, data.reshape(len(data), data.shape[1], -1))  # same bytes, another shape


DAMAGE: dict[str, Callable[[Path], None]] = {
    "flipped_bytes": _flip_byte,
    "truncated": lambda path: os.truncate(path, path.stat().st_size - 100),
    "zero_bytes": lambda path: path.write_bytes(b""),
    "wrong_shape": _wrong_header,
    "broken_side_file": lambda path: path.with_suffix(".json").write_text('{"rows": 4'),
    "side_file_gone": lambda path: path.with_suffix(".json").unlink(),
    "side_file_overflow": lambda path: path.with_suffix(".json").write_text('{"rows": 1e999}'),
}


@pytest.mark.parametrize("damage", DAMAGE, ids=list(DAMAGE))
def test_a_damaged_shard_is_rebuilt_never_read(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    damage: str,
) -> None:
    import rigor.data.cache as cache

    make_images(tmp_path / "imgs", {"cat": 5, "dog": 5})
    monkeypatch.setattr(cache, "SHARD_BYTES", 4 * 3 * 12 * 12)  # four images per shard
    cfg = folder_cfg(tmp_path / "imgs")
    build_dataset(cfg, tmp_path / "cache")
    folder = next((tmp_path / "cache").glob("imagefolder-*"))
    DAMAGE[damage](folder / "shard-00001.npy")
    capsys.readouterr()
    again = build_dataset(cfg, tmp_path / "cache")
    err = capsys.readouterr().err
    assert "shard 00001" in err and "rebuilding it" in err and "wrote 1 of 3 shards" in err
    decoded = build_dataset(folder_cfg(tmp_path / "imgs", "data.cache=false"), None)
    assert all(torch.equal(again[r][1], decoded[r][1]) for r in range(10))
    build_dataset(cfg, tmp_path / "cache")
    assert "preprocessing cache hit" in capsys.readouterr().err  # the rebuilt shard holds


def test_a_shard_that_cannot_be_rebuilt_is_exit_2_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import rigor.data.cache as cache
    from rigor.errors import UsageError

    make_images(tmp_path / "imgs", {"cat": 5, "dog": 5})
    monkeypatch.setattr(cache, "SHARD_BYTES", 4 * 3 * 12 * 12)
    cfg = folder_cfg(tmp_path / "imgs")
    build_dataset(cfg, tmp_path / "cache")
    folder = next((tmp_path / "cache").glob("imagefolder-*"))
    (folder / "shard-00002.npy").unlink()
    (folder / "shard-00002.npy").mkdir()  # something in the way that no rename replaces
    with pytest.raises(UsageError, match=r"cannot rebuild shard 00002 .*data.cache: false"):
        build_dataset(cfg, tmp_path / "cache")


def test_train_statistics_are_stored_with_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import rigor.training.prepare as prepare_module
    from rigor.config import load_config

    make_images(tmp_path / "imgs", {"cat": 8, "dog": 8})
    sets = [
        "data.name=imagefolder",
        f"data.root={tmp_path / 'imgs'}",
        "data.tasks=[label]",
        "data.channels=3",
        f"run.output_root={tmp_path / 'out'}",
    ]
    resolved = load_config(SMOKE, sets=sets, environ={})
    first = prepare_module.prepare(resolved, "ignore", False)
    (stats,) = (tmp_path / "out" / "cache").glob("imagefolder-*/stats-*.json")
    assert json.loads(stats.read_text())["mean"] == first.transforms["mean"]

    def refuse(*args: object) -> None:
        raise AssertionError("a cache hit must not pass over train again")

    monkeypatch.setattr(prepare_module, "channel_stats", refuse)
    second = prepare_module.prepare(resolved, "ignore", False)
    assert second.transforms["mean"] == first.transforms["mean"]
    assert second.transforms["std"] == first.transforms["std"]


def test_an_edit_that_restores_the_mtime_is_rehashed(tmp_path: Path) -> None:
    paths = make_images(tmp_path / "imgs", {"cat": 3, "dog": 3})
    cfg = folder_cfg(tmp_path / "imgs", "data.cache=false")
    first = build_dataset(cfg, tmp_path / "cache").raw.content_hash()
    info = paths[1].stat()
    data = bytearray(paths[1].read_bytes())
    data[-20] ^= 0xFF
    paths[1].write_bytes(bytes(data))
    os.utime(paths[1], ns=(info.st_atime_ns, info.st_mtime_ns))  # same size, same mtime
    again = build_dataset(cfg, tmp_path / "cache").raw
    assert again.content_hash() != first  # the ctime moved: re-hashed
    assert again.fingerprint_record["hashed"] == 1


@pytest.mark.parametrize("cache", ["true", "false"])
def test_data_changed_during_training_is_exit_2_and_no_manifest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, run_script, capsys, cache: str  # type: ignore[no-untyped-def]
) -> None:
    import rigor.training.run as run_module

    paths = make_images(tmp_path / "imgs", {"cat": 10, "dog": 10})
    original = run_module.Session.run

    def run_then_edit(self):  # type: ignore[no-untyped-def]
        summary = original(self)
        data = bytearray(paths[3].read_bytes())
        data[-20] ^= 0xFF  # another process rewrites an image while the run is on
        paths[3].write_bytes(bytes(data))
        return summary

    monkeypatch.setattr(run_module.Session, "run", run_then_edit)
    out = tmp_path / "out"
    sets = ["data.name=imagefolder", f"data.root={tmp_path / 'imgs'}", "data.tasks=[label]"]
    sets += ["data.channels=3", f"data.cache={cache}", *short_run(out)]
    flags = [item for s in sets for item in ("--set", s)]
    assert run_script("train", "--config", str(SMOKE), *flags, "--env-policy", "ignore") == 2
    err = capsys.readouterr().err
    assert "1 file(s) changed while the run was using them" in err and paths[3].name in err
    assert not list(out.glob("runs/*/manifest.json"))


class _Stopping(_Dying):
    """A reader whose worker process stops itself (SIGSTOP) on one sample: alive, silent."""

    def load(self, index: int) -> np.ndarray:
        if index == 3:
            os.kill(os.getpid(), signal.SIGSTOP)
        return np.zeros(self.shape, dtype=np.float32)


def test_a_stopped_worker_times_out_with_a_message_instead_of_hanging() -> None:
    from rigor.data.dataset import ImageDataset
    from rigor.data.loader import WorkerStalled, make_loader
    from rigor.data.registry import RawData

    ids = [str(i) for i in range(8)]
    raw = RawData("stopping", "1", {}, {}, ids, ids, _Stopping(), fingerprint="0")
    dataset = ImageDataset(raw, raw.reader, [])
    loader = make_loader(dataset, range(8), batch_size=2, num_workers=1, timeout_s=2)
    with pytest.raises(WorkerStalled, match=r"no batch from the 1 DataLoader worker\(s\) for 2 s"):
        list(loader)


def test_a_worker_death_reported_outside_the_loader_gets_the_same_explanation(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from rigor.cli import run_main

    def main(argv: object) -> int:  # PyTorch's SIGCHLD handler raises wherever the loop is
        raise RuntimeError("DataLoader worker (pid(s) 4242) exited unexpectedly")

    assert run_main(main, []) == 1
    err = capsys.readouterr().err
    assert "look for an out-of-memory kill" in err and "unexpected RuntimeError" not in err
