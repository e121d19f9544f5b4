"""The eval stage: report on val_test only; fit nothing.

Reads ``predictions/val_test.npz`` (or, with ``recompute``, runs the best checkpoint on
val_test) and, when the manifest has a calibration stage, the fitted policy in
``calibration/thresholds.json``, whose temperature and threshold it applies unchanged.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from rigor.calibration.policy import policy_confidence, sigmoid
from rigor.calibration.temperature import softmax
from rigor.config.models import EvaluationConfig
from rigor.evaluation import plots
from rigor.evaluation.bootstrap import bootstrap_ci, cluster_ci, summarize
from rigor.evaluation.classification import confusions, macro_f1, mcc
from rigor.evaluation.regression import pearson
from rigor.evaluation.selective import generalized_risk_coverage_curve, risk_coverage_curve
from rigor.evaluation.summary import score_replicates
from rigor.io import atomic_write_json, atomic_write_text
from rigor.stages import RunContext, finish_stage, open_run

READS = "predictions/val_test.npz"
POLICY = "calibration/thresholds.json"
BAND_RESAMPLES = 200
GRID = np.linspace(0.01, 1.0, 100)


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


def evaluate(
    manifest_path: Path,
    env_policy: str | None = None,
    force: bool = False,
    recompute: bool = False,
    overrides: dict[str, Any] | None = None,
) -> Path:
    """Write eval/ (metrics.json, metrics.csv, plots) and an eval stage entry."""
    from rigor.manifest import load_manifest

    manifest = load_manifest(manifest_path)
    calibrated = POLICY in manifest["sha256"]
    reads = [POLICY] if calibrated else []
    reads += [manifest["best_checkpoint"], "splits.json"] if recompute else [READS]
    ctx = open_run(manifest_path, reads, env_policy, force)
    options = ctx.config.evaluation.model_copy(update=overrides or {})
    policy = json.loads(ctx.path(POLICY).read_text()) if calibrated else None
    predictions = (
        _recomputed(ctx) if recompute else dict(np.load(ctx.path(READS), allow_pickle=False))
    )
    out = ctx.run_dir / "eval"
    out.mkdir(exist_ok=True)
    report: dict[str, Any] = {"split": "val_test", "recomputed": recompute, "tasks": {}}
    outputs: list[str] = []
    for task, spec in ctx.manifest["dataset"]["tasks"].items():
        logits, targets = predictions[f"logits_{task}"], predictions[f"targets_{task}"]
        if spec["kind"] == "classification":
            task_policy = policy if policy and policy["task"] == task else None
            gate = predictions.get(f"gate_{task}")
            result, files = _classification(
                ctx, task, spec, logits, targets.astype(np.int64), gate, task_policy, options
            )
        else:
            result, files = (
                _regression(task, logits, targets, predictions.get("groups"), options),
                [],
            )
        report["tasks"][task] = result
        outputs += files
    atomic_write_json(out / "metrics.json", report)
    atomic_write_text(out / "metrics.csv", _csv(report))
    outputs = ["eval/metrics.json", "eval/metrics.csv", *outputs]
    stage_options = {"reads": reads, "recompute": recompute, **options.model_dump()}
    finish_stage(ctx, "eval", stage_options, outputs, _summary(report))
    return out / "metrics.json"


def _recomputed(ctx: RunContext) -> dict[str, np.ndarray]:
    from rigor.training.restore import predict_split

    return predict_split(ctx, "val_test")


def _ci(options: EvaluationConfig) -> dict[str, Any]:
    return {"n_resamples": options.n_resamples, "level": options.level, "seed": options.seed}


def _classification(
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
        "mcc": bootstrap_ci(mcc, predicted, labels, **_ci(options)),
        "macro_f1": bootstrap_ci(macro_f1, predicted, labels, **_ci(options)),
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

    risk_ci = bootstrap_ci(risk, accepted, wrong, **_ci(options))
    exact = clopper_pearson_upper(int(wrong[accepted].sum()), int(accepted.sum()), options.level)
    return {
        "score": policy["score"],
        "temperature": policy["temperature"],
        "threshold": policy["threshold"],
        "target_risk": policy["target_risk"],
        "coverage": bootstrap_ci(coverage, accepted, wrong, **_ci(options)),
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
    from scipy.stats import beta

    if accepted == 0:
        return float("nan")
    if errors >= accepted:
        return 1.0
    return float(beta.ppf(level, errors + 1, accepted - errors))


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


def _regression(
    task: str,
    predicted: np.ndarray,
    targets: np.ndarray,
    groups: np.ndarray | None,
    options: EvaluationConfig,
) -> dict[str, Any]:
    """MAE, RMSE and Pearson per target (mean and median across targets), MAE per group.

    When a group (patient) holds several samples, the CIs resample groups, not samples
    (``ci_unit: group``); otherwise samples (``ci_unit: sample``).
    """
    predicted = np.asarray(predicted, dtype=np.float64).reshape(len(targets), -1)
    targets = np.asarray(targets, dtype=np.float64).reshape(len(targets), -1)
    clustered = groups is not None and len(np.unique(groups)) < len(groups)

    def ci(
        metric: Callable[[np.ndarray, np.ndarray], float], p: np.ndarray, t: np.ndarray
    ) -> dict[str, Any]:
        if clustered:
            return cluster_ci(metric, p, t, groups=groups, **_ci(options))
        return bootstrap_ci(metric, p, t, **_ci(options))

    per_target = [
        {
            "mae": ci(_mae, predicted[:, j], targets[:, j]),
            "rmse": ci(_rmse, predicted[:, j], targets[:, j]),
            "pearson": ci(pearson, predicted[:, j], targets[:, j]),
        }
        for j in range(targets.shape[1])
    ]
    result: dict[str, Any] = {
        "kind": "regression",
        "n": int(len(targets)),
        "ci_unit": "group" if clustered else "sample",
        "per_target": per_target,
    }
    for metric in ("mae", "rmse", "pearson"):
        values = np.array([row[metric]["estimate"] for row in per_target])
        result[f"{metric}_mean"], result[f"{metric}_median"] = float(np.nanmean(values)), float(
            np.nanmedian(values)
        )
    if groups is not None:
        errors = np.abs(predicted - targets).mean(axis=1)
        result["mae_per_group"] = {
            str(g): float(errors[groups == g].mean()) for g in np.unique(groups)
        }
    return result


def _mae(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).mean())


def _rmse(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.sqrt(((a - b) ** 2).mean()))


def _rows(prefix: str, node: Any) -> list[dict[str, Any]]:
    if isinstance(node, dict) and "ci_lower" in node:
        return [
            {
                "metric": prefix,
                **{k: node[k] for k in ("estimate", "mean", "std", "ci_lower", "ci_upper")},
            }
        ]
    if isinstance(node, dict):
        return [
            row
            for key, value in node.items()
            for row in _rows(f"{prefix}/{key}" if prefix else key, value)
        ]
    if isinstance(node, list):
        return [row for i, value in enumerate(node) for row in _rows(f"{prefix}/{i}", value)]
    return []


def _csv(report: dict[str, Any]) -> str:
    """One row per metric with a CI: metric, estimate, mean, std, ci_lower, ci_upper."""
    buffer = io.StringIO()
    writer = csv.DictWriter(
        buffer, fieldnames=["metric", "estimate", "mean", "std", "ci_lower", "ci_upper"]
    )
    writer.writeheader()
    writer.writerows(_rows("", report["tasks"]))
    return buffer.getvalue()


def _summary(report: dict[str, Any]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for task, result in report["tasks"].items():
        if result["kind"] == "classification":
            summary[f"{task}/augrc_msp"] = result["scores"]["msp"]["augrc"]["estimate"]
            if "gate" in result["scores"]:
                summary[f"{task}/augrc_gate"] = result["scores"]["gate"]["augrc"]["estimate"]
            summary[f"{task}/accuracy"] = result["calibration"]["accuracy"]["estimate"]
            if "policy" in result:
                summary[f"{task}/policy_coverage"] = result["policy"]["coverage"]["estimate"]
                summary[f"{task}/policy_risk"] = result["policy"]["selective_risk"]["estimate"]
                summary[f"{task}/policy_meets_target"] = result["policy"]["meets_target"]
                summary[f"{task}/policy_meets_target_exact"] = result["policy"][
                    "meets_target_exact"
                ]
        else:
            summary[f"{task}/mae_mean"] = result["mae_mean"]
    return summary
