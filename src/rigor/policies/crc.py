"""The crc policy: conformal risk control (CRC) of a prediction set's false-negative rate,
the set {j : 1 - p_j <= lambda} with lambda fitted on val_calib.

CRC (Angelopoulos, Bates, Fisch, Lei and Schuster, "Conformal Risk Control", ICLR 2024):
for losses L_i(lambda) in [0, B] that do not increase with lambda, the smallest lambda on a
grid with (n / (n + 1)) * mean_i L_i(lambda) + B / (n + 1) <= alpha gives
E[L_new(lambda_hat)] <= alpha for a new sample exchangeable with the n calibration samples.
The built-in loss is the false-negative rate of a prediction set: the share of a sample's
true labels left out, here 1{y not in C_lambda(x)} for one label per sample, with
C_lambda(x) = {j : score_j(x) <= lambda}.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from rigor.metrics.scores import softmax
from rigor.metrics.sets import label_scores, prediction_sets, true_label_scores
from rigor.policies.base import (
    ALPHA,
    CONFORMAL,
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
    infeasible_lambda,
    mean_ci,
    risk_above,
    set_report,
)

GUARANTEE = (
    "E[false-negative rate of the set] <= alpha for samples exchangeable with val_calib "
    "(conformal risk control)"
)


def crc_lambda(losses: np.ndarray, lambdas: np.ndarray, alpha: float, bound: float = 1.0) -> float:
    """The smallest lambda on the grid whose corrected risk is at most ``alpha``.

    Args:
        losses: (n, L), the loss of each calibration sample at each grid value, in
            [0, ``bound``] and non-increasing along the grid.
        lambdas: the L grid values, strictly increasing.
        alpha: the risk level, in (0, bound).
        bound: B, the largest value a loss can take.

    Returns:
        The smallest lambda with (n / (n + 1)) * mean loss + B / (n + 1) <= alpha, or
        ``math.inf`` when no grid value satisfies it.

    Raises:
        ValueError: NaN or out-of-range losses, losses that increase with lambda, a grid
            that does not increase, or alpha outside (0, bound).
    """
    values = np.asarray(losses, dtype=np.float64)
    grid = np.asarray(lambdas, dtype=np.float64).ravel()
    if values.ndim != 2 or values.shape[0] == 0 or values.shape[1] != grid.size:
        raise ValueError("losses must be (n, L) with n >= 1 and L the length of lambdas")
    if not np.isfinite(grid).all() or (np.diff(grid) <= 0).any():
        raise ValueError("lambdas must be finite and strictly increasing")
    if not 0 < alpha < bound:
        raise ValueError(f"alpha must lie in (0, {bound}), got {alpha}")
    if not np.isfinite(values).all() or (values < 0).any() or (values > bound).any():
        raise ValueError(f"losses must be finite numbers in [0, {bound}]")
    if (np.diff(values, axis=1) > 1e-12).any():
        raise ValueError("losses must not increase with lambda (CRC needs monotone losses)")
    n = values.shape[0]
    # (n / (n + 1)) * mean + B / (n + 1) <= alpha  <=>  sum + B <= alpha * (n + 1); the sum
    # form keeps an exact equality (26 misses of 269 at alpha 0.1) from failing by rounding.
    slack = 1e-9 * max(1.0, alpha * (n + 1))
    ok = np.flatnonzero(values.sum(axis=0) + bound <= alpha * (n + 1) + slack)
    return float(grid[ok[0]]) if ok.size else math.inf


def best_corrected_risk(losses: np.ndarray, bound: float = 1.0) -> float:
    """The lowest corrected risk any grid value reaches (what an infeasible alpha misses)."""
    values = np.asarray(losses, dtype=np.float64)
    n = values.shape[0]
    return float((n / (n + 1) * values.mean(axis=0) + bound / (n + 1)).min())


def fnr_losses(true_scores: np.ndarray, lambdas: np.ndarray) -> np.ndarray:
    """(n, L) false-negative rate of C_lambda = {j : score_j <= lambda} with one true label
    per sample: 1 when the true label's score exceeds lambda."""
    scores = np.asarray(true_scores, dtype=np.float64).ravel()
    if not np.isfinite(scores).all():
        raise ValueError("scores must be finite")
    return (scores[:, None] > np.asarray(lambdas, dtype=np.float64)[None, :]).astype(np.float64)


def fit_section(probs: np.ndarray, labels: np.ndarray, risk: Any) -> dict[str, Any]:
    """The ``crc`` section of calibration/conformal.json: lambda of the LAC set's FNR at
    ``calibration.risk_control.alpha`` on its grid (null when infeasible)."""
    grid = np.linspace(0.0, 1.0, risk.grid)
    losses = fnr_losses(true_label_scores(label_scores(probs, "lac"), labels), grid)
    lam = crc_lambda(losses, grid, risk.alpha)
    return {
        "loss": "fnr",
        "method": "lac",
        "alpha": risk.alpha,
        "grid": {"start": 0.0, "stop": 1.0, "points": risk.grid},
        "lambda": finite_or_none(lam),
        "best_corrected_risk": best_corrected_risk(losses),
    }


def build(records: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """lambda from conformal.json (exit 2 when no lambda on the grid is feasible)."""
    conformal = records[CONFORMAL]
    crc = conformal["crc"]
    if crc["lambda"] is None:
        hint = "Raise calibration.risk_control.alpha"
        raise infeasible_lambda("crc", crc["alpha"], crc["best_corrected_risk"], hint)
    return common("crc", GUARANTEE, records[THRESHOLDS], conformal["fitted_on"]) | {
        "method": "lac",
        "alpha": crc["alpha"],
        "lambda": crc["lambda"],
    }


def lac_sets(probs: np.ndarray, lam: float | None) -> np.ndarray:
    """{j : 1 - p_j <= lambda} per sample (lambda null: every label)."""
    return prediction_sets(label_scores(probs, "lac"), bound(lam, math.inf))


def apply(
    policy: dict[str, Any], logits: np.ndarray, gate: np.ndarray | None, aux: np.ndarray | None
) -> Decisions:
    """Every sample answered with its CRC set (and the argmax class)."""
    probs = softmax(logits)
    everyone = np.ones(len(probs), dtype=bool)
    sets = lac_sets(probs, policy["lambda"])
    return Decisions(probs.argmax(axis=1), probs.max(axis=1), everyone, sets)


def report(
    task: str, records: dict[str, Any], outputs: dict[str, Any], labels: np.ndarray, options: Any
) -> dict[str, Any] | None:
    """The FNR of the CRC set on val_test, its size and the share of empty sets."""
    conformal = records.get("conformal")
    if conformal is None:
        return None
    crc = conformal["crc"]
    sets = lac_sets(softmax(outputs["logits"]), crc["lambda"])
    sizes = set_report(sets, labels, options)
    return {
        "alpha": crc["alpha"],
        "lambda": crc["lambda"],
        "fnr": mean_ci(~sets[np.arange(len(labels)), labels], options),
        "fnr_answered": sizes["miss_answered"],
        "set_size": sizes["set_size"],
        "empty": sizes["empty"],
    }


def rows(result: dict[str, Any]) -> list[tuple[str, ...]]:
    """CRC's row: everyone answered, the FNR, the set size."""
    crc = guarantees_of(result).get("crc")
    if crc is None:
        return []
    name, answered = f"CRC, alpha {crc['alpha']:g}", cell(complement(crc["empty"]))
    return [(name, answered, cell(crc["fnr_answered"]), cell(crc["set_size"]))]


def caveats(result: dict[str, Any]) -> list[str]:
    """The FNR on val_test above alpha (its whole CI), and empty sets."""
    crc = guarantees_of(result).get("crc")
    if crc is None:
        return []
    error = 1 - result["accuracy"]["estimate"] if "accuracy" in result else None
    label = f"CRC at alpha {crc['alpha']:g}"
    fix = "val_test may not be exchangeable with val_calib; check the splits"
    out = risk_above(label, crc["fnr"], crc["alpha"], "false-negative rate", fix)
    share = crc["empty"]["estimate"]
    return out + (empty_sets(label, f"{share:.1%}", crc["alpha"], error) if share > 0 else [])


POLICY = Policy(
    kind="crc",
    guarantee=GUARANTEE,
    sources=(THRESHOLDS, CONFORMAL),
    schema={
        "required": ["method", "alpha", "lambda"],
        "properties": {"method": {"const": "lac"}, "alpha": ALPHA, "lambda": PROB},
    },
    build=build,
    apply=apply,
    rows=rows,
    report=report,
    report_key="crc",
    caveats=caveats,
)
