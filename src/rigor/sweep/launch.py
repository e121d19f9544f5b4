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
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rigor.config import load_config
from rigor.errors import ConfigError, RigorError, UsageError
from rigor.io import atomic_write_json
from rigor.manifest.rundir import create_run_dir, iso, utc_now
from rigor.sweep.grid import expand
from rigor.sweep.processes import finished, run_local, write_specs
from rigor.sweep.space import Range, sample_points

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


@dataclass
class Space:
    """What the sweep explores: the grid's product, or ``random`` points sampled from the
    grid's values and the ``ranges`` with ``seed`` (``optuna``: trials, see sweep.search)."""

    grid: dict[str, list[Any]]
    ranges: list[Range] = field(default_factory=list)
    random: int | None = None
    optuna: int | None = None
    seed: int = 0
    explicit: list[dict[str, Any]] | None = None  # given points (a benchmark's cells)

    def record(self) -> dict[str, Any]:
        """How sweep.json describes the space (and what identifies a rerun of it)."""
        return {
            "grid": [{"key": key, "values": values} for key, values in self.grid.items()],
            "ranges": [item.record() for item in self.ranges],
            "random": self.random,
            "optuna": self.optuna,
            "seed": self.seed,
            **({"explicit": self.explicit} if self.explicit is not None else {}),
        }

    def points(self) -> list[dict[str, Any]]:
        """The points to run (none up front for an Optuna search)."""
        if self.explicit is not None:
            return list(self.explicit)
        if self.optuna is not None:
            return []
        if self.random is not None:
            return sample_points(self.grid, self.ranges, self.random, self.seed)
        if self.ranges:
            raise ConfigError(
                "sweep: --range needs --random N or --optuna N (a grid has no ranges)"
            )
        return expand(self.grid)


def plan(
    config: str, points: list[dict[str, Any]], sets: list[str], keys: list[str]
) -> tuple[list[str], Path, str]:
    """Validate every point; returns their config hashes, the output root and the run name."""
    bad = [key for key in keys if key in FORBIDDEN]
    if bad:
        raise ConfigError(f"sweep: the grid may not vary {bad} (every point shares them)")
    hashes, problems = [], []
    resolved = load_config(config, sets=sets)
    for index, point in enumerate(points):
        try:
            hashes.append(load_config(config, sets=sets, sweep=point).hash)
        except ConfigError as err:
            problems.append(f"point {index} {point}: {err}")
    if problems:
        raise ConfigError("sweep: invalid points, nothing launched:\n  " + "\n  ".join(problems))
    if len(set(hashes)) != len(hashes):
        raise ConfigError("sweep: two points resolve to the same config")
    run = resolved.config.run
    return hashes, Path(run.output_root), run.name


def sweep(
    config: str,
    space: Space | dict[str, list[Any]],
    sets: list[str],
    options: LaunchOptions,
    task: str = "train",
    env_policy: str | None = None,
    fresh: bool = False,
) -> Path:
    """Launch every point and return the sweep folder (summarised when waited for).

    The same command again continues the newest sweep it started (unless ``fresh``): points
    that finished with the same config hash are skipped, the others resume from their
    last checkpoint (train and pretrain runs) or start again.
    """
    space = space if isinstance(space, Space) else Space(space)
    keys = [*space.grid, *(item.key for item in space.ranges)]
    keys += sorted({key for point in space.explicit or [] for key in point})
    points = space.points()
    hashes, output_root, name = plan(config, points, sets, keys)
    identity = [config, sets, space.record(), task]
    digest = hashlib.sha256(json.dumps(identity, default=str).encode()).hexdigest()
    folder = None if fresh else previous_sweep(output_root, name, digest, hashes)
    if folder is None:
        sweep_id, folder = create_run_dir(output_root, name, digest, folder="sweeps")
        print(f"sweep {sweep_id}: {len(points)} points, writing to {folder}", file=sys.stderr)
    else:
        sweep_id = folder.name
    if options.nproc_per_node > 1 and options.cluster == "debug":
        raise UsageError("--nproc-per-node > 1 needs processes; the debug cluster has one")
    common = {"config": config, "sets": sets, "task": task, "env_policy": env_policy}
    record: dict[str, Any] = {
        "sweep_id": sweep_id,
        "created_at": iso(utc_now()),
        "config": config,
        "sets": sets,
        **space.record(),
        "task": task,
        "cwd": os.getcwd(),
        "launch": asdict(options),
        "points": [
            {"index": i, "overrides": p, "config_hash": h}
            for i, (p, h) in enumerate(zip(points, hashes, strict=True))
        ],
    }
    if space.optuna is not None:
        from rigor.sweep.search import optuna_search

        optuna_search(folder, record, space, common, options)
        return folder
    todo = pending_points(folder, record["points"])
    specs = write_specs(folder, [record["points"][i] for i in todo], common, options)
    atomic_write_json(folder / "sweep.json", record)
    if _launch(folder, specs, options, record):
        _raise_on_failures(folder, len(points))
    return folder


def previous_sweep(output_root: Path, name: str, digest: str, hashes: list[str]) -> Path | None:
    """The newest sweep folder of this exact command (same config, sets, space and task)
    whose points have the same config hashes; None when there is none."""
    folders = sorted((output_root / "sweeps").glob(f"*-{name}-{digest[:8]}*"))
    for folder in reversed(folders):
        path = folder / "sweep.json"
        if not path.is_file():
            continue
        record = json.loads(path.read_text())
        if [p["config_hash"] for p in record["points"]] == hashes or record.get("optuna"):
            return folder
    return None


def pending_points(folder: Path, points: list[dict[str, Any]]) -> list[int]:
    """Indices of the points still to run: every point but those whose status says ok, whose
    run manifest exists and holds the point's config hash. Stale status files go."""
    todo, done = [], 0
    for point in points:
        status_path = folder / "points" / f"{point['index']}.json"
        if status_path.is_file():
            if finished(json.loads(status_path.read_text()), point["config_hash"]):
                done += 1
                continue
            status_path.unlink()
        todo.append(point["index"])
    if done:
        print(
            f"sweep {folder.name}: continuing; {done} of {len(points)} points finished, "
            f"{len(todo)} to run (resumed from their last checkpoint where one exists)",
            file=sys.stderr,
        )
    return todo


def _launch(
    folder: Path, specs: list[dict[str, Any]], options: LaunchOptions, record: dict[str, Any]
) -> bool:
    """Run (or submit) the points; False when submitted without waiting."""
    if options.launcher == "local":
        run_local(folder, specs, options.max_parallel)
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
