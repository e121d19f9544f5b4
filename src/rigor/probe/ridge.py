"""The HEST-Benchmark regression protocol on frozen features: patient-level folds, PCA fitted
on each train fold, ridge regression, Pearson r per gene with patient-cluster bootstrap CIs.

The protocol follows HEST-Benchmark (Jaume et al., 2024, and its ``hest`` package's
benchmark code): features are standardised and reduced to 256 principal components, both
fitted on the train fold only; ridge regression uses the ``lsqr`` solver, no intercept, at
most 1,000 iterations and the penalty ``alpha = 100 / (n_components * n_genes)``; each fold's
score is Pearson r per gene on its test spots; a gene's score is the mean over folds and the
headline is the mean over genes. Without an intercept the predictions are centred while the
targets are not: Pearson r does not see the offset, so the probe reports correlations only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from rigor.evaluation.bootstrap import replicates, summarize
from rigor.io import finite_json

MAX_ITER = 1000


@dataclass(frozen=True)
class Folds:
    """Test groups of each fold; every other group trains that fold's PCA and ridge."""

    groups: np.ndarray  # the split group (patient) of every row
    tests: list[list[str]]  # fold k tests the rows of these groups

    def test_mask(self, fold: int) -> np.ndarray:
        """Rows fold ``fold`` tests."""
        return np.isin(self.groups, self.tests[fold])

    def fold_of_rows(self) -> np.ndarray:
        """The fold each row is tested in; -1 for rows no fold tests."""
        fold = np.full(len(self.groups), -1, dtype=np.int64)
        for k in range(len(self.tests)):
            fold[self.test_mask(k)] = k
        return fold


def make_folds(groups: np.ndarray, eligible: list[str], n_folds: int | None) -> Folds:
    """Leave-one-group-out over ``eligible`` groups (``n_folds`` None), or ``n_folds``
    folds of whole groups (sklearn's GroupKFold, which balances the folds' rows)."""
    groups = np.asarray(groups).astype(str)
    eligible = sorted(set(eligible))
    if n_folds is None or n_folds >= len(eligible):
        return Folds(groups, [[group] for group in eligible])
    from sklearn.model_selection import GroupKFold

    rows = np.flatnonzero(np.isin(groups, eligible))
    tests = [
        sorted({str(g) for g in groups[rows[test]]})
        for _, test in GroupKFold(n_splits=n_folds).split(rows, groups=groups[rows])
    ]
    return Folds(groups, tests)


def hest_alpha(n_components: int, n_genes: int) -> float:
    """HEST-Benchmark's ridge penalty: 100 / (n_components * n_genes)."""
    return 100.0 / (n_components * n_genes)


def fit_predict(
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    components: int,
    alpha: float | None,
    seed: int,
) -> tuple[np.ndarray, dict[str, Any]]:
    """StandardScaler + PCA fitted on the train rows, then ridge; predictions for ``test_x``
    and what was fitted (components kept, alpha, explained variance)."""
    from sklearn.decomposition import PCA
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    kept = min(components, train_x.shape[0], train_x.shape[1])
    reduce = Pipeline(
        [("scaler", StandardScaler()), ("pca", PCA(n_components=kept, random_state=seed))]
    )
    train_z = reduce.fit_transform(train_x.astype(np.float64))
    penalty = hest_alpha(kept, train_y.shape[1]) if alpha is None else alpha
    ridge = Ridge(
        alpha=penalty,
        solver="lsqr",
        fit_intercept=False,
        max_iter=MAX_ITER,
        random_state=seed,
    )
    ridge.fit(train_z, train_y)
    predicted = ridge.predict(reduce.transform(test_x.astype(np.float64)))
    explained = float(reduce.named_steps["pca"].explained_variance_ratio_.sum())
    return np.asarray(predicted).reshape(len(test_x), -1), {
        "components": kept,
        "alpha": penalty,
        "explained_variance": explained,
    }


def cross_validate(
    features: np.ndarray,
    targets: np.ndarray,
    folds: Folds,
    components: int,
    alpha: float | None,
    seed: int,
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Out-of-fold predictions (NaN for rows no fold tests) and each fold's fit record."""
    predicted = np.full(targets.shape, np.nan, dtype=np.float64)
    records = []
    for k, tested in enumerate(folds.tests):
        test = folds.test_mask(k)
        fitted, record = fit_predict(
            features[~test], targets[~test], features[test], components, alpha, seed
        )
        predicted[test] = fitted
        records.append(
            {"test_groups": tested, "n_train": int((~test).sum()), "n_test": int(test.sum())}
            | record
        )
    return predicted, records


def _moments(
    predicted: np.ndarray, targets: np.ndarray, member: np.ndarray, n_groups: int
) -> np.ndarray:
    """(n_groups, 6, n_genes) sums n, p, t, p², t², pt over each group's rows."""
    sums = [
        np.ones_like(predicted),
        predicted,
        targets,
        predicted * predicted,
        targets * targets,
        predicted * targets,
    ]
    out = np.zeros((n_groups, len(sums), predicted.shape[1]))
    for s, values in enumerate(sums):
        np.add.at(out[:, s], member, values)
    return out


def _pearson_from_moments(m: np.ndarray) -> np.ndarray:
    """Pearson r from the six sums over the axis -2 (NaN where either side is constant)."""
    n, p, t, pp, tt, pt = (m[..., i, :] for i in range(6))
    with np.errstate(invalid="ignore", divide="ignore"):
        cov = pt - p * t / n
        var = (pp - p * p / n) * (tt - t * t / n)
        return np.where(var > 1e-300, cov / np.sqrt(np.maximum(var, 1e-300)), np.nan)


@dataclass(frozen=True)
class GroupMoments:
    """The six sums of every tested group and the fold that tests it: enough to compute any
    fold's Pearson r with groups repeated or left out, without touching the rows again."""

    sums: np.ndarray  # (n_groups, 6, n_genes)
    fold: np.ndarray  # (n_groups,)
    n_folds: int

    @classmethod
    def of(cls, predicted: np.ndarray, targets: np.ndarray, folds: Folds) -> GroupMoments:
        order = {group: i for i, group in enumerate(g for tests in folds.tests for g in tests)}
        tested = folds.fold_of_rows() >= 0
        member = np.fromiter((order[g] for g in folds.groups[tested]), dtype=np.int64)
        fold = np.repeat(np.arange(len(folds.tests)), [len(t) for t in folds.tests])
        sums = _moments(predicted[tested], targets[tested], member, len(order))
        return cls(sums, fold, len(folds.tests))

    def pearson(self, weights: np.ndarray | None = None) -> np.ndarray:
        """(n_folds, n_genes) Pearson r of each fold's test rows; ``weights`` repeats (or,
        at 0, leaves out) groups, as a cluster bootstrap draw does."""
        sums = self.sums if weights is None else self.sums * weights[:, None, None]
        per_fold = np.zeros((self.n_folds, *self.sums.shape[1:]))
        np.add.at(per_fold, self.fold, sums)
        return _pearson_from_moments(per_fold)

    def fold_weights(self, weights: np.ndarray) -> np.ndarray:
        """How much each fold counts in a resample: its groups' draws per group it holds."""
        drawn = np.bincount(self.fold, weights=weights, minlength=self.n_folds)
        return drawn / np.bincount(self.fold, minlength=self.n_folds)


def pearson_report(
    predicted: np.ndarray,
    targets: np.ndarray,
    folds: Folds,
    genes: list[str],
    ci: dict[str, Any],
) -> dict[str, Any]:
    """Per-gene Pearson r (mean over folds) and its mean over genes, each with a
    patient-cluster bootstrap CI. A resample draws the tested groups with replacement; each
    fold's r is computed on its drawn groups (repeated as drawn) and weighs in the mean by
    how often its groups were drawn (a fold whose groups were all left out drops out), so
    with one group per fold the resample is an ordinary bootstrap of the fold scores."""
    moments = GroupMoments.of(predicted, targets, folds)
    per_fold = moments.pearson()
    estimate = _nanmean_rows(per_fold)
    n_groups = len(moments.fold)

    def batched(draws: np.ndarray) -> dict[str, np.ndarray]:
        per_gene = []
        for picked in draws:
            weights = np.bincount(picked, minlength=n_groups).astype(np.float64)
            per_gene.append(_weighted_mean(moments.pearson(weights), moments.fold_weights(weights)))
        return {"per_gene": np.asarray(per_gene), "mean": _nanmean_rows(np.asarray(per_gene).T)}

    values = replicates(batched, n_groups, ci["n_resamples"], ci["seed"])
    return {
        "pearson_mean": summarize(values["mean"], float(np.nanmean(estimate)), ci["level"]),
        "pearson_median": float(np.nanmedian(estimate)),
        "per_gene": {
            gene: summarize(values["per_gene"][:, j], float(estimate[j]), ci["level"])
            for j, gene in enumerate(genes)
        },
        "per_fold": finite_json(per_fold.tolist()),
        "n_groups_tested": n_groups,
        "ci_unit": "group",
    }


def _weighted_mean(per_fold: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Mean over folds (axis 0) with fold weights, ignoring NaN; NaN where nothing is left."""
    use = np.isfinite(per_fold) & (weights[:, None] > 0)
    total = np.where(use, per_fold * weights[:, None], 0.0).sum(axis=0)
    weight = np.where(use, weights[:, None], 0.0).sum(axis=0)
    return np.where(weight > 0, total / np.maximum(weight, 1e-300), np.nan)


def _nanmean_rows(matrix: np.ndarray) -> np.ndarray:
    """Mean over axis 0 ignoring NaN; NaN (no warning) where a column is all NaN."""
    return _weighted_mean(matrix, np.ones(len(matrix)))
