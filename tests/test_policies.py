"""The abstention policies through the scripts on a gated digits run: calibrate fits each
on val_calib, eval reports them side by side on val_test, export ships exactly one and
predict applies it; infeasible targets and bad predictions stop with exit 2 and no output."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import CONFIGS, load_script

from rigor.metrics.scores import sigmoid, softmax
from rigor.policies.gate import fit_platt

GATED = CONFIGS / "experiment" / "digits_gate.yaml"
KINDS = ("threshold", "gate", "cascade", "sets", "crc", "scrc")


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 3-epoch gated digits run, calibrated with a reachable risk target."""
    from rigor.cli import run_main
    from rigor.config import load_config
    from rigor.training.run import train

    out = tmp_path_factory.mktemp("policies")
    sets = [
        f"run.output_root={out}",
        "training.epochs=3",
        "scheduler.warmup_epochs=0.5",
        "logging.tensorboard=false",
        "evaluation.n_resamples=50",
    ]
    path = train(load_config(GATED, sets=sets, environ={}), env_policy="ignore")
    calibrate = load_script("calibrate").main
    assert run_main(calibrate, ["--from-manifest", str(path), "--target-risk", "0.2"]) == 0
    return path


def _arrays(run: Path, split: str) -> dict[str, np.ndarray]:
    with np.load(run / "predictions" / f"{split}.npz") as data:
        return {key: data[key] for key in data.files}


def test_platt_is_fitted_on_val_calib_against_stage_a_correctness(calibrated: Path) -> None:
    run = calibrated.parent
    calib = _arrays(run, "val_calib")
    assert "aux_digit" in calib  # Stage B's logits are kept with the predictions
    correct = calib["logits_digit"].argmax(axis=1) == calib["targets_digit"]
    platt = json.loads((run / "calibration" / "platt.json").read_text())
    a, b = fit_platt(calib["gate_digit"], correct)
    assert (platt["a"], platt["b"]) == (a, b)
    assert platt["fitted_on"]["n_correct"] == int(correct.sum())
    accepted = sigmoid(a * calib["gate_digit"].astype(np.float64) + b) >= platt["threshold"]
    assert platt["fitted_on"]["coverage"] == pytest.approx(accepted.mean())


def test_eval_reports_every_policy_side_by_side(calibrated: Path, run_script) -> None:  # type: ignore[no-untyped-def]
    run = calibrated.parent
    assert run_script("eval", "--from-manifest", str(calibrated)) == 0
    report = json.loads((run / "eval" / "metrics.json").read_text())["tasks"]["digit"]
    for key in ("accuracy", "mcc", "macro_f1"):
        assert report[key]["ci_lower"] <= report[key]["estimate"] <= report[key]["ci_upper"]
    found = report["guarantees"]
    assert set(found) == {"platt_gate", "cascade", "sets", "crc", "scrc"}
    test = _arrays(run, "val_test")
    labels = test["targets_digit"].astype(np.int64)
    probs = softmax(test["logits_digit"])
    conformal = json.loads((run / "calibration" / "conformal.json").read_text())
    q_hat = conformal["sets"]["lac"]["q_hat"]
    covered = 1 - probs[np.arange(len(labels)), labels] <= q_hat
    assert found["sets"]["lac"]["coverage"]["estimate"] == pytest.approx(covered.mean())
    size = (1 - probs <= q_hat).sum(axis=1)
    assert found["sets"]["lac"]["set_size"]["estimate"] == pytest.approx(size.mean())
    assert set(found["sets"]) == {"lac", "aps", "aps_randomized", "raps", "raps_randomized"}
    table = (run / "eval" / "digit_policies.md").read_text()
    for name in ("threshold", "Platt gate", "cascade", "sets: raps", "CRC", "SCRC-I"):
        assert f"| {name}" in table
    lac, sizes = found["sets"]["lac"], (1 - probs <= q_hat).sum(axis=1)
    assert lac["empty"]["estimate"] == pytest.approx((sizes == 0).mean())
    missed = (sizes > 0) & ~covered
    assert lac["miss_answered"]["estimate"] == pytest.approx(missed.sum() / (sizes > 0).sum())
    assert f"| sets: lac, alpha 0.1 | {1 - lac['empty']['estimate']:.3f} [" in table
    platt = json.loads((run / "calibration" / "platt.json").read_text())
    exits = sigmoid(platt["a"] * test["gate_digit"].astype(np.float64) + platt["b"])
    exits = exits >= platt["threshold"]
    final = np.where(exits, probs.argmax(axis=1), test["aux_digit"].argmax(axis=1))
    cascade = found["cascade"]
    assert cascade["accuracy"]["estimate"] == pytest.approx((final == labels).mean())
    assert cascade["exit_rate"]["estimate"] == pytest.approx(exits.mean())
    for name in ("sets_vs_alpha", "fnr_vs_coverage"):
        assert (run / "eval" / f"digit_{name}.png").stat().st_size > 1000


def test_each_policy_exports_alone_and_predict_applies_it(
    calibrated: Path,
    run_script,
    capsys: pytest.CaptureFixture[str],  # type: ignore[no-untyped-def]
) -> None:
    run = calibrated.parent
    test = _arrays(run, "val_test")
    by_id = {i: row for row, i in enumerate(test["ids"])}
    probs = softmax(test["logits_digit"])
    for kind in KINDS:
        assert run_script("export", "--from-manifest", str(calibrated), "--policy", kind) == 0
        record = json.loads((run / "bundle" / "bundle.json").read_text())
        assert [p["active"] for p in record["policies"]] == [True]
        policy = json.loads((run / "bundle" / "policy.json").read_text())
        assert policy.get("kind", "threshold") == kind
        capsys.readouterr()
        assert run_script("predict", "--bundle", str(run / "bundle"), "--split", "val_test") == 0
        summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert summary["policy"] == kind and summary["guarantee"]
        rows = list(csv.DictReader((run / "predict" / "val_test.csv").open()))
        for row in rows[:40]:
            p = probs[by_id[row["id"]]]
            if kind == "sets":
                fitted = policy["q_hat"]
                assert row["set"] == "|".join(str(k) for k in np.flatnonzero(_aps(p) <= fitted))
            if kind == "crc":
                assert row["set"] == "|".join(
                    str(k) for k in np.flatnonzero(1 - p <= policy["lambda"])
                )
            if kind == "scrc":
                accepted = p.max() >= policy["selection_threshold"]
                assert (row["abstained"] == "no") == accepted
                assert row["set"] == ("" if not accepted else row["set"])
            if kind == "cascade":
                assert row["abstained"] == "no" and row["stage"] in ("A", "B")
                head = "logits_digit" if row["stage"] == "A" else "aux_digit"
                assert row["class"] == str(test[head][by_id[row["id"]]].argmax())


def _aps(p: np.ndarray) -> np.ndarray:
    order = np.argsort(-p, kind="stable")
    scores = np.empty_like(p)
    scores[order] = np.cumsum(p[order])
    return scores


@pytest.mark.parametrize(
    ("policy", "setting", "message"),
    [
        ("sets", "calibration.conformal.alpha=0.001", "smallest achievable alpha is 1/(n + 1)"),
        ("crc", "calibration.risk_control.alpha=0.002", "best achievable corrected risk is"),
        ("scrc", "calibration.risk_control.scrc_alpha=0.001", "best achievable corrected risk"),
    ],
)
def test_an_infeasible_target_is_exit_2_with_the_best_value_and_no_output(
    calibrated: Path,
    run_script,
    capsys,
    policy: str,
    setting: str,
    message: str,  # type: ignore[no-untyped-def]
) -> None:
    run = calibrated.parent
    before = {p.name: p.stat().st_mtime_ns for p in (run / "calibration").iterdir()}
    manifest = calibrated.read_text()
    flags = ["--target-risk", "0.2", "--policy", policy, "--set", setting]
    code = run_script("calibrate", "--from-manifest", str(calibrated), *flags)
    assert code == 2
    assert message in capsys.readouterr().err
    assert {p.name: p.stat().st_mtime_ns for p in (run / "calibration").iterdir()} == before
    assert calibrated.read_text() == manifest


def _nan_row(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    arrays["logits_digit"][5, 2] = np.nan
    return arrays


def _no_rows(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {name: values[:0] for name, values in arrays.items()}


@pytest.mark.parametrize(
    "damage, message",
    [
        (_nan_row, "logits_digit row 5 is NaN or infinite"),
        (_no_rows, "val_calib has no samples, so nothing can be calibrated"),
    ],
    ids=["nan", "empty"],
)
def test_bad_val_calib_predictions_are_exit_2_and_nothing_is_calibrated(
    calibrated: Path,
    tmp_path: Path,
    run_script,
    capsys,
    damage,
    message,  # type: ignore[no-untyped-def]
) -> None:
    from rigor.io import record_hash, sha256_file
    from rigor.runs.predict import save_npz

    run = tmp_path / calibrated.parent.name
    shutil.copytree(calibrated.parent, run, ignore=shutil.ignore_patterns("calibration", "eval"))
    arrays = damage(_arrays(run, "val_calib"))
    save_npz(run / "predictions" / "val_calib.npz", arrays)
    manifest = json.loads((run / "manifest.json").read_text())
    manifest["stages"] = manifest["stages"][:1]
    manifest["sha256"] = {
        k: v for k, v in manifest["sha256"].items() if not k.startswith(("calibration", "eval"))
    }
    manifest["sha256"]["predictions/val_calib.npz"] = sha256_file(
        run / "predictions" / "val_calib.npz"
    )
    if "record_sha256" in manifest:
        manifest["record_sha256"] = record_hash(manifest)
    (run / "manifest.json").write_text(json.dumps(manifest))
    assert run_script("calibrate", "--from-manifest", str(run / "manifest.json")) == 2
    err = capsys.readouterr().err
    assert message in err and "val_calib.npz" in err and "Traceback" not in err
    assert not (run / "calibration").exists() or not any((run / "calibration").iterdir())


@pytest.mark.slow
def test_a_second_run_can_be_stage_b_of_the_cascade(
    calibrated: Path,
    tmp_path: Path,
    run_script,
    capsys,  # type: ignore[no-untyped-def]
) -> None:
    from rigor.config import load_config
    from rigor.training.run import train

    short = [
        f"run.output_root={tmp_path}",
        "training.epochs=3",
        "scheduler.warmup_epochs=0.5",
        "logging.tensorboard=false",
        "evaluation.n_resamples=50",
    ]
    baseline = CONFIGS / "experiment" / "digits_baseline.yaml"
    second = train(load_config(baseline, sets=short, environ={}), env_policy="ignore")
    assert run_script("calibrate", "--from-manifest", str(second), "--target-risk", "0.3") == 0
    assert run_script("export", "--from-manifest", str(second)) == 0
    other = [*short, "data.splits.train=0.55", "data.splits.val_test=0.2"]
    elsewhere = train(load_config(baseline, sets=other, environ={}), env_policy="ignore")
    run = tmp_path / "stage_a"
    shutil.copytree(calibrated.parent, run)
    m = str(run / "manifest.json")
    flags = ["--target-risk", "0.2", "--force", "--policy", "cascade"]
    code = run_script(
        "calibrate", "--from-manifest", m, *flags, "--set", f"calibration.stage_b={elsewhere}"
    )
    assert code == 3 and "Stage B must share the splits" in capsys.readouterr().err
    code = run_script(
        "calibrate", "--from-manifest", m, *flags, "--set", f"calibration.stage_b={second}"
    )
    assert code == 0
    platt = json.loads((run / "calibration" / "platt.json").read_text())
    second_id = json.loads(second.read_text())["run_id"]
    assert platt["stage_b"]["source"] == "run" and platt["stage_b"]["run_id"] == second_id
    assert run_script("eval", "--from-manifest", m, "--force") == 0
    cascade = json.loads((run / "eval" / "metrics.json").read_text())["tasks"]["digit"][
        "guarantees"
    ]["cascade"]
    mine, theirs = _arrays(run, "val_test"), _arrays(second.parent, "val_test")
    exits = (
        sigmoid(platt["a"] * mine["gate_digit"].astype(np.float64) + platt["b"])
        >= platt["threshold"]
    )
    final = np.where(
        exits, mine["logits_digit"].argmax(axis=1), theirs["logits_digit"].argmax(axis=1)
    )
    assert cascade["accuracy"]["estimate"] == pytest.approx((final == mine["targets_digit"]).mean())
    assert run_script("export", "--from-manifest", m, "--policy", "cascade") == 0
    capsys.readouterr()
    predict = ["--bundle", str(run / "bundle"), "--split", "val_test"]
    assert run_script("predict", *predict) == 2
    assert f"Stage B is run {second_id}" in capsys.readouterr().err
    assert run_script("predict", *predict, "--stage-b", str(run / "bundle")) == 2
    assert run_script("predict", *predict, "--stage-b", str(second.parent / "bundle")) == 0
    rows = list(csv.DictReader((run / "predict" / "val_test.csv").open()))
    by_id = {i: row for row, i in enumerate(mine["ids"])}
    for row in rows:
        head = mine["logits_digit"] if row["stage"] == "A" else theirs["logits_digit"]
        assert row["class"] == str(head[by_id[row["id"]]].argmax())
    assert {row["stage"] for row in rows} == {"A", "B"}


def test_calibrate_and_eval_never_import_torch(calibrated: Path) -> None:
    """They work on stored predictions: importing torch would cost seconds for nothing. The
    metrics of a few hundred samples run in numpy (no numba), and the figures are drawn by
    plot workers (matplotlib is not imported by the stage's own process)."""
    common = ["--from-manifest", str(calibrated), "--force", "--env-policy", "ignore"]
    for stage, extra in (("calibrate", ["--target-risk", "0.2"]), ("eval", [])):
        heavy = _heavy_imports([f"{stage}.py", *common, *extra])
        assert not {"torch", "numba", "matplotlib"} & set(heavy), (stage, heavy)


_HEAVY = (
    *("torch", "torchvision", "tensorboard", "numba", "matplotlib", "pandas", "sklearn"),
    *("scipy", "peft", "transformers", "captum", "h5py", "optuna"),
)


def _heavy_imports(argv: list[str]) -> list[str]:
    """The heavy packages a script (``argv[0]`` under scripts/) has imported when it ends,
    run in a fresh interpreter; a nonzero exit fails the test."""
    import subprocess
    import sys

    from conftest import ROOT

    argv = [str(ROOT / "scripts" / argv[0]), *argv[1:]]
    probe = (
        "import json, runpy, sys\n"
        f"sys.argv = {argv!r}\n"
        "try:\n"
        "    runpy.run_path(sys.argv[0], run_name='__main__')\n"
        "except SystemExit as exit:\n"
        "    assert not exit.code, exit.code\n"
        f"print('HEAVY', json.dumps(sorted(n for n in {_HEAVY!r} if n in sys.modules)))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=300, cwd=ROOT
    )
    assert result.returncode == 0, (argv[0], result.stderr[-2000:])
    line = [row for row in result.stdout.splitlines() if row.startswith("HEAVY ")][-1]
    return list(json.loads(line[len("HEAVY ") :]))


@pytest.mark.slow
def test_train_export_and_predict_import_only_what_they_use(
    calibrated: Path, tmp_path: Path
) -> None:
    """The start-up diet: a digits CNN run with TensorBoard off, export and predict import
    torch alone of the heavy modules: nothing of the other stages or of other datasets."""
    from conftest import SMOKE, short_run

    sets = [arg for item in short_run(tmp_path) for arg in ("--set", item)]
    runs = {
        "train": ["train.py", "--config", str(SMOKE), *sets, "--env-policy", "ignore"],
        "export": ["export.py", "--from-manifest", str(calibrated), "--env-policy", "ignore"],
        "predict": [
            "predict.py",
            *("--bundle", str(calibrated.parent / "bundle"), "--split", "val_test"),
            *("--output", str(tmp_path / "predict.csv")),
        ],
    }
    for stage, argv in runs.items():
        assert _heavy_imports(argv) == ["torch"], stage


def test_scripts_defer_collection_until_the_stage_settles() -> None:
    """run_main(defer_gc=True) as a script: the collector is off during start-up, back on
    after settle(), and the survivors are frozen at the end; a caller passing argv (tests,
    notebooks) keeps its collector untouched."""
    import gc
    import subprocess
    import sys

    from rigor.cli import run_main, settle

    def main(argv: object) -> int:
        assert gc.isenabled()  # argv given: nothing deferred
        settle()
        return 0

    frozen = gc.get_freeze_count()
    assert run_main(main, [], defer_gc=True) == 0
    assert gc.isenabled() and gc.get_freeze_count() == frozen
    code = (
        "import gc, sys\n"
        "from rigor.cli import run_main, settle\n"
        "def main(argv):\n"
        "    assert not gc.isenabled()\n"
        "    settle()\n"
        "    assert gc.isenabled() and gc.get_freeze_count() > 0\n"
        "    return 0\n"
        "sys.argv = ['probe']\n"
        "assert run_main(main, defer_gc=True) == 0\n"
        "print('OK', gc.isenabled())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "OK True"


def _docs_block(heading: str, index: int) -> str:
    """The ``index``-th code block of docs/extending.md's section ``heading``."""
    from conftest import ROOT

    text = (ROOT / "docs" / "extending.md").read_text()
    section = text.split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]
    return section.split("```")[1 + 2 * index].split("\n", 1)[1]


@pytest.mark.slow
def test_the_docs_policy_is_one_module_and_one_registry_line(
    calibrated: Path, tmp_path: Path
) -> None:
    """docs/extending.md's margin policy, added to a copy of the package exactly as the docs
    say (its module, and its name in MODULES), goes through the real scripts: calibrate fits
    and checks its record, export builds its policy.json against the schema, predict applies
    it, eval reports it beside the others and puts it in the table; the CLI offers it."""
    import os
    import subprocess
    import sys

    from conftest import ROOT

    package = tmp_path / "src" / "rigor"
    shutil.copytree(ROOT / "src" / "rigor", package, ignore=shutil.ignore_patterns("__pycache__"))
    for folder in ("schema", "locks", "configs"):
        shutil.copytree(ROOT / folder, tmp_path / folder)
    (package / "policies" / "margin.py").write_text(_docs_block("A calibration policy", 0))
    registry = package / "policies" / "registry.py"
    before = registry.read_text()
    assert _docs_block("A calibration policy", 1).rstrip().endswith('"margin",\n)')
    registry.write_text(before.replace('    "none",\n)', '    "none",\n    "margin",\n)'))
    assert len(registry.read_text().splitlines()) == len(before.splitlines()) + 1
    run = tmp_path / "run"
    shutil.copytree(calibrated.parent, run)
    manifest = run / "manifest.json"
    env = os.environ | {"PYTHONPATH": str(tmp_path / "src")}

    def script(name: str, *args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, str(ROOT / "scripts" / f"{name}.py"), *args]
        done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        assert done.returncode == 0, done.stderr
        return done

    assert "margin" in script("export", "--help").stdout
    flags = ["--from-manifest", str(manifest), "--env-policy", "ignore"]
    script("calibrate", *flags, "--target-risk", "0.2", "--policy", "margin")
    fitted = json.loads((run / "calibration" / "margin.json").read_text())
    assert 0 < fitted["threshold"] < 1 and fitted["fitted_on"]["n"] > 0
    script("eval", *flags)
    report = json.loads((run / "eval" / "metrics.json").read_text())["tasks"]["digit"]
    assert set(report["guarantees"]) == {"platt_gate", "cascade", "sets", "crc", "scrc", "margin"}
    assert "| margin |" in (run / "eval" / "digit_policies.md").read_text()
    script("export", *flags, "--policy", "margin")
    policy = json.loads((run / "bundle" / "policy.json").read_text())
    assert policy["kind"] == "margin" and policy["threshold"] == fitted["threshold"]
    script("predict", "--bundle", str(run / "bundle"), "--split", "val_test")
    rows = list(csv.DictReader((run / "predict" / "val_test.csv").open()))
    test = _arrays(run, "val_test")
    top = np.sort(softmax(test["logits_digit"]), axis=1)
    accepted = top[:, -1] - top[:, -2] >= fitted["threshold"]
    by_id = {i: row for row, i in enumerate(test["ids"])}
    assert [r["abstained"] == "no" for r in rows] == [accepted[by_id[r["id"]]] for r in rows]
    assert 0 < accepted.mean() < 1
