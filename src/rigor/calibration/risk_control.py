"""Conformal risk control (CRC) and selective conformal risk control (SCRC).

CRC (Angelopoulos, Bates, Fisch, Lei and Schuster, "Conformal Risk Control", ICLR 2024):
for losses L_i(lambda) in [0, B] that do not increase with lambda, the smallest lambda on a
grid with (n / (n + 1)) * mean_i L_i(lambda) + B / (n + 1) <= alpha gives
E[L_new(lambda_hat)] <= alpha for a new sample exchangeable with the n calibration samples.
The built-in loss is the false-negative rate of a prediction set: the share of a sample's
true labels left out, here 1{y not in C_lambda(x)} for one label per sample, with
C_lambda(x) = {j : score_j(x) <= lambda}.

SCRC (Xu, Guo and Wei, "Selective Conformal Risk Control", arXiv 2512.12844): two stages.
Stage 1 accepts a sample when its selection score g(x) >= lambda_1; stage 2 runs CRC on the
accepted calibration samples only, so that the risk among accepted samples is at most
alpha. rigor implements the paper's calibration-only variant, SCRC-I (see :func:`scrc_fit`).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def crc_lambda(losses: np.ndarray, lambdas: np.ndarray, alpha: float, bound: float = 1.0) -> float:
    """The smallest lambda on the grid whose corrected risk is at most ``alpha``.

    Args:
        losses: (n, L), the loss of each calibration sample at each grid value, in
            [0, ``bound``] and non-increasing along the grid.
        lambdas: the L grid values, strictly increasing.
        alpha: the risk level, in (0, bound).
        bound: B, the largest value a loss can take.

    Returns:
        The smallest lambda with (n / (n + 1)) * mean loss + B / (n + 1) <= alpha, or
        ``math.inf`` when no grid value satisfies it.

    Raises:
        ValueError: NaN or out-of-range losses, losses that increase with lambda, a grid
            that does not increase, or alpha outside (0, bound).
    """
    values = np.asarray(losses, dtype=np.float64)
    grid = np.asarray(lambdas, dtype=np.float64).ravel()
    if values.ndim != 2 or values.shape[0] == 0 or values.shape[1] != grid.size:
        raise ValueError("losses must be (n, L) with n >= 1 and L the length of lambdas")
    if not np.isfinite(grid).all() or (np.diff(grid) <= 0).any():
        raise ValueError("lambdas must be finite and strictly increasing")
    if not 0 < alpha < bound:
        raise ValueError(f"alpha must lie in (0, {bound}), got {alpha}")
    if not np.isfinite(values).all() or (values < 0).any() or (values > bound).any():
        raise ValueError(f"losses must be finite numbers in [0, {bound}]")
    if (np.diff(values, axis=1) > 1e-12).any():
        raise ValueError("losses must not increase with lambda (CRC needs monotone losses)")
    n = values.shape[0]
    # (n / (n + 1)) * mean + B / (n + 1) <= alpha  <=>  sum + B <= alpha * (n + 1); the sum
    # form keeps an exact equality (26 misses of 269 at alpha 0.1) from failing by rounding.
    slack = 1e-9 * max(1.0, alpha * (n + 1))
    ok = np.flatnonzero(values.sum(axis=0) + bound <= alpha * (n + 1) + slack)
    return float(grid[ok[0]]) if ok.size else math.inf


def best_corrected_risk(losses: np.ndarray, bound: float = 1.0) -> float:
    """The lowest corrected risk any grid value reaches (what an infeasible alpha misses)."""
    values = np.asarray(losses, dtype=np.float64)
    n = values.shape[0]
    return float((n / (n + 1) * values.mean(axis=0) + bound / (n + 1)).min())


def fnr_losses(true_scores: np.ndarray, lambdas: np.ndarray) -> np.ndarray:
    """(n, L) false-negative rate of C_lambda = {j : score_j <= lambda} with one true label
    per sample: 1 when the true label's score exceeds lambda."""
    scores = np.asarray(true_scores, dtype=np.float64).ravel()
    if not np.isfinite(scores).all():
        raise ValueError("scores must be finite")
    return (scores[:, None] > np.asarray(lambdas, dtype=np.float64)[None, :]).astype(np.float64)


def selection_threshold(selection: np.ndarray, coverage: float) -> float:
    """lambda_1 of SCRC stage 1: accept when g(x) >= lambda_1.

    With k = floor((n + 1)(1 - coverage)), lambda_1 is the k-th smallest calibration score
    (-inf when k = 0), so that a new exchangeable sample is accepted with probability at
    least ``coverage`` (its rank among n + 1 continuous scores is uniform; ties only add
    acceptances).
    """
    values = np.asarray(selection, dtype=np.float64).ravel()
    if not 0 < coverage <= 1:
        raise ValueError(f"selection coverage must lie in (0, 1], got {coverage}")
    if values.size == 0 or not np.isfinite(values).all():
        raise ValueError("selection scores must be a non-empty array of finite numbers")
    k = math.floor(round((values.size + 1) * (1 - coverage), 9))
    if k < 1:
        return -math.inf
    return float(np.partition(values, k - 1)[k - 1])


def scrc_fit(
    selection: np.ndarray,
    true_scores: np.ndarray,
    lambdas: np.ndarray,
    alpha: float,
    coverage: float,
) -> dict[str, Any]:
    """SCRC-I on calibration samples: lambda_1 from the selection scores, then CRC (FNR loss)
    on the accepted samples.

    Guarantee and assumptions: the calibration and new samples are exchangeable (i.i.d. from
    one distribution). Stage 1 then accepts a new sample with probability >= ``coverage``.
    Given lambda_1, the accepted calibration samples and an accepted new sample are
    exchangeable draws from the distribution conditioned on g(x) >= lambda_1, and CRC gives
    E[FNR | accepted] <= alpha. Because lambda_1 is itself estimated on the same calibration
    samples, this holds exactly in the limit and approximately in finite samples; the paper
    states it as a PAC-style guarantee for SCRC-I and gives SCRC-T (thresholds computed
    jointly with the test samples) for an exact one. rigor does not implement SCRC-T: it
    needs the test batch at calibration time.

    Returns:
        selection_threshold, n_selected, lambda (math.inf when infeasible) and
        best_corrected_risk (what the accepted calibration samples allow at best).
    """
    g = np.asarray(selection, dtype=np.float64).ravel()
    scores = np.asarray(true_scores, dtype=np.float64).ravel()
    if g.shape != scores.shape:
        raise ValueError("selection and true-label scores must have the same length")
    threshold = selection_threshold(g, coverage)
    accepted = g >= threshold
    losses = fnr_losses(scores[accepted], lambdas)
    return {
        "selection_threshold": threshold,
        "n_selected": int(accepted.sum()),
        "lambda": crc_lambda(losses, lambdas, alpha),
        "best_corrected_risk": best_corrected_risk(losses),
    }
