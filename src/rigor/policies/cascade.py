"""The cascade policy: the calibrated gate (as in :mod:`rigor.policies.gate`) routes each
sample; accepted ones take Stage A (the main head), the rest take Stage B (the auxiliary
head, or a second run named by ``calibration.stage_b``). Nothing abstains, so it promises
no selective risk; eval reports its accuracy and how often each stage answered."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from rigor.errors import ArtifactError, UsageError
from rigor.metrics.scores import softmax
from rigor.policies import gate as gate_policy
from rigor.policies.base import (
    PLATT,
    PLATT_PARAMS,
    PROB,
    THRESHOLDS,
    Decisions,
    Policy,
    cell,
    complement,
    guarantees_of,
    heads,
    mean_ci,
    platt_gate,
    ratio_ci,
)

GUARANTEE = (
    "none: every sample gets a class (Stage A when the calibrated gate accepts it, "
    "Stage B otherwise)"
)
STAGE_B_SCHEMA = {
    "description": "aux: the auxiliary head; otherwise the run whose bundle predict takes "
    "with --stage-b",
    "oneOf": [
        {"const": "aux"},
        {"type": "object", "required": ["run_id"], "properties": {"run_id": {"type": "string"}}},
    ],
}


def build(records: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The gate's record, and which Stage B answers the samples it does not accept."""
    policy = gate_policy.build_record("cascade", GUARANTEE, records)
    stage_b = records[PLATT].get("stage_b", {"source": "aux"})
    return policy | {
        "stage_b": "aux" if stage_b["source"] == "aux" else {"run_id": stage_b["run_id"]}
    }


def apply(
    policy: dict[str, Any], logits: np.ndarray, gate: np.ndarray | None, aux: np.ndarray | None
) -> Decisions:
    """Stage A's class where the calibrated gate accepts, Stage B's elsewhere."""
    confidence = platt_gate(gate, policy)
    accepted = confidence >= policy["threshold"]
    if aux is None:
        raise UsageError(f"the cascade needs Stage B (auxiliary head) outputs of {policy['task']}")
    final = np.where(accepted, softmax(logits).argmax(axis=1), softmax(aux).argmax(axis=1))
    everyone = np.ones(len(final), dtype=bool)
    return Decisions(final, confidence, everyone, stage=np.where(accepted, "A", "B"))


def stage_b_logits(platt: dict[str, Any], task: str, outputs: dict[str, Any]) -> np.ndarray | None:
    """Stage B's val_test logits: the auxiliary head's, or those of the second run named in
    platt.json (re-hashed against what calibrate recorded: exit 5 when changed), checked to
    hold the same samples."""
    stage_b = platt.get("stage_b", {"source": "aux"})
    if stage_b["source"] == "aux":
        return outputs.get("aux")
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


def report(
    task: str, records: dict[str, Any], outputs: dict[str, Any], labels: np.ndarray, options: Any
) -> dict[str, Any] | None:
    """Accuracy, the share Stage A answered (and its error), Stage B's accuracy on the rest
    and on its own, on val_test."""
    platt = records.get("platt")
    if platt is None or outputs.get("gate") is None or platt["threshold"] is None:
        return None
    second = stage_b_logits(platt, task, outputs)
    if second is None:
        return None
    outputs = outputs | {"aux": second}
    policy = {"kind": "cascade", "task": platt["task"], "platt": platt}
    decisions = apply(policy | {"threshold": platt["threshold"]}, *heads(outputs))
    exited = np.asarray(decisions.stage == "A")
    right = np.asarray(decisions.predicted == labels)
    stage_b = np.asarray(softmax(second).argmax(axis=1) == labels)
    return {
        "threshold": platt["threshold"],
        "accuracy": mean_ci(right, options),
        "exit_rate": mean_ci(exited, options),
        "exit_error": ratio_ci(exited & ~right, exited, options),
        "stage_b_accuracy": ratio_ci(~exited & stage_b, ~exited, options),
        "stage_b_alone_accuracy": float(stage_b.mean()),
    }


def rows(result: dict[str, Any]) -> list[tuple[str, ...]]:
    """The cascade's row: everyone answered, its error."""
    found = guarantees_of(result)
    if "cascade" not in found:
        return []
    return [("cascade (A/B)", "1", cell(complement(found["cascade"]["accuracy"])), "1")]


POLICY = Policy(
    kind="cascade",
    guarantee=GUARANTEE,
    sources=(THRESHOLDS, PLATT),
    schema={
        "required": ["platt", "threshold", "stage_b"],
        "properties": {"platt": PLATT_PARAMS, "threshold": PROB, "stage_b": STAGE_B_SCHEMA},
    },
    build=build,
    apply=apply,
    rows=rows,
    report=report,
    report_key="cascade",
)
