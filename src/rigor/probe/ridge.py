"""The HEST-Benchmark regression protocol on frozen features: folds (made here from patients,
or a task folder's predefined splits), PCA fitted on each fold's train rows, ridge
regression, Pearson r per gene with patient-cluster bootstrap CIs.

The protocol follows HEST-Benchmark (Jaume et al., 2024, and its ``hest`` package's
benchmark code): features are standardised and reduced to 256 principal components, both
fitted on the train rows only; ridge regression uses the ``lsqr`` solver, no intercept, at
most 1,000 iterations and the penalty ``alpha = 100 / (n_components * n_genes)``; each fold's
score is Pearson r per gene on its test spots. HEST reports a split's score as its mean over
genes, and a task's as the mean and standard deviation of the split scores. Without an
intercept the predictions are centred while the targets are not: Pearson r does not see the
offset, so the probe reports correlations only. Where rigor differs on purpose (float64 for
lsqr, fewer components than 256 when the features have fewer) is in docs/datasets.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from rigor.errors import ConfigError
from rigor.io import finite_json
from rigor.metrics.bootstrap import replicates, summarize

MAX_ITER = 1000
# A side whose s.d. is below this share of its mean's magnitude is constant: its Pearson r
# is undefined (rounding alone leaves about 1e-16 of it; float32 data resolves 6e-8).
CONSTANT_REL_STD = 1e-10


@dataclass(frozen=True)
class Folds:
    """Which rows each fold tests and trains on, by the label of every row (its patient, or
    its sample for a task folder's splits): fold k tests ``tests[k]`` and trains on
    ``trains[k]``, or on every row it does not test when ``trains`` is None."""

    members: np.ndarray  # the label the folds list, one per row
    tests: list[list[str]]
    trains: list[list[str]] | None = None

    def test_mask(self, fold: int) -> np.ndarray:
        """Rows fold ``fold`` tests."""
        return np.isin(self.members, self.tests[fold])

    def train_mask(self, fold: int) -> np.ndarray:
        """Rows fold ``fold`` fits PCA and ridge on."""
        if self.trains is None:
            return ~self.test_mask(fold)
        return np.isin(self.members, self.trains[fold])


def make_folds(groups: np.ndarray, eligible: list[str], n_folds: int | None) -> Folds:
    """Leave-one-group-out over ``eligible`` groups (``n_folds`` None), or ``n_folds``
    folds of whole groups (sklearn's GroupKFold, which balances the folds' rows)."""
    groups = np.asarray(groups).astype(str)
    eligible = sorted(set(eligible))
    if n_folds is not None and n_folds > len(eligible):
        raise ConfigError(
            f"probe.folds: {n_folds} folds of whole patients need at least {n_folds} patients "
            f"to test, and there are {len(eligible)}; set probe.folds to at most "
            f"{len(eligible)}, or null to leave one patient out at a time"
        )
    if n_folds is None or n_folds == len(eligible):
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
    ridge.fit(train_z, np.asarray(train_y, dtype=np.float64))
    predicted = ridge.predict(reduce.transform(test_x.astype(np.float64)))
    explained = float(reduce.named_steps["pca"].explained_variance_ratio_.sum())
    return np.asarray(predicted).reshape(len(test_x), -1), {
        "components": kept,
        "alpha": penalty,
        "explained_variance": explained,
    }


@dataclass(frozen=True)
class FoldPredictions:
    """Each fold's test rows (dataset rows, in order) and their predictions (rows x genes)."""

    rows: list[np.ndarray]
    predicted: list[np.ndarray]

    def stacked(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(fold of each row, rows, predictions), the folds one after another."""
        fold = np.concatenate([np.full(len(r), k) for k, r in enumerate(self.rows)])
        return fold.astype(np.int64), np.concatenate(self.rows), np.concatenate(self.predicted)


def cross_validate(
    features: np.ndarray,
    targets: np.ndarray,
    folds: Folds,
    components: int,
    alpha: float | None,
    seed: int,
) -> tuple[FoldPredictions, list[dict[str, Any]]]:
    """Each fold's test predictions and fit record (PCA and ridge see its train rows only)."""
    rows, predicted, records = [], [], []
    for k, tested in enumerate(folds.tests):
        test, train = folds.test_mask(k), folds.train_mask(k)
        fitted, record = fit_predict(
            features[train], targets[train], features[test], components, alpha, seed
        )
        rows.append(np.flatnonzero(test))
        predicted.append(fitted)
        train_labels = folds.trains[k] if folds.trains is not None else None
        records.append(
            {"test_groups": tested}
            | ({"train_groups": train_labels} if train_labels is not None else {})
            | {"n_train": int(train.sum()), "n_test": int(test.sum())}
            | record
        )
    return FoldPredictions(rows, predicted), records


@dataclass(frozen=True)
class UnitMoments:
    """Count, means, and centred sums of squares and products of every (fold, cluster) unit
    of test rows, each taken about the unit's own means in float64: enough to compute any
    fold's Pearson r with clusters repeated or left out (a cluster bootstrap draw), combined
    by the parallel-variance rule, which stays exact where one-pass sums lose the digits."""

    n: np.ndarray  # (U,)
    mean_p: np.ndarray  # (U, G)
    mean_t: np.ndarray
    ss_p: np.ndarray
    ss_t: np.ndarray
    sp: np.ndarray
    fold: np.ndarray  # (U,)
    cluster: np.ndarray  # (U,) index into the tested clusters
    n_folds: int
    clusters: list[str]

    @classmethod
    def of(cls, folds: FoldPredictions, targets: np.ndarray, clusters: np.ndarray) -> UnitMoments:
        """The units of every fold's test rows, clustered by ``clusters`` (one per row)."""
        names = sorted({str(c) for rows in folds.rows for c in clusters[rows]})
        index = {name: i for i, name in enumerate(names)}
        parts: dict[str, list[Any]] = {k: [] for k in ("n", "mp", "mt", "sp2", "st2", "spt")}
        fold_of, cluster_of = [], []
        for k, (rows, predicted) in enumerate(zip(folds.rows, folds.predicted, strict=True)):
            labels = clusters[rows].astype(str)
            for name in sorted(set(labels.tolist())):
                member = labels == name
                p = np.asarray(predicted[member], dtype=np.float64)
                t = np.asarray(targets[rows[member]], dtype=np.float64)
                dp, dt = p - p.mean(axis=0), t - t.mean(axis=0)
                parts["n"].append(len(p))
                parts["mp"].append(p.mean(axis=0))
                parts["mt"].append(t.mean(axis=0))
                parts["sp2"].append((dp * dp).sum(axis=0))
                parts["st2"].append((dt * dt).sum(axis=0))
                parts["spt"].append((dp * dt).sum(axis=0))
                fold_of.append(k)
                cluster_of.append(index[name])
        arrays = {k: np.asarray(v, dtype=np.float64) for k, v in parts.items()}
        return cls(
            arrays["n"],
            arrays["mp"],
            arrays["mt"],
            arrays["sp2"],
            arrays["st2"],
            arrays["spt"],
            np.asarray(fold_of, dtype=np.int64),
            np.asarray(cluster_of, dtype=np.int64),
            len(folds.rows),
            names,
        )

    def pearson(self, cluster_weights: np.ndarray | None = None) -> np.ndarray:
        """(n_folds, n_genes) Pearson r of each fold's test rows, NaN where either side is
        constant; ``cluster_weights`` repeats (or, at 0, leaves out) clusters."""
        w = np.ones(len(self.n)) if cluster_weights is None else cluster_weights[self.cluster]
        wn = w * self.n
        total = np.bincount(self.fold, weights=wn, minlength=self.n_folds)[:, None]

        def per_fold(values: np.ndarray) -> np.ndarray:
            out = np.zeros((self.n_folds, values.shape[1]))
            np.add.at(out, self.fold, values)
            return out

        with np.errstate(invalid="ignore", divide="ignore"):
            mean_p = per_fold(wn[:, None] * self.mean_p) / total
            mean_t = per_fold(wn[:, None] * self.mean_t) / total
            dp, dt = self.mean_p - mean_p[self.fold], self.mean_t - mean_t[self.fold]
            ss_p = per_fold(w[:, None] * self.ss_p + wn[:, None] * dp * dp)
            ss_t = per_fold(w[:, None] * self.ss_t + wn[:, None] * dt * dt)
            sp = per_fold(w[:, None] * self.sp + wn[:, None] * dp * dt)
            constant = (ss_p <= total * (CONSTANT_REL_STD * mean_p) ** 2) | (
                ss_t <= total * (CONSTANT_REL_STD * mean_t) ** 2
            )
            r = sp / np.sqrt(ss_p * ss_t)
        return np.where(constant | (total == 0), np.nan, np.clip(r, -1.0, 1.0))

    def fold_weights(self, cluster_weights: np.ndarray) -> np.ndarray:
        """How much each fold counts in a resample: its clusters' draws per cluster it holds."""
        w = cluster_weights[self.cluster]
        drawn = np.bincount(self.fold, weights=w, minlength=self.n_folds)
        return drawn / np.bincount(self.fold, minlength=self.n_folds)

    def resampled_mean(self, draws: np.ndarray) -> np.ndarray:
        """(B, n_genes) fold-weighted mean r per gene of each cluster bootstrap draw."""
        per_gene = []
        for picked in draws:
            weights = np.bincount(picked, minlength=len(self.clusters)).astype(np.float64)
            per_gene.append(_weighted_mean(self.pearson(weights), self.fold_weights(weights)))
        return np.asarray(per_gene)


def pearson_report(
    folds: FoldPredictions,
    targets: np.ndarray,
    clusters: np.ndarray,
    genes: list[str],
    ci: dict[str, Any],
) -> dict[str, Any]:
    """Per-gene Pearson r (mean over folds) and its mean over genes, each with a
    patient-cluster bootstrap CI; HEST-Benchmark's split scores (mean over genes per fold)
    with their mean and s.d. beside them.

    A resample draws the tested clusters (patients) with replacement; each fold's r is
    computed on its drawn clusters (repeated as drawn) and weighs in the mean by how often
    its clusters were drawn (a fold whose clusters were all left out drops out), so with
    one cluster per fold the resample is an ordinary bootstrap of the fold scores. With one
    tested cluster there is nothing to resample: the CIs are null, and the report says why.
    """
    moments = UnitMoments.of(folds, targets, clusters)
    per_fold = moments.pearson()
    estimate = nanmean_rows(per_fold)
    n_clusters = len(moments.clusters)

    def batched(draws: np.ndarray) -> dict[str, np.ndarray]:
        per_gene = moments.resampled_mean(draws)
        return {"per_gene": per_gene, "mean": nanmean_rows(per_gene.T)}

    values = replicates(batched, n_clusters, ci["n_resamples"], ci["seed"])
    note = None
    if n_clusters < 2:
        note = f"one tested patient ({moments.clusters[0]}): a patient-cluster CI is undefined"

    def summary(samples: np.ndarray, value: float) -> dict[str, Any]:
        out = summarize(samples, value, ci["level"])
        if note is not None:
            out |= {"ci_lower": None, "ci_upper": None, "mean": None, "std": None, "note": note}
        return out

    split_scores = nanmean_rows(per_fold.T)  # HEST: a split's score is its mean over genes
    return {
        "pearson_mean": summary(values["mean"], float(np.nanmean(estimate))),
        "pearson_median": float(np.nanmedian(estimate)),
        "per_gene": {
            gene: summary(values["per_gene"][:, j], float(estimate[j]))
            for j, gene in enumerate(genes)
        },
        "per_fold": finite_json(per_fold.tolist()),
        "split_scores": finite_json(split_scores.tolist()),
        "split_mean": finite_json(float(np.nanmean(split_scores))),
        "split_std": finite_json(float(np.nanstd(split_scores))),  # HEST: np.std, ddof 0
        "undefined": int(np.isnan(per_fold).sum()),
        "n_groups_tested": n_clusters,
        "ci_unit": "group",
        "ci_note": note,
    }


def _weighted_mean(per_fold: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Mean over folds (axis 0) with fold weights, ignoring NaN; NaN where nothing is left."""
    use = np.isfinite(per_fold) & (weights[:, None] > 0)
    total = np.where(use, per_fold * weights[:, None], 0.0).sum(axis=0)
    weight = np.where(use, weights[:, None], 0.0).sum(axis=0)
    return np.where(weight > 0, total / np.maximum(weight, 1e-300), np.nan)


def nanmean_rows(matrix: np.ndarray) -> np.ndarray:
    """Mean over axis 0 ignoring NaN; NaN (no warning) where a column is all NaN."""
    return _weighted_mean(matrix, np.ones(len(matrix)))
