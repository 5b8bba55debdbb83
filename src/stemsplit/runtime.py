"""Process-wide settings that make PyTorch inference fast on the CPU.

Kept apart from :mod:`stemsplit.model` (which only sees tensors): the engine,
the CLI and the benchmarks call :func:`tune_cpu_allocator` once at start-up.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging

__all__ = ["tune_cpu_allocator"]

log = logging.getLogger(__name__)

# mallopt() parameters from glibc's <malloc.h>.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# Allocations below this come from the reusable heap; above it, from fresh mmaps.
_MMAP_THRESHOLD = 1 << 30
_TRIM_THRESHOLD = 2**31 - 1


@functools.cache
def tune_cpu_allocator() -> bool:
    """Let glibc reuse freed memory for large tensors instead of returning it to the OS.

    By default glibc serves every allocation above 32 MB with a fresh ``mmap`` and
    unmaps it on free, so each such tensor is page-faulted in again, page by page,
    on its next use. A TS-BSMamba2 forward pass allocates hundreds of those
    (activations of 30k tokens x 1288 features), and the page faults cost as much
    as the arithmetic: a 3 s window went from 30 s to 15 s on a 2-core machine
    with this setting. The price is that the process keeps its peak memory
    mapped until it exits, which suits a separation run.

    Returns True if the allocator was tuned (glibc), False where it cannot be
    (other C libraries; then nothing changes). Safe to call more than once.
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        log.debug("no glibc mallopt(); CPU allocator left as it is")
        return False
    ok = mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD) == 1 and mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD) == 1
    if not ok:
        log.debug("mallopt() refused the thresholds; CPU allocator left as it is")
    return ok
