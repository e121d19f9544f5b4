"""Selective and calibration metrics on hand-computed cases, bootstrap CIs, temperature."""

from __future__ import annotations

import functools
import math
import subprocess
import sys

import numpy as np
import pytest

from rigor.calibration.temperature import NoFiniteOptimum, fit_temperature, scaled_nll
from rigor.metrics.bootstrap import bootstrap_ci
from rigor.metrics.calibration import adaptive_ece, brier, ece, nll, reliability
from rigor.metrics.scores import softmax
from rigor.metrics.selective import (
    augrc,
    aurc,
    auroc,
    coverage_at_risk,
    generalized_risk_coverage_curve,
    risk_at_coverage,
    risk_coverage_curve,
)
from rigor.metrics.summary import score_metrics

# no ties: confidences 0.9 0.8 0.7 0.6, the two most confident are right
PLAIN = (np.array([0.9, 0.8, 0.7, 0.6]), np.array([1, 1, 0, 0]))
# heavy ties: three samples at 0.9 (one wrong), two at 0.5 (one wrong)
TIED = (np.array([0.9, 0.5, 0.9, 0.5, 0.9]), np.array([1, 1, 0, 0, 1]))


def test_curve_without_ties() -> None:
    coverage, risk, thresholds = risk_coverage_curve(*PLAIN)
    assert coverage.tolist() == [1.0, 0.75, 0.5, 0.25]
    assert risk == pytest.approx([0.5, 1 / 3, 0.0, 0.0])
    assert thresholds.tolist() == [0.6, 0.7, 0.8, 0.9]
    _, generalized, _ = generalized_risk_coverage_curve(*PLAIN)
    assert generalized == pytest.approx([0.5, 0.25, 0.0, 0.0])


def test_areas_without_ties() -> None:
    # AURC: .25*(.5+1/3)/2 + .25*(1/3+0)/2 + 0 + closing .25*(0+0)/2 = 7/48
    assert aurc(*PLAIN) == pytest.approx(7 / 48, abs=1e-12)
    # AUGRC: .25*(.5+.25)/2 + .25*(.25+0)/2 = 1/8
    assert augrc(*PLAIN) == pytest.approx(1 / 8, abs=1e-12)


def test_point_metrics_without_ties() -> None:
    assert risk_at_coverage(*PLAIN, 0.5) == 0.0
    assert risk_at_coverage(*PLAIN, 0.8) == 0.5  # only the full-coverage point qualifies
    assert risk_at_coverage(*PLAIN, 0.75) == pytest.approx(1 / 3)
    assert coverage_at_risk(*PLAIN, 0.4) == 0.75
    assert coverage_at_risk(*PLAIN, 0.1) == 0.5
    assert coverage_at_risk(*PLAIN, 0.5) == 1.0


def test_heavy_ties_move_together() -> None:
    coverage, risk, thresholds = risk_coverage_curve(*TIED)
    assert coverage.tolist() == [1.0, 0.6] and thresholds.tolist() == [0.5, 0.9]
    assert risk == pytest.approx([0.4, 1 / 3])
    # AURC: .4*(.4+1/3)/2 + .6*(1/3+1/3)/2 ; AUGRC: .4*(.4+.2)/2 + .6*(.2+0)/2
    assert aurc(*TIED) == pytest.approx(0.4 * (0.4 + 1 / 3) / 2 + 0.2, abs=1e-12)
    assert augrc(*TIED) == pytest.approx(0.18, abs=1e-12)
    assert coverage_at_risk(*TIED, 0.35) == 0.6  # never 0.8 from a split tie group
    assert math.isnan(coverage_at_risk(*TIED, 0.3))  # infeasible
    assert risk_at_coverage(*TIED, 0.8) == pytest.approx(0.4)


def test_no_result_depends_on_row_order() -> None:
    rng = np.random.default_rng(0)
    conf = np.round(rng.random(300), 1)  # 11 distinct values: heavy ties
    correct = rng.random(300) < conf
    perm = rng.permutation(300)
    for metric in (
        aurc,
        augrc,
        functools.partial(risk_at_coverage, coverage=0.7),
        functools.partial(coverage_at_risk, risk=0.2),
    ):
        assert metric(conf[perm], correct[perm]) == metric(conf, correct)


def test_all_correct_and_all_wrong() -> None:
    conf = np.array([0.9, 0.7, 0.7, 0.2])
    right, wrong = np.ones(4, bool), np.zeros(4, bool)
    assert aurc(conf, right) == 0.0 and augrc(conf, right) == 0.0
    assert coverage_at_risk(conf, right, 0.01) == 1.0 and risk_at_coverage(conf, right, 0.9) == 0.0
    assert aurc(conf, wrong) == pytest.approx(1.0)
    assert augrc(conf, wrong) == pytest.approx(0.5)  # generalized risk = coverage: area under y = x
    assert math.isnan(coverage_at_risk(conf, wrong, 0.1))
    assert risk_at_coverage(conf, wrong, 0.5) == 1.0


@pytest.mark.parametrize("seed, decimals", [(0, 1), (1, 2), (2, 6)])
def test_augrc_identity_with_auroc(seed: int, decimals: int) -> None:
    rng = np.random.default_rng(seed)
    conf = np.round(rng.random(2000), decimals)
    correct = rng.random(2000) < conf
    acc = correct.mean()
    expected = (1 - auroc(conf, correct)) * acc * (1 - acc) + (1 - acc) ** 2 / 2
    assert augrc(conf, correct) == pytest.approx(expected, abs=1e-12)


def test_aurc_matches_the_trapezoid_of_the_curve() -> None:
    rng = np.random.default_rng(5)
    conf = np.round(rng.random(500), 2)
    correct = rng.random(500) < conf
    coverage, risk, _ = risk_coverage_curve(conf, correct)
    x, y = np.r_[coverage, 0.0], np.r_[risk, risk[-1]]
    assert aurc(conf, correct) == pytest.approx(
        float(np.sum((x[:-1] - x[1:]) * (y[:-1] + y[1:]) / 2)), abs=1e-12
    )


PROBS = np.array([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8], [0.5, 0.5]])
LABELS = np.array([0, 1, 1, 0])  # correct: yes, no, yes, yes (argmax 0 on the 0.5 tie)


def test_calibration_hand_case() -> None:
    # conf .9 .6 .8 .5 land in bins 13, 8 (upper edge 9/15), 11, 7
    assert ece(PROBS, LABELS) == pytest.approx((0.1 + 0.6 + 0.2 + 0.5) / 4, abs=1e-12)
    assert nll(PROBS, LABELS) == pytest.approx(-np.log([0.9, 0.4, 0.8, 0.5]).mean(), abs=1e-12)
    assert brier(PROBS, LABELS) == pytest.approx((0.02 + 0.72 + 0.08 + 0.5) / 4, abs=1e-12)
    # 2 equal-mass bins: {.5 right, .6 wrong} and {.8 right, .9 right}
    assert adaptive_ece(PROBS, LABELS, n_bins=2) == pytest.approx((0.1 + 0.3) / 4, abs=1e-12)


def test_ece_bin_edges() -> None:
    probs = np.full((2, 15), 1 / 15)  # confidence exactly 1/15: the first bin's upper edge
    probs[1] = [2 / 15, *([13 / 14 / 15 * 1.0] * 14)]  # confidence 2/15, the second bin's edge
    probs[1] /= probs[1].sum()
    table = reliability(probs, np.array([0, 5]))
    assert table["count"][0] == 1 and table["count"][1] == 1
    assert (
        ece(np.array([[1.0, 0.0], [0.0, 1.0]]), np.array([0, 1])) == 0.0
    )  # conf 1 in the last bin


def test_calibration_all_correct_all_wrong() -> None:
    sure = np.array([[1.0, 0.0], [0.0, 1.0]])
    assert ece(sure, np.array([0, 1])) == 0.0 and brier(sure, np.array([0, 1])) == 0.0
    assert ece(sure, np.array([1, 0])) == 1.0 and brier(sure, np.array([1, 0])) == 2.0
    assert nll(sure, np.array([1, 0])) == pytest.approx(-np.log(1e-12))


def test_bootstrap_batched_equals_plain_resampling() -> None:
    rng = np.random.default_rng(1)
    conf = np.round(rng.random(400), 2)
    correct = rng.random(400) < conf
    fast = bootstrap_ci(augrc, conf, correct, n_resamples=300, seed=3)
    slow = bootstrap_ci(lambda c, k: augrc(c, k), conf, correct, n_resamples=300, seed=3)
    assert fast == slow
    probs = rng.dirichlet(np.ones(3), 400)
    labels = rng.integers(0, 3, 400)
    for metric in (ece, adaptive_ece, nll, brier):
        a = bootstrap_ci(metric, probs, labels, n_resamples=50)
        b = bootstrap_ci(lambda p, y, m=metric: m(p, y), probs, labels, n_resamples=50)
        assert a["ci_lower"] == pytest.approx(b["ci_lower"], abs=1e-12)


def test_bootstrap_interval_properties() -> None:
    rng = np.random.default_rng(2)
    x = rng.normal(0, 1, 500)
    ci = bootstrap_ci(np.mean, x, n_resamples=1000, seed=0)
    assert ci["ci_lower"] < ci["estimate"] < ci["ci_upper"]
    assert ci["std"] == pytest.approx(x.std() / np.sqrt(500), rel=0.1)  # the standard error
    assert bootstrap_ci(np.mean, x, seed=0) == ci and bootstrap_ci(np.mean, x, seed=1) != ci
    narrow = bootstrap_ci(np.mean, x, level=0.5)
    assert narrow["ci_upper"] - narrow["ci_lower"] < ci["ci_upper"] - ci["ci_lower"]


def test_resamples_are_kept_when_small_drawn_per_piece_when_large_and_fork_safe(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Small resamples are drawn once and read-only; large ones are drawn piece by piece and
    not kept; both give the same replicates as drawing every chunk afresh. A forked child (a
    plot worker) bootstraps on its own thread pool instead of waiting forever on the
    parent's threads."""
    import multiprocessing

    from rigor.metrics import bootstrap

    first = bootstrap._kept(270, 1000, 5)
    assert bootstrap._kept(270, 1000, 5) is first
    assert all(not piece.flags.writeable for piece in first)
    sizes = [bootstrap.CHUNK] * 25
    seeds = np.random.SeedSequence(5).spawn(len(sizes))
    fresh = [
        bootstrap.draw(270, s, np.random.default_rng(q)) for s, q in zip(sizes, seeds, strict=True)
    ]
    assert np.array_equal(np.concatenate(first), np.concatenate(fresh))

    def count(draws: np.ndarray) -> dict[str, np.ndarray]:
        return {"total": draws.sum(axis=1)}

    here = bootstrap.replicates(count, 270, 1000, 5, workers=2)["total"]
    assert np.array_equal(here, np.concatenate(fresh).sum(axis=1))
    monkeypatch.setattr(bootstrap, "KEPT_CELLS", 1000)
    bootstrap._kept.cache_clear()
    assert np.array_equal(bootstrap.replicates(count, 270, 1000, 5, workers=2)["total"], here)
    assert bootstrap._kept.cache_info().currsize == 0  # large: drawn per piece, nothing kept
    monkeypatch.setattr(bootstrap, "KEPT_CELLS", 2_000_000)
    context = multiprocessing.get_context("fork")
    reader, writer = context.Pipe(duplex=False)

    def child() -> None:
        writer.send(bootstrap.replicates(count, 270, 1000, 5, workers=2)["total"])

    process = context.Process(target=child)
    process.start()
    try:
        assert reader.poll(30), "the forked child's bootstrap hung"
        assert np.array_equal(reader.recv(), here)
    finally:
        process.kill()
        process.join(10)


def test_infeasible_resamples_are_counted_not_averaged() -> None:
    conf = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
    correct = np.array([1, 0, 1, 0, 1, 0], bool)
    ci = bootstrap_ci(functools.partial(coverage_at_risk, risk=0.0), conf, correct, n_resamples=200)
    assert 0 < ci["n_finite"] < 200 and 0 < ci["ci_lower"] <= ci["ci_upper"] <= 1


def test_score_metrics_agree_with_the_single_functions() -> None:
    rng = np.random.default_rng(3)
    logits = rng.normal(0, 2, (1000, 4))
    labels = rng.integers(0, 4, 1000)
    probs = softmax(logits)
    conf = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    report = score_metrics(probs, labels, conf, n_resamples=100)
    assert report["augrc"]["estimate"] == pytest.approx(augrc(conf, correct), abs=1e-12)
    assert report["risk@0.8"]["estimate"] == pytest.approx(
        risk_at_coverage(conf, correct, 0.8), abs=1e-12
    )
    assert report["adaptive_ece"]["estimate"] == pytest.approx(
        adaptive_ece(probs, labels), abs=1e-12
    )
    same = bootstrap_ci(augrc, conf, correct, n_resamples=100)
    assert report["augrc"]["ci_lower"] == pytest.approx(
        same["ci_lower"], abs=1e-12
    )  # same resamples


def test_temperature_matches_a_converged_1d_search() -> None:
    from scipy.optimize import minimize_scalar

    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, (3000, 5))
    probs = softmax(logits, 2.0)
    labels = np.array([rng.choice(5, p=row) for row in probs])
    fitted = fit_temperature(logits, labels)
    ref = minimize_scalar(
        lambda lt: scaled_nll(logits, labels, np.exp(lt)),
        bounds=(-4, 4),
        method="bounded",
        options={"xatol": 1e-10},
    )
    assert fitted == pytest.approx(float(np.exp(ref.x)), rel=1e-3)
    assert fitted == pytest.approx(2.0, rel=0.1)
    assert scaled_nll(logits, labels, fitted) <= scaled_nll(logits, labels, 1.0)


def test_temperature_refuses_degenerate_sets() -> None:
    logits = np.array([[3.0, 0.0], [0.0, 2.0], [1.0, -1.0]])
    with pytest.raises(NoFiniteOptimum, match="all 3 calibration samples are classified correctly"):
        fit_temperature(logits, np.array([0, 1, 0]))
    with pytest.raises(NoFiniteOptimum, match="classified wrongly"):
        fit_temperature(logits, np.array([1, 0, 1]))


def test_cluster_bootstrap_with_singleton_groups_is_the_row_bootstrap() -> None:
    from rigor.metrics.bootstrap import bootstrap_ci, cluster_ci

    rng = np.random.default_rng(3)
    a, b = rng.normal(size=60), rng.normal(size=60)

    def mae(x: np.ndarray, y: np.ndarray) -> float:
        return float(np.abs(x - y).mean())

    rows = bootstrap_ci(mae, a, b, n_resamples=200, seed=5)
    clusters = cluster_ci(mae, a, b, groups=np.arange(60), n_resamples=200, seed=5)
    assert clusters.pop("n_groups") == 60
    assert clusters == rows


def test_cluster_bootstrap_widens_the_interval_when_groups_share_an_offset() -> None:
    from rigor.metrics.bootstrap import bootstrap_ci, cluster_ci

    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(6), 40)
    # each group's errors share an offset: 240 rows but only 6 independent units
    errors = rng.normal(0.0, 1.0, 6)[groups] + rng.normal(0.0, 0.1, 240)

    def mean_error(e: np.ndarray, _: np.ndarray) -> float:
        return float(e.mean())

    rows = bootstrap_ci(mean_error, errors, errors, n_resamples=400, seed=0)
    clusters = cluster_ci(mean_error, errors, errors, groups=groups, n_resamples=400, seed=0)
    assert clusters["estimate"] == rows["estimate"]
    width = clusters["ci_upper"] - clusters["ci_lower"]
    assert width > 4 * (rows["ci_upper"] - rows["ci_lower"])
    # the bootstrap standard error of a mean of 6 equal-sized groups is the population sd
    # of the group means over sqrt(6)
    means = np.array([errors[groups == g].mean() for g in range(6)])
    assert clusters["std"] == pytest.approx(means.std() / np.sqrt(6), rel=0.15)


def test_exact_risk_bound_is_the_clopper_pearson_quantile() -> None:
    from scipy.stats import beta

    from rigor.evaluation.report_classification import clopper_pearson_upper

    assert clopper_pearson_upper(0, 257, 0.95) == pytest.approx(1 - 0.05 ** (1 / 257), rel=1e-12)
    for errors, accepted in ((1, 262), (3, 100), (5, 20)):
        expected = beta.ppf(0.95, errors + 1, accepted - errors)
        assert clopper_pearson_upper(errors, accepted, 0.95) == pytest.approx(expected, rel=1e-12)
    assert clopper_pearson_upper(4, 4, 0.95) == 1.0
    from scipy.special import betaincinv

    for level in (0.8, 0.9, 0.95, 0.975, 0.99):  # the closed form of 0 errors, bit for bit
        for accepted in range(1, 2000):
            assert clopper_pearson_upper(0, accepted, level) == betaincinv(1, accepted, level)
    assert math.isnan(clopper_pearson_upper(0, 0, 0.95))


def test_numpy_twin_equals_the_compiled_kernels_bit_for_bit() -> None:
    """Point estimates and bootstrap draws (samples drawn 0, 1 or many times, tie groups,
    fewer samples than bins) give the same bits from rigor.metrics.kernels_numpy as from the
    numba kernels."""
    from rigor.metrics import kernels_numba as _kernels
    from rigor.metrics import kernels_numpy as _exact
    from rigor.metrics.engine import MetricEngine

    rng = np.random.default_rng(5)
    for case in range(300):
        n = int(rng.integers(1, 120))
        k = int(rng.integers(2, 6))
        probs = rng.dirichlet(np.full(k, rng.uniform(0.2, 3.0)), size=n)
        if case % 3 == 0:
            probs = np.round(probs, 1)  # tie groups
            probs /= probs.sum(axis=1, keepdims=True)
        labels = rng.integers(0, k, n)
        engine = MetricEngine.build(
            None,
            probs=probs,
            labels=labels,
            coverages=(0.0, 0.3, 0.9, 1.0),
            risks=(0.0, 0.05, 0.5),
            n_bins=int(rng.integers(2, 20)),
        )
        rows = 1 if case % 4 == 0 else int(rng.integers(2, 30))
        draws = rng.integers(0, n, size=(rows, n), dtype=np.int64)
        if rows == 1:
            draws[0] = np.arange(n)
        args = (
            draws,
            engine.position,
            engine.errors,
            engine.starts,
            engine.coverages,
            engine.risks,
            *engine.calib,  # type: ignore[misc]
            engine.n_bins,
            True,
        )
        fast, compiled = _exact.resample_stats(*args), _kernels.resample_stats(*args)
        assert fast.shape == compiled.shape
        assert fast.tobytes() == compiled.tobytes(), f"case {case}"


def test_small_evaluations_never_import_numba() -> None:
    code = (
        "import sys, numpy as np\n"
        "from rigor.metrics.summary import score_replicates\n"
        "rng = np.random.default_rng(0)\n"
        "probs = rng.dirichlet(np.ones(4), size=300); labels = rng.integers(0, 4, 300)\n"
        "est, reps = score_replicates(probs, labels, probs.max(axis=1), n_resamples=200)\n"
        "assert len(reps['augrc']) == 200 and 0 < est['augrc'] < 1\n"
        "print('numba' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_the_docs_metric_agrees_with_scikit_learn_and_bootstraps_in_one_pass() -> None:
    """docs/extending.md's "A metric" example: its value is scikit-learn's balanced
    accuracy, and its batched form gives bootstrap_ci the values one call per resample
    would."""
    from conftest import ROOT
    from sklearn.metrics import balanced_accuracy_score

    from rigor.metrics.bootstrap import bootstrap_ci

    text = (ROOT / "docs" / "extending.md").read_text()
    section = text.split("\n## A metric\n", 1)[1]
    namespace: dict[str, object] = {}
    exec(compile(section.split("```")[1].split("\n", 1)[1], "docs/extending.md", "exec"), namespace)
    metric = namespace["balanced_accuracy"]
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 300)
    predicted = np.where(rng.random(300) < 0.7, labels, rng.integers(0, 4, 300))
    assert metric(predicted, labels) == pytest.approx(balanced_accuracy_score(labels, predicted))
    batched = bootstrap_ci(metric, predicted, labels, n_resamples=200, seed=3)
    plain = bootstrap_ci(lambda p, y: metric(p, y), predicted, labels, n_resamples=200, seed=3)
    assert batched == pytest.approx(plain)
