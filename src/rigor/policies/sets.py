"""Split conformal prediction: the finite-sample quantile, classification prediction sets
(LAC, APS, RAPS; scores in :mod:`rigor.metrics.sets`) and per-task regression intervals.

Guarantee (split conformal, Vovk et al. 2005; Lei et al. 2018): if the calibration scores and
a new sample's score are exchangeable (e.g. val_calib and val_test drawn from the same
distribution, with no sample reused), the new score is at most the quantile below with
probability at least 1 - alpha, averaged over calibration sets (marginal, not conditional
on the sample). With continuous scores the coverage is also at most
1 - alpha + 1/(n + 1).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from rigor.errors import UsageError
from rigor.metrics.scores import softmax
from rigor.metrics.sets import (
    APPLY,
    SET_METHODS,
    SET_VARIANTS,
    check_probs,
    label_scores,
    prediction_sets,
    randomization,
    true_label_scores,
    variant_name,
)
from rigor.policies import crc
from rigor.policies.base import (
    ALPHA,
    CONFORMAL,
    FITTED,
    GRID,
    NUM,
    NUM_OR_NULL,
    PROB,
    THRESHOLDS,
    Decisions,
    Policy,
    bound,
    cell,
    common,
    complement,
    empty_sets,
    finite_or_none,
    guarantees_of,
    interval,
    record_schema,
    set_report,
)

ALPHA_CURVE = [round(a, 3) for a in np.linspace(0.01, 0.3, 30)]
GUARANTEE = (
    "P(true label in set) >= 1 - alpha, marginally, for samples exchangeable with "
    "val_calib (split conformal)"
)


SET_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["method", "randomized", "k_reg", "lam", "alpha", "q_hat", "n", "seed"],
    "properties": {
        "method": {"enum": ["lac", "aps", "raps"]},
        "randomized": {"type": "boolean"},
        "k_reg": {"type": "integer", "minimum": 0},
        "lam": {"type": "number", "minimum": 0},
        "alpha": ALPHA,
        "q_hat": {**NUM_OR_NULL, "minimum": 0, "description": "null: +inf (k > n), every label"},
        "n": {"type": "integer", "minimum": 1},
        "seed": {"type": "integer", "minimum": 0},
    },
}

RECORD_SCHEMA = record_schema(
    "conformal.schema.json",
    "rigor split-conformal sets and CRC (calibration/conformal.json)",
    {
        "additionalProperties": False,
        "required": [
            "schema_version",
            "task",
            "scores_from",
            "fitted_on",
            "alpha",
            "method",
            "randomized",
            "sets",
            "alpha_curve",
            "crc",
        ],
        "properties": {
            "schema_version": {"const": 1},
            "task": {"type": "string"},
            "scores_from": {"type": "string"},
            "fitted_on": FITTED,
            "alpha": ALPHA,
            "method": {"enum": ["lac", "aps", "raps"]},
            "randomized": {"type": "boolean"},
            "sets": {
                "type": "object",
                "required": ["lac", "aps", "aps_randomized", "raps", "raps_randomized"],
                "additionalProperties": SET_SCHEMA,
            },
            "alpha_curve": {"type": "array", "items": {"type": "object", "required": ["alpha"]}},
            "crc": {
                "type": "object",
                "additionalProperties": False,
                "required": ["loss", "method", "alpha", "grid", "lambda", "best_corrected_risk"],
                "properties": {
                    "loss": {"const": "fnr"},
                    "method": {"const": "lac"},
                    "alpha": ALPHA,
                    "grid": GRID,
                    "lambda": {**PROB, "type": ["number", "null"]},
                    "best_corrected_risk": NUM,
                },
            },
        },
    },
)


def conformal_quantile(scores: np.ndarray, alpha: float) -> float:
    """The k-th smallest of the n calibration ``scores`` with k = ceil((n + 1)(1 - alpha)),
    or ``math.inf`` when k > n (too few scores for that alpha).

    Raises:
        ValueError: alpha outside (0, 1), no scores, or a NaN/infinite score.
    """
    values = np.asarray(scores, dtype=np.float64).ravel()
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha}")
    if values.size == 0 or not np.isfinite(values).all():
        raise ValueError("conformal scores must be a non-empty array of finite numbers")
    n = values.size
    # (n + 1)(1 - alpha) in exact rational arithmetic where alpha is a short decimal, so an
    # integer product is not pushed up by floating-point noise (e.g. n = 19, alpha = 0.05).
    k = math.ceil(round((n + 1) * (1 - alpha), 9))
    if k > n:
        return math.inf
    return float(np.partition(values, k - 1)[k - 1])


def fit_set_policy(
    probs: np.ndarray,
    labels: np.ndarray,
    method: str,
    alpha: float,
    *,
    k_reg: int = 1,
    lam: float = 0.0,
    randomized: bool = False,
    seed: int = 0,
) -> dict[str, Any]:
    """q_hat of one set method on calibration ``probs`` and ``labels``.

    Guarantee: for a new sample exchangeable with the calibration samples,
    P(true label in its set) >= 1 - alpha (marginal over calibration sets and the sample).
    The set of a new sample holds every label whose score is at most q_hat. ``q_hat`` is
    None (every label) when k = ceil((n + 1)(1 - alpha)) > n.
    """
    p = check_probs(probs, "calibration probabilities")
    y = np.asarray(labels, dtype=np.int64)
    u = randomization(len(y), seed) if randomized and method != "lac" else None
    scores = label_scores(p, method, k_reg=k_reg, lam=lam, u=u)
    q_hat = conformal_quantile(true_label_scores(scores, y), alpha)
    return {
        "method": method,
        "randomized": bool(randomized and method != "lac"),
        "k_reg": k_reg,
        "lam": lam,
        "alpha": alpha,
        "q_hat": finite_or_none(q_hat),
        "n": int(len(y)),
    }


def fit(
    task: str,
    logits: np.ndarray,
    labels: np.ndarray,
    gate: np.ndarray | None,
    options: Any,
    stage_b: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """calibration/conformal.json: q_hat of LAC, APS and RAPS (each non-randomised and
    randomised) at ``calibration.conformal.alpha``, of the non-randomised ones on an alpha
    grid (for eval's curves), and the CRC lambda of the LAC set's FNR
    (:func:`rigor.policies.crc.fit_section`)."""
    conformal = options.conformal
    probs = softmax(logits)
    sets = {}
    for name, (method, randomized) in SET_VARIANTS.items():
        fitted = fit_set_policy(
            probs,
            labels,
            method,
            conformal.alpha,
            k_reg=conformal.k_reg,
            lam=conformal.lam,
            randomized=randomized,
            seed=conformal.seed,
        )
        sets[name] = fitted | {"seed": conformal.seed}
    curve = []
    for alpha in ALPHA_CURVE:
        row: dict[str, Any] = {"alpha": alpha}
        for method in SET_METHODS:
            scores = label_scores(probs, method, k_reg=conformal.k_reg, lam=conformal.lam)
            true_scores = true_label_scores(scores, labels)
            row[method] = finite_or_none(conformal_quantile(true_scores, alpha))
        curve.append(row)
    return {
        "schema_version": 1,
        "task": task,
        "scores_from": "softmax of the logits (T = 1)",
        "fitted_on": {"split": "val_calib", "n": int(len(labels))},
        "alpha": conformal.alpha,
        "method": conformal.method,
        "randomized": conformal.randomized,
        "sets": sets,
        "alpha_curve": curve,
        "crc": crc.fit_section(probs, labels, options.risk_control),
    }


def build(records: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The configured set variant's q_hat (exit 2 when alpha is out of reach)."""
    conformal = records[CONFORMAL]
    fitted = conformal["sets"][variant_name(conformal["method"], conformal["randomized"])]
    if fitted["q_hat"] is None:
        n = fitted["n"]
        raise UsageError(
            f"policy sets: alpha {fitted['alpha']:g} is out of reach with {n} val_calib samples "
            f"(ceil((n + 1)(1 - alpha)) > n); the smallest achievable alpha is "
            f"1/(n + 1) = {1 / (n + 1):.4g}. Raise calibration.conformal.alpha or calibrate on "
            "more samples"
        )
    return (
        common("sets", GUARANTEE, records[THRESHOLDS], conformal["fitted_on"])
        | {key: fitted[key] for key in ("method", "randomized", "k_reg", "lam", "seed", "alpha")}
        | {"q_hat": fitted["q_hat"]}
    )


def _sets_of(probs: np.ndarray, fitted: dict[str, Any]) -> np.ndarray:
    """The prediction sets of one fitted variant (q_hat null: every label)."""
    u = randomization(len(probs), fitted["seed"], APPLY) if fitted.get("randomized") else None
    scores = label_scores(
        probs, fitted["method"], k_reg=fitted.get("k_reg", 1), lam=fitted.get("lam", 0.0), u=u
    )
    return prediction_sets(scores, bound(fitted["q_hat"], math.inf))


def apply(
    policy: dict[str, Any], logits: np.ndarray, gate: np.ndarray | None, aux: np.ndarray | None
) -> Decisions:
    """Every sample answered with its set (and the argmax class)."""
    probs = softmax(logits)
    everyone = np.ones(len(probs), dtype=bool)
    return Decisions(probs.argmax(axis=1), probs.max(axis=1), everyone, _sets_of(probs, policy))


def report(
    task: str, records: dict[str, Any], outputs: dict[str, Any], labels: np.ndarray, options: Any
) -> dict[str, Any] | None:
    """Coverage, set size and the shares of singleton and empty sets of every variant."""
    conformal = records.get("conformal")
    if conformal is None:
        return None
    probs = softmax(outputs["logits"])
    out = {}
    for name, fitted in conformal["sets"].items():
        out[name] = {
            "q_hat": fitted["q_hat"],
            "randomized": fitted["randomized"],
            "alpha": fitted["alpha"],
            **set_report(_sets_of(probs, fitted), labels, options),
        }
    return out


def rows(result: dict[str, Any]) -> list[tuple[str, ...]]:
    """One row per set variant: everyone answered, miscoverage, set size."""
    out: list[tuple[str, ...]] = []
    for name, sets in guarantees_of(result).get("sets", {}).items():
        miss, answered = cell(sets["miss_answered"]), cell(complement(sets["empty"]))
        label = f"sets: {name}, alpha {sets['alpha']:g}"
        out.append((label, answered, miss, cell(sets["set_size"])))
    return out


def caveats(result: dict[str, Any]) -> list[str]:
    """Per variant, coverage on val_test below 1 - alpha (its whole CI); and, in one
    warning for every variant, empty sets."""
    error = 1 - result["accuracy"]["estimate"] if "accuracy" in result else None
    found = guarantees_of(result).get("sets", {})
    out = []
    for name, sets in found.items():
        nominal, coverage = 1 - sets["alpha"], sets["coverage"]
        if coverage["ci_upper"] < nominal:
            out.append(
                f"{name.upper()} sets at alpha {sets['alpha']:g}: val_test coverage "
                f"{interval(coverage)} lies below the nominal {nominal:g} (the whole CI): "
                "val_test may not be exchangeable with val_calib (another site, patient or "
                "time), or val_calib is small; check the splits"
            )
    empty = {name: sets["empty"]["estimate"] for name, sets in found.items()}
    shares = ", ".join(f"{name.upper()} {share:.1%}" for name, share in empty.items() if share > 0)
    if shares:
        alpha = next(iter(found.values()))["alpha"]
        out += empty_sets(f"sets at alpha {alpha:g}", shares, alpha, error)
    return out


POLICY = Policy(
    kind="sets",
    guarantee=GUARANTEE,
    sources=(THRESHOLDS, CONFORMAL),
    schema={
        "required": ["method", "randomized", "k_reg", "lam", "seed", "alpha", "q_hat"],
        "properties": {
            "method": {"enum": ["lac", "aps", "raps"]},
            "alpha": ALPHA,
            "q_hat": {"type": "number", "minimum": 0},
        },
    },
    build=build,
    apply=apply,
    rows=rows,
    fit=fit,
    record=CONFORMAL,
    record_schema=RECORD_SCHEMA,
    report=report,
    report_key="sets",
    caveats=caveats,
)
