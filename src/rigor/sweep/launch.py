"""Run a grid of configs: validate every point first, launch locally or with submitit, summarise.

A sweep folder ``<output_root>/sweeps/<sweep_id>/`` holds ``sweep.json`` (the grid, the
points and how they were launched), ``points/<i>.spec.json`` and ``points/<i>.json`` (each
point's outcome and run manifest), ``logs/`` (local launcher) or ``submitit/`` (cluster
launcher), and ``summary.{csv,json}``. Runs themselves go to ``<output_root>/runs/`` as usual.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rigor.config import load_config
from rigor.errors import ConfigError, RigorError, UsageError
from rigor.io import atomic_write_json
from rigor.manifest.rundir import create_run_dir, iso, utc_now
from rigor.sweep.grid import expand

FORBIDDEN = ("run.output_root", "run.name")


@dataclass
class LaunchOptions:
    """How the points run.

    ``launcher``: ``local`` (subprocesses on this machine, ``max_parallel`` at a time) or
    ``submitit`` (``cluster``: None lets submitit pick Slurm when available; ``local`` runs
    submitit's local executor; ``debug`` runs in this process). The ``slurm_*`` fields,
    ``timeout_min``, ``gpus_per_node``, ``cpus_per_task`` and ``mem_gb`` go to Slurm.
    ``nproc_per_node`` > 1 trains each point with that many DDP processes: under torchrun
    (local launcher) or as that many submitit tasks (``tasks_per_node``).
    """

    launcher: str = "local"
    max_parallel: int = 1
    nproc_per_node: int = 1
    cluster: str | None = None
    timeout_min: int = 60
    slurm_partition: str | None = None
    gpus_per_node: int = 0
    cpus_per_task: int = 2
    mem_gb: int = 8
    slurm_array_parallelism: int = 8
    wait: bool = True


class SweepFailed(RigorError):
    """Some points of a sweep failed (exit 1); their status files say why."""

    exit_code = 1


def plan(
    config: str, grid: dict[str, list[Any]], sets: list[str]
) -> tuple[list[dict[str, Any]], list[str], Path, str]:
    """Expand and validate every point; returns points, config hashes, output root, name."""
    bad = [key for key in grid if key in FORBIDDEN]
    if bad:
        raise ConfigError(f"sweep: the grid may not vary {bad} (every point shares them)")
    points = expand(grid)
    hashes, problems = [], []
    resolved = None
    for index, point in enumerate(points):
        try:
            resolved = load_config(config, sets=sets, sweep=point)
            hashes.append(resolved.hash)
        except ConfigError as err:
            problems.append(f"point {index} {point}: {err}")
    if problems:
        raise ConfigError("sweep: invalid points, nothing launched:\n  " + "\n  ".join(problems))
    if len(set(hashes)) != len(hashes):
        raise ConfigError("sweep: two grid points resolve to the same config")
    assert resolved is not None
    run = resolved.config.run
    return points, hashes, Path(run.output_root), run.name


def sweep(
    config: str,
    grid: dict[str, list[Any]],
    sets: list[str],
    options: LaunchOptions,
    task: str = "train",
    env_policy: str | None = None,
) -> Path:
    """Launch every point of ``grid`` and return the sweep folder (summarised when waited)."""
    points, hashes, output_root, name = plan(config, grid, sets)
    digest = hashlib.sha256(json.dumps([config, sets, grid], default=str).encode()).hexdigest()
    sweep_id, folder = create_run_dir(output_root, name, digest, folder="sweeps")
    print(f"sweep {sweep_id}: {len(points)} points, writing to {folder}", file=sys.stderr)
    common = {"config": config, "sets": sets, "task": task, "env_policy": env_policy}
    specs = _write_specs(folder, points, common, options)
    record: dict[str, Any] = {
        "sweep_id": sweep_id,
        "created_at": iso(utc_now()),
        "config": config,
        "sets": sets,
        "grid": [{"key": key, "values": values} for key, values in grid.items()],  # in order
        "task": task,
        "cwd": os.getcwd(),
        "launch": asdict(options),
        "points": [
            {"index": i, "overrides": p, "config_hash": h}
            for i, (p, h) in enumerate(zip(points, hashes, strict=True))
        ],
    }
    atomic_write_json(folder / "sweep.json", record)
    if options.nproc_per_node > 1 and options.cluster == "debug":
        raise UsageError("--nproc-per-node > 1 needs processes; the debug cluster has one")
    if _launch(folder, specs, options, record):
        _raise_on_failures(folder, len(points))
    return folder


def _write_specs(
    folder: Path, points: list[dict[str, Any]], common: dict[str, Any], options: LaunchOptions
) -> list[dict[str, Any]]:
    """One ``points/<i>.spec.json`` per point: what its job process needs to run it."""
    specs = []
    for index, point in enumerate(points):
        spec = {
            "index": index,
            **common,
            "overrides": point,
            "launcher": options.launcher,
            "nproc_per_node": options.nproc_per_node,
            "cwd": os.getcwd(),
            "status": str((folder / "points" / f"{index}.json").resolve()),
        }
        atomic_write_json(folder / "points" / f"{index}.spec.json", spec)
        specs.append(spec)
    return specs


def _launch(
    folder: Path, specs: list[dict[str, Any]], options: LaunchOptions, record: dict[str, Any]
) -> bool:
    """Run (or submit) the points; False when submitted without waiting."""
    if options.launcher == "local":
        _run_local(folder, specs, options.max_parallel)
        return True
    if options.launcher != "submitit":
        raise UsageError(f"--launcher: unknown launcher {options.launcher!r} (local, submitit)")
    record["jobs"] = _run_submitit(folder, specs, options)
    atomic_write_json(folder / "sweep.json", record)
    if not options.wait:
        print(f"submitted {len(specs)} jobs; summarise later with --summarize", file=sys.stderr)
    return options.wait


def _raise_on_failures(folder: Path, count: int) -> None:
    from rigor.sweep.summary import summarize

    failed = [p for p in summarize(folder)["points"] if p["status"] != "ok"]
    if failed:
        lines = [f"point {p['index']} {p['overrides']}: {p['error']}" for p in failed]
        raise SweepFailed(
            f"{len(failed)} of {count} sweep points failed ({folder}):\n  " + "\n  ".join(lines)
        )


def _run_local(folder: Path, specs: list[dict[str, Any]], max_parallel: int) -> None:
    """Each point in its own ``python -m rigor.sweep.job`` process, ``max_parallel`` at once."""
    (folder / "logs").mkdir(exist_ok=True)
    pending = list(specs)
    running: list[tuple[subprocess.Popen[bytes], Any]] = []
    while pending or running:
        while pending and len(running) < max(1, max_parallel):
            spec = pending.pop(0)
            log = open(folder / "logs" / f"{spec['index']}.log", "wb")  # noqa: SIM115
            spec_path = folder / "points" / f"{spec['index']}.spec.json"
            job = ["-m", "rigor.sweep.job", str(spec_path)]
            if spec["nproc_per_node"] > 1:  # each point under torchrun, on a free port
                run = ["-m", "torch.distributed.run", "--standalone"]
                job = [*run, "--nproc_per_node", str(spec["nproc_per_node"]), *job]
            proc = subprocess.Popen(
                [sys.executable, *job],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            print(f"point {spec['index']} {spec['overrides']}: started", file=sys.stderr)
            running.append((proc, log))
        time.sleep(0.2)
        for proc, log in list(running):
            if proc.poll() is not None:
                log.close()
                running.remove((proc, log))


def _run_submitit(
    folder: Path, specs: list[dict[str, Any]], options: LaunchOptions
) -> list[dict[str, Any]]:
    """Submit the points as a submitit job array; wait for them unless ``wait`` is off."""
    import submitit

    from rigor.sweep.job import run_point

    executor = submitit.AutoExecutor(folder=folder / "submitit", cluster=options.cluster)
    params: dict[str, Any] = {
        "timeout_min": options.timeout_min,
        "tasks_per_node": options.nproc_per_node,
    }
    if executor.cluster == "slurm":
        params |= {
            "slurm_partition": options.slurm_partition,
            "gpus_per_node": options.gpus_per_node,
            "cpus_per_task": options.cpus_per_task,
            "mem_gb": options.mem_gb,
            "slurm_array_parallelism": options.slurm_array_parallelism,
            "name": "rigor-sweep",
        }
        params = {key: value for key, value in params.items() if value is not None}
    executor.update_parameters(**params)
    jobs = executor.map_array(run_point, specs)
    print(f"submitit ({executor.cluster}): submitted {len(jobs)} jobs", file=sys.stderr)
    if options.wait:
        while not all(job.done() for job in jobs):
            time.sleep(1.0)
    return [
        {"index": spec["index"], "job_id": str(job.job_id), "cluster": executor.cluster}
        for spec, job in zip(specs, jobs, strict=True)
    ]
