"""Selective-classification metrics, following the conventions of Traub et al. (NeurIPS 2024),
"Overcoming Common Flaws in the Evaluation of Selective Classification Systems".

A sample is accepted when its confidence >= threshold. The risk-coverage curve has one point
per distinct confidence value (thresholds ascending, so coverage starts at 1): tied samples
are accepted or rejected together and no result depends on row order. Selective risk is
errors accepted / accepted; generalized risk is errors accepted / all samples. Areas use the
trapezoid rule over coverage, unscaled. AURC closes the curve at (coverage 0, the last
selective risk); AUGRC at (coverage 0, risk 0). See docs/metrics.md for the formulas.

The values come from :class:`rigor.metrics.engine.MetricEngine` (shared with the bootstrap:
compiled kernels, or their numpy twin for small inputs); :func:`risk_coverage_curve` computes
the curve itself for plots.
"""

from __future__ import annotations

import math

import numpy as np

from rigor.metrics.bootstrap import with_batched
from rigor.metrics.engine import MetricEngine, check_correct


def _curve(confidence: np.ndarray, correct: np.ndarray) -> tuple[np.ndarray, ...]:
    confidence = np.asarray(confidence, dtype=np.float64).ravel()
    correct = check_correct(correct)
    if confidence.shape != correct.shape or confidence.size == 0:
        raise ValueError("confidence and correct must be non-empty and of equal length")
    order = np.argsort(confidence, kind="stable")
    ranked = confidence[order]
    starts = np.flatnonzero(np.r_[True, ranked[1:] != ranked[:-1]])
    errors_at = np.add.reduceat((~correct[order]).astype(np.float64), starts)
    counts_at = np.add.reduceat(np.ones(len(order)), starts)
    accepted = np.cumsum(counts_at[::-1])[::-1]
    errors = np.cumsum(errors_at[::-1])[::-1]
    n = len(order)
    return accepted / n, errors / accepted, errors / n, ranked[starts]


def risk_coverage_curve(
    confidence: np.ndarray, correct: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(coverage, selective risk, threshold) per distinct confidence, coverage from 1 down."""
    coverage, risk, _, thresholds = _curve(confidence, correct)
    return coverage, risk, thresholds


def generalized_risk_coverage_curve(
    confidence: np.ndarray, correct: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(coverage, generalized risk, threshold) per distinct confidence."""
    coverage, _, generalized, thresholds = _curve(confidence, correct)
    return coverage, generalized, thresholds


def _stat(
    name: str,
    confidence: np.ndarray,
    correct: np.ndarray,
    draws: np.ndarray | None = None,
    **kw: float,
) -> np.ndarray:
    coverages = [kw["coverage"]] if "coverage" in kw else []
    risks = [kw["risk"]] if "risk" in kw else []
    engine = MetricEngine.build(confidence, correct, coverages=coverages, risks=risks)
    return engine.run(draws)[name]


def _aurc_b(draws: np.ndarray, confidence: np.ndarray, correct: np.ndarray) -> np.ndarray:
    return _stat("aurc", confidence, correct, draws)


def _augrc_b(draws: np.ndarray, confidence: np.ndarray, correct: np.ndarray) -> np.ndarray:
    return _stat("augrc", confidence, correct, draws)


def _rac_b(
    draws: np.ndarray, confidence: np.ndarray, correct: np.ndarray, coverage: float
) -> np.ndarray:
    return _stat(f"risk@{coverage:g}", confidence, correct, draws, coverage=coverage)


def _car_b(
    draws: np.ndarray, confidence: np.ndarray, correct: np.ndarray, risk: float
) -> np.ndarray:
    return _stat(f"coverage@{risk:g}", confidence, correct, draws, risk=risk)


@with_batched(_aurc_b)
def aurc(confidence: np.ndarray, correct: np.ndarray) -> float:
    """Area under the selective risk-coverage curve."""
    return float(_aurc_b(None, confidence, correct)[0])  # type: ignore[arg-type]


@with_batched(_augrc_b)
def augrc(confidence: np.ndarray, correct: np.ndarray) -> float:
    """Area under the generalized risk-coverage curve."""
    return float(_augrc_b(None, confidence, correct)[0])  # type: ignore[arg-type]


@with_batched(_rac_b)
def risk_at_coverage(confidence: np.ndarray, correct: np.ndarray, coverage: float) -> float:
    """Lowest selective risk among curve points with coverage >= ``coverage``."""
    return float(_rac_b(None, confidence, correct, coverage)[0])  # type: ignore[arg-type]


@with_batched(_car_b)
def coverage_at_risk(confidence: np.ndarray, correct: np.ndarray, risk: float) -> float:
    """Largest coverage among curve points with selective risk <= ``risk``.

    Returns NaN when no point qualifies ("infeasible"); never a coverage from inside a tie
    group, since every point accepts or rejects a tie group whole.
    """
    return float(_car_b(None, confidence, correct, risk)[0])  # type: ignore[arg-type]


def auroc(confidence: np.ndarray, correct: np.ndarray) -> float:
    """P(confidence of a correct sample > that of a wrong one), ties counted half."""
    from scipy.stats import rankdata

    confidence = np.asarray(confidence, dtype=np.float64).ravel()
    correct = check_correct(correct)
    n_pos, n_neg = correct.sum(), (~correct).sum()
    if n_pos == 0 or n_neg == 0:
        return math.nan
    ranks = rankdata(confidence)
    return float((ranks[correct].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))
