"""All selective and calibration metrics of one confidence score on shared resamples."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from rigor.metrics.bootstrap import replicates, summarize
from rigor.metrics.engine import MetricEngine

COVERAGES = (0.5, 0.6, 0.7, 0.8, 0.9)
RISKS = (0.01, 0.02, 0.05, 0.10)


def score_metrics(
    probs: np.ndarray,
    labels: np.ndarray,
    confidence: np.ndarray,
    n_resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
    coverages: Sequence[float] = COVERAGES,
    risks: Sequence[float] = RISKS,
) -> dict[str, dict[str, Any]]:
    """Every selective metric of ``confidence`` (correct = argmax of ``probs`` is the label) and
    every calibration metric of ``probs``, each with a percentile bootstrap CI; all metrics
    share the same resamples (the same as bootstrap_ci draws with this seed)."""
    estimates, samples = score_replicates(
        probs, labels, confidence, n_resamples, seed, coverages, risks
    )
    return {name: summarize(samples[name], estimates[name], level) for name in estimates}


def score_replicates(
    probs: np.ndarray,
    labels: np.ndarray,
    confidence: np.ndarray,
    n_resamples: int = 1000,
    seed: int = 0,
    coverages: Sequence[float] = COVERAGES,
    risks: Sequence[float] = RISKS,
    n_bins: int = 15,
    calibration: bool = True,
) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Point estimates and the raw bootstrap replicates behind :func:`score_metrics`; with
    ``calibration`` False, the selective metrics only (the calibration metrics of ``probs``
    do not depend on the score, and a caller that compares scores needs them once)."""
    probs, labels = np.asarray(probs), np.asarray(labels)
    correct = probs.argmax(axis=1) == labels
    if calibration:
        engine = MetricEngine.build(confidence, correct, probs, labels, coverages, risks, n_bins)
    else:
        engine = MetricEngine.build(confidence, correct, coverages=coverages, risks=risks)
    estimates = {name: float(values[0]) for name, values in engine.run().items()}
    return estimates, replicates(engine.run, engine.n, n_resamples, seed)


def task_metrics(
    kind: str, output: np.ndarray, target: np.ndarray, gate: np.ndarray | None = None
) -> dict[str, float]:
    """What training logs of one task on one split, by metric name: accuracy and the AUGRC
    of the max softmax probability (classification; with the gate's AUGRC, and its coverage
    and selective risk at g >= 0.5, when the task has a gate), or MAE and Pearson's r of the
    first output (regression; r left out when a prediction is constant). Accuracy and MAE
    are float32 means, as the outputs are."""
    from rigor.metrics.regression import pearson
    from rigor.metrics.scores import sigmoid, softmax
    from rigor.metrics.selective import augrc

    if kind != "classification":
        error = np.abs(output.astype(np.float32) - target.astype(np.float32))
        values = {"mae": float(np.float32(error.mean(dtype=np.float64)))}
        r = pearson(output.reshape(len(target), -1)[:, 0], target)
        return values | ({"pearson": r} if np.isfinite(r) else {})
    hits = output.argmax(axis=1) == target
    values = {
        "acc": float(np.float32(np.count_nonzero(hits) * (1.0 / hits.size))),
        "augrc": augrc(softmax(output).max(axis=1), hits),
    }
    if gate is None:
        return values
    selection = sigmoid(gate)
    accepted = selection >= 0.5
    values |= {"gate_augrc": augrc(selection, hits), "gate_coverage": float(accepted.mean())}
    if accepted.any():
        values["gate_risk"] = float((~hits[accepted]).mean())
    return values
