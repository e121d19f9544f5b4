"""The HEST-Benchmark leaderboard in one command (``scripts/probe.py --bench FILE``).

A benchmark file names an experiment (the probe's base config), task folders and encoders
(each a ``configs/model/*.yaml`` file plus ``--set`` overrides such as its weights path).
Every encoder x task cell is its own probe run, launched through the sweep launchers
(local processes, or a submitit job array on a Slurm cluster): a cell whose config already
has a finished probe run under the output root is reused, the rest run, and the leaderboard
(rigor.probe.leaderboard) is written from the cells' manifests.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError

from rigor.config import load_config
from rigor.config.base import NAME_PATTERN, Section
from rigor.config.compose import parse_set
from rigor.errors import ConfigError, UsageError

# Dict-valued model fields: an encoder's file sets them whole, not merged into the base's.
WHOLE = ("kwargs", "weights_key_map")


class Encoder(Section):
    """One encoder of the benchmark."""

    model: str = Field(description="A configs/model/*.yaml file (the model section's keys).")
    set: list[str] = Field(
        default_factory=list, description="Overrides of this encoder's cells (its weights)."
    )


class Launch(Section):
    """How the cells run (scripts/sweep.py's launchers)."""

    launcher: Literal["local", "submitit"] = Field(default="local", description="Launcher.")
    max_parallel: int = Field(default=1, ge=1, description="Local cells at once.")
    cluster: str | None = Field(default=None, description="submitit cluster (null: auto).")
    slurm_partition: str | None = Field(default=None, description="Slurm partition.")
    gpus_per_node: int = Field(default=0, ge=0, description="GPUs per cell on Slurm.")
    cpus_per_task: int = Field(default=8, ge=1, description="CPUs per cell on Slurm.")
    mem_gb: int = Field(default=32, ge=1, description="Memory per cell on Slurm.")
    timeout_min: int = Field(default=240, ge=1, description="Time limit per cell on Slurm.")


class BenchConfig(Section):
    """A benchmark file: which encoders on which task folders, and how the cells run."""

    name: str = Field(pattern=NAME_PATTERN, description="The leaderboard's name (its folder).")
    experiment: str = Field(description="The probe's base experiment config.")
    tasks: dict[str, str] = Field(min_length=1, description="Task name -> task folder.")
    encoders: dict[str, Encoder] = Field(min_length=1, description="Encoder name -> encoder.")
    set: list[str] = Field(default_factory=list, description="Overrides of every cell.")
    launch: Launch = Field(default_factory=Launch, description="How the cells run.")


def read_bench(path: Path) -> BenchConfig:
    """The benchmark file, validated (every error names the file and the field)."""
    if not path.is_file():
        raise UsageError(f"--bench: {path} not found")
    try:
        body = yaml.safe_load(path.read_text())
        return BenchConfig.model_validate(body)
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({err})") from None
    except ValidationError as err:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in err.errors()
        )
        raise ConfigError(f"{path}: {problems}") from None


def flatten(body: dict[str, Any], prefix: str) -> dict[str, Any]:
    """Dotted leaf overrides of a config section (dict fields in WHOLE stay whole)."""
    flat: dict[str, Any] = {}
    for key, value in body.items():
        dotted = f"{prefix}.{key}"
        if isinstance(value, dict) and key not in WHOLE:
            flat |= flatten(value, dotted)
        else:
            flat[dotted] = value
    return flat


def cell_overrides(bench: BenchConfig, task: str, encoder: str) -> dict[str, Any]:
    """A cell's overrides: the encoder's model file, its sets, and the task folder."""
    entry = bench.encoders[encoder]
    model_file = Path(entry.model)
    if not model_file.is_file():
        raise UsageError(f"encoders.{encoder}.model: {model_file} not found")
    body = yaml.safe_load(model_file.read_text()) or {}
    if not isinstance(body, dict):
        raise ConfigError(f"{model_file}: not a mapping of the model section's keys")
    point = flatten({k: v for k, v in body.items() if k != "defaults"}, "model")
    for item in entry.set:
        key, value = parse_set(item)
        point[".".join(key)] = value
    return point | {"data.root": bench.tasks[task]}


def finished_run(output_root: Path, name: str, config_hash: str) -> Path | None:
    """The newest finished probe run of exactly this config under the output root."""
    for folder in sorted((output_root / "runs").glob(f"*-{name}-probe-{config_hash[:8]}*"))[::-1]:
        manifest = folder / "manifest.json"
        if manifest.is_file() and json.loads(manifest.read_text())["config_hash"] == config_hash:
            return manifest
    return None


def run_bench(path: Path, env_policy: str | None = None) -> Path:
    """Run every missing cell of the benchmark and write its leaderboard; returns the
    leaderboard folder."""
    from rigor.probe.leaderboard import write_leaderboard
    from rigor.sweep.launch import LaunchOptions, Space, sweep
    from rigor.sweep.summary import summarize

    bench = read_bench(path)
    cells = [(task, encoder) for task in bench.tasks for encoder in bench.encoders]
    points = [cell_overrides(bench, task, encoder) for task, encoder in cells]
    resolved = [load_config(bench.experiment, sets=bench.set, sweep=p) for p in points]
    output_root = Path(resolved[0].config.run.output_root)
    name = resolved[0].config.run.name
    manifests: dict[int, Path] = {}
    for index, cell in enumerate(resolved):
        found = finished_run(output_root, name, cell.hash)
        if found is not None:
            manifests[index] = found
    todo = [i for i in range(len(cells)) if i not in manifests]
    print(
        f"bench {bench.name}: {len(cells)} cells, {len(manifests)} finished, {len(todo)} to run",
        file=sys.stderr,
    )
    if todo:
        options = LaunchOptions(**bench.launch.model_dump())
        space = Space(grid={}, explicit=[points[i] for i in todo])
        folder = sweep(bench.experiment, space, bench.set, options, "probe", env_policy)
        for row in summarize(folder)["points"]:
            manifests[todo[row["index"]]] = Path(row["manifest"])
    runs = {cells[i]: manifests[i] for i in range(len(cells))}
    return write_leaderboard(output_root / "leaderboards" / bench.name, bench, runs)
