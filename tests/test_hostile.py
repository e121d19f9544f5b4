"""The hostile script (benchmarks/hostile.py) keeps working: one of its groups, run here."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT


@pytest.mark.slow
def test_the_hostile_script_runs_its_error_group_clean(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "benchmarks/hostile.py", "--out", str(tmp_path), "--only", "errors"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=500,
    )
    assert done.returncode == 0, done.stdout[-3000:]
    tally = (tmp_path / "hostile.md").read_text()
    assert "| errors | 8 | 0 | 8 | 0 |" in tally and "Failures" not in tally
