"""The probe task function: frozen features of an encoder on a gene-expression dataset, then
the HEST-Benchmark protocol (rigor.probe.ridge), in a run folder of its own.

The encoder is the config's (random init, ``model.weights_path`` or a DINOv3 folder in
``model.hf.path``), or that of a finished run (``--from-manifest``): a train run's best
checkpoint, or a pretrain run's saved encoder. An encoder that was trained on the dataset's
images may only be tested on patients it never saw: ``probe.test_groups: val_test``.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from rigor.config import ResolvedConfig, apply_overrides, config_from_run
from rigor.config.models import Config
from rigor.data.registry import TaskSpec
from rigor.errors import ConfigError, UsageError
from rigor.io import atomic_write_json, finite_json
from rigor.manifest import write_manifest
from rigor.manifest.rundir import create_run_dir
from rigor.metrics.bootstrap import ci_options
from rigor.probe import features as feats
from rigor.probe.encoder import encoder_record
from rigor.probe.ridge import (
    FoldPredictions,
    Folds,
    cross_validate,
    make_folds,
    pearson_report,
)
from rigor.probe.screen import probe_screen
from rigor.runs.predict import save_npz, spot_arrays
from rigor.tracking import Progress
from rigor.tracking.mirror import Mirror, ending, run_mirror
from rigor.training.optim import Precision
from rigor.training.prepare import Prepared, prepare, write_run_inputs

REPORT, PREDICTIONS = "probe/report.json", "probe/predictions.npz"


@dataclass(frozen=True)
class Source:
    """The finished run whose encoder is probed."""

    manifest_path: Path
    kind: str  # train | pretrain
    run_id: str
    weights: str  # the file or folder the encoder's weights come from, in the run folder
    splits: dict[str, list[str]]  # the run's split ids, to test only unseen patients


def open_source(
    manifest_path: Path, sets: list[str], env_policy: str | None, force: bool
) -> tuple[ResolvedConfig, Source]:
    """The probe config of a finished run (its own, with ``--set`` applied) and the run."""
    from rigor.pretraining.run import HF_DIR
    from rigor.stages import open_run

    ctx = open_run(manifest_path, ["splits.json"], env_policy, force, kinds=("train", "pretrain"))
    kind = ctx.manifest["stages"][0]["name"]
    resolved = config_from_run(ctx.run_dir, sets)
    model = resolved.config.model
    if kind == "pretrain":
        weights = HF_DIR
        hf = apply_overrides(model.hf, {"path": str(ctx.path(HF_DIR))}, "model.hf")
        model = model.model_copy(update={"hf": hf, "weights_path": None})
    else:
        from rigor.runs.restore import architecture

        weights, model = ctx.manifest["best_checkpoint"], architecture(model)
    data = resolved.config.data
    if (ctx.run_dir / "genes.json").is_file():  # the panel the run picked on its train split
        genes = json.loads(ctx.path("genes.json").read_text())["genes"]
        data = apply_overrides(data, {"genes": genes}, "data", f"{ctx.run_dir.name}/genes.json")
    config = resolved.config.model_copy(update={"model": model, "data": data})
    splits = json.loads(ctx.path("splits.json").read_text())["splits"]
    source = Source(manifest_path, kind, ctx.manifest["run_id"], weights, splits)
    return replace(resolved, config=config), source


def check_probe_config(config: Config, source: Source | None) -> None:
    """Probe settings that would leak or cannot run are config errors, before any work."""
    if source is not None and config.probe.test_groups != "val_test":
        raise ConfigError(
            f"probe.test_groups: the encoder of {source.kind} run {source.run_id} was trained "
            "on this dataset's train and val_select images; test only the patients it never "
            "saw with --set probe.test_groups=val_test"
        )


def probe(
    resolved: ResolvedConfig,
    env_policy: str | None = None,
    force: bool = False,
    source: Source | None = None,
) -> Path:
    """Probe the encoder and return the run's ``manifest.json`` path."""
    check_probe_config(resolved.config, source)
    prepared = prepare(resolved, env_policy, force, probe=True)
    genes = _genes(prepared.dataset.tasks)
    if source is not None and source.kind == "train":
        _load_source_weights(prepared, source, force)
    cfg = prepared.resolved.config
    state = feats.weights_hash(prepared.model.backbone)
    encoder_input, precision = _encoder_input(prepared)
    key = feats.cache_key(
        state, prepared.dataset, prepared.transforms, precision, encoder_input.record()
    )
    cache_path, index = feats.cached_features(
        Path(cfg.run.output_root) / "cache" / "features",
        key,
        lambda: _extract(prepared, encoder_input, precision),
    )
    verb = "reused" if index["reused"] else f"extracted in {index['seconds']} s"
    print(f"features {tuple(index['shape'])} {verb} ({cache_path})", file=sys.stderr)
    rows = np.asarray(index["rows"], dtype=np.int64)
    features = feats.load_features(cache_path)
    targets = np.stack([prepared.dataset.targets[g].numpy()[rows] for g in genes], axis=1)
    groups = np.asarray(prepared.dataset.groups)[rows].astype(str)
    folds = _folds(prepared, source, rows, groups)
    predicted, fits = cross_validate(
        features, targets, folds, cfg.probe.pca_components, cfg.probe.alpha, cfg.probe.pca_seed
    )
    report = pearson_report(predicted, targets, groups, genes, ci_options(cfg.evaluation))
    report |= {
        "protocol": cfg.probe.protocol,
        "pca_seed": cfg.probe.pca_seed,
        "folds": fits,
        "genes": genes,
        "features": _feature_record(index, cache_path) | {"precision": precision},
        "encoder": encoder_record(cfg, state, int(features.shape[1])),
    }
    if cfg.probe.protocol == "hest_bench":
        extra = prepared.dataset.raw.extra_record
        report |= {"task": extra["task"], "splits": extra["bench_splits"]}
    arrays = (rows, predicted, targets)
    return _write_run(prepared, source, report, (cache_path, index), arrays)


def _folds(
    prepared: Prepared, source: Source | None, rows: np.ndarray, groups: np.ndarray
) -> Folds:
    """The protocol's folds over the feature rows: a task folder's predefined splits (by
    sample), or folds of whole patients made here."""
    cfg = prepared.resolved.config
    if cfg.probe.protocol == "hest_bench":
        splits = prepared.dataset.raw.extra_record["bench_splits"]
        samples = np.asarray([prepared.dataset.ids[r].split(":", 1)[0] for r in rows])
        return Folds(samples, [s["test"] for s in splits], [s["train"] for s in splits])
    return make_folds(groups, _test_groups(prepared, source, groups), cfg.probe.folds)


def _genes(tasks: dict[str, TaskSpec]) -> list[str]:
    genes = [name for name, spec in tasks.items() if spec.kind == "regression"]
    if not genes:
        raise ConfigError(
            f"data.tasks: the probe regresses gene expression, and the dataset's tasks "
            f"{sorted(tasks)} hold no regression task"
        )
    return genes


def _load_source_weights(prepared: Prepared, source: Source, force: bool) -> None:
    from rigor.runs.restore import best_state

    manifest = json.loads(source.manifest_path.read_text())
    prepared.model.load_state_dict(best_state(source.manifest_path.parent, manifest, force))


def _encoder_input(prepared: Prepared) -> tuple[feats.EncoderInput, str]:
    """The encoder's input transform and the precision it extracts in (its own on a GPU;
    fp32 on a CPU, where autocast would only slow it down)."""
    inference = prepared.resolved.config.model.inference
    precision = inference.precision if prepared.device.type == "cuda" else "fp32"
    encoder_input = feats.EncoderInput(
        prepared.eval_pipeline,
        inference.resize,
        inference.crop,
        inference.interpolation,
        inference.channels_last,
    )
    return encoder_input, precision


def _extract(
    prepared: Prepared, encoder_input: feats.EncoderInput, precision: str
) -> tuple[np.ndarray, list[int], dict[int, str]]:
    cfg = prepared.resolved.config
    loader = feats.feature_loader(
        prepared.dataset,
        cfg.training.eval_batch_size,
        cfg.data.num_workers,
        cfg.data.prefetch_factor,
    )
    inference = cfg.model.inference
    encoder = feats.ready_encoder(
        prepared.model.backbone, inference.channels_last, inference.compile
    )
    autocast = Precision(precision, prepared.device).autocast
    # a line every 10 s of extraction: patches done, rate, time left
    progress = Progress(len(prepared.dataset), "features", "patches", every=10.0)
    return feats.extract(
        encoder, loader, prepared.device, encoder_input, autocast, progress.reached
    )


def _test_groups(prepared: Prepared, source: Source | None, groups: np.ndarray) -> list[str]:
    """Every group, or the val_test split's (the source run's own splits when probing a run)."""
    if prepared.resolved.config.probe.test_groups == "all":
        return sorted(set(groups.tolist()))
    dataset = prepared.dataset
    if source is not None:
        row_of = {sample_id: row for row, sample_id in enumerate(dataset.ids)}
        listed = [i for split in ("train", "val_select", "val_test") for i in source.splits[split]]
        missing = [i for i in listed if i not in row_of]
        if missing:
            raise UsageError(
                f"{source.manifest_path}: {len(missing)} samples of the run's splits are not in "
                f"the dataset now (first: {missing[0]}): the dataset changed since that run"
            )
        seen = {
            dataset.groups[row_of[i]] for s in ("train", "val_select") for i in source.splits[s]
        }
        tested = {dataset.groups[row_of[i]] for i in source.splits["val_test"]}
        if seen & tested:  # split groups never straddle splits; a changed dataset could
            raise UsageError(
                f"{source.manifest_path}: patients {sorted(seen & tested)} are in both the "
                "encoder's training splits and val_test: the dataset changed since that run"
            )
        return sorted(tested)
    return sorted({dataset.groups[row] for row in prepared.splits["val_test"]})


def _feature_record(index: dict[str, Any], cache_path: Path) -> dict[str, Any]:
    return {
        "cache": str(cache_path),
        "key": index["key"],
        "shape": index["shape"],
        "sha256": index["sha256"],
        "reused": index["reused"],
        "seconds": index["seconds"],
        "samples_per_s": index["samples_per_s"],
        "skipped": len(index["skipped"]),
    }


def _metrics(report: dict[str, Any]) -> dict[str, float | None]:
    metrics: dict[str, float | None] = {
        "probe/pearson_mean": report["pearson_mean"]["estimate"],
        "probe/pearson_mean/ci_lower": report["pearson_mean"]["ci_lower"],
        "probe/pearson_mean/ci_upper": report["pearson_mean"]["ci_upper"],
        "probe/pearson_median": report["pearson_median"],
        "probe/split_mean": report["split_mean"],
        "probe/split_std": report["split_std"],
    }
    for gene, value in report["per_gene"].items():
        metrics[f"probe/pearson/{gene}"] = value["estimate"]
    finite: dict[str, float | None] = finite_json(metrics)
    return finite


def _write_run(
    prepared: Prepared,
    source: Source | None,
    report: dict[str, Any],
    cached: tuple[Path, dict[str, Any]],
    arrays: tuple[np.ndarray, FoldPredictions, np.ndarray],
) -> Path:
    """The run folder: configs, splits, features, predictions, report; the manifest last,
    mirrored to MLflow when ``logging.mlflow`` says so."""
    cfg = prepared.resolved.config
    run_id, run_dir = create_run_dir(
        Path(cfg.run.output_root), f"{cfg.run.name}-probe", prepared.resolved.hash
    )
    print(f"run {run_id}: probe, writing to {run_dir}", file=sys.stderr)
    write_run_inputs(run_dir, prepared)
    artifacts = feats.copy_into(run_dir, *cached)
    rows, predicted, targets = arrays
    fold, tested, values = predicted.stacked()
    save_npz(
        run_dir / PREDICTIONS,
        {
            "fold": fold,
            "ids": np.asarray(prepared.dataset.ids)[rows[tested]],
            "groups": np.asarray(prepared.dataset.groups)[rows[tested]],
            **spot_arrays(prepared.dataset, np.asarray(prepared.dataset.ids)[rows[tested]]),
            "predicted": values,
            "targets": targets[tested],
            "genes": np.asarray(report["genes"]),
        },
    )
    source_record = None if source is None else {"run_id": source.run_id, "kind": source.kind}
    atomic_write_json(run_dir / REPORT, report | {"source": source_record})
    metrics = _metrics(report)
    with ending(run_mirror(run_dir, prepared.resolved)) as mirror:
        mirror.metrics(0, metrics)
        path = _write_record(run_dir, prepared, source, report, metrics, artifacts, mirror)
        mirror.artifacts(run_dir, [REPORT, "metrics.json", "manifest.json"])
    print(probe_screen(report, run_dir), file=sys.stderr)
    return path


def _write_record(
    run_dir: Path,
    prepared: Prepared,
    source: Source | None,
    report: dict[str, Any],
    metrics: dict[str, Any],
    artifacts: list[str],
    mirror: Mirror,
) -> Path:
    """metrics.json and the manifest (with where the MLflow mirror went), written last."""
    from rigor.training.run_record import RunOutputs, build_manifest

    cfg = prepared.resolved.config
    source_record = None if source is None else {"run_id": source.run_id, "kind": source.kind}
    atomic_write_json(run_dir / "metrics.json", {"metrics": metrics})
    summary = {
        "source": source_record,
        "weights": None if source is None else source.weights,
        "folds": len(report["folds"]),
        "test_groups": cfg.probe.test_groups,
        "pearson_mean": metrics["probe/pearson_mean"],
        "protocol": report["protocol"],
        "task": report.get("task"),
        "features_reused": report["features"]["reused"],
    }
    outputs = RunOutputs(
        metrics=metrics,
        summary=summary,
        predictions=[PREDICTIONS],
        stage="probe",
        extra_artifacts={"features": artifacts, "reports": [REPORT]},
        weights=None if source is None else f"run:{source.run_id}/{source.weights}",
        encoder={k: v for k, v in report["encoder"].items() if k != "dim"},
    )
    mirror.note_in(summary)
    return write_manifest(run_dir, build_manifest(run_dir, prepared, outputs))
