"""An Optuna search as a sweep: TPE suggests each point, the point trains in its own process,
and its val_select monitor, read from the run's epochs.csv as it is written, feeds Optuna's
median pruner, which stops unpromising points early.

The study lives in ``<sweep>/optuna.db`` (SQLite), so the same command continues a killed
search: trials that were running are marked failed and the search goes on until N trials
have completed or been pruned. Trials run one at a time (TPE learns from each result).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from rigor.config import load_config
from rigor.errors import ConfigError, UsageError
from rigor.io import atomic_write_json
from rigor.run_kinds import RUN_KINDS
from rigor.sweep.space import suggest
from rigor.tracking import monitor_to_key, read_epoch_rows

MAX_INVALID = 20  # suggestions that fail config validation before the search gives up


def _monitor(common: dict[str, Any]) -> tuple[str, str]:
    """The epochs.csv column and mode that rank and prune (the config's val_select monitor,
    or the run kind's fixed ranking)."""
    ranking = RUN_KINDS[common["task"]].ranking
    if ranking is not None:
        return ranking[0].removeprefix("best/"), ranking[1]
    config = load_config(common["config"], sets=common["sets"]).config
    return monitor_to_key(config.training.monitor), config.training.monitor_mode


def optuna_search(
    folder: Path, record: dict[str, Any], space: Any, common: dict[str, Any], options: Any
) -> None:
    """Run ``space.optuna`` trials into the sweep ``folder`` and summarise it."""
    import optuna
    from optuna.trial import TrialState

    from rigor.sweep.launch import _write_specs
    from rigor.sweep.summary import summarize

    if options.launcher != "local" or options.nproc_per_node != 1:
        raise UsageError("--optuna runs its trials one at a time with the local launcher")
    column, mode = _monitor(common)
    (folder / "logs").mkdir(exist_ok=True)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        study_name="sweep",
        storage=f"sqlite:///{(folder / 'optuna.db').resolve()}",
        sampler=optuna.samplers.TPESampler(seed=space.seed),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1),
        direction="maximize" if mode == "max" else "minimize",
        load_if_exists=True,
    )
    for stale in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study.tell(stale.number, state=TrialState.FAIL)  # a killed sweep's trial
    previous = folder / "sweep.json"
    if previous.is_file():
        record["points"] = json.loads(previous.read_text())["points"]
    done = (TrialState.COMPLETE, TrialState.PRUNED)
    invalid = 0
    while len(study.get_trials(deepcopy=False, states=done)) < space.optuna:
        trial = study.ask()
        point = suggest(trial, space.grid, space.ranges)
        try:
            config_hash = load_config(common["config"], sets=common["sets"], sweep=point).hash
        except ConfigError as err:
            study.tell(trial, state=TrialState.FAIL)
            invalid += 1
            print(f"trial {trial.number} {point}: invalid ({err})", file=sys.stderr)
            if invalid >= MAX_INVALID:
                raise ConfigError(f"--optuna: {invalid} suggested points were invalid") from None
            continue
        entry = {"index": len(record["points"]), "overrides": point, "config_hash": config_hash}
        record["points"].append(entry | {"trial": trial.number})
        atomic_write_json(previous, record)
        spec = _write_specs(folder, [entry], common, options)[0]
        state, value = _run_trial(folder, spec, trial, column)
        states = {"ok": TrialState.COMPLETE, "pruned": TrialState.PRUNED}
        study.tell(trial, value, state=states.get(state, TrialState.FAIL))
        shown = "" if value is None else f" {value:.4g}"
        print(f"trial {trial.number} {point}: {state}{shown}", file=sys.stderr)
    summarize(folder)


def _run_pattern(spec: dict[str, Any]) -> tuple[Path, str]:
    """Where the point's job writes its run, and the glob of its run folders' names."""
    config = load_config(spec["config"], sets=spec["sets"], sweep=spec["overrides"])
    runs = Path(config.config.run.output_root) / "runs"
    return runs, f"*-{config.config.run.name}-{config.hash[:8]}*"


def _run_dir(runs: Path, pattern: str, started: float) -> Path | None:
    """The run folder the point's job is writing (newest of its config, created after start)."""
    found = [p for p in runs.glob(pattern) if p.stat().st_mtime >= started - 1]
    return max(found, default=None, key=lambda p: p.name)


def _epoch_values(run_dir: Path | None, column: str) -> list[float]:
    """The column's values in the whole rows of epochs.csv written so far (a row still
    being appended is read at the next poll)."""
    if run_dir is None:
        return []
    rows = read_epoch_rows(run_dir / "logs" / "epochs.csv")
    return [float(row[column]) for row in rows if row.get(column)]


def _run_trial(
    folder: Path, spec: dict[str, Any], trial: Any, column: str
) -> tuple[str, float | None]:
    """Train the point in a subprocess, reporting each epoch's monitor; ("ok", best value),
    ("pruned", None) after stopping it, or ("failed", None)."""
    log = open(folder / "logs" / f"{spec['index']}.log", "wb")  # noqa: SIM115
    spec_path = folder / "points" / f"{spec['index']}.spec.json"
    runs, pattern = _run_pattern(spec)  # once, not on every poll
    started = time.time()
    proc = subprocess.Popen(
        [sys.executable, "-m", "rigor.sweep.job", str(spec_path)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    reported, run_dir = 0, None
    try:
        while proc.poll() is None:
            time.sleep(0.3)
            run_dir = run_dir or _run_dir(runs, pattern, started)
            values = _epoch_values(run_dir, column)
            for epoch in range(reported, len(values)):
                trial.report(values[epoch], epoch)
            reported = len(values)
            if reported and trial.should_prune():
                proc.terminate()
                proc.wait()
                status = {"index": spec["index"], "overrides": spec["overrides"]}
                status |= {"status": "pruned", "exit_code": None, "manifest": None}
                status["error"] = f"pruned by Optuna after {reported} epoch(s)"
                atomic_write_json(Path(spec["status"]), status)
                return "pruned", None
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()
    status = json.loads(Path(spec["status"]).read_text())
    if status["status"] != "ok":
        return "failed", None
    metrics = json.loads(Path(status["manifest"]).read_text())["metrics"]
    value = metrics.get(f"best/{column}")
    return ("ok", float(value)) if value is not None else ("failed", None)
