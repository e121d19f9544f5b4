"""Scores computed from stored logits: softmax, sigmoid and the confidence a policy uses.

They live here, below calibration, eval, export and predict, so that every stage that reads
predictions computes them the same way without importing the stage that fits them.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from rigor.errors import UsageError


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of logits / temperature (float64)."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def sigmoid(values: np.ndarray) -> np.ndarray:
    """The logistic function in float64."""
    return np.asarray(1.0 / (1.0 + np.exp(-np.asarray(values, dtype=np.float64))))


def policy_confidence(
    logits: np.ndarray, gate_logits: np.ndarray | None, policy: dict[str, Any]
) -> np.ndarray:
    """The confidence a threshold policy compares with its threshold."""
    if policy["score"] == "gate":
        if gate_logits is None:
            raise UsageError(
                f"the policy uses the gate score but task {policy['task']} has no gate"
            )
        return sigmoid(gate_logits)
    return np.asarray(softmax(logits, policy["temperature"]).max(axis=1))
