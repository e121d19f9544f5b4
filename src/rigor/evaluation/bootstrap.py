"""Bootstrap confidence intervals, vectorised over resamples where the metric allows.

A resample is a row of n sample indices drawn with replacement. Resamples come in chunks;
chunk k draws from its own child of ``SeedSequence(seed)``, so the result is the same whether
chunks run in one thread or several. Metrics with a ``batched`` form
(``metric.batched(draws, *arrays)``, the compiled kernels) handle a whole chunk at once; any
other metric is called once per resample on the resampled arrays. Either way the resamples
are the same for the same seed and n.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from rigor.evaluation.engine import NUMPY_CELLS

CHUNK = 40
Batched = Callable[[np.ndarray], dict[str, np.ndarray]]


def with_batched(
    impl: Callable[..., np.ndarray],
) -> Callable[[Callable[..., float]], Callable[..., float]]:
    """Attach ``impl(draws, *arrays, **kwargs) -> (B,)`` to a metric as ``metric.batched``."""

    def attach(metric: Callable[..., float]) -> Callable[..., float]:
        metric.batched = impl  # type: ignore[attr-defined]
        return metric

    return attach


def draw(n: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """(size, n) sample indices: ``size`` resamples of n draws with replacement."""
    return rng.integers(0, n, size=(size, n), dtype=np.int64)


def replicates(
    batched: Batched, n: int, n_resamples: int = 1000, seed: int = 0, workers: int | None = None
) -> dict[str, np.ndarray]:
    """Every named statistic of ``batched(draws)`` on ``n_resamples`` resamples, in order.

    Consecutive chunks are evaluated together while they hold at most ``NUMPY_CELLS`` draws
    (the metric engine's numpy limit: nine chunks of 270 samples), in one numpy pass. Rows
    are independent, so the values do not depend on how chunks are grouped. The draws of
    (n, n_resamples, seed) are made once per process (a stage bootstraps dozens of
    statistics on the same resamples); pieces run on a thread pool kept for the process.
    """
    pieces = _pieces(n, n_resamples, seed)
    workers = workers or min(len(pieces), os.cpu_count() or 1)
    if workers == 1:
        parts = [batched(draws) for draws in pieces]
    else:
        parts = list(_pool(workers).map(batched, pieces))
    return {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}


@functools.lru_cache(maxsize=8)
def _pieces(n: int, n_resamples: int, seed: int) -> tuple[np.ndarray, ...]:
    """The resamples of (n, n_resamples, seed) in pieces of consecutive chunks (read-only)."""
    sizes = [min(CHUNK, n_resamples - start) for start in range(0, n_resamples, CHUNK)]
    seeds = np.random.SeedSequence(seed).spawn(len(sizes))
    per_piece = max(1, NUMPY_CELLS // max(1, n * CHUNK))
    out = []
    for first in range(0, len(sizes), per_piece):
        chunks = range(first, min(first + per_piece, len(sizes)))
        draws = [draw(n, sizes[k], np.random.default_rng(seeds[k])) for k in chunks]
        piece = draws[0] if len(draws) == 1 else np.concatenate(draws)
        piece.setflags(write=False)
        out.append(piece)
    return tuple(out)


@functools.cache
def _pool(workers: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=workers, thread_name_prefix="bootstrap")


# A forked child (a plot worker) has the pool object but none of its threads: its own.
os.register_at_fork(after_in_child=_pool.cache_clear)


def summarize(values: np.ndarray, estimate: float, level: float = 0.95) -> dict[str, Any]:
    """Point estimate, bootstrap mean and std, and the percentile interval of ``level``.

    Non-finite replicates (an infeasible Coverage@Risk, say) are left out and counted.
    """
    finite = values[np.isfinite(values)]
    alpha = (1 - level) / 2
    if len(finite) == 0:
        lower = upper = mean = std = math.nan
    else:
        lower, upper = (float(v) for v in np.percentile(finite, [100 * alpha, 100 * (1 - alpha)]))
        mean, std = float(finite.mean()), float(finite.std(ddof=1)) if len(finite) > 1 else 0.0
    return {
        "estimate": float(estimate),
        "mean": mean,
        "std": std,
        "ci_lower": lower,
        "ci_upper": upper,
        "level": level,
        "n_resamples": int(len(values)),
        "n_finite": int(len(finite)),
    }


def _batched_form(
    metric: Callable[..., float],
) -> tuple[Callable[..., np.ndarray] | None, tuple[Any, ...], dict[str, Any]]:
    if isinstance(metric, functools.partial):
        impl = getattr(metric.func, "batched", None)
        return impl, metric.args, dict(metric.keywords)
    return getattr(metric, "batched", None), (), {}


def cluster_ci(
    metric: Callable[..., float],
    *arrays: Any,
    groups: Any,
    n_resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> dict[str, Any]:
    """Cluster (group) bootstrap: each resample draws as many groups as there are, with
    replacement, and takes every row of each drawn group (Field & Welsh 2007).

    Rows of one patient are not independent; resampling rows would give intervals that are
    too narrow. Chunk k of resamples draws from child k of ``SeedSequence(seed)``, as in
    :func:`bootstrap_ci`. The result also has ``n_groups``.
    """
    data = [np.asarray(a) for a in arrays]
    labels, inverse = np.unique(np.asarray(groups), return_inverse=True)
    if any(len(a) != len(inverse) for a in data):
        raise ValueError("all arrays and groups must have the same length")
    members = [np.flatnonzero(inverse == g) for g in range(len(labels))]

    def batched(draws: np.ndarray) -> dict[str, np.ndarray]:
        values = []
        for picked in draws:
            index = np.concatenate([members[g] for g in picked])
            values.append(metric(*[a[index] for a in data]))
        return {"value": np.asarray(values, dtype=np.float64)}

    values = replicates(batched, len(labels), n_resamples, seed)["value"]
    return summarize(values, metric(*data), level) | {"n_groups": int(len(labels))}


def bootstrap_ci(
    metric: Callable[..., float],
    *arrays: Any,
    n_resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> dict[str, Any]:
    """Percentile bootstrap CI of ``metric(*arrays)``: dict(estimate, mean, std, ci_lower,
    ci_upper, level, n_resamples, n_finite)."""
    data = [np.asarray(a) for a in arrays]
    n = len(data[0])
    if any(len(a) != n for a in data):
        raise ValueError("all arrays must have the same length")
    impl, args, kwargs = _batched_form(metric)

    def batched(draws: np.ndarray) -> dict[str, np.ndarray]:
        if impl is not None:
            return {"value": np.asarray(impl(draws, *data, *args, **kwargs), dtype=np.float64)}
        values = [metric(*[a[index] for a in data]) for index in draws]
        return {"value": np.asarray(values, dtype=np.float64)}

    values = replicates(batched, n, n_resamples, seed)["value"]
    return summarize(values, metric(*data), level)
