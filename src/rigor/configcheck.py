"""Check every YAML under configs/ and every JSON under schema/ (a pre-commit hook).

Experiment and top-level files must compose into a valid config; group files (data/,
model/) must fit their section's schema with nothing required; grid files (sweep/) must give
valid points; benchmark files (bench/) must compose a valid config for every encoder x task
cell; schema files must be valid Draft 2020-12 schemas and match what the code emits.

    python -m rigor.configcheck        # exit 1 listing every problem
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator

from rigor.config import load_config
from rigor.errors import ConfigError
from rigor.manifest.env import PROJECT_ROOT
from rigor.schema import stale

GROUPS = ("data", "model")
SWEEPS = "sweep"  # grid files for sweep.py --grid-file, checked point by point
BENCHES = "bench"  # benchmark files for probe.py --bench, checked cell by cell


def section_schema(schema: dict[str, Any], section: str) -> dict[str, Any]:
    """One section's schema with nothing required at any depth (group files are partial)."""
    defs = {
        name: {key: value for key, value in body.items() if key != "required"}
        for name, body in copy.deepcopy(schema["$defs"]).items()
    }
    name = schema["properties"][section]["$ref"].split("/")[-1]
    return {"$schema": schema["$schema"], "$defs": defs, **defs[name]}


def problems(root: Path = PROJECT_ROOT) -> list[str]:
    """Every problem found, one line each."""
    found: list[str] = []
    schema = json.loads((root / "schema" / "config.schema.json").read_text())
    for path in sorted((root / "schema").glob("*.json")):
        try:
            Draft202012Validator.check_schema(json.loads(path.read_text()))
        except Exception as err:  # noqa: BLE001 - any failure is a problem to report
            found.append(f"{path.relative_to(root)}: not a valid JSON Schema: {err}")
    found += [f"schema/{name}: stale (run make schema)" for name in stale(root / "schema")]
    for path in sorted((root / "configs").rglob("*.yaml")):
        rel = path.relative_to(root)
        if path.parent.name in GROUPS:
            validator = Draft202012Validator(section_schema(schema, path.parent.name))
            found += [
                f"{rel}: {e.json_path}: {e.message}"
                for e in validator.iter_errors(yaml.safe_load(path.read_text()))
            ]
            continue
        if path.parent.name == SWEEPS:
            found += _grid_problems(root, path)
            continue
        if path.parent.name == BENCHES:
            found += bench_problems(root, path)
            continue
        try:
            load_config(path, environ={})
        except ConfigError as err:
            found.append(f"{rel}: {err}")
    return found


def bench_problems(root: Path, path: Path) -> list[str]:
    """A benchmark file: valid, and every cell's config composes (paths from ``root``)."""
    import os

    from rigor.errors import RigorError
    from rigor.probe.bench import cell_overrides, read_bench

    rel = path.relative_to(root)
    here = os.getcwd()
    os.chdir(root)  # the file's paths are relative to the project, as when it runs
    try:
        bench = read_bench(path)
        found = []
        for task in bench.tasks:
            for encoder in bench.encoders:
                try:
                    point = cell_overrides(bench, task, encoder)
                    load_config(bench.experiment, sets=bench.set, environ={}, sweep=point)
                except RigorError as err:
                    found.append(f"{rel}: cell {task} x {encoder}: {err}")
        return found
    except RigorError as err:
        return [f"{rel}: {err}"]
    finally:
        os.chdir(here)


def _grid_problems(root: Path, path: Path) -> list[str]:
    """A sweep grid file (``sweep.py --grid-file``): readable, and every point of its product
    a valid override of configs/default.yaml."""
    from rigor.sweep.grid import expand, read_grid_file

    rel = path.relative_to(root)
    try:
        points = expand(read_grid_file(path))
    except ConfigError as err:
        return [f"{rel}: {err}"]
    found = []
    for point in points:
        try:
            load_config(root / "configs" / "default.yaml", environ={}, sweep=point)
        except ConfigError as err:
            found.append(f"{rel}: point {point}: {err}")
    return found


def main() -> int:
    """Print problems; exit 1 if there are any."""
    found = problems()
    for line in found:
        print(line)
    print(f"configs and schemas: {len(found)} problem(s)")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
