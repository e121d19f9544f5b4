"""Compiled per-resample kernels (numba, nogil) for the selective and calibration metrics.

One resample is a row of integer counts over samples sorted by the selective confidence.
:func:`resample_stats` turns a chunk of resamples into one row of statistics each, in two
passes over the tie groups; the plain metric functions call it with every count equal to 1,
so point estimates and bootstrap replicates share this one implementation. Definitions are
in docs/metrics.md.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np


def _cache_dir() -> str | None:
    """Where numba caches the compiled kernels: beside this file when it is writable (numba's
    default), else a user cache folder, so a read-only install still imports (and ``predict``
    still runs). ``NUMBA_CACHE_DIR`` in the environment wins."""
    if os.environ.get("NUMBA_CACHE_DIR") or os.access(Path(__file__).parent, os.W_OK):
        return None
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return str(base / "rigor" / "numba")


_USER_CACHE = _cache_dir()
if _USER_CACHE is not None:
    os.environ["NUMBA_CACHE_DIR"] = _USER_CACHE
    if "numba" in sys.modules:  # imported already: its config has read the environment
        sys.modules["numba"].config.CACHE_DIR = _USER_CACHE

from numba import njit  # noqa: E402  (after the cache folder is chosen)

# Relative slack when comparing a ratio with a decimal target (absorbs rounding only:
# distinct ratios of n <= 1e7 samples differ by far more).
TOL = 1e-12


@njit(nogil=True, cache=True)
def _selective(weight, wrong, coverages, risks, out, offset):  # type: ignore[no-untyped-def]
    """AURC, AUGRC, Risk@Coverage, Coverage@Risk from per-group weights and error counts.

    Groups are ordered by ascending confidence; threshold g accepts groups g.. G-1.
    """
    groups = weight.shape[0]
    accepted = np.empty(groups)
    errors = np.empty(groups)
    a = 0.0
    e = 0.0
    for g in range(groups - 1, -1, -1):
        a += weight[g]
        e += wrong[g]
        accepted[g] = a
        errors[g] = e
    total = a
    k, m = coverages.shape[0], risks.shape[0]
    for j in range(k + m):
        out[offset + 2 + j] = np.nan
    area_sel = 0.0
    area_gen = 0.0
    running_min = np.inf
    prev_risk = 0.0
    prev_gen = 0.0
    for g in range(groups):
        risk = errors[g] / accepted[g] if accepted[g] > 0 else prev_risk
        gen = errors[g] / total
        if g > 0:
            area_sel += weight[g - 1] * (prev_risk + risk)
            area_gen += weight[g - 1] * (prev_gen + gen)
        if accepted[g] > 0:
            running_min = min(running_min, risk)
            for j in range(k):
                if accepted[g] >= coverages[j] * total * (1 - TOL):
                    out[offset + 2 + j] = running_min
            for j in range(m):
                if np.isnan(out[offset + 2 + k + j]) and risk <= risks[j] * (1 + TOL):
                    out[offset + 2 + k + j] = accepted[g] / total
        prev_risk = risk
        prev_gen = gen
    area_sel += weight[groups - 1] * 2 * prev_risk  # close at (0, last selective risk)
    area_gen += weight[groups - 1] * prev_gen  # close at (0, 0)
    out[offset] = area_sel / (2 * total)
    out[offset + 1] = area_gen / (2 * total)


@njit(nogil=True, cache=True)
def _groups(counts, errors, starts):  # type: ignore[no-untyped-def]
    """Per tie group: total count and count of wrong samples."""
    groups = starts.shape[0]
    n = counts.shape[0]
    weight = np.zeros(groups)
    wrong = np.zeros(groups)
    for g in range(groups):
        end = starts[g + 1] if g + 1 < groups else n
        for i in range(starts[g], end):
            weight[g] += counts[i]
            wrong[g] += counts[i] * errors[i]
    return weight, wrong


@njit(nogil=True, cache=True)
def _calibration(counts, bins, gap, nll, brier, correct, conf_order, n_bins, out, offset):  # type: ignore[no-untyped-def]
    """ECE, adaptive ECE, NLL, Brier and accuracy of one weighting."""
    n = counts.shape[0]
    bin_gap = np.zeros(n_bins)
    total = 0.0
    s_nll = 0.0
    s_brier = 0.0
    s_correct = 0.0
    for i in range(n):
        c = counts[i]
        if c == 0:
            continue
        total += c
        bin_gap[bins[i]] += c * gap[i]
        s_nll += c * nll[i]
        s_brier += c * brier[i]
        s_correct += c * correct[i]
    ece = 0.0
    for b in range(n_bins):
        ece += abs(bin_gap[b])
    # adaptive: walk samples in confidence order; bin b holds ranks [cut_b, cut_{b+1})
    adaptive = 0.0
    current = 0.0
    rank = 0.0
    b = 0
    cut = np.floor((b + 1) * total / n_bins)
    for t in range(n):
        i = conf_order[t]
        c = float(counts[i])
        while c > 0:
            take = min(c, cut - rank)
            current += take * gap[i]
            rank += take
            c -= take
            if rank >= cut and b < n_bins:
                adaptive += abs(current)
                current = 0.0
                b += 1
                cut = np.floor((b + 1) * total / n_bins) if b < n_bins else np.inf
    adaptive += abs(current)
    out[offset] = ece / total
    out[offset + 1] = adaptive / total
    out[offset + 2] = s_nll / total
    out[offset + 3] = s_brier / total
    out[offset + 4] = s_correct / total


@njit(nogil=True, cache=True)
def resample_stats(  # type: ignore[no-untyped-def]
    draws,
    position,
    errors,
    starts,
    coverages,
    risks,
    bins,
    gap,
    nll,
    brier,
    correct,
    conf_order,
    n_bins,
    calib,
):
    """Statistics of each row of ``draws`` (B, d): indices of the samples drawn.

    ``position[i]`` is where sample i sits in confidence order. Columns: aurc, augrc,
    risk@coverages..., coverage@risks..., then (when ``calib``) ece, adaptive_ece, nll,
    brier, accuracy.
    """
    rows, d = draws.shape
    n = position.shape[0]
    k, m = coverages.shape[0], risks.shape[0]
    width = 2 + k + m + (5 if calib else 0)
    out = np.empty((rows, width))
    counts = np.zeros(n, dtype=np.int64)
    for r in range(rows):
        counts[:] = 0
        for j in range(d):
            counts[position[draws[r, j]]] += 1
        weight, wrong = _groups(counts, errors, starts)
        _selective(weight, wrong, coverages, risks, out[r], 0)
        if calib:
            _calibration(
                counts, bins, gap, nll, brier, correct, conf_order, n_bins, out[r], 2 + k + m
            )
    return out
