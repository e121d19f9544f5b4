"""The analysis notebook executes against a classification and a per-gene regression run
(and is stored without outputs)."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nbformat
import pytest
from conftest import CONFIGS, ROOT, short_run
from nbclient import NotebookClient

pytestmark = pytest.mark.smoke
NOTEBOOK = ROOT / "notebooks" / "analysis.ipynb"


def test_notebook_has_no_stored_outputs() -> None:
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code and all(not cell.outputs and cell.execution_count is None for cell in code)


def test_notebook_executes_against_a_run(
    smoke_manifest: Path,
    tmp_path: Path,
    run_script: Callable[..., int],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    run = tmp_path / smoke_manifest.parent.name
    shutil.copytree(smoke_manifest.parent, run)
    args = [
        "--from-manifest",
        str(run / "manifest.json"),
        "--method",
        "saliency",
        "--n",
        "2",
        "--env-policy",
        "ignore",
    ]
    assert run_script("xai", *args) == 0
    outputs = _execute(run / "manifest.json", monkeypatch)
    text = "".join(out.get("text", "") for out in outputs)
    assert "run        " in text and "spearman_repeat" in text and "no regression task" in text
    images = [out for out in outputs if "image/png" in out.get("data", {})]
    assert len(images) == 3  # curves, risk-coverage, the xai grid


def test_notebook_executes_against_a_per_gene_regression_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rigor.config import load_config
    from rigor.training.run import train

    tiles = CONFIGS / "experiment" / "tiles_genes.yaml"
    config = load_config(tiles, sets=short_run(tmp_path), environ={})
    outputs = _execute(train(config, env_policy="ignore"), monkeypatch)
    text = "".join(out.get("text", "") for out in outputs)
    assert "no classification task" in text and "no xai stage yet" in text
    images = [out for out in outputs if "image/png" in out.get("data", {})]
    assert len(images) == 2  # curves, and predicted against true for the eight genes


def _execute(manifest: Path, monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Run every cell against ``manifest``; the code cells' outputs (none of them errors)."""
    monkeypatch.setenv("RIGOR_MANIFEST", str(manifest))
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(
        notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}
    ).execute()
    outputs = [out for cell in notebook.cells if cell.cell_type == "code" for out in cell.outputs]
    assert not [out for out in outputs if out.output_type == "error"]
    return outputs
