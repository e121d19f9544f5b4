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

from rigor.metrics.engine import NUMPY_CELLS

CHUNK = 40
KEPT_CELLS = 2_000_000  # resamples up to this many draws (16 MB) are kept for reuse
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
    are independent, so the values do not depend on how chunks are grouped. Resamples of
    at most ``KEPT_CELLS`` draws are made once per process and kept (a stage bootstraps
    dozens of statistics on the same resamples); larger ones are drawn piece by piece in the
    pool's threads, so at most one piece per thread is in memory. Pieces run on a thread
    pool kept for the process.
    """
    plan = _plan(n, n_resamples, seed)
    if n * n_resamples <= KEPT_CELLS:
        kept = _kept(n, n_resamples, seed)

        def piece(k: int) -> dict[str, np.ndarray]:
            return batched(kept[k])

    else:

        def piece(k: int) -> dict[str, np.ndarray]:
            return batched(_drawn(n, plan[k]))

    workers = workers or min(len(plan), os.cpu_count() or 1)
    indices = range(len(plan))
    if workers == 1:
        parts = [piece(k) for k in indices]
    else:
        parts = list(_pool(workers).map(piece, indices))
    return {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}


Piece = list[tuple[int, np.random.SeedSequence]]


def _plan(n: int, n_resamples: int, seed: int) -> list[Piece]:
    """(size, seed) of each chunk, grouped into pieces of consecutive chunks."""
    sizes = [min(CHUNK, n_resamples - start) for start in range(0, n_resamples, CHUNK)]
    chunks = list(zip(sizes, np.random.SeedSequence(seed).spawn(len(sizes)), strict=True))
    per_piece = max(1, NUMPY_CELLS // max(1, n * CHUNK))
    return [chunks[k : k + per_piece] for k in range(0, len(chunks), per_piece)]


def _drawn(n: int, piece: Piece) -> np.ndarray:
    """The draws of one piece: its chunks' resamples, each from the chunk's own seed."""
    draws = [draw(n, size, np.random.default_rng(child)) for size, child in piece]
    return draws[0] if len(draws) == 1 else np.concatenate(draws)


@functools.lru_cache(maxsize=4)
def _kept(n: int, n_resamples: int, seed: int) -> tuple[np.ndarray, ...]:
    """Every piece's draws, made once and read-only (a metric cannot change them)."""
    pieces = tuple(_drawn(n, piece) for piece in _plan(n, n_resamples, seed))
    for piece in pieces:
        piece.setflags(write=False)
    return pieces


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


def ci_options(options: Any) -> dict[str, Any]:
    """The bootstrap settings (n_resamples, level, seed) of an ``evaluation`` config section:
    what every CI of a stage uses."""
    return {"n_resamples": options.n_resamples, "level": options.level, "seed": options.seed}
