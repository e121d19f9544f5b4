"""An Optuna search as a sweep: TPE suggests each point, the point trains in its own process,
and its val_select monitor, read from the run's epochs.csv as it is written, feeds Optuna's
median pruner, which stops unpromising points early.

The study lives in ``<sweep>/optuna.db`` (SQLite), so the same command continues a killed
search: trials that were running are marked failed and the search goes on until N trials
have completed or been pruned. A suggested point whose config (by hash) already ran is
never trained again: the trial takes the earlier point's outcome (its value, pruned, or
failed for one that failed or was killed). Trials run one at a time (TPE learns from each
result), each in its own process group, stopped with the search on SIGINT or SIGTERM.
"""

from __future__ import annotations

import json
import signal
import sys
import time
from pathlib import Path
from typing import Any

from rigor.config import load_config
from rigor.errors import ConfigError, UsageError
from rigor.io import atomic_write_json
from rigor.run_kinds import RUN_KINDS
from rigor.sweep.processes import start_point, stop_groups, stopping_points, write_specs
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
    from optuna.trial import TrialState

    from rigor.sweep.summary import summarize

    if options.launcher != "local" or options.nproc_per_node != 1:
        raise UsageError("--optuna runs its trials one at a time with the local launcher")
    column, mode = _monitor(common)
    (folder / "logs").mkdir(exist_ok=True)
    study = _study(folder, space.seed, mode)
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
        earlier = _earlier(folder, record["points"], config_hash, column)
        if earlier is not None:  # the same config already ran: never train it twice
            state, value, index = earlier
            study.tell(trial, value, state=state)
            print(
                f"trial {trial.number} {point}: the same config as point {index}; its "
                f"outcome ({state.name.lower()}) is reused, nothing is trained again",
                file=sys.stderr,
            )
            invalid += state == TrialState.FAIL
            if invalid >= MAX_INVALID:
                raise ConfigError(f"--optuna: {invalid} suggested points were invalid or repeats")
            continue
        entry = {"index": len(record["points"]), "overrides": point, "config_hash": config_hash}
        record["points"].append(entry | {"trial": trial.number})
        atomic_write_json(previous, record)
        spec = write_specs(folder, [entry], common, options)[0]
        state, value = _run_trial(folder, spec, trial, column)
        states = {"ok": TrialState.COMPLETE, "pruned": TrialState.PRUNED}
        study.tell(trial, value, state=states.get(state, TrialState.FAIL))
        shown = "" if value is None else f" {value:.4g}"
        print(f"trial {trial.number} {point}: {state}{shown}", file=sys.stderr)
    summarize(folder)


def _study(folder: Path, seed: int, mode: str) -> Any:
    """The search's study in ``<folder>/optuna.db``, created or continued; trials a killed
    sweep left running are marked failed."""
    import optuna
    from optuna.trial import TrialState

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        study_name="sweep",
        storage=f"sqlite:///{(folder / 'optuna.db').resolve()}",
        sampler=optuna.samplers.TPESampler(seed=seed),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1),
        direction="maximize" if mode == "max" else "minimize",
        load_if_exists=True,
    )
    for stale in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study.tell(stale.number, state=TrialState.FAIL)  # a killed sweep's trial
    return study


def _earlier(
    folder: Path, points: list[dict[str, Any]], config_hash: str, column: str
) -> tuple[Any, float | None, int] | None:
    """(state, value, point index) of the earlier point with this config hash, or None: a
    finished point gives its value, a pruned one is pruned again, and one that failed or
    was killed counts as failed (a continued search never re-runs a point it ran)."""
    from optuna.trial import TrialState

    from rigor.sweep.processes import finished

    for point in points:
        if point["config_hash"] != config_hash:
            continue
        path = folder / "points" / f"{point['index']}.json"
        status = json.loads(path.read_text()) if path.is_file() else {"status": "killed"}
        if finished(status, config_hash):
            metrics = json.loads(Path(status["manifest"]).read_text())["metrics"]
            value = metrics.get(f"best/{column}")
            if value is not None:
                return TrialState.COMPLETE, float(value), point["index"]
        if status["status"] == "pruned":
            return TrialState.PRUNED, None, point["index"]
        return TrialState.FAIL, None, point["index"]
    return None


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
    proc = start_point(["-m", "rigor.sweep.job", str(spec_path)], log)
    reported, run_dir = 0, None
    try:
        with stopping_points(lambda: [proc] if proc.poll() is None else []):
            while proc.poll() is None:
                time.sleep(0.3)
                run_dir = run_dir or _run_dir(runs, pattern, started)
                values = _epoch_values(run_dir, column)
                for epoch in range(reported, len(values)):
                    trial.report(values[epoch], epoch)
                reported = len(values)
                if reported and trial.should_prune():
                    stop_groups([proc], signal.SIGTERM)
                    status = {"index": spec["index"], "overrides": spec["overrides"]}
                    status |= {"status": "pruned", "exit_code": None, "manifest": None}
                    status["error"] = f"pruned by Optuna after {reported} epoch(s)"
                    atomic_write_json(Path(spec["status"]), status)
                    return "pruned", None
    finally:
        if proc.poll() is None:
            stop_groups([proc], signal.SIGKILL)
        log.close()
    if not Path(spec["status"]).is_file():
        return "failed", None
    status = json.loads(Path(spec["status"]).read_text())
    if status["status"] != "ok":
        return "failed", None
    metrics = json.loads(Path(status["manifest"]).read_text())["metrics"]
    value = metrics.get(f"best/{column}")
    return ("ok", float(value)) if value is not None else ("failed", None)
