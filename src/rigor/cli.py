"""Shared command-line plumbing: common flags and the exit-code wrapper."""

from __future__ import annotations

import argparse
import ctypes
import gc
import os
import sys
import traceback
from collections.abc import Callable, Sequence

from rigor.errors import RigorError

ENV_POLICIES = ("strict", "warn", "ignore")


def add_common_flags(parser: argparse.ArgumentParser, *, env: bool = True) -> None:
    """Add ``--debug`` and, for stages that touch a manifest, ``--env-policy``/``--force``."""
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    if env:
        parser.add_argument(
            "--env-policy",
            choices=ENV_POLICIES,
            default=None,
            help="how to treat environment mismatches (default: the config's env.policy, warn)",
        )
        parser.add_argument(
            "--force",
            action="store_true",
            help="go on despite a strict env mismatch or a checkpoint/config hash mismatch",
        )


def add_set_flag(parser: argparse.ArgumentParser, example: str = "training.lr=3e-4") -> None:
    """``--set KEY=VALUE``, repeatable, collected in ``args.sets`` in the order given."""
    parser.add_argument(
        "--set",
        dest="sets",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"override a config value, e.g. --set {example} (repeatable, applied in order)",
    )


def run_main(
    main: Callable[[Sequence[str] | None], int],
    argv: Sequence[str] | None = None,
    *,
    defer_gc: bool = False,
) -> int:
    """Run a script's ``main`` and map errors to the documented exit codes.

    Known errors print one ``error:`` line; unexpected ones print one line and exit 1.
    With ``--debug`` in ``argv`` the traceback is shown as well.

    Garbage collection, when run as a script (``argv`` None: the command line's; README,
    "Performance"); a caller that passes ``argv`` (tests, notebooks) keeps its collector as
    it is:

    - ``defer_gc``: the collector is off while the script imports torch and sets up, where
      each full collection walks every object imported so far (six of them cost about 0.5 s
      of a digits training run); the stage turns it back on with :func:`settle` once set up,
      before its loops, and a script that never settles is short.
    - Once ``main`` is done, the objects alive are frozen out of the collector
      (``gc.freeze``): the interpreter's shutdown then skips collecting them again, which
      took about 0.45 s of every process that imported torch. Every output is written,
      closed and fsynced before ``main`` returns; only cyclic garbage that would have been
      collected at exit is left to the operating system.
    """
    global _DEFERRED
    script = argv is None
    if defer_gc and script and gc.isenabled():
        gc.disable()
        _DEFERRED = True
    try:
        return _run(main, argv)
    finally:
        if script:
            gc.freeze()


_DEFERRED = False  # run_main turned the collector off until the stage settles


def settle() -> None:
    """The end of a stage's start-up, in a script run with ``defer_gc``: what is alive now
    (modules, model, data) stays alive, so freeze it out of the collector's sight and turn
    collection back on for the work to come, and let freed memory be reused
    (:func:`keep_freed_memory`). Elsewhere it does nothing."""
    global _DEFERRED
    if _DEFERRED:
        _DEFERRED = False
        gc.freeze()
        gc.enable()
        keep_freed_memory()


# glibc's mallopt parameters (malloc.h) and what the loops ask of them
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD = 32 << 20  # glibc's own ceiling for its moving threshold
TRIM_THRESHOLD = 256 << 20


def keep_freed_memory() -> bool:
    """Ask glibc's malloc to keep memory that is freed for the next allocation, instead of
    handing it back to the kernel and faulting it in again: blocks under 32 MiB come from
    the heap (not a fresh mmap each), and the heap shrinks only when 256 MiB at its top are
    free. A training loop frees and allocates the same activations every step; where the
    heap's free space lands at its top (it depends on what the process did before), glibc
    gave it back at every free, and a digits run took 55,000-165,000 page faults in its
    12 epochs instead of 3,500 (0.2-0.4 s of kernel time in a 1.7-2.6 s loop). The process
    keeps up to 256 MiB more than it uses (ResNet-18 on digits: a peak RSS of 1.34 against
    1.31 GB). Linux with glibc only; ``MALLOC_TRIM_THRESHOLD_`` or ``MALLOC_MMAP_THRESHOLD_``
    in the environment wins. Returns whether it applied."""
    if sys.platform != "linux" or os.environ.keys() & {
        "MALLOC_TRIM_THRESHOLD_",
        "MALLOC_MMAP_THRESHOLD_",
    }:
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # this process's C library
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )


def _run(main: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    try:
        return main(args)
    except RigorError as err:
        if debug:
            traceback.print_exc()
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - the one place that turns crashes into exit 1
        if debug:
            traceback.print_exc()
        print(
            f"error: unexpected {type(err).__name__}: {err} "
            "(re-run with --debug for the traceback)",
            file=sys.stderr,
        )
        return 1
