"""Process-wide settings that make PyTorch inference fast on the CPU, and what the CPU can do.

Kept apart from :mod:`stemsplit.model` (which only sees tensors): the engine,
the CLI and the benchmarks call :func:`tune_cpu_allocator` once at start-up,
and :func:`cpu_auto_precision` to resolve ``--precision auto`` on the CPU.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import platform
from pathlib import Path

__all__ = ["cpu_auto_precision", "cpu_bf16_support", "tune_cpu_allocator"]

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


# CPU flags (as /proc/cpuinfo names them) of instructions that compute in bfloat16.
_BF16_FLAGS = {
    "amx_bf16": "AMX-BF16",
    "avx512_bf16": "AVX512-BF16",
    "bf16": "Arm BF16",  # aarch64 "Features" line
}


def _cpu_flags(cpuinfo: str) -> set[str]:
    """The feature flags of the first processor in a /proc/cpuinfo text (x86 ``flags``, Arm ``Features``)."""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features"):
            return set(value.split())
    return set()


def cpu_bf16_support(cpuinfo: str | None = None) -> tuple[bool, str]:
    """Does this CPU compute bfloat16 natively (so bf16 inference can beat float32)? And why.

    Native means AVX512-BF16 or AMX-BF16 (x86) or the BF16 extension (Arm), read
    from /proc/cpuinfo, and a PyTorch whose oneDNN runs bfloat16 kernels. Without
    them bf16 is emulated and slower than float32. ``cpuinfo``: the text to read
    instead of /proc/cpuinfo (for tests). Returns (native, reason for people).
    """
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            system = platform.system()
            return False, f"cannot read /proc/cpuinfo ({system}): bf16 support unknown, fp32 assumed"
    flags = _cpu_flags(cpuinfo)
    found = [name for flag, name in _BF16_FLAGS.items() if flag in flags]
    if not found:
        return False, "no AVX512-BF16, AMX-BF16 or Arm BF16 in the CPU flags: bf16 would be emulated"
    import torch

    if not (torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()):
        return False, f"CPU has {' and '.join(found)} but this PyTorch's oneDNN has no bf16 kernels"
    return True, f"CPU has {' and '.join(found)} (native bf16 through oneDNN)"


def cpu_auto_precision() -> tuple[str, str]:
    """``("bf16" or "fp32", reason)`` for ``--precision auto`` on the CPU.

    bf16 where the CPU computes it natively: on a 2-core Zen 5 (AVX512-BF16) it is
    1.25x faster than fp32 for TS-BSMamba2, with a stage-2 relative error of 1.6e-3
    against fp32 on the golden input (benchmarks/bench_model.py). fp32 everywhere else.
    """
    native, why = cpu_bf16_support()
    return ("bf16" if native else "fp32"), why
