"""Apply a fitted abstention policy to model outputs: what eval reports and predict writes.

A policy record (``bundle/policy.json``; built by export from calibration/) has a ``kind``:

- ``threshold``: accept when the confidence (temperature-scaled MSP, or sigmoid of the gate)
  is at least ``threshold``; an empirical risk target met on val_calib, no guarantee.
- ``gate``: accept when the Platt-calibrated gate sigmoid(a * g + b), an estimate of
  P(Stage A is correct), is at least ``threshold``; empirical, like ``threshold``.
- ``cascade``: the gate as above routes each sample: accepted ones take Stage A (the main
  head), the rest take Stage B (the auxiliary head); nothing abstains.
- ``sets``: a split-conformal prediction set per sample (labels whose score <= q_hat);
  P(true label in set) >= 1 - alpha under exchangeability.
- ``crc``: the set {j : 1 - p_j <= lambda}; E[FNR] <= alpha under exchangeability.
- ``none``: no policy (``export.py --policy none``): the argmax class, nothing abstains.
- ``scrc``: abstain when the selection score < selection_threshold; otherwise the CRC set
  fitted on accepted calibration samples; E[FNR | accepted] <= alpha (SCRC-I, approximate
  in finite samples; docs/selective.md).

A version-1 policy (``calibration/thresholds.json`` itself, no ``kind``) is a threshold.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from rigor.errors import UsageError
from rigor.metrics.scores import policy_confidence, sigmoid, softmax
from rigor.metrics.sets import APPLY, label_scores, prediction_sets, randomization

GUARANTEES = {
    "threshold": "empirical: selective risk <= target_risk on val_calib; no finite-sample "
    "guarantee on new data",
    "gate": "empirical: Platt-calibrated gate; selective risk <= target_risk on val_calib; no "
    "finite-sample guarantee on new data",
    "cascade": "none: every sample gets a class (Stage A when the calibrated gate accepts it, "
    "Stage B otherwise)",
    "sets": "P(true label in set) >= 1 - alpha, marginally, for samples exchangeable with "
    "val_calib (split conformal)",
    "crc": "E[false-negative rate of the set] <= alpha for samples exchangeable with val_calib "
    "(conformal risk control)",
    "none": "none: every sample gets the argmax class (exported with --policy none)",
    "scrc": "E[false-negative rate of the set | accepted] <= alpha and P(accepted) >= coverage "
    "for samples exchangeable with val_calib (SCRC-I: approximate in finite samples)",
}


@dataclass(frozen=True)
class Decisions:
    """Per sample: the class, a confidence, whether it was accepted, and (set policies) the
    prediction set; ``stage`` says which cascade stage answered (A or B)."""

    predicted: np.ndarray
    confidence: np.ndarray
    accepted: np.ndarray
    sets: np.ndarray | None = None
    stage: np.ndarray | None = None


def kind_of(policy: dict[str, Any]) -> str:
    """The policy's kind (a version-1 thresholds record is a threshold policy)."""
    return str(policy.get("kind", "threshold"))


def platt_gate(gate_logits: np.ndarray | None, policy: dict[str, Any]) -> np.ndarray:
    """sigmoid(a * g + b): the calibrated probability that Stage A is correct."""
    if gate_logits is None:
        raise UsageError(
            f"the {kind_of(policy)} policy needs the gate, but task "
            f"{policy['task']} has no gate output"
        )
    platt = policy["platt"]
    return sigmoid(platt["a"] * np.asarray(gate_logits, np.float64) + platt["b"])


def _set_scores(probs: np.ndarray, policy: dict[str, Any]) -> np.ndarray:
    method = policy["method"]
    u = randomization(len(probs), policy["seed"], APPLY) if policy.get("randomized") else None
    return label_scores(
        probs, method, k_reg=policy.get("k_reg", 1), lam=policy.get("lam", 0.0), u=u
    )


def _bound(value: float | None, default: float) -> float:
    return default if value is None else float(value)


def apply_policy(
    policy: dict[str, Any],
    logits: np.ndarray,
    gate: np.ndarray | None = None,
    aux: np.ndarray | None = None,
) -> Decisions:
    """The decisions of ``policy`` on one task's outputs (logits; gate and auxiliary logits
    for a gated task)."""
    kind = kind_of(policy)
    probs = softmax(logits)
    predicted = probs.argmax(axis=1)
    everyone = np.ones(len(predicted), dtype=bool)
    if kind == "none":
        return Decisions(predicted, probs.max(axis=1), everyone)
    if kind == "threshold":
        confidence = policy_confidence(logits, gate, policy)
        return Decisions(predicted, confidence, confidence >= policy["threshold"])
    if kind in ("gate", "cascade"):
        confidence = platt_gate(gate, policy)
        accepted = confidence >= policy["threshold"]
        if kind == "gate":
            return Decisions(predicted, confidence, accepted)
        if aux is None:
            raise UsageError(
                f"the cascade needs Stage B (auxiliary head) outputs of {policy['task']}"
            )
        final = np.where(accepted, predicted, softmax(aux).argmax(axis=1))
        return Decisions(final, confidence, everyone, stage=np.where(accepted, "A", "B"))
    if kind == "sets":
        q_hat = _bound(policy["q_hat"], math.inf)
        sets = prediction_sets(_set_scores(probs, policy), q_hat)
        return Decisions(predicted, probs.max(axis=1), everyone, sets)
    if kind in ("crc", "scrc"):
        sets = prediction_sets(label_scores(probs, "lac"), _bound(policy["lambda"], math.inf))
        if kind == "crc":
            return Decisions(predicted, probs.max(axis=1), everyone, sets)
        selection = selection_score(policy["selection_score"], probs, gate)
        accepted = selection >= _bound(policy["selection_threshold"], -math.inf)
        return Decisions(predicted, selection, accepted, sets & accepted[:, None])
    raise UsageError(f"unknown policy kind {kind!r}")


def selection_score(name: str, probs: np.ndarray, gate: np.ndarray | None) -> np.ndarray:
    """SCRC stage 1 score: the max softmax probability, or the gate's sigmoid."""
    if name == "gate":
        if gate is None:
            raise UsageError("the SCRC selection score is the gate, but the task has no gate")
        return sigmoid(gate)
    return np.asarray(probs.max(axis=1))
