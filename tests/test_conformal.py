"""Split-conformal sets, CRC, SCRC and the Platt gate: exact small cases, bad inputs, and the
finite-sample guarantees checked empirically over random re-splits of fixed predictions."""

from __future__ import annotations

import math

import numpy as np
import pytest

from rigor.metrics.sets import label_scores, prediction_sets
from rigor.policies.crc import crc_lambda, fnr_losses
from rigor.policies.gate import fit_platt
from rigor.policies.scrc import scrc_fit, selection_threshold
from rigor.policies.sets import conformal_quantile

SCORES = np.arange(1, 21, dtype=np.float64)  # 1, 2, ..., 20 shuffled below


@pytest.mark.parametrize(
    ("n", "alpha", "k"),
    [
        (19, 0.1, 18),  # (n + 1)(1 - alpha) = 18 exactly
        (19, 0.05, 19),  # = 19 exactly: the largest score
        (9, 0.1, 9),  # = 9 exactly
        (20, 0.1, 19),  # 18.9 -> 19
        (10, 0.25, 9),  # 8.25 -> 9
        (5, 0.1, None),  # 5.4 -> 6 > 5: +inf
        (1, 0.4, None),  # 1.2 -> 2 > 1
    ],
)
def test_conformal_quantile_is_the_kth_smallest_score(n: int, alpha: float, k: int | None) -> None:
    scores = np.random.default_rng(n).permutation(SCORES[:n])
    expected = math.inf if k is None else float(k)  # the k-th smallest of 1..n is k
    assert conformal_quantile(scores, alpha) == expected


def test_label_scores_by_hand() -> None:
    probs = np.array([[0.5, 0.3, 0.2], [0.1, 0.6, 0.3]])
    np.testing.assert_allclose(label_scores(probs, "lac"), 1 - probs)
    aps = label_scores(probs, "aps")
    np.testing.assert_allclose(aps, [[0.5, 0.8, 1.0], [1.0, 0.6, 0.9]])
    raps = label_scores(probs, "raps", k_reg=1, lam=0.1)
    np.testing.assert_allclose(raps, [[0.5, 0.9, 1.2], [1.2, 0.6, 1.0]])
    u = np.array([0.5, 1.0])
    np.testing.assert_allclose(
        label_scores(probs, "aps", u=u), [[0.25, 0.65, 0.9], [0.9, 0.0, 0.6]]
    )
    sets = prediction_sets(aps, 0.85)
    assert sets.tolist() == [[True, True, False], [False, True, False]]
    assert prediction_sets(aps, math.inf).all()


@pytest.mark.parametrize(
    ("probs", "match"),
    [
        (np.array([[0.5, 0.6]]), "sums to 1.1"),
        (np.array([[np.nan, 1.0]]), "row 0 has a NaN"),
        (np.array([[1.5, -0.5]]), "negative"),
        (np.array([[2.0, 3.0]]), "not logits"),
    ],
)
def test_label_scores_refuse_what_is_not_a_probability(probs: np.ndarray, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        label_scores(probs, "aps")


def test_bad_inputs_are_refused_by_name() -> None:
    with pytest.raises(ValueError, match="finite"):
        conformal_quantile(np.array([0.1, np.nan]), 0.1)
    with pytest.raises(ValueError, match="NaN"):
        prediction_sets(np.array([[np.nan, 0.1]]), 0.5)
    with pytest.raises(ValueError, match="0 or 1"):
        fit_platt(np.array([0.1, 0.2, 0.3]), np.array([0, 1, 2]))
    with pytest.raises(ValueError, match="finite"):
        fit_platt(np.array([0.1, np.nan, 0.3]), np.array([0, 1, 1]))
    with pytest.raises(ValueError, match="increase"):
        crc_lambda(np.array([[0.0, 1.0]]), np.array([0.0, 1.0]), 0.5)
    with pytest.raises(ValueError, match=r"\[0, 1"):
        crc_lambda(np.array([[np.nan, 0.0]]), np.array([0.0, 1.0]), 0.5)


def test_crc_lambda_by_hand() -> None:
    grid = np.array([0.0, 0.25, 0.5, 0.75, 1.0])
    true_scores = np.array([0.1, 0.2, 0.3, 0.6, 0.9, 0.4, 0.7, 0.8, 0.15])  # n = 9
    losses = fnr_losses(true_scores, grid)
    # misses at each grid value: 9, 6, 4, 2, 0; need (misses + 1) / 10 <= alpha
    assert crc_lambda(losses, grid, 0.3) == 0.75  # (2 + 1) / 10 = 0.3: equality passes
    assert crc_lambda(losses, grid, 0.5) == 0.5
    assert crc_lambda(losses, grid, 0.05) == math.inf  # best: (0 + 1) / 10 = 0.1


def test_selection_threshold_keeps_the_promised_share() -> None:
    g = np.arange(1.0, 20.0)  # n = 19
    assert selection_threshold(g, 0.9) == 2.0  # k = floor(20 * 0.1) = 2: accept g >= 2
    assert selection_threshold(g, 0.96) == -math.inf  # k = floor(0.8) = 0: accept all
    fitted = scrc_fit(g, np.zeros(19), np.array([0.0, 1.0]), 0.1, 0.9)
    assert fitted["n_selected"] == 18 and fitted["lambda"] == 0.0


def test_platt_recovers_a_logistic_truth() -> None:
    rng = np.random.default_rng(0)
    g = rng.normal(0, 2, 20_000)
    correct = rng.random(g.size) < 1 / (1 + np.exp(-(1.5 * g - 0.5)))
    a, b = fit_platt(g, correct)
    assert a == pytest.approx(1.5, abs=0.06) and b == pytest.approx(-0.5, abs=0.06)
    separable = fit_platt(np.r_[-np.ones(5), np.ones(5)], np.r_[np.zeros(5), np.ones(5)])
    assert all(math.isfinite(v) for v in separable) and separable[0] > 0


def _fixed_predictions(n: int = 1000, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities of a calibrated but imperfect model, and labels drawn from them."""
    rng = np.random.default_rng(7)
    logits = rng.normal(0, 2.5, (n, k))
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    labels = np.array([rng.choice(k, p=row) for row in probs])
    return probs, labels


def test_guarantees_hold_over_200_random_resplits() -> None:
    probs, labels = _fixed_predictions()
    alpha, n = 0.1, len(labels) // 2
    grid = np.linspace(0, 1, 1001)
    rng = np.random.default_rng(1)
    coverage: dict[str, list[float]] = {"lac": [], "aps": [], "aps_randomized": []}
    crc_risk, scrc_risk = [], []
    for _ in range(200):
        order = rng.permutation(len(labels))
        cal, test = order[:n], order[n:]
        u = rng.random(len(labels))  # one draw per row, fresh for every split
        for name in coverage:
            method = name.split("_")[0]
            scores = label_scores(probs, method, u=u if name.endswith("randomized") else None)
            q_hat = conformal_quantile(scores[cal, labels[cal]], alpha)
            covered = prediction_sets(scores[test], q_hat)[np.arange(len(test)), labels[test]]
            coverage[name].append(covered.mean())
        lac = label_scores(probs, "lac")
        true_scores = lac[np.arange(len(labels)), labels]
        lam = crc_lambda(fnr_losses(true_scores[cal], grid), grid, alpha)
        crc_risk.append((true_scores[test] > lam).mean())
        selection = probs.max(axis=1)
        fitted = scrc_fit(selection[cal], true_scores[cal], grid, alpha, 0.7)
        accepted = selection[test] >= fitted["selection_threshold"]
        scrc_risk.append((true_scores[test][accepted] > fitted["lambda"]).mean())
    for method, values in coverage.items():
        assert 1 - alpha - 0.01 <= np.mean(values) <= 1 - alpha + 1 / (n + 1) + 0.01, method
    assert np.mean(crc_risk) <= alpha + 0.01
    assert np.mean(scrc_risk) <= alpha + 0.01
    # the bounds are tight, not vacuous: the risks come close to alpha
    assert np.mean(crc_risk) > alpha - 0.02 and np.mean(scrc_risk) > alpha - 0.03
