"""Content fingerprints of datasets on disk that do not re-read unchanged files.

The fingerprint is the sha256 over the listing text (ids, targets) followed by every
file's own sha256, in listing order: it still covers every byte. A hash index (JSON, under
``<output_root>/cache/fingerprints/``) keeps each file's digest keyed by (path, size,
mtime_ns, inode, ctime_ns); a later run re-hashes only the files where any of them changed,
so an edit that puts the old mtime back (its ctime moves) or a file replaced by another
(a new inode) is re-hashed. Files are hashed by a thread pool (hashlib and file reads
release the GIL). :func:`changed_files` re-checks the files before a run's manifest is
written: the fingerprint must describe the data the run trained on.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rigor.data.readers import ImageRef
from rigor.errors import UsageError
from rigor.io import atomic_write_text

INDEX_VERSION = 2  # 2: entries are [size, mtime_ns, inode, ctime_ns, sha256]
METHOD = "sha256 over the listing text and each file's sha256, in listing order"


Identity = tuple[int, int, int, int]  # size, mtime_ns, inode, ctime_ns


def _stat(ref: ImageRef) -> tuple[str, Identity]:
    try:
        info = os.stat(ref.path)
    except OSError as err:
        raise UsageError(f"{ref.where}: cannot read image {ref.path}: {err.strerror}") from None
    identity = (info.st_size, info.st_mtime_ns, info.st_ino, info.st_ctime_ns)
    return str(Path(ref.path).resolve()), identity


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


@dataclass(frozen=True)
class FileState:
    """What the fingerprint was made of: each file's identity and sha256, in listing order."""

    keys: list[str]
    identities: list[Identity]
    digests: list[str]


def fingerprint_files(
    refs: Sequence[ImageRef], extra: str, index_path: Path | None
) -> tuple[str, dict[str, Any], FileState]:
    """The dataset's content hash, a record of how it was made (for the manifest) and the
    per-file state it was made of (for :func:`changed_files`).

    Args:
        refs: the files in listing order.
        extra: the listing text hashed before the files (ids, labels or the CSV).
        index_path: the hash index to read and update; None hashes every file.
    """
    started = time.perf_counter()
    stats = [_stat(ref) for ref in refs]
    index = _load_index(index_path)
    digests: list[str | None] = []
    for key, identity in stats:
        known = index.get(key)
        fresh = isinstance(known, list) and len(known) == 5 and known[:4] == list(identity)
        digests.append(str(known[4]) if fresh and known is not None else None)
    todo = [i for i, digest in enumerate(digests) if digest is None]
    threads = hashing_threads()
    with ThreadPoolExecutor(max_workers=threads) as pool:
        for i, digest in zip(todo, pool.map(_digest, [refs[i] for i in todo]), strict=True):
            digests[i] = digest
            index[stats[i][0]] = [*stats[i][1], digest]
    total = hashlib.sha256(extra.encode())
    for known_digest in digests:
        total.update(bytes.fromhex(str(known_digest)))
    if index_path is not None and todo:
        payload = {"version": INDEX_VERSION, "files": index}
        atomic_write_text(index_path, json.dumps(payload, separators=(",", ":")))
    record = {
        "method": METHOD,
        "index": "per-file digests reused when (path, size, mtime_ns, inode, ctime_ns) are "
        "unchanged",
        "files": len(refs),
        "hashed": len(todo),
        "reused": len(refs) - len(todo),
        "threads": threads,
        "seconds": round(time.perf_counter() - started, 3),
    }
    state = FileState([k for k, _ in stats], [i for _, i in stats], [str(d) for d in digests])
    return total.hexdigest(), record, state


def changed_files(refs: Sequence[ImageRef], state: FileState) -> list[str]:
    """The files that changed since ``state`` was taken (missing, or new bytes): a file whose
    identity is unchanged is taken as unchanged (the index's rule); any other is re-hashed."""
    changed = []
    for ref, key, identity, digest in zip(
        refs, state.keys, state.identities, state.digests, strict=True
    ):
        try:
            now = _stat(ref)[1]
        except UsageError:
            changed.append(f"{key} (gone)")
            continue
        if now != identity and _digest(ref) != digest:
            changed.append(key)
    return changed
