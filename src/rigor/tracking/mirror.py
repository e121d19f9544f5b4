"""An MLflow mirror of a run (``logging.mlflow``): the training's resolved config as params,
its per-epoch metrics, tags that lead back to the run folder, and each later stage's metrics
and figures, all on one MLflow run found by its ``rigor.run_id`` tag.

The manifest stays the source of truth. MLflow being unreachable (a server down, a store
that cannot be written) is a warning on stderr and a note in the stage's summary, never a
failed run: the first failure turns the mirror off for the rest of the stage.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import posixpath
import re
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from rigor.config import ResolvedConfig
from rigor.config.models import Config, MlflowConfig

# MLflow's client retries an HTTP call 7 times with a doubling backoff (minutes against a
# server that is down) and waits 120 s for an answer: a training run would stall. These
# bounds hold unless the environment sets its own.
HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
}
RUN_TAG = "rigor.run_id"


def metric_name(key: str) -> str:
    """``key`` as MLflow accepts a metric name: characters outside letters, digits and
    ``_ - . / space`` become ``_``, and the path is normalised (no ``//``, no leading ``/``)."""
    clean = posixpath.normpath(re.sub(r"[^/\w.\- ]", "_", key)).lstrip("/")
    return clean if clean not in ("", ".") and not clean.startswith("..") else "_" + clean


def finite_metrics(values: dict[str, Any]) -> dict[str, float]:
    """The finite numbers among ``values`` (no bools), under MLflow-safe names."""
    return {
        metric_name(key): float(value)
        for key, value in values.items()
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    }


def config_params(resolved: dict[str, Any]) -> dict[str, str]:
    """The flattened resolved config (``training.lr``) as MLflow params: strings, lists and
    mappings as JSON, each cut to MLflow's length limit."""
    from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH

    from rigor.manifest.report import flatten

    params = {}
    for key, value in flatten(resolved).items():
        text = value if isinstance(value, str) else json.dumps(value)
        if len(text) > MAX_PARAM_VAL_LENGTH:
            text = text[: MAX_PARAM_VAL_LENGTH - 1] + "…"
        params[key] = text
    return params


def _sqlite_folder(uri: str) -> Path | None:
    """The folder of a ``sqlite:///path`` store (created: SQLite does not create it)."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri.removeprefix("sqlite:///")
    if path in ("", ":memory:"):
        return None
    return Path(path).resolve().parent


def _chunks(items: list[Any], size: int) -> Iterable[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class Mirror:
    """One rigor run's MLflow run. Built by :meth:`open` (training) or :meth:`attach` (a
    later stage); every method does nothing once the mirror is off (not configured, or
    turned off by a failure, whose text :attr:`error` keeps)."""

    def __init__(self, settings: MlflowConfig | None, run_name: str) -> None:
        self.uri = settings.tracking_uri if settings is not None else None
        self.experiment = (settings.experiment if settings is not None else None) or run_name
        self.client: Any = None
        self.run_id: str | None = None
        self.experiment_id: str | None = None
        self.error: str | None = None

    @classmethod
    def off(cls) -> Mirror:
        """A mirror that mirrors nothing (MLflow not configured, or not rank 0)."""
        return cls(None, "")

    @classmethod
    def open(
        cls,
        settings: MlflowConfig,
        run_name: str,
        run_id: str,
        tags: dict[str, str],
        resolved: dict[str, Any],
        running: bool = True,
    ) -> Mirror:
        """The MLflow run tagged ``rigor.run_id = run_id`` (a resumed run continues its
        own, marked running again when ``running``), created with ``tags`` and the config's
        params when there is none yet."""
        mirror = cls(settings, run_name)
        if mirror.uri is not None:
            mirror._guard("open the run", lambda: mirror._open(run_id, tags, resolved, running))
        return mirror

    @classmethod
    def attach(cls, config: Config, manifest: dict[str, Any], manifest_path: Path) -> Mirror:
        """A later stage's mirror: the MLflow run of the manifest's training run (made
        anew, with its tags and params, when the training left none: say MLflow was down)."""
        run_id = manifest["run_id"]
        commit = manifest["git"]["commit"]
        tags = run_tags(run_id, manifest["config_hash"], commit, manifest_path)
        resolved = config.model_dump(mode="json")
        settings = config.logging.mlflow
        return cls.open(settings, config.run.name, run_id, tags, resolved, running=False)

    def _open(
        self, run_id: str, tags: dict[str, str], resolved: dict[str, Any], running: bool
    ) -> None:
        for key, value in HTTP_DEFAULTS.items():
            os.environ.setdefault(key, value)
        os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"  # ours is on stderr
        from mlflow import MlflowClient
        from mlflow.entities import Param, RunStatus, RunTag

        for name in ("mlflow", "alembic"):  # their INFO lines (migrations) are not ours
            logging.getLogger(name).setLevel(logging.WARNING)

        folder = _sqlite_folder(str(self.uri))
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)
        client = MlflowClient(tracking_uri=self.uri)
        found = client.get_experiment_by_name(self.experiment)
        if found is not None:
            experiment_id = found.experiment_id
        else:  # a SQLite store keeps its artifacts beside the database, not in the cwd
            location = (folder / "mlartifacts").as_uri() if folder is not None else None
            experiment_id = client.create_experiment(self.experiment, artifact_location=location)
        query = f"tags.`{RUN_TAG}` = '{run_id}'"
        runs = client.search_runs([experiment_id], filter_string=query, max_results=1)
        if runs:
            self.run_id = runs[0].info.run_id
            if running:
                client.update_run(self.run_id, status=RunStatus.to_string(RunStatus.RUNNING))
        else:
            run = client.create_run(experiment_id, tags={RUN_TAG: run_id}, run_name=run_id)
            self.run_id = run.info.run_id
            params = [Param(k, v) for k, v in config_params(resolved).items()]
            for chunk in _chunks(params, 100):  # MLflow's limit per batch
                client.log_batch(self.run_id, params=chunk)
            if not running:  # a later stage made it: the training it stands for has ended
                client.set_terminated(self.run_id, "FINISHED")
        client.log_batch(self.run_id, tags=[RunTag(k, v) for k, v in tags.items()])
        self.client, self.experiment_id = client, experiment_id
        if running:
            print(f"mlflow: {self.where()}", file=sys.stderr)

    def where(self) -> str:
        """The run's page in the MLflow UI (a server), or its store and experiment."""
        uri = str(self.uri)
        if uri.startswith(("http://", "https://")):
            return f"{uri.rstrip('/')}/#/experiments/{self.experiment_id}/runs/{self.run_id}"
        return f"run {self.run_id} of experiment {self.experiment!r} in {uri}"

    def _guard(self, what: str, action: Any) -> Any:
        """Run ``action``; a failure turns the mirror off with one warning on stderr. What
        MLflow prints goes to stderr: stdout carries only the path that scripts capture."""
        try:
            with contextlib.redirect_stdout(sys.stderr):
                return action()
        except Exception as err:  # noqa: BLE001 - MLflow down must never fail the run
            self.error = f"could not {what}: {type(err).__name__}: {_first_line(err)}"
            self.client = None
            print(
                f"warning: MLflow at {self.uri} {self.error}; the mirror is off for the rest "
                "of this stage (the manifest holds every number)",
                file=sys.stderr,
            )
            return None

    def metrics(self, step: int, values: dict[str, Any], prefix: str = "") -> None:
        """The finite numbers among ``values`` at ``step``, named ``prefix + key``."""
        if self.client is None:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        named = finite_metrics({prefix + key: value for key, value in values.items()})
        rows = [Metric(key, value, now, step) for key, value in named.items()]
        for chunk in _chunks(rows, 1000):
            self._guard("log metrics", lambda c=chunk: self.client.log_batch(self.run_id, c))
            if self.client is None:
                return

    def artifacts(self, run_dir: Path, rels: list[str]) -> None:
        """The run's files ``rels`` (paths in the run folder) as artifacts in the same
        folders: ``eval/metrics.json``, ``calibration/reliability.png``."""
        for rel in rels:
            path = run_dir / rel
            if self.client is None or not path.is_file():
                continue
            folder = posixpath.dirname(rel) or None
            self._guard(
                f"upload {rel}",
                lambda p=path, f=folder: self.client.log_artifact(self.run_id, str(p), f),
            )

    def end(self, status: str) -> None:
        """Mark the run ``FINISHED``, ``FAILED`` or ``KILLED``."""
        if self.client is not None:
            self._guard("end the run", lambda: self.client.set_terminated(self.run_id, status))

    def failed(self, err: BaseException) -> None:
        """Mark the run ``KILLED`` (Ctrl-C) or ``FAILED`` (any other error)."""
        self.end("KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED")

    def note_in(self, summary: dict[str, Any]) -> None:
        """Put :meth:`record` in a stage's ``summary`` as ``mlflow`` (nothing without a mirror)."""
        note_mirror(summary, self.record())

    def record(self) -> dict[str, Any] | None:
        """What the manifest keeps of the mirror: where it went, or why it did not."""
        if self.uri is None:
            return None
        return {
            "tracking_uri": self.uri,
            "experiment": self.experiment,
            "experiment_id": self.experiment_id,
            "run_id": self.run_id if self.error is None else None,
            "error": self.error,
        }


def note_mirror(summary: dict[str, Any], record: dict[str, Any] | None) -> None:
    """``summary["mlflow"] = record`` when a mirror was configured (``record`` not None)."""
    if record is not None:
        summary["mlflow"] = record


def run_tags(
    run_id: str, config_hash: str, commit: str | None, manifest_path: Path
) -> dict[str, str]:
    """The tags that lead from an MLflow run back to its rigor run: run id, config hash, git
    commit (also as MLflow's own source tag) and the manifest's path; a sweep's points also
    carry the sweep's id (``RIGOR_SWEEP``, which the sweep sets)."""
    tags = {
        RUN_TAG: run_id,
        "rigor.config_hash": config_hash,
        "rigor.manifest": str(manifest_path.resolve()),
        "rigor.git_commit": commit or "none",
    }
    if commit:
        tags["mlflow.source.git.commit"] = commit
    if os.environ.get("RIGOR_SWEEP"):
        tags["rigor.sweep"] = os.environ["RIGOR_SWEEP"]
    return tags


def run_mirror(run_dir: Path, resolved: ResolvedConfig) -> Mirror:
    """A new run's MLflow mirror (``logging.mlflow``; off when unset), tagged with where its
    manifest goes."""
    settings = resolved.config.logging.mlflow
    if settings.tracking_uri is None:
        return Mirror.off()
    from rigor.manifest.provenance import git_info

    tags = run_tags(run_dir.name, resolved.hash, git_info()["commit"], run_dir / "manifest.json")
    return Mirror.open(settings, resolved.config.run.name, run_dir.name, tags, resolved.resolved)


@contextlib.contextmanager
def ending(mirror: Mirror) -> Iterator[Mirror]:
    """``mirror``, marked finished when the block completes and failed (killed, on Ctrl-C)
    when it raises."""
    try:
        yield mirror
    except BaseException as err:
        mirror.failed(err)
        raise
    mirror.end("FINISHED")


def mirror_stage(
    config: Config,
    manifest: dict[str, Any],
    manifest_path: Path,
    stage: str,
    values: dict[str, Any],
    outputs: list[str],
) -> dict[str, Any] | None:
    """A later stage's numbers (as ``<stage>/<path>`` at the training's last step) and its
    files on the training's MLflow run; returns what the stage's summary keeps of it (None
    when no mirror is configured)."""
    if config.logging.mlflow.tracking_uri is None:
        return None
    from rigor.tracking.tensorboard import last_step

    mirror = Mirror.attach(config, manifest, manifest_path)
    mirror.metrics(last_step(manifest), values, prefix=f"{stage}/")
    mirror.artifacts(manifest_path.parent, outputs)
    return mirror.record()


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0][:200] if text else ""
