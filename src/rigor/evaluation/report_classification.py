"""The classification part of the eval stage: selective and calibration metrics of every
confidence score with bootstrap CIs, the calibrated policy on val_test, and the plots."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from rigor.config.models import EvaluationConfig
from rigor.metrics.bootstrap import bootstrap_ci, ci_options, summarize, with_batched
from rigor.metrics.classification import confusions, macro_f1, mcc
from rigor.metrics.scores import policy_confidence, sigmoid, softmax
from rigor.metrics.summary import score_replicates
from rigor.plotting import figures
from rigor.plotting.pool import draw
from rigor.stages import RunContext


def confidence_scores(
    logits: np.ndarray, temperature: float | None, gate_logits: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """MSP, max-logit and negative entropy; calibrated MSP when a temperature is given; the
    SelectiveNet selection score ``gate`` when the task has a gate."""
    probs = softmax(logits)
    logp = np.log(np.clip(probs, 1e-300, 1.0))
    scores = {
        "msp": probs.max(axis=1),
        "max_logit": np.asarray(logits, dtype=np.float64).max(axis=1),
        "neg_entropy": (probs * logp).sum(axis=1),
    }
    if temperature is not None:
        scores["msp_calibrated"] = softmax(logits, temperature).max(axis=1)
    if gate_logits is not None:
        scores["gate"] = sigmoid(gate_logits)
    return scores


def _accuracy_b(draws: np.ndarray | None, predicted: np.ndarray, labels: np.ndarray) -> np.ndarray:
    hits = predicted == labels
    if draws is None:
        draws = np.arange(len(hits))[None]
    # an integer count over n: the same bits as hits.mean() of each resample
    return hits[draws].sum(axis=1, dtype=np.float64) / draws.shape[1]


@with_batched(_accuracy_b)
def _accuracy(predicted: np.ndarray, labels: np.ndarray) -> float:
    return float(_accuracy_b(None, predicted, labels)[0])


def classification_report(
    ctx: RunContext,
    task: str,
    spec: dict[str, Any],
    logits: np.ndarray,
    labels: np.ndarray,
    gate: np.ndarray | None,
    policy: dict[str, Any] | None,
    options: EvaluationConfig,
) -> tuple[dict[str, Any], list[str]]:
    probs = softmax(logits)
    predicted = probs.argmax(axis=1)
    temperature = policy["temperature"] if policy else None
    result: dict[str, Any] = {
        "kind": "classification",
        "n": int(len(labels)),
        "accuracy": bootstrap_ci(_accuracy, predicted, labels, **ci_options(options)),
        "mcc": bootstrap_ci(mcc, predicted, labels, **ci_options(options)),
        "macro_f1": bootstrap_ci(macro_f1, predicted, labels, **ci_options(options)),
        "scores": {},
    }
    scores = confidence_scores(logits, temperature, gate)
    # figures that need no bootstrap go to the plot workers first, to draw beside it
    files = _figures(ctx, task, spec, logits, labels, scores, temperature, options)
    augrc_samples = _score_metrics(result, logits, labels, probs, scores, temperature, options)
    if policy is not None:
        result["policy"] = _policy(
            logits, labels, policy_confidence(logits, gate, policy), policy, options
        )
    best = "msp_calibrated" if temperature else "msp"
    augrc = result["scores"][best]["augrc"]
    title = f"{task}: AUGRC ({best}) over {options.n_resamples} resamples"
    files.append(f"eval/{task}_augrc_bootstrap.png")
    ci = (augrc["ci_lower"], augrc["ci_upper"])
    draw(figures.histogram, augrc_samples[best], augrc["estimate"], ci, title, ctx.path(files[-1]))
    return result, files


def _score_metrics(
    result: dict[str, Any],
    logits: np.ndarray,
    labels: np.ndarray,
    probs: np.ndarray,
    scores: dict[str, np.ndarray],
    temperature: float | None,
    options: EvaluationConfig,
) -> dict[str, np.ndarray]:
    """Selective metrics of every score (and calibration of the MSPs) into ``result``, with
    CIs on shared resamples; returns each score's AUGRC replicates."""
    augrc_samples: dict[str, np.ndarray] = {}
    for name, confidence in scores.items():
        scored = softmax(logits, temperature or 1.0) if name == "msp_calibrated" else probs
        estimates, samples = score_replicates(
            scored,
            labels,
            confidence,
            options.n_resamples,
            options.seed,
            options.coverages,
            options.risks,
            options.n_bins,
            calibration=name in ("msp", "msp_calibrated"),  # the others' are not reported
        )
        summary = {key: summarize(samples[key], estimates[key], options.level) for key in estimates}
        selective = {
            k: v
            for k, v in summary.items()
            if k not in ("ece", "adaptive_ece", "nll", "brier", "accuracy")
        }
        result["scores"][name] = selective
        if name in ("msp", "msp_calibrated"):
            key = "calibration" if name == "msp" else "calibration_temperature"
            result[key] = {
                k: summary[k] for k in ("accuracy", "nll", "brier", "ece", "adaptive_ece")
            }
        augrc_samples[name] = samples["augrc"]
    return augrc_samples


def _policy(
    logits: np.ndarray,
    labels: np.ndarray,
    confidence: np.ndarray,
    policy: dict[str, Any],
    options: EvaluationConfig,
) -> dict[str, Any]:
    """The val_calib policy applied unchanged to val_test: coverage and selective risk, with CIs."""
    accepted = confidence >= policy["threshold"]
    wrong = np.asarray(logits).argmax(axis=1) != labels

    def coverage_b(draws: np.ndarray, acc: np.ndarray, _: np.ndarray) -> np.ndarray:
        return acc[draws].sum(axis=1, dtype=np.float64) / draws.shape[1]

    def risk_b(draws: np.ndarray, acc: np.ndarray, err: np.ndarray) -> np.ndarray:
        kept = acc[draws].sum(axis=1, dtype=np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(
                kept > 0, (err & acc)[draws].sum(axis=1, dtype=np.float64) / kept, np.nan
            )

    # shares of 0/1 values: integer sums divided by a count, as acc.mean() and err[acc].mean()
    @with_batched(coverage_b)
    def coverage(acc: np.ndarray, err: np.ndarray) -> float:
        return float(coverage_b(np.arange(len(acc))[None], acc, err)[0])

    @with_batched(risk_b)
    def risk(acc: np.ndarray, err: np.ndarray) -> float:
        return float(risk_b(np.arange(len(acc))[None], acc, err)[0])

    risk_ci = bootstrap_ci(risk, accepted, wrong, **ci_options(options))
    exact = clopper_pearson_upper(int(wrong[accepted].sum()), int(accepted.sum()), options.level)
    return {
        "score": policy["score"],
        "temperature": policy["temperature"],
        "threshold": policy["threshold"],
        "target_risk": policy["target_risk"],
        "coverage": bootstrap_ci(coverage, accepted, wrong, **ci_options(options)),
        "selective_risk": risk_ci,
        "meets_target": bool(risk_ci["ci_upper"] <= policy["target_risk"]),
        "selective_risk_upper_exact": exact,
        "meets_target_exact": bool(exact <= policy["target_risk"]),
    }


def clopper_pearson_upper(errors: int, accepted: int, level: float) -> float:
    """One-sided exact binomial upper bound of the selective risk at ``level``.

    Unlike the percentile bootstrap, it does not collapse to 0 when no accepted sample is
    wrong: 0 errors in 257 accepted gives about 0.0116 at 95%. That case is the Beta(1, n)
    quantile in closed form, -expm1(log(1 - level) / n): the same bits as scipy's
    ``betaincinv(1, n, level)`` (test), without importing scipy.special (0.2 s).
    """
    if accepted == 0:
        return float("nan")
    if errors >= accepted:
        return 1.0
    if errors == 0:
        return -math.expm1(math.log(1 - level) / accepted)
    from scipy.special import betaincinv  # the Beta quantile; scipy.stats costs a second

    return float(betaincinv(errors + 1, accepted - errors, level))


def _figures(
    ctx: RunContext,
    task: str,
    spec: dict[str, Any],
    logits: np.ndarray,
    labels: np.ndarray,
    scores: dict[str, np.ndarray],
    temperature: float | None,
    options: EvaluationConfig,
) -> list[str]:
    """Send the task's figures that need no bootstrap to the plot workers (risk-coverage
    curves with their bands, reliability, confusion); returns their paths."""
    files = {name: f"eval/{task}_{name}.png" for name in ("rc_curve", "generalized_rc_curve")}
    predicted = softmax(logits).argmax(axis=1)
    for key, generalized, label in (
        ("rc_curve", False, "selective risk"),
        ("generalized_rc_curve", True, "generalized risk"),
    ):
        title = f"{task}: {label} vs coverage on val_test (95% band)"
        draw(
            figures.risk_coverage_bands,
            *(scores, predicted == labels, options.seed, generalized, title),
            ctx.path(files[key]),
        )
    files["reliability"] = f"eval/{task}_reliability.png"
    scaled = softmax(logits, temperature or 1.0)
    title = f"{task}: val_test, T={temperature or 1.0:.3f}"
    draw(
        figures.reliability_diagram,
        scaled,
        labels,
        title,
        options.n_bins,
        ctx.path(files["reliability"]),
    )
    files["confusion_matrix"] = f"eval/{task}_confusion_matrix.png"
    k = int(spec["num_classes"])
    matrix = confusions(None, predicted, labels, k)[0]
    classes = list(spec.get("classes") or [str(i) for i in range(k)])
    title = f"{task}: confusion on val_test"
    draw(figures.confusion, matrix, classes, title, ctx.path(files["confusion_matrix"]))
    return list(files.values())
