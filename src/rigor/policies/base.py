"""What every abstention policy module provides (:class:`Policy`), the decisions a policy
makes (:class:`Decisions`), and the pieces several policies share: the calibration records
they are built from, the common fields of a bundle's policy record, JSON-schema atoms, and
the bootstrap CIs of their val_test reports."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from rigor.errors import UsageError
from rigor.metrics.bootstrap import replicates, summarize
from rigor.metrics.scores import sigmoid

# The calibration records (paths in the run folder) that policies are built from.
THRESHOLDS = "calibration/thresholds.json"
PLATT = "calibration/platt.json"
CONFORMAL = "calibration/conformal.json"
SCRC = "calibration/scrcparams.json"

# JSON-schema atoms of policy and calibration records.
NUM = {"type": "number"}
NUM_OR_NULL = {"type": ["number", "null"]}
PROB = {"type": "number", "minimum": 0, "maximum": 1}
PROB_OR_NULL = {**PROB, "type": ["number", "null"]}
ALPHA = {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1}
PLATT_PARAMS = {"type": "object", "required": ["a", "b"], "properties": {"a": NUM, "b": NUM}}
FITTED = {
    "type": "object",
    "required": ["split", "n"],
    "properties": {"split": {"const": "val_calib"}, "n": {"type": "integer", "minimum": 1}},
}
GRID = {
    "type": "object",
    "additionalProperties": False,
    "required": ["start", "stop", "points"],
    "properties": {"start": NUM, "stop": NUM, "points": {"type": "integer", "minimum": 2}},
}


def record_schema(name: str, title: str, body: dict[str, Any]) -> dict[str, Any]:
    """A JSON Schema (draft 2020-12) of a record, as ``schema/<name>`` holds it."""
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"https://rigor.local/schema/{name}",
        "title": title,
        "type": "object",
        **body,
    }


def record_name(path: str) -> str:
    """A calibration record's name, from its path: ``calibration/platt.json`` -> ``platt``
    (its schema is ``schema/platt.schema.json``; eval reads it under that name)."""
    return path.rsplit("/", 1)[-1].removesuffix(".json")


@dataclass(frozen=True)
class Decisions:
    """Per sample: the class, a confidence, whether it was accepted, and (set policies) the
    prediction set; ``stage`` says which cascade stage answered (A or B)."""

    predicted: np.ndarray
    confidence: np.ndarray
    accepted: np.ndarray
    sets: np.ndarray | None = None
    stage: np.ndarray | None = None


# apply(policy record, logits, gate logits or None, Stage B logits or None)
Apply = Callable[[dict[str, Any], np.ndarray, "np.ndarray | None", "np.ndarray | None"], Decisions]
# fit(task, val_calib logits, labels, gate logits or None, calibration options, Stage B)
# -> the record, or None when it does not apply (a gate's on a task without one)
Fit = Callable[..., "dict[str, Any] | None"]
# report(task, calibration records by name, val_test outputs, labels, evaluation options)
Report = Callable[..., "dict[str, Any] | None"]


@dataclass(frozen=True)
class Policy:
    """One abstention policy: everything calibrate, eval, export and predict need of it.

    - ``kind``: its name in configs, on the command line and in ``bundle/policy.json``;
    - ``guarantee``: what it promises, written into the bundle and predict's summary;
    - ``sources``: the calibration records export builds its policy record from;
    - ``schema``: ``{"required": [...], "properties": {...}}`` of its policy record beyond
      the common fields (None: it has no record, like ``none``);
    - ``build``: the policy record from the ``sources`` records (exit 2 when the fit was
      infeasible, naming the best achievable value);
    - ``apply``: its decisions on one task's outputs;
    - ``fit``, ``record`` and ``record_schema``: the calibration record it fits on val_calib,
      the path calibrate writes it to and its JSON Schema (emitted under schema/ and checked
      before it is written); None when calibrate writes what it needs anyway
      (thresholds.json) or another policy's record serves it;
    - ``report`` and ``report_key``: its val_test results in eval's ``guarantees`` section,
      from the fitted records by name (``platt``, ``conformal``, ...);
    - ``rows``: its rows of eval's side-by-side policy table (policy, answered, error among
      answered, set size), from the eval result of one task;
    - ``caveats``: the warnings its val_test results call for (a CI beyond the nominal
      value, empty sets), each naming the number and what to do.
    """

    kind: str
    guarantee: str
    sources: tuple[str, ...]
    schema: dict[str, Any] | None
    build: Callable[[dict[str, dict[str, Any]]], dict[str, Any]]
    apply: Apply
    rows: Callable[[dict[str, Any]], list[tuple[str, ...]]]
    fit: Fit | None = None
    record: str | None = None
    record_schema: dict[str, Any] | None = None
    report: Report | None = None
    report_key: str = ""
    caveats: Callable[[dict[str, Any]], list[str]] | None = None


def common(
    kind: str, guarantee: str, thresholds: dict[str, Any], fitted_on: dict[str, Any]
) -> dict[str, Any]:
    """The fields every policy record starts with."""
    return {
        "schema_version": 2,
        "kind": kind,
        "task": thresholds["task"],
        "temperature": thresholds["temperature"],
        "guarantee": guarantee,
        "fitted_on": {"split": "val_calib", "n": int(fitted_on["n"])},
    }


def kind_of(policy: dict[str, Any]) -> str:
    """The policy's kind (a version-1 thresholds record is a threshold policy)."""
    return str(policy.get("kind", "threshold"))


def finite_or_none(value: float) -> float | None:
    """A fitted value as JSON holds it: an infinite one (unreachable) is null."""
    return value if math.isfinite(value) else None


def bound(value: float | None, default: float) -> float:
    """A fitted bound, with null read as ``default`` (an infinite one)."""
    return default if value is None else float(value)


def platt_gate(gate_logits: np.ndarray | None, policy: dict[str, Any]) -> np.ndarray:
    """sigmoid(a * g + b): the calibrated probability that Stage A is correct."""
    if gate_logits is None:
        raise UsageError(
            f"the {kind_of(policy)} policy needs the gate, but task "
            f"{policy['task']} has no gate output"
        )
    platt = policy["platt"]
    return sigmoid(platt["a"] * np.asarray(gate_logits, np.float64) + platt["b"])


def infeasible_lambda(kind: str, alpha: float, best: float, hint: str) -> UsageError:
    """The exit-2 error of a risk-control fit that no lambda on its grid satisfies."""
    return UsageError(
        f"policy {kind}: no lambda on the grid bounds the false-negative rate at alpha "
        f"{alpha:g}; the best achievable corrected risk is {best:.4g}. {hint}"
    )


def heads(outputs: dict[str, Any]) -> tuple[Any, Any, Any]:
    """(logits, gate, Stage B logits) as ``apply`` takes them."""
    return outputs["logits"], outputs.get("gate"), outputs.get("aux")


def ratio_ci(num: np.ndarray, den: np.ndarray, options: Any) -> dict[str, Any]:
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


def mean_ci(values: np.ndarray, options: Any) -> dict[str, Any]:
    """The mean with a percentile bootstrap CI over samples."""
    return ratio_ci(values, np.ones(len(values)), options)


def set_report(sets: np.ndarray, labels: np.ndarray, options: Any) -> dict[str, Any]:
    """Coverage, mean set size, the shares of singleton and empty sets, and the share of
    non-empty sets that miss the label (an empty set is an abstention), with CIs."""
    size = sets.sum(axis=1)
    covered = sets[np.arange(len(labels)), labels]
    answered = size > 0
    return {
        "coverage": mean_ci(covered, options),
        "set_size": mean_ci(size, options),
        "singleton": mean_ci(size == 1, options),
        "empty": mean_ci(size == 0, options),
        "miss_answered": ratio_ci(answered & ~covered, answered, options),
    }


def cell(node: Any) -> str:
    """A CI'd value as a table cell: ``estimate [lower, upper]``."""
    if not isinstance(node, dict) or "estimate" not in node:
        return ""
    return f"{node['estimate']:.3f} [{node['ci_lower']:.3f}, {node['ci_upper']:.3f}]"


def complement(node: dict[str, Any]) -> dict[str, Any]:
    """1 - a CI'd share (accuracy to error, coverage to miscoverage)."""
    return {
        "estimate": 1 - node["estimate"],
        "ci_lower": 1 - node["ci_upper"],
        "ci_upper": 1 - node["ci_lower"],
    }


def interval(node: dict[str, Any]) -> str:
    """``0.856 [0.811, 0.893]``: an estimate with its CI, for a warning."""
    return f"{node['estimate']:.3f} [{node['ci_lower']:.3f}, {node['ci_upper']:.3f}]"


def risk_above(name: str, node: dict[str, Any], nominal: float, what: str, fix: str) -> list[str]:
    """A warning when the whole CI of a risk on val_test lies above its nominal bound."""
    if node["ci_lower"] <= nominal:
        return []
    return [
        f"{name}: val_test {what} {interval(node)} lies above its nominal {nominal:g} (the "
        f"whole CI): {fix}"
    ]


def empty_sets(name: str, shares: str, alpha: float, error: float | None) -> list[str]:
    """The warning for prediction sets that are empty for some samples (``shares``: how
    many, e.g. ``14.4%`` or ``LAC 14.4%, APS 7.0%``), counted as abstentions in the policy
    table; saying when alpha exceeds the model's val_test error rate (then a set may be
    empty exactly where the model is confident)."""
    text = (
        f"{name}: empty for {shares} of val_test samples (counted as abstentions: no label "
        "is offered)"
    )
    if error is not None and alpha > error:
        text += (
            f"; alpha {alpha:g} exceeds the model's val_test error rate {error:.3f}, so the "
            f"sets may leave out confident answers: use an alpha below {error:.3f} or a "
            "threshold policy"
        )
    return [text]


def guarantees_of(result: dict[str, Any]) -> dict[str, Any]:
    """The ``guarantees`` section of one task's eval result (empty when absent)."""
    return dict(result.get("guarantees", {}))
