"""Training policy: losses, parameter groups, accumulation, OOM fallback, EMA, early stopping,
top-k checkpoints, checkpoint errors, statistics and TensorBoard logs."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import SMOKE
from torch import nn

from rigor.config import load_config
from rigor.data.dataset import Batch
from rigor.data.registry import TaskSpec
from rigor.errors import ArtifactError, ConfigError, UsageError
from rigor.models.registry import RigorModel, register_backbone
from rigor.runs.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from rigor.training.loop import OutOfMemoryFloor, Stepper, task_loss
from rigor.training.optim import Precision, build_scheduler, param_groups
from rigor.training.regularizers import EMA, EarlyStopping
from rigor.training.run import train

CLS = TaskSpec("digit", "classification", 3)


def smoke(tmp_path: Path, *sets: str) -> Path:
    resolved = load_config(SMOKE, sets=[f"run.output_root={tmp_path}", *sets], environ={})
    return train(resolved, env_policy="ignore")


def test_losses_on_known_inputs() -> None:
    logits = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]])
    assert task_loss(
        logits, torch.tensor([0, 0]), TaskSpec("t", "classification", 2)
    ).item() == pytest.approx((math.log(2) + math.log(4 / 3)) / 2)
    reg = TaskSpec("r", "regression")
    assert task_loss(
        torch.tensor([1.0, 3.0]), torch.tensor([0.0, 0.0]), reg
    ).item() == pytest.approx(5.0)


def linear_model() -> RigorModel:
    torch.manual_seed(0)
    backbone = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.LayerNorm(8))
    return RigorModel(backbone, nn.ModuleDict({"digit": nn.Linear(8, 3)}), 8, "linear")


def test_param_groups_split_backbone_heads_and_decay() -> None:
    groups = {
        g["name"]: g
        for g in param_groups(linear_model(), lr=0.1, backbone_scale=0.5, weight_decay=0.01)
    }
    assert set(groups) == {"backbone/decay", "backbone/no_decay", "heads/decay", "heads/no_decay"}
    assert groups["backbone/decay"]["lr"] == 0.05 and groups["heads/decay"]["lr"] == 0.1
    assert (
        groups["heads/no_decay"]["weight_decay"] == 0.0
        and groups["backbone/decay"]["weight_decay"] == 0.01
    )
    assert [p.shape for p in groups["backbone/no_decay"]["params"]] == [
        (8,),
        (8,),
        (8,),
    ]  # bias, LN w, LN b


def grads_after_step(batches: list[Batch], micro: int) -> dict[str, torch.Tensor]:
    model = linear_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    stepper = Stepper(
        model=model,
        optimizer=opt,
        scheduler=build_scheduler(opt, load_config(SMOKE, environ={}).config.scheduler, 1, 1),
        precision=Precision("fp32", torch.device("cpu")),
        tasks={"digit": CLS},
        grad_clip=None,
        micro=micro,
        floor=1,
        device=torch.device("cpu"),
    )
    stepper.step(batches, 0)
    return {name: p.grad.clone() for name, p in model.named_parameters()}


def test_accumulation_and_micro_batches_give_the_full_batch_gradient() -> None:
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(12, 1, 4, 4, generator=gen), torch.randint(0, 3, (12,), generator=gen)
    whole = grads_after_step([Batch(x, {"digit": y}, torch.arange(12), 12)], micro=12)
    split = [
        Batch(x[:8], {"digit": y[:8]}, torch.arange(8), 8),
        Batch(x[8:], {"digit": y[8:]}, torch.arange(8, 12), 4),
    ]
    for micro in (12, 3, 2):
        got = grads_after_step(split, micro=micro)
        assert all(torch.allclose(got[k], whole[k], atol=1e-6) for k in whole), micro


class OOMProbe(nn.Module):
    """Raises CUDA's out-of-memory error for batches above ``limit``, like a too-large batch."""

    limit = 8

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(64, 16))

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        if inputs.shape[0] > self.limit:
            raise torch.OutOfMemoryError(f"CUDA out of memory (probe: batch {inputs.shape[0]})")
        return self.body(inputs)  # type: ignore[no-any-return]


@register_backbone("oom_probe")
def _oom_probe(cfg, shape):  # type: ignore[no-untyped-def]
    return OOMProbe(), 16


def test_oom_halves_the_batch_keeps_the_effective_batch_and_records_it(tmp_path: Path) -> None:
    manifest = json.loads(
        smoke(tmp_path, "model.backbone=oom_probe", "training.min_batch_size=4").read_text()
    )
    summary = manifest["stages"][0]["summary"]
    assert summary["oom_fallback"]["events"][:2] == [
        {"step": 0, "from": 32, "to": 16},
        {"step": 0, "from": 16, "to": 8},
    ]
    assert (
        len(summary["oom_fallback"]["events"]) == 2
        and summary["oom_fallback"]["final_micro_batch"] == 8
    )
    assert summary["steps"] == 10  # every optimizer step still happened, on the full batch of 32


def test_oom_below_the_floor_fails_clearly(tmp_path: Path) -> None:
    with pytest.raises(OutOfMemoryFloor, match="below training.min_batch_size=16"):
        smoke(tmp_path, "model.backbone=oom_probe", "training.min_batch_size=16")
    assert not list(tmp_path.glob("runs/*/manifest.json"))


def test_ema_is_the_moving_average() -> None:
    model = nn.Linear(2, 1)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema = EMA(model, decay=0.75)
    with torch.no_grad():
        model.weight.fill_(5.0)
    ema.update(model)
    assert torch.allclose(ema.model.weight, torch.full((1, 2), 2.0))  # 0.75 * 1 + 0.25 * 5


def test_early_stopping_counts_patience() -> None:
    stop = EarlyStopping("min", patience=2, min_delta=0.1)
    assert [stop.update(v) for v in (1.0, 0.95, 0.5, 0.45)] == [True, False, True, False]
    assert not stop.should_stop
    stop.update(0.44)
    assert stop.should_stop and stop.best_value == 0.5


def test_training_stops_early_and_says_so(tmp_path: Path) -> None:
    manifest = json.loads(
        smoke(
            tmp_path, "training.epochs=5", "training.patience=1", "training.min_delta=1.0"
        ).read_text()
    )
    summary = manifest["stages"][0]["summary"]
    assert (
        summary["stopped_early"] is True
        and summary["epochs_run"] == 2
        and summary["best_epoch"] == 0
    )


def test_keep_top_k_keeps_the_k_best_epochs(tmp_path: Path) -> None:
    path = smoke(
        tmp_path,
        "training.epochs=4",
        "training.keep_top_k=2",
        "training.monitor=val_select/loss",
        "training.monitor_mode=min",
    )
    with open(path.parent / "logs" / "epochs.csv") as handle:
        losses = {int(r["epoch"]): float(r["loss/val_select"]) for r in csv.DictReader(handle)}
    best_two = sorted(losses, key=losses.get)[:2]  # type: ignore[arg-type]
    kept = sorted(p.name for p in (path.parent / "checkpoints" / "top").iterdir())
    assert kept == sorted(f"epoch={e:04d}.pt" for e in best_two)
    manifest = json.loads(path.read_text())
    assert {f"checkpoints/top/{k}" for k in kept} <= set(manifest["checkpoints"])


def test_checkpoint_errors(tmp_path: Path, smoke_manifest: Path) -> None:
    best = smoke_manifest.parent / "checkpoints" / "best.pt"
    state = load_checkpoint(best)
    with pytest.raises(ArtifactError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "none.pt")
    partial = {k: v for k, v in state.items() if k not in ("rng", "scaler")}
    save_checkpoint(tmp_path / "partial.pt", partial)
    with pytest.raises(ArtifactError, match="lacks key\\(s\\): scaler, rng"):
        load_checkpoint(tmp_path / "partial.pt")
    with pytest.raises(UsageError, match="pass --force"):
        load_checkpoint(best, config_hash="0" * 64)
    assert load_checkpoint(best, config_hash="0" * 64, force=True)["step"] == state["step"]
    torch.save({"model": EarlyStopping("max", None, 0.0)}, tmp_path / "pickled.pt")
    with pytest.raises(ArtifactError, match="cannot be read safely"):
        load_checkpoint(tmp_path / "pickled.pt")


def test_rng_state_round_trips() -> None:
    import random

    state = rng_state()
    first = (random.random(), np.random.rand(), torch.rand(1).item())
    set_rng_state(state)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == first


def test_statistics_recorded_train_split_or_preset(tmp_path: Path, smoke_manifest: Path) -> None:
    from sklearn.datasets import load_digits

    run = smoke_manifest.parent
    manifest = json.loads(smoke_manifest.read_text())
    splits = json.loads((run / "splits.json").read_text())["splits"]["train"]
    images = load_digits().images / 16.0
    train_pixels = images[[int(i.split("-")[1]) for i in splits]]
    assert manifest["transforms"]["mean"] == pytest.approx([train_pixels.mean()], abs=1e-6)
    assert manifest["transforms"]["std"] == pytest.approx([train_pixels.std(ddof=1)], abs=1e-6)
    with pytest.raises(ConfigError, match="no preset statistics"):
        smoke(tmp_path, "data.transforms.stats=preset")


def test_tensorboard_has_the_scalars(smoke_manifest: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(smoke_manifest.parent / "logs" / "tb")).Reload()
    tags = set(events.Tags()["scalars"])
    assert {
        "loss/train",
        "loss/digit/train",
        "lr",
        "grad_norm",
        "samples_per_s",
        "acc/val_select",
    } <= tags
    assert [e.step for e in events.Scalars("acc/val_select")] == [5, 10]


def test_a_resumed_runs_tensorboard_drops_the_killed_runs_later_steps(tmp_path: Path) -> None:
    """Killed after step 5's checkpoint, the run logged steps up to 8; the resumed tracker
    logs from step 6 again, and TensorBoard shows each step once, the resumed run's value."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from rigor.config.models import LoggingConfig, MlflowConfig
    from rigor.tracking import Tracker

    cfg = LoggingConfig(
        log_every_n_steps=1,
        tensorboard=True,
        progress="never",
        mlflow=MlflowConfig(tracking_uri=None, experiment=None),
    )
    first = Tracker(tmp_path, cfg)
    for step in range(1, 9):
        first.log_step(step, {"loss/train": float(step), "lr": float("nan")})
    first.close()
    resumed = Tracker(tmp_path, cfg, start_step=5)
    for step in range(6, 10):
        resumed.log_step(step, {"loss/train": 10.0 * step})
    resumed.close()
    events = EventAccumulator(str(tmp_path / "logs" / "tb")).Reload()
    assert "lr" not in events.Tags()["scalars"]  # NaN is not written
    seen = [(e.step, e.value) for e in events.Scalars("loss/train")]
    assert seen == [(1, 1.0), (2, 2.0), (3, 3.0), (4, 4.0), (5, 5.0)] + [
        (step, 10.0 * step) for step in range(6, 10)
    ]


def test_epochs_csv_appends_rows_and_rewrites_on_replay_or_new_columns(tmp_path: Path) -> None:
    """Rows that continue the file are appended; the file is always what a rewrite of every
    row would give (a resumed run's replayed epoch replaces the old row, a new column
    rewrites the header)."""
    from rigor.config.models import LoggingConfig, MlflowConfig
    from rigor.tracking import Tracker

    cfg = LoggingConfig(
        log_every_n_steps=1,
        tensorboard=False,
        progress="never",
        mlflow=MlflowConfig(tracking_uri=None, experiment=None),
    )
    path = tmp_path / "logs" / "epochs.csv"
    tracker = Tracker(tmp_path, cfg)
    tracker.log_epoch(0, 5, {"loss/train": 0.5, "acc/val_select": 0.25})
    first = path.stat().st_ino
    tracker.log_epoch(1, 10, {"loss/train": 0.25, "acc/val_select": 0.5})
    assert path.stat().st_ino == first  # appended in place, not replaced
    assert path.read_bytes() == (
        b"epoch,step,loss/train,acc/val_select\r\n0,5,0.5,0.25\r\n1,10,0.25,0.5\r\n"
    )
    resumed = Tracker(tmp_path, cfg, start_step=5)  # killed after epoch 0's checkpoint
    resumed.log_epoch(1, 10, {"loss/train": 0.375, "acc/val_select": 0.75})
    assert path.read_bytes() == (
        b"epoch,step,loss/train,acc/val_select\r\n0,5,0.5,0.25\r\n1,10,0.375,0.75\r\n"
    )
    resumed.log_epoch(2, 15, {"loss/train": 0.125, "acc/val_select": 1.0, "lr": 0.001})
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["epoch", "step", "loss/train", "acc/val_select", "lr"]
    assert [(r["epoch"], r["lr"]) for r in rows] == [("0", ""), ("1", ""), ("2", "0.001")]
    values = {"loss/train": 0.0625, "acc/val_select": 1.0, "lr": 0.0005}
    resumed.log_epoch(3, 20, values)  # appended: the file is now open for appending
    resumed.log_epoch(3, 20, values | {"lr": 0.0004})  # replayed: the file is replaced
    rewritten = path.stat().st_ino
    resumed.log_epoch(4, 25, values)
    resumed.close()
    assert path.stat().st_ino == rewritten  # appended to the new file, not the replaced one
    assert path.read_bytes().endswith(b"\r\n3,20,0.0625,1.0,0.0004\r\n4,25,0.0625,1.0,0.0005\r\n")


def test_a_resumed_tracker_drops_rows_a_crash_cut_off(tmp_path: Path) -> None:
    """A row cut off by a crash (no line end: the machine went down mid-write) is dropped
    when the run resumes, so the next row is not glued to it and the step log still parses;
    whole rows keep their bytes."""
    from rigor.config.models import LoggingConfig, MlflowConfig
    from rigor.tracking import Tracker

    logs = tmp_path / "logs"
    logs.mkdir()
    header = b"epoch,step,loss/train\r\n0,5,0.5\r\n"
    (logs / "epochs.csv").write_bytes(header + b"1,10,0.2")
    (logs / "steps.jsonl").write_bytes(b'{"step": 5, "loss/train": 0.5}\n{"step": 1')
    cfg = LoggingConfig(
        log_every_n_steps=1,
        tensorboard=False,
        progress="never",
        mlflow=MlflowConfig(tracking_uri=None, experiment=None),
    )
    tracker = Tracker(tmp_path, cfg, start_step=5)
    tracker.truncate_steps(5)
    tracker.log_step(6, {"loss/train": 0.25})
    tracker.log_epoch(1, 10, {"loss/train": 0.25})
    tracker.close()
    assert (logs / "epochs.csv").read_bytes() == header + b"1,10,0.25\r\n"
    steps = [json.loads(line) for line in (logs / "steps.jsonl").read_text().splitlines()]
    assert [row["step"] for row in steps] == [5, 6]


def test_epoch_rows_are_the_whole_rows_parsed_as_csv_parses_the_file(tmp_path: Path) -> None:
    """read_epoch_rows leaves out only a row without its line end; everything else is parsed
    as csv parses the file (a form feed or U+2028 inside a cell is not a line end)."""
    from rigor.tracking import read_epoch_rows

    path = tmp_path / "epochs.csv"
    path.write_text('epoch,note\r\n0,"a\x0cb\u2028c"\r\n1,0.', encoding="utf-8", newline="")
    assert read_epoch_rows(path) == [{"epoch": "0", "note": "a\x0cb\u2028c"}]


def test_tensorboard_restart_drops_the_killed_runs_later_steps(tmp_path: Path) -> None:
    """A resumed run's event file marks a restart at its first step: TensorBoard shows each
    step once, with the resumed run's values; a step's values share one event."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from rigor.config.models import LoggingConfig, MlflowConfig
    from rigor.tracking import Tracker

    cfg = LoggingConfig(
        log_every_n_steps=1,
        tensorboard=True,
        progress="never",
        mlflow=MlflowConfig(tracking_uri=None, experiment=None),
    )
    killed = Tracker(tmp_path, cfg)
    for step in range(1, 9):
        killed.log_step(step, {"loss/train": float(step), "lr": math.nan})
    killed.close()
    resumed = Tracker(tmp_path, cfg, start_step=4)
    for step in range(5, 11):
        resumed.log_step(step, {"loss/train": 100.0 + step, "grad_norm": 1.0})
    resumed.log_epoch(0, 10, {"acc/val_select": 0.5})
    events = EventAccumulator(str(tmp_path / "logs" / "tb")).Reload()
    loss = [(e.step, e.value) for e in events.Scalars("loss/train")]
    assert loss == [(s, float(s)) for s in range(1, 5)] + [(s, 100.0 + s) for s in range(5, 11)]
    assert "lr" not in events.Tags()["scalars"]  # NaN is left out
    assert [e.step for e in events.Scalars("grad_norm")] == list(range(5, 11))
    assert [(e.step, e.value) for e in events.Scalars("acc/val_select")] == [(10, 0.5)]
    resumed.close()


def test_a_mid_epoch_checkpoint_follows_every_tensorboard_row_before_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """TensorBoard is flushed once per epoch, and before each mid-epoch checkpoint: a kill
    right after one leaves the rows up to its step on disk, though the events in between
    are buffered (and their writes slowed down here)."""
    import time

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.summary.writer.record_writer import RecordWriter

    write = RecordWriter.write

    def slow(self, data):  # type: ignore[no-untyped-def]
        time.sleep(0.05)
        write(self, data)

    monkeypatch.setattr(RecordWriter, "write", slow)

    from rigor.manifest.rundir import create_run_dir
    from rigor.runs.checkpoint import load_checkpoint
    from rigor.training.prepare import prepare, write_run_inputs
    from rigor.training.session import Session

    sets = [
        f"run.output_root={tmp_path}",
        "training.checkpoint_every_n_steps=2",
        "logging.log_every_n_steps=1",
        "logging.tensorboard=true",
    ]
    resolved = load_config(SMOKE, sets=sets, environ={})
    prepared = prepare(resolved, "warn", False)
    _, run_dir = create_run_dir(tmp_path, resolved.config.run.name, resolved.hash)
    write_run_inputs(run_dir, prepared)
    session = Session(run_dir, prepared, None)
    session._train_epoch()  # no epoch end: only the mid-epoch checkpoints flushed
    saved = load_checkpoint(run_dir / "checkpoints" / "last.pt", resolved.hash)
    assert 2 <= saved["step"] < session.step
    events = EventAccumulator(str(run_dir / "logs" / "tb")).Reload()
    steps = [event.step for event in events.Scalars("loss/train")]
    assert steps[: saved["step"]] == list(range(1, saved["step"] + 1))
    session.flush()
    session.tracker.close()


def test_progress_bars_off_in_ci_and_pipes(monkeypatch: pytest.MonkeyPatch) -> None:
    from rigor.tracking import progress_enabled

    monkeypatch.setenv("CI", "true")
    assert progress_enabled("auto") is False and progress_enabled("always") is True
    assert progress_enabled("never") is False


def test_resume_drops_a_top_k_file_its_state_never_recorded(tmp_path: Path) -> None:
    """Killed between saving a top-k file and the next last.pt: the resumed run keeps k."""
    import shutil

    sets = ["training.epochs=3", "training.keep_top_k=2", "training.monitor=val_select/loss"]
    sets.append("training.monitor_mode=min")
    path = smoke(tmp_path / "a", *sets)
    run = tmp_path / "b" / "runs" / path.parent.name
    shutil.copytree(path.parent, run)
    (run / "manifest.json").unlink()  # as if killed just before the manifest
    stray = run / "checkpoints" / "top" / "epoch=0099.pt"
    shutil.copy(next((run / "checkpoints" / "top").iterdir()), stray)
    (run / "checkpoints" / ".last.pt.x1y2.tmp").write_bytes(b"half")  # a killed write
    overrides = [f"run.output_root={tmp_path / 'b'}", *sets]  # the same config hash
    resumed = train(
        load_config(SMOKE, sets=overrides, environ={}), env_policy="ignore", resume=str(run)
    )
    kept = sorted(p.name for p in (run / "checkpoints" / "top").iterdir())
    assert len(kept) == 2 and "epoch=0099.pt" not in kept
    manifest = json.loads(resumed.read_text())
    assert not any("0099" in c or c.endswith(".tmp") for c in manifest["checkpoints"])
    assert not (run / "checkpoints" / ".last.pt.x1y2.tmp").exists()


def test_only_checkpoints_a_manifest_may_record_are_hashed_while_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With every checkpoint large enough to be hashed on the way, an epoch that neither
    improves nor ends the run writes its last.pt unhashed (the next epoch replaces it); the
    new best and the final last.pt are hashed on the way, and the manifest's digests are the
    files' own."""
    from rigor.io import sha256_file
    from rigor.runs import checkpoint

    written: list[tuple[str, bool]] = []
    hashed, plain = checkpoint.atomic_write_hashed, checkpoint.atomic_write_with

    def spy(hashing: bool, write: Any) -> Any:
        def call(path: Path, *args: Any) -> Any:
            written.append((path.name, hashing))
            return write(path, *args)

        return call

    monkeypatch.setattr(checkpoint, "HASH_WHILE_WRITING", 0)
    monkeypatch.setattr(checkpoint, "atomic_write_hashed", spy(True, hashed))
    monkeypatch.setattr(checkpoint, "atomic_write_with", spy(False, plain))
    # Only epoch 0 improves (by more than 1.0 in accuracy: never again); no early stop.
    path = smoke(tmp_path, "training.epochs=4", "training.min_delta=1.0", "training.patience=9")
    assert written == [("best.pt", True), ("last.pt", False), ("last.pt", False), ("last.pt", True)]
    manifest = json.loads(path.read_text())
    for rel in ("checkpoints/best.pt", "checkpoints/last.pt"):
        assert manifest["sha256"][rel] == sha256_file(path.parent / rel)


def test_predictions_read_an_earlier_best_only_once_the_slow_writer_has_written_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only epoch 0 improves, so the predictions read best.pt back. A checkpoint is
    copied at the call and written later: on a slow disk, best.pt would still be queued
    when training ends if the next checkpoint did not wait for it (CI once failed here:
    "checkpoint not found"). The final metrics are the best epoch's."""
    import time

    from rigor.runs import checkpoint

    write = checkpoint.atomic_write_with

    def slow(path: Path, *args: Any) -> Any:
        time.sleep(0.4)
        return write(path, *args)

    monkeypatch.setattr(checkpoint, "atomic_write_with", slow)  # digits: never hashed
    path = smoke(tmp_path, "training.epochs=2", "training.min_delta=1.0", "training.patience=9")
    manifest = json.loads(path.read_text())
    assert manifest["stages"][0]["summary"]["best_epoch"] == 0
    with open(path.parent / "logs" / "epochs.csv") as handle:
        rows = {int(r["epoch"]): r for r in csv.DictReader(handle)}
    metrics = json.loads((path.parent / "metrics.json").read_text())["metrics"]
    assert metrics["loss/val_select"] == pytest.approx(float(rows[0]["loss/val_select"]))
    assert metrics["loss/val_select"] != pytest.approx(float(rows[1]["loss/val_select"]))
    assert torch.load(path.parent / "checkpoints" / "best.pt", weights_only=True)["epoch"] == 1


def test_an_epoch_line_reads_in_a_piped_log(
    tmp_path: Path, run_script, capsys: pytest.CaptureFixture[str]  # type: ignore[no-untyped-def]
) -> None:
    from rigor.tracking import epoch_line

    values = {"loss/train": 0.41234, "acc/val_select": 0.93333}
    assert epoch_line(2, 12, values, "acc/val_select", 1.8) == (
        "epoch 3/12: train loss 0.4123, acc/val_select 0.9333, 1.80 s, ETA 16 s"
    )
    assert epoch_line(0, 100, values, "acc/val_select", 2.0).endswith("ETA 3 min 18 s")
    flags = [
        "--config",
        str(SMOKE),
        "--env-policy",
        "ignore",
        "--set",
        f"run.output_root={tmp_path}",
    ]
    assert run_script("train", *flags, "--set", "logging.progress=never") == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("epoch ")]
    assert len(lines) == 2 and lines[0].startswith("epoch 1/2: train loss ")
    assert "acc/val_select" in lines[0] and lines[1].endswith("ETA 0 s")
