"""The preprocessing cache: decoded, resized uint8 pixels in sharded ``.npy`` files.

A cache folder ``<cache_root>/<dataset>-<key[:16]>/`` is keyed by the dataset's content
fingerprint, the decode settings (size, channels) and the transform version, so a change
to data or preprocessing is a miss, never a stale hit. It holds ``shard-NNNNN.npy``
(plain ``.npy``, (rows, C, H, W) uint8, readable with ``np.load(mmap_mode="r")``) and,
beside each, ``shard-NNNNN.json`` listing the rows that could not be read.

Writing is shard by shard from the DataLoader workers (bounded memory: one batch at a
time), to a temporary name that is fsynced and renamed: a shard exists under its final
name only when complete, so an interrupted fill resumes at the first missing shard.
Reading takes a sample by its offset with ``os.pread``: every worker shares the kernel's
page cache (the same pages a memory map would share), and no process keeps a whole shard
mapped, so each worker's RSS stays flat however large the cache is.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from rigor.config.models import DataConfig
from rigor.data.readers import BadSample, SampleReader
from rigor.data.registry import RawData
from rigor.io import _fsync_dir, atomic_write_json, sha256_json

CACHE_FORMAT = 2
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
            side = json.loads((folder / f"shard-{shard:05d}.json").read_text())
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


def rows_per_shard(source: SampleReader) -> int:
    """Rows of one shard: about SHARD_BYTES of pixels."""
    return max(1, SHARD_BYTES // int(np.prod(source.shape)))


def cached_reader(raw: RawData, cfg: DataConfig, cache_root: Path) -> tuple[CachedReader, str]:
    """Fill the missing shards of this dataset's cache folder; a reader over it and a status
    for the log (``hit <folder>`` or ``miss <folder> (wrote k of n shards)``)."""
    folder = cache_root / f"{raw.name}-{cache_key(raw, cfg)[:16]}"
    per_shard = rows_per_shard(raw.reader)
    shards = math.ceil(len(raw.reader) / per_shard)
    missing = [s for s in range(shards) if not (folder / f"shard-{s:05d}.npy").is_file()]
    if missing:
        folder.mkdir(parents=True, exist_ok=True)
        _remove_stale(folder)
        for shard in missing:
            _write_shard(raw, cfg, folder, shard, per_shard)
    reader = CachedReader(folder, raw.reader, per_shard)
    if not missing:
        return reader, f"hit {folder.name}"
    return reader, f"miss {folder.name} (wrote {len(missing)} of {shards} shards)"


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
    header = {"descr": "|u1", "fortran_order": False, "shape": (len(rows), *raw.reader.shape)}
    try:
        with open(tmp, "wb") as handle:
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
            handle.flush()
            os.fsync(handle.fileno())
        atomic_write_json(folder / f"shard-{shard:05d}.json", {"rows": len(rows), "bad": bad})
        os.replace(tmp, final)
        _fsync_dir(folder)
    finally:
        tmp.unlink(missing_ok=True)
