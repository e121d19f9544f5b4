"""Shared fixtures: the real shipped configs, shrunk, writing into temporary folders."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
SMOKE = CONFIGS / "experiment" / "smoke.yaml"


def load_script(name: str) -> ModuleType:
    """Import ``scripts/<name>.py`` as a module so tests call its ``main`` in-process."""
    spec = importlib.util.spec_from_file_location(f"script_{name}", ROOT / "scripts" / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Timeouts scale with the work: slow tests (real subprocesses, several runs) get 600 s,
    every other test the 120 s of pyproject.toml; an explicit timeout marker wins."""
    for item in items:
        if item.get_closest_marker("slow") and not item.get_closest_marker("timeout"):
            item.add_marker(pytest.mark.timeout(600))


@pytest.fixture
def run_script() -> Callable[..., int]:
    """Run a script's main through the exit-code wrapper, as the command line would."""
    from rigor.cli import run_main

    def run(name: str, *argv: str) -> int:
        return run_main(load_script(name).main, list(argv))

    return run


@pytest.fixture(scope="session")
def smoke_manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One smoke training run shared by the tests that only read its outputs."""
    from rigor.config import load_config
    from rigor.training.run import train

    out = tmp_path_factory.mktemp("smoke")
    resolved = load_config(SMOKE, sets=[f"run.output_root={out}"], environ={})
    return train(resolved, env_policy="ignore")


def short_run(out: Path) -> list[str]:
    """``--set`` values for a two-epoch, three-steps-per-epoch run writing under ``out``."""
    return [
        f"run.output_root={out}",
        "training.epochs=2",
        "training.max_steps_per_epoch=3",
        "scheduler.warmup_epochs=0.5",
        "logging.tensorboard=false",
    ]


def assert_same_checkpoints(run_a: Path, run_b: Path) -> None:
    """last.pt and best.pt of two runs hold bitwise-equal model and EMA weights."""
    import torch

    for name in ("last.pt", "best.pt"):
        a = torch.load(run_a / "checkpoints" / name, weights_only=True)
        b = torch.load(run_b / "checkpoints" / name, weights_only=True)
        for part in ("model", "ema"):
            if a[part] is None or b[part] is None:  # a run without EMA
                assert a[part] is None and b[part] is None, (name, part)
                continue
            assert all(torch.equal(a[part][k], b[part][k]) for k in a[part]), (name, part)


@pytest.fixture
def python() -> str:
    """The interpreter running the tests (the project's virtual environment)."""
    return sys.executable
