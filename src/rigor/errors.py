"""Error types that carry the documented exit codes shared by every script.

0 ok, 1 unexpected error, 2 bad usage or invalid config, 3 invalid manifest or
schema violation, 4 environment mismatch under strict policy or a run folder held by a
live writer, 5 artifact missing or hash mismatch.
"""

from __future__ import annotations


class RigorError(Exception):
    """Base class for errors that end a script with a documented exit code."""

    exit_code = 1


class UsageError(RigorError):
    """Bad command-line usage or bad user input that is not a config file."""

    exit_code = 2


class ConfigError(RigorError):
    """An invalid config: the message names each field path and its source."""

    exit_code = 2


class ManifestError(RigorError):
    """A manifest (or another schema-checked JSON) that violates its schema."""

    exit_code = 3


class EnvMismatchError(RigorError):
    """The environment differs from the lock or manifest under ``--env-policy strict``."""

    exit_code = 4


class RunBusyError(RigorError):
    """A run folder another live process is writing (``--resume`` named it explicitly)."""

    exit_code = 4


class ArtifactError(RigorError):
    """An artifact listed in a manifest is missing or its sha256 changed."""

    exit_code = 5


WORKER_DIED = (
    "a DataLoader worker process died: look for an out-of-memory kill or a crash in an image "
    "decoder; lower data.num_workers or data.prefetch_factor to use less memory"
)


def worker_death(err: BaseException) -> str | None:
    """The explanation of a DataLoader worker's death, when ``err`` reports one (PyTorch
    says so from the loader, or from its SIGCHLD handler wherever the main process was)."""
    text = str(err)
    if "DataLoader worker" in text and ("exited unexpectedly" in text or "killed by" in text):
        return f"data loading failed: {type(err).__name__}: {text} ({WORKER_DIED})"
    return None
