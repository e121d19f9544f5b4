"""Shared command-line plumbing: common flags and the exit-code wrapper."""

from __future__ import annotations

import argparse
import gc
import os
import sys
import traceback
from collections.abc import Callable, Sequence

from rigor.allocator import keep_freed_memory
from rigor.errors import RigorError, worker_death

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
    (:func:`rigor.allocator.keep_freed_memory`). Elsewhere it does nothing."""
    global _DEFERRED
    if _DEFERRED:
        _DEFERRED = False
        gc.freeze()
        gc.enable()
        keep_freed_memory()


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
    except BrokenPipeError:  # the reader went away (``| head``): stop quietly, as SIGPIPE would
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # nothing left to flush into the closed pipe
        return 141
    except Exception as err:  # noqa: BLE001 - the one place that turns crashes into exit 1
        if debug:
            traceback.print_exc()
        died = worker_death(err)  # the SIGCHLD handler may raise it outside the loader
        if died is not None:
            print(f"error: {died}", file=sys.stderr)
            return 1
        print(
            f"error: unexpected {type(err).__name__}: {err} "
            "(re-run with --debug for the traceback)",
            file=sys.stderr,
        )
        return 1
