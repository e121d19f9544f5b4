"""Atomic file writes and content hashing, used by every stage that writes outputs."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import math
import os
import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, cast

_CHUNK = 1 << 20


def is_temporary(name: str) -> bool:
    """A name :func:`atomic_open` (or a lock) uses while writing: hidden, never an artifact."""
    return name.startswith(".")


@contextmanager
def atomic_open(path: Path, mode: str = "w", buffering: int = -1) -> Iterator[IO[Any]]:
    """Open a temp file beside ``path`` (``buffering`` as for ``open``); on success fsync it
    and rename it over ``path``.

    A crash at any moment leaves either the old file or the new one, never a torn one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = _create_temporary(path)
    try:
        with os.fdopen(fd, mode, buffering) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
        raise
    _fsync_dir(path.parent)


def _create_temporary(path: Path) -> tuple[int, str]:
    """A new hidden file beside ``path``, open for writing, with the mode ``open()`` would
    give it (0666 less the umask, applied by the kernel: mkstemp's 0600 would need the umask
    read back, a /proc read per write)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    for _ in range(100):
        name = os.path.join(path.parent, f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            return os.open(name, flags, 0o666), name
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name beside {path}")


@contextmanager
def exclusive_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created if missing) for the ``with`` body.

    The kernel drops the lock when the holder's file is closed, including when the process
    dies, so a crashed holder never blocks the next one.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _fsync_dir(directory: Path) -> None:
    """Persist the rename itself (best effort: not every filesystem allows it)."""
    try:
        dir_fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    with contextlib.suppress(OSError):
        os.fsync(dir_fd)
    os.close(dir_fd)


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_open(path, "w") as handle:
        handle.write(text)


def atomic_write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as indented, key-sorted JSON to ``path`` atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def atomic_write_with(
    path: Path, writer: Callable[[IO[bytes]], object], buffering: int = -1
) -> None:
    """Let ``writer`` fill a binary handle (``buffering`` as for ``open``), then publish the
    file atomically."""
    with atomic_open(path, "wb", buffering) as handle:
        writer(handle)


def atomic_write_hashed(
    path: Path, writer: Callable[[IO[bytes]], object], buffering: int = -1
) -> str:
    """:func:`atomic_write_with`, with the sha256 of what ``writer`` wrote computed on the
    way to the file (no copy in memory, no re-reading), remembered so that
    :func:`sha256_recorded` need not re-read it, and returned."""
    with atomic_open(path, "wb", buffering) as handle:
        sink = _HashingSink(handle)
        writer(cast(IO[bytes], sink))
    digest = sink.digest.hexdigest()
    _WRITTEN[_identity(path)] = digest
    return digest


class _HashingSink:
    """A write-only binary stream: every write goes to ``handle`` and into a sha256."""

    def __init__(self, handle: IO[bytes]) -> None:
        self.handle = handle
        self.digest = hashlib.sha256()

    def write(self, data: Any) -> int:
        self.digest.update(data)
        return self.handle.write(data)

    def flush(self) -> None:
        self.handle.flush()


def read_json(path: Path, non_finite: str = "refuse") -> Any:
    """Parse a JSON file strictly: UTF-8, and no NaN or Infinity (Python writes them, JSON
    has no such values, and a NaN threshold or temperature would pass every range check).
    ``non_finite="null"`` reads them as null instead (manifests written before rigor wrote
    undefined values as null, whose summaries may hold a NaN).

    Raises:
        ManifestError: (exit 3) naming the file and the problem.
    """
    return parse_json(Path(path).read_bytes(), path, non_finite)


def parse_json(raw: bytes, path: Path | str, non_finite: str = "refuse") -> Any:
    """:func:`read_json` of bytes already read from ``path`` (named in errors, with the JSON
    path of the first bad value). A number that overflows a float (``1e999``) is refused in
    either mode: no writer of rigor's ever wrote one."""
    from rigor.errors import ManifestError

    seen: list[_NonFinite] = []

    def constant(text: str) -> Any:
        if non_finite == "null":
            return None
        seen.append(_NonFinite(text, f"{text} is not a JSON number (a non-finite value)"))
        return seen[-1]

    def number(text: str) -> Any:
        value = float(text)
        if math.isfinite(value):
            return value
        seen.append(_NonFinite(text, f"{text} overflows to infinity (a non-finite value)"))
        return seen[-1]

    try:
        parsed = json.loads(raw.decode("utf-8"), parse_constant=constant, parse_float=number)
    except UnicodeDecodeError as err:
        raise ManifestError(f"{path}: not UTF-8 text (byte {err.start})") from None
    except json.JSONDecodeError as err:
        raise ManifestError(f"{path}: not valid JSON (line {err.lineno}: {err.msg})") from None
    if seen:
        where = next(_paths_to(parsed, seen[0], "$"), "$")
        raise ManifestError(f"{path}: {where}: {seen[0].reason}")
    return parsed


class _NonFinite:
    """Stands in for a non-finite number while parsing, so that the error can name where."""

    def __init__(self, text: str, reason: str) -> None:
        self.text, self.reason = text, reason


def _paths_to(node: Any, target: object, here: str) -> Iterator[str]:
    """JSON paths under ``node`` at which ``target`` (by identity) sits."""
    if node is target:
        yield here
    elif isinstance(node, dict):
        for key, value in node.items():
            yield from _paths_to(value, target, f"{here}.{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _paths_to(value, target, f"{here}[{index}]")


# sha256 of files this process wrote with atomic_write_hashed (or atomic_write_bytes), keyed
# by what identifies one version of a file: (device, inode, size, mtime_ns). A hard link
# shares the inode.
_WRITTEN: dict[tuple[int, int, int, int], str] = {}


def _identity(path: Path) -> tuple[int, int, int, int]:
    info = os.stat(path)
    return (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)


def atomic_write_bytes(path: Path, payload: bytes) -> str:
    """Write ``payload`` atomically (fsync, rename) and return its sha256, remembered so
    that :func:`sha256_recorded` need not re-read it."""
    return atomic_write_hashed(path, lambda handle: handle.write(payload))


def atomic_link(source: Path, path: Path) -> None:
    """Publish ``path`` as a hard link to ``source`` (a copy where links are not possible),
    atomically: readers see the old ``path`` or the complete new one. Files written with
    atomic replacement are never changed in place, so the two names stay independent: a
    later write of either replaces its own name only."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{os.getpid()}.link.tmp"
    tmp.unlink(missing_ok=True)
    try:
        os.link(source, tmp)
    except OSError:
        with open(source, "rb") as src, open(tmp, "wb") as dst:
            for chunk in iter(lambda: src.read(_CHUNK), b""):
                dst.write(chunk)
            dst.flush()
            os.fsync(dst.fileno())
        known = _WRITTEN.get(_identity(source))
        if known is not None:
            _WRITTEN[_identity(tmp)] = known
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def sha256_recorded(path: Path) -> str:
    """sha256 of a file, without re-reading one this process just wrote with
    :func:`atomic_write_hashed` (same inode, size and mtime); verification always re-reads
    (:func:`sha256_file`)."""
    known = _WRITTEN.get(_identity(path))
    return known if known is not None else sha256_file(path)


def sha256_file(path: Path) -> str:
    """Return the hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def finite_json(obj: Any) -> Any:
    """``obj`` with every NaN or infinite float replaced by None (JSON's null): what a
    strict reader (:func:`read_json`) accepts, and what a value that does not exist means."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {key: finite_json(value) for key, value in obj.items()}
    if isinstance(obj, list | tuple):
        return [finite_json(value) for value in obj]
    return obj


def record_hash(record: dict[str, Any]) -> str:
    """sha256 of a JSON record without its own ``record_sha256`` field: it seals the fields
    no artifact hash covers (a manifest's transforms, a bundle's class names)."""
    return sha256_json({k: v for k, v in record.items() if k != "record_sha256"})


def sha256_json(obj: Any) -> str:
    """Return the hex sha256 of the canonical JSON form of ``obj``."""
    canonical = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()
