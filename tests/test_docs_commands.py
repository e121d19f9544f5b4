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

pytestmark = [pytest.mark.smoke, pytest.mark.slow]  # each block runs real stages
DOCS = [ROOT / "README.md", ROOT / "REPRODUCIBILITY.md", *sorted((ROOT / "docs").glob("*.md"))]
SKIP = ("/data/", "--worker", "xai_worker", "--resume")
PLACEHOLDER = re.compile(r"results/runs/<[a-z_]+>/manifest\.json")
SHRINK = {
    "RIGOR__TRAINING__EPOCHS": "2",
    "RIGOR__SCHEDULER__WARMUP_EPOCHS": "0.5",
    "RIGOR__CALIBRATION__TARGET_RISK": "0.3",
    "RIGOR__CALIBRATION__MIN_COVERAGE": "0.1",
    "RIGOR__EVALUATION__N_RESAMPLES": "50",
    "RIGOR__EVALUATION__FIGURE_GENES": "1",
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


def _tour() -> list[str]:
    """README's 5-minute tour: train, then every stage through $M."""
    return next(
        b
        for b in shell_blocks(ROOT / "README.md")
        if any("scripts/calibrate.py" in line for line in b)
    )


def _cases() -> list[tuple[str, list[str], bool]]:
    """(id, lines, chain) for each doc block with something to run, in document order; a
    chain block (it captures a manifest itself) runs as one script."""
    tour = _tour()
    cases = []
    for path in DOCS:
        for index, block in enumerate(shell_blocks(path)):
            if block == tour:
                continue
            chain = any(re.match(r"^[A-Z]\w*=\$\(", line) for line in block)
            lines = (
                block
                if chain
                else [
                    line
                    for line in block
                    if quick(line) and "$M" not in line and "scripts/train.py" not in line
                ]
            )
            if lines:
                cases.append((f"{path.relative_to(ROOT)}-block{index}", lines, chain))
    return cases


CASES = _cases()


@pytest.fixture(scope="module")
def tour(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The README tour, run once in a work folder the other blocks share; its manifest."""
    workdir = tmp_path_factory.mktemp("docs")
    for name in ("configs", "scripts", "locks"):
        (workdir / name).symlink_to(ROOT / name)
    train, *rest = [line.replace(".venv/bin/python", sys.executable) for line in _tour()]
    assert "scripts/train.py" in train and all("$M" in line for line in rest)
    result = run("\n".join([f"M=$({train})", *rest, 'echo "MANIFEST=$M"']), workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir, result.stdout.strip().splitlines()[-1].removeprefix("MANIFEST=")


def test_readme_tour_runs_as_written(tour: tuple[Path, str]) -> None:
    workdir, manifest = tour
    assert (workdir / manifest).is_file()


def test_every_kind_of_documented_command_is_covered() -> None:
    singles = [line for _, lines, chain in CASES if not chain for line in lines]
    assert len(singles) >= 8  # manifest.py validate/verify/show/diff, reproduce, xai, sweep x2
    assert any(chain for _, _, chain in CASES)  # docs/peft.md: pretrain, then fine-tune


@pytest.mark.parametrize("lines, chain", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_doc_block_runs_as_written(tour: tuple[Path, str], lines: list[str], chain: bool) -> None:
    workdir, manifest = tour
    python = sys.executable
    if chain:
        script = "\n".join(line.replace(".venv/bin/python", python) for line in lines)
        result = run(script, workdir)
        assert result.returncode == 0, f"{script}\n{result.stderr[-2000:]}"
        return
    for line in lines:
        command = PLACEHOLDER.sub(manifest, line).replace(".venv/bin/python", python)
        command = re.sub(r"^python ", f"{python} ", command)
        sweeps = sorted((workdir / "results" / "sweeps").glob("*"))
        if sweeps:
            command = command.replace("results/sweeps/<sweep_id>", str(sweeps[-1]))
        result = run(command, workdir)
        assert result.returncode == 0, f"{line}\n{result.stderr[-2000:]}"
