"""The classification part of the eval stage: selective and calibration metrics of every
confidence score with bootstrap CIs, the calibrated policy on val_test, and the plots."""

from __future__ import annotations

from typing import Any

import numpy as np

from rigor.config.models import EvaluationConfig
from rigor.evaluation import plots
from rigor.evaluation.bootstrap import bootstrap_ci, summarize
from rigor.evaluation.classification import confusions, macro_f1, mcc
from rigor.evaluation.scores import policy_confidence, sigmoid, softmax
from rigor.evaluation.selective import generalized_risk_coverage_curve, risk_coverage_curve
from rigor.evaluation.summary import score_replicates
from rigor.stages import RunContext

BAND_RESAMPLES = 200
GRID = np.linspace(0.01, 1.0, 100)


def ci_options(options: EvaluationConfig) -> dict[str, Any]:
    """The bootstrap settings every CI of an eval stage uses."""
    return {"n_resamples": options.n_resamples, "level": options.level, "seed": options.seed}


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


def _accuracy(predicted: np.ndarray, labels: np.ndarray) -> float:
    return float((predicted == labels).mean())


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
    augrc_samples: dict[str, np.ndarray] = {}
    scores = confidence_scores(logits, temperature, gate)
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
    if policy is not None:
        result["policy"] = _policy(
            logits, labels, policy_confidence(logits, gate, policy), policy, options
        )
    files = _classification_plots(
        ctx, task, spec, logits, labels, scores, temperature, result, augrc_samples, options
    )
    return result, files


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

    def coverage(acc: np.ndarray, _: np.ndarray) -> float:
        return float(acc.mean())

    def risk(acc: np.ndarray, err: np.ndarray) -> float:
        return float(err[acc].mean()) if acc.any() else float("nan")

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
    wrong: 0 errors in 257 accepted gives about 0.0116 at 95%.
    """
    from scipy.special import betaincinv  # the Beta quantile; scipy.stats costs a second

    if accepted == 0:
        return float("nan")
    if errors >= accepted:
        return 1.0
    return float(betaincinv(errors + 1, accepted - errors, level))


def _band(
    confidence: np.ndarray, correct: np.ndarray, seed: int, generalized: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Curve on GRID (step: the point with the smallest coverage >= c) and a 95% band."""
    curve = generalized_risk_coverage_curve if generalized else risk_coverage_curve

    def on_grid(conf: np.ndarray, corr: np.ndarray) -> np.ndarray:
        coverage, risk, _ = curve(conf, corr)
        index = np.searchsorted(-coverage, -GRID, side="right") - 1  # last point with coverage >= c
        return risk[np.clip(index, 0, len(risk) - 1)]

    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(confidence), size=(BAND_RESAMPLES, len(confidence)))
    curves = np.stack([on_grid(confidence[d], correct[d]) for d in draws])
    lower, upper = np.percentile(curves, [2.5, 97.5], axis=0)
    return on_grid(confidence, correct), lower, upper


def _classification_plots(
    ctx: RunContext,
    task: str,
    spec: dict[str, Any],
    logits: np.ndarray,
    labels: np.ndarray,
    scores: dict[str, np.ndarray],
    temperature: float | None,
    result: dict[str, Any],
    augrc_samples: dict[str, np.ndarray],
    options: EvaluationConfig,
) -> list[str]:
    correct = softmax(logits).argmax(axis=1) == labels
    files = {
        name: f"eval/{task}_{name}.png"
        for name in (
            "rc_curve",
            "generalized_rc_curve",
            "reliability",
            "augrc_bootstrap",
            "confusion_matrix",
        )
    }
    for key, generalized, label in (
        ("rc_curve", False, "selective risk"),
        ("generalized_rc_curve", True, "generalized risk"),
    ):
        bands = {
            name: _band(conf, correct, options.seed, generalized) for name, conf in scores.items()
        }
        plots.curve_with_band(
            GRID,
            bands,
            label,
            f"{task}: {label} vs coverage on val_test (95% band)",
            ctx.path(files[key]),
        )
    plots.reliability_diagram(
        softmax(logits, temperature or 1.0),
        labels,
        f"{task}: val_test, T={temperature or 1.0:.3f}",
        options.n_bins,
        ctx.path(files["reliability"]),
    )
    best = "msp_calibrated" if temperature else "msp"
    augrc = result["scores"][best]["augrc"]
    plots.histogram(
        augrc_samples[best],
        augrc["estimate"],
        (augrc["ci_lower"], augrc["ci_upper"]),
        f"{task}: AUGRC ({best}) over {options.n_resamples} resamples",
        ctx.path(files["augrc_bootstrap"]),
    )
    k = int(spec["num_classes"])
    matrix = confusions(None, softmax(logits).argmax(axis=1), labels, k)[0]
    classes = spec.get("classes") or [str(i) for i in range(k)]
    plots.confusion(
        matrix, list(classes), f"{task}: confusion on val_test", ctx.path(files["confusion_matrix"])
    )
    return list(files.values())
