"""Conformity scores of every candidate label and the prediction sets they give.

These are the primitives of split-conformal classification (LAC, APS, RAPS). They live in
metrics, below the policies, so that :mod:`rigor.policies.sets` and
:mod:`rigor.policies.crc` fit and apply them and eval and predict never import calibration.

Scores are "non-conformity" scores: a low score means the label conforms. Label j is in the
set of a sample when its score is at most the fitted q_hat.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

SetMethod = Literal["lac", "aps", "raps"]
SET_METHODS: tuple[str, ...] = ("lac", "aps", "raps")
# Every set calibrate fits and eval reports: name -> (method, randomised).
SET_VARIANTS: dict[str, tuple[str, bool]] = {
    "lac": ("lac", False),
    "aps": ("aps", False),
    "aps_randomized": ("aps", True),
    "raps": ("raps", False),
    "raps_randomized": ("raps", True),
}


def variant_name(method: str, randomized: bool) -> str:
    """The SET_VARIANTS key of a method (LAC is never randomised)."""
    return f"{method}_randomized" if randomized and method != "lac" else method


SUM_TOLERANCE = 1e-4  # rows of float32 softmax sum to 1 within about 1e-6


def check_probs(probs: np.ndarray, where: str = "probs") -> np.ndarray:
    """``probs`` as float64 (n, K) rows of finite, non-negative numbers that sum to 1.

    Raises:
        ValueError: naming the first row that is not a probability vector.
    """
    values = np.asarray(probs, dtype=np.float64)
    if values.ndim != 2 or values.shape[0] == 0 or values.shape[1] < 2:
        raise ValueError(f"{where}: expected an (n, K) array with n >= 1 and K >= 2")
    bad = ~np.isfinite(values).all(axis=1)
    if bad.any():
        raise ValueError(f"{where}: row {int(np.flatnonzero(bad)[0])} has a NaN or infinite value")
    if (values < 0).any():
        row = int(np.flatnonzero((values < 0).any(axis=1))[0])
        raise ValueError(f"{where}: row {row} has a negative probability")
    off = np.abs(values.sum(axis=1) - 1.0) > SUM_TOLERANCE
    if off.any():
        row = int(np.flatnonzero(off)[0])
        raise ValueError(
            f"{where}: row {row} sums to {values[row].sum():.6g}, not 1 (pass probabilities, "
            "not logits)"
        )
    return values


def label_scores(
    probs: np.ndarray,
    method: str,
    *,
    k_reg: int = 1,
    lam: float = 0.0,
    u: np.ndarray | None = None,
) -> np.ndarray:
    """The score every candidate label would get: an (n, K) array.

    - ``lac``: 1 - p_j (Sadinle, Lei and Wasserman 2019).
    - ``aps``: the probability mass of the labels ranked at or above j (Romano, Sesia and
      Candes 2020); ties in p are ranked by label index.
    - ``raps``: APS plus ``lam * max(0, rank_j - k_reg)``, rank_j counted from 1 (Angelopoulos
      et al. 2021).

    ``u`` (one uniform draw per row, shape (n,), or per row and label, (n, K)) makes APS and
    RAPS randomised: the score is reduced by ``u * p_j``. LAC ignores it.

    Raises:
        ValueError: unknown method, bad probabilities (NaN, negative, rows not summing to 1),
            negative ``lam`` or ``k_reg``, or ``u`` of the wrong shape or outside [0, 1].
    """
    p = check_probs(probs)
    if method not in SET_METHODS:
        raise ValueError(f"method must be one of {SET_METHODS}, got {method!r}")
    if method == "lac":
        return 1.0 - p
    if lam < 0 or k_reg < 0:
        raise ValueError(f"RAPS needs lam >= 0 and k_reg >= 0, got lam={lam}, k_reg={k_reg}")
    order = np.argsort(-p, axis=1, kind="stable")
    ranked = np.take_along_axis(p, order, axis=1)
    cumulative = np.cumsum(ranked, axis=1)
    scores = np.empty_like(p)
    np.put_along_axis(scores, order, cumulative, axis=1)
    if method == "raps":
        ranks = np.empty_like(order)
        np.put_along_axis(ranks, order, np.arange(1, p.shape[1] + 1)[None, :], axis=1)
        scores = scores + lam * np.maximum(0, ranks - k_reg)
    if u is not None:
        draws = np.asarray(u, dtype=np.float64)
        draws = draws[:, None] if draws.ndim == 1 else draws
        if draws.shape[0] != p.shape[0] or draws.shape[1] not in (1, p.shape[1]):
            raise ValueError(f"u must have shape (n,) or (n, K); got {np.shape(u)}")
        if not ((draws >= 0) & (draws <= 1)).all():
            raise ValueError("u must hold uniform draws in [0, 1]")
        scores = scores - draws * p
    return scores


def prediction_sets(scores: np.ndarray, q_hat: float) -> np.ndarray:
    """Boolean (n, K): label j is in the set of row i when ``scores[i, j] <= q_hat``.

    ``q_hat = inf`` gives every label (the quantile rule had too few calibration scores).

    Raises:
        ValueError: NaN scores or a NaN ``q_hat``.
    """
    values = np.asarray(scores, dtype=np.float64)
    if np.isnan(values).any() or np.isnan(q_hat):
        raise ValueError("prediction_sets: scores and q_hat must not be NaN")
    return np.asarray(values <= q_hat)


def true_label_scores(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The score of each row's true label (the calibration scores of split conformal)."""
    y = np.asarray(labels, dtype=np.int64)
    return np.asarray(scores)[np.arange(len(y)), y]


CALIBRATE, APPLY = 0, 1  # streams of randomization(): fitting q_hat, and new samples


def randomization(n: int, seed: int, stream: int = CALIBRATE) -> np.ndarray:
    """The uniform draws of randomised APS/RAPS for n rows, reproducible from ``seed``;
    ``stream`` keeps the draws of calibration rows apart from those of new rows."""
    return np.random.default_rng(np.random.SeedSequence([seed, stream, n])).random(n)
