"""The train task function: config in, run folder with a validated manifest out."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from rigor.cli import settle
from rigor.config import ResolvedConfig
from rigor.errors import RunBusyError
from rigor.io import atomic_write_json
from rigor.manifest import write_manifest
from rigor.manifest.rundir import RunLock, create_run_dir
from rigor.runs.checkpoint import load_checkpoint
from rigor.tracking.mirror import Mirror, run_mirror
from rigor.tracking.tensorboard import write_hparams
from rigor.training.distributed import DistInfo, barrier, broadcast, init_distributed
from rigor.training.predictions import write_predictions
from rigor.training.prepare import Prepared, prepare, write_run_inputs
from rigor.training.resume import check_same_splits, find_resume, remove_temporaries
from rigor.training.run_record import RunOutputs, build_manifest
from rigor.training.session import Session


def train(
    resolved: ResolvedConfig,
    env_policy: str | None = None,
    force: bool = False,
    resume: str | None = None,
) -> Path:
    """Train the configured model and return the path of the run's ``manifest.json``.

    Args:
        resume: a checkpoint file or run folder to continue, ``auto`` for the newest
            unfinished run of this experiment and config, or None for a fresh run.
    """
    cfg = resolved.config
    info = init_distributed(cfg.run.device)
    prepared = prepare(resolved, env_policy, force, info)
    root = Path(cfg.run.output_root)
    checkpoint = broadcast(
        find_resume(resume, root, cfg.run.name, resolved.hash) if info.main else None, info
    )
    state = load_checkpoint(checkpoint, resolved.hash, force) if checkpoint else None
    if checkpoint is not None:
        run_dir = checkpoint.parent.parent
        check_same_splits(run_dir, prepared, force)
        if info.main:
            print(f"run {run_dir.name}: resuming from {checkpoint}", file=sys.stderr)
    elif info.main:
        run_id, run_dir = create_run_dir(root, cfg.run.name, resolved.hash)
        where = f" ({info.world_size} processes, {info.backend})" if info.enabled else ""
        print(f"run {run_id}: writing to {run_dir}{where}", file=sys.stderr)
    run_dir = broadcast(run_dir if info.main else None, info)
    lock, completed = _lock(run_dir, info), False
    mirror = Mirror.off()
    try:
        if info.main:
            if checkpoint is not None:
                remove_temporaries(run_dir)
            write_run_inputs(run_dir, prepared)
            mirror = run_mirror(run_dir, prepared.resolved)
        session = Session(run_dir, prepared, state, mirror)
        settle()  # collection back on for the epochs, without the set-up's million objects
        try:
            summary = session.run()
            if info.main:  # rank 0 writes predictions and the manifest
                if checkpoint is not None:
                    step = int(state["step"]) if state else 0
                    summary["resumed_from"] = {"checkpoint": str(checkpoint), "step": step}
                _finish(run_dir, prepared, session, summary)
        finally:
            session.flush()  # nothing is still being written when the lock is released
        completed = True
    except BaseException as err:
        mirror.failed(err)
        raise
    finally:
        lock.release(completed)
    barrier(info)
    return run_dir / "manifest.json"


def _lock(run_dir: Path, info: DistInfo) -> RunLock:
    """Rank 0 takes the run folder's lock, held until the manifest is written (or the process
    dies); a refusal reaches every rank, so none waits in a collective for a dead peer."""
    lock, busy = RunLock(run_dir), None
    if info.main:
        try:
            lock.acquire()
        except RunBusyError as err:
            busy = str(err)
    busy = broadcast(busy, info)
    if busy is not None:
        raise RunBusyError(busy)
    return lock


def _finish(run_dir: Path, prepared: Prepared, session: Session, summary: dict[str, Any]) -> None:
    """Predictions of the best checkpoint (while the last checkpoint is written), then, with
    every checkpoint on disk, metrics.json and the manifest, written last; the MLflow mirror
    gets the final metrics, then the manifest, and is marked finished."""
    outputs = write_predictions(run_dir, prepared, session)
    session.flush()
    extra = {}
    if prepared.resolved.config.model.peft.method != "none":
        summary["adapter"] = _write_adapter(run_dir, prepared, session)
        extra["adapter"] = [summary["adapter"]["path"]]
    metrics = {**summary.pop("final"), **outputs["metrics"]}
    # val_select's numbers are in the epochs' history already (the best one is best/...)
    final = {key: value for key, value in metrics.items() if not key.endswith("/val_select")}
    session.mirror.metrics(summary["steps"], final)
    session.mirror.note_in(summary)
    atomic_write_json(run_dir / "metrics.json", {"metrics": metrics, "training": summary})
    if prepared.resolved.config.logging.tensorboard:
        write_hparams(run_dir / "logs" / "tb", prepared.resolved.resolved, metrics)
    record = RunOutputs(
        metrics=metrics,
        summary=summary,
        predictions=outputs["predictions"],
        skipped=outputs["skipped"],
        extra_artifacts=extra,
    )
    write_manifest(run_dir, build_manifest(run_dir, prepared, record))
    session.mirror.artifacts(run_dir, ["manifest.json", "metrics.json", "config.yaml"])
    session.mirror.end("FINISHED")


def _write_adapter(run_dir: Path, prepared: Prepared, session: Session) -> dict[str, Any]:
    """The best weights' trained part (adapters, unfrozen blocks, heads) as its own file."""
    from rigor.io import atomic_write_bytes
    from rigor.models.adapters import adapter_payload

    state = session.eval_model().state_dict()  # write_predictions loaded the best weights
    payload, record = adapter_payload(prepared.model, state)
    atomic_write_bytes(run_dir / record["path"], payload)
    print(
        f"adapter: {record['path']} {record['size_bytes'] / 2**20:.3f} MiB, "
        f"{record['size_share']:.2%} of the full model's {record['full_size_bytes'] / 2**20:.3f}"
        f" MiB ({record['params']:,} of {record['params_total']:,} values)",
        file=sys.stderr,
    )
    return record
