"""One sweep point: compose its config, train (or pretrain), record the outcome as JSON.

The same function runs in a local subprocess (``python -m rigor.sweep.job SPEC``) and in a
submitit job on a cluster. The outcome goes to ``points/<index>.json`` in the sweep folder,
so the sweep never has to unpickle a job's result.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rigor.errors import RigorError
from rigor.io import atomic_write_json
from rigor.sweep.processes import point_lock


def run_point(spec: dict[str, Any]) -> int:
    """Run the point ``spec`` describes; returns its exit code (0 ok) after writing status.

    ``spec`` keys: index, config, sets, overrides, task (train|pretrain), env_policy,
    resume (``auto``: continue the newest unfinished run of the point's config, if any),
    launcher, nproc_per_node, cwd (where the sweep was launched), status (the JSON file to
    write; under several processes rank 0 writes it).
    """
    status_path = Path(spec["status"])
    os.chdir(spec["cwd"])  # relative config and output paths mean what they meant at launch
    if spec["launcher"] == "submitit" and spec["nproc_per_node"] > 1:
        from submitit.helpers import TorchDistributedEnvironment

        # submitit started one task per process: give torch.distributed what torchrun would
        TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
    main = int(os.environ.get("RANK", "0")) == 0  # rank 0 alone records the outcome
    if main and spec["nproc_per_node"] == 1:  # held while it runs: a rerun of the sweep
        with point_lock(status_path, spec["index"]):  # waits for it (processes.orphan_finished)
            return _run(spec, status_path, main)
    return _run(spec, status_path, main)


def _run(spec: dict[str, Any], status_path: Path, main: bool) -> int:
    """Train the point and write its status file (rank 0)."""
    from rigor.config import load_config

    result: dict[str, Any] = {"index": spec["index"], "overrides": spec["overrides"]}
    try:
        resolved = load_config(spec["config"], sets=spec["sets"], sweep=spec["overrides"])
        from rigor.run_kinds import RUN_KINDS

        kind = RUN_KINDS[spec["task"]]
        extra = {"resume": spec["resume"]} if kind.resumable and spec.get("resume") else {}
        with _sweep_tag(status_path.parent.parent.name):  # the MLflow mirror tags the point
            manifest = kind.task_function()(resolved, env_policy=spec["env_policy"], **extra)
        result |= {"status": "ok", "exit_code": 0, "manifest": str(manifest), "error": None}
    except RigorError as err:
        result |= {"status": "failed", "exit_code": err.exit_code, "manifest": None}
        result["error"] = str(err)
    except Exception as err:  # noqa: BLE001 - one point's crash must not end the sweep
        traceback.print_exc()
        result |= {"status": "failed", "exit_code": 1, "manifest": None}
        result["error"] = f"unexpected {type(err).__name__}: {err}"
    if main:
        atomic_write_json(status_path, result)
    if result["error"]:
        print(f"error: sweep point {spec['index']}: {result['error']}", file=sys.stderr)
    return int(result["exit_code"])


@contextmanager
def _sweep_tag(sweep_id: str) -> Iterator[None]:
    """``RIGOR_SWEEP`` set to the sweep's id while the point trains, as it was after."""
    before = os.environ.get("RIGOR_SWEEP")
    os.environ["RIGOR_SWEEP"] = sweep_id
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("RIGOR_SWEEP", None)
        else:
            os.environ["RIGOR_SWEEP"] = before


def main(argv: list[str] | None = None) -> int:
    """``python -m rigor.sweep.job SPEC.json``."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m rigor.sweep.job SPEC.json", file=sys.stderr)
        return 2
    spec = json.loads(Path(args[0]).read_text())
    return run_point(spec)


if __name__ == "__main__":
    sys.exit(main())
