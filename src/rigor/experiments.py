"""Draft an EXPERIMENTS.md entry from a run's manifest, so no experiment goes undocumented."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from rigor.config import load_config
from rigor.manifest import load_manifest
from rigor.manifest.env import PROJECT_ROOT
from rigor.manifest.report import flatten
from rigor.run_kinds import kind_of

BLANK = "(to write)"
_IGNORED = ("run.name", "run.output_root")


def next_number(text: str) -> int:
    """One more than the highest ``Experiment NNN`` in an EXPERIMENTS.md text."""
    numbers = [int(n) for n in re.findall(r"^## Experiment (\d+)", text, flags=re.MULTILINE)]
    return max(numbers, default=0) + 1


def changed_settings(resolved: dict[str, Any]) -> list[str]:
    """``key=value`` for every setting that differs from configs/default.yaml."""
    default = flatten(load_config(PROJECT_ROOT / "configs" / "default.yaml", environ={}).resolved)
    return [
        f"`{key}={value}`"
        for key, value in sorted(flatten(resolved).items())
        if key not in _IGNORED and default.get(key) != value
    ]


def _ci(entry: dict[str, Any]) -> str:
    return f"{entry['estimate']:.4g} [{entry['ci_lower']:.4g}, {entry['ci_upper']:.4g}]"


def result_rows(run: Path, manifest: dict[str, Any]) -> list[tuple[str, str]]:
    """(metric, value) rows: eval results with CIs when the run has them, else the run's own
    val_test metrics (or, for a pretrain run, its best val_select reconstruction loss)."""
    path = run / "eval" / "metrics.json"
    if "eval/metrics.json" not in manifest["sha256"] or not path.is_file():
        wanted = kind_of(manifest).result_marker
        return [
            (key, f"{value:.4g}")
            for key, value in sorted(manifest["metrics"].items())
            if wanted in key and value is not None
        ]
    rows: list[tuple[str, str]] = []
    for task, result in json.loads(path.read_text())["tasks"].items():
        if result["kind"] == "classification" and "gate" in result["scores"]:
            rows.append((f"{task} AUGRC (gate)", _ci(result["scores"]["gate"]["augrc"])))
    for task, result in json.loads(path.read_text())["tasks"].items():
        if result["kind"] == "classification":
            rows += [
                (f"{task} accuracy", _ci(result["calibration"]["accuracy"])),
                (f"{task} AUGRC (MSP)", _ci(result["scores"]["msp"]["augrc"])),
                (f"{task} ECE", _ci(result["calibration"]["ece"])),
            ]
            if "calibration_temperature" in result:
                rows.append(
                    (f"{task} ECE after temperature", _ci(result["calibration_temperature"]["ece"]))
                )
            if "policy" in result:
                policy = result["policy"]
                rows += [
                    (f"{task} policy coverage", _ci(policy["coverage"])),
                    (f"{task} policy selective risk", _ci(policy["selective_risk"])),
                ]
        elif len(result["per_target"]) == 1:  # one value per task, e.g. one gene per head
            target = result["per_target"][0]
            rows += [
                (f"{task} Pearson r", _ci(target["pearson"])),
                (f"{task} MAE", _ci(target["mae"])),
            ]
        else:
            rows += [
                (f"{task} Pearson r (mean over targets)", f"{result['pearson_mean']:.4g}"),
                (f"{task} MAE (mean over targets)", f"{result['mae_mean']:.4g}"),
            ]
    return rows


def draft_entry(
    manifest_path: Path, title: str | None = None, experiments: Path | None = None
) -> str:
    """Markdown of a new entry: Date, Goal, Config, Changes, Results, Observations, Next step."""
    manifest = load_manifest(manifest_path)
    run = manifest_path.parent
    resolved = json.loads((run / manifest["config_resolved_path"]).read_text())
    log = experiments or PROJECT_ROOT / "EXPERIMENTS.md"
    number = next_number(log.read_text() if log.is_file() else "")
    train = manifest["stages"][0]
    changes = ", ".join(changed_settings(resolved)) or "none"
    table = "\n".join(f"  | {name} | {value} |" for name, value in result_rows(run, manifest))
    config_file = train["options"].get("config", manifest["config_path"])
    seed, config_hash = resolved["run"]["seed"], manifest["config_hash"][:8]
    commit = (manifest["git"]["commit"] or "none")[:7]
    dirty = ", dirty" if manifest["git"]["is_dirty"] else ""
    command = " ".join(train["command"]) or "scripts/train.py"
    return f"""
## Experiment {number:03d}: {title or resolved['run']['name']}

- **Date:** {manifest['created_at'][:10]}
- **Goal:** {BLANK}
- **Config:** `{config_file}` (seed {seed}, config hash `{config_hash}`).
  Command: `{command}`.
  Settings that differ from configs/default.yaml: {changes}.
- **Changes:** {BLANK}
- **Results:** run `{manifest['run_id']}` (git `{commit}`{dirty}).

  | metric | estimate [95% CI] |
  |---|---|
{table}

- **Observations:** {BLANK}
- **Next step:** {BLANK}
"""


def append_entry(entry: str, experiments: Path) -> None:
    """Append the entry to EXPERIMENTS.md atomically."""
    from rigor.io import atomic_write_text

    current = experiments.read_text() if experiments.is_file() else "# Experiments\n"
    atomic_write_text(experiments, current.rstrip("\n") + "\n" + entry)
