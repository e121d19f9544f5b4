"""The preprocessing cache: decoded, resized uint8 pixels in sharded ``.npy`` files.

A cache folder ``<cache_root>/<dataset>-<key[:16]>/`` is keyed by the dataset's content
fingerprint, the decode settings (size, channels) and the transform version, so a change
to data or preprocessing is a miss, never a stale hit. It holds ``shard-NNNNN.npy``
(plain ``.npy``, (rows, C, H, W) uint8, readable with ``np.load(mmap_mode="r")``) and,
beside each, ``shard-NNNNN.json``: the rows that could not be read, the shard's shape and
the sha256 of its bytes taken as they were written. Before a process reads a shard it checks
the header (shape, dtype), the size and, once per process, that digest; a damaged, truncated
or zero-byte shard, or a missing or broken side file, is rebuilt with a log line, never
read. ``stats-<train>.json`` keeps the train split's normalisation statistics, keyed by the
train split's members, so a run that hits the cache does not recompute them.

Writing is shard by shard from the DataLoader workers (bounded memory: one batch at a
time), to a temporary name that is fsynced and renamed: a shard exists under its final
name only when complete, so an interrupted fill resumes at the first missing shard.
Reading takes a sample by its offset with ``os.pread``: every worker shares the kernel's
page cache (the same pages a memory map would share), and no process keeps a whole shard
mapped, so each worker's RSS stays flat however large the cache is.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from rigor.config.models import DataConfig
from rigor.data.readers import BadSample, SampleReader
from rigor.data.registry import RawData
from rigor.errors import RigorError, UsageError
from rigor.io import (
    _fsync_dir,
    _HashingSink,
    atomic_write_json,
    read_json,
    sha256_file,
    sha256_json,
)

CACHE_FORMAT = 3  # 3: each shard's side file records its shape and sha256
SHARD_BYTES = 256 << 20
WRITE_BATCH = 32


def cache_key(raw: RawData, cfg: DataConfig) -> str:
    """sha256 of (dataset, content, decode settings, transform version, cache format)."""
    return sha256_json(
        {
            "dataset": raw.name,
            "version": raw.version,
            "content": raw.content_hash(),
            "size": cfg.transforms.image_size,
            "channels": cfg.channels,
            "transforms": cfg.transforms.version,
            "format": CACHE_FORMAT,
        }
    )


class CachedReader:
    """Samples read back from a filled cache folder by offset (see the module docstring)."""

    dtype = "uint8"

    def __init__(self, folder: Path, source: SampleReader, rows_per_shard: int) -> None:
        self.folder = folder
        self.shape = source.shape
        self.count = len(source)
        self.rows_per_shard = rows_per_shard
        self.sample_bytes = int(np.prod(self.shape))
        self.offsets: list[int] = []
        self.bad: dict[int, str] = {}
        for shard in range(math.ceil(self.count / rows_per_shard)):
            with open(folder / f"shard-{shard:05d}.npy", "rb") as handle:
                np.lib.format.read_magic(handle)
                np.lib.format.read_array_header_1_0(handle)
                self.offsets.append(handle.tell())
            side = read_json(folder / f"shard-{shard:05d}.json")
            self.bad |= {int(row): str(error) for row, error in side["bad"].items()}
        self._fds: dict[int, int] = {}
        self._pid = -1

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_fds"], state["_pid"] = {}, -1  # descriptors are per process
        return state

    def __len__(self) -> int:
        return self.count

    def _fd(self, shard: int) -> int:
        if self._pid != os.getpid():
            self._fds, self._pid = {}, os.getpid()
        if shard not in self._fds:
            self._fds[shard] = os.open(self.folder / f"shard-{shard:05d}.npy", os.O_RDONLY)
        return self._fds[shard]

    def load(self, index: int) -> np.ndarray:
        """Sample ``index`` (a copy); a row that could not be read when filling is BadSample."""
        if index in self.bad:
            raise BadSample(self.bad[index])
        shard, row = divmod(index, self.rows_per_shard)
        offset = self.offsets[shard] + row * self.sample_bytes
        data = os.pread(self._fd(shard), self.sample_bytes, offset)
        return np.frombuffer(data, dtype=np.uint8).reshape(self.shape).copy()

    def train_stats(
        self, train_ids: list[str], compute: Callable[[], tuple[list[float], list[float]]]
    ) -> tuple[list[float], list[float]]:
        """The train split's (mean, std), read from ``stats-<train>.json`` beside the shards,
        or computed and stored there; a stored file that does not hold finite statistics of
        the right length is computed again."""
        path = self.folder / f"stats-{sha256_json(sorted(train_ids))[:16]}.json"
        try:
            stored = read_json(path)
            mean, std = stored["mean"], stored["std"]
            if len(mean) == len(std) == self.shape[0] and all(v > 0 for v in std):
                return [float(v) for v in mean], [float(v) for v in std]
        except (OSError, RigorError, KeyError, TypeError):
            pass  # missing or damaged: computed again below and stored over it
        mean, std = compute()
        atomic_write_json(path, {"train_rows": len(train_ids), "mean": mean, "std": std})
        return mean, std


def rows_per_shard(source: SampleReader) -> int:
    """Rows of one shard: about SHARD_BYTES of pixels."""
    return max(1, SHARD_BYTES // int(np.prod(source.shape)))


def cached_reader(raw: RawData, cfg: DataConfig, cache_root: Path) -> tuple[CachedReader, str]:
    """Fill the missing or damaged shards of this dataset's cache folder; a reader over it
    and a status for the log (``hit <folder>`` or ``miss <folder> (wrote k of n shards)``).

    Raises:
        UsageError: (exit 2) naming the shard when a damaged one cannot be rebuilt.
    """
    folder = cache_root / f"{raw.name}-{cache_key(raw, cfg)[:16]}"
    per_shard = rows_per_shard(raw.reader)
    count = len(raw.reader)
    shards = math.ceil(count / per_shard)
    shapes = [(min(per_shard, count - s * per_shard), *raw.reader.shape) for s in range(shards)]
    missing = [s for s in range(shards) if not _usable(folder, s, shapes[s])]
    if missing:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            _remove_stale(folder)
            for shard in missing:
                _write_shard(raw, cfg, folder, shard, per_shard)
        except OSError as err:
            raise UsageError(
                f"preprocessing cache {folder}: cannot rebuild shard {missing[0]:05d} ({err}); "
                "remove the folder or set data.cache: false"
            ) from None
    reader = CachedReader(folder, raw.reader, per_shard)
    if not missing:
        return reader, f"hit {folder.name}"
    return reader, f"miss {folder.name} (wrote {len(missing)} of {shards} shards)"


# Shards whose sha256 this process checked: (path, device, inode, size, mtime, ctime); an
# edit that restores the mtime still changes the ctime.
_VERIFIED: set[tuple[str, int, int, int, int, int]] = set()


def _usable(folder: Path, shard: int, shape: tuple[int, ...]) -> bool:
    """Whether shard ``shard`` exists and holds what its side file says it was written with;
    a damaged one is removed (so that it is rebuilt) with a log line."""
    path = folder / f"shard-{shard:05d}.npy"
    if not path.is_file():
        return False
    problem = _shard_problem(folder, shard, shape)
    if problem is None:
        return True
    print(
        f"preprocessing cache {folder.name}: shard {shard:05d} {problem}; rebuilding it",
        file=sys.stderr,
    )
    path.unlink(missing_ok=True)
    (folder / f"shard-{shard:05d}.json").unlink(missing_ok=True)
    return False


def _shard_problem(folder: Path, shard: int, shape: tuple[int, ...]) -> str | None:
    """What is wrong with a shard (header, size, side file, digest), or None."""
    path = folder / f"shard-{shard:05d}.npy"
    try:
        side = read_json(folder / f"shard-{shard:05d}.json")
        expected, digest = tuple(side["shape"]), str(side["sha256"])
        if not isinstance(side["bad"], dict):
            return "has a broken side file (bad rows are not a mapping)"
    except (OSError, RigorError, KeyError, TypeError) as err:
        return f"has a missing or broken side file ({type(err).__name__}: {err})"
    if expected != shape:
        return f"was written for shape {expected}, but the data now give {shape}"
    try:
        with open(path, "rb") as handle:
            np.lib.format.read_magic(handle)
            header = np.lib.format.read_array_header_1_0(handle)
            offset = handle.tell()
    except (OSError, ValueError, EOFError) as err:
        return f"has an unreadable header ({err})"
    if header != (shape, False, np.dtype(np.uint8)):
        return f"has header {header}, not {shape} uint8"
    info = path.stat()
    if info.st_size != offset + int(np.prod(shape)):
        return f"is {info.st_size} bytes, not {offset + int(np.prod(shape))} (truncated?)"
    identity = (
        str(path),
        info.st_dev,
        info.st_ino,
        info.st_size,
        info.st_mtime_ns,
        info.st_ctime_ns,
    )
    if identity not in _VERIFIED:
        if sha256_file(path) != digest:
            return "does not match the sha256 recorded when it was written (damaged bytes)"
        _VERIFIED.add(identity)
    return None


def _remove_stale(folder: Path) -> None:
    """Temporary shards left by a killed fill whose process is gone."""
    for tmp in folder.glob(".shard-*.tmp.*"):
        pid = int(tmp.name.rsplit(".", 1)[-1])
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            tmp.unlink(missing_ok=True)
        except PermissionError:
            continue


def _write_shard(raw: RawData, cfg: DataConfig, folder: Path, shard: int, per_shard: int) -> None:
    """Decode one shard's rows in the workers and stream them into a temporary .npy."""
    from rigor.data.dataset import ImageDataset
    from rigor.data.loader import make_loader

    source = ImageDataset(raw, raw.reader, [], skip_bad=cfg.on_bad_sample == "skip")
    rows = list(range(shard * per_shard, min((shard + 1) * per_shard, len(raw.reader))))
    loader = make_loader(
        source, rows, batch_size=WRITE_BATCH, num_workers=min(cfg.num_workers, len(rows))
    )
    final = folder / f"shard-{shard:05d}.npy"
    tmp = folder / f".shard-{shard:05d}.npy.tmp.{os.getpid()}"
    blank = np.zeros(raw.reader.shape, dtype=np.uint8)
    bad: dict[str, str] = {}
    shape = (len(rows), *raw.reader.shape)
    header = {"descr": "|u1", "fortran_order": False, "shape": shape}
    try:
        with open(tmp, "wb") as file:
            handle = _HashingSink(file)
            np.lib.format.write_array_header_1_0(handle, header)
            for batch in loader:
                pixels = iter(batch.input.numpy())
                failed = dict(batch.skipped)
                for index in sorted([*batch.index.tolist(), *failed]):
                    if index in failed:
                        bad[str(index)] = failed[index]
                        handle.write(blank.tobytes())
                    else:
                        handle.write(np.ascontiguousarray(next(pixels)).tobytes())
            file.flush()
            os.fsync(file.fileno())
        side = {
            "rows": len(rows),
            "shape": list(shape),
            "sha256": handle.digest.hexdigest(),
            "bad": bad,
        }
        atomic_write_json(folder / f"shard-{shard:05d}.json", side)
        os.replace(tmp, final)
        _fsync_dir(folder)
    finally:
        tmp.unlink(missing_ok=True)
