"""Repository hygiene: the CI workflow passes actionlint, pre-commit needs no git host."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import yaml
from conftest import ROOT

ACTIONLINT = shutil.which("actionlint", path=str(Path(sys.executable).parent)) or "actionlint"


def test_ci_workflow_passes_actionlint() -> None:
    result = subprocess.run(
        [ACTIONLINT, ".github/workflows/ci.yml"], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_actionlint_catches_a_broken_workflow(tmp_path: Path) -> None:
    broken = tmp_path / ".github" / "workflows" / "ci.yml"
    broken.parent.mkdir(parents=True)
    text = (ROOT / ".github" / "workflows" / "ci.yml").read_text()
    broken.write_text(
        text.replace("runs-on: ubuntu-latest", "runs-on: ubuntu-latest\n    timeout-minutes: soon")
    )
    result = subprocess.run([ACTIONLINT, str(broken)], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode != 0 and "timeout-minutes" in result.stdout


def test_pre_commit_hooks_are_local_and_use_the_pinned_tools() -> None:
    config = yaml.safe_load((ROOT / ".pre-commit-config.yaml").read_text())
    assert [repo["repo"] for repo in config["repos"]] == ["local"]
    hooks = {hook["id"]: hook for hook in config["repos"][0]["hooks"]}
    assert {"ruff", "black", "mypy", "nbstripout", "configs-and-schemas", "actionlint"} <= set(
        hooks
    )
    assert all(hook["entry"].startswith(".venv/bin/") for hook in hooks.values())


def test_the_ci_script_runs_the_readme_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "make test" in readme and "make test" in (ROOT / ".ci" / "run").read_text()


def test_a_closed_pipe_ends_a_script_quietly(tmp_path: Path) -> None:
    """``manifest.py diff A B | head`` must not print a BrokenPipeError."""
    code = (
        "import sys\nfrom rigor.cli import run_main\n"
        "def main(argv):\n    for i in range(10**6):\n        print('line', i)\n    return 0\n"
        "sys.exit(run_main(main, []))\n"
    )
    script = tmp_path / "many.py"
    script.write_text(code)
    done = subprocess.run(
        f"{sys.executable} {script} | head -1", shell=True, capture_output=True, text=True
    )
    assert done.stdout == "line 0\n"
    assert "BrokenPipeError" not in done.stderr and "Traceback" not in done.stderr
