"""The commands shown in README.md, REPRODUCIBILITY.md and docs/ run as written.

They run in a temporary folder that links configs/ and scripts/, so outputs never land in
the repository; environment overrides (RIGOR__...) shrink training without editing the
commands. Left out: examples that need data this machine does not have (/data/...), the
worker service (tests/test_xai_worker.py) and resume (tests/test_resume.py).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

pytestmark = pytest.mark.smoke
DOCS = [ROOT / "README.md", ROOT / "REPRODUCIBILITY.md", *sorted((ROOT / "docs").glob("*.md"))]
SKIP = ("/data/", "--worker", "xai_worker", "--resume")
PLACEHOLDER = re.compile(r"results/runs/<[a-z_]+>/manifest\.json")
SHRINK = {
    "RIGOR__TRAINING__EPOCHS": "2",
    "RIGOR__SCHEDULER__WARMUP_EPOCHS": "0.5",
    "RIGOR__CALIBRATION__TARGET_RISK": "0.3",
    "RIGOR__CALIBRATION__MIN_COVERAGE": "0.1",
    "RIGOR__EVALUATION__N_RESAMPLES": "50",
    "RIGOR__XAI__N_SAMPLES": "2",
    "RIGOR__LOGGING__TENSORBOARD": "false",
}


def shell_blocks(path: Path) -> list[list[str]]:
    """Each ```bash block as its command lines (continuations joined, comments dropped)."""
    blocks = []
    for block in re.findall(r"```bash\n(.*?)```", path.read_text(), flags=re.S):
        lines = [line.split(" #")[0].strip() for line in block.replace("\\\n", " ").splitlines()]
        blocks.append([line for line in lines if line and not line.startswith("#")])
    return blocks


def quick(line: str) -> bool:
    return "scripts/" in line and not any(marker in line for marker in SKIP)


def run(script: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **SHRINK, "CI": "1"}
    return subprocess.run(
        ["bash", "-ec", script], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    for name in ("configs", "scripts", "locks"):
        (tmp_path / name).symlink_to(ROOT / name)
    return tmp_path


def test_docs_commands_run_as_written(workdir: Path) -> None:
    python = sys.executable
    tour = next(
        b
        for b in shell_blocks(ROOT / "README.md")
        if any("scripts/calibrate.py" in line for line in b)
    )
    train, *rest = [line.replace(".venv/bin/python", python) for line in tour]
    assert "scripts/train.py" in train and all("$M" in line for line in rest)
    result = run("\n".join([f"M=$({train})", *rest, 'echo "MANIFEST=$M"']), workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    manifest = result.stdout.strip().splitlines()[-1].removeprefix("MANIFEST=")
    assert (workdir / manifest).is_file()

    blocks = [b for path in DOCS for b in shell_blocks(path) if b is not tour]
    chains = [b for b in blocks if any(line.startswith("M=$(") for line in b)]
    others = [
        line
        for block in blocks
        if block not in chains
        for line in block
        if quick(line) and "$M" not in line and "scripts/train.py" not in line
    ]
    assert len(others) >= 8  # manifest.py validate/verify/show/diff, reproduce, xai, sweep x2
    assert chains  # docs/peft.md: pretrain, then fine-tune from its weights
    for line in others:
        command = PLACEHOLDER.sub(manifest, line).replace(".venv/bin/python", python)
        command = re.sub(r"^python ", f"{python} ", command)
        sweeps = sorted((workdir / "results" / "sweeps").glob("*"))
        if sweeps:
            command = command.replace("results/sweeps/<sweep_id>", str(sweeps[-1]))
        result = run(command, workdir)
        assert result.returncode == 0, f"{line}\n{result.stderr[-2000:]}"
    for block in chains:  # a block that captures a manifest runs as one script
        script = "\n".join(line.replace(".venv/bin/python", python) for line in block)
        result = run(script, workdir)
        assert result.returncode == 0, f"{script}\n{result.stderr[-2000:]}"
