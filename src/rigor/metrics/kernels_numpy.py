"""The compiled kernels' arithmetic in numpy, vectorised over resamples, equal bit for bit.

:func:`resample_stats` takes the arguments of :func:`rigor.metrics.kernels_numba.resample_stats`
and returns the same array. Every sum the kernels accumulate in a loop is taken here with
``np.cumsum`` (sequential, in the same order); sums of integer counts are exact in any order.
Terms a kernel skips (samples drawn zero times, samples outside a bin) are added here as
zeros, which leaves a float sum unchanged (``x + 0.0 == x``; a ``-0.0`` sum only occurs
before a nonzero term or under ``abs``).

Point estimates and small bootstraps use this path, so a stage that evaluates a few hundred
samples never imports numba or loads its compiled kernels (about 0.6 s on two cores); large
inputs use the kernels, whose loops do not need the (resamples, n) temporaries used here.
"""

from __future__ import annotations

import numpy as np

TOL = 1e-12  # as rigor.metrics.kernels_numba.TOL


def _last(terms: np.ndarray) -> np.ndarray:
    """Sequential row sums (0.0 for rows without terms)."""
    if terms.shape[1] == 0:
        return np.zeros(terms.shape[0])
    return np.cumsum(terms, axis=1)[:, -1]


def _selective(
    weight: np.ndarray, wrong: np.ndarray, coverages: np.ndarray, risks: np.ndarray
) -> np.ndarray:
    rows, groups = weight.shape
    accepted = np.cumsum(weight[:, ::-1], axis=1)[:, ::-1]
    errors = np.cumsum(wrong[:, ::-1], axis=1)[:, ::-1]
    total = accepted[:, :1]
    kept = accepted > 0  # a prefix of the groups: accepted only shrinks
    with np.errstate(divide="ignore", invalid="ignore"):
        raw = errors / accepted
    # groups with nothing accepted repeat the last selective risk (the kernel's prev_risk)
    carried = np.maximum.accumulate(np.where(kept, np.arange(groups), 0), axis=1)
    risk = np.take_along_axis(raw, carried, axis=1)
    gen = errors / total
    out = np.empty((rows, 2 + len(coverages) + len(risks)))
    area_sel = _last(weight[:, :-1] * (risk[:, :-1] + risk[:, 1:]))
    area_sel = area_sel + weight[:, -1] * 2 * risk[:, -1]
    area_gen = _last(weight[:, :-1] * (gen[:, :-1] + gen[:, 1:]))
    area_gen = area_gen + weight[:, -1] * gen[:, -1]
    out[:, 0] = area_sel / (2 * total[:, 0])
    out[:, 1] = area_gen / (2 * total[:, 0])
    running_min = np.minimum.accumulate(np.where(kept, risk, np.inf), axis=1)
    index = np.arange(rows)
    for j, coverage in enumerate(coverages):
        # the qualifying groups form a prefix; the value is the running minimum at its end
        last = (kept & (accepted >= coverage * total * (1 - TOL))).sum(axis=1) - 1
        out[:, 2 + j] = np.where(last >= 0, running_min[index, np.maximum(last, 0)], np.nan)
    for j, target in enumerate(risks):
        hit = kept & (risk <= target * (1 + TOL))
        first = hit.argmax(axis=1)
        value = accepted[index, first] / total[:, 0]
        out[:, 2 + len(coverages) + j] = np.where(hit.any(axis=1), value, np.nan)
    return out


def _calibration(
    weights: np.ndarray,
    bins: np.ndarray,
    gap: np.ndarray,
    nll: np.ndarray,
    brier: np.ndarray,
    correct: np.ndarray,
    conf_order: np.ndarray,
    n_bins: int,
) -> np.ndarray:
    """ECE, adaptive ECE, NLL, Brier and accuracy of each row of ``weights`` (draw counts
    as floats, samples in confidence order)."""
    total = weights.sum(axis=1)  # integers: exact
    ece = np.zeros(len(weights))
    for b in range(n_bins):
        members = np.flatnonzero(bins == b)
        ece = ece + np.abs(_last(weights[:, members] * gap[members]))
    # adaptive: bin b holds ranks [cut(b - 1), cut(b)) of the samples in confidence order;
    # a sample drawn c times covers ranks [before, before + c) and may straddle bins
    ordered = weights[:, conf_order]
    after = np.cumsum(ordered, axis=1)
    before = after - ordered
    gap_ordered = gap[conf_order]
    adaptive = np.zeros(len(weights))
    low = np.zeros(len(weights))
    for b in range(n_bins):
        high = np.floor((b + 1) * total / n_bins)
        take = np.clip(np.minimum(after, high[:, None]) - np.maximum(before, low[:, None]), 0, None)
        adaptive = adaptive + np.abs(_last(take * gap_ordered))
        low = high
    out = np.empty((len(weights), 5))
    out[:, 0] = ece / total
    out[:, 1] = adaptive / total
    out[:, 2] = _last(weights * nll) / total
    out[:, 3] = _last(weights * brier) / total
    out[:, 4] = _last(weights * correct) / total
    return out


def resample_stats(  # noqa: PLR0913  (the kernel's signature)
    draws: np.ndarray,
    position: np.ndarray,
    errors: np.ndarray,
    starts: np.ndarray,
    coverages: np.ndarray,
    risks: np.ndarray,
    bins: np.ndarray,
    gap: np.ndarray,
    nll: np.ndarray,
    brier: np.ndarray,
    correct: np.ndarray,
    conf_order: np.ndarray,
    n_bins: int,
    calib: bool,
) -> np.ndarray:
    """What the kernel of the same name returns, for the same arguments."""
    rows = draws.shape[0]
    n = position.shape[0]
    cells = position[draws] + n * np.arange(rows)[:, None]
    counts = np.bincount(cells.ravel(), minlength=rows * n).reshape(rows, n)
    weights = counts.astype(np.float64)
    weight = np.add.reduceat(weights, starts, axis=1)  # integers: exact
    wrong = np.add.reduceat(weights * errors, starts, axis=1)
    out = _selective(weight, wrong, coverages, risks)
    if calib:
        extra = _calibration(weights, bins, gap, nll, brier, correct, conf_order, n_bins)
        out = np.concatenate([out, extra], axis=1)
    return out
