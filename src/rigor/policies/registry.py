"""The abstention policies rigor knows, in the order configs, the command line, eval's
reports and its policy table list them. Adding a policy is one module of this package that
defines ``POLICY`` (a :class:`rigor.policies.base.Policy`) and its name in :data:`MODULES`
(docs/extending.md, "A calibration policy")."""

from __future__ import annotations

from importlib import import_module
from typing import Any

import numpy as np

from rigor.errors import UsageError
from rigor.policies.base import Decisions, Policy, kind_of

MODULES = (
    "threshold",
    "gate",
    "cascade",
    "sets",
    "crc",
    "scrc",
    "none",
)


def _load(name: str) -> Policy:
    policy = import_module(f"rigor.policies.{name}").POLICY
    if not isinstance(policy, Policy) or policy.kind != name:
        raise TypeError(f"rigor.policies.{name}.POLICY must be a Policy of kind {name!r}")
    return policy


POLICIES: dict[str, Policy] = {name: _load(name) for name in MODULES}
KINDS: tuple[str, ...] = tuple(POLICIES)


def policy_of(kind: str) -> Policy:
    """The registered policy ``kind`` (exit 2 naming the known ones)."""
    if kind not in POLICIES:
        raise UsageError(f"unknown policy kind {kind!r}; known: {', '.join(KINDS)}")
    return POLICIES[kind]


def apply_policy(
    policy: dict[str, Any],
    logits: np.ndarray,
    gate: np.ndarray | None = None,
    aux: np.ndarray | None = None,
) -> Decisions:
    """The decisions of ``policy`` (a policy record) on one task's outputs (logits; gate and
    auxiliary logits for a gated task)."""
    return policy_of(kind_of(policy)).apply(policy, logits, gate, aux)


def build_policy(kind: str, records: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The policy record of ``kind`` from calibration records keyed by their path.

    Raises:
        UsageError (exit 2): the kind needs a record calibrate did not write (no gate), or
            its fit was infeasible (named, with the best achievable value).
    """
    policy = policy_of(kind)
    missing = [rel for rel in policy.sources if rel not in records]
    if missing:
        no_gate = any(rel.endswith("platt.json") for rel in missing)
        raise UsageError(
            f"policy {kind} needs {', '.join(missing)}, which calibrate did not write"
            + (" (the run has no gate: train with model.gate.task)" if no_gate else "")
        )
    return policy.build(records)
