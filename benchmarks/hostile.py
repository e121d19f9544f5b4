"""A hostile run through every stage: about 200 commands that tamper, race, kill and feed bad
input, each checked for its exit code, its message and the absence of a traceback.

    python benchmarks/hostile.py [--out DIR] [--only seal,finite,...]

Each command runs the real script (``scripts/*.py``) in a subprocess, from the repository
root, on generated data in ``--out`` (default: a temporary folder). The groups follow
issue 30's items: seal, finite, cache, fingerprint, hest, races, errors, easy. The tally
(commands, passed, failed per group, and each failure) goes to stdout and to
``<out>/hostile.md``; the exit status is 1 when any command did not do what it should.
Not part of the test lanes (tests/test_hostile.py runs one group): about 4 minutes on two
cores.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "configs" / "experiment" / "smoke.yaml"
FAST = ["--env-policy", "ignore"]


@dataclass
class Result:
    group: str
    name: str
    ok: bool
    why: str = ""


@dataclass
class Runner:
    """Runs one command at a time and keeps the tally."""

    out: Path
    results: list[Result] = field(default_factory=list)

    def run(self, script: str, *args: str, env: dict[str, str] | None = None) -> Any:
        command = [sys.executable, str(ROOT / "scripts" / f"{script}.py"), *args]
        return subprocess.run(
            command, cwd=ROOT, capture_output=True, text=True, timeout=900, env=env
        )

    def cmd(
        self,
        group: str,
        name: str,
        script: str,
        args: Iterable[str],
        codes: int | tuple[int, ...] = 0,
        needle: str | None = None,
        check: Callable[[], str | None] | None = None,
    ) -> Any:
        """Run ``scripts/<script>.py args`` and record whether it did what it should."""
        codes = (codes,) if isinstance(codes, int) else codes
        done = self.run(script, *args)
        problems = []
        if done.returncode not in codes:
            problems.append(f"exit {done.returncode}, wanted {codes}")
        if needle is not None and needle not in done.stderr:
            problems.append(f"stderr lacks {needle!r}")
        if "Traceback" in done.stderr:
            problems.append("a traceback")
        if check is not None and not problems:
            problem = check()
            if problem:
                problems.append(problem)
        why = "; ".join(problems)
        if problems:
            why += f" | stderr: {done.stderr.strip().splitlines()[-1:] if done.stderr else ''}"
        self.results.append(Result(group, name, not problems, why))
        mark = "ok  " if not problems else "FAIL"
        print(f"{mark} [{group}] {name}" + ("" if not problems else f": {why}"), flush=True)
        return done

    def expect(self, group: str, name: str, problem: str | None) -> None:
        """Record a check made without a command of its own (counted apart)."""
        self.results.append(Result(group, f"(check) {name}", problem is None, problem or ""))


def sets(*items: str) -> list[str]:
    """``--set`` flags for each item."""
    return [flag for item in items for flag in ("--set", item)]


def stdout_path(done: Any) -> Path:
    return Path(done.stdout.strip().splitlines()[-1])


def copy_run(manifest: Path, target: Path) -> Path:
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(manifest.parent, target)
    return target / "manifest.json"


def edit_json(
    path: Path, change: Callable[[dict[str, Any]], None], text: str | None = None
) -> None:
    record = json.loads(path.read_text())
    change(record)
    path.write_text(text if text is not None else json.dumps(record))


def reseal(path: Path, rehash: dict[str, Path] | None = None) -> None:
    """Rehash files into a record's sha256 and write a new seal, as a careful forger would."""
    from rigor.io import record_hash, sha256_file

    record = json.loads(path.read_text())
    for rel, target in (rehash or {}).items():
        record["sha256"][rel] = sha256_file(target)
    record["record_sha256"] = record_hash(record)
    path.write_text(json.dumps(record))


def set_path(record: dict[str, Any], dotted: str, value: Any) -> None:
    node = record
    *parents, last = dotted.split(".")
    for part in parents:
        node = node[part]
    node[last] = value


# --- 1: the seal ---------------------------------------------------------------------------

SEAL_FIELDS = {
    "transforms.mean": [0.9],
    "run_id": "20260101T000000Z-forged-00000000",
    "metrics.acc/val_test": 1.0,
    "encoder.arch": "resnet50",
    "dataset.content_hash": "0" * 64,
    "config_hash": "f" * 64,
}


def seal_group(r: Runner, base: Path) -> None:
    work = r.out / "seal"
    for stage in ("calibrate", "eval", "export", "xai"):
        m = copy_run(base, work / f"noseal-{stage}")
        edit_json(m, lambda rec: rec.pop("record_sha256"))
        r.cmd(
            "seal",
            f"{stage}: seal removed",
            stage,
            ["--from-manifest", str(m), *FAST],
            5,
            "record_sha256 is missing",
        )
    m = copy_run(base, work / "noseal-verify")
    edit_json(m, lambda rec: rec.pop("record_sha256"))
    before = m.read_bytes()
    r.cmd(
        "seal",
        "verify: seal removed",
        "manifest",
        ["verify", str(m)],
        5,
        "always sealed",
        check=lambda: None if m.read_bytes() == before else "the manifest was rewritten",
    )
    for dotted, value in SEAL_FIELDS.items():
        for drop in (False, True):
            m = copy_run(base, work / f"edit-{dotted.replace('/', '_')}-{drop}")

            def change(
                rec: dict[str, Any], dotted: str = dotted, value: Any = value, drop: bool = drop
            ) -> None:
                if dotted.startswith("metrics."):
                    rec["metrics"][dotted.split(".", 1)[1]] = value
                else:
                    set_path(rec, dotted, value)
                if drop:
                    rec.pop("record_sha256")

            edit_json(m, change)
            name = f"verify: {dotted} edited" + (", seal removed" if drop else "")
            r.cmd("seal", name, "manifest", ["verify", str(m)], 5)
            if not drop:
                r.cmd(
                    "seal", f"eval: {dotted} edited", "eval", ["--from-manifest", str(m), *FAST], 5
                )
    m = copy_run(base, work / "pre-seal")
    edit_json(m, lambda rec: (rec.pop("record_sha256"), rec.__setitem__("manifest_version", "1")))
    r.cmd(
        "seal",
        "verify: a pre-seal version 1 record opens",
        "manifest",
        ["verify", str(m)],
        0,
        "pre-seal record",
    )
    r.cmd(
        "seal",
        "calibrate on a pre-seal record keeps it unsealed",
        "calibrate",
        ["--from-manifest", str(m), "--target-risk", "0.5", "--min-coverage", "0", *FAST],
        0,
        check=lambda: (
            None
            if "record_sha256" not in json.loads(m.read_text())
            else "a stage sealed fields nobody verified"
        ),
    )
    bundle_cases = {
        "seal removed": lambda rec: rec.pop("record_sha256"),
        "transforms edited": lambda rec: set_path(rec, "transforms.mean", [0.1]),
        "class names edited": lambda rec: rec["tasks"]["digit"].__setitem__(
            "classes", list("abcdefghij")
        ),
        "run_id edited": lambda rec: rec.__setitem__("run_id", "forged"),
        "no_policy added": lambda rec: rec.__setitem__("no_policy", "forged"),
    }
    for name, change in bundle_cases.items():
        m = copy_run(base, work / f"bundle-{name.replace(' ', '-')}")
        edit_json(m.parent / "bundle" / "bundle.json", change)
        r.cmd(
            "seal",
            f"predict: bundle {name}",
            "predict",
            ["--bundle", str(m.parent / "bundle"), "--split", "val_test"],
            (3, 5),
        )
    m = copy_run(base, work / "bundle-v1")
    edit_json(
        m.parent / "bundle" / "bundle.json",
        lambda rec: (rec.pop("record_sha256"), rec.__setitem__("bundle_version", 1)),
    )
    r.cmd(
        "seal",
        "predict: a pre-seal version 1 bundle opens",
        "predict",
        ["--bundle", str(m.parent / "bundle"), "--split", "val_test"],
        0,
        "pre-seal record",
    )


def init_from_case(r: Runner) -> None:
    done = r.cmd(
        "seal",
        "pretrain (for init_from)",
        "pretrain",
        [
            "--config",
            str(ROOT / "configs/experiment/digits_mae.yaml"),
            *FAST,
            *sets(
                f"run.output_root={r.out / 'mae'}",
                "training.epochs=1",
                "training.max_steps_per_epoch=2",
                "scheduler.warmup_epochs=0",
                "logging.tensorboard=false",
            ),
        ],
    )
    if done.returncode != 0:
        return
    manifest = stdout_path(done)
    edit_json(manifest, lambda rec: rec.pop("record_sha256"))
    r.cmd(
        "seal",
        "train: model.init_from a pretrain manifest without its seal",
        "train",
        [
            "--config",
            str(ROOT / "configs/experiment/digits_dinov3_lora.yaml"),
            *FAST,
            *sets(
                f"model.init_from={manifest}",
                f"run.output_root={r.out / 'initfrom'}",
                "training.epochs=1",
                "scheduler.warmup_epochs=0",
                "training.max_steps_per_epoch=2",
            ),
        ],
        5,
        "record_sha256 is missing",
    )


# --- 2: finite, bounded numbers --------------------------------------------------------------

FLOAT_KEYS = [
    "optimizer.weight_decay",
    "training.lr",
    "scheduler.min_lr_ratio",
    "model.dropout",
    "data.splits.train",
    "calibration.target_risk",
    "evaluation.level",
    "training.grad_clip",
    "training.min_delta",
    "model.peft.dropout",
    "data.worker_timeout_s",
    "scheduler.warmup_epochs",
    "calibration.interval_alpha",
    "calibration.min_coverage",
    "optimizer.momentum",
    "scheduler.gamma",
    "training.backbone_lr_scale",
    "xai.worker.backoff_s",
]
NON_FINITE = ["1e999", "-1e999", ".nan", ".inf"]

POLICY_FORGERIES = {
    "threshold 1e999": ("threshold", None, '"threshold": 1e999'),
    "temperature 1e999": ("temperature", None, '"temperature": 1e999'),
    "temperature -1": ("temperature", -1.0, None),
    "temperature 0": ("temperature", 0.0, None),
    "threshold 1.5": ("threshold", 1.5, None),
    "threshold -0.1": ("threshold", -0.1, None),
    "threshold NaN": ("threshold", None, '"threshold": NaN'),
    "target_risk 1.0": ("target_risk", 1.0, None),
}


def finite_group(r: Runner, base: Path) -> None:
    for key in FLOAT_KEYS:
        for value in NON_FINITE:
            out = r.out / "finite" / f"{key}-{value}"
            r.cmd(
                "finite",
                f"train --set {key}={value}",
                "train",
                [
                    "--config",
                    str(SMOKE),
                    *FAST,
                    *sets(f"{key}={value}", f"run.output_root={out}"),
                ],
                2,
                "finite number",
                check=lambda out=out: "a folder was made" if out.exists() else None,
            )
    for name, (key, value, text) in POLICY_FORGERIES.items():
        m = copy_run(base, r.out / "finite" / f"policy-{name.replace(' ', '_')}")
        policy = m.parent / "bundle" / "policy.json"
        record = json.loads(policy.read_text())
        if text is None:
            record[key] = value
            policy.write_text(json.dumps(record))
        else:
            record[key] = 12345.678
            policy.write_text(json.dumps(record).replace('"' + key + '": 12345.678', text))
        reseal(m.parent / "bundle" / "bundle.json", {"policy.json": policy})
        r.cmd(
            "finite",
            f"predict: bundle policy {name}",
            "predict",
            ["--bundle", str(m.parent / "bundle"), "--split", "val_test"],
            3,
            "policy.json",
        )
    for policy_kind, key, value in (
        ("sets", "q_hat", -0.1),
        ("sets", "alpha", 1.0),
        ("sets", "alpha", 0.0),
        ("crc", "lambda", 1.5),
        ("scrc", "selection_threshold", 2.0),
        ("scrc", "coverage", 0.0),
    ):
        m = copy_run(base, r.out / "finite" / f"{policy_kind}-{key}-{value}")
        done = r.run("export", "--from-manifest", str(m), "--policy", policy_kind, *FAST)
        if done.returncode != 0:
            r.expect("finite", f"export --policy {policy_kind}", f"exit {done.returncode}")
            continue
        policy = m.parent / "bundle" / "policy.json"
        edit_json(policy, lambda rec, key=key, value=value: rec.__setitem__(key, value))
        reseal(m.parent / "bundle" / "bundle.json", {"policy.json": policy})
        r.cmd(
            "finite",
            f"predict: {policy_kind} policy {key} {value}",
            "predict",
            ["--bundle", str(m.parent / "bundle"), "--split", "val_test"],
            3,
        )
    m = copy_run(base, r.out / "finite" / "manifest-metric")
    text = m.read_text().replace('"acc/val_test": ', '"acc/val_test": 1e999, "x": ', 1)
    m.write_text(text)
    r.cmd(
        "finite",
        "verify: a manifest metric 1e999",
        "manifest",
        ["verify", str(m)],
        3,
        "overflows to infinity",
    )
    m = copy_run(base, r.out / "finite" / "thresholds")
    thresholds = m.parent / "calibration" / "thresholds.json"
    thresholds.write_text(
        thresholds.read_text().replace('"temperature": ', '"temperature": 1e999, "t": ', 1)
    )
    reseal(m, {"calibration/thresholds.json": thresholds})
    r.cmd(
        "finite",
        "eval: thresholds.json temperature 1e999",
        "eval",
        ["--from-manifest", str(m), *FAST],
        3,
        "overflows to infinity",
    )


def intervals_group(r: Runner) -> None:
    done = r.cmd(
        "finite",
        "train tiles_genes (for intervals)",
        "train",
        [
            "--config",
            str(ROOT / "configs/experiment/tiles_genes.yaml"),
            *FAST,
            *sets(
                f"run.output_root={r.out / 'tiles'}",
                "training.epochs=2",
                "logging.tensorboard=false",
            ),
        ],
    )
    if done.returncode != 0:
        return
    m = stdout_path(done)
    r.cmd("finite", "calibrate tiles_genes", "calibrate", ["--from-manifest", str(m), *FAST])
    r.cmd("finite", "export tiles_genes", "export", ["--from-manifest", str(m), *FAST])
    for name, forged in (("1e999", "1e999"), ("-0.5", "-0.5")):
        copy = copy_run(m, r.out / "finite" / f"intervals-{name}")
        path = copy.parent / "bundle" / "intervals.json"
        record = json.loads(path.read_text())
        gene = next(iter(record["tasks"]))
        record["tasks"][gene]["q_hat"] = 424242.0
        path.write_text(json.dumps(record).replace("424242.0", forged))
        reseal(copy.parent / "bundle" / "bundle.json", {"intervals.json": path})
        r.cmd(
            "finite",
            f"predict: interval half-width {name}",
            "predict",
            ["--bundle", str(copy.parent / "bundle"), "--split", "val_test"],
            3,
            f"$.tasks.{gene}.q_hat",
        )


# --- 3: the preprocessing cache --------------------------------------------------------------


def _flip(path: Path) -> None:
    info = path.stat()
    with open(path, "r+b") as handle:
        handle.seek(-5, 2)
        byte = handle.read(1)
        handle.seek(-5, 2)
        handle.write(bytes([byte[0] ^ 0xFF]))
    os.utime(path, ns=(info.st_atime_ns, info.st_mtime_ns))


DAMAGE: dict[str, Callable[[Path], None]] = {
    "flipped bytes": _flip,
    "truncated": lambda p: os.truncate(p, p.stat().st_size - 64),
    "zero bytes": lambda p: p.write_bytes(b""),
    "garbage header": lambda p: p.write_bytes(b"not an npy file at all" * 10),
    "side file broken": lambda p: p.with_suffix(".json").write_text("{"),
    "side file gone": lambda p: p.with_suffix(".json").unlink(),
    "side file 1e999": lambda p: p.with_suffix(".json").write_text('{"rows": 1e999}'),
}


def images_args(root: Path, out: Path, *extra: str) -> list[str]:
    overrides = [
        f"data.root={root}",
        f"run.output_root={out}",
        "training.epochs=1",
        "scheduler.warmup_epochs=0",
        "logging.tensorboard=false",
        *extra,
    ]
    return [
        "--config",
        str(ROOT / "configs/experiment/shapes.yaml"),
        *FAST,
        *sets(*overrides),
    ]


def cache_group(r: Runner, images: Path) -> None:
    out = r.out / "cache"
    r.cmd("cache", "train shapes (fills the cache)", "train", images_args(images, out))
    stats = list(out.glob("cache/imagefolder-*/stats-*.json"))
    r.expect("cache", "train statistics stored with the cache", None if stats else "no stats file")
    for name, damage in DAMAGE.items():
        shard = next(out.glob("cache/imagefolder-*/shard-00000.npy"))
        damage(shard)
        r.cmd(
            "cache",
            f"train on a cache shard: {name}",
            "train",
            images_args(images, out),
            0,
            "rebuilding it",
        )
    shard = next(out.glob("cache/imagefolder-*/shard-00000.npy"))
    shard.unlink()
    shard.with_suffix(".json").unlink()
    shard.mkdir()
    r.cmd(
        "cache",
        "train: a shard that cannot be rebuilt",
        "train",
        images_args(images, out),
        2,
        "cannot rebuild shard 00000",
    )
    shard.rmdir()


# --- 4: fingerprints -------------------------------------------------------------------------


def fingerprint_group(r: Runner, images: Path) -> None:
    from PIL import Image

    root = r.out / "fp-images"  # as BMP: a flipped pixel byte leaves a valid image
    for png in images.glob("*/*.png"):
        (root / png.parent.name).mkdir(parents=True, exist_ok=True)
        Image.open(png).save(root / png.parent.name / f"{png.stem}.bmp")
    out = r.out / "fp"
    first = r.cmd(
        "fingerprint", "train (fingerprint)", "train", images_args(root, out, "data.cache=false")
    )
    target = sorted(root.glob("*/*.bmp"))[3]
    info = target.stat()
    data = bytearray(target.read_bytes())
    data[-20] ^= 0xFF
    target.write_bytes(bytes(data))
    os.utime(target, ns=(info.st_atime_ns, info.st_mtime_ns))
    second = r.cmd(
        "fingerprint",
        "train after an edit that restored the mtime",
        "train",
        images_args(root, out, "data.cache=false"),
    )
    if first.returncode == 0 and second.returncode == 0:
        a, b = (
            json.loads(stdout_path(d).read_text())["dataset"]["content_hash"]
            for d in (first, second)
        )
        r.expect("fingerprint", "the edit changed the fingerprint", None if a != b else "same hash")
    for cache in ("false", "true"):
        command = [
            sys.executable,
            str(ROOT / "scripts/train.py"),
            *images_args(root, out / cache, f"data.cache={cache}", "training.epochs=40"),
        ]
        proc = subprocess.Popen(
            command, cwd=ROOT, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not list(
            (out / cache).glob("runs/*/logs/epochs.csv")
        ):
            time.sleep(0.05)
        victim = sorted(root.glob("*/*.bmp"))[7]
        data = bytearray(victim.read_bytes())
        data[-30] ^= 0xFF  # another process edits an image while the run is on
        victim.write_bytes(bytes(data))
        _, err = proc.communicate(timeout=600)
        ok = proc.returncode == 2 and victim.name in err and "Traceback" not in err
        no_manifest = not list((out / cache).glob("runs/*/manifest.json"))
        r.results.append(
            Result(
                "fingerprint",
                f"train while a file changes (cache {cache})",
                ok and no_manifest,
                (
                    ""
                    if ok and no_manifest
                    else f"exit {proc.returncode}: {err.strip().splitlines()[-1:]}"
                ),
            )
        )


# --- 5: HEST input --------------------------------------------------------------------------


def hest_group(r: Runner) -> None:
    import anndata
    import h5py

    from rigor.data.hest.write import write_tiles_hest

    base = r.out / "hest-base"
    write_tiles_hest(base, 8, 10, 16)
    config = ROOT / "configs/experiment/tiles_hest.yaml"

    def broken(name: str, damage: Callable[[Path], None], needle: str) -> None:
        root = r.out / f"hest-{name.replace(' ', '-')}"
        shutil.copytree(base, root)
        damage(root)
        out = r.out / "hest-out" / name.replace(" ", "-")
        r.cmd(
            "hest",
            f"train: {name}",
            "train",
            [
                "--config",
                str(config),
                *FAST,
                *sets(f"data.root={root}", f"run.output_root={out}"),
            ],
            2,
            needle,
            check=lambda: "a run folder was made" if (out / "runs").exists() else None,
        )

    def h5(root: Path, change: Callable[[h5py.File], None]) -> None:
        with h5py.File(root / "patches" / "TILES-P02.h5", "r+") as f:
            change(f)

    def h5ad(root: Path, change: Callable[[Any], None]) -> None:
        path = root / "st" / "TILES-P02.h5ad"
        table = anndata.read_h5ad(path)
        change(table)
        table.write_h5ad(path)

    def dup_barcode(f: Any) -> None:
        codes = f["barcode"][:]
        codes[1] = codes[0]
        f["barcode"][:] = codes

    def zero_patches(root: Path) -> None:
        path = root / "patches" / "TILES-P02.h5"
        with h5py.File(path, "r") as f:
            shape = f["img"].shape
        path.unlink()
        with h5py.File(path, "w") as f:
            f.create_dataset("img", shape=(0, *shape[1:]), dtype="uint8")
            f.create_dataset("coords", shape=(0, 2), dtype="int64")
            f.create_dataset("barcode", shape=(0, 1), dtype="S16")

    broken("duplicate barcode in a patch file", lambda root: h5(root, dup_barcode), "duplicate")
    broken(
        "duplicate obs_names",
        lambda root: h5ad(
            root, lambda t: setattr(t, "obs_names", [*t.obs_names[:-1], t.obs_names[0]])
        ),
        "duplicate",
    )
    broken(
        "duplicate gene names",
        lambda root: h5ad(root, lambda t: setattr(t, "var_names", [*t.var_names[:-1], "EPCAM"])),
        "duplicate",
    )
    broken(
        "negative counts",
        lambda root: h5ad(root, lambda t: t.X.__setitem__((2, 0), -4.0)),
        "negative count",
    )
    broken("zero patches", zero_patches, "TILES-P02")
    broken(
        "truncated patch file",
        lambda root: (root / "patches" / "TILES-P02.h5").write_bytes(
            (root / "patches" / "TILES-P02.h5").read_bytes()[:500]
        ),
        "not a readable HDF5 file",
    )
    broken(
        "missing expression file",
        lambda root: (root / "st" / "TILES-P02.h5ad").unlink(),
        "expression file not found",
    )
    dotted = r.out / "hest-dotted"
    shutil.copytree(base, dotted)
    for path in (dotted / "st").glob("*.h5ad"):
        table = anndata.read_h5ad(path)
        table.var_names = ["AC009501.4" if g == "VIM" else g for g in table.var_names]
        table.write_h5ad(path)
    done = r.cmd(
        "hest",
        "train: a gene named AC009501.4",
        "train",
        [
            "--config",
            str(config),
            *FAST,
            *sets(
                f"data.root={dotted}",
                "data.genes=[EPCAM, AC009501.4]",
                "training.epochs=2",
                f"run.output_root={r.out / 'hest-out' / 'dotted'}",
                "logging.tensorboard=false",
            ),
        ],
    )
    if done.returncode == 0:
        m = stdout_path(done)
        for stage in ("calibrate", "eval", "export"):
            r.cmd(
                "hest",
                f"{stage}: a gene named AC009501.4",
                stage,
                ["--from-manifest", str(m), *FAST],
            )
        r.cmd(
            "hest",
            "predict: a gene named AC009501.4",
            "predict",
            ["--bundle", str(m.parent / "bundle"), "--split", "val_test"],
            0,
            check=lambda: (
                None
                if "AC009501.4"
                in (m.parent / "predict" / "val_test.csv").read_text().splitlines()[0]
                else "no column for the gene"
            ),
        )
        empty = copy_run(m, r.out / "hest-empty-calib")
        import numpy as np

        npz = empty.parent / "predictions" / "val_calib.npz"
        with np.load(npz) as data:
            arrays = {k: data[k][:0] for k in data.files}
        np.savez(npz, **arrays)
        edit_json(empty, lambda rec: rec.__setitem__("stages", rec["stages"][:1]))
        reseal(empty, {"predictions/val_calib.npz": npz})
        r.cmd(
            "hest",
            "calibrate: an empty val_calib",
            "calibrate",
            ["--from-manifest", str(empty), *FAST],
            2,
            "val_calib has no samples",
        )


# --- 6: races and kill windows --------------------------------------------------------------


def races_group(r: Runner, base: Path) -> None:
    for round_ in range(3):
        m = copy_run(base, r.out / "races" / f"concurrent-{round_}")
        command = [
            sys.executable,
            str(ROOT / "scripts/export.py"),
            "--from-manifest",
            str(m),
            *FAST,
        ]
        procs = [
            subprocess.Popen(
                command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
            for _ in range(3)
        ]
        for i, proc in enumerate(procs):
            _, err = proc.communicate(timeout=600)
            r.results.append(
                Result(
                    "races",
                    f"concurrent export {round_}.{i}",
                    proc.returncode == 0 and "Traceback" not in err,
                    f"exit {proc.returncode}: {err.strip()[-300:]}",
                )
            )
        r.cmd("races", f"verify after concurrent exports {round_}", "manifest", ["verify", str(m)])
    for i, delay in enumerate((0.3, 0.8, 1.5, 2.5, 3.5, 5.0)):
        m = copy_run(base, r.out / "races" / f"killed-{i}")
        command = [
            sys.executable,
            str(ROOT / "scripts/export.py"),
            "--from-manifest",
            str(m),
            "--policy",
            "sets",
            *FAST,
        ]
        proc = subprocess.Popen(
            command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        r.cmd(
            "races",
            f"export again after a kill at {delay} s",
            "export",
            ["--from-manifest", str(m), *FAST],
        )
        r.cmd(
            "races",
            f"verify after the repair ({delay} s)",
            "manifest",
            ["verify", str(m)],
            0,
            check=lambda m=m: (
                "a temporary is left" if list(m.parent.glob(".manifest.json.*.tmp")) else None
            ),
        )
    sweep_out = r.out / "races" / "sweep"
    command = [
        sys.executable,
        str(ROOT / "scripts/sweep.py"),
        "--config",
        str(SMOKE),
        *FAST,
        *sets(
            f"run.output_root={sweep_out}",
            "training.epochs=50",
            "training.max_steps_per_epoch=null",
            "logging.tensorboard=false",
        ),
        "--grid",
        "training.lr=1e-3,3e-3",
        "--max-parallel",
        "2",
    ]
    proc = subprocess.Popen(
        command,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and len(list(sweep_out.glob("runs/*/logs/epochs.csv"))) < 2:
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    time.sleep(1)
    alive = subprocess.run(
        ["pgrep", "-f", f"rigor.sweep.job .*{sweep_out.name}"], capture_output=True, text=True
    ).stdout.split()
    r.results.append(
        Result(
            "races",
            "SIGTERM to a sweep stops its points",
            proc.returncode == 143 and not alive,
            f"exit {proc.returncode}, alive {alive}",
        )
    )
    r.cmd(
        "races",
        "sweep --optuna over a 2-value grid never trains a config twice",
        "sweep",
        [
            "--config",
            str(SMOKE),
            *FAST,
            *sets(
                f"run.output_root={r.out / 'races' / 'optuna'}",
                "training.epochs=1",
                "logging.tensorboard=false",
            ),
            "--grid",
            "model.dropout=0.0,0.2",
            "--optuna",
            "4",
        ],
        0,
        check=lambda: (
            None
            if len(list((r.out / "races" / "optuna").glob("runs/*"))) == 2
            else "a config was trained twice"
        ),
    )


# --- 7: errors that name the real cause ------------------------------------------------------


def errors_group(r: Runner, base: Path, images: Path) -> None:
    out = r.out / "errors"
    for flag, value in (("--optuna", "0"), ("--random", "0"), ("--random", "-3")):
        r.cmd(
            "errors",
            f"sweep {flag} {value}",
            "sweep",
            [
                "--config",
                str(SMOKE),
                *sets(f"run.output_root={out / 'sweep'}"),
                "--grid",
                "training.lr=1e-3",
                flag,
                value,
            ],
            2,
            "at least 1",
            check=lambda: "a folder was made" if (out / "sweep").exists() else None,
        )
    out.mkdir(parents=True, exist_ok=True)
    taken = out / "report.md"
    taken.write_text("kept")
    r.cmd(
        "errors",
        "compare --output names a file",
        "compare",
        [str(base), str(base), "--output", str(taken)],
        2,
        "is a file",
        check=lambda: None if taken.read_text() == "kept" else "the file was overwritten",
    )
    for text in ("nan", "inf", "NaN"):
        folder = out / f"csv-{text}"
        folder.mkdir(parents=True, exist_ok=True)
        png = next(images.glob("*/*.png"))
        shutil.copy(png, folder / "a.png")
        (folder / "t.csv").write_text(f"path,score\na.png,0.5\na.png,{text}\na.png,1.0\n")
        csv = (
            f"{{path: {folder / 't.csv'}, image_column: path, group_column: null, "
            "id_column: null, targets: {score: {column: score, kind: regression}}}"
        )
        r.cmd(
            "errors",
            f"csv text {text} in a regression column",
            "train",
            [
                "--config",
                str(SMOKE),
                *FAST,
                *sets(
                    "data.name=csv",
                    f"data.csv={csv}",
                    "data.tasks=[score]",
                    f"run.output_root={folder / 'out'}",
                ),
            ],
            2,
            "is not a finite number",
        )
    linked = out / "linked"
    shutil.copytree(images, linked)
    first = sorted(p for p in linked.iterdir() if p.is_dir())[0]
    (linked / "zz_alias").symlink_to(first)
    r.cmd(
        "errors",
        "imagefolder with a class symlinked into the root",
        "train",
        images_args(linked, out / "linked-out"),
        0,
        "already listed",
    )


# --- 8: the easy dataset ---------------------------------------------------------------------


def easy_group(r: Runner, images: Path) -> None:
    out = r.out / "easy"
    done = r.cmd("easy", "train shapes", "train", images_args(images, out, "training.epochs=8"))
    if done.returncode != 0:
        return
    m = stdout_path(done)
    fresh = copy_run(m, out / "uncalibrated")
    r.cmd(
        "easy",
        "calibrate with a perfect val_calib",
        "calibrate",
        ["--from-manifest", str(m), *FAST],
        0,
        "using T = 1",
    )
    r.cmd("easy", "eval", "eval", ["--from-manifest", str(m), *FAST])
    for policy in ("threshold", "sets", "crc", "scrc"):
        r.cmd(
            "easy",
            f"export --policy {policy}",
            "export",
            ["--from-manifest", str(m), "--policy", policy, *FAST],
        )
        r.cmd(
            "easy",
            f"predict ({policy})",
            "predict",
            ["--bundle", str(m.parent / "bundle"), "--split", "val_test"],
        )
    for policy in ("gate", "cascade"):
        r.cmd(
            "easy",
            f"export --policy {policy} (no gate: refused)",
            "export",
            ["--from-manifest", str(m), "--policy", policy, *FAST],
            2,
            "platt.json",
        )
    r.cmd(
        "easy",
        "export an uncalibrated run",
        "export",
        ["--from-manifest", str(fresh), *FAST],
        2,
        "--policy none",
    )
    r.cmd(
        "easy",
        "export --policy none",
        "export",
        ["--from-manifest", str(fresh), "--policy", "none", *FAST],
    )
    r.cmd(
        "easy",
        "predict (none)",
        "predict",
        ["--bundle", str(fresh.parent / "bundle"), "--split", "val_test"],
        0,
        check=lambda: (
            None
            if "yes" not in (fresh.parent / "predict" / "val_test.csv").read_text()
            else "a sample abstained"
        ),
    )
    r.cmd(
        "easy",
        "calibrate --temperature none",
        "calibrate",
        ["--from-manifest", str(m), "--temperature", "none", *FAST],
    )


GROUPS = ["seal", "finite", "cache", "fingerprint", "hest", "races", "errors", "easy"]


def prepare(r: Runner) -> tuple[Path, Path]:
    """The shared digits run (trained, calibrated, exported) and the shapes imagefolder."""
    done = r.cmd(
        "setup",
        "train smoke",
        "train",
        [
            "--config",
            str(SMOKE),
            *FAST,
            *sets(
                f"run.output_root={r.out / 'base'}",
                "training.epochs=3",
                "training.max_steps_per_epoch=null",
                "logging.tensorboard=false",
                "evaluation.n_resamples=50",
            ),
        ],
    )
    if done.returncode != 0:
        sys.exit(f"the base run failed: {done.stderr[-2000:]}")
    base = stdout_path(done)
    r.cmd(
        "setup",
        "calibrate smoke",
        "calibrate",
        ["--from-manifest", str(base), "--target-risk", "0.3", "--min-coverage", "0.1", *FAST],
    )
    r.cmd("setup", "export smoke", "export", ["--from-manifest", str(base), *FAST])
    images = r.out / "shapes"
    r.cmd("setup", "make_images", "make_images", ["--out", str(images), "--images", "200"])
    return base, images


def tally(r: Runner, seconds: float) -> str:
    lines = ["| group | commands | checks | passed | failed |", "|---|---|---|---|---|"]
    for group in ["setup", *GROUPS]:
        rows = [x for x in r.results if x.group == group]
        if not rows:
            continue
        commands = sum(not x.name.startswith("(check)") for x in rows)
        lines.append(
            f"| {group} | {commands} | {len(rows) - commands} | "
            f"{sum(x.ok for x in rows)} | {sum(not x.ok for x in rows)} |"
        )
    commands = sum(not x.name.startswith("(check)") for x in r.results)
    lines.append(
        f"| all | {commands} | {len(r.results) - commands} | "
        f"{sum(x.ok for x in r.results)} | {sum(not x.ok for x in r.results)} |"
    )
    lines.append(f"\n{seconds / 60:.1f} min on this machine.")
    failures = [f"- [{x.group}] {x.name}: {x.why}" for x in r.results if not x.ok]
    return "\n".join(lines + (["", "Failures:", *failures] if failures else []))


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=None, help="work folder (default: a temp one)")
    parser.add_argument("--only", default=",".join(GROUPS), help="comma-separated groups")
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="rigor-hostile-"))
    out.mkdir(parents=True, exist_ok=True)
    wanted = set(args.only.split(","))
    r = Runner(out.resolve())
    started = time.monotonic()
    base, images = prepare(r)
    if "seal" in wanted:
        seal_group(r, base)
        init_from_case(r)
    if "finite" in wanted:
        finite_group(r, base)
        intervals_group(r)
    if "cache" in wanted:
        cache_group(r, images)
    if "fingerprint" in wanted:
        fingerprint_group(r, images)
    if "hest" in wanted:
        hest_group(r)
    if "races" in wanted:
        races_group(r, base)
    if "errors" in wanted:
        errors_group(r, base, images)
    if "easy" in wanted:
        easy_group(r, images)
    report = tally(r, time.monotonic() - started)
    (out / "hostile.md").write_text(report + "\n")
    print(report)
    return 0 if all(x.ok for x in r.results) else 1


if __name__ == "__main__":
    sys.exit(main())
