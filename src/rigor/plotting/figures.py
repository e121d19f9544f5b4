"""What each figure of calibrate and eval shows: the curves behind it and the drawing.

Each function here is one figure job for :func:`rigor.plotting.pool.draw`: it computes
what only the figure needs (bootstrap bands, set-size and FNR curves) and draws it, in a plot
worker when a pool is open. Nothing in this module is imported by the stages' own numbers,
and matplotlib is imported only where a figure is drawn.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from rigor.metrics.selective import generalized_risk_coverage_curve, risk_coverage_curve
from rigor.metrics.sets import SET_METHODS, label_scores, prediction_sets
from rigor.policies.registry import apply_policy

BAND_RESAMPLES = 200
GRID = np.linspace(0.01, 1.0, 100)


def _on_grid(confidence: np.ndarray, correct: np.ndarray, generalized: bool) -> np.ndarray:
    """The curve on GRID: at each c, the point with the smallest coverage >= c."""
    curve = generalized_risk_coverage_curve if generalized else risk_coverage_curve
    coverage, risk, _ = curve(confidence, correct)
    index = np.searchsorted(-coverage, -GRID, side="right") - 1  # last point with coverage >= c
    return risk[np.clip(index, 0, len(risk) - 1)]


def _band(
    confidence: np.ndarray, correct: np.ndarray, seed: int, generalized: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Curve on GRID and a 95% band over BAND_RESAMPLES resamples, all rows at once.

    In each resample sorted by confidence, a curve point starts at every new value; the
    point for c is the last start at or before the last rank i with (n - i) / n >= c.
    """
    n = len(confidence)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n, size=(BAND_RESAMPLES, n))
    conf = np.asarray(confidence, dtype=np.float64)[draws]
    order = np.argsort(conf, axis=1, kind="stable")
    ranked = np.take_along_axis(conf, order, axis=1)
    wrong = np.take_along_axis((~np.asarray(correct, dtype=bool))[draws], order, axis=1)
    starts = np.ones_like(ranked, dtype=bool)
    starts[:, 1:] = ranked[:, 1:] != ranked[:, :-1]
    ranks = np.arange(n)
    last_start = np.maximum.accumulate(np.where(starts, ranks, 0), axis=1)
    errors = np.cumsum(wrong[:, ::-1], axis=1, dtype=np.float64)[:, ::-1]
    rank_coverage = (n - ranks) / n
    at = np.searchsorted(-rank_coverage, -GRID, side="right") - 1
    point = last_start[:, np.clip(at, 0, n - 1)]
    errs = np.take_along_axis(errors, point, axis=1)
    curves = errs / n if generalized else errs / (n - point)
    lower, upper = np.percentile(curves, [2.5, 97.5], axis=0)
    return _on_grid(confidence, correct, generalized), lower, upper


def risk_coverage_bands(
    scores: dict[str, np.ndarray],
    correct: np.ndarray,
    seed: int,
    generalized: bool,
    title: str,
    path: Path,
) -> None:
    """Selective (or generalized) risk against coverage of every score, with 95% bands."""
    from rigor.plotting import plots

    bands = {name: _band(conf, correct, seed, generalized) for name, conf in scores.items()}
    label = "generalized risk" if generalized else "selective risk"
    plots.curve_with_band(GRID, bands, label, title, path)


def _alpha_curve(conformal: dict[str, Any], probs: np.ndarray, labels: np.ndarray) -> Any:
    """Per method: (alpha, test coverage, mean set size) at each q_hat of the alpha grid."""
    curves: dict[str, list[tuple[float, float, float]]] = {}
    rows = np.arange(len(labels))
    for method in SET_METHODS:
        fitted = conformal["sets"][method]
        scores = label_scores(probs, method, k_reg=fitted["k_reg"], lam=fitted["lam"])
        for point in conformal["alpha_curve"]:
            q_hat = math.inf if point[method] is None else point[method]
            sets = prediction_sets(scores, q_hat)
            coverage, size = float(sets[rows, labels].mean()), float(sets.sum(axis=1).mean())
            curves.setdefault(method, []).append((point["alpha"], coverage, size))
    return curves


def sets_against_alpha(
    conformal: dict[str, Any], probs: np.ndarray, labels: np.ndarray, title: str, path: Path
) -> None:
    """Test coverage and set size of each conformal method over calibrate's alpha grid."""
    from rigor.plotting import plots

    plots.sets_against_alpha(_alpha_curve(conformal, probs, labels), title, path)


def _coverage_curve(
    scrc: dict[str, Any], heads: tuple[Any, Any, Any], labels: np.ndarray
) -> list[tuple[float, float, float]]:
    """(test selection rate, test FNR among accepted) at each point of SCRC's coverage grid."""
    points = []
    for point in scrc["coverage_curve"]:
        if point["lambda"] is None:
            continue
        decisions = apply_policy({"kind": "scrc", **scrc, **point}, *heads)
        assert decisions.sets is not None
        accepted = decisions.accepted
        missed = ~decisions.sets[np.arange(len(labels)), labels]
        fnr = float(missed[accepted].mean()) if accepted.any() else math.nan
        points.append((point["coverage"], float(accepted.mean()), fnr))
    return points


def fnr_against_coverage(
    scrc: dict[str, Any], heads: tuple[Any, Any, Any], labels: np.ndarray, title: str, path: Path
) -> None:
    """SCRC's test FNR among accepted samples against the share accepted."""
    from rigor.plotting import plots

    plots.fnr_against_coverage(_coverage_curve(scrc, heads, labels), scrc["alpha"], title, path)


def reliability_diagram(
    probs: np.ndarray, labels: np.ndarray, title: str, n_bins: int, path: Path
) -> None:
    from rigor.plotting import plots

    plots.reliability_diagram(probs, labels, title, n_bins, path)


def reliability_before_after(
    before: np.ndarray, after: np.ndarray, labels: np.ndarray, record: dict[str, Any], path: Path
) -> None:
    from rigor.plotting import plots

    plots.reliability_before_after(before, after, labels, record, path)


def histogram(
    values: np.ndarray, estimate: float, ci: tuple[float, float], title: str, path: Path
) -> None:
    from rigor.plotting import plots

    plots.histogram(values, estimate, ci, title, path)


def confusion(matrix: np.ndarray, classes: list[str], title: str, path: Path) -> None:
    from rigor.plotting import plots

    plots.confusion(matrix, classes, title, path)
