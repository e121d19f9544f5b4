"""One training session: the loop state (epoch, step, sampler position, top-k, skipped
samples), its checkpointable state dict, and the epoch loop that logs and saves."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import torch

from rigor.data.dataset import Batch
from rigor.data.loader import augment_generator
from rigor.errors import UsageError
from rigor.runs.checkpoint import (
    BackgroundWriter,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from rigor.runs.device import peak_memory
from rigor.runs.predict import predict
from rigor.tracking import NullTracker, Tracker, epoch_line, monitor_to_key
from rigor.tracking.mirror import Mirror
from rigor.training.distributed import sum_over_ranks
from rigor.training.loop import Stepper, UncertaintyWeights, split_metrics
from rigor.training.prepare import Prepared, make_loader
from rigor.training.regularizers import EMA
from rigor.training.seeding import plan_epochs, start_epoch


class Session:
    """One training session: owns the loop state and writes logs and checkpoints."""

    def __init__(
        self,
        run_dir: Path,
        prepared: Prepared,
        state: dict[str, Any] | None,
        mirror: Mirror | None = None,
    ) -> None:
        cfg = prepared.resolved.config
        self.run_dir, self.prepared, self.cfg = run_dir, prepared, cfg
        self.epoch_started = time.perf_counter()  # reset as each epoch starts (run)
        self.train_loader = make_loader(prepared, prepared.splits["train"], train=True)
        self.select_loader = make_loader(prepared, prepared.splits["val_select"], train=False)
        model = prepared.model
        self.weighting = (
            UncertaintyWeights(prepared.dataset.tasks).to(prepared.device)
            if cfg.training.task_weighting == "uncertainty"
            else None
        )
        plan = plan_epochs(
            cfg,
            model=model,
            train_loader=self.train_loader,
            device=prepared.device,
            monitor_mode=cfg.training.monitor_mode,
            extra=self.weighting,
        )
        self.steps_per_epoch, self.optimizer = plan.steps_per_epoch, plan.optimizer
        self.scheduler, self.precision, self.early = plan.scheduler, plan.precision, plan.early
        self.ema = EMA(model, cfg.training.ema_decay) if cfg.training.ema_decay else None
        self.stepper = Stepper(
            model=model,
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            precision=self.precision,
            tasks=prepared.dataset.tasks,
            grad_clip=cfg.training.grad_clip,
            micro=cfg.training.batch_size,
            floor=cfg.training.min_batch_size,
            device=prepared.device,
            ema=self.ema,
            weighting=self.weighting,
            gate=cfg.model.gate if cfg.model.gate.task is not None else None,
            forward_model=self._ddp(model) if prepared.dist.enabled else None,
            world_size=prepared.dist.world_size,
        )
        self.monitor = monitor_to_key(cfg.training.monitor)
        self.epoch = self.position = self.epoch_step = self.step = 0
        self.best_epoch, self.stopped_early, self.samples = -1, False, 0
        self.top_k: list[dict[str, Any]] = []
        self.epoch_sums: dict[str, float] = {}  # sample-weighted train losses of this epoch
        self.skipped: dict[int, str] = {}  # unreadable samples left out (data.on_bad_sample)
        self.main = prepared.dist.main
        self.writer = BackgroundWriter()  # checkpoints, in order, off this thread
        self.config_hash = prepared.resolved.hash
        if state is not None:
            self._restore(state)
        self.first_epoch = self.epoch  # for the time per epoch of this session
        self.mirror = mirror or Mirror.off()  # the run's MLflow run (rank 0, when set)
        self.tracker: Tracker | NullTracker = (
            Tracker(run_dir, cfg.logging, start_step=self.step, mirror=self.mirror)
            if self.main
            else NullTracker()
        )
        self.tracker.truncate_steps(self.step)

    def flush(self) -> None:
        """Block until every checkpoint is on disk; raise a write's error."""
        self.writer.close()

    def finished(self) -> bool:
        """Whether no epoch is left to run: all were run, or training stopped early."""
        return self.epoch >= self.cfg.training.epochs or self.stopped_early

    def holds_best(self) -> bool:
        """Whether the weights in memory are best.pt's: the last epoch run was the best."""
        return self.best_epoch >= 0 and self.best_epoch == self.epoch - 1

    def _ddp(self, model: torch.nn.Module) -> torch.nn.Module:
        from torch.nn.parallel import DistributedDataParallel

        device = self.prepared.device
        ids = [device.index] if device.type == "cuda" else None
        # Some parameters never reach the loss (DINOv3's mask token outside MAE), so DDP
        # must look for unused ones each step.
        return DistributedDataParallel(model, device_ids=ids, find_unused_parameters=True)

    def _save(self, rel: str, state: dict[str, Any]) -> None:
        """A mid-epoch checkpoint, written here once every row logged before it is on disk
        (TensorBoard is flushed at each epoch's row, so here too)."""
        if self.main:
            self.tracker.flush()
            self.writer.wait()  # files appear in the order they were saved
            save_checkpoint(self.run_dir / rel, state, kept=False)  # the epoch's replaces it

    def eval_model(self) -> torch.nn.Module:
        """The weights that are evaluated and saved as predictions: EMA when enabled."""
        return self.ema.model if self.ema is not None else self.prepared.model

    def run(self) -> dict[str, Any]:
        """Train the remaining epochs; returns the training summary. The last checkpoint may
        still be on its way to disk: :meth:`flush` before reading a checkpoint or writing
        the manifest (a failure waits for every write before it propagates)."""
        started = time.perf_counter()
        try:
            while not self.finished():
                self.epoch_started = time.perf_counter()
                self._train_epoch()
                self._end_epoch()
        except BaseException:
            try:
                self.flush()
            finally:
                self.tracker.close()  # the rows logged so far, on disk
            raise
        self.tracker.close()
        wall = max(time.perf_counter() - started, 1e-9)
        samples = self.samples * self.prepared.dist.world_size  # every rank sees as many
        return {
            "final": {f"best/{self.monitor}": self.early.best_value},
            "epochs": self.cfg.training.epochs,
            "epochs_run": self.epoch,
            "stopped_early": self.stopped_early,
            "steps": self.step,
            "best_epoch": self.best_epoch,
            "wall_time_s": round(wall, 3),
            "samples_per_s": round(samples / wall, 1),
            "epoch_time_s": round(wall / max(self.epoch - self.first_epoch, 1), 3),
            "peak_memory": peak_memory(self.prepared.device),
            "distributed": self.prepared.dist.record(),
            "model": self.prepared.model_info,
            "oom_fallback": {
                "events": self.stepper.events,
                "final_micro_batch": self.stepper.micro,
            },
            "task_weighting": {
                "method": self.cfg.training.task_weighting,
                "tasks": self.weighting.record() if self.weighting is not None else None,
            },
        }

    def _train_epoch(self) -> None:
        cfg = self.cfg.training
        start_epoch(self.train_loader, self.cfg.run.seed, self.epoch, self.position)
        self.prepared.model.train()
        batches = iter(self.train_loader)
        total = self.steps_per_epoch - self.epoch_step
        for _ in self.tracker.progress(range(total), total, f"epoch {self.epoch}"):
            loaded = [b for _, b in zip(range(cfg.accumulate_steps), batches, strict=False)]
            if not loaded:
                break
            started = time.perf_counter()
            group = self._inputs(loaded)
            if not group:  # every sample of the step was unreadable and skipped
                self.position += sum(batch.drawn for batch in loaded)
                self.epoch_step += 1
                continue
            result = self.stepper.step(group, self.step)
            self.step, self.epoch_step = self.step + 1, self.epoch_step + 1
            self.position += sum(batch.drawn for batch in loaded)
            self.samples += result.samples
            self.epoch_sums["samples"] = self.epoch_sums.get("samples", 0.0) + result.samples
            for key, value in result.losses.items():
                self.epoch_sums[key] = self.epoch_sums.get(key, 0.0) + value * result.samples
            # every log_every_n_steps, and each epoch's last step (a short run logs too)
            last = self.epoch_step >= self.steps_per_epoch
            if self.tracker.should_log_step(self.step) or (last and self.main):
                speed = result.samples / max(time.perf_counter() - started, 1e-9)
                extra = {"lr": result.lr, "grad_norm": result.grad_norm, "samples_per_s": speed}
                self.tracker.log_step(self.step, result.losses | extra)
            every = cfg.checkpoint_every_n_steps
            if every and self.step % every == 0 and self.epoch_step < self.steps_per_epoch:
                self._save("checkpoints/last.pt", self._state())

    def _inputs(self, loaded: list[Batch]) -> list[Batch]:
        """Model inputs of one step's batches, augmented with the step's own generator."""
        prepared = self.prepared
        generator = None
        if prepared.pipeline.augment is not None:
            generator = augment_generator(self.cfg.run.seed, self.step, prepared.dist.rank)
        for batch in loaded:
            self.skipped |= dict(batch.skipped)
        group = [prepared.pipeline.batch(b, prepared.device, generator) for b in loaded]
        return [batch for batch in group if len(batch)]

    def _end_epoch(self) -> None:
        preds = predict(
            self.eval_model(),
            self.select_loader,
            self.prepared.device,
            self.prepared.eval_pipeline,
            self.precision.autocast,
            with_ids=False,
        )
        self.skipped |= preds["skipped"]
        sums = sum_over_ranks(self.epoch_sums, self.prepared.dist)
        seen = sums.pop("samples", 0.0) or 1.0
        values = {key: total / seen for key, total in sums.items()}
        values |= split_metrics(preds, self.prepared.dataset.tasks, "val_select")
        values["lr"] = float(self.scheduler.get_last_lr()[-1])
        self.epoch_sums = {}
        improved = self.early.update(values[self.monitor])
        self.tracker.log_epoch(self.epoch, self.step, values)
        if self.main:
            took = time.perf_counter() - self.epoch_started
            line = epoch_line(self.epoch, self.cfg.training.epochs, values, self.monitor, took)
            print(line, file=sys.stderr)
        finished = self.epoch
        if improved:
            self.best_epoch = finished
        self.epoch, self.position, self.epoch_step = self.epoch + 1, 0, 0
        self.stopped_early = self.early.should_stop
        entry, drop = self._rank_top_k(finished, values[self.monitor])
        state = self._state()  # records the files this epoch keeps (top_k, updated above)
        if self.main:
            self._publish(state, improved, entry, [old["path"] for old in drop])

    def _publish(
        self, state: dict[str, Any], improved: bool, entry: str | None, drop: list[str]
    ) -> None:
        """Serialise the epoch's state once, as its copy would be (here when it is small,
        else a copy in the background), and publish it as best.pt (when improved), the
        top-k file (when kept) and last.pt: one write and fsync, the other names hard links
        to it, in a background thread while the next epoch trains (``BackgroundWriter``).
        best.pt is published before last.pt, so a kill in between (or before the write
        ends) resumes from the previous last.pt and redoes the epoch, bitwise as before.
        A file that only the next epoch's last.pt replaces is never recorded, so it is not
        hashed on the way (:func:`save_checkpoint`)."""
        names = [
            *(["checkpoints/best.pt"] if improved else []),
            *([entry] if entry else []),
            "checkpoints/last.pt",
        ]
        kept = improved or entry is not None or self.finished()
        self.writer.checkpoint(self.run_dir, state, names, drop, kept)

    def _rank_top_k(self, epoch: int, value: float) -> tuple[str | None, list[dict[str, Any]]]:
        """Update the top-k list with this epoch; the file to write (when kept) and the
        entries that fell out (their files are deleted after the new ones exist)."""
        k = self.cfg.training.keep_top_k
        if k < 2:
            return None, []
        sign = self.early.sign
        entry: dict[str, Any] = {
            "epoch": epoch,
            "value": value,
            "path": f"checkpoints/top/epoch={epoch:04d}.pt",
        }
        ranked = sorted([*self.top_k, entry], key=lambda e: (-sign * e["value"], e["epoch"]))
        keep, drop = ranked[:k], ranked[k:]
        self.top_k = keep
        return (entry["path"] if entry in keep else None), drop

    def _state(self) -> dict[str, Any]:
        return {
            "model": self.prepared.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.precision.scaler.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "epoch": self.epoch,
            "position": self.position,
            "epoch_step": self.epoch_step,
            "step": self.step,
            "best_epoch": self.best_epoch,
            "stopped_early": self.stopped_early,
            "best_metric": self.early.best_value,
            "early_stopping": self.early.state_dict(),
            "rng": rng_state(),
            "micro_batch": self.stepper.micro,
            "oom_events": self.stepper.events,
            "top_k": self.top_k,
            "epoch_sums": dict(self.epoch_sums),
            "config_hash": self.config_hash,
            "loss_weights": self.weighting.state_dict() if self.weighting is not None else None,
            "world_size": self.prepared.dist.world_size,
            "skipped": {str(row): error for row, error in sorted(self.skipped.items())},
        }

    def _restore(self, state: dict[str, Any]) -> None:
        world, now = int(state.get("world_size", 1)), self.prepared.dist.world_size
        if world != now and int(state["position"]) > 0:
            raise UsageError(
                f"--resume: the checkpoint was written mid-epoch by {world} process(es); resume "
                f"it with the same number of processes (this run has {now})"
            )
        self.prepared.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.precision.scaler.load_state_dict(state["scaler"])
        if self.ema is not None and state["ema"] is not None:
            self.ema.load_state_dict(state["ema"])
        if self.weighting is not None and state.get("loss_weights") is not None:
            self.weighting.load_state_dict(state["loss_weights"])
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self.epoch_step, self.step = int(state["epoch_step"]), int(state["step"])
        self.best_epoch, self.stopped_early = int(state["best_epoch"]), bool(state["stopped_early"])
        self.early.load_state_dict(state["early_stopping"])
        self.stepper.micro, self.stepper.events = int(state["micro_batch"]), list(
            state["oom_events"]
        )
        self.top_k = list(state["top_k"])
        if self.main:  # a kill between a top-k save and the next last.pt left one extra
            kept = {entry["path"] for entry in self.top_k}
            for path in (self.run_dir / "checkpoints" / "top").glob("*.pt"):
                if str(path.relative_to(self.run_dir)) not in kept:
                    path.unlink()
        self.epoch_sums = {key: float(value) for key, value in state["epoch_sums"].items()}
        self.skipped = {int(row): str(error) for row, error in state.get("skipped", {}).items()}
        set_rng_state(state["rng"])
