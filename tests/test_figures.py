"""Figures of calibrate and eval: the vectorised bootstrap bands, and the plot workers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from rigor.metrics.selective import generalized_risk_coverage_curve, risk_coverage_curve
from rigor.plotting import figures
from rigor.plotting.pool import PlotPool, draw


def _band_one_resample_at_a_time(
    confidence: np.ndarray, correct: np.ndarray, seed: int, generalized: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The band as defined: each resample's curve from the public curve function."""
    curve = generalized_risk_coverage_curve if generalized else risk_coverage_curve

    def on_grid(conf: np.ndarray, corr: np.ndarray) -> np.ndarray:
        coverage, risk, _ = curve(conf, corr)
        index = np.searchsorted(-coverage, -figures.GRID, side="right") - 1
        return risk[np.clip(index, 0, len(risk) - 1)]

    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(confidence), size=(figures.BAND_RESAMPLES, len(confidence)))
    curves = np.stack([on_grid(confidence[d], correct[d]) for d in draws])
    lower, upper = np.percentile(curves, [2.5, 97.5], axis=0)
    return on_grid(confidence, correct), lower, upper


def test_vectorised_band_equals_the_curve_of_each_resample() -> None:
    rng = np.random.default_rng(1)
    for case in range(60):
        n = int(rng.integers(1, 300))
        confidence = rng.random(n)
        if case % 2:
            confidence = np.round(confidence, 1)  # tie groups
        correct = rng.random(n) < rng.random()
        for generalized in (False, True):
            fast = figures._band(confidence, correct, case, generalized)
            slow = _band_one_resample_at_a_time(confidence, correct, case, generalized)
            for mine, reference in zip(fast, slow, strict=True):
                assert np.array_equal(mine, reference), (case, generalized)


def _histogram(path: Path) -> None:
    values = np.random.default_rng(0).normal(size=500)
    draw(figures.histogram, values, 0.1, (-1.9, 2.0), "test", path)


def test_plot_workers_write_the_same_figure_before_the_pool_closes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RIGOR_PLOT_WORKERS", raising=False)
    _histogram(tmp_path / "inline.png")  # no pool: drawn here
    with PlotPool() as outer:
        assert outer.workers == 2
        with PlotPool() as inner:  # a stage's pool inside a script's: the same workers
            assert inner._owner is outer
            _histogram(tmp_path / "worker.png")
        assert (tmp_path / "worker.png").is_file()  # the inner pool waited for it
    inline, worker = ((tmp_path / name).read_bytes() for name in ("inline.png", "worker.png"))
    assert worker[:8] == b"\x89PNG\r\n\x1a\n" and worker == inline


def test_a_failing_figure_fails_the_pool_and_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RIGOR_PLOT_WORKERS", "1")
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the figure's folder should be")
    with pytest.raises(OSError), PlotPool():  # raised in the worker, re-raised at the exit
        _histogram(blocker / "figure.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["not-a-folder"]


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_plot_worker_that_dies_is_an_error_not_a_wait(
    workers: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    monkeypatch.setenv("RIGOR_PLOT_WORKERS", workers)
    with pytest.raises(RuntimeError, match="plot worker died"), PlotPool():
        draw(os._exit, 3)  # the worker that takes this job exits at once
