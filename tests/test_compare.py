"""scripts/compare.py: paired bootstrap differences, seeds in the CIs, McNemar, split checks."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import SMOKE, short_run

from rigor.compare.paired import compare, mcnemar
from rigor.compare.runs import Run, Variant, check_same_test_set
from rigor.errors import ManifestError

N = 200
TASKS = {"digit": {"kind": "classification", "num_classes": 3}}


def fake_run(run_id: str, seed: int, correct: np.ndarray, labels: np.ndarray) -> Run:
    """A run whose logits put 0.9 of the mass on the label where ``correct`` and on the next
    class otherwise (predictions a real run could have written)."""
    predicted = np.where(correct, labels, (labels + 1) % 3)
    logits = np.full((len(labels), 3), -2.0)
    logits[np.arange(len(labels)), predicted] = 2.0
    return Run(
        manifest_path=Path(f"{run_id}/manifest.json"),
        run_id=run_id,
        seed=seed,
        config={},
        tasks=TASKS,
        ids=np.array([f"s{i:03d}" for i in range(len(labels))]),
        split_hash="0" * 64,
        arrays={"logits_digit": logits, "targets_digit": labels},
        cost={"params_trainable": 10.0, "peak_memory_mb": 1.0, "epoch_time_s": 0.5},
    )


def test_mcnemar_exact_p_by_hand() -> None:
    a = np.array([True] * 10 + [False] * 2 + [True] * 5)
    b = np.array([False] * 10 + [True] * 2 + [True] * 5)
    out = mcnemar(a, b)
    assert (out["a_only"], out["b_only"]) == (10, 2)
    assert out["p"] == pytest.approx(2 * (1 + 12 + 66) / 2**12)  # 2 P(X <= 2), X ~ Bin(12, 1/2)
    assert mcnemar(a, a)["p"] == 1.0


def test_paired_differences_are_exact_on_equal_runs_and_count_the_changed_samples() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, N)
    base = rng.random(N) < 0.7
    better = base.copy()
    better[np.flatnonzero(~base)[:10]] = True  # ten more samples right, nothing else changes
    a = Variant("A", [fake_run("a0", 0, base, labels)])
    same = Variant("A'", [fake_run("a1", 0, base, labels)])
    b = Variant("B", [fake_run("b0", 0, better, labels)])
    result = compare([a, same, b], n_resamples=400, seed=1)
    equal = result["pairs"][0]["differences"]["digit/accuracy"]
    assert (equal["estimate"], equal["ci_lower"], equal["ci_upper"]) == (0.0, 0.0, 0.0)
    gain = result["pairs"][1]["differences"]["digit/accuracy"]
    assert gain["estimate"] == pytest.approx(10 / N)
    # paired: every resample scores both variants on the same samples, so the difference is
    # never negative (B is right wherever A is)
    assert gain["ci_lower"] >= 0 and gain["ci_upper"] <= 10 / N * 2.5
    test = result["pairs"][1]["mcnemar"]["digit"]
    assert test == [{"seed": 0, "a_only": 0, "b_only": 10, "p": pytest.approx(2 / 2**10)}]
    assert result["pairs"][1]["differences"]["digit/augrc"]["estimate"] < 0


def test_seed_resampling_widens_the_interval() -> None:
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 3, N)
    base = rng.random(N) < 0.6
    a = Variant("A", [fake_run("a", 0, base, labels)])
    seeds = []
    for seed, extra in enumerate((0, 20, 40)):  # three seeds that disagree a lot
        correct = base.copy()
        correct[np.flatnonzero(~base)[:extra]] = True
        seeds.append(fake_run(f"b{seed}", seed, correct, labels))
    one = compare([a, Variant("B", seeds[1:2])], n_resamples=600, seed=3)
    three = compare([a, Variant("B", seeds)], n_resamples=600, seed=3)
    width = [
        r["pairs"][0]["differences"]["digit/accuracy"]["ci_upper"]
        - r["pairs"][0]["differences"]["digit/accuracy"]["ci_lower"]
        for r in (one, three)
    ]
    assert three["pairs"][0]["differences"]["digit/accuracy"]["estimate"] == pytest.approx(
        20 / N
    )  # the mean over the seeds
    assert width[1] > 2 * width[0]


def test_runs_with_another_test_set_are_refused_by_name() -> None:
    labels = np.zeros(N, dtype=np.int64)
    a = fake_run("a", 0, np.ones(N, bool), labels)
    b = fake_run("b", 1, np.ones(N, bool), labels)
    b.ids = b.ids.copy()
    b.ids[7] = "other"
    with pytest.raises(ManifestError, match="val_test ids differ \\(first at row 7\\)"):
        check_same_test_set([a, b])
    b = fake_run("b", 1, np.ones(N, bool), labels)
    b.split_hash = "1" * 64
    with pytest.raises(ManifestError, match="val_test differs"):
        check_same_test_set([a, b])


@pytest.mark.slow
def test_compare_script_on_two_variants_with_two_seeds_each(
    tmp_path: Path, run_script, capsys: pytest.CaptureFixture[str]  # type: ignore[no-untyped-def]
) -> None:
    from rigor.config import load_config
    from rigor.training.run import train

    manifests = []
    for dropout in (0.0, 0.3):
        for seed in (0, 1):
            sets = [*short_run(tmp_path), "data.split_seed=0", f"run.seed={seed}"]
            sets.append(f"model.dropout={dropout}")
            manifests.append(train(load_config(SMOKE, sets=sets, environ={}), env_policy="ignore"))
    out = tmp_path / "cmp"
    assert run_script("compare", *map(str, manifests), "--output", str(out)) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["report.md", "report.csv", "compare.json", "forest.png"]
    )
    result = json.loads((out / "compare.json").read_text())
    assert [v["label"] for v in result["variants"]] == ["model.dropout=0.0", "model.dropout=0.3"]
    # a variant's estimate is the mean over its seeds of the metric on all of val_test
    accuracies = []
    for path in manifests:
        with np.load(path.parent / "predictions" / "val_test.npz") as stored:
            hits = stored["logits_digit"].argmax(axis=1) == stored["targets_digit"]
            accuracies.append(float(hits.mean()))
    first = result["variants"][0]["estimates"]["digit/accuracy"]
    assert first == pytest.approx(np.mean(accuracies[:2]))
    with open(out / "report.csv") as handle:
        rows = list(csv.DictReader(handle))
    row = next(r for r in rows if r["metric"] == "digit/accuracy")
    assert float(row["difference"]) == pytest.approx(np.mean(accuracies[2:]) - first)
    assert len(row["mcnemar_p"].split(";")) == 2  # one test per shared seed
    assert "| model.dropout=0.0 | 0, 1 |" in (out / "report.md").read_text()

    other = train(
        load_config(SMOKE, sets=[*short_run(tmp_path), "run.seed=5"], environ={}),
        env_policy="ignore",
    )
    capsys.readouterr()
    assert run_script("compare", str(manifests[0]), str(other), "--output", str(out)) == 3
    assert "val_test differs" in capsys.readouterr().err
    assert run_script("compare", str(manifests[0]), str(manifests[1]), "--output", str(out)) == 2
    assert "at least two variants" in capsys.readouterr().err


def test_an_output_that_is_a_file_is_exit_2_before_any_work(
    tmp_path: Path, run_script, capsys  # type: ignore[no-untyped-def]
) -> None:
    taken = tmp_path / "report.md"
    taken.write_text("a report someone kept")
    missing = tmp_path / "none" / "manifest.json"
    assert run_script("compare", str(missing), str(missing), "--output", str(taken)) == 2
    assert "is a file; give a folder" in capsys.readouterr().err
    assert taken.read_text() == "a report someone kept"
