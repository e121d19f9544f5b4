"""The abstention policies of calibrate applied unchanged to val_test, side by side: the
Platt gate, the Stage A/B cascade, LAC/APS/RAPS sets, CRC and SCRC, each with bootstrap CIs
(the plain threshold is ``policy`` in the classification report). Fits nothing: every
q_hat, lambda and threshold comes from calibration/."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from rigor.config.models import EvaluationConfig
from rigor.metrics.bootstrap import replicates, summarize
from rigor.metrics.scores import sigmoid, softmax
from rigor.metrics.sets import (
    APPLY,
    label_scores,
    prediction_sets,
    randomization,
)
from rigor.plotting import figures
from rigor.plotting.pool import draw
from rigor.policies.apply import apply_policy, platt_gate
from rigor.stages import RunContext


def _ratio_ci(num: np.ndarray, den: np.ndarray, options: EvaluationConfig) -> dict[str, Any]:
    """sum(num) / sum(den) with a percentile bootstrap CI over samples (NaN when a resample
    has no denominator: left out and counted, as for every CI)."""
    top, bottom = np.asarray(num, np.float64), np.asarray(den, np.float64)

    def batched(draws: np.ndarray) -> dict[str, np.ndarray]:
        total = bottom[draws].sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return {"value": np.where(total > 0, top[draws].sum(axis=1) / total, np.nan)}

    values = replicates(batched, len(top), options.n_resamples, options.seed)["value"]
    estimate = top.sum() / bottom.sum() if bottom.sum() > 0 else math.nan
    return summarize(values, estimate, options.level)


def _heads(outputs: dict[str, Any]) -> tuple[Any, Any, Any]:
    """(logits, gate, Stage B logits) as apply_policy takes them."""
    return outputs["logits"], outputs.get("gate"), outputs.get("aux")


def _mean_ci(values: np.ndarray, options: EvaluationConfig) -> dict[str, Any]:
    return _ratio_ci(values, np.ones(len(values)), options)


def set_report(sets: np.ndarray, labels: np.ndarray, options: EvaluationConfig) -> dict[str, Any]:
    """Coverage, mean set size and the shares of singleton and empty sets, with CIs."""
    size = sets.sum(axis=1)
    covered = sets[np.arange(len(labels)), labels]
    return {
        "coverage": _mean_ci(covered, options),
        "set_size": _mean_ci(size, options),
        "singleton": _mean_ci(size == 1, options),
        "empty": _mean_ci(size == 0, options),
    }


def _gate(platt: dict[str, Any], gate: np.ndarray, correct: np.ndarray, options: Any) -> Any:
    policy = {"task": platt["task"], "platt": platt}
    calibrated = platt_gate(gate, policy)
    report: dict[str, Any] = {
        "a": platt["a"],
        "b": platt["b"],
        "threshold": platt["threshold"],
        "brier": {
            "raw_gate": float(((sigmoid(gate) - correct) ** 2).mean()),
            "platt": float(((calibrated - correct) ** 2).mean()),
        },
    }
    if platt["threshold"] is None:
        return report | {"infeasible": platt["infeasible"]}
    accepted = calibrated >= platt["threshold"]
    return report | {
        "coverage": _mean_ci(accepted, options),
        "selective_risk": _ratio_ci(accepted & ~correct, accepted, options),
        "target_risk": platt["target_risk"],
    }


def _stage_b_logits(platt: dict[str, Any], task: str, outputs: dict[str, Any]) -> np.ndarray | None:
    """Stage B's val_test logits: the auxiliary head's, or those of the second run named in
    platt.json (re-hashed against what calibrate recorded: exit 5 when changed), checked to
    hold the same samples."""
    stage_b = platt.get("stage_b", {"source": "aux"})
    if stage_b["source"] == "aux":
        return outputs.get("aux")
    from rigor.errors import ArtifactError
    from rigor.io import sha256_file

    run_dir = Path(stage_b["manifest"]).parent
    rel = "predictions/val_test.npz"
    if not (run_dir / rel).is_file() or sha256_file(run_dir / rel) != stage_b["sha256"][rel]:
        raise ArtifactError(f"Stage B {run_dir / rel}: missing or changed since calibrate")
    with np.load(run_dir / rel, allow_pickle=False) as data:
        ids, logits = data["ids"], data[f"logits_{task}"]
    if not np.array_equal(ids, outputs["ids"]):
        raise ArtifactError(f"Stage B {run_dir / rel}: its val_test samples differ from this run's")
    return np.asarray(logits)


def _cascade(
    platt: dict[str, Any], outputs: dict[str, Any], labels: np.ndarray, options: Any
) -> dict[str, Any]:
    policy = {"kind": "cascade", "task": platt["task"], "platt": platt}
    decisions = apply_policy(policy | {"threshold": platt["threshold"]}, *_heads(outputs))
    exited = np.asarray(decisions.stage == "A")
    right = np.asarray(decisions.predicted == labels)
    stage_b = np.asarray(softmax(outputs["aux"]).argmax(axis=1) == labels)
    return {
        "threshold": platt["threshold"],
        "accuracy": _mean_ci(right, options),
        "exit_rate": _mean_ci(exited, options),
        "exit_error": _ratio_ci(exited & ~right, exited, options),
        "stage_b_accuracy": _ratio_ci(~exited & stage_b, ~exited, options),
        "stage_b_alone_accuracy": float(stage_b.mean()),
    }


def _sets(
    conformal: dict[str, Any], probs: np.ndarray, labels: np.ndarray, options: Any
) -> dict[str, Any]:
    out = {}
    for name, fitted in conformal["sets"].items():
        q_hat = math.inf if fitted["q_hat"] is None else fitted["q_hat"]
        u = randomization(len(probs), fitted["seed"], APPLY) if fitted["randomized"] else None
        scores = label_scores(
            probs, fitted["method"], k_reg=fitted["k_reg"], lam=fitted["lam"], u=u
        )
        sets = prediction_sets(scores, q_hat)
        out[name] = {
            "q_hat": fitted["q_hat"],
            "randomized": fitted["randomized"],
            "alpha": fitted["alpha"],
            **set_report(sets, labels, options),
        }
    return out


def _crc(
    conformal: dict[str, Any], probs: np.ndarray, labels: np.ndarray, options: Any
) -> dict[str, Any]:
    crc = conformal["crc"]
    lam = math.inf if crc["lambda"] is None else crc["lambda"]
    sets = prediction_sets(label_scores(probs, "lac"), lam)
    report = set_report(sets, labels, options)
    return {
        "alpha": crc["alpha"],
        "lambda": crc["lambda"],
        "fnr": _mean_ci(~sets[np.arange(len(labels)), labels], options),
        "set_size": report["set_size"],
        "empty": report["empty"],
    }


def _scrc(
    scrc: dict[str, Any], outputs: dict[str, Any], labels: np.ndarray, options: Any
) -> dict[str, Any]:
    decisions = apply_policy({"kind": "scrc", **scrc}, *_heads(outputs))
    sets, accepted = decisions.sets, decisions.accepted
    assert sets is not None
    missed = ~sets[np.arange(len(labels)), labels]
    return {
        "variant": scrc["variant"],
        "alpha": scrc["alpha"],
        "target_coverage": scrc["coverage"],
        "selection_threshold": scrc["selection_threshold"],
        "lambda": scrc["lambda"],
        "coverage": _mean_ci(accepted, options),
        "fnr_accepted": _ratio_ci(accepted & missed, accepted, options),
        "set_size_accepted": _ratio_ci(sets.sum(axis=1), accepted, options),
    }


def guarantees_report(
    task: str,
    records: dict[str, Any],
    outputs: dict[str, Any],
    labels: np.ndarray,
    options: EvaluationConfig,
) -> dict[str, Any]:
    """Each fitted policy of ``records`` (platt, conformal, scrcparams) on val_test."""
    probs = softmax(outputs["logits"])
    correct = probs.argmax(axis=1) == labels
    report: dict[str, Any] = {}
    platt, gate = records.get("platt"), outputs.get("gate")
    if platt is not None and gate is not None:
        report["platt_gate"] = _gate(platt, gate, correct, options)
        stage_b = _stage_b_logits(platt, task, outputs)
        if stage_b is not None and platt["threshold"] is not None:
            report["cascade"] = _cascade(platt, outputs | {"aux": stage_b}, labels, options)
    conformal = records.get("conformal")
    if conformal is not None:
        report["sets"] = _sets(conformal, probs, labels, options)
        report["crc"] = _crc(conformal, probs, labels, options)
    scrc = records.get("scrcparams")
    if scrc is not None:
        report["scrc"] = _scrc(scrc, outputs, labels, options)
    return report


def guarantees_figures(
    ctx: RunContext, task: str, records: dict[str, Any], outputs: dict[str, Any], labels: np.ndarray
) -> list[str]:
    """Send the plots of set size and coverage against alpha, and of FNR against coverage,
    to the plot workers; returns their paths."""
    files = []
    conformal = records.get("conformal")
    if conformal is not None:
        files.append(f"eval/{task}_sets_vs_alpha.png")
        probs = softmax(outputs["logits"])
        path = ctx.path(files[-1])
        draw(figures.sets_against_alpha, conformal, probs, labels, f"{task}: val_test", path)
    scrc = records.get("scrcparams")
    if scrc is not None:
        files.append(f"eval/{task}_fnr_vs_coverage.png")
        path = ctx.path(files[-1])
        draw(figures.fnr_against_coverage, scrc, _heads(outputs), labels, f"{task}: val_test", path)
    return files


def _cell(node: Any) -> str:
    if not isinstance(node, dict) or "estimate" not in node:
        return ""
    return f"{node['estimate']:.3f} [{node['ci_lower']:.3f}, {node['ci_upper']:.3f}]"


def _complement(node: dict[str, Any]) -> dict[str, Any]:
    """1 - a CI'd share (accuracy to error, coverage to miscoverage)."""
    return {
        "estimate": 1 - node["estimate"],
        "ci_lower": 1 - node["ci_upper"],
        "ci_upper": 1 - node["ci_lower"],
    }


def policy_table(result: dict[str, Any]) -> str:
    """Markdown: every policy of one task side by side on val_test (estimate [CI]): the
    share answered, the error (selective risk, FNR or miscoverage) and the set size."""
    rows = [("policy", "answered", "error among answered", "set size"), ("---",) * 4]
    if "policy" in result:
        plain = result["policy"]
        rows.append(("threshold", _cell(plain["coverage"]), _cell(plain["selective_risk"]), "1"))
    found = result.get("guarantees", {})
    gate = found.get("platt_gate", {})
    if "coverage" in gate:
        rows.append(("Platt gate", _cell(gate["coverage"]), _cell(gate["selective_risk"]), "1"))
    if "cascade" in found:
        error = _complement(found["cascade"]["accuracy"])
        rows.append(("cascade (A/B)", "1", _cell(error), "1"))
    for name, sets in found.get("sets", {}).items():
        miss = _cell(_complement(sets["coverage"]))
        rows.append((f"sets: {name}, alpha {sets['alpha']:g}", "1", miss, _cell(sets["set_size"])))
    if "crc" in found:
        crc = found["crc"]
        rows.append(
            (f"CRC, alpha {crc['alpha']:g}", "1", _cell(crc["fnr"]), _cell(crc["set_size"]))
        )
    if "scrc" in found:
        scrc = found["scrc"]
        rows.append(
            (
                f"SCRC-I, alpha {scrc['alpha']:g}",
                _cell(scrc["coverage"]),
                _cell(scrc["fnr_accepted"]),
                _cell(scrc["set_size_accepted"]),
            )
        )
    return "".join("| " + " | ".join(row) + " |\n" for row in rows)
