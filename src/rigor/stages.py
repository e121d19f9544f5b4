"""What every manifest-consuming stage does first and last.

First: validate the manifest, re-hash the artifacts the stage will read (and only those),
compare the environment with the one the manifest recorded under the env policy, and load
the run's resolved config. Last: record a stage entry with the hashes of its outputs,
replacing the manifest atomically.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from rigor.config import run_config
from rigor.config.models import Config
from rigor.errors import ArtifactError
from rigor.manifest import append_stage, load_manifest, resolve_inside, verify_manifest
from rigor.manifest.env import check_manifest_env
from rigor.manifest.rundir import iso, utc_now

BEST = "checkpoints/best.pt"  # a train run's best weights (a probe run has no checkpoints)


@dataclass
class RunContext:
    """A validated run, ready for one stage."""

    manifest_path: Path
    manifest: dict[str, Any]
    config: Config
    environment: dict[str, Any]
    started: datetime = field(default_factory=utc_now)

    @property
    def run_dir(self) -> Path:
        """The run folder (the manifest's folder)."""
        return self.manifest_path.parent

    def path(self, rel: str) -> Path:
        """An artifact path inside the run folder (never outside it)."""
        return resolve_inside(self.run_dir, rel)


def open_run(
    manifest_path: str | Path,
    reads: list[str],
    env_policy: str | None,
    force: bool,
    kinds: tuple[str, ...] = ("train",),
) -> RunContext:
    """Validate, verify what ``reads`` lists, apply the env policy; exits 3/4/5 on failure.

    ``kinds`` are the run kinds the stage accepts: most stages need a trained model and its
    predictions (``train``); ``reproduce`` and ``probe`` also read ``pretrain`` runs.
    """
    import json

    path = Path(manifest_path)
    manifest = load_manifest(path)
    first = manifest["stages"][0]["name"]
    if first not in kinds:
        advice = {
            "pretrain": "fine-tune from its weights (model.hf.path) and give this stage that "
            "run's manifest",
            "probe": "a probe run holds features and ridge scores; give this stage the "
            "manifest of the run it probed",
        }.get(first, "")
        raise ArtifactError(
            f"{path}: run {manifest['run_id']} is a {first} run, and this stage reads "
            f"{' or '.join(kinds)} runs; {advice}".rstrip("; ")
        )
    wanted = ["config_resolved.json", *reads]
    missing = [rel for rel in wanted if rel not in manifest["sha256"]]
    if missing:
        raise ArtifactError(
            f"{path}: the manifest lists no {', '.join(missing)} (needed by this stage)"
        )
    verify_manifest(manifest, path.parent, only=wanted)
    config, added = run_config(json.loads((path.parent / "config_resolved.json").read_text()))
    if added:
        print(
            f"note: run {manifest['run_id']} predates config keys {added}; they take their "
            "defaults from configs/default.yaml",
            file=sys.stderr,
        )
    environment = check_manifest_env(manifest, env_policy or config.env.policy, force)
    return RunContext(path, manifest, config, environment)


def finish_stage(
    ctx: RunContext, name: str, options: dict[str, Any], outputs: list[str], summary: dict[str, Any]
) -> dict[str, Any]:
    """Append this stage's entry (outputs hashed) to the manifest, atomically."""
    finished = utc_now()
    stage = {
        "name": name,
        "status": "complete",
        "started_at": iso(ctx.started),
        "finished_at": iso(finished),
        "duration_s": round((finished - ctx.started).total_seconds(), 3),
        "command": list(sys.argv),
        "options": options,
        "summary": summary,
        "environment": ctx.environment,
    }
    return append_stage(ctx.manifest_path, stage, outputs)
