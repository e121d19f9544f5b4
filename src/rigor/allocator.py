"""What glibc's malloc is told about a stage's memory (Linux with glibc only; the
``MALLOC_*`` variables in the environment win). Two policies, one per kind of work:

- a pass that streams files (image folders, CSV, HEST) fixes the mmap threshold at 1 MiB
  (:func:`fix_mmap_threshold`), so batch-sized tensors never fragment the heap;
- a settled training or predicting loop over in-memory data keeps freed memory for the
  next step (:func:`keep_freed_memory`), so its activations are not faulted in again;
- a feature extraction, which streams files through a large encoder, fixes the threshold
  at 32 MiB instead (:func:`fix_extraction_threshold`).

A streamed pass wins: once its threshold is fixed, :func:`keep_freed_memory` does nothing,
and a threshold fixed after it undoes the kept trim threshold. Torch-free, so
:mod:`rigor.cli` can call it from every stage.
"""

from __future__ import annotations

import ctypes
import functools
import os
import sys

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
STREAMING_MMAP_THRESHOLD = 1 << 20
LOOP_MMAP_THRESHOLD = 32 << 20  # glibc's own ceiling for its moving threshold
LOOP_TRIM_THRESHOLD = 256 << 20
DEFAULT_TRIM_THRESHOLD = 128 << 10  # glibc's
_state = {"streaming": False, "kept": False}


def _mallopt(settings: dict[int, int], overrides: tuple[str, ...]) -> bool:
    """Apply ``settings`` (parameter -> value) unless one of ``overrides`` is in the
    environment or this is not Linux with glibc; whether every one was applied."""
    if not sys.platform.startswith("linux") or any(name in os.environ for name in overrides):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # this process's C library
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return all([bool(mallopt(param, value)) for param, value in settings.items()])


@functools.cache
def fix_mmap_threshold() -> bool:
    """Serve allocations of 1 MiB and more with mmap for the rest of the process.

    glibc raises its mmap threshold every time a large mmapped block is freed, so from the
    first freed batch on, batch-sized tensors come from the heap instead, and a long
    streamed pass fragments it: a 100,000-patch feature extraction grew to 5 GB of RSS
    that way, and stays flat at 1 GB with a fixed threshold. Setting the threshold turns
    that adjustment off. ``MALLOC_MMAP_THRESHOLD_`` in the environment wins. Returns
    whether the threshold was set here."""
    _state["streaming"] = True
    settings = {_M_MMAP_THRESHOLD: STREAMING_MMAP_THRESHOLD}
    if _state["kept"]:  # a loop settled before the stream began: give glibc its trim back
        settings[_M_TRIM_THRESHOLD] = DEFAULT_TRIM_THRESHOLD
    return _mallopt(settings, ("MALLOC_MMAP_THRESHOLD_",))


def fix_extraction_threshold() -> bool:
    """Serve allocations from 32 MiB up with mmap, fixed, for a frozen encoder's feature
    extraction (a streamed pass whose forward allocates the same activations every batch).

    At the streaming threshold of 1 MiB every activation of an encoder's forward is a
    fresh mmap faulted in page by page: 4% of a ViT-S/16 extraction at 224x224 on two CPU
    cores (benchmarks/bench_extract.py). Fixed at 32 MiB (glibc's own ceiling), they are
    reused from the heap, and the threshold still never moves: the main process's RSS
    stayed at 801 MB over 4,000 streamed patches, as at 1 MiB. ``MALLOC_MMAP_THRESHOLD_``
    in the environment wins. Returns whether the threshold was set here."""
    _state["streaming"] = True
    return _mallopt({_M_MMAP_THRESHOLD: LOOP_MMAP_THRESHOLD}, ("MALLOC_MMAP_THRESHOLD_",))


def keep_freed_memory() -> bool:
    """Keep memory that is freed for the next allocation, instead of handing it back to the
    kernel and faulting it in again: blocks under 32 MiB come from the heap (not a fresh
    mmap each), and the heap shrinks only when 256 MiB at its top are free. A training loop
    frees and allocates the same activations every step; where the heap's free space lands
    at its top (it depends on what the process did before), glibc gave it back at every
    free: a digits run's 12 epochs took up to 165,000 page faults (7,000-16,000 in other
    runs) instead of 3,500 (0.2-0.4 s of kernel time in a 1.7-2.6 s loop). The process
    keeps up to 256 MiB more than it uses (ResNet-18 on digits: a peak RSS of 1.34 against
    1.31 GB). Nothing is done in a process that streams files (:func:`fix_mmap_threshold`)
    or when ``MALLOC_TRIM_THRESHOLD_`` or ``MALLOC_MMAP_THRESHOLD_`` is set. Returns whether
    it applied."""
    if _state["streaming"]:
        return False
    settings = {_M_MMAP_THRESHOLD: LOOP_MMAP_THRESHOLD, _M_TRIM_THRESHOLD: LOOP_TRIM_THRESHOLD}
    _state["kept"] = _mallopt(settings, ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_"))
    return _state["kept"]
