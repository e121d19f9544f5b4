"""Content fingerprints of datasets on disk that do not re-read unchanged files.

The fingerprint is the sha256 over the listing text (ids, targets) followed by every
file's own sha256, in listing order: it still covers every byte. A hash index (JSON, under
``<output_root>/cache/fingerprints/``) keeps each file's digest keyed by (path, size,
mtime_ns); a later run re-hashes only the files whose size or mtime changed. Files are
hashed by a thread pool (hashlib and file reads release the GIL).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from rigor.data.readers import ImageRef
from rigor.errors import UsageError
from rigor.io import atomic_write_text

INDEX_VERSION = 1
METHOD = "sha256 over the listing text and each file's sha256, in listing order"


def _stat(ref: ImageRef) -> tuple[str, int, int]:
    try:
        info = os.stat(ref.path)
    except OSError as err:
        raise UsageError(f"{ref.where}: cannot read image {ref.path}: {err.strerror}") from None
    return str(Path(ref.path).resolve()), info.st_size, info.st_mtime_ns


def _digest(ref: ImageRef) -> str:
    try:
        with open(ref.path, "rb") as handle:
            return hashlib.file_digest(handle, "sha256").hexdigest()
    except OSError as err:
        raise UsageError(f"{ref.where}: cannot read image {ref.path}: {err.strerror}") from None


def _load_index(path: Path | None) -> dict[str, list[Any]]:
    if path is None or not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}  # a damaged index only costs a re-hash
    if not isinstance(data, dict) or data.get("version") != INDEX_VERSION:
        return {}
    files = data.get("files")
    return files if isinstance(files, dict) else {}


def hashing_threads() -> int:
    """Threads that hash files: enough to overlap reads with hashing."""
    return min(16, 2 * (os.cpu_count() or 1))


def fingerprint_files(
    refs: Sequence[ImageRef], extra: str, index_path: Path | None
) -> tuple[str, dict[str, Any]]:
    """The dataset's content hash and a record of how it was made (for the manifest).

    Args:
        refs: the files in listing order.
        extra: the listing text hashed before the files (ids, labels or the CSV).
        index_path: the hash index to read and update; None hashes every file.
    """
    started = time.perf_counter()
    stats = [_stat(ref) for ref in refs]
    index = _load_index(index_path)
    digests: list[str | None] = []
    for key, size, mtime in stats:
        known = index.get(key)
        fresh = isinstance(known, list) and len(known) == 3 and known[:2] == [size, mtime]
        digests.append(str(known[2]) if fresh and known is not None else None)
    todo = [i for i, digest in enumerate(digests) if digest is None]
    threads = hashing_threads()
    with ThreadPoolExecutor(max_workers=threads) as pool:
        for i, digest in zip(todo, pool.map(_digest, [refs[i] for i in todo]), strict=True):
            digests[i] = digest
            index[stats[i][0]] = [stats[i][1], stats[i][2], digest]
    total = hashlib.sha256(extra.encode())
    for known_digest in digests:
        total.update(bytes.fromhex(str(known_digest)))
    if index_path is not None and todo:
        payload = {"version": INDEX_VERSION, "files": index}
        atomic_write_text(index_path, json.dumps(payload, separators=(",", ":")))
    record = {
        "method": METHOD,
        "index": "per-file digests reused when (path, size, mtime_ns) are unchanged",
        "files": len(refs),
        "hashed": len(todo),
        "reused": len(refs) - len(todo),
        "threads": threads,
        "seconds": round(time.perf_counter() - started, 3),
    }
    return total.hexdigest(), record
