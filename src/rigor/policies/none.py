"""The none policy (``export.py --policy none``): no abstention and no calibration; every
sample gets the argmax class. The bundle then carries no policy record."""

from __future__ import annotations

from typing import Any

import numpy as np

from rigor.errors import UsageError
from rigor.metrics.scores import softmax
from rigor.policies.base import Decisions, Policy


def build(records: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Nothing to build: export writes no policy.json for this kind."""
    raise UsageError("policy none has no policy record (export writes the bundle without one)")


def apply(
    policy: dict[str, Any], logits: np.ndarray, gate: np.ndarray | None, aux: np.ndarray | None
) -> Decisions:
    """The argmax class and its probability; everyone answered."""
    probs = softmax(logits)
    return Decisions(probs.argmax(axis=1), probs.max(axis=1), np.ones(len(probs), dtype=bool))


POLICY = Policy(
    kind="none",
    guarantee="none: every sample gets the argmax class (exported with --policy none)",
    sources=(),
    schema=None,
    build=build,
    apply=apply,
    rows=lambda result: [],
)
