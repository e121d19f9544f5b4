"""Paired differences between variants on the same test samples, with bootstrap CIs that also
cover seed variation, and McNemar's exact test for accuracy.

Every replicate draws one resample of the val_test samples, shared by all runs (the
comparison is paired: both variants are scored on the same resampled samples), and, for
each variant independently, a resample of its seeds with replacement. A variant's value in
a replicate is the mean over its drawn seeds of the metric on the drawn samples; the
difference of two variants' values is one replicate of the difference. The percentile
interval of those replicates is the CI. With one seed per variant it reflects test-sample
variation only; with several it adds the spread between seeds (a two-level bootstrap).
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import combinations
from typing import Any

import numpy as np

from rigor.compare.runs import Run, Variant
from rigor.metrics.bootstrap import CHUNK, draw, summarize
from rigor.metrics.scores import softmax

MetricFn = Callable[[np.ndarray], np.ndarray]  # (B, n) sample indices -> (B,) values


def _pearson_rows(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Pearson's r of each row pair of (B, n) arrays; NaN where either row is constant."""
    a = pred - pred.mean(axis=1, keepdims=True)
    b = target - target.mean(axis=1, keepdims=True)
    den = np.sqrt((a * a).sum(axis=1) * (b * b).sum(axis=1))
    return np.divide((a * b).sum(axis=1), den, out=np.full(len(a), np.nan), where=den > 0)


def _accuracy(draws: np.ndarray, correct: np.ndarray) -> np.ndarray:
    return np.asarray(correct[draws].mean(axis=1))


def _bind(batched: Callable[..., np.ndarray], *arrays: np.ndarray) -> MetricFn:
    """``draws -> batched(draws, *arrays)``."""

    def metric(draws: np.ndarray) -> np.ndarray:
        return np.asarray(batched(draws, *arrays), dtype=np.float64)

    return metric


def run_metrics(run: Run) -> dict[str, MetricFn]:
    """Per classification task: accuracy, MCC, macro-F1 and AUGRC (max-softmax confidence);
    over the regression tasks: the mean Pearson's r. Each maps draws to values."""
    from rigor.metrics.classification import macro_f1, mcc
    from rigor.metrics.selective import augrc

    out: dict[str, MetricFn] = {}
    regression = []
    for task, spec in sorted(run.tasks.items()):
        if spec["kind"] != "classification":
            regression.append(task)
            continue
        probs = softmax(run.arrays[f"logits_{task}"])
        labels = run.arrays[f"targets_{task}"].astype(np.int64)
        pred, conf = probs.argmax(axis=1), probs.max(axis=1)
        correct = (pred == labels).astype(np.float64)
        out[f"{task}/accuracy"] = _bind(_accuracy, correct)
        out[f"{task}/mcc"] = _bind(mcc.batched, pred, labels)  # type: ignore[attr-defined]
        out[f"{task}/macro_f1"] = _bind(macro_f1.batched, pred, labels)  # type: ignore[attr-defined]
        out[f"{task}/augrc"] = _bind(augrc.batched, conf, correct)  # type: ignore[attr-defined]
    if regression:
        pairs = [
            (run.arrays[f"logits_{t}"].astype(np.float64), run.arrays[f"targets_{t}"])
            for t in regression
        ]

        def pearson_mean(d: np.ndarray) -> np.ndarray:
            rows = [_pearson_rows(p[d], y.astype(np.float64)[d]) for p, y in pairs]
            return np.nanmean(np.stack(rows), axis=0)

        out["pearson_mean"] = pearson_mean
    return out


def _all(n: int) -> np.ndarray:
    return np.arange(n, dtype=np.int64)[None, :]


def bootstrap(
    variants: list[Variant], n_resamples: int, seed: int
) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, np.ndarray]]]:
    """Each variant's point estimate per metric (mean over its seeds, all samples) and its
    ``n_resamples`` replicates (shared sample draws, per-variant seed draws)."""
    n = len(variants[0].runs[0].ids)
    fns = {run.run_id: run_metrics(run) for v in variants for run in v.runs}
    names = list(next(iter(fns.values())))
    rng = np.random.default_rng(seed)
    seeds = {
        v.label: rng.integers(0, len(v.runs), size=(n_resamples, len(v.runs))) for v in variants
    }
    points: dict[str, dict[str, float]] = {}
    reps: dict[str, dict[str, np.ndarray]] = {}
    for v in variants:
        per_run = {
            name: np.array([fns[r.run_id][name](_all(n))[0] for r in v.runs]) for name in names
        }
        points[v.label] = {name: float(np.mean(values)) for name, values in per_run.items()}
        reps[v.label] = {name: np.empty(n_resamples) for name in names}
    for start in range(0, n_resamples, CHUNK):
        size = min(CHUNK, n_resamples - start)
        draws = draw(n, size, rng)
        for v in variants:
            picked = seeds[v.label][start : start + size]  # (size, S) seed indices
            for name in names:
                values = np.stack([fns[r.run_id][name](draws) for r in v.runs])  # (S, size)
                chosen = values[picked.T, np.arange(size)[None, :]]  # (S, size)
                reps[v.label][name][start : start + size] = chosen.mean(axis=0)
    return points, reps


def mcnemar(correct_a: np.ndarray, correct_b: np.ndarray) -> dict[str, Any]:
    """McNemar's exact test: b = A right and B wrong, c = A wrong and B right; the two-sided
    p-value is 2 P(X <= min(b, c)) for X ~ Binomial(b + c, 1/2), capped at 1."""
    from scipy.special import bdtr

    b = int(np.sum(correct_a & ~correct_b))
    c = int(np.sum(~correct_a & correct_b))
    p = 1.0 if b + c == 0 else min(1.0, 2.0 * float(bdtr(min(b, c), b + c, 0.5)))
    return {"a_only": b, "b_only": c, "p": p}


def _correct(run: Run, task: str) -> np.ndarray:
    logits = run.arrays[f"logits_{task}"]
    return np.asarray(logits.argmax(axis=1) == run.arrays[f"targets_{task}"])


def compare(
    variants: list[Variant], n_resamples: int = 1000, seed: int = 0, level: float = 0.95
) -> dict[str, Any]:
    """Every pair (A, B) of variants, in order: per metric, A's and B's estimates and the
    difference B - A with its CI; McNemar per seed both variants share, per task."""
    points, reps = bootstrap(variants, n_resamples, seed)
    tasks = sorted(t for t, s in variants[0].runs[0].tasks.items() if s["kind"] == "classification")
    pairs = []
    for a, b in combinations(variants, 2):
        diffs = {
            name: summarize(
                reps[b.label][name] - reps[a.label][name], points[b.label][name] - value, level
            )
            for name, value in points[a.label].items()
        }
        seeds_b = {r.seed: r for r in b.runs}
        tests = {
            task: [
                {"seed": ra.seed, **mcnemar(_correct(ra, task), _correct(seeds_b[ra.seed], task))}
                for ra in a.runs
                if ra.seed in seeds_b
            ]
            for task in tasks
        }
        pairs.append({"a": a.label, "b": b.label, "differences": diffs, "mcnemar": tests})
    return {
        "n_samples": int(len(variants[0].runs[0].ids)),
        "n_resamples": n_resamples,
        "seed": seed,
        "level": level,
        "variants": [
            {
                "label": v.label,
                "runs": [r.run_id for r in v.runs],
                "seeds": [r.seed for r in v.runs],
                "estimates": points[v.label],
                "cost": _mean_cost(v),
            }
            for v in variants
        ],
        "pairs": pairs,
    }


def _mean_cost(variant: Variant) -> dict[str, float | None]:
    """Trainable parameters, peak memory and time per epoch, averaged over the seeds."""
    out: dict[str, float | None] = {}
    for key in ("params_trainable", "peak_memory_mb", "epoch_time_s"):
        values = [r.cost[key] for r in variant.runs if r.cost.get(key) is not None]
        out[key] = float(np.mean(values)) if values else None  # type: ignore[arg-type]
    return out
