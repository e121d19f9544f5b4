"""Build the one active policy of a bundle from what calibrate fitted (calibration/*.json).

``calibration.policy`` (or ``export.py --policy``) names the kind; calibrate refuses a kind
whose fit is infeasible (exit 2, with the best value that was achievable) and export builds
the policy record that predict applies (schema/policy.schema.json). Each kind's record is
built by its module in :mod:`rigor.policies`.
"""

from __future__ import annotations

from typing import Any

from rigor.calibration.guarantee_schema import validate_record
from rigor.policies import registry
from rigor.policies.base import THRESHOLDS

__all__ = ["THRESHOLDS", "build_policy", "sources"]


def sources(kind: str) -> tuple[str, ...]:
    """The calibration records (paths in the run folder) the policy ``kind`` is built from."""
    return registry.policy_of(kind).sources


def build_policy(kind: str, records: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The policy record of ``kind`` (:func:`rigor.policies.registry.build_policy`), checked
    against schema/policy.schema.json (exit 3); a threshold policy is thresholds.json
    itself, checked by its own schema when calibrate wrote it."""
    policy = registry.build_policy(kind, records)
    if "kind" in policy:
        validate_record("policy", policy, f"policy {kind}")
    return policy
