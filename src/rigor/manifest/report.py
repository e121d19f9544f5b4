"""Readable summaries and side-by-side diffs of manifests (no torch import)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted keys -> leaf values (lists stay whole)."""
    if not isinstance(data, dict):
        return {prefix: data}
    flat: dict[str, Any] = {}
    for key, value in data.items():
        flat.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def show(manifest: dict[str, Any]) -> str:
    """A short human-readable summary of one run."""
    git = manifest["git"]
    dataset = manifest["dataset"]
    commit = (git["commit"] or "no git")[:12] + (" (dirty)" if git["is_dirty"] else "")
    lock = manifest["env_lock"]
    lines = [
        f"run        {manifest['run_id']}",
        f"created    {manifest['created_at']}",
        f"git        {commit}  {git['remote'] or ''}".rstrip(),
        f"python     {manifest['python']}  torch {manifest['torch']}  cuda {manifest['cuda']}",
        f"lock       {lock['name'] + ' ' + lock['hash'][:12] if lock else 'none'}"
        f"  ({len(manifest['environment']['mismatches'])} mismatches)",
        f"dataset    {dataset['name']} {dataset['version']}  sizes {dataset['split']['sizes']}",
        f"encoder    {manifest['encoder']['arch']} (dim {manifest['encoder']['dim']})",
        f"best       {manifest['best_checkpoint']}",
        f"stages     {', '.join(stage['name'] for stage in manifest['stages'])}",
        *_lineage(manifest),
        f"artifacts  {len(manifest['sha256'])} hashed files",
        "metrics",
    ]
    lines += [f"  {key:<32} {_fmt(value)}" for key, value in sorted(manifest["metrics"].items())]
    return "\n".join(lines)


def _lineage(manifest: dict[str, Any]) -> list[str]:
    """``lineage  this <- parent <- ...`` when the run started from another run's weights."""
    if not manifest.get("lineage"):
        return []
    return ["lineage    " + "\n        <- ".join(lineage_chain(manifest))]


def lineage_chain(manifest: dict[str, Any], limit: int = 20) -> list[str]:
    """This run and its ancestors through ``lineage.manifest``, newest first, as
    ``run_id (stage)`` lines; an ancestor whose manifest is gone is named as missing."""
    from rigor.io import read_json

    chain = [f"{manifest['run_id']} ({manifest['stages'][0]['name']})"]
    current = manifest
    while current.get("lineage") and len(chain) < limit:
        link = current["lineage"]
        parent = Path(link["manifest"])
        if not parent.is_file():
            chain.append(f"{link['parent']} ({link['stage']}; manifest not found at {parent})")
            break
        current = read_json(parent, non_finite="null")
        chain.append(f"{current['run_id']} ({current['stages'][0]['name']})")
    return chain


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, list | dict):
        return json.dumps(value)
    return str(value)


def _config(manifest_path: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    path = manifest_path.parent / manifest["config_resolved_path"]
    return json.loads(path.read_text()) if path.is_file() else {}


def diff(
    path_a: Path, a: dict[str, Any], path_b: Path, b: dict[str, Any]
) -> list[tuple[str, str, str]]:
    """Rows (key, value in A, value in B) for config, environment, git, data and metrics."""
    sections = {
        "config": (_config(path_a, a), _config(path_b, b)),
        "git": (a["git"], b["git"]),
        "env": (
            {
                "python": a["python"],
                "torch": a["torch"],
                "cuda": a["cuda"],
                "lock": a["env_lock"],
                "packages": a["environment"]["packages"],
            },
            {
                "python": b["python"],
                "torch": b["torch"],
                "cuda": b["cuda"],
                "lock": b["env_lock"],
                "packages": b["environment"]["packages"],
            },
        ),
        "data": (
            {"content_hash": a["dataset"]["content_hash"], **a["dataset"]["hashes"]},
            {"content_hash": b["dataset"]["content_hash"], **b["dataset"]["hashes"]},
        ),
        "metrics": (a["metrics"], b["metrics"]),
    }
    rows = []
    for section, (left, right) in sections.items():
        flat_a, flat_b = flatten(left, section), flatten(right, section)
        for key in sorted(set(flat_a) | set(flat_b)):
            va, vb = flat_a.get(key, "<absent>"), flat_b.get(key, "<absent>")
            if va != vb:
                rows.append((key, _fmt(va), _fmt(vb)))
    return rows


def render_diff(rows: list[tuple[str, str, str]], label_a: str, label_b: str) -> str:
    """Side-by-side table of differing values."""
    if not rows:
        return "no differences in config, environment, git, data hashes or metrics"
    width_key = max(len(row[0]) for row in rows)
    width_a = min(40, max(len(label_a), *(len(row[1]) for row in rows)))
    lines = [f"{'key':<{width_key}}  {label_a:<{width_a}}  {label_b}"]
    lines += [f"{key:<{width_key}}  {va[:40]:<{width_a}}  {vb[:40]}" for key, va, vb in rows]
    return "\n".join(lines)
